//! The job queue: one worker thread owns the compute and runs jobs one at a time, in order,
//! from a bounded queue. A handler submits a [`Job`] and awaits its [`Outcome`] through the
//! [`Ticket`] it gets back; a full queue refuses at once ([`SubmitError::QueueFull`]).
//!
//! A job is a list of requests (A1111's iterations, `n_iter`), each run through
//! [`pipeline::run`]. While it runs, the worker keeps a [`Running`] snapshot (iteration, step,
//! stage) that progress routes read, and checks after every stage and step whether the job was
//! cancelled (its ticket dropped, or [`Ticket::cancel`]), interrupted (stop sampling, decode
//! the estimate so far, keep what is done), skipped (drop the current iteration, go on) or the server is shutting down.
//!
//! Every job's progress is also published as [`JobEvent`]s on one broadcast channel
//! ([`Queue::subscribe`]): the native API's event streams read it. With
//! [`Job::previews`] set, the worker renders a live preview of the estimate every that many
//! steps (the cheap projection, or the tiny VAE's decode); the running job's latest one is in
//! [`Running::preview`].

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use stable_diffusion::pipeline::{
    self, Control, GenerationRequest, LoadOptions, ModelStore, Progress, RunOutput, StepPreview,
};
use stable_diffusion::vae::AutoencoderTiny;
use tokio::sync::{broadcast, oneshot};

/// A job's number, unique for the server's lifetime (from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a job asks for: requests run one after the other (A1111's iterations).
#[derive(Debug, Clone)]
pub struct Job {
    /// One request per iteration, each complete (seed and sizes set by the caller or the run).
    pub requests: Vec<GenerationRequest>,
    /// Live previews during sampling (`None`: none).
    pub previews: Option<Previews>,
}

/// How often and how a job's live previews are drawn.
#[derive(Debug, Clone)]
pub struct Previews {
    /// Sampling steps between two previews (the last step always has one).
    pub every: usize,
    /// The tiny VAE that decodes them full size (`None`: the cheap projection, an eighth of
    /// the size).
    pub vae: Option<Arc<AutoencoderTiny>>,
}

/// A live preview of a running job: its estimate drawn as a PNG.
#[derive(Debug, Clone)]
pub struct Preview {
    /// The iteration it belongs to, from 0.
    pub iteration: usize,
    /// The sampling step it shows (1-based).
    pub step: usize,
    /// The PNG file's bytes (the batch side by side; an eighth of the final size from the
    /// cheap projection, full size from a tiny VAE).
    pub png: Arc<Vec<u8>>,
}

/// What the worker publishes about the jobs it runs.
#[derive(Debug, Clone)]
pub enum JobEvent {
    /// The job's state changed (it started, a stage began, a step finished).
    Progress(Running),
    /// A new live preview of the job.
    Preview(JobId, Preview),
    /// The job ended; its outcome went to its ticket.
    Ended(JobId),
    /// The native API recorded the job's outcome (or forgot the job): read it there.
    Recorded(JobId),
}

impl JobEvent {
    /// The job the event is about.
    pub fn job(&self) -> JobId {
        match self {
            JobEvent::Progress(running) => running.id,
            JobEvent::Preview(id, _) | JobEvent::Ended(id) | JobEvent::Recorded(id) => *id,
        }
    }
}

/// What [`Queue::cancel`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// The job was waiting: it is out of the queue, its outcome [`Outcome::Cancelled`].
    Waiting,
    /// The job is running: it stops at its next step.
    Running,
    /// No such job is waiting or running.
    NotFound,
}

/// How a job ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every iteration ran, or an interrupt or skips stopped some: `outputs` holds those that
    /// finished (the interrupted one with its partial images), in order.
    Finished {
        /// The finished iterations' outputs.
        outputs: Vec<RunOutput>,
        /// Whether an interrupt stopped the job early.
        interrupted: bool,
    },
    /// An iteration failed; the job stopped there.
    Failed(stable_diffusion::Error),
    /// The job was cancelled before it finished (its client went away, or [`Ticket::cancel`]).
    Cancelled,
    /// The server shut down before the job finished.
    ShuttingDown,
    /// The run panicked (a bug): the message, for the error reply.
    Panicked(String),
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The queue holds as many waiting jobs as it may.
    #[error("the queue is full ({0} jobs waiting); try again later")]
    QueueFull(usize),
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// Where a generation stage is, as the progress routes show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for the run to start (loading the model, reading the inputs).
    Starting,
    /// Encoding the prompts.
    EncodingText,
    /// Encoding the init image.
    EncodingImage,
    /// Sampling.
    Sampling,
    /// Decoding the latents.
    Decoding,
}

