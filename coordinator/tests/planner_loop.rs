//! The planning loop against recorded answers (`orchestra_llm::scripted`): repair rounds,
//! call and cost budgets, the plan cache, backend failures.

use orchestra_coordinator::plan::PlanLimits;
use orchestra_coordinator::planner::cache::PlanCache;
use orchestra_coordinator::planner::prompt::Prompts;
use orchestra_coordinator::planner::{Planner, PlannerConfig};
use orchestra_llm::scripted::Scripted;
use orchestra_proto::{CallOutcome, GoalRequest, RetryPolicy, RunOptions, TaskDefaults, ToolRules};
use std::path::Path;
use std::sync::Arc;

const VALID: &str =
    r#"{"tasks": [{"id": "hello", "tool": "exec", "program": "echo", "args": ["hi"]}]}"#;
const CYCLE: &str = r#"{"tasks": [{"id": "a", "tool": "exec", "program": "true", "depends_on": ["b"]}, {"id": "b", "tool": "exec", "program": "true", "depends_on": ["a"]}]}"#;

fn goal() -> GoalRequest {
    GoalRequest {
        name: "loop".into(),
        goal: "say hi".into(),
        context: vec![],
        tools: ToolRules { tools: vec!["exec".into()], programs: vec![] },
        defaults: TaskDefaults { timeout_ms: 10_000, retry: RetryPolicy::default() },
        policy_summary: String::new(),
        no_cache: false,
    }
}

fn options(max_llm_calls: u32, max_cost_usd: Option<f64>) -> RunOptions {
    RunOptions {
        max_parallel: 2,
        pool: "default".into(),
        dry_run: false,
        output_cap_bytes: 1 << 20,
        kill_grace_ms: 1000,
        max_tasks: 100,
        max_llm_calls,
        max_cost_usd,
    }
}

const LIMITS: PlanLimits = PlanLimits { max_tasks: 100, max_depends: 100 };

/// Writes answers as fixture files `001.json`, `002.json`… (`text` answers with a cost).
fn fixtures(dir: &Path, answers: &[(&str, f64)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (i, (text, cost)) in answers.iter().enumerate() {
        let body = serde_json::json!({
            "text": text,
            "usage": {"input_tokens": 1000, "output_tokens": 100, "cost_usd": cost},
            "model": "scripted-model",
        });
        std::fs::write(dir.join(format!("{:03}.json", i + 1)), body.to_string()).unwrap();
    }
}

fn planner(dir: &Path, cache: Option<PlanCache>, rounds: u32) -> Planner {
    let backend = Arc::new(Scripted::open(dir).unwrap());
    let config = PlannerConfig { max_repair_rounds: rounds, ..PlannerConfig::default() };
    Planner::new(backend, Prompts::default(), cache, config)
}

#[tokio::test]
async fn a_repair_round_fixes_the_plan() {
    let tmp = tempfile::tempdir().unwrap();
    fixtures(tmp.path(), &[(CYCLE, 0.01), (VALID, 0.01)]);
    let planned =
        planner(tmp.path(), None, 2).plan(&goal(), &options(4, None), &LIMITS).await.unwrap();
    assert_eq!(planned.plan.tasks.len(), 1);
    let calls = &planned.report.calls;
    assert_eq!(calls.len(), 2);
    assert!(
        matches!(&calls[0].outcome, CallOutcome::Invalid { problems } if problems[0].code == "cycle")
    );
    assert_eq!(calls[1].outcome, CallOutcome::Accepted {});
    assert!(calls[0].request.contains("Goal: say hi"), "{}", calls[0].request);
    assert!(calls[1].request.contains("dependency cycle"), "{}", calls[1].request);
    assert!((planned.report.cost_usd() - 0.02).abs() < 1e-9);
    assert!(calls.iter().all(|c| c.cost_reported && c.input_tokens == 1000));
}

#[tokio::test]
async fn the_call_budget_stops_further_calls() {
    let tmp = tempfile::tempdir().unwrap();
    fixtures(tmp.path(), &[(CYCLE, 0.0), (CYCLE, 0.0), (CYCLE, 0.0), (VALID, 0.0)]);
    let err =
        planner(tmp.path(), None, 5).plan(&goal(), &options(2, None), &LIMITS).await.unwrap_err();
    assert_eq!(err.report.calls.len(), 2, "a third call was made");
    assert_eq!(err.problems[0].code, "llm_budget");
    assert!(err.problems[0].message.contains("2 model calls"), "{}", err.problems[0].message);
    // The last answer's problems come along, so the user sees why it did not converge.
    assert!(err.problems.iter().any(|p| p.code == "cycle"));
}

#[tokio::test]
async fn the_cost_budget_stops_further_calls() {
    let tmp = tempfile::tempdir().unwrap();
    fixtures(tmp.path(), &[(CYCLE, 0.3), (CYCLE, 0.3), (VALID, 0.3)]);
    let err = planner(tmp.path(), None, 5)
        .plan(&goal(), &options(10, Some(0.5)), &LIMITS)
        .await
        .unwrap_err();
    assert_eq!(err.report.calls.len(), 2);
    assert_eq!(err.problems[0].code, "llm_budget");
    assert!(err.problems[0].message.contains("$0.5000"), "{}", err.problems[0].message);
}

#[tokio::test]
async fn repair_rounds_are_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    fixtures(tmp.path(), &[(CYCLE, 0.0), ("no json here", 0.0), (VALID, 0.0)]);
    let err =
        planner(tmp.path(), None, 1).plan(&goal(), &options(10, None), &LIMITS).await.unwrap_err();
    assert_eq!(err.report.calls.len(), 2);
    assert_eq!(err.problems[0].code, "plan_invalid");
    assert_eq!(err.problems[1].code, "no_plan_in_answer");
    assert_eq!(err.report.calls[1].answer, "no json here", "raw answers are kept");
}

