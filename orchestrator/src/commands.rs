//! The commands: each returns the process exit code. All user-facing output is here, in
//! `progress` and in `report`.

use crate::cli::{
    Cli, Command, CommonRunArgs, ConfigCommand, FileKind, PlansCommand, ResumeArgs, RunArgs,
    SchemaKind,
};
use crate::diagnostic::Diagnostic;
use crate::exit;
use crate::local::{self, LocalCluster, LocalOptions};
use crate::logging::{self, RunLog};
use crate::progress::Progress;
use crate::report;
use crate::settings::{self, ConfigFile};
use anyhow::Context as _;
use bytes::Bytes;
use is_terminal::IsTerminal as _;
use orchestra_bus::{Bus, Subscription};
use orchestra_proto::{
    Control, Ctx, GoalRequest, Plan, PlanProblem, PlanningReport, RunEvent, RunId, RunReply,
    RunRequest, RunStatus, TaskEvent, Timestamp, TraceId, codec, layout, subjects,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing::Level;

/// Runs the parsed command line; returns the exit code.
pub async fn dispatch(cli: Cli) -> u8 {
    let result = match &cli.command {
        Command::Run(args) => run(&cli, args).await,
        Command::Resume(args) => resume(&cli, args).await,
        Command::Config(cmd) => config(&cli, cmd),
        Command::Runs(args) => crate::runs::command(&cli, args),
        Command::Plans(cmd) => plans(&cli, cmd),
        Command::Eval(args) => crate::eval::command(&cli, args).await,
        Command::Attach(args) => crate::remote::attach(&cli, args).await,
        Command::Agent(cmd) => crate::agent::command(&cli, cmd).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            if let Some(d) = e.downcast_ref::<Diagnostic>() {
                eprint!("{}", d.render());
                return exit::USAGE;
            }
            if let Some(u) = e.downcast_ref::<UsageError>() {
                eprintln!("error: {}", u.message);
                if let Some(h) = &u.hint {
                    eprintln!("hint: {h}");
                }
                return exit::USAGE;
            }
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("caused by: {cause}");
            }
            exit::INTERNAL
        }
    }
}

/// A usage problem found by L1 itself (not in a file): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct UsageError {
    pub message: String,
    pub hint: Option<String>,
}

pub(crate) fn usage(message: impl Into<String>, hint: Option<&str>) -> anyhow::Error {
    UsageError { message: message.into(), hint: hint.map(str::to_owned) }.into()
}

pub(crate) fn console_level(cli: &Cli, cfg: &ConfigFile) -> String {
    match cli.verbose {
        0 => cfg.logging.level.as_str().to_owned(),
        1 => "info".into(),
        2 => "debug".into(),
        _ => "trace".into(),
    }
}

/// The config file: `--config`, else `./orchestra.yaml` if present, else defaults.
pub(crate) fn load_config(cli: &Cli) -> anyhow::Result<ConfigFile> {
    if let Some(path) = &cli.config {
        return Ok(settings::load_config(path)?);
    }
    let default = Path::new("orchestra.yaml");
    if default.is_file() {
        return Ok(settings::load_config(default)?);
    }
    Ok(ConfigFile::default())
}

pub(crate) fn apply_overrides(cfg: &mut ConfigFile, common: &CommonRunArgs) -> anyhow::Result<()> {
    if let Some(w) = common.workers {
        if w == 0 {
            return Err(usage("--workers must be at least 1", Some("pass --workers 1 or more")));
        }
        cfg.workers = w;
    }
    if let Some(dir) = &common.runs_dir {
        cfg.runs_dir = dir.clone();
    }
    Ok(())
}

/// What `orchestra run` was asked to run.
pub(crate) enum Source {
    /// A scenario with explicit tasks, or a plan file: the plan is known.
    Plan { plan: Plan, file: PathBuf, text: Option<String> },
    /// A goal for the coordinator's model.
    Goal { goal: Box<GoalRequest>, file: PathBuf, text: Option<String> },
}

