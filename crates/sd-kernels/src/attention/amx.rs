//! Attention on AMX tiles for bf16 models: the same flash loop as [`super::task`], with both
//! products on the tile registers and their inputs rounded to bf16 (queries after scaling,
//! keys, probabilities, values); scores, softmax and the accumulator stay f32.
//!
//! The products keep the f32 path's transposed layout, so its softmax and rescaling run
//! unchanged on `keys x 16` panels of scores:
//! 1. `Sᵀ = K·Qᵀ`: keys as row tiles (rows of K, the head dimensions as depth), queries as
//!    pair tiles made from the packed query panels; each 16 x 16 result tile goes to its
//!    query panel's rows;
//! 2. `Oᵀ += Vᵀ·Pᵀ`: head dimensions as row tiles (V transposed, the keys as depth), the
//!    probability panels as pair tiles.
//!
//! Queries go in pairs of panels (32), keys and head dimensions in multiples of 32 (zero
//! padded), so every tile product is a full 2 x 2 block.

use std::arch::x86_64::*;

use super::{avx2::exp2_16, grow, mask_future, pack_queries, Job, Scratch, NR};
use crate::gemm::amx::{self, Configured, PAIR, TILE, TILE_K, TILE_VALUES};

/// Keys per block on the tiles: the f32 path's block, rounded up to whole depth tiles. It
/// follows the head dimension only (results do not depend on the thread count).
pub(super) fn kv_block(head_dim: usize) -> usize {
    super::kv_block(head_dim).div_ceil(PAIR) * PAIR
}

/// `keys` value rows (row `j` at `src[j·ld ..]`, `d` values) as row tiles of `Vᵀ`: head
/// dimensions (padded to a multiple of 32) by keys (padded to whole depth tiles).
fn pack_values_transposed(src: &[f32], ld: usize, keys: usize, d: usize, dst: &mut [u16]) {
    let key_tiles = keys.div_ceil(TILE_K);
    let dim_tiles = d.div_ceil(PAIR) * 2;
    dst[..dim_tiles * key_tiles * TILE_VALUES].fill(0);
    let narrow = |x: f32| half::bf16::from_f32(x).to_bits();
    for key in 0..keys {
        let row = &src[key * ld..][..d];
        let (t, c) = (key / TILE_K, key % TILE_K);
        for (dim, &x) in row.iter().enumerate() {
            let (s, r) = (dim / TILE, dim % TILE);
            dst[(s * key_tiles + t) * TILE_VALUES + r * TILE_K + c] = narrow(x);
        }
    }
}

