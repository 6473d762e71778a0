//! A1111's settings that change what a request makes: the server's current values (GET/POST
//! `/sdapi/v1/options`) and a request's `override_settings`, read with A1111's keys.

use serde_json::{json, Map, Value};
use stable_diffusion::pipeline::{Asset, ModelStore, RngKind};

use crate::ApiError;

/// The settings a request starts from.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// `sd_model_checkpoint`: the checkpoint's name or title (`None`: the store's default).
    pub model: Option<String>,
    /// `sd_vae`: a VAE's name (`None`: "Automatic", the model's own).
    pub vae: Option<String>,
    /// `CLIP_stop_at_last_layers`: clip skip.
    pub clip_skip: usize,
    /// `randn_source`: "GPU" (A1111's default: torch's CUDA stream) or "CPU".
    pub rng: RngKind,
    /// `eta_noise_seed_delta`.
    pub eta_noise_seed_delta: u64,
    /// `eta_ddim`.
    pub eta_ddim: f64,
    /// `eta_ancestral`.
    pub eta_ancestral: f64,
    /// `s_churn`.
    pub s_churn: f64,
    /// `s_tmin`.
    pub s_tmin: f64,
    /// `s_tmax` (0: infinity).
    pub s_tmax: f64,
    /// `s_noise`.
    pub s_noise: f64,
    /// `live_previews_enable`: render previews during sampling.
    pub live_previews: bool,
    /// `show_progress_every_n_steps`: steps between previews (-1 or 0: none while sampling).
    pub preview_every: i64,
    /// `show_progress_type`: how previews are drawn.
    pub preview_type: PreviewType,
    /// Whether the server has a tiny VAE (`--preview-vae`), which `TAESD` previews need; set
    /// at startup, not a setting.
    pub taesd_available: bool,
}

/// How live previews are drawn (A1111's `show_progress_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreviewType {
    /// "Approx cheap": a linear map of the latents, an eighth of the final size.
    ApproxCheap,
    /// "TAESD": the tiny autoencoder's decode, full size.
    Taesd,
}

impl PreviewType {
    /// A1111's name for it.
    pub fn label(self) -> &'static str {
        match self {
            PreviewType::ApproxCheap => "Approx cheap",
            PreviewType::Taesd => "TAESD",
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            model: None,
            vae: None,
            clip_skip: 1,
            rng: RngKind::Cuda,
            eta_noise_seed_delta: 0,
            eta_ddim: 0.0,
            eta_ancestral: 1.0,
            s_churn: 0.0,
            s_tmin: 0.0,
            s_tmax: 0.0,
            s_noise: 1.0,
            live_previews: true,
            preview_every: 10,
            preview_type: PreviewType::ApproxCheap,
            taesd_available: false,
        }
    }
}

/// The number in `value` as f64, `field` named in the error.
fn number(field: &str, value: &Value) -> Result<f64, ApiError> {
    value
        .as_f64()
        .filter(|v| v.is_finite())
        .ok_or_else(|| ApiError::field(field, format!("{value} is not a number")))
}

/// The whole number ≥ `min` in `value`, `field` named in the error.
fn whole(field: &str, value: &Value, min: u64) -> Result<u64, ApiError> {
    value
        .as_u64()
        .filter(|v| *v >= min)
        .ok_or_else(|| ApiError::field(field, format!("{value} is not a whole number >= {min}")))
}

/// The text in `value`, `field` named in the error.
fn text<'a>(field: &str, value: &'a Value) -> Result<&'a str, ApiError> {
    value
        .as_str()
        .ok_or_else(|| ApiError::field(field, format!("{value} is not a string")))
}

impl Options {
    /// Steps between live previews during sampling and how they are drawn (`None`: off).
    pub fn previews(&self) -> Option<(usize, PreviewType)> {
        (self.live_previews && self.preview_every > 0)
            .then_some((self.preview_every as usize, self.preview_type))
    }

