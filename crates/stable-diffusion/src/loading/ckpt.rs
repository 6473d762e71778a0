//! PyTorch `.ckpt` / `.pt` files (`torch.save`'s zip format, and the legacy format of
//! torch < 1.6), read without running Python:
//! the archive's `data.pkl` goes through the restricted unpickler in [`super::pickle`], and
//! tensor data is served straight from the memory-mapped `data/<key>` entries.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;

use super::pickle::{unpickle, unpickle_at, StorageType, TensorRef, Value};
use super::store::TensorStore;
use crate::{Error, Result};

/// The pickle of a `.ckpt` is at most this large (a state dict's pickle is a few MB).
const MAX_PICKLE_BYTES: u64 = 1 << 30;

/// Where each storage's bytes are in the file (or why they cannot be read), by key.
type StorageRanges = HashMap<String, std::result::Result<Range<usize>, String>>;

/// One tensor of a checkpoint: where its bytes are and how to view them.
#[derive(Debug, Clone)]
struct CkptTensor {
    dtype: StorageType,
    shape: Vec<usize>,
    stride: Vec<usize>,
    /// Offset of the first element, in elements.
    offset: usize,
    /// The storage's bytes in the file.
    data: Range<usize>,
}

/// A `torch.save` checkpoint (zip format), its tensors readable by name.
///
/// Checkpoints that wrap their weights as `{"state_dict": {...}}` (PyTorch Lightning, every
/// CompVis/A1111 `.ckpt`) are unwrapped; entries that are not tensors (`global_step`, ...) are
/// skipped and counted.
pub struct CkptFile {
    path: PathBuf,
    mmap: Mmap,
    tensors: HashMap<String, CkptTensor>,
    skipped: usize,
}

impl std::fmt::Debug for CkptFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CkptFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl CkptFile {
    /// Opens and checks `path`: the zip directory, the pickle (refusing anything that is not
    /// data) and every tensor's extent inside its storage.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_as(path.as_ref(), false)
    }

    /// Opens `path` like [`CkptFile::open`], also keeping the tensors of dicts nested in the
    /// top-level dict, named `outer.inner` (A1111 embeddings keep theirs in
    /// `string_to_param`).
    pub fn open_nested(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_as(path.as_ref(), true)
    }

    fn open_as(path: &Path, nested: bool) -> Result<Self> {
        let path = path.to_path_buf();
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound {
                    what: "checkpoint file",
                    path,
                })
            }
            Err(e) => return Err(Error::io(path, e)),
        };
        // SAFETY: read-only map; the file must not be truncated while in use.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let bad = |msg: String| Error::Checkpoint {
            path: path.clone(),
            msg,
        };
        if mmap.first() == Some(&0x80) {
            let (value, storages) = read_legacy(&mmap).map_err(&bad)?;
            return Self::from_parts(path, mmap, value, nested, |key| storages.get(key).cloned());
        }
        if !mmap.starts_with(b"PK\x03\x04") {
            return Err(bad(
                "not a PyTorch checkpoint (neither a zip archive nor a legacy torch.save file)"
                    .into(),
            ));
        }
        let entries = zip_entries(&mmap).map_err(&bad)?;
        let pickle_name = entries
            .keys()
            .filter(|name| name.ends_with("data.pkl"))
            .min_by_key(|name| name.len())
            .ok_or_else(|| bad("the archive has no data.pkl".into()))?
            .clone();
        let root = pickle_name[..pickle_name.len() - "data.pkl".len()].to_string();
        if let Some(order) = entries.get(&format!("{root}byteorder")) {
            let order = entry_bytes(&mmap, order).map_err(&bad)?;
            if order != b"little" {
                return Err(bad(format!(
                    "byte order `{}` is not supported (only little-endian)",
                    String::from_utf8_lossy(order)
                )));
            }
        }
        let pickle_entry = &entries[&pickle_name];
        if pickle_entry.size > MAX_PICKLE_BYTES {
            return Err(bad("data.pkl is implausibly large".into()));
        }
        let pickle = entry_bytes(&mmap, pickle_entry).map_err(&bad)?;
        let value = unpickle(pickle).map_err(|msg| bad(format!("refusing to load: {msg}")))?;
        let storages: StorageRanges = entries
            .iter()
            .filter_map(|(name, entry)| {
                let key = name.strip_prefix(&root)?.strip_prefix("data/")?;
                Some((key.to_string(), entry_range(&mmap, entry)))
            })
            .collect();
        Self::from_parts(path, mmap, value, nested, |key| storages.get(key).cloned())
    }

    /// Indexes the tensors of the unpickled `value`; `storage` finds a storage's bytes.
    fn from_parts(
        path: PathBuf,
        mmap: Mmap,
        value: Value,
        nested: bool,
        storage: impl Fn(&str) -> Option<std::result::Result<Range<usize>, String>>,
    ) -> Result<Self> {
        let bad = |msg: String| Error::Checkpoint {
            path: path.clone(),
            msg,
        };
        let (mut state, _) = state_dict(value).map_err(&bad)?;
        if nested {
            state = flatten_nested(state);
        }
        let mut tensors = HashMap::new();
        let mut skipped = 0;
        for (key, value) in state {
            let (Value::Str(name), Value::Tensor(tensor)) = (key, value) else {
                skipped += 1;
                continue;
            };
            let data = storage(&tensor.storage.key)
                .ok_or_else(|| {
                    bad(format!(
                        "tensor `{name}`: storage `{}` is not in the file",
                        tensor.storage.key
                    ))
                })?
                .map_err(&bad)?;
            check_extent(&tensor, data.len())
                .map_err(|msg| bad(format!("tensor `{name}`: {msg}")))?;
            tensors.insert(
                name,
                CkptTensor {
                    dtype: tensor.storage.dtype,
                    shape: tensor.shape,
                    stride: tensor.stride,
                    offset: tensor.offset,
                    data,
                },
            );
        }
        Ok(Self {
            path,
            mmap,
            tensors,
            skipped,
        })
    }

    /// How many state-dict entries were not tensors (and so were skipped).
    pub fn skipped_entries(&self) -> usize {
        self.skipped
    }

    fn bad(&self, name: &str, msg: impl std::fmt::Display) -> Error {
        Error::Checkpoint {
            path: self.path.clone(),
            msg: format!("tensor `{name}`: {msg}"),
        }
    }
}

