//! Weight and folder loading: dtypes, sharding, variants, key maps, and every bad input giving
//! a clear error (never a panic). The files are made at run time in scratch folders.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use stable_diffusion::loading::{DiffusersFolder, KeyMap, SafetensorsFile, Source, Weights};
use stable_diffusion::Error;

/// A scratch folder that is removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sd-rs-loading-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, rel: &str) -> PathBuf {
        let path = self.0.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        path
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.path(rel);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cpu() -> Device {
    Device::Cpu
}

/// `(rows, cols)` tensor with values `start, start + 0.5, ...` (exact in f16 and bf16).
fn ramp(rows: usize, cols: usize, start: f32) -> Tensor {
    let values: Vec<f32> = (0..rows * cols).map(|i| start + 0.5 * i as f32).collect();
    Tensor::from_vec(values, (rows, cols), &cpu()).unwrap()
}

fn save(path: &Path, tensors: &[(&str, Tensor)]) {
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    candle_core::safetensors::save(&map, path).unwrap();
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn half_precision_weights_convert_to_the_requested_dtype() {
    let scratch = Scratch::new("dtypes");
    let path = scratch.path("w.safetensors");
    let a = ramp(2, 3, -1.0);
    save(
        &path,
        &[
            ("f16", a.to_dtype(DType::F16).unwrap()),
            ("bf16", a.to_dtype(DType::BF16).unwrap()),
            ("f32", a.clone()),
        ],
    );
    let weights = Weights::open(&path).unwrap();
    assert_eq!(weights.names(), vec!["bf16", "f16", "f32"]);
    for name in ["f16", "bf16", "f32"] {
        let as_f32 = weights.load(name, DType::F32, &cpu()).unwrap();
        assert_eq!(as_f32.dtype(), DType::F32);
        assert_eq!(values(&as_f32), values(&a), "{name} as f32");
        let as_f16 = weights.load(name, DType::F16, &cpu()).unwrap();
        assert_eq!(as_f16.dtype(), DType::F16);
        assert_eq!(values(&as_f16), values(&a), "{name} as f16");
    }
    // Through a VarBuilder, at the builder's dtype.
    let vb = weights.into_var_builder(DType::F32, &cpu());
    let t = vb.get((2, 3), "bf16").unwrap();
    assert_eq!(t.dtype(), DType::F32);
    assert_eq!(values(&t), values(&a));
}

#[test]
fn missing_tensor_through_var_builder_names_it_and_the_file() {
    let scratch = Scratch::new("missing-tensor");
    let path = scratch.path("w.safetensors");
    save(&path, &[("present.weight", ramp(2, 2, 0.0))]);
    let vb = Weights::open(&path)
        .unwrap()
        .into_var_builder(DType::F32, &cpu());
    let err = Error::from(vb.pp("block").get((2, 2), "weight").unwrap_err());
    match &err {
        Error::MissingTensor { name, location } => {
            assert_eq!(name, "block.weight");
            assert!(location.contains("w.safetensors"), "{location}");
        }
        other => panic!("expected MissingTensor, got {other}"),
    }
}

#[test]
fn wrong_shape_through_var_builder_gives_expected_and_found() {
    let scratch = Scratch::new("wrong-shape");
    let path = scratch.path("w.safetensors");
    save(&path, &[("proj.weight", ramp(4, 3, 0.0))]);
    let vb = Weights::open(&path)
        .unwrap()
        .into_var_builder(DType::F32, &cpu());
    let err = Error::from(vb.get((3, 4), "proj.weight").unwrap_err());
    match &err {
        Error::ShapeMismatch {
            name,
            expected,
            found,
        } => {
            assert_eq!(name, "proj.weight");
            assert_eq!(expected, &[3, 4]);
            assert_eq!(found, &[4, 3]);
        }
        other => panic!("expected ShapeMismatch, got {other}"),
    }
    assert_eq!(
        err.to_string(),
        "tensor `proj.weight` has shape [4, 3], expected [3, 4]"
    );
}

#[test]
fn corrupt_files_give_a_safetensors_error_naming_the_file() {
    let scratch = Scratch::new("corrupt");
    let good = scratch.path("good.safetensors");
    save(&good, &[("a", ramp(8, 8, 0.0)), ("b", ramp(4, 4, 1.0))]);
    let bytes = std::fs::read(&good).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;

    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("short", vec![1, 2, 3]),
        ("truncated-data", bytes[..bytes.len() - 10].to_vec()),
        ("truncated-header", bytes[..8 + header_len / 2].to_vec()),
        ("huge-header-length", {
            let mut b = bytes.clone();
            b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
            b
        }),
        ("padded", {
            let mut b = bytes.clone();
            b.extend_from_slice(&[0; 16]);
            b
        }),
    ];
    let mut garbage = bytes.clone();
    for byte in &mut garbage[8..8 + header_len] {
        *byte = b'#';
    }
    cases.push(("garbage-header", garbage));
    let mut bad_offsets = bytes.clone();
    let header = String::from_utf8(bad_offsets[8..8 + header_len].to_vec()).unwrap();
    // Same length, offsets pointing past the data.
    let edited = header.replacen("\"data_offsets\":[0,", "\"data_offsets\":[9,", 1);
    assert_eq!(edited.len(), header.len());
    bad_offsets[8..8 + header_len].copy_from_slice(edited.as_bytes());
    cases.push(("bad-offsets", bad_offsets));

    for (name, content) in cases {
        let path = scratch.path(&format!("{name}.safetensors"));
        std::fs::write(&path, content).unwrap();
        for err in [
            SafetensorsFile::open(&path).unwrap_err(),
            Weights::open(&path).unwrap_err(),
        ] {
            match &err {
                Error::Safetensors { path: at, msg } => {
                    assert_eq!(*at, path, "{name}: names the file");
                    assert!(!msg.is_empty());
                    assert!(err.to_string().contains(&format!("{name}.safetensors")));
                }
                other => panic!("{name}: expected a Safetensors error, got {other}"),
            }
        }
    }
}

