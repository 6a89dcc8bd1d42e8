//! The services of the distributed mode: `orchestra agent coordinator|worker`, also installed
//! as the binaries `orchestra-coordinator` and `orchestra-worker` (the same code: the binaries
//! only parse their flags into an `orchestra agent` command line).
//!
//! Each agent connects to nats-server, runs L2 or L3 on a [`NatsBus`](orchestra_bus::NatsBus)
//! until SIGTERM or SIGINT, and stops gracefully: the coordinator leaves its runs resumable in
//! its store (a restarted one resumes them by itself), a worker drains. Operators' logs go to
//! stderr.

use crate::cli::{AgentCommand, Cli, Command, CoordinatorArgs, WorkerArgs};
use crate::commands::{self, usage};
use crate::exit;
use crate::local;
use crate::remote;
use anyhow::Context as _;
use clap::Parser;
use orchestra_bus::{Bus, WorkQueue};
use orchestra_coordinator::service::{Coordinator, CoordinatorConfig};
use orchestra_coordinator::store::Store;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Longest time between a running attempt's heartbeats (in-progress acks on the work queue).
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Heartbeats go every third of the queue's ack wait, at most every [`HEARTBEAT`].
fn heartbeat(ack_wait: Duration) -> Duration {
    (ack_wait / 3).min(HEARTBEAT)
}

/// `orchestra agent …`.
pub async fn command(cli: &Cli, cmd: &AgentCommand) -> anyhow::Result<u8> {
    init_logging(console_level(cli.verbose));
    match cmd {
        AgentCommand::Coordinator(args) => coordinator(cli, args).await,
        AgentCommand::Worker(args) => worker(cli, args).await,
    }
}

/// Agents log their lifecycle at info by default: they are services, not a CLI.
fn console_level(verbose: u8) -> &'static str {
    match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    }
}

/// Operators' logs on stderr (colours only on a terminal); `RUST_LOG` overrides the level.
fn init_logging(level: &str) {
    use is_terminal::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,orchestra={level}")));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_env_filter(filter)
        .try_init();
}

/// Resolves after SIGTERM or SIGINT; names the signal.
async fn stop_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::select! {
        _ = term.recv() => Ok("SIGTERM"),
        r = tokio::signal::ctrl_c() => r.map(|()| "SIGINT").context("cannot listen for SIGINT"),
    }
}

/// Opens the work queue of `pool`, with the same settings as in embedded mode but `ack_wait`
/// (which only applies if this call creates the queue's consumer).
async fn work_queue(
    bus: &Arc<dyn Bus>,
    pool: &str,
    ack_wait: Duration,
) -> anyhow::Result<Arc<dyn WorkQueue>> {
    let mut config = local::queue_config(pool);
    config.ack_wait = ack_wait;
    bus.work_queue(config).await.map_err(|e| {
        usage(
            format!("cannot open the work queue of pool `{pool}` on NATS: {e}"),
            Some("the server needs JetStream: start it with `nats-server -js` (or `jetstream: enabled` in its config)"),
        )
    })
}

async fn coordinator(cli: &Cli, args: &CoordinatorArgs) -> anyhow::Result<u8> {
    let cfg = commands::load_config(cli)?;
    let planner = match crate::llm::planner(&cfg, args.llm.as_ref(), args.model.as_deref()) {
        Ok(p) => Some(p),
        Err(e) if args.llm.is_some() || args.model.is_some() => return Err(e),
        Err(e) => {
            warn!(error = %e, "no planner: goals will be rejected; runs with explicit tasks work");
            None
        }
    };
    let url = args.nats.nats.as_str();
    if Store::is_in_use(&args.state) {
        return Err(usage(
            format!("the state store `{}` is in use by another process", args.state.display()),
            Some("one coordinator per state directory: stop the other one, or pass --state DIR"),
        ));
    }
    std::fs::create_dir_all(&args.state)
        .with_context(|| format!("cannot create the state directory `{}`", args.state.display()))?;
    let store = Store::open(&args.state).map_err(|e| {
        usage(
            format!("cannot open the state store `{}`: {e}", args.state.display()),
            Some("one coordinator per state directory: is another one using it?"),
        )
    })?;
    let bus: Arc<dyn Bus> = remote::connect(url, &args.nats.auth, "orchestra-coordinator").await?;
    let queue = work_queue(&bus, &cfg.pool, args.ack_wait).await?;
    let config = CoordinatorConfig { resume_running: true, ..CoordinatorConfig::default() };
    let mut service = Coordinator::new(bus.clone(), queue, store.clone(), config);
    let planning = planner.is_some();
    if let Some(p) = planner {
        service = service.with_planner(p);
    }
    let shutdown = CancellationToken::new();
    let handle = service.start(shutdown.clone()).await.context("cannot start the coordinator")?;
    info!(nats = %url, state = %args.state.display(), planning, "coordinator ready");
    let signal = stop_signal().await?;
    info!(signal, "coordinator stopping; its runs stay resumable");
    shutdown.cancel();
    let _ = handle.await;
    let _ = bus.flush().await;
    store.sync().context("cannot sync the state store")?;
    info!("coordinator stopped");
    Ok(exit::SUCCESS)
}

