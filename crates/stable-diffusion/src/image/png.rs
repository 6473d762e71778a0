//! PNG files with text chunks: atomic writing and reading back `tEXt`, `zTXt` and `iTXt`.
//!
//! Text is written the way PIL's `PngInfo.add_text` writes it (and so AUTOMATIC1111): a `tEXt`
//! chunk when the value is Latin-1, otherwise an uncompressed `iTXt` chunk (UTF-8, empty language
//! tag and translated keyword), so every reader that shows A1111 metadata shows ours.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ::image::RgbImage;

use super::InfoText;
use crate::{Error, Result};

/// The text key under which AUTOMATIC1111 stores its infotext.
pub const PARAMETERS_KEY: &str = "parameters";

fn image_error(path: &Path, msg: impl Into<String>) -> Error {
    Error::Image {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

fn is_latin1(text: &str) -> bool {
    text.chars().all(|c| (c as u32) <= 0xFF)
}

/// Encodes `image` as an 8-bit RGB PNG with `text` chunks (key, value) before the image data.
pub fn encode_png(image: &RgbImage, text: &[(String, String)]) -> Result<Vec<u8>> {
    let in_memory = Path::new("");
    let mut bytes = Vec::new();
    {
        let mut encoder = ::png::Encoder::new(&mut bytes, image.width(), image.height());
        encoder.set_color(::png::ColorType::Rgb);
        encoder.set_depth(::png::BitDepth::Eight);
        for (key, value) in text {
            if key.is_empty() || key.len() > 79 || !is_latin1(key) {
                return Err(image_error(
                    in_memory,
                    format!("PNG text key {key:?} must be 1-79 Latin-1 characters"),
                ));
            }
            let added = if is_latin1(value) {
                encoder.add_text_chunk(key.clone(), value.clone())
            } else {
                encoder.add_itxt_chunk(key.clone(), value.clone())
            };
            added.map_err(|e| image_error(in_memory, format!("PNG text chunk {key:?}: {e}")))?;
        }
        let mut writer = encoder
            .write_header()
            .map_err(|e| image_error(in_memory, format!("PNG header: {e}")))?;
        writer
            .write_image_data(image.as_raw())
            .map_err(|e| image_error(in_memory, format!("PNG data: {e}")))?;
        writer
            .finish()
            .map_err(|e| image_error(in_memory, format!("PNG end: {e}")))?;
    }
    Ok(bytes)
}

/// Writes `image` with `text` chunks to `path` atomically: the bytes go to a temporary file in
/// the same folder, which is flushed to disk and then renamed over `path`, so an interrupted run
/// leaves either the old file or the complete new one, never half a PNG.
pub fn save_png(path: impl AsRef<Path>, image: &RgbImage, text: &[(String, String)]) -> Result<()> {
    let path = path.as_ref();
    let bytes = encode_png(image, text).map_err(|e| match e {
        Error::Image { msg, .. } => image_error(path, msg),
        other => other,
    })?;
    write_atomically(path, &bytes)
}

/// Writes `image` to `path` (atomically) with `infotext` as the A1111 `parameters` chunk.
pub fn save_png_with_infotext(
    path: impl AsRef<Path>,
    image: &RgbImage,
    infotext: &InfoText,
) -> Result<()> {
    save_png(
        path,
        image,
        &[(PARAMETERS_KEY.to_string(), infotext.to_string())],
    )
}

fn temporary_sibling(path: &Path) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| image_error(path, "not a file path"))?
        .to_string_lossy();
    let unique = format!(
        ".{name}.{}-{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    Ok(path.with_file_name(unique))
}

/// Writes `bytes` to a temporary file next to `path`, syncs it, and renames it into place.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_all_atomically(&[(path, bytes)])
}

