//! The model store: where the names in a request point. A models folder in AUTOMATIC1111's
//! layout (`models/Stable-diffusion`, `models/Lora`, `models/VAE`, `embeddings`; diffusers
//! folders and single files side by side) plus files given one by one (the command line's
//! paths), each known by its name: the file name without extension, or the folder's name.
//!
//! A name in a request resolves to a file in this order: a file given one by one, then the
//! models folder, then the name as a path. Checkpoints also resolve by A1111's title
//! (`name [shorthash]`) and by their hash, as an infotext names them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::StableDiffusion;

use crate::loading::embeddings::TextualInversion;
use crate::loading::model_hash;
use crate::{Error, Result};

/// File extensions of single-file checkpoints, LoRAs and VAEs.
const WEIGHT_EXTENSIONS: &[&str] = &["safetensors", "ckpt", "pt", "bin", "pth"];

/// What kind of file a name stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asset {
    /// A checkpoint: a diffusers pipeline folder or a single file.
    Checkpoint,
    /// A LoRA / LyCORIS network.
    Lora,
    /// A VAE: a diffusers folder or a single file.
    Vae,
    /// A textual-inversion embedding.
    Embedding,
}

impl Asset {
    /// The folder of this kind under a models folder, in A1111's layout.
    fn folder(self) -> &'static str {
        match self {
            Asset::Checkpoint => "models/Stable-diffusion",
            Asset::Lora => "models/Lora",
            Asset::Vae => "models/VAE",
            Asset::Embedding => "embeddings",
        }
    }

    /// The word used in messages.
    fn what(self) -> &'static str {
        match self {
            Asset::Checkpoint => "model",
            Asset::Lora => "LoRA",
            Asset::Vae => "VAE",
            Asset::Embedding => "embedding",
        }
    }
}

/// One file the store knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its kind.
    pub asset: Asset,
    /// Its name: the file name without extension, or the folder's name.
    pub name: String,
    /// Where it is.
    pub path: PathBuf,
}

impl Entry {
    /// A1111's title, `name [shorthash]` for single files (hashed once, then cached), the
    /// name alone for folders (which A1111 does not hash).
    pub fn title(&self) -> Result<String> {
        Ok(match model_hash(&self.path)? {
            Some(hash) => format!("{} [{hash}]", self.name),
            None => self.name.clone(),
        })
    }
}

