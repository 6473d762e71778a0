//! `sd generate --lora PATH:WEIGHT` on the tiny SD 1.5 model gives diffusers' images with the
//! same networks fused (kohya and PEFT files, weights 0.5 and 1, two at once). Cases and
//! images: tools/reference/parts/lora.py.

mod common;

use common::{
    assert_images_match, assert_success, case_args, fixtures, read_cases, scratch, sd_command,
    sd_in, tiny_model,
};

#[test]
fn lora_generate_matches_diffusers_fused_loras() {
    let dir = scratch("lora");
    for case in &read_cases(&fixtures().join("lora/cases.json")) {
        let name = case["name"].as_str().unwrap();
        let output = dir.join(format!("{name}.png"));
        let args = case_args(&tiny_model(), &output, case);
        assert_success(&sd_in(&fixtures().join("lora"), &args), name);
        let expected = fixtures()
            .join("lora")
            .join(case["image"].as_str().unwrap());
        let worst = assert_images_match(name, &output, &expected);
        println!("{name}: worst channel (max, mean) |diff| {worst:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_lora_file_is_a_usage_error() {
    let out = sd_command()
        .args([
            "generate",
            "--prompt",
            "x",
            "--lora",
            "nope.safetensors:0.5",
            "--model",
        ])
        .arg(fixtures().join("models/tiny-sd15"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.safetensors"));
}
