//! The native job API under `/api/v1`, for new clients: a job is one library
//! [`GenerationRequest`] (its JSON as `sd generate --request` reads it), run on the same
//! queue as the A1111 routes.
//!
//! ```text
//! POST   /api/v1/jobs                    request JSON ─► 202 {id, status: "queued", ...}
//! GET    /api/v1/jobs                    every job kept, newest last
//! GET    /api/v1/jobs/{id}               status, progress, result (?images=true: base64 PNGs)
//! GET    /api/v1/jobs/{id}/events        Server-Sent Events: status, progress, preview, status
//! GET    /api/v1/jobs/{id}/images/{n}    image n of the result, a PNG with its infotext
//! POST   /api/v1/jobs/{id}/cancel        cancel, queued or running
//! POST   /api/v1/jobs/{id}/interrupt     stop sampling now, keep the estimate as the result
//! DELETE /api/v1/jobs/{id}               cancel if unfinished, forget the result
//! ```
//!
//! A finished job's result is kept for the server's result time-to-live, then it answers 410,
//! as a deleted job does; an id never handed out is 404. The [`JobTable`] holds the jobs; a
//! task per job awaits its outcome from the queue and records it.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use futures_util::Stream;
use serde_json::{json, Value};
use stable_diffusion::image::{encode_png, ImageData, PARAMETERS_KEY};
use stable_diffusion::pipeline::{precheck, random_seed, Asset, GenerationRequest, ModelStore};
use tokio::sync::broadcast;

use crate::error::Api;
use crate::http::AppState;
use crate::openapi::{Op, Routes};
use crate::queue::{Cancelled, Job, JobEvent, JobId, Outcome, Queue, Running, SubmitError};
use crate::ApiError;

/// How a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Waiting in the queue.
    Queued,
    /// Being run.
    Running,
    /// Finished with images (possibly interrupted early: see the result's `interrupted`).
    Succeeded,
    /// The run failed; the error says why.
    Failed,
    /// Cancelled before it finished (by a client, or the server shutting down).
    Cancelled,
}

