//! The `claude-code` backend driving the REAL Claude Code CLI, pointed at a local mock of the
//! Messages API (`orchestra-testkit`). Nothing leaves loopback: the backend always sets
//! `CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1` and the env sends the CLI to the mock.

use orchestra_llm::claude_code::{ClaudeCode, ClaudeCodeConfig};
use orchestra_llm::{Backend, ErrorKind, Message, Request};
use orchestra_testkit::{MockLlm, Reply, claude_bin, claude_env};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn plan_schema() -> Value {
    json!({
        "type": "object",
        "properties": {"tasks": {"type": "array", "items": {"type": "object"}}},
        "required": ["tasks"]
    })
}

fn request(messages: Vec<Message>) -> Request {
    Request {
        system: "You are the orchestra planner. Answer with a plan.".into(),
        messages,
        schema: plan_schema(),
        schema_name: "submit_plan".into(),
        model: None,
        max_tokens: 4000,
        timeout: Duration::from_secs(60),
    }
}

/// A backend on the real CLI, talking to `mock`, with a fresh HOME kept alive by the caller.
fn backend(
    mock: &MockLlm,
    home: &tempfile::TempDir,
    tune: impl FnOnce(&mut ClaudeCodeConfig),
) -> ClaudeCode {
    let mut cfg = ClaudeCodeConfig {
        program: claude_bin(),
        model: Some("orchestra-test-model".into()),
        max_retries: 0,
        api_timeout_ms: 10_000,
        env: claude_env(&mock.url(), home.path()),
        ..ClaudeCodeConfig::default()
    };
    tune(&mut cfg);
    ClaudeCode::new(cfg)
}

fn tool_names(body: &Value) -> Vec<&str> {
    body["tools"]
        .as_array()
        .map_or(vec![], |tools| tools.iter().filter_map(|t| t["name"].as_str()).collect())
}

