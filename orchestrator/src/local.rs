//! The in-process cluster: L2 and L3 on a [`MemBus`], as `orchestra run` uses them by default.
//! Tests use it too.

use orchestra_bus::{Bus, MemBus, QueueConfig, WorkQueue};
use orchestra_coordinator::service::{Coordinator, CoordinatorConfig};
use orchestra_coordinator::store::Store;
use orchestra_proto::subjects;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How to start the in-process cluster.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// The coordinator's sled store (the run's `state/` in embedded mode).
    pub state_dir: PathBuf,
    /// Where workers find run directories (`<runs_dir>/<run_id>/`).
    pub runs_dir: PathBuf,
    /// Worker slots.
    pub slots: usize,
    pub pool: String,
    /// Plans `goal` requests; without one the coordinator rejects them.
    pub planner: Option<orchestra_coordinator::planner::Planner>,
    /// How the worker runs `claude` tasks.
    pub claude: orchestra_worker::ClaudeToolConfig,
}

/// A coordinator and a worker wired over one in-process bus.
pub struct LocalCluster {
    bus: Arc<dyn Bus>,
    store: Store,
    shutdown: CancellationToken,
    coordinator: JoinHandle<()>,
    worker: JoinHandle<()>,
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster").finish_non_exhaustive()
    }
}

/// The work queue of `pool`: the shared task stream, and the pool's durable consumer filtered
/// to the pool's subject (a work-queue stream refuses a second unfiltered consumer).
pub fn queue_config(pool: &str) -> QueueConfig {
    let mut q = QueueConfig::new(
        subjects::TASK_STREAM,
        vec![subjects::TASK_QUEUE_ALL.to_owned()],
        pool.to_owned(),
    );
    q.filter = Some(subjects::task_queue(pool));
    q.ack_wait = Duration::from_secs(30);
    q.max_deliver = Some(5);
    q
}

impl LocalCluster {
    pub async fn start(opts: LocalOptions) -> anyhow::Result<Self> {
        let bus: Arc<dyn Bus> = MemBus::new();
        let queue: Arc<dyn WorkQueue> = bus.work_queue(queue_config(&opts.pool)).await?;
        let store = Store::open(&opts.state_dir)?;
        let shutdown = CancellationToken::new();

        let mut coordinator = Coordinator::new(
            bus.clone(),
            queue.clone(),
            store.clone(),
            CoordinatorConfig::default(),
        );
        if let Some(planner) = opts.planner {
            coordinator = coordinator.with_planner(planner);
        }
        let coordinator = coordinator.start(shutdown.clone()).await?;

        let config = orchestra_worker::service::WorkerConfig {
            worker_id: format!("local-{}", std::process::id()),
            pool: opts.pool.clone(),
            runs_dir: opts.runs_dir.clone(),
            slots: opts.slots.max(1),
            heartbeat: Duration::from_secs(5),
        };
        let token = shutdown.clone();
        let (b, q) = (bus.clone(), queue.clone());
        let options =
            orchestra_worker::service::WorkerOptions { claude: opts.claude, ..Default::default() };
        let worker = tokio::spawn(async move {
            if let Err(e) =
                orchestra_worker::service::run_with_options(b, q, config, options, token).await
            {
                tracing::error!(error = %e, "worker stopped");
            }
        });
        Ok(Self { bus, store, shutdown, coordinator, worker })
    }

    pub fn bus(&self) -> Arc<dyn Bus> {
        self.bus.clone()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stops both services and waits for them (running attempts are ended).
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.worker.await;
        let _ = self.coordinator.await;
    }
}

/// The state directory of a run in embedded mode.
pub fn state_dir(run_dir: &Path) -> PathBuf {
    run_dir.join(orchestra_proto::layout::STATE_DIR)
}
