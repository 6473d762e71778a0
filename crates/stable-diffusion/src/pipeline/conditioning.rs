//! Text to conditioning, per family: the per-token context the UNet cross-attends to and, for
//! SDXL, the pooled text embedding and the micro-conditioning time ids.
//!
//! ```text
//! SD 1.x / 2.x   text_encoder(ids).last_hidden_state                    → context (1, 77, d)
//! SDXL           [text_encoder(ids).hidden_states[-2],
//!                 text_encoder_2(ids₂).hidden_states[-2]] (feature axis)  → context (1, 77, d₁+d₂)
//!                text_encoder_2(ids₂).text_embeds                        → pooled (1, p)
//! refiner        text_encoder_2 only
//! ```

use candle_core::{DType, Tensor};

use super::model::{StableDiffusion, TextEncoderPart};
use super::GenerationRequest;
use crate::text_encoder::HiddenLayer;
use crate::unet::AddedConditions;
use crate::Result;

/// The embeddings of one prompt.
#[derive(Debug, Clone)]
pub struct PromptEmbedding {
    /// Per-token context, `(1, 77, context_dim)`.
    pub context: Tensor,
    /// SDXL's pooled text embedding, `(1, pooled_dim)`.
    pub pooled: Option<Tensor>,
}

impl PromptEmbedding {
    /// The all-zero embedding of the same shapes (SDXL's `force_zeros_for_empty_prompt`).
    fn zeros_like(&self) -> Result<Self> {
        Ok(Self {
            context: self.context.zeros_like()?,
            pooled: self.pooled.as_ref().map(Tensor::zeros_like).transpose()?,
        })
    }
}

/// What the UNet is conditioned on for a whole batch: with classifier-free guidance the
/// unconditional half comes first.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// `(batch or 2·batch, 77, context_dim)`, in the compute dtype.
    pub context: Tensor,
    /// SDXL's pooled text and time ids, batched like `context`.
    pub added: Option<AddedConditions>,
}

/// Encodes `prompt` with one encoder, returning the chosen hidden state and `text_embeds`.
fn encode_with(
    part: &TextEncoderPart,
    prompt: &str,
    layer: HiddenLayer,
    device: &candle_core::Device,
) -> Result<(Tensor, Option<Tensor>)> {
    let max_len = part.tokenizer.max_len();
    let ids = part
        .tokenizer
        .encode_padded(prompt, max_len, part.pad_style)?;
    let ids = Tensor::from_vec(ids, (1, max_len), device)?;
    let output = part.model.forward(&ids, layer)?;
    Ok((output.hidden, output.text_embeds))
}

impl StableDiffusion {
    /// Encodes one prompt as the family does (see the module documentation).
    pub fn encode_prompt(&self, prompt: &str) -> Result<PromptEmbedding> {
        if !self.description.family.is_sdxl() {
            let part = self.text_encoder.as_ref().expect("checked by from_parts");
            let (context, _) = encode_with(part, prompt, HiddenLayer::LAST, &self.device)?;
            return Ok(PromptEmbedding {
                context,
                pooled: None,
            });
        }
        // SDXL: the penultimate layer, without the final layer norm, of each encoder.
        let layer = HiddenLayer::sdxl(0);
        let mut contexts = Vec::with_capacity(2);
        if let Some(part) = &self.text_encoder {
            contexts.push(encode_with(part, prompt, layer, &self.device)?.0);
        }
        let second = self.text_encoder_2.as_ref().expect("checked by from_parts");
        let (context, pooled) = encode_with(second, prompt, layer, &self.device)?;
        contexts.push(context);
        Ok(PromptEmbedding {
            context: Tensor::cat(&contexts, 2)?,
            pooled,
        })
    }

    /// SDXL's micro-conditioning ids for an image of `height` x `width`: the original size,
    /// the crop's top-left corner (0, 0), then the target size (base) or the aesthetic score
    /// (refiner); heights first. Returns (conditional, unconditional), each `(1, n)`.
    pub fn time_ids(
        &self,
        request: &GenerationRequest,
        height: usize,
        width: usize,
    ) -> Result<(Tensor, Tensor)> {
        let (h, w) = (height as f32, width as f32);
        let (cond, uncond) = if self.description.requires_aesthetics_score {
            (
                vec![h, w, 0.0, 0.0, request.aesthetic_score as f32],
                vec![h, w, 0.0, 0.0, request.negative_aesthetic_score as f32],
            )
        } else {
            let ids = vec![h, w, 0.0, 0.0, h, w];
            (ids.clone(), ids)
        };
        let n = cond.len();
        Ok((
            Tensor::from_vec(cond, (1, n), &self.device)?,
            Tensor::from_vec(uncond, (1, n), &self.device)?,
        ))
    }

    /// The conditioning of a whole request: the prompt (and, with guidance, the negative
    /// prompt, or SDXL's zeros when it is empty and the model asks for them) repeated for the
    /// batch, and for SDXL the pooled text and time ids.
    pub fn conditioning(&self, request: &GenerationRequest) -> Result<Conditioning> {
        let batch = request.batch_size;
        let cond = self.encode_prompt(&request.prompt)?;
        let uncond = if request.uses_cfg() {
            let zeros =
                request.negative_prompt.is_empty() && self.description.force_zeros_for_empty_prompt;
            Some(if zeros {
                cond.zeros_like()?
            } else {
                self.encode_prompt(&request.negative_prompt)?
            })
        } else {
            None
        };
        let stack = |cond: &Tensor, uncond: Option<&Tensor>| -> Result<Tensor> {
            let dims = cond.rank();
            let repeat = |t: &Tensor| -> Result<Tensor> {
                let mut reps = vec![1; dims];
                reps[0] = batch;
                Ok(t.repeat(reps.as_slice())?)
            };
            Ok(match uncond {
                Some(uncond) => Tensor::cat(&[repeat(uncond)?, repeat(cond)?], 0)?,
                None => repeat(cond)?,
            })
        };
        let context =
            stack(&cond.context, uncond.as_ref().map(|u| &u.context))?.to_dtype(self.dtype)?;
        let added = match &cond.pooled {
            Some(pooled) => {
                let (ids, negative_ids) = self.time_ids(request, request.height, request.width)?;
                let uncond_pooled = uncond.as_ref().and_then(|u| u.pooled.as_ref());
                Some(AddedConditions {
                    text_embeds: stack(pooled, uncond_pooled)?.to_dtype(DType::F32)?,
                    time_ids: stack(&ids, uncond.as_ref().map(|_| &negative_ids))?,
                })
            }
            None => None,
        };
        Ok(Conditioning { context, added })
    }
}
