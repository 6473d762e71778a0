//! One request for every front end: `sd generate --print-request` prints the JSON request its
//! flags make, `--request FILE.json` (or `-`, stdin) runs it, and the library's entry point
//! `pipeline::run` makes from that JSON the same image, infotext included, as `sd generate`
//! with the flags. A models folder in A1111's layout resolves the model, `<lora:>` tags and
//! embeddings by name; a malformed request is refused with exit code 2, naming the field.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::{assert_success, fixtures, rgb, scratch, sd, sd_command, tiny_model};
use stable_diffusion::image::{read_parameters, InfoText};
use stable_diffusion::pipeline::{run, Asset, Control, GenerationRequest, LoadOptions, ModelStore};

/// Flags of an img2img run with a LoRA, an embedding and A1111 prompt syntax.
fn flags(model: &Path) -> Vec<String> {
    let lora = fixtures().join("lora/kohya.safetensors:0.8");
    let embedding = fixtures().join("prompts/tisingle.safetensors");
    let init = fixtures().join("pipeline/init.png");
    [
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "a (red:1.2) tisingle circle",
        "--negative-prompt",
        "blurry",
        "--prompt-syntax",
        "a1111",
        "--sampler",
        "DPM++ 2M",
        "--schedule",
        "karras",
        "--steps",
        "5",
        "--seed",
        "321",
        "--init-image",
        init.to_str().unwrap(),
        "--strength",
        "0.7",
        "--lora",
        lora.to_str().unwrap(),
        "--embedding",
        embedding.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `sd generate` with `args`, writing `output`.
fn generate(output: &Path, args: &[String]) -> String {
    let mut all = vec![
        "generate".to_string(),
        "--output".into(),
        output.display().to_string(),
    ];
    all.extend_from_slice(args);
    assert_success(&sd(&all), &format!("{args:?}"))
}

/// The JSON request that `args` make.
fn printed_request(args: &[String]) -> String {
    let mut all = vec!["generate".to_string(), "--print-request".into()];
    all.extend_from_slice(args);
    let output = sd(&all);
    assert_success(&output, "--print-request");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_library_entry_point_makes_the_image_sd_generate_makes() {
    let dir = scratch("request-entry");
    let model = tiny_model();
    let args = flags(&model);
    let cli = dir.join("cli.png");
    generate(&cli, &args);

    let json = printed_request(&args);
    let request = GenerationRequest::from_json(&json).unwrap();
    // No paths in the request: the model, LoRA and embedding are names.
    assert_eq!(request.model.as_deref(), Some("tiny-sd15"));
    assert_eq!(request.loras[0].name, "kohya");
    assert_eq!(request.loras[0].weight, 0.8);
    assert_eq!(request.embeddings, ["tisingle"]);
    assert!(!json.contains(fixtures().to_str().unwrap()), "{json}");

    // The names resolve in a store that holds the same files.
    let mut store = ModelStore::new();
    store.add(Asset::Checkpoint, &model);
    store.add(Asset::Lora, fixtures().join("lora/kohya.safetensors"));
    store.add(
        Asset::Embedding,
        fixtures().join("prompts/tisingle.safetensors"),
    );
    let output = run(&store, &LoadOptions::default(), &request, &mut |_| {
        Control::Continue
    })
    .unwrap();
    assert_eq!(output.seeds, [321]);
    assert_eq!(output.images.len(), 1);
    assert_eq!(
        output.images[0],
        rgb(&cli),
        "pixels differ from sd generate's"
    );
    let cli_text = read_parameters(&cli).unwrap().unwrap();
    assert_eq!(output.infotexts[0].to_string(), cli_text);
    assert!(cli_text.contains("Lora hashes: \"kohya: "), "{cli_text}");
    assert!(cli_text.contains("TI hashes: \"tisingle: "), "{cli_text}");

    // `--request FILE` and `--request -` write the same PNG byte for byte.
    let file = dir.join("request.json");
    std::fs::write(&file, &json).unwrap();
    let again = dir.join("again.png");
    let store_flags = [
        "--model".to_string(),
        model.display().to_string(),
        "--lora-dir".into(),
        fixtures().join("lora").display().to_string(),
        "--embeddings-dir".into(),
        fixtures().join("prompts").display().to_string(),
    ];
    let mut with_file = vec!["--request".to_string(), file.display().to_string()];
    with_file.extend_from_slice(&store_flags);
    generate(&again, &with_file);
    assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&cli).unwrap());

    let stdin_png = dir.join("stdin.png");
    let mut child = sd_command()
        .args([
            "generate",
            "--request",
            "-",
            "--output",
            stdin_png.to_str().unwrap(),
        ])
        .args(&store_flags)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(json.as_bytes())
        .unwrap();
    let done = child.wait_with_output().unwrap();
    assert_success(&done, "--request -");
    assert_eq!(
        std::fs::read(&stdin_png).unwrap(),
        std::fs::read(&cli).unwrap()
    );
}

#[test]
fn flags_override_a_json_request_and_an_unset_seed_is_reported() {
    let dir = scratch("request-override");
    let request = GenerationRequest {
        prompt: "a blue square".into(),
        width: Some(32),
        height: Some(32),
        steps: 2,
        ..Default::default()
    };
    let file = dir.join("r.json");
    std::fs::write(&file, request.to_json()).unwrap();
    let model = tiny_model();
    let args = [
        "--request",
        file.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--steps",
        "3",
    ]
    .map(String::from);
    let printed = GenerationRequest::from_json(&printed_request(&args)).unwrap();
    assert_eq!(printed.steps, 3);
    assert_eq!(printed.prompt, "a blue square");
    assert_eq!(printed.seed, None);
    let png = dir.join("out.png");
    let stderr = generate(&png, &args);
    let seed: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("seed: "))
        .unwrap_or_else(|| panic!("no seed reported: {stderr}"))
        .trim()
        .parse()
        .unwrap();
    let info = InfoText::parse(&read_parameters(&png).unwrap().unwrap());
    assert_eq!(info.get("Seed"), Some(seed.to_string().as_str()));
    assert_eq!(info.get("Steps"), Some("3"));
}

