//! Blocks of C written transposed, for products whose output layout is the other way round
//! from the kernels' C: a 1x1 convolution written as a sequence (channels last), a linear
//! layer written as a feature map (channels first). The layout change rides on the product's
//! own output pass instead of a separate copy.

use super::{SharedMut, Sink};
use crate::cpu::{self, Level};

/// What is added to each value written.
#[derive(Clone, Copy, Default)]
struct Addends<'a> {
    /// One per row of the block.
    rows: Option<&'a [f32]>,
    /// One per column of the block.
    cols: Option<&'a [f32]>,
    /// One per written value, at the written value's offset from the block's start.
    residual: Option<*const f32>,
}

/// Writes `tile` (`rows x cols`, row stride `ld`) transposed: value `(i, j)` (plus its
/// addends) to `dst + j·dst_ld + i`.
///
/// # Safety
/// `dst` (and the residual) are valid for the offsets written; `tile` holds the block.
unsafe fn write_transposed(
    tile: &[f32],
    ld: usize,
    (rows, cols): (usize, usize),
    dst: *mut f32,
    dst_ld: usize,
    add: Addends,
) {
    assert!(rows == 0 || cols == 0 || (rows - 1) * ld + cols <= tile.len());
    assert!(add.rows.is_none_or(|r| r.len() >= rows) && add.cols.is_none_or(|c| c.len() >= cols));
    #[cfg(target_arch = "x86_64")]
    if matches!(cpu::level(), Level::Avx512 | Level::Amx) && ld <= (i32::MAX as usize) / 16 {
        // SAFETY: the level implies AVX-512F; the rest is the caller's contract.
        unsafe { write_transposed_avx512(tile, ld, (rows, cols), dst, dst_ld, add) };
        return;
    }
    for j in 0..cols {
        let col_add = add.cols.map_or(0.0, |c| c[j]);
        for i in 0..rows {
            let mut v = tile[i * ld + j] + col_add;
            if let Some(r) = add.rows {
                v += r[i];
            }
            let at = j * dst_ld + i;
            if let Some(r) = add.residual {
                v += unsafe { r.add(at).read() };
            }
            unsafe { dst.add(at).write(v) };
        }
    }
}

/// [`write_transposed`] sixteen rows at a time: a gather down a column of the tile, one
/// (masked) store along the destination row.
///
/// # Safety
/// As [`write_transposed`]; the CPU has AVX-512F; `16 · ld` fits an i32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn write_transposed_avx512(
    tile: &[f32],
    ld: usize,
    (rows, cols): (usize, usize),
    dst: *mut f32,
    dst_ld: usize,
    add: Addends,
) {
    use std::arch::x86_64::*;
    let step = ld as i32;
    let index = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi32(step),
    );
    for i in (0..rows).step_by(16) {
        let n = (rows - i).min(16);
        let mask = ((1u32 << n) - 1) as __mmask16;
        let row_add = match add.rows {
            Some(r) => _mm512_maskz_loadu_ps(mask, r.as_ptr().add(i)),
            None => _mm512_setzero_ps(),
        };
        for j in 0..cols {
            // Lanes past `n` read nothing (masked).
            let base = tile.as_ptr().add(i * ld + j);
            let mut v =
                _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, index, base.cast());
            if let Some(c) = add.cols {
                v = _mm512_add_ps(v, _mm512_set1_ps(c[j]));
            }
            if add.rows.is_some() {
                v = _mm512_add_ps(v, row_add);
            }
            let at = j * dst_ld + i;
            if let Some(r) = add.residual {
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, r.add(at)));
            }
            _mm512_mask_storeu_ps(dst.add(at), mask, v);
        }
    }
}

/// Writes the blocks of a product `C[channel, column]` (a 1x1 convolution's output, columns
/// `batch · pixels`) as a channels-last sequence `out[column · channels + channel]`, adding
/// a bias per channel.
pub(crate) struct ChannelsLastSink<'a> {
    pub(crate) out: SharedMut,
    pub(crate) len: usize,
    pub(crate) channels: usize,
    pub(crate) bias: Option<&'a [f32]>,
}

impl Sink for ChannelsLastSink<'_> {
    fn write(&self, m0: usize, n0: usize, mc: usize, nc: usize, tile: &[f32], ld: usize) {
        if mc == 0 || nc == 0 {
            return;
        }
        assert!(m0 + mc <= self.channels);
        assert!((n0 + nc - 1) * self.channels + m0 + mc <= self.len);
        let add = Addends {
            rows: self.bias.map(|b| &b[m0..m0 + mc]),
            ..Addends::default()
        };
        // SAFETY: in bounds (asserted above); blocks of C do not overlap, and neither do
        // the values they are written to.
        unsafe {
            let dst = self.out.0.add(n0 * self.channels + m0);
            write_transposed(tile, ld, (mc, nc), dst, self.channels, add)
        }
    }
}

/// Writes the blocks of a product `C[row, channel]` whose rows are `batch · pixels` pixels
/// (a linear layer over a channels-last sequence) as a channels-first map
/// `out[(b · channels + channel) · pixels + pixel]`, adding a bias per channel and a residual
/// shaped like the output.
pub(crate) struct ChannelsFirstSink<'a> {
    pub(crate) out: SharedMut,
    pub(crate) len: usize,
    pub(crate) pixels: usize,
    pub(crate) channels: usize,
    pub(crate) bias: Option<&'a [f32]>,
    pub(crate) residual: Option<&'a [f32]>,
}

impl Sink for ChannelsFirstSink<'_> {
    fn write(&self, m0: usize, n0: usize, mc: usize, nc: usize, tile: &[f32], ld: usize) {
        if mc == 0 || nc == 0 {
            return;
        }
        assert!(n0 + nc <= self.channels);
        if let Some(r) = self.residual {
            assert_eq!(r.len(), self.len, "residual and output sizes differ");
        }
        // Runs of rows within one image are contiguous along each output channel's row.
        let mut i = 0;
        while i < mc {
            let row = m0 + i;
            let (b, pixel) = (row / self.pixels, row % self.pixels);
            let run = (self.pixels - pixel).min(mc - i);
            let start = (b * self.channels + n0) * self.pixels + pixel;
            assert!(start + (nc - 1) * self.pixels + run <= self.len);
            let add = Addends {
                cols: self.bias.map(|c| &c[n0..n0 + nc]),
                residual: self.residual.map(|r| r[start..].as_ptr()),
                ..Addends::default()
            };
            // SAFETY: in bounds (asserted above); blocks of C do not overlap, and neither do
            // the values they are written to.
            unsafe {
                let dst = self.out.0.add(start);
                write_transposed(&tile[i * ld..], ld, (run, nc), dst, self.pixels, add)
            }
            i += run;
        }
    }
}
