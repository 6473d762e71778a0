//! 2-D convolution on NCHW tensors as an implicit GEMM: `C[out, pixel] = W · patches`,
//! where the weights are packed once as the left operand and each block of patches is
//! gathered from the input as the product needs it (never a whole im2col matrix). With the
//! pixels along the micro-kernel's wide side, a patch panel is `NR` neighbouring input
//! values of one row (one copy), and C's rows are already NCHW output rows.

use crate::gemm::{self, PackB, PackedA, SharedMut, Sink, Storage, KC, NR};

/// The geometry of a convolution: square kernel, equal stride and zero padding on all sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel height and width.
    pub kernel: usize,
    /// Stride in both directions.
    pub stride: usize,
    /// Zero padding on each side.
    pub padding: usize,
}

impl ConvGeometry {
    /// The output height and width for an input of `height x width`, or `None` when the
    /// kernel does not fit.
    pub fn output_size(&self, height: usize, width: usize) -> Option<(usize, usize)> {
        let padded_h = height + 2 * self.padding;
        let padded_w = width + 2 * self.padding;
        if self.stride == 0 || self.kernel == 0 || padded_h < self.kernel || padded_w < self.kernel
        {
            return None;
        }
        Some((
            (padded_h - self.kernel) / self.stride + 1,
            (padded_w - self.kernel) / self.stride + 1,
        ))
    }

    /// The product's depth: `in_channels · kernel²`.
    pub fn depth(&self) -> usize {
        self.in_channels * self.kernel * self.kernel
    }
}

/// A convolution's weights packed for the kernels, with its geometry.
#[derive(Debug, Clone)]
pub struct PackedConv {
    geometry: ConvGeometry,
    weights: PackedA,
}

impl PackedConv {
    /// Packs `weight` stored `(out, in, k, k)` (row-major) in `storage`.
    pub fn new<T: gemm::Element>(weight: &[T], geometry: ConvGeometry, storage: Storage) -> Self {
        let depth = geometry.depth();
        assert_eq!(
            weight.len(),
            depth * geometry.out_channels,
            "conv weight size"
        );
        Self {
            geometry,
            weights: PackedA::from_mxk(weight, geometry.out_channels, depth, depth, storage),
        }
    }

    /// A convolution whose weights are already packed as the `out x in·k²` left operand.
    pub fn from_packed(weights: PackedA, geometry: ConvGeometry) -> Self {
        assert_eq!(weights.depth(), geometry.depth(), "packed conv depth");
        assert_eq!(weights.rows(), geometry.out_channels, "packed conv outputs");
        Self { geometry, weights }
    }

    /// The geometry.
    pub fn geometry(&self) -> ConvGeometry {
        self.geometry
    }

    /// The packed weights (`out x in·k²`).
    pub fn weights(&self) -> &PackedA {
        &self.weights
    }

