//! One JSON snapshot per wire message type, so a wire change is a reviewable diff, and a
//! round-trip check that each decodes back to itself through the codec.

use orchestra_proto::plan::{Plan, PlanProblem, RunOptions};
use orchestra_proto::{
    ArtifactRecord, AttemptRecord, AttemptResult, Backoff, Control, Ctx, Dispatch, ExecSpec,
    Failure, FailureKind, InputRef, Outcome, RetryPolicy, RunEvent, RunId, RunOutcome, RunRecord,
    RunReply, RunRequest, RunStatus, SpanId, Stream, TaskEvent, TaskId, TaskRecord, TaskSpec,
    TaskStatus, Timestamp, Tool, TraceId, codec,
};
use orchestra_proto::{
    CallOutcome, ClaudeReport, ClaudeSpec, ContextFile, GoalRequest, LlmCall, PlanningReport,
    TaskDefaults, ToolRules,
};
use serde::{Serialize, de::DeserializeOwned};
use std::collections::BTreeMap;
use std::fmt::Debug;

const T0: Timestamp = Timestamp::from_millis(1_764_065_277_000);

fn ctx() -> Ctx {
    Ctx::run(
        RunId::new_unchecked("20251125T100757Z-a1b2c3"),
        TraceId::new_unchecked("4bf92f3577b34da6a3ce929d0e0e4736"),
    )
    .with_parent(SpanId::new_unchecked("00f067aa0ba902b7"))
}

fn task_ctx() -> Ctx {
    ctx().task(TaskId::new_unchecked("build"), 2)
}

/// Wraps a body in a deterministic envelope, snapshots it, and checks the round trip.
fn check<T: Serialize + DeserializeOwned + PartialEq + Debug>(name: &str, ctx: &Ctx, body: T) {
    let mut env = ctx.envelope(T0, body);
    env.id = orchestra_proto::MessageId::new_unchecked("0123456789abcdef0123456789abcdef");
    let bytes = codec::encode(&env);
    let back = codec::decode::<T>(&bytes).expect("round trip");
    assert_eq!(back, env, "{name} does not round-trip");
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    insta::assert_json_snapshot!(name, value);
}

fn spec() -> TaskSpec {
    TaskSpec {
        id: TaskId::new_unchecked("build"),
        description: Some("compile the project".into()),
        tool: Tool::Exec(ExecSpec { program: "make".into(), args: vec!["-j2".into()] }),
        depends_on: vec![TaskId::new_unchecked("fetch")],
        env: BTreeMap::from([("CC".into(), "gcc".into())]),
        timeout_ms: 60_000,
        retry: RetryPolicy {
            max_retries: 2,
            retry_on_exit_codes: vec![75],
            backoff: Backoff::default(),
        },
        outputs: vec!["target/*.bin".into()],
    }
}

fn options() -> RunOptions {
    RunOptions {
        max_parallel: 2,
        pool: "default".into(),
        dry_run: false,
        output_cap_bytes: 1 << 20,
        kill_grace_ms: 2000,
        max_tasks: 1000,
        max_llm_calls: 4,
        max_cost_usd: Some(0.5),
    }
}

fn failure() -> Failure {
    Failure {
        kind: FailureKind::ExitCode,
        message: "`make` exited with code 2".into(),
        chain: vec!["make: *** [all] Error 1".into()],
        exit_code: Some(2),
        signal: None,
    }
}

fn artifact() -> ArtifactRecord {
    ArtifactRecord {
        task: TaskId::new_unchecked("build"),
        path: "target/app.bin".into(),
        size: 12,
        sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
    }
}

fn plan() -> Plan {
    Plan { name: "hello".into(), goal: Some("say hello".into()), tasks: vec![spec()] }
}

#[test]
fn run_request_start() {
    check(
        "run_request_start",
        &ctx(),
        RunRequest::Start { plan: plan(), options: options(), plan_only: false, planning: None },
    );
}

#[test]
fn run_request_resume() {
    check("run_request_resume", &ctx(), RunRequest::Resume {});
    check("run_request_state", &ctx(), RunRequest::State {});
}

#[test]
fn run_reply_variants() {
    check(
        "run_reply_accepted",
        &ctx(),
        RunReply::Accepted {
            tasks: 1,
            order: vec![TaskId::new_unchecked("build")],
            plan: None,
            planning: None,
        },
    );
    check(
        "run_reply_resumed",
        &ctx(),
        RunReply::Resumed {
            status: RunStatus::Running,
            tasks: BTreeMap::from([(TaskId::new_unchecked("build"), TaskStatus::Succeeded)]),
        },
    );
    check(
        "run_reply_rejected",
        &ctx(),
        RunReply::Rejected {
            problems: vec![PlanProblem {
                code: "cycle".into(),
                path: "tasks[0].depends_on".into(),
                message: "cycle: a → b → a".into(),
                hint: Some("remove one of the dependencies".into()),
            }],
            planning: None,
        },
    );
}

