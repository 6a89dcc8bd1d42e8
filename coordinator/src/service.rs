//! The coordinator service: the only awaiting loop of L2.
//!
//! It answers [`RunRequest`]s on [`subjects::RUN_SUBMIT`], and drives each accepted run: task
//! events and control messages in, [`Scheduler`] effects out. Every effect batch is applied in
//! the order the architecture demands: records written and flushed first, then dispatches and
//! events published.

use crate::plan::{self, CheckedPlan, PlanLimits};
use crate::planner::Planner;
use crate::sched::{self, Effect, Input, Scheduler};
use crate::store::{Store, StoreError};
use bytes::Bytes;
use orchestra_bus::{Bus, BusError, Message, WorkQueue};
use orchestra_proto::{
    Control, Ctx, Envelope, Plan, PlanProblem, PlanningReport, RunEvent, RunId, RunOptions,
    RunOutcome, RunRecord, RunReply, RunRequest, RunStatus, TaskEvent, TaskRecord, Timestamp,
    codec, subjects,
};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("bus error")]
    Bus(#[from] BusError),
    #[error("state store error")]
    Store(#[from] StoreError),
}

/// Limits the coordinator itself imposes on every plan, whatever a request asks.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub max_tasks: u32,
    pub max_depends: u32,
    /// At start, drive again every run the store has as running (a long-lived coordinator
    /// restarted after a crash). Embedded runs are resumed on request instead.
    pub resume_running: bool,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self { max_tasks: 10_000, max_depends: 256, resume_running: false }
    }
}

/// The L2 service. Cheap to clone; every run it drives is a task on its tracker.
#[derive(Clone)]
pub struct Coordinator {
    bus: Arc<dyn Bus>,
    queue: Arc<dyn WorkQueue>,
    store: Store,
    config: CoordinatorConfig,
    planner: Option<Planner>,
    runs: TaskTracker,
    /// Runs driven by this coordinator right now.
    active: Arc<std::sync::Mutex<std::collections::HashSet<RunId>>>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator").finish_non_exhaustive()
    }
}

fn unknown_run(run_id: &RunId) -> RunReply {
    RunReply::Rejected {
        problems: vec![PlanProblem {
            code: "unknown_run".into(),
            path: String::new(),
            message: format!("no run `{run_id}` in the state store"),
            hint: None,
        }],
        planning: None,
    }
}

fn run_exists(run_id: &RunId) -> RunReply {
    RunReply::Rejected {
        problems: vec![PlanProblem {
            code: "run_exists".into(),
            path: String::new(),
            message: format!("run `{run_id}` already exists"),
            hint: Some("use `orchestra resume` to continue it".into()),
        }],
        planning: None,
    }
}

fn now() -> Timestamp {
    Timestamp::now()
}

impl Coordinator {
    pub fn new(
        bus: Arc<dyn Bus>,
        queue: Arc<dyn WorkQueue>,
        store: Store,
        config: CoordinatorConfig,
    ) -> Self {
        Self {
            bus,
            queue,
            store,
            config,
            planner: None,
            runs: TaskTracker::new(),
            active: Arc::default(),
        }
    }

    /// Plans `Goal` requests with this planner; without one they are rejected.
    pub fn with_planner(mut self, planner: Planner) -> Self {
        self.planner = Some(planner);
        self
    }