impl TensorStore for CkptFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn names(&self) -> Vec<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }

    fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|t| t.shape.as_slice())
    }

    fn dtype_name(&self, name: &str) -> Option<String> {
        self.tensors.get(name).map(|t| t.dtype.name().to_string())
    }

    fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Option<Tensor>> {
        let Some(info) = self.tensors.get(name) else {
            return Ok(None);
        };
        let Some(stored) = info.dtype.candle_dtype() else {
            return Err(self.bad(name, format!("unsupported dtype {}", info.dtype.name())));
        };
        let size = info.dtype.size();
        let storage = &self.mmap[info.data.clone()];
        let numel: usize = info.shape.iter().product();
        let bytes: std::borrow::Cow<[u8]> = if is_contiguous(&info.shape, &info.stride) {
            let start = info.offset * size;
            (&storage[start..start + numel * size]).into()
        } else {
            gather(storage, info, size).into()
        };
        let tensor = Tensor::from_raw_buffer(&bytes, stored, &info.shape, device)
            .map_err(|e| self.bad(name, e))?;
        Ok(Some(tensor.to_dtype(dtype)?))
    }
}

/// The legacy (torch < 1.6) format: a magic-number pickle, a protocol-version pickle, a
/// system-info pickle, the object pickle, a pickle listing the storage keys, then each
/// storage in that order as an 8-byte element count and its raw bytes.
fn read_legacy(bytes: &[u8]) -> std::result::Result<(Value, StorageRanges), String> {
    // 0x1950a86a20f9469cfc6c as a 10-byte LONG1: too long for the unpickler's integers.
    const MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";
    if !bytes.starts_with(MAGIC) {
        return Err("not a PyTorch checkpoint (a pickle without torch's magic number)".into());
    }
    let refuse = |msg: String| format!("refusing to load: {msg}");
    let (_protocol, at) = unpickle_at(bytes, MAGIC.len()).map_err(refuse)?;
    let (sys_info, at) = unpickle_at(bytes, at).map_err(refuse)?;
    if let Value::Dict(items) = &sys_info {
        let big_endian = items.iter().any(
            |(k, v)| matches!((k, v), (Value::Str(k), Value::Bool(false)) if k == "little_endian"),
        );
        if big_endian {
            return Err("big-endian checkpoints are not supported".into());
        }
    }
    let (value, at) = unpickle_at(bytes, at).map_err(refuse)?;
    let (keys, mut at) = unpickle_at(bytes, at).map_err(refuse)?;
    let Value::List(keys) = keys else {
        return Err("the legacy storage list is not a list".into());
    };
    // Element sizes come from the storages the tensors reference.
    let mut sizes = HashMap::new();
    collect_storages(&value, &mut |s| {
        sizes.insert(s.key.clone(), s.dtype.size());
    });
    let mut storages = HashMap::new();
    for key in keys {
        let Value::Str(key) = key else {
            return Err("a legacy storage key is not a string".into());
        };
        let size = *sizes
            .get(&key)
            .ok_or_else(|| format!("storage `{key}` is listed but no tensor uses it"))?;
        let count = read_u64(bytes, at)?;
        let start = at + 8;
        let end = to_usize(count)?
            .checked_mul(size)
            .and_then(|n| n.checked_add(start))
            .filter(|&end| end <= bytes.len())
            .ok_or_else(|| format!("storage `{key}` runs past the end of the file (truncated)"))?;
        storages.insert(key, Ok(start..end));
        at = end;
    }
    Ok((value, storages))
}