impl JobState {
    /// The name in replies.
    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// One image of a finished job.
#[derive(Debug, Clone)]
pub struct ResultImage {
    /// The PNG file, its infotext in the `parameters` chunk.
    pub png: Vec<u8>,
    /// The image's seed.
    pub seed: u64,
    /// The A1111 infotext.
    pub infotext: String,
}

/// What a finished job ended with.
#[derive(Debug, Clone)]
struct End {
    state: JobState,
    /// When it ended (wall clock, for replies; monotonic, for the time-to-live).
    at: SystemTime,
    instant: Instant,
    images: Arc<Vec<ResultImage>>,
    warnings: Vec<String>,
    interrupted: bool,
    /// The error reply for a failed or cancelled job.
    error: Option<ApiError>,
}

/// A job the table keeps.
struct Record {
    created: SystemTime,
    /// The request as queued (seed filled in), its images left out.
    request: Value,
    end: Option<End>,
}

/// Why an id answers 410.
#[derive(Debug, Clone, Copy)]
enum Gone {
    Expired,
    Deleted,
}

/// The native API's jobs: those queued or running, and finished ones until their time is up.
pub struct JobTable {
    inner: Mutex<Table>,
    ttl: Duration,
}

#[derive(Default)]
struct Table {
    records: HashMap<JobId, Record>,
    gone: HashMap<JobId, Gone>,
}

/// Seconds since the Unix epoch.
fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// The request as a reply shows it: images replaced by whether there was one.
fn request_echo(request: &GenerationRequest) -> Value {
    let mut value = serde_json::to_value(request).unwrap_or_default();
    if let Value::Object(fields) = &mut value {
        for key in ["init_image", "mask"] {
            if fields.get(key).is_some_and(|v| !v.is_null()) {
                fields.insert(key.into(), Value::String("<image>".into()));
            }
        }
    }
    value
}

impl JobTable {
    /// An empty table whose finished jobs are kept for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            inner: Mutex::new(Table::default()),
            ttl,
        }
    }

    /// The table, finished jobs past their time dropped first.
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        let mut table = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let ttl = self.ttl;
        let expired: Vec<JobId> = table
            .records
            .iter()
            .filter(|(_, r)| {
                r.end
                    .as_ref()
                    .is_some_and(|e| now.duration_since(e.instant) >= ttl)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            table.records.remove(&id);
            table.gone.insert(id, Gone::Expired);
        }
        table
    }

    /// Drops the finished jobs whose time is up (also done on every access).
    pub fn sweep(&self) {
        drop(self.table());
    }

    /// The number of jobs kept (queued, running and finished).
    pub fn len(&self) -> usize {
        self.table().records.len()
    }

    /// Whether no job is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&self, id: JobId, request: &GenerationRequest) {
        self.table().records.insert(
            id,
            Record {
                created: SystemTime::now(),
                request: request_echo(request),
                end: None,
            },
        );
    }

    /// Records how job `id` ended (nothing when it was deleted meanwhile).
    fn finish(&self, id: JobId, end: End) {
        if let Some(record) = self.table().records.get_mut(&id) {
            record.end = Some(end);
        }
    }

    /// The 404 or 410 for an id the table does not hold.
    fn missing(&self, table: &Table, id: JobId) -> ApiError {
        match table.gone.get(&id) {
            Some(Gone::Expired) => ApiError::new(
                StatusCode::GONE,
                "HTTPException",
                format!(
                    "job {id} has expired: results are kept {} s after the job ends (--result-ttl)",
                    self.ttl.as_secs()
                ),
            ),
            Some(Gone::Deleted) => ApiError::new(
                StatusCode::GONE,
                "HTTPException",
                format!("job {id} was deleted"),
            ),
            None => ApiError::new(
                StatusCode::NOT_FOUND,
                "HTTPException",
                format!("no job {id}: job ids come from POST /api/v1/jobs"),
            ),
        }
    }

    /// Job `id`'s state and its reply (`images`: with base64 PNGs), or 404/410.
    fn status(
        &self,
        id: JobId,
        queue: &Queue,
        images: bool,
    ) -> Result<(JobState, Value), ApiError> {
        let table = self.table();
        let record = table
            .records
            .get(&id)
            .ok_or_else(|| self.missing(&table, id))?;
        Ok(status_json(id, record, queue, images, self.ttl))
    }

    /// Every job kept, in id order, without results' images.
    fn list(&self, queue: &Queue) -> Vec<Value> {
        let table = self.table();
        let mut ids: Vec<&JobId> = table.records.keys().collect();
        ids.sort();
        ids.into_iter()
            .map(|id| status_json(*id, &table.records[id], queue, false, self.ttl).1)
            .collect()
    }

    /// Image `index` of job `id`'s result.
    fn image(&self, id: JobId, index: usize) -> Result<Vec<u8>, ApiError> {
        let table = self.table();
        let record = table
            .records
            .get(&id)
            .ok_or_else(|| self.missing(&table, id))?;
        let Some(end) = &record.end else {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "HTTPException",
                format!("job {id} has not finished"),
            ));
        };
        end.images.get(index).map(|i| i.png.clone()).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "HTTPException",
                format!(
                    "job {id} has {} images; there is no image {index}",
                    end.images.len()
                ),
            )
        })
    }

    /// Forgets job `id` (later: 410); returns whether it was unfinished, or 404/410.
    fn delete(&self, id: JobId) -> Result<bool, ApiError> {
        let mut table = self.table();
        match table.records.remove(&id) {
            Some(record) => {
                table.gone.insert(id, Gone::Deleted);
                Ok(record.end.is_none())
            }
            None => Err(self.missing(&table, id)),
        }
    }
}

/// A running job's progress block.
fn progress_json(running: &Running) -> Value {
    let fraction = running.fraction();
    let elapsed = running.started.elapsed().as_secs_f64();
    json!({
        "fraction": fraction,
        "iteration": running.iteration,
        "iterations": running.iterations,
        "step": running.step,
        "steps": running.steps,
        "stage": running.stage.text(),
        "elapsed_seconds": elapsed,
        "eta_seconds": if fraction > 0.0 { elapsed / fraction - elapsed } else { 0.0 },
        "interrupting": running.interrupted,
        "cancelling": running.cancelling,
        "preview_step": running.preview.as_ref().map(|p| p.step),
    })
}