#[test]
fn missing_weights_file_is_not_found() {
    let scratch = Scratch::new("no-file");
    let err = Weights::open(scratch.0.join("absent.safetensors")).unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    let err = Weights::open(scratch.0.join("absent.safetensors.index.json")).unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}

fn write_sharded(scratch: &Scratch, dir: &str, index_name: &str, shard_stem: &str) -> PathBuf {
    let shard1 = format!("{shard_stem}-00001-of-00002.safetensors");
    let shard2 = format!("{shard_stem}-00002-of-00002.safetensors");
    save(
        &scratch.path(&format!("{dir}/{shard1}")),
        &[
            ("a.weight", ramp(2, 2, 0.0)),
            ("b.weight", ramp(2, 2, 10.0)),
        ],
    );
    save(
        &scratch.path(&format!("{dir}/{shard2}")),
        &[("c.weight", ramp(3, 1, 20.0))],
    );
    let index = format!(
        r#"{{"metadata": {{"total_size": 44}}, "weight_map": {{"a.weight": "{shard1}", "b.weight": "{shard1}", "c.weight": "{shard2}"}}}}"#
    );
    scratch.write(&format!("{dir}/{index_name}"), &index)
}

#[test]
fn sharded_checkpoint_loads_every_shard() {
    let scratch = Scratch::new("sharded");
    let index = write_sharded(&scratch, "m", "model.safetensors.index.json", "model");
    let weights = Weights::open(&index).unwrap();
    assert_eq!(weights.paths().len(), 2);
    assert_eq!(weights.names(), vec!["a.weight", "b.weight", "c.weight"]);
    let vb = weights.into_var_builder(DType::F32, &cpu());
    assert_eq!(values(&vb.get((2, 2), "b.weight").unwrap())[0], 10.0);
    assert_eq!(values(&vb.get((3, 1), "c.weight").unwrap())[0], 20.0);

    // An index naming a shard that is not there.
    scratch.write(
        "bad/model.safetensors.index.json",
        r#"{"weight_map": {"a.weight": "gone.safetensors"}}"#,
    );
    let err = Weights::open(scratch.0.join("bad/model.safetensors.index.json")).unwrap_err();
    match err {
        Error::NotFound { path, .. } => assert!(path.ends_with("gone.safetensors")),
        other => panic!("expected NotFound, got {other}"),
    }
    // An index that is not JSON.
    let bad = scratch.write("bad2/model.safetensors.index.json", "{ weight_map: ");
    let err = Weights::open(&bad).unwrap_err();
    match err {
        Error::Config { path, .. } => assert_eq!(path, bad),
        other => panic!("expected Config, got {other}"),
    }
    // An index promising a tensor its shard does not hold.
    save(
        &scratch.path("bad3/s.safetensors"),
        &[("a.weight", ramp(1, 1, 0.0))],
    );
    scratch.write(
        "bad3/model.safetensors.index.json",
        r#"{"weight_map": {"a.weight": "s.safetensors", "z.weight": "s.safetensors"}}"#,
    );
    let err = Weights::open(scratch.0.join("bad3/model.safetensors.index.json")).unwrap_err();
    match err {
        Error::MissingTensor { name, .. } => assert_eq!(name, "z.weight"),
        other => panic!("expected MissingTensor, got {other}"),
    }
}

