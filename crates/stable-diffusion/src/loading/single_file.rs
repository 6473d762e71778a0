//! Single-file checkpoints in the original LDM / AUTOMATIC1111 / sgm layout (`.safetensors` or
//! `.ckpt`): every component of a model in one file, served under diffusers' names so that the
//! models load it exactly as they load a diffusers folder.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::ckpt::CkptFile;
use super::keys::KeyMap;
use super::ldm;
use super::store::TensorStore;
use super::weights::{SafetensorsFile, Weights};
use super::DiffusersFolder;
use crate::model_family::{detect_single_file, DetectOptions, ModelDescription};
use crate::text_encoder::ClipTextModel;
use crate::unet::UNet2DConditionModel;
use crate::vae::AutoencoderKL;
use crate::{Error, Result};

/// How a text encoder is stored in a single file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextEncoderLayout {
    /// transformers' CLIP names under `prefix` (`cond_stage_model.transformer.`), with or
    /// without `text_model.`.
    Clip {
        /// The prefix before the transformers names.
        prefix: String,
    },
    /// OpenCLIP's names under `prefix` (`cond_stage_model.model.`): fused `in_proj`,
    /// `resblocks`, transposed `text_projection`.
    OpenClip {
        /// The prefix before the OpenCLIP names.
        prefix: String,
        /// The width (splits the fused q/k/v rows).
        hidden: usize,
        /// How many `resblocks` the file holds.
        layers: usize,
    },
}

/// A single-file checkpoint, its family detected, its tensors served per component.
#[derive(Debug, Clone)]
pub struct SingleFileCheckpoint {
    path: PathBuf,
    /// The whole file, no key map.
    raw: Weights,
    /// What the model is (family, prediction, inpainting: the detector's verdict).
    description: ModelDescription,
    /// Why the prediction type was chosen (for `sd inspect`).
    prediction_reason: String,
    /// Whether the prediction type is only a guess that loading replaces with A1111's test.
    needs_probe: bool,
    /// `num_res_blocks` of the LDM UNet.
    unet_layers_per_block: usize,
    /// Up/down blocks of the LDM VAE.
    vae_blocks: usize,
    /// The text encoders found, by diffusers component name.
    text_layouts: BTreeMap<String, TextEncoderLayout>,
    /// State-dict entries that were not tensors (`.ckpt` only).
    non_tensor_entries: usize,
}

/// One component's check against the tensors its model asks for.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ComponentReport {
    /// The diffusers component name (`unet`, `vae`, `text_encoder`, `text_encoder_2`).
    pub component: String,
    /// The number of parameters (elements) the model asks for.
    pub parameters: usize,
    /// The number of tensors the model asks for.
    pub tensors: usize,
    /// Requested (diffusers) names that the file does not have.
    pub missing: Vec<String>,
    /// Requested names whose stored shape is wrong: (name, expected, found).
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
}

/// What [`SingleFileCheckpoint::report`] found: per component, and the stored tensors no
/// component reads.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LoadReport {
    /// One report per component, in load order.
    pub components: Vec<ComponentReport>,
    /// Stored tensors no model reads that real checkpoints are known to carry, with why.
    pub known_unused: Vec<(String, String)>,
    /// Stored tensors no model reads, unexpected.
    pub unused: Vec<String>,
    /// Stored element types with their tensor counts (`"F16" -> 1131`).
    pub dtypes: BTreeMap<String, usize>,
    /// State-dict entries that were not tensors (skipped).
    pub non_tensor_entries: usize,
}

impl LoadReport {
    /// Whether every component found every tensor with the right shape.
    pub fn is_complete(&self) -> bool {
        self.components
            .iter()
            .all(|c| c.missing.is_empty() && c.mismatched.is_empty())
    }
}

