//! One model store serving concurrent requests: two threads run different requests at the same
//! time on one store (one with a LoRA at 0.8 and an embedding, one with neither), each image
//! equals the one it gets alone, and the shared model is unchanged afterwards (a prompt naming
//! the embedding, without asking for it, still gives the plain image). Models are loaded once
//! per set of weights and then served from the cache.

mod common;

use std::sync::Barrier;

use stable_diffusion::image::RgbImage;
use stable_diffusion::pipeline::{
    run, Asset, Control, GenerationRequest, LoadOptions, ModelStore, NetworkRef,
};

fn store() -> ModelStore {
    let mut store = ModelStore::new();
    store.add(Asset::Checkpoint, common::fixture("models/tiny-sd15"));
    store.add(Asset::Lora, common::fixture("lora/kohya.safetensors"));
    store
}

fn request(prompt: &str) -> GenerationRequest {
    GenerationRequest {
        model: Some("tiny-sd15".into()),
        prompt: prompt.into(),
        negative_prompt: "blurry".into(),
        width: Some(32),
        height: Some(32),
        steps: 4,
        seed: Some(99),
        ..Default::default()
    }
}

/// The request with the LoRA at 0.8 and the embedding.
fn with_networks() -> GenerationRequest {
    GenerationRequest {
        loras: vec![NetworkRef {
            name: "kohya".into(),
            weight: 0.8,
        }],
        embeddings: vec![common::fixture("prompts/tisingle.safetensors")
            .display()
            .to_string()],
        ..request("a tisingle circle")
    }
}

fn image(store: &ModelStore, request: &GenerationRequest) -> RgbImage {
    let output = run(store, &LoadOptions::default(), request, &mut |_| {
        Control::Continue
    })
    .unwrap_or_else(|e| panic!("{e}"));
    output.images.into_iter().next().unwrap()
}

#[test]
fn two_threads_run_different_requests_on_one_store() {
    let networks = with_networks();
    let plain = request("a red circle");
    let named = request("a tisingle circle");
    let alone_networks = image(&store(), &networks);
    let alone_plain = image(&store(), &plain);
    let alone_named = image(&store(), &named);
    assert!(alone_networks != alone_named, "the networks change nothing");

    let shared = store();
    let barrier = Barrier::new(2);
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| {
            barrier.wait();
            image(&shared, &networks)
        });
        let b = scope.spawn(|| {
            barrier.wait();
            image(&shared, &plain)
        });
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(
        a == alone_networks,
        "the LoRA + embedding image differs when run beside another"
    );
    assert!(
        b == alone_plain,
        "the plain image differs when run beside the LoRA one"
    );

    // The shared model learned no embedding and kept its weights.
    assert!(
        image(&shared, &named) == alone_named,
        "the embedding leaked into the shared model"
    );
    assert!(
        image(&shared, &plain) == alone_plain,
        "the shared model's weights changed"
    );
    // Loaded once each: the base model and the base with the LoRA merged.
    assert_eq!(shared.loads(), 2);
}

#[test]
fn a_model_over_the_budget_is_dropped_when_no_request_holds_it() {
    let shared = store();
    shared.set_cache_budget(1); // smaller than any model: keep only the latest
    let plain = request("a red circle");
    let first = image(&shared, &plain);
    assert_eq!(shared.loads(), 1);
    image(&shared, &with_networks());
    assert_eq!(shared.loads(), 2);
    // The plain model was dropped for the LoRA one, so it loads again, and gives the same image.
    assert!(image(&shared, &plain) == first);
    assert_eq!(shared.loads(), 3);
}
