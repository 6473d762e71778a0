//! Flash-style scaled dot-product attention, `softmax(Q·Kᵀ·scale)·V`, computed block by block
//! with an online softmax so the `seq_q x seq_kv` score matrix never exists.
//!
//! Each task takes one (batch, head, block of query rows). For every block of keys it packs K
//! and V once and then, one 16-query panel at a time:
//!
//! 1. computes the transposed scores `Sᵀ = K·(scale·log2 e·Q)ᵀ` (base 2, so the softmax
//!    takes `2^x`) with the GEMM micro-kernel (keys are
//!    the `MR` rows of A, the queries the `NR` columns of B) into a tile at row stride `NR`,
//!    which is exactly the packed layout of a B panel;
//! 2. runs the online softmax down the keys, vectorized across the 16 queries (running max
//!    and sum per query, no horizontal reductions), turning the scores into probabilities in
//!    place and rescaling the accumulator;
//! 3. accumulates `Oᵀ += Vᵀ·Pᵀ` with the micro-kernel: the head dimensions are the rows of A
//!    (padded to a multiple of `MR`, so 40 costs 42), the probabilities are already the B panel.
//!
//! The AVX2 softmax takes its own `2^x` rather than `math::avx2::exp`: its arguments are never
//! positive and its tiny results need no subnormal care, so it skips the overflow clamp, the
//! `log2 e` multiply (folded into the query scale) and the two-factor `2^n` scaling — about
//! half the instructions, and 10-15% faster attention at head dim 40 (measured).
//!
//! Finally each query's output is divided by its sum and written back. Every query's result
//! depends only on the key block size, which follows the head dimension alone, so results do
//! not depend on the thread count (or on the query block size).

use std::cell::RefCell;

use rayon::prelude::*;

use crate::cpu::{self, Level};
use crate::gemm::{SharedMut, Tiles, KC, MR, NR};

/// The sizes of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    /// Independent sequences.
    pub batch: usize,
    /// Attention heads.
    pub heads: usize,
    /// Query rows per sequence.
    pub seq_q: usize,
    /// Key and value rows per sequence.
    pub seq_kv: usize,
    /// Values per head in each query, key and value row.
    pub head_dim: usize,
}

impl AttentionShape {
    /// Values in `q` and `out`: `batch·seq_q·heads·head_dim`.
    pub fn q_len(&self) -> usize {
        self.batch * self.seq_q * self.heads * self.head_dim
    }

    /// Values in `k` and in `v`: `batch·seq_kv·heads·head_dim`.
    pub fn kv_len(&self) -> usize {
        self.batch * self.seq_kv * self.heads * self.head_dim
    }

    /// Floating-point operations of the two products, `4·batch·heads·seq_q·seq_kv·head_dim`.
    pub fn flops(&self) -> f64 {
        4.0 * (self.batch * self.heads) as f64
            * self.seq_q as f64
            * self.seq_kv as f64
            * self.head_dim as f64
    }
}

/// What the products' inputs are rounded to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// f32 throughout.
    F32,
    /// A bf16 model's attention: on the `amx` level the products run on the tiles with
    /// queries, keys, probabilities and values rounded to bf16 (f32 sums, softmax and
    /// accumulator); on the other levels as `F32`.
    Bf16,
}

/// Scaled dot-product attention on the current thread's kernel level.
///
/// `q` is `(batch, seq_q, heads, head_dim)`, `k` and `v` are `(batch, seq_kv, heads,
/// head_dim)` and `out` is `(batch, seq_q, heads, head_dim)`, all contiguous row-major: the
/// layout the q/k/v projections produce, so no transposes are needed around it. With `causal`
/// query `i` sees the keys `j ≤ i` only.
pub fn attention(
    shape: AttentionShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scale: f32,
    causal: bool,
    out: &mut [f32],
) {
    attention_at(cpu::level(), shape, q, k, v, scale, causal, out)
}