#[test]
fn key_map_lets_one_name_load_from_either_layout() {
    let scratch = Scratch::new("key-map");
    let path = scratch.path("w.safetensors");
    save(
        &path,
        &[
            ("text_model.embeddings.weight", ramp(2, 2, 1.0)),
            ("final.weight", ramp(2, 2, 5.0)),
        ],
    );
    let plain = Weights::open(&path).unwrap();
    assert!(!plain.contains("embeddings.weight"));
    let mapped = plain.with_key_map(KeyMap::optional_prefix("text_model."));
    let vb = mapped.into_var_builder(DType::F32, &cpu());
    assert_eq!(
        values(&vb.get((2, 2), "embeddings.weight").unwrap())[0],
        1.0
    );
    assert_eq!(
        values(&vb.get((2, 2), "text_model.final.weight").unwrap())[0],
        5.0
    );
    assert!(vb.contains_tensor("text_model.embeddings.weight"));

    // A custom candidates function, as LDM key tables will use.
    let ldm = Weights::open(&path)
        .unwrap()
        .with_key_map(KeyMap::from_fn(|name| {
            vec![name.replace("encoder.token_embedding", "text_model.embeddings")]
        }));
    assert_eq!(
        ldm.shape("encoder.token_embedding.weight"),
        Some(vec![2, 2])
    );
}

/// A pipeline folder with a `unet` (given weight files) and a `vae` (config only).
fn pipeline(scratch: &Scratch, unet_files: &[(&str, f32)]) -> PathBuf {
    scratch.write(
        "pipe/model_index.json",
        r#"{
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": "0.42.1",
            "requires_safety_checker": false,
            "safety_checker": [null, null],
            "feature_extractor": null,
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            "scheduler": ["diffusers", "PNDMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"]
        }"#,
    );
    scratch.write(
        "pipe/unet/config.json",
        r#"{"in_channels": 4, "sample_size": 8}"#,
    );
    scratch.write("pipe/vae/config.json", r#"{"latent_channels": 4}"#);
    scratch.write(
        "pipe/scheduler/scheduler_config.json",
        r#"{"num_train_timesteps": 1000}"#,
    );
    for (name, start) in unet_files {
        let path = scratch.path(&format!("pipe/unet/{name}"));
        let tensor = ramp(2, 2, *start);
        let tensor = if name.contains("fp16") {
            tensor.to_dtype(DType::F16).unwrap()
        } else {
            tensor
        };
        save(&path, &[("conv_in.weight", tensor)]);
    }
    scratch.0.join("pipe")
}

fn first_value(folder: &DiffusersFolder, variant: Option<&str>) -> f32 {
    let vb = folder.weights("unet", variant, DType::F32, &cpu()).unwrap();
    values(&vb.get((2, 2), "conv_in.weight").unwrap())[0]
}

