//! Command-line interface: every flag, its environment variable, and the help that teaches.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

const ABOUT: &str = "Turn a goal into a checked plan of tasks and run it safely";

const LONG_ABOUT: &str = "\
orchestra runs a scenario — a DAG of tasks — through three layers: L1 (this CLI) writes the run
directory, L2 checks the plan and schedules attempts with retries, L3 runs each task as a
sandboxed subprocess and collects its artifacts. By default all three run in this process.

Exit codes: 0 every task succeeded, 1 the run finished with failed tasks, 2 usage, config or
plan errors, 130 interrupted.";

const RUN_AFTER: &str = "\
Examples:
  orchestra run examples/hello.yaml                 run it; prints the outcome and the run directory
  orchestra run examples/hello.yaml --plan-only     check the plan, write plan.json, run nothing
  orchestra run examples/hello.yaml --dry-run       go through every layer, spawn nothing
  orchestra run examples/hello.yaml --json | jq .   the summary as JSON on stdout

Planning with a model (a scenario with a `goal:` and no `tasks:`, or --goal):
  orchestra run --goal 'count the words in README.md' --plan-only    see the plan, run nothing
  orchestra run examples/goal.yaml --llm scripted:examples/goal-answers   offline, recorded answers
  orchestra run examples/goal.yaml --approve          show the plan, ask, then run
  orchestra run --plan runs/<run>/plan.json           run a reviewed (or edited) plan as is

The run directory holds scenario.yaml, config.yaml, plan.json, plan.mmd, llm/ (every model call:
prompt, raw answer, usage), logs.jsonl,
tasks/<task>/<attempt>/{stdout,stderr}, artifacts/ + artifacts.json, summary.json, report.md,
report.html and the run's state store (state/), which `orchestra resume` continues from.";

#[derive(Debug, Parser)]
#[command(name = "orchestra", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    /// Config file [default: ./orchestra.yaml if it exists, else built-in defaults]
    #[arg(long, global = true, env = "ORCHESTRA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// More console logging (-v info, -vv debug, -vvv trace); the run log always has debug
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Print only the outcome, no per-task progress
    #[arg(short, long, global = true, env = "ORCHESTRA_QUIET")]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a scenario: check its plan, then execute it
    #[command(after_help = RUN_AFTER)]
    Run(RunArgs),
    /// Continue a run after a crash or an interrupt, without re-running succeeded tasks
    Resume(ResumeArgs),
    /// Write, check and describe configuration files
    #[command(subcommand)]
    Config(ConfigCommand),
    /// List, show and delete the runs in the runs directory
    Runs(RunsArgs),
    /// List and show the plans models made, kept in the plan cache
    #[command(subcommand)]
    Plans(PlansCommand),
    /// Run scenarios N times and check each run against the scenario's `expect:` block
    #[command(after_help = EVAL_AFTER)]
    Eval(EvalArgs),
    /// Follow a run of the distributed mode (`run --nats`) to its end and write its outputs
    #[command(after_help = ATTACH_AFTER)]
    Attach(AttachArgs),
    /// Run a service of the distributed mode on NATS: the coordinator (L2) or a worker (L3)
    #[command(subcommand)]
    Agent(AgentCommand),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Scenario file (YAML): explicit `tasks`, or a `goal` for a model to plan
    #[arg(required_unless_present_any = ["goal", "plan"])]
    pub file: Option<PathBuf>,

    /// Plan this goal with a model and run it (with FILE: replaces the scenario's goal)
    #[arg(long, value_name = "TEXT", conflicts_with = "plan")]
    pub goal: Option<String>,

    /// Run exactly this plan (a plan.json, possibly hand-edited) after checking it
    #[arg(long, value_name = "FILE", conflicts_with = "file")]
    pub plan: Option<PathBuf>,

    /// Check the plan and write plan.json and plan.mmd; run nothing
    #[arg(long, conflicts_with_all = ["dry_run", "approve"])]
    pub plan_only: bool,

    /// Show the model's plan and ask before running it (needs a terminal)
    #[arg(long)]
    pub approve: bool,

    /// Planning backend: claude-code, anthropic, openai, scripted:DIR (replay recorded
    /// answers), record:DIR (ask the configured backend, save its answers) [default: llm.backend]
    #[arg(long, value_name = "BACKEND", value_parser = crate::llm::parse_choice, env = "ORCHESTRA_LLM")]
    pub llm: Option<crate::llm::LlmChoice>,

    /// Model for planning [default: llm.model, else the backend's default]
    #[arg(long, value_name = "MODEL")]
    pub model: Option<String>,

    /// Ask the model even if the plan cache has an answer for this exact request
    #[arg(long)]
    pub no_cache: bool,

    /// Go through every layer but spawn nothing; report what would run
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub common: CommonRunArgs,

    /// Submit the run to the coordinator on this NATS server instead of running it in this
    /// process (distributed mode: `orchestra agent coordinator|worker`). Attempts in flight:
    /// `limits.max_parallel`, else 2 × --workers if given, else 64
    #[arg(long, value_name = "URL", help_heading = "NATS")]
    pub nats: Option<String>,

    // Last: its help heading applies to every argument after it.
    #[command(flatten)]
    pub nats_auth: NatsAuthArgs,
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// Run directory, or a run id inside the runs directory
    pub run: String,

    #[command(flatten)]
    pub common: CommonRunArgs,
}

