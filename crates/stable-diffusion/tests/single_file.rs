//! Single-file checkpoints: the LDM key tables against full-size manifests of real files,
//! tiny single files (`.safetensors` and `.ckpt`) against the same weights as a diffusers
//! folder or as diffusers' own converters make them, family detection, and bad input.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use stable_diffusion::loading::{
    record_shapes, CkptFile, DiffusersFolder, SafetensorsFile, ShapeOnlyStore,
    SingleFileCheckpoint, TensorStore, TextEncoderLayout, Weights,
};
use stable_diffusion::model_family::{DetectOptions, ModelDescription, ModelFamily};
use stable_diffusion::scheduler::PredictionType;
use stable_diffusion::text_encoder::{ClipTextConfig, ClipTextModel};
use stable_diffusion::unet::{UNet2DConditionModel, UNetConfig};
use stable_diffusion::vae::{AutoencoderKL, VaeConfig};
use stable_diffusion::Error;

/// A scratch folder that is removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sd-rs-single-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open_manifest(name: &str) -> SingleFileCheckpoint {
    let store = ShapeOnlyStore::from_manifest(common::fixture(&format!("manifests/{name}.json")))
        .expect("manifest reads");
    SingleFileCheckpoint::from_store(Arc::new(store), &DetectOptions::default())
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Every tensor of a full-size single file maps to what the full-size models ask for, with
/// none missing, none misshaped and none left over beyond the documented extras.
fn assert_manifest_maps_completely(
    name: &str,
    family: ModelFamily,
    inpainting: bool,
    prediction: PredictionType,
    components: &[&str],
) {
    let checkpoint = open_manifest(name);
    let description = checkpoint.describe();
    assert_eq!(description.family, family, "{name}: family");
    assert_eq!(description.inpainting, inpainting, "{name}: inpainting");
    assert_eq!(description.prediction, prediction, "{name}: prediction");
    let report = checkpoint.report().unwrap();
    let found: Vec<&str> = report
        .components
        .iter()
        .map(|c| c.component.as_str())
        .collect();
    assert_eq!(found, components, "{name}: components");
    for component in &report.components {
        assert!(
            component.missing.is_empty(),
            "{name}/{}: {} missing, e.g. {:?}",
            component.component,
            component.missing.len(),
            &component.missing[..component.missing.len().min(5)]
        );
        assert!(
            component.mismatched.is_empty(),
            "{name}/{}: misshaped {:?}",
            component.component,
            &component.mismatched[..component.mismatched.len().min(5)]
        );
        assert!(component.parameters > 0);
    }
    assert!(
        report.unused.is_empty(),
        "{name}: {} stored tensors left over, e.g. {:?}",
        report.unused.len(),
        &report.unused[..report.unused.len().min(8)]
    );
    assert!(
        !report.known_unused.is_empty(),
        "{name}: the manifest's extras should be reported"
    );
    // Every stored tensor is accounted for exactly once.
    let used: usize = report.components.iter().map(|c| c.tensors).sum();
    let stored = checkpoint.tensor_names().len();
    assert!(
        used + report.known_unused.len() >= stored,
        "{name}: {used} used + {} known unused < {stored} stored",
        report.known_unused.len()
    );
}

#[test]
fn sd15_single_file_manifest_maps_completely() {
    assert_manifest_maps_completely(
        "ldm_sd15",
        ModelFamily::Sd1,
        false,
        PredictionType::Epsilon,
        &["unet", "vae", "text_encoder"],
    );
}

#[test]
fn sd15_inpainting_single_file_manifest_maps_completely() {
    assert_manifest_maps_completely(
        "ldm_sd15_inpaint",
        ModelFamily::Sd1,
        true,
        PredictionType::Epsilon,
        &["unet", "vae", "text_encoder"],
    );
}

#[test]
fn sd21_v_single_file_manifest_maps_completely() {
    assert_manifest_maps_completely(
        "ldm_sd21_v",
        ModelFamily::Sd2,
        false,
        PredictionType::VPrediction,
        &["unet", "vae", "text_encoder"],
    );
    // All 24 stored OpenCLIP layers are loadable: a 24-layer model finds every tensor.
    let checkpoint = open_manifest("ldm_sd21_v");
    let text = checkpoint.describe().text_encoder("text_encoder").unwrap();
    assert_eq!(text.config.num_hidden_layers, 23);
    assert_eq!(text.stored_layers, Some(24));
    let weights = checkpoint.component_weights("text_encoder").unwrap();
    let config = ClipTextConfig {
        num_hidden_layers: 24,
        ..ClipTextConfig::sd21()
    };
    let requested = record_shapes(|vb| ClipTextModel::new(vb, &config)).unwrap();
    for (name, shape) in &requested {
        assert_eq!(weights.shape(name).as_ref(), Some(shape), "{name}");
    }
}

