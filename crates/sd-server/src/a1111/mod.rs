//! AUTOMATIC1111's API under `/sdapi/v1`: the generation routes (one client of the job
//! queue), progress, interrupt and skip, the settings, the lists of models, samplers and
//! networks, PNG info, and the routes this server cannot serve (501 or empty lists).
//!
//! Files: `request` (the txt2img/img2img body and its library requests), `options` (A1111's
//! settings), `info` (the generation reply).

pub mod info;
pub mod options;
pub mod request;

use std::path::Path;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Json;
use serde_json::{json, Map, Value};
use stable_diffusion::image::png::png_text_from_bytes;
use stable_diffusion::image::{InfoText, PARAMETERS_KEY};
use stable_diffusion::loading::embeddings::TextualInversion;
use stable_diffusion::pipeline::{memory, Asset};
use stable_diffusion::scheduler::{SamplerKind, SigmaSchedule};

use crate::error::Api;
use crate::http::AppState;
use crate::openapi::{Op, Routes};
use crate::queue::{job_timestamp, Job, Outcome, SubmitError};
use crate::ApiError;
use request::{parse_json, Body, Mode};

/// The state the routes share.
type Shared = State<Arc<AppState>>;

/// A JSON reply or an A1111 error.
type Reply = Result<Json<Value>, ApiError>;