/// The name of the asset at `path`: a file's name without its extension, a folder's name.
pub fn asset_name(path: &Path) -> String {
    let name = if path.is_dir() {
        path.file_name()
    } else {
        path.file_stem()
    };
    name.map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Whether `path` can be an asset of kind `asset` (checked by name and layout only).
fn looks_like(asset: Asset, path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.starts_with('.') {
        return false;
    }
    if path.is_dir() {
        return match asset {
            Asset::Checkpoint => path.join("model_index.json").is_file(),
            Asset::Vae => path.join("config.json").is_file(),
            Asset::Lora | Asset::Embedding => false,
        };
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    WEIGHT_EXTENSIONS.contains(&ext.as_str())
}

/// The assets of one kind in `dir` and one folder down (A1111's subfolders), sorted by path;
/// embeddings as [`TextualInversion::files_in`] finds them. A missing folder holds nothing.
fn scan(asset: Asset, dir: &Path) -> Result<Vec<Entry>> {
    let entry = |path: PathBuf| Entry {
        asset,
        name: asset_name(&path),
        path,
    };
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    if asset == Asset::Embedding {
        return Ok(TextualInversion::files_in(dir)?
            .into_iter()
            .map(entry)
            .collect());
    }
    let mut found = Vec::new();
    let mut folders = vec![(dir.to_path_buf(), 0)];
    while let Some((folder, depth)) = folders.pop() {
        let items = std::fs::read_dir(&folder).map_err(|e| Error::io(&folder, e))?;
        for item in items.flatten() {
            let path = item.path();
            if looks_like(asset, &path) {
                found.push(entry(path));
            } else if path.is_dir()
                && depth == 0
                && !item.file_name().to_string_lossy().starts_with('.')
            {
                folders.push((path, depth + 1));
            }
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

/// A loaded model's place in the cache: filled by the first request that needs it, while
/// requests for the same model wait on its lock.
type ModelCell = Arc<Mutex<Option<Arc<StableDiffusion>>>>;

/// One cached model.
struct Slot {
    key: String,
    cell: ModelCell,
    /// The size of its weight files, what it is counted as against the budget.
    bytes: u64,
    /// When it was last asked for (a counter).
    last_used: u64,
}

/// Loaded models shared between requests, bounded by a memory budget: least recently used out
/// first, never one that a request still holds.
struct ModelCache {
    slots: Mutex<Vec<Slot>>,
    clock: AtomicU64,
    budget: AtomicU64,
    loads: AtomicU64,
}

impl Default for ModelCache {
    fn default() -> Self {
        Self {
            slots: Mutex::new(Vec::new()),
            clock: AtomicU64::new(0),
            budget: AtomicU64::new(default_cache_budget()),
            loads: AtomicU64::new(0),
        }
    }
}

/// Half the machine's memory (`MemTotal` of `/proc/meminfo`).
fn default_cache_budget() -> u64 {
    super::memory::total_memory() / 2
}

/// The bytes of the files under `path` (a file, or a folder and its subfolders, at most 8
/// levels down, so that a symlink loop ends).
pub fn disk_bytes(path: &Path) -> u64 {
    const MAX_DEPTH: usize = 8;
    let mut total = 0;
    let mut pending = vec![(path.to_path_buf(), 0)];
    while let Some((path, depth)) = pending.pop() {
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => {
                if let (Ok(items), true) = (std::fs::read_dir(&path), depth < MAX_DEPTH) {
                    pending.extend(items.flatten().map(|item| (item.path(), depth + 1)));
                }
            }
            Ok(meta) => total += meta.len(),
            Err(_) => {}
        }
    }
    total
}

impl ModelCache {
    /// The model of `key`, loaded by `load` unless cached; a load already under way for the
    /// same key is waited for, not repeated.
    fn get(
        &self,
        key: &str,
        load: impl FnOnce() -> Result<(StableDiffusion, u64)>,
    ) -> Result<Arc<StableDiffusion>> {
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        let cell = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            match slots.iter_mut().find(|slot| slot.key == key) {
                Some(slot) => {
                    slot.last_used = now;
                    slot.cell.clone()
                }
                None => {
                    let cell = ModelCell::default();
                    slots.push(Slot {
                        key: key.to_string(),
                        cell: cell.clone(),
                        bytes: 0,
                        last_used: now,
                    });
                    cell
                }
            }
        };
        let model = {
            let mut guard = cell.lock().unwrap_or_else(|e| e.into_inner());
            match guard.as_ref() {
                Some(model) => return Ok(model.clone()),
                None => {
                    self.loads.fetch_add(1, Ordering::Relaxed);
                    let (model, bytes) = load()?;
                    let model = Arc::new(model);
                    *guard = Some(model.clone());
                    let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(slot) = slots.iter_mut().find(|slot| slot.key == key) {
                        slot.bytes = bytes;
                    }
                    model
                }
            }
        };
        self.evict(key);
        Ok(model)
    }

    /// Drops least recently used models that no request holds until the loaded ones fit the
    /// budget (`keep` stays).
    fn evict(&self, keep: &str) {
        let budget = self.budget.load(Ordering::Relaxed);
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let loaded = |slot: &Slot| {
            slot.cell
                .try_lock()
                .map(|m| m.as_ref().map(Arc::strong_count))
                .unwrap_or(Some(usize::MAX))
        };
        loop {
            let total: u64 = slots
                .iter()
                .filter(|slot| loaded(slot).is_some())
                .map(|slot| slot.bytes)
                .sum();
            if total <= budget {
                return;
            }
            // Only the cache's own reference left: no request is using it.
            let victim = slots
                .iter()
                .enumerate()
                .filter(|(_, slot)| slot.key != keep && loaded(slot) == Some(1))
                .min_by_key(|(_, slot)| slot.last_used)
                .map(|(i, _)| i);
            match victim {
                Some(i) => {
                    slots.remove(i);
                }
                None => return,
            }
        }
    }
}

impl std::fmt::Debug for ModelCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let slots = self.slots.lock().map(|s| s.len()).unwrap_or(0);
        write!(f, "ModelCache({slots} models)")
    }
}

/// Where the names of requests point: a models folder and files given one by one, and the
/// models loaded for them (shared by clones of the store).
#[derive(Debug, Clone, Default)]
pub struct ModelStore {
    /// Loaded models, shared between requests and between clones of this store.
    cache: Arc<ModelCache>,
    /// The models folder in A1111's layout, if any.
    models_dir: Option<PathBuf>,
    /// Files given one by one, before the models folder in lookups.
    given: Vec<Entry>,
    /// Extra folders of LoRAs (`--lora-dir`) and of embeddings (`--embeddings-dir`).
    folders: Vec<(Asset, PathBuf)>,
    /// What the folders held at the last scan.
    scanned: Vec<Entry>,
    /// The checkpoint of requests that name none.
    default_model: Option<PathBuf>,
}

impl ModelStore {
    /// An empty store: names resolve only as paths.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store over a models folder in A1111's layout (scanned now; [`Self::rescan`] again).
    pub fn with_models_dir(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        if !dir.is_dir() {
            return Err(Error::NotFound {
                what: "models folder",
                path: dir,
            });
        }
        let mut store = Self {
            models_dir: Some(dir),
            ..Self::default()
        };
        store.rescan()?;
        Ok(store)
    }

    /// Adds a file (or diffusers folder) of kind `asset`; returns the name it is known by.
    /// Two different files of one name: the later is known by its path.
    pub fn add(&mut self, asset: Asset, path: impl Into<PathBuf>) -> String {
        let path = path.into();
        let mut name = asset_name(&path);
        let same_kind = |e: &&Entry| e.asset == asset;
        if let Some(entry) = self.given.iter().filter(same_kind).find(|e| e.name == name) {
            if entry.path != path {
                name = path.display().to_string();
            }
        }
        if !self
            .given
            .iter()
            .any(|e| e.asset == asset && e.path == path)
        {
            self.given.push(Entry {
                asset,
                name: name.clone(),
                path,
            });
        }
        name
    }

    /// Adds a folder whose LoRAs or embeddings resolve by name (scanned now).
    pub fn add_folder(&mut self, asset: Asset, dir: impl Into<PathBuf>) -> Result<()> {
        let dir = dir.into();
        if !dir.is_dir() {
            return Err(Error::NotFound {
                what: match asset {
                    Asset::Lora => "LoRA folder",
                    Asset::Embedding => "embeddings folder",
                    Asset::Checkpoint => "checkpoint folder",
                    Asset::Vae => "VAE folder",
                },
                path: dir,
            });
        }
        self.folders.push((asset, dir));
        self.rescan()
    }

    /// The model that `key` (the file and everything that changes its weights) stands for,
    /// from the cache, or loaded by `load` and kept (`load` also says how many bytes it counts
    /// for against the budget). Requests for a model that another request is loading wait for
    /// it.
    pub fn cached_model(
        &self,
        key: &str,
        load: impl FnOnce() -> Result<(StableDiffusion, u64)>,
    ) -> Result<Arc<StableDiffusion>> {
        self.cache.get(key, load)
    }

    /// Sets the memory budget of the model cache in bytes (default: half the machine's memory).
    pub fn set_cache_budget(&self, bytes: u64) {
        self.cache.budget.store(bytes, Ordering::Relaxed);
    }

    /// How many models have been loaded (not served from the cache) so far.
    pub fn loads(&self) -> u64 {
        self.cache.loads.load(Ordering::Relaxed)
    }

    /// Sets the checkpoint that requests naming none use.
    pub fn set_default_model(&mut self, path: impl Into<PathBuf>) {
        self.default_model = Some(path.into());
    }

    /// Reads the folders again (files added or removed since).
    pub fn rescan(&mut self) -> Result<()> {
        let mut scanned = Vec::new();
        if let Some(root) = &self.models_dir {
            for asset in [Asset::Checkpoint, Asset::Lora, Asset::Vae, Asset::Embedding] {
                scanned.extend(scan(asset, &root.join(asset.folder()))?);
            }
        }
        for (asset, dir) in &self.folders {
            scanned.extend(scan(*asset, dir)?);
        }
        self.scanned = scanned;
        Ok(())
    }

    /// Everything the store knows of kind `asset`: files given one by one, then the folders'.
    pub fn list(&self, asset: Asset) -> Vec<&Entry> {
        self.given
            .iter()
            .chain(&self.scanned)
            .filter(|e| e.asset == asset)
            .collect()
    }

    /// The known file `name` stands for: a name or file name, for checkpoints also an A1111
    /// title (`name [hash]`) or a hash (the hash decides; the name is the fallback).
    pub fn find(&self, asset: Asset, name: &str) -> Option<PathBuf> {
        let name = name.trim();
        let entries = self.list(asset);
        let by_name = |n: &str| {
            entries
                .iter()
                .find(|e| e.name == n || e.path.file_name().is_some_and(|f| f == n))
                .map(|e| e.path.clone())
        };
        if let Some(path) = by_name(name) {
            return Some(path);
        }
        if asset != Asset::Checkpoint {
            return None;
        }
        let (title_name, hash) = match name.rsplit_once(" [") {
            Some((n, h)) if h.ends_with(']') => (n.trim(), Some(&h[..h.len() - 1])),
            _ => (name, None),
        };
        let hash = hash.or_else(|| {
            (name.len() >= 8 && name.chars().all(|c| c.is_ascii_hexdigit())).then_some(name)
        });
        if let Some(hash) = hash {
            let matches = |path: &Path| matches!(model_hash(path), Ok(Some(ours)) if ours.eq_ignore_ascii_case(hash));
            if let Some(entry) = entries.iter().find(|e| matches(&e.path)) {
                return Some(entry.path.clone());
            }
        }
        by_name(title_name)
    }

    /// The file `name` stands for: a known one ([`Self::find`]), else `name` as a path. The
    /// error lists the known names.
    pub fn resolve(&self, asset: Asset, name: &str) -> Result<PathBuf> {
        if let Some(path) = self.find(asset, name) {
            return Ok(path);
        }
        let path = PathBuf::from(name.trim());
        if path.exists() {
            return Ok(path);
        }
        let known: Vec<String> = self.list(asset).iter().map(|e| e.name.clone()).collect();
        Err(Error::invalid(
            asset.what(),
            if known.is_empty() {
                format!(
                    "`{name}` is not a file, and no {} folder is known",
                    asset.what()
                )
            } else {
                format!("`{name}` is none of the known ones ({})", known.join(", "))
            },
        ))
    }

    /// The checkpoint for `name`, or the default model when `None`.
    pub fn checkpoint(&self, name: Option<&str>) -> Result<PathBuf> {
        match name {
            Some(name) => self.resolve(Asset::Checkpoint, name),
            None => match &self.default_model {
                Some(path) => Ok(path.clone()),
                None => match self.list(Asset::Checkpoint).first() {
                    Some(entry) => Ok(entry.path.clone()),
                    None => crate::default_model_path(),
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::disk_bytes;

    #[test]
    fn disk_bytes_counts_files_and_ends_on_a_symlink_loop() {
        let dir = std::env::temp_dir().join(format!("sd-disk-bytes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("unet")).unwrap();
        std::fs::write(dir.join("unet/weights.bin"), [0u8; 100]).unwrap();
        std::fs::write(dir.join("model_index.json"), [0u8; 20]).unwrap();
        assert_eq!(disk_bytes(&dir), 120);
        #[cfg(unix)]
        {
            // A link back to the folder: counted a bounded number of times, and it ends.
            std::os::unix::fs::symlink(&dir, dir.join("unet/loop")).unwrap();
            assert!(disk_bytes(&dir) > 120);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
