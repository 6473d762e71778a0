//! AMX-BF16 products, `C (f32) = A (bf16) · B (bf16)` on the tile registers: the products
//! whose packed operand is stored in bf16, on a CPU with AMX (`Level::Amx`). The other
//! operand (activations, convolution patches) is rounded to bf16 as it is packed; the sums
//! are f32.
//!
//! Tile layout (16 rows of 32 bf16 values, 1 KiB per tile). A packed operand is cut along its
//! depth into [`KB`]-deep blocks; within a block, its long side (the
//! rows of A, the columns of B) into 16-wide tiles, an even number of them (zero past the
//! end), and the block's depth into [`TILE_K`]-deep tiles (zero past the end). Tile
//! `(s, t)` (long-side tile `s`, depth tile `t`) of a block lies at `(s · depth_tiles + t) ·
//! TILE_VALUES`. A's tiles are row-major (row `r`: 32 consecutive depth values of one row);
//! B's are pair-interleaved, the way `tdpbf16ps` reads its second source (row `r`: for each
//! of the 16 columns, the values at depths `2r` and `2r + 1`).
//!
//! One kernel call computes a 32 x 32 block of C as four 16 x 16 f32 tiles (`tmm0-3`) from
//! two A tiles (`tmm4-5`) and two B tiles (`tmm6-7`) per depth tile, four independent tile
//! products in flight. Each element of C sums its depth tiles in order, so results do not
//! depend on the thread count.

use half::bf16;

use super::KC;

/// Depth of one block of a tile product: the C tiles are loaded and stored once per block.
pub(crate) const KB: usize = 256;
const _: () = assert!(KB.is_multiple_of(KC) && KC.is_multiple_of(TILE_K));

/// Rows (and columns of C) per tile.
pub(crate) const TILE: usize = 16;
/// bf16 depth values per tile row.
pub(crate) const TILE_K: usize = 32;
/// bf16 values per tile.
pub(crate) const TILE_VALUES: usize = TILE * TILE_K;
/// Long-side tiles are taken in pairs: a packed side is padded to a multiple of this.
pub(crate) const PAIR: usize = 2 * TILE;

/// How a packed operand's tiles hold their values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The left operand: tile rows are rows of A (row-major tiles).
    Rows,
    /// The right operand: tile rows are depth pairs (pair-interleaved tiles).
    Pairs,
}

/// Long-side tiles per block of an operand `len` long (even).
pub(crate) fn side_tiles(len: usize) -> usize {
    len.div_ceil(PAIR) * 2
}

/// Where block `block` (depth `k0 = block · KB`) starts, in values.
pub(crate) fn block_offset(len: usize, block: usize) -> usize {
    block * side_tiles(len) * (KB / TILE_K) * TILE_VALUES
}

/// The index of element `(k, j)` (depth `k`, long side `j`) in tiles of `role`.
pub(crate) fn index(depth: usize, len: usize, role: Role, k: usize, j: usize) -> usize {
    let block = k / KB;
    let kc = KB.min(depth - block * KB);
    let depth_tiles = kc.div_ceil(TILE_K);
    let kk = k % KB;
    let (s, t) = (j / TILE, kk / TILE_K);
    let within = match role {
        Role::Rows => (j % TILE) * TILE_K + kk % TILE_K,
        Role::Pairs => (kk % TILE_K / 2) * TILE_K + (j % TILE) * 2 + kk % 2,
    };
    block_offset(len, block) + (s * depth_tiles + t) * TILE_VALUES + within
}

/// Values a `depth x len` operand takes in tiles.
pub(crate) fn tiled_len(depth: usize, len: usize) -> usize {
    if depth == 0 || len == 0 {
        return 0;
    }
    let blocks = depth.div_ceil(KB);
    let last = depth - (blocks - 1) * KB;
    block_offset(len, blocks - 1) + side_tiles(len) * last.div_ceil(TILE_K) * TILE_VALUES
}