/// Every `/sdapi/v1` route, with its description.
pub fn routes() -> Routes<Arc<AppState>> {
    let not_implemented =
        |what: &'static str| move || async move { ApiError::not_implemented(what) };
    let empty_list = || async { Json(json!([])) };
    let done = || async { Json(json!({})) };
    let list = |summary| Op::get(summary).reply_json(200, "a JSON list");
    let unsupported = |summary| Op::post(summary).reply_json(501, "not supported here");
    let action = |summary| Op::post(summary).reply_json(200, "`{}`");
    let generation = |summary, what| {
        Op::post(summary)
            .describe(what)
            .body::<Body>()
            .reply::<info::GenerationReply>(200, "the images, the request, the info")
    };
    Routes::new("/sdapi/v1", "AUTOMATIC1111")
        .route(
            "/txt2img",
            post(txt2img),
            [generation(
                "Generate images from a prompt",
                "A1111's txt2img fields and defaults; waits for the images. A full queue is 429.",
            )],
        )
        .route(
            "/img2img",
            post(img2img),
            [generation(
                "Generate images from an init image (and a mask)",
                "txt2img's fields with init_images (one, base64) and mask; waits for the images.",
            )],
        )
        .route(
            "/progress",
            get(progress),
            [Op::get("The running job's progress and live preview")
                .query::<bool>("skip_current_image", "ignored (A1111 compatibility)")
                .reply_json(
                    200,
                    "progress, eta_relative, state, current_image, textinfo",
                )],
        )
        .route(
            "/interrupt",
            post(interrupt),
            [action(
                "Stop sampling after this step; the estimate is the result",
            )],
        )
        .route("/skip", post(skip), [action("Drop the running iteration")])
        .route(
            "/options",
            get(get_options).post(set_options),
            [
                Op::get("The settings").reply_json(200, "A1111's option keys"),
                Op::post("Change settings (sd_model_checkpoint switches the model)")
                    .body::<Map<String, Value>>()
                    .reply_json(200, "`{}`"),
            ],
        )
        .route("/sd-models", get(sd_models), [list("The checkpoints")])
        .route("/sd-vae", get(sd_vae), [list("The VAEs")])
        .route("/samplers", get(samplers), [list("The samplers")])
        .route("/schedulers", get(schedulers), [list("The schedules")])
        .route("/upscalers", get(upscalers), [list("The hires upscalers")])
        .route(
            "/latent-upscale-modes",
            get(latent_upscale_modes),
            [list("The latent upscalers")],
        )
        .route("/loras", get(loras), [list("The LoRAs")])
        .route(
            "/embeddings",
            get(embeddings),
            [Op::get("The textual-inversion embeddings").reply_json(200, "loaded and skipped")],
        )
        .route(
            "/prompt-styles",
            get(empty_list),
            [list("Prompt styles (none)")],
        )
        .route(
            "/face-restorers",
            get(empty_list),
            [list("Face restorers (none)")],
        )
        .route(
            "/realesrgan-models",
            get(empty_list),
            [list("Real-ESRGAN models (none)")],
        )
        .route(
            "/hypernetworks",
            get(empty_list),
            [list("Hypernetworks (none)")],
        )
        .route("/script-info", get(empty_list), [list("Scripts (none)")])
        .route("/extensions", get(empty_list), [list("Extensions (none)")])
        .route(
            "/cmd-flags",
            get(cmd_flags),
            [Op::get("The command line's settings").reply_json(200, "flags")],
        )
        .route(
            "/memory",
            get(memory_info),
            [Op::get("The machine's memory").reply_json(200, "ram, cuda")],
        )
        .route(
            "/scripts",
            get(|| async { Json(json!({"txt2img": [], "img2img": []})) }),
            [Op::get("Scripts by tab (none)").reply_json(200, "txt2img, img2img")],
        )
        .route(
            "/png-info",
            post(png_info),
            [Op::post("The infotext of a PNG")
                .body::<PngInfoBody>()
                .reply_json(200, "info, items, parameters")],
        )
        .route(
            "/refresh-checkpoints",
            post(refresh),
            [action("Rescan the models folder")],
        )
        .route(
            "/refresh-vae",
            post(refresh),
            [action("Rescan the models folder")],
        )
        .route(
            "/refresh-loras",
            post(refresh),
            [action("Rescan the models folder")],
        )
        .route(
            "/refresh-embeddings",
            post(refresh),
            [action("Rescan the models folder")],
        )
        .route(
            "/unload-checkpoint",
            post(done),
            [action("Unload the checkpoint (no-op)")],
        )
        .route(
            "/reload-checkpoint",
            post(done),
            [action("Reload the checkpoint (no-op)")],
        )
        .route(
            "/interrogate",
            post(not_implemented("interrogate")),
            [unsupported("Interrogate (not supported)")],
        )
        .route(
            "/extra-single-image",
            post(not_implemented("extras upscaling")),
            [unsupported("Extras upscaling (not supported)")],
        )
        .route(
            "/extra-batch-images",
            post(not_implemented("extras upscaling")),
            [unsupported("Extras upscaling (not supported)")],
        )
        .route(
            "/create/embedding",
            post(not_implemented("training")),
            [unsupported("Training (not supported)")],
        )
        .route(
            "/create/hypernetwork",
            post(not_implemented("training")),
            [unsupported("Training (not supported)")],
        )
        .route(
            "/train/embedding",
            post(not_implemented("training")),
            [unsupported("Training (not supported)")],
        )
        .route(
            "/train/hypernetwork",
            post(not_implemented("training")),
            [unsupported("Training (not supported)")],
        )
}

/// The body's bytes, or the error the body extractor gave (too large: 413) as JSON.
fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| ApiError::new(e.status(), "HTTPException", e.body_text()))
}

/// Runs `work` on the blocking pool (it may hash or read files), with the shared state.
async fn blocking<T: Send + 'static>(
    state: &Arc<AppState>,
    work: impl FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || work(&state))
        .await
        .map_err(|e| ApiError::internal(format!("a worker task failed: {e}")))?
}

async fn txt2img(State(state): Shared, body: Result<Bytes, BytesRejection>) -> Reply {
    generate(state, Mode::Txt2Img, body_bytes(body)?).await
}

async fn img2img(State(state): Shared, body: Result<Bytes, BytesRejection>) -> Reply {
    generate(state, Mode::Img2Img, body_bytes(body)?).await
}

