//! Weight and config loading: safetensors (mmap), diffusers folders, dtype conversion.
//!
//! [`Weights`] memory-maps one or more safetensors files and serves them to model code as a
//! `VarBuilder`, converting each tensor to the compute dtype as it is read; a [`KeyMap`] lets
//! one model code path load several key layouts. [`DiffusersFolder`] finds each component's
//! config and weights in a diffusers pipeline folder.

mod diffusers;
pub mod embeddings;
mod keys;
mod recorder;
mod weights;

use std::path::Path;

use serde::de::DeserializeOwned;

pub use diffusers::{ComponentClass, DiffusersFolder};
pub use keys::{key_map_for_class, KeyMap, Source};
pub use recorder::record_shapes;
pub use weights::{SafetensorsFile, Weights};

use crate::{Error, Result};

/// Reads and deserializes a JSON config file; a missing file is [`Error::NotFound`] (`what`
/// names it), bad JSON or a bad value is [`Error::Config`] naming the file.
pub fn read_json<T: DeserializeOwned>(path: &Path, what: &'static str) -> Result<T> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotFound {
                what,
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(Error::io(path, e)),
    };
    serde_json::from_str(&text).map_err(|e| Error::config(path, e.to_string()))
}