/// Opens one file of tensors by its extension: a pickle checkpoint (`.ckpt`, `.pt`, `.pth`,
/// `.bin`, through the restricted reader) or else safetensors. Also returns how many non-tensor
/// entries the pickle held (0 for safetensors).
pub fn open_tensor_file(path: &Path) -> Result<(Arc<dyn TensorStore>, usize)> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    Ok(match ext.as_str() {
        "ckpt" | "pt" | "pth" | "bin" => {
            let file = CkptFile::open(path)?;
            let skipped = file.skipped_entries();
            (Arc::new(file), skipped)
        }
        _ => (Arc::new(SafetensorsFile::open(path)?), 0),
    })
}

/// Opens a standalone VAE file and serves it under diffusers' `AutoencoderKL` names.
///
/// Accepts the files users download for A1111 (`vae-ft-mse-840000-ema-pruned.safetensors`,
/// `sdxl_vae.safetensors`, `.ckpt`/`.pt` with or without a `state_dict` wrapper, LDM names), a
/// bare diffusers `diffusion_pytorch_model.safetensors`, and the VAE inside a full single-file
/// checkpoint. Returns the weights and the number of decoder blocks they hold.
pub fn open_vae_file(path: &Path) -> Result<(Weights, usize)> {
    let (store, _) = open_tensor_file(path)?;
    let raw = Weights::from_stores(vec![store])?;
    if let Some(blocks) = block_count(&raw, &[""], "decoder.up_blocks.") {
        return Ok((raw, blocks));
    }
    let Some(blocks) = block_count(&raw, ldm::VAE_FILE_PREFIXES, "decoder.up.") else {
        let mut names = raw.names();
        names.sort_unstable();
        names.truncate(5);
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            msg: format!(
                "not a VAE: no decoder tensors under diffusers names (`decoder.up_blocks.*`) or \
                 LDM names (`decoder.up.*`, optionally under `first_stage_model.`); it starts with {}",
                if names.is_empty() {
                    "no tensors at all".to_string()
                } else {
                    names.join(", ")
                }
            ),
        });
    };
    let prefixes = ldm::VAE_FILE_PREFIXES
        .iter()
        .map(|p| p.to_string())
        .collect();
    let map = ldm::prefixed_map(prefixes, move |n| ldm::vae_sources(n, blocks));
    Ok((raw.with_key_map(map), blocks))
}

