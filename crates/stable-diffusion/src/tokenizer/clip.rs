//! [`ClipTokenizer`]: normalization, pre-tokenization, special and added tokens, truncation and
//! padding around the BPE model.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use regex::Regex;
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

use super::bpe::{char_to_byte, BpeModel, END_OF_WORD};
use super::{vocab, PadStyle, BOS_TOKEN, EOS_TOKEN, MAX_LEN};
use crate::{Error, Result};

/// A token matched in the raw text before normalization (the special tokens, and tokens added
/// later, e.g. for textual inversion).
#[derive(Debug, Clone)]
struct AddedToken {
    content: String,
    id: u32,
    special: bool,
}

/// CLIP's tokenizer. Cheap to clone (the vocabulary is shared) and safe to share between threads:
/// encoding takes `&self`, with the merge cache behind a lock.
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    model: Arc<BpeModel>,
    added: Vec<AddedToken>,
    /// One past the largest id, added tokens included.
    size: usize,
    bos_id: u32,
    eos_id: u32,
    exclamation_id: Option<u32>,
    default_pad: PadStyle,
    max_len: usize,
    /// Textual-inversion names: the id the name encodes to and the ids of all its vectors.
    embeddings: Vec<(u32, Vec<u32>)>,
}

/// CLIP's word pattern: the special tokens' text, English contractions, runs of letters, single
/// digits, runs of anything else but whitespace. Text between matches (whitespace) is dropped.
fn clip_words() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(
            r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+",
        )
        .expect("valid regex")
    })
}

/// GPT-2's pattern, which the byte-level step applies inside each CLIP word. CLIP words hold no
/// whitespace, so its whitespace alternatives (and their look-ahead) never apply, and it keeps
/// every CLIP word whole except the special tokens' text (reached only in another case, e.g.
/// `<|ENDOFTEXT|>`), which it splits into `<|`, `endoftext`, `|>`.
fn gpt2_words() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+")
            .expect("valid regex")
    })
}

/// NFC, whitespace runs to one space, then each character lowercased on its own (no
/// context-dependent rules such as the final sigma, matching the `tokenizers` library).
fn normalize(text: &str) -> String {
    let composed: String = if text.is_ascii() || is_nfc_quick(text.chars()) == IsNormalized::Yes {
        text.to_string()
    } else {
        text.nfc().collect()
    };
    // `char::is_whitespace` is Unicode's White_Space, the set that `\s` matches.
    let mut lowered = String::with_capacity(composed.len());
    let mut in_whitespace = false;
    for c in composed.chars() {
        if c.is_whitespace() {
            if !in_whitespace {
                lowered.push(' ');
            }
            in_whitespace = true;
        } else {
            lowered.extend(c.to_lowercase());
            in_whitespace = false;
        }
    }
    lowered
}

impl ClipTokenizer {
    /// The tokenizer with CLIP's vocabulary embedded in the binary (built on the first call,
    /// then shared: later calls are cheap).
    pub fn embedded() -> Result<Self> {
        let model = vocab::embedded_model()?;
        Self::from_model(model, PadStyle::EndOfText, MAX_LEN, "embedded BPE file")
    }

    /// Loads a diffusers / transformers `tokenizer/` folder: `vocab.json` + `merges.txt` (or a
    /// `tokenizer.json`), with the padding token and window length of `tokenizer_config.json`.
    pub fn from_folder(dir: &Path) -> Result<Self> {
        let folder = vocab::load_folder(dir)?;
        let source = dir.display().to_string();
        Self::from_model(Arc::new(folder.model), folder.pad, folder.max_len, &source)
    }

    /// Loads a `vocab.json` and a `merges.txt` (padding with `<|endoftext|>`, window 77).
    pub fn from_files(vocab_json: &Path, merges_txt: &Path) -> Result<Self> {
        let model = vocab::load_files(vocab_json, merges_txt)?;
        let source = vocab_json.display().to_string();
        Self::from_model(Arc::new(model), PadStyle::EndOfText, MAX_LEN, &source)
    }

