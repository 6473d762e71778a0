//! The CLIP text transformer (transformers' `CLIPTextModel` / `CLIPTextModelWithProjection`).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::ClipTextConfig;
use crate::loading::DiffusersFolder;
use crate::nn::{attention, causal_mask, Activation, LayerNorm, Linear};
use crate::{Error, Result};

/// Which hidden state [`ClipTextModel::forward`] returns as its per-token output.
///
/// `hidden_states` holds the embeddings' output and then each layer's output (`num_layers + 1`
/// entries); `from_end` counts back from the last layer's output (0 = `hidden_states[-1]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HiddenLayer {
    /// `hidden_states[-(from_end + 1)]`.
    pub from_end: usize,
    /// Whether to pass it through the model's `final_layer_norm`.
    pub final_layer_norm: bool,
}

impl HiddenLayer {
    /// The last layer's output after `final_layer_norm`: transformers' `last_hidden_state`.
    pub const LAST: HiddenLayer = HiddenLayer {
        from_end: 0,
        final_layer_norm: true,
    };

    /// diffusers' `clip_skip` for SD 1.x/2.x: `hidden_states[-(clip_skip + 1)]`, then
    /// `final_layer_norm` (`clip_skip(0)` is [`HiddenLayer::LAST`]; A1111's "clip skip 2" is 1).
    pub fn clip_skip(clip_skip: usize) -> Self {
        Self {
            from_end: clip_skip,
            final_layer_norm: true,
        }
    }

    /// diffusers' SDXL choice: `hidden_states[-(clip_skip + 2)]` without `final_layer_norm`
    /// (`sdxl(0)` is the penultimate layer's raw output, SDXL's default).
    pub fn sdxl(clip_skip: usize) -> Self {
        Self {
            from_end: clip_skip + 1,
            final_layer_norm: false,
        }
    }
}

/// What the text encoder computed for a batch of token ids.
#[derive(Debug, Clone)]
pub struct ClipTextOutput {
    /// The hidden state chosen by [`HiddenLayer`], `(batch, seq, hidden)`.
    pub hidden: Tensor,
    /// The final-layer-normed state at each sequence's end-of-text token, `(batch, hidden)`.
    pub pooled: Tensor,
    /// `text_projection(pooled)`, `(batch, projection_dim)`, for the projection variant.
    pub text_embeds: Option<Tensor>,
    /// Every raw hidden state: the embeddings' output, then each layer's, `(batch, seq, hidden)`.
    pub hidden_states: Vec<Tensor>,
}

#[derive(Debug, Clone)]
struct Embeddings {
    token_embedding: Tensor,
    position_embedding: Tensor,
}

impl Embeddings {
    fn new(vb: VarBuilder, config: &ClipTextConfig) -> Result<Self> {
        let hidden = config.hidden_size;
        Ok(Self {
            token_embedding: vb
                .pp("token_embedding")
                .get((config.vocab_size, hidden), "weight")?,
            position_embedding: vb
                .pp("position_embedding")
                .get((config.max_position_embeddings, hidden), "weight")?,
        })
    }

    /// `(batch, seq)` u32 ids → `(batch, seq, hidden)`.
    fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (batch, seq) = input_ids.dims2()?;
        let hidden = self.token_embedding.dim(1)?;
        let positions = self.position_embedding.narrow(0, 0, seq)?;
        // The table may be kept in a half storage dtype: only the rows looked up are widened.
        let tokens = self
            .token_embedding
            .index_select(&input_ids.flatten_all()?, 0)?
            .to_dtype(positions.dtype())?
            .reshape((batch, seq, hidden))?;
        Ok(tokens.broadcast_add(&positions)?)
    }
}