/// Attention for queries `q0 .. q0 + rows` of one (batch, head) on the tiles.
///
/// # Safety
/// [`amx::usable`] is true.
pub(super) unsafe fn task(
    job: &Job,
    b: usize,
    h: usize,
    (q0, rows): (usize, usize),
    scratch: &mut Scratch,
) {
    let super::AttentionShape {
        seq_q,
        seq_kv,
        heads,
        head_dim: d,
        ..
    } = job.shape;
    let ld = heads * d;
    let depth_tiles = d.div_ceil(TILE_K);
    let dp = d.div_ceil(PAIR) * PAIR;
    let panels = rows.div_ceil(PAIR) * 2;
    let q_base = (b * seq_q + q0) * ld + h * d;
    let kv_base = b * seq_kv * ld + h * d;
    let Scratch {
        q: q_pack,
        o: acc,
        s,
        max,
        sum,
        tiles,
        ..
    } = scratch;

    // Queries: scaled f32 panels (as the f32 path packs them), then pair tiles.
    let scale = job.scale * std::f32::consts::LOG2_E;
    let q_pack = grow(q_pack, panels * d * NR);
    pack_queries(&job.q[q_base..], ld, rows, d, scale, q_pack);
    let bc = kv_block(d);
    let q_step = depth_tiles * TILE_VALUES;
    let k_step = depth_tiles * TILE_VALUES;
    let key_tiles_max = bc / TILE;
    let v_step = (bc / TILE_K) * TILE_VALUES;
    let p_step = (bc / TILE_K) * TILE_VALUES;
    let (q_len, k_len, v_len) = (
        panels * q_step,
        key_tiles_max * k_step,
        (dp / TILE) * v_step,
    );
    if tiles.len() < q_len + k_len + v_len + 2 * p_step {
        tiles.resize(q_len + k_len + v_len + 2 * p_step, 0);
    }
    let (q_tiles, rest) = tiles.split_at_mut(q_len);
    let (k_tiles, rest) = rest.split_at_mut(k_len);
    let (v_tiles, p_tiles) = rest.split_at_mut(v_len);
    for (panel, dst) in q_pack
        .chunks_exact(d * NR)
        .zip(q_tiles.chunks_exact_mut(q_step))
    {
        amx::panel_to_pairs(panel, d, dst);
    }

    let acc = grow(acc, panels * dp * NR);
    acc.fill(0.0);
    let max = grow(max, panels * NR);
    max.fill(f32::NEG_INFINITY);
    let sum = grow(sum, panels * NR);
    sum.fill(0.0);
    let s = grow(s, 2 * bc * NR);

    let kv_end = if job.causal {
        seq_kv.min(q0 + rows)
    } else {
        seq_kv
    };
    let configured = Configured::new();
    for kv0 in (0..kv_end).step_by(bc) {
        let keys = bc.min(kv_end - kv0);
        let key_tiles = keys.div_ceil(PAIR) * 2;
        amx::rows_to_tiles_avx512(&job.k[kv_base + kv0 * ld..], ld, keys, d, k_tiles);
        pack_values_transposed(&job.v[kv_base + kv0 * ld..], ld, keys, d, v_tiles);
        let v_stride = keys.div_ceil(TILE_K) * TILE_VALUES;
        for p in (0..panels).step_by(2) {
            // Keys the later panel of the pair sees (the earlier sees no more).
            let qa = q0 + p * NR;
            let visible = if job.causal {
                keys.min((qa + 2 * NR).saturating_sub(kv0))
            } else {
                keys
            };
            if visible == 0 {
                continue;
            }
            let visible_tiles = visible.div_ceil(PAIR) * 2;
            // Sᵀ for both panels: panel i's scores at s[i·bc·NR ..], keys x 16.
            let (qt0, qt1) = (
                q_tiles[p * q_step..].as_ptr(),
                q_tiles[(p + 1) * q_step..].as_ptr(),
            );
            debug_assert!(visible_tiles <= key_tiles);
            let scores_at = s.as_mut_ptr();
            if depth_tiles <= 2 {
                scores_resident(
                    depth_tiles,
                    [qt0, qt1],
                    k_tiles.as_ptr(),
                    visible_tiles,
                    [scores_at, scores_at.add(bc * NR)],
                );
            } else {
                let c =
                    |panel: usize, tile: usize| scores_at.add(panel * bc * NR + tile * TILE * NR);
                for kt in (0..visible_tiles).step_by(2) {
                    let out = [c(0, kt), c(1, kt), c(0, kt + 1), c(1, kt + 1)];
                    amx::kernel4(
                        depth_tiles,
                        [
                            k_tiles[kt * k_step..].as_ptr(),
                            k_tiles[(kt + 1) * k_step..].as_ptr(),
                        ],
                        [qt0, qt1],
                        out,
                        NR,
                        false,
                    );
                }
            }
            let p_tiles_len = visible.div_ceil(TILE_K) * TILE_VALUES;
            for i in 0..2 {
                let panel = p + i;
                let scores = &mut s[i * bc * NR..][..visible * NR];
                if job.causal {
                    mask_future(scores, (qa + i * NR) as isize - kv0 as isize);
                }
                let mut alpha = [0f32; NR];
                let max = &mut max[panel * NR..][..NR];
                let sum = &mut sum[panel * NR..][..NR];
                let probabilities = &mut p_tiles[i * p_step..][..p_tiles_len];
                // SAFETY: AMX is usable (the caller's contract), which implies AVX-512F/BW/BF16.
                softmax_pairs(scores, max, sum, &mut alpha, probabilities);
                let o = &mut acc[panel * dp * NR..][..dp * NR];
                if kv0 > 0 && alpha.iter().any(|&a| a != 1.0) {
                    for row in o.chunks_exact_mut(NR) {
                        for (x, a) in row.iter_mut().zip(&alpha) {
                            *x *= a;
                        }
                    }
                }
            }
            // Oᵀ += Vᵀ·Pᵀ over the visible keys.
            let pt = [p_tiles.as_ptr(), p_tiles[p_step..].as_ptr()];
            let acc_at = acc.as_mut_ptr();
            let c =
                |panel: usize, tile: usize| acc_at.add((p + panel) * dp * NR + tile * TILE * NR);
            for dt in (0..dp / TILE).step_by(2) {
                let out = [c(0, dt), c(1, dt), c(0, dt + 1), c(1, dt + 1)];
                amx::kernel4(
                    visible.div_ceil(TILE_K),
                    [
                        v_tiles[dt * v_stride..].as_ptr(),
                        v_tiles[(dt + 1) * v_stride..].as_ptr(),
                    ],
                    pt,
                    out,
                    NR,
                    true,
                );
            }
        }
    }
    drop(configured);

    for p in 0..rows.div_ceil(NR) {
        let o = &acc[p * dp * NR..][..dp * NR];
        for lane in 0..NR.min(rows - p * NR) {
            let inv = 1.0 / sum[p * NR + lane];
            let at = q_base + (p * NR + lane) * ld;
            assert!(at + d <= job.out_len);
            // SAFETY: in bounds (checked above); each task writes its own queries of its own
            // head, so no two tasks write the same element.
            let dst = std::slice::from_raw_parts_mut(job.out.0.add(at), d);
            for (dim, x) in dst.iter_mut().enumerate() {
                *x = o[dim * NR + lane] * inv;
            }
        }
    }
}

