//! The scheduler: a pure, deterministic state machine that runs one [`CheckedPlan`].
//!
//! The service feeds it [`Input`]s with the current time and applies the returned [`Effect`]s in
//! order. Same inputs, same effects: no clock, no I/O, no hash-order iteration; jitter comes from
//! the run's seed.
//!
//! Invariants:
//! - every change of a task yields a [`Effect::Persist`] of its record before any
//!   [`Effect::Dispatch`] or [`Effect::Emit`] that depends on it;
//! - at most `max_parallel` attempts are in flight (`Dispatched` or `Running`);
//! - results are fenced by attempt: a report for an attempt that is not the task's current one,
//!   or for a task that is not in flight, changes nothing;
//! - each input costs O(log n) plus the size of what it touches (dependents, skipped tasks,
//!   dispatched tasks); only `Start` and `Cancel` walk the whole plan, once.

use crate::plan::CheckedPlan;
use orchestra_proto::{
    AttemptRecord, AttemptResult, Backoff, Dispatch, Failure, FailureKind, InputRef, Outcome,
    RetryPolicy, RunEvent, RunOptions, RunOutcome, RunStatus, TaskId, TaskRecord, TaskStatus,
    Timestamp, Tool,
};
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::time::Duration;

/// Something that happened to the run.
// Inputs and effects live for one `handle` call; boxing the large variants would only add
// allocations.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Dispatch what is ready. Nothing is dispatched before the first `Start`.
    Start,
    /// A worker reported that it started an attempt.
    AttemptStarted { task_id: TaskId, attempt: u32, worker_id: String, at: Timestamp },
    /// A worker reported that an attempt is over.
    AttemptFinished { task_id: TaskId, attempt: u32, result: AttemptResult },
    /// Time passed: dispatch due retries. (Every input also does this; `Tick` only does this.)
    Tick,
    /// Stop the run: nothing new is dispatched; in-flight attempts are left to report.
    Cancel { reason: String },
}

/// What the service must do, in order.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Write this record durably BEFORE applying any later effect of the same batch.
    Persist(TaskRecord),
    /// Queue this attempt for a worker.
    Dispatch(Dispatch),
    /// Publish to L1.
    Emit(RunEvent),
    /// Every task is terminal; the run is over (produced once). The service records the run's
    /// status and publishes `RunEvent::Finished` itself.
    Finished(RunOutcome),
}

/// Runs one plan. See the module documentation for the invariants.
#[derive(Debug)]
pub struct Scheduler {
    plan: CheckedPlan,
    options: RunOptions,
    seed: u64,
    /// Plan order.
    records: Vec<TaskRecord>,
    /// Per task: direct dependencies that have not succeeded yet.
    waiting_on: Vec<u32>,
    /// Pending tasks with no waiting dependency and retries that are due; lowest index first.
    ready: BinaryHeap<Reverse<usize>>,
    /// Retries not yet due, by time.
    timers: BTreeSet<(Timestamp, usize)>,
    in_flight: u32,
    counts: Counts,
    started: bool,
    /// The reason of the first `Cancel`.
    cancelled: Option<String>,
    finished: bool,
    /// Money spent on models so far: planning plus finished `claude` attempts.
    spent_usd: f64,
    /// Per task: budget granted to its `claude` attempt in flight.
    reserved_usd: Vec<f64>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    succeeded: u32,
    failed: u32,
    skipped: u32,
    cancelled: u32,
}

impl Counts {
    fn add(&mut self, status: TaskStatus) {
        match status {
            TaskStatus::Succeeded => self.succeeded += 1,
            TaskStatus::Failed => self.failed += 1,
            TaskStatus::Skipped => self.skipped += 1,
            TaskStatus::Cancelled => self.cancelled += 1,
            _ => {}
        }
    }

    fn terminal(&self) -> usize {
        (self.succeeded + self.failed + self.skipped + self.cancelled) as usize
    }
}

