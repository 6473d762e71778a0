use candle_core::{DType, Device, Tensor, D};

use crate::Result;

/// Scaled dot-product attention: `softmax(q kᵀ · scale + mask) v`.
///
/// `q` is `(batch, heads, seq_q, head_dim)`, `k` and `v` are `(batch, heads, seq_kv, head_dim)`;
/// `mask`, when given, is added to the scores and must broadcast to `(batch, heads, seq_q, seq_kv)`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (seq_q, head_dim) = (q.dim(D::Minus2)?, q.dim(D::Minus1)?);
    let seq_kv = k.dim(D::Minus2)?;
    let batch_heads = q.elem_count() / (seq_q * head_dim).max(1);
    super::flops::add(4 * (batch_heads * seq_q * seq_kv * head_dim) as u64);
    let q = q.contiguous()?;
    let k_t = k.transpose(D::Minus2, D::Minus1)?.contiguous()?;
    let mut scores = (q.matmul(&k_t)? * scale)?;
    if let Some(mask) = mask {
        scores = scores.broadcast_add(mask)?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    Ok(probs.matmul(&v.contiguous()?)?)
}

/// The additive causal mask `(seq, seq)`: 0 on and below the diagonal, -inf above it.
pub fn causal_mask(seq: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..seq)
        .flat_map(|i| (0..seq).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(values, (seq, seq), device)?.to_dtype(dtype)?)
}
