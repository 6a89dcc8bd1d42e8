//! L1 over NATS: `orchestra run --nats URL` and `orchestra attach RUN`.
//!
//! The run directory is created here as in embedded mode, but L2 and L3 are other processes:
//! the run request goes to the coordinator on [`subjects::RUN_SUBMIT`], progress comes from the
//! run's events, and at the end the run's stored records come from the coordinator
//! (`RunRequest::State`) and its task logs and artifacts from the object store, where the
//! remote workers put them (verified by SHA-256 on arrival).
//!
//! Invariant: the run directory is complete (summary, report, logs, artifacts) only once the run
//! has finished; a CLI that went away before that leaves it to `orchestra attach`, which writes
//! the same files from the same sources.

use crate::cli::{AttachArgs, Cli, NatsAuthArgs, RunArgs};
use crate::commands::{self, Output, Source, usage};
use crate::exit;
use crate::logging::{self, RunLog};
use crate::progress::Progress;
use crate::report;
use crate::settings::ConfigFile;
use anyhow::Context as _;
use bytes::Bytes;
use is_terminal::IsTerminal as _;
use orchestra_bus::{Bus, BusError, NatsBus, NatsOptions, Subscription};
use orchestra_proto::{
    ArtifactRecord, Control, Ctx, Plan, RunEvent, RunId, RunRecord, RunReply, RunRequest,
    RunStatus, TaskEvent, TaskId, TaskRecord, Timestamp, TraceId, codec, layout, subjects,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing::Level;

/// How often a follower asks the coordinator for the run's state, in case the run's last
/// events were lost (core NATS delivers at most once) or the coordinator was restarted.
const STATE_POLL: Duration = Duration::from_secs(5);
/// How long one state request may take.
const STATE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long L1 waits for a coordinator at the end of a run before it gives up.
const FINAL_STATE_WAIT: Duration = Duration::from_secs(60);
/// Attempts in flight at once (queued or running) when neither the config
/// (`limits.max_parallel`) nor `--workers` says: the CLI does not know how many workers
/// serve the pool, and a dispatch waiting in the work queue costs nothing.
const REMOTE_MAX_PARALLEL: u32 = 64;

/// async-nats options from the command line.
pub fn nats_options(auth: &NatsAuthArgs, name: &str) -> NatsOptions {
    NatsOptions {
        name: name.to_owned(),
        user: auth.user.clone(),
        password: auth.password.clone(),
        token: auth.token.clone(),
        nkey_file: auth.nkey.clone(),
        creds_file: auth.creds.clone(),
        tls_ca: auth.tls_ca.clone(),
        tls_cert: auth.tls_cert.clone(),
        tls_key: auth.tls_key.clone(),
        tls_required: auth.tls_required,
    }
}

/// Connects to nats-server; a server that cannot be reached, or refuses the credentials, is a
/// usage error (exit 2) with a hint.
pub async fn connect(url: &str, auth: &NatsAuthArgs, name: &str) -> anyhow::Result<Arc<NatsBus>> {
    match NatsBus::connect_with(url, &nats_options(auth, name)).await {
        Ok(bus) => Ok(Arc::new(bus)),
        Err(e) => {
            let message = match e {
                BusError::Transport(m) => m,
                other => format!("cannot connect to {url}: {other}"),
            };
            Err(usage(
                message,
                Some(
                    "check the URL and credentials; a local server for tests: `nats-server -js` \
                     (scripts/install-nats-server installs one)",
                ),
            ))
        }
    }
}

/// The usage error of a request nobody answers.
fn no_coordinator(url: &str) -> anyhow::Error {
    usage(
        format!("no coordinator answers on {url}"),
        Some(&format!("start one with `orchestra agent coordinator --nats {url}`")),
    )
}

/// Sends a run request to the coordinator and waits for its reply.
async fn ask(
    bus: &dyn Bus,
    url: &str,
    ctx: &Ctx,
    req: RunRequest,
    timeout: Duration,
) -> anyhow::Result<RunReply> {
    let bytes = codec::encode(&ctx.envelope(Timestamp::now(), req));
    match bus.request(subjects::RUN_SUBMIT, Bytes::from(bytes), timeout).await {
        Ok(reply) => Ok(codec::decode::<RunReply>(&reply)
            .context("the coordinator's reply is not valid")?
            .body),
        Err(BusError::NoResponders { .. }) => Err(no_coordinator(url)),
        Err(e) => Err(anyhow::Error::new(e).context("the coordinator did not answer")),
    }
}

/// The stored run and its tasks, or `None` when the coordinator does not know the run.
async fn state(
    bus: &dyn Bus,
    url: &str,
    ctx: &Ctx,
) -> anyhow::Result<Option<(RunRecord, Vec<TaskRecord>)>> {
    match ask(bus, url, ctx, RunRequest::State {}, STATE_TIMEOUT).await? {
        RunReply::State { run, tasks } => Ok(Some((*run, tasks))),
        RunReply::Rejected { problems, .. } if problems.iter().any(|p| p.code == "unknown_run") => {
            Ok(None)
        }
        RunReply::Rejected { problems, .. } => {
            let why: Vec<_> = problems.iter().map(|p| p.message.as_str()).collect();
            anyhow::bail!(
                "the coordinator refused the state of run `{}`: {}",
                ctx.run_id,
                why.join("; ")
            )
        }
        other => anyhow::bail!("the coordinator answered a state request with {other:?}"),
    }
}

/// What to print and write at the end of a run.
/// One run followed over NATS.
struct Session {
    bus: Arc<dyn Bus>,
    url: String,
    ctx: Ctx,
    run_dir: PathBuf,
    log: RunLog,
}

/// How following a run ended.
enum Followed {
    /// The run finished (`interrupted`: after a Ctrl-C cancelled it).
    Finished { interrupted: bool },
    /// The user stopped following; the run goes on.
    Detached,
}

/// What Ctrl-C does while following.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OnInterrupt {
    /// `run --nats`: cancel the run (a second Ctrl-C detaches).
    Cancel,
    /// `attach`: stop following; the run goes on.
    Detach,
}