    /// Applies A1111 `settings` (unknown keys ignored, as A1111 keeps them without effect
    /// here); `prefix` goes before the key in error messages (`override_settings.`).
    pub fn apply(&mut self, settings: &Map<String, Value>, prefix: &str) -> Result<(), ApiError> {
        for (key, value) in settings {
            if value.is_null() {
                continue;
            }
            let field = format!("{prefix}{key}");
            let field = field.as_str();
            match key.as_str() {
                "sd_model_checkpoint" => {
                    let name = text(field, value)?.trim();
                    self.model = (!name.is_empty()).then(|| name.to_string());
                }
                "sd_vae" => {
                    let name = text(field, value)?.trim();
                    self.vae = match name {
                        "" | "Automatic" | "None" => None,
                        name => Some(name.to_string()),
                    };
                }
                "CLIP_stop_at_last_layers" => self.clip_skip = whole(field, value, 1)? as usize,
                "randn_source" => {
                    self.rng = text(field, value)?
                        .parse()
                        .map_err(|e| ApiError::field(field, e))?;
                }
                "eta_noise_seed_delta" => self.eta_noise_seed_delta = whole(field, value, 0)?,
                "eta_ddim" => self.eta_ddim = number(field, value)?,
                "eta_ancestral" => self.eta_ancestral = number(field, value)?,
                "s_churn" => self.s_churn = number(field, value)?,
                "s_tmin" => self.s_tmin = number(field, value)?,
                "s_tmax" => self.s_tmax = number(field, value)?,
                "s_noise" => self.s_noise = number(field, value)?,
                "live_previews_enable" => {
                    self.live_previews = value.as_bool().ok_or_else(|| {
                        ApiError::field(field, format!("{value} is not true or false"))
                    })?;
                }
                "show_progress_every_n_steps" => {
                    self.preview_every = value.as_i64().filter(|n| *n >= -1).ok_or_else(|| {
                        ApiError::field(field, format!("{value} is not a whole number >= -1"))
                    })?;
                }
                "show_progress_type" => {
                    self.preview_type = match text(field, value)? {
                        "Approx cheap" => PreviewType::ApproxCheap,
                        "TAESD" if self.taesd_available => PreviewType::Taesd,
                        "TAESD" => {
                            return Err(ApiError::field(
                                field,
                                "TAESD previews need the server started with --preview-vae FILE",
                            ))
                        }
                        kind => {
                            return Err(ApiError::field(
                                field,
                                format!("`{kind}` is not supported (Approx cheap and TAESD are)"),
                            ))
                        }
                    };
                }
                "samples_format" => {
                    let format = text(field, value)?;
                    if !format.eq_ignore_ascii_case("png") {
                        return Err(ApiError::field(
                            field,
                            format!("`{format}` is not supported (png is)"),
                        ));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The settings as GET `/sdapi/v1/options` shows them, the checkpoint by its A1111 title
    /// as `store` knows it.
    pub fn to_json(&self, store: &ModelStore) -> Value {
        let (title, hash) = checkpoint_title(store, self.model.as_deref());
        json!({
            "sd_model_checkpoint": title,
            "sd_checkpoint_hash": hash,
            "sd_vae": self.vae.clone().unwrap_or_else(|| "Automatic".into()),
            "CLIP_stop_at_last_layers": self.clip_skip,
            "randn_source": match self.rng {
                RngKind::Cpu => "CPU",
                RngKind::Cuda => "GPU",
            },
            "eta_noise_seed_delta": self.eta_noise_seed_delta,
            "eta_ddim": self.eta_ddim,
            "eta_ancestral": self.eta_ancestral,
            "s_churn": self.s_churn,
            "s_tmin": self.s_tmin,
            "s_tmax": self.s_tmax,
            "s_noise": self.s_noise,
            "samples_format": "png",
            "live_previews_enable": self.live_previews,
            "show_progress_every_n_steps": self.preview_every,
            "show_progress_type": self.preview_type.label(),
            "sd_checkpoints_limit": 1,
        })
    }
}

/// The A1111 title (`name [hash]`) and the full hash of the checkpoint `name` stands for (the
/// store's default when `None`), as far as they are known.
pub fn checkpoint_title(
    store: &ModelStore,
    name: Option<&str>,
) -> (Option<String>, Option<String>) {
    let Ok(path) = store.checkpoint(name) else {
        return (name.map(String::from), None);
    };
    let entry = store
        .list(Asset::Checkpoint)
        .into_iter()
        .find(|e| e.path == path)
        .cloned();
    let title = match &entry {
        Some(entry) => entry.title().unwrap_or_else(|_| entry.name.clone()),
        None => stable_diffusion::pipeline::asset_name(&path),
    };
    let hash = stable_diffusion::loading::model_hash(&path).ok().flatten();
    (Some(title), hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_read_with_a1111_keys() {
        let mut options = Options::default();
        let settings = json!({
            "CLIP_stop_at_last_layers": 2,
            "randn_source": "CPU",
            "sd_vae": "Automatic",
            "eta_noise_seed_delta": 31337,
            "something_else": [1],
        });
        options.apply(settings.as_object().unwrap(), "").unwrap();
        assert_eq!(options.clip_skip, 2);
        assert_eq!(options.rng, RngKind::Cpu);
        assert_eq!(options.vae, None);
        assert_eq!(options.eta_noise_seed_delta, 31337);
    }

    #[test]
    fn bad_settings_name_their_key() {
        for (settings, key) in [
            (
                json!({"CLIP_stop_at_last_layers": 0}),
                "CLIP_stop_at_last_layers",
            ),
            (json!({"randn_source": "quantum"}), "randn_source"),
            (json!({"samples_format": "jpg"}), "samples_format"),
            (json!({"sd_model_checkpoint": 5}), "sd_model_checkpoint"),
        ] {
            let err = Options::default()
                .apply(settings.as_object().unwrap(), "override_settings.")
                .unwrap_err();
            assert!(
                err.message.contains(&format!("`override_settings.{key}`")),
                "{}",
                err.message
            );
        }
    }
}
