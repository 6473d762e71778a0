//! The CLIP text encoders against transformers on the tiny random models, in both key layouts,
//! and the full-size presets against the real models' tensor names and shapes.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use stable_diffusion::loading::{key_map_for_class, record_shapes, DiffusersFolder, Weights};
use stable_diffusion::text_encoder::{ClipTextConfig, ClipTextModel, HiddenLayer};
use stable_diffusion::Error;

const TOL: f32 = 1e-4;
const PROJ_DIR: &str = "text_encoder/tiny-openclip-proj";

fn tiny_sd15() -> ClipTextModel {
    let folder = DiffusersFolder::open(common::fixture("models/tiny-sd15")).unwrap();
    ClipTextModel::load(&folder, "text_encoder", None, DType::F32, &Device::Cpu).unwrap()
}

fn weights_vb(path: PathBuf, class: &str) -> candle_nn::VarBuilder<'static> {
    Weights::open(path)
        .unwrap()
        .with_key_map(key_map_for_class(class))
        .into_var_builder(DType::F32, &Device::Cpu)
}

fn tiny_openclip_proj() -> ClipTextModel {
    let dir = common::fixture(PROJ_DIR);
    let config = ClipTextConfig::from_file(dir.join("config.json")).unwrap();
    let vb = weights_vb(dir.join("model.safetensors"), "CLIPTextModelWithProjection");
    ClipTextModel::new_with_projection(vb, &config).unwrap()
}

/// Checks every output of `model` against a reference record; returns the largest difference.
fn check_against_reference(model: &ClipTextModel, io: &HashMap<String, Tensor>) -> f32 {
    let ids = &io["input_ids"];
    let out = model.forward(ids, HiddenLayer::LAST).unwrap();
    let layers = model.config().num_hidden_layers;
    assert_eq!(out.hidden_states.len(), layers + 1);
    let mut worst = 0f32;
    let mut check = |what: &str, actual: &Tensor, expected: &Tensor| {
        common::assert_close(what, actual, expected, TOL);
        worst = worst.max(common::max_abs_diff(actual, expected));
    };
    for (i, hidden) in out.hidden_states.iter().enumerate() {
        check(
            &format!("hidden_states.{i}"),
            hidden,
            &io[&format!("hidden_states.{i}")],
        );
    }
    check("last_hidden_state", &out.hidden, &io["last_hidden_state"]);
    check("pooler_output", &out.pooled, &io["pooler_output"]);
    match io.get("text_embeds") {
        Some(expected) => check("text_embeds", out.text_embeds.as_ref().unwrap(), expected),
        None => assert!(out.text_embeds.is_none()),
    }
    for skip in [1, 2] {
        let skipped = model.forward(ids, HiddenLayer::clip_skip(skip)).unwrap();
        check(
            &format!("clip_skip.{skip}"),
            &skipped.hidden,
            &io[&format!("clip_skip.{skip}")],
        );
    }
    let no_eos = model
        .forward(&io["no_eos.input_ids"], HiddenLayer::LAST)
        .unwrap();
    check(
        "pooler_output without end-of-text",
        &no_eos.pooled,
        &io["no_eos.pooler_output"],
    );
    worst
}

#[test]
fn clip_text_model_matches_reference_on_tiny_sd15() {
    let model = tiny_sd15();
    assert!(!model.has_projection());
    assert_eq!(
        model.config().eos_token_id,
        2,
        "the SD 1.5 fixture uses legacy ids"
    );
    let io = common::load_tensors("text_encoder/tiny_sd15_io.safetensors");
    let worst = check_against_reference(&model, &io);
    println!("tiny sd15 text encoder: max abs diff {worst:e}");
}

#[test]
fn clip_text_model_with_projection_matches_reference_on_tiny_openclip() {
    let model = tiny_openclip_proj();
    assert!(model.has_projection());
    assert_eq!(
        model.config().hidden_act,
        stable_diffusion::nn::Activation::Gelu
    );
    let io = common::load_tensors("text_encoder/tiny_openclip_proj_io.safetensors");
    let worst = check_against_reference(&model, &io);
    println!("tiny openclip text encoder with projection: max abs diff {worst:e}");
}

#[test]
fn sdxl_hidden_layer_is_the_raw_penultimate_state() {
    let model = tiny_openclip_proj();
    let io = common::load_tensors("text_encoder/tiny_openclip_proj_io.safetensors");
    let layers = model.config().num_hidden_layers;
    let out = model
        .forward(&io["input_ids"], HiddenLayer::sdxl(0))
        .unwrap();
    // hidden_states[-2], no final layer norm: exactly the state the model recorded.
    common::assert_close(
        "sdxl(0)",
        &out.hidden,
        &io[&format!("hidden_states.{}", layers - 1)],
        TOL,
    );
    let out = model
        .forward(&io["input_ids"], HiddenLayer::sdxl(1))
        .unwrap();
    common::assert_close(
        "sdxl(1)",
        &out.hidden,
        &io[&format!("hidden_states.{}", layers - 2)],
        TOL,
    );
    // The pooled output does not depend on the chosen layer.
    common::assert_close("pooled", &out.pooled, &io["pooler_output"], TOL);
}