    /// Wraps a BPE model whose vocabulary holds the two special tokens (`source` names where
    /// it came from, for errors).
    fn from_model(
        model: Arc<BpeModel>,
        default_pad: PadStyle,
        max_len: usize,
        source: &str,
    ) -> Result<Self> {
        let special = |token: &str| {
            model.token_id(token).ok_or_else(|| {
                Error::Tokenizer(format!(
                    "{source}: the vocabulary lacks the special token {token}"
                ))
            })
        };
        let bos_id = special(BOS_TOKEN)?;
        let eos_id = special(EOS_TOKEN)?;
        let exclamation_id = model.token_id("!");
        let added = vec![
            AddedToken {
                content: BOS_TOKEN.to_string(),
                id: bos_id,
                special: true,
            },
            AddedToken {
                content: EOS_TOKEN.to_string(),
                id: eos_id,
                special: true,
            },
        ];
        Ok(ClipTokenizer {
            size: model.len(),
            model,
            added,
            bos_id,
            eos_id,
            exclamation_id,
            default_pad,
            max_len,
            embeddings: Vec::new(),
        })
    }

    /// A copy that pads with `pad` by default. With [`PadStyle::Exclamation`] it is the tokenizer
    /// of SD 2.x (pad token `!`): as in transformers, a `!` in the prompt is then read as that
    /// special token (id 0) rather than as the word `!</w>` (id 256).
    pub fn with_pad_style(mut self, pad: PadStyle) -> Self {
        self.default_pad = pad;
        self
    }