impl Scheduler {
    /// A fresh run: every task `Pending`.
    pub fn new(plan: CheckedPlan, options: RunOptions, seed: u64) -> Self {
        Self::restore(plan, options, seed, Vec::new())
    }

    /// A resumed run from stored task records (after a crash).
    ///
    /// Terminal tasks stay as they are. `Dispatched`/`Running` attempts are lost: the task is
    /// `Pending` again and its next dispatch uses `last_attempt + 1`, which fences late results
    /// of the lost attempt (a lost attempt does not use up a retry). `Retrying` keeps its
    /// `retry_at`. Records of unknown tasks are ignored; missing ones start `Pending`. Pending
    /// tasks behind a failed, skipped or cancelled dependency are skipped at `Start`.
    pub fn restore(
        plan: CheckedPlan,
        options: RunOptions,
        seed: u64,
        tasks: Vec<TaskRecord>,
    ) -> Self {
        let n = plan.len();
        let mut records: Vec<TaskRecord> =
            plan.tasks().iter().map(|t| TaskRecord::new(t.id.clone())).collect();
        for record in tasks {
            if let Some(i) = plan.index_of(&record.task_id) {
                records[i] = record;
            }
        }
        let mut counts = Counts::default();
        let mut timers = BTreeSet::new();
        for (i, r) in records.iter_mut().enumerate() {
            match r.status {
                TaskStatus::Dispatched | TaskStatus::Running | TaskStatus::Pending => {
                    r.status = TaskStatus::Pending;
                    r.retry_at = None;
                }
                TaskStatus::Retrying => {
                    timers.insert((r.retry_at.unwrap_or_default(), i));
                }
                done => counts.add(done),
            }
        }
        let mut waiting_on = vec![0; n];
        let mut ready = BinaryHeap::new();
        for (i, waiting) in waiting_on.iter_mut().enumerate() {
            *waiting = plan
                .dependencies(i)
                .iter()
                .filter(|&&d| records[d].status != TaskStatus::Succeeded)
                .count() as u32;
            if *waiting == 0 && records[i].status == TaskStatus::Pending {
                ready.push(Reverse(i));
            }
        }
        Self {
            plan,
            options,
            seed,
            records,
            waiting_on,
            ready,
            timers,
            in_flight: 0,
            counts,
            started: false,
            cancelled: None,
            finished: false,
            spent_usd: 0.0,
            reserved_usd: vec![0.0; n],
        }
        .with_spent(0.0)
    }

    /// Counts `usd` (the planning cost) against the run's `max_cost_usd`, on top of what the
    /// restored records' `claude` attempts spent.
    pub fn with_spent(mut self, usd: f64) -> Self {
        let attempts: f64 = self
            .records
            .iter()
            .flat_map(|r| &r.attempts)
            .filter_map(|a| a.claude.as_ref())
            .map(|c| c.cost_usd)
            .sum();
        self.spent_usd = usd + attempts;
        self
    }

    /// Money spent on models so far.
    pub fn spent_usd(&self) -> f64 {
        self.spent_usd
    }

    /// Advances the run. Same inputs, same effects.
    pub fn handle(&mut self, now: Timestamp, input: Input) -> Vec<Effect> {
        let mut fx = Vec::new();
        if self.finished {
            return fx;
        }
        match input {
            Input::Start => {
                if !self.started {
                    self.started = true;
                    self.skip_behind_restored_failures(&mut fx);
                }
            }
            Input::AttemptStarted { task_id, attempt, worker_id, at } => {
                self.on_started(&task_id, attempt, worker_id, at, &mut fx);
            }
            Input::AttemptFinished { task_id, attempt, result } => {
                self.on_finished(now, &task_id, attempt, result, &mut fx);
            }
            Input::Tick => {}
            Input::Cancel { reason } => self.on_cancel(reason, &mut fx),
        }
        self.promote_due(now);
        self.fill(now, &mut fx);
        self.finish_if_done(&mut fx);
        fx
    }

    /// Task records in plan order.
    pub fn tasks(&self) -> &[TaskRecord] {
        &self.records
    }