impl SingleFileCheckpoint {
    /// Opens `path` (`.safetensors`, or `.ckpt`/`.pt`/`.pth`) and detects its family.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, &DetectOptions::default())
    }

    /// Opens `path` with detection overrides.
    pub fn open_with(path: impl AsRef<Path>, options: &DetectOptions) -> Result<Self> {
        let (store, non_tensor) = open_tensor_file(path.as_ref())?;
        let mut checkpoint = Self::from_store(store, options)?;
        checkpoint.non_tensor_entries = non_tensor;
        Ok(checkpoint)
    }

    /// Serves an already opened store (a file, or a shape-only listing in tests).
    pub fn from_store(store: Arc<dyn TensorStore>, options: &DetectOptions) -> Result<Self> {
        let path = store.path().to_path_buf();
        let raw = Weights::from_stores(vec![store])?;
        let detected = detect_single_file(&raw, &path, options)?;
        let mut description =
            ModelDescription::preset(detected.family, detected.inpainting, detected.prediction);

        let unet_layers_per_block = unet_layers_per_block(&raw);
        let vae_blocks = vae_blocks(&raw);
        let mut text_layouts = BTreeMap::new();
        for text in &mut description.text_encoders {
            let layout = text_layout(&raw, detected.family, &text.component);
            if let Some(TextEncoderLayout::OpenClip { layers, .. }) = &layout {
                if *layers != text.config.num_hidden_layers && *layers > 0 {
                    text.stored_layers = Some(*layers);
                }
            }
            if let Some(layout) = layout {
                text_layouts.insert(text.component.clone(), layout);
            }
        }
        Ok(Self {
            path,
            raw,
            prediction_reason: detected.prediction_reason,
            needs_probe: detected.needs_probe,
            description,
            unet_layers_per_block,
            vae_blocks,
            text_layouts,
            non_tensor_entries: 0,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the model is (full-size presets for its family).
    pub fn describe(&self) -> &ModelDescription {
        &self.description
    }

    /// Why the prediction type was chosen.
    pub fn prediction_reason(&self) -> &str {
        &self.prediction_reason
    }

    /// Whether the prediction type is only a guess from the file name (an SD 2.x file with no
    /// override or yaml): loading runs AUTOMATIC1111's test on the UNet instead.
    pub fn needs_prediction_probe(&self) -> bool {
        self.needs_probe
    }

    /// Every stored tensor name, sorted.
    pub fn tensor_names(&self) -> Vec<&str> {
        self.raw.names()
    }

    /// The whole file under its own names (no key map).
    pub fn raw_weights(&self) -> &Weights {
        &self.raw
    }

    /// How the text encoder of diffusers component `component` is stored, if present.
    pub fn text_encoder_layout(&self, component: &str) -> Option<&TextEncoderLayout> {
        self.text_layouts.get(component)
    }

    /// The key map that serves diffusers component `component` (`unet`, `vae`,
    /// `text_encoder`, `text_encoder_2`) from this file's names.
    pub fn key_map(&self, component: &str) -> Result<KeyMap> {
        match component {
            "unet" => {
                let lpb = self.unet_layers_per_block;
                Ok(ldm::prefixed_map(vec![ldm::UNET_PREFIX.into()], move |n| {
                    ldm::unet_sources(n, lpb)
                }))
            }
            "vae" => {
                let blocks = self.vae_blocks;
                let prefixes = ldm::VAE_PREFIXES.iter().map(|p| p.to_string()).collect();
                Ok(ldm::prefixed_map(prefixes, move |n| {
                    ldm::vae_sources(n, blocks)
                }))
            }
            other => match self.text_layouts.get(other) {
                Some(TextEncoderLayout::Clip { prefix }) => {
                    Ok(ldm::prefixed_map(vec![prefix.clone()], ldm::clip_sources))
                }
                Some(TextEncoderLayout::OpenClip { prefix, hidden, .. }) => {
                    let hidden = *hidden;
                    Ok(ldm::prefixed_map(vec![prefix.clone()], move |n| {
                        ldm::open_clip_sources(n, hidden)
                    }))
                }
                None => {
                    let mut components = vec!["unet".to_string(), "vae".to_string()];
                    components.extend(self.text_layouts.keys().cloned());
                    Err(Error::Checkpoint {
                        path: self.path.clone(),
                        msg: format!(
                            "no component `{other}` in this {} file (components: {})",
                            self.description.family.name(),
                            components.join(", ")
                        ),
                    })
                }
            },
        }
    }

    /// The weights of diffusers component `component`, under diffusers' names.
    pub fn component_weights(&self, component: &str) -> Result<Weights> {
        Ok(self.raw.clone().with_key_map(self.key_map(component)?))
    }

    /// A [`VarBuilder`] over `component`'s weights, converted to `dtype` on `device`: what
    /// [`DiffusersFolder::weights`] gives for a folder.
    pub fn weights(
        &self,
        component: &str,
        dtype: DType,
        device: &Device,
    ) -> Result<VarBuilder<'static>> {
        Ok(self
            .component_weights(component)?
            .into_var_builder(dtype, device))
    }

    /// The UNet's weights.
    pub fn unet_weights(&self, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
        self.weights("unet", dtype, device)
    }

    /// The VAE's weights.
    pub fn vae_weights(&self, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
        self.weights("vae", dtype, device)
    }

    /// The weights of text encoder `index` (in [`ModelDescription::text_encoders`] order).
    pub fn text_encoder_weights(
        &self,
        index: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<VarBuilder<'static>> {
        let Some(text) = self.description.text_encoders.get(index) else {
            return Err(Error::invalid(
                "text encoder index",
                format!(
                    "{index}, but the model has {} text encoder(s)",
                    self.description.text_encoders.len()
                ),
            ));
        };
        self.weights(&text.component.clone(), dtype, device)
    }

    /// Loads one stored tensor by its own (LDM) name.
    pub fn load_raw(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        self.raw.load(name, dtype, device)
    }

    /// Checks every component of the description against the file: parameter counts,
    /// missing and misshaped tensors, and the stored tensors nothing reads. No weights are
    /// read (models are built from shapes only).
    pub fn report(&self) -> Result<LoadReport> {
        let mut components = Vec::new();
        let mut used = BTreeSet::new();
        let d = &self.description;
        let unet = self.component_weights("unet")?;
        components.push(check_component("unet", &unet, &mut used, |vb| {
            UNet2DConditionModel::new(vb, &d.unet).map(drop)
        })?);
        let vae = self.component_weights("vae")?;
        components.push(check_component("vae", &vae, &mut used, |vb| {
            AutoencoderKL::new(vb, &d.vae).map(drop)
        })?);
        for text in &d.text_encoders {
            let weights = match self.component_weights(&text.component) {
                Ok(w) => w,
                Err(_) => {
                    components.push(ComponentReport {
                        component: text.component.clone(),
                        missing: vec!["(the whole text encoder)".into()],
                        ..Default::default()
                    });
                    continue;
                }
            };
            components.push(check_component(
                &text.component,
                &weights,
                &mut used,
                |vb| ClipTextModel::from_class(vb, &text.config, &text.class).map(drop),
            )?);
        }
        let (known_unused, unused) = unused_tensors(&self.raw, &used);
        Ok(LoadReport {
            components,
            known_unused,
            unused,
            dtypes: stored_dtypes(&self.raw),
            non_tensor_entries: self.non_tensor_entries,
        })
    }
}

/// Builds a model from shapes only through `weights` and compares what it asks for with
/// what is stored; the stored names it reads are added to `used`.
pub fn check_component(
    component: &str,
    weights: &Weights,
    used: &mut BTreeSet<String>,
    build: impl FnOnce(VarBuilder) -> Result<()>,
) -> Result<ComponentReport> {
    let requested = super::record_shapes(build)?;
    let mut report = ComponentReport {
        component: component.to_string(),
        tensors: requested.len(),
        ..Default::default()
    };
    for (name, shape) in &requested {
        report.parameters += shape.iter().product::<usize>();
        let Some(source) = weights.source_of(name) else {
            report.missing.push(name.clone());
            continue;
        };
        let found = weights.shape(name).expect("resolved names have shapes");
        let same_count = found.iter().product::<usize>() == shape.iter().product::<usize>();
        if &found != shape && !(source.reshape && same_count) {
            report
                .mismatched
                .push((name.clone(), shape.clone(), found.clone()));
        }
        used.insert(source.name);
    }
    Ok(report)
}

/// The stored names not in `used`, split into known extras (with reasons) and the rest.
fn unused_tensors(raw: &Weights, used: &BTreeSet<String>) -> (Vec<(String, String)>, Vec<String>) {
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for name in raw.names() {
        if used.contains(name) {
            continue;
        }
        match ldm::known_unused_reason(name) {
            Some(reason) => known.push((name.to_string(), reason.to_string())),
            None => unknown.push(name.to_string()),
        }
    }
    (known, unknown)
}

fn stored_dtypes(raw: &Weights) -> BTreeMap<String, usize> {
    let mut dtypes = BTreeMap::new();
    for name in raw.names() {
        if let Some(dtype) = raw.stored_dtype(name) {
            *dtypes.entry(dtype).or_insert(0) += 1;
        }
    }
    dtypes
}

/// Checks a diffusers folder's components like [`SingleFileCheckpoint::report`] (unused
/// tensors are those of the component files that no model reads).
pub fn report_folder(
    folder: &DiffusersFolder,
    description: &ModelDescription,
) -> Result<LoadReport> {
    let mut report = LoadReport::default();
    let mut check = |component: &str, build: &dyn Fn(VarBuilder) -> Result<()>| -> Result<()> {
        let weights = folder.open_weights(component, None)?;
        let mut used = BTreeSet::new();
        report
            .components
            .push(check_component(component, &weights, &mut used, build)?);
        let (known, unknown) = unused_tensors(&weights, &used);
        report.known_unused.extend(known);
        report
            .unused
            .extend(unknown.into_iter().map(|n| format!("{component}/{n}")));
        for (dtype, count) in stored_dtypes(&weights) {
            *report.dtypes.entry(dtype).or_insert(0) += count;
        }
        Ok(())
    };
    check("unet", &|vb| {
        UNet2DConditionModel::new(vb, &description.unet).map(drop)
    })?;
    check("vae", &|vb| {
        AutoencoderKL::new(vb, &description.vae).map(drop)
    })?;
    for text in &description.text_encoders {
        check(&text.component, &|vb| {
            ClipTextModel::from_class(vb, &text.config, &text.class).map(drop)
        })?;
    }
    Ok(report)
}

/// LDM's `num_res_blocks`: the first downsampler sits at `input_blocks.{n + 1}.0.op`.
fn unet_layers_per_block(raw: &Weights) -> usize {
    let prefix = format!("{}input_blocks.", ldm::UNET_PREFIX);
    raw.names()
        .into_iter()
        .filter_map(|n| {
            let rest = n.strip_prefix(&prefix)?;
            let (index, rest) = rest.split_once('.')?;
            rest.starts_with("0.op.")
                .then(|| index.parse::<usize>().ok())
                .flatten()
        })
        .min()
        .map_or(2, |first| first.saturating_sub(1).max(1))
}

/// The number of VAE decoder levels (`decoder.up.N`), 4 when none is found.
fn vae_blocks(raw: &Weights) -> usize {
    block_count(raw, ldm::VAE_PREFIXES, "decoder.up.").unwrap_or(4)
}

/// How many numbered blocks `{prefix}{block}N.…` the stored names hold (the largest N + 1),
/// with `prefix` any of `prefixes`; `None` when there are none.
fn block_count(raw: &Weights, prefixes: &[&str], block: &str) -> Option<usize> {
    raw.names()
        .into_iter()
        .filter_map(|n| {
            let rest = prefixes
                .iter()
                .find_map(|p| n.strip_prefix(p)?.strip_prefix(block))?;
            rest.split_once('.')?.0.parse::<usize>().ok()
        })
        .max()
        .map(|max| max + 1)
}

/// Finds how diffusers component `component` of a `family` model is stored.
fn text_layout(
    raw: &Weights,
    family: crate::model_family::ModelFamily,
    component: &str,
) -> Option<TextEncoderLayout> {
    let (_, _, prefix, open_clip) = *ldm::TEXT_ENCODER_PREFIXES
        .iter()
        .find(|(f, c, _, _)| *f == family && *c == component)?;
    let names = raw.names();
    if !names.iter().any(|n| n.starts_with(prefix)) {
        return None;
    }
    if !open_clip {
        return Some(TextEncoderLayout::Clip {
            prefix: prefix.to_string(),
        });
    }
    let hidden = raw
        .stored_shape(&format!("{prefix}token_embedding.weight"))
        .and_then(|s| s.get(1).copied())
        .or_else(|| {
            raw.stored_shape(&format!("{prefix}positional_embedding"))
                .and_then(|s| s.get(1).copied())
        })?;
    let block_prefix = format!("{prefix}transformer.resblocks.");
    let layers = names
        .iter()
        .filter_map(|n| {
            n.strip_prefix(&block_prefix)?
                .split_once('.')?
                .0
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |m| m + 1);
    Some(TextEncoderLayout::OpenClip {
        prefix: prefix.to_string(),
        hidden,
        layers,
    })
}