/// `orchestra run FILE --nats URL`.
pub(crate) async fn run(cli: &Cli, args: &RunArgs, url: &str) -> anyhow::Result<u8> {
    if args.llm.is_some() || args.model.is_some() {
        return Err(usage(
            "--llm and --model choose the planner of this process; with --nats the coordinator plans",
            Some("set `llm:` in the coordinator's config, or start it with `--llm`/`--model`"),
        ));
    }
    let mut cfg = commands::load_config(cli)?;
    commands::apply_overrides(&mut cfg, &args.common)?;
    let log = logging::init(&commands::console_level(cli, &cfg));
    if let Some(template) = &args.common.report_template {
        report::check_template(template).map_err(|e| {
            usage(e.describe(), Some("fix the template, or leave out --report-template"))
        })?;
    }
    let (source, synthesized) = commands::source(&cfg, args)?;
    if args.approve && !std::io::stdin().is_terminal() {
        return Err(usage(
            "--approve asks on the terminal, and stdin is not one",
            Some("review with `--plan-only`, then run the plan with `--plan runs/<run>/plan.json`"),
        ));
    }
    let mut options = cfg.run_options();
    options.dry_run = args.dry_run;
    if cfg.limits.max_parallel.is_none() && args.common.workers.is_none() {
        options.max_parallel = REMOTE_MAX_PARALLEL;
    }
    let bus: Arc<dyn Bus> = connect(url, &args.nats_auth, "orchestra-cli").await?;

    let (run_id, trace_id, run_dir) =
        crate::commands::new_run_dir(&cfg, args, synthesized.as_deref(), &log)?;
    tracing::info!(run_id = %run_id, trace_id = %trace_id, nats = %url, "run created");

    let session = Session {
        bus: bus.clone(),
        url: url.to_owned(),
        ctx: Ctx::run(run_id.clone(), trace_id),
        run_dir: run_dir.clone(),
        log: log.clone(),
    };
    let events = bus.subscribe(&commands::follow_subject(cli, &run_id)).await?;
    let (file, text) = match &source {
        Source::Plan { file, text, .. } | Source::Goal { file, text, .. } => (file, text),
    };
    let submitted = submit(cli, args, &cfg, &session, &source, &options).await;
    let reply = match submitted {
        Ok(Some(reply)) => reply,
        Ok(None) => {
            log.close();
            return Ok(exit::SUCCESS);
        }
        Err(e) => {
            // Nothing ran: a run directory without a run would only confuse `runs list`.
            log.close();
            let _ = std::fs::remove_dir_all(&run_dir);
            return Err(e);
        }
    };
    match reply {
        RunReply::Rejected { problems, planning } => {
            log.close();
            commands::rejected(&run_dir, file, text.as_deref(), &problems, planning.as_ref())
        }
        RunReply::Accepted { order, plan: planned, planning, .. } => {
            let plan =
                commands::accepted(cli, args, &source, &run_dir, planned, planning.as_ref())?;
            if args.plan_only {
                commands::print_plan(&plan, &order);
                println!("plan checked: {} tasks, nothing was run", plan.tasks.len());
                println!("run directory: {}", run_dir.display());
                log.console(Level::INFO, "plan checked", None);
                log.close();
                return Ok(exit::SUCCESS);
            }
            let mut progress =
                Progress::new(log.clone(), plan.tasks.len() as u32, cli.quiet, cfg.logging.format);
            progress
                .line(Level::INFO, &format!("run {run_id} submitted to the coordinator on {url}"));
            let out = Output {
                json: args.common.json,
                silent: args.common.silent,
                template: args.common.report_template.clone(),
            };
            let followed =
                session.follow(events, progress, options.dry_run, OnInterrupt::Cancel).await?;
            session.end(followed, &out).await
        }
        RunReply::Resumed { .. } | RunReply::State { .. } => {
            anyhow::bail!("the coordinator answered a start with something else")
        }
    }
}

