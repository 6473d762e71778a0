//! A per-thread switch that routes the building blocks through ops with backward passes.
//!
//! candle-nn's fused softmax and layer norm kernels have no gradients. Training turns this
//! switch on so the same model code runs composed ops instead (equal results up to float
//! rounding); inference leaves it off and keeps the fused kernels.

use std::cell::Cell;

use candle_core::{Tensor, D};

thread_local! {
    static DIFFERENTIABLE: Cell<bool> = const { Cell::new(false) };
}

/// Whether the building blocks on this thread use differentiable (composed) ops.
pub fn differentiable() -> bool {
    DIFFERENTIABLE.with(|flag| flag.get())
}

/// Turns the differentiable path on or off for this thread.
pub fn set_differentiable(on: bool) {
    DIFFERENTIABLE.with(|flag| flag.set(on));
}

/// Softmax over the last dimension from basic ops, so autograd can run through it.
pub(crate) fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    // The shift does not change the result, so it needs no gradient.
    let max = x.max_keepdim(D::Minus1)?.detach();
    let exp = x.broadcast_sub(&max)?.exp()?;
    let sum = exp.sum_keepdim(D::Minus1)?;
    exp.broadcast_div(&sum)
}

/// Every `stride`-th of `len` entries along `dim`, starting at `start`.
fn strided(
    x: &Tensor,
    dim: usize,
    start: usize,
    len: usize,
    stride: usize,
) -> candle_core::Result<Tensor> {
    let span = x.narrow(dim, start, stride * len)?;
    if stride == 1 {
        return Ok(span);
    }
    let mut dims = span.dims().to_vec();
    dims[dim] = len;
    dims.insert(dim + 1, stride);
    span.reshape(dims)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)
}

/// A 2-D convolution as unfold + matrix product (im2col), whose backward pass is two matrix
/// products; candle's own convolution backward is far slower on CPU. `x` is
/// `(batch, in, h, w)`, `weight` `(out, in, k, k)`.
pub(crate) fn conv2d_unfolded(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    stride: usize,
) -> candle_core::Result<Tensor> {
    let (batch, channels, h, w) = x.dims4()?;
    let (out_channels, _, k, _) = weight.dims4()?;
    let out_h = (h + 2 * padding - k) / stride + 1;
    let out_w = (w + 2 * padding - k) / stride + 1;
    // Pad so that every tap can take `stride · out` entries.
    let need_h = (k - 1) + stride * out_h;
    let need_w = (k - 1) + stride * out_w;
    let x = x
        .pad_with_zeros(2, padding, need_h.saturating_sub(h + padding))?
        .pad_with_zeros(3, padding, need_w.saturating_sub(w + padding))?;
    let columns = if k == 1 && stride == 1 {
        x.reshape((batch, channels, out_h * out_w))?
    } else {
        let mut taps = Vec::with_capacity(k * k);
        for ky in 0..k {
            let rows = strided(&x, 2, ky, out_h, stride)?;
            for kx in 0..k {
                taps.push(strided(&rows, 3, kx, out_w, stride)?);
            }
        }
        // (batch, channels, k·k, out_h, out_w): the weight's (in, ky, kx) order.
        Tensor::stack(&taps, 2)?.reshape((batch, channels * k * k, out_h * out_w))?
    };
    let kernel = weight.reshape((1, out_channels, channels * k * k))?;
    let out = kernel
        .broadcast_as((batch, out_channels, channels * k * k))?
        .contiguous()?
        .matmul(&columns.contiguous()?)?
        .reshape((batch, out_channels, out_h, out_w))?;
    match bias {
        Some(bias) => out.broadcast_add(&bias.reshape((1, out_channels, 1, 1))?),
        None => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    #[test]
    fn unfolded_convolution_matches_candle_for_paddings_and_strides() {
        let device = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 9, 8), &device).unwrap();
        for (k, padding, stride) in [(3, 1, 1), (3, 0, 2), (3, 1, 2), (1, 0, 1)] {
            let w = Tensor::randn(0f32, 1.0, (4, 3, k, k), &device).unwrap();
            let b = Tensor::randn(0f32, 1.0, 4, &device).unwrap();
            let want = x
                .conv2d(&w, padding, stride, 1, 1)
                .unwrap()
                .broadcast_add(&b.reshape((1, 4, 1, 1)).unwrap())
                .unwrap();
            let got = super::conv2d_unfolded(&x, &w, Some(&b), padding, stride).unwrap();
            assert_eq!(got.dims(), want.dims());
            let diff = (got - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                diff < 1e-4,
                "k {k} padding {padding} stride {stride}: {diff}"
            );
        }
    }
}