    /// Convolves `input` (`batch x in x height x width`) into `out`
    /// (`batch x out x oh x ow`), adding `bias` per output channel, `batch_bias` per (batch,
    /// output channel) and `residual` (shaped like `out`) when given.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        input: &[f32],
        batch: usize,
        height: usize,
        width: usize,
        bias: Option<&[f32]>,
        batch_bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        out: &mut [f32],
    ) {
        let (len, ptr) = (out.len(), out.as_mut_ptr());
        // SAFETY: `out` is `len` valid values, borrowed for the call.
        unsafe {
            self.forward_raw(
                input,
                batch,
                height,
                width,
                (bias, batch_bias, residual),
                ptr,
                len,
            )
        }
    }

    /// [`PackedConv::forward`] into a new buffer (never zeroed first: the product writes
    /// every value).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_to_vec(
        &self,
        input: &[f32],
        batch: usize,
        height: usize,
        width: usize,
        bias: Option<&[f32]>,
        batch_bias: Option<&[f32]>,
        residual: Option<&[f32]>,
    ) -> Vec<f32> {
        let g = self.geometry;
        let (oh, ow) = g
            .output_size(height, width)
            .expect("kernel larger than the input");
        let len = batch * g.out_channels * oh * ow;
        let mut out: Vec<f32> = Vec::with_capacity(len);
        // SAFETY: the capacity holds `len` values, written only by the call.
        unsafe {
            let extras = (bias, batch_bias, residual);
            self.forward_raw(input, batch, height, width, extras, out.as_mut_ptr(), len);
            // Every output value was written: each block of C goes to the sink (a product of
            // no depth as zeros), and the blocks cover the output.
            out.set_len(len);
        }
        out
    }

    /// A 1x1 convolution (stride 1, no padding) of `input` (`batch x in x height x width`)
    /// written channels last: `(batch · height · width) x out`, plus `bias` per output
    /// channel, in a new buffer. The same values as [`PackedConv::forward_to_vec`] followed
    /// by a transpose.
    pub fn forward_channels_last_to_vec(
        &self,
        input: &[f32],
        batch: usize,
        height: usize,
        width: usize,
        bias: Option<&[f32]>,
    ) -> Vec<f32> {
        let g = self.geometry;
        assert!(
            g.kernel == 1 && g.stride == 1 && g.padding == 0,
            "channels-last output is for 1x1 convolutions"
        );
        if let Some(b) = bias {
            assert_eq!(b.len(), g.out_channels, "conv bias size");
        }
        let pixels = height * width;
        let len = batch * g.out_channels * pixels;
        let mut out: Vec<f32> = Vec::with_capacity(len);
        let patches = self.patches(input, batch, height, width);
        let sink = gemm::ChannelsLastSink {
            out: SharedMut(out.as_mut_ptr()),
            len,
            channels: g.out_channels,
            bias,
        };
        gemm::gemm_packed_a(&self.weights, &patches, &sink);
        // SAFETY: every block of C reached the sink (a product of no depth as zeros), and
        // the blocks cover the output.
        unsafe { out.set_len(len) };
        out
    }

    /// The patch matrix of `input` (`batch x in x height x width`, size checked).
    fn patches<'a>(
        &self,
        input: &'a [f32],
        batch: usize,
        height: usize,
        width: usize,
    ) -> Patches<'a> {
        let g = self.geometry;
        let (oh, ow) = g
            .output_size(height, width)
            .expect("kernel larger than the input");
        assert_eq!(
            input.len(),
            batch * g.in_channels * height * width,
            "conv input size"
        );
        Patches {
            input,
            geometry: g,
            height,
            width,
            out_width: ow,
            pixels: oh * ow,
            columns: batch * oh * ow,
        }
    }

    /// The convolution into `len` values at `out`, which may be uninitialised (only written).
    ///
    /// # Safety
    /// `out` is valid for writes of `len` values during the call, and nothing else accesses
    /// them meanwhile.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    unsafe fn forward_raw(
        &self,
        input: &[f32],
        batch: usize,
        height: usize,
        width: usize,
        (bias, batch_bias, residual): (Option<&[f32]>, Option<&[f32]>, Option<&[f32]>),
        out: *mut f32,
        len: usize,
    ) {
        let g = self.geometry;
        let (oh, ow) = g
            .output_size(height, width)
            .expect("kernel larger than the input");
        let patches = self.patches(input, batch, height, width);
        assert_eq!(len, batch * g.out_channels * oh * ow, "conv output size");
        if let Some(b) = bias {
            assert_eq!(b.len(), g.out_channels, "conv bias size");
        }
        if let Some(b) = batch_bias {
            assert_eq!(b.len(), batch * g.out_channels, "conv batch bias size");
        }
        if let Some(r) = residual {
            assert_eq!(r.len(), len, "conv residual size");
        }
        let sink = NchwSink {
            out: SharedMut(out),
            len,
            pixels: oh * ow,
            channels: g.out_channels,
            bias,
            batch_bias,
            residual,
        };
        gemm::gemm_packed_a(&self.weights, &patches, &sink);
    }
}

/// The patch matrix `(in·k²) x (batch·oh·ow)` of an NCHW input (one column per output pixel),
/// gathered panel by panel as the right operand of `weights · patches`.
struct Patches<'a> {
    input: &'a [f32],
    geometry: ConvGeometry,
    height: usize,
    width: usize,
    out_width: usize,
    pixels: usize,
    columns: usize,
}

/// Consecutive lanes of one panel whose pixels lie in one output row of one image: their
/// inputs are `stride` apart along one input row.
#[derive(Clone, Copy, Default)]
struct Run {
    /// The first lane and the number of lanes.
    lane: usize,
    len: usize,
    /// The image's offset in the input, and the first lane's top-left input position.
    image: usize,
    top: isize,
    left: isize,
}

