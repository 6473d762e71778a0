//! Memory-mapped safetensors weights, one file or several (sharded), as a `VarBuilder` backend.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensorError, TensorInfo, TensorView};

use super::keys::{KeyMap, Source};
use super::lora::LoraPatches;
use super::store::TensorStore;
use crate::{Error, Result};

/// One safetensors file, memory-mapped, with its header parsed and validated.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    /// Where the tensor data starts (8 + header length).
    data_start: usize,
    tensors: HashMap<String, TensorInfo>,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl SafetensorsFile {
    /// Maps `path` and checks its header: every tensor's offsets must lie in the file and the
    /// data must cover it exactly, so a truncated or corrupt file fails here, naming the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound {
                    what: "safetensors file",
                    path,
                })
            }
            Err(e) => return Err(Error::io(path, e)),
        };
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if len < 8 {
            return Err(Error::Safetensors {
                path,
                msg: format!("the file is {len} bytes long, too short for the 8-byte header size"),
            });
        }
        // SAFETY: the map is read-only; as with every mmap, the file must not be truncated by
        // another process while it is in use.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let (header_len, metadata) =
            safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| Error::Safetensors {
                msg: describe_header_error(&e, &mmap),
                path: path.clone(),
            })?;
        let tensors = metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| (name, info.clone()))
            .collect();
        Ok(Self {
            path,
            mmap,
            data_start: 8 + header_len,
            tensors,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The names of the tensors in the file (unordered).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The stored shape of tensor `name`, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|info| info.shape.as_slice())
    }

    /// Reads tensor `name` onto `device`, converted to `dtype` (`None` when absent).
    pub fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Option<Tensor>> {
        let Some(info) = self.tensors.get(name) else {
            return Ok(None);
        };
        let (start, end) = info.data_offsets;
        let bytes = &self.mmap[self.data_start + start..self.data_start + end];
        let bad = |msg: String| Error::Safetensors {
            path: self.path.clone(),
            msg: format!("tensor `{name}`: {msg}"),
        };
        let view = TensorView::new(info.dtype, info.shape.clone(), bytes)
            .map_err(|e| bad(e.to_string()))?;
        if !matches!(
            info.dtype,
            Dtype::F32
                | Dtype::F16
                | Dtype::BF16
                | Dtype::F64
                | Dtype::U8
                | Dtype::U32
                | Dtype::I64
                | Dtype::I32
                | Dtype::I16
        ) {
            return Err(bad(format!("unsupported dtype {:?}", info.dtype)));
        }
        let tensor = view.load(device).map_err(|e| bad(e.to_string()))?;
        self.release(self.data_start + start, self.data_start + end);
        Ok(Some(tensor.to_dtype(dtype)?))
    }

    /// Drops the file's pages of bytes `start..end` from this process's resident memory once
    /// a tensor has been copied out of them, so that the loaded (packed) weights and the
    /// mapped file are not both resident at the peak. Only whole pages inside the range go;
    /// reading them again faults them back in from the file.
    #[cfg(unix)]
    fn release(&self, start: usize, end: usize) {
        const PAGE: usize = 4096;
        let first = start.div_ceil(PAGE) * PAGE;
        let last = end / PAGE * PAGE;
        if last > first {
            // SAFETY: the map is read-only and never written, so dropping its pages loses
            // nothing: the next access reads them from the file again.
            let _ = unsafe {
                self.mmap.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    first,
                    last - first,
                )
            };
        }
    }

    /// Elsewhere the pages stay mapped until the file is closed.
    #[cfg(not(unix))]
    fn release(&self, _start: usize, _end: usize) {}
}

impl TensorStore for SafetensorsFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn names(&self) -> Vec<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }

    fn shape(&self, name: &str) -> Option<&[usize]> {
        SafetensorsFile::shape(self, name)
    }

    fn dtype_name(&self, name: &str) -> Option<String> {
        self.tensors
            .get(name)
            .map(|info| format!("{:?}", info.dtype))
    }

    fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Option<Tensor>> {
        SafetensorsFile::load(self, name, dtype, device)
    }
}

fn describe_header_error(err: &SafeTensorError, bytes: &[u8]) -> String {
    let declared = u64::from_le_bytes(bytes[..8].try_into().expect("checked length"));
    match err {
        SafeTensorError::InvalidHeaderLength | SafeTensorError::HeaderTooLarge => format!(
            "header length {declared} does not fit in the {}-byte file (truncated or not a safetensors file)",
            bytes.len()
        ),
        SafeTensorError::MetadataIncompleteBuffer => format!(
            "the tensor data does not match the file size of {} bytes (truncated or corrupt)",
            bytes.len()
        ),
        other => format!("bad header: {other}"),
    }
}

