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

use std::collections::HashMap;

use candle_core::{DType, Tensor};

use super::model::{StableDiffusion, TextEncoderPart};
use super::GenerationRequest;
use crate::loading::embeddings::TextualInversion;
use crate::prompt::emphasis::apply_emphasis;
use crate::prompt::{
    chunk_tokens, extract_extra_networks, parse_attention, prompt_schedule, schedule_index,
    PromptChunk, PromptSyntax, ScheduleSteps, WeightedTokens, COMMA_BACKTRACK,
};
use crate::text_encoder::HiddenLayer;
use crate::tokenizer::ClipTokenizer;
use crate::unet::AddedConditions;
use crate::{Error, Result};

/// The embeddings of one prompt.
#[derive(Debug, Clone)]
pub struct PromptEmbedding {
    /// Per-token context, `(1, 77·chunks, context_dim)`.
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
    /// `(batch or 2·batch, 77·chunks, context_dim)`, in the compute dtype.
    pub context: Tensor,
    /// SDXL's pooled text and time ids, batched like `context`.
    pub added: Option<AddedConditions>,
}

/// How prompts are turned into tokens and which hidden layer is used: everything of a
/// request that the text encoders depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextOptions {
    /// Plain (diffusers) or A1111 syntax.
    pub syntax: PromptSyntax,
    /// A1111's clip skip: 1 = the last layer, 2 = the penultimate, ...
    pub clip_skip: usize,
}

impl Default for TextOptions {
    fn default() -> Self {
        Self {
            syntax: PromptSyntax::Plain,
            clip_skip: 1,
        }
    }
}

impl TextOptions {
    /// The options of a request.
    pub fn of(request: &GenerationRequest) -> Self {
        Self {
            syntax: request.prompt_syntax,
            clip_skip: request.clip_skip.max(1),
        }
    }
}

/// Encodes padded `(1, 77)` windows with one encoder: the chosen hidden states, weighted
/// (A1111 emphasis) and joined along the sequence axis, and `text_embeds` of the first window.
fn encode_windows(
    part: &TextEncoderPart,
    windows: &[(Vec<u32>, Vec<f64>)],
    layer: HiddenLayer,
    device: &candle_core::Device,
) -> Result<(Tensor, Option<Tensor>)> {
    let mut contexts = Vec::with_capacity(windows.len());
    let mut pooled = None;
    for (i, (ids, weights)) in windows.iter().enumerate() {
        let ids = Tensor::from_vec(ids.clone(), (1, ids.len()), device)?;
        let output = part.model.forward(&ids, layer)?;
        contexts.push(apply_emphasis(&output.hidden, weights)?); // (1, 77, d)
        if i == 0 {
            pooled = output.text_embeds;
        }
    }
    Ok((Tensor::cat(&contexts, 1)?, pooled))
}

/// The 77-token windows of `prompt` for one encoder, with their weights. Plain syntax: one
/// window, cut at 75 tokens, all weights 1. A1111 syntax: see [`crate::prompt`]; at least
/// `min_chunks` windows (empty ones added at the end).
fn prompt_windows(
    part: &TextEncoderPart,
    prompt: &str,
    syntax: PromptSyntax,
    min_chunks: usize,
) -> Result<Vec<(Vec<u32>, Vec<f64>)>> {
    let window = part.tokenizer.max_len();
    let pad = part.pad_style;
    let mut chunks = match syntax {
        PromptSyntax::Plain => {
            let content: Vec<u32> = part
                .tokenizer
                .encode_content(prompt, pad)?
                .into_iter()
                .flat_map(|id| expand(&part.tokenizer, id))
                .collect();
            let ids = part.tokenizer.wrap_and_pad(&content, window, pad)?;
            return Ok(vec![(ids, vec![1.0; window])]);
        }
        PromptSyntax::A1111 => {
            let (text, _networks) = extract_extra_networks(prompt);
            let mut pieces = Vec::new();
            for piece in parse_attention(&text) {
                if piece.is_break() {
                    pieces.push(WeightedTokens::Break);
                    continue;
                }
                let ids = part.tokenizer.encode_content(&piece.text, pad)?;
                pieces.push(WeightedTokens::Tokens {
                    units: ids
                        .into_iter()
                        .map(|id| expand(&part.tokenizer, id))
                        .collect(),
                    weight: piece.weight,
                });
            }
            let comma = part.tokenizer.token_to_id(",</w>");
            chunk_tokens(&pieces, window - 2, comma, COMMA_BACKTRACK)
        }
    };
    while chunks.len() < min_chunks {
        chunks.push(PromptChunk::default());
    }
    chunks
        .iter()
        .map(|chunk| {
            let ids = part.tokenizer.wrap_and_pad(&chunk.tokens, window, pad)?;
            Ok((ids, chunk.window_weights(window)))
        })
        .collect()
}