/// Calls `found` for every storage referenced by a tensor inside `value`.
fn collect_storages(value: &Value, found: &mut impl FnMut(&super::pickle::StorageRef)) {
    match value {
        Value::Tensor(t) => found(&t.storage),
        Value::Storage(s) => found(s),
        Value::Tuple(items) | Value::List(items) => {
            items.iter().for_each(|v| collect_storages(v, found))
        }
        Value::Dict(items) => items.iter().for_each(|(k, v)| {
            collect_storages(k, found);
            collect_storages(v, found);
        }),
        _ => {}
    }
}

/// The dict of weights inside a checkpoint: `value["state_dict"]` when present, else `value`.
fn state_dict(value: Value) -> std::result::Result<(Vec<(Value, Value)>, bool), String> {
    let Value::Dict(top) = value else {
        return Err("the checkpoint does not hold a dict of tensors".into());
    };
    let inner = top
        .iter()
        .position(|(k, v)| matches!((k, v), (Value::Str(k), Value::Dict(_)) if k == "state_dict"));
    match inner {
        Some(i) => match top.into_iter().nth(i) {
            Some((_, Value::Dict(inner))) => Ok((inner, true)),
            _ => unreachable!("position found a dict"),
        },
        None => Ok((top, false)),
    }
}

/// The entries of `state` with each dict value under a string key replaced by its own
/// entries, named `key.inner` (one level).
fn flatten_nested(state: Vec<(Value, Value)>) -> Vec<(Value, Value)> {
    let mut flat = Vec::with_capacity(state.len());
    for (key, value) in state {
        match (key, value) {
            (Value::Str(outer), Value::Dict(inner)) => {
                for (k, v) in inner {
                    match k {
                        Value::Str(k) => flat.push((Value::Str(format!("{outer}.{k}")), v)),
                        k => flat.push((k, v)),
                    }
                }
            }
            (key, value) => flat.push((key, value)),
        }
    }
    flat
}

fn is_contiguous(shape: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1;
    for (&dim, &step) in shape.iter().zip(stride).rev() {
        if dim != 1 && step != expected {
            return false;
        }
        expected *= dim;
    }
    true
}

