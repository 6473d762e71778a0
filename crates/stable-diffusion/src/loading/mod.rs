//! Weight and config loading: safetensors (mmap), diffusers folders, dtype conversion.
//!
//! [`Weights`] memory-maps one or more safetensors files and serves them to model code as a
//! `VarBuilder`, converting each tensor to the compute dtype as it is read; a [`KeyMap`] lets
//! one model code path load several key layouts. [`DiffusersFolder`] finds each component's
//! config and weights in a diffusers pipeline folder. [`SingleFileCheckpoint`] serves an
//! LDM / AUTOMATIC1111 single file (`.safetensors` or a `.ckpt` read by a restricted
//! unpickler, [`CkptFile`]) under diffusers' names through the tables in [`ldm`].

mod ckpt;
mod diffusers;
pub mod embeddings;
mod hash;
mod keys;
pub mod ldm;
mod lora;
pub mod pickle;
mod recorder;
mod single_file;
mod store;
mod weights;

use std::path::Path;

use serde::de::DeserializeOwned;

pub use ckpt::CkptFile;
pub use diffusers::{ComponentClass, DiffusersFolder};
pub use hash::{model_hash, sha256_file};
pub use keys::{key_map_for_class, KeyMap, Source};
pub use lora::{
    attach_networks, lora_tags, open_networks, LoraFile, LoraMatch, LoraPatches, LoraSpec,
    LoraTarget,
};
pub use recorder::record_shapes;
pub use single_file::{
    check_component, open_tensor_file, open_vae_file, report_folder, ComponentReport, LoadReport,
    SingleFileCheckpoint, TextEncoderLayout,
};
pub use store::{ShapeOnlyStore, TensorStore};
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
