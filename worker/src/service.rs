//! The worker service: pulls dispatches from a work queue, runs each as an attempt, publishes
//! its task events, and acks. The only module of the worker that talks to the bus.
//!
//! Per delivery: `Started` → `Output`… (with `Heartbeat` + `progress()` every `heartbeat`) →
//! `Finished` → `ack`. The ack follows the published `Finished`, so a worker that dies mid-way
//! leaves the delivery to be redelivered. A payload that does not decode is terminated.
//!
//! Remote mode ([`WorkerOptions::remote`]): the worker's run directory is its own, so inputs
//! missing from it are fetched from the object store, and artifacts and output files are put
//! there before `Finished` is published (see [`crate::remote`]). On shutdown it drains: attempts
//! still running after [`WorkerOptions::drain_grace`] are ended and their deliveries nakked, so
//! another worker takes them at once, instead of being reported `Cancelled`.

use crate::attempt::{AttemptContext, run_attempt};
use crate::remote;
use bytes::Bytes;
use orchestra_bus::{Bus, BusError, Delivery, WorkQueue};
use orchestra_proto::{
    AttemptResult, Control, Ctx, Dispatch, Envelope, Failure, FailureKind, Outcome, RunId, SpanId,
    TaskEvent, Timestamp, codec, subjects,
};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

/// How long one `next()` call waits for a delivery before it is asked again.
const PULL_WAIT: Duration = Duration::from_secs(5);
/// Cancelled runs remembered, so that their late dispatches are not run.
const CANCELLED_MEMORY: usize = 1024;

/// What a worker process is told at start.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Reported in `Started` and `Finished`, and in every log line.
    pub worker_id: String,
    /// The pool the work queue serves (for logs; the caller opens the queue).
    pub pool: String,
    /// Parent of the run directories: a dispatch runs in `<runs_dir>/<run_id>/`.
    pub runs_dir: PathBuf,
    /// Attempts run at once.
    pub slots: usize,
    /// Time between heartbeats of a running attempt; zero disables them.
    pub heartbeat: Duration,
}

/// How attempts are sandboxed, beyond what every attempt gets, and how the worker reaches its
/// results' readers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerOptions {
    /// Kill an attempt's leader process if the orchestra process dies (`PR_SET_PDEATHSIG`).
    /// Off by default: it forces `fork` instead of `posix_spawn` for every spawn, which cost
    /// ~0.1 ms per attempt in measurements (more in a large process). Graceful shutdown ends
    /// attempts either way, and only the leader gets the signal, not the rest of its group.
    pub die_with_worker: bool,
    /// How `claude` tasks run the Claude Code CLI.
    pub claude: crate::claude::ClaudeToolConfig,
    /// Distributed mode: `runs_dir` is private to this worker. Inputs come from, and artifacts
    /// and output files go to, the bus's object store; shutdown drains (see the module docs).
    /// Off (embedded mode): the run directory is shared with L1 and L2.
    pub remote: bool,
    /// Remote mode: on shutdown, how long running attempts may still finish before they are
    /// ended and handed back. Zero: at once.
    pub drain_grace: Duration,
    /// Remote mode: the largest artifact or output file moved through the object store.
    pub max_object_bytes: u64,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            die_with_worker: false,
            claude: crate::claude::ClaudeToolConfig::default(),
            remote: false,
            drain_grace: Duration::ZERO,
            max_object_bytes: remote::DEFAULT_MAX_OBJECT_BYTES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("failed to subscribe to control messages on `{subject}`")]
    Subscribe {
        subject: String,
        #[source]
        source: BusError,
    },
    #[error("the work queue of pool `{pool}` closed")]
    QueueClosed { pool: String },
}

/// Cancellation of the attempts of each run.
///
/// A cancelled run is remembered (the last [`CANCELLED_MEMORY`] of them) with the time of its
/// cancel, so that a dispatch sent before the cancel and still queued is not run; a dispatch
/// sent after it (a resumed run) runs normally.
struct Runs {
    root: CancellationToken,
    inner: Mutex<RunsInner>,
}

#[derive(Default)]
struct RunsInner {
    active: HashMap<RunId, (CancellationToken, usize)>,
    cancelled: HashMap<RunId, (String, Timestamp)>,
    cancelled_order: VecDeque<RunId>,
}

