use super::*;
use crate::plan::{PlanLimits, validate};
use orchestra_proto::{ArtifactRecord, ExecSpec, Plan, TaskSpec, Tool};
use std::fmt::Write as _;

// ---------------------------------------------------------------------------------------------
// Builders

fn spec(id: &str, deps: &[&str], retry: &RetryPolicy) -> TaskSpec {
    TaskSpec {
        id: TaskId::new_unchecked(id),
        description: None,
        tool: Tool::Exec(ExecSpec { program: "true".into(), args: Vec::new() }),
        depends_on: deps.iter().map(|d| TaskId::new_unchecked(*d)).collect(),
        env: Default::default(),
        timeout_ms: 1_000,
        retry: retry.clone(),
        outputs: Vec::new(),
    }
}

fn no_retry() -> RetryPolicy {
    RetryPolicy::default()
}

/// `max` retries, 100 ms doubling up to 1 s, no jitter: delays 100, 200, 400, 800, 1000, ….
fn retries(max: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries: max,
        retry_on_exit_codes: Vec::new(),
        backoff: Backoff { initial_ms: 100, multiplier: 2, max_ms: 1_000, jitter_pct: 0 },
    }
}

/// `[("a", &[]), ("b", &["a"])]`: b depends on a; every task gets `retry`.
fn checked_with(tasks: &[(&str, &[&str])], retry: &RetryPolicy) -> CheckedPlan {
    let plan = Plan {
        name: "test".into(),
        goal: None,
        tasks: tasks.iter().map(|(id, d)| spec(id, d, retry)).collect(),
    };
    validate(&plan, &PlanLimits { max_tasks: u32::MAX, max_depends: u32::MAX }).unwrap()
}

fn checked(tasks: &[(&str, &[&str])]) -> CheckedPlan {
    checked_with(tasks, &no_retry())
}

fn options(max_parallel: u32) -> RunOptions {
    RunOptions {
        max_parallel,
        pool: "default".into(),
        dry_run: false,
        output_cap_bytes: 1 << 20,
        kill_grace_ms: 2_000,
        max_tasks: 10_000,
        max_llm_calls: 4,
        max_cost_usd: None,
    }
}

fn id(s: &str) -> TaskId {
    TaskId::new_unchecked(s)
}

fn result(outcome: Outcome, artifacts: Vec<ArtifactRecord>) -> AttemptResult {
    let exit_code = match &outcome {
        Outcome::Failed { failure } => failure.exit_code,
        _ => Some(0),
    };
    AttemptResult {
        outcome,
        worker_id: "w1".into(),
        started_at: Timestamp::from_millis(1),
        finished_at: Timestamp::from_millis(2),
        exit_code,
        signal: None,
        stdout_bytes: 0,
        stderr_bytes: 0,
        artifacts,
        claude: None,
    }
}

fn ok(task: &str, attempt: u32) -> Input {
    Input::AttemptFinished {
        task_id: id(task),
        attempt,
        result: result(Outcome::Succeeded {}, vec![]),
    }
}

/// A success that produced `files` as artifacts.
fn ok_with(task: &str, attempt: u32, files: &[&str]) -> Input {
    let artifacts = files
        .iter()
        .map(|f| ArtifactRecord {
            task: id(task),
            path: (*f).into(),
            size: 3,
            sha256: format!("sha-{f}"),
        })
        .collect();
    Input::AttemptFinished {
        task_id: id(task),
        attempt,
        result: result(Outcome::Succeeded {}, artifacts),
    }
}

fn fail(task: &str, attempt: u32, kind: FailureKind) -> Input {
    let failure = Failure::new(kind, format!("{kind} happened"));
    Input::AttemptFinished {
        task_id: id(task),
        attempt,
        result: result(Outcome::Failed { failure }, vec![]),
    }
}

fn exit(task: &str, attempt: u32, code: i32) -> Input {
    let failure =
        Failure::new(FailureKind::ExitCode, format!("exited with {code}")).with_exit_code(code);
    Input::AttemptFinished {
        task_id: id(task),
        attempt,
        result: result(Outcome::Failed { failure }, vec![]),
    }
}

fn started(task: &str, attempt: u32) -> Input {
    Input::AttemptStarted {
        task_id: id(task),
        attempt,
        worker_id: "w1".into(),
        at: Timestamp::from_millis(1),
    }
}

fn cancel(reason: &str) -> Input {
    Input::Cancel { reason: reason.into() }
}

// ---------------------------------------------------------------------------------------------
// Rendering: one line per input and per effect

fn render_input(input: &Input) -> String {
    match input {
        Input::Start => "start".into(),
        Input::Tick => "tick".into(),
        Input::Cancel { reason } => format!("cancel: {reason}"),
        Input::AttemptStarted { task_id, attempt, worker_id, .. } => {
            format!("started {task_id}#{attempt} on {worker_id}")
        }
        Input::AttemptFinished { task_id, attempt, result } => match &result.outcome {
            Outcome::Succeeded {} => format!("finished {task_id}#{attempt} ok"),
            Outcome::DryRun {} => format!("finished {task_id}#{attempt} dry_run"),
            Outcome::Failed { failure } => format!("finished {task_id}#{attempt} {}", failure.kind),
        },
    }
}

