//! LyCORIS LoHa and LoKr merged at load time equal the merge formulas computed with torch
//! (tools/reference/parts/lora.py: einsum Tucker rebuilds, torch.kron, alpha / rank).

mod common;

use candle_core::{DType, Device};
use stable_diffusion::loading::{attach_networks, LoraFile, LoraTarget, Weights};

fn network(name: &str) -> LoraFile {
    LoraFile::open(common::fixture(&format!("lora/{name}.safetensors"))).unwrap()
}

#[test]
fn loha_and_lokr_merge_as_the_lycoris_formulas() {
    let base = common::fixture("lora/lycoris_base.safetensors");
    let expected = common::load_tensors("lora/lycoris_expected.safetensors");
    let networks = vec![(network("loha"), 0.7), (network("lokr"), 0.7)];
    let mut worst = 0f32;
    for target in [LoraTarget::Unet, LoraTarget::TextEncoder] {
        let (weights, unmatched) =
            attach_networks(Weights::open(&base).unwrap(), &networks, target).unwrap();
        assert!(unmatched.is_empty(), "{unmatched:?}");
        for (name, want) in &expected {
            let is_te = name.starts_with("text_model.");
            if is_te != (target == LoraTarget::TextEncoder) && name != "untouched.weight" {
                continue;
            }
            let got = weights.load(name, DType::F32, &Device::Cpu).unwrap();
            let diff = common::max_abs_diff(&got, want);
            assert!(diff <= 1e-5, "{name}: max |diff| {diff}");
            worst = worst.max(diff);
        }
    }
    println!("max |merged - formula| = {worst:e}");
}

#[test]
fn a_network_that_does_not_fit_the_weights_is_an_error_naming_the_key() {
    // The LoHa file's modules against the expected-weights file renamed: shapes differ.
    let networks = vec![(network("kohya"), 1.0)];
    let base = common::fixture("lora/lycoris_base.safetensors");
    // kohya.safetensors patches tiny-sd15 modules; lycoris_base has to_q with another shape.
    let err = attach_networks(Weights::open(&base).unwrap(), &networks, LoraTarget::Unet)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q")
            || err.contains("does not fit"),
        "{err}"
    );
}

#[test]
fn unmatched_network_modules_are_reported_not_fatal() {
    let networks = vec![(network("peft"), 1.0)];
    let base = common::fixture("lora/lycoris_base.safetensors");
    let (_, unmatched) = attach_networks(
        Weights::open(&base).unwrap(),
        &networks,
        LoraTarget::TextEncoder,
    )
    .unwrap();
    assert!(!unmatched.is_empty());
    assert!(
        unmatched.iter().all(|k| k.starts_with("text_encoder.")),
        "{unmatched:?}"
    );
}