#[test]
fn hidden_layer_beyond_the_embeddings_is_an_error() {
    let model = tiny_sd15();
    let io = common::load_tensors("text_encoder/tiny_sd15_io.safetensors");
    let layers = model.config().num_hidden_layers;
    // from_end == layers is the embeddings' output: allowed.
    let embeddings = HiddenLayer {
        from_end: layers,
        final_layer_norm: false,
    };
    let out = model.forward(&io["input_ids"], embeddings).unwrap();
    common::assert_close("embeddings", &out.hidden, &io["hidden_states.0"], TOL);
    let err = model
        .forward(&io["input_ids"], HiddenLayer::clip_skip(layers + 1))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
}

#[test]
fn bad_input_ids_are_errors() {
    let model = tiny_sd15();
    let too_long = Tensor::zeros((1, 78), DType::U32, &Device::Cpu).unwrap();
    let out_of_vocab = Tensor::new(&[[49406u32, 49408, 49407]], &Device::Cpu).unwrap();
    let float_ids = Tensor::zeros((1, 3), DType::F32, &Device::Cpu).unwrap();
    let flat = Tensor::zeros(5, DType::U32, &Device::Cpu).unwrap();
    for ids in [too_long, out_of_vocab, float_ids, flat] {
        let err = model.forward(&ids, HiddenLayer::LAST).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    }
}

/// A scratch folder that is removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("sd-rs-text-encoder-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Rewrites a weights file with every key renamed by `rename`.
fn rewrite_keys(from: PathBuf, to: &PathBuf, rename: impl Fn(&str) -> String) {
    let tensors = candle_core::safetensors::load(from, &Device::Cpu).unwrap();
    let renamed: HashMap<String, Tensor> =
        tensors.into_iter().map(|(k, v)| (rename(&k), v)).collect();
    candle_core::safetensors::save(&renamed, to).unwrap();
}

#[test]
fn both_key_layouts_load_for_both_classes() {
    let scratch = Scratch::new("layouts");
    // CLIPTextModel as transformers 4.x (and every published SD checkpoint) wrote it.
    let sd15_prefixed = scratch.0.join("sd15_prefixed.safetensors");
    rewrite_keys(
        common::fixture("models/tiny-sd15/text_encoder/model.safetensors"),
        &sd15_prefixed,
        |k| format!("text_model.{k}"),
    );
    let config =
        ClipTextConfig::from_file(common::fixture("models/tiny-sd15/text_encoder/config.json"))
            .unwrap();
    let model = ClipTextModel::new(weights_vb(sd15_prefixed, "CLIPTextModel"), &config).unwrap();
    let io = common::load_tensors("text_encoder/tiny_sd15_io.safetensors");
    check_against_reference(&model, &io);

    // CLIPTextModelWithProjection with the text model's keys unprefixed.
    let proj_unprefixed = scratch.0.join("proj_unprefixed.safetensors");
    rewrite_keys(
        common::fixture(&format!("{PROJ_DIR}/model.safetensors")),
        &proj_unprefixed,
        |k| k.strip_prefix("text_model.").unwrap_or(k).to_string(),
    );
    let config =
        ClipTextConfig::from_file(common::fixture(&format!("{PROJ_DIR}/config.json"))).unwrap();
    let vb = weights_vb(proj_unprefixed, "CLIPTextModelWithProjection");
    let model = ClipTextModel::new_with_projection(vb, &config).unwrap();
    let io = common::load_tensors("text_encoder/tiny_openclip_proj_io.safetensors");
    check_against_reference(&model, &io);
}

#[test]
fn f16_weights_load_as_f32_and_compute_in_f16() {
    // The fixture stores f16; as F16 compute the model must still run and stay close.
    let folder = DiffusersFolder::open(common::fixture("models/tiny-sd15")).unwrap();
    let model =
        ClipTextModel::load(&folder, "text_encoder", None, DType::F16, &Device::Cpu).unwrap();
    let io = common::load_tensors("text_encoder/tiny_sd15_io.safetensors");
    let out = model.forward(&io["input_ids"], HiddenLayer::LAST).unwrap();
    assert_eq!(out.hidden.dtype(), DType::F16);
    let diff = common::max_abs_diff(&out.hidden, &io["last_hidden_state"]);
    assert!(diff < 0.1, "f16 compute drifted by {diff}");
}