#[test]
fn dispatch() {
    check(
        "dispatch",
        &task_ctx(),
        Dispatch {
            task: spec(),
            attempt: 2,
            inputs: vec![InputRef {
                task: TaskId::new_unchecked("fetch"),
                path: "src.tar".into(),
                size: 10,
                sha256: "ab".repeat(32),
            }],
            output_cap_bytes: 1 << 20,
            kill_grace_ms: 2000,
            dry_run: false,
        },
    );
}

#[test]
fn task_events() {
    check(
        "task_event_started",
        &task_ctx(),
        TaskEvent::Started {
            worker_id: "w-1".into(),
            pid: Some(4242),
            argv: vec!["make".into(), "-j2".into()],
            started_at: T0,
        },
    );
    check(
        "task_event_output",
        &task_ctx(),
        TaskEvent::Output { stream: Stream::Stderr, seq: 3, chunk: "warning: x\n".into() },
    );
    check(
        "task_event_output_capped",
        &task_ctx(),
        TaskEvent::OutputCapped { stream: Stream::Stdout, limit_bytes: 1024 },
    );
    check("task_event_heartbeat", &task_ctx(), TaskEvent::Heartbeat {});
    check(
        "task_event_finished_failed",
        &task_ctx(),
        TaskEvent::Finished(Box::new(AttemptResult {
            claude: None,
            outcome: Outcome::Failed { failure: failure() },
            worker_id: "w-1".into(),
            started_at: T0,
            finished_at: Timestamp::from_millis(T0.as_millis() + 1500),
            exit_code: Some(2),
            signal: None,
            stdout_bytes: 100,
            stderr_bytes: 20,
            artifacts: vec![],
        })),
    );
    check(
        "task_event_finished_succeeded",
        &task_ctx(),
        TaskEvent::Finished(Box::new(AttemptResult {
            claude: None,
            outcome: Outcome::Succeeded {},
            worker_id: "w-1".into(),
            started_at: T0,
            finished_at: Timestamp::from_millis(T0.as_millis() + 1500),
            exit_code: Some(0),
            signal: None,
            stdout_bytes: 100,
            stderr_bytes: 0,
            artifacts: vec![artifact()],
        })),
    );
}

#[test]
fn run_events() {
    let t = || TaskId::new_unchecked("build");
    check(
        "run_event_task_dispatched",
        &ctx(),
        RunEvent::TaskDispatched { task_id: t(), attempt: 1 },
    );
    check(
        "run_event_task_retrying",
        &ctx(),
        RunEvent::TaskRetrying { task_id: t(), attempt: 1, delay_ms: 500, failure: failure() },
    );
    check("run_event_task_succeeded", &ctx(), RunEvent::TaskSucceeded { task_id: t(), attempt: 2 });
    check(
        "run_event_task_failed",
        &ctx(),
        RunEvent::TaskFailed { task_id: t(), attempt: 3, failure: failure() },
    );
    check(
        "run_event_task_skipped",
        &ctx(),
        RunEvent::TaskSkipped { task_id: t(), reason: "dependency `fetch` failed".into() },
    );
    check("run_event_task_cancelled", &ctx(), RunEvent::TaskCancelled { task_id: t() });
    check("run_event_cancelling", &ctx(), RunEvent::Cancelling { reason: "interrupted".into() });
    check(
        "run_event_finished",
        &ctx(),
        RunEvent::Finished(RunOutcome {
            status: RunStatus::Failed,
            succeeded: 3,
            failed: 1,
            skipped: 2,
            cancelled: 0,
        }),
    );
}

#[test]
fn control() {
    check("control_cancel", &ctx(), Control::Cancel { reason: "interrupted".into() });
}

#[test]
fn stored_records() {
    let run = RunRecord {
        planning: None,
        run_id: RunId::new_unchecked("20251125T100757Z-a1b2c3"),
        trace_id: TraceId::new_unchecked("4bf92f3577b34da6a3ce929d0e0e4736"),
        status: RunStatus::Running,
        plan: plan(),
        options: options(),
        created_at: T0,
        finished_at: None,
        seed: 7,
    };
    insta::assert_json_snapshot!("run_record", run);
    let mut task = TaskRecord::new(TaskId::new_unchecked("build"));
    task.status = TaskStatus::Succeeded;
    task.attempts.push(AttemptRecord {
        claude: None,
        attempt: 1,
        dispatched_at: T0,
        worker_id: Some("w-1".into()),
        started_at: Some(T0),
        finished_at: Some(T0),
        exit_code: Some(0),
        signal: None,
        failure: None,
        succeeded: true,
    });
    task.artifacts.push(artifact());
    insta::assert_json_snapshot!("task_record", task);
    let back: TaskRecord = serde_json::from_value(serde_json::to_value(&task).unwrap()).unwrap();
    assert_eq!(back, task);
    check("run_reply_state", &ctx(), RunReply::State { run: Box::new(run), tasks: vec![task] });
}