/// A generation route: the body read and checked, its iterations queued as one job, the reply
/// built from what finished.
async fn generate(state: Arc<AppState>, mode: Mode, bytes: Bytes) -> Reply {
    let (body, job) = blocking(&state, move |state| {
        let body: Body = parse_json(&bytes)?;
        let options = state.options();
        let requests = request::requests(&body, mode, &options, &state.store())?;
        let mut with_overrides = options.clone();
        with_overrides.apply(&body.override_settings, "override_settings.")?;
        if !body.override_settings_restore_afterwards {
            let mut options = state.options.write().unwrap_or_else(|e| e.into_inner());
            options.apply(&body.override_settings, "override_settings.")?;
        }
        let job = Job {
            requests,
            previews: state.previews(&with_overrides),
        };
        Ok((body, job))
    })
    .await?;
    let timestamp = job_timestamp();
    let ticket = state.queue.submit(job).map_err(|e| match e {
        SubmitError::QueueFull(_) => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "HTTPException",
            e.to_string(),
        ),
        SubmitError::ShuttingDown => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "HTTPException",
            e.to_string(),
        ),
    })?;
    match ticket.outcome().await {
        Outcome::Finished { outputs, .. } => {
            let reply =
                tokio::task::spawn_blocking(move || info::reply(&body, mode, &outputs, &timestamp))
                    .await
                    .map_err(|e| ApiError::internal(format!("a worker task failed: {e}")))??;
            Ok(Json(reply))
        }
        Outcome::Failed(e) => Err(ApiError::from_library(&e, Api::A1111)),
        Outcome::Cancelled => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "HTTPException",
            "the job was cancelled",
        )),
        Outcome::ShuttingDown => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "HTTPException",
            "the server is shutting down; the job did not finish",
        )),
        Outcome::Panicked(message) => Err(ApiError::internal(format!(
            "the generation failed unexpectedly: {message}"
        ))),
    }
}

/// GET progress: the running job's fraction, an ETA, A1111's state block.
async fn progress(State(state): Shared) -> Json<Value> {
    let waiting = state.queue.waiting();
    let Some(running) = state.queue.running() else {
        return Json(json!({
            "progress": 0.0,
            "eta_relative": 0.0,
            "state": {
                "skipped": false,
                "interrupted": false,
                "stopping_generation": false,
                "job": "",
                "job_count": waiting,
                "job_timestamp": "0",
                "job_no": 0,
                "sampling_step": 0,
                "sampling_steps": 0,
                "queued": waiting,
            },
            "current_image": null,
            "textinfo": null,
        }));
    };
    let fraction = running.fraction();
    let current_image = running
        .preview
        .as_ref()
        .map(|p| stable_diffusion::image::ImageData(p.png.to_vec()).to_base64());
    let elapsed = running.started.elapsed().as_secs_f64();
    let eta = if fraction > 0.0 {
        elapsed / fraction - elapsed
    } else {
        0.0
    };
    Json(json!({
        "progress": fraction,
        "eta_relative": eta,
        "state": {
            "skipped": running.skipped,
            "interrupted": running.interrupted,
            "stopping_generation": false,
            "job": format!("job {}", running.id),
            "job_count": running.iterations + waiting,
            "job_timestamp": running.timestamp,
            "job_no": running.iteration,
            "sampling_step": running.step,
            "sampling_steps": running.steps,
            "queued": waiting,
        },
        "current_image": current_image,
        "textinfo": format!(
            "{} (iteration {} of {}, step {} of {})",
            running.stage.text(),
            running.iteration + 1,
            running.iterations,
            running.step,
            running.steps
        ),
    }))
}

async fn interrupt(State(state): Shared) -> Json<Value> {
    state.queue.interrupt();
    Json(json!({}))
}

async fn skip(State(state): Shared) -> Json<Value> {
    state.queue.skip();
    Json(json!({}))
}

async fn get_options(State(state): Shared) -> Reply {
    blocking(&state, |state| {
        Ok(Json(state.options().to_json(&state.store())))
    })
    .await
}

