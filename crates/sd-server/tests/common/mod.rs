//! Helpers of the server tests: fixture paths, an in-process server on a free port, a gate
//! that holds the worker at a chosen step, and image decoding.
#![allow(dead_code)]

pub mod http;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use sd_server::{Running, ServerConfig};
use stable_diffusion::image::ImageData;
use stable_diffusion::pipeline::{Asset, ModelStore};

/// The repository's `fixtures/` folder.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// A store holding the tiny SD 1.5 model (the default) and the tiny SD 2 model.
pub fn tiny_store() -> (ModelStore, String) {
    let mut store = ModelStore::new();
    let name = store.add(Asset::Checkpoint, fixtures().join("models/tiny-sd15"));
    store.add(Asset::Checkpoint, fixtures().join("models/tiny-sd2"));
    (store, name)
}

/// A config on 127.0.0.1:0 with the tiny store.
pub fn tiny_config() -> ServerConfig {
    let (store, model) = tiny_store();
    ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        store,
        model: Some(model),
        ..ServerConfig::default()
    }
}

/// A server running in this process on its own runtime; dropped, it shuts down.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    /// Binds and serves `config`.
    pub fn start(config: ServerConfig) -> Self {
        let (addr_tx, addr_rx) = mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let server = sd_server::bind(config).await.unwrap();
                addr_tx.send(server.local_addr().unwrap()).unwrap();
                server
                    .serve(async move {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let addr = addr_rx.recv().expect("the server binds");
        Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Shuts the server down and waits until it has stopped.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the server thread ends cleanly");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Holds the worker once, at the first step for which `at` is true, until released: the test
/// sees the job mid-run without timing anything.
pub struct Gate {
    reached: Mutex<mpsc::Receiver<Running>>,
    release: mpsc::Sender<()>,
}

impl Gate {
    /// A gate and the step hook that waits at it.
    pub fn new(
        at: impl Fn(&Running) -> bool + Send + Sync + 'static,
    ) -> (Arc<Self>, sd_server::StepHook) {
        let (reached_tx, reached_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        let fired = std::sync::atomic::AtomicBool::new(false);
        let hook: sd_server::StepHook = Arc::new(move |running: &Running| {
            if at(running) && !fired.swap(true, std::sync::atomic::Ordering::SeqCst) {
                let _ = reached_tx.send(running.clone());
                // Bounded, so a failed test (which never releases) still ends.
                let _ = release_rx
                    .lock()
                    .unwrap()
                    .recv_timeout(std::time::Duration::from_secs(300));
            }
        });
        (
            Arc::new(Self {
                reached: Mutex::new(reached_rx),
                release: release_tx,
            }),
            hook,
        )
    }

    /// Waits until the worker is held; returns the job's state there.
    pub fn wait(&self) -> Running {
        self.reached
            .lock()
            .unwrap()
            .recv()
            .expect("the worker reaches the gate")
    }

    /// Lets the worker go on.
    pub fn release(&self) {
        let _ = self.release.send(());
    }
}

/// A base64 PNG of the reply, decoded.
pub fn decode(base64: &str) -> image::RgbImage {
    let data = ImageData::from_base64(base64).expect("base64");
    image::load_from_memory(&data.0)
        .expect("an image")
        .to_rgb8()
}

/// A PNG file's bytes as base64.
pub fn png_base64(image: &image::RgbImage) -> String {
    ImageData(stable_diffusion::image::encode_png(image, &[]).unwrap()).to_base64()
}