    /// `Running` until every task is terminal; then `Succeeded` if all succeeded, `Cancelled`
    /// if the run was cancelled or a task ended cancelled, else `Failed`.
    pub fn status(&self) -> RunStatus {
        if self.counts.terminal() < self.records.len() {
            RunStatus::Running
        } else if self.counts.succeeded as usize == self.records.len() {
            RunStatus::Succeeded
        } else if self.cancelled.is_some() || self.counts.cancelled > 0 {
            RunStatus::Cancelled
        } else {
            RunStatus::Failed
        }
    }

    /// The earliest `retry_at` of a retry not yet due: when the service should send a `Tick`.
    pub fn next_wake(&self) -> Option<Timestamp> {
        self.timers.first().map(|&(at, _)| at)
    }

    pub fn plan(&self) -> &CheckedPlan {
        &self.plan
    }

    pub fn options(&self) -> &RunOptions {
        &self.options
    }

    /// Attempts currently `Dispatched` or `Running`.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    pub fn outcome(&self) -> RunOutcome {
        RunOutcome {
            status: self.status(),
            succeeded: self.counts.succeeded,
            failed: self.counts.failed,
            skipped: self.counts.skipped,
            cancelled: self.counts.cancelled,
        }
    }

    fn on_started(
        &mut self,
        task_id: &TaskId,
        attempt: u32,
        worker_id: String,
        at: Timestamp,
        fx: &mut Vec<Effect>,
    ) {
        let Some(i) = self.current(task_id, attempt) else { return };
        let record = &mut self.records[i];
        if record.status != TaskStatus::Dispatched {
            return; // a repeated report
        }
        record.status = TaskStatus::Running;
        if let Some(a) = record.attempts.last_mut() {
            a.worker_id = Some(worker_id);
            a.started_at = Some(at);
        }
        fx.push(Effect::Persist(record.clone()));
    }

    fn on_finished(
        &mut self,
        now: Timestamp,
        task_id: &TaskId,
        attempt: u32,
        result: AttemptResult,
        fx: &mut Vec<Effect>,
    ) {
        let Some(i) = self.current(task_id, attempt) else { return };
        self.in_flight -= 1;
        self.reserved_usd[i] = 0.0;
        if let Some(c) = &result.claude {
            self.spent_usd += c.cost_usd;
        }
        let record = &mut self.records[i];
        if let Some(a) = record.attempts.last_mut() {
            // The accepted result names the worker that produced it: after a redelivery (a
            // worker killed or paused past ack-wait) that is not the one that said Started.
            a.worker_id = Some(result.worker_id);
            a.started_at = Some(result.started_at);
            a.finished_at = Some(result.finished_at);
            a.exit_code = result.exit_code;
            a.signal = result.signal;
            a.claude = result.claude;
        }
        let failure = match result.outcome {
            Outcome::Succeeded {} | Outcome::DryRun {} => {
                if let Some(a) = record.attempts.last_mut() {
                    a.succeeded = true;
                }
                record.artifacts = result.artifacts;
                self.set_terminal(i, TaskStatus::Succeeded, None, fx);
                fx.push(Effect::Emit(RunEvent::TaskSucceeded {
                    task_id: task_id.clone(),
                    attempt,
                }));
                for &d in self.plan.dependents(i) {
                    self.waiting_on[d] -= 1;
                    if self.waiting_on[d] == 0 && self.records[d].status == TaskStatus::Pending {
                        self.ready.push(Reverse(d));
                    }
                }
                return;
            }
            Outcome::Failed { failure } => failure,
        };
        if let Some(a) = record.attempts.last_mut() {
            a.failure = Some(failure.clone());
        }
        let id = task_id.clone();
        if let Some(reason) = &self.cancelled {
            let reason = cancel_reason(reason);
            self.set_terminal(i, TaskStatus::Cancelled, Some(reason), fx);
            fx.push(Effect::Emit(RunEvent::TaskCancelled { task_id: id }));
        } else if failure.kind == FailureKind::Cancelled {
            self.set_terminal(i, TaskStatus::Cancelled, Some(failure.message.clone()), fx);
            fx.push(Effect::Emit(RunEvent::TaskCancelled { task_id: id.clone() }));
            self.skip_dependents(i, format!("dependency `{id}` was cancelled"), fx);
        } else if let Some(retry) = self.retry_number(i, &failure, result.exit_code) {
            let spec = &self.plan.tasks()[i];
            let random = jitter_random(self.seed, spec.id.as_str(), retry);
            let delay_ms = backoff_delay_ms(&spec.retry.backoff, retry, random);
            let at = now.saturating_add(Duration::from_millis(delay_ms));
            let record = &mut self.records[i];
            record.status = TaskStatus::Retrying;
            record.retry_at = Some(at);
            self.timers.insert((at, i));
            fx.push(Effect::Persist(record.clone()));
            fx.push(Effect::Emit(RunEvent::TaskRetrying {
                task_id: id,
                attempt,
                delay_ms,
                failure,
            }));
        } else {
            self.set_terminal(i, TaskStatus::Failed, None, fx);
            fx.push(Effect::Emit(RunEvent::TaskFailed { task_id: id.clone(), attempt, failure }));
            self.skip_dependents(i, format!("dependency `{id}` failed"), fx);
        }
    }

    /// The index of `task_id` if `attempt` is its current attempt and it is in flight.
    fn current(&self, task_id: &TaskId, attempt: u32) -> Option<usize> {
        let i = self.plan.index_of(task_id)?;
        let r = &self.records[i];
        let in_flight = matches!(r.status, TaskStatus::Dispatched | TaskStatus::Running);
        (in_flight && r.last_attempt() == attempt).then_some(i)
    }

    /// `Some(n)` if the failure is retried, as the task's n-th retry.
    fn retry_number(&self, i: usize, failure: &Failure, exit_code: Option<i32>) -> Option<u32> {
        let policy = &self.plan.tasks()[i].retry;
        if !is_retryable(policy, failure, exit_code) {
            return None;
        }
        // Attempts that reported a failure; lost attempts (see `restore`) do not count.
        let failed = self.records[i].attempts.iter().filter(|a| a.failure.is_some()).count();
        let failed = u32::try_from(failed).unwrap_or(u32::MAX);
        (failed <= policy.max_retries).then_some(failed)
    }

    fn on_cancel(&mut self, reason: String, fx: &mut Vec<Effect>) {
        if self.cancelled.is_some() {
            return;
        }
        fx.push(Effect::Emit(RunEvent::Cancelling { reason: reason.clone() }));
        self.ready.clear();
        self.timers.clear();
        let why = cancel_reason(&reason);
        for i in 0..self.records.len() {
            if matches!(self.records[i].status, TaskStatus::Pending | TaskStatus::Retrying) {
                self.set_terminal(i, TaskStatus::Cancelled, Some(why.clone()), fx);
                let task_id = self.records[i].task_id.clone();
                fx.push(Effect::Emit(RunEvent::TaskCancelled { task_id }));
            }
        }
        self.cancelled = Some(reason);
    }

    /// Ends task `i` with `status` and persists it.
    fn set_terminal(
        &mut self,
        i: usize,
        status: TaskStatus,
        reason: Option<String>,
        fx: &mut Vec<Effect>,
    ) {
        let record = &mut self.records[i];
        record.status = status;
        record.retry_at = None;
        record.reason = reason;
        self.counts.add(status);
        fx.push(Effect::Persist(record.clone()));
    }

    /// Skips every pending transitive dependent of task `root`, in plan order.
    fn skip_dependents(&mut self, root: usize, reason: String, fx: &mut Vec<Effect>) {
        let mut found = Vec::new();
        let mut stack = vec![root];
        while let Some(u) = stack.pop() {
            for &d in self.plan.dependents(u) {
                if self.records[d].status == TaskStatus::Pending {
                    // Marked now so a task reached twice is found once; persisted below.
                    self.records[d].status = TaskStatus::Skipped;
                    found.push(d);
                    stack.push(d);
                }
            }
        }
        found.sort_unstable();
        for d in found {
            self.set_terminal(d, TaskStatus::Skipped, Some(reason.clone()), fx);
            let task_id = self.records[d].task_id.clone();
            fx.push(Effect::Emit(RunEvent::TaskSkipped { task_id, reason: reason.clone() }));
        }
    }

    /// After a restore: pending tasks behind a dependency that ended badly are skipped.
    fn skip_behind_restored_failures(&mut self, fx: &mut Vec<Effect>) {
        if self.counts.failed + self.counts.skipped + self.counts.cancelled == 0 {
            return;
        }
        for k in 0..self.plan.order().len() {
            let i = self.plan.order()[k];
            if self.records[i].status != TaskStatus::Pending {
                continue;
            }
            let reason =
                self.plan.dependencies(i).iter().find_map(|&d| {
                    let dep = &self.records[d];
                    match dep.status {
                        TaskStatus::Failed => Some(format!("dependency `{}` failed", dep.task_id)),
                        TaskStatus::Cancelled => {
                            Some(format!("dependency `{}` was cancelled", dep.task_id))
                        }
                        TaskStatus::Skipped => Some(dep.reason.clone().unwrap_or_else(|| {
                            format!("dependency `{}` was skipped", dep.task_id)
                        })),
                        _ => None,
                    }
                });
            if let Some(reason) = reason {
                self.set_terminal(i, TaskStatus::Skipped, Some(reason.clone()), fx);
                let task_id = self.records[i].task_id.clone();
                fx.push(Effect::Emit(RunEvent::TaskSkipped { task_id, reason }));
            }
        }
    }

    /// Moves retries whose time has come to the ready queue.
    fn promote_due(&mut self, now: Timestamp) {
        while let Some(&(at, i)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            self.ready.push(Reverse(i));
        }
    }

    /// Dispatches ready tasks while there is a free slot.
    fn fill(&mut self, now: Timestamp, fx: &mut Vec<Effect>) {
        if !self.started || self.cancelled.is_some() {
            return;
        }
        let max = self.options.max_parallel.max(1);
        while self.in_flight < max {
            let Some(Reverse(i)) = self.ready.pop() else { break };
            if matches!(self.records[i].status, TaskStatus::Pending | TaskStatus::Retrying) {
                self.dispatch(now, i, fx);
            }
        }
    }

    fn dispatch(&mut self, now: Timestamp, i: usize, fx: &mut Vec<Effect>) {
        let mut task = self.plan.tasks()[i].clone();
        if let (Tool::Claude(spec), Some(cap)) = (&mut task.tool, self.options.max_cost_usd) {
            let reserved: f64 = self.reserved_usd.iter().sum();
            let available = cap - self.spent_usd - reserved;
            if available <= 1e-9 {
                let failure = Failure::new(
                    FailureKind::Budget,
                    format!(
                        "the run's model budget of ${cap:.4} is spent (${:.4} used, ${reserved:.4} granted to running tasks); the task was not started",
                        self.spent_usd
                    ),
                );
                let id = task.id.clone();
                let attempt = self.records[i].last_attempt();
                self.set_terminal(i, TaskStatus::Failed, Some(failure.message.clone()), fx);
                fx.push(Effect::Emit(RunEvent::TaskFailed {
                    task_id: id.clone(),
                    attempt,
                    failure,
                }));
                self.skip_dependents(i, format!("dependency `{id}` failed"), fx);
                return;
            }
            let grant = spec.max_budget_usd.map_or(available, |b| b.min(available));
            spec.max_budget_usd = Some(grant);
            self.reserved_usd[i] = grant;
        }
        let record = &mut self.records[i];
        let attempt = record.last_attempt() + 1;
        record.attempts.push(AttemptRecord {
            attempt,
            dispatched_at: now,
            worker_id: None,
            started_at: None,
            finished_at: None,
            exit_code: None,
            signal: None,
            failure: None,
            succeeded: false,
            claude: None,
        });
        record.status = TaskStatus::Dispatched;
        record.retry_at = None;
        self.in_flight += 1;
        fx.push(Effect::Persist(record.clone()));
        let inputs = self
            .plan
            .dependencies(i)
            .iter()
            .flat_map(|&d| &self.records[d].artifacts)
            .map(|a| InputRef {
                task: a.task.clone(),
                path: a.path.clone(),
                size: a.size,
                sha256: a.sha256.clone(),
            })
            .collect();
        let task_id = task.id.clone();
        fx.push(Effect::Dispatch(Dispatch {
            task,
            attempt,
            inputs,
            output_cap_bytes: self.options.output_cap_bytes,
            kill_grace_ms: self.options.kill_grace_ms,
            dry_run: self.options.dry_run,
        }));
        fx.push(Effect::Emit(RunEvent::TaskDispatched { task_id, attempt }));
    }

    fn finish_if_done(&mut self, fx: &mut Vec<Effect>) {
        let live = self.started || self.cancelled.is_some();
        if live && !self.finished && self.counts.terminal() == self.records.len() {
            self.finished = true;
            fx.push(Effect::Finished(self.outcome()));
        }
    }
}