#[derive(Debug, Args)]
pub struct CommonRunArgs {
    /// Worker slots (attempts run at once) [default: from config, 2]
    #[arg(long, short = 'j', env = "ORCHESTRA_WORKERS", value_name = "N")]
    pub workers: Option<u32>,

    /// Where run directories are created [default: from config, ./runs]
    #[arg(long, env = "ORCHESTRA_RUNS_DIR", value_name = "DIR")]
    pub runs_dir: Option<PathBuf>,

    /// Print the run summary as JSON on stdout (progress still goes to stderr)
    #[arg(long)]
    pub json: bool,

    /// Print nothing on stdout (set by `orchestra eval` for the runs it makes)
    #[arg(skip)]
    pub silent: bool,

    /// Render report.md from this minijinja template instead of the built-in one
    #[arg(long, env = "ORCHESTRA_REPORT_TEMPLATE", value_name = "FILE")]
    pub report_template: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Write a documented default config file
    Init {
        /// Where to write it
        #[arg(default_value = "orchestra.yaml")]
        path: PathBuf,
        /// Overwrite an existing file
        #[arg(long)]
        force: bool,
    },
    /// Check a config or scenario file and report every problem with its location
    Validate {
        /// The file to check
        file: PathBuf,
        /// What the file is [default: a scenario if it has `tasks` or `name`, else a config]
        #[arg(long, value_enum)]
        kind: Option<FileKind>,
    },
    /// Print the JSON Schema of the config (or scenario) file, for editors
    Schema {
        #[arg(value_enum, default_value = "config")]
        kind: SchemaKind,
    },
}

/// Documents `config schema` describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SchemaKind {
    /// orchestra.yaml
    Config,
    /// A scenario file
    Scenario,
    /// A run's summary.json (also `orchestra run --json`), as checked in at
    /// docs/summary.schema.json
    Summary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FileKind {
    Config,
    Scenario,
}

const RUNS_AFTER: &str = "\
Examples:
  orchestra runs list                          newest first: status, duration, tasks
  orchestra runs list --status failed --limit 5
  orchestra runs show 20261125T100757Z-a1b2c3  the headline and the task table
  orchestra runs gc --keep 10 --dry-run        what would be deleted
  orchestra runs gc --older-than 7d --keep-failed

A run is finished (succeeded, failed, cancelled), running (its state store is in use),
interrupted (resumable with `orchestra resume RUN`) or planned (a --plan-only leftover).
gc deletes only finished and planned runs.";