impl Stage {
    /// A short description for progress text.
    pub fn text(self) -> &'static str {
        match self {
            Stage::Starting => "starting",
            Stage::EncodingText => "encoding the prompts",
            Stage::EncodingImage => "encoding the init image",
            Stage::Sampling => "sampling",
            Stage::Decoding => "decoding",
        }
    }
}

/// The running job, as progress routes see it.
#[derive(Debug, Clone)]
pub struct Running {
    /// The job.
    pub id: JobId,
    /// The iteration running, from 0.
    pub iteration: usize,
    /// The job's iterations.
    pub iterations: usize,
    /// Sampling steps done in this iteration.
    pub step: usize,
    /// Sampling steps of this iteration (0 until known).
    pub steps: usize,
    /// The stage.
    pub stage: Stage,
    /// When the job started.
    pub started: Instant,
    /// When the job started, as A1111's `job_timestamp` (`YYYYMMDDhhmmss`, UTC).
    pub timestamp: String,
    /// Whether an interrupt was asked for.
    pub interrupted: bool,
    /// Whether a skip of the current iteration was asked for.
    pub skipped: bool,
    /// Whether a cancel was asked for.
    pub cancelling: bool,
    /// The latest live preview (with previews on).
    pub preview: Option<Preview>,
}

impl Running {
    /// The fraction of the job done, in [0, 1): iterations done plus this one's steps.
    pub fn fraction(&self) -> f64 {
        let iterations = self.iterations.max(1) as f64;
        let within = match self.steps {
            0 => 0.0,
            steps => self.step.min(steps) as f64 / steps as f64,
        };
        ((self.iteration as f64 + within) / iterations).min(0.999)
    }
}

/// Called by the worker after every sampling step with the running job's state (outside any
/// lock): embedders and tests can watch or pause the worker here.
pub type StepHook = Arc<dyn Fn(&Running) + Send + Sync>;

/// A job waiting in the queue.
struct Queued {
    id: JobId,
    job: Job,
    cancel: Arc<AtomicBool>,
    reply: oneshot::Sender<Outcome>,
}

/// What the worker and the handlers share.
struct Shared {
    /// Jobs waiting, oldest first.
    waiting: Mutex<VecDeque<Queued>>,
    /// Signalled when a job is queued or shutdown begins.
    wake: Condvar,
    /// The running job.
    running: Mutex<Option<(Running, Arc<AtomicBool>)>>,
    /// Stop the running job after the current step, keeping the iterations done.
    interrupt: AtomicBool,
    /// Drop the running iteration and go on with the next.
    skip: AtomicBool,
    /// Set once: finish nothing more.
    shutdown: AtomicBool,
    next_id: AtomicU64,
    capacity: usize,
    /// Where job events go.
    events: broadcast::Sender<JobEvent>,
}

impl Shared {
    /// Publishes `event` (nobody listening is fine).
    fn publish(&self, event: JobEvent) {
        let _ = self.events.send(event);
    }
}

/// The bounded job queue and its worker thread.
pub struct Queue {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

/// A queued job's handle: await [`Ticket::outcome`]; dropping the ticket unfinished cancels
/// the job (a client that went away).
pub struct Ticket {
    /// The job.
    pub id: JobId,
    cancel: Arc<AtomicBool>,
    reply: Option<oneshot::Receiver<Outcome>>,
}

impl Ticket {
    /// Waits for the job to end.
    pub async fn outcome(mut self) -> Outcome {
        // Awaited in place: a future dropped while waiting (a client gone) still holds the
        // receiver, and its drop cancels the job.
        let outcome = match self.reply.as_mut() {
            Some(reply) => reply.await.unwrap_or(Outcome::ShuttingDown),
            None => Outcome::ShuttingDown,
        };
        // Ended: dropping the ticket now must not flag a cancel.
        self.reply = None;
        outcome
    }