/// Reads the scenario, `--goal` or `--plan` into what to submit; writes nothing.
pub(crate) fn source(cfg: &ConfigFile, args: &RunArgs) -> anyhow::Result<(Source, Option<String>)> {
    if let Some(path) = &args.plan {
        let text = std::fs::read_to_string(path)
            .map_err(|e| usage(format!("cannot read the plan `{}`: {e}", path.display()), None))?;
        let plan = parse_plan(path, &text)?;
        return Ok((Source::Plan { plan, file: path.clone(), text: Some(text) }, None));
    }
    let (mut scenario, file, scenario_text) = match &args.file {
        Some(file) => {
            let scenario = settings::load_scenario(file)?;
            let text = std::fs::read_to_string(file).ok();
            (scenario, file.clone(), text)
        }
        None => {
            // `--goal` alone: a scenario with only a name and the goal.
            let text = format!(
                "name: goal\ngoal: {}\n",
                serde_json::to_string(args.goal.as_deref().unwrap_or_default())?
            );
            (
                settings::load_scenario_str("--goal", &text)?,
                PathBuf::from("--goal"),
                Some(text.clone()),
            )
        }
    };
    if let Some(goal) = &args.goal {
        if !scenario.tasks.is_empty() {
            return Err(usage(
                format!("`{}` has explicit tasks; --goal would be ignored", file.display()),
                Some("drop --goal, or use a scenario without `tasks`"),
            ));
        }
        scenario.goal = Some(goal.clone());
    }
    if scenario.is_goal() {
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut goal = scenario.goal_request(cfg, &base)?;
        goal.no_cache = args.no_cache;
        goal.policy_summary = policy_summary(cfg, &goal);
        let copy = if args.file.is_some() { None } else { scenario_text.clone() };
        return Ok((Source::Goal { goal: Box::new(goal), file, text: scenario_text }, copy));
    }
    let plan = scenario.to_plan(cfg);
    Ok((Source::Plan { plan, file, text: scenario_text }, None))
}

/// The rules a planned run lives under, in words for the model (part of the plan cache key).
fn policy_summary(cfg: &ConfigFile, goal: &GoalRequest) -> String {
    let l = &cfg.limits;
    let timeout = humantime::format_duration(Duration::from_millis(goal.defaults.timeout_ms));
    let mut s = format!(
        "every task runs as a subprocess in its own empty workspace with a clean environment; \
         an attempt is ended after {} unless the task sets `timeout_seconds`; output beyond {} \
         per stream ends the attempt; at most {} tasks",
        timeout, l.output_cap, l.max_tasks
    );
    if let Some(usd) = l.max_cost_usd {
        s.push_str(&format!("; the run may spend at most ${usd} on models, claude tasks included"));
    }
    s
}

/// A plan file (`plan.json`), with the location of a syntax or shape error.
fn parse_plan(path: &Path, text: &str) -> anyhow::Result<Plan> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize::<_, Plan>(de).map_err(|e| {
        let inner = e.inner();
        let field = e.path().to_string();
        let at = if field == "." { String::new() } else { format!(" at `{field}`") };
        usage(
            format!(
                "`{}`:{}:{}: not a valid plan{at}: {inner}",
                path.display(),
                inner.line(),
                inner.column()
            ),
            Some("a plan is the plan.json of a run (`orchestra run … --plan-only` writes one)"),
        )
    })
}

