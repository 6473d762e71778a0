//! Cutting weighted tokens into AUTOMATIC1111's chunks of 75 (each later wrapped in start and
//! end tokens and padded to 77).
//!
//! Tokens fill the current chunk in order. When a chunk is full and the next token is not a
//! comma, and a comma lies within the chunk's last [`COMMA_BACKTRACK`] tokens, everything after
//! that comma moves to the next chunk (A1111's `comma_padding_backtrack`). A textual-inversion
//! embedding of several vectors is never split: if it does not fit, it starts a new chunk.
//! `BREAK` closes the current chunk (even an empty one). A prompt with no tokens gives one
//! empty chunk.

/// How far back from a full chunk's end a comma moves the break (A1111's default, 20).
pub const COMMA_BACKTRACK: usize = 20;

/// The tokens of one parsed piece.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightedTokens {
    /// Close the current chunk.
    Break,
    /// Units of one weight: a single token id, or an embedding's run of ids.
    Tokens {
        /// Each unit's ids (one for a token, N for an N-vector embedding).
        units: Vec<Vec<u32>>,
        /// The weight of every id.
        weight: f64,
    },
}

/// Up to 75 content tokens and their weights (start, end and padding are added when encoding).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PromptChunk {
    /// Content token ids.
    pub tokens: Vec<u32>,
    /// One weight per id.
    pub weights: Vec<f64>,
}

impl PromptChunk {
    /// The weights of the padded window: 1 for the start token, the content's weights, then 1
    /// for the end token and the padding, `window` in all.
    pub fn window_weights(&self, window: usize) -> Vec<f64> {
        let mut weights = Vec::with_capacity(window);
        weights.push(1.0);
        weights.extend_from_slice(&self.weights);
        weights.resize(window, 1.0);
        weights
    }
}

/// Cuts `pieces` into chunks of at most `chunk_len` (75) tokens, as described in the module
/// documentation. `comma` is the id of `,</w>`; `backtrack` 0 turns the comma rule off.
pub fn chunk_tokens(
    pieces: &[WeightedTokens],
    chunk_len: usize,
    comma: Option<u32>,
    backtrack: usize,
) -> Vec<PromptChunk> {
    let mut chunks = Vec::new();
    let mut chunk = PromptChunk::default();
    let mut last_comma: Option<usize> = None;
    let mut close = |chunk: &mut PromptChunk, last_comma: &mut Option<usize>| {
        chunks.push(std::mem::take(chunk));
        *last_comma = None;
    };
    for piece in pieces {
        let (units, weight) = match piece {
            WeightedTokens::Break => {
                close(&mut chunk, &mut last_comma);
                continue;
            }
            WeightedTokens::Tokens { units, weight } => (units, *weight),
        };
        for unit in units {
            let is_comma = unit.len() == 1 && Some(unit[0]) == comma;
            if is_comma {
                last_comma = Some(chunk.tokens.len());
            } else if let Some(at) = last_comma {
                if backtrack != 0
                    && chunk.tokens.len() == chunk_len
                    && chunk.tokens.len() - at <= backtrack
                {
                    let moved_tokens = chunk.tokens.split_off(at + 1);
                    let moved_weights = chunk.weights.split_off(at + 1);
                    close(&mut chunk, &mut last_comma);
                    chunk.tokens = moved_tokens;
                    chunk.weights = moved_weights;
                }
            }
            if chunk.tokens.len() == chunk_len {
                close(&mut chunk, &mut last_comma);
            }
            if unit.len() > 1 && chunk.tokens.len() + unit.len() > chunk_len {
                close(&mut chunk, &mut last_comma);
            }
            chunk.tokens.extend_from_slice(unit);
            chunk
                .weights
                .extend(std::iter::repeat_n(weight, unit.len()));
        }
    }
    if !chunk.tokens.is_empty() || chunks.is_empty() {
        chunks.push(chunk);
    }
    chunks
}
