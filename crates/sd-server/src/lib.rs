//! `sd serve`: AUTOMATIC1111's web API over the `stable-diffusion` library.
//!
//! ```text
//! HTTP (axum) ─► A1111 routes (a1111/) ─► GenerationRequest per iteration ─► Queue (bounded)
//!                      ▲                                                      │ one worker thread
//!                      └──────────── Outcome (RunOutput per iteration) ◄──── pipeline::run
//! ```
//!
//! Every generation goes through [`stable_diffusion::pipeline::run`] with the same
//! [`GenerationRequest`](stable_diffusion::pipeline::GenerationRequest) that `sd generate`
//! builds, so the server makes the images the CLI makes. One worker thread owns the compute;
//! handlers put jobs on a bounded [`queue::Queue`] (full: 429) and await their outcome.
//!
//! Beside it, the native job API (`jobs`, under `/api/v1`): a library request in, a job id
//! out, its status, result, cancel and a Server-Sent-Events stream of progress and previews.
//!
//! Files: `queue` (jobs, the worker, progress state, events), `jobs` (the native API), `openapi`
//! (the description of every route, `/openapi.json`, `/docs`), `assets/` (the pages at `/`
//! and `/docs`, embedded),
//! `a1111/` (the `/sdapi/v1` routes, the
//! mapping of A1111's fields to a request, the `info` reply), `error` (A1111's error bodies),
//! `http` (the router, auth, CORS, body limit, request log, binding and shutdown).

pub mod a1111;
pub mod error;
pub mod http;
pub mod jobs;
pub mod openapi;
pub mod queue;

pub use error::{Api, ApiError};
pub use http::{
    bind, router, run_until_signal, BoundServer, ServerConfig, DEFAULT_BODY_LIMIT,
    DEFAULT_RESULT_TTL,
};
pub use queue::{JobEvent, JobId, Outcome, Previews, Queue, Running, StepHook};