    /// Encodes a prompt: `<|startoftext|>`, its tokens, `<|endoftext|>`; not truncated, not
    /// padded. Follows [`Self::default_pad_style`] (see [`Self::with_pad_style`]).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        ids.push(self.bos_id);
        self.encode_into(text, self.default_pad, &mut ids)?;
        ids.push(self.eos_id);
        Ok(ids)
    }

    /// Encodes a prompt's tokens only, without the start and end tokens (for callers that cut a
    /// long prompt into windows themselves), as the tokenizer whose pad token is `pad`.
    pub fn encode_content(&self, text: &str, pad: PadStyle) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() / 3);
        self.encode_into(text, pad, &mut ids)?;
        Ok(ids)
    }

    /// Encodes a prompt into exactly `max_len` ids (77 for CLIP) like transformers'
    /// `padding="max_length", truncation=True` with pad token `pad`: start, the first
    /// `max_len - 2` tokens, end, then padding.
    pub fn encode_padded(&self, text: &str, max_len: usize, pad: PadStyle) -> Result<Vec<u32>> {
        let content = self.encode_content(text, pad)?;
        self.wrap_and_pad(&content, max_len, pad)
    }

    /// Wraps content ids (as from [`Self::encode_content`]) in start and end, truncating them to
    /// `max_len - 2` and padding the result to `max_len`.
    pub fn wrap_and_pad(&self, content: &[u32], max_len: usize, pad: PadStyle) -> Result<Vec<u32>> {
        if max_len < 2 {
            return Err(Error::invalid(
                "token window length",
                format!("{max_len} leaves no room for the start and end tokens (need at least 2)"),
            ));
        }
        let pad_id = self.pad_id(pad)?;
        let kept = content.len().min(max_len - 2);
        let mut ids = Vec::with_capacity(max_len);
        ids.push(self.bos_id);
        ids.extend_from_slice(&content[..kept]);
        ids.push(self.eos_id);
        ids.resize(max_len, pad_id);
        Ok(ids)
    }

    /// Cuts the added tokens (and `!` when it is the pad token) out of the raw text and encodes
    /// the pieces between them.
    fn encode_into(&self, text: &str, pad: PadStyle, ids: &mut Vec<u32>) -> Result<()> {
        let pad_token = match pad {
            PadStyle::EndOfText => None,
            PadStyle::Exclamation => Some(AddedToken {
                content: pad.pad_token().to_string(),
                id: self.pad_id(pad)?,
                special: true,
            }),
        };
        let mut rest = text;
        while let Some((start, token)) = self.find_added(rest, pad_token.as_ref()) {
            self.encode_plain(&rest[..start], ids);
            ids.push(token.id);
            rest = &rest[start + token.content.len()..];
        }
        self.encode_plain(rest, ids);
        Ok(())
    }

    /// The leftmost added token in `text` (the longest one where several start together).
    fn find_added<'a>(
        &'a self,
        text: &str,
        extra: Option<&'a AddedToken>,
    ) -> Option<(usize, &'a AddedToken)> {
        self.added
            .iter()
            .chain(extra)
            .filter_map(|token| text.find(&token.content).map(|start| (start, token)))
            .min_by(|(a, ta), (b, tb)| a.cmp(b).then(tb.content.len().cmp(&ta.content.len())))
    }

    /// Normalizes, splits into words, and BPE-encodes text that holds no added token.
    fn encode_plain(&self, text: &str, ids: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let normalized = normalize(text);
        for word in clip_words().find_iter(&normalized) {
            let word = word.as_str();
            // GPT-2's split keeps every other CLIP word whole.
            if word == BOS_TOKEN || word == EOS_TOKEN {
                for part in gpt2_words().find_iter(word) {
                    self.model.encode_word(part.as_str().as_bytes(), ids);
                }
            } else {
                self.model.encode_word(word.as_bytes(), ids);
            }
        }
    }

    /// Turns ids back into text, for debugging: start and end tokens (and `!` padding if it is
    /// the default padding) are skipped, each `</w>` becomes a space, and the ends are trimmed
    /// (as transformers' `decode(skip_special_tokens=True)`).
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            if self.default_pad == PadStyle::Exclamation && Some(id) == self.exclamation_id {
                continue;
            }
            if let Some(added) = self.added.iter().find(|t| t.id == id) {
                if !added.special {
                    bytes.extend_from_slice(added.content.as_bytes());
                }
                continue;
            }
            let Some(token) = self.model.token(id) else {
                continue;
            };
            for c in token.chars() {
                match char_to_byte(c) {
                    Some(b) => bytes.push(b),
                    None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
        }
        String::from_utf8_lossy(&bytes)
            .replace(END_OF_WORD, " ")
            .trim()
            .to_string()
    }

    /// The id of a vocabulary token, written as the vocabulary does (`cat</w>` for the word
    /// "cat", `<|endoftext|>`), added tokens included.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.added
            .iter()
            .find(|t| t.content == token)
            .map(|t| t.id)
            .or_else(|| self.model.token_id(token))
    }

    /// The vocabulary token of an id, added tokens included.
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.added
            .iter()
            .find(|t| t.id == id)
            .map(|t| t.content.as_str())
            .or_else(|| self.model.token(id))
    }

    /// The single id a word encodes to, if the vocabulary holds it as one token (`"cat"` gives
    /// the id of `cat</w>`; `"astronauts"` and `"a cat"` give `None`).
    pub fn word_id(&self, word: &str) -> Option<u32> {
        match self
            .encode_content(word, PadStyle::EndOfText)
            .ok()?
            .as_slice()
        {
            [id] => Some(*id),
            _ => None,
        }
    }

    /// Adds a token that is matched in the raw prompt text, exactly as written, before
    /// normalization (as the special tokens are), and returns its id: the existing id if it is
    /// already a token, else the next free id. Meant for textual-inversion names.
    pub fn add_token(&mut self, content: &str) -> Result<u32> {
        if content.is_empty() {
            return Err(Error::invalid("added token", "the token text is empty"));
        }
        if let Some(existing) = self.added.iter().find(|t| t.content == content) {
            return Ok(existing.id);
        }
        let id = match self.model.token_id(content) {
            Some(id) => id,
            None => {
                let id = u32::try_from(self.size)
                    .map_err(|_| Error::invalid("added token", "the vocabulary is full"))?;
                self.size += 1;
                id
            }
        };
        self.added.push(AddedToken {
            content: content.to_string(),
            id,
            special: false,
        });
        Ok(id)
    }

    /// Adds a textual-inversion embedding of `vectors` vectors named `name`: the name becomes an
    /// added token (matched in the raw text, see [`Self::add_token`]) and the embedding gets
    /// `vectors` new ids, the first being the name's. Returns them. A name that is already a
    /// token of the vocabulary is refused (its id would change meaning).
    pub fn add_embedding(&mut self, name: &str, vectors: usize) -> Result<Vec<u32>> {
        if vectors == 0 {
            return Err(Error::invalid(
                "embedding",
                format!("`{name}` has no vectors"),
            ));
        }
        let loaded = self.added.iter().find(|t| t.content == name).map(|t| t.id);
        if loaded.is_some_and(|id| self.embedding_ids(id).is_some()) {
            return Err(Error::invalid(
                "embedding",
                format!("an embedding named `{name}` is already loaded"),
            ));
        }
        let before = self.size;
        let first = self.add_token(name)?;
        if (first as usize) < before {
            return Err(Error::invalid(
                "embedding",
                format!("the name `{name}` is already a token of the vocabulary (id {first})"),
            ));
        }
        let mut ids = vec![first];
        for _ in 1..vectors {
            let id = u32::try_from(self.size)
                .map_err(|_| Error::invalid("embedding", "the vocabulary is full"))?;
            self.size += 1;
            ids.push(id);
        }
        self.embeddings.push((first, ids.clone()));
        Ok(ids)
    }

    /// The ids of the embedding whose name encodes to `id`, if it is one.
    pub fn embedding_ids(&self, id: u32) -> Option<&[u32]> {
        self.embeddings
            .iter()
            .find(|(first, _)| *first == id)
            .map(|(_, ids)| ids.as_slice())
    }

    /// The number of ids, added tokens included (49408 for CLIP's vocabulary).
    pub fn vocab_size(&self) -> usize {
        self.size
    }

    /// The id of `<|startoftext|>`.
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// The id of `<|endoftext|>`.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// The padding id of a padding style in this vocabulary.
    pub fn pad_id(&self, pad: PadStyle) -> Result<u32> {
        match pad {
            PadStyle::EndOfText => Ok(self.eos_id),
            PadStyle::Exclamation => self
                .exclamation_id
                .ok_or_else(|| Error::Tokenizer("the vocabulary has no `!` to pad with".into())),
        }
    }

    /// The padding this tokenizer's folder asks for (`<|endoftext|>` unless its config names `!`).
    pub fn default_pad_style(&self) -> PadStyle {
        self.default_pad
    }

    /// The window length (`model_max_length`, 77 for CLIP).
    pub fn max_len(&self) -> usize {
        self.max_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_composes_collapses_whitespace_and_lowercases_per_character() {
        assert_eq!(normalize("Cafe\u{301}  \t\nOK"), "café ok");
        // Per-character lowercasing: a final capital sigma becomes σ, not ς.
        assert_eq!(normalize("ΟΔΥΣΣΕΥΣ"), "οδυσσευσ");
        assert_eq!(normalize("\u{a0}x\u{3000}"), " x ");
    }

    #[test]
    fn words_split_into_contractions_letters_single_digits_and_symbols() {
        let words: Vec<&str> = clip_words()
            .find_iter("it's 1984, (cat:1.2)")
            .map(|m| m.as_str())
            .collect();
        assert_eq!(
            words,
            ["it", "'s", "1", "9", "8", "4", ",", "(", "cat", ":", "1", ".", "2", ")"]
        );
    }
}
