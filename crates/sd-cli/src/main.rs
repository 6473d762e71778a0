//! The `sd` command-line interface: a thin layer over the `stable-diffusion` library.

/// `println!` that returns an error instead of panicking when stdout is closed (`sd samplers |
/// head`); `main` ends such a run quietly.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

mod generate;
mod inspect;
mod models;
mod samplers;
mod serve;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use stable_diffusion::tokenizer::ClipTokenizer;

/// Large activations reuse freed blocks instead of fresh pages from the system (see
/// `sd_kernels::workspace`).
#[global_allocator]
static ALLOC: sd_kernels::workspace::Workspace = sd_kernels::workspace::Workspace::new();

/// Stable Diffusion in Rust: the same images as diffusers, from your own checkpoints.
#[derive(Parser, Debug)]
#[command(name = "sd", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate images from a prompt (txt2img) or from a prompt and a start image (img2img).
    Generate(Box<generate::GenerateArgs>),
    /// Print a prompt's CLIP token ids (start and end tokens included, no padding) as JSON.
    Tokenize(TokenizeArgs),
    /// Print the generation parameters stored in a PNG file (AUTOMATIC1111 infotext).
    Info(InfoArgs),
    /// Describe a checkpoint: family, prediction type, dtypes, parameters, missing/unused tensors.
    Inspect(inspect::InspectArgs),
    /// List every sampler and sigma schedule with a one-line description.
    Samplers,
    /// List the checkpoints, VAEs, LoRAs and embeddings of a models folder with A1111's titles.
    Models(models::ModelsArgs),
    /// Serve AUTOMATIC1111's web API (/sdapi/v1) on the library: one worker, a bounded queue.
    Serve(Box<serve::ServeArgs>),
    /// Train the small shapes model from scratch (VAE, text encoder, then UNet).
    Train(Box<train::TrainArgs>),
    /// Score a model on shapes captions: colours, position, size and shape read from pixels.
    Eval(train::EvalArgs),
}

/// Arguments of `sd tokenize`.
#[derive(clap::Args, Debug)]
struct TokenizeArgs {
    /// The text to tokenize.
    #[arg(long, short)]
    prompt: String,
    /// A diffusers model folder whose `tokenizer/` to use (default: the built-in CLIP vocabulary).
    #[arg(long, short)]
    model: Option<PathBuf>,
}

/// Arguments of `sd info`.
#[derive(clap::Args, Debug)]
struct InfoArgs {
    /// The PNG file to read.
    file: PathBuf,
}

/// Failures of the user's input: exit code 2, before any work starts.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Pins candle's CPU thread count once, unless the user chose one.
///
/// Without `RAYON_NUM_THREADS`, candle 0.11 asks for the number of physical cores on every
/// parallel op, and on Linux that re-reads `/proc/cpuinfo` each time (measured: ~10% of a
/// training step on 2 cores).
fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // The same default as candle's (physical cores), read once.
        let threads = num_cpus::get_physical().max(1);
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
}

fn main() -> ExitCode {
    // Before any thread exists: setting the environment is only sound while single-threaded.
    pin_thread_count();
    let cli = Cli::parse();
    // A kernel level this CPU cannot run (or an unknown one) is the caller's mistake.
    let result =
        stable_diffusion::nn::kernels::check_level().map_err(|e| UsageError(e.to_string()).into());
    let result = result.and_then(|()| match cli.command {
        Command::Generate(args) => generate::run(*args),
        Command::Tokenize(args) => tokenize(args),
        Command::Info(args) => info(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Samplers => samplers::run(),
        Command::Models(args) => models::run(args),
        Command::Serve(args) => serve::run(*args),
        Command::Train(args) => train::run(*args),
        Command::Eval(args) => train::run_eval(args),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`| head`): nothing is wrong with the run.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}

/// The exit code of a failed run: 2 when the input is at fault (a usage error, or a library
/// error about a file, tensor, config, value, prompt or image the user gave), 130 for a
/// cancelled run, 1 for anything else (I/O such as a full disk, the tensor library).
fn exit_code(err: &anyhow::Error) -> u8 {
    use stable_diffusion::Error as E;
    if err.downcast_ref::<UsageError>().is_some() {
        return 2;
    }
    let library = err
        .chain()
        .find_map(|cause| cause.downcast_ref::<E>())
        .or_else(|| err.downcast_ref::<E>());
    match library {
        Some(E::Cancelled) => 130,
        Some(
            E::NotFound { .. }
            | E::Safetensors { .. }
            | E::Checkpoint { .. }
            | E::Config { .. }
            | E::MissingTensor { .. }
            | E::ShapeMismatch { .. }
            | E::Unsupported { .. }
            | E::InvalidArgument { .. }
            | E::Tokenizer(_)
            | E::Image { .. }
            | E::MemoryBudget { .. },
        ) => 2,
        _ => 1,
    }
}

fn tokenize(args: TokenizeArgs) -> Result<()> {
    let tokenizer = match &args.model {
        Some(model) => {
            let folder = model.join("tokenizer");
            if folder.join("vocab.json").is_file() {
                ClipTokenizer::from_folder(&folder)?
            } else if model.exists() {
                ClipTokenizer::embedded()?
            } else {
                return Err(UsageError(format!("model not found: {}", model.display())).into());
            }
        }
        None => ClipTokenizer::embedded()?,
    };
    let ids = tokenizer.encode(&args.prompt)?;
    outln!("{}", serde_json::to_string(&ids)?);
    Ok(())
}

fn info(args: InfoArgs) -> Result<()> {
    match stable_diffusion::image::read_parameters(&args.file)? {
        Some(text) => {
            outln!("{text}");
            Ok(())
        }
        None => Err(UsageError(format!(
            "{}: no generation parameters found (no `parameters` text chunk)",
            args.file.display()
        ))
        .into()),
    }
}

/// Whether `err` is a write to a closed pipe.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