/// [`attention`] at a given level.
#[allow(clippy::too_many_arguments)]
pub fn attention_at(
    level: Level,
    shape: AttentionShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scale: f32,
    causal: bool,
    out: &mut [f32],
) {
    attention_with(level, Precision::F32, shape, q, k, v, scale, causal, out)
}

/// [`attention`] at a given level and precision.
#[allow(clippy::too_many_arguments)]
pub fn attention_with(
    level: Level,
    precision: Precision,
    shape: AttentionShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scale: f32,
    causal: bool,
    out: &mut [f32],
) {
    let q_block = query_block(shape, rayon::current_num_threads());
    run(
        level, precision, shape, q, k, v, scale, causal, out, q_block,
    );
}

/// Query rows one task handles at most: every task packs all its head's keys and values
/// once, so tasks are as large as this cap and the thread count allow (its accumulator and
/// packed queries, `2·MAX_Q_BLOCK·head_dim` values, stream from L3 panel by panel). 4096
/// (SD's largest sequence: one task per head) measured 4% (SD 1.5, d 40) and 11% (SDXL,
/// d 64) faster than 2048 on the AMX tiles, the same on f32.
const MAX_Q_BLOCK: usize = 4096;

/// Tasks per thread the query blocks aim for (load balance).
const TASKS_PER_THREAD: usize = 3;

/// The query block (a multiple of `NR`): each head's queries split into as few equal blocks
/// as give every thread a few tasks. Results do not depend on it, so it may follow the
/// thread count.
fn query_block(shape: AttentionShape, threads: usize) -> usize {
    let heads = (shape.batch * shape.heads).max(1);
    let wanted = (TASKS_PER_THREAD * threads).div_ceil(heads);
    let panels = shape.seq_q.div_ceil(NR).max(1);
    let blocks = wanted
        .max(shape.seq_q.div_ceil(MAX_Q_BLOCK))
        .clamp(1, panels);
    panels.div_ceil(blocks) * NR
}

/// Keys per block (a multiple of `MR` and `NR`): packed K and V blocks of up to 384 KB stay
/// in Zen 3's 512 KB L2 while every query panel of the task passes over them, and a panel of
/// scores (at most 384 x 16, 24 KB) stays in L1. It follows the head dimension only, since it
/// decides where the online softmax rescales: head dim 40 and 80 take 384 keys, 160 takes
/// 288, 512 takes 96.
fn kv_block(head_dim: usize) -> usize {
    let budget = 384 * 1024 / (2 * 4 * head_dim.max(1));
    (budget / 48 * 48).clamp(48, 384)
}

/// Everything a task needs.
struct Job<'a> {
    tiles: Tiles,
    softmax: SoftmaxPanel,
    shape: AttentionShape,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    scale: f32,
    causal: bool,
    kv_block: usize,
    out: SharedMut,
    out_len: usize,
}

#[allow(clippy::too_many_arguments)]
fn run(
    level: Level,
    precision: Precision,
    shape: AttentionShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scale: f32,
    causal: bool,
    out: &mut [f32],
    q_block: usize,
) {
    assert_eq!(q.len(), shape.q_len(), "q is not {shape:?}");
    assert_eq!(k.len(), shape.kv_len(), "k is not {shape:?}");
    assert_eq!(v.len(), shape.kv_len(), "v is not {shape:?}");
    assert_eq!(out.len(), shape.q_len(), "out is not {shape:?}");
    assert_eq!(
        q_block % NR,
        0,
        "query block {q_block} is not a multiple of {NR}"
    );
    if out.is_empty() {
        return;
    }
    assert!(shape.seq_kv > 0, "attention over no keys: {shape:?}");
    assert!(
        level.is_available(),
        "kernel level {level} is not available"
    );
    let job = Job {
        tiles: Tiles::of(level),
        softmax: softmax_panel(level),
        shape,
        q,
        k,
        v,
        scale,
        causal,
        kv_block: kv_block(shape.head_dim),
        out_len: out.len(),
        out: SharedMut(out.as_mut_ptr()),
    };
    let tiles = cfg!(target_arch = "x86_64") && level == Level::Amx && precision == Precision::Bf16;
    let q_blocks = shape.seq_q.div_ceil(q_block);
    let tasks = shape.batch * shape.heads * q_blocks;
    (0..tasks).into_par_iter().for_each(|t| {
        let (bh, qb) = (t / q_blocks, t % q_blocks);
        let q0 = qb * q_block;
        let rows = q_block.min(shape.seq_q - q0);
        SCRATCH.with(|scratch| {
            let (b, h, scratch) = (
                bh / shape.heads,
                bh % shape.heads,
                &mut scratch.borrow_mut(),
            );
            #[cfg(target_arch = "x86_64")]
            if tiles {
                // SAFETY: the level is available (asserted above), so AMX is usable.
                unsafe { amx::task(&job, b, h, (q0, rows), scratch) };
                return;
            }
            task(&job, b, h, (q0, rows), scratch)
        });
    });
}