impl Runs {
    fn new(root: CancellationToken) -> Self {
        Self { root, inner: Mutex::new(RunsInner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RunsInner> {
        // The maps stay consistent even if a holder panicked: no update spans a panic point.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A token cancelled with the run (or the worker); already cancelled for a dispatch sent
    /// before its run was cancelled. Pair with [`Runs::leave`].
    fn enter(&self, run: &RunId, dispatched_at: Timestamp) -> CancellationToken {
        let mut inner = self.lock();
        let stale = inner.cancelled.get(run).is_some_and(|(_, at)| dispatched_at <= *at);
        let (token, count) =
            inner.active.entry(run.clone()).or_insert_with(|| (self.root.child_token(), 0));
        *count += 1;
        if stale {
            let token = self.root.child_token();
            token.cancel();
            return token;
        }
        if token.is_cancelled() && !self.root.is_cancelled() {
            // The run was cancelled, then resumed: new attempts get a fresh token.
            *token = self.root.child_token();
        }
        token.clone()
    }

    fn leave(&self, run: &RunId) {
        let mut inner = self.lock();
        if let Some((_, count)) = inner.active.get_mut(run) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                inner.active.remove(run);
            }
        }
    }

    /// Cancels the run's attempts; returns how many were running.
    fn cancel(&self, run: &RunId, reason: String, at: Timestamp) -> usize {
        let mut inner = self.lock();
        if !inner.cancelled.contains_key(run) {
            inner.cancelled_order.push_back(run.clone());
            if inner.cancelled_order.len() > CANCELLED_MEMORY
                && let Some(old) = inner.cancelled_order.pop_front()
            {
                inner.cancelled.remove(&old);
            }
        }
        inner.cancelled.insert(run.clone(), (reason, at));
        match inner.active.get(run) {
            Some((token, count)) => {
                token.cancel();
                *count
            }
            None => 0,
        }
    }

    fn cancel_reason(&self, run: &RunId) -> Option<String> {
        self.lock().cancelled.get(run).map(|(reason, _)| reason.clone())
    }
}

struct Shared {
    bus: Arc<dyn Bus>,
    config: WorkerConfig,
    options: WorkerOptions,
    runs: Runs,
    /// Process groups alive per run, for `orphans::end_orphans` after a crash.
    ledger: crate::orphans::Ledger,
    /// Cancelled when the worker ends its running attempts (at shutdown, after any drain grace).
    halt: CancellationToken,
}

/// Runs the worker until `shutdown` is cancelled (or the queue closes): stops pulling, ends the
/// running attempts and returns once they are settled. Embedded mode reports them `Cancelled`;
/// remote mode lets them finish within the drain grace, then naks the rest.
pub async fn run(
    bus: Arc<dyn Bus>,
    queue: Arc<dyn WorkQueue>,
    config: WorkerConfig,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    run_with_options(bus, queue, config, WorkerOptions::default(), shutdown).await
}

/// [`run`] with non-default [`WorkerOptions`].
pub async fn run_with_options(
    bus: Arc<dyn Bus>,
    queue: Arc<dyn WorkQueue>,
    config: WorkerConfig,
    options: WorkerOptions,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    // `stop`: no more pulling. `halt`: running attempts end (also if this future is dropped).
    let stop = shutdown.child_token();
    let halt = CancellationToken::new();
    let _halt_on_drop = halt.clone().drop_guard();
    let control_subject = subjects::run_control_all();
    let control = bus
        .subscribe(&control_subject)
        .await
        .map_err(|source| WorkerError::Subscribe { subject: control_subject, source })?;
    let slots = Arc::new(Semaphore::new(config.slots.max(1)));
    let shared = Arc::new(Shared {
        bus,
        runs: Runs::new(halt.child_token()),
        ledger: crate::orphans::Ledger::default(),
        config,
        options,
        halt: halt.clone(),
    });
    let tracker = TaskTracker::new();
    let control = tokio::spawn(control_loop(shared.clone(), control));
    info!(worker_id = %shared.config.worker_id, pool = %shared.config.pool, slots = shared.config.slots, remote = shared.options.remote, "worker started");

    let mut result = Ok(());
    let mut backoff = Duration::from_millis(50);
    loop {
        let permit = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let next = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            n = queue.next(PULL_WAIT) => n,
        };
        match next {
            Ok(Some(delivery)) => {
                backoff = Duration::from_millis(50);
                tracker.spawn(handle_delivery(shared.clone(), delivery, permit));
            }
            Ok(None) => {}
            Err(BusError::Closed) => {
                result = Err(WorkerError::QueueClosed { pool: shared.config.pool.clone() });
                break;
            }
            Err(e) => {
                warn!(worker_id = %shared.config.worker_id, error = %e, "pulling from the work queue failed; retrying");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    stop.cancel();
    tracker.close();
    let grace = if shared.options.remote { shared.options.drain_grace } else { Duration::ZERO };
    if !grace.is_zero() && !tracker.is_empty() {
        info!(worker_id = %shared.config.worker_id, attempts = tracker.len(), ?grace, "draining");
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            info!(worker_id = %shared.config.worker_id, attempts = tracker.len(), "drain grace over; handing back the attempts still running");
        }
    }
    halt.cancel();
    tracker.wait().await;
    // The control loop ends with `halt`; it only logs, so how it ended does not matter.
    let _ = control.await;
    info!(worker_id = %shared.config.worker_id, "worker stopped");
    result
}

async fn control_loop(shared: Arc<Shared>, mut control: orchestra_bus::Subscription) {
    loop {
        let msg = tokio::select! {
            biased;
            () = shared.halt.cancelled() => return,
            m = control.next() => match m {
                Some(m) => m,
                None => return,
            },
        };
        match codec::decode::<Control>(&msg.payload) {
            Ok(env) => match env.body {
                Control::Cancel { reason } => {
                    let ended = shared.runs.cancel(&env.run_id, reason.clone(), env.sent_at);
                    info!(run_id = %env.run_id, worker_id = %shared.config.worker_id, attempts = ended, %reason, "run cancelled");
                }
            },
            Err(e) => {
                warn!(subject = %msg.subject, error = %e, "ignoring a control message that does not decode");
            }
        }
    }
}

async fn handle_delivery(shared: Arc<Shared>, delivery: Delivery, permit: OwnedSemaphorePermit) {
    let env: Envelope<Dispatch> = match codec::decode(&delivery.payload) {
        Ok(env) => env,
        Err(e) => {
            let cause = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default();
            warn!(subject = %delivery.subject, error = %e, %cause, "terminating a dispatch that does not decode");
            if let Err(e) = delivery.acker.term().await {
                warn!(subject = %delivery.subject, error = %e, "failed to terminate the delivery");
            }
            return;
        }
    };
    let ctx = env.ctx();
    let dispatch = env.body;
    let span = info_span!(
        "attempt",
        run_id = %env.run_id,
        task_id = %dispatch.task.id,
        attempt = dispatch.attempt,
        worker_id = %shared.config.worker_id,
        trace_id = %env.trace_id,
    );
    let span_id = SpanId::generate();
    let ctx = ctx.task(dispatch.task.id.clone(), dispatch.attempt).with_parent(span_id.clone());
    let cancel = shared.runs.enter(&ctx.run_id, env.sent_at);
    run_dispatch(&shared, &delivery, &ctx, span_id, &dispatch, cancel, permit)
        .instrument(span)
        .await;
    shared.runs.leave(&ctx.run_id);
}

async fn run_dispatch(
    shared: &Shared,
    delivery: &Delivery,
    ctx: &Ctx,
    span_id: SpanId,
    dispatch: &Dispatch,
    cancel: CancellationToken,
    slot: OwnedSemaphorePermit,
) {
    let run_id = &ctx.run_id;
    let subject = subjects::task_events(run_id, &dispatch.task.id);
    let run_dir = shared.config.runs_dir.join(run_id.as_str());
    let cx = AttemptContext {
        run_dir: &run_dir,
        run_id,
        trace_id: &ctx.trace_id,
        span_id: &span_id,
        worker_id: &shared.config.worker_id,
        die_with_worker: shared.options.die_with_worker,
        claude: &shared.options.claude,
        objects: shared.options.remote.then_some(&*shared.bus),
    };
    let publish = |event: TaskEvent| {
        let payload = Bytes::from(codec::encode(&ctx.envelope(Timestamp::now(), event)));
        let subject = subject.as_str();
        async move {
            if let Err(e) = shared.bus.publish(subject, payload).await {
                warn!(%subject, error = %e, "failed to publish a task event");
                return false;
            }
            true
        }
    };

    let (tx, mut rx) = mpsc::unbounded_channel();
    // The attempt's process group (0: nothing spawned).
    let spawned = std::sync::atomic::AtomicU32::new(0);
    let mut sink = |event: TaskEvent| {
        if let TaskEvent::Started { pid, argv, .. } = &event {
            info!(pid, program = argv.first().map(String::as_str).unwrap_or(""), "attempt started");
            if let Some(pid) = *pid {
                shared.ledger.started(&run_dir, pid);
                spawned.store(pid, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let _ = tx.send(event);
    };
    let remote = shared.options.remote;
    // The attempt, then (remote) its results into the object store; heartbeats go on throughout.
    let attempt = async {
        let mut result = run_attempt(&cx, dispatch, &mut sink, &cancel).await;
        let hand_back = remote && shared.halt.is_cancelled() && is_cancelled(&result);
        if remote && !hand_back {
            send_results(shared, &run_dir, dispatch, run_id, &mut result).await;
        }
        (result, hand_back)
    };
    tokio::pin!(attempt);
    let heartbeat = shared.config.heartbeat;
    let mut ticks = tokio::time::interval_at(
        tokio::time::Instant::now() + heartbeat,
        heartbeat.max(Duration::from_millis(1)),
    );
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut result, hand_back) = loop {
        tokio::select! {
            biased;
            Some(event) = rx.recv() => {
                publish(event).await;
            }
            r = &mut attempt => break r,
            _ = ticks.tick(), if !heartbeat.is_zero() => {
                publish(TaskEvent::Heartbeat {}).await;
                if let Err(e) = delivery.acker.progress().await {
                    warn!(error = %e, "failed to extend the delivery's ack deadline");
                }
            }
        }
    };
    // The attempt is over: its slot can take the next delivery while this one is reported.
    drop(slot);
    let pgid = spawned.load(std::sync::atomic::Ordering::Relaxed);
    if pgid != 0 {
        // Its process group has been ended and reaped.
        shared.ledger.ended(&run_dir, pgid);
    }
    // Every event was sent before the attempt returned.
    while let Ok(event) = rx.try_recv() {
        publish(event).await;
    }

    if hand_back {
        // Remote drain: another worker runs it now, instead of the run retrying a cancel.
        match delivery.acker.nak(None).await {
            Ok(()) => info!("attempt ended by shutdown; delivery handed back"),
            Err(e) => {
                warn!(error = %e, "failed to hand back the delivery of an attempt ended by shutdown")
            }
        }
        return;
    }
    if let Outcome::Failed { failure } = &mut result.outcome
        && failure.kind == FailureKind::Cancelled
    {
        if shared.halt.is_cancelled() {
            failure.message = format!("worker `{}` is shutting down", shared.config.worker_id);
        } else if let Some(reason) = shared.runs.cancel_reason(run_id) {
            failure.message = format!("run cancelled: {reason}");
        }
    }
    // Published first, logged after: the coordinator is waiting for this result.
    let (outcome, failure, duration_ms, artifacts) = (
        match &result.outcome {
            Outcome::Succeeded {} => "succeeded",
            Outcome::DryRun {} => "dry_run",
            Outcome::Failed { .. } => "failed",
        },
        match &result.outcome {
            Outcome::Failed { failure } => Some(failure.clone()),
            _ => None,
        },
        result.duration_ms(),
        result.artifacts.len(),
    );
    let published = publish(TaskEvent::Finished(Box::new(result))).await;
    match failure {
        Some(f) => {
            info!(outcome, failure_kind = %f.kind, duration_ms, error = %f, "attempt finished")
        }
        None => info!(outcome, duration_ms, artifacts, "attempt finished"),
    }
    if published {
        if let Err(e) = delivery.acker.ack().await {
            warn!(error = %e, "failed to ack the delivery");
        }
    } else if let Err(e) = delivery.acker.nak(None).await {
        warn!(error = %e, "failed to nak the delivery after its result could not be published");
    }
}

fn is_cancelled(result: &AttemptResult) -> bool {
    matches!(&result.outcome, Outcome::Failed { failure } if failure.kind == FailureKind::Cancelled)
}

/// Remote mode: puts the attempt's artifacts and output files into the object store. An artifact
/// that cannot be put fails the attempt (its dependents could not read it); an output file that
/// cannot is only logged.
async fn send_results(
    shared: &Shared,
    run_dir: &Path,
    dispatch: &Dispatch,
    run_id: &RunId,
    result: &mut AttemptResult,
) {
    let (task, attempt) = (&dispatch.task.id, dispatch.attempt);
    let (bus, max) = (&*shared.bus, shared.options.max_object_bytes);
    if let Err(e) = remote::upload_artifacts(bus, run_dir, &result.artifacts, max).await {
        warn!(error = %e, "failed to put the attempt's artifacts into the object store");
        result.artifacts.clear();
        result.outcome =
            Outcome::Failed { failure: Failure::from_error(FailureKind::Artifact, &e) };
    }
    if let Err(e) = remote::upload_logs(bus, run_dir, run_id, task, attempt, max).await {
        warn!(error = %e, "failed to put the attempt's output files into the object store");
    }
}
