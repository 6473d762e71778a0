//! Blocked GEMM, `C = A · B`, with B packed once (the weights) and A packed block by block as
//! the product runs (activations, convolution patches, attention probabilities).
//!
//! Every level shares one packed layout and one blocking driver; only the micro-kernel that
//! multiplies an `MR x KC` panel of A by a `KC x NR` panel of B differs. Each element of C sums
//! its `K` products in the same order whatever the thread count, so results do not depend on
//! how the work is split.

pub(crate) mod amx;
mod avx2;
mod avx512;
mod generic;
mod pack;
mod transposed;

pub use pack::{Element, PackedA, PackedB, Storage};
use transposed::ChannelsFirstSink;
pub(crate) use transposed::ChannelsLastSink;

use std::cell::RefCell;

use rayon::prelude::*;

use crate::cpu::{self, Level};

/// Rows of A (and C) one micro-kernel call computes.
pub const MR: usize = 6;
/// Columns of B (and C) one micro-kernel call computes.
pub const NR: usize = 16;
/// Depth of one block of the product: a packed A panel of `MR x KC` stays in L1.
pub const KC: usize = 256;
/// Rows of A packed at once (a multiple of `MR`).
pub const MC: usize = 96;
/// The most columns of C one task computes; the columns are split into equal blocks of at
/// most this many (multiples of `NR`), so that A is packed as few times as possible.
pub const NC: usize = 512;

/// Fills packed panels of the left operand A (`M x K`) for the driver.
pub trait PackA: Sync {
    /// Rows of A.
    fn rows(&self) -> usize;
    /// Columns of A (the product's depth).
    fn depth(&self) -> usize;
    /// Packs rows `m0 .. m0 + mc` and columns `k0 .. k0 + kc` into `dst` as consecutive
    /// `MR`-row panels: panel `p` holds, for each `k`, the `MR` values of rows
    /// `m0 + p·MR ..`, zero past `mc`. `dst` holds `mc.div_ceil(MR) · MR · kc` values.
    fn pack(&self, m0: usize, mc: usize, k0: usize, kc: usize, dst: &mut [f32]);

    /// Packs rows `m0 .. m0 + mc` and columns `k0 .. k0 + kc` as bf16 AMX row tiles (the
    /// layout of `amx`): `mc` rounded up to 32 rows (zero past `mc`), each row tile
    /// `kc.div_ceil(32)` depth tiles (zero past `kc`). The default converts [`PackA::pack`]'s
    /// panels; sources that hold rows convert them directly.
    fn pack_bf16_tiles(&self, m0: usize, mc: usize, k0: usize, kc: usize, dst: &mut [u16]) {
        let mut panels = vec![0f32; mc.div_ceil(MR) * MR * kc];
        self.pack(m0, mc, k0, kc, &mut panels);
        let mut rows = vec![0f32; mc * kc];
        for (i, row) in rows.chunks_exact_mut(kc.max(1)).enumerate().take(mc) {
            let panel = &panels[i / MR * MR * kc..];
            for (k, v) in row.iter_mut().enumerate() {
                *v = panel[k * MR + i % MR];
            }
        }
        amx::rows_to_tiles(&rows, kc, mc, kc, dst);
    }
}

/// Receives finished blocks of C.
pub trait Sink: Sync {
    /// Takes rows `m0 .. m0 + mc`, columns `n0 .. n0 + nc` of C from `tile` (row stride `ld`).
    fn write(&self, m0: usize, n0: usize, mc: usize, nc: usize, tile: &[f32], ld: usize);
}

/// A row-major matrix as the left operand.
pub struct RowMajor<'a> {
    /// The values, row `i` at `data[i * ld ..]`.
    pub data: &'a [f32],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Distance between rows.
    pub ld: usize,
}

