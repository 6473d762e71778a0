//! Hires fix: `sd generate --hires-scale` makes the enlarged image, and it equals running
//! img2img by hand on the Lanczos-enlarged first pass. Also `--rng cuda` end to end.

mod common;

use std::path::Path;

use common::{assert_success, scratch, sd_command, tiny_model};

fn sd(args: &[&str], output: &Path) -> String {
    let out = sd_command()
        .arg("generate")
        .arg("--model")
        .arg(tiny_model())
        .arg("--output")
        .arg(output)
        .args([
            "--prompt",
            "a red circle",
            "--sampler",
            "euler",
            "--seed",
            "7",
        ])
        .args(args)
        .output()
        .unwrap();
    assert_success(&out, &format!("{args:?}"))
}

#[test]
fn hires_fix_equals_img2img_on_the_enlarged_first_pass() {
    let dir = scratch("hires");
    let hires = dir.join("hires.png");
    let size = ["--width", "32", "--height", "32", "--steps", "4"];
    let mut args = size.to_vec();
    args.extend([
        "--hires-scale",
        "2",
        "--hires-strength",
        "0.5",
        "--hires-steps",
        "6",
    ]);
    sd(&args, &hires);
    let hires_image = image::open(&hires).unwrap().to_rgb8();
    assert_eq!(hires_image.dimensions(), (64, 64));
    let text = stable_diffusion::image::read_png_text(&hires).unwrap();
    let params = &text.iter().find(|(k, _)| k == "parameters").unwrap().1;
    for key in [
        "Hires upscale: 2",
        "Hires steps: 6",
        "Hires upscaler: Lanczos",
        "Denoising strength: 0.5",
    ] {
        assert!(params.contains(key), "{params}");
    }

    // By hand: the first pass, enlarged with Lanczos, then img2img at the hires settings.
    let first = dir.join("first.png");
    sd(&size, &first);
    let enlarged = image::imageops::resize(
        &image::open(&first).unwrap().to_rgb8(),
        64,
        64,
        image::imageops::FilterType::Lanczos3,
    );
    let init = dir.join("enlarged.png");
    enlarged.save(&init).unwrap();
    let by_hand = dir.join("by_hand.png");
    sd(
        &[
            "--width",
            "64",
            "--height",
            "64",
            "--steps",
            "6",
            "--strength",
            "0.5",
            "--init-image",
            init.to_str().unwrap(),
        ],
        &by_hand,
    );
    assert_eq!(image::open(&by_hand).unwrap().to_rgb8(), hires_image);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rng_cuda_runs_and_is_written_as_nv() {
    let dir = scratch("rng");
    let (a, b) = (dir.join("cuda.png"), dir.join("cpu.png"));
    let size = ["--width", "32", "--height", "32", "--steps", "2"];
    let mut args = size.to_vec();
    args.extend(["--rng", "cuda"]);
    sd(&args, &a);
    sd(&size, &b);
    let text = stable_diffusion::image::read_png_text(&a).unwrap();
    assert!(text.iter().any(|(_, v)| v.contains("RNG: NV")), "{text:?}");
    assert_ne!(
        image::open(&a).unwrap().to_rgb8(),
        image::open(&b).unwrap().to_rgb8()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