/// The reply for job `id` held in `record`.
fn status_json(
    id: JobId,
    record: &Record,
    queue: &Queue,
    images: bool,
    ttl: Duration,
) -> (JobState, Value) {
    let mut reply = json!({
        "id": id.0,
        "created_at": unix_seconds(record.created),
        "request": record.request,
        "urls": {
            "self": format!("/api/v1/jobs/{id}"),
            "events": format!("/api/v1/jobs/{id}/events"),
            "cancel": format!("/api/v1/jobs/{id}/cancel"),
        },
    });
    let state = match &record.end {
        Some(end) => {
            reply["finished_at"] = json!(unix_seconds(end.at));
            reply["expires_at"] = json!(unix_seconds(end.at + ttl));
            if let Some(error) = &end.error {
                reply["error"] = json!({
                    "status": error.status.as_u16(),
                    "error": error.kind,
                    "detail": error.message,
                });
            }
            if end.state == JobState::Succeeded {
                let list: Vec<Value> = end
                    .images
                    .iter()
                    .enumerate()
                    .map(|(index, image)| {
                        let mut item = json!({
                            "index": index,
                            "seed": image.seed,
                            "infotext": image.infotext,
                            "url": format!("/api/v1/jobs/{id}/images/{index}"),
                        });
                        if images {
                            item["png"] = json!(ImageData(image.png.clone()).to_base64());
                        }
                        item
                    })
                    .collect();
                reply["result"] = json!({
                    "images": list,
                    "interrupted": end.interrupted,
                    "warnings": end.warnings,
                });
            }
            end.state
        }
        // Asked in the order a job moves: the queue, then the worker.
        None => match (queue.position(id), queue.running().filter(|r| r.id == id)) {
            (Some(position), _) => {
                reply["queue_position"] = json!(position);
                JobState::Queued
            }
            (None, Some(running)) => {
                reply["progress"] = progress_json(&running);
                JobState::Running
            }
            // Handed between the queue and the worker, or out of the worker with its outcome
            // not recorded yet: a moment either way.
            (None, None) => {
                reply["progress"] = json!({"fraction": 0.999, "stage": "finishing"});
                JobState::Running
            }
        },
    };
    reply["status"] = json!(state.name());
    (state, reply)
}

/// The native API's routes, with their description.
pub fn routes() -> Routes<Arc<AppState>> {
    let status_reply = "the job's status (and result once it has ended)";
    Routes::new("/api/v1", "jobs")
        .route(
            "/jobs",
            post(submit).get(list),
            [
                Op::post("Queue a generation request")
                    .describe(
                        "The body is the library's GenerationRequest (every field optional). \
                         202 with the job's status; a bad field is 422 naming it, a full \
                         queue 429.",
                    )
                    .body::<GenerationRequest>()
                    .reply_json(202, "the queued job's status"),
                Op::get("Every job kept").reply_json(200, "`{jobs: [status, ...]}`"),
            ],
        )
        .route(
            "/jobs/{id}",
            get(status).delete(delete),
            [
                Op::get("A job's status and result")
                    .query::<bool>("images", "put each result PNG in the reply as base64")
                    .reply_json(200, status_reply),
                Op::delete("Cancel an unfinished job and forget it (then 410)")
                    .reply_json(200, "`{id, deleted, cancelled}`"),
            ],
        )
        .route(
            "/jobs/{id}/events",
            get(events),
            [Op::get("Server-Sent Events of a job")
                .describe(
                    "`status` first, `progress` after every stage and step, `preview` \
                     (base64 PNG) every show_progress_every_n_steps steps, a last `status` \
                     when the job has ended; then the stream closes.",
                )
                .reply_events("the event stream")],
        )
        .route(
            "/jobs/{id}/images/{index}",
            get(image),
            [Op::get("An image of a finished job").reply_png("the PNG, with its infotext")],
        )
        .route(
            "/jobs/{id}/cancel",
            post(cancel),
            [Op::post("Cancel a queued or running job").reply_json(202, status_reply)],
        )
        .route(
            "/jobs/{id}/interrupt",
            post(interrupt),
            [
                Op::post("Stop a running job's sampling; the estimate is the result")
                    .reply_json(202, status_reply),
            ],
        )
}

/// The state the routes share.
type Shared = State<Arc<AppState>>;

/// A job id in a path, or 404 naming it.
fn job_id(text: &str) -> Result<JobId, ApiError> {
    text.parse::<u64>().map(JobId).map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "HTTPException",
            format!("no job `{text}`: a job id is a number from POST /api/v1/jobs"),
        )
    })
}