#[test]
fn sdxl_base_single_file_manifest_maps_completely() {
    assert_manifest_maps_completely(
        "ldm_sdxl_base",
        ModelFamily::Sdxl,
        false,
        PredictionType::Epsilon,
        &["unet", "vae", "text_encoder", "text_encoder_2"],
    );
}

#[test]
fn sdxl_refiner_single_file_manifest_maps_completely() {
    assert_manifest_maps_completely(
        "ldm_sdxl_refiner",
        ModelFamily::SdxlRefiner,
        false,
        PredictionType::Epsilon,
        &["unet", "vae", "text_encoder_2"],
    );
}

#[test]
fn full_size_descriptions_use_the_published_presets() {
    let sdxl = open_manifest("ldm_sdxl_base");
    let d = sdxl.describe();
    assert_eq!(d.unet, UNetConfig::sdxl_base());
    assert_eq!(d.vae, VaeConfig::sdxl());
    assert_eq!(d.native_size(), 1024);
    assert_eq!(
        d.scheduler.class_name.as_deref(),
        Some("EulerDiscreteScheduler")
    );
    assert_eq!(d.scheduler.timestep_spacing.as_deref(), Some("leading"));
    assert_eq!(d.scheduler.steps_offset, Some(1));
    assert_eq!(d.text_encoders[1].class, "CLIPTextModelWithProjection");
    let sd2 = open_manifest("ldm_sd21_v");
    assert_eq!(sd2.describe().native_size(), 768);
    assert_eq!(
        sd2.describe().scheduler.prediction_type.as_deref(),
        Some("v_prediction")
    );
    let inpaint = open_manifest("ldm_sd15_inpaint");
    assert_eq!(inpaint.describe().unet, UNetConfig::sd15_inpaint());
}

/// Loads every tensor a model asks for from both weight sources and asserts they are equal.
fn assert_same_weights(
    what: &str,
    expected: &Weights,
    actual: &Weights,
    requested: &std::collections::BTreeMap<String, Vec<usize>>,
) -> usize {
    let cpu = Device::Cpu;
    for (name, shape) in requested {
        let want = expected
            .load_shaped(name, shape, DType::F32, &cpu)
            .unwrap_or_else(|e| panic!("{what}: reference {name}: {e}"));
        let got = actual
            .load_shaped(name, shape, DType::F32, &cpu)
            .unwrap_or_else(|e| panic!("{what}: single file {name}: {e}"));
        let diff = common::max_abs_diff(&got, &want);
        assert_eq!(diff, 0.0, "{what}: {name} differs by {diff}");
    }
    requested.len()
}

#[test]
fn tiny_sd15_single_file_holds_the_folders_weights_exactly() {
    let folder = DiffusersFolder::open(common::fixture("models/tiny-sd15")).unwrap();
    let single =
        SingleFileCheckpoint::open(common::fixture("single_file/tiny_sd15.safetensors")).unwrap();
    assert_eq!(single.describe().family, ModelFamily::Sd1);
    assert_eq!(single.describe().prediction, PredictionType::Epsilon);
    assert!(!single.describe().inpainting);

    let unet_config: UNetConfig = folder.config("unet").unwrap();
    let requested = record_shapes(|vb| UNet2DConditionModel::new(vb, &unet_config)).unwrap();
    let n = assert_same_weights(
        "unet",
        &folder.open_weights("unet", None).unwrap(),
        &single.component_weights("unet").unwrap(),
        &requested,
    );
    assert!(n > 100);

    let vae_config: VaeConfig = folder.config("vae").unwrap();
    let requested = record_shapes(|vb| AutoencoderKL::new(vb, &vae_config)).unwrap();
    assert_same_weights(
        "vae",
        &folder.open_weights("vae", None).unwrap(),
        &single.component_weights("vae").unwrap(),
        &requested,
    );

    let text_config: ClipTextConfig = folder.config("text_encoder").unwrap();
    let requested = record_shapes(|vb| ClipTextModel::new(vb, &text_config)).unwrap();
    assert_same_weights(
        "text_encoder",
        &folder.open_weights("text_encoder", None).unwrap(),
        &single.component_weights("text_encoder").unwrap(),
        &requested,
    );

    // The models build from the single file's VarBuilders as they do from the folder's.
    let cpu = Device::Cpu;
    UNet2DConditionModel::new(single.unet_weights(DType::F32, &cpu).unwrap(), &unet_config)
        .unwrap();
    AutoencoderKL::new(single.vae_weights(DType::F32, &cpu).unwrap(), &vae_config).unwrap();
    ClipTextModel::new(
        single.text_encoder_weights(0, DType::F32, &cpu).unwrap(),
        &text_config,
    )
    .unwrap();
}

