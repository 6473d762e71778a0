//! The HTTP side: the router (A1111's routes, the native job API, JSON 404/405 answers), HTTP Basic auth, CORS,
//! the body limit, a log line per request, binding and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::Value;
use stable_diffusion::pipeline::{LoadOptions, ModelStore};
use stable_diffusion::vae::AutoencoderTiny;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::a1111::options::{Options, PreviewType};
use crate::jobs::JobTable;
use crate::openapi::{self, Documented, Op, Routes};
use crate::queue::{Previews, Queue, SharedStore, StepHook};
use crate::ApiError;

/// The web page at `/`: the form, the progress and live preview, the gallery; it uses the
/// native job API and the A1111 lists. Everything it needs is in this one file.
const INDEX_PAGE: &str = include_str!("assets/index.html");

/// The page at `/docs`: renders `/openapi.json` and sends requests from a form.
const DOCS_PAGE: &str = include_str!("assets/docs.html");

/// The default request body limit: 64 MB (img2img bodies carry base64 images).
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// How a server is set up.
#[derive(Clone)]
pub struct ServerConfig {
    /// Where it listens (loopback by default).
    pub listen: SocketAddr,
    /// Jobs that may wait behind the running one; one more is answered 429.
    pub queue_size: usize,
    /// Where request names point (models folder, files given one by one).
    pub store: ModelStore,
    /// How models are loaded (device, dtypes, memory limit).
    pub load_options: LoadOptions,
    /// The checkpoint requests use until `sd_model_checkpoint` changes it (`None`: the store's
    /// default).
    pub model: Option<String>,
    /// HTTP Basic credentials, `(user, password)`; empty: no authentication.
    pub auth: Vec<(String, String)>,
    /// Origins allowed by CORS (`*`: any); empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// The largest request body accepted, in bytes.
    pub body_limit: usize,
    /// Called by the worker after every sampling step.
    pub on_step: Option<StepHook>,
    /// What `/sdapi/v1/cmd-flags` shows (the command line's settings).
    pub flags: Value,
    /// How long the native API keeps a finished job's result (then 410).
    pub result_ttl: Duration,
    /// The tiny VAE that draws `TAESD` live previews (`--preview-vae`; then the default).
    pub preview_vae: Option<Arc<AutoencoderTiny>>,
}

/// How long finished jobs' results are kept by default: 10 minutes.
pub const DEFAULT_RESULT_TTL: Duration = Duration::from_secs(600);

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7860)),
            queue_size: 64,
            store: ModelStore::new(),
            load_options: LoadOptions::default(),
            model: None,
            auth: Vec::new(),
            cors_origins: Vec::new(),
            body_limit: DEFAULT_BODY_LIMIT,
            on_step: None,
            flags: Value::Object(Default::default()),
            result_ttl: DEFAULT_RESULT_TTL,
            preview_vae: None,
        }
    }
}

/// What every route shares.
pub struct AppState {
    /// The job queue and its worker.
    pub queue: Queue,
    /// The model store (rescanned by the refresh routes).
    pub store: SharedStore,
    /// The A1111 settings requests start from.
    pub options: RwLock<Options>,
    /// What `/sdapi/v1/cmd-flags` shows.
    pub flags: Value,
    /// The native API's jobs.
    pub jobs: JobTable,
    /// The tiny VAE for `TAESD` previews, if the server has one.
    pub preview_vae: Option<Arc<AutoencoderTiny>>,
}

impl AppState {
    /// A clone of the store as it is now (clones share the loaded models).
    pub fn store(&self) -> ModelStore {
        self.store.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The live previews a job run with `options` gets.
    pub fn previews(&self, options: &Options) -> Option<Previews> {
        let (every, kind) = options.previews()?;
        let vae = match kind {
            PreviewType::Taesd => self.preview_vae.clone(),
            PreviewType::ApproxCheap => None,
        };
        Some(Previews { every, vae })
    }

    /// A copy of the current settings.
    pub fn options(&self) -> Options {
        self.options
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The application: every route with its layers, on `state`.
pub fn router(state: Arc<AppState>, config: &ServerConfig) -> Router {
    let (a1111, mut docs) = crate::a1111::routes().into_parts();
    let (jobs, job_docs) = crate::jobs::routes().into_parts();
    docs.extend(job_docs);
    let (pages, page_docs) = Routes::new("", "pages")
        .route(
            "/",
            get(|| async { Html(INDEX_PAGE) }),
            [Op::get("The web page: txt2img, img2img, progress, gallery").reply_html("the page")],
        )
        .route(
            "/docs",
            get(|| async { Html(DOCS_PAGE) }),
            [Op::get("Interactive API documentation").reply_html("the page")],
        )
        .into_parts();
    docs.extend(page_docs);
    // Served by the route below, which holds the document.
    docs.push(Documented::new(
        "/openapi.json",
        "pages",
        Op::get("This OpenAPI document").reply_json(200, "OpenAPI 3.0"),
    ));
    let spec = Arc::new(openapi::document(&docs, !config.auth.is_empty()));
    let pages = pages.route(
        "/openapi.json",
        get(move || {
            let spec = spec.clone();
            async move { Json(spec.as_ref().clone()) }
        }),
    );
    let mut app = Router::new()
        .nest("/sdapi/v1", a1111)
        .nest("/api/v1", jobs)
        .merge(pages)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "HTTPException", "Not Found") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "HTTPException",
                "Method Not Allowed",
            )
        })
        .with_state(state)
        .layer(DefaultBodyLimit::max(config.body_limit));
    if !config.auth.is_empty() {
        let credentials = Arc::new(config.auth.clone());
        app = app.layer(middleware::from_fn_with_state(credentials, basic_auth));
    }
    if let Some(cors) = cors_layer(&config.cors_origins) {
        app = app.layer(cors);
    }
    app.layer(middleware::from_fn(log_request))
}

