//! The model store: where the names in a request point. A models folder in AUTOMATIC1111's
//! layout (`models/Stable-diffusion`, `models/Lora`, `models/VAE`, `embeddings`; diffusers
//! folders and single files side by side) plus files given one by one (the command line's
//! paths), each known by its name: the file name without extension, or the folder's name.
//!
//! A name in a request resolves to a file in this order: a file given one by one, then the
//! models folder, then the name as a path. Checkpoints also resolve by A1111's title
//! (`name [shorthash]`) and by their hash, as an infotext names them.

use std::path::{Path, PathBuf};

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

/// Where the names of requests point: a models folder and files given one by one.
#[derive(Debug, Clone, Default)]
pub struct ModelStore {
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