/// POST options: the settings checked (a checkpoint must resolve), then kept.
async fn set_options(State(state): Shared, body: Result<Bytes, BytesRejection>) -> Reply {
    let bytes = body_bytes(body)?;
    blocking(&state, move |state| {
        let settings: Map<String, Value> = parse_json(&bytes)?;
        let mut options = state.options();
        options.apply(&settings, "")?;
        let store = state.store();
        if let Some(name) = &options.model {
            store
                .resolve(Asset::Checkpoint, name)
                .map_err(|e| ApiError::field("sd_model_checkpoint", e))?;
        }
        if let Some(name) = &options.vae {
            store
                .resolve(Asset::Vae, name)
                .map_err(|e| ApiError::field("sd_vae", e))?;
        }
        *state.options.write().unwrap_or_else(|e| e.into_inner()) = options;
        Ok(Json(json!({})))
    })
    .await
}

/// A path as text.
fn path_text(path: &Path) -> String {
    path.display().to_string()
}

async fn sd_models(State(state): Shared) -> Reply {
    blocking(&state, |state| {
        let store = state.store();
        let models: Vec<Value> = store
            .list(Asset::Checkpoint)
            .into_iter()
            .map(|entry| {
                let hash = stable_diffusion::loading::model_hash(&entry.path)
                    .ok()
                    .flatten();
                json!({
                    "title": entry.title().unwrap_or_else(|_| entry.name.clone()),
                    "model_name": entry.name,
                    "hash": hash,
                    "sha256": null,
                    "filename": path_text(&entry.path),
                    "config": null,
                })
            })
            .collect();
        Ok(Json(Value::Array(models)))
    })
    .await
}

async fn sd_vae(State(state): Shared) -> Json<Value> {
    let store = state.store();
    let list: Vec<Value> = store
        .list(Asset::Vae)
        .into_iter()
        .map(|e| json!({"model_name": e.name, "filename": path_text(&e.path)}))
        .collect();
    Json(Value::Array(list))
}

async fn loras(State(state): Shared) -> Json<Value> {
    let store = state.store();
    let list: Vec<Value> = store
        .list(Asset::Lora)
        .into_iter()
        .map(|e| {
            json!({
                "name": e.name,
                "alias": e.name,
                "path": path_text(&e.path),
                "metadata": {},
            })
        })
        .collect();
    Json(Value::Array(list))
}

/// GET embeddings: each with its vector count and width (read from the file); files that do
/// not load are "skipped".
async fn embeddings(State(state): Shared) -> Reply {
    blocking(&state, |state| {
        let store = state.store();
        let mut loaded = Map::new();
        let mut skipped = Map::new();
        for entry in store.list(Asset::Embedding) {
            let name = TextualInversion::name_of(&entry.path).unwrap_or_else(|| entry.name.clone());
            let item = |vectors: usize, shape: usize| {
                json!({
                    "step": null,
                    "sd_checkpoint": null,
                    "sd_checkpoint_name": null,
                    "shape": shape,
                    "vectors": vectors,
                })
            };
            match TextualInversion::load(&entry.path) {
                Ok(embedding) => {
                    let dims = embedding
                        .first
                        .as_ref()
                        .map(|t| t.dims().to_vec())
                        .unwrap_or_default();
                    let (vectors, shape) = match dims.as_slice() {
                        [v, s] => (*v, *s),
                        [s] => (1, *s),
                        _ => (0, 0),
                    };
                    loaded.insert(name, item(vectors, shape));
                }
                Err(_) => {
                    skipped.insert(name, item(0, 0));
                }
            }
        }
        Ok(Json(json!({"loaded": loaded, "skipped": skipped})))
    })
    .await
}

async fn samplers() -> Json<Value> {
    let list: Vec<Value> = SamplerKind::ALL
        .iter()
        .map(|kind| {
            let mut aliases: Vec<&str> = kind.a1111_alias().into_iter().collect();
            if kind.name() != kind.a1111_name() {
                aliases.push(kind.name());
            }
            json!({
                "name": kind.a1111_name(),
                "aliases": aliases,
                "options": {},
            })
        })
        .collect();
    Json(Value::Array(list))
}

