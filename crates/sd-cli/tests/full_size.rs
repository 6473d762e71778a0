//! Slow, skipped by default: full-size single-file checkpoints with random weights, written
//! from the name/shape manifests of the real files, each generate one step through `sd`.
//! Run: `cargo test --release -p sd-cli --test full_size -- --ignored` (needs ~8 GB of disk
//! in the temp folder and ~16 GB of memory for SDXL).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{fixtures, scratch, sd_in};
use safetensors::{Dtype, View};

/// One stored tensor: raw little-endian bytes.
struct Stored {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Stored {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Writes a checkpoint with every tensor of `manifest`: f16 values of about N(0, 0.02²)
/// (norm weights near 1), and `position_ids` as the int64 positions real files hold.
fn write_random_checkpoint(manifest: &str, path: &Path) {
    let text =
        std::fs::read_to_string(fixtures().join(format!("manifests/{manifest}.json"))).unwrap();
    let shapes: BTreeMap<String, Vec<usize>> = serde_json::from_str(&text).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut tensors = Vec::new();
    for (name, shape) in shapes {
        let count: usize = shape.iter().product();
        let stored = if name.ends_with("position_ids") {
            let bytes = (0..count as i64)
                .flat_map(|i| (i % 77).to_le_bytes())
                .collect();
            Stored {
                dtype: Dtype::I64,
                shape,
                bytes,
            }
        } else {
            let is_norm_weight = shape.len() == 1 && name.ends_with("weight");
            let bytes = (0..count)
                .flat_map(|_| {
                    let uniform = next() - 0.5;
                    let value = if is_norm_weight {
                        1.0 + 0.1 * uniform
                    } else {
                        0.07 * uniform
                    };
                    half::f16::from_f64(value).to_le_bytes()
                })
                .collect();
            Stored {
                dtype: Dtype::F16,
                shape,
                bytes,
            }
        };
        tensors.push((name, stored));
    }
    let views: Vec<(String, &Stored)> = tensors.iter().map(|(n, s)| (n.clone(), s)).collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn one_step(manifest: &str, extra: &[&str]) {
    let dir = scratch(manifest);
    let checkpoint = dir.join(format!("{manifest}.safetensors"));
    write_random_checkpoint(manifest, &checkpoint);
    let output = dir.join("out.png");
    let mut args = vec![
        "generate",
        "--model",
        checkpoint.to_str().unwrap(),
        "--prompt",
        "a lighthouse",
        "--width",
        "64",
        "--height",
        "64",
        "--steps",
        "1",
        "--seed",
        "1",
        "--weight-dtype",
        "f16",
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let run = sd_in(&fixtures().join("pipeline_families"), &args);
    let ok = run.status.success() && output.is_file();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok, "{manifest}: {}", String::from_utf8_lossy(&run.stderr));
}

#[test]
#[ignore = "slow: writes and runs a full-size SD 1.5 checkpoint"]
fn full_size_sd15_single_file_generates() {
    one_step("ldm_sd15", &[]);
}

#[test]
#[ignore = "slow: writes and runs a full-size SD 1.5 inpainting checkpoint"]
fn full_size_sd15_inpaint_single_file_generates() {
    one_step(
        "ldm_sd15_inpaint",
        &[
            "--init-image",
            "init.png",
            "--mask",
            "mask.png",
            "--strength",
            "1",
        ],
    );
}

#[test]
#[ignore = "slow: writes and runs a full-size SD 2.1 768-v checkpoint"]
fn full_size_sd21_v_single_file_generates() {
    one_step("ldm_sd21_v", &[]);
}

#[test]
#[ignore = "slow: writes and runs a full-size SDXL base checkpoint"]
fn full_size_sdxl_base_single_file_generates() {
    one_step("ldm_sdxl_base", &[]);
}

#[test]
#[ignore = "slow: writes and runs a full-size SDXL refiner checkpoint"]
fn full_size_sdxl_refiner_single_file_generates() {
    one_step(
        "ldm_sdxl_refiner",
        &["--init-image", "init.png", "--strength", "1"],
    );
}