impl Patches<'_> {
    /// The runs of the `valid` lanes from column `col0`, in `runs`; returns how many.
    fn runs(&self, col0: usize, valid: usize, runs: &mut [Run; NR]) -> usize {
        let g = self.geometry;
        let plane = self.height * self.width;
        let mut count = 0;
        let mut lane = 0;
        while lane < valid {
            let col = col0 + lane;
            let (b, pixel) = (col / self.pixels, col % self.pixels);
            let (oy, ox) = (pixel / self.out_width, pixel % self.out_width);
            let len = (self.out_width - ox).min(valid - lane);
            runs[count] = Run {
                lane,
                len,
                image: b * g.in_channels * plane,
                top: (oy * g.stride) as isize - g.padding as isize,
                left: (ox * g.stride) as isize - g.padding as isize,
            };
            count += 1;
            lane += len;
        }
        count
    }
}

/// One row of the patch matrix: an input channel and kernel position, and its input offset
/// from a patch's top-left value.
#[derive(Clone, Copy, Default)]
struct Tap {
    channel: usize,
    ky: usize,
    kx: usize,
    offset: usize,
}

impl Patches<'_> {
    /// What each panel row `k0 .. k0 + kc` reads, the same for every panel: (channel, kernel
    /// row, kernel column) walked from `k0`, and its offset from a patch's top-left value.
    fn taps<'t>(&self, k0: usize, kc: usize, rows: &'t mut [Tap; KC]) -> &'t [Tap] {
        assert!(kc <= KC, "a depth block is at most KC rows");
        let (kernel, w, plane) = (self.geometry.kernel, self.width, self.height * self.width);
        let taps = kernel * kernel;
        let (mut channel, mut ky, mut kx) = (k0 / taps, k0 % taps / kernel, k0 % kernel);
        for tap in rows[..kc].iter_mut() {
            *tap = Tap {
                channel,
                ky,
                kx,
                offset: channel * plane + ky * w + kx,
            };
            kx += 1;
            if kx == kernel {
                kx = 0;
                ky += 1;
                if ky == kernel {
                    ky = 0;
                    channel += 1;
                }
            }
        }
        &rows[..kc]
    }

    /// For a full panel of NR neighbours of one output row whose patches lie inside the
    /// input (stride 1), the input offset of its first patch's top-left value.
    fn interior(&self, runs: &[Run], valid: usize) -> Option<usize> {
        let (kernel, h, w) = (self.geometry.kernel, self.height, self.width);
        let r = *runs.first()?;
        let inside = runs.len() == 1
            && valid == NR
            && self.geometry.stride == 1
            && r.top >= 0
            && r.top as usize + kernel <= h
            && r.left >= 0
            && r.left as usize + kernel - 1 + NR <= w;
        inside.then(|| r.image + r.top as usize * w + r.left as usize)
    }
}

