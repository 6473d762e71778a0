//! Where CLIP vocabularies come from: the BPE file embedded in the binary, or a diffusers
//! `tokenizer/` folder (`vocab.json` + `merges.txt`, or a `tokenizer.json`).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use super::bpe::{byte_chars_in_vocab_order, BpeModel, END_OF_WORD};
use super::{PadStyle, BOS_TOKEN, EOS_TOKEN};
use crate::{Error, Result};

/// CLIP's BPE merge list (MIT licence, see assets/NOTICE.md), gzip-compressed.
const EMBEDDED_BPE_GZ: &[u8] = include_bytes!("../../assets/bpe_simple_vocab_16e6.txt.gz");

/// How many merges of the BPE file CLIP uses: its vocabulary has 49408 entries, namely 256 byte
/// tokens, their 256 `</w>` forms, these merges and the 2 special tokens.
pub const CLIP_MERGE_COUNT: usize = 49152 - 256 - 2;

/// The size of CLIP's vocabulary.
pub const CLIP_VOCAB_SIZE: usize = 49408;

/// The embedded CLIP vocabulary, built on first use and then shared.
pub fn embedded_model() -> Result<Arc<BpeModel>> {
    static MODEL: OnceLock<std::result::Result<Arc<BpeModel>, String>> = OnceLock::new();
    MODEL
        .get_or_init(|| build_embedded().map(Arc::new).map_err(|e| e.to_string()))
        .clone()
        .map_err(Error::Tokenizer)
}

/// Decompresses the embedded file and builds the vocabulary the way CLIP does.
fn build_embedded() -> Result<BpeModel> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(EMBEDDED_BPE_GZ)
        .read_to_string(&mut text)
        .map_err(|e| Error::Tokenizer(format!("embedded BPE file cannot be decompressed: {e}")))?;
    // The first line is a version header.
    let merges = text
        .lines()
        .skip(1)
        .take(CLIP_MERGE_COUNT)
        .enumerate()
        .map(|(i, line)| parse_merge(line, i + 2, "embedded BPE file"))
        .collect::<Result<Vec<_>>>()?;
    if merges.len() != CLIP_MERGE_COUNT {
        return Err(Error::Tokenizer(format!(
            "embedded BPE file holds {} merges, expected at least {CLIP_MERGE_COUNT}",
            merges.len()
        )));
    }
    let byte_tokens: Vec<String> = byte_chars_in_vocab_order()
        .into_iter()
        .map(|(_, c)| c.to_string())
        .collect();
    let tokens = byte_tokens
        .iter()
        .cloned()
        .chain(byte_tokens.iter().map(|t| format!("{t}{END_OF_WORD}")))
        .chain(merges.iter().map(|(a, b)| format!("{a}{b}")))
        .chain([BOS_TOKEN.to_string(), EOS_TOKEN.to_string()]);
    let mut vocab = HashMap::with_capacity(CLIP_VOCAB_SIZE);
    for (id, token) in tokens.enumerate() {
        if vocab.insert(token.clone(), id as u32).is_some() {
            return Err(Error::Tokenizer(format!(
                "embedded BPE file: token `{token}` occurs twice"
            )));
        }
    }
    BpeModel::new(vocab, &merges, Some(EOS_TOKEN), "embedded BPE file")
}

/// Splits one merges line (`left right`) into its two tokens.
fn parse_merge(line: &str, line_no: usize, source: &str) -> Result<(String, String)> {
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => {
            Ok((a.to_string(), b.to_string()))
        }
        _ => Err(Error::Tokenizer(format!(
            "{source}: line {line_no} is not a merge of two tokens: {line:?}"
        ))),
    }
}

/// What a tokenizer folder holds: the BPE model plus the settings of its config files.
pub struct FolderVocab {
    /// The vocabulary and merges.
    pub model: BpeModel,
    /// The padding named by `tokenizer_config.json` / `special_tokens_map.json`.
    pub pad: PadStyle,
    /// `model_max_length` from `tokenizer_config.json` when it is a usable window (else 77).
    pub max_len: usize,
}

/// Loads a diffusers / transformers tokenizer folder. Reads `vocab.json` + `merges.txt` when
/// present, else `tokenizer.json`; `tokenizer_config.json` and `special_tokens_map.json` are
/// optional and give the padding token and the window length.
pub fn load_folder(dir: &Path) -> Result<FolderVocab> {
    if !dir.is_dir() {
        return Err(Error::NotFound {
            what: "tokenizer folder",
            path: dir.to_path_buf(),
        });
    }
    let vocab_path = dir.join("vocab.json");
    let merges_path = dir.join("merges.txt");
    let tokenizer_json = dir.join("tokenizer.json");
    let model = if vocab_path.is_file() || merges_path.is_file() {
        load_files(&vocab_path, &merges_path)?
    } else if tokenizer_json.is_file() {
        read_tokenizer_json(&tokenizer_json)?
    } else {
        return Err(Error::NotFound {
            what: "tokenizer vocabulary (vocab.json + merges.txt, or tokenizer.json)",
            path: dir.to_path_buf(),
        });
    };
    let settings = read_settings(dir)?;
    let pad = match settings.pad_token.as_deref() {
        None | Some(EOS_TOKEN) => PadStyle::EndOfText,
        Some("!") => PadStyle::Exclamation,
        Some(other) => {
            return Err(Error::Unsupported {
                what: "tokenizer pad token",
                value: other.to_string(),
                valid: vec![EOS_TOKEN.to_string(), "!".to_string()],
            })
        }
    };
    let max_len = settings
        .max_len
        .filter(|&n| (2..=super::MAX_LEN).contains(&n))
        .unwrap_or(super::MAX_LEN);
    Ok(FolderVocab {
        model,
        pad,
        max_len,
    })
}

