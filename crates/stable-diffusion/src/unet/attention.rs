//! The UNet's spatial transformer: self- and cross-attention over the pixels of a feature map.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::nn::{attention_tokens_in, Conv2d, GeGlu, GroupNorm, LayerNorm, Linear};
use crate::Result;

/// diffusers' `Attention` as the UNet uses it: bias-free q/k/v projections, `to_out.0` with bias.
#[derive(Debug, Clone)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    /// Loads an attention over `query_dim` features whose keys and values come from
    /// `context_dim` features (`None`: self-attention).
    pub(crate) fn new(
        vb: VarBuilder,
        query_dim: usize,
        context_dim: Option<usize>,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        let context_dim = context_dim.unwrap_or(query_dim);
        Ok(Self {
            to_q: Linear::new(vb.pp("to_q"), query_dim, inner, false)?,
            to_k: Linear::new(vb.pp("to_k"), context_dim, inner, false)?,
            to_v: Linear::new(vb.pp("to_v"), context_dim, inner, false)?,
            to_out: Linear::new(vb.pp("to_out").pp("0"), inner, query_dim, true)?,
            heads,
            head_dim,
        })
    }

    /// `x` `(batch, seq, query_dim)` attends to `context` `(batch, seq_kv, context_dim)`, or to
    /// itself when `context` is `None`; `residual` (shaped like `x`) is added to the output.
    pub fn forward_residual(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let context = context.unwrap_or(x);
        let q = self.to_q.forward(x)?;
        let k = self.to_k.forward(context)?;
        let v = self.to_v.forward(context)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let bf16 = self.to_q.stores_bf16();
        let out = attention_tokens_in(&q, &k, &v, self.heads, scale, bf16)?; // (batch, seq, inner)
        self.to_out.forward_residual(&out, residual)
    }

    /// `x` `(batch, seq, query_dim)` attends to `context` `(batch, seq_kv, context_dim)`, or to
    /// itself when `context` is `None`.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        self.forward_residual(x, context, None)
    }
}

/// diffusers' `FeedForward` with GEGLU: `net.2(net.0(x))`, inner width 4 × dim.
#[derive(Debug, Clone)]
pub struct FeedForward {
    geglu: GeGlu,
    out: Linear,
}

impl FeedForward {
    /// Loads `net.0.proj` and `net.2` under `vb`.
    pub(crate) fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            geglu: GeGlu::new(vb.pp("net").pp("0"), dim, inner)?,
            out: Linear::new(vb.pp("net").pp("2"), inner, dim, true)?,
        })
    }

    /// `(..., dim)` → `(..., dim)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_residual(x, None)
    }

    /// The feed-forward with `residual` (shaped like `x`) added to its output.
    pub fn forward_residual(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        self.out.forward_residual(&self.geglu.forward(x)?, residual)
    }
}

/// diffusers' `BasicTransformerBlock` (layer norms): self-attention, cross-attention to the
/// text, feed-forward, each with a residual.
#[derive(Debug, Clone)]
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    /// Loads a block of width `dim` attending to a `context_dim`-wide text under `vb`.
    pub(crate) fn new(
        vb: VarBuilder,
        dim: usize,
        heads: usize,
        head_dim: usize,
        context_dim: usize,
    ) -> Result<Self> {
        let eps = 1e-5;
        Ok(Self {
            norm1: LayerNorm::new(vb.pp("norm1"), dim, eps)?,
            attn1: Attention::new(vb.pp("attn1"), dim, None, heads, head_dim)?,
            norm2: LayerNorm::new(vb.pp("norm2"), dim, eps)?,
            attn2: Attention::new(vb.pp("attn2"), dim, Some(context_dim), heads, head_dim)?,
            norm3: LayerNorm::new(vb.pp("norm3"), dim, eps)?,
            ff: FeedForward::new(vb.pp("ff"), dim)?,
        })
    }

    /// `x` `(batch, seq, dim)`, `context` `(batch, seq_text, context_dim)` → `(batch, seq, dim)`.
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let x = self
            .attn1
            .forward_residual(&self.norm1.forward(x)?, None, Some(x))?;
        let x = self
            .attn2
            .forward_residual(&self.norm2.forward(&x)?, Some(context), Some(&x))?;
        self.ff.forward_residual(&self.norm3.forward(&x)?, Some(&x))
    }
}

/// `proj_in` / `proj_out`: a linear layer on `(batch, seq, c)` or a 1x1 convolution on the map.
#[derive(Debug, Clone)]
enum Projection {
    Linear(Linear),
    Conv(Conv2d),
}