/// `orchestra run`; also each trial of `orchestra eval`.
pub(crate) async fn run(cli: &Cli, args: &RunArgs) -> anyhow::Result<u8> {
    if let Some(url) = &args.nats {
        return crate::remote::run(cli, args, url).await;
    }
    let mut cfg = load_config(cli)?;
    apply_overrides(&mut cfg, &args.common)?;
    let log = logging::init(&console_level(cli, &cfg));
    if let Some(template) = &args.common.report_template {
        report::check_template(template).map_err(|e| {
            usage(e.describe(), Some("fix the template, or leave out --report-template"))
        })?;
    }
    let (source, synthesized) = source(&cfg, args)?;
    let planner = match &source {
        Source::Goal { .. } => {
            Some(crate::llm::planner(&cfg, args.llm.as_ref(), args.model.as_deref())?)
        }
        Source::Plan { .. } => None,
    };
    if args.approve && !std::io::stdin().is_terminal() {
        return Err(usage(
            "--approve asks on the terminal, and stdin is not one",
            Some("review with `--plan-only`, then run the plan with `--plan runs/<run>/plan.json`"),
        ));
    }
    let mut options = cfg.run_options();
    options.dry_run = args.dry_run;

    let (run_id, trace_id, run_dir) = new_run_dir(&cfg, args, synthesized.as_deref(), &log)?;
    tracing::info!(run_id = %run_id, trace_id = %trace_id, "run created");

    let planning_time = planner.as_ref().map(|p| p.max_duration(&options));
    let cluster = start_cluster(&cfg, &run_dir, planner).await?;
    let bus = cluster.bus();
    let ctx = Ctx::run(run_id.clone(), trace_id.clone());
    let events = bus.subscribe(&follow_subject(cli, &run_id)).await?;
    let (file, text) = match &source {
        Source::Plan { file, text, .. } | Source::Goal { file, text, .. } => (file, text),
    };
    let reply = match &source {
        Source::Plan { plan, .. } => {
            let request = RunRequest::Start {
                plan: plan.clone(),
                options: options.clone(),
                plan_only: args.plan_only,
                planning: None,
            };
            submit(&bus, &ctx, request, SUBMIT_TIMEOUT).await?
        }
        Source::Goal { goal, .. } => {
            if !cli.quiet {
                eprintln!("planning with a model: {}", goal.goal);
            }
            let request = RunRequest::Goal {
                goal: (**goal).clone(),
                options: options.clone(),
                plan_only: args.plan_only || args.approve,
            };
            let wait = planning_time.unwrap_or(SUBMIT_TIMEOUT) + SUBMIT_TIMEOUT;
            let reply = submit(&bus, &ctx, request, wait).await?;
            match reply {
                RunReply::Accepted { plan: Some(plan), planning, .. } if args.approve => {
                    write_planning(&run_dir, planning.as_ref(), &plan)?;
                    print_planned(planning.as_ref());
                    print_plan(&plan, &plan.tasks.iter().map(|t| t.id.clone()).collect::<Vec<_>>());
                    if !confirm(&format!("run these {} tasks?", plan.tasks.len()))? {
                        cluster.shutdown().await;
                        let _ = std::fs::remove_dir_all(local::state_dir(&run_dir));
                        println!(
                            "not run; the plan is in {}",
                            run_dir.join(layout::PLAN).display()
                        );
                        log.close();
                        return Ok(exit::SUCCESS);
                    }
                    let request = RunRequest::Start {
                        plan,
                        options: options.clone(),
                        plan_only: false,
                        planning,
                    };
                    submit(&bus, &ctx, request, SUBMIT_TIMEOUT).await?
                }
                other => other,
            }
        }
    };
    match reply {
        RunReply::Rejected { problems, planning } => {
            cluster.shutdown().await;
            log.close();
            rejected(&run_dir, file, text.as_deref(), &problems, planning.as_ref())
        }
        RunReply::Accepted { order, plan: planned, planning, .. } => {
            let plan = accepted(cli, args, &source, &run_dir, planned, planning.as_ref())?;
            if args.plan_only {
                cluster.shutdown().await;
                let _ = std::fs::remove_dir_all(local::state_dir(&run_dir));
                print_plan(&plan, &order);
                println!("plan checked: {} tasks, nothing was run", plan.tasks.len());
                println!("run directory: {}", run_dir.display());
                log.console(Level::INFO, "plan checked", None);
                return Ok(exit::SUCCESS);
            }
            prepare_workspaces(&run_dir, &plan);
            let total = plan.tasks.len() as u32;
            let progress = Progress::new(log.clone(), total, cli.quiet, cfg.logging.format);
            follow(cluster, &ctx, events, progress, &log, &run_dir, &args.common, options.dry_run)
                .await
        }
        RunReply::Resumed { .. } | RunReply::State { .. } => {
            anyhow::bail!("the coordinator answered a start with something else")
        }
    }
}

/// A new run: its id, its trace, and its directory with scenario.yaml and config.yaml written
/// and logs.jsonl open.
pub(crate) fn new_run_dir(
    cfg: &ConfigFile,
    args: &RunArgs,
    synthesized: Option<&str>,
    log: &RunLog,
) -> anyhow::Result<(RunId, TraceId, PathBuf)> {
    let now = Timestamp::now();
    let run_id = RunId::generate(now);
    let trace_id = TraceId::generate();
    let run_dir = cfg.runs_dir.join(run_id.as_str());
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create the run directory `{}`", run_dir.display()))?;
    if let Some(file) = &args.file {
        std::fs::copy(file, run_dir.join(layout::SCENARIO))
            .with_context(|| format!("cannot copy `{}` into the run directory", file.display()))?;
    } else if let Some(text) = &synthesized {
        std::fs::write(run_dir.join(layout::SCENARIO), text)
            .context("cannot write scenario.yaml")?;
    }
    std::fs::write(run_dir.join(layout::CONFIG), settings::to_yaml(cfg))
        .context("cannot write the resolved config")?;
    log.open(&run_dir.join(layout::LOGS), run_id.as_str(), trace_id.as_str())
        .context("cannot open logs.jsonl")?;
    Ok((run_id, trace_id, run_dir))
}