async fn worker(cli: &Cli, args: &WorkerArgs) -> anyhow::Result<u8> {
    let cfg = commands::load_config(cli)?;
    if let Err(e) = orchestra_proto::ids::check_token(&args.pool, orchestra_proto::TaskId::MAX_LEN)
    {
        return Err(usage(format!("invalid pool name `{}`: it {e}", args.pool), None));
    }
    let worker_id = match &args.id {
        Some(id) if id.trim().is_empty() => return Err(usage("--id must not be empty", None)),
        Some(id) => id.clone(),
        None => default_worker_id(),
    };
    std::fs::create_dir_all(&args.work_dir).with_context(|| {
        format!("cannot create the work directory `{}`", args.work_dir.display())
    })?;
    let work_dir = std::path::absolute(&args.work_dir).unwrap_or_else(|_| args.work_dir.clone());
    let url = args.nats.nats.as_str();
    let bus: Arc<dyn Bus> = remote::connect(url, &args.nats.auth, "orchestra-worker").await?;
    let queue = work_queue(&bus, &args.pool, args.ack_wait).await?;
    let config = orchestra_worker::WorkerConfig {
        worker_id: worker_id.clone(),
        pool: args.pool.clone(),
        runs_dir: work_dir.clone(),
        slots: args.slots as usize,
        heartbeat: heartbeat(args.ack_wait),
    };
    let options = orchestra_worker::WorkerOptions {
        // A worker killed with SIGKILL takes its attempts' leaders with it; the work queue
        // hands the tasks to another worker.
        die_with_worker: true,
        claude: crate::llm::claude_tool(&cfg),
        remote: true,
        drain_grace: args.drain_grace,
        ..orchestra_worker::WorkerOptions::default()
    };
    let shutdown = CancellationToken::new();
    let mut service = tokio::spawn(orchestra_worker::run_with_options(
        bus.clone(),
        queue,
        config,
        options,
        shutdown.clone(),
    ));
    info!(worker_id = %worker_id, pool = %args.pool, slots = args.slots, work_dir = %work_dir.display(), nats = %url, "worker ready");
    let result = tokio::select! {
        signal = stop_signal() => {
            info!(signal = signal?, grace = ?args.drain_grace, "worker draining");
            shutdown.cancel();
            (&mut service).await
        }
        r = &mut service => r,
    };
    let _ = bus.flush().await;
    match result {
        Ok(Ok(())) => {
            info!(worker_id = %worker_id, "worker stopped");
            Ok(exit::SUCCESS)
        }
        Ok(Err(e)) => Err(anyhow::Error::new(e).context("the worker stopped")),
        Err(e) => Err(anyhow::Error::new(e).context("the worker task failed")),
    }
}

/// `<hostname>-<pid>`: unique per process on a host, readable in reports.
fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}

/// `orchestra-coordinator`: the same as `orchestra agent coordinator`.
#[derive(Debug, Parser)]
#[command(
    name = "orchestra-coordinator",
    version,
    about = "The orchestra coordinator (L2) on NATS: the same as `orchestra agent coordinator`",
    after_help = crate::cli::COORDINATOR_AFTER
)]
struct CoordinatorBin {
    #[command(flatten)]
    globals: Globals,
    #[command(flatten)]
    args: CoordinatorArgs,
}

/// `orchestra-worker`: the same as `orchestra agent worker`.
#[derive(Debug, Parser)]
#[command(
    name = "orchestra-worker",
    version,
    about = "An orchestra worker (L3) on NATS: the same as `orchestra agent worker`",
    after_help = crate::cli::WORKER_AFTER
)]
struct WorkerBin {
    #[command(flatten)]
    globals: Globals,
    #[command(flatten)]
    args: WorkerArgs,
}

/// The flags `orchestra` takes before any subcommand that matter to an agent.
#[derive(Debug, clap::Args)]
struct Globals {
    /// Config file: `llm` (the coordinator's planner), `claude_tool` (the workers), `pool`
    /// [default: ./orchestra.yaml if it exists, else built-in defaults]
    #[arg(long, env = "ORCHESTRA_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// More logging (-v debug, -vv trace)
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

/// The `main` of `orchestra-coordinator`.
pub fn coordinator_main() -> ExitCode {
    let bin = CoordinatorBin::parse();
    main_of(bin.globals, AgentCommand::Coordinator(bin.args))
}

/// The `main` of `orchestra-worker`.
pub fn worker_main() -> ExitCode {
    let bin = WorkerBin::parse();
    main_of(bin.globals, AgentCommand::Worker(bin.args))
}

fn main_of(globals: Globals, agent: AgentCommand) -> ExitCode {
    let cli = Cli {
        config: globals.config,
        verbose: globals.verbose,
        quiet: false,
        command: Command::Agent(agent),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime\ncaused by: {e}");
            return ExitCode::from(exit::INTERNAL);
        }
    };
    let code = runtime.block_on(commands::dispatch(cli));
    runtime.shutdown_timeout(Duration::from_secs(1));
    ExitCode::from(code)
}