/// The ids an id stands for: an embedding's vectors, or itself.
fn expand(tokenizer: &ClipTokenizer, id: u32) -> Vec<u32> {
    tokenizer
        .embedding_ids(id)
        .map(<[u32]>::to_vec)
        .unwrap_or_else(|| vec![id])
}

/// Adds an embedding's vectors to one encoder: its tokenizer learns the name, its token table
/// the vectors.
fn add_embedding_to(
    part: &mut TextEncoderPart,
    name: &str,
    vectors: &Tensor,
    path: &std::path::Path,
    encoder: &str,
) -> Result<()> {
    let (count, width) = vectors.dims2()?;
    let expected = part.model.config().hidden_size;
    if width != expected {
        return Err(Error::invalid(
            "embedding",
            format!(
                "{}: the vectors are {width} wide, but {encoder} is {expected} wide (an embedding for another model family?)",
                path.display()
            ),
        ));
    }
    let first_free = part.model.config().vocab_size;
    let mut tokenizer = part.tokenizer.clone();
    let ids = tokenizer.add_embedding(name, count)?;
    if ids[0] as usize != first_free {
        return Err(Error::invalid(
            "embedding",
            format!(
                "{}: the tokenizer's next id {} is not the encoder's vocabulary size {first_free}",
                path.display(),
                ids[0]
            ),
        ));
    }
    part.model.append_token_embeddings(vectors)?;
    part.tokenizer = tokenizer;
    Ok(())
}

/// The number of 77-token windows `prompt` takes with `part`.
fn chunk_count(part: &TextEncoderPart, prompt: &str, syntax: PromptSyntax) -> Result<usize> {
    Ok(prompt_windows(part, prompt, syntax, 0)?.len())
}

impl StableDiffusion {
    /// Adds a textual-inversion embedding: its name, written in a prompt, then stands for its
    /// vectors. SDXL needs both `clip_l` and `clip_g` vectors; other families take the single
    /// set. A width that does not fit the text encoder is an error naming the file and both
    /// widths.
    pub fn add_embedding(&mut self, embedding: &TextualInversion) -> Result<()> {
        let path = embedding.path.as_path();
        let name = embedding.name.as_str();
        let missing = |what: &str| {
            Error::invalid(
                "embedding",
                format!("{}: no {what} vectors for this model", path.display()),
            )
        };
        if self.description.family.is_sdxl() {
            if let Some(part) = self.text_encoder.as_mut() {
                let vectors = embedding.first.as_ref().ok_or_else(|| missing("clip_l"))?;
                add_embedding_to(part, name, vectors, path, "text_encoder")?;
            }
            let second = self.text_encoder_2.as_mut().expect("checked by from_parts");
            let vectors = embedding.second.as_ref().ok_or_else(|| missing("clip_g"))?;
            add_embedding_to(second, name, vectors, path, "text_encoder_2")?;
        } else {
            let part = self.text_encoder.as_mut().expect("checked by from_parts");
            let vectors = embedding.first.as_ref().ok_or_else(|| missing("clip_l"))?;
            add_embedding_to(part, name, vectors, path, "text_encoder")?;
        }
        Ok(())
    }

    /// This model with `embeddings` added, for one request: the weights are shared, only the
    /// tokenizers and token tables of the copy grow; `self` is unchanged.
    pub fn with_embeddings(&self, embeddings: &[TextualInversion]) -> Result<Self> {
        let mut model = self.clone();
        for embedding in embeddings {
            model.add_embedding(embedding)?;
        }
        Ok(model)
    }

    /// Encodes one prompt as the family does (see the module documentation), in diffusers'
    /// plain syntax with the last layer.
    pub fn encode_prompt(&self, prompt: &str) -> Result<PromptEmbedding> {
        self.encode_prompt_with(prompt, TextOptions::default(), 0)
    }

