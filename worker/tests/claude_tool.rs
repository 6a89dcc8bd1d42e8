//! The `claude` tool with the REAL Claude Code CLI, pointed at a scripted Messages-API server on
//! loopback ([`MockLlm`]): tool use in the workspace, API errors, turn and budget limits, CLI
//! usage errors, and `bypassPermissions` as root. Each test has its own run directory and HOME.

use orchestra_proto::{
    AttemptResult, ClaudeSpec, Dispatch, FailureKind, Outcome, RunId, SpanId, TaskEvent, TaskId,
    TaskSpec, Tool, TraceId,
};
use orchestra_testkit::{MockLlm, Reply, claude_bin, claude_env};
use orchestra_worker::{AttemptContext, ClaudeToolConfig, run_attempt};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const TASK: &str = "t1";
/// Bound on one attempt (the task's timeout is shorter, so this only catches a hung worker).
const ATTEMPT_LIMIT: Duration = Duration::from_secs(90);

fn spec(prompt: &str) -> ClaudeSpec {
    ClaudeSpec {
        prompt: prompt.to_owned(),
        allowed_tools: Vec::new(),
        permission_mode: None,
        max_turns: None,
        max_budget_usd: None,
        model: None,
    }
}

fn dispatch(spec: ClaudeSpec, outputs: &[&str]) -> Dispatch {
    let mut task = TaskSpec::exec(TaskId::new_unchecked(TASK), "unused", &[]);
    task.tool = Tool::Claude(spec);
    task.timeout_ms = 60_000;
    task.outputs = outputs.iter().map(|o| (*o).to_owned()).collect();
    Dispatch { kill_grace_ms: 2_000, ..Dispatch::first(task) }
}

/// One test's world: a run directory, a HOME for the CLI and the scripted server.
struct Agent {
    run: tempfile::TempDir,
    _home: tempfile::TempDir,
    mock: MockLlm,
    config: ClaudeToolConfig,
}

struct Done {
    result: AttemptResult,
    events: Vec<TaskEvent>,
}