#[test]
fn tiny_sd15_single_file_decodes_identically_to_the_folder() {
    let cpu = Device::Cpu;
    let folder = DiffusersFolder::open(common::fixture("models/tiny-sd15")).unwrap();
    let single =
        SingleFileCheckpoint::open(common::fixture("single_file/tiny_sd15.safetensors")).unwrap();
    let config: VaeConfig = folder.config("vae").unwrap();
    let a = AutoencoderKL::new(
        folder.weights("vae", None, DType::F32, &cpu).unwrap(),
        &config,
    )
    .unwrap();
    let b = AutoencoderKL::new(single.vae_weights(DType::F32, &cpu).unwrap(), &config).unwrap();
    let latents = candle_core::Tensor::randn(0f32, 1.0, (1, 4, 4, 4), &cpu).unwrap();
    let diff = common::max_abs_diff(&a.decode(&latents).unwrap(), &b.decode(&latents).unwrap());
    assert_eq!(diff, 0.0);
}

#[test]
fn tiny_sd15_report_lists_the_known_extras() {
    let single =
        SingleFileCheckpoint::open(common::fixture("single_file/tiny_sd15.safetensors")).unwrap();
    // The description holds full-size presets: check the tiny file with its own configs.
    let folder = DiffusersFolder::open(common::fixture("models/tiny-sd15")).unwrap();
    let description = ModelDescription::from_folder(&folder, &DetectOptions::default()).unwrap();
    assert_eq!(description.family, ModelFamily::Sd1);
    let mut used = BTreeSet::new();
    let unet = stable_diffusion::loading::check_component(
        "unet",
        &single.component_weights("unet").unwrap(),
        &mut used,
        |vb| UNet2DConditionModel::new(vb, &description.unet).map(drop),
    )
    .unwrap();
    assert!(unet.missing.is_empty() && unet.mismatched.is_empty());
    // Against the full-size presets, the tiny file is all mismatches: reported, no panic.
    let report = single.report().unwrap();
    assert!(!report.is_complete());
    assert!(report
        .known_unused
        .iter()
        .any(|(name, _)| name == "alphas_cumprod"));
    assert!(report.dtypes.get("F16").copied().unwrap_or(0) > 0);
}

#[test]
fn tiny_sd15_ckpt_reads_the_same_tensors_as_the_safetensors_file() {
    let cpu = Device::Cpu;
    let ckpt = CkptFile::open(common::fixture("single_file/tiny_sd15_unet_vae.ckpt")).unwrap();
    let safetensors =
        SafetensorsFile::open(common::fixture("single_file/tiny_sd15.safetensors")).unwrap();
    // `global_step` and `epoch` live beside `state_dict`, which is unwrapped.
    assert_eq!(ckpt.skipped_entries(), 0);
    let names = TensorStore::names(&ckpt);
    assert!(names.len() > 50, "{} tensors", names.len());
    assert!(names.contains(&"model.diffusion_model.time_embed.0.weight"));
    for name in names {
        let a = TensorStore::load(&ckpt, name, DType::F32, &cpu)
            .unwrap()
            .unwrap();
        let b = safetensors.load(name, DType::F32, &cpu).unwrap().unwrap();
        assert_eq!(common::max_abs_diff(&a, &b), 0.0, "{name}");
        assert_eq!(TensorStore::dtype_name(&ckpt, name).as_deref(), Some("F16"));
    }
}

