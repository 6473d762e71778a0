//! 2-D convolution on NCHW tensors as an implicit GEMM: `C[pixel, out] = patches · Wᵀ`,
//! where each block of patches is gathered from the input as the product needs it (never a
//! whole im2col matrix) and the weights are packed once.

use crate::gemm::{self, PackA, PackedB, SharedMut, Sink, Storage, MR};

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
    weights: PackedB,
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
            weights: PackedB::from_nxk(weight, depth, geometry.out_channels, depth, storage),
        }
    }

    /// A convolution whose weights are already packed as the `in·k² x out` right operand.
    pub fn from_packed(weights: PackedB, geometry: ConvGeometry) -> Self {
        assert_eq!(weights.depth(), geometry.depth(), "packed conv depth");
        assert_eq!(weights.cols(), geometry.out_channels, "packed conv outputs");
        Self { geometry, weights }
    }

    /// The geometry.
    pub fn geometry(&self) -> ConvGeometry {
        self.geometry
    }

    /// The packed weights (`in·k² x out`).
    pub fn weights(&self) -> &PackedB {
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
        let g = self.geometry;
        let (oh, ow) = g
            .output_size(height, width)
            .expect("kernel larger than the input");
        assert_eq!(
            input.len(),
            batch * g.in_channels * height * width,
            "conv input size"
        );
        assert_eq!(
            out.len(),
            batch * g.out_channels * oh * ow,
            "conv output size"
        );
        if let Some(b) = bias {
            assert_eq!(b.len(), g.out_channels, "conv bias size");
        }
        if let Some(b) = batch_bias {
            assert_eq!(b.len(), batch * g.out_channels, "conv batch bias size");
        }
        if let Some(r) = residual {
            assert_eq!(r.len(), out.len(), "conv residual size");
        }
        let patches = Patches {
            input,
            geometry: g,
            height,
            width,
            out_width: ow,
            pixels: oh * ow,
            rows: batch * oh * ow,
        };
        let sink = NchwSink {
            out: SharedMut(out.as_mut_ptr()),
            len: out.len(),
            pixels: oh * ow,
            channels: g.out_channels,
            bias,
            batch_bias,
            residual,
        };
        gemm::gemm(&patches, &self.weights, &sink);
    }
}

/// The patch matrix `(batch·oh·ow) x (in·k²)` of an NCHW input, gathered panel by panel.
struct Patches<'a> {
    input: &'a [f32],
    geometry: ConvGeometry,
    height: usize,
    width: usize,
    out_width: usize,
    pixels: usize,
    rows: usize,
}

impl PackA for Patches<'_> {
    fn rows(&self) -> usize {
        self.rows
    }

    fn depth(&self) -> usize {
        self.geometry.depth()
    }

    fn pack(&self, m0: usize, mc: usize, k0: usize, kc: usize, dst: &mut [f32]) {
        let g = self.geometry;
        let (h, w, kernel, stride) = (self.height, self.width, g.kernel, g.stride);
        let pad = g.padding as isize;
        let plane = h * w;
        for (p, panel) in dst.chunks_exact_mut(MR * kc).enumerate() {
            // Each row of the panel: the image's offset and the top-left input position.
            let mut image = [0usize; MR];
            let mut top = [0isize; MR];
            let mut left = [0isize; MR];
            let valid = MR.min(mc.saturating_sub(p * MR));
            for i in 0..valid {
                let m = m0 + p * MR + i;
                let (b, pixel) = (m / self.pixels, m % self.pixels);
                image[i] = b * g.in_channels * plane;
                top[i] = (pixel / self.out_width * stride) as isize - pad;
                left[i] = (pixel % self.out_width * stride) as isize - pad;
            }
            // Rows in one image row, left to right with stride 1: the common interior case
            // copies MR neighbours at once.
            let same_row = valid == MR
                && stride == 1
                && (1..MR).all(|i| {
                    image[i] == image[0] && top[i] == top[0] && left[i] == left[0] + i as isize
                });
            // Walk (channel, kernel row, kernel column) from k0 by counting, not dividing.
            let taps = kernel * kernel;
            let (mut ci, mut ky, mut kx) = (k0 / taps, k0 % taps / kernel, k0 % kernel);
            for dst_k in panel.chunks_exact_mut(MR) {
                let dst_k: &mut [f32; MR] = dst_k.try_into().expect("MR values");
                if same_row {
                    let iy = top[0] + ky as isize;
                    let ix = left[0] + kx as isize;
                    if iy < 0 || iy as usize >= h {
                        *dst_k = [0.0; MR];
                    } else {
                        let row = &self.input[image[0] + ci * plane + iy as usize * w..][..w];
                        if ix >= 0 && ix as usize + MR <= w {
                            // Fixed-size arrays: a few register moves, not a memcpy call.
                            let src: &[f32; MR] = row[ix as usize..ix as usize + MR]
                                .try_into()
                                .expect("MR values");
                            *dst_k = *src;
                        } else {
                            for (i, d) in dst_k.iter_mut().enumerate() {
                                let x = ix + i as isize;
                                *d = if x >= 0 && (x as usize) < w {
                                    row[x as usize]
                                } else {
                                    0.0
                                };
                            }
                        }
                    }
                } else {
                    for (i, d) in dst_k.iter_mut().enumerate() {
                        let iy = top[i] + ky as isize;
                        let ix = left[i] + kx as isize;
                        let inside = i < valid
                            && iy >= 0
                            && (iy as usize) < h
                            && ix >= 0
                            && (ix as usize) < w;
                        *d = if inside {
                            self.input[image[i] + ci * plane + iy as usize * w + ix as usize]
                        } else {
                            0.0
                        };
                    }
                }
                kx += 1;
                if kx == kernel {
                    kx = 0;
                    ky += 1;
                    if ky == kernel {
                        ky = 0;
                        ci += 1;
                    }
                }
            }
        }
    }
}

/// Writes blocks of `C[pixel, channel]` into an NCHW output.
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
        // Runs of rows that stay within one image are contiguous in each output channel.
        let mut i = 0;
        while i < mc {
            let m = m0 + i;
            let (b, pixel) = (m / self.pixels, m % self.pixels);
            let run = (self.pixels - pixel).min(mc - i);
            for j in 0..nc {
                let channel = n0 + j;
                let start = (b * self.channels + channel) * self.pixels + pixel;
                assert!(start + run <= self.len);
                // SAFETY: in bounds (checked above); blocks of different tasks are disjoint.
                let out = unsafe { std::slice::from_raw_parts_mut(self.out.0.add(start), run) };
                let mut add = self.bias.map_or(0.0, |b| b[channel]);
                if let Some(bb) = self.batch_bias {
                    add += bb[b * self.channels + channel];
                }
                for (r, o) in out.iter_mut().enumerate() {
                    *o = tile[(i + r) * ld + j] + add;
                }
                if let Some(residual) = self.residual {
                    for (o, r) in out.iter_mut().zip(&residual[start..start + run]) {
                        *o += r;
                    }
                }
            }
            i += run;
        }
    }
}

#[cfg(test)]
mod tests;