/// `Sᵀ = K·Qᵀ` for two query panels whose pair tiles (`depth_tiles` ≤ 2 each, at `q[i]`)
/// stay in the tile registers while the `key_tiles` key row tiles stream past (key tile `t`
/// at `k + t · depth_tiles · TILE_VALUES`): one tile load per key tile and depth tile, each
/// used by both panels (half the loads of [`amx::kernel4`], whose operands are both
/// reloaded; tile loads, not products, bound these kernels). Panel `i`'s scores go to
/// `out[i]`, key rows of 16 values.
///
/// # Safety
/// The thread is [`Configured`]; `1 ≤ depth_tiles ≤ 2`; the pointers hold what is said.
unsafe fn scores_resident(
    depth_tiles: usize,
    [q0, q1]: [*const u16; 2],
    k: *const u16,
    key_tiles: usize,
    [out0, out1]: [*mut f32; 2],
) {
    use std::arch::asm;
    debug_assert!((1..=2).contains(&depth_tiles));
    let ld = NR * 4;
    if depth_tiles == 2 {
        asm!(
            "tileloadd tmm2, [{q0} + {s}*1]",
            "tileloadd tmm3, [{q0} + {s}*1 + 1024]",
            "tileloadd tmm4, [{q1} + {s}*1]",
            "tileloadd tmm5, [{q1} + {s}*1 + 1024]",
            "2:",
            "tilezero tmm0",
            "tilezero tmm1",
            "tileloadd tmm6, [{k} + {s}*1]",
            "tdpbf16ps tmm0, tmm6, tmm2",
            "tdpbf16ps tmm1, tmm6, tmm4",
            "tileloadd tmm7, [{k} + {s}*1 + 1024]",
            "tdpbf16ps tmm0, tmm7, tmm3",
            "tdpbf16ps tmm1, tmm7, tmm5",
            "tilestored [{o0} + {ld}*1], tmm0",
            "tilestored [{o1} + {ld}*1], tmm1",
            "add {k}, 2048",
            "add {o0}, 1024",
            "add {o1}, 1024",
            "dec {n}",
            "jnz 2b",
            q0 = in(reg) q0,
            q1 = in(reg) q1,
            s = in(reg) 64usize,
            ld = in(reg) ld,
            k = inout(reg) k => _,
            o0 = inout(reg) out0 => _,
            o1 = inout(reg) out1 => _,
            n = inout(reg) key_tiles => _,
            options(nostack),
        );
    } else {
        asm!(
            "tileloadd tmm2, [{q0} + {s}*1]",
            "tileloadd tmm4, [{q1} + {s}*1]",
            "2:",
            "tilezero tmm0",
            "tilezero tmm1",
            "tileloadd tmm6, [{k} + {s}*1]",
            "tdpbf16ps tmm0, tmm6, tmm2",
            "tdpbf16ps tmm1, tmm6, tmm4",
            "tilestored [{o0} + {ld}*1], tmm0",
            "tilestored [{o1} + {ld}*1], tmm1",
            "add {k}, 1024",
            "add {o0}, 1024",
            "add {o1}, 1024",
            "dec {n}",
            "jnz 2b",
            q0 = in(reg) q0,
            q1 = in(reg) q1,
            s = in(reg) 64usize,
            ld = in(reg) ld,
            k = inout(reg) k => _,
            o0 = inout(reg) out0 => _,
            o1 = inout(reg) out1 => _,
            n = inout(reg) key_tiles => _,
            options(nostack),
        );
    }
}