#[test]
fn tiny_sd15_ckpt_serves_the_vae_under_diffusers_names() {
    let path = common::fixture("single_file/tiny_sd15_unet_vae.ckpt");
    // Only a VAE and a time embedding: not enough to tell the family, which says so.
    let err = SingleFileCheckpoint::open(&path).unwrap_err().to_string();
    assert!(err.contains("cannot tell the model family"), "{err}");
    assert!(err.contains("first_stage_model."), "{err}");
    let options = DetectOptions {
        family: Some(ModelFamily::Sd1),
        ..Default::default()
    };
    let single = SingleFileCheckpoint::open_with(&path, &options).unwrap();
    let folder = DiffusersFolder::open(common::fixture("models/tiny-sd15")).unwrap();
    let config: VaeConfig = folder.config("vae").unwrap();
    let requested = record_shapes(|vb| AutoencoderKL::new(vb, &config)).unwrap();
    assert_same_weights(
        "ckpt vae",
        &folder.open_weights("vae", None).unwrap(),
        &single.component_weights("vae").unwrap(),
        &requested,
    );
}

/// Compares every tensor of a diffusers-converted reference file (`<component>.<name>`) with
/// the single file's component weights.
fn assert_matches_converted(single: &SingleFileCheckpoint, reference: &str, components: &[&str]) {
    let cpu = Device::Cpu;
    let reference = SafetensorsFile::open(common::fixture(reference)).unwrap();
    let mut counted = 0;
    for component in components {
        let weights = single.component_weights(component).unwrap();
        let prefix = format!("{component}.");
        for stored in reference.names() {
            let Some(name) = stored.strip_prefix(&prefix) else {
                continue;
            };
            let want = reference.load(stored, DType::F32, &cpu).unwrap().unwrap();
            let got = weights
                .load_shaped(name, want.dims(), DType::F32, &cpu)
                .unwrap_or_else(|e| panic!("{component}: {name}: {e}"));
            assert_eq!(common::max_abs_diff(&got, &want), 0.0, "{stored}");
            counted += 1;
        }
    }
    assert_eq!(counted, reference.names().count());
}

#[test]
fn tiny_sdxl_single_file_matches_diffusers_conversion() {
    let single =
        SingleFileCheckpoint::open(common::fixture("single_file/tiny_sdxl.safetensors")).unwrap();
    assert_eq!(single.describe().family, ModelFamily::Sdxl);
    assert_eq!(single.describe().prediction, PredictionType::Epsilon);
    assert!(matches!(
        single.text_encoder_layout("text_encoder_2"),
        Some(TextEncoderLayout::OpenClip {
            hidden: 32,
            layers: 2,
            ..
        })
    ));
    assert_matches_converted(
        &single,
        "single_file/tiny_sdxl_reference.safetensors",
        &["unet", "text_encoder", "text_encoder_2"],
    );
    // The text encoders build from it (CLIP-L without, bigG with projection).
    let cpu = Device::Cpu;
    let small = |act, layers| ClipTextConfig {
        vocab_size: 100,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: layers,
        num_attention_heads: 4,
        hidden_act: act,
        projection_dim: 32,
        ..ClipTextConfig::default()
    };
    use stable_diffusion::nn::Activation;
    ClipTextModel::new(
        single.weights("text_encoder", DType::F32, &cpu).unwrap(),
        &small(Activation::QuickGelu, 2),
    )
    .unwrap();
    let big_g = ClipTextModel::new_with_projection(
        single.weights("text_encoder_2", DType::F32, &cpu).unwrap(),
        &small(Activation::Gelu, 2),
    )
    .unwrap();
    assert!(big_g.has_projection());
}

#[test]
fn tiny_sd2_openclip_text_matches_diffusers_conversion() {
    let single =
        SingleFileCheckpoint::open(common::fixture("single_file/tiny_sd2_text.safetensors"))
            .unwrap();
    assert_eq!(single.describe().family, ModelFamily::Sd2);
    assert_eq!(
        single.text_encoder_layout("text_encoder"),
        Some(&TextEncoderLayout::OpenClip {
            prefix: "cond_stage_model.model.".into(),
            hidden: 32,
            layers: 3
        })
    );
    assert_matches_converted(
        &single,
        "single_file/tiny_sd2_text_reference.safetensors",
        &["text_encoder"],
    );
}

#[test]
fn missing_component_names_the_components_present() {
    let single =
        SingleFileCheckpoint::open(common::fixture("single_file/tiny_sd2_text.safetensors"))
            .unwrap();
    let err = single.component_weights("text_encoder_2").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("text_encoder_2") && msg.contains("text_encoder"),
        "{msg}"
    );
}

