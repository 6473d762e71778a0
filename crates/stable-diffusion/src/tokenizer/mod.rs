//! The CLIP byte-level BPE tokenizer, with the vocabulary embedded in the binary.
//!
//! Text becomes ids in the same steps as transformers' `CLIPTokenizer` (backed by the
//! `tokenizers` library):
//! 1. the special tokens `<|startoftext|>` / `<|endoftext|>` (and any added token) are cut out of
//!    the raw text, exactly as written;
//! 2. each remaining piece is normalized: Unicode NFC, every run of whitespace becomes one space,
//!    then each character is lowercased on its own;
//! 3. it is split into words by CLIP's pattern (contractions, letter runs, single digits, runs of
//!    other symbols; whitespace is dropped), and each word into GPT-2's classes;
//! 4. each word's UTF-8 bytes are merged by BPE ([`bpe`]), its last symbol carrying `</w>`;
//! 5. `<|startoftext|>` and `<|endoftext|>` wrap the result; [`ClipTokenizer::encode_padded`]
//!    truncates and pads it to the 77-token window.

pub mod bpe;
mod clip;
pub mod vocab;

pub use clip::ClipTokenizer;

/// The start-of-text token.
pub const BOS_TOKEN: &str = "<|startoftext|>";
/// The end-of-text token (also CLIP's unknown token and SD 1.x's padding).
pub const EOS_TOKEN: &str = "<|endoftext|>";
/// The id of `<|startoftext|>` in CLIP's vocabulary.
pub const BOS_ID: u32 = 49406;
/// The id of `<|endoftext|>` in CLIP's vocabulary.
pub const EOS_ID: u32 = 49407;
/// The id of `!` in CLIP's vocabulary, the padding of SD 2.x and SDXL's second encoder.
pub const EXCLAMATION_ID: u32 = 0;
/// The length of CLIP's context window: start + 75 tokens + end.
pub const MAX_LEN: usize = 77;

/// How a prompt shorter than the window is padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PadStyle {
    /// Pad with `<|endoftext|>` (SD 1.x, SDXL's first text encoder).
    EndOfText,
    /// Pad with `!`, id 0 (SD 2.x, SDXL's second text encoder).
    Exclamation,
}

impl PadStyle {
    /// The padding id in CLIP's vocabulary.
    pub fn pad_id(self) -> u32 {
        match self {
            PadStyle::EndOfText => EOS_ID,
            PadStyle::Exclamation => EXCLAMATION_ID,
        }
    }

    /// The padding token as text.
    pub fn pad_token(self) -> &'static str {
        match self {
            PadStyle::EndOfText => EOS_TOKEN,
            PadStyle::Exclamation => "!",
        }
    }
}
