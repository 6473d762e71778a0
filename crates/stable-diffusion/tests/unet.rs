//! Parity of the UNet with diffusers' UNet2DConditionModel on tiny random models, full-size
//! presets against the real checkpoints' tensor manifests, and errors on bad configs/weights.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use stable_diffusion::loading::record_shapes;
use stable_diffusion::unet::{
    AddedConditions, PerBlock, Timesteps, UNet2DConditionModel, UNetConfig,
};
use stable_diffusion::Error;

const TOLERANCE: f32 = 1e-4;

/// Loads a tiny UNet folder (config.json + f16 safetensors) computing in f32.
fn load_model(folder: &str) -> UNet2DConditionModel {
    let config = UNetConfig::from_file(common::fixture(&format!("{folder}/config.json")))
        .expect("tiny UNet config parses");
    let weights = common::load_tensors(&format!("{folder}/diffusion_pytorch_model.safetensors"));
    let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    UNet2DConditionModel::new(vb, &config).expect("tiny UNet builds")
}

/// Runs every recorded case of `name` and compares the time embedding and the output.
fn check_against_reference(name: &str) {
    let meta = common::load_json(&format!("unet/{name}_io.json"));
    let io = common::load_tensors(&format!("unet/{name}_io.safetensors"));
    let model = load_model(meta["model"].as_str().unwrap());
    let config = model.config().clone();
    let cases = meta["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for (i, case) in cases.iter().enumerate() {
        let timestep = case["timestep"].as_f64().unwrap();
        let get = |key: &str| -> &Tensor {
            io.get(&format!("case{i}_{key}"))
                .unwrap_or_else(|| panic!("{name}: fixture case{i}_{key} missing"))
        };
        let sample = get("sample");
        let context = get("encoder_hidden_states");
        let batch = sample.dim(0).unwrap();
        let added = config.needs_added_conditions().then(|| AddedConditions {
            text_embeds: get("text_embeds").clone(),
            time_ids: get("time_ids").clone(),
        });

        // The sinusoidal projection alone.
        let t_emb = Timesteps::new(
            config.block_out_channels[0],
            config.flip_sin_to_cos,
            config.freq_shift,
        )
        .forward(&vec![timestep; batch], &Device::Cpu)
        .unwrap();
        let diff = common::max_abs_diff(&t_emb, get("t_emb"));
        eprintln!("{name} case {i} (t = {timestep}): t_emb max diff {diff:e}");
        common::assert_close(
            &format!("{name} case {i} t_emb"),
            &t_emb,
            get("t_emb"),
            1e-6,
        );

        // The embedding the resnets receive: time embedding (+ SDXL added embedding).
        let mut expected_emb = get("time_embedding").clone();
        if added.is_some() {
            expected_emb = (expected_emb + get("aug_emb")).unwrap();
        }
        let emb = model
            .time_embedding(batch, timestep, added.as_ref(), &Device::Cpu)
            .unwrap();
        common::assert_close(
            &format!("{name} case {i} emb"),
            &emb,
            &expected_emb,
            TOLERANCE,
        );

        let out = model
            .forward(sample, timestep, context, added.as_ref())
            .unwrap();
        let diff = common::max_abs_diff(&out, get("out"));
        eprintln!(
            "{name} case {i} {:?}: output max diff {diff:e}",
            sample.dims()
        );
        common::assert_close(
            &format!("{name} case {i} output"),
            &out,
            get("out"),
            TOLERANCE,
        );
    }
}

#[test]
fn unet_matches_reference_on_tiny_sd15() {
    check_against_reference("tiny_sd15");
}

#[test]
fn unet_matches_reference_on_tiny_sd2_with_linear_projections_and_head_lists() {
    check_against_reference("tiny_sd2");
}

#[test]
fn unet_matches_reference_on_tiny_inpainting_with_nine_input_channels() {
    check_against_reference("tiny_inpaint");
}

#[test]
fn unet_matches_reference_on_tiny_sdxl_with_added_conditions() {
    check_against_reference("tiny_sdxl");
}