    /// Cancels the job, queued or running.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.reply.is_some() {
            self.cancel();
        }
    }
}

/// Events a slow listener may fall behind by before it misses some (it is told it lagged).
const EVENT_BUFFER: usize = 1024;

/// The store the worker resolves names in: shared with the routes that list and rescan it.
pub type SharedStore = Arc<RwLock<ModelStore>>;

impl Queue {
    /// Starts the worker thread: it runs jobs with `store` and `options`, at most `capacity`
    /// waiting (the running one not counted); `on_step` is called after every sampling step.
    pub fn start(
        capacity: usize,
        store: SharedStore,
        options: LoadOptions,
        on_step: Option<StepHook>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            waiting: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            running: Mutex::new(None),
            interrupt: AtomicBool::new(false),
            skip: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            capacity,
            events: broadcast::channel(EVENT_BUFFER).0,
        });
        let worker = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("sd-worker".into())
                .spawn(move || work(&shared, &store, &options, on_step.as_ref()))?
        };
        Ok(Self {
            shared,
            worker: Mutex::new(Some(worker)),
        })
    }

    /// Queues `job`; refused when `capacity` jobs wait already or the server is stopping.
    pub fn submit(&self, job: Job) -> Result<Ticket, SubmitError> {
        if self.shared.shutdown.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        let mut waiting = lock(&self.shared.waiting);
        if waiting.len() >= self.shared.capacity {
            return Err(SubmitError::QueueFull(waiting.len()));
        }
        let id = JobId(self.shared.next_id.fetch_add(1, Ordering::SeqCst));
        let cancel = Arc::new(AtomicBool::new(false));
        let (reply, receiver) = oneshot::channel();
        waiting.push_back(Queued {
            id,
            job,
            cancel: cancel.clone(),
            reply,
        });
        self.shared.wake.notify_all();
        Ok(Ticket {
            id,
            cancel,
            reply: Some(receiver),
        })
    }

    /// The number of jobs waiting (the running one not counted).
    pub fn waiting(&self) -> usize {
        lock(&self.shared.waiting).len()
    }

    /// Where job `id` waits: 0 is next; `None` when it is not waiting.
    pub fn position(&self, id: JobId) -> Option<usize> {
        lock(&self.shared.waiting).iter().position(|q| q.id == id)
    }

    /// A receiver of every job's events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.shared.events.subscribe()
    }

    /// Publishes `event` to the subscribers (the native API tells them a result is stored).
    pub fn publish(&self, event: JobEvent) {
        self.shared.publish(event);
    }

    /// Cancels job `id`: a waiting job leaves the queue at once (its outcome
    /// [`Outcome::Cancelled`]), a running one stops at its next step.
    pub fn cancel(&self, id: JobId) -> Cancelled {
        let removed = {
            let mut waiting = lock(&self.shared.waiting);
            match waiting.iter().position(|q| q.id == id) {
                Some(at) => waiting.remove(at),
                None => None,
            }
        };
        if let Some(job) = removed {
            job.cancel.store(true, Ordering::SeqCst);
            let _ = job.reply.send(Outcome::Cancelled);
            return Cancelled::Waiting;
        }
        let mut running = lock(&self.shared.running);
        match running.as_mut() {
            Some((state, cancel)) if state.id == id => {
                state.cancelling = true;
                cancel.store(true, Ordering::SeqCst);
                Cancelled::Running
            }
            _ => Cancelled::NotFound,
        }
    }

    /// Interrupts job `id` if it is the one running (see [`Queue::interrupt`]); returns
    /// whether it was.
    pub fn interrupt_job(&self, id: JobId) -> bool {
        let mut running = lock(&self.shared.running);
        match running.as_mut() {
            Some((state, _)) if state.id == id => {
                state.interrupted = true;
                self.shared.interrupt.store(true, Ordering::SeqCst);
                true
            }
            _ => false,
        }
    }

    /// The running job, if any.
    pub fn running(&self) -> Option<Running> {
        lock(&self.shared.running).as_ref().map(|(r, _)| r.clone())
    }

    /// Stops the running job after its current step: the running iteration's images are its
    /// estimate at that step, and with the iterations done they are the job's result.
    /// Returns whether a job was running.
    pub fn interrupt(&self) -> bool {
        let mut running = lock(&self.shared.running);
        match running.as_mut() {
            Some((state, _)) => {
                state.interrupted = true;
                self.shared.interrupt.store(true, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }

    /// Drops the running iteration; the job goes on with the next. Returns whether a job was
    /// running.
    pub fn skip(&self) -> bool {
        let mut running = lock(&self.shared.running);
        match running.as_mut() {
            Some((state, _)) => {
                state.skipped = true;
                self.shared.skip.store(true, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }

    /// Begins the shutdown without waiting: the running job is cancelled at its next step,
    /// waiting jobs end with [`Outcome::ShuttingDown`], later submits are refused.
    pub fn stop(&self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        let _waiting = lock(&self.shared.waiting);
        self.shared.wake.notify_all();
    }

    /// Stops the worker: the running job is cancelled at its next step, waiting jobs end with
    /// [`Outcome::ShuttingDown`], and the thread is joined. Later submits are refused.
    pub fn shutdown(&self) {
        self.stop();
        if let Some(worker) = lock(&self.worker).take() {
            let _ = worker.join();
        }
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Locks `mutex`, also after a panic elsewhere (the data is plain state).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The current time as A1111's job timestamp, `YYYYMMDDhhmmss` (UTC).
pub fn job_timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The worker thread: jobs in order until shutdown.
fn work(shared: &Shared, store: &SharedStore, options: &LoadOptions, on_step: Option<&StepHook>) {
    loop {
        let queued = {
            let mut waiting = lock(&shared.waiting);
            loop {
                if shared.shutdown.load(Ordering::SeqCst) {
                    // Everything still waiting ends now, then the thread.
                    for job in waiting.drain(..) {
                        let _ = job.reply.send(Outcome::ShuttingDown);
                    }
                    return;
                }
                if let Some(job) = waiting.pop_front() {
                    break job;
                }
                waiting = shared.wake.wait(waiting).unwrap_or_else(|e| e.into_inner());
            }
        };
        if queued.cancel.load(Ordering::SeqCst) {
            let _ = queued.reply.send(Outcome::Cancelled);
            shared.publish(JobEvent::Ended(queued.id));
            continue;
        }
        let outcome = run_job(shared, store, options, on_step, &queued);
        *lock(&shared.running) = None;
        let _ = queued.reply.send(outcome);
        shared.publish(JobEvent::Ended(queued.id));
    }
}

/// Runs one job's iterations.
fn run_job(
    shared: &Shared,
    store: &SharedStore,
    options: &LoadOptions,
    on_step: Option<&StepHook>,
    queued: &Queued,
) -> Outcome {
    shared.interrupt.store(false, Ordering::SeqCst);
    shared.skip.store(false, Ordering::SeqCst);
    let requests = &queued.job.requests;
    *lock(&shared.running) = Some((
        Running {
            id: queued.id,
            iteration: 0,
            iterations: requests.len(),
            step: 0,
            steps: 0,
            stage: Stage::Starting,
            started: Instant::now(),
            timestamp: job_timestamp(),
            interrupted: false,
            skipped: false,
            cancelling: false,
            preview: None,
        },
        queued.cancel.clone(),
    ));
    if let Some(snapshot) = lock(&shared.running).as_ref().map(|(r, _)| r.clone()) {
        shared.publish(JobEvent::Progress(snapshot));
    }
    // Clones share the loaded models; a rescan while the job runs does not change it.
    let store = store.read().unwrap_or_else(|e| e.into_inner()).clone();
    let mut outputs = Vec::with_capacity(requests.len());
    for (iteration, request) in requests.iter().enumerate() {
        if shared.interrupt.load(Ordering::SeqCst) {
            break;
        }
        shared.skip.store(false, Ordering::SeqCst);
        if let Some((state, _)) = lock(&shared.running).as_mut() {
            state.iteration = iteration;
            state.step = 0;
            state.steps = 0;
            state.stage = Stage::Starting;
            state.skipped = false;
            state.preview = None;
        }
        // Shutdown, a cancel and a skip drop the iteration; an interrupt finishes it early
        // with the estimate so far (A1111's partial image).
        let control = || {
            if shared.shutdown.load(Ordering::SeqCst)
                || queued.cancel.load(Ordering::SeqCst)
                || shared.skip.load(Ordering::SeqCst)
            {
                Control::Cancel
            } else if shared.interrupt.load(Ordering::SeqCst) {
                Control::Finish
            } else {
                Control::Continue
            }
        };
        let mut on_progress = |event: Progress| {
            let snapshot = {
                let mut running = lock(&shared.running);
                match running.as_mut() {
                    Some((state, _)) => {
                        state.stage = match event {
                            Progress::EncodingText => Stage::EncodingText,
                            Progress::EncodingImage => Stage::EncodingImage,
                            Progress::Step { step, total } => {
                                state.step = step;
                                state.steps = total;
                                Stage::Sampling
                            }
                            Progress::Decoding => Stage::Decoding,
                        };
                        Some(state.clone())
                    }
                    None => None,
                }
            };
            if let Some(snapshot) = snapshot {
                let step = matches!(event, Progress::Step { .. });
                shared.publish(JobEvent::Progress(snapshot.clone()));
                if let (Some(hook), true) = (on_step, step) {
                    hook(&snapshot);
                }
            }
            control()
        };
        let on_preview = |preview: &StepPreview<'_>| {
            let Some(previews) = queued.job.previews.as_ref().filter(|p| p.every > 0) else {
                return;
            };
            if !preview.step.is_multiple_of(previews.every) && preview.step != preview.total {
                return;
            }
            // A preview that cannot be made is skipped: it must not stop the run.
            let Some(png) = preview_png(preview, previews.vae.as_deref()) else {
                return;
            };
            let preview = Preview {
                iteration,
                step: preview.step,
                png: Arc::new(png),
            };
            if let Some((state, _)) = lock(&shared.running).as_mut() {
                state.preview = Some(preview.clone());
            }
            shared.publish(JobEvent::Preview(queued.id, preview));
        };
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            pipeline::run_with_previews(
                &store,
                options,
                request,
                Some(&on_preview),
                &mut on_progress,
            )
        }));
        match result {
            Ok(Ok(output)) => outputs.push(output),
            Ok(Err(stable_diffusion::Error::Cancelled)) => {
                if shared.shutdown.load(Ordering::SeqCst) {
                    return Outcome::ShuttingDown;
                }
                if queued.cancel.load(Ordering::SeqCst) {
                    return Outcome::Cancelled;
                }
                // An interrupt ends the job; a skip only this iteration.
            }
            Ok(Err(e)) => return Outcome::Failed(e),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                return Outcome::Panicked(message);
            }
        }
    }
    Outcome::Finished {
        outputs,
        interrupted: shared.interrupt.load(Ordering::SeqCst),
    }
}

/// `preview`'s estimate as a PNG, the batch side by side: decoded by `vae` when there is one,
/// else the cheap projection.
fn preview_png(preview: &StepPreview<'_>, vae: Option<&AutoencoderTiny>) -> Option<Vec<u8>> {
    let images = match vae {
        Some(vae) => preview.tiny_images(vae),
        None => preview.cheap_images(),
    }
    .ok()?;
    let picture = match images.len() {
        1 => images.into_iter().next()?,
        n => stable_diffusion::image::grid(&images, n),
    };
    stable_diffusion::image::encode_png(&picture, &[]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fraction_counts_iterations_and_steps() {
        let mut running = Running {
            id: JobId(1),
            iteration: 1,
            iterations: 2,
            step: 5,
            steps: 10,
            stage: Stage::Sampling,
            started: Instant::now(),
            timestamp: String::new(),
            interrupted: false,
            skipped: false,
            cancelling: false,
            preview: None,
        };
        assert_eq!(running.fraction(), 0.75);
        running.steps = 0;
        assert_eq!(running.fraction(), 0.5);
    }

    #[test]
    fn job_timestamp_has_fourteen_digits() {
        let stamp = job_timestamp();
        assert_eq!(stamp.len(), 14, "{stamp}");
        assert!(stamp.chars().all(|c| c.is_ascii_digit()), "{stamp}");
        assert!(stamp.starts_with("20"), "{stamp}");
    }
}
