//! Text to image with the library: `cargo run --release -p stable-diffusion --example txt2img -- MODEL_DIR "a prompt" out.png`.

use stable_diffusion::pipeline::{
    Control, GenerationRequest, Inputs, LoadOptions, Progress, StableDiffusion,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: txt2img MODEL_DIR PROMPT OUTPUT.png";
    let model_dir = args.next().ok_or(usage)?;
    let prompt = args.next().ok_or(usage)?;
    let output = args.next().ok_or(usage)?;

    let model = StableDiffusion::load(model_dir.as_ref(), &LoadOptions::default())?;
    let request = GenerationRequest {
        prompt,
        width: Some(model.native_size()),
        height: Some(model.native_size()),
        seed: Some(42),
        ..Default::default()
    };
    let generation = model.generate(&request, &Inputs::default(), &mut |progress| {
        if let Progress::Step { step, total } = progress {
            eprintln!("step {step}/{total}");
        }
        Control::Continue
    })?;
    generation.images[0].save(&output)?;
    eprintln!("wrote {output}");
    Ok(())
}
