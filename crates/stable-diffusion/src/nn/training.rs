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