/// Checks that every element the view reaches lies inside the storage (and that sizes
/// do not overflow).
fn check_extent(tensor: &TensorRef, entry_len: usize) -> std::result::Result<(), String> {
    let size = tensor.storage.dtype.size();
    let storage_bytes = tensor
        .storage
        .numel
        .checked_mul(size)
        .ok_or("storage size overflows")?;
    if storage_bytes > entry_len {
        return Err(format!(
            "storage of {} elements needs {storage_bytes} bytes, the archive holds {entry_len}",
            tensor.storage.numel
        ));
    }
    let numel = tensor
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or("tensor size overflows")?;
    if numel == 0 {
        return Ok(());
    }
    // Only overlapping (zero) strides reach fewer elements than the view has; refusing them
    // keeps a few stored bytes from being expanded into a huge tensor.
    if numel > tensor.storage.numel {
        return Err(format!(
            "view of shape {:?} has {numel} elements, more than its storage of {} (overlapping strides are not supported)",
            tensor.shape, tensor.storage.numel
        ));
    }
    let last = tensor
        .shape
        .iter()
        .zip(&tensor.stride)
        .try_fold(tensor.offset, |acc, (&d, &s)| {
            (d - 1).checked_mul(s).and_then(|x| acc.checked_add(x))
        })
        .ok_or("tensor extent overflows")?;
    if last >= tensor.storage.numel {
        return Err(format!(
            "view (offset {}, shape {:?}, stride {:?}) reaches past its storage of {} elements",
            tensor.offset, tensor.shape, tensor.stride, tensor.storage.numel
        ));
    }
    Ok(())
}