#[test]
fn decode_rejects_other_versions_and_unknown_fields() {
    let mut v: serde_json::Value = serde_json::from_slice(&codec::encode(
        &ctx().envelope(T0, Control::Cancel { reason: "x".into() }),
    ))
    .unwrap();
    v["v"] = 2.into();
    let err = codec::decode::<Control>(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert_eq!(err.to_string(), "protocol version 2 is not supported (this build speaks 1)");
    v["v"] = 1.into();
    v["surprise"] = true.into();
    assert!(codec::decode::<Control>(&serde_json::to_vec(&v).unwrap()).is_err());
}

fn planning() -> PlanningReport {
    PlanningReport {
        backend: "claude-code".into(),
        model: Some("sonnet".into()),
        prompt_version: "3f2a9c1d".into(),
        cache_key: "9b74c9897bac770ffc029102a200c5de".into(),
        cached: false,
        calls: vec![
            LlmCall {
                round: 1,
                started_at: T0,
                latency_ms: 812,
                input_tokens: 1200,
                output_tokens: 340,
                cost_usd: 0.0123,
                cost_reported: true,
                request: "Goal: say hello".into(),
                answer: "{\"tasks\": []}".into(),
                outcome: CallOutcome::Invalid {
                    problems: vec![PlanProblem {
                        code: "empty_plan".into(),
                        path: "tasks".into(),
                        message: "the plan has no tasks".into(),
                        hint: None,
                    }],
                },
            },
            LlmCall {
                round: 2,
                started_at: T0,
                latency_ms: 640,
                input_tokens: 1500,
                output_tokens: 200,
                cost_usd: 0.01,
                cost_reported: true,
                request: "Problems found: …".into(),
                answer: "{…}".into(),
                outcome: CallOutcome::Accepted {},
            },
        ],
    }
}

fn claude_spec() -> TaskSpec {
    TaskSpec {
        tool: Tool::Claude(ClaudeSpec {
            prompt: "write notes.md summarising README.md".into(),
            allowed_tools: vec!["Write".into(), "Bash(cat:*)".into()],
            permission_mode: Some("acceptEdits".into()),
            max_turns: Some(5),
            max_budget_usd: Some(0.25),
            model: Some("sonnet".into()),
        }),
        ..spec()
    }
}

#[test]
fn run_request_goal() {
    check(
        "run_request_goal",
        &ctx(),
        RunRequest::Goal {
            goal: GoalRequest {
                name: "hello".into(),
                goal: "say hello in three languages".into(),
                context: vec![ContextFile {
                    path: "README.md".into(),
                    sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                        .into(),
                    text: "# hello".into(),
                    truncated: false,
                }],
                tools: ToolRules {
                    tools: vec!["exec".into(), "claude".into()],
                    programs: vec!["sh".into()],
                },
                defaults: TaskDefaults { timeout_ms: 60_000, retry: RetryPolicy::default() },
                policy_summary: "no network".into(),
                no_cache: false,
            },
            options: options(),
            plan_only: true,
        },
    );
}

#[test]
fn run_reply_planned() {
    check(
        "run_reply_accepted_planned",
        &ctx(),
        RunReply::Accepted {
            tasks: 1,
            order: vec![TaskId::new_unchecked("build")],
            plan: Some(Plan { tasks: vec![claude_spec()], ..plan() }),
            planning: Some(planning()),
        },
    );
    check(
        "run_reply_rejected_planning",
        &ctx(),
        RunReply::Rejected {
            problems: vec![PlanProblem {
                code: "llm_budget".into(),
                path: String::new(),
                message: "the run's model budget is spent".into(),
                hint: Some("raise limits.max_llm_calls".into()),
            }],
            planning: Some(PlanningReport { calls: vec![], cached: true, ..planning() }),
        },
    );
}

#[test]
fn claude_attempt_result() {
    check(
        "task_event_finished_claude",
        &task_ctx(),
        TaskEvent::Finished(Box::new(AttemptResult {
            outcome: Outcome::Failed {
                failure: Failure {
                    kind: FailureKind::MaxTurns,
                    message: "the agent reached its turn limit (5)".into(),
                    chain: vec![],
                    exit_code: Some(1),
                    signal: None,
                },
            },
            worker_id: "w1".into(),
            started_at: T0,
            finished_at: T0,
            exit_code: Some(1),
            signal: None,
            stdout_bytes: 900,
            stderr_bytes: 0,
            artifacts: vec![],
            claude: Some(ClaudeReport {
                result: None,
                session_id: Some("b3a9c309-0000-4000-8000-000000000000".into()),
                turns: 6,
                cost_usd: 0.049,
                input_tokens: 12_259,
                output_tokens: 2,
                permission_denials: vec!["Bash".into()],
                model: Some("claude-sonnet-5-5".into()),
            }),
        })),
    );
}

/// `eval.json` is a file, not a bus message: snapshotted bare, and it must read back as itself
/// and reject fields it does not know.
#[test]
fn eval_report() {
    use orchestra_proto::eval::{
        Check, EvalReport, FailureCount, Interval, SCHEMA_VERSION, ScenarioResult, Spread, Trial,
    };
    let check = |check: &str, passed: bool, detail: &str| Check {
        check: check.into(),
        passed,
        detail: detail.into(),
    };
    let sha =
        "artifact `merge/merged.csv` has sha256 9f86d081884c7d65…, expected 0000000000000000…";
    let report = EvalReport {
        schema_version: SCHEMA_VERSION,
        eval_id: "20251125T100757Z-a1b2c3".into(),
        started_at: T0,
        duration_ms: 2_345,
        repeat: 2,
        llm: Some("scripted:examples/eval/goal-answers".into()),
        model: None,
        passed: false,
        scenarios_passed: 0,
        scenarios_total: 1,
        scenarios: vec![ScenarioResult {
            name: "data".into(),
            file: "examples/eval/data.yaml".into(),
            trials: 2,
            passes: 1,
            pass_rate: 0.5,
            pass_rate_ci95: Interval { low: 0.0945, high: 0.9055 },
            passed: false,
            duration_ms: Spread { mean: 1_050.5, min: 1_000, max: 1_101 },
            cost_usd: 0.0287,
            cost_per_success_usd: Some(0.0287),
            failures: vec![FailureCount { reason: sha.into(), count: 1 }],
            runs: vec![
                Trial {
                    trial: 1,
                    passed: true,
                    exit_code: 0,
                    run_dir: Some(
                        "eval/20251125T100757Z-a1b2c3/data/1/20251125T100758Z-d4e5f6".into(),
                    ),
                    status: Some(RunStatus::Succeeded),
                    duration_ms: 1_000,
                    cost_usd: 0.0287,
                    checks: vec![
                        check("status", true, "status succeeded"),
                        check(
                            "artifact merge/merged.csv",
                            true,
                            "artifact `merge/merged.csv` present (8 bytes)",
                        ),
                    ],
                },
                Trial {
                    trial: 2,
                    passed: false,
                    exit_code: 0,
                    run_dir: Some(
                        "eval/20251125T100757Z-a1b2c3/data/2/20251125T100759Z-a7b8c9".into(),
                    ),
                    status: Some(RunStatus::Succeeded),
                    duration_ms: 1_101,
                    cost_usd: 0.0,
                    checks: vec![check("artifact merge/merged.csv", false, sha)],
                },
            ],
        }],
    };
    let value = serde_json::to_value(&report).unwrap();
    let back: EvalReport = serde_json::from_value(value.clone()).expect("round trip");
    assert_eq!(back, report, "eval.json does not round-trip");
    insta::assert_json_snapshot!("eval_report", value);

    let mut unknown = value;
    unknown["scenarios"][0]["runs"][0]["checks"][0]["note"] = "x".into();
    let err = serde_json::from_value::<EvalReport>(unknown).unwrap_err();
    assert!(err.to_string().contains("unknown field `note`"), "{err}");
}

/// `orchestra runs list --json`: one entry per run.
#[test]
fn listed_run() {
    use orchestra_proto::summary::ListedRun;
    let listed = vec![
        ListedRun {
            run_id: "20251125T100757Z-a1b2c3".into(),
            status: "succeeded".into(),
            name: Some("word-count".into()),
            duration_ms: Some(1500),
            tasks: Some(4),
            succeeded: Some(4),
            failed: Some(0),
            cost_usd: Some(0.0273),
            dir: "runs/20251125T100757Z-a1b2c3".into(),
        },
        ListedRun {
            run_id: "20251125T100758Z-d4e5f6".into(),
            status: "interrupted".into(),
            name: None,
            duration_ms: None,
            tasks: None,
            succeeded: None,
            failed: None,
            cost_usd: None,
            dir: "runs/20251125T100758Z-d4e5f6".into(),
        },
    ];
    let json = serde_json::to_value(&listed).unwrap();
    let back: Vec<ListedRun> = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back, listed);
    insta::assert_json_snapshot!("listed_runs", json);
}