/// Sends the run request (for `--approve`, the goal, then the approved plan). `None`: the user
/// declined the plan.
async fn submit(
    cli: &Cli,
    args: &RunArgs,
    cfg: &ConfigFile,
    session: &Session,
    source: &Source,
    options: &orchestra_proto::RunOptions,
) -> anyhow::Result<Option<RunReply>> {
    let (bus, url, ctx) = (&*session.bus, session.url.as_str(), &session.ctx);
    match source {
        Source::Plan { plan, .. } => {
            let request = RunRequest::Start {
                plan: plan.clone(),
                options: options.clone(),
                plan_only: args.plan_only,
                planning: None,
            };
            ask(bus, url, ctx, request, commands::SUBMIT_TIMEOUT).await.map(Some)
        }
        Source::Goal { goal, .. } => {
            if !cli.quiet {
                eprintln!("planning with the coordinator's model: {}", goal.goal);
            }
            let request = RunRequest::Goal {
                goal: (**goal).clone(),
                options: options.clone(),
                plan_only: args.plan_only || args.approve,
            };
            let reply = ask(bus, url, ctx, request, planning_wait(cfg, options)).await?;
            match reply {
                RunReply::Accepted { plan: Some(plan), planning, .. } if args.approve => {
                    commands::write_planning(&session.run_dir, planning.as_ref(), &plan)?;
                    commands::print_planned(planning.as_ref());
                    let order: Vec<TaskId> = plan.tasks.iter().map(|t| t.id.clone()).collect();
                    commands::print_plan(&plan, &order);
                    if !commands::confirm(&format!("run these {} tasks?", plan.tasks.len()))? {
                        println!(
                            "not run; the plan is in {}",
                            session.run_dir.join(layout::PLAN).display()
                        );
                        return Ok(None);
                    }
                    let request = RunRequest::Start {
                        plan,
                        options: options.clone(),
                        plan_only: false,
                        planning,
                    };
                    ask(bus, url, ctx, request, commands::SUBMIT_TIMEOUT).await.map(Some)
                }
                other => Ok(Some(other)),
            }
        }
    }
}