#[derive(Debug, Clone)]
struct SelfAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    fn new(vb: VarBuilder, config: &ClipTextConfig) -> Result<Self> {
        let dim = config.hidden_size;
        Ok(Self {
            q_proj: Linear::new(vb.pp("q_proj"), dim, dim, true)?,
            k_proj: Linear::new(vb.pp("k_proj"), dim, dim, true)?,
            v_proj: Linear::new(vb.pp("v_proj"), dim, dim, true)?,
            out_proj: Linear::new(vb.pp("out_proj"), dim, dim, true)?,
            heads: config.num_attention_heads,
            head_dim: config.head_dim(),
        })
    }

    /// `(batch, seq, hidden)` → `(batch, seq, hidden)`, with the additive `mask` `(seq, seq)`.
    fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (batch, seq, hidden) = x.dims3()?;
        let split_heads = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((batch, seq, self.heads, self.head_dim))?
                .transpose(1, 2)?)
        };
        let q = split_heads(self.q_proj.forward(x)?)?;
        let k = split_heads(self.k_proj.forward(x)?)?;
        let v = split_heads(self.v_proj.forward(x)?)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let attended = attention(&q, &k, &v, scale, Some(mask))? // (batch, heads, seq, head_dim)
            .transpose(1, 2)?
            .reshape((batch, seq, hidden))?;
        self.out_proj.forward(&attended)
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: SelfAttention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    activation: Activation,
}

impl EncoderLayer {
    fn new(vb: VarBuilder, config: &ClipTextConfig) -> Result<Self> {
        let (dim, eps) = (config.hidden_size, config.layer_norm_eps);
        let mlp = vb.pp("mlp");
        Ok(Self {
            layer_norm1: LayerNorm::new(vb.pp("layer_norm1"), dim, eps)?,
            self_attn: SelfAttention::new(vb.pp("self_attn"), config)?,
            layer_norm2: LayerNorm::new(vb.pp("layer_norm2"), dim, eps)?,
            fc1: Linear::new(mlp.pp("fc1"), dim, config.intermediate_size, true)?,
            fc2: Linear::new(mlp.pp("fc2"), config.intermediate_size, dim, true)?,
            activation: config.hidden_act,
        })
    }

    /// Pre-norm residual block: attention, then MLP.
    fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let attended = self
            .self_attn
            .forward(&self.layer_norm1.forward(x)?, mask)?;
        let x = (x + attended)?;
        let hidden = self.fc1.forward(&self.layer_norm2.forward(&x)?)?;
        let mlp_out = self.fc2.forward(&self.activation.forward(&hidden)?)?;
        Ok((x + mlp_out)?)
    }
}

/// A CLIP text encoder: transformers' `CLIPTextModel`, or `CLIPTextModelWithProjection` when
/// built with [`ClipTextModel::new_with_projection`].
#[derive(Debug, Clone)]
pub struct ClipTextModel {
    embeddings: Embeddings,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    text_projection: Option<Linear>,
    config: ClipTextConfig,
}