/// A plan L2 refused: every problem, with the model's answers kept in the run directory when
/// a model was asked (they are evidence), else no run directory at all. Exit code 2.
pub(crate) fn rejected(
    run_dir: &Path,
    file: &Path,
    text: Option<&str>,
    problems: &[PlanProblem],
    planning: Option<&PlanningReport>,
) -> anyhow::Result<u8> {
    match planning {
        Some(p) => {
            let _ = std::fs::remove_dir_all(local::state_dir(run_dir));
            write_calls(run_dir, p)?;
        }
        None => {
            let _ = std::fs::remove_dir_all(run_dir);
        }
    }
    eprint!("{}", render_problems(file, text, problems));
    if planning.is_some() {
        eprintln!("the model's answers are kept in {}", run_dir.join(layout::LLM_DIR).display());
    }
    Ok(exit::USAGE)
}

/// The plan L2 accepted (the model's, or the one submitted), written to the run directory
/// with how it was made.
pub(crate) fn accepted(
    cli: &Cli,
    args: &RunArgs,
    source: &Source,
    run_dir: &Path,
    planned: Option<Plan>,
    planning: Option<&PlanningReport>,
) -> anyhow::Result<Plan> {
    let plan = match (planned, source) {
        (Some(plan), _) => plan,
        (None, Source::Plan { plan, .. }) => plan.clone(),
        (None, Source::Goal { .. }) => {
            anyhow::bail!("the coordinator accepted a goal without returning its plan")
        }
    };
    write_planning(run_dir, planning, &plan)?;
    if !args.approve && planning.is_some() && !cli.quiet {
        print_planned(planning);
    }
    Ok(plan)
}

/// How long L1 waits for the coordinator to accept an explicit plan.
pub(crate) const SUBMIT_TIMEOUT: Duration = Duration::from_secs(60);

/// `plan.json`, `plan.mmd` and, when a model made the plan, `llm/`.
pub(crate) fn write_planning(
    run_dir: &Path,
    planning: Option<&PlanningReport>,
    plan: &Plan,
) -> anyhow::Result<()> {
    std::fs::write(run_dir.join(layout::PLAN), report::pretty_json(plan))
        .context("cannot write plan.json")?;
    std::fs::write(run_dir.join(layout::PLAN_MERMAID), report::plan_mermaid(plan, None))
        .context("cannot write plan.mmd")?;
    if let Some(p) = planning {
        write_calls(run_dir, p)?;
    }
    Ok(())
}

