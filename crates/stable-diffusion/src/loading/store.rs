//! Where stored tensors come from: a safetensors file, a `.ckpt` archive, or a shape-only
//! listing. [`super::Weights`] looks tensors up by name across one or more stores.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::Result;

/// A set of named tensors stored somewhere (one file, usually).
pub trait TensorStore: Send + Sync {
    /// The file the tensors come from (for messages).
    fn path(&self) -> &Path;

    /// Every stored tensor name (unordered).
    fn names(&self) -> Vec<&str>;

    /// The stored shape of tensor `name`, if present.
    fn shape(&self, name: &str) -> Option<&[usize]>;

    /// The stored element type of tensor `name` (`"F16"`, `"F32"`, `"BF16"`, ...), if present.
    fn dtype_name(&self, name: &str) -> Option<String>;

    /// Reads tensor `name` onto `device`, converted to `dtype` (`None` when absent).
    fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Option<Tensor>>;
}

impl std::fmt::Debug for dyn TensorStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorStore")
            .field("path", &self.path())
            .field("tensors", &self.names().len())
            .finish()
    }
}

/// Tensor names and shapes without data (a checkpoint's manifest): loading gives zeros of
/// the stored shape, broadcast from one scalar, so full-size models cost no memory.
pub struct ShapeOnlyStore {
    path: std::path::PathBuf,
    shapes: std::collections::HashMap<String, Vec<usize>>,
}

impl ShapeOnlyStore {
    /// A store of `shapes`; `path` names it in messages.
    pub fn new(
        path: impl Into<std::path::PathBuf>,
        shapes: impl IntoIterator<Item = (String, Vec<usize>)>,
    ) -> Self {
        Self {
            path: path.into(),
            shapes: shapes.into_iter().collect(),
        }
    }

    /// Reads a JSON manifest `{"name": [shape...], ...}`.
    pub fn from_manifest(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let shapes: std::collections::HashMap<String, Vec<usize>> =
            super::read_json(path, "tensor manifest")?;
        Ok(Self::new(path, shapes))
    }
}

impl TensorStore for ShapeOnlyStore {
    fn path(&self) -> &Path {
        &self.path
    }

    fn names(&self) -> Vec<&str> {
        self.shapes.keys().map(String::as_str).collect()
    }

    fn shape(&self, name: &str) -> Option<&[usize]> {
        self.shapes.get(name).map(Vec::as_slice)
    }

    fn dtype_name(&self, name: &str) -> Option<String> {
        self.shapes
            .get(name)
            .map(|_| "none (shape only)".to_string())
    }

    fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Option<Tensor>> {
        let Some(shape) = self.shapes.get(name) else {
            return Ok(None);
        };
        Ok(Some(
            Tensor::zeros((), dtype, device)?.broadcast_as(shape.as_slice())?,
        ))
    }
}