#[tokio::test]
async fn an_identical_second_request_comes_from_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let answers = tmp.path().join("answers");
    fixtures(&answers, &[(VALID, 0.01)]);
    let cache = PlanCache::new(tmp.path().join("cache"));
    let first = planner(&answers, Some(cache.clone()), 2)
        .plan(&goal(), &options(4, None), &LIMITS)
        .await
        .unwrap();
    assert!(!first.report.cached);
    // A fresh backend with the same (single) answer: any call would use it up, and a second
    // call would fail. The cache answers without calling.
    let p = planner(&answers, Some(cache.clone()), 2);
    let second = p.plan(&goal(), &options(4, None), &LIMITS).await.unwrap();
    assert!(second.report.cached);
    assert!(second.report.calls.is_empty());
    assert_eq!(second.plan, first.plan);
    assert_eq!(second.report.cache_key, first.report.cache_key);
    let listed = cache.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].calls, 1);
    // Another goal is another key; `no_cache` bypasses the lookup.
    let other = GoalRequest { goal: "say hello".into(), ..goal() };
    let third = p.plan(&other, &options(4, None), &LIMITS).await.unwrap();
    assert!(!third.report.cached);
    assert_ne!(third.report.cache_key, first.report.cache_key);
    let again = p.plan(&GoalRequest { no_cache: true, ..goal() }, &options(4, None), &LIMITS).await;
    let err = again.unwrap_err();
    assert_eq!(
        err.problems[0].code, "llm_error",
        "no_cache must ask the model: {:?}",
        err.problems
    );
}

#[tokio::test]
async fn a_backend_failure_stops_planning_with_its_message() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("001.json"),
        r#"{"error": {"kind": "usage", "message": "invalid x-api-key", "status": 401}}"#,
    )
    .unwrap();
    let err =
        planner(tmp.path(), None, 2).plan(&goal(), &options(4, None), &LIMITS).await.unwrap_err();
    assert_eq!(err.report.calls.len(), 1);
    assert_eq!(err.problems[0].code, "llm_error");
    assert!(err.problems[0].message.contains("invalid x-api-key"), "{}", err.problems[0].message);
    assert!(
        matches!(&err.report.calls[0].outcome, CallOutcome::Error { class, .. } if class == "usage")
    );
}