impl PackA for RowMajor<'_> {
    fn rows(&self) -> usize {
        self.rows
    }

    fn depth(&self) -> usize {
        self.cols
    }

    fn pack(&self, m0: usize, mc: usize, k0: usize, kc: usize, dst: &mut [f32]) {
        for (p, panel) in dst.chunks_exact_mut(MR * kc).enumerate() {
            let row0 = m0 + p * MR;
            for i in 0..MR {
                if p * MR + i < mc {
                    let row = &self.data[(row0 + i) * self.ld + k0..][..kc];
                    for (k, &v) in row.iter().enumerate() {
                        panel[k * MR + i] = v;
                    }
                } else {
                    for k in 0..kc {
                        panel[k * MR + i] = 0.0;
                    }
                }
            }
        }
    }

    fn pack_bf16_tiles(&self, m0: usize, mc: usize, k0: usize, kc: usize, dst: &mut [u16]) {
        let src = &self.data[m0 * self.ld + k0..];
        #[cfg(target_arch = "x86_64")]
        if amx::usable() {
            // SAFETY: `usable` implies AVX-512F/BW/BF16.
            unsafe { amx::rows_to_tiles_avx512(src, self.ld, mc, kc, dst) };
            return;
        }
        amx::rows_to_tiles(src, self.ld, mc, kc, dst);
    }
}

/// A raw pointer that tasks writing disjoint parts of one buffer share.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub *mut f32);

// SAFETY: every user writes disjoint elements and the buffer outlives the parallel region.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

/// Writes C into a row-major buffer, adding a bias per column and a residual, when given.
pub struct RowMajorSink<'a> {
    out: SharedMut,
    len: usize,
    ld: usize,
    bias: Option<&'a [f32]>,
    residual: Option<&'a [f32]>,
}

impl<'a> RowMajorSink<'a> {
    /// A sink over `out` (row stride `ld`), with `bias` (one per column) and `residual` (same
    /// shape as `out`) added to the product.
    pub fn new(
        out: &'a mut [f32],
        ld: usize,
        bias: Option<&'a [f32]>,
        residual: Option<&'a [f32]>,
    ) -> Self {
        let len = out.len();
        // SAFETY: `out` is `len` valid values, borrowed for the sink's lifetime.
        unsafe { Self::from_raw(out.as_mut_ptr(), len, ld, bias, residual) }
    }

    /// A sink over `len` values at `out` that may be uninitialised: it only writes them.
    ///
    /// # Safety
    /// `out` is valid for writes of `len` values for the sink's lifetime, and nothing else
    /// accesses them meanwhile.
    unsafe fn from_raw(
        out: *mut f32,
        len: usize,
        ld: usize,
        bias: Option<&'a [f32]>,
        residual: Option<&'a [f32]>,
    ) -> Self {
        if let Some(r) = residual {
            assert_eq!(r.len(), len, "residual and output sizes differ");
        }
        Self {
            len,
            out: SharedMut(out),
            ld,
            bias,
            residual,
        }
    }
}

impl Sink for RowMajorSink<'_> {
    fn write(&self, m0: usize, n0: usize, mc: usize, nc: usize, tile: &[f32], ld: usize) {
        for i in 0..mc {
            let start = (m0 + i) * self.ld + n0;
            assert!(start + nc <= self.len);
            let src = &tile[i * ld..][..nc];
            let bias = self.bias.map(|b| &b[n0..n0 + nc]);
            let residual = self.residual.map(|r| &r[start..start + nc]);
            // Written through the pointer, never read: the output may be uninitialised.
            let out = self.out.0;
            for (j, &c) in src.iter().enumerate() {
                let mut v = c;
                if let Some(b) = bias {
                    v += b[j];
                }
                if let Some(r) = residual {
                    v += r[j];
                }
                // SAFETY: in bounds (checked above); tasks write disjoint blocks.
                unsafe { out.add(start + j).write(v) };
            }
        }
    }
}

/// The micro-kernel of one level: `c[MR x NR] (+)= a_panel · b_panel` over `kc` steps, `c`
/// with row stride `ldc`; `accumulate` false overwrites `c`.
pub(crate) type MicroKernel =
    unsafe fn(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, accumulate: bool);