#[derive(Debug, Args)]
#[command(after_help = RUNS_AFTER)]
pub struct RunsArgs {
    /// The runs directory [default: from config, ./runs]
    #[arg(long, global = true, env = "ORCHESTRA_RUNS_DIR", value_name = "DIR")]
    pub runs_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: RunsCommand,
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// List runs, newest first
    List {
        /// Print a JSON array on stdout
        #[arg(long)]
        json: bool,
        /// Only runs in this state
        #[arg(long, value_enum, value_name = "S")]
        status: Option<StatusFilter>,
        /// At most N runs
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// Show one run: its outcome and task table
    Show {
        /// Run directory, or a run id inside the runs directory
        run: String,
        /// Print summary.json as is
        #[arg(long)]
        json: bool,
    },
    /// Delete old finished runs (never running or interrupted ones)
    Gc {
        /// Keep the newest N finished or planned runs [default: 20 without --older-than]
        #[arg(long, value_name = "N")]
        keep: Option<usize>,
        /// Delete only runs older than this (e.g. 12h, 7d)
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
        /// Keep failed runs whatever their age
        #[arg(long)]
        keep_failed: bool,
        /// Print what would be deleted; delete nothing
        #[arg(long)]
        dry_run: bool,
    },
}

/// What `runs list --status` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFilter {
    Succeeded,
    Failed,
    Cancelled,
    /// Succeeded, failed or cancelled
    Finished,
    Running,
    Interrupted,
    Planned,
}

#[derive(Debug, Subcommand)]
pub enum PlansCommand {
    /// List cached plans, newest first
    List {
        /// Print a JSON array on stdout
        #[arg(long)]
        json: bool,
    },
    /// Show one cached plan: its goal, how it was made, and its tasks
    Show {
        /// The cache key, or a unique prefix of it
        key: String,
        /// Print the cache entry as JSON
        #[arg(long)]
        json: bool,
    },
}

const EVAL_AFTER: &str = "\
Examples:
  orchestra eval examples/eval --llm scripted:examples/eval/goal-answers   the benchmarks, offline
  orchestra eval examples/eval/build.yaml --repeat 5       pass rate over 5 trials
  orchestra eval my-scenarios/ --json | jq '.scenarios[] | {name, pass_rate}'

A scenario's `expect:` block (every field optional; each one is a check):
  expect:
    status: succeeded                  # or failed, cancelled
    tasks: { test: succeeded, deploy: skipped }
    artifacts:                         # task/path; must be collected and in artifacts/
      - { path: test/out.txt, contains: \"3 passed\" }
      - { path: test/out.txt, matches: '^ok [0-9]+$' }   # ^ $ match at line starts and ends
      - { path: merge/data.csv, sha256: 2c26b46b68ffc68f… }
    max_duration: 30s
    max_cost_usd: 0.10

Each trial is a full `orchestra run` (same code, in this process) in
<out>/<eval-id>/<scenario>/<trial>/<run-id>/. Goal scenarios ask the model in every trial
unless --use-cache. eval.json and eval.md are written to <out>/<eval-id>/: per scenario the pass
rate with its 95% Wilson interval, durations, cost per verified success and the reasons of
failed checks, counted.

Exit codes: 0 every scenario passed every trial, 1 an expectation was missed, 2 usage errors
(a bad path, a scenario without `expect:`, an invalid `expect:` block), 130 interrupted.";

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Scenario files, or directories: every *.yaml scenario in them with an `expect:` block
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,

    /// Trials per scenario
    #[arg(long, short = 'n', value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub repeat: u32,

    /// Planning backend of goal scenarios, as for `run` (e.g. scripted:DIR for recorded answers)
    #[arg(long, value_name = "BACKEND", value_parser = crate::llm::parse_choice, env = "ORCHESTRA_LLM")]
    pub llm: Option<crate::llm::LlmChoice>,

    /// Model for planning [default: llm.model, else the backend's default]
    #[arg(long, value_name = "MODEL")]
    pub model: Option<String>,

    /// Let goal scenarios take plans from the plan cache (by default every trial asks the model)
    #[arg(long)]
    pub use_cache: bool,

    /// Worker slots of each run [default: from config, 2]
    #[arg(long, short = 'j', env = "ORCHESTRA_WORKERS", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub workers: Option<u32>,

    /// Where eval directories are created
    #[arg(long, env = "ORCHESTRA_EVAL_DIR", value_name = "DIR", default_value = "eval")]
    pub out: PathBuf,

    /// Print eval.json on stdout instead of the table
    #[arg(long)]
    pub json: bool,
}