/// Reusable per-thread buffers: packed queries, the output accumulator, packed K and V
/// blocks, one panel of scores, and the running max and sum per query.
#[derive(Default)]
struct Scratch {
    q: Vec<f32>,
    o: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    s: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
    /// bf16 tiles of the AMX path.
    tiles: Vec<u16>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

fn grow(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}

/// Attention for queries `q0 .. q0 + rows` of one (batch, head).
fn task(job: &Job, b: usize, h: usize, (q0, rows): (usize, usize), scratch: &mut Scratch) {
    let AttentionShape {
        seq_q,
        seq_kv,
        heads,
        head_dim: d,
        ..
    } = job.shape;
    let ld = heads * d;
    let dp = d.div_ceil(MR) * MR;
    let panels = rows.div_ceil(NR);
    let q_base = (b * seq_q + q0) * ld + h * d;
    let kv_base = b * seq_kv * ld + h * d;

    let Scratch {
        q: q_pack,
        o: acc,
        k: k_pack,
        v: v_pack,
        s,
        max,
        sum,
        ..
    } = scratch;
    let q_pack = grow(q_pack, panels * d * NR);
    // Scores in base-2 units: the softmax takes `2^(s - max)`, the same probabilities.
    let scale = job.scale * std::f32::consts::LOG2_E;
    pack_queries(&job.q[q_base..], ld, rows, d, scale, q_pack);
    let acc = grow(acc, panels * dp * NR);
    let max = grow(max, panels * NR);
    max.fill(f32::NEG_INFINITY);
    let sum = grow(sum, panels * NR);
    sum.fill(0.0);
    let bc = job.kv_block;
    let k_pack = grow(k_pack, bc * d);
    let v_pack = grow(v_pack, dp * bc);
    let s = grow(s, bc * NR);

    // With a causal mask the last query of the block sees keys up to its own index.
    let kv_end = if job.causal {
        seq_kv.min(q0 + rows)
    } else {
        seq_kv
    };
    let tiles = job.tiles;
    // Consecutive key (and value) panels go to the kernel together where the level groups A
    // panels; the key panels are `MR x d`, so only when one depth block covers `d`.
    let a_group = tiles.groups().0;
    let key_group = if d <= KC { a_group } else { 1 };
    for kv0 in (0..kv_end).step_by(bc) {
        let keys = bc.min(kv_end - kv0);
        let key_panels = keys.div_ceil(MR);
        let k_block = &mut k_pack[..key_panels * MR * d];
        pack_keys(&job.k[kv_base + kv0 * ld..], ld, keys, d, k_block);
        let v_block = &mut v_pack[..dp * keys];
        pack_values(&job.v[kv_base + kv0 * ld..], ld, keys, d, v_block);
        for p in 0..panels {
            // Query index of the panel's first lane.
            let qa = q0 + p * NR;
            let visible = if job.causal {
                keys.min((qa + NR).saturating_sub(kv0))
            } else {
                keys
            };
            if visible == 0 {
                continue;
            }
            let q_panel = &q_pack[p * d * NR..][..d * NR];
            let key_panels = visible.div_ceil(MR);
            for kp in (0..key_panels).step_by(key_group) {
                let mp = key_group.min(key_panels - kp);
                let a = &k_block[kp * MR * d..][..mp * MR * d];
                let c = &mut s[kp * MR * NR..][..mp * MR * NR];
                for k0 in (0..d).step_by(KC) {
                    let kc = KC.min(d - k0);
                    // SAFETY: the level is available (asserted in `run`); `a` holds mp MR x kc
                    // panels from `k0·MR` (mp > 1 only when kc = d), `q_panel` a kc x NR panel
                    // from `k0·NR`, and `c` an (mp·MR) x NR tile at row stride NR.
                    unsafe {
                        tiles.run(
                            mp,
                            1,
                            kc,
                            a[k0 * MR..].as_ptr(),
                            q_panel[k0 * NR..].as_ptr(),
                            c.as_mut_ptr(),
                            NR,
                            k0 > 0,
                        )
                    };
                }
            }
            let scores = &mut s[..visible * NR];
            if job.causal {
                mask_future(scores, qa as isize - kv0 as isize);
            }
            let mut alpha = [0f32; NR];
            let max = &mut max[p * NR..][..NR];
            let sum = &mut sum[p * NR..][..NR];
            // SAFETY: `run` asserted the level available, so the CPU has its features; the
            // slice lengths are checked inside.
            unsafe { (job.softmax)(scores, max, sum, &mut alpha) };
            let o = &mut acc[p * dp * NR..][..dp * NR];
            if kv0 > 0 && alpha.iter().any(|&a| a != 1.0) {
                for row in o.chunks_exact_mut(NR) {
                    for (x, a) in row.iter_mut().zip(&alpha) {
                        *x *= a;
                    }
                }
            }
            // Value panels are `MR x keys`: grouped when all their keys are visible.
            let value_group = if visible == keys { a_group } else { 1 };
            let value_panels = dp / MR;
            for dpanel in (0..value_panels).step_by(value_group) {
                let mp = value_group.min(value_panels - dpanel);
                let a = &v_block[dpanel * MR * keys..][..mp * MR * keys];
                let c = &mut o[dpanel * MR * NR..][..mp * MR * NR];
                // SAFETY: the level is available; `a` holds mp MR x keys panels (`visible ≤
                // keys` steps are read; mp > 1 only when visible = keys), `scores` a visible
                // x NR panel, `c` an (mp·MR) x NR tile at row stride NR.
                unsafe {
                    tiles.run(
                        mp,
                        1,
                        visible,
                        a.as_ptr(),
                        scores.as_ptr(),
                        c.as_mut_ptr(),
                        NR,
                        kv0 > 0,
                    )
                };
            }
        }
    }

    for p in 0..panels {
        let o = &acc[p * dp * NR..][..dp * NR];
        for lane in 0..NR.min(rows - p * NR) {
            let inv = 1.0 / sum[p * NR + lane];
            let at = q_base + (p * NR + lane) * ld;
            assert!(at + d <= job.out_len);
            // SAFETY: in bounds (checked above); each task writes its own queries of its own
            // head, so no two tasks write the same element.
            let dst = unsafe { std::slice::from_raw_parts_mut(job.out.0.add(at), d) };
            for (dim, x) in dst.iter_mut().enumerate() {
                *x = o[dim * NR + lane] * inv;
            }
        }
    }
}

/// Rows ahead of the one being packed whose cache lines are requested early: the inputs'
/// rows are short (`head_dim` values) and `heads·head_dim` apart, which the hardware
/// prefetchers follow poorly, so packing would otherwise wait on memory row by row.
const PREFETCH_ROWS: usize = 8;

/// Asks for the cache lines of `src[at .. at + len]` (what is past the slice is skipped).
#[inline]
fn prefetch(src: &[f32], at: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let end = (at + len).min(src.len());
        for i in (at..end).step_by(16) {
            // SAFETY: a prefetch never faults and `i` is inside `src`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(src.as_ptr().add(i).cast()) };
        }
        // The last line, which the stride skips when the row does not start on a line.
        if at < end {
            // SAFETY: as above.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(src.as_ptr().add(end - 1).cast()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (src, at, len);
}

/// Packs `rows` queries (row `i` at `src[i·ld ..]`), times `scale`, as `NR`-wide B panels of
/// depth `d`; lanes past `rows` are zero.
fn pack_queries(src: &[f32], ld: usize, rows: usize, d: usize, scale: f32, dst: &mut [f32]) {
    for (p, panel) in dst.chunks_exact_mut(d * NR).enumerate() {
        for lane in 0..NR {
            let i = p * NR + lane;
            prefetch(src, (i + PREFETCH_ROWS) * ld, d);
            if i < rows {
                for (kk, &x) in src[i * ld..][..d].iter().enumerate() {
                    panel[kk * NR + lane] = x * scale;
                }
            } else {
                for kk in 0..d {
                    panel[kk * NR + lane] = 0.0;
                }
            }
        }
    }
}

/// Packs `keys` key rows as `MR`-row A panels of depth `d`; rows past `keys` are zero.
fn pack_keys(src: &[f32], ld: usize, keys: usize, d: usize, dst: &mut [f32]) {
    for (p, panel) in dst.chunks_exact_mut(MR * d).enumerate() {
        for i in 0..MR {
            let key = p * MR + i;
            prefetch(src, (key + PREFETCH_ROWS) * ld, d);
            if key < keys {
                for (kk, &x) in src[key * ld..][..d].iter().enumerate() {
                    panel[kk * MR + i] = x;
                }
            } else {
                for kk in 0..d {
                    panel[kk * MR + i] = 0.0;
                }
            }
        }
    }
}

/// Packs `keys` value rows transposed: `MR`-row A panels of head dimensions, each of depth
/// `keys`; dimensions past `d` are zero.
fn pack_values(src: &[f32], ld: usize, keys: usize, d: usize, dst: &mut [f32]) {
    for key in 0..keys {
        prefetch(src, (key + PREFETCH_ROWS) * ld, d);
        let row = &src[key * ld..][..d];
        for (p, panel) in dst.chunks_exact_mut(MR * keys).enumerate() {
            let dims = &mut panel[key * MR..][..MR];
            let d0 = p * MR;
            if d0 + MR <= d {
                dims.copy_from_slice(&row[d0..d0 + MR]);
            } else {
                for (i, x) in dims.iter_mut().enumerate() {
                    *x = row.get(d0 + i).copied().unwrap_or(0.0);
                }
            }
        }
    }
}

/// Sets the scores of keys a query may not see to -inf: in a panel whose first query is
/// `offset` keys past the block's first key, lane `j` sees block keys `kk ≤ offset + j`.
fn mask_future(scores: &mut [f32], offset: isize) {
    let keys = (scores.len() / NR) as isize;
    for kk in (offset + 1).max(0)..keys {
        let hidden = ((kk - offset) as usize).min(NR);
        scores[kk as usize * NR..][..hidden].fill(f32::NEG_INFINITY);
    }
}

/// One level's online softmax over a `keys x NR` panel of base-2 scores (key-major, one query
/// per lane): updates each query's running `max` and `sum`, turns the scores into
/// `2^(score - max)` in place and sets `alpha` to the factor the accumulator must be
/// rescaled by, `2^(old max - new max)`.
///
/// Every lane must see at least one finite score, now or in an earlier block.
type SoftmaxPanel =
    unsafe fn(scores: &mut [f32], max: &mut [f32], sum: &mut [f32], alpha: &mut [f32; NR]);

fn softmax_panel(level: Level) -> SoftmaxPanel {
    match level {
        Level::Generic => softmax_generic,
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => avx2::softmax,
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 | Level::Amx => avx2::softmax_avx512,
        #[cfg(not(target_arch = "x86_64"))]
        _ => softmax_generic,
    }
}

/// The portable online softmax (see [`SoftmaxPanel`]).
///
/// # Safety
/// None beyond the slice lengths, which are checked: `max` and `sum` hold `NR` values.
unsafe fn softmax_generic(
    scores: &mut [f32],
    max: &mut [f32],
    sum: &mut [f32],
    alpha: &mut [f32; NR],
) {
    let (max, sum) = (&mut max[..NR], &mut sum[..NR]);
    let mut new_max = [0f32; NR];
    new_max.copy_from_slice(max);
    for row in scores.chunks_exact(NR) {
        for (m, &x) in new_max.iter_mut().zip(row) {
            *m = m.max(x);
        }
    }
    let mut row_sum = [0f32; NR];
    for row in scores.chunks_exact_mut(NR) {
        for ((x, s), &m) in row.iter_mut().zip(&mut row_sum).zip(&new_max) {
            *x = (*x - m).exp2();
            *s += *x;
        }
    }
    for j in 0..NR {
        alpha[j] = (max[j] - new_max[j]).exp2();
        sum[j] = sum[j] * alpha[j] + row_sum[j];
        max[j] = new_max[j];
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! The online softmax with AVX2 + FMA: one query panel in two 256-bit registers.

    use std::arch::x86_64::*;

    use super::NR;

    const _: () = assert!(NR == 16);

    /// `2^x` of eight lanes: `2^n · 2^r` with `n = round(x)`, `|r| ≤ 1/2` and `2^r` from its
    /// degree-6 Taylor polynomial (relative error below 2e-7). Inputs are at most 0 (scores
    /// minus their max); at -127 and below (-inf included) the result is exactly 0.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp2_8(x: __m256) -> __m256 {
        // Adding 1.5·2^23 rounds to an integer in the low mantissa bits; the extra 127 makes
        // those bits the biased exponent of 2^n (0, i.e. the value 0, for n = -127).
        const SHIFT: f32 = 12_582_912.0 + 127.0;
        let x = _mm256_max_ps(x, _mm256_set1_ps(-127.0));
        let t = _mm256_add_ps(x, _mm256_set1_ps(SHIFT));
        let r = _mm256_sub_ps(x, _mm256_sub_ps(t, _mm256_set1_ps(SHIFT)));
        let mut p = _mm256_set1_ps(TAYLOR[0]);
        for c in &TAYLOR[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
        }
        let two_n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_castps_si256(t)));
        _mm256_mul_ps(p, two_n)
    }