#[test]
fn print_schema_prints_the_librarys_json_schema() {
    let output = sd(["generate", "--print-schema"]);
    assert_success(&output, "--print-schema");
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed, GenerationRequest::json_schema());
    assert!(printed["properties"]["prompt"].is_object(), "{printed:#}");
}

#[test]
fn a_malformed_request_is_refused_naming_the_field() {
    let dir = scratch("request-bad");
    for (json, field) in [
        (r#"{"prompt": "x", "steps": "many"}"#, "steps"),
        (r#"{"prompt": "x", "sampler": "warp drive"}"#, "sampler"),
        (
            r#"{"prompt": "x", "sampler_options": {"s_churn": [1]}}"#,
            "sampler_options.s_churn",
        ),
        (r#"{"prompt": "x", "init_image": "***"}"#, "init_image"),
        (
            r#"{"prompt": "x", "hires": {"upscaler": "esrgan"}}"#,
            "hires.upscaler",
        ),
        (r#"{"prompt": "x", "steps": 0}"#, "steps"),
        (r#"["not", "an", "object"]"#, "request"),
    ] {
        let file = dir.join("bad.json");
        std::fs::write(&file, json).unwrap();
        let out = sd([
            "generate",
            "--request",
            file.to_str().unwrap(),
            "--model",
            tiny_model().to_str().unwrap(),
            "--output",
            dir.join("never.png").to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{json}: {stderr}");
        assert!(
            stderr.contains(field),
            "{json}: the message does not name `{field}`: {stderr}"
        );
        assert!(!dir.join("never.png").exists());
    }
}

/// A models folder in A1111's layout, of links to the fixtures.
fn models_folder(dir: &Path) -> PathBuf {
    let root = dir.join("webui");
    for (folder, target) in [
        (
            "models/Stable-diffusion",
            fixtures().join("models/tiny-sd15"),
        ),
        (
            "models/Lora/styles",
            fixtures().join("lora/kohya.safetensors"),
        ),
        ("models/VAE", fixtures().join("models/tiny-vae-alt")),
        (
            "embeddings",
            fixtures().join("prompts/tisingle.safetensors"),
        ),
    ] {
        std::fs::create_dir_all(root.join(folder)).unwrap();
        let link = root.join(folder).join(target.file_name().unwrap());
        std::os::unix::fs::symlink(&target, link).unwrap();
    }
    root
}

#[test]
fn a_models_folder_resolves_the_model_networks_and_embeddings_by_name() {
    let dir = scratch("request-models-dir");
    let root = models_folder(&dir);
    let by_paths = dir.join("paths.png");
    let model = tiny_model();
    let common = [
        "--prompt",
        "a tisingle circle <lora:kohya:0.6>",
        "--prompt-syntax",
        "a1111",
        "--steps",
        "3",
        "--seed",
        "5",
        "--width",
        "32",
        "--height",
        "32",
    ]
    .map(String::from);
    let mut args = common.to_vec();
    args.extend(
        [
            "--model",
            model.to_str().unwrap(),
            "--lora-dir",
            fixtures().join("lora").to_str().unwrap(),
            "--embeddings-dir",
            fixtures().join("prompts").to_str().unwrap(),
            "--vae",
            fixtures().join("models/tiny-vae-alt").to_str().unwrap(),
        ]
        .map(String::from),
    );
    generate(&by_paths, &args);

    let by_names = dir.join("names.png");
    let mut args = common.to_vec();
    args.extend(
        [
            "--models-dir",
            root.to_str().unwrap(),
            "--model",
            "tiny-sd15",
            "--vae",
            "tiny-vae-alt",
        ]
        .map(String::from),
    );
    generate(&by_names, &args);
    assert!(
        rgb(&by_names) == rgb(&by_paths),
        "names and paths made other images"
    );
    let text = read_parameters(&by_names).unwrap().unwrap();
    assert!(text.contains("Lora hashes: \"kohya: "), "{text}");
    assert!(text.contains("TI hashes: \"tisingle: "), "{text}");
    assert!(text.contains("Model: tiny-sd15"), "{text}");

    // --from-png finds the model and VAE its infotext names, with no further flags.
    let again = dir.join("again.png");
    let out = sd([
        "generate",
        "--from-png",
        by_names.to_str().unwrap(),
        "--models-dir",
        root.to_str().unwrap(),
        "--output",
        again.to_str().unwrap(),
    ]);
    let stderr = assert_success(&out, "--from-png with --models-dir");
    assert!(!stderr.contains("not in the store"), "{stderr}");
    assert!(
        rgb(&again) == rgb(&by_names),
        "--from-png made another image"
    );

    // A name the folder lacks is refused, listing what it holds.
    let out = sd([
        "generate",
        "--models-dir",
        root.to_str().unwrap(),
        "--model",
        "sd-xxl",
        "--prompt",
        "x",
        "--output",
        dir.join("never.png").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("sd-xxl") && stderr.contains("tiny-sd15"),
        "{stderr}"
    );
}

#[test]
fn the_store_resolves_a_checkpoint_by_title_and_hash() {
    let dir = scratch("request-store-hash");
    let root = dir.join("models/Stable-diffusion");
    std::fs::create_dir_all(&root).unwrap();
    // A single file (A1111 hashes single files, not folders).
    let file = root.join("tiny.safetensors");
    std::fs::write(&file, b"not really weights, but a file to hash").unwrap();
    let store = ModelStore::with_models_dir(&dir).unwrap();
    let entry = store.list(Asset::Checkpoint)[0].clone();
    assert_eq!(entry.name, "tiny");
    let title = entry.title().unwrap();
    let hash = title
        .trim_end_matches(']')
        .rsplit_once('[')
        .unwrap()
        .1
        .to_string();
    assert_eq!(hash.len(), 10, "{title}");
    for name in ["tiny", "tiny.safetensors", title.as_str(), hash.as_str()] {
        assert_eq!(
            store.resolve(Asset::Checkpoint, name).unwrap(),
            file,
            "{name}"
        );
    }
    // A renamed file is still found by the hash of an old title.
    assert_eq!(
        store
            .resolve(Asset::Checkpoint, &format!("old-name [{hash}]"))
            .unwrap(),
        file
    );
    assert!(store.resolve(Asset::Checkpoint, "other").is_err());
}

#[test]
fn sd_models_lists_a_models_folder_with_a1111_titles() {
    let dir = scratch("request-sd-models");
    let root = models_folder(&dir);
    let single = root.join("models/Stable-diffusion/tiny-single.safetensors");
    std::os::unix::fs::symlink(
        fixtures().join("single_file/tiny_sd15.safetensors"),
        &single,
    )
    .unwrap();
    let out = sd(["models", "--models-dir", root.to_str().unwrap(), "--json"]);
    assert_success(&out, "sd models");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = list.as_array().unwrap();
    let find = |kind: &str, name: &str| {
        rows.iter()
            .find(|r| r["kind"] == kind && r["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in {list}"))
    };
    // A folder has no hash (A1111 hashes single files); a single file's title carries it.
    assert_eq!(find("checkpoint", "tiny-sd15")["title"], "tiny-sd15");
    let title = find("checkpoint", "tiny-single")["title"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        title.starts_with("tiny-single [") && title.len() == "tiny-single [".len() + 11,
        "{title}"
    );
    find("lora", "kohya");
    find("vae", "tiny-vae-alt");
    find("embedding", "tisingle");
    // The title resolves back to the file.
    let hash = &title["tiny-single [".len()..title.len() - 1];
    let store = ModelStore::with_models_dir(&root).unwrap();
    assert_eq!(store.resolve(Asset::Checkpoint, hash).unwrap(), single);
    let out = sd([
        "models",
        "--models-dir",
        dir.join("missing").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a1111_combined_sampler_names_set_the_schedule() {
    let dir = scratch("request-combined");
    let model = tiny_model();
    let base = [
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "a circle",
        "--steps",
        "3",
        "--seed",
        "4",
        "--width",
        "32",
        "--height",
        "32",
    ]
    .map(String::from);
    let (combined, split) = (dir.join("combined.png"), dir.join("split.png"));
    let mut args = base.to_vec();
    args.extend(["--sampler", "DPM++ 2M Karras"].map(String::from));
    generate(&combined, &args);
    let mut args = base.to_vec();
    args.extend(["--sampler", "DPM++ 2M", "--schedule", "karras"].map(String::from));
    generate(&split, &args);
    assert_eq!(
        std::fs::read(&combined).unwrap(),
        std::fs::read(&split).unwrap()
    );
}