/// Credentials and TLS for nats-server, shared by `run --nats`, `attach` and the agents.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "NATS")]
pub struct NatsAuthArgs {
    /// NATS user name (with --password)
    #[arg(long, env = "ORCHESTRA_NATS_USER", value_name = "NAME")]
    pub user: Option<String>,
    /// NATS password
    #[arg(long, env = "ORCHESTRA_NATS_PASSWORD", value_name = "SECRET", hide_env_values = true)]
    pub password: Option<String>,
    /// NATS authentication token
    #[arg(long, env = "ORCHESTRA_NATS_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// NKey seed file
    #[arg(long, env = "ORCHESTRA_NATS_NKEY", value_name = "FILE")]
    pub nkey: Option<PathBuf>,
    /// Credentials file (JWT and NKey seed)
    #[arg(long, env = "ORCHESTRA_NATS_CREDS", value_name = "FILE")]
    pub creds: Option<PathBuf>,
    /// CA certificate that signed the server's certificate (PEM)
    #[arg(long, env = "ORCHESTRA_NATS_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate for mutual TLS (PEM; with --tls-key)
    #[arg(long, env = "ORCHESTRA_NATS_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Client private key for mutual TLS (PEM; with --tls-cert)
    #[arg(long, env = "ORCHESTRA_NATS_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Refuse to talk to the server without TLS
    #[arg(long, env = "ORCHESTRA_NATS_TLS_REQUIRED")]
    pub tls_required: bool,
}

/// The NATS server and how to log in to it.
#[derive(Debug, Clone, Args)]
pub struct NatsArgs {
    /// NATS server URL (several, comma-separated, for a cluster)
    #[arg(
        long,
        env = "ORCHESTRA_NATS_URL",
        value_name = "URL",
        default_value = "nats://127.0.0.1:4222",
        help_heading = "NATS"
    )]
    pub nats: String,

    #[command(flatten)]
    pub auth: NatsAuthArgs,
}

const ATTACH_AFTER: &str = "\
Examples:
  orchestra attach 20261125T100757Z-a1b2c3 --nats nats://10.0.0.5:4222
  orchestra attach runs/20261125T100757Z-a1b2c3          the run directory works too

`orchestra run --nats` prints the run id at its start. If that CLI was closed (or killed)
before the run ended, attach follows the run to its end and then makes the run directory
complete: summary.json, report.md, report.html, the task logs and the artifacts, downloaded
from the object store and checked against their SHA-256. A finished run is written at once.

Exit codes: as `orchestra run`: 0 every task succeeded, 1 failed tasks, 2 usage errors or no
coordinator, 130 interrupted (the run goes on; attach again later).";

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Run id, or its run directory (`runs/<id>`; created if missing)
    pub run: String,

    /// Where run directories are [default: from config, ./runs]
    #[arg(long, env = "ORCHESTRA_RUNS_DIR", value_name = "DIR")]
    pub runs_dir: Option<PathBuf>,

    /// Print the run summary as JSON on stdout (progress still goes to stderr)
    #[arg(long)]
    pub json: bool,

    /// Render report.md from this minijinja template instead of the built-in one
    #[arg(long, env = "ORCHESTRA_REPORT_TEMPLATE", value_name = "FILE")]
    pub report_template: Option<PathBuf>,

    // Last: its help heading applies to every argument after it.
    #[command(flatten)]
    pub nats: NatsArgs,
}

pub const COORDINATOR_AFTER: &str = "\
Examples:
  orchestra agent coordinator                     nats://127.0.0.1:4222, ./orchestra-state
  orchestra agent coordinator --nats nats://nats:4222 --state /var/lib/orchestra
  orchestra agent coordinator --config orchestra.yaml --llm anthropic   goals planned by a model
  orchestra-coordinator --nats tls://nats.example:4222 --creds coordinator.creds --tls-ca ca.pem