    /// `(ln 2)^k / k!` for `k = 6 .. 0`: the Taylor polynomial of `2^r`.
    const TAYLOR: [f32; 7] = [
        1.540_353e-4,
        1.333_355_8e-3,
        9.618_129e-3,
        5.550_411e-2,
        0.240_226_5,
        std::f32::consts::LN_2,
        1.0,
    ];

    /// The AVX2 online softmax (see [`super::SoftmaxPanel`]).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `max` and `sum` hold `NR` values (checked).
    pub(super) unsafe fn softmax(
        scores: &mut [f32],
        max: &mut [f32],
        sum: &mut [f32],
        alpha: &mut [f32; 16],
    ) {
        assert!(max.len() >= NR && sum.len() >= NR && scores.len().is_multiple_of(NR));
        softmax_16(scores, max, sum, alpha)
    }

    /// The online softmax with one 512-bit register per panel row: the same operations
    /// lane by lane as [`softmax`] (bit-identical results), half the instructions.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `max` and `sum` hold `NR` values (checked).
    pub(super) unsafe fn softmax_avx512(
        scores: &mut [f32],
        max: &mut [f32],
        sum: &mut [f32],
        alpha: &mut [f32; 16],
    ) {
        assert!(max.len() >= NR && sum.len() >= NR && scores.len().is_multiple_of(NR));
        softmax_16_avx512(scores, max, sum, alpha)
    }