/// A kernel that multiplies `mp` consecutive A panels by `np` consecutive B panels in one
/// call (`c` an `(mp·MR) x (np·NR)` tile at row stride `ldc`).
type GroupKernel = unsafe fn(
    mp: usize,
    np: usize,
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
);

/// How the driver multiplies a block at one level: panel by panel, or in groups of panels
/// (wide registers need more than one `MR x NR` tile of accumulators to keep busy).
#[derive(Clone, Copy)]
pub(crate) enum Tiles {
    Single(MicroKernel),
    Grouped {
        a_panels: usize,
        b_panels: usize,
        run: GroupKernel,
    },
}

impl Tiles {
    /// The tiles of `level`.
    pub(crate) fn of(level: Level) -> Self {
        match level {
            Level::Generic => Tiles::Single(generic::kernel),
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => Tiles::Single(avx2::kernel),
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 | Level::Amx => Tiles::Grouped {
                a_panels: avx512::A_PANELS,
                b_panels: avx512::B_PANELS,
                run: avx512::group,
            },
            #[cfg(not(target_arch = "x86_64"))]
            _ => Tiles::Single(generic::kernel),
        }
    }

    /// The most A and B panels one call takes.
    pub(crate) fn groups(self) -> (usize, usize) {
        match self {
            Tiles::Single(_) => (1, 1),
            Tiles::Grouped {
                a_panels, b_panels, ..
            } => (a_panels, b_panels),
        }
    }

    /// # Safety
    /// The level is available; `mp`, `np` are at most [`Tiles::groups`]; the panels and the
    /// tile hold what [`GroupKernel`] says.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn run(
        self,
        mp: usize,
        np: usize,
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        match self {
            Tiles::Single(kernel) => kernel(kc, a, b, c, ldc, accumulate),
            Tiles::Grouped { run, .. } => run(mp, np, kc, a, b, c, ldc, accumulate),
        }
    }
}

/// Reusable per-thread buffers: a packed A block, a converted B panel, a C tile.
#[derive(Default)]
struct Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
    tile: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

fn grow(buffer: &mut Vec<f32>, len: usize) {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
}

/// `C = A · B` on the current thread's kernel level; each finished block goes to `sink`.
pub fn gemm(a: &dyn PackA, b: &PackedB, sink: &dyn Sink) {
    gemm_at(cpu::level(), a, b, sink)
}

/// [`gemm`] at a given level.
pub fn gemm_at(level: Level, a: &dyn PackA, b: &PackedB, sink: &dyn Sink) {
    let (m, k, n) = (a.rows(), a.depth(), b.cols());
    assert_eq!(
        k,
        b.depth(),
        "GEMM depths differ: A has {k} columns, B {} rows",
        b.depth()
    );
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if let (Level::Amx, Some(b_tiles)) = (level, b.tiles()) {
        // SAFETY: the level is available (its callers check).
        unsafe { amx::gemm(a, b_tiles, n, sink) };
        return;
    }
    let tiles = Tiles::of(level);
    let m_blocks = m.div_ceil(MC);
    let n_blocks = n.div_ceil(NC);
    let nc_step = n.div_ceil(n_blocks).div_ceil(NR) * NR;
    let n_blocks = n.div_ceil(nc_step);
    (0..m_blocks * n_blocks).into_par_iter().for_each(|task| {
        let (mb, nb) = (task / n_blocks, task % n_blocks);
        let (m0, n0) = (mb * MC, nb * nc_step);
        let (mc, nc) = (MC.min(m - m0), nc_step.min(n - n0));
        SCRATCH.with(|scratch| {
            let scratch = &mut *scratch.borrow_mut();
            block(tiles, a, b, (m0, mc), (n0, nc), k, scratch);
            let ld = nc.div_ceil(NR) * NR;
            sink.write(m0, n0, mc, nc, &scratch.tile, ld);
        });
    });
}