/// Weights from one or more safetensors files (a sharded checkpoint is several) or other
/// [`TensorStore`]s, looked up by name through a [`KeyMap`]. Turn them into a [`VarBuilder`]
/// with [`Weights::into_var_builder`].
#[derive(Debug, Clone)]
pub struct Weights {
    files: Arc<Vec<Arc<dyn TensorStore>>>,
    /// Tensor name -> index in `files`.
    index: Arc<HashMap<String, usize>>,
    key_map: KeyMap,
    /// LoRA deltas added to the weights they patch as those are read.
    lora: Option<Arc<LoraPatches>>,
}

impl Weights {
    /// Opens a `.safetensors` file, or a sharded checkpoint's `.safetensors.index.json`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.to_string_lossy().ends_with(".json") {
            Self::open_index(path)
        } else {
            Self::open_files(&[path])
        }
    }

    /// Opens several safetensors files as one set of weights. A tensor name present in two files
    /// is an error.
    pub fn open_files<P: AsRef<Path>>(paths: &[P]) -> Result<Self> {
        let files = paths
            .iter()
            .map(|path| Ok(Arc::new(SafetensorsFile::open(path)?) as Arc<dyn TensorStore>))
            .collect::<Result<Vec<_>>>()?;
        Self::from_stores(files)
    }

    /// Serves the tensors of `stores` as one set of weights. A tensor name present in two
    /// stores is an error.
    pub fn from_stores(files: Vec<Arc<dyn TensorStore>>) -> Result<Self> {
        let mut index: HashMap<String, usize> = HashMap::new();
        for (i, file) in files.iter().enumerate() {
            for name in file.names() {
                if let Some(&j) = index.get(name) {
                    return Err(Error::Safetensors {
                        path: file.path().to_path_buf(),
                        msg: format!("tensor `{name}` is also in {}", files[j].path().display()),
                    });
                }
                index.insert(name.to_string(), i);
            }
        }
        Ok(Self {
            files: Arc::new(files),
            index: Arc::new(index),
            key_map: KeyMap::identity(),
            lora: None,
        })
    }

    /// Opens the shards named by a `*.safetensors.index.json` (its `weight_map`), relative to
    /// the index file's folder.
    pub fn open_index(index_path: impl AsRef<Path>) -> Result<Self> {
        #[derive(serde::Deserialize)]
        struct ShardIndex {
            weight_map: HashMap<String, String>,
        }
        let index_path = index_path.as_ref();
        let index: ShardIndex = super::read_json(index_path, "sharded weights index")?;
        let folder = index_path.parent().unwrap_or(Path::new("."));
        let shards: BTreeSet<&String> = index.weight_map.values().collect();
        if shards.is_empty() {
            return Err(Error::config(index_path, "`weight_map` names no files"));
        }
        let paths: Vec<PathBuf> = shards.into_iter().map(|s| folder.join(s)).collect();
        let weights = Self::open_files(&paths)?;
        // Every tensor the index promises must be in the shard it names.
        for (name, shard) in &index.weight_map {
            let in_file = weights.index.get(name).map(|&i| weights.files[i].path());
            if in_file != Some(folder.join(shard).as_path()) {
                return Err(Error::MissingTensor {
                    name: name.clone(),
                    location: folder.join(shard).display().to_string(),
                });
            }
        }
        Ok(weights)
    }

    /// Uses `key_map` to find the tensors a model asks for.
    pub fn with_key_map(mut self, key_map: KeyMap) -> Self {
        self.key_map = key_map;
        self
    }

    /// Adds `patches`' LoRA deltas to the weights they patch as those are read (empty patches
    /// change nothing).
    pub fn with_lora(mut self, patches: LoraPatches) -> Self {
        self.lora = (!patches.is_empty()).then(|| Arc::new(patches));
        self
    }

    /// The LoRA patches in effect for `name`, if any.
    fn lora_for(&self, name: &str) -> Option<&LoraPatches> {
        self.lora.as_deref().filter(|l| l.patches(name))
    }

    /// The paths of the files, in the order they were opened.
    pub fn paths(&self) -> Vec<&Path> {
        self.files.iter().map(|f| f.path()).collect()
    }

    /// Every tensor name stored in the files, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.index.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The source and file index that `name` resolves to through the key map.
    fn resolve(&self, name: &str) -> Option<(Source, usize)> {
        self.key_map.sources(name).into_iter().find_map(|source| {
            let i = *self.index.get(&source.name)?;
            let stored = self.files[i].shape(&source.name)?;
            // A row range must lie inside the stored tensor; only matrices transpose.
            match &source.rows {
                Some(rows) if stored.is_empty() || rows.end > stored[0] || rows.is_empty() => None,
                _ if source.transpose && stored.len() != 2 => None,
                _ => Some((source, i)),
            }
        })
    }

    /// The shape `source` yields (before any reshape).
    fn source_shape(&self, source: &Source, file: usize) -> Vec<usize> {
        let mut shape = self.files[file]
            .shape(&source.name)
            .expect("resolved sources exist")
            .to_vec();
        if let Some(rows) = &source.rows {
            shape[0] = rows.len();
        }
        if source.transpose {
            shape.reverse();
        }
        shape
    }

    /// The stored tensor (and part of it) that `name` resolves to through the key map.
    pub fn source_of(&self, name: &str) -> Option<Source> {
        self.resolve(name).map(|(source, _)| source)
    }

    /// The stored element type (`"F16"`, `"F32"`, ...) of the stored tensor `stored_name`.
    pub fn stored_dtype(&self, stored_name: &str) -> Option<String> {
        let &i = self.index.get(stored_name)?;
        self.files[i].dtype_name(stored_name)
    }

    /// The stored shape of the stored tensor `stored_name` (no key map applied).
    pub fn stored_shape(&self, stored_name: &str) -> Option<Vec<usize>> {
        let &i = self.index.get(stored_name)?;
        self.files[i].shape(stored_name).map(<[usize]>::to_vec)
    }

    /// The shape of the tensor `name` resolves to, if any (a row slice counts only its rows).
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let (source, i) = self.resolve(name)?;
        Some(self.source_shape(&source, i))
    }

    /// Whether `name` resolves to a stored tensor.
    pub fn contains(&self, name: &str) -> bool {
        self.resolve(name).is_some()
    }

    /// Loads tensor `name` (resolved through the key map), converted to `dtype`.
    pub fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let (source, i) = self.resolve_or_missing(name)?;
        if let Some(lora) = self.lora_for(name) {
            let stored = self.read(&source, i, DType::F32, device)?;
            return lora.apply(name, stored, dtype, device);
        }
        self.read(&source, i, dtype, device)
    }

    /// Loads tensor `name` and checks that its shape is `expected` (reshaping it when its
    /// source allows).
    pub fn load_shaped(
        &self,
        name: &str,
        expected: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let (source, i) = self.resolve_or_missing(name)?;
        let found = self.source_shape(&source, i);
        let lora = self.lora_for(name);
        let read_dtype = if lora.is_some() { DType::F32 } else { dtype };
        let same_count = found.iter().product::<usize>() == expected.iter().product::<usize>();
        if found == expected || (source.reshape && same_count) {
            let tensor = self
                .read(&source, i, read_dtype, device)?
                .reshape(expected)?;
            return match lora {
                Some(lora) => lora.apply(name, tensor, dtype, device),
                None => Ok(tensor),
            };
        }
        Err(Error::ShapeMismatch {
            name: name.to_string(),
            expected: expected.to_vec(),
            found,
        })
    }

    fn resolve_or_missing(&self, name: &str) -> Result<(Source, usize)> {
        self.resolve(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            location: self.location(),
        })
    }

    fn read(&self, source: &Source, file: usize, dtype: DType, device: &Device) -> Result<Tensor> {
        let tensor = self.files[file]
            .load(&source.name, dtype, device)?
            .expect("resolved sources exist");
        let tensor = match &source.rows {
            Some(rows) => tensor.narrow(0, rows.start, rows.len())?.contiguous()?,
            None => tensor,
        };
        Ok(if source.transpose {
            tensor.t()?.contiguous()?
        } else {
            tensor
        })
    }

    /// A [`VarBuilder`] over these weights: models get their tensors converted to `dtype` on
    /// `device`; missing or misshaped tensors give [`Error::MissingTensor`] /
    /// [`Error::ShapeMismatch`] (recovered with `Error::from` from candle's error).
    pub fn into_var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), dtype, device.clone())
    }

    fn location(&self) -> String {
        let paths: Vec<String> = self
            .files
            .iter()
            .map(|f| f.path().display().to_string())
            .collect();
        paths.join(", ")
    }
}

impl SimpleBackend for Weights {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.load_shaped(name, shape.dims(), dtype, device)
            .map_err(Error::into_candle)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.load(name, dtype, device).map_err(Error::into_candle)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.contains(name)
    }
}
