//! `sd serve`: AUTOMATIC1111's web API on the library (the `sd-server` crate), with the
//! command line's model store and load options.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use stable_diffusion::candle_core::DType;
use stable_diffusion::pipeline::memory::parse_memory_size;
use stable_diffusion::pipeline::{parse_dtype, Asset, LoadOptions, ModelStore};
use stable_diffusion::vae::AutoencoderTiny;

use crate::UsageError;

/// Arguments of `sd serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The checkpoint requests use until `sd_model_checkpoint` changes it: a name in --models-dir or a path [default: the folder's first checkpoint, else the built-in shapes model].
    #[arg(long, short)]
    model: Option<PathBuf>,
    /// A models folder in AUTOMATIC1111's layout (models/Stable-diffusion, models/Lora, models/VAE, embeddings).
    #[arg(long, value_name = "DIR")]
    models_dir: Option<PathBuf>,
    /// A folder of LoRAs that `<lora:name:weight>` tags name.
    #[arg(long, value_name = "DIR")]
    lora_dir: Option<PathBuf>,
    /// A folder of textual-inversion embeddings that prompts name.
    #[arg(long, value_name = "DIR")]
    embeddings_dir: Option<PathBuf>,
    /// Address and port to listen on; 0.0.0.0:PORT exposes the server to the network.
    #[arg(long, default_value = "127.0.0.1:7860")]
    listen: SocketAddr,
    /// Jobs that may wait behind the running one; one more is answered 429.
    #[arg(long, default_value_t = 64)]
    queue_size: usize,
    /// HTTP Basic credentials required on every route: USER:PASSWORD[,USER:PASSWORD...].
    #[arg(long, value_name = "USER:PASS[,...]")]
    api_auth: Option<String>,
    /// Origins allowed to call the API from a browser (CORS), comma separated; `*` allows any.
    #[arg(long, value_delimiter = ',', value_name = "ORIGINS")]
    cors_allow_origins: Vec<String>,
    /// The largest request body accepted: bytes or a size such as 64M [default: 64M].
    #[arg(long, value_name = "SIZE")]
    max_body_size: Option<String>,
    /// The most memory a run may use, as for `sd generate` [default: the memory available].
    #[arg(long, value_name = "SIZE")]
    max_memory: Option<String>,
    /// The dtype weights are kept in: f32, f16 or bf16 [default: f32].
    #[arg(long)]
    weight_dtype: Option<String>,
    /// How long the native API (/api/v1/jobs) keeps a finished job's result, then answers 410: seconds or a duration such as 90s, 10m, 2h.
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    result_ttl: String,
    /// A tiny VAE that draws live previews full size (show_progress_type "TAESD", then the default): TAESD's taesd_decoder.safetensors/.pth (taesdxl_decoder for SDXL) or a diffusers AutoencoderTiny folder.
    #[arg(long, value_name = "FILE")]
    preview_vae: Option<PathBuf>,
}

/// A duration as seconds (`600`) or with a unit (`90s`, `10m`, `2h`).
fn parse_duration(text: &str) -> Result<std::time::Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let scale = match unit.trim() {
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => f64::NAN,
    };
    let seconds = number.parse::<f64>().unwrap_or(f64::NAN) * scale;
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(UsageError(format!(
            "invalid --result-ttl: `{text}` is not a duration (seconds, or 90s, 10m, 2h)"
        ))
        .into());
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

/// `user:pass,user2:pass2` as pairs; a pair without `:` or with an empty user is refused.
fn parse_auth(text: &str) -> Result<Vec<(String, String)>> {
    text.split(',')
        .map(|pair| match pair.split_once(':') {
            Some((user, pass)) if !user.is_empty() => Ok((user.to_string(), pass.to_string())),
            _ => {
                Err(UsageError(format!("invalid --api-auth: `{pair}` is not USER:PASSWORD")).into())
            }
        })
        .collect()
}

/// The tiny VAE of `--preview-vae`, on the models' device in f32; a file that is not one (or
/// holds only an encoder) is the input's fault.
fn load_preview_vae(path: &std::path::Path, options: &LoadOptions) -> Result<AutoencoderTiny> {
    let vae = AutoencoderTiny::load(path, DType::F32, &options.device)
        .map_err(|e| UsageError(format!("invalid --preview-vae: {e}")))?;
    if !vae.has_decoder() {
        return Err(UsageError(format!(
            "invalid --preview-vae: {} holds only an encoder (pass the decoder file)",
            path.display()
        ))
        .into());
    }
    Ok(vae)
}

