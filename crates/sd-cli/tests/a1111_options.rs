//! A1111 options end to end: `--variation-seed`/`--variation-strength` and
//! `--seed-resize-from-w/-h` (the infotext keys A1111 writes, `--from-png` re-making the image,
//! the options changing it), `--embedding FILE.pt` (A1111's `.pt` gives the image of the same
//! vectors from `.safetensors`, and "TI hashes" names it with A1111's short hash: the first 12
//! hex digits of the file's SHA-256), and `--hires-upscaler latent` re-made from its PNG.

mod common;

use std::path::Path;

use common::{assert_success, fixtures, rgb, scratch, sd, sd_command, tiny_model};

fn generate(output: &Path, args: &[&str]) {
    let model = tiny_model();
    let mut all = vec![
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    assert_success(&sd(&all), &format!("{args:?}"));
}

const BASE: [&str; 12] = [
    "--prompt",
    "a red circle",
    "--sampler",
    "euler",
    "--seed",
    "7",
    "--width",
    "32",
    "--height",
    "32",
    "--steps",
    "3",
];

#[test]
fn variation_seed_and_seed_resize_are_written_and_read_back() {
    let dir = scratch("roundtrip");
    let (plain, varied, again) = (
        dir.join("plain.png"),
        dir.join("v.png"),
        dir.join("again.png"),
    );
    generate(&plain, &BASE);
    let mut args = BASE.to_vec();
    args.extend([
        "--variation-seed",
        "99",
        "--variation-strength",
        "0.4",
        "--seed-resize-from-w",
        "48",
        "--seed-resize-from-h",
        "24",
    ]);
    generate(&varied, &args);
    let text = stable_diffusion::image::read_png_text(&varied).unwrap();
    let params = &text.iter().find(|(k, _)| k == "parameters").unwrap().1;
    for key in [
        "Variation seed: 99",
        "Variation seed strength: 0.4",
        "Seed resize from: 48x24",
    ] {
        assert!(params.contains(key), "{key} missing in {params}");
    }
    assert_ne!(rgb(&plain), rgb(&varied));
    generate(&again, &["--from-png", varied.to_str().unwrap()]);
    assert_eq!(rgb(&again), rgb(&varied));
    // Without the options the infotext has none of the keys.
    let text = stable_diffusion::image::read_png_text(&plain).unwrap();
    let params = &text.iter().find(|(k, _)| k == "parameters").unwrap().1;
    assert!(!params.contains("Variation seed"), "{params}");
    assert!(!params.contains("Seed resize"), "{params}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn variation_strength_without_a_variation_seed_is_a_usage_error() {
    let dir = scratch("usage");
    let model = tiny_model();
    let out_path = dir.join("x.png");
    let out = sd([
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--output",
        out_path.to_str().unwrap(),
        "--prompt",
        "x",
        "--variation-strength",
        "0.5",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--variation-seed"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn latent_hires_is_written_and_re_made_from_the_png() {
    let dir = scratch("hires");
    let (first, again) = (dir.join("hires.png"), dir.join("again.png"));
    let mut args = BASE.to_vec();
    args.extend([
        "--hires-scale",
        "1.5",
        "--hires-upscaler",
        "latent",
        "--hires-strength",
        "0.6",
    ]);
    generate(&first, &args);
    assert_eq!(rgb(&first).dimensions(), (48, 48));
    let text = stable_diffusion::image::read_png_text(&first).unwrap();
    let params = &text.iter().find(|(k, _)| k == "parameters").unwrap().1;
    for key in [
        "Hires upscale: 1.5",
        "Hires upscaler: Latent",
        "Denoising strength: 0.6",
    ] {
        assert!(params.contains(key), "{key} missing in {params}");
    }
    generate(&again, &["--from-png", first.to_str().unwrap()]);
    assert_eq!(rgb(&again), rgb(&first));
    let _ = std::fs::remove_dir_all(&dir);
}

fn generate_with_embedding(output: &Path, embedding: &Path, prompt: &str) {
    let out = sd_command()
        .arg("generate")
        .arg("--model")
        .arg(tiny_model())
        .arg("--output")
        .arg(output)
        .arg("--embedding")
        .arg(embedding)
        .args([
            "--prompt-syntax",
            "a1111",
            "--prompt",
            prompt,
            "--negative-prompt",
            "blurry",
            "--sampler",
            "euler",
            "--seed",
            "11",
            "--width",
            "32",
            "--height",
            "32",
            "--steps",
            "2",
        ])
        .output()
        .unwrap();
    assert_success(&out, prompt);
}

#[test]
fn pt_embedding_gives_the_safetensors_image_and_ti_hashes() {
    let dir = std::env::temp_dir().join(format!("sd-cli-ti-pt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let prompts = fixtures().join("prompts");
    let (pt, st) = (dir.join("pt.png"), dir.join("st.png"));
    generate_with_embedding(&pt, &prompts.join("tivecpt.pt"), "a (tivecpt:1.1) circle");
    generate_with_embedding(
        &st,
        &prompts.join("tivec.safetensors"),
        "a (tivec:1.1) circle",
    );
    assert_eq!(
        image::open(&pt).unwrap().to_rgb8(),
        image::open(&st).unwrap().to_rgb8()
    );
    let hash = stable_diffusion::loading::sha256_file(&prompts.join("tivecpt.pt")).unwrap();
    let text = stable_diffusion::image::read_png_text(&pt).unwrap();
    let params = &text.iter().find(|(k, _)| k == "parameters").unwrap().1;
    let expected = format!("TI hashes: \"tivecpt: {}\"", &hash[..12]);
    assert!(params.contains(&expected), "{expected} not in {params}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_a1111_png_without_rng_re_makes_with_gpu_noise_and_unbuilt_keys_are_warned_about() {
    let dir = scratch("a1111-png");
    let (made, a1111, again, cpu) = (
        dir.join("made.png"),
        dir.join("a1111.png"),
        dir.join("again.png"),
        dir.join("cpu.png"),
    );
    let mut args = BASE.to_vec();
    args[3] = "Euler"; // A1111's name: its (k-diffusion) sampling, as its PNG means
    args.extend(["--rng", "cuda"]);
    generate(&made, &args);
    // The same parameters as A1111 writes them at its defaults: no RNG key.
    let text = "a red circle\nSteps: 3, Sampler: Euler, Schedule type: Automatic, CFG scale: 7.5, \
                Seed: 7, Size: 32x32, Tiling: True, Version: v1.10.1";
    let image = rgb(&made);
    let info = stable_diffusion::image::InfoText::parse(text);
    stable_diffusion::image::save_png_with_infotext(&a1111, &image, &info).unwrap();
    let model = tiny_model();
    let out = sd([
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--output",
        again.to_str().unwrap(),
        "--from-png",
        a1111.to_str().unwrap(),
    ]);
    assert_success(&out, "--from-png of an A1111 PNG");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`Tiling: True` is not supported"),
        "{stderr}"
    );
    assert_eq!(rgb(&again), rgb(&made));
    args.truncate(BASE.len());
    generate(&cpu, &args);
    assert_ne!(rgb(&cpu), rgb(&made), "the two streams give one image");
    let _ = std::fs::remove_dir_all(&dir);
}