/// Copies a strided view into contiguous bytes.
fn gather(storage: &[u8], info: &CkptTensor, size: usize) -> Vec<u8> {
    let numel: usize = info.shape.iter().product();
    let mut out = Vec::with_capacity(numel * size);
    let mut index = vec![0usize; info.shape.len()];
    for _ in 0..numel {
        let at = info.offset
            + index
                .iter()
                .zip(&info.stride)
                .map(|(i, s)| i * s)
                .sum::<usize>();
        out.extend_from_slice(&storage[at * size..(at + 1) * size]);
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < info.shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    out
}

/// One entry of a zip archive's central directory.
#[derive(Debug, Clone)]
struct ZipEntry {
    method: u16,
    size: u64,
    compressed_size: u64,
    local_header: u64,
}

/// The `n` bytes at `at`, if the file holds them (offsets come from the file: no overflow).
fn bytes_at(bytes: &[u8], at: usize, n: usize) -> Option<&[u8]> {
    bytes.get(at..at.checked_add(n)?)
}

fn read_u16(bytes: &[u8], at: usize) -> std::result::Result<u16, String> {
    bytes_at(bytes, at, 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or_else(|| "the zip archive is truncated".to_string())
}

fn read_u32(bytes: &[u8], at: usize) -> std::result::Result<u32, String> {
    bytes_at(bytes, at, 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        .ok_or_else(|| "the zip archive is truncated".to_string())
}

fn read_u64(bytes: &[u8], at: usize) -> std::result::Result<u64, String> {
    bytes_at(bytes, at, 8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| "the zip archive is truncated".to_string())
}

fn to_usize(x: u64) -> std::result::Result<usize, String> {
    usize::try_from(x).map_err(|_| "zip offset too large".to_string())
}

/// Reads the central directory (zip64 included) into name → entry.
fn zip_entries(bytes: &[u8]) -> std::result::Result<HashMap<String, ZipEntry>, String> {
    const EOCD: u32 = 0x0605_4b50;
    const EOCD64_LOCATOR: u32 = 0x0706_4b50;
    const EOCD64: u32 = 0x0606_4b50;
    const CENTRAL: u32 = 0x0201_4b50;
    let truncated =
        || "the zip directory is missing (the file is truncated or not a checkpoint)".to_string();
    if bytes.len() < 22 {
        return Err(truncated());
    }
    // The end record is in the last 22 + 65535 bytes (after it, only a comment).
    let search_from = bytes.len().saturating_sub(22 + 65535);
    let eocd = (search_from..=bytes.len() - 22)
        .rev()
        .find(|&at| read_u32(bytes, at) == Ok(EOCD))
        .ok_or_else(truncated)?;
    let mut count = u64::from(read_u16(bytes, eocd + 10)?);
    let mut dir_size = u64::from(read_u32(bytes, eocd + 12)?);
    let mut dir_offset = u64::from(read_u32(bytes, eocd + 16)?);
    if eocd >= 20 && read_u32(bytes, eocd - 20) == Ok(EOCD64_LOCATOR) {
        let at = to_usize(read_u64(bytes, eocd - 20 + 8)?)?;
        if read_u32(bytes, at)? != EOCD64 {
            return Err("the zip64 end record is not where its locator says".into());
        }
        count = read_u64(bytes, at + 32)?;
        dir_size = read_u64(bytes, at + 40)?;
        dir_offset = read_u64(bytes, at + 48)?;
    }
    let dir_end = dir_offset
        .checked_add(dir_size)
        .filter(|&end| end <= bytes.len() as u64)
        .ok_or_else(|| {
            format!(
                "the zip directory ({dir_size} bytes at {dir_offset}) lies outside the {}-byte file",
                bytes.len()
            )
        })?;
    let mut entries = HashMap::new();
    let mut at = to_usize(dir_offset)?;
    for _ in 0..count {
        if at as u64 >= dir_end || read_u32(bytes, at)? != CENTRAL {
            return Err("the zip directory is corrupt".into());
        }
        let method = read_u16(bytes, at + 10)?;
        let mut compressed_size = u64::from(read_u32(bytes, at + 20)?);
        let mut size = u64::from(read_u32(bytes, at + 24)?);
        let name_len = read_u16(bytes, at + 28)? as usize;
        let extra_len = read_u16(bytes, at + 30)? as usize;
        let comment_len = read_u16(bytes, at + 32)? as usize;
        let mut local_header = u64::from(read_u32(bytes, at + 42)?);
        let name = bytes
            .get(at + 46..at + 46 + name_len)
            .ok_or_else(truncated)?;
        let name = String::from_utf8_lossy(name).into_owned();
        let extra = bytes
            .get(at + 46 + name_len..at + 46 + name_len + extra_len)
            .ok_or_else(truncated)?;
        // Zip64 sizes and offsets live in extra field 0x0001, in this order, for each
        // 32-bit field that is saturated.
        let mut e = 0;
        while e + 4 <= extra.len() {
            let id = read_u16(extra, e)?;
            let len = read_u16(extra, e + 2)? as usize;
            if id == 1 {
                let mut f = e + 4;
                for field in [&mut size, &mut compressed_size, &mut local_header] {
                    if *field == u64::from(u32::MAX) {
                        *field = read_u64(extra, f)?;
                        f += 8;
                    }
                }
            }
            e += 4 + len;
        }
        entries.insert(
            name,
            ZipEntry {
                method,
                size,
                compressed_size,
                local_header,
            },
        );
        at += 46 + name_len + extra_len + comment_len;
    }
    Ok(entries)
}

/// Where an entry's (stored, uncompressed) data is in the file.
fn entry_range(bytes: &[u8], entry: &ZipEntry) -> std::result::Result<Range<usize>, String> {
    if entry.method != 0 {
        return Err(format!(
            "compressed zip entries (method {}) are not supported; torch.save stores them uncompressed",
            entry.method
        ));
    }
    let header = to_usize(entry.local_header)?;
    if read_u32(bytes, header)? != 0x0403_4b50 {
        return Err("a zip entry's local header is missing (the file is corrupt)".into());
    }
    let name_len = read_u16(bytes, header + 26)? as usize;
    let extra_len = read_u16(bytes, header + 28)? as usize;
    let start = header + 30 + name_len + extra_len;
    let end = to_usize(entry.compressed_size)?
        .checked_add(start)
        .filter(|&end| end <= bytes.len() && entry.size == entry.compressed_size)
        .ok_or_else(|| {
            format!(
                "a zip entry of {} bytes at offset {start} runs past the end of the {}-byte file (truncated)",
                entry.size,
                bytes.len()
            )
        })?;
    Ok(start..end)
}

fn entry_bytes<'a>(bytes: &'a [u8], entry: &ZipEntry) -> std::result::Result<&'a [u8], String> {
    Ok(&bytes[entry_range(bytes, entry)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguity_ignores_unit_dimensions() {
        assert!(is_contiguous(&[2, 3], &[3, 1]));
        assert!(is_contiguous(&[1, 3], &[99, 1]));
        assert!(!is_contiguous(&[2, 3], &[1, 2]));
        assert!(is_contiguous(&[], &[]));
    }
}