/// Runs `sd serve` until Ctrl-C or SIGTERM.
pub fn run(args: ServeArgs) -> Result<()> {
    let usage = |e: stable_diffusion::Error| UsageError(e.to_string());
    let mut store = match &args.models_dir {
        Some(dir) => ModelStore::with_models_dir(dir).map_err(usage)?,
        None => ModelStore::new(),
    };
    if let Some(dir) = &args.lora_dir {
        store.add_folder(Asset::Lora, dir).map_err(usage)?;
    }
    if let Some(dir) = &args.embeddings_dir {
        store.add_folder(Asset::Embedding, dir).map_err(usage)?;
    }
    let model = match &args.model {
        Some(path) => Some(crate::generate::given_path(
            &mut store,
            Asset::Checkpoint,
            path,
            "model",
            "",
        )?),
        None if store.list(Asset::Checkpoint).is_empty() => {
            let path = stable_diffusion::default_model_path().map_err(|e| {
                UsageError(format!(
                    "no model given and no default model available ({e}): pass --model PATH"
                ))
            })?;
            Some(store.add(Asset::Checkpoint, path))
        }
        None => None,
    };
    let mut load_options = LoadOptions::default();
    if let Some(v) = &args.max_memory {
        load_options.max_memory = Some(parse_memory_size(v).map_err(usage)?);
    }
    if let Some(v) = &args.weight_dtype {
        load_options.weight_dtype = parse_dtype("weight dtype", v).map_err(usage)?;
    }
    let body_limit = match &args.max_body_size {
        Some(v) => parse_memory_size(v).map_err(usage)? as usize,
        None => sd_server::DEFAULT_BODY_LIMIT,
    };
    let auth = match &args.api_auth {
        Some(text) => parse_auth(text)?,
        None => Vec::new(),
    };
    let result_ttl = parse_duration(&args.result_ttl)?;
    let preview_vae = match &args.preview_vae {
        Some(path) => Some(std::sync::Arc::new(load_preview_vae(path, &load_options)?)),
        None => None,
    };
    if args.queue_size == 0 {
        return Err(UsageError("invalid --queue-size: 0 (at least 1 job must wait)".into()).into());
    }
    let flags = serde_json::json!({
        "listen": args.listen.to_string(),
        "queue_size": args.queue_size,
        "models_dir": args.models_dir.as_ref().map(|p| p.display().to_string()),
        "ckpt": model,
        "api_auth": args.api_auth.is_some(),
        "cors_allow_origins": args.cors_allow_origins.join(","),
        "result_ttl": result_ttl.as_secs_f64(),
        "preview_vae": args.preview_vae.as_ref().map(|p| p.display().to_string()),
        "api": true,
        "nowebui": true,
    });
    let config = sd_server::ServerConfig {
        listen: args.listen,
        queue_size: args.queue_size,
        store,
        load_options,
        model,
        auth,
        cors_origins: args.cors_allow_origins.clone(),
        body_limit,
        on_step: None,
        flags,
        result_ttl,
        preview_vae,
    };
    init_logging();
    sd_server::run_until_signal(config, |addr| {
        // Scripts and tests read this line for the address (port 0 picks a free one).
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://{addr}");
        let _ = out.flush();
    })
    .map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse
            || e.kind() == std::io::ErrorKind::AddrNotAvailable
        {
            UsageError(format!("cannot listen on {}: {e}", args.listen)).into()
        } else {
            anyhow::Error::from(e)
        }
    })
}

/// A log line per request on stderr (`RUST_LOG` overrides the level, default info).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("sd_server=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::{parse_auth, parse_duration};

    #[test]
    fn result_ttl_is_seconds_or_a_duration_with_a_unit() {
        assert_eq!(parse_duration("600").unwrap().as_secs(), 600);
        assert_eq!(parse_duration("90s").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("10m").unwrap().as_secs(), 600);
        assert_eq!(parse_duration("2h").unwrap().as_secs(), 7200);
        assert_eq!(parse_duration("0.5").unwrap().as_millis(), 500);
        for bad in ["", "ten", "5d", "-3", "m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn api_auth_is_a_list_of_user_password_pairs() {
        let pairs = parse_auth("a:b,c:d:e").unwrap();
        assert_eq!(
            pairs,
            [("a".into(), "b".into()), ("c".into(), "d:e".into())]
        );
        assert!(parse_auth("nopassword").is_err());
        assert!(parse_auth(":x").is_err());
    }
}