impl Done {
    fn failure(&self) -> (FailureKind, String) {
        match &self.result.outcome {
            Outcome::Failed { failure } => (failure.kind, failure.to_string()),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    fn started(&self) -> (Option<u32>, Vec<String>) {
        match self.events.first() {
            Some(TaskEvent::Started { pid, argv, .. }) => (*pid, argv.clone()),
            other => panic!("first event is not Started: {other:?}"),
        }
    }
}

impl Agent {
    async fn start(script: Vec<Reply>) -> Self {
        let mock = MockLlm::start(script).await;
        let home = tempfile::tempdir().unwrap();
        let config = ClaudeToolConfig {
            program: claude_bin(),
            env: claude_env(&mock.url(), home.path()),
            max_retries: 0,
            api_timeout_ms: 10_000,
            allow_bypass_as_root: false,
        };
        Self { run: tempfile::tempdir().unwrap(), _home: home, mock, config }
    }

    fn workspace(&self) -> PathBuf {
        self.run.path().join("work").join(TASK)
    }

    async fn attempt(&self, dispatch: &Dispatch) -> Done {
        let run_id = RunId::new_unchecked("r1");
        let trace_id = TraceId::new_unchecked("0af7651916cd43dd8448eb211c80319c");
        let span_id = SpanId::new_unchecked("b7ad6b7169203331");
        let cx = AttemptContext {
            run_dir: self.run.path(),
            run_id: &run_id,
            trace_id: &trace_id,
            span_id: &span_id,
            worker_id: "w1",
            die_with_worker: false,
            claude: &self.config,
            objects: None,
        };
        let mut events = Vec::new();
        let mut sink = |e: TaskEvent| events.push(e);
        let cancel = CancellationToken::new();
        let result =
            tokio::time::timeout(ATTEMPT_LIMIT, run_attempt(&cx, dispatch, &mut sink, &cancel))
                .await
                .expect("the attempt did not end in time");
        let started = events.iter().filter(|e| matches!(e, TaskEvent::Started { .. })).count();
        assert_eq!(started, 1, "exactly one Started: {events:?}");
        Done { result, events }
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_a_file_reads_it_back_and_the_file_is_collected() {
    let agent = Agent::start(Vec::new()).await;
    let file = agent.workspace().join("note.txt");
    let content = "written by the sub-agent";
    agent.mock.push(Reply::tool(
        "Write",
        json!({"file_path": file.to_string_lossy(), "content": content}),
    ));
    agent.mock.push(Reply::tool("Bash", json!({"command": format!("cat {}", file.display())})));
    agent.mock.push(Reply::text("done"));
    let mut s = spec("write a note, then read it back");
    s.allowed_tools = vec!["Write".into(), "Bash".into()];
    let done = agent.attempt(&dispatch(s, &["note.txt"])).await;

    assert_eq!(done.result.outcome, Outcome::Succeeded {}, "{:?}", done.result);
    assert_eq!(read(&file), content);
    let artifacts: Vec<&str> = done.result.artifacts.iter().map(|a| a.path.as_str()).collect();
    assert_eq!(artifacts, ["note.txt"]);
    assert_eq!(done.result.artifacts[0].size, content.len() as u64);

    let requests = agent.mock.model_requests();
    assert_eq!(requests.len(), 3, "one request per turn");
    let last_user = requests[2].body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .cloned()
        .unwrap_or_default();
    let blocks = last_user["content"].as_array().cloned().unwrap_or_default();
    let tool_result = blocks
        .iter()
        .find(|b| b["type"] == "tool_result")
        .unwrap_or_else(|| panic!("no tool_result in {last_user}"));
    assert_eq!(tool_result["is_error"], json!(false), "{tool_result}");
    assert!(tool_result["content"].to_string().contains(content), "{tool_result}");

    let claude = done.result.claude.as_ref().expect("a claude report");
    assert_eq!(claude.result.as_deref(), Some("done"));
    assert_eq!(claude.turns, 3);
    assert!(claude.cost_usd > 0.0, "{claude:?}");
    assert_eq!(claude.input_tokens, 300, "{claude:?}");
    assert_eq!(claude.output_tokens, 60, "{claude:?}");
    assert!(claude.session_id.is_some(), "{claude:?}");
    assert!(claude.permission_denials.is_empty(), "{claude:?}");

    // Started shows the argv, prompt included; stdout holds the CLI's JSON result.
    let (pid, argv) = done.started();
    assert!(pid.is_some());
    assert_eq!(Path::new(&argv[0]), claude_bin());
    assert_eq!(argv.last().map(String::as_str), Some("write a note, then read it back"));
    let stdout = read(&agent.run.path().join(orchestra_proto::layout::attempt_output(
        &TaskId::new_unchecked(TASK),
        1,
        orchestra_proto::Stream::Stdout,
    )));
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["result"], "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_error_is_an_api_error_with_the_clis_message() {
    let agent = Agent::start(vec![Reply::error(500, "boom")]).await;
    let done = agent.attempt(&dispatch(spec("hello"), &[])).await;
    let (kind, text) = done.failure();
    assert_eq!(kind, FailureKind::ApiError, "{text}");
    assert!(text.contains("API Error: 500 boom"), "{text}");
    assert_eq!(done.result.exit_code, Some(1));
    assert_eq!(agent.mock.count(), 1, "no retries with max_retries 0");
    let claude = done.result.claude.as_ref().expect("a result object was parsed");
    assert!(claude.result.as_deref().is_some_and(|r| r.contains("500 boom")), "{claude:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_turn_limit_is_max_turns() {
    let agent = Agent::start(vec![
        Reply::tool("Bash", json!({"command": "echo hi"})),
        Reply::text("never asked for"),
    ])
    .await;
    let mut s = spec("say hi with bash");
    s.max_turns = Some(1);
    let done = agent.attempt(&dispatch(s, &[])).await;
    let (kind, text) = done.failure();
    assert_eq!(kind, FailureKind::MaxTurns, "{text}");
    assert!(text.contains("maximum number of turns (1)"), "{text}");
    assert_eq!(agent.mock.count(), 1, "no request after the limit");
    assert!(done.result.claude.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_is_enforced_and_the_cost_recorded() {
    let agent = Agent::start(vec![Reply::text("expensive").with_usage(1_000_000, 1_000)]).await;
    let mut s = spec("spend");
    s.max_budget_usd = Some(0.001);
    let done = agent.attempt(&dispatch(s, &[])).await;
    let (kind, text) = done.failure();
    assert_eq!(kind, FailureKind::Budget, "{text}");
    assert!(text.contains("maximum budget"), "{text}");
    let claude = done.result.claude.as_ref().expect("a claude report");
    assert!(claude.cost_usd > 0.001, "{claude:?}");
    assert_eq!(claude.input_tokens, 1_000_000, "{claude:?}");
    assert_eq!(claude.result, None, "the budget error drops the answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_as_root_needs_the_operators_allowance() {
    let mut s = spec("anything goes");
    s.permission_mode = Some("bypassPermissions".into());
    let mut d = dispatch(s, &[]);
    // A task cannot switch the sandbox on by itself.
    d.task.env.insert("IS_SANDBOX".into(), "1".into());

    let agent = Agent::start(vec![Reply::text("bypassed")]).await;
    let done = agent.attempt(&d).await;
    if is_root() {
        let (kind, text) = done.failure();
        assert_eq!(kind, FailureKind::UsageError, "{text}");
        assert!(text.contains("as root") && text.contains("allow_bypass_as_root"), "{text}");
        assert_eq!(done.started().0, None, "refused before spawning");
        assert_eq!(agent.mock.count(), 0, "nothing reached the model");
        assert!(done.result.claude.is_none());
    } else {
        assert_eq!(done.result.outcome, Outcome::Succeeded {}, "not root: nothing to refuse");
    }

    let mut agent = Agent::start(vec![Reply::text("bypassed")]).await;
    agent.config.allow_bypass_as_root = true;
    let done = agent.attempt(&d).await;
    assert_eq!(done.result.outcome, Outcome::Succeeded {}, "{:?}", done.result);
    assert_eq!(agent.mock.count(), 1);
    let claude = done.result.claude.as_ref().expect("a claude report");
    assert_eq!(claude.result.as_deref(), Some("bypassed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_usage_error_is_a_usage_error_with_the_stderr_line() {
    let agent = Agent::start(vec![Reply::text("never asked for")]).await;
    let mut s = spec("hello");
    s.permission_mode = Some("noSuchMode".into());
    let done = agent.attempt(&dispatch(s, &[])).await;
    let (kind, text) = done.failure();
    assert_eq!(kind, FailureKind::UsageError, "{text}");
    assert!(text.contains("noSuchMode"), "{text}");
    assert_eq!(done.result.exit_code, Some(1));
    assert_eq!(agent.mock.count(), 0);
    assert!(done.result.claude.is_none(), "no result object");
}

#[tokio::test]
async fn a_dry_run_shows_the_argv_without_spawning() {
    let agent = Agent::start(Vec::new()).await;
    let mut s = spec("plan only");
    s.allowed_tools = vec!["Write".into()];
    let d = Dispatch { dry_run: true, ..dispatch(s, &[]) };
    let done = agent.attempt(&d).await;
    assert_eq!(done.result.outcome, Outcome::DryRun {});
    let (pid, argv) = done.started();
    assert_eq!(pid, None);
    assert_eq!(
        argv[1..],
        ["-p", "--output-format", "json", "--allowedTools", "Write", "--", "plan only"]
    );
}

#[tokio::test]
async fn a_missing_cli_is_a_spawn_failure() {
    let mut agent = Agent::start(Vec::new()).await;
    agent.config.program = PathBuf::from("no-such-claude-xyz");
    let done = agent.attempt(&dispatch(spec("hi"), &[])).await;
    let (kind, text) = done.failure();
    assert_eq!(kind, FailureKind::Spawn, "{text}");
    assert!(text.contains("no-such-claude-xyz"), "{text}");
}