/// The body as a request, checked, its names resolved in `store` and its seed chosen.
fn parse_request(bytes: &[u8], store: &ModelStore) -> Result<GenerationRequest, ApiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ApiError::invalid(format!("the body is not UTF-8 text: {e}")))?;
    let mut request = GenerationRequest::from_json(text).map_err(|e| match &e {
        stable_diffusion::Error::InvalidArgument {
            what: "request", ..
        } => ApiError::invalid(e.to_string()),
        _ => ApiError::from_library(&e, Api::Native),
    })?;
    precheck(&request).map_err(|e| ApiError::from_library(&e, Api::Native))?;
    store
        .checkpoint(request.model.as_deref())
        .map_err(|e| ApiError::field("model", e))?;
    if let Some(name) = &request.refiner {
        store
            .resolve(Asset::Checkpoint, name)
            .map_err(|e| ApiError::field("refiner", e))?;
    }
    if let Some(name) = &request.vae {
        store
            .resolve(Asset::Vae, name)
            .map_err(|e| ApiError::field("vae", e))?;
    }
    for (i, network) in request.loras.iter().enumerate() {
        store
            .resolve(Asset::Lora, &network.name)
            .map_err(|e| ApiError::field(&format!("loras[{i}].name"), e))?;
    }
    for (i, name) in request.embeddings.iter().enumerate() {
        store
            .resolve(Asset::Embedding, name)
            .map_err(|e| ApiError::field(&format!("embeddings[{i}]"), e))?;
    }
    for (field, image) in [("init_image", &request.init_image), ("mask", &request.mask)] {
        if let Some(data) = image {
            data.decode(field).map_err(|e| ApiError::field(field, e))?;
        }
    }
    request.seed.get_or_insert_with(random_seed);
    Ok(request)
}

/// The reply to a refused submit.
pub fn submit_error(e: SubmitError) -> ApiError {
    let status = match e {
        SubmitError::QueueFull(_) => StatusCode::TOO_MANY_REQUESTS,
        SubmitError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError::new(status, "HTTPException", e.to_string())
}

/// How an outcome is recorded: images encoded once, errors as replies.
fn end_of(outcome: Outcome) -> End {
    let mut end = End {
        state: JobState::Succeeded,
        at: SystemTime::now(),
        instant: Instant::now(),
        images: Arc::new(Vec::new()),
        warnings: Vec::new(),
        interrupted: false,
        error: None,
    };
    match outcome {
        Outcome::Finished {
            outputs,
            interrupted,
        } => {
            let mut images = Vec::new();
            for output in &outputs {
                end.warnings.extend(output.warnings.iter().cloned());
                for (index, (image, info)) in
                    output.images.iter().zip(&output.infotexts).enumerate()
                {
                    let infotext = info.to_string();
                    match encode_png(image, &[(PARAMETERS_KEY.to_string(), infotext.clone())]) {
                        Ok(png) => images.push(ResultImage {
                            png,
                            seed: output.seeds.get(index).copied().unwrap_or_default(),
                            infotext,
                        }),
                        Err(e) => {
                            end.state = JobState::Failed;
                            end.error = Some(ApiError::internal(format!("encoding a PNG: {e}")));
                        }
                    }
                }
            }
            end.images = Arc::new(images);
            end.interrupted = interrupted;
        }
        Outcome::Failed(e) => {
            end.state = JobState::Failed;
            end.error = Some(ApiError::from_library(&e, Api::Native));
        }
        Outcome::Cancelled => {
            end.state = JobState::Cancelled;
            end.error = Some(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "HTTPException",
                "the job was cancelled",
            ));
        }
        Outcome::ShuttingDown => {
            end.state = JobState::Cancelled;
            end.error = Some(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "HTTPException",
                "the server shut down before the job finished",
            ));
        }
        Outcome::Panicked(message) => {
            end.state = JobState::Failed;
            end.error = Some(ApiError::internal(format!(
                "the generation failed unexpectedly: {message}"
            )));
        }
    }
    end
}

/// The body's bytes, or the body extractor's error (too large: 413) as JSON.
fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| ApiError::new(e.status(), "HTTPException", e.body_text()))
}

