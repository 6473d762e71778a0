//! The shipped shapes model (models/shapes): a small version of the evaluation that `sd eval`
//! runs, on the same pipeline code as real checkpoints. It checks meaning, not numbers: the
//! colours and positions read back from the generated pixels must be the captions'. (Raise
//! these bars with the model; see models/shapes/README.md.)

use sd_train::shapes::{default_model_path, evaluate, evaluation_scenes, Attribute, EvalOptions};
use stable_diffusion::pipeline::{LoadOptions, StableDiffusion};
use stable_diffusion::scheduler::SamplerKind;

#[test]
fn shipped_shapes_model_draws_what_small_evaluation_captions_ask_for() {
    let path = default_model_path().expect("models/shapes is committed with the repository");
    let model = StableDiffusion::load(&path, &LoadOptions::default()).expect("model loads");
    // 24 held-out combinations come first; 32 captions take all of them plus 8 seen ones.
    let scenes = evaluation_scenes(32, 0);
    let options = EvalOptions {
        steps: 20,
        cfg_scale: 7.5,
        sampler: SamplerKind::EulerA,
        seed: 0,
    };
    let report = evaluate(&model, &scenes, &options, &mut |_, _, _, _| {
        stable_diffusion::pipeline::Control::Continue
    })
    .expect("evaluation runs");
    let accuracy = |a: Attribute| report.tally(a).accuracy();
    let summary = format!("{report}");
    // The full evaluation (120 captions) is what the model card reports (100% shape colours,
    // 99.2% backgrounds, 99.2% positions; on these 32: 100% each); the bars are the issue's
    // targets (90% on colours; 85% on position, above its 80%), which leave room for two or
    // three unlucky images of 32 and are far above chance (1 in 7 colours, 1 in 9 positions).
    assert!(accuracy(Attribute::Background) >= 0.9, "{summary}");
    assert!(accuracy(Attribute::Colour) >= 0.9, "{summary}");
    assert!(accuracy(Attribute::Position) >= 0.85, "{summary}");
}