/// Loads a `vocab.json` and a `merges.txt`.
pub fn load_files(vocab_json: &Path, merges_txt: &Path) -> Result<BpeModel> {
    let vocab = read_vocab_json(vocab_json)?;
    let merges = read_merges_txt(merges_txt)?;
    BpeModel::new(
        vocab,
        &merges,
        Some(EOS_TOKEN),
        &format!("{} + {}", vocab_json.display(), merges_txt.display()),
    )
}

/// Reads a file to a string, mapping a missing file to `NotFound`.
fn read_text(path: &Path, what: &'static str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound {
            what,
            path: path.to_path_buf(),
        },
        _ => Error::io(path, e),
    })
}

/// Parses a JSON file, naming the file in the error.
fn read_json(path: &Path, what: &'static str) -> Result<serde_json::Value> {
    serde_json::from_str(&read_text(path, what)?)
        .map_err(|e| Error::Tokenizer(format!("{}: invalid JSON: {e}", path.display())))
}

/// `vocab.json`: an object from token to id.
fn read_vocab_json(path: &Path) -> Result<HashMap<String, u32>> {
    let value = read_json(path, "tokenizer vocab.json")?;
    vocab_from_json(&value, path)
}

/// A `{token: id}` JSON object as a map, checking each id.
fn vocab_from_json(value: &serde_json::Value, path: &Path) -> Result<HashMap<String, u32>> {
    let object = value.as_object().ok_or_else(|| {
        Error::Tokenizer(format!(
            "{}: the vocabulary is not an object of token → id",
            path.display()
        ))
    })?;
    object
        .iter()
        .map(|(token, id)| {
            let id = id
                .as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| {
                    Error::Tokenizer(format!(
                        "{}: token `{token}` has the id {id}, expected a non-negative integer",
                        path.display()
                    ))
                })?;
            Ok((token.clone(), id))
        })
        .collect()
}

/// `merges.txt`: an optional `#version` header, then one `left right` pair per line.
fn read_merges_txt(path: &Path) -> Result<Vec<(String, String)>> {
    let text = read_text(path, "tokenizer merges.txt")?;
    let source = path.display().to_string();
    text.lines()
        .enumerate()
        .filter(|(i, line)| !(line.is_empty() || *i == 0 && line.starts_with("#version")))
        .map(|(i, line)| parse_merge(line, i + 1, &source))
        .collect()
}

/// `tokenizer.json` (the `tokenizers` library's file): its BPE model's vocab and merges; merges
/// are either `"left right"` strings or `["left", "right"]` pairs.
fn read_tokenizer_json(path: &Path) -> Result<BpeModel> {
    let value = read_json(path, "tokenizer.json")?;
    let source = path.display().to_string();
    let model = &value["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(Error::Unsupported {
            what: "tokenizer.json model type",
            value: model["type"].to_string(),
            valid: vec!["BPE".to_string()],
        });
    }
    let vocab = vocab_from_json(&model["vocab"], path)?;
    let merges = model["merges"]
        .as_array()
        .ok_or_else(|| Error::Tokenizer(format!("{source}: model.merges is not a list")))?
        .iter()
        .enumerate()
        .map(|(i, merge)| match merge {
            serde_json::Value::String(line) => parse_merge(line, i + 1, &source),
            serde_json::Value::Array(pair) => match pair.as_slice() {
                [serde_json::Value::String(a), serde_json::Value::String(b)] => {
                    Ok((a.clone(), b.clone()))
                }
                _ => Err(Error::Tokenizer(format!(
                    "{source}: merge {} is not a pair of tokens",
                    i + 1
                ))),
            },
            _ => Err(Error::Tokenizer(format!(
                "{source}: merge {} is not a pair of tokens",
                i + 1
            ))),
        })
        .collect::<Result<Vec<_>>>()?;
    BpeModel::new(vocab, &merges, Some(EOS_TOKEN), &source)
}

/// The settings a folder's small JSON files give.
#[derive(Default)]
struct FolderSettings {
    pad_token: Option<String>,
    max_len: Option<usize>,
}

/// Reads `pad_token` and `model_max_length` from `tokenizer_config.json`, falling back to
/// `special_tokens_map.json` for the pad token. Both files are optional.
fn read_settings(dir: &Path) -> Result<FolderSettings> {
    let mut settings = FolderSettings::default();
    let config: PathBuf = dir.join("tokenizer_config.json");
    if config.is_file() {
        let value = read_json(&config, "tokenizer_config.json")?;
        settings.pad_token = token_content(&value["pad_token"]);
        settings.max_len = value["model_max_length"]
            .as_u64()
            .and_then(|n| usize::try_from(n).ok());
    }
    let special = dir.join("special_tokens_map.json");
    if settings.pad_token.is_none() && special.is_file() {
        let value = read_json(&special, "special_tokens_map.json")?;
        settings.pad_token = token_content(&value["pad_token"]);
    }
    Ok(settings)
}

/// A special token as transformers writes it: a plain string, or an object with `content`.
fn token_content(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}
