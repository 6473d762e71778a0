//! Sanity limits on the sizes a model config may ask for. Published models stay far below
//! them; a config above one (a typo, a corrupt or hostile file) is refused with an error that
//! names the field before anything is built, instead of looping or allocating without bound.

use std::path::Path;

use crate::{Error, Result};

/// Most down blocks of a UNet or levels of a VAE (SD and SDXL have 3 or 4).
pub const MAX_BLOCKS: usize = 8;
/// Most layers of one kind in a block or model (resnets per block, transformer depth, CLIP
/// layers; SDXL's transformers are 10 deep, OpenCLIP bigG has 32 layers).
pub const MAX_LAYERS: usize = 64;
/// Widest channel count, hidden size or embedding width (SDXL's widest is 2816).
pub const MAX_WIDTH: usize = 1 << 16;
/// Most attention heads of one attention layer.
pub const MAX_HEADS: usize = 1024;
/// Largest convolution kernel side.
pub const MAX_KERNEL: usize = 15;
/// Most token positions of a text encoder (CLIP has 77).
pub const MAX_POSITIONS: usize = 4096;
/// Largest vocabulary of a text encoder (CLIP's has 49408 tokens).
pub const MAX_VOCAB: usize = 1 << 20;
/// Most training timesteps of a noise schedule (`num_train_timesteps`; SD's are 1000).
pub const MAX_TRAIN_TIMESTEPS: usize = 100_000;

/// `value` of config field `field` must be at most `max`; `path` names the config file.
pub(crate) fn at_most(path: &Path, field: &str, value: usize, max: usize) -> Result<()> {
    if value > max {
        return Err(Error::config(
            path,
            format!("`{field}` is {value}, more than the {max} this library accepts"),
        ));
    }
    Ok(())
}

/// Every value of `values` must be at most `max` (see [`at_most`]).
pub(crate) fn all_at_most(
    path: &Path,
    field: &str,
    values: impl IntoIterator<Item = usize>,
    max: usize,
) -> Result<()> {
    values
        .into_iter()
        .try_for_each(|value| at_most(path, field, value, max))
}