impl ClipTextModel {
    /// Builds a `CLIPTextModel` from `vb` with the names transformers 5.x writes
    /// (`embeddings.…`, `encoder.layers.N.…`, `final_layer_norm.…`).
    pub fn new(vb: VarBuilder, config: &ClipTextConfig) -> Result<Self> {
        config.validate()?;
        let encoder = vb.pp("encoder").pp("layers");
        let layers = (0..config.num_hidden_layers)
            .map(|i| EncoderLayer::new(encoder.pp(i), config))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings: Embeddings::new(vb.pp("embeddings"), config)?,
            layers,
            final_layer_norm: LayerNorm::new(
                vb.pp("final_layer_norm"),
                config.hidden_size,
                config.layer_norm_eps,
            )?,
            text_projection: None,
            config: config.clone(),
        })
    }

    /// Builds a `CLIPTextModelWithProjection`: the transformer under `text_model.` and a
    /// bias-free `text_projection` (`hidden_size` → `projection_dim`).
    pub fn new_with_projection(vb: VarBuilder, config: &ClipTextConfig) -> Result<Self> {
        let mut model = Self::new(vb.pp("text_model"), config)?;
        model.text_projection = Some(Linear::new(
            vb.pp("text_projection"),
            config.hidden_size,
            config.projection_dim,
            false,
        )?);
        Ok(model)
    }

    /// Builds the model for a transformers class name (`CLIPTextModel` or
    /// `CLIPTextModelWithProjection`).
    pub fn from_class(vb: VarBuilder, config: &ClipTextConfig, class: &str) -> Result<Self> {
        match class {
            "CLIPTextModel" => Self::new(vb, config),
            "CLIPTextModelWithProjection" => Self::new_with_projection(vb, config),
            other => Err(Error::Unsupported {
                what: "text encoder class",
                value: other.to_string(),
                valid: vec![
                    "CLIPTextModel".to_string(),
                    "CLIPTextModelWithProjection".to_string(),
                ],
            }),
        }
    }

    /// Loads `component` (e.g. `text_encoder`, `text_encoder_2`) of a diffusers folder: its
    /// config, its class from `model_index.json`, and its weights (either key layout).
    pub fn load(
        folder: &DiffusersFolder,
        component: &str,
        variant: Option<&str>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let config: ClipTextConfig = folder.config(component)?;
        let class = folder
            .component_class(component)
            .map_or("CLIPTextModel", |c| c.class.as_str());
        let vb = folder.weights(component, variant, dtype, device)?;
        Self::from_class(vb, &config, class)
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// Appends rows to the token embedding (textual inversion): `rows` `(n, hidden)` get the ids
    /// `vocab_size..vocab_size + n`, and the vocabulary grows by `n`.
    pub fn append_token_embeddings(&mut self, rows: &Tensor) -> Result<()> {
        // In the compute dtype (the position table's): a table kept in half precision is
        // widened first, so the new rows are not rounded.
        let dtype = self.embeddings.position_embedding.dtype();
        let table = self.embeddings.token_embedding.to_dtype(dtype)?;
        let rows = rows.to_dtype(dtype)?.to_device(table.device())?;
        self.embeddings.token_embedding = Tensor::cat(&[&table, &rows], 0)?;
        self.config.vocab_size += rows.dim(0)?;
        Ok(())
    }

    /// Whether the model has `text_projection` (and so gives `text_embeds`).
    pub fn has_projection(&self) -> bool {
        self.text_projection.is_some()
    }

    /// Encodes `input_ids` `(batch, seq)` (any integer dtype; `seq` at most
    /// `max_position_embeddings`), returning the hidden state chosen by `layer`, the pooled
    /// output and, with a projection, `text_embeds`.
    pub fn forward(&self, input_ids: &Tensor, layer: HiddenLayer) -> Result<ClipTextOutput> {
        let ids = self.check_ids(input_ids)?;
        let input_ids = input_ids.to_dtype(DType::U32)?;
        let (batch, seq) = input_ids.dims2()?;
        if layer.from_end > self.layers.len() {
            return Err(Error::invalid(
                "hidden layer",
                format!(
                    "hidden_states[-{}] asked for, but the model has {} layers (+1 embeddings output)",
                    layer.from_end + 1,
                    self.layers.len()
                ),
            ));
        }

        let mut x = self.embeddings.forward(&input_ids)?; // (batch, seq, hidden)
        let mask = causal_mask(seq, x.dtype(), x.device())?;
        let mut hidden_states = Vec::with_capacity(self.layers.len() + 1);
        hidden_states.push(x.clone());
        for encoder_layer in &self.layers {
            x = encoder_layer.forward(&x, &mask)?;
            hidden_states.push(x.clone());
        }
        let last_hidden_state = self.final_layer_norm.forward(&x)?;

        let chosen = &hidden_states[self.layers.len() - layer.from_end];
        let hidden = match (layer.from_end, layer.final_layer_norm) {
            (0, true) => last_hidden_state.clone(),
            (_, true) => self.final_layer_norm.forward(chosen)?,
            (_, false) => chosen.clone(),
        };

        // Gather the state at each sequence's pooling position from (batch * seq, hidden).
        let rows: Vec<u32> = ids
            .iter()
            .enumerate()
            .map(|(b, row)| (b * seq + self.pooling_position(row)) as u32)
            .collect();
        let rows = Tensor::from_vec(rows, batch, last_hidden_state.device())?;
        let pooled = last_hidden_state
            .reshape((batch * seq, self.config.hidden_size))?
            .index_select(&rows, 0)?; // (batch, hidden)
        let text_embeds = match &self.text_projection {
            Some(projection) => Some(projection.forward(&pooled)?),
            None => None,
        };
        Ok(ClipTextOutput {
            hidden,
            pooled,
            text_embeds,
            hidden_states,
        })
    }

    /// Where transformers pools a sequence: with the legacy `eos_token_id` 2, at the (first)
    /// highest id, which is the end-of-text token for tokenizer output; otherwise at the first
    /// `eos_token_id`, or position 0 if there is none.
    fn pooling_position(&self, ids: &[u32]) -> usize {
        if self.config.eos_token_id == 2 {
            let max = ids.iter().copied().max().unwrap_or(0);
            ids.iter().position(|&id| id == max).unwrap_or(0)
        } else {
            ids.iter()
                .position(|&id| id == self.config.eos_token_id)
                .unwrap_or(0)
        }
    }

    /// Checks shape and values of the ids, returning them as rows.
    fn check_ids(&self, input_ids: &Tensor) -> Result<Vec<Vec<u32>>> {
        let (batch, seq) = input_ids.dims2().map_err(|_| {
            Error::invalid(
                "input_ids",
                format!("expected (batch, seq), got shape {:?}", input_ids.dims()),
            )
        })?;
        if batch == 0 || seq == 0 || seq > self.config.max_position_embeddings {
            return Err(Error::invalid(
                "input_ids",
                format!(
                    "shape ({batch}, {seq}): need a non-empty batch of 1 to {} tokens",
                    self.config.max_position_embeddings
                ),
            ));
        }
        if input_ids.dtype().is_float() {
            return Err(Error::invalid(
                "input_ids",
                format!("token ids must be integers, got {:?}", input_ids.dtype()),
            ));
        }
        let ids: Vec<Vec<i64>> = input_ids.to_dtype(DType::I64)?.to_vec2()?;
        let vocab = self.config.vocab_size as i64;
        if let Some(bad) = ids.iter().flatten().find(|&&id| id < 0 || id >= vocab) {
            return Err(Error::invalid(
                "input_ids",
                format!("token id {bad} is outside the vocabulary of {vocab}"),
            ));
        }
        Ok(ids
            .into_iter()
            .map(|row| row.into_iter().map(|id| id as u32).collect())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn table(rows: usize, hidden: usize, seed: f32) -> Tensor {
        let values: Vec<f32> = (0..rows * hidden)
            .map(|i| ((i as f32 * 0.37 + seed).sin() * 3.0) + 1e-3 * i as f32)
            .collect();
        Tensor::from_vec(values, (rows, hidden), &Device::Cpu).unwrap()
    }

    #[test]
    fn a_half_token_table_looks_up_its_rows_widened() {
        let (vocab, hidden) = (11, 6);
        let half = table(vocab, hidden, 0.5).to_dtype(DType::BF16).unwrap();
        let positions = table(4, hidden, 1.5);
        let wide = Embeddings {
            token_embedding: half.to_dtype(DType::F32).unwrap(),
            position_embedding: positions.clone(),
        };
        let narrow = Embeddings {
            token_embedding: half,
            position_embedding: positions,
        };
        let ids = Tensor::new(&[[3u32, 0, 10, 3]], &Device::Cpu).unwrap();
        let (a, b) = (wide.forward(&ids).unwrap(), narrow.forward(&ids).unwrap());
        assert_eq!(b.dtype(), DType::F32);
        let (a, b) = (a.flatten_all().unwrap(), b.flatten_all().unwrap());
        assert_eq!(a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
    }
}
