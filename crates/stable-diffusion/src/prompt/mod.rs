//! Prompt text as AUTOMATIC1111 reads it, before the tokenizer.
//!
//! ```text
//! "a (red:1.3) cat <lora:film:0.8> BREAK [blurry]"
//!   ─► extra networks cut out   ("a (red:1.3) cat  BREAK [blurry]", [lora film 0.8])
//!   ─► attention parse          [("a ", 1.0), ("red", 1.3), (" cat", 1.0), BREAK, ("blurry", 1/1.1)]
//!   ─► tokens with weights      (each piece tokenized on its own)
//!   ─► 75-token chunks          (a comma in the last 20 tokens moves the break; BREAK forces one)
//! ```
//!
//! The conditioning encodes each chunk with its own start and end tokens and applies the
//! weights as [`emphasis`] describes. Files: `attention` (the bracket syntax), `extra_networks`
//! (`<lora:...>` tags), `chunks` (cutting weighted tokens into windows), `emphasis` (weights
//! applied to the encoder output), `schedule` (`[from:to:when]` editing and `[a|b]`
//! alternation: the text at each step, before all of the above).

mod attention;
mod chunks;
pub mod emphasis;
mod extra_networks;
mod schedule;

pub use attention::{parse_attention, PromptPiece};
pub use chunks::{chunk_tokens, PromptChunk, WeightedTokens, COMMA_BACKTRACK};
pub use extra_networks::{extract_extra_networks, ExtraNetwork};
pub use schedule::{prompt_schedule, schedule_index, ScheduleSteps, ScheduledText};

use std::str::FromStr;

use crate::{Error, Result};

/// How prompt text is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum PromptSyntax {
    /// As diffusers reads it: the text is tokenized as written (brackets are plain characters)
    /// and cut at 77 tokens.
    #[default]
    Plain,
    /// As AUTOMATIC1111 reads it: `(word:1.2)` emphasis, `BREAK`, `<lora:...>` tags removed,
    /// prompts of any length in 75-token chunks.
    A1111,
}

impl PromptSyntax {
    /// Every name [`PromptSyntax::from_str`] accepts.
    pub const NAMES: &'static [&'static str] = &["plain", "a1111"];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            PromptSyntax::Plain => "plain",
            PromptSyntax::A1111 => "a1111",
        }
    }
}

impl FromStr for PromptSyntax {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "plain" | "diffusers" => Ok(PromptSyntax::Plain),
            "a1111" | "automatic1111" => Ok(PromptSyntax::A1111),
            _ => Err(Error::Unsupported {
                what: "prompt syntax",
                value: s.to_string(),
                valid: Self::NAMES.iter().map(|s| s.to_string()).collect(),
            }),
        }
    }
}
