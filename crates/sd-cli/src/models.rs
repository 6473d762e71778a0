//! `sd models`: what a models folder holds, with AUTOMATIC1111's titles (`name [shorthash]`,
//! the names that `--model`, `--vae`, `<lora:>` tags and infotext resolve).

use std::path::PathBuf;

use anyhow::Result;
use stable_diffusion::pipeline::{Asset, ModelStore};

use crate::UsageError;

/// Arguments of `sd models`.
#[derive(clap::Args, Debug)]
pub struct ModelsArgs {
    /// The models folder in AUTOMATIC1111's layout (models/Stable-diffusion, models/Lora, models/VAE, embeddings).
    #[arg(long, value_name = "DIR")]
    models_dir: PathBuf,
    /// Print JSON: one object per file with `kind`, `name`, `title` and `path`.
    #[arg(long)]
    json: bool,
}

/// Runs `sd models`.
pub fn run(args: ModelsArgs) -> Result<()> {
    let store =
        ModelStore::with_models_dir(&args.models_dir).map_err(|e| UsageError(e.to_string()))?;
    let mut rows = Vec::new();
    for (asset, kind) in [
        (Asset::Checkpoint, "checkpoint"),
        (Asset::Vae, "vae"),
        (Asset::Lora, "lora"),
        (Asset::Embedding, "embedding"),
    ] {
        for entry in store.list(asset) {
            // Checkpoints carry A1111's hash (computed once, then cached in ~/.cache/stable-diffusion-rs).
            let title = match asset {
                Asset::Checkpoint => entry.title()?,
                _ => entry.name.clone(),
            };
            rows.push((kind, entry.name.clone(), title, entry.path.clone()));
        }
    }
    if args.json {
        let list: Vec<serde_json::Value> = rows
            .iter()
            .map(|(kind, name, title, path)| {
                serde_json::json!({"kind": kind, "name": name, "title": title, "path": path})
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    for (kind, _, title, path) in &rows {
        outln!("{kind:<11} {title:<40} {}", path.display());
    }
    Ok(())
}