fn cancel_reason(reason: &str) -> String {
    format!("run cancelled: {reason}")
}

/// Whether a failure's class allows another attempt under `policy` (attempts left aside).
pub fn is_retryable(policy: &RetryPolicy, failure: &Failure, exit_code: Option<i32>) -> bool {
    match failure.kind {
        FailureKind::ExitCode => {
            policy.retry_on_exit_codes.is_empty()
                || failure
                    .exit_code
                    .or(exit_code)
                    .is_some_and(|c| policy.retry_on_exit_codes.contains(&c))
        }
        FailureKind::Signal | FailureKind::Timeout | FailureKind::ApiError => true,
        FailureKind::Spawn
        | FailureKind::OutputLimit
        | FailureKind::Artifact
        | FailureKind::Policy
        | FailureKind::Cancelled
        | FailureKind::MaxTurns
        | FailureKind::Budget
        | FailureKind::UsageError
        | FailureKind::Internal => false,
    }
}

/// The delay before the `retry`-th retry (1-based): `min(initial * multiplier^(retry-1), max)`,
/// moved by up to ± `jitter_pct`% according to `random`, and never above `max_ms`.
pub fn backoff_delay_ms(backoff: &Backoff, retry: u32, random: u64) -> u64 {
    let factor = u64::from(backoff.multiplier).saturating_pow(retry.saturating_sub(1));
    let base = backoff.initial_ms.saturating_mul(factor).min(backoff.max_ms);
    let pct = u128::from(backoff.jitter_pct.min(100));
    let spread = u128::from(base) * pct / 100;
    let offset = u128::from(random) % (2 * spread + 1);
    let delay = u128::from(base) - spread + offset;
    u64::try_from(delay).unwrap_or(u64::MAX).min(backoff.max_ms)
}

/// A random number for the jitter of one retry of one task, from the run's seed. Keyed by task
/// and retry rather than drawn from a stream, so a resumed run computes the same delays.
fn jitter_random(seed: u64, task_id: &str, retry: u32) -> u64 {
    splitmix64(seed ^ splitmix64(fnv1a(task_id) ^ u64::from(retry)))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3))
}

#[cfg(test)]
mod tests;

/// Reopens a cancelled run's tasks before [`Scheduler::restore`]: cancelled and skipped tasks
/// become `Pending` again (their attempts are kept, so new attempts get new numbers).
/// Tasks behind a task that failed for good are skipped again at `Start`; succeeded and failed
/// tasks are not touched.
pub fn reopen_cancelled(tasks: &mut [TaskRecord]) {
    for t in tasks {
        if matches!(t.status, TaskStatus::Cancelled | TaskStatus::Skipped) {
            t.status = TaskStatus::Pending;
            t.reason = None;
            t.retry_at = None;
        }
    }
}