/// The CORS layer for `origins` (`*`: any), or none when the list is empty.
fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim()).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
            .allow_headers(Any),
    )
}

/// One log line per request: method, path, status, time.
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let start = Instant::now();
    let response = next.run(request).await;
    tracing::info!(
        target: "sd_server",
        "{method} {path} {} {:.1} ms",
        response.status().as_u16(),
        start.elapsed().as_secs_f64() * 1e3
    );
    response
}

/// Whether `a` and `b` are equal, in a time that depends on their lengths only.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() != b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0
}

/// HTTP Basic authentication against `credentials`: every pair is compared in constant time,
/// so the answer's timing does not say which part was wrong. CORS preflights pass.
async fn basic_auth(
    State(credentials): State<Arc<Vec<(String, String)>>>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() == Method::OPTIONS {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| {
            base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .ok()
        })
        .unwrap_or_default();
    let mut ok = false;
    for (user, password) in credentials.iter() {
        let expected = format!("{user}:{password}");
        ok |= constant_time_eq(&given, expected.as_bytes());
    }
    if ok {
        return next.run(request).await;
    }
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "HTTPException",
        "Incorrect username or password",
    )
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"sd serve\""),
    );
    response
}

/// A server bound to its address, not yet serving.
pub struct BoundServer {
    listener: tokio::net::TcpListener,
    app: Router,
    state: Arc<AppState>,
}

/// Starts the worker and binds `config.listen` (port 0: a free port, see
/// [`BoundServer::local_addr`]).
pub async fn bind(config: ServerConfig) -> std::io::Result<BoundServer> {
    let store: SharedStore = Arc::new(RwLock::new(config.store.clone()));
    let queue = Queue::start(
        config.queue_size,
        store.clone(),
        config.load_options.clone(),
        config.on_step.clone(),
    )?;
    let taesd = config.preview_vae.is_some();
    let options = Options {
        model: config.model.clone(),
        preview_type: if taesd {
            PreviewType::Taesd
        } else {
            PreviewType::ApproxCheap
        },
        taesd_available: taesd,
        ..Options::default()
    };
    let state = Arc::new(AppState {
        queue,
        store,
        options: RwLock::new(options),
        flags: config.flags.clone(),
        jobs: JobTable::new(config.result_ttl),
        preview_vae: config.preview_vae.clone(),
    });
    let app = router(state.clone(), &config);
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    Ok(BoundServer {
        listener,
        app,
        state,
    })
}

impl BoundServer {
    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves; then the running job is cancelled at its next step,
    /// waiting jobs are answered 503, open requests get their answers, and the worker stops.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        // Finished jobs past their time are dropped even when nobody asks about them.
        let sweeper = {
            let state = self.state.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    state.jobs.sweep();
                }
            })
        };
        let state = self.state.clone();
        let stopping = async move {
            shutdown.await;
            tracing::info!(target: "sd_server", "shutting down");
            state.queue.stop();
        };
        let result = axum::serve(self.listener, self.app)
            .with_graceful_shutdown(stopping)
            .await;
        sweeper.abort();
        let state = self.state;
        tokio::task::spawn_blocking(move || state.queue.shutdown())
            .await
            .map_err(std::io::Error::other)?;
        result
    }
}

/// Runs a server on its own runtime until Ctrl-C or SIGTERM, then shuts down gracefully
/// (the running job cancelled cleanly). `on_listening` is told the bound address first.
pub fn run_until_signal(
    config: ServerConfig,
    on_listening: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sd-http")
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = bind(config).await?;
        on_listening(server.local_addr()?);
        server.serve(shutdown_signal()).await
    })
}

/// Resolves at the first Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"user:pass", b"user:pass"));
        assert!(!constant_time_eq(b"user:pass", b"user:pasS"));
        assert!(!constant_time_eq(b"user:pass", b"user:pass2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
