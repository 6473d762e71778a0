//! Textual-inversion embeddings: learned token vectors, used by writing the embedding's name in
//! a prompt.
//!
//! Formats read (safetensors, and `torch.save` pickles `.pt`/`.bin` through the restricted
//! reader of `loading::ckpt`, which runs no code from the file):
//! - AUTOMATIC1111: `emb_params`, `(vectors, width)` or `(width)`; its `.pt` files keep the
//!   vectors in `string_to_param` as `{"*": (vectors, width)}`;
//! - SDXL (A1111 / kohya): `clip_l` `(vectors, 768)` for the first text encoder and `clip_g`
//!   `(vectors, 1280)` for the second;
//! - diffusers' `learned_embeds.safetensors`: one tensor named after its token.
//!
//! The name is the file's stem (as A1111 names embeddings), except for diffusers' files called
//! `learned_embeds`, named after their token.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::ckpt::CkptFile;
use super::store::TensorStore;
use super::SafetensorsFile;
use crate::{Error, Result};

/// The file types read as embeddings.
pub const EXTENSIONS: [&str; 3] = ["safetensors", "pt", "bin"];

/// How many folders deep below an embeddings folder [`TextualInversion::files_in`] looks.
pub const MAX_FOLDER_DEPTH: usize = 8;

/// An opened embedding file.
enum Source {
    Safetensors(SafetensorsFile),
    /// `torch.save` pickles (`.pt`, diffusers' `.bin`), read by the restricted reader.
    Pickle(CkptFile),
}

impl Source {
    fn names(&self) -> Vec<String> {
        match self {
            Source::Safetensors(file) => file.names().map(str::to_string).collect(),
            Source::Pickle(file) => file.names().into_iter().map(str::to_string).collect(),
        }
    }

    fn load(&self, name: &str) -> Result<Option<Tensor>> {
        match self {
            Source::Safetensors(file) => file.load(name, DType::F32, &Device::Cpu),
            Source::Pickle(file) => file.load(name, DType::F32, &Device::Cpu),
        }
    }
}

/// One textual-inversion embedding.
#[derive(Debug, Clone)]
pub struct TextualInversion {
    /// The word that stands for it in prompts.
    pub name: String,
    /// Where it was read from.
    pub path: PathBuf,
    /// Vectors for a single-encoder model (SD 1.x/2.x) or SDXL's first encoder, `(n, width)`.
    pub first: Option<Tensor>,
    /// Vectors for SDXL's second encoder (`clip_g`), `(n, width)`.
    pub second: Option<Tensor>,
}

impl TextualInversion {
    /// Reads an embedding file (see the module documentation for the formats).
    pub fn load(path: &Path) -> Result<Self> {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let source = match extension.as_str() {
            "safetensors" => Source::Safetensors(SafetensorsFile::open(path)?),
            "pt" | "bin" => Source::Pickle(CkptFile::open_nested(path)?),
            _ => {
                return Err(Error::Unsupported {
                    what: "embedding file type",
                    value: format!("{} ({})", extension, path.display()),
                    valid: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
                })
            }
        };
        let mut names = source.names();
        names.sort();
        let read = |name: &str| -> Result<Tensor> {
            let tensor = source.load(name)?.ok_or_else(|| Error::MissingTensor {
                name: name.to_string(),
                location: path.display().to_string(),
            })?;
            as_vectors(tensor, path, name)
        };
        // A1111's `.pt`: `{"string_to_param": {"*": (n, width)}, "string_to_token": ..., ...}`.
        let params: Vec<&String> = names
            .iter()
            .filter(|n| n.starts_with("string_to_param."))
            .collect();
        if params.len() > 1 {
            return Err(Error::invalid(
                "embedding",
                format!(
                    "{}: `string_to_param` holds {} vectors sets; an embedding has one",
                    path.display(),
                    params.len()
                ),
            ));
        }
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_string();
        let mut name = stem.clone();
        let (first, second) = if names.iter().any(|n| n == "clip_l" || n == "clip_g") {
            let has = |n: &str| names.iter().any(|x| x == n);
            (
                has("clip_l").then(|| read("clip_l")).transpose()?,
                has("clip_g").then(|| read("clip_g")).transpose()?,
            )
        } else if let [param] = params.as_slice() {
            (Some(read(param.as_str())?), None)
        } else if names.iter().any(|n| n == "emb_params") {
            (Some(read("emb_params")?), None)
        } else if let [token] = names.as_slice() {
            if stem == "learned_embeds" {
                name = token.clone();
            }
            (Some(read(token)?), None)
        } else {
            return Err(Error::invalid(
                "embedding",
                format!(
                    "{}: no `emb_params`, `clip_l`/`clip_g` or single token tensor (found {})",
                    path.display(),
                    names.join(", ")
                ),
            ));
        };
        if name.is_empty() {
            return Err(Error::invalid(
                "embedding",
                format!("{}: cannot name the embedding", path.display()),
            ));
        }
        Ok(Self {
            name,
            path: path.to_path_buf(),
            first,
            second,
        })
    }

    /// A1111's short hash of the embedding ("TI hashes" in infotext): the first 12 hex
    /// digits of the SHA-256 of the whole file.
    pub fn short_hash(&self) -> Result<String> {
        let mut hash = super::sha256_file(&self.path)?;
        hash.truncate(12);
        Ok(hash)
    }

    /// The embedding files in `dir` and its subfolders, as A1111 finds them (`.safetensors`,
    /// `.pt`, `.bin`; names starting with `.` skipped), sorted by path. Folders deeper than
    /// [`MAX_FOLDER_DEPTH`] below `dir` are not entered; a folder reached twice (through a
    /// link) is read once.
    pub fn files_in(dir: &Path) -> Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        let mut folders = vec![(dir.to_path_buf(), 0usize)];
        // Each folder once, however many links lead to it.
        let mut seen = std::collections::HashSet::new();
        while let Some((folder, depth)) = folders.pop() {
            if !seen.insert(std::fs::canonicalize(&folder).map_err(|e| Error::io(&folder, e))?) {
                continue;
            }
            let entries = std::fs::read_dir(&folder).map_err(|e| Error::io(&folder, e))?;
            for entry in entries {
                let path = entry.map_err(|e| Error::io(&folder, e))?.path();
                let hidden = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'));
                if path.is_dir() {
                    if depth < MAX_FOLDER_DEPTH {
                        folders.push((path, depth + 1));
                    }
                    continue;
                }
                let is_embedding = path
                    .extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)));
                if path.is_file() && is_embedding && !hidden {
                    files.push(path);
                }
            }
        }
        files.sort();
        Ok(files)
    }

    /// The name an embedding file will get, from its path alone (diffusers' `learned_embeds`
    /// files are named by their content, so they give `None`).
    pub fn name_of(path: &Path) -> Option<String> {
        let stem = path.file_stem()?.to_str()?;
        (stem != "learned_embeds").then(|| stem.to_string())
    }
}

/// `(width)` or `(n, width)` → `(n, width)`; anything else is an error naming the tensor.
fn as_vectors(tensor: Tensor, path: &Path, name: &str) -> Result<Tensor> {
    match tensor.dims() {
        [width] => Ok(tensor.reshape((1, *width))?),
        [_, _] => Ok(tensor),
        dims => Err(Error::invalid(
            "embedding",
            format!(
                "{}: tensor `{name}` has shape {dims:?}, expected (vectors, width)",
                path.display()
            ),
        )),
    }
}
