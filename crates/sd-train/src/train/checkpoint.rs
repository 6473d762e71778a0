//! Training checkpoints: weights, optimizer moments and EMA weights in one safetensors file,
//! the step and settings in a JSON file beside it. Both are written atomically.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::optim::{AdamW, Ema};
use stable_diffusion::image::write_atomically;
use stable_diffusion::{Error, Result};

/// What a checkpoint's JSON file records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointInfo {
    /// The stage (`vae` or `diffusion`).
    pub stage: String,
    /// Finished optimizer steps.
    pub step: usize,
    /// Steps the stage runs in all.
    pub total_steps: usize,
    /// The run's seed.
    pub seed: u64,
    /// The latent scaling factor (diffusion stage only).
    pub scaling_factor: Option<f64>,
    /// The mean loss of the last steps before the checkpoint.
    pub recent_loss: Option<f64>,
}

/// The two files of the checkpoint named `stem` in `dir`.
pub fn checkpoint_paths(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{stem}.safetensors")),
        dir.join(format!("{stem}.json")),
    )
}

/// Saves variables, optimizer and EMA state under `dir/<stem>.{safetensors,json}`.
pub fn save(
    dir: &Path,
    stem: &str,
    names: &[String],
    vars: &[Var],
    adam: &AdamW,
    ema: &Ema,
    info: &CheckpointInfo,
) -> Result<()> {
    let (tensors_path, info_path) = checkpoint_paths(dir, stem);
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        tensors.insert(format!("param/{name}"), vars[i].as_tensor().detach());
        tensors.insert(format!("adam_m/{name}"), adam.m[i].clone());
        tensors.insert(format!("adam_v/{name}"), adam.v[i].clone());
        tensors.insert(format!("ema/{name}"), ema.weights[i].clone());
    }
    tensors.insert(
        "adam_t".to_string(),
        Tensor::new(&[adam.t as i64], &Device::Cpu)?,
    );
    let bytes = safetensors::serialize(&tensors, None)
        .map_err(|e| Error::invalid("checkpoint", e.to_string()))?;
    write_atomically(&tensors_path, &bytes)?;
    let json = serde_json::to_string_pretty(info)
        .map_err(|e| Error::invalid("checkpoint", e.to_string()))?;
    write_atomically(&info_path, json.as_bytes())
}

/// Reads a checkpoint's JSON file.
pub fn read_info(path: &Path) -> Result<CheckpointInfo> {
    stable_diffusion::loading::read_json(path, "training checkpoint")
}

/// Loads the checkpoint at `tensors_path` into `vars`, `adam` and `ema`, checking that it holds
/// exactly these variables with these shapes.
pub fn load(
    tensors_path: &Path,
    names: &[String],
    vars: &[Var],
    adam: &mut AdamW,
    ema: &mut Ema,
) -> Result<()> {
    let tensors = candle_core::safetensors::load(tensors_path, &Device::Cpu).map_err(|e| {
        Error::invalid(
            "resume checkpoint",
            format!("{}: {e}", tensors_path.display()),
        )
    })?;
    let mismatch = |msg: String| {
        Err(Error::invalid(
            "resume checkpoint",
            format!("{} does not fit this model: {msg}", tensors_path.display()),
        ))
    };
    let expected = 4 * names.len() + 1;
    if tensors.len() != expected {
        return mismatch(format!(
            "it holds {} tensors, this model needs {expected}",
            tensors.len()
        ));
    }
    for (i, name) in names.iter().enumerate() {
        let want = vars[i].as_tensor().dims().to_vec();
        for prefix in ["param", "adam_m", "adam_v", "ema"] {
            let key = format!("{prefix}/{name}");
            match tensors.get(&key) {
                None => return mismatch(format!("tensor `{key}` is missing")),
                Some(t) if t.dims() != want.as_slice() => {
                    return mismatch(format!(
                        "tensor `{key}` has shape {:?}, the model needs {want:?}",
                        t.dims()
                    ))
                }
                Some(_) => {}
            }
        }
    }
    for (i, name) in names.iter().enumerate() {
        let get = |prefix: &str| -> Result<Tensor> {
            Ok(tensors[&format!("{prefix}/{name}")].to_dtype(DType::F32)?)
        };
        vars[i].set(&get("param")?)?;
        adam.m[i] = get("adam_m")?;
        adam.v[i] = get("adam_v")?;
        ema.weights[i] = get("ema")?;
    }
    let t = tensors
        .get("adam_t")
        .map(|t| t.to_vec1::<i64>())
        .transpose()?
        .and_then(|v| v.first().copied())
        .unwrap_or(0);
    adam.t = t.max(0) as usize;
    Ok(())
}