#[test]
fn diffusers_folder_reads_index_and_configs() {
    #[derive(serde::Deserialize)]
    struct UnetBits {
        in_channels: usize,
        sample_size: usize,
    }
    #[derive(serde::Deserialize)]
    struct SchedulerBits {
        num_train_timesteps: usize,
    }
    let scratch = Scratch::new("folder");
    let root = pipeline(&scratch, &[("diffusion_pytorch_model.safetensors", 1.0)]);
    let folder = DiffusersFolder::open(&root).unwrap();
    assert_eq!(folder.pipeline_class(), "StableDiffusionPipeline");
    let names: Vec<&str> = folder.components().keys().map(String::as_str).collect();
    assert_eq!(names, vec!["scheduler", "text_encoder", "unet", "vae"]);
    assert_eq!(
        folder.component_class("unet").unwrap().class,
        "UNet2DConditionModel"
    );
    assert!(!folder.has_component("safety_checker"));
    let unet: UnetBits = folder.config("unet").unwrap();
    assert_eq!((unet.in_channels, unet.sample_size), (4, 8));
    let scheduler: SchedulerBits = folder.config("scheduler").unwrap();
    assert_eq!(scheduler.num_train_timesteps, 1000);
    assert_eq!(first_value(&folder, None), 1.0);
}