fn copy_to(scratch: &Scratch, fixture: &str, name: &str) -> PathBuf {
    let path = scratch.path(name);
    std::fs::copy(common::fixture(fixture), &path).unwrap();
    path
}

#[test]
fn sd2_prediction_type_follows_override_yaml_and_file_name() {
    let scratch = Scratch::new("prediction");
    let sd2 = "single_file/tiny_sd2_text.safetensors";
    let open_checkpoint = |path: &Path, prediction| {
        let options = DetectOptions {
            prediction,
            ..Default::default()
        };
        SingleFileCheckpoint::open_with(path, &options).unwrap()
    };
    let open = |path: &Path, prediction| open_checkpoint(path, prediction).describe().prediction;
    // Only a guess from the name (no override, no yaml) is replaced by A1111's test at load.
    let probed =
        |path: &Path, prediction| open_checkpoint(path, prediction).needs_prediction_probe();
    // Default for SD 2.x: v-prediction (as diffusers).
    let plain = copy_to(&scratch, sd2, "model.safetensors");
    assert_eq!(open(&plain, None), PredictionType::VPrediction);
    // The file name says 512 / base: epsilon.
    let base = copy_to(&scratch, sd2, "v2-1_512-ema-pruned.safetensors");
    assert_eq!(open(&base, None), PredictionType::Epsilon);
    assert!(probed(&plain, None) && probed(&base, None));
    assert!(!probed(&base, Some(PredictionType::Epsilon)));
    // A yaml beside the file decides.
    let with_yaml = copy_to(&scratch, sd2, "custom-512.safetensors");
    std::fs::write(
        scratch.path("custom-512.yaml"),
        "model:\n  params:\n    parameterization: \"v\"\n",
    )
    .unwrap();
    assert_eq!(open(&with_yaml, None), PredictionType::VPrediction);
    assert!(!probed(&with_yaml, None));
    // The user's choice beats everything.
    assert_eq!(
        open(&with_yaml, Some(PredictionType::Epsilon)),
        PredictionType::Epsilon
    );
    // SD 1.x stays epsilon whatever the name.
    let sd1 = copy_to(
        &scratch,
        "single_file/tiny_sd15.safetensors",
        "v-768.safetensors",
    );
    assert_eq!(open(&sd1, None), PredictionType::Epsilon);
    assert!(!probed(&sd1, None));
}

#[test]
fn a1111_v_prediction_test_reproduces_its_statistic_on_tiny_unets() {
    use stable_diffusion::model_family::{a1111_v_statistic, a1111_v_verdict};
    let expected = common::load_json("unet/a1111_v_probe.json");
    let cpu = Device::Cpu;
    for name in ["tiny-sd2", "tiny-sd15"] {
        let folder = DiffusersFolder::open(common::fixture(&format!("models/{name}"))).unwrap();
        let config: UNetConfig = folder.config("unet").unwrap();
        let unet = UNet2DConditionModel::new(
            folder.weights("unet", None, DType::F32, &cpu).unwrap(),
            &config,
        )
        .unwrap();
        let ours = a1111_v_statistic(&unet, &cpu, DType::F32).unwrap();
        let reference = expected[name].as_f64().unwrap();
        assert!(
            (ours - reference).abs() < 1e-5,
            "{name}: ours {ours}, reference {reference}"
        );
        // Random weights: both read as ε (the statistic is far above -1).
        assert_eq!(a1111_v_verdict(ours), PredictionType::Epsilon);
    }
    assert_eq!(a1111_v_verdict(-1.5), PredictionType::VPrediction);
    assert_eq!(a1111_v_verdict(-1.0), PredictionType::Epsilon);
    assert_eq!(a1111_v_verdict(-0.2), PredictionType::Epsilon);
}

#[test]
fn family_override_replaces_detection() {
    let options = DetectOptions {
        family: Some(ModelFamily::Sd2),
        prediction: Some(PredictionType::Epsilon),
    };
    let single = SingleFileCheckpoint::open_with(
        common::fixture("single_file/tiny_sd15.safetensors"),
        &options,
    )
    .unwrap();
    assert_eq!(single.describe().family, ModelFamily::Sd2);
    assert_eq!(single.describe().native_size(), 512);
    assert_eq!(
        "sdxl-refiner".parse::<ModelFamily>().unwrap(),
        ModelFamily::SdxlRefiner
    );
    let err = "sd3".parse::<ModelFamily>().unwrap_err().to_string();
    assert!(err.contains("sd1") && err.contains("sdxl-refiner"), "{err}");
}