/// `2^x` for probabilities about to be rounded to bf16: degree-4 Taylor polynomial of `2^r`
/// on `|r| ≤ ½` (relative error below 5e-5, a fortieth of bf16's half-ulp) scaled by `2^n`;
/// four operations fewer than [`exp2_16`], which the f32 sums and rescaling keep.
///
/// # Safety
/// The CPU has AVX-512F.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn exp2_for_bf16(x: __m512) -> __m512 {
    const C: [f32; 4] = [
        9.618_129e-3,
        5.550_411e-2,
        0.240_226_5,
        std::f32::consts::LN_2,
    ];
    let x = _mm512_max_ps(x, _mm512_set1_ps(-127.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
    let r = _mm512_sub_ps(x, n);
    let mut p = _mm512_set1_ps(C[0]);
    for c in &C[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
    }
    _mm512_scalef_ps(_mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0)), n)
}

/// The online softmax of the f32 path (the same max, rescaling and sums; the probabilities'
/// exponential is [`exp2_for_bf16`]) over a `keys x 16` panel of base-2 scores, writing the probabilities as bf16 pair tiles into `dst` (zero past the
/// last key) instead of back into the scores: the product `Oᵀ += Vᵀ·Pᵀ` reads them as they
/// are.
///
/// # Safety
/// The CPU has AVX-512F/BW/BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn softmax_pairs(
    scores: &[f32],
    max: &mut [f32],
    sum: &mut [f32],
    alpha: &mut [f32; NR],
    dst: &mut [u16],
) {
    assert!(max.len() >= NR && sum.len() >= NR && scores.len().is_multiple_of(NR));
    let rows = scores.len() / NR;
    let tiles = rows.div_ceil(TILE_K);
    assert!(dst.len() >= tiles * TILE_VALUES);
    let s = scores.as_ptr();
    let old = _mm512_loadu_ps(max.as_ptr());
    let mut m = old;
    for r in 0..rows {
        m = _mm512_max_ps(m, _mm512_loadu_ps(s.add(r * NR)));
    }
    let mut total = _mm512_setzero_ps();
    let mut probability = |r: usize| {
        if r < rows {
            let p = exp2_for_bf16(_mm512_sub_ps(_mm512_loadu_ps(s.add(r * NR)), m));
            total = _mm512_add_ps(total, p);
            p
        } else {
            _mm512_setzero_ps()
        }
    };
    for pair in 0..tiles * TILE {
        let first = probability(2 * pair);
        let second = probability(2 * pair + 1);
        amx::store_pair_row(dst.as_mut_ptr().add(pair * TILE_K), first, second);
    }
    let a = exp2_16(_mm512_sub_ps(old, m));
    let l = _mm512_fmadd_ps(_mm512_loadu_ps(sum.as_ptr()), a, total);
    _mm512_storeu_ps(sum.as_mut_ptr(), l);
    _mm512_storeu_ps(max.as_mut_ptr(), m);
    _mm512_storeu_ps(alpha.as_mut_ptr(), a);
}