#[test]
fn variants_prefer_plain_weights_and_fall_back_to_fp16() {
    let scratch = Scratch::new("variants");
    // Both present: None takes the plain file, Some("fp16") the variant.
    let root = pipeline(
        &scratch,
        &[
            ("diffusion_pytorch_model.safetensors", 1.0),
            ("diffusion_pytorch_model.fp16.safetensors", 2.0),
        ],
    );
    let folder = DiffusersFolder::open(&root).unwrap();
    assert_eq!(first_value(&folder, None), 1.0);
    assert_eq!(first_value(&folder, Some("fp16")), 2.0);
    let err = folder
        .weights("unet", Some("bf16"), DType::F32, &cpu())
        .err()
        .unwrap();
    match err {
        Error::NotFound { path, .. } => {
            assert!(path.ends_with("unet/diffusion_pytorch_model.bf16.safetensors"))
        }
        other => panic!("expected NotFound, got {other}"),
    }

    // Only the fp16 variant: None uses it.
    std::fs::remove_file(root.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    assert_eq!(first_value(&folder, None), 2.0);

    // transformers' names work too, and a sharded fp16 index beats nothing.
    std::fs::remove_file(root.join("unet/diffusion_pytorch_model.fp16.safetensors")).unwrap();
    write_sharded(
        &scratch,
        "pipe/unet",
        "diffusion_pytorch_model.safetensors.index.fp16.json",
        "diffusion_pytorch_model.fp16",
    );
    let path = folder.weights_path("unet", None).unwrap();
    assert!(path.ends_with("diffusion_pytorch_model.safetensors.index.fp16.json"));
    let vb = folder.weights("unet", None, DType::F16, &cpu()).unwrap();
    assert_eq!(vb.get((3, 1), "c.weight").unwrap().dtype(), DType::F16);

    save(
        &scratch.path("pipe/unet/model.safetensors"),
        &[("conv_in.weight", ramp(2, 2, 3.0))],
    );
    assert_eq!(first_value(&folder, None), 3.0);
}

#[test]
fn text_encoder_components_load_either_key_layout() {
    let scratch = Scratch::new("te-layout");
    let root = pipeline(&scratch, &[]);
    scratch.write("pipe/text_encoder/config.json", "{}");
    save(
        &scratch.path("pipe/text_encoder/model.safetensors"),
        &[("text_model.final_layer_norm.weight", ramp(1, 4, 1.0))],
    );
    let folder = DiffusersFolder::open(&root).unwrap();
    let vb = folder
        .weights("text_encoder", None, DType::F32, &cpu())
        .unwrap();
    assert!(vb.contains_tensor("final_layer_norm.weight"));
}

#[test]
fn folder_problems_are_clear_errors() {
    let scratch = Scratch::new("folder-errors");

    // No folder.
    let err = DiffusersFolder::open(scratch.0.join("nowhere")).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::NotFound {
                what: "model folder",
                ..
            }
        ),
        "{err}"
    );

    // Folder without model_index.json.
    std::fs::create_dir_all(scratch.0.join("empty")).unwrap();
    let err = DiffusersFolder::open(scratch.0.join("empty")).unwrap_err();
    match &err {
        Error::NotFound { path, .. } => assert!(path.ends_with("empty/model_index.json")),
        other => panic!("expected NotFound, got {other}"),
    }

    // model_index.json that is not JSON, or lacks its class name.
    let bad = scratch.write("badjson/model_index.json", "{\"_class_name\": ");
    match DiffusersFolder::open(scratch.0.join("badjson")).unwrap_err() {
        Error::Config { path, msg } => {
            assert_eq!(path, bad);
            assert!(msg.contains("line 1"), "{msg}");
        }
        other => panic!("expected Config, got {other}"),
    }
    scratch.write(
        "noclass/model_index.json",
        r#"{"unet": ["diffusers", "X"]}"#,
    );
    let err = DiffusersFolder::open(scratch.0.join("noclass")).unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");

    let root = pipeline(&scratch, &[]);
    let folder = DiffusersFolder::open(&root).unwrap();

    // A component model_index.json does not list.
    match folder
        .config::<serde_json::Value>("controlnet")
        .unwrap_err()
    {
        Error::Config { path, msg } => {
            assert!(path.ends_with("model_index.json"));
            assert!(msg.contains("controlnet") && msg.contains("unet"), "{msg}");
        }
        other => panic!("expected Config, got {other}"),
    }
    // A listed component whose folder is missing.
    let err = folder
        .config::<serde_json::Value>("text_encoder")
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::NotFound {
                what: "component folder",
                ..
            }
        ),
        "{err}"
    );
    // A component folder without config.json.
    std::fs::create_dir_all(root.join("text_encoder")).unwrap();
    let err = folder
        .config::<serde_json::Value>("text_encoder")
        .unwrap_err();
    match &err {
        Error::NotFound { path, .. } => assert!(path.ends_with("text_encoder/config.json")),
        other => panic!("expected NotFound, got {other}"),
    }
    // A config.json with bad JSON, and one with a wrongly typed value.
    let bad = scratch.write("pipe/text_encoder/config.json", "[1, 2");
    match folder
        .config::<serde_json::Value>("text_encoder")
        .unwrap_err()
    {
        Error::Config { path, .. } => assert_eq!(path, bad),
        other => panic!("expected Config, got {other}"),
    }
    scratch.write("pipe/vae/config.json", r#"{"latent_channels": "four"}"#);
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct VaeBits {
        latent_channels: usize,
    }
    match folder.config::<VaeBits>("vae").unwrap_err() {
        Error::Config { path, msg } => {
            assert!(path.ends_with("vae/config.json"));
            assert!(msg.contains("four"), "{msg}");
        }
        other => panic!("expected Config, got {other}"),
    }
    // No weights in the component folder, then only a pickle.
    let err = folder
        .weights("vae", None, DType::F32, &cpu())
        .err()
        .unwrap();
    match &err {
        Error::NotFound { path, .. } => {
            assert!(path.ends_with("vae/diffusion_pytorch_model.safetensors"))
        }
        other => panic!("expected NotFound, got {other}"),
    }
    scratch.write("pipe/vae/diffusion_pytorch_model.bin", "pickle");
    let err = folder
        .weights("vae", None, DType::F32, &cpu())
        .err()
        .unwrap();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("safetensors"));
    // A corrupt weights file inside a folder names that file.
    scratch.write(
        "pipe/vae/diffusion_pytorch_model.safetensors",
        "garbage!garbage!",
    );
    match folder
        .weights("vae", None, DType::F32, &cpu())
        .err()
        .unwrap()
    {
        Error::Safetensors { path, .. } => {
            assert!(path.ends_with("vae/diffusion_pytorch_model.safetensors"))
        }
        other => panic!("expected Safetensors, got {other}"),
    }
}

