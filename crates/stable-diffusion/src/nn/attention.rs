use candle_core::{DType, Device, Tensor, D};

use crate::Result;

/// The most bytes one block of attention scores may take; longer queries are processed in
/// row chunks of this size (64x64 latents give 4096x4096 scores per head).
pub(crate) const MAX_SCORE_BYTES: usize = 128 << 20;

/// Scaled dot-product attention: `softmax(q kᵀ · scale + mask) v`.
///
/// `q` is `(batch, heads, seq_q, head_dim)`, `k` and `v` are `(batch, heads, seq_kv, head_dim)`;
/// `mask`, when given, is added to the scores and must broadcast to `(batch, heads, seq_q, seq_kv)`.
/// Long queries are processed in chunks of rows so the score matrix stays bounded in memory;
/// every row is computed exactly as without chunking.
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
    let lanes: usize = q.dims()[..q.rank() - 2].iter().product();
    let row_bytes = lanes * k.dim(D::Minus2)? * q.dtype().size_in_bytes();
    let rows_per_chunk = (MAX_SCORE_BYTES / row_bytes.max(1)).max(1);
    attention_in_chunks(q, k, v, scale, mask, rows_per_chunk)
}

/// [`attention`] computed `rows_per_chunk` query rows at a time.
fn attention_in_chunks(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
    rows_per_chunk: usize,
) -> Result<Tensor> {
    let q = q.contiguous()?;
    let k_t = k.transpose(D::Minus2, D::Minus1)?.contiguous()?;
    let v = v.contiguous()?;
    let seq_q = q.dim(D::Minus2)?;
    if rows_per_chunk >= seq_q {
        return attention_rows(&q, &k_t, &v, scale, mask);
    }
    let mask_rows = match mask {
        Some(mask) if mask.rank() >= 2 && seq_q > 1 => mask.dim(D::Minus2)? == seq_q,
        _ => false,
    };
    let mut outputs = Vec::with_capacity(seq_q.div_ceil(rows_per_chunk));
    for start in (0..seq_q).step_by(rows_per_chunk) {
        let len = rows_per_chunk.min(seq_q - start);
        let q_rows = q.narrow(D::Minus2, start, len)?;
        let mask_chunk = match mask {
            Some(mask) if mask_rows => Some(mask.narrow(D::Minus2, start, len)?),
            Some(mask) => Some(mask.clone()),
            None => None,
        };
        outputs.push(attention_rows(
            &q_rows,
            &k_t,
            &v,
            scale,
            mask_chunk.as_ref(),
        )?);
    }
    Ok(Tensor::cat(&outputs, D::Minus2)?)
}

/// One block of query rows: `softmax(q k_t · scale + mask) v` with `k_t` already transposed.
fn attention_rows(
    q: &Tensor,
    k_t: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let mut scores = (q.contiguous()?.matmul(k_t)? * scale)?;
    if let Some(mask) = mask {
        scores = scores.broadcast_add(mask)?;
    }
    let probs = if super::differentiable() {
        super::training::softmax_last_dim(&scores)?
    } else {
        candle_nn::ops::softmax_last_dim(&scores)?
    };
    Ok(probs.matmul(v)?)
}

/// Multi-head attention on token layout: `q` `(batch, seq_q, heads·head_dim)`, `k` and `v`
/// `(batch, seq_kv, heads·head_dim)` (the q/k/v projections' outputs as they are), giving
/// `(batch, seq_q, heads·head_dim)`. On the CPU the kernels run it flash-style (no score
/// matrix, no transposes); elsewhere it splits the heads and calls [`attention`].
pub fn attention_tokens(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
) -> Result<Tensor> {
    let rounded = q.dtype() == DType::BF16;
    attention_tokens_in(q, k, v, heads, scale, rounded)
}

/// [`attention_tokens`] for a layer of a bf16 model when `bf16` is true: where the CPU has
/// bf16 tiles (AMX) the kernels round the products' inputs to bf16, as that model's linear
/// layers and convolutions do (its activations are f32 between layers on the CPU).
pub fn attention_tokens_in(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    bf16: bool,
) -> Result<Tensor> {
    let (batch, seq_q, inner) = q.dims3()?;
    let seq_kv = k.dim(1)?;
    let head_dim = inner / heads.max(1);
    if k.dims3()? != (batch, seq_kv, inner) || v.dims3()? != (batch, seq_kv, inner) {
        return Err(crate::Error::InvalidArgument {
            what: "attention inputs",
            msg: format!(
                "q {:?}, k {:?} and v {:?} do not agree",
                q.dims(),
                k.dims(),
                v.dims()
            ),
        });
    }
    if super::kernels::runs(q) && seq_kv > 0 && heads * head_dim == inner {
        super::flops::add(4 * (batch * heads * seq_q * seq_kv * head_dim) as u64);
        let shape = sd_kernels::attention::AttentionShape {
            batch,
            heads,
            seq_q,
            seq_kv,
            head_dim,
        };
        let precision = if bf16 {
            sd_kernels::attention::Precision::Bf16
        } else {
            sd_kernels::attention::Precision::F32
        };
        let level = sd_kernels::cpu::level();
        return super::kernels::fill(q, q.shape().clone(), |out| {
            super::kernels::with_f32(q, |q| {
                super::kernels::with_f32(k, |k| {
                    super::kernels::with_f32(v, |v| {
                        sd_kernels::attention::attention_with(
                            level,
                            precision,
                            shape,
                            q,
                            k,
                            v,
                            scale as f32,
                            false,
                            out,
                        )
                    })
                })
            })??
        });
    }
    let split = |t: &Tensor, seq: usize| -> Result<Tensor> {
        Ok(t.reshape((batch, seq, heads, head_dim))?.transpose(1, 2)?)
    };
    let out = attention(
        &split(q, seq_q)?,
        &split(k, seq_kv)?,
        &split(v, seq_kv)?,
        scale,
        None,
    )?;
    Ok(out.transpose(1, 2)?.reshape((batch, seq_q, inner))?)
}

/// The additive causal mask `(seq, seq)`: 0 on and below the diagonal, -inf above it.
pub fn causal_mask(seq: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..seq)
        .flat_map(|i| (0..seq).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(values, (seq, seq), device)?.to_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_attention_equals_unchunked_bit_for_bit() {
        let device = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (2, 3, 301, 16), &device).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, 3, 257, 16), &device).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, 3, 257, 16), &device).unwrap();
        let mask = Tensor::randn(0f32, 1.0, (301, 257), &device).unwrap();
        for mask in [None, Some(&mask)] {
            let whole = attention_in_chunks(&q, &k, &v, 0.25, mask, usize::MAX).unwrap();
            let chunked = attention_in_chunks(&q, &k, &v, 0.25, mask, 64).unwrap();
            let diff = (whole - chunked)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(diff, 0.0);
        }
    }
}