/// How long planning may take on the coordinator, by this side's config (the coordinator's
/// may differ; the margin covers the usual case).
fn planning_wait(cfg: &ConfigFile, options: &orchestra_proto::RunOptions) -> Duration {
    let calls = options.max_llm_calls.min(cfg.llm.max_repair_rounds + 1).max(1);
    cfg.llm.call_timeout.0.saturating_mul(calls) + commands::SUBMIT_TIMEOUT
}

/// `orchestra attach RUN`.
pub(crate) async fn attach(cli: &Cli, args: &AttachArgs) -> anyhow::Result<u8> {
    let mut cfg = commands::load_config(cli)?;
    if let Some(dir) = &args.runs_dir {
        cfg.runs_dir = dir.clone();
    }
    if let Some(template) = &args.report_template {
        report::check_template(template).map_err(|e| {
            usage(e.describe(), Some("fix the template, or leave out --report-template"))
        })?;
    }
    let (run_id, run_dir) = run_location(&args.run, &cfg.runs_dir)?;
    let log = logging::init(&commands::console_level(cli, &cfg));
    let url = args.nats.nats.as_str();
    let bus: Arc<dyn Bus> = connect(url, &args.nats.auth, "orchestra-cli").await?;
    // Subscribe before asking for the state, so that no event falls between the two.
    let events = bus.subscribe(&commands::follow_subject(cli, &run_id)).await?;
    let probe = Ctx::run(run_id.clone(), TraceId::generate());
    let Some((record, tasks)) = state(&*bus, url, &probe).await? else {
        return Err(usage(
            format!("the coordinator on {url} has no run `{run_id}`"),
            Some("pass the run id `orchestra run --nats` printed, and the same --nats URL"),
        ));
    };
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create the run directory `{}`", run_dir.display()))?;
    log.open(&run_dir.join(layout::LOGS), run_id.as_str(), record.trace_id.as_str())
        .context("cannot open logs.jsonl")?;
    if !run_dir.join(layout::PLAN).is_file() {
        commands::write_planning(&run_dir, record.planning.as_ref(), &record.plan)?;
    }
    let session = Session {
        bus: bus.clone(),
        url: url.to_owned(),
        ctx: Ctx::run(run_id.clone(), record.trace_id.clone()),
        run_dir,
        log: log.clone(),
    };
    let out = Output { json: args.json, silent: false, template: args.report_template.clone() };
    if record.status != RunStatus::Running {
        if !cli.quiet {
            eprintln!("run {run_id} already finished: {}", record.status.as_str());
        }
        return session.end(Followed::Finished { interrupted: false }, &out).await;
    }
    // A coordinator restarted with its runs resumes them by itself; this makes sure of it (a
    // run it drives already is only reported).
    match ask(&*bus, url, &session.ctx, RunRequest::Resume {}, commands::SUBMIT_TIMEOUT).await? {
        RunReply::Resumed { .. } => {}
        other => tracing::warn!(reply = ?other, "unexpected answer to a resume"),
    }
    let done = tasks.iter().filter(|t| t.status.is_terminal()).count();
    let total = record.plan.tasks.len();
    let mut progress = Progress::new(log.clone(), total as u32, cli.quiet, cfg.logging.format);
    progress.line(Level::INFO, &format!("attached to {run_id}: {done}/{total} tasks done"));
    let followed =
        session.follow(events, progress, record.options.dry_run, OnInterrupt::Detach).await?;
    session.end(followed, &out).await
}

/// The run id and run directory `attach` was given: a run directory, or an id in `runs_dir`.
fn run_location(arg: &str, runs_dir: &Path) -> anyhow::Result<(RunId, PathBuf)> {
    let path = Path::new(arg);
    let (name, dir) = if path.components().count() > 1 || path.is_dir() {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        (name.to_owned(), path.to_path_buf())
    } else {
        (arg.to_owned(), runs_dir.join(arg))
    };
    let run_id = RunId::parse(&name).map_err(|e| {
        usage(
            format!("`{arg}` is not a run id: {e}"),
            Some("pass the run id `orchestra run --nats` printed, or its run directory"),
        )
    })?;
    Ok((run_id, dir))
}