#[test]
fn missing_and_misshaped_tensors_name_the_tensor() {
    let scratch = Scratch::new("bad-tensors");
    let source = common::fixture("models/tiny-sd15/text_encoder/model.safetensors");
    let config =
        ClipTextConfig::from_file(common::fixture("models/tiny-sd15/text_encoder/config.json"))
            .unwrap();

    let missing = scratch.0.join("missing.safetensors");
    let mut tensors = candle_core::safetensors::load(&source, &Device::Cpu).unwrap();
    tensors.remove("encoder.layers.1.mlp.fc2.bias");
    candle_core::safetensors::save(&tensors, &missing).unwrap();
    let err = ClipTextModel::new(weights_vb(missing, "CLIPTextModel"), &config).unwrap_err();
    match &err {
        Error::MissingTensor { name, .. } => assert_eq!(name, "encoder.layers.1.mlp.fc2.bias"),
        other => panic!("expected MissingTensor, got {other}"),
    }

    let misshaped = scratch.0.join("misshaped.safetensors");
    let mut tensors = candle_core::safetensors::load(&source, &Device::Cpu).unwrap();
    tensors.insert(
        "encoder.layers.0.self_attn.q_proj.weight".into(),
        Tensor::zeros((32, 16), DType::F16, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &misshaped).unwrap();
    let err = ClipTextModel::new(weights_vb(misshaped, "CLIPTextModel"), &config).unwrap_err();
    match &err {
        Error::ShapeMismatch {
            name,
            expected,
            found,
        } => {
            assert_eq!(name, "encoder.layers.0.self_attn.q_proj.weight");
            assert_eq!(expected, &[32, 32]);
            assert_eq!(found, &[32, 16]);
        }
        other => panic!("expected ShapeMismatch, got {other}"),
    }
    let message = err.to_string();
    assert!(message.contains("q_proj.weight") && message.contains("[32, 16]"));
}

#[test]
fn config_with_unknown_activation_lists_the_valid_ones() {
    let scratch = Scratch::new("bad-config");
    let path = scratch.0.join("config.json");
    std::fs::write(&path, r#"{"hidden_size": 32, "hidden_act": "swiglu"}"#).unwrap();
    let err = ClipTextConfig::from_file(&path).unwrap_err();
    match &err {
        Error::Config { path: at, msg } => {
            assert_eq!(*at, path, "error names the file");
            assert!(msg.contains("swiglu"), "{msg}");
            assert!(msg.contains("quick_gelu") && msg.contains("gelu"), "{msg}");
        }
        other => panic!("expected Config error, got {other}"),
    }
}

#[test]
fn config_json_fills_missing_keys_with_transformers_defaults() {
    let scratch = Scratch::new("partial-config");
    let path = scratch.0.join("config.json");
    std::fs::write(
        &path,
        r#"{"hidden_size": 1024, "hidden_act": "gelu", "some_future_key": [1, 2]}"#,
    )
    .unwrap();
    let config = ClipTextConfig::from_file(&path).unwrap();
    assert_eq!(config.hidden_size, 1024);
    assert_eq!(config.num_hidden_layers, 12);
    assert_eq!(config.eos_token_id, 49407);

    let bad_heads = ClipTextConfig {
        num_attention_heads: 5,
        ..ClipTextConfig::sd15()
    };
    let err = record_shapes(|vb| ClipTextModel::new(vb, &bad_heads)).unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");
}

#[test]
fn presets_match_full_size_checkpoint_shapes() {
    let cases = [
        ("text_encoder_sd15", ClipTextConfig::sd15(), false),
        ("text_encoder_sd21", ClipTextConfig::sd21(), false),
        ("text_encoder_sdxl_1", ClipTextConfig::sdxl_base_1(), false),
        ("text_encoder_sdxl_2", ClipTextConfig::sdxl_2(), true),
    ];
    for (manifest, config, projection) in cases {
        let recorded = record_shapes(|vb| {
            if projection {
                ClipTextModel::new_with_projection(vb, &config)
            } else {
                ClipTextModel::new(vb, &config)
            }
        })
        .unwrap();
        common::assert_matches_manifest(manifest, &recorded);
    }
}

#[test]
fn tiny_sd15_pipeline_folder_lists_its_text_encoder() {
    let folder = DiffusersFolder::open(common::fixture("models/tiny-sd15")).unwrap();
    assert_eq!(folder.pipeline_class(), "StableDiffusionPipeline");
    let class = folder.component_class("text_encoder").unwrap();
    assert_eq!(
        (class.library.as_str(), class.class.as_str()),
        ("transformers", "CLIPTextModel")
    );
    assert!(!folder.has_component("safety_checker"));
    let config: ClipTextConfig = folder.config("text_encoder").unwrap();
    assert_eq!(config.hidden_size, 32);
    assert_eq!(config.vocab_size, 49408);
}
