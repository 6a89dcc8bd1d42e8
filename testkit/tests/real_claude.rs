//! The mock against the real Claude Code CLI (pinned, installed by `scripts/install-claude-code`):
//! each test runs `claude -p --output-format json` with a fresh HOME and an environment that
//! keeps all traffic on loopback, and checks the CLI's result object.

// The test spawns the CLI itself; clippy.toml reserves spawning for the worker's executor.
#![allow(clippy::disallowed_methods)]

use orchestra_testkit::{MockLlm, Reply, claude_bin, claude_env};
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::Duration;

/// Flags that keep the request small: no tools, minimal mode, a one-word system prompt.
const SMALL: [&str; 5] = ["--bare", "--system-prompt", "x", "--tools", ""];

struct Run {
    code: Option<i32>,
    result: Value,
    stderr: String,
}

async fn claude(mock: &MockLlm, args: &[&str]) -> Run {
    let home = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let child = tokio::process::Command::new(claude_bin())
        .args(["-p", "say something", "--output-format", "json"])
        .args(args)
        .env_clear()
        .envs(claude_env(&mock.url(), home.path()))
        .current_dir(cwd.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn claude");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("claude ran past 60 s")
        .expect("wait for claude");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let result = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("stdout is not one JSON object ({e}): {stdout}\nstderr: {stderr}")
    });
    Run { code: out.status.code(), result, stderr }
}

fn with_small(extra: &[&'static str]) -> Vec<&'static str> {
    SMALL.iter().chain(extra).copied().collect()
}

#[tokio::test]
async fn text_answer_is_the_result() {
    let mock = MockLlm::start(vec![Reply::text("hello from the mock")]).await;
    let run = claude(&mock, &SMALL).await;
    let r = &run.result;
    assert_eq!(run.code, Some(0), "{r}\n{}", run.stderr);
    assert_eq!(
        (r["is_error"].clone(), r["result"].clone()),
        (json!(false), json!("hello from the mock"))
    );
    assert_eq!(r["terminal_reason"], "completed");
    assert_eq!(mock.count(), 1);
    let requests = mock.requests();
    assert_eq!(
        requests.len(),
        1,
        "no side traffic expected: {:?}",
        requests.iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    let req = &requests[0];
    assert_eq!(req.path, "/v1/messages?beta=true");
    assert_eq!(req.header("x-api-key"), Some("dummy"));
    assert_eq!(req.body["stream"], true, "the CLI streams; the mock answered SSE");
}

#[tokio::test]
async fn structured_reply_is_the_structured_output() {
    let plan = json!({"tasks": [{"id": "build", "run": "make"}]});
    let mock = MockLlm::start(vec![Reply::structured(plan.clone())]).await;
    let schema =
        r#"{"type":"object","properties":{"tasks":{"type":"array"}},"required":["tasks"]}"#;
    let run = claude(&mock, &with_small(&["--json-schema", schema])).await;
    let r = &run.result;
    assert_eq!(run.code, Some(0), "{r}\n{}", run.stderr);
    assert_eq!(r["is_error"], false);
    assert_eq!(r["structured_output"], plan);
    assert_eq!(mock.count(), 1);
    let tools = &mock.requests()[0].body["tools"];
    assert!(
        tools.as_array().unwrap().iter().any(|t| t["name"] == "StructuredOutput"),
        "the CLI offers the StructuredOutput tool: {tools}"
    );
}

#[tokio::test]
async fn text_twice_under_a_schema_has_no_structured_output() {
    let mock = MockLlm::start(vec![Reply::text("first"), Reply::text("second")]).await;
    let run = claude(&mock, &with_small(&["--json-schema", r#"{"type":"object"}"#])).await;
    let r = &run.result;
    assert_eq!(run.code, Some(0), "{r}\n{}", run.stderr);
    assert_eq!(r["is_error"], false);
    assert!(r.get("structured_output").is_none(), "{r}");
    assert_eq!(r["result"], "second");
    assert_eq!(mock.count(), 2, "one nudge to call the tool, then the CLI gives up");
}

#[tokio::test]
async fn server_error_is_an_api_error() {
    let mock = MockLlm::start(vec![Reply::error(500, "boom")]).await;
    let run = claude(&mock, &SMALL).await;
    let r = &run.result;
    assert_eq!(run.code, Some(1), "{r}\n{}", run.stderr);
    assert_eq!(r["is_error"], true);
    assert_eq!(r["terminal_reason"], "api_error");
    assert_eq!(r["api_error_status"], 500);
    assert!(r["result"].as_str().unwrap().contains("boom"), "{r}");
    assert_eq!(mock.count(), 1, "CLAUDE_CODE_MAX_RETRIES=0");
}

#[tokio::test]
async fn tool_call_at_the_turn_limit_is_max_turns() {
    let mock = MockLlm::start(vec![Reply::tool("Bash", json!({"command": "echo hi"}))]).await;
    let run =
        claude(&mock, &["--bare", "--system-prompt", "x", "--tools", "Bash", "--max-turns", "1"])
            .await;
    let r = &run.result;
    assert_eq!(run.code, Some(1), "{r}\n{}", run.stderr);
    assert_eq!(r["subtype"], "error_max_turns");
    assert_eq!(r["is_error"], true);
    assert_eq!(r["terminal_reason"], "max_turns");
    assert_eq!(mock.count(), 1, "no follow-up request after the last turn");
}

#[tokio::test]
async fn big_usage_exhausts_the_budget() {
    let mock = MockLlm::start(vec![Reply::text("expensive").with_usage(1_000_000, 100_000)]).await;
    let run = claude(&mock, &with_small(&["--max-budget-usd", "0.001"])).await;
    let r = &run.result;
    assert_eq!(run.code, Some(1), "{r}\n{}", run.stderr);
    assert_eq!(r["subtype"], "error_max_budget_usd");
    assert_eq!(r["terminal_reason"], "budget_exhausted");
    assert!(r.get("result").is_none(), "{r}");
    assert!(r["total_cost_usd"].as_f64().unwrap() > 0.001, "{r}");
}

#[tokio::test]
async fn broken_stream_is_retried_without_streaming() {
    let mock = MockLlm::start(vec![Reply::malformed("not json"), Reply::text("recovered")]).await;
    let run = claude(&mock, &SMALL).await;
    let r = &run.result;
    assert_eq!(run.code, Some(0), "{r}\n{}", run.stderr);
    assert_eq!(r["result"], "recovered");
    let streams: Vec<Value> =
        mock.model_requests().iter().map(|q| q.body["stream"].clone()).collect();
    assert_eq!(streams, [json!(true), json!(false)], "the CLI falls back to a JSON request");
}