impl Session {
    /// Follows the run's events until it finishes (or the user stops following).
    async fn follow(
        &self,
        mut events: Subscription,
        mut progress: Progress,
        dry_run: bool,
        on_interrupt: OnInterrupt,
    ) -> anyhow::Result<Followed> {
        let events_subject = subjects::run_events(&self.ctx.run_id);
        let mut poll = tokio::time::interval(STATE_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        let mut interrupted = false;
        let mut coordinator_away = false;
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => {
                    r.context("cannot listen for Ctrl-C")?;
                    if on_interrupt == OnInterrupt::Detach || interrupted {
                        progress.finish();
                        eprintln!(
                            "stopped following; the run goes on. `orchestra attach {} --nats {}` \
                             follows it again and writes its outputs",
                            self.ctx.run_id, self.url
                        );
                        return Ok(Followed::Detached);
                    }
                    interrupted = true;
                    progress.line(Level::WARN, "interrupted: cancelling the run (Ctrl-C again to stop following it)");
                    let cancel = Control::Cancel { reason: "interrupted by the user".into() };
                    let bytes = codec::encode(&self.ctx.envelope(Timestamp::now(), cancel));
                    self.bus.publish(&subjects::run_control(&self.ctx.run_id), Bytes::from(bytes)).await?;
                }
                m = events.next() => {
                    let Some(msg) = m else { anyhow::bail!("the NATS connection closed before the run finished") };
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
                _ = poll.tick() => {
                    match state(&*self.bus, &self.url, &self.ctx).await {
                        Ok(Some((run, _))) => {
                            if coordinator_away {
                                coordinator_away = false;
                                progress.line(Level::INFO, "the coordinator answers again");
                            }
                            if run.status != RunStatus::Running {
                                // Its last events may still be on their way, or lost.
                                while let Some(msg) = events.try_next() {
                                    if msg.subject == events_subject
                                        && let Ok(env) = codec::decode::<RunEvent>(&msg.payload)
                                    {
                                        progress.run_event(&env.body);
                                    }
                                }
                                break;
                            }
                        }
                        Ok(None) => anyhow::bail!("the coordinator no longer knows run `{}`", self.ctx.run_id),
                        Err(e) => {
                            if !coordinator_away {
                                coordinator_away = true;
                                progress.line(Level::WARN, &format!("{e}; waiting for it (the run is resumed when it restarts)"));
                            }
                        }
                    }
                }
            }
        }
        progress.finish();
        Ok(Followed::Finished { interrupted })
    }