#[test]
fn tiny_configs_parse_with_diffusers_defaults_and_lists() {
    let sd2 = UNetConfig::from_file(common::fixture("unet/tiny_sd2/config.json")).unwrap();
    assert_eq!(sd2.attention_head_dim, PerBlock::List(vec![2, 2, 4]));
    assert!(sd2.use_linear_projection);
    assert!(sd2.upcast_attention);
    let sd15 = UNetConfig::from_file(common::fixture("models/tiny-sd15/unet/config.json")).unwrap();
    assert_eq!(sd15.attention_head_dim, PerBlock::Uniform(2));
    assert!(!sd15.use_linear_projection);
    assert_eq!(sd15.cross_attention_dim, PerBlock::Uniform(32));
    // A minimal config takes diffusers' defaults, which are SD 1.x's numbers.
    let minimal = UNetConfig::from_json(r#"{"cross_attention_dim": 768}"#).unwrap();
    let mut expected = UNetConfig::sd15();
    expected.sample_size = None;
    assert_eq!(minimal, expected);
}

fn recorded(config: &UNetConfig) -> std::collections::BTreeMap<String, Vec<usize>> {
    record_shapes(|vb| UNet2DConditionModel::new(vb, config)).expect("full-size UNet builds")
}

#[test]
fn sd15_preset_matches_full_size_manifest() {
    common::assert_matches_manifest("unet_sd15", &recorded(&UNetConfig::sd15()));
}

#[test]
fn sd21_v_preset_matches_full_size_manifest() {
    common::assert_matches_manifest("unet_sd21_v", &recorded(&UNetConfig::sd21_v()));
}

#[test]
fn sdxl_base_preset_matches_full_size_manifest() {
    common::assert_matches_manifest("unet_sdxl_base", &recorded(&UNetConfig::sdxl_base()));
}

#[test]
fn sdxl_refiner_preset_matches_full_size_manifest() {
    common::assert_matches_manifest("unet_sdxl_refiner", &recorded(&UNetConfig::sdxl_refiner()));
}

#[test]
fn sd15_inpaint_preset_differs_from_sd15_only_in_conv_in() {
    let mut expected = recorded(&UNetConfig::sd15());
    expected.insert("conv_in.weight".to_string(), vec![320, 9, 3, 3]);
    assert_eq!(recorded(&UNetConfig::sd15_inpaint()), expected);
    common::assert_matches_manifest("unet_sd15", &recorded(&UNetConfig::sd15()));
}

#[test]
fn unknown_down_block_type_is_an_error_listing_valid_types() {
    let config = UNetConfig::from_json(
        r#"{"down_block_types": ["CrossAttnDownBlock2D", "AttnDownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
            "block_out_channels": [32, 64]}"#,
    )
    .unwrap();
    let err = record_shapes(|vb| UNet2DConditionModel::new(vb, &config)).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(&err, Error::Unsupported { value, .. } if value == "AttnDownBlock2D"),
        "{message}"
    );
    assert!(message.contains("AttnDownBlock2D"), "{message}");
    assert!(
        message.contains("DownBlock2D, CrossAttnDownBlock2D"),
        "{message}"
    );
}

#[test]
fn unknown_up_block_type_is_an_error_naming_it() {
    let config = UNetConfig::from_json(
        r#"{"down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "AttnUpBlock2D"],
            "block_out_channels": [32, 64]}"#,
    )
    .unwrap();
    let message = record_shapes(|vb| UNet2DConditionModel::new(vb, &config))
        .unwrap_err()
        .to_string();
    assert!(message.contains("AttnUpBlock2D"), "{message}");
    assert!(message.contains("CrossAttnUpBlock2D"), "{message}");
}