    /// [`exp2_8`] on sixteen lanes.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp2_16(x: __m512) -> __m512 {
        const SHIFT: f32 = 12_582_912.0 + 127.0;
        let x = _mm512_max_ps(x, _mm512_set1_ps(-127.0));
        let t = _mm512_add_ps(x, _mm512_set1_ps(SHIFT));
        let r = _mm512_sub_ps(x, _mm512_sub_ps(t, _mm512_set1_ps(SHIFT)));
        let mut p = _mm512_set1_ps(TAYLOR[0]);
        for c in &TAYLOR[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
        }
        let two_n = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_castps_si512(t)));
        _mm512_mul_ps(p, two_n)
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn softmax_16_avx512(
        scores: &mut [f32],
        max: &mut [f32],
        sum: &mut [f32],
        alpha: &mut [f32; 16],
    ) {
        let rows = scores.len() / NR;
        let s = scores.as_mut_ptr();
        let old = _mm512_loadu_ps(max.as_ptr());
        let mut m = old;
        for r in 0..rows {
            m = _mm512_max_ps(m, _mm512_loadu_ps(s.add(r * NR)));
        }
        let mut total = _mm512_setzero_ps();
        for r in 0..rows {
            let p = exp2_16(_mm512_sub_ps(_mm512_loadu_ps(s.add(r * NR)), m));
            _mm512_storeu_ps(s.add(r * NR), p);
            total = _mm512_add_ps(total, p);
        }
        let a = exp2_16(_mm512_sub_ps(old, m));
        let l = _mm512_fmadd_ps(_mm512_loadu_ps(sum.as_ptr()), a, total);
        _mm512_storeu_ps(sum.as_mut_ptr(), l);
        _mm512_storeu_ps(max.as_mut_ptr(), m);
        _mm512_storeu_ps(alpha.as_mut_ptr(), a);
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn softmax_16(
        scores: &mut [f32],
        max: &mut [f32],
        sum: &mut [f32],
        alpha: &mut [f32; 16],
    ) {
        let rows = scores.len() / NR;
        let s = scores.as_mut_ptr();
        let old0 = _mm256_loadu_ps(max.as_ptr());
        let old1 = _mm256_loadu_ps(max.as_ptr().add(8));
        let (mut m0, mut m1) = (old0, old1);
        for r in 0..rows {
            m0 = _mm256_max_ps(m0, _mm256_loadu_ps(s.add(r * NR)));
            m1 = _mm256_max_ps(m1, _mm256_loadu_ps(s.add(r * NR + 8)));
        }
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for r in 0..rows {
            let p0 = exp2_8(_mm256_sub_ps(_mm256_loadu_ps(s.add(r * NR)), m0));
            let p1 = exp2_8(_mm256_sub_ps(_mm256_loadu_ps(s.add(r * NR + 8)), m1));
            _mm256_storeu_ps(s.add(r * NR), p0);
            _mm256_storeu_ps(s.add(r * NR + 8), p1);
            s0 = _mm256_add_ps(s0, p0);
            s1 = _mm256_add_ps(s1, p1);
        }
        let a0 = exp2_8(_mm256_sub_ps(old0, m0));
        let a1 = exp2_8(_mm256_sub_ps(old1, m1));
        let l0 = _mm256_fmadd_ps(_mm256_loadu_ps(sum.as_ptr()), a0, s0);
        let l1 = _mm256_fmadd_ps(_mm256_loadu_ps(sum.as_ptr().add(8)), a1, s1);
        _mm256_storeu_ps(sum.as_mut_ptr(), l0);
        _mm256_storeu_ps(sum.as_mut_ptr().add(8), l1);
        _mm256_storeu_ps(max.as_mut_ptr(), m0);
        _mm256_storeu_ps(max.as_mut_ptr().add(8), m1);
        _mm256_storeu_ps(alpha.as_mut_ptr(), a0);
        _mm256_storeu_ps(alpha.as_mut_ptr().add(8), a1);
    }
}

#[cfg(target_arch = "x86_64")]
mod amx;

#[cfg(test)]
mod tests;