    /// The stored state at the end of a run, waiting a while for a coordinator that is away.
    async fn final_state(&self) -> anyhow::Result<(RunRecord, Vec<TaskRecord>)> {
        let deadline = tokio::time::Instant::now() + FINAL_STATE_WAIT;
        loop {
            match state(&*self.bus, &self.url, &self.ctx).await {
                Ok(Some(found)) => return Ok(found),
                Ok(None) => {
                    anyhow::bail!("the coordinator no longer knows run `{}`", self.ctx.run_id)
                }
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }

    /// After following: downloads the results, writes summary/artifacts/report, prints the
    /// outcome, and returns the exit code.
    async fn end(&self, followed: Followed, out: &Output) -> anyhow::Result<u8> {
        let interrupted = match followed {
            Followed::Finished { interrupted } => interrupted,
            Followed::Detached => {
                self.log.close();
                return Ok(exit::INTERRUPTED);
            }
        };
        let (run, tasks) = self.final_state().await?;
        let fetched = self.fetch(&run.plan, &tasks).await;
        let pending = fetched.err().map(|e| {
            e.context(format!(
                "cannot download the results of run `{}` into `{}`; `orchestra attach {} --nats {}` tries again",
                run.run_id,
                self.run_dir.display(),
                run.run_id,
                self.url
            ))
        });
        commands::conclude(&self.run_dir, &self.log, &run, &tasks, out, interrupted, pending)
    }

    /// Downloads every attempt's output files and every artifact into the run directory.
    async fn fetch(&self, plan: &Plan, tasks: &[TaskRecord]) -> anyhow::Result<()> {
        let attempts: Vec<(TaskId, u32)> = tasks
            .iter()
            .flat_map(|t| t.attempts.iter().map(|a| (t.task_id.clone(), a.attempt)))
            .collect();
        let artifacts: Vec<ArtifactRecord> =
            tasks.iter().flat_map(|t| t.artifacts.iter().cloned()).collect();
        let report = orchestra_worker::fetch_results(
            &*self.bus,
            &self.run_dir,
            &self.ctx.run_id,
            &attempts,
            &artifacts,
        )
        .await?;
        tracing::info!(
            written = report.written.len(),
            present = report.present.len(),
            bytes = report.bytes,
            tasks = plan.tasks.len(),
            "results downloaded"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_takes_a_run_id_or_a_run_directory() {
        let runs = Path::new("/data/runs");
        let check = |arg: &str, expect: Result<(&str, &str), &str>| {
            let got = run_location(arg, runs)
                .map(|(id, dir)| (id.to_string(), dir))
                .map_err(|e| e.to_string());
            match expect {
                Ok((id, dir)) => {
                    assert_eq!(got.unwrap(), (id.to_owned(), PathBuf::from(dir)), "{arg}")
                }
                Err(msg) => assert!(got.unwrap_err().contains(msg), "{arg}"),
            }
        };
        check(
            "20261125T100757Z-a1b2c3",
            Ok(("20261125T100757Z-a1b2c3", "/data/runs/20261125T100757Z-a1b2c3")),
        );
        check(
            "runs/20261125T100757Z-a1b2c3",
            Ok(("20261125T100757Z-a1b2c3", "runs/20261125T100757Z-a1b2c3")),
        );
        check("/x/y/r1", Ok(("r1", "/x/y/r1")));
        check("a b", Err("`a b` is not a run id"));
        check("", Err("is not a run id"));
    }

    #[test]
    fn every_credential_flag_reaches_the_connection() {
        let auth = NatsAuthArgs {
            user: Some("u".into()),
            password: Some("p".into()),
            token: Some("t".into()),
            nkey: Some("k.nk".into()),
            creds: Some("c.creds".into()),
            tls_ca: Some("ca.pem".into()),
            tls_cert: Some("cert.pem".into()),
            tls_key: Some("key.pem".into()),
            tls_required: true,
        };
        let o = nats_options(&auth, "orchestra-worker");
        assert_eq!(o.name, "orchestra-worker");
        assert_eq!((o.user.as_deref(), o.password.as_deref()), (Some("u"), Some("p")));
        assert_eq!(o.token.as_deref(), Some("t"));
        assert_eq!(o.nkey_file, Some(PathBuf::from("k.nk")));
        assert_eq!(o.creds_file, Some(PathBuf::from("c.creds")));
        assert_eq!(o.tls_ca, Some(PathBuf::from("ca.pem")));
        assert_eq!(o.tls_cert, Some(PathBuf::from("cert.pem")));
        assert_eq!(o.tls_key, Some(PathBuf::from("key.pem")));
        assert!(o.tls_required);
        assert_eq!(
            nats_options(&NatsAuthArgs::default(), "x"),
            NatsOptions { name: "x".into(), ..NatsOptions::default() }
        );
    }

    #[test]
    fn planning_may_take_every_model_call_and_a_margin() {
        let mut cfg = ConfigFile::default();
        cfg.llm.max_repair_rounds = 2;
        cfg.llm.call_timeout.0 = Duration::from_secs(100);
        let mut options = cfg.run_options();
        let check = |options: &orchestra_proto::RunOptions, secs: u64| {
            assert_eq!(planning_wait(&cfg, options), Duration::from_secs(secs));
        };
        options.max_llm_calls = 10;
        check(&options, 3 * 100 + 60);
        options.max_llm_calls = 1;
        check(&options, 100 + 60);
        options.max_llm_calls = 0;
        check(&options, 100 + 60);
    }
}
