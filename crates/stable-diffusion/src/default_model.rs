//! Where the built-in shapes model is found when no model is given.

use std::path::PathBuf;

/// The environment variable that overrides where the built-in shapes model is looked for.
pub const DEFAULT_MODEL_ENV: &str = "SD_DEFAULT_MODEL";

/// The built-in shapes model: a diffusers folder used when no model is given. Looked for in
/// `$SD_DEFAULT_MODEL`, then `models/shapes` in this source tree, then `models/shapes` beside
/// the running executable and its parent folders.
pub fn default_model_path() -> crate::Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(path) = std::env::var_os(DEFAULT_MODEL_ENV) {
        candidates.push(PathBuf::from(path));
    }
    candidates.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/shapes"));
    if let Ok(exe) = std::env::current_exe() {
        candidates.extend(
            exe.ancestors()
                .skip(1)
                .take(4)
                .map(|dir| dir.join("models/shapes")),
        );
    }
    candidates
        .iter()
        .find(|dir| dir.join("model_index.json").is_file())
        .map(|dir| dir.canonicalize().unwrap_or_else(|_| dir.clone()))
        .ok_or_else(|| crate::Error::NotFound {
            what: "built-in shapes model (models/shapes; set SD_DEFAULT_MODEL or pass --model)",
            path: candidates.first().cloned().unwrap_or_default(),
        })
}