/// Fills packed panels of the right operand B (`K x N`) as a product with a packed A runs
/// (convolution patches, gathered from the input block by block).
pub trait PackB: Sync {
    /// Columns of B.
    fn cols(&self) -> usize;
    /// Rows of B (the product's depth).
    fn depth(&self) -> usize;
    /// Packs columns `n0 .. n0 + nc` and rows `k0 .. k0 + kc` into `dst` as consecutive
    /// `NR`-wide panels: panel `q` holds, for each `k`, the `NR` values of columns
    /// `n0 + q·NR ..`, zero past `nc`. `dst` holds `nc.div_ceil(NR) · NR · kc` values.
    fn pack(&self, n0: usize, nc: usize, k0: usize, kc: usize, dst: &mut [f32]);

    /// Packs columns `n0 .. n0 + nc` and rows `k0 .. k0 + kc` (`kc ≤ KC`) as bf16 AMX pair
    /// tiles (the layout of `amx`): for each `NR`-wide panel `q`, `kc.div_ceil(32)` tiles at
    /// `dst[q · stride ..]`, zero past `nc` and `kc`. The default packs each f32 panel into
    /// `scratch` (`kc · NR` values) with [`PackB::pack`] and converts it.
    #[allow(clippy::too_many_arguments)]
    fn pack_pair_tiles(
        &self,
        n0: usize,
        nc: usize,
        k0: usize,
        kc: usize,
        scratch: &mut [f32],
        dst: &mut [u16],
        stride: usize,
    ) {
        let panel = &mut scratch[..kc * NR];
        for q in 0..nc.div_ceil(NR) {
            let valid = NR.min(nc - q * NR);
            self.pack(n0 + q * NR, valid, k0, kc, panel);
            amx::panel_to_pairs_any(panel, kc, &mut dst[q * stride..]);
        }
    }
}

/// The most rows of C one task of [`gemm_packed_a`] computes (B's gathered block is reused
/// across all of them, so it is packed `M / MC_A` times).
pub const MC_A: usize = 384;
/// The most columns of C one task of [`gemm_packed_a`] computes: a packed B block of
/// `NC_B x KC` (256 KB) stays in L2 while every row panel of A passes over it.
pub const NC_B: usize = 256;

/// `C = A · B` with A packed once (the weights) and B gathered block by block, on the
/// current thread's kernel level; each finished block goes to `sink`.
pub fn gemm_packed_a(a: &PackedA, b: &dyn PackB, sink: &dyn Sink) {
    gemm_packed_a_at(cpu::level(), a, b, sink)
}

/// [`gemm_packed_a`] at a given level.
pub fn gemm_packed_a_at(level: Level, a: &PackedA, b: &dyn PackB, sink: &dyn Sink) {
    let (m, k, n) = (a.rows(), a.depth(), b.cols());
    assert_eq!(
        k,
        b.depth(),
        "GEMM depths differ: A has {k} columns, B {} rows",
        b.depth()
    );
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if let (Level::Amx, Some(a_tiles)) = (level, a.tiles()) {
        // SAFETY: the level is available (its callers check).
        unsafe { amx::gemm_packed_a(a_tiles, m, b, sink) };
        return;
    }
    let tiles = Tiles::of(level);
    // Equal blocks: rows in multiples of MR, columns in multiples of NR.
    let m_blocks = m.div_ceil(MC_A);
    let mc_step = m.div_ceil(m_blocks).div_ceil(MR) * MR;
    let m_blocks = m.div_ceil(mc_step);
    let n_blocks = n.div_ceil(NC_B);
    let nc_step = n.div_ceil(n_blocks).div_ceil(NR) * NR;
    let n_blocks = n.div_ceil(nc_step);
    (0..m_blocks * n_blocks).into_par_iter().for_each(|task| {
        // Neighbouring tasks share a block of B columns (the gathered input).
        let (nb, mb) = (task / m_blocks, task % m_blocks);
        let (m0, n0) = (mb * mc_step, nb * nc_step);
        let (mc, nc) = (mc_step.min(m - m0), nc_step.min(n - n0));
        SCRATCH.with(|scratch| {
            let scratch = &mut *scratch.borrow_mut();
            block_packed_a(tiles, a, b, (m0, mc), (n0, nc), k, scratch);
            let ld = nc.div_ceil(NR) * NR;
            sink.write(m0, n0, mc, nc, &scratch.tile, ld);
        });
    });
}

