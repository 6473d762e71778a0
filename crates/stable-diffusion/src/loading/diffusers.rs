//! Diffusers pipeline folders: `model_index.json`, one subfolder per component with its
//! `config.json` and safetensors weights (single, sharded, or an `fp16` variant).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;

use super::keys::key_map_for_class;
use super::read_json;
use super::weights::Weights;
use crate::{Error, Result};

/// The library and class that implement a component, as `model_index.json` lists them
/// (`"text_encoder": ["transformers", "CLIPTextModel"]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentClass {
    /// The Python library (`"diffusers"`, `"transformers"`).
    pub library: String,
    /// The class name (`"UNet2DConditionModel"`, `"CLIPTextModel"`).
    pub class: String,
}

/// The weight file names diffusers and transformers write, in the order they are tried.
const WEIGHT_NAMES: &[&str] = &[
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "model.safetensors.index.json",
];

/// The variant tried when none is asked for and no plain weights exist.
const FALLBACK_VARIANT: &str = "fp16";

/// A diffusers pipeline folder (what `save_pretrained` writes and the hub serves).
#[derive(Debug, Clone)]
pub struct DiffusersFolder {
    root: PathBuf,
    pipeline_class: String,
    components: BTreeMap<String, ComponentClass>,
    /// The plain values of `model_index.json` (`force_zeros_for_empty_prompt: true`, ...).
    options: BTreeMap<String, serde_json::Value>,
}