impl PackB for Patches<'_> {
    fn cols(&self) -> usize {
        self.columns
    }

    fn depth(&self) -> usize {
        self.geometry.depth()
    }

    fn pack(&self, n0: usize, nc: usize, k0: usize, kc: usize, dst: &mut [f32]) {
        let g = self.geometry;
        let (h, w, stride) = (self.height, self.width, g.stride);
        let plane = h * w;
        let mut runs = [Run::default(); NR];
        let mut rows = [Tap::default(); KC];
        let rows = self.taps(k0, kc, &mut rows);
        for (q, panel) in dst.chunks_exact_mut(NR * kc).enumerate() {
            let valid = NR.min(nc.saturating_sub(q * NR));
            let count = self.runs(n0 + q * NR, valid, &mut runs);
            let runs = &runs[..count];
            if let Some(corner) = self.interior(runs, valid) {
                // The common case: NR neighbours of one output row whose patches lie inside
                // the input, so every panel row is NR consecutive input values.
                for (dst_k, tap) in panel.chunks_exact_mut(NR).zip(rows.iter()) {
                    let at = corner + tap.offset;
                    dst_k.copy_from_slice(&self.input[at..at + NR]);
                }
                continue;
            }
            for (dst_k, tap) in panel.chunks_exact_mut(NR).zip(rows.iter()) {
                let &Tap {
                    channel, ky, kx, ..
                } = tap;
                dst_k[valid..].fill(0.0);
                for r in runs {
                    let out = &mut dst_k[r.lane..r.lane + r.len];
                    let iy = r.top + ky as isize;
                    if iy < 0 || iy as usize >= h {
                        out.fill(0.0);
                        continue;
                    }
                    let row = &self.input[r.image + channel * plane + iy as usize * w..][..w];
                    if stride == 1 {
                        // Lanes `lo .. hi` read inside the row, one run of it; the rest are
                        // padding.
                        let x0 = r.left + kx as isize;
                        let len = out.len() as isize;
                        let lo = (-x0).clamp(0, len) as usize;
                        let hi = (w as isize - x0).clamp(lo as isize, len) as usize;
                        out[..lo].fill(0.0);
                        out[hi..].fill(0.0);
                        if hi > lo {
                            let from = (x0 + lo as isize) as usize;
                            out[lo..hi].copy_from_slice(&row[from..from + (hi - lo)]);
                        }
                    } else {
                        for (j, d) in out.iter_mut().enumerate() {
                            let x = r.left + (kx + j * stride) as isize;
                            *d = if x >= 0 && (x as usize) < w {
                                row[x as usize]
                            } else {
                                0.0
                            };
                        }
                    }
                }
            }
        }
    }

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
        let mut rows = [Tap::default(); KC];
        let rows = self.taps(k0, kc, &mut rows);
        let mut runs = [Run::default(); NR];
        for q in 0..nc.div_ceil(NR) {
            let (col0, valid) = (n0 + q * NR, NR.min(nc - q * NR));
            let dst = &mut dst[q * stride..];
            #[cfg(target_arch = "x86_64")]
            if crate::gemm::amx::usable() {
                let count = self.runs(col0, valid, &mut runs);
                let runs = &runs[..count];
                if let Some(corner) = self.interior(runs, valid) {
                    // SAFETY: `usable` implies AVX-512F/BW/BF16; `interior` keeps every read
                    // inside the input (checked again inside).
                    unsafe { gather_pairs(self.input, corner, rows, dst) };
                    continue;
                }
                // SAFETY: `usable` implies AVX-512F/BW/BF16; the masks keep every read
                // inside the input rows.
                if self.geometry.stride == 1 && unsafe { self.gather_pairs_masked(runs, rows, dst) }
                {
                    continue;
                }
            }
            let panel = &mut scratch[..kc * NR];
            self.pack(col0, valid, k0, kc, panel);
            crate::gemm::amx::panel_to_pairs_any(panel, kc, dst);
        }
    }
}

/// An interior panel's pair tiles straight from the input: for each pair of panel rows, the
/// NR consecutive values each reads (from `corner` plus the tap's offset), rounded to bf16
/// and interleaved as `amx` lays out B; zero past the last row.
///
/// # Safety
/// The CPU has AVX-512F/BW/BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn gather_pairs(input: &[f32], corner: usize, rows: &[Tap], dst: &mut [u16]) {
    use crate::gemm::amx::{TILE, TILE_K, TILE_VALUES};
    use std::arch::x86_64::*;
    const _: () = assert!(NR == TILE);
    let tiles = rows.len().div_ceil(TILE_K);
    assert!(dst.len() >= tiles * TILE_VALUES);
    assert!(rows.iter().all(|t| corner + t.offset + NR <= input.len()));
    let src = input.as_ptr().add(corner);
    let load = |k: usize| match rows.get(k) {
        Some(tap) => _mm512_loadu_ps(src.add(tap.offset)),
        None => _mm512_setzero_ps(),
    };
    for pair in 0..tiles * TILE {
        let (first, second) = (load(2 * pair), load(2 * pair + 1));
        crate::gemm::amx::store_pair_row(dst.as_mut_ptr().add(pair * TILE_K), first, second);
    }
}

/// The largest kernel whose border panels [`Patches::gather_pairs_masked`] gathers (a table
/// of `kernel²` masks per run); larger kernels take the scalar path.
const MASKED_KERNEL: usize = 7;