/// Sizes the C tile for `len` values; with no depth the product is zero and there is nothing
/// left to multiply (returns false).
fn prepare_tile(scratch: &mut Scratch, len: usize, k: usize) -> bool {
    grow(&mut scratch.tile, len);
    if k == 0 {
        scratch.tile[..len].fill(0.0);
    }
    k > 0
}

/// One kernel call of a block: `c (+)= a_panels · b_panels`, `mp x np` panels of depth `kc`,
/// `c` at row stride `ld`.
fn multiply_tile(
    tiles: Tiles,
    (mp, np, kc): (usize, usize, usize),
    a_panels: &[f32],
    b_panels: &[f32],
    c: &mut [f32],
    ld: usize,
    accumulate: bool,
) {
    assert!(a_panels.len() >= mp * MR * kc && b_panels.len() >= np * NR * kc);
    assert!(c.len() >= (mp * MR - 1) * ld + np * NR);
    let (a_group, b_group) = tiles.groups();
    assert!(mp <= a_group && np <= b_group);
    // SAFETY: the level is available (the drivers' callers check it); the panels and the
    // tile are as large as the kernel reads and writes (asserted above).
    unsafe {
        tiles.run(
            mp,
            np,
            kc,
            a_panels.as_ptr(),
            b_panels.as_ptr(),
            c.as_mut_ptr(),
            ld,
            accumulate,
        )
    };
}

/// Computes one `mc x nc` block of `C = A · B` with A packed once into `scratch.tile` (row
/// stride `nc` rounded up to `NR`).
fn block_packed_a(
    tiles: Tiles,
    a: &PackedA,
    b: &dyn PackB,
    (m0, mc): (usize, usize),
    (n0, nc): (usize, usize),
    k: usize,
    scratch: &mut Scratch,
) {
    let (m_panels, n_panels, ld) = (mc.div_ceil(MR), nc.div_ceil(NR), nc.div_ceil(NR) * NR);
    if !prepare_tile(scratch, m_panels * MR * ld, k) {
        return;
    }
    let b_group = tiles.groups().1;
    grow(&mut scratch.b, n_panels * NR * KC.min(k));
    grow(&mut scratch.a, m_panels * MR * KC.min(k));
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let b_block = &mut scratch.b[..n_panels * NR * kc];
        b.pack(n0, nc, k0, kc, b_block);
        // The whole A block at once (in place for f32): a group of B panels then stays in L1
        // while every A group passes it, the order `block` uses too (measured 3-6% faster on
        // SD's convolutions than keeping an A group and streaming B past it).
        let a_block = a.panels(k0, kc, m0 / MR, m_panels, &mut scratch.a);
        for jp in (0..n_panels).step_by(b_group) {
            let np = b_group.min(n_panels - jp);
            let b_panels = &b_block[jp * NR * kc..][..np * NR * kc];
            let tile = &mut scratch.tile[jp * NR..];
            multiply_column(
                tiles,
                (m_panels, np, kc),
                a_block,
                b_panels,
                tile,
                ld,
                k0 > 0,
            );
        }
    }
}

/// Computes one `mc x nc` block of C into `scratch.tile` (row stride `nc` rounded up to `NR`).
fn block(
    tiles: Tiles,
    a: &dyn PackA,
    b: &PackedB,
    (m0, mc): (usize, usize),
    (n0, nc): (usize, usize),
    k: usize,
    scratch: &mut Scratch,
) {
    let (m_panels, n_panels, ld) = (mc.div_ceil(MR), nc.div_ceil(NR), nc.div_ceil(NR) * NR);
    if !prepare_tile(scratch, m_panels * MR * ld, k) {
        return;
    }
    let b_group = tiles.groups().1;
    grow(&mut scratch.a, m_panels * MR * KC.min(k));
    grow(&mut scratch.b, b_group * NR * KC.min(k));
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let a_block = &mut scratch.a[..m_panels * MR * kc];
        a.pack(m0, mc, k0, kc, a_block);
        for jp in (0..n_panels).step_by(b_group) {
            let np = b_group.min(n_panels - jp);
            let b_panels = b.panels(k0, kc, n0 / NR + jp, np, &mut scratch.b);
            let tile = &mut scratch.tile[jp * NR..];
            multiply_column(
                tiles,
                (m_panels, np, kc),
                a_block,
                b_panels,
                tile,
                ld,
                k0 > 0,
            );
        }
    }
}