#[test]
fn unsupported_config_setting_is_an_error_naming_it() {
    let config = UNetConfig::from_json(r#"{"class_embed_type": "timestep"}"#).unwrap();
    let message = record_shapes(|vb| UNet2DConditionModel::new(vb, &config))
        .unwrap_err()
        .to_string();
    assert!(message.contains("class_embed_type"), "{message}");
    let config = UNetConfig::from_json(r#"{"addition_embed_type": "image"}"#).unwrap();
    let message = record_shapes(|vb| UNet2DConditionModel::new(vb, &config))
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("image") && message.contains("text_time"),
        "{message}"
    );
}

#[test]
fn mismatched_list_lengths_are_config_errors() {
    let config = UNetConfig::from_json(r#"{"attention_head_dim": [5, 10]}"#).unwrap();
    let message = record_shapes(|vb| UNet2DConditionModel::new(vb, &config))
        .unwrap_err()
        .to_string();
    assert!(message.contains("attention_head_dim"), "{message}");
}

#[test]
fn missing_weight_is_an_error_naming_the_tensor() {
    let mut weights: HashMap<String, Tensor> =
        common::load_tensors("models/tiny-sd15/unet/diffusion_pytorch_model.safetensors");
    let missing = "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight";
    assert!(weights.remove(missing).is_some());
    let config =
        UNetConfig::from_file(common::fixture("models/tiny-sd15/unet/config.json")).unwrap();
    let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    let err = UNet2DConditionModel::new(vb, &config).unwrap_err();
    assert!(
        matches!(&err, Error::MissingTensor { name, .. } if name == missing),
        "{err}"
    );
}

#[test]
fn sdxl_unet_without_added_conditions_is_an_error() {
    let model = load_model("unet/tiny_sdxl");
    let sample = Tensor::zeros((1, 4, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let context = Tensor::zeros((1, 3, 64), DType::F32, &Device::Cpu).unwrap();
    let message = model
        .forward(&sample, 10.0, &context, None)
        .unwrap_err()
        .to_string();
    assert!(message.contains("text_embeds"), "{message}");
}

#[test]
fn sample_with_wrong_channel_count_is_an_error() {
    let model = load_model("models/tiny-sd15/unet");
    let sample = Tensor::zeros((1, 9, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let context = Tensor::zeros((1, 3, 32), DType::F32, &Device::Cpu).unwrap();
    let message = model
        .forward(&sample, 10.0, &context, None)
        .unwrap_err()
        .to_string();
    assert!(message.contains("9 channels"), "{message}");
}

#[test]
fn unet_runs_in_f16_close_to_reference() {
    let config =
        UNetConfig::from_file(common::fixture("models/tiny-sd15/unet/config.json")).unwrap();
    let weights = common::load_tensors("models/tiny-sd15/unet/diffusion_pytorch_model.safetensors");
    let vb = VarBuilder::from_tensors(weights, DType::F16, &Device::Cpu);
    let model = UNet2DConditionModel::new(vb, &config).unwrap();
    let io = common::load_tensors("unet/tiny_sd15_io.safetensors");
    let sample = io["case0_sample"].to_dtype(DType::F16).unwrap();
    let context = io["case0_encoder_hidden_states"]
        .to_dtype(DType::F16)
        .unwrap();
    let out = model.forward(&sample, 999.0, &context, None).unwrap();
    assert_eq!(out.dtype(), DType::F16);
    let diff = common::max_abs_diff(&out, &io["case0_out"]);
    eprintln!("tiny_sd15 in f16: output max diff {diff:e}");
    assert!(diff < 0.1, "f16 output max diff {diff}");
}

#[test]
fn per_layer_transformer_depths_match_diffusers_names() {
    // tools/reference/parts/unet.py: TINY_ASYMMETRIC.
    let config = UNetConfig::from_json(
        r#"{"sample_size": 8, "in_channels": 4, "out_channels": 4,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "block_out_channels": [8, 16, 16], "layers_per_block": 2,
            "transformer_layers_per_block": [[1, 1], [1, 2], [3, 1]],
            "reverse_transformer_layers_per_block": [[2, 1, 3], [1, 2, 1], [1, 1, 1]],
            "norm_num_groups": 4, "cross_attention_dim": 64, "attention_head_dim": [2, 2, 4],
            "use_linear_projection": true, "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 80}"#,
    )
    .unwrap();
    common::assert_matches_manifest("unet_tiny_asymmetric", &recorded(&config));
}

#[test]
fn unet_matches_reference_at_every_cpu_kernel_level() {
    // The other tests run the fastest level; this one runs each level this CPU has.
    for level in sd_kernels::Level::available() {
        eprintln!("kernel level {level}");
        sd_kernels::cpu::with_level(level, || {
            check_against_reference("tiny_sd15");
            check_against_reference("tiny_sdxl");
        });
    }
}