#[test]
fn key_map_sources_split_fused_tensors_and_reshape_conv_weights() {
    let scratch = Scratch::new("sources");
    let path = scratch.path("ldm.safetensors");
    // A fused (3 * 2, 2) qkv weight, and a 1x1 conv weight (2, 2, 1, 1) for a linear layer.
    save(
        &path,
        &[
            ("attn.in_proj_weight", ramp(6, 2, 0.0)),
            (
                "attn.proj_out.weight",
                ramp(2, 2, 100.0).reshape((2, 2, 1, 1)).unwrap(),
            ),
        ],
    );
    let map = KeyMap::from_sources_fn(|name| match name {
        "q.weight" => vec![Source::new("attn.in_proj_weight").rows(0..2)],
        "k.weight" => vec![Source::new("attn.in_proj_weight").rows(2..4)],
        "v.weight" => vec![Source::new("attn.in_proj_weight").rows(4..6)],
        "bad.weight" => vec![Source::new("attn.in_proj_weight").rows(4..8)],
        "out.weight" => vec![Source::new("attn.proj_out.weight").reshaped()],
        "out_strict.weight" => vec![Source::new("attn.proj_out.weight")],
        _ => Vec::new(),
    });
    let weights = Weights::open(&path).unwrap().with_key_map(map);
    assert_eq!(weights.shape("k.weight"), Some(vec![2, 2]));
    assert!(
        !weights.contains("bad.weight"),
        "rows past the end do not resolve"
    );
    let vb = weights.into_var_builder(DType::F32, &cpu());
    assert_eq!(
        values(&vb.get((2, 2), "q.weight").unwrap()),
        vec![0.0, 0.5, 1.0, 1.5]
    );
    assert_eq!(
        values(&vb.get((2, 2), "v.weight").unwrap()),
        vec![4.0, 4.5, 5.0, 5.5]
    );
    let out = vb.get((2, 2), "out.weight").unwrap();
    assert_eq!(out.dims(), &[2, 2]);
    assert_eq!(values(&out)[0], 100.0);
    let err = Error::from(vb.get((2, 2), "out_strict.weight").unwrap_err());
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
}

/// A change to one config file: its path in the model folder and what to do to its JSON.
type ConfigEdit<'a> = (&'a str, &'a dyn Fn(&mut serde_json::Value));

/// Copies the tiny SD 1.5 folder into `scratch` under `name`, with `edit` applied to the JSON
/// of each config file it names (relative path).
fn edited_tiny_model(scratch: &Scratch, name: &str, edit: &[ConfigEdit]) -> PathBuf {
    let source = common::fixture("models/tiny-sd15");
    let root = scratch.0.join(name);
    for entry in [
        "model_index.json",
        "unet",
        "vae",
        "scheduler",
        "text_encoder",
        "tokenizer",
    ] {
        let from = source.join(entry);
        if from.is_file() {
            std::fs::create_dir_all(&root).unwrap();
            std::fs::copy(&from, root.join(entry)).unwrap();
            continue;
        }
        std::fs::create_dir_all(root.join(entry)).unwrap();
        for file in std::fs::read_dir(&from).unwrap() {
            let file = file.unwrap().path();
            std::fs::copy(&file, root.join(entry).join(file.file_name().unwrap())).unwrap();
        }
    }
    for (rel, change) in edit {
        let path = root.join(rel);
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        change(&mut json);
        std::fs::write(&path, json.to_string()).unwrap();
    }
    root
}

#[test]
fn models_of_no_known_kind_are_clear_errors() {
    use stable_diffusion::pipeline::{LoadOptions, ModelFamily, StableDiffusion};
    let scratch = Scratch::new("kinds");
    let load = |root: &Path| StableDiffusion::load(root, &LoadOptions::default());

    let root = edited_tiny_model(&scratch, "plain", &[]);
    assert_eq!(load(&root).unwrap().family(), ModelFamily::Sd1);

    let five_channels = |unet: &mut serde_json::Value| unet["in_channels"] = 5.into();
    let root = edited_tiny_model(
        &scratch,
        "channels",
        &[("unet/config.json", &five_channels)],
    );
    let err = load(&root).err().expect("5 input channels are refused");
    assert!(
        matches!(&err, Error::Unsupported { what: "UNet input channels", value, .. } if value == "5"),
        "{err}"
    );
    assert!(err.to_string().contains("9 (inpainting)"), "{err}");

    let no_text = |index: &mut serde_json::Value| {
        index.as_object_mut().unwrap().remove("text_encoder");
    };
    let root = edited_tiny_model(&scratch, "no-text", &[("model_index.json", &no_text)]);
    let err = load(&root)
        .err()
        .expect("a model without a text encoder is refused");
    match &err {
        Error::Config { path, msg } => {
            assert!(path.ends_with("model_index.json"), "{err}");
            assert!(msg.contains("no text encoder"), "{err}");
        }
        other => panic!("expected Config, got {other}"),
    }
}
