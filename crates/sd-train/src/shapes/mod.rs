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

pub use stable_diffusion::{default_model_path, DEFAULT_MODEL_ENV};