/// Packs `get(k, j)` as bf16 bits into tiles of `role` (zero padding). Each tile is filled
/// source row by source row (`j` outer, `k` inner), so a row-major `(len, depth)` weight is
/// read in order.
pub(crate) fn pack<T: Send + Sync>(
    depth: usize,
    len: usize,
    role: Role,
    get: &(impl Fn(usize, usize) -> T + Sync),
    convert: impl Fn(T) -> u16 + Sync,
) -> Vec<u16> {
    use rayon::prelude::*;
    let mut data = vec![0u16; tiled_len(depth, len)];
    if data.is_empty() {
        return data;
    }
    let block_len = block_offset(len, 1);
    data.par_chunks_mut(block_len)
        .enumerate()
        .for_each(|(block, values)| {
            let k0 = block * KB;
            let kc = KB.min(depth - k0);
            let depth_tiles = kc.div_ceil(TILE_K);
            for (at, tile) in values.chunks_exact_mut(TILE_VALUES).enumerate() {
                let (s, t) = (at / depth_tiles, at % depth_tiles);
                let ks = t * TILE_K..(t * TILE_K + TILE_K).min(kc);
                for jj in 0..TILE.min(len.saturating_sub(s * TILE)) {
                    let j = s * TILE + jj;
                    for (kk, k) in ks.clone().enumerate() {
                        let v = convert(get(k0 + k, j));
                        match role {
                            Role::Rows => tile[jj * TILE_K + kk] = v,
                            Role::Pairs => tile[kk / 2 * TILE_K + jj * 2 + kk % 2] = v,
                        }
                    }
                }
            }
        });
    data
}

/// Rounds f32 to bf16 bits (nearest even), as the vector conversion does (which also flushes
/// subnormals, a difference below bf16's resolution of normal values).
fn to_bf16(x: f32) -> u16 {
    bf16::from_f32(x).to_bits()
}

/// Converts rows `0 .. rows` of `src` (row `i` at `src[i * ld ..]`, depth `0 .. kc`) into
/// row-major tiles in `dst`: `rows` rounded up to [`PAIR`] rows (zero past `rows`) of
/// `kc.div_ceil(TILE_K)` depth tiles each (zero past `kc`). Scalar: for the slow paths.
pub(crate) fn rows_to_tiles(src: &[f32], ld: usize, rows: usize, kc: usize, dst: &mut [u16]) {
    let depth_tiles = kc.div_ceil(TILE_K);
    let padded = rows.div_ceil(PAIR) * PAIR;
    assert!(dst.len() >= padded * depth_tiles * TILE_K);
    for i in 0..padded {
        let (s, r) = (i / TILE, i % TILE);
        for t in 0..depth_tiles {
            let out = &mut dst[(s * depth_tiles + t) * TILE_VALUES + r * TILE_K..][..TILE_K];
            for (c, o) in out.iter_mut().enumerate() {
                let k = t * TILE_K + c;
                *o = if i < rows && k < kc {
                    to_bf16(src[i * ld + k])
                } else {
                    0
                };
            }
        }
    }
}

/// Converts one `kc x TILE` f32 panel (depth-major, `TILE` values per depth) into
/// `kc.div_ceil(TILE_K)` pair-interleaved tiles in `dst`, with AVX-512 where the CPU has AMX.
pub(crate) fn panel_to_pairs_any(panel: &[f32], kc: usize, dst: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if usable() {
        // SAFETY: `usable` implies AVX-512F/BW/BF16.
        unsafe { panel_to_pairs(panel, kc, dst) };
        return;
    }
    panel_to_pairs_reference(panel, kc, dst)
}