impl Projection {
    /// Loads the projection; `entry` (proj_in) or not (proj_out) picks the form the CPU
    /// kernels run without a transpose: a 1x1 convolution into the sequence, a linear layer
    /// out of it. The checkpoint's tensors are the same either way (a 1x1 kernel's
    /// `(out, in, 1, 1)` weight is the linear layer's `(out, in)`).
    fn new(
        vb: VarBuilder,
        in_dim: usize,
        out_dim: usize,
        linear: bool,
        entry: bool,
    ) -> Result<Self> {
        let weight = if linear {
            vb.get((out_dim, in_dim), "weight")?
        } else {
            vb.get((out_dim, in_dim, 1, 1), "weight")?
        };
        let bias = vb.get(out_dim, "bias")?;
        let as_linear = if crate::nn::kernels::packs(&weight) {
            !entry
        } else {
            linear
        };
        // Reshaped only when the form changes (trainable weights keep their identity).
        Ok(if as_linear {
            let weight = if linear {
                weight
            } else {
                weight.reshape((out_dim, in_dim))?
            };
            Projection::Linear(Linear::from_tensors(weight, Some(bias), in_dim, out_dim)?)
        } else {
            let geometry = sd_kernels::conv::ConvGeometry {
                in_channels: in_dim,
                out_channels: out_dim,
                kernel: 1,
                stride: 1,
                padding: 0,
            };
            let weight = if linear {
                weight.reshape((out_dim, in_dim, 1, 1))?
            } else {
                weight
            };
            Projection::Conv(Conv2d::from_tensors(weight, bias, geometry)?)
        })
    }
}

/// diffusers' `Transformer2DModel` on continuous input: group norm, `proj_in`, transformer
/// blocks over the `h·w` pixels, `proj_out`, plus the input.
#[derive(Debug, Clone)]
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

impl Transformer2DModel {
    /// Loads a transformer over `channels` features with `heads` heads of `channels / heads`
    /// dimensions and `depth` blocks under `vb`.
    pub(crate) fn new(
        vb: VarBuilder,
        channels: usize,
        heads: usize,
        depth: usize,
        context_dim: usize,
        groups: usize,
        linear_projection: bool,
    ) -> Result<Self> {
        let head_dim = channels / heads;
        let inner = heads * head_dim;
        let blocks = (0..depth)
            .map(|i| {
                BasicTransformerBlock::new(
                    vb.pp("transformer_blocks").pp(i),
                    inner,
                    heads,
                    head_dim,
                    context_dim,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: GroupNorm::new(vb.pp("norm"), groups, channels, 1e-6)?,
            proj_in: Projection::new(vb.pp("proj_in"), channels, inner, linear_projection, true)?,
            blocks,
            proj_out: Projection::new(
                vb.pp("proj_out"),
                inner,
                channels,
                linear_projection,
                false,
            )?,
        })
    }

    /// `x` `(batch, c, h, w)`, `context` `(batch, seq_text, context_dim)` → `(batch, c, h, w)`.
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (batch, _, height, width) = x.dims4()?;
        let normed = self.norm.forward(x)?;
        // (batch, c, h, w) -> (batch, h·w, c)
        let to_sequence = |t: &Tensor| -> Result<Tensor> {
            let c = t.dim(1)?;
            Ok(t.permute((0, 2, 3, 1))?
                .reshape((batch, height * width, c))?)
        };
        let mut hidden = match &self.proj_in {
            Projection::Conv(conv) => match conv.forward_channels_last(&normed)? {
                Some(sequence) => sequence,
                None => to_sequence(&conv.forward(&normed)?)?,
            },
            Projection::Linear(linear) => linear.forward(&to_sequence(&normed)?)?,
        };
        for block in &self.blocks {
            hidden = block.forward(&hidden, context)?;
        }
        // (batch, h·w, c) -> (batch, c, h, w)
        let to_map = |t: &Tensor| -> Result<Tensor> {
            let c = t.dim(2)?;
            Ok(t.reshape((batch, height, width, c))?
                .permute((0, 3, 1, 2))?
                .contiguous()?)
        };
        let out = match &self.proj_out {
            Projection::Linear(linear) => {
                if let Some(map) =
                    linear.forward_channels_first(&hidden, (height, width), Some(x))?
                {
                    return Ok(map);
                }
                to_map(&linear.forward(&hidden)?)?
            }
            Projection::Conv(conv) => conv.forward(&to_map(&hidden)?)?,
        };
        Ok((out + x)?)
    }
}