#[test]
fn unknown_layout_says_what_was_found() {
    let scratch = Scratch::new("unknown");
    let path = scratch.path("mystery.safetensors");
    let tensor = candle_core::Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
    let tensors: std::collections::HashMap<String, candle_core::Tensor> = [
        "transformer.blocks.0.attn.weight",
        "transformer.blocks.1.attn.weight",
        "lora_unet_down.alpha",
    ]
    .iter()
    .map(|n| (n.to_string(), tensor.clone()))
    .collect();
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let err = SingleFileCheckpoint::open(&path).unwrap_err();
    assert!(matches!(err, Error::Checkpoint { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("cannot tell the model family"), "{msg}");
    assert!(msg.contains("transformer.blocks.* (2)"), "{msg}");
    assert!(msg.contains("mystery.safetensors"), "{msg}");
}

#[test]
fn folder_description_comes_from_its_configs() {
    let folder = DiffusersFolder::open(common::fixture("models/tiny-sd15")).unwrap();
    let d = ModelDescription::from_folder(&folder, &DetectOptions::default()).unwrap();
    assert_eq!(d.family, ModelFamily::Sd1);
    assert_eq!(d.prediction, PredictionType::Epsilon);
    assert!(!d.inpainting);
    assert_eq!(d.text_encoders.len(), 1);
    let report = stable_diffusion::loading::report_folder(&folder, &d).unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert!(report.unused.is_empty(), "{:?}", report.unused);
}

// ---- .ckpt safety -------------------------------------------------------------------------

#[test]
fn ckpt_asking_for_os_system_is_refused_and_named() {
    let err = CkptFile::open(common::fixture("single_file/malicious_os_system.ckpt"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("refusing to load"), "{err}");
    assert!(
        err.contains("os.system") || err.contains("posix.system"),
        "{err}"
    );
}

#[test]
fn ckpt_asking_for_eval_is_refused_and_named() {
    let err = CkptFile::open(common::fixture("single_file/malicious_eval.ckpt"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("refusing to load"), "{err}");
    assert!(err.contains("builtins.eval"), "{err}");
}

#[test]
fn truncated_or_corrupt_ckpt_files_give_errors_not_panics() {
    let scratch = Scratch::new("corrupt");
    let good = std::fs::read(common::fixture("single_file/tiny_sd15_unet_vae.ckpt")).unwrap();
    let cpu = Device::Cpu;
    let try_open = |bytes: &[u8], name: &str| -> Result<(), String> {
        let path = scratch.path(name);
        std::fs::write(&path, bytes).unwrap();
        let file = CkptFile::open(&path).map_err(|e| e.to_string())?;
        for tensor in TensorStore::names(&file) {
            TensorStore::load(&file, tensor, DType::F32, &cpu).map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    assert!(try_open(&good, "good.ckpt").is_ok());

    for cut in [
        0,
        3,
        30,
        100,
        good.len() / 2,
        good.len() - 23,
        good.len() - 1,
    ] {
        let err = try_open(&good[..cut], "cut.ckpt").unwrap_err();
        assert!(err.contains("cut.ckpt"), "cut at {cut}: {err}");
    }
    // A directory that claims to lie past the end of the file.
    let eocd = good.len() - 22;
    assert_eq!(&good[eocd..eocd + 4], b"PK\x05\x06");
    let mut lying = good.clone();
    lying[eocd + 16..eocd + 20].copy_from_slice(&(u32::MAX - 1).to_le_bytes());
    // torch writes zip64 end records too: make those lie as well.
    if &good[eocd - 20..eocd - 16] == b"PK\x06\x07" {
        let at = u64::from_le_bytes(good[eocd - 12..eocd - 4].try_into().unwrap()) as usize;
        lying[at + 48..at + 56].copy_from_slice(&(1u64 << 40).to_le_bytes());
    }
    let err = try_open(&lying, "lying.ckpt").unwrap_err();
    assert!(err.contains("outside"), "{err}");
    // Flip bytes all over the archive: whatever breaks must be an error, never a panic.
    let mut errors = 0;
    for at in (0..good.len()).step_by(good.len() / 397) {
        let mut bad = good.clone();
        bad[at] ^= 0xa5;
        if try_open(&bad, "flipped.ckpt").is_err() {
            errors += 1;
        }
    }
    assert!(errors > 0);
    // Not a zip, and the legacy format: clear messages.
    let err = try_open(b"hello world, not a checkpoint", "text.ckpt").unwrap_err();
    assert!(err.contains("not a PyTorch checkpoint"), "{err}");
    let err = try_open(b"\x80\x02\x8a\x0alegacy", "legacy.ckpt").unwrap_err();
    assert!(err.contains("magic number"), "{err}");
    // A legacy-format file cut anywhere: an error too.
    let legacy = std::fs::read(common::fixture("single_file/mixed_dtypes_legacy.ckpt")).unwrap();
    assert!(try_open(&legacy, "legacy_good.ckpt").is_ok());
    for cut in [15, 40, legacy.len() / 2, legacy.len() - 1] {
        let err = try_open(&legacy[..cut], "legacy_cut.ckpt").unwrap_err();
        assert!(err.contains("legacy_cut.ckpt"), "cut at {cut}: {err}");
    }
}

#[test]
fn ckpt_view_past_its_storage_is_an_error() {
    let err = CkptFile::open(common::fixture("single_file/bad_view.ckpt"))
        .unwrap_err()
        .to_string();
    // Refused either for its elements (more than the storage holds) or for its extent.
    assert!(
        err.contains("tensor `w`")
            && (err.contains("reaches past its storage") || err.contains("more than its storage")),
        "{err}"
    );
}

#[test]
fn ckpt_reader_handles_every_storage_kind_and_views() {
    check_mixed_dtypes("single_file/mixed_dtypes.ckpt");
}

#[test]
fn legacy_torch_save_format_reads_the_same_tensors() {
    check_mixed_dtypes("single_file/mixed_dtypes_legacy.ckpt");
}

fn check_mixed_dtypes(fixture: &str) {
    let cpu = Device::Cpu;
    let ckpt = CkptFile::open(common::fixture(fixture)).unwrap();
    // No `state_dict` wrapper here; the string entry is skipped and counted.
    assert_eq!(ckpt.skipped_entries(), 1);
    let values = |name: &str| -> Vec<f32> {
        TensorStore::load(&ckpt, name, DType::F32, &cpu)
            .unwrap()
            .unwrap_or_else(|| panic!("{name} missing"))
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    assert_eq!(values("f32"), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(TensorStore::shape(&ckpt, "f32"), Some(&[2usize, 3][..]));
    assert_eq!(values("bf16"), [0.0, 1.0, 2.0, 3.0]);
    assert_eq!(values("i64"), [0.0, 1.0, 2.0]);
    assert_eq!(values("flag"), [1.0, 0.0]);
    assert_eq!(values("view"), [4.0, 5.0, 6.0, 7.0]);
    // (2, 5) transposed to (5, 2): a strided view of the shared storage.
    assert_eq!(
        values("view_t"),
        [0.0, 5.0, 1.0, 6.0, 2.0, 7.0, 3.0, 8.0, 4.0, 9.0]
    );
    assert_eq!(values("param"), [0.5, 0.5]);
    assert_eq!(values("scalar"), [2.5]);
    assert_eq!(TensorStore::shape(&ckpt, "scalar"), Some(&[][..]));
    assert_eq!(
        TensorStore::dtype_name(&ckpt, "bf16").as_deref(),
        Some("BF16")
    );
    assert_eq!(
        TensorStore::dtype_name(&ckpt, "flag").as_deref(),
        Some("BOOL")
    );
    assert!(TensorStore::load(&ckpt, "note", DType::F32, &cpu)
        .unwrap()
        .is_none());
}

/// Writes the tiny SDXL folder as an LDM single file: every tensor our models ask for, stored
/// under the name (and in the layout) the loader's LDM tables read it from. The tables were
/// checked against diffusers' own converter by `tiny_sdxl_single_file_matches_diffusers_conversion`;
/// this file lets the whole pipeline run on a single file of the folder's exact weights.
fn write_sdxl_folder_as_single_file(folder_dir: &Path, out: &Path) {
    use stable_diffusion::loading::ldm;
    let cpu = Device::Cpu;
    let folder = DiffusersFolder::open(folder_dir).unwrap();
    let described = ModelDescription::from_folder(&folder, &DetectOptions::default()).unwrap();
    let mut stored: std::collections::HashMap<String, candle_core::Tensor> = Default::default();
    // Fused tensors (OpenCLIP's in_proj) are assembled from row ranges.
    let mut fused: std::collections::BTreeMap<String, Vec<(usize, candle_core::Tensor)>> =
        Default::default();
    let mut put = |component: &str,
                   prefix: &str,
                   sources: &dyn Fn(&str) -> Vec<stable_diffusion::loading::Source>,
                   names: BTreeSet<String>| {
        let weights = folder.open_weights(component, None).unwrap();
        for name in names {
            let tensor = weights.load(&name, DType::F32, &cpu).unwrap();
            let source = sources(&name)
                .into_iter()
                .next()
                .unwrap_or_else(|| panic!("no LDM name for {component} {name}"));
            let ldm_name = format!("{prefix}{}", source.name);
            let tensor = if source.transpose {
                tensor.t().unwrap().contiguous().unwrap()
            } else {
                tensor
            };
            match source.rows {
                Some(rows) => fused
                    .entry(ldm_name)
                    .or_default()
                    .push((rows.start, tensor)),
                None => {
                    stored.insert(ldm_name, tensor);
                }
            }
        }
    };
    let names = |recorded: std::collections::BTreeMap<String, Vec<usize>>| {
        recorded.into_keys().collect::<BTreeSet<_>>()
    };
    let lpb = match &described.unet.layers_per_block {
        stable_diffusion::unet::PerBlock::Uniform(n) => *n,
        stable_diffusion::unet::PerBlock::List(v) => v[0],
    };
    let unet_names =
        names(record_shapes(|vb| UNet2DConditionModel::new(vb, &described.unet)).unwrap());
    put(
        "unet",
        ldm::UNET_PREFIX,
        &|n| ldm::unet_sources(n, lpb),
        unet_names,
    );
    let blocks = described.vae.block_out_channels.len();
    let vae_names = names(record_shapes(|vb| AutoencoderKL::new(vb, &described.vae)).unwrap());
    put(
        "vae",
        "first_stage_model.",
        &|n| ldm::vae_sources(n, blocks),
        vae_names,
    );
    for text in &described.text_encoders {
        let text_names = names(
            record_shapes(|vb| ClipTextModel::from_class(vb, &text.config, &text.class)).unwrap(),
        );
        if text.component == "text_encoder" {
            put(
                "text_encoder",
                "conditioner.embedders.0.transformer.",
                &ldm::clip_sources,
                text_names,
            );
        } else {
            let hidden = text.config.hidden_size;
            put(
                "text_encoder_2",
                "conditioner.embedders.1.model.",
                &|n| ldm::open_clip_sources(n, hidden),
                text_names,
            );
        }
    }
    for (name, mut parts) in fused {
        parts.sort_by_key(|(start, _)| *start);
        let parts: Vec<_> = parts.into_iter().map(|(_, t)| t).collect();
        stored.insert(name, candle_core::Tensor::cat(&parts, 0).unwrap());
    }
    candle_core::safetensors::save(&stored, out).unwrap();
}

#[test]
fn tiny_sdxl_single_file_and_folder_give_identical_images() {
    use stable_diffusion::pipeline::{Control, GenerationRequest, LoadOptions, StableDiffusion};
    let scratch = Scratch::new("sdxl-image");
    let folder_dir = common::fixture("models/tiny-sdxl");
    let file = scratch.path("tiny_sdxl_full.safetensors");
    write_sdxl_folder_as_single_file(&folder_dir, &file);

    let checkpoint = SingleFileCheckpoint::open(&file).unwrap();
    assert_eq!(checkpoint.describe().family, ModelFamily::Sdxl);
    let from_folder = StableDiffusion::load(&folder_dir, &LoadOptions::default()).unwrap();
    let from_file = StableDiffusion::load(
        &file,
        &LoadOptions {
            config: Some(folder_dir.clone()),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    for (negative, cfg) in [("", 5.0), ("blurry", 5.0), ("", 1.0)] {
        let request = GenerationRequest {
            prompt: "a red circle on a blue background".into(),
            negative_prompt: negative.into(),
            cfg_scale: cfg,
            width: Some(80),
            height: Some(48),
            steps: 3,
            seed: Some(5),
            ..GenerationRequest::default()
        };
        let run = |model: &StableDiffusion| {
            model
                .generate(&request, &Default::default(), &mut |_| Control::Continue)
                .unwrap()
                .images
        };
        let (a, b) = (run(&from_folder), run(&from_file));
        assert_eq!(a.len(), 1);
        assert!(
            a[0].as_raw() == b[0].as_raw(),
            "negative {negative:?}, cfg {cfg}: the single file and the folder differ"
        );
    }
}