/// `llm/planning.json` and every call's request and raw answer.
pub(crate) fn write_calls(run_dir: &Path, planning: &PlanningReport) -> anyhow::Result<()> {
    let dir = run_dir.join(layout::LLM_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    std::fs::write(run_dir.join(layout::PLANNING), report::pretty_json(planning))
        .context("cannot write llm/planning.json")?;
    for c in &planning.calls {
        std::fs::write(run_dir.join(layout::llm_call(c.round, "request.md")), &c.request)
            .context("cannot write a model call's request")?;
        std::fs::write(run_dir.join(layout::llm_call(c.round, "answer.txt")), &c.answer)
            .context("cannot write a model call's answer")?;
    }
    Ok(())
}

pub(crate) fn print_planned(planning: Option<&PlanningReport>) {
    let Some(p) = planning else { return };
    let model = p.model.as_deref().map(|m| format!(" ({m})")).unwrap_or_default();
    if p.cached {
        eprintln!(
            "plan from the cache ({}{model}, key {}): no model call",
            p.backend,
            &p.cache_key[..12]
        );
    } else {
        eprintln!(
            "planned by {}{model}: {} call{}, {} tokens in, {} out, ${:.4}",
            p.backend,
            p.calls.len(),
            if p.calls.len() == 1 { "" } else { "s" },
            p.input_tokens(),
            p.output_tokens(),
            p.cost_usd()
        );
    }
}

/// Asks a yes/no question on the terminal; anything but y/yes is no.
pub(crate) fn confirm(question: &str) -> anyhow::Result<bool> {
    use std::io::Write;
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}

async fn resume(cli: &Cli, args: &ResumeArgs) -> anyhow::Result<u8> {
    let base = load_config(cli)?;
    let run_dir = {
        let p = PathBuf::from(&args.run);
        if p.is_dir() { p } else { base.runs_dir.join(&args.run) }
    };
    if !local::state_dir(&run_dir).is_dir() {
        return Err(usage(
            format!("`{}` is not a run directory with a state store", run_dir.display()),
            Some("pass the path printed by `orchestra run`, or a run id inside the runs directory"),
        ));
    }
    // The run keeps the config it started with; flags may still change the worker count.
    let mut cfg = settings::load_config(&run_dir.join(layout::CONFIG))?;
    apply_overrides(&mut cfg, &args.common)?;
    cfg.runs_dir = run_dir.parent().map(Path::to_path_buf).unwrap_or_default();
    let log = logging::init(&console_level(cli, &cfg));
    // Tasks of a crashed orchestra run on in their own process groups: end them first.
    let orphans = orchestra_worker::orphans::end_orphans(&run_dir);
    if orphans > 0 {
        eprintln!("ended {orphans} process group(s) left running by the interrupted run");
    }
    let cluster = start_cluster(&cfg, &run_dir, None).await?;
    let run_id = RunId::parse(run_dir.file_name().and_then(|n| n.to_str()).unwrap_or_default())
        .map_err(|e| {
            usage(format!("`{}` is not a run directory: its name {e}", run_dir.display()), None)
        })?;
    let Some(record) = cluster.store().run(&run_id)? else {
        cluster.shutdown().await;
        return Err(usage(format!("run `{run_id}` is not in its state store"), None));
    };
    log.open(&run_dir.join(layout::LOGS), run_id.as_str(), record.trace_id.as_str())
        .context("cannot open logs.jsonl")?;
    let ctx = Ctx::run(run_id.clone(), record.trace_id.clone());
    let bus = cluster.bus();
    let events = bus.subscribe(&follow_subject(cli, &run_id)).await?;
    match submit(&bus, &ctx, RunRequest::Resume {}, SUBMIT_TIMEOUT).await? {
        RunReply::Resumed { status: RunStatus::Running, tasks } => {
            let done = tasks.values().filter(|s| s.is_terminal()).count();
            let mut progress =
                Progress::new(log.clone(), tasks.len() as u32, cli.quiet, cfg.logging.format);
            progress.line(
                Level::INFO,
                &format!("resuming {run_id}: {done}/{} tasks already done", tasks.len()),
            );
            follow(
                cluster,
                &ctx,
                events,
                progress,
                &log,
                &run_dir,
                &args.common,
                record.options.dry_run,
            )
            .await
        }
        RunReply::Resumed { status, .. } => {
            eprintln!("run {run_id} already finished: {}", status.as_str());
            finish(cluster, &ctx, &log, &run_dir, &args.common, false).await
        }
        RunReply::Rejected { problems, .. } => {
            cluster.shutdown().await;
            eprint!("{}", render_problems(&run_dir.join(layout::PLAN), None, &problems));
            Ok(exit::USAGE)
        }
        RunReply::Accepted { .. } | RunReply::State { .. } => {
            anyhow::bail!("the coordinator answered a resume with something else")
        }
    }
}

/// What L1 follows: every event of the run, or with `--quiet` only the run events (task
/// events feed progress lines that quiet does not print; failures arrive as run events).
pub(crate) fn follow_subject(cli: &Cli, run: &RunId) -> String {
    if cli.quiet { subjects::run_events(run) } else { subjects::run_all(run) }
}

/// Creates `work/<task>/` for every task, off the path from one task to the next: creating
/// directories is the slowest step of starting a short task on some filesystems, and the
/// worker then finds its workspace ready (it still creates one that is missing).
fn prepare_workspaces(run_dir: &Path, plan: &orchestra_proto::Plan) {
    let dirs: Vec<PathBuf> =
        plan.tasks.iter().map(|t| run_dir.join(layout::workspace(&t.id))).collect();
    tokio::task::spawn_blocking(move || {
        for dir in dirs {
            if let Err(e) = std::fs::create_dir_all(&dir) {
                tracing::debug!(dir = %dir.display(), error = %e, "cannot prepare a workspace");
            }
        }
    });
}

async fn start_cluster(
    cfg: &ConfigFile,
    run_dir: &Path,
    planner: Option<orchestra_coordinator::planner::Planner>,
) -> anyhow::Result<LocalCluster> {
    LocalCluster::start(LocalOptions {
        state_dir: local::state_dir(run_dir),
        runs_dir: cfg.runs_dir.clone(),
        slots: cfg.workers as usize,
        pool: cfg.pool.clone(),
        planner,
        claude: crate::llm::claude_tool(cfg),
    })
    .await
    .context("cannot start the in-process coordinator and worker")
}

async fn submit(
    bus: &Arc<dyn Bus>,
    ctx: &Ctx,
    req: RunRequest,
    timeout: Duration,
) -> anyhow::Result<RunReply> {
    let bytes = codec::encode(&ctx.envelope(Timestamp::now(), req));
    let reply = bus
        .request(subjects::RUN_SUBMIT, Bytes::from(bytes), timeout)
        .await
        .context("the coordinator did not answer the run request")?;
    Ok(codec::decode::<RunReply>(&reply).context("the coordinator's reply is not valid")?.body)
}

/// Follows a run's events until it finishes, handling Ctrl-C; then writes the report.
#[allow(clippy::too_many_arguments)]
async fn follow(
    cluster: LocalCluster,
    ctx: &Ctx,
    mut events: Subscription,
    mut progress: Progress,
    log: &RunLog,
    run_dir: &Path,
    common: &CommonRunArgs,
    dry_run: bool,
) -> anyhow::Result<u8> {
    let bus = cluster.bus();
    let events_subject = subjects::run_events(&ctx.run_id);
    let mut interrupted = false;
    loop {
        let msg = tokio::select! {
            r = tokio::signal::ctrl_c(), if !interrupted => {
                if r.is_ok() {
                    interrupted = true;
                    progress.line(Level::WARN, "interrupted: cancelling the run (Ctrl-C again to abandon it; `orchestra resume` continues it)");
                    let cancel = Control::Cancel { reason: "interrupted by the user".into() };
                    let bytes = codec::encode(&ctx.envelope(Timestamp::now(), cancel));
                    bus.publish(&subjects::run_control(&ctx.run_id), Bytes::from(bytes)).await?;
                }
                continue;
            }
            r = tokio::signal::ctrl_c(), if interrupted => {
                let _ = r;
                progress.finish();
                eprintln!("abandoned: the run state is saved; `orchestra resume {}` continues it", run_dir.display());
                return Ok(exit::INTERRUPTED);
            }
            m = events.next() => match m {
                Some(m) => m,
                None => anyhow::bail!("the bus closed before the run finished"),
            },
        };
        // Let L2 and L3, woken by the same publish, go first: progress and logs are not on
        // the path from one task's end to the next task's start.
        tokio::task::yield_now().await;
        if msg.subject == events_subject {
            let env = codec::decode::<RunEvent>(&msg.payload).context("invalid run event")?;
            progress.run_event(&env.body);
            if matches!(env.body, RunEvent::Finished(_)) {
                break;
            }
        } else if let Ok(env) = codec::decode::<TaskEvent>(&msg.payload)
            && let (Some(task), Some(attempt)) = (&env.task_id, env.attempt)
        {
            progress.task_event(task, attempt, &env.body, dry_run);
        }
    }
    progress.finish();
    finish(cluster, ctx, log, run_dir, common, interrupted).await
}

/// Stops the cluster, writes summary/artifacts/report, prints the outcome.
async fn finish(
    cluster: LocalCluster,
    ctx: &Ctx,
    log: &RunLog,
    run_dir: &Path,
    common: &CommonRunArgs,
    interrupted: bool,
) -> anyhow::Result<u8> {
    let record = cluster.store().run(&ctx.run_id)?.context("the run vanished from its store")?;
    let tasks = cluster.store().tasks(&ctx.run_id)?;
    cluster.shutdown().await;
    let out = Output {
        json: common.json,
        silent: common.silent,
        template: common.report_template.clone(),
    };
    conclude(run_dir, log, &record, &tasks, &out, interrupted, None)
}

/// How the end of a run is shown.
#[derive(Debug, Clone)]
pub(crate) struct Output {
    /// Print summary.json on stdout.
    pub json: bool,
    /// Print nothing (`orchestra eval` made this run and prints its own output).
    pub silent: bool,
    /// `--report-template`.
    pub template: Option<PathBuf>,
}

/// The end of a run in either mode: summary, artifacts index and reports written from the
/// stored records, the outcome printed, the exit code returned. `pending` is an error that
/// must not stop the outputs from being written (results that could not be downloaded);
/// a broken `--report-template` is the user's to fix (exit 2), after everything else.
pub(crate) fn conclude(
    run_dir: &Path,
    log: &RunLog,
    record: &orchestra_proto::RunRecord,
    tasks: &[orchestra_proto::TaskRecord],
    out: &Output,
    interrupted: bool,
    pending: Option<anyhow::Error>,
) -> anyhow::Result<u8> {
    let summary = report::summarize(record, tasks, Timestamp::now());
    let template_error = match report::write_all(run_dir, &summary, out.template.as_deref()) {
        Ok(()) => None,
        Err(e) if e.is_template() => Some(e),
        Err(e) => return Err(anyhow::Error::new(e).context("cannot write the run's report")),
    };
    let headline = report::headline(&summary);
    log.console(Level::INFO, &headline, None);
    log.console(Level::INFO, &format!("run directory: {}", run_dir.display()), None);
    log.close();
    if out.silent {
        // `orchestra eval` made this run; it reads summary.json and prints its own output.
    } else if out.json {
        use std::io::Write;
        std::io::stdout().write_all(&report::pretty_json(&summary))?;
    } else {
        println!("{headline}");
        println!("run directory: {}", run_dir.display());
    }
    if let Some(e) = pending {
        return Err(e);
    }
    if let Some(e) = template_error {
        return Err(usage(
            e.describe(),
            Some("fix the template, or drop --report-template; the other outputs are written"),
        ));
    }
    Ok(if interrupted {
        exit::INTERRUPTED
    } else {
        match summary.status {
            RunStatus::Succeeded => exit::SUCCESS,
            _ => exit::FAILED,
        }
    })
}

pub(crate) fn print_plan(plan: &orchestra_proto::Plan, order: &[orchestra_proto::TaskId]) {
    let by_id: std::collections::HashMap<_, _> = plan.tasks.iter().map(|t| (&t.id, t)).collect();
    let width = plan.tasks.iter().map(|t| t.id.as_str().len()).max().unwrap_or(4).max(4);
    println!(
        "{:>3}  {:width$}  {:10}  {:>8}  {:>7}  command",
        "#", "task", "after", "timeout", "retries"
    );
    for (i, id) in order.iter().enumerate() {
        let Some(t) = by_id.get(id) else { continue };
        let after = if t.depends_on.is_empty() {
            "-".to_owned()
        } else {
            t.depends_on.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(",")
        };
        let cmd = match &t.tool {
            orchestra_proto::Tool::Exec(e) => std::iter::once(e.program.as_str())
                .chain(e.args.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(" ")
                .replace('\n', "\\n"),
            orchestra_proto::Tool::Claude(c) => {
                let prompt: String = c.prompt.chars().take(60).collect();
                let more = if c.prompt.chars().count() > 60 { "…" } else { "" };
                format!("claude: {}{more}", prompt.replace('\n', " "))
            }
        };
        let timeout = humantime::format_duration(Duration::from_millis(t.timeout_ms)).to_string();
        println!(
            "{:>3}  {:width$}  {:10}  {:>8}  {:>7}  {cmd}",
            i + 1,
            id.as_str(),
            after,
            timeout,
            t.retry.max_retries
        );
    }
}

/// Renders plan problems in the house format; with the file's text, each names its line and
/// column too.
pub fn render_problems(file: &Path, text: Option<&str>, problems: &[PlanProblem]) -> String {
    let mut out = format!(
        "error: invalid plan in `{}`: {} problem{}\n",
        file.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        let at = if p.path.is_empty() { String::new() } else { format!("{}: ", p.path) };
        out.push_str(&format!("  - {at}{}\n", p.message));
        if let Some((line, col)) = text.and_then(|t| settings::locate_path(t, &p.path)) {
            out.push_str(&format!("    --> {}:{line}:{col}\n", file.display()));
        }
        if let Some(h) = &p.hint {
            out.push_str(&format!("    hint: {h}\n"));
        }
    }
    out
}

/// The JSON Schema of `summary.json`, generated from the type that writes it (checked in as
/// `docs/summary.schema.json`; a test keeps the two equal).
pub fn summary_schema() -> serde_json::Value {
    let mut schema = schemars::schema_for!(orchestra_proto::summary::Summary);
    schema.insert("title".into(), "orchestra run summary (summary.json)".into());
    schema.insert(
        "description".into(),
        "The machine-readable outcome of one run: every number report.md shows. Written as \
         summary.json in the run directory and printed by `orchestra run --json`. \
         `schema_version` changes when a field changes meaning or is removed."
            .into(),
    );
    schema.to_value()
}

fn config(cli: &Cli, cmd: &ConfigCommand) -> anyhow::Result<u8> {
    let _ = cli;
    match cmd {
        ConfigCommand::Init { path, force } => {
            if path.exists() && !force {
                return Err(usage(
                    format!("`{}` already exists", path.display()),
                    Some("pass --force to overwrite it"),
                ));
            }
            std::fs::write(path, settings::DEFAULT_CONFIG_YAML)
                .with_context(|| format!("cannot write `{}`", path.display()))?;
            println!("wrote {}", path.display());
            Ok(exit::SUCCESS)
        }
        ConfigCommand::Validate { file, kind } => {
            let kind = match kind {
                Some(k) => *k,
                None => settings::guess_kind(file),
            };
            match kind {
                FileKind::Config => {
                    settings::load_config(file)?;
                    println!("{}: valid config", file.display());
                }
                FileKind::Scenario => {
                    let s = settings::load_scenario(file)?;
                    if s.is_goal() {
                        println!("{}: valid scenario (a goal for a model to plan)", file.display());
                    } else {
                        println!("{}: valid scenario ({} tasks)", file.display(), s.tasks.len());
                    }
                }
            }
            Ok(exit::SUCCESS)
        }
        ConfigCommand::Schema { kind } => {
            let schema = match kind {
                SchemaKind::Config => settings::config_schema(),
                SchemaKind::Scenario => settings::scenario_schema(),
                SchemaKind::Summary => summary_schema(),
            };
            use std::io::Write;
            std::io::stdout().write_all(&report::pretty_json(&schema))?;
            Ok(exit::SUCCESS)
        }
    }
}

fn plans(cli: &Cli, cmd: &PlansCommand) -> anyhow::Result<u8> {
    use orchestra_coordinator::planner::cache::{CacheError, PlanCache};
    let cfg = load_config(cli)?;
    let cache = PlanCache::new(&cfg.llm.cache_dir);
    match cmd {
        PlansCommand::List { json } => {
            let plans = cache.list()?;
            if *json {
                use std::io::Write;
                std::io::stdout().write_all(&report::pretty_json(&plans))?;
                return Ok(exit::SUCCESS);
            }
            if plans.is_empty() {
                println!("no cached plans in {}", cache.dir().display());
                return Ok(exit::SUCCESS);
            }
            println!(
                "{:12}  {:24}  {:24}  {:>5}  {:>5}  goal",
                "key", "created", "backend", "tasks", "calls"
            );
            for p in &plans {
                let backend = match &p.model {
                    Some(m) => format!("{} {m}", p.backend),
                    None => p.backend.clone(),
                };
                let goal: String = p.goal.chars().take(60).collect();
                println!(
                    "{:12}  {:24}  {:24}  {:>5}  {:>5}  {}",
                    &p.key[..12.min(p.key.len())],
                    p.created_at.rfc3339(),
                    backend,
                    p.plan.tasks.len(),
                    p.calls,
                    goal.replace('\n', " ")
                );
            }
            Ok(exit::SUCCESS)
        }
        PlansCommand::Show { key, json } => {
            let p = match cache.find(key) {
                Ok(p) => p,
                Err(e @ (CacheError::NotFound { .. } | CacheError::Ambiguous { .. })) => {
                    return Err(usage(
                        e.to_string(),
                        Some("`orchestra plans list` shows the keys"),
                    ));
                }
                Err(e) => return Err(e.into()),
            };
            if *json {
                use std::io::Write;
                std::io::stdout().write_all(&report::pretty_json(&p))?;
                return Ok(exit::SUCCESS);
            }
            println!("key:      {}", p.key);
            println!("created:  {}", p.created_at.rfc3339());
            println!("goal:     {}", p.goal);
            let model = p.model.as_deref().map(|m| format!(" ({m})")).unwrap_or_default();
            println!("made by:  {}{model}, prompt version {}", p.backend, p.prompt_version);
            println!("cost:     {} call(s), ${:.4}", p.calls, p.cost_usd);
            println!();
            let order: Vec<_> = p.plan.tasks.iter().map(|t| t.id.clone()).collect();
            print_plan(&p.plan, &order);
            Ok(exit::SUCCESS)
        }
    }
}