fn render_effect(effect: &Effect) -> String {
    match effect {
        Effect::Persist(r) => {
            let mut s = format!("persist {} {}", r.task_id, r.status.as_str());
            if let Some(a) = r.attempts.last() {
                write!(s, "#{}", a.attempt).unwrap();
            }
            if let Some(at) = r.retry_at {
                write!(s, " retry_at={}", at.as_millis()).unwrap();
            }
            if let Some(reason) = &r.reason {
                write!(s, ": {reason}").unwrap();
            }
            s
        }
        Effect::Dispatch(d) => {
            let mut s = format!("dispatch {}#{}", d.task.id, d.attempt);
            if !d.inputs.is_empty() {
                let inputs: Vec<String> =
                    d.inputs.iter().map(|i| format!("{}/{}", i.task, i.path)).collect();
                write!(s, " inputs={}", inputs.join(",")).unwrap();
            }
            s
        }
        Effect::Emit(ev) => match ev {
            RunEvent::TaskDispatched { task_id, attempt } => {
                format!("emit task_dispatched {task_id}#{attempt}")
            }
            RunEvent::TaskRetrying { task_id, attempt, delay_ms, failure } => {
                format!("emit task_retrying {task_id}#{attempt} {} delay={delay_ms}", failure.kind)
            }
            RunEvent::TaskSucceeded { task_id, attempt } => {
                format!("emit task_succeeded {task_id}#{attempt}")
            }
            RunEvent::TaskFailed { task_id, attempt, failure } => {
                format!("emit task_failed {task_id}#{attempt} {}", failure.kind)
            }
            RunEvent::TaskSkipped { task_id, reason } => {
                format!("emit task_skipped {task_id}: {reason}")
            }
            RunEvent::TaskCancelled { task_id } => format!("emit task_cancelled {task_id}"),
            RunEvent::Cancelling { reason } => format!("emit cancelling: {reason}"),
            RunEvent::Finished(o) => format!("emit finished {}", o.status.as_str()),
        },
        Effect::Finished(o) => format!(
            "finished {} succeeded={} failed={} skipped={} cancelled={}",
            o.status.as_str(),
            o.succeeded,
            o.failed,
            o.skipped,
            o.cancelled
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// The simulator: feeds inputs, checks invariants after every batch, keeps a readable log

struct Sim {
    s: Scheduler,
    max_parallel: u32,
    log: String,
    /// Every dispatch so far, as `task#attempt`.
    dispatched: Vec<String>,
    finished: u32,
}

impl Sim {
    fn new(plan: CheckedPlan, max_parallel: u32) -> Self {
        Self::from(Scheduler::new(plan, options(max_parallel), 7))
    }

    fn from(s: Scheduler) -> Self {
        let max_parallel = s.options().max_parallel.max(1);
        Self { s, max_parallel, log: String::new(), dispatched: Vec::new(), finished: 0 }
    }

    /// Feeds one input at `t` ms and returns the rendered effects.
    fn at(&mut self, t: u64, input: Input) -> Vec<String> {
        writeln!(self.log, "@{t} {}", render_input(&input)).unwrap();
        let effects = self.s.handle(Timestamp::from_millis(t), input);
        self.check_invariants(&effects);
        let lines: Vec<String> = effects.iter().map(render_effect).collect();
        for l in &lines {
            writeln!(self.log, "  {l}").unwrap();
        }
        lines
    }

    fn status(&self, task: &str) -> TaskStatus {
        self.record(task).status
    }

    fn record(&self, task: &str) -> &TaskRecord {
        self.s.tasks().iter().find(|r| r.task_id.as_str() == task).unwrap()
    }

    fn check_invariants(&mut self, effects: &[Effect]) {
        let tasks = self.s.tasks();
        let in_flight = self.s.in_flight();
        // A recount per batch would make the big-plan tests quadratic; they trust the counter.
        if tasks.len() <= 2_000 {
            let counted = tasks
                .iter()
                .filter(|r| matches!(r.status, TaskStatus::Dispatched | TaskStatus::Running))
                .count() as u32;
            assert_eq!(counted, in_flight, "in-flight counter drifted");
        }
        assert!(
            in_flight <= self.max_parallel,
            "{in_flight} in flight, bound {}",
            self.max_parallel
        );
        for (k, e) in effects.iter().enumerate() {
            let persisted_before = |task: &TaskId| {
                effects[..k].iter().any(|p| matches!(p, Effect::Persist(r) if &r.task_id == task))
            };
            match e {
                Effect::Dispatch(d) => {
                    let ok = effects[..k].iter().any(|p| {
                        matches!(p, Effect::Persist(r) if r.task_id == d.task.id
                            && r.status == TaskStatus::Dispatched && r.last_attempt() == d.attempt)
                    });
                    assert!(ok, "dispatch {}#{} without an earlier persist", d.task.id, d.attempt);
                    self.dispatched.push(format!("{}#{}", d.task.id, d.attempt));
                }
                Effect::Emit(
                    RunEvent::TaskDispatched { task_id, .. }
                    | RunEvent::TaskRetrying { task_id, .. }
                    | RunEvent::TaskSucceeded { task_id, .. }
                    | RunEvent::TaskFailed { task_id, .. }
                    | RunEvent::TaskSkipped { task_id, .. }
                    | RunEvent::TaskCancelled { task_id },
                ) => assert!(
                    persisted_before(task_id),
                    "emit for {task_id} without an earlier persist"
                ),
                Effect::Emit(RunEvent::Finished(_)) => {
                    panic!("the scheduler does not emit run finished")
                }
                Effect::Emit(RunEvent::Cancelling { .. }) | Effect::Persist(_) => {}
                Effect::Finished(o) => {
                    assert_eq!(k, effects.len() - 1, "finished is the last effect");
                    assert_ne!(o.status, RunStatus::Running);
                    assert_eq!(o.status, self.s.status());
                    assert!(tasks.iter().all(|r| r.status.is_terminal()));
                    self.finished += 1;
                    assert_eq!(self.finished, 1, "finished twice");
                }
            }
        }
    }

    /// Plays workers that succeed at every dispatched attempt, oldest first, until the run
    /// finishes; at most `limit` inputs.
    fn drain_ok(&mut self, t: u64, limit: usize) {
        for done in 0..limit {
            if self.finished > 0 || done >= self.dispatched.len() {
                break;
            }
            let (task, attempt) = self.dispatched[done].split_once('#').unwrap();
            let (task, attempt) = (task.to_owned(), attempt.parse().unwrap());
            let effects = self.s.handle(Timestamp::from_millis(t), started(&task, attempt));
            self.check_invariants(&effects);
            let effects = self.s.handle(Timestamp::from_millis(t), ok(&task, attempt));
            self.check_invariants(&effects);
        }
    }
}

/// Runs a script of `(t, input)` and returns the log.
fn script(plan: CheckedPlan, max_parallel: u32, steps: Vec<(u64, Input)>) -> String {
    let mut sim = Sim::new(plan, max_parallel);
    for (t, input) in steps {
        sim.at(t, input);
    }
    sim.log
}

// ---------------------------------------------------------------------------------------------
// Order and parallelism

#[test]
fn diamond_runs_in_order_and_passes_artifacts() {
    let plan = checked(&[("a", &[]), ("b", &["a"]), ("c", &["a"]), ("d", &["b", "c"])]);
    let log = script(
        plan,
        2,
        vec![
            (0, Input::Start),
            (1, started("a", 1)),
            (5, ok_with("a", 1, &["lib.a"])),
            (6, ok_with("c", 1, &["c.txt"])),
            (7, ok("b", 1)),
            (9, ok("d", 1)),
        ],
    );
    insta::assert_snapshot!(log);
}

/// Dispatch order of a plan run by workers that always succeed, oldest dispatch first.
#[track_caller]
fn check_dispatch_order(tasks: &[(&str, &[&str])], max_parallel: u32, expect: &str) {
    let mut sim = Sim::new(checked(tasks), max_parallel);
    sim.at(0, Input::Start);
    sim.drain_ok(1, 100);
    assert_eq!(sim.s.status(), RunStatus::Succeeded);
    assert_eq!(sim.dispatched.join(" "), expect);
}

#[test]
fn dispatch_order() {
    let wide: &[(&str, &[&str])] = &[("a", &[]), ("b", &[]), ("c", &[]), ("d", &[])];
    check_dispatch_order(wide, 1, "a#1 b#1 c#1 d#1");
    check_dispatch_order(wide, 2, "a#1 b#1 c#1 d#1");
    check_dispatch_order(wide, 0, "a#1 b#1 c#1 d#1"); // 0 means 1
    let diamond: &[(&str, &[&str])] =
        &[("d", &["b", "c"]), ("c", &["a"]), ("b", &["a"]), ("a", &[])];
    check_dispatch_order(diamond, 1, "a#1 c#1 b#1 d#1");
    check_dispatch_order(diamond, 4, "a#1 c#1 b#1 d#1");
    // A ready task declared earlier goes first, whatever became ready when.
    let mixed: &[(&str, &[&str])] = &[("x", &["a"]), ("a", &[]), ("b", &[]), ("c", &[])];
    check_dispatch_order(mixed, 1, "a#1 x#1 b#1 c#1");
}

#[test]
fn parallelism_bound() {
    let tasks: &[(&str, &[&str])] =
        &[("a", &[]), ("b", &[]), ("c", &[]), ("d", &[]), ("e", &["a"])];
    let mut sim = Sim::new(checked(tasks), 2);
    let dispatches = |lines: &[String]| -> Vec<String> {
        lines.iter().filter(|l| l.starts_with("dispatch")).cloned().collect()
    };
    assert_eq!(dispatches(&sim.at(0, Input::Start)), ["dispatch a#1", "dispatch b#1"]);
    assert_eq!(sim.s.in_flight(), 2);
    assert_eq!(dispatches(&sim.at(1, started("a", 1))), Vec::<String>::new());
    assert_eq!(dispatches(&sim.at(2, Input::Tick)), Vec::<String>::new());
    // a's success frees one slot; c (plan order) wins it over the newly ready e.
    assert_eq!(dispatches(&sim.at(3, ok("a", 1))), ["dispatch c#1"]);
    assert_eq!(dispatches(&sim.at(4, ok("b", 1))), ["dispatch d#1"]);
    assert_eq!(dispatches(&sim.at(5, ok("c", 1))), ["dispatch e#1"]);
    assert_eq!(sim.s.in_flight(), 2);
    sim.at(6, ok("d", 1));
    let last = sim.at(7, ok("e", 1));
    assert_eq!(
        last.last().unwrap(),
        "finished succeeded succeeded=5 failed=0 skipped=0 cancelled=0"
    );
}

#[test]
fn nothing_happens_before_start_and_start_is_idempotent() {
    let mut sim = Sim::new(checked(&[("a", &[])]), 1);
    assert!(sim.at(0, Input::Tick).is_empty());
    assert!(sim.at(0, ok("a", 1)).is_empty());
    assert_eq!(sim.s.status(), RunStatus::Running);
    assert_eq!(sim.at(1, Input::Start).len(), 3);
    assert!(sim.at(2, Input::Start).is_empty());
}

#[test]
fn dry_run_counts_as_success() {
    let mut s = Scheduler::new(
        checked(&[("a", &[]), ("b", &["a"])]),
        RunOptions { dry_run: true, ..options(1) },
        1,
    );
    let fx = s.handle(Timestamp::from_millis(0), Input::Start);
    assert!(fx.iter().any(|e| matches!(e, Effect::Dispatch(d) if d.dry_run && d.kill_grace_ms == 2_000 && d.output_cap_bytes == 1 << 20)));
    let dry = Input::AttemptFinished {
        task_id: id("a"),
        attempt: 1,
        result: result(Outcome::DryRun {}, vec![]),
    };
    let fx = s.handle(Timestamp::from_millis(1), dry);
    assert!(fx.iter().any(|e| matches!(e, Effect::Dispatch(d) if d.task.id.as_str() == "b")));
    assert_eq!(s.tasks()[0].status, TaskStatus::Succeeded);
    assert!(s.tasks()[0].attempts[0].succeeded);
}

#[test]
fn attempt_records_are_filled() {
    let mut sim = Sim::new(checked(&[("a", &[]), ("b", &[])]), 2);
    sim.at(10, Input::Start);
    sim.at(
        11,
        Input::AttemptStarted {
            task_id: id("a"),
            attempt: 1,
            worker_id: "w7".into(),
            at: Timestamp::from_millis(12),
        },
    );
    // The result comes from another worker (a redelivery after w7 stalled): it is the one
    // recorded.
    sim.at(20, ok_with("a", 1, &["out.bin"]));
    sim.at(21, exit("b", 1, 3)); // finished without a started report
    let a = sim.record("a");
    assert_eq!(a.status, TaskStatus::Succeeded);
    assert_eq!(a.artifacts.len(), 1);
    assert_eq!(
        a.attempts,
        vec![AttemptRecord {
            attempt: 1,
            dispatched_at: Timestamp::from_millis(10),
            worker_id: Some("w1".into()),
            started_at: Some(Timestamp::from_millis(1)),
            finished_at: Some(Timestamp::from_millis(2)),
            exit_code: Some(0),
            signal: None,
            failure: None,
            succeeded: true,
            claude: None,
        }]
    );
    let b = &sim.record("b").attempts[0];
    assert_eq!(b.worker_id.as_deref(), Some("w1"));
    assert_eq!(b.started_at, Some(Timestamp::from_millis(1)));
    assert_eq!(b.exit_code, Some(3));
    assert_eq!(b.failure.as_ref().map(|f| f.kind), Some(FailureKind::ExitCode));
    assert!(!b.succeeded);
}

// ---------------------------------------------------------------------------------------------
// Retries

#[test]
fn retries_with_backoff_then_success() {
    let plan = checked_with(&[("a", &[]), ("b", &["a"])], &retries(3));
    let log = script(
        plan,
        1,
        vec![
            (0, Input::Start),
            (10, exit("a", 1, 1)),
            (50, Input::Tick), // too early: nothing
            (110, Input::Tick),
            (120, fail("a", 2, FailureKind::Timeout)),
            (320, Input::Tick),
            (330, fail("a", 3, FailureKind::Signal)),
            (730, Input::Tick),
            (740, ok("a", 4)),
            (750, ok("b", 1)),
        ],
    );
    insta::assert_snapshot!(log);
}

#[test]
fn retries_exhausted_fail_and_skip_transitive_dependents() {
    let plan = checked_with(
        &[
            ("build", &[]),
            ("lint", &[]),
            ("test", &["build"]),
            ("docs", &["lint"]),
            ("package", &["test", "docs"]),
            ("publish", &["package"]),
        ],
        &retries(1),
    );
    let log = script(
        plan,
        4,
        vec![
            (0, Input::Start),
            (10, exit("build", 1, 2)),
            (20, ok("lint", 1)),
            (110, Input::Tick),
            (120, exit("build", 2, 2)),
            (130, ok("docs", 1)),
        ],
    );
    insta::assert_snapshot!(log);
}

/// Status of a one-task plan with `policy` after its first attempt fails with `kind`/`code`.
#[track_caller]
fn check_retry(policy: RetryPolicy, kind: FailureKind, code: Option<i32>, expect: TaskStatus) {
    let mut sim = Sim::new(checked_with(&[("a", &[])], &policy), 1);
    sim.at(0, Input::Start);
    let mut failure = Failure::new(kind, "boom");
    failure.exit_code = code;
    let input = Input::AttemptFinished {
        task_id: id("a"),
        attempt: 1,
        result: result(Outcome::Failed { failure }, vec![]),
    };
    sim.at(1, input);
    assert_eq!(sim.status("a"), expect, "{kind} {code:?}");
}

#[test]
fn retry_classes() {
    use FailureKind::*;
    use TaskStatus::{Cancelled as C, Failed as F, Retrying as R};
    for (kind, code, expect) in [
        (ExitCode, Some(1), R),
        (ExitCode, None, R),
        (Signal, None, R),
        (Timeout, None, R),
        (Spawn, None, F),
        (OutputLimit, None, F),
        (Artifact, None, F),
        (Policy, None, F),
        (Internal, None, F),
        (Cancelled, None, C),
    ] {
        check_retry(retries(2), kind, code, expect);
        // With no retries left nothing is retried; Cancelled still ends Cancelled.
        check_retry(no_retry(), kind, code, if expect == C { C } else { F });
    }
    let only = |codes: &[i32]| RetryPolicy { retry_on_exit_codes: codes.to_vec(), ..retries(2) };
    check_retry(only(&[75, 2]), ExitCode, Some(2), R);
    check_retry(only(&[75, 2]), ExitCode, Some(1), F);
    check_retry(only(&[75]), ExitCode, None, F);
    check_retry(only(&[75]), Signal, None, R); // the list is about exit codes only
    check_retry(only(&[75]), Timeout, None, R);
}

#[test]
fn retryable_uses_the_result_exit_code_when_the_failure_has_none() {
    let policy = RetryPolicy { retry_on_exit_codes: vec![75], ..retries(1) };
    let failure = Failure::new(FailureKind::ExitCode, "x");
    assert!(is_retryable(&policy, &failure, Some(75)));
    assert!(!is_retryable(&policy, &failure, Some(1)));
    assert!(!is_retryable(&policy, &failure.clone().with_exit_code(1), Some(75)));
}

#[test]
fn total_attempts_are_max_retries_plus_one() {
    for max in [0, 1, 3] {
        let mut sim = Sim::new(checked_with(&[("a", &[])], &retries(max)), 1);
        sim.at(0, Input::Start);
        let mut t = 0;
        for attempt in 1..=max + 1 {
            t += 10_000;
            sim.at(t, exit("a", attempt, 1));
            sim.at(t + 5_000, Input::Tick);
        }
        assert_eq!(sim.status("a"), TaskStatus::Failed, "max_retries {max}");
        assert_eq!(sim.record("a").attempts.len() as u32, max + 1);
        assert_eq!(sim.s.next_wake(), None);
        assert_eq!(sim.s.status(), RunStatus::Failed);
    }
}

#[test]
fn backoff_grows_and_caps() {
    let b = Backoff { initial_ms: 100, multiplier: 3, max_ms: 2_000, jitter_pct: 0 };
    let delays: Vec<u64> = (1..=6).map(|n| backoff_delay_ms(&b, n, 12345)).collect();
    assert_eq!(delays, [100, 300, 900, 2_000, 2_000, 2_000]);
    let constant = Backoff { multiplier: 1, ..b.clone() };
    assert_eq!(backoff_delay_ms(&constant, 9, 0), 100);
    // Huge retry numbers saturate instead of overflowing.
    let big =
        Backoff { initial_ms: u64::MAX / 2, multiplier: 10, max_ms: u64::MAX, jitter_pct: 100 };
    assert_eq!(backoff_delay_ms(&big, u32::MAX, u64::MAX), u64::MAX);
    assert_eq!(backoff_delay_ms(&Backoff { jitter_pct: 20, ..b }, 0, 0), 80);
}

#[test]
fn jitter_stays_within_bounds_and_covers_them() {
    let b = Backoff { initial_ms: 1_000, multiplier: 2, max_ms: 5_000, jitter_pct: 20 };
    for (retry, lo, hi) in [
        (1, 800, 1_200),
        (2, 1_600, 2_400),
        (3, 3_200, 4_800),
        (4, 4_000, 5_000),
        (9, 4_000, 5_000),
    ] {
        let delays: Vec<u64> =
            (0..2_000).map(|k| backoff_delay_ms(&b, retry, splitmix64(k))).collect();
        let (min, max) = (*delays.iter().min().unwrap(), *delays.iter().max().unwrap());
        assert!(lo <= min && max <= hi, "retry {retry}: {min}..{max} not within {lo}..{hi}");
        // A fair spread: both ends of the range are reached closely.
        assert!(
            min < lo + (hi - lo) / 10 && max > hi - (hi - lo) / 10,
            "retry {retry}: {min}..{max}"
        );
    }
    // 100% jitter never goes below zero.
    let wild = Backoff { jitter_pct: 100, ..b };
    assert!((0..1_000).all(|k| backoff_delay_ms(&wild, 1, splitmix64(k)) <= 2_000));
    assert!((0..1_000).any(|k| backoff_delay_ms(&wild, 1, splitmix64(k)) < 100));
}

#[test]
fn jittered_delays_for_a_fixed_seed() {
    // Pinned so a change to the PRNG or the formula is a visible diff: a resumed run relies
    // on computing the same delays.
    let b = Backoff { initial_ms: 500, multiplier: 2, max_ms: 30_000, jitter_pct: 20 };
    let delays: Vec<u64> =
        (1..=8).map(|n| backoff_delay_ms(&b, n, jitter_random(42, "build", n))).collect();
    insta::assert_debug_snapshot!(delays);
    let bases = [500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000];
    for (d, base) in delays.iter().zip(bases) {
        assert!(base * 8 / 10 <= *d && *d <= (base * 12 / 10).min(30_000), "{d} vs {base}");
    }
    // Different seeds, tasks and retries draw differently; the same ones draw the same.
    assert_eq!(jitter_random(42, "build", 1), jitter_random(42, "build", 1));
    assert_ne!(jitter_random(42, "build", 1), jitter_random(43, "build", 1));
    assert_ne!(jitter_random(42, "build", 1), jitter_random(42, "test", 1));
    assert_ne!(jitter_random(42, "build", 1), jitter_random(42, "build", 2));
}

#[test]
fn retry_delay_in_the_scheduler_uses_the_seed() {
    let policy = RetryPolicy {
        backoff: Backoff { initial_ms: 1_000, multiplier: 2, max_ms: 60_000, jitter_pct: 50 },
        ..retries(5)
    };
    let delay = |seed: u64| {
        let mut s = Scheduler::new(checked_with(&[("a", &[])], &policy), options(1), seed);
        s.handle(Timestamp::from_millis(0), Input::Start);
        let fx = s.handle(Timestamp::from_millis(100), exit("a", 1, 1));
        let Some(Effect::Emit(RunEvent::TaskRetrying { delay_ms, .. })) = fx.last() else {
            panic!("{fx:?}")
        };
        assert_eq!(s.next_wake(), Some(Timestamp::from_millis(100 + delay_ms)));
        assert_eq!(s.tasks()[0].retry_at, s.next_wake());
        *delay_ms
    };
    assert_eq!(delay(9), delay(9));
    let spread: BTreeSet<u64> = (0..20).map(delay).collect();
    assert!(spread.len() > 10, "{spread:?}");
    assert!(spread.iter().all(|d| (500..=1_500).contains(d)), "{spread:?}");
}

#[test]
fn due_retries_wait_for_a_free_slot() {
    let plan = checked_with(&[("a", &[]), ("b", &[]), ("c", &[])], &retries(2));
    let mut sim = Sim::new(plan, 2);
    sim.at(0, Input::Start); // a, b
    sim.at(10, exit("a", 1, 1)); // a retries at 110; c takes its slot
    assert_eq!(sim.dispatched, ["a#1", "b#1", "c#1"]);
    assert_eq!(sim.s.next_wake(), Some(Timestamp::from_millis(110)));
    assert!(sim.at(200, Input::Tick).is_empty(), "no free slot");
    assert_eq!(sim.s.next_wake(), None, "a due retry is no longer a timer");
    assert_eq!(sim.status("a"), TaskStatus::Retrying);
    assert_eq!(
        sim.at(210, ok("b", 1)),
        [
            "persist b succeeded#1",
            "emit task_succeeded b#1",
            "persist a dispatched#2",
            "dispatch a#2",
            "emit task_dispatched a#2"
        ]
    );
}

#[test]
fn zero_delay_retry_is_dispatched_in_the_same_batch() {
    let policy = RetryPolicy {
        backoff: Backoff { initial_ms: 0, multiplier: 2, max_ms: 0, jitter_pct: 0 },
        ..retries(1)
    };
    let mut sim = Sim::new(checked_with(&[("a", &[])], &policy), 1);
    sim.at(0, Input::Start);
    assert_eq!(
        sim.at(5, exit("a", 1, 1)),
        [
            "persist a retrying#1 retry_at=5",
            "emit task_retrying a#1 exit_code delay=0",
            "persist a dispatched#2",
            "dispatch a#2",
            "emit task_dispatched a#2"
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Fencing

#[test]
fn stale_and_repeated_reports_are_ignored() {
    let plan = checked_with(&[("a", &[])], &retries(2));
    let mut sim = Sim::new(plan, 1);
    sim.at(0, Input::Start);
    assert!(sim.at(1, ok("a", 2)).is_empty(), "future attempt");
    assert!(sim.at(1, ok("zzz", 1)).is_empty(), "unknown task");
    assert!(sim.at(1, started("a", 0)).is_empty(), "attempt 0");
    assert_eq!(sim.at(2, started("a", 1)).len(), 1);
    assert!(sim.at(3, started("a", 1)).is_empty(), "repeated start");
    assert_eq!(sim.at(10, exit("a", 1, 1))[0], "persist a retrying#1 retry_at=110");
    assert!(sim.at(20, exit("a", 1, 1)).is_empty(), "repeated result while retrying");
    assert!(sim.at(30, ok("a", 1)).is_empty(), "late success of the failed attempt");
    assert_eq!(sim.at(110, Input::Tick)[0], "persist a dispatched#2");
    assert!(sim.at(120, started("a", 1)).is_empty(), "late start of attempt 1");
    assert!(sim.at(120, ok("a", 1)).is_empty(), "late success of attempt 1");
    assert_eq!(sim.status("a"), TaskStatus::Dispatched);
    assert_eq!(
        sim.at(130, ok("a", 2)).last().unwrap(),
        "finished succeeded succeeded=1 failed=0 skipped=0 cancelled=0"
    );
    assert!(sim.at(140, exit("a", 2, 1)).is_empty(), "after the end");
    assert!(sim.at(140, cancel("late")).is_empty(), "cancel after the end");
    assert_eq!(sim.record("a").attempts.len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Cancel

#[test]
fn cancel_with_in_flight_pending_and_retrying_tasks() {
    let plan = checked_with(
        &[("a", &[]), ("r", &[]), ("b", &["a"]), ("c", &[]), ("ok", &[])],
        &retries(3),
    );
    let log = script(
        plan,
        3,
        vec![
            (0, Input::Start),
            (1, started("a", 1)),
            (5, exit("r", 1, 1)), // r retrying, c takes the slot
            (6, ok("c", 1)),      // ok takes the slot
            (10, cancel("user pressed ctrl-c")),
            (11, cancel("again")), // no-op
            (12, Input::Tick),     // r's retry time passed: nothing
            (500, ok("ok", 1)),    // in flight and succeeded: stays succeeded
            (510, fail("a", 1, FailureKind::Cancelled)),
        ],
    );
    insta::assert_snapshot!(log);
}

#[test]
fn any_failure_after_cancel_is_final() {
    let mut sim = Sim::new(checked_with(&[("a", &[])], &retries(3)), 1);
    sim.at(0, Input::Start);
    sim.at(1, cancel("stop"));
    assert_eq!(sim.s.status(), RunStatus::Running);
    let lines = sim.at(2, fail("a", 1, FailureKind::Timeout));
    assert_eq!(
        lines,
        [
            "persist a cancelled#1: run cancelled: stop",
            "emit task_cancelled a",
            "finished cancelled succeeded=0 failed=0 skipped=0 cancelled=1"
        ]
    );
    assert_eq!(sim.s.status(), RunStatus::Cancelled);
}

#[test]
fn cancel_before_start_finishes_at_once() {
    let mut sim = Sim::new(checked(&[("a", &[]), ("b", &["a"])]), 1);
    let lines = sim.at(0, cancel("never mind"));
    assert_eq!(lines.first().unwrap(), "emit cancelling: never mind");
    assert_eq!(
        lines.last().unwrap(),
        "finished cancelled succeeded=0 failed=0 skipped=0 cancelled=2"
    );
    assert!(sim.at(1, Input::Start).is_empty());
}

#[test]
fn a_task_cancelled_by_its_worker_skips_dependents_and_cancels_the_run() {
    let mut sim = Sim::new(checked_with(&[("a", &[]), ("b", &["a"]), ("c", &[])], &retries(3)), 2);
    sim.at(0, Input::Start);
    let lines = sim.at(1, fail("a", 1, FailureKind::Cancelled));
    assert_eq!(
        lines,
        [
            "persist a cancelled#1: cancelled happened",
            "emit task_cancelled a",
            "persist b skipped: dependency `a` was cancelled",
            "emit task_skipped b: dependency `a` was cancelled"
        ]
    );
    sim.at(2, ok("c", 1));
    assert_eq!(sim.s.status(), RunStatus::Cancelled);
}

// ---------------------------------------------------------------------------------------------
// Restore

#[test]
fn restore_after_crash() {
    let plan = || {
        checked_with(
            &[("a", &[]), ("b", &["a"]), ("c", &[]), ("d", &["b", "c"]), ("e", &[])],
            &retries(2),
        )
    };
    let mut before = Sim::new(plan(), 3);
    before.at(0, Input::Start); // a, c, e
    before.at(1, ok_with("a", 1, &["a.out"])); // b
    before.at(2, started("b", 1));
    before.at(3, exit("e", 1, 1)); // e retrying at 103
    // c is dispatched, never started. Crash: the store holds the records as persisted.
    let stored = before.s.tasks().to_vec();
    let status: Vec<_> = stored.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(status, ["succeeded", "running", "dispatched", "pending", "retrying"]);

    let mut after = Sim::from(Scheduler::restore(plan(), options(3), 7, stored));
    let status: Vec<_> = after.s.tasks().iter().map(|r| r.status.as_str()).collect();
    assert_eq!(status, ["succeeded", "pending", "pending", "pending", "retrying"]);
    assert_eq!(after.s.next_wake(), Some(Timestamp::from_millis(103)));
    after.log.clear();
    after.at(50, Input::Start);
    after.at(51, ok("b", 1)); // late result of the lost attempt
    after.at(52, started("c", 1));
    after.at(60, ok("b", 2));
    after.at(61, ok("c", 2));
    after.at(103, Input::Tick);
    after.at(104, ok("e", 2));
    after.at(105, ok("d", 1));
    insta::assert_snapshot!(after.log);
    assert_eq!(after.record("a").attempts.len(), 1, "a never ran again");
}

#[test]
fn restore_skips_behind_failures_and_finishes_a_finished_run() {
    let plan = || checked(&[("a", &[]), ("b", &["a"]), ("c", &["b"]), ("x", &[]), ("y", &["x"])]);
    let mut records: Vec<TaskRecord> =
        ["a", "b", "c", "x", "y"].iter().map(|t| TaskRecord::new(id(t))).collect();
    records[0].status = TaskStatus::Failed;
    records[3].status = TaskStatus::Cancelled;
    let mut sim = Sim::from(Scheduler::restore(plan(), options(2), 1, records));
    let lines = sim.at(0, Input::Start);
    assert_eq!(
        lines,
        [
            "persist b skipped: dependency `a` failed",
            "emit task_skipped b: dependency `a` failed",
            "persist c skipped: dependency `a` failed",
            "emit task_skipped c: dependency `a` failed",
            "persist y skipped: dependency `x` was cancelled",
            "emit task_skipped y: dependency `x` was cancelled",
            "finished cancelled succeeded=0 failed=1 skipped=3 cancelled=1",
        ]
    );

    // Everything terminal already: Start only reports the end.
    let done: Vec<TaskRecord> = sim.s.tasks().to_vec();
    let mut again = Sim::from(Scheduler::restore(plan(), options(2), 1, done));
    assert_eq!(
        again.at(0, Input::Start),
        ["finished cancelled succeeded=0 failed=1 skipped=3 cancelled=1"]
    );
}

#[test]
fn restore_ignores_unknown_records_and_fills_missing_ones() {
    let mut stray = TaskRecord::new(id("gone"));
    stray.status = TaskStatus::Running;
    let mut a = TaskRecord::new(id("a"));
    a.status = TaskStatus::Succeeded;
    let mut sim = Sim::from(Scheduler::restore(
        checked(&[("a", &[]), ("b", &["a"])]),
        options(1),
        1,
        vec![stray, a],
    ));
    assert_eq!(
        sim.at(0, Input::Start),
        ["persist b dispatched#1", "dispatch b#1", "emit task_dispatched b#1"]
    );
}

// ---------------------------------------------------------------------------------------------
// Determinism and scale

#[test]
fn same_inputs_same_effects() {
    let steps = || {
        vec![
            (0, Input::Start),
            (10, exit("a", 1, 1)),
            (20, ok("b", 1)),
            (2_000, Input::Tick),
            (2_100, exit("a", 2, 1)),
            (9_000, Input::Tick),
            (9_100, ok("a", 3)),
        ]
    };
    let policy = RetryPolicy {
        backoff: Backoff { initial_ms: 500, multiplier: 2, max_ms: 30_000, jitter_pct: 40 },
        ..retries(3)
    };
    let plan = || checked_with(&[("a", &[]), ("b", &[]), ("c", &["a", "b"])], &policy);
    assert_eq!(script(plan(), 2, steps()), script(plan(), 2, steps()));
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("t{i}")).collect()
}

/// Runs a plan of `n` tasks (each depending on the previous one if `chain`) with workers that
/// always succeed, and returns the scheduler.
fn run_big(n: usize, chain: bool, max_parallel: u32) -> Sim {
    let names = ids(n);
    let prev: Vec<[&str; 1]> = (0..n).map(|i| [names[i.saturating_sub(1)].as_str()]).collect();
    let tasks: Vec<(&str, &[&str])> = (0..n)
        .map(|i| (names[i].as_str(), if chain && i > 0 { &prev[i][..] } else { &[] as &[&str] }))
        .collect();
    let mut sim = Sim::new(checked(&tasks), max_parallel);
    sim.at(0, Input::Start);
    sim.drain_ok(1, n + 1);
    sim
}

#[test]
fn a_thousand_task_chain_and_a_thousand_wide_plan_finish() {
    for (chain, max_parallel) in [(true, 4), (false, 1), (false, 16), (false, 2_000)] {
        let sim = run_big(1_000, chain, max_parallel);
        assert_eq!(sim.finished, 1, "chain={chain} max_parallel={max_parallel}");
        assert_eq!(
            sim.s.outcome(),
            RunOutcome {
                status: RunStatus::Succeeded,
                succeeded: 1_000,
                failed: 0,
                skipped: 0,
                cancelled: 0
            }
        );
        let expect: Vec<String> = ids(1_000).iter().map(|t| format!("{t}#1")).collect();
        assert_eq!(sim.dispatched, expect);
    }
}

#[test]
fn handling_is_not_a_scan_of_the_plan() {
    // 50 000 tasks: quadratic handling would take minutes even in release; linear takes well
    // under a second in debug. The bound is generous so a loaded machine does not flake.
    for chain in [true, false] {
        let start = std::time::Instant::now();
        let sim = run_big(50_000, chain, 64);
        assert_eq!(sim.s.status(), RunStatus::Succeeded);
        let took = start.elapsed();
        assert!(took < Duration::from_secs(20), "chain={chain}: {took:?}");
    }
}

#[test]
fn a_failure_deep_in_a_long_chain_skips_the_rest_once() {
    let n = 1_000;
    let names = ids(n);
    let prev: Vec<[&str; 1]> = (0..n).map(|i| [names[i.saturating_sub(1)].as_str()]).collect();
    let tasks: Vec<(&str, &[&str])> = (0..n)
        .map(|i| (names[i].as_str(), if i > 0 { &prev[i][..] } else { &[] as &[&str] }))
        .collect();
    let mut sim = Sim::new(checked(&tasks), 1);
    sim.at(0, Input::Start);
    for name in &names[..10] {
        sim.at(1, ok(name, 1));
    }
    let lines = sim.at(2, exit("t10", 1, 1));
    assert_eq!(lines.len(), 2 + 2 * (n - 11) + 1);
    assert_eq!(lines[2], "persist t11 skipped: dependency `t10` failed");
    assert_eq!(lines[lines.len() - 2], "emit task_skipped t999: dependency `t10` failed");
    assert_eq!(
        sim.s.outcome(),
        RunOutcome {
            status: RunStatus::Failed,
            succeeded: 10,
            failed: 1,
            skipped: 989,
            cancelled: 0
        }
    );
}

#[test]
fn a_reopened_cancelled_run_runs_what_was_cancelled_and_skips_behind_failures() {
    use orchestra_proto::{TaskId, TaskRecord, TaskStatus};
    let rec = |id: &str, status: TaskStatus| {
        let mut r = TaskRecord::new(TaskId::new_unchecked(id));
        r.status = status;
        r.reason = Some("x".into());
        r
    };
    let mut tasks = vec![
        rec("ok", TaskStatus::Succeeded),
        rec("bad", TaskStatus::Failed),
        rec("cut", TaskStatus::Cancelled),
        rec("after", TaskStatus::Skipped),
    ];
    super::reopen_cancelled(&mut tasks);
    let statuses: Vec<_> = tasks.iter().map(|t| t.status).collect();
    assert_eq!(
        statuses,
        [TaskStatus::Succeeded, TaskStatus::Failed, TaskStatus::Pending, TaskStatus::Pending]
    );
    assert!(tasks[2].reason.is_none() && tasks[0].reason.is_some());
}

// ---------------------------------------------------------------------------------------------
// Money: `claude` tasks count against the run's `max_cost_usd`

fn claude_plan(tasks: &[(&str, &[&str], Option<f64>)]) -> CheckedPlan {
    let plan = Plan {
        name: "test".into(),
        goal: None,
        tasks: tasks
            .iter()
            .map(|(t, d, budget)| TaskSpec {
                tool: Tool::Claude(orchestra_proto::ClaudeSpec {
                    prompt: "do it".into(),
                    allowed_tools: vec![],
                    permission_mode: None,
                    max_turns: None,
                    max_budget_usd: *budget,
                    model: None,
                }),
                ..spec(t, d, &no_retry())
            })
            .collect(),
    };
    validate(&plan, &PlanLimits { max_tasks: u32::MAX, max_depends: u32::MAX }).unwrap()
}

fn claude_ok(task: &str, attempt: u32, cost: f64) -> Input {
    let mut r = result(Outcome::Succeeded {}, vec![]);
    r.claude = Some(orchestra_proto::ClaudeReport {
        result: Some("done".into()),
        session_id: None,
        turns: 2,
        cost_usd: cost,
        input_tokens: 10,
        output_tokens: 5,
        permission_denials: vec![],
        model: None,
    });
    Input::AttemptFinished { task_id: id(task), attempt, result: r }
}

fn granted(fx: &[Effect]) -> Vec<(String, Option<f64>)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Dispatch(d) => match &d.task.tool {
                Tool::Claude(c) => Some((d.task.id.to_string(), c.max_budget_usd)),
                Tool::Exec(_) => None,
            },
            _ => None,
        })
        .collect()
}

#[test]
fn claude_tasks_get_at_most_the_remaining_run_budget() {
    let plan = claude_plan(&[("a", &[], Some(0.3)), ("b", &[], None), ("c", &["a", "b"], None)]);
    let mut s = Scheduler::new(plan, RunOptions { max_cost_usd: Some(1.0), ..options(4) }, 7)
        .with_spent(0.2);
    let fx = s.handle(Timestamp::from_millis(0), Input::Start);
    // a asks for 0.3 of the 0.8 left; b gets what remains after a's reservation.
    let g = granted(&fx);
    assert_eq!(g[0], ("a".into(), Some(0.3)));
    assert_eq!(g[1].0, "b");
    assert!((g[1].1.unwrap() - 0.5).abs() < 1e-9, "{g:?}");
    s.handle(Timestamp::from_millis(1), claude_ok("a", 1, 0.25));
    s.handle(Timestamp::from_millis(2), claude_ok("b", 1, 0.5));
    assert!((s.spent_usd() - 0.95).abs() < 1e-9);
    // 0.05 left for c.
    let fx = s.handle(Timestamp::from_millis(3), Input::Tick);
    let g = granted(&fx);
    assert!(g.is_empty(), "c was dispatched by the finish of b: {g:?}");
}

#[test]
fn a_claude_task_is_not_started_when_the_budget_is_spent() {
    let plan = claude_plan(&[("a", &[], None), ("b", &["a"], None), ("after", &["b"], None)]);
    let mut s = Scheduler::new(plan, RunOptions { max_cost_usd: Some(0.5), ..options(2) }, 7);
    let fx = s.handle(Timestamp::from_millis(0), Input::Start);
    assert_eq!(granted(&fx), vec![("a".to_string(), Some(0.5))]);
    let fx = s.handle(Timestamp::from_millis(1), claude_ok("a", 1, 0.5));
    assert!(granted(&fx).is_empty());
    let failed = fx.iter().find_map(|e| match e {
        Effect::Emit(RunEvent::TaskFailed { task_id, failure, .. }) => {
            Some((task_id.clone(), failure.clone()))
        }
        _ => None,
    });
    let (task, failure) = failed.expect("b failed for budget");
    assert_eq!(task, id("b"));
    assert_eq!(failure.kind, FailureKind::Budget);
    assert!(failure.message.contains("budget of $0.5000 is spent"), "{}", failure.message);
    let statuses: Vec<_> = s.tasks().iter().map(|t| t.status).collect();
    assert_eq!(statuses, vec![TaskStatus::Succeeded, TaskStatus::Failed, TaskStatus::Skipped]);
    assert!(fx.iter().any(|e| matches!(e, Effect::Finished(o) if o.status == RunStatus::Failed)));
}

#[test]
fn restored_runs_count_what_claude_attempts_already_spent() {
    let plan = claude_plan(&[("a", &[], None), ("b", &["a"], None)]);
    let opts = RunOptions { max_cost_usd: Some(1.0), ..options(2) };
    let mut s = Scheduler::new(plan.clone(), opts.clone(), 7);
    s.handle(Timestamp::from_millis(0), Input::Start);
    s.handle(Timestamp::from_millis(1), claude_ok("a", 1, 0.75));
    let records = s.tasks().to_vec();
    let restored = Scheduler::restore(plan, opts, 7, records).with_spent(0.125);
    assert!((restored.spent_usd() - 0.875).abs() < 1e-9);
}