/// Multiplies every group of the `m_panels` A panels in `a_block` by one group of `np` B
/// panels, into the tile's matching rows (`tile` starts at the group's first column).
fn multiply_column(
    tiles: Tiles,
    (m_panels, np, kc): (usize, usize, usize),
    a_block: &[f32],
    b_panels: &[f32],
    tile: &mut [f32],
    ld: usize,
    accumulate: bool,
) {
    let a_group = tiles.groups().0;
    for ip in (0..m_panels).step_by(a_group) {
        let mp = a_group.min(m_panels - ip);
        let a_panels = &a_block[ip * MR * kc..][..mp * MR * kc];
        let c = &mut tile[ip * MR * ld..];
        multiply_tile(tiles, (mp, np, kc), a_panels, b_panels, c, ld, accumulate);
    }
}

/// [`matmul`] into a new buffer (never zeroed first: the product writes every value).
pub fn matmul_to_vec(
    a: &[f32],
    m: usize,
    b: &PackedB,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
) -> Vec<f32> {
    let n = b.cols();
    let len = m * n;
    // SAFETY: the sink writes every value of C, row stride `n`, through the pointer only.
    unsafe {
        gemm_to_vec(a, m, b, len, |out| {
            RowMajorSink::from_raw(out, len, n, bias, residual)
        })
    }
}

/// The product `a (m x k) · b` into a new buffer of `len` values (never zeroed first):
/// `sink_over` makes the sink that writes them, given the buffer's pointer.
///
/// # Safety
/// That sink writes every one of the `len` values at the pointer, and no others.
unsafe fn gemm_to_vec<S: Sink>(
    a: &[f32],
    m: usize,
    b: &PackedB,
    len: usize,
    sink_over: impl FnOnce(*mut f32) -> S,
) -> Vec<f32> {
    let k = b.depth();
    assert_eq!(a.len(), m * k, "A is not {m} x {k}");
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let a = RowMajor {
        data: a,
        rows: m,
        cols: k,
        ld: k,
    };
    let sink = sink_over(out.as_mut_ptr());
    gemm(&a, b, &sink);
    // SAFETY: the sink wrote all `len` values (the caller's contract: every block of C
    // reaches it, a product of no depth as zeros).
    unsafe { out.set_len(len) };
    out
}

/// Columns per half of a GEGLU group: the projection's output columns go in groups of
/// `2 · GEGLU_GROUP`, the values of `GEGLU_GROUP` features then their gates (see
/// [`geglu_interleave`]). Every driver cuts C at multiples of [`NR`], a multiple of the
/// group, so each block the sink takes holds whole groups.
pub const GEGLU_GROUP: usize = 8;
const _: () = assert!(NR.is_multiple_of(2 * GEGLU_GROUP));

/// The column order [`matmul_geglu_to_vec`] takes a GEGLU projection in (`2 · inner`
/// columns, values then gates, `inner` a multiple of [`GEGLU_GROUP`]): packed column `p` is
/// original column `order[p]`.
pub fn geglu_interleave(inner: usize) -> Vec<usize> {
    assert!(
        inner.is_multiple_of(GEGLU_GROUP),
        "GEGLU width {inner} is not whole groups"
    );
    (0..2 * inner)
        .map(|p| {
            let (group, at) = (p / (2 * GEGLU_GROUP), p % (2 * GEGLU_GROUP));
            let feature = group * GEGLU_GROUP + at % GEGLU_GROUP;
            if at < GEGLU_GROUP {
                feature
            } else {
                inner + feature
            }
        })
        .collect()
}

