//! Text to image with the library: `cargo run --release -p stable-diffusion --example txt2img -- MODEL_DIR "a prompt" out.png`.

use stable_diffusion::image::save_png_with_infotext;
use stable_diffusion::pipeline::{
    run, Asset, Control, GenerationRequest, LoadOptions, ModelStore, Progress,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: txt2img MODEL_DIR PROMPT OUTPUT.png";
    let model_dir = args.next().ok_or(usage)?;
    let prompt = args.next().ok_or(usage)?;
    let output = args.next().ok_or(usage)?;

    // The store knows the model by its folder's name; the request names it.
    let mut store = ModelStore::new();
    let model = store.add(Asset::Checkpoint, &model_dir);
    let request = GenerationRequest {
        model: Some(model),
        prompt,
        seed: Some(42),
        ..Default::default()
    };
    let result = run(&store, &LoadOptions::default(), &request, &mut |progress| {
        if let Progress::Step { step, total } = progress {
            eprintln!("step {step}/{total}");
        }
        Control::Continue
    })?;
    save_png_with_infotext(&output, &result.images[0], &result.infotexts[0])?;
    eprintln!("wrote {output} ({})", result.infotexts[0].params_line());
    Ok(())
}