    /// Subscribes to run requests, then serves them on a task of its own until `shutdown`;
    /// the task then waits for the runs it drives to stop. Runs still going at shutdown are
    /// left resumable in the store. Once this returns, requests are answered.
    pub async fn start(
        self,
        shutdown: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, CoordinatorError> {
        let mut requests = self.bus.queue_subscribe(subjects::RUN_SUBMIT, "coordinator").await?;
        if self.config.resume_running {
            let n = self.resume_all(&shutdown).await?;
            if n > 0 {
                info!(runs = n, "resumed the runs that were running when the coordinator stopped");
            }
        }
        Ok(tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    m = requests.next() => match m { Some(m) => m, None => break },
                };
                self.handle_request(msg, &shutdown).await;
            }
            self.runs.close();
            self.runs.wait().await;
        }))
    }

    async fn handle_request(&self, msg: Message, shutdown: &CancellationToken) {
        let Some(reply_to) = msg.reply.clone() else {
            warn!(subject = %msg.subject, "run request without a reply subject dropped");
            return;
        };
        let env = match codec::decode::<RunRequest>(&msg.payload) {
            Ok(env) => env,
            Err(e) => {
                warn!(error = %e, "undecodable run request dropped");
                return;
            }
        };
        let ctx = env.ctx();
        let reply = match self.accept(env, shutdown).await {
            Ok(reply) => reply,
            Err(e) => {
                warn!(run_id = %ctx.run_id, error = %e, "run request failed");
                RunReply::Rejected {
                    problems: vec![PlanProblem {
                        code: "internal".into(),
                        path: String::new(),
                        message: format!("{e}: {}", error_chain(&e)),
                        hint: None,
                    }],
                    planning: None,
                }
            }
        };
        let bytes = codec::encode(&ctx.envelope(now(), reply));
        if let Err(e) = self.bus.publish(&reply_to, Bytes::from(bytes)).await {
            warn!(error = %e, "cannot reply to a run request");
        }
    }

    fn limits(&self, options: &RunOptions) -> PlanLimits {
        PlanLimits {
            max_tasks: options.max_tasks.min(self.config.max_tasks),
            max_depends: self.config.max_depends,
        }
    }

    /// Stores a checked plan as a new run and starts driving it (or, for `plan_only`, only
    /// answers with it).
    #[allow(clippy::too_many_arguments)]
    async fn start_run(
        &self,
        ctx: Ctx,
        plan: Plan,
        checked: CheckedPlan,
        options: RunOptions,
        plan_only: bool,
        planning: Option<PlanningReport>,
        shutdown: &CancellationToken,
    ) -> Result<RunReply, CoordinatorError> {
        let order = checked.order_ids();
        let tasks = plan.tasks.len() as u32;
        let planned = planning.is_some();
        let accepted = |plan: Plan, planning| RunReply::Accepted {
            tasks,
            order,
            plan: planned.then_some(plan),
            planning,
        };
        if plan_only {
            return Ok(accepted(plan, planning));
        }
        if self.store.run(&ctx.run_id)?.is_some() {
            return Ok(run_exists(&ctx.run_id));
        }
        let seed = rand::random::<u64>();
        let record = RunRecord {
            run_id: ctx.run_id.clone(),
            trace_id: ctx.trace_id.clone(),
            status: RunStatus::Running,
            plan,
            options: options.clone(),
            created_at: now(),
            finished_at: None,
            seed,
            planning,
        };
        self.store.put_run(&record)?;
        let records: Vec<TaskRecord> =
            record.plan.tasks.iter().map(|t| TaskRecord::new(t.id.clone())).collect();
        self.store.put_tasks(&ctx.run_id, &records)?;
        self.store.commit()?;
        let planning_cost = record.planning.as_ref().map_or(0.0, PlanningReport::cost_usd);
        let sched = Scheduler::new(checked, options, seed).with_spent(planning_cost);
        self.spawn_run(Ctx::run(ctx.run_id, ctx.trace_id), sched, shutdown).await?;
        Ok(accepted(record.plan, record.planning))
    }

    async fn accept(
        &self,
        env: Envelope<RunRequest>,
        shutdown: &CancellationToken,
    ) -> Result<RunReply, CoordinatorError> {
        let ctx = env.ctx();
        match env.body {
            RunRequest::Start { plan, options, plan_only, planning } => {
                let limits = self.limits(&options);
                match plan::validate(&plan, &limits) {
                    Ok(checked) => {
                        self.start_run(ctx, plan, checked, options, plan_only, planning, shutdown)
                            .await
                    }
                    Err(problems) => Ok(RunReply::Rejected { problems, planning: None }),
                }
            }
            RunRequest::Goal { goal, options, plan_only } => {
                let Some(planner) = &self.planner else {
                    return Ok(RunReply::Rejected {
                        problems: vec![PlanProblem {
                            code: "no_planner".into(),
                            path: "goal".into(),
                            message: "this coordinator has no model to plan with".into(),
                            hint: Some(
                                "configure `llm.backend`, or give the scenario explicit `tasks`"
                                    .into(),
                            ),
                        }],
                        planning: None,
                    });
                };
                if !plan_only && self.store.run(&ctx.run_id)?.is_some() {
                    return Ok(run_exists(&ctx.run_id));
                }
                let limits = self.limits(&options);
                let planned = tokio::select! {
                    p = planner.plan(&goal, &options, &limits) => p,
                    () = shutdown.cancelled() => return Ok(RunReply::Rejected {
                        problems: vec![PlanProblem {
                            code: "shutdown".into(),
                            path: String::new(),
                            message: "the coordinator shut down while planning".into(),
                            hint: Some("submit the run again".into()),
                        }],
                        planning: None,
                    }),
                };
                match planned {
                    Ok(p) => {
                        self.start_run(
                            ctx,
                            p.plan,
                            p.checked,
                            options,
                            plan_only,
                            Some(p.report),
                            shutdown,
                        )
                        .await
                    }
                    Err(n) => {
                        Ok(RunReply::Rejected { problems: n.problems, planning: Some(n.report) })
                    }
                }
            }
            RunRequest::Resume {} => self.resume_run(&ctx.run_id, shutdown).await,
            RunRequest::State {} => match self.store.run(&ctx.run_id)? {
                Some(run) => {
                    let tasks = self.store.tasks(&ctx.run_id)?;
                    Ok(RunReply::State { run: Box::new(run), tasks })
                }
                None => Ok(unknown_run(&ctx.run_id)),
            },
        }
    }

    /// Continues a stored run: a running one is driven again (unless this coordinator drives
    /// it already), a cancelled one is reopened first, a finished one is only reported.
    async fn resume_run(
        &self,
        run_id: &RunId,
        shutdown: &CancellationToken,
    ) -> Result<RunReply, CoordinatorError> {
        let Some(mut record) = self.store.run(run_id)? else {
            return Ok(unknown_run(run_id));
        };
        let mut tasks = self.store.tasks(run_id)?;
        if self.is_active(run_id) {
            let statuses = tasks.iter().map(|t| (t.task_id.clone(), t.status)).collect();
            return Ok(RunReply::Resumed { status: record.status, tasks: statuses });
        }
        if record.status == RunStatus::Cancelled {
            // A cancelled run is continued: what was cancelled or skipped runs again.
            sched::reopen_cancelled(&mut tasks);
            record.status = RunStatus::Running;
            record.finished_at = None;
            self.store.put_tasks(run_id, &tasks)?;
            self.store.put_run(&record)?;
            self.store.commit()?;
            info!(run_id = %run_id, "cancelled run reopened");
        }
        let statuses = tasks.iter().map(|t| (t.task_id.clone(), t.status)).collect();
        if record.status != RunStatus::Running {
            return Ok(RunReply::Resumed { status: record.status, tasks: statuses });
        }
        let limits = PlanLimits { max_tasks: u32::MAX, max_depends: u32::MAX };
        let checked = match plan::validate(&record.plan, &limits) {
            Ok(c) => c,
            Err(problems) => return Ok(RunReply::Rejected { problems, planning: None }),
        };
        let planning_cost = record.planning.as_ref().map_or(0.0, PlanningReport::cost_usd);
        let sched = Scheduler::restore(checked, record.options.clone(), record.seed, tasks)
            .with_spent(planning_cost);
        let run_ctx = Ctx::run(record.run_id.clone(), record.trace_id.clone());
        self.spawn_run(run_ctx, sched, shutdown).await?;
        Ok(RunReply::Resumed { status: RunStatus::Running, tasks: statuses })
    }

    fn is_active(&self, run_id: &RunId) -> bool {
        self.active.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(run_id)
    }

    /// Resumes every run the store has as running (a coordinator restarted after a crash).
    async fn resume_all(&self, shutdown: &CancellationToken) -> Result<usize, CoordinatorError> {
        let mut resumed = 0;
        for run in self.store.runs()? {
            if run.status != RunStatus::Running {
                continue;
            }
            match self.resume_run(&run.run_id, shutdown).await? {
                RunReply::Resumed { status: RunStatus::Running, .. } => {
                    info!(run_id = %run.run_id, "run resumed after a restart");
                    resumed += 1;
                }
                other => warn!(run_id = %run.run_id, reply = ?other, "stored run not resumed"),
            }
        }
        Ok(resumed)
    }

    /// Subscribes to the run's events, then drives it on a task of its own.
    async fn spawn_run(
        &self,
        ctx: Ctx,
        sched: Scheduler,
        shutdown: &CancellationToken,
    ) -> Result<(), CoordinatorError> {
        let events = self.bus.subscribe(&subjects::task_events_all(&ctx.run_id)).await?;
        let control = self.bus.subscribe(&subjects::run_control(&ctx.run_id)).await?;
        let run_id = ctx.run_id.clone();
        self.active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(run_id.clone());
        let driver = RunDriver { svc: self.clone(), ctx, sched, events, control };
        let span = info_span!("run", run_id = %driver.ctx.run_id, trace_id = %driver.ctx.trace_id);
        let shutdown = shutdown.clone();
        let active = self.active.clone();
        self.runs.spawn(
            async move {
                if let Err(e) = driver.drive(shutdown).await {
                    tracing::error!(error = %e, chain = %error_chain(&e), "run driver stopped");
                }
                active.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&run_id);
            }
            .instrument(span),
        );
        Ok(())
    }
}