/// [`panel_to_pairs_any`] without vectors: the plain version of the conversion.
pub(crate) fn panel_to_pairs_reference(panel: &[f32], kc: usize, dst: &mut [u16]) {
    for t in 0..kc.div_ceil(TILE_K) {
        for r in 0..TILE {
            for c in 0..TILE {
                for e in 0..2 {
                    let k = t * TILE_K + 2 * r + e;
                    dst[t * TILE_VALUES + r * TILE_K + c * 2 + e] = if k < kc {
                        to_bf16(panel[k * TILE + c])
                    } else {
                        0
                    };
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::*;

#[cfg(not(target_arch = "x86_64"))]
/// AMX is an x86-64 extension.
pub(crate) fn usable() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;
    use std::arch::x86_64::*;
    use std::cell::RefCell;
    use std::sync::OnceLock;

    use rayon::prelude::*;

    use super::*;
    use crate::gemm::{PackA, PackB, Sink};

    /// Whether this CPU has AMX-BF16 and Linux lets this process use the tile registers
    /// (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, asked once).
    pub(crate) fn usable() -> bool {
        static USABLE: OnceLock<bool> = OnceLock::new();
        *USABLE.get_or_init(|| {
            // CPUID leaf 7 exists on every x86-64 CPU with AVX-512 (the caller checks first).
            let leaf7 = __cpuid_count(7, 0);
            let (amx_bf16, amx_tile) = (leaf7.edx >> 22 & 1 == 1, leaf7.edx >> 24 & 1 == 1);
            amx_bf16
                && amx_tile
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512bf16")
                && request_permission()
        })
    }

    #[cfg(target_os = "linux")]
    fn request_permission() -> bool {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with these arguments only changes which register state the
        // kernel saves for this process.
        unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            ) == 0
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn request_permission() -> bool {
        false
    }

    /// The tile configuration `ldtilecfg` reads (palette 1): tiles 0-7 are 16 rows of 64 bytes.
    #[repr(C, align(64))]
    struct Config {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        bytes_per_row: [u16; 16],
        rows: [u8; 16],
    }

    static CONFIG: Config = Config {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        bytes_per_row: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
        rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
    };

    /// The tile registers configured on this thread for as long as it lives.
    pub(crate) struct Configured;

    impl Configured {
        /// # Safety
        /// [`usable`] is true.
        pub(crate) unsafe fn new() -> Self {
            asm!("ldtilecfg [{}]", in(reg) &raw const CONFIG, options(nostack, readonly));
            Configured
        }
    }

    impl Drop for Configured {
        fn drop(&mut self) {
            // SAFETY: releasing the tile state is always allowed once it was configured.
            unsafe { asm!("tilerelease", options(nostack, nomem)) };
        }
    }

    /// `c[32 x 32] (+)= A · B` over `depth_tiles` depth tiles: `a0`, `a1` the row-major tiles
    /// of rows 0-15 and 16-31, `b0`, `b1` the pair tiles of columns 0-15 and 16-31, each
    /// `depth_tiles` consecutive tiles; `c` at row stride `ldc` floats.
    ///
    /// # Safety
    /// The thread is [`Configured`]; `depth_tiles ≥ 1`; the pointers hold what is said above.
    #[allow(clippy::too_many_arguments)]
    unsafe fn kernel(
        depth_tiles: usize,
        a0: *const u16,
        a1: *const u16,
        b0: *const u16,
        b1: *const u16,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        let c_low = c.add(TILE * ldc);
        let c = [c, c.add(TILE), c_low, c_low.add(TILE)];
        kernel4(depth_tiles, [a0, a1], [b0, b1], c, ldc, accumulate)
    }

    /// The tile product behind every AMX kernel: `c[i·2 + j] (+)= A_i · B_j` (four 16 x 16 f32
    /// tiles, each at row stride `ldc` floats) over `depth_tiles` depth tiles, `a[i]` holding
    /// consecutive row tiles and `b[j]` consecutive pair tiles.
    ///
    /// # Safety
    /// The thread is [`Configured`]; `depth_tiles ≥ 1`; each pointer holds what is said above.
    pub(crate) unsafe fn kernel4(
        depth_tiles: usize,
        [a0, a1]: [*const u16; 2],
        [b0, b1]: [*const u16; 2],
        [c00, c01, c10, c11]: [*mut f32; 4],
        ldc: usize,
        accumulate: bool,
    ) {
        let ld = ldc * 4;
        if accumulate {
            asm!(
                "tileloadd tmm0, [{c00} + {ld}*1]",
                "tileloadd tmm1, [{c01} + {ld}*1]",
                "tileloadd tmm2, [{c10} + {ld}*1]",
                "tileloadd tmm3, [{c11} + {ld}*1]",
                c00 = in(reg) c00,
                c01 = in(reg) c01,
                c10 = in(reg) c10,
                c11 = in(reg) c11,
                ld = in(reg) ld,
                options(nostack, readonly),
            );
        } else {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
        }
        // The C tiles stay in tmm0-3 between the blocks: nothing else in the thread uses the
        // tile registers.
        asm!(
            "2:",
            "tileloadd tmm4, [{a0} + {s}*1]",
            "tileloadd tmm6, [{b0} + {s}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {s}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {s}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            // The A tiles two depth steps ahead, line by line: they come from L2 (the B pair
            // stays in L1 across the A pairs), and asking early measured 5-9% faster on SD's
            // 3x3 convolutions. A prefetch past the operand never faults.
            "prefetcht0 [{a0} + 2048]",
            "prefetcht0 [{a1} + 2048]",
            "prefetcht0 [{a0} + 2112]",
            "prefetcht0 [{a1} + 2112]",
            "prefetcht0 [{a0} + 2176]",
            "prefetcht0 [{a1} + 2176]",
            "prefetcht0 [{a0} + 2240]",
            "prefetcht0 [{a1} + 2240]",
            "prefetcht0 [{a0} + 2304]",
            "prefetcht0 [{a1} + 2304]",
            "prefetcht0 [{a0} + 2368]",
            "prefetcht0 [{a1} + 2368]",
            "prefetcht0 [{a0} + 2432]",
            "prefetcht0 [{a1} + 2432]",
            "prefetcht0 [{a0} + 2496]",
            "prefetcht0 [{a1} + 2496]",
            "prefetcht0 [{a0} + 2560]",
            "prefetcht0 [{a1} + 2560]",
            "prefetcht0 [{a0} + 2624]",
            "prefetcht0 [{a1} + 2624]",
            "prefetcht0 [{a0} + 2688]",
            "prefetcht0 [{a1} + 2688]",
            "prefetcht0 [{a0} + 2752]",
            "prefetcht0 [{a1} + 2752]",
            "prefetcht0 [{a0} + 2816]",
            "prefetcht0 [{a1} + 2816]",
            "prefetcht0 [{a0} + 2880]",
            "prefetcht0 [{a1} + 2880]",
            "prefetcht0 [{a0} + 2944]",
            "prefetcht0 [{a1} + 2944]",
            "prefetcht0 [{a0} + 3008]",
            "prefetcht0 [{a1} + 3008]",
            "add {a0}, 1024",
            "add {a1}, 1024",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {n}",
            "jnz 2b",
            "tilestored [{c00} + {ld}*1], tmm0",
            "tilestored [{c01} + {ld}*1], tmm1",
            "tilestored [{c10} + {ld}*1], tmm2",
            "tilestored [{c11} + {ld}*1], tmm3",
            c00 = in(reg) c00,
            c01 = in(reg) c01,
            c10 = in(reg) c10,
            c11 = in(reg) c11,
            ld = in(reg) ld,
            s = in(reg) 64usize,
            a0 = inout(reg) a0 => _,
            a1 = inout(reg) a1 => _,
            b0 = inout(reg) b0 => _,
            b1 = inout(reg) b1 => _,
            n = inout(reg) depth_tiles => _,
            options(nostack),
        );
    }

    /// Multiplies the `2·mp x 2·nq` tiles of one block: A tile `s` of the block at
    /// `a + s · depth_tiles · TILE_VALUES`, B tile `s` at `b + ..` likewise, into the f32
    /// `tile` (row stride `ld`).
    #[allow(clippy::too_many_arguments)]
    fn multiply_block(
        depth_tiles: usize,
        (a, a_tiles): (&[u16], usize),
        (b, b_tiles): (&[u16], usize),
        tile: &mut [f32],
        ld: usize,
        accumulate: bool,
        _configured: &Configured,
    ) {
        let step = depth_tiles * TILE_VALUES;
        assert!(a_tiles % 2 == 0 && b_tiles % 2 == 0 && depth_tiles > 0);
        assert!(a.len() >= a_tiles * step && b.len() >= b_tiles * step);
        assert!(tile.len() >= (a_tiles * TILE - 1) * ld + b_tiles * TILE);
        for q in (0..b_tiles).step_by(2) {
            for p in (0..a_tiles).step_by(2) {
                // SAFETY: the thread is configured (the guard is borrowed); the tiles and
                // the C block are in bounds (asserted above).
                unsafe {
                    kernel(
                        depth_tiles,
                        a.as_ptr().add(p * step),
                        a.as_ptr().add((p + 1) * step),
                        b.as_ptr().add(q * step),
                        b.as_ptr().add((q + 1) * step),
                        tile.as_mut_ptr().add(p * TILE * ld + q * TILE),
                        ld,
                        accumulate,
                    )
                };
            }
        }
    }

    /// Converts rows `0 .. rows` of `src` into row-major tiles, as [`rows_to_tiles`], with
    /// AVX-512 BF16 conversions.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/BF16 (implied by [`usable`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(crate) unsafe fn rows_to_tiles_avx512(
        src: &[f32],
        ld: usize,
        rows: usize,
        kc: usize,
        dst: &mut [u16],
    ) {
        let depth_tiles = kc.div_ceil(TILE_K);
        let padded = rows.div_ceil(PAIR) * PAIR;
        assert!(dst.len() >= padded * depth_tiles * TILE_K);
        assert!(rows == 0 || (rows - 1) * ld + kc <= src.len());
        for i in 0..padded {
            let (s, r) = (i / TILE, i % TILE);
            for t in 0..depth_tiles {
                let out = dst
                    .as_mut_ptr()
                    .add((s * depth_tiles + t) * TILE_VALUES + r * TILE_K);
                if i >= rows {
                    _mm512_storeu_si512(out.cast(), _mm512_setzero_si512());
                    continue;
                }
                let k = t * TILE_K;
                let row = src.as_ptr().add(i * ld + k);
                let left = kc - k;
                let (lo, hi) = if left >= TILE_K {
                    (_mm512_loadu_ps(row), _mm512_loadu_ps(row.add(16)))
                } else {
                    let mask = |from: usize| -> __mmask16 {
                        let n = left.saturating_sub(from).min(16);
                        ((1u32 << n) - 1) as __mmask16
                    };
                    (
                        _mm512_maskz_loadu_ps(mask(0), row),
                        _mm512_maskz_loadu_ps(mask(16), row.add(16)),
                    )
                };
                let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(out.cast(), packed);
            }
        }
    }

    /// Stores one pair-tile row at `out`: for each of the 16 columns, `first`'s and `second`'s
    /// value (two consecutive depths) rounded to bf16, interleaved as `tdpbf16ps` reads B.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/BF16; `out` is valid for 32 values.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(crate) unsafe fn store_pair_row(out: *mut u16, first: __m512, second: __m512) {
        // Lane 2c takes column c of the first row, lane 2c + 1 column c of the second.
        let interleave = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20,
            4, 19, 3, 18, 2, 17, 1, 16, 0,
        );
        let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(second, first));
        _mm512_storeu_si512(out.cast(), _mm512_permutexvar_epi16(interleave, packed));
    }

    /// Converts one `kc x TILE` f32 panel into pair tiles, as `panel_to_pairs_reference`,
    /// with AVX-512 BF16 conversions.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/BF16 (implied by [`usable`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(crate) unsafe fn panel_to_pairs(panel: &[f32], kc: usize, dst: &mut [u16]) {
        let depth_tiles = kc.div_ceil(TILE_K);
        assert!(panel.len() >= kc * TILE && dst.len() >= depth_tiles * TILE_VALUES);
        let src = panel.as_ptr();
        for pair in 0..depth_tiles * TILE {
            let k = 2 * pair;
            let out = dst.as_mut_ptr().add(pair * TILE_K);
            let first = if k < kc {
                _mm512_loadu_ps(src.add(k * TILE))
            } else {
                _mm512_setzero_ps()
            };
            let second = if k + 1 < kc {
                _mm512_loadu_ps(src.add((k + 1) * TILE))
            } else {
                _mm512_setzero_ps()
            };
            store_pair_row(out, first, second);
        }
    }

    /// Per-thread buffers: the C tile, the converted operand's tiles, one gathered panel.
    #[derive(Default)]
    struct Scratch {
        tile: Vec<f32>,
        tiles: Vec<u16>,
        panel: Vec<f32>,
    }

    thread_local! {
        static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    }

    fn grow<T: Default + Clone>(buffer: &mut Vec<T>, len: usize) -> &mut [T] {
        if buffer.len() < len {
            buffer.resize(len, T::default());
        }
        &mut buffer[..len]
    }

    /// Splits `len` into equal blocks of at most `cap`, each a multiple of [`PAIR`]: (block
    /// length, block count).
    fn blocks(len: usize, cap: usize) -> (usize, usize) {
        let count = len.div_ceil(cap);
        let step = len.div_ceil(count).div_ceil(PAIR) * PAIR;
        (step, len.div_ceil(step))
    }

    /// The most rows of C one task of [`gemm`] computes.
    const MC: usize = 128;
    /// The most columns of C one task of [`gemm`] computes.
    const NC: usize = 512;
    /// The most rows of C one task of [`gemm_packed_a`] computes.
    const MC_A: usize = 384;
    /// The most columns of C one task of [`gemm_packed_a`] computes.
    const NC_B: usize = 256;

    /// `C = A · B` with B packed once in pair tiles (`b_tiles`, `n` columns), A packed to
    /// row tiles block by block; each finished block goes to `sink`.
    ///
    /// # Safety
    /// [`usable`] is true.
    pub(crate) unsafe fn gemm(a: &dyn PackA, b_tiles: &[u16], n: usize, sink: &dyn Sink) {
        let (m, k) = (a.rows(), a.depth());
        let (mc_step, m_blocks) = blocks(m, MC);
        let (nc_step, n_blocks) = blocks(n, NC);
        (0..m_blocks * n_blocks).into_par_iter().for_each(|task| {
            let (mb, nb) = (task / n_blocks, task % n_blocks);
            let (m0, n0) = (mb * mc_step, nb * nc_step);
            let (mc, nc) = (mc_step.min(m - m0), nc_step.min(n - n0));
            let (m_tiles, n_tiles) = (side_tiles(mc), side_tiles(nc));
            let ld = n_tiles * TILE;
            SCRATCH.with(|scratch| {
                let scratch = &mut *scratch.borrow_mut();
                let tile = grow(&mut scratch.tile, m_tiles * TILE * ld);
                if k == 0 {
                    tile.fill(0.0);
                }
                // SAFETY: the caller checked `usable`.
                let configured = Configured::new();
                for (block, k0) in (0..k).step_by(KB).enumerate() {
                    let kc = KB.min(k - k0);
                    let depth_tiles = kc.div_ceil(TILE_K);
                    let a_tiles = grow(&mut scratch.tiles, m_tiles * depth_tiles * TILE_VALUES);
                    a.pack_bf16_tiles(m0, mc, k0, kc, a_tiles);
                    let b = &b_tiles
                        [block_offset(n, block) + (n0 / TILE) * depth_tiles * TILE_VALUES..];
                    multiply_block(
                        depth_tiles,
                        (a_tiles, m_tiles),
                        (b, n_tiles),
                        tile,
                        ld,
                        k0 > 0,
                        &configured,
                    );
                }
                drop(configured);
                sink.write(m0, n0, mc, nc, tile, ld);
            });
        });
    }

    /// `C = A · B` with A packed once in row tiles (`a_tiles`, `m` rows) and B gathered panel
    /// by panel and converted to pair tiles; each finished block goes to `sink`.
    ///
    /// # Safety
    /// [`usable`] is true.
    pub(crate) unsafe fn gemm_packed_a(a_tiles: &[u16], m: usize, b: &dyn PackB, sink: &dyn Sink) {
        let (k, n) = (b.depth(), b.cols());
        let (mc_step, m_blocks) = blocks(m, MC_A);
        let (nc_step, n_blocks) = blocks(n, NC_B);
        (0..m_blocks * n_blocks).into_par_iter().for_each(|task| {
            // Neighbouring tasks share a block of B columns (the gathered input).
            let (nb, mb) = (task / m_blocks, task % m_blocks);
            let (m0, n0) = (mb * mc_step, nb * nc_step);
            let (mc, nc) = (mc_step.min(m - m0), nc_step.min(n - n0));
            let (m_tiles, n_tiles) = (side_tiles(mc), side_tiles(nc));
            let ld = n_tiles * TILE;
            SCRATCH.with(|scratch| {
                let scratch = &mut *scratch.borrow_mut();
                let tile = grow(&mut scratch.tile, m_tiles * TILE * ld);
                if k == 0 {
                    tile.fill(0.0);
                }
                let panel = grow(&mut scratch.panel, KC.min(k) * TILE);
                // SAFETY: the caller checked `usable`.
                let configured = Configured::new();
                for (block, k0) in (0..k).step_by(KB).enumerate() {
                    let kc = KB.min(k - k0);
                    let depth_tiles = kc.div_ceil(TILE_K);
                    let step = depth_tiles * TILE_VALUES;
                    let b_tiles = grow(&mut scratch.tiles, n_tiles * step);
                    // The padding tile of an odd panel count.
                    b_tiles[nc.div_ceil(TILE) * step..].fill(0);
                    // Gathered KC rows at a time (what `PackB` takes at most).
                    for sub in (0..kc).step_by(KC) {
                        let rows = KC.min(kc - sub);
                        let dst = &mut b_tiles[sub / TILE_K * TILE_VALUES..];
                        b.pack_pair_tiles(n0, nc, k0 + sub, rows, panel, dst, step);
                    }
                    let a = &a_tiles[block_offset(m, block) + (m0 / TILE) * step..];
                    multiply_block(
                        depth_tiles,
                        (a, m_tiles),
                        (b_tiles, n_tiles),
                        tile,
                        ld,
                        k0 > 0,
                        &configured,
                    );
                }
                drop(configured);
                sink.write(m0, n0, mc, nc, tile, ld);
            });
        });
    }

    /// [`panel_to_pairs`] for tests, which call it only where [`usable`] is true.
    #[cfg(test)]
    pub(crate) fn panel_to_pairs_for_tests(panel: &[f32], kc: usize, dst: &mut [u16]) {
        assert!(usable());
        // SAFETY: `usable` implies AVX-512F/BW/BF16.
        unsafe { panel_to_pairs(panel, kc, dst) }
    }
}