impl Patches<'_> {
    /// A stride-1 panel's pair tiles straight from the input, as `pack` then
    /// `panel_to_pairs` make them: each run of lanes is one masked load per panel row (lanes
    /// that read padding, or lie past the panel's valid lanes, stay zero). Returns false (and
    /// writes nothing) for kernels above [`MASKED_KERNEL`].
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/BF16; the stride is 1; `runs` are this panel's.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn gather_pairs_masked(&self, runs: &[Run], rows: &[Tap], dst: &mut [u16]) -> bool {
        use crate::gemm::amx::{TILE, TILE_K, TILE_VALUES};
        use std::arch::x86_64::*;
        const _: () = assert!(NR == TILE);
        let kernel = self.geometry.kernel;
        if kernel > MASKED_KERNEL || runs.len() > NR {
            return false;
        }
        debug_assert_eq!(self.geometry.stride, 1);
        let tiles = rows.len().div_ceil(TILE_K);
        assert!(dst.len() >= tiles * TILE_VALUES);
        let Some(last) = rows.last() else {
            dst[..tiles * TILE_VALUES].fill(0);
            return true;
        };
        let (h, w) = (self.height as isize, self.width as isize);
        // Per run: where lane 0 of a tap at offset 0 would read, and the lanes each kernel
        // position reads inside the input (rows outside it read nothing).
        let mut bases = [0isize; NR];
        let mut masks = [[0u16; MASKED_KERNEL * MASKED_KERNEL]; NR];
        let plane = self.height * self.width;
        for ((r, base), masks) in runs.iter().zip(&mut bases).zip(&mut masks) {
            // A masked lane of a tap reads its channel's plane at row `top + ky` (inside the
            // image) and column `left + kx + lane - r.lane` (inside the row): inside the
            // input while the image holds the panel rows' last (largest) channel.
            assert!(r.image + (last.channel + 1) * plane <= self.input.len());
            *base = r.image as isize + r.top * w + r.left - r.lane as isize;
            for ky in 0..kernel {
                let iy = r.top + ky as isize;
                if iy < 0 || iy >= h {
                    continue;
                }
                for kx in 0..kernel {
                    let x0 = r.left + kx as isize;
                    let n = r.len as isize;
                    let lo = (-x0).clamp(0, n);
                    let hi = (w - x0).clamp(lo, n);
                    if hi == lo {
                        continue;
                    }
                    masks[ky * kernel + kx] =
                        (((1u32 << (hi - lo)) - 1) << (r.lane as isize + lo)) as u16;
                }
            }
        }
        let input = self.input.as_ptr();
        let runs = runs.len();
        let load = |k: usize| {
            let mut v = _mm512_setzero_ps();
            if let Some(tap) = rows.get(k) {
                let position = tap.ky * kernel + tap.kx;
                for r in 0..runs {
                    let mask = masks[r][position];
                    if mask != 0 {
                        // Lane `l` reads `base + offset + l`; only the masked lanes are read,
                        // all inside the input (asserted above).
                        let at = input.wrapping_offset(bases[r] + tap.offset as isize);
                        v = _mm512_mask_loadu_ps(v, mask, at);
                    }
                }
            }
            v
        };
        for pair in 0..tiles * TILE {
            let (a, b) = (load(2 * pair), load(2 * pair + 1));
            crate::gemm::amx::store_pair_row(dst.as_mut_ptr().add(pair * TILE_K), a, b);
        }
        true
    }
}

/// Writes blocks of `C[channel, pixel]` into an NCHW output.
struct NchwSink<'a> {
    out: SharedMut,
    len: usize,
    pixels: usize,
    channels: usize,
    bias: Option<&'a [f32]>,
    batch_bias: Option<&'a [f32]>,
    residual: Option<&'a [f32]>,
}

impl Sink for NchwSink<'_> {
    fn write(&self, m0: usize, n0: usize, mc: usize, nc: usize, tile: &[f32], ld: usize) {
        for i in 0..mc {
            let channel = m0 + i;
            let row = &tile[i * ld..][..nc];
            // Runs of columns that stay within one image are contiguous in the output.
            let mut j = 0;
            while j < nc {
                let col = n0 + j;
                let (b, pixel) = (col / self.pixels, col % self.pixels);
                let run = (self.pixels - pixel).min(nc - j);
                let start = (b * self.channels + channel) * self.pixels + pixel;
                assert!(start + run <= self.len);
                let mut add = self.bias.map_or(0.0, |b| b[channel]);
                if let Some(bb) = self.batch_bias {
                    add += bb[b * self.channels + channel];
                }
                let residual = self.residual.map(|r| &r[start..start + run]);
                // Written through the pointer, never read: the output may be uninitialised.
                let out = self.out.0;
                for (i, &c) in row[j..j + run].iter().enumerate() {
                    let mut v = c + add;
                    if let Some(r) = residual {
                        v += r[i];
                    }
                    // SAFETY: in bounds (checked above); blocks of different tasks are
                    // disjoint.
                    unsafe { out.add(start + i).write(v) };
                }
                j += run;
            }
        }
    }
}

#[cfg(test)]
mod tests;