/// A1111's internal name of a schedule (its `scheduler` field's value).
fn scheduler_name(schedule: SigmaSchedule) -> &'static str {
    match schedule {
        SigmaSchedule::Default => "automatic",
        SigmaSchedule::Discrete => "uniform",
        SigmaSchedule::DdimUniform => "ddim",
        other => other.name(),
    }
}

async fn schedulers() -> Json<Value> {
    let list: Vec<Value> = SigmaSchedule::ALL
        .iter()
        .map(|&schedule| {
            json!({
                "name": scheduler_name(schedule),
                "label": schedule.a1111_name(),
                "aliases": null,
                "default_rho": -1,
                "need_inner_model": false,
            })
        })
        .collect();
    Json(Value::Array(list))
}

/// GET upscalers: the picture upscalers the hires fix has (latent ones are listed by
/// `latent-upscale-modes`).
async fn upscalers() -> Json<Value> {
    Json(json!([{
        "name": "Lanczos",
        "model_name": null,
        "model_path": null,
        "model_url": null,
        "scale": 4,
    }]))
}

async fn latent_upscale_modes() -> Json<Value> {
    Json(json!([{"name": "Latent"}]))
}

async fn cmd_flags(State(state): Shared) -> Json<Value> {
    Json(state.flags.clone())
}

/// GET memory: the machine's RAM; no CUDA here.
async fn memory_info() -> Json<Value> {
    let total = memory::total_memory();
    let free = memory::available_memory();
    Json(json!({
        "ram": {"free": free, "used": total.saturating_sub(free), "total": total},
        "cuda": {"error": "no CUDA device: sd serve computes on the CPU"},
    }))
}

/// The fields of a PNG-info request.
#[derive(serde::Deserialize, Default, schemars::JsonSchema)]
#[serde(default)]
pub struct PngInfoBody {
    /// The PNG file, base64 (raw or a `data:` URI).
    image: String,
}

/// POST png-info: the `parameters` text of a PNG, its other text chunks, and the parameters
/// parsed into A1111's keys.
async fn png_info(State(state): Shared, body: Result<Bytes, BytesRejection>) -> Reply {
    let bytes = body_bytes(body)?;
    blocking(&state, move |_| {
        let body: PngInfoBody = parse_json(&bytes)?;
        if body.image.trim().is_empty() {
            return Err(ApiError::field("image", "no image given"));
        }
        let data = request::image_field("image", &body.image)?;
        let chunks = png_text_from_bytes(&data.0, Path::new("<image>"))
            .map_err(|e| ApiError::field("image", e))?;
        let mut info = String::new();
        let mut items = Map::new();
        for (key, value) in chunks {
            if key == PARAMETERS_KEY {
                info = value;
            } else {
                items.insert(key, Value::String(value));
            }
        }
        Ok(Json(json!({
            "info": info,
            "items": items,
            "parameters": parsed_parameters(&info),
        })))
    })
    .await
}

/// An infotext as A1111's `parse_generation_parameters` dictionary: the prompts, each key's
/// value, and `Size-1`/`Size-2` from `Size`.
fn parsed_parameters(text: &str) -> Value {
    if text.is_empty() {
        return json!({});
    }
    let info = InfoText::parse(text);
    let mut fields = Map::new();
    fields.insert("Prompt".into(), Value::String(info.prompt.clone()));
    fields.insert(
        "Negative prompt".into(),
        Value::String(info.negative_prompt.clone()),
    );
    for (key, value) in &info.params {
        fields.insert(key.clone(), Value::String(value.clone()));
        if key == "Size" {
            if let Some((w, h)) = value.split_once('x') {
                fields.insert("Size-1".into(), Value::String(w.to_string()));
                fields.insert("Size-2".into(), Value::String(h.to_string()));
            }
        }
    }
    Value::Object(fields)
}

/// POST refresh-*: the store's folders read again.
async fn refresh(State(state): Shared) -> Reply {
    blocking(&state, |state| {
        let mut store = state.store.write().unwrap_or_else(|e| e.into_inner());
        store
            .rescan()
            .map_err(|e| ApiError::internal(format!("rescanning the models folder: {e}")))?;
        Ok(Json(json!({})))
    })
    .await
}