/// The text of every user-side content block of the first message.
fn first_user_text(body: &Value) -> String {
    match &body["messages"][0]["content"] {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => {
            blocks.iter().filter_map(|b| b["text"].as_str()).collect::<Vec<_>>().join("\n")
        }
        _ => String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_plan_is_the_answer() {
    let plan = json!({"tasks": [{"id": "build", "run": ["cargo", "build"]}]});
    let mock =
        MockLlm::start(vec![Reply::structured(plan.clone()), Reply::structured(plan.clone())])
            .await;
    let home = tempfile::tempdir().unwrap();
    let claude = backend(&mock, &home, |_| {});
    assert_eq!((claude.name(), claude.model()), ("claude-code", Some("orchestra-test-model")));

    let answer =
        claude.complete(&request(vec![Message::user("goal: build the project")])).await.unwrap();
    assert_eq!(answer.structured.as_ref(), Some(&plan));
    assert_eq!(serde_json::from_str::<Value>(&answer.text).unwrap(), plan);
    assert_eq!((answer.usage.input_tokens, answer.usage.output_tokens), (100, 20));
    assert!(answer.usage.cost_usd.is_some_and(|c| c > 0.0), "{:?}", answer.usage);
    assert_eq!(answer.model.as_deref(), Some("orchestra-test-model"));

    // What went over the wire: one request, our system prompt, only the StructuredOutput tool.
    let requests = mock.model_requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let sent = &requests[0];
    assert_eq!(sent.path, "/v1/messages?beta=true");
    assert_eq!(sent.body["model"], "orchestra-test-model");
    let system = sent.body["system"].as_array().expect("system blocks");
    assert_eq!(
        system.last().unwrap()["text"],
        "You are the orchestra planner. Answer with a plan."
    );
    // The CLI also sends `DeferredToolPlaceholder` ("never call this tool", defer_loading);
    // it is not a tool the model can use.
    let callable: Vec<&str> =
        tool_names(&sent.body).into_iter().filter(|n| *n != "DeferredToolPlaceholder").collect();
    assert_eq!(callable, ["StructuredOutput"], "{}", sent.body["tools"]);
    let tools = sent.body["tools"].as_array().unwrap();
    let structured = tools.iter().find(|t| t["name"] == "StructuredOutput").unwrap();
    assert_eq!(structured["input_schema"], plan_schema(), "our schema is the tool's input schema");
    assert!(
        first_user_text(&sent.body).contains("goal: build the project"),
        "{}",
        sent.body["messages"][0]
    );
    // The CLI runs in an empty temp dir: nothing of this repository is in the request.
    let body = sent.body.to_string();
    assert!(!body.contains(env!("CARGO_MANIFEST_DIR")), "the project dir leaked into the request");

    // A repair round: the conversation is flattened into one labelled prompt.
    let repair = request(vec![
        Message::user("goal: build the project"),
        Message::assistant(r#"{"tasks": "oops"}"#),
        Message::user("tasks: expected an array"),
    ]);
    claude.complete(&repair).await.unwrap();
    let prompt = first_user_text(&mock.model_requests()[1].body);
    for part in [
        "goal: build the project",
        "## Your previous answer",
        r#"{"tasks": "oops"}"#,
        "## Problems found",
        "tasks: expected an array",
    ] {
        assert!(prompt.contains(part), "{part:?} missing from {prompt:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_twice_is_no_structured_output() {
    let mock =
        MockLlm::start(vec![Reply::text("here is my plan in prose"), Reply::text("still prose")])
            .await;
    let home = tempfile::tempdir().unwrap();
    let err = backend(&mock, &home, |_| {})
        .complete(&request(vec![Message::user("goal")]))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NoStructuredOutput, "{err}");
    assert!(err.message.contains("still prose"), "{err}");
    assert_eq!(err.raw, "still prose", "raw is the model's prose, for the planner to search");
    assert_eq!(err.usage.input_tokens, 200, "both calls are counted: {:?}", err.usage);
    assert_eq!(mock.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_error_is_api_without_retries() {
    let mock = MockLlm::start(vec![Reply::error(500, "boom")]).await;
    let home = tempfile::tempdir().unwrap();
    let err = backend(&mock, &home, |_| {})
        .complete(&request(vec![Message::user("goal")]))
        .await
        .unwrap_err();
    assert_eq!((err.kind, err.status), (ErrorKind::Api, Some(500)), "{err}");
    assert!(err.message.contains("500 boom"), "{err}");
    assert_eq!(mock.count(), 1, "CLAUDE_CODE_MAX_RETRIES=0 from the config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_call_at_the_turn_limit_is_max_turns() {
    let mock = MockLlm::start(vec![Reply::tool(
        "Bash",
        json!({"command": "echo hi", "description": "hi"}),
    )])
    .await;
    let home = tempfile::tempdir().unwrap();
    let claude = backend(&mock, &home, |cfg| cfg.max_turns = 1);
    let err = claude.complete(&request(vec![Message::user("goal")])).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::MaxTurns, "{err}");
    assert_eq!(err.message, "Reached maximum number of turns (1)");
    assert_eq!(mock.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expensive_answer_exhausts_the_budget() {
    let plan = json!({"tasks": []});
    let mock = MockLlm::start(vec![Reply::structured(plan).with_usage(50_000, 1_000)]).await;
    let home = tempfile::tempdir().unwrap();
    let claude = backend(&mock, &home, |cfg| cfg.max_budget_usd = Some(0.001));
    let err = claude.complete(&request(vec![Message::user("goal")])).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Budget, "{err}");
    assert_eq!(err.message, "Reached maximum budget ($0.001)");
    assert_eq!(err.usage.input_tokens, 50_000);
    assert!(err.usage.cost_usd.is_some_and(|c| c > 0.001), "{:?}", err.usage);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_usage_error_is_usage_with_the_stderr_line() {
    let mock = MockLlm::start(vec![]).await;
    let home = tempfile::tempdir().unwrap();
    // The CLI refuses a budget of 0 before sending anything: empty stdout, one stderr line.
    let claude = backend(&mock, &home, |cfg| cfg.max_budget_usd = Some(0.0));
    let err = claude.complete(&request(vec![Message::user("goal")])).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Usage, "{err}");
    assert!(err.message.starts_with("claude printed no result: "), "{err}");
    assert!(err.message.len() > "claude printed no result: ".len(), "{err}");
    assert_eq!(mock.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_answer_times_out_and_the_cli_is_killed() {
    let mock = MockLlm::start(vec![
        Reply::structured(json!({"tasks": []})).after(Duration::from_secs(20)),
    ])
    .await;
    let home = tempfile::tempdir().unwrap();
    let claude = backend(&mock, &home, |_| {});
    let started = Instant::now();
    let err = claude
        .complete(&Request {
            timeout: Duration::from_secs(3),
            ..request(vec![Message::user("goal")])
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn missing_program_is_usage_with_an_install_hint() {
    let mock = MockLlm::start(vec![]).await;
    let home = tempfile::tempdir().unwrap();
    let claude = backend(&mock, &home, |cfg| cfg.program = "/nonexistent/claude-not-here".into());
    let err = claude.complete(&request(vec![Message::user("goal")])).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Usage, "{err}");
    assert!(err.message.contains("`/nonexistent/claude-not-here` not found"), "{err}");
    assert!(err.message.contains("scripts/install-claude-code"), "{err}");
    assert!(err.message.contains("npm i -g @anthropic-ai/claude-code"), "{err}");
}