impl DiffusersFolder {
    /// Opens the folder at `path` and reads its `model_index.json`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let root = path.as_ref().to_path_buf();
        if !root.is_dir() {
            return Err(Error::NotFound {
                what: "model folder",
                path: root,
            });
        }
        let index_path = root.join("model_index.json");
        let index: BTreeMap<String, serde_json::Value> =
            read_json(&index_path, "model_index.json")?;
        let pipeline_class = match index.get("_class_name") {
            Some(serde_json::Value::String(name)) => name.clone(),
            _ => return Err(Error::config(&index_path, "no `_class_name` string")),
        };
        let mut components = BTreeMap::new();
        let mut options = BTreeMap::new();
        for (name, value) in &index {
            if name.starts_with('_') {
                continue;
            }
            // Components are `[library, class]`; `[null, null]` marks an absent optional one,
            // and plain values (`requires_safety_checker: true`) are pipeline options.
            if let Some([library, class]) = value.as_array().map(Vec::as_slice) {
                if let (Some(library), Some(class)) = (library.as_str(), class.as_str()) {
                    components.insert(
                        name.clone(),
                        ComponentClass {
                            library: library.to_string(),
                            class: class.to_string(),
                        },
                    );
                }
            } else {
                options.insert(name.clone(), value.clone());
            }
        }
        Ok(Self {
            root,
            pipeline_class,
            components,
            options,
        })
    }

    /// A boolean pipeline option of `model_index.json` (`force_zeros_for_empty_prompt`, ...).
    pub fn flag(&self, key: &str) -> Option<bool> {
        self.options.get(key).and_then(|v| v.as_bool())
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The pipeline class (`"StableDiffusionPipeline"`, `"StableDiffusionXLPipeline"`, ...).
    pub fn pipeline_class(&self) -> &str {
        &self.pipeline_class
    }

    /// The components present (not null) in `model_index.json`, by name.
    pub fn components(&self) -> &BTreeMap<String, ComponentClass> {
        &self.components
    }

    /// The class of `component`, if `model_index.json` lists it.
    pub fn component_class(&self, component: &str) -> Option<&ComponentClass> {
        self.components.get(component)
    }

    /// Whether `model_index.json` lists `component` (with a class, not null).
    pub fn has_component(&self, component: &str) -> bool {
        self.components.contains_key(component)
    }

    /// The subfolder of `component`, which must exist.
    pub fn component_dir(&self, component: &str) -> Result<PathBuf> {
        let dir = self.root.join(component);
        if dir.is_dir() {
            return Ok(dir);
        }
        if self.has_component(component) {
            return Err(Error::NotFound {
                what: "component folder",
                path: dir,
            });
        }
        let listed: Vec<&str> = self.components.keys().map(String::as_str).collect();
        Err(Error::config(
            self.root.join("model_index.json"),
            format!(
                "no component `{component}` (components: {})",
                listed.join(", ")
            ),
        ))
    }

    /// The config file of `component`: `config.json`, or `scheduler_config.json` for schedulers.
    pub fn config_path(&self, component: &str) -> Result<PathBuf> {
        let dir = self.component_dir(component)?;
        let names = ["config.json", "scheduler_config.json"];
        names
            .iter()
            .map(|name| dir.join(name))
            .find(|path| path.is_file())
            .ok_or_else(|| Error::NotFound {
                what: "config file (config.json or scheduler_config.json)",
                path: dir.join(names[0]),
            })
    }

    /// Deserializes `component`'s config file (unknown keys are ignored by the config types).
    pub fn config<T: DeserializeOwned>(&self, component: &str) -> Result<T> {
        read_json(&self.config_path(component)?, "config file")
    }

    /// The weights file of `component`: a `.safetensors` file or a sharded `.index.json`.
    ///
    /// With `variant` `Some("fp16")` only `*.fp16.*` files are accepted; with `None` the plain
    /// files are preferred and the `fp16` variant is used when it is all there is.
    pub fn weights_path(&self, component: &str, variant: Option<&str>) -> Result<PathBuf> {
        let dir = self.component_dir(component)?;
        let find = |variant: Option<&str>| {
            WEIGHT_NAMES
                .iter()
                .map(|name| dir.join(with_variant(name, variant)))
                .find(|path| path.is_file())
        };
        let found = match variant {
            Some(v) => find(Some(v)),
            None => find(None).or_else(|| find(Some(FALLBACK_VARIANT))),
        };
        if let Some(path) = found {
            return Ok(path);
        }
        for pickle in ["diffusion_pytorch_model.bin", "pytorch_model.bin"] {
            if dir.join(pickle).is_file() {
                return Err(Error::Unsupported {
                    what: "weights format",
                    value: dir.join(pickle).display().to_string(),
                    valid: vec!["safetensors".to_string()],
                });
            }
        }
        Err(Error::NotFound {
            what: match variant {
                Some(_) => {
                    "weights of the requested variant (also looked for model.*, *.index.json)"
                }
                None => {
                    "safetensors weights (also looked for model.*, *.index.json, fp16 variants)"
                }
            },
            path: dir.join(with_variant(WEIGHT_NAMES[0], variant)),
        })
    }

    /// Opens `component`'s weights, with the key map its class needs (see [`key_map_for_class`]).
    pub fn open_weights(&self, component: &str, variant: Option<&str>) -> Result<Weights> {
        let weights = Weights::open(self.weights_path(component, variant)?)?;
        Ok(match self.component_class(component) {
            Some(class) => weights.with_key_map(key_map_for_class(&class.class)),
            None => weights,
        })
    }

    /// A [`VarBuilder`] over `component`'s weights, converted to `dtype` on `device`.
    pub fn weights(
        &self,
        component: &str,
        variant: Option<&str>,
        dtype: DType,
        device: &Device,
    ) -> Result<VarBuilder<'static>> {
        Ok(self
            .open_weights(component, variant)?
            .into_var_builder(dtype, device))
    }
}

/// `diffusion_pytorch_model.safetensors` → `diffusion_pytorch_model.fp16.safetensors`, and
/// `model.safetensors.index.json` → `model.safetensors.index.fp16.json`, as diffusers and
/// transformers name variants (the variant goes before the last extension).
fn with_variant(name: &str, variant: Option<&str>) -> String {
    match (variant, name.rsplit_once('.')) {
        (Some(variant), Some((stem, ext))) => format!("{stem}.{variant}.{ext}"),
        _ => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::with_variant;

    #[test]
    fn variant_goes_before_the_last_extension() {
        assert_eq!(
            with_variant("diffusion_pytorch_model.safetensors", Some("fp16")),
            "diffusion_pytorch_model.fp16.safetensors"
        );
        assert_eq!(
            with_variant("model.safetensors.index.json", Some("fp16")),
            "model.safetensors.index.fp16.json"
        );
        assert_eq!(with_variant("model.safetensors", None), "model.safetensors");
    }
}