/// Writes several files all or nothing: every file's bytes go to a temporary sibling first and
/// are synced; only when all are on disk are they renamed into place, so a failure (or a kill)
/// before that point leaves every earlier file as it was. Temporary files that a killed run
/// left next to these paths are removed first.
pub fn write_all_atomically(files: &[(&Path, &[u8])]) -> Result<()> {
    for (path, _) in files {
        remove_stale_temporaries(path);
    }
    let mut temporaries: Vec<PathBuf> = Vec::with_capacity(files.len());
    let remove_all = |temporaries: &[PathBuf]| {
        for t in temporaries {
            let _ = std::fs::remove_file(t);
        }
    };
    for (path, bytes) in files {
        let temporary = match temporary_sibling(path) {
            Ok(t) => t,
            Err(e) => {
                remove_all(&temporaries);
                return Err(e);
            }
        };
        let written = (|| -> std::io::Result<()> {
            let file = File::create(&temporary)?;
            let mut writer = BufWriter::new(file);
            writer.write_all(bytes)?;
            let file = writer.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()
        })();
        temporaries.push(temporary);
        if let Err(e) = written {
            remove_all(&temporaries);
            return Err(Error::io(path, e));
        }
    }
    for (i, ((path, _), temporary)) in files.iter().zip(&temporaries).enumerate() {
        if let Err(e) = std::fs::rename(temporary, path) {
            remove_all(&temporaries[i..]);
            return Err(Error::io(path, e));
        }
    }
    // Make the renames themselves durable where the platform allows syncing a folder.
    #[cfg(unix)]
    for (path, _) in files {
        let folder = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        if let Ok(dir) = File::open(folder) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

/// Removes the temporary siblings of `path` ([`temporary_sibling`]) whose writing process is
/// gone (a run killed mid-write); those of running processes are left alone.
fn remove_stale_temporaries(path: &Path) {
    let (Some(name), Some(folder)) = (path.file_name(), path.parent()) else {
        return;
    };
    let folder = if folder.as_os_str().is_empty() {
        Path::new(".")
    } else {
        folder
    };
    let prefix = format!(".{}.", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(".tmp"))
        else {
            continue;
        };
        let Some((pid, counter)) = rest.split_once('-') else {
            continue;
        };
        let (Ok(pid), true) = (
            pid.parse::<u32>(),
            counter.bytes().all(|b| b.is_ascii_digit()),
        ) else {
            continue;
        };
        if pid != std::process::id() && !process_is_running(pid) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Whether process `pid` exists (on Linux through /proc; elsewhere assumed running, so
/// nothing is removed).
fn process_is_running(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

/// Every text chunk of PNG data, as (key, text), in the order tEXt, zTXt, iTXt; compressed
/// chunks are inflated. `path` only names the source in errors.
pub fn png_text_from_bytes(bytes: &[u8], path: &Path) -> Result<Vec<(String, String)>> {
    let mut decoder = ::png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_ignore_text_chunk(false);
    let mut reader = decoder
        .read_info()
        .map_err(|e| image_error(path, format!("not a readable PNG: {e}")))?;
    // Text chunks may also follow the image data: read to the end.
    reader
        .finish()
        .map_err(|e| image_error(path, format!("corrupt PNG: {e}")))?;
    let info = reader.info();
    let mut text = Vec::new();
    for chunk in &info.uncompressed_latin1_text {
        text.push((chunk.keyword.clone(), chunk.text.clone()));
    }
    for chunk in &info.compressed_latin1_text {
        let value = chunk
            .get_text()
            .map_err(|e| image_error(path, format!("zTXt chunk {:?}: {e}", chunk.keyword)))?;
        text.push((chunk.keyword.clone(), value));
    }
    for chunk in &info.utf8_text {
        let value = chunk
            .get_text()
            .map_err(|e| image_error(path, format!("iTXt chunk {:?}: {e}", chunk.keyword)))?;
        text.push((chunk.keyword.clone(), value));
    }
    Ok(text)
}

/// Every text chunk (tEXt, zTXt, iTXt) of the PNG file at `path`, as (key, text).
pub fn read_png_text(path: impl AsRef<Path>) -> Result<Vec<(String, String)>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| image_error(path, format!("cannot read: {e}")))?;
    png_text_from_bytes(&bytes, path)
}

/// The A1111 `parameters` text of the PNG at `path`, if it has one.
pub fn read_parameters(path: impl AsRef<Path>) -> Result<Option<String>> {
    Ok(read_png_text(path)?
        .into_iter()
        .find(|(key, _)| key == PARAMETERS_KEY)
        .map(|(_, value)| value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sd-png-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_batch_that_cannot_be_written_whole_changes_nothing() {
        let dir = scratch("batch");
        let first = dir.join("a.png");
        std::fs::write(&first, b"earlier").unwrap();
        let second = dir.join("missing-folder").join("b.png");
        let err = write_all_atomically(&[(&first, b"new a"), (&second, b"new b")]).unwrap_err();
        assert!(err.to_string().contains("b.png"), "{err}");
        assert_eq!(std::fs::read(&first).unwrap(), b"earlier");
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "a.png's temporary was left: {left:?}");
        write_all_atomically(&[(&first, b"new a")]).unwrap();
        assert_eq!(std::fs::read(&first).unwrap(), b"new a");
    }

    #[test]
    fn temporaries_of_dead_processes_are_cleared_and_live_ones_kept() {
        let dir = scratch("stale");
        let target = dir.join("out.png");
        // A pid far above any Linux pid_max: no such process.
        let dead = dir.join(".out.png.4294967295-0.tmp");
        let mine = dir.join(format!(".out.png.{}-99.tmp", std::process::id()));
        let unrelated = dir.join(".other.png.4294967295-0.tmp");
        for f in [&dead, &mine, &unrelated] {
            std::fs::write(f, b"partial").unwrap();
        }
        write_atomically(&target, b"whole").unwrap();
        assert!(!dead.exists(), "a dead run's temporary stays");
        assert!(mine.exists(), "a running process's temporary was removed");
        assert!(unrelated.exists(), "another file's temporary was removed");
        assert_eq!(std::fs::read(&target).unwrap(), b"whole");
    }
}