    /// Encodes one prompt with `options`, in at least `min_chunks` windows of 77 tokens (A1111
    /// syntax pads with empty chunks; plain syntax always gives one window).
    pub fn encode_prompt_with(
        &self,
        prompt: &str,
        options: TextOptions,
        min_chunks: usize,
    ) -> Result<PromptEmbedding> {
        let skip = options.clip_skip.max(1) - 1;
        if !self.description.family.is_sdxl() {
            let part = self.text_encoder.as_ref().expect("checked by from_parts");
            let windows = prompt_windows(part, prompt, options.syntax, min_chunks)?;
            let layer = HiddenLayer::clip_skip(skip);
            let (context, _) = encode_windows(part, &windows, layer, &self.device)?;
            return Ok(PromptEmbedding {
                context,
                pooled: None,
            });
        }
        // SDXL: the penultimate layer, without the final layer norm, of each encoder; both
        // encoders get the same number of windows.
        let layer = HiddenLayer::sdxl(skip);
        let second = self.text_encoder_2.as_ref().expect("checked by from_parts");
        let mut chunks = min_chunks.max(chunk_count(second, prompt, options.syntax)?);
        if let Some(part) = &self.text_encoder {
            chunks = chunks.max(chunk_count(part, prompt, options.syntax)?);
        }
        let mut contexts = Vec::with_capacity(2);
        if let Some(part) = &self.text_encoder {
            let windows = prompt_windows(part, prompt, options.syntax, chunks)?;
            contexts.push(encode_windows(part, &windows, layer, &self.device)?.0);
        }
        let windows = prompt_windows(second, prompt, options.syntax, chunks)?;
        let (context, pooled) = encode_windows(second, &windows, layer, &self.device)?;
        contexts.push(context);
        Ok(PromptEmbedding {
            context: Tensor::cat(&contexts, 2)?,
            pooled,
        })
    }

    /// The number of 77-token windows a prompt takes (the most over the model's encoders).
    pub fn prompt_chunk_count(&self, prompt: &str, syntax: PromptSyntax) -> Result<usize> {
        let mut count = 1;
        for part in [&self.text_encoder, &self.text_encoder_2]
            .into_iter()
            .flatten()
        {
            count = count.max(chunk_count(part, prompt, syntax)?);
        }
        Ok(count)
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
        let options = TextOptions::of(request);
        // A1111 gives the prompt and the negative prompt the same number of chunks, adding
        // empty ones to the shorter.
        let chunks = if request.uses_cfg() {
            self.prompt_chunk_count(&request.prompt, options.syntax)?
                .max(self.prompt_chunk_count(&request.negative_prompt, options.syntax)?)
        } else {
            1
        };
        let cond = self.encode_prompt_with(&request.prompt, options, chunks)?;
        let uncond = if request.uses_cfg() {
            Some(self.negative_embedding(&request.negative_prompt, &cond, options, chunks)?)
        } else {
            None
        };
        self.assemble_conditioning(request, &cond, uncond.as_ref())
    }