/// POST /api/v1/jobs: queues the request; 202 with the job's status and its URL.
async fn submit(State(state): Shared, body: Result<Bytes, BytesRejection>) -> Response {
    match submit_job(state, body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn submit_job(
    state: Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = body_bytes(body)?;
    let worker_state = state.clone();
    let request = tokio::task::spawn_blocking(move || parse_request(&bytes, &worker_state.store()))
        .await
        .map_err(|e| ApiError::internal(format!("a worker task failed: {e}")))??;
    let previews = state.previews(&state.options());
    let ticket = state
        .queue
        .submit(Job {
            requests: vec![request.clone()],
            previews,
        })
        .map_err(submit_error)?;
    // Recorded before anyone knows the id; its outcome waits in the ticket meanwhile.
    state.jobs.insert(ticket.id, &request);
    let id = ticket.id;
    let recorder = state.clone();
    tokio::spawn(async move {
        let outcome = ticket.outcome().await;
        let end = tokio::task::spawn_blocking(move || end_of(outcome))
            .await
            .unwrap_or_else(|e| End {
                state: JobState::Failed,
                at: SystemTime::now(),
                instant: Instant::now(),
                images: Arc::new(Vec::new()),
                warnings: Vec::new(),
                interrupted: false,
                error: Some(ApiError::internal(format!("a worker task failed: {e}"))),
            });
        recorder.jobs.finish(id, end);
        recorder.queue.publish(JobEvent::Recorded(id));
    });
    let (_, reply) = state.jobs.status(id, &state.queue, false)?;
    let mut response = (StatusCode::ACCEPTED, Json(reply)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/jobs/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// GET /api/v1/jobs.
async fn list(State(state): Shared) -> Json<Value> {
    Json(json!({ "jobs": state.jobs.list(&state.queue) }))
}

/// The query of GET /api/v1/jobs/{id}.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct StatusQuery {
    /// Put each result image in the reply as base64 PNG (`png`).
    images: bool,
}

/// GET /api/v1/jobs/{id}.
async fn status(
    State(state): Shared,
    Path(id): Path<String>,
    query: Result<Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = job_id(&id)?;
    let Query(query) = query.map_err(|e| ApiError::field("images", e.body_text()))?;
    let (_, reply) = state.jobs.status(id, &state.queue, query.images)?;
    Ok(Json(reply))
}

/// GET /api/v1/jobs/{id}/images/{index}: the PNG.
async fn image(
    State(state): Shared,
    Path((id, index)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    let index: usize = index.trim_end_matches(".png").parse().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "HTTPException",
            format!("no image `{index}`: images are numbered from 0"),
        )
    })?;
    let png = state.jobs.image(id, index)?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("inline; filename=\"job-{id}-{index}.png\""),
            ),
        ],
        png,
    )
        .into_response())
}

/// POST /api/v1/jobs/{id}/cancel: 202 with the status (a running job stops at its next step);
/// 409 for a finished job.
async fn cancel(State(state): Shared, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    let (job_state, _) = state.jobs.status(id, &state.queue, false)?;
    if !matches!(job_state, JobState::Queued | JobState::Running) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "HTTPException",
            format!("job {id} has already ended ({})", job_state.name()),
        ));
    }
    if state.queue.cancel(id) == Cancelled::Waiting {
        // Its outcome is on the way to the recorder: wait for it, so the reply says so.
        wait_recorded(&state, id).await;
    }
    let (_, reply) = state.jobs.status(id, &state.queue, false)?;
    Ok((StatusCode::ACCEPTED, Json(reply)).into_response())
}

/// Waits (briefly) until job `id`'s outcome is recorded.
async fn wait_recorded(state: &AppState, id: JobId) {
    let mut events = state.queue.subscribe();
    let ended = |state: &AppState| {
        state
            .jobs
            .status(id, &state.queue, false)
            .map_or(true, |(s, _)| {
                !matches!(s, JobState::Queued | JobState::Running)
            })
    };
    let wait = async {
        while !ended(state) {
            match events.recv().await {
                Ok(JobEvent::Recorded(done)) if done == id => break,
                Err(broadcast::error::RecvError::Closed) => break,
                _ => {}
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
}

/// POST /api/v1/jobs/{id}/interrupt: the running job stops sampling after this step and its
/// estimate is decoded as the result (A1111's interrupt); 409 unless it is running.
async fn interrupt(State(state): Shared, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    let (job_state, _) = state.jobs.status(id, &state.queue, false)?;
    if job_state != JobState::Running || !state.queue.interrupt_job(id) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "HTTPException",
            format!(
                "job {id} is {}, not running: only a running job can be interrupted (cancel a queued one)",
                job_state.name()
            ),
        ));
    }
    let (_, reply) = state.jobs.status(id, &state.queue, false)?;
    Ok((StatusCode::ACCEPTED, Json(reply)).into_response())
}

