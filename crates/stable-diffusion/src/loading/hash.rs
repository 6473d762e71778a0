//! AUTOMATIC1111's model hash: the SHA-256 of a checkpoint file, shown as its first 10 hex
//! digits ("Model hash" in the infotext). Hashing a multi-GB file takes seconds, so results
//! are cached by path, size and modification time, as A1111 caches them.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The hex digits of the full SHA-256 A1111 shows as the short hash.
const SHORT_HASH_DIGITS: usize = 10;

#[derive(serde::Serialize, serde::Deserialize, Clone, PartialEq)]
struct CacheEntry {
    size: u64,
    modified_ns: u128,
    sha256: String,
}

/// The cache file: `$SD_CACHE_DIR/hashes.json`, else `$XDG_CACHE_HOME` or `~/.cache`, under
/// `stable-diffusion-rs/`.
fn cache_file() -> Option<PathBuf> {
    let dir = std::env::var_os("SD_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .map(|d| d.join("stable-diffusion-rs"))
        })?;
    Some(dir.join("hashes.json"))
}

/// The full SHA-256 of `path`, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer).map_err(|e| Error::io(path, e))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// A1111's short model hash of a single-file checkpoint (first 10 hex digits of its SHA-256),
/// from the cache when the file is unchanged; `None` for folders, which A1111 does not hash.
pub fn model_hash(path: &Path) -> Result<Option<String>> {
    if !path.is_file() {
        return Ok(None);
    }
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let modified_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let key = std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string();
    let cache_path = cache_file();
    let mut cache: BTreeMap<String, CacheEntry> = cache_path
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    let fresh = |e: &CacheEntry| e.size == meta.len() && e.modified_ns == modified_ns;
    let sha256 = match cache.get(&key).filter(|e| fresh(e)) {
        Some(entry) => entry.sha256.clone(),
        None => {
            let sha256 = sha256_file(path)?;
            cache.insert(
                key,
                CacheEntry {
                    size: meta.len(),
                    modified_ns,
                    sha256: sha256.clone(),
                },
            );
            // A cache that cannot be written only costs time on the next run.
            if let Some(cache_path) = &cache_path {
                if let Some(dir) = cache_path.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                if let Ok(text) = serde_json::to_string_pretty(&cache) {
                    let _ = crate::image::write_atomically(cache_path, text.as_bytes());
                }
            }
            sha256
        }
    };
    Ok(Some(sha256[..SHORT_HASH_DIGITS].to_string()))
}