The coordinator (L2) answers `orchestra run --nats` and `orchestra attach`, checks and stores
plans (sled, in --state), plans goals with the model of its config (`llm:`), and dispatches
tasks to the workers through a JetStream work queue. Restarted, it resumes every run that was
running, without re-running succeeded tasks or asking the model again. SIGTERM or SIGINT stops
it; its runs stay resumable. One coordinator per state directory.";

pub const WORKER_AFTER: &str = "\
Examples:
  orchestra agent worker                          pool default, 2 slots, ./orchestra-work
  orchestra agent worker --nats nats://nats:4222 --slots 8 --work-dir /srv/orchestra
  orchestra-worker --pool default --id gpu-1 --creds worker.creds

A worker (L3) pulls tasks of its pool from the work queue, runs each in a workspace under
--work-dir, and sends the task logs and artifacts home through the JetStream object store.
Start as many as you like, on any host that reaches NATS. SIGTERM or SIGINT drains: it stops
pulling, lets running tasks finish for --drain-grace, then ends the rest (they are run again
elsewhere).";

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// The coordinator (L2): plans, checks, stores and schedules runs
    #[command(after_help = COORDINATOR_AFTER)]
    Coordinator(CoordinatorArgs),
    /// A worker (L3): runs the tasks of one pool; start as many as you like
    #[command(after_help = WORKER_AFTER)]
    Worker(WorkerArgs),
}

/// `--ack-wait`: a duration of at least 100 ms.
fn parse_ack_wait(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < std::time::Duration::from_millis(100) {
        return Err("must be at least 100ms".to_owned());
    }
    Ok(d)
}

#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// The state store: every run, its plan, its tasks and attempts (sled)
    #[arg(
        long,
        env = "ORCHESTRA_STATE_DIR",
        value_name = "DIR",
        default_value = "orchestra-state"
    )]
    pub state: PathBuf,

    /// Planning backend for goals, as for `run` [default: llm.backend of the config]
    #[arg(long, value_name = "BACKEND", value_parser = crate::llm::parse_choice, env = "ORCHESTRA_LLM")]
    pub llm: Option<crate::llm::LlmChoice>,

    /// Model for planning [default: llm.model, else the backend's default]
    #[arg(long, value_name = "MODEL")]
    pub model: Option<String>,

    /// How long a task's delivery may go without a heartbeat before NATS hands it to another
    /// worker; used when this agent creates the work queue, so give every agent the same value
    #[arg(long, env = "ORCHESTRA_ACK_WAIT", value_name = "DURATION", default_value = "30s",
          value_parser = parse_ack_wait)]
    pub ack_wait: std::time::Duration,

    // Last: its help heading applies to every argument after it.
    #[command(flatten)]
    pub nats: NatsArgs,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The pool whose tasks this worker runs
    #[arg(long, env = "ORCHESTRA_POOL", value_name = "NAME", default_value = "default")]
    pub pool: String,

    /// Tasks run at once
    #[arg(long, env = "ORCHESTRA_SLOTS", value_name = "N", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub slots: u32,

    /// Where task workspaces and logs are kept (`<dir>/<run>/…`)
    #[arg(long, env = "ORCHESTRA_WORK_DIR", value_name = "DIR", default_value = "orchestra-work")]
    pub work_dir: PathBuf,

    /// This worker's name in events and reports [default: <hostname>-<pid>]
    #[arg(long, env = "ORCHESTRA_WORKER_ID", value_name = "NAME")]
    pub id: Option<String>,

    /// On SIGTERM, how long running tasks may go on before they are ended
    #[arg(long, env = "ORCHESTRA_DRAIN_GRACE", value_name = "DURATION", default_value = "10s",
          value_parser = humantime::parse_duration)]
    pub drain_grace: std::time::Duration,

    /// How long a task's delivery may go without a heartbeat before NATS hands it to another
    /// worker (heartbeats go every third of it, at most 5 s); used when this agent creates the work queue, so give every agent the same value
    #[arg(long, env = "ORCHESTRA_ACK_WAIT", value_name = "DURATION", default_value = "30s",
          value_parser = parse_ack_wait)]
    pub ack_wait: std::time::Duration,

    // Last: its help heading applies to every argument after it.
    #[command(flatten)]
    pub nats: NatsArgs,
}
