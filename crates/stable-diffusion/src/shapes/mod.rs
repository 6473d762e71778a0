//! The captioned shapes data set and its pixel-based evaluator.
//!
//! [`Scene`] describes one 64x64 picture: a coloured circle, square or triangle of some size
//! at one of nine positions on a plain background of another colour. [`Scene::render`] draws
//! it (anti-aliased), [`Scene::caption`] describes it in plain English with varied phrasing,
//! and [`Dataset`] is a deterministic, seeded stream of training scenes that never contains a
//! [held-out](Scene::is_held_out) colour × shape × position combination. [`measure`] reads
//! the attributes back from the pixels of a generated image.

mod eval;
mod scene;

pub use eval::{
    evaluate, evaluation_scenes, measure, Attribute, EvalOptions, EvalReport, Measured, Tally,
};
pub use scene::{
    coverage_to_tensor, scenes_to_tensor, vocabulary, Colour, Dataset, Position, Scene, Shape,
    Size, SplitMix64, CAPTION_CLASSES, IMAGE_SIZE,
};

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
