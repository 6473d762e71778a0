//! `Control::Finish`, A1111's interrupt: sampling stops after the step where the callback
//! returns it and the current estimate is decoded (the run returns images, marked
//! interrupted); before sampling it cancels, while decoding it lets the decode finish, and an
//! interrupted hires run returns its first pass.

mod common;

use stable_diffusion::pipeline::{
    run, Asset, Control, GenerationRequest, HiresFix, LoadOptions, ModelStore, Progress, RunOutput,
};
use stable_diffusion::Error;

fn store() -> ModelStore {
    let mut store = ModelStore::new();
    store.add(Asset::Checkpoint, common::fixture("models/tiny-sd15"));
    store
}

fn request() -> GenerationRequest {
    GenerationRequest {
        prompt: "a red circle".into(),
        width: Some(32),
        height: Some(32),
        steps: 4,
        seed: Some(5),
        ..Default::default()
    }
}

/// Runs `request`, answering `Finish` to the first event `at` picks.
fn run_finishing(
    request: &GenerationRequest,
    at: impl Fn(Progress) -> bool,
) -> stable_diffusion::Result<RunOutput> {
    let mut sent = false;
    run(&store(), &LoadOptions::default(), request, &mut |event| {
        if !sent && at(event) {
            sent = true;
            Control::Finish
        } else {
            Control::Continue
        }
    })
}

#[test]
fn finish_during_sampling_decodes_the_estimate_so_far() {
    let whole = run_finishing(&request(), |_| false).unwrap();
    assert!(!whole.interrupted);
    let early = run_finishing(&request(), |e| e == Progress::Step { step: 2, total: 4 }).unwrap();
    assert!(early.interrupted);
    assert_eq!(early.images.len(), 1);
    assert_eq!(early.images[0].dimensions(), (32, 32));
    assert_ne!(early.images[0], whole.images[0]);
    // The infotext is the request's, as A1111 writes it for an interrupted image.
    assert_eq!(early.infotexts, whole.infotexts);
}

#[test]
fn finish_before_sampling_cancels_and_while_decoding_changes_nothing() {
    let before = run_finishing(&request(), |e| e == Progress::EncodingText);
    assert!(matches!(before, Err(Error::Cancelled)), "{before:?}");
    let whole = run_finishing(&request(), |_| false).unwrap();
    let decoding = run_finishing(&request(), |e| e == Progress::Decoding).unwrap();
    assert!(!decoding.interrupted);
    assert_eq!(decoding.images, whole.images);
}

#[test]
fn an_interrupted_hires_run_returns_its_first_pass() {
    let hires = GenerationRequest {
        hires: Some(HiresFix {
            scale: 2.0,
            ..HiresFix::default()
        }),
        ..request()
    };
    let early = run_finishing(&hires, |e| matches!(e, Progress::Step { step: 1, .. })).unwrap();
    assert!(early.interrupted);
    assert_eq!(early.images[0].dimensions(), (32, 32), "no hires pass");
    let whole = run_finishing(&hires, |_| false).unwrap();
    assert_eq!(whole.images[0].dimensions(), (64, 64));
}