    /// The per-step conditioning of a request. Plain syntax: the same at every step. A1111
    /// syntax: the prompt and the negative prompt follow their [`prompt_schedule`]s for
    /// `steps` (`[from:to:when]`, `[a|b]`); each distinct text is encoded once, all in the
    /// same number of chunks.
    pub fn scheduled_conditioning(
        &self,
        request: &GenerationRequest,
        steps: ScheduleSteps,
    ) -> Result<ConditioningSchedule> {
        if request.prompt_syntax != PromptSyntax::A1111 {
            return Ok(ConditioningSchedule::constant(self.conditioning(request)?));
        }
        let options = TextOptions::of(request);
        // A1111 cuts the extra-network tags out before it reads the schedule.
        let schedule_of = |prompt: &str| prompt_schedule(&extract_extra_networks(prompt).0, steps);
        let cond_schedule = schedule_of(&request.prompt)?;
        let uncond_schedule = request
            .uses_cfg()
            .then(|| schedule_of(&request.negative_prompt))
            .transpose()?;

        let mut texts: Vec<&str> = Vec::new();
        for entry in cond_schedule.iter().chain(uncond_schedule.iter().flatten()) {
            if !texts.contains(&entry.text.as_str()) {
                texts.push(&entry.text);
            }
        }
        let mut chunks = 1;
        for text in &texts {
            chunks = chunks.max(self.prompt_chunk_count(text, options.syntax)?);
        }
        let mut embeddings: HashMap<&str, PromptEmbedding> = HashMap::new();
        for entry in &cond_schedule {
            if !embeddings.contains_key(entry.text.as_str()) {
                let embedding = self.encode_prompt_with(&entry.text, options, chunks)?;
                embeddings.insert(&entry.text, embedding);
            }
        }
        let mut negatives: HashMap<&str, PromptEmbedding> = HashMap::new();

        let total = match steps {
            ScheduleSteps::Single(steps) => steps,
            ScheduleSteps::Hires { steps, .. } => steps,
        };
        let pair_at = |counter: usize| {
            let cond = &cond_schedule[schedule_index(&cond_schedule, counter)].text;
            let uncond = uncond_schedule
                .as_ref()
                .map(|s| s[schedule_index(s, counter)].text.as_str());
            (cond.as_str(), uncond)
        };
        // Counters 0..=total, then one past the end (A1111's fallback).
        let mut pairs: Vec<(&str, Option<&str>)> = Vec::new();
        let mut indices = Vec::with_capacity(total + 2);
        for counter in 0..=total + 1 {
            let pair = pair_at(counter);
            let index = match pairs.iter().position(|p| *p == pair) {
                Some(index) => index,
                None => {
                    pairs.push(pair);
                    pairs.len() - 1
                }
            };
            indices.push(index);
        }
        let beyond = indices.pop().expect("total + 2 entries");
        let by_counter = indices;

        let mut conditionings = Vec::with_capacity(pairs.len());
        for (cond_text, uncond_text) in pairs {
            let cond = &embeddings[cond_text];
            let uncond = match uncond_text {
                // SDXL's zeros take the prompt's shape: made for each pair.
                Some("") if self.description.force_zeros_for_empty_prompt => {
                    Some(cond.zeros_like()?)
                }
                Some(text) => {
                    if !negatives.contains_key(text) {
                        let embedding = self.encode_prompt_with(text, options, chunks)?;
                        negatives.insert(text, embedding);
                    }
                    Some(negatives[text].clone())
                }
                None => None,
            };
            conditionings.push(self.assemble_conditioning(request, cond, uncond.as_ref())?);
        }
        Ok(ConditioningSchedule {
            conditionings,
            by_counter,
            beyond,
        })
    }

    /// The unconditional embedding for `negative`: SDXL's zeros (shaped like `cond`) when it
    /// is empty and the model asks for them, else its encoding.
    fn negative_embedding(
        &self,
        negative: &str,
        cond: &PromptEmbedding,
        options: TextOptions,
        chunks: usize,
    ) -> Result<PromptEmbedding> {
        if negative.is_empty() && self.description.force_zeros_for_empty_prompt {
            cond.zeros_like()
        } else {
            self.encode_prompt_with(negative, options, chunks)
        }
    }

    /// Batches one (prompt, negative prompt) pair of embeddings for a request: repeated for
    /// the batch, the unconditional half first, and for SDXL the pooled text and time ids.
    fn assemble_conditioning(
        &self,
        request: &GenerationRequest,
        cond: &PromptEmbedding,
        uncond: Option<&PromptEmbedding>,
    ) -> Result<Conditioning> {
        let batch = request.batch_size;
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
        let context = stack(&cond.context, uncond.map(|u| &u.context))?.to_dtype(self.dtype)?;
        let added = match &cond.pooled {
            Some(pooled) => {
                let (ids, negative_ids) =
                    self.time_ids(request, request.height_px(), request.width_px())?;
                let uncond_pooled = uncond.and_then(|u| u.pooled.as_ref());
                Some(AddedConditions {
                    text_embeds: stack(pooled, uncond_pooled)?.to_dtype(DType::F32)?,
                    time_ids: stack(&ids, uncond.map(|_| &negative_ids))?,
                })
            }
            None => None,
        };
        Ok(Conditioning { context, added })
    }
}

/// What the UNet is conditioned on at each model evaluation of a run: the distinct
/// conditionings (one for a prompt without editing or alternation) and which one each step
/// counter uses (A1111's counter: 0-based, one per model evaluation).
#[derive(Debug, Clone)]
pub struct ConditioningSchedule {
    conditionings: Vec<Conditioning>,
    by_counter: Vec<usize>,
    beyond: usize,
}

impl ConditioningSchedule {
    /// The same conditioning at every step.
    pub fn constant(conditioning: Conditioning) -> Self {
        Self {
            conditionings: vec![conditioning],
            by_counter: Vec::new(),
            beyond: 0,
        }
    }

    /// The conditioning of step counter `counter`.
    pub fn at(&self, counter: usize) -> &Conditioning {
        let index = self.by_counter.get(counter).copied().unwrap_or(self.beyond);
        &self.conditionings[index]
    }

    /// How many distinct conditionings the run uses.
    pub fn distinct(&self) -> usize {
        self.conditionings.len()
    }
}