/// Writes `value · gelu_erf(gate)` of each group of an interleaved GEGLU projection (bias
/// added first, as [`RowMajorSink`] adds it) into a row-major `rows x inner` output.
struct GegluSink<'a> {
    out: SharedMut,
    len: usize,
    inner: usize,
    bias: Option<&'a [f32]>,
    level: crate::cpu::Level,
}

impl Sink for GegluSink<'_> {
    fn write(&self, m0: usize, n0: usize, mc: usize, nc: usize, tile: &[f32], ld: usize) {
        assert!(n0.is_multiple_of(2 * GEGLU_GROUP) && nc.is_multiple_of(2 * GEGLU_GROUP));
        let bias = self.bias.map(|b| &b[n0..n0 + nc]);
        for i in 0..mc {
            let start = (m0 + i) * self.inner + n0 / 2;
            assert!(start + nc / 2 <= self.len);
            // Written through the pointer, never read: the output may be uninitialised.
            // SAFETY: in bounds (asserted above); blocks of C do not overlap, so no two
            // writers share an element.
            unsafe {
                let out = self.out.0.add(start);
                crate::norm::geglu_interleaved(self.level, &tile[i * ld..][..nc], bias, out, nc / 2)
            };
        }
    }
}

/// GEGLU fused with its projection: `a (m x k) · b + bias` where `b` (and `bias`) hold the
/// projection's `2 · inner` columns in [`geglu_interleave`]'s order, then `value ·
/// gelu_erf(gate)` per feature, into a new `m x inner` buffer. The same values as the
/// product followed by [`crate::norm::geglu`], without writing the projection out.
pub fn matmul_geglu_to_vec(a: &[f32], m: usize, b: &PackedB, bias: Option<&[f32]>) -> Vec<f32> {
    let n = b.cols();
    assert!(
        n.is_multiple_of(2 * GEGLU_GROUP),
        "GEGLU projection of {n} columns"
    );
    if let Some(bias) = bias {
        assert_eq!(bias.len(), n, "bias size");
    }
    let inner = n / 2;
    let len = m * inner;
    let level = crate::cpu::level();
    // SAFETY: the sink writes all `m x inner` values (every block of C reaches it).
    unsafe {
        gemm_to_vec(a, m, b, len, |out| GegluSink {
            out: SharedMut(out),
            len,
            inner,
            bias,
            level,
        })
    }
}

/// A linear layer over a channels-last sequence written as a channels-first map: `a` is
/// `m = batch · pixels` rows of `k` features, and the result `(batch, n, pixels)` holds
/// `a · b + bias + residual` (the residual shaped like the result), in a new buffer. The
/// same values as [`matmul_to_vec`] followed by a transpose and the residual's addition.
pub fn matmul_channels_first_to_vec(
    a: &[f32],
    m: usize,
    b: &PackedB,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    pixels: usize,
) -> Vec<f32> {
    let n = b.cols();
    assert!(
        pixels > 0 && m.is_multiple_of(pixels),
        "{m} rows are not whole images of {pixels}"
    );
    if let Some(bias) = bias {
        assert_eq!(bias.len(), n, "bias size");
    }
    let len = m * n;
    // SAFETY: the sink writes all `m x n` values (every block of C reaches it).
    unsafe {
        gemm_to_vec(a, m, b, len, |out| ChannelsFirstSink {
            out: SharedMut(out),
            len,
            pixels,
            channels: n,
            bias,
            residual,
        })
    }
}

/// `out (m x n, row-major) = a (m x k, row-major) · b + bias + residual`: the plain entry
/// point for linear layers.
pub fn matmul(
    a: &[f32],
    m: usize,
    b: &PackedB,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    out: &mut [f32],
) {
    let (k, n) = (b.depth(), b.cols());
    assert_eq!(a.len(), m * k, "A is not {m} x {k}");
    assert_eq!(out.len(), m * n, "C is not {m} x {n}");
    let a = RowMajor {
        data: a,
        rows: m,
        cols: k,
        ld: k,
    };
    gemm(&a, b, &RowMajorSink::new(out, n, bias, residual));
}

#[cfg(test)]
mod tests;