struct RunDriver {
    svc: Coordinator,
    ctx: Ctx,
    sched: Scheduler,
    events: orchestra_bus::Subscription,
    control: orchestra_bus::Subscription,
}

/// Most inputs folded into one write-commit-publish batch.
const MAX_BATCH: usize = 256;

impl RunDriver {
    async fn drive(mut self, shutdown: CancellationToken) -> Result<(), CoordinatorError> {
        info!(tasks = self.sched.tasks().len(), "run started");
        let mut effects = self.sched.handle(now(), Input::Start);
        let mut finished = self.apply(std::mem::take(&mut effects)).await?;
        while !finished {
            let wake = self.sched.next_wake();
            let sleep = async {
                match wake {
                    Some(at) => {
                        tokio::time::sleep(at.since(now()).max(Duration::from_millis(1))).await
                    }
                    None => std::future::pending().await,
                }
            };
            let first = tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    info!("coordinator shutting down; run left resumable");
                    return Ok(());
                }
                m = self.control.next() => match m {
                    Some(m) => self.control_input(&m),
                    None => return Ok(()),
                },
                m = self.events.next() => match m {
                    Some(m) => self.event_input(&m),
                    None => return Ok(()),
                },
                () = sleep => Some(Input::Tick),
            };
            if let Some(input) = first {
                effects.extend(self.sched.handle(now(), input));
            }
            // Fold whatever else is already waiting into the same batch: one commit for many.
            for _ in 0..MAX_BATCH {
                let Some(m) = self.events.try_next() else { break };
                if let Some(input) = self.event_input(&m) {
                    effects.extend(self.sched.handle(now(), input));
                }
            }
            finished = self.apply(std::mem::take(&mut effects)).await?;
        }
        Ok(())
    }

    fn control_input(&self, m: &Message) -> Option<Input> {
        match codec::decode::<Control>(&m.payload) {
            Ok(env) => match env.body {
                Control::Cancel { reason } => {
                    info!(%reason, "cancel requested");
                    Some(Input::Cancel { reason })
                }
            },
            Err(e) => {
                warn!(error = %e, "undecodable control message dropped");
                None
            }
        }
    }

    fn event_input(&self, m: &Message) -> Option<Input> {
        let env = match codec::decode::<TaskEvent>(&m.payload) {
            Ok(env) => env,
            Err(e) => {
                warn!(error = %e, subject = %m.subject, "undecodable task event dropped");
                return None;
            }
        };
        let (task_id, attempt) = (env.task_id?, env.attempt?);
        match env.body {
            TaskEvent::Started { worker_id, started_at, .. } => {
                Some(Input::AttemptStarted { task_id, attempt, worker_id, at: started_at })
            }
            TaskEvent::Finished(result) => {
                Some(Input::AttemptFinished { task_id, attempt, result: *result })
            }
            TaskEvent::Output { .. } | TaskEvent::OutputCapped { .. } | TaskEvent::Heartbeat {} => {
                None
            }
        }
    }

    /// Applies one batch of effects: write + commit, then publish. Returns true once finished.
    async fn apply(&mut self, effects: Vec<Effect>) -> Result<bool, CoordinatorError> {
        if effects.is_empty() {
            return Ok(false);
        }
        let run = self.ctx.run_id.clone();
        let store = &self.svc.store;
        let mut outcome: Option<RunOutcome> = None;
        for e in &effects {
            match e {
                Effect::Persist(record) => store.put_task(&run, record)?,
                Effect::Emit(ev) => store.append_event(&run, ev)?,
                Effect::Finished(o) => outcome = Some(o.clone()),
                Effect::Dispatch(_) => {}
            }
        }
        if let Some(o) = &outcome {
            if let Some(mut record) = store.run(&run)? {
                record.status = o.status;
                record.finished_at = Some(now());
                store.put_run(&record)?;
            }
            store.append_event(&run, &RunEvent::Finished(o.clone()))?;
        }
        // Only what others can observe must be committed first: a batch that publishes nothing
        // (an attempt reported as started) is committed with the next one that does. The end
        // of a run is synced to disk.
        let publishes = outcome.is_some()
            || effects.iter().any(|e| matches!(e, Effect::Dispatch(_) | Effect::Emit(_)));
        if outcome.is_some() {
            store.sync()?;
        } else if publishes {
            store.commit()?;
        }
        let pool = subjects::task_queue(&self.sched_pool());
        for e in effects {
            match e {
                Effect::Dispatch(d) => {
                    let (task_id, attempt) = (d.task.id.clone(), d.attempt);
                    let msg_id = subjects::dispatch_msg_id(&run, &task_id, attempt);
                    let env = self.ctx.task(task_id, attempt).envelope(now(), d);
                    self.svc
                        .queue
                        .publish(&pool, &msg_id, Bytes::from(codec::encode(&env)))
                        .await?;
                }
                Effect::Emit(ev) => self.publish_event(ev).await?,
                Effect::Persist(_) | Effect::Finished(_) => {}
            }
        }
        if let Some(o) = outcome {
            info!(
                status = o.status.as_str(),
                succeeded = o.succeeded,
                failed = o.failed,
                skipped = o.skipped,
                "run finished"
            );
            self.publish_event(RunEvent::Finished(o)).await?;
            return Ok(true);
        }
        Ok(false)
    }

    fn sched_pool(&self) -> String {
        self.sched.options().pool.clone()
    }

    async fn publish_event(&self, ev: RunEvent) -> Result<(), CoordinatorError> {
        let env = self.ctx.envelope(now(), ev);
        self.svc
            .bus
            .publish(&subjects::run_events(&self.ctx.run_id), Bytes::from(codec::encode(&env)))
            .await?;
        Ok(())
    }
}

/// `a: b: c` from an error's sources, for log fields.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}