/// DELETE /api/v1/jobs/{id}: cancels an unfinished job and forgets the job (later: 410).
async fn delete(State(state): Shared, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = job_id(&id)?;
    let unfinished = state.jobs.delete(id)?;
    if unfinished {
        state.queue.cancel(id);
    }
    // Event streams of the job end.
    state.queue.publish(JobEvent::Recorded(id));
    Ok(Json(
        json!({"id": id.0, "deleted": true, "cancelled": unfinished}),
    ))
}

/// An event stream's state: what to send next, and where events come from.
struct Feed {
    state: Arc<AppState>,
    id: JobId,
    events: broadcast::Receiver<JobEvent>,
    pending: VecDeque<Event>,
    ended: bool,
}

/// A named SSE event with a JSON payload.
fn sse(name: &str, data: &Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

impl Feed {
    /// Queues a `status` event; a job that has ended (or is gone) ends the stream after it.
    fn push_status(&mut self) {
        match self.state.jobs.status(self.id, &self.state.queue, false) {
            Ok((job_state, reply)) => {
                self.pending.push_back(sse("status", &reply));
                if !matches!(job_state, JobState::Queued | JobState::Running) {
                    self.ended = true;
                }
            }
            Err(e) => {
                self.pending.push_back(sse("error", &e.body()));
                self.ended = true;
            }
        }
    }

    /// The next event, or `None` once the job's end was sent.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.ended {
                return None;
            }
            match self.events.recv().await {
                Ok(JobEvent::Progress(running)) if running.id == self.id => {
                    let mut data = progress_json(&running);
                    data["id"] = json!(self.id.0);
                    self.pending.push_back(sse("progress", &data));
                }
                Ok(JobEvent::Preview(id, preview)) if id == self.id => {
                    let data = json!({
                        "id": id.0,
                        "iteration": preview.iteration,
                        "step": preview.step,
                        "image": ImageData(preview.png.to_vec()).to_base64(),
                    });
                    self.pending.push_back(sse("preview", &data));
                }
                Ok(JobEvent::Recorded(id)) if id == self.id => self.push_status(),
                Ok(_) => {}
                // Fell behind: a fresh snapshot instead of the missed events.
                Err(broadcast::error::RecvError::Lagged(_)) => self.push_status(),
                Err(broadcast::error::RecvError::Closed) => {
                    self.push_status();
                    self.ended = true;
                }
            }
        }
    }
}

/// GET /api/v1/jobs/{id}/events: Server-Sent Events. First a `status` event (the reply of
/// GET /api/v1/jobs/{id}), then `progress` after every stage and step and `preview` (a base64
/// PNG) every `show_progress_every_n_steps` steps, and a last `status` when the job has ended;
/// then the stream closes.
async fn events(
    State(state): Shared,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = job_id(&id)?;
    // Subscribed before the first status is read: nothing between them is missed.
    let events = state.queue.subscribe();
    state.jobs.status(id, &state.queue, false)?;
    let mut feed = Feed {
        state,
        id,
        events,
        pending: VecDeque::new(),
        ended: false,
    };
    feed.push_status();
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        feed.next().await.map(|event| (Ok(event), feed))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_numbers_and_others_are_404() {
        assert_eq!(job_id("12").unwrap(), JobId(12));
        let err = job_id("twelve").unwrap_err();
        assert_eq!(err.status, StatusCode::NOT_FOUND);
        assert!(err.message.contains("`twelve`"), "{}", err.message);
    }

    #[test]
    fn finished_jobs_expire_into_410_and_unknown_ids_are_404() {
        let table = JobTable::new(Duration::ZERO);
        table.insert(JobId(1), &GenerationRequest::default());
        assert_eq!(table.len(), 1);
        table.finish(JobId(1), end_of(Outcome::Cancelled));
        // A zero time-to-live: gone at the next look.
        assert!(table.is_empty());
        let table_guard = table.table();
        assert_eq!(
            table.missing(&table_guard, JobId(1)).status,
            StatusCode::GONE
        );
        assert_eq!(
            table.missing(&table_guard, JobId(2)).status,
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn the_request_echo_leaves_images_out() {
        let request = GenerationRequest {
            init_image: Some(ImageData(vec![1, 2, 3])),
            ..GenerationRequest::default()
        };
        let echo = request_echo(&request);
        assert_eq!(echo["init_image"], "<image>");
        assert!(echo["mask"].is_null());
    }
}
