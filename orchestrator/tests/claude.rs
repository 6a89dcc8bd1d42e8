//! The REAL Claude Code CLI through the `orchestra` binary, pointed at a scripted Messages-API
//! server on loopback: planning with the `claude-code` backend, `claude` tasks in a run, and the
//! run's money budget. Every call stays on 127.0.0.1; each test has its own HOME.
#![allow(clippy::disallowed_methods)] // tests run the real binary

mod common;

use common::{LocalLlm, Ran, bin, config_file, json_file, model_plan, read, run_within, write};
use orchestra_testkit::{Reply, claude_bin, claude_env};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bound on one `orchestra` invocation (a CLI call to the mock takes about a second).
const LIMIT: Duration = Duration::from_secs(90);

/// One test's world: a working directory, a HOME for the CLI and the scripted server.
struct World {
    cwd: tempfile::TempDir,
    home: tempfile::TempDir,
    mock: LocalLlm,
}

impl World {
    fn start(script: Vec<Reply>) -> Self {
        Self {
            cwd: tempfile::tempdir().unwrap(),
            home: tempfile::tempdir().unwrap(),
            mock: LocalLlm::start(script),
        }
    }

    fn cwd(&self) -> &Path {
        self.cwd.path()
    }

    /// A config with both the planner and the `claude` tool on the pinned CLI, no retries,
    /// `settings` merged over it.
    fn config(&self, settings: Value) -> PathBuf {
        let program = claude_bin();
        let mut config = json!({
            "llm": {
                "backend": "claude-code",
                "call_timeout": "60s",
                "claude_code": {"program": program, "max_retries": 0, "api_timeout": "20s"},
            },
            "claude_tool": {"program": program, "max_retries": 0, "api_timeout": "20s"},
        });
        common::merge(&mut config, settings);
        config_file(self.cwd(), config)
    }

    /// `orchestra --config CONFIG ARGS…` with only the environment that keeps the CLI on
    /// loopback; retries and timeouts come from the config.
    fn orchestra(&self, config: &Path, args: &[&str]) -> Ran {
        let mut cmd = bin();
        cmd.env_clear().env("NO_PROGRESS", "1");
        for (k, v) in claude_env(&self.mock.url(), self.home.path()) {
            if k != "CLAUDE_CODE_MAX_RETRIES" && k != "API_TIMEOUT_MS" {
                cmd.env(k, v);
            }
        }
        cmd.arg("--config").arg(config).args(args);
        run_within(cmd, self.cwd(), LIMIT)
    }
}

/// The tool names offered in a recorded Messages request.
fn tool_names(body: &Value) -> Vec<String> {
    body["tools"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["name"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn task<'a>(summary: &'a Value, id: &str) -> &'a Value {
    let tasks = summary["tasks"].as_array().unwrap();
    tasks.iter().find(|t| t["id"] == id).unwrap_or_else(|| panic!("no task {id}: {summary}"))
}

#[test]
fn planning_with_the_claude_code_backend() {
    let w = World::start(vec![Reply::structured(model_plan())]);
    let config = w.config(json!({}));
    let run = w.orchestra(&config, &["run", "--goal", "say hello into hello.txt"]);
    assert_eq!(run.code(), 0, "{}", run.both());
    assert!(run.stderr().contains("planned by claude-code"), "{}", run.both());
    let dir = run.run_dir();
    assert_eq!(read(&dir.join("artifacts/hello/hello.txt")), "hello from the plan\n");

    let requests = w.mock.requests();
    assert_eq!(requests.len(), 1, "one call, nothing else: {requests:?}");
    assert!(requests[0].path.starts_with("/v1/messages"), "{}", requests[0].path);
    assert!(tool_names(&requests[0].body).contains(&"StructuredOutput".to_owned()));

    let s = json_file(&dir.join("summary.json"));
    let llm = &s["llm"];
    assert_eq!(llm["backend"], "claude-code");
    assert_eq!(llm["planning_calls"], 1);
    assert!(llm["planning_cost_usd"].as_f64().unwrap() > 0.0, "the CLI prices the call: {llm}");
    assert!(llm["cost_usd"].as_f64().unwrap() > 0.0, "{llm}");
    let planning = json_file(&dir.join("llm/planning.json"));
    assert_eq!(planning["calls"][0]["cost_reported"], true, "{planning}");
}

#[test]
fn prose_without_a_plan_is_refused() {
    let w = World::start(vec![
        Reply::text("I would start by reading the file, then count the words."),
        Reply::text("As I said: read it, then count."),
    ]);
    let config = w.config(json!({"llm": {"max_repair_rounds": 0}}));
    let run = w.orchestra(&config, &["run", "--goal", "count the words"]);
    assert_eq!(run.code(), 2, "{}", run.both());
    let err = run.stderr();
    assert!(err.contains("still invalid after 1 call"), "{err}");
    assert!(err.contains("the answer contains no JSON object"), "{err}");
    assert!(err.contains("As I said"), "the answer is quoted: {err}");
    // The CLI nudges the model once towards the structured output tool; nothing more.
    assert_eq!(w.mock.count(), 2);
    let kept = common::only_run(&w.cwd().join("runs"));
    assert_eq!(read(&kept.join("llm/call-1.answer.txt")), "As I said: read it, then count.");
}

#[test]
fn a_claude_task_writes_a_file_that_becomes_an_artifact() {
    let content = "# Notes\nwritten by the sub-agent\n";
    let w = World::start(vec![
        Reply::tool("Write", json!({"file_path": "notes.md", "content": content})),
        Reply::tool("Bash", json!({"command": "cat notes.md"})),
        Reply::text("done"),
    ]);
    let config = w.config(json!({}));
    let scenario = write(
        w.cwd(),
        "notes.yaml",
        r#"name: notes
defaults:
  timeout: 60s
tasks:
  - id: note
    claude:
      prompt: write notes.md, then read it back
      allowed_tools: [Write, Bash]
    outputs: [notes.md]
"#,
    );
    let run = w.orchestra(&config, &["run", scenario.to_str().unwrap()]);
    assert_eq!(run.code(), 0, "{}", run.both());
    let dir = run.run_dir();
    assert_eq!(read(&dir.join("artifacts/note/notes.md")), content);

    let requests = w.mock.model_requests();
    assert_eq!(requests.len(), 3, "one request per turn");
    let last = requests[2].body["messages"].to_string();
    assert!(last.contains("written by the sub-agent"), "Bash read the file back: {last}");

    let s = json_file(&dir.join("summary.json"));
    let attempt = &task(&s, "note")["attempts"][0];
    let claude = &attempt["claude"];
    assert_eq!(claude["turns"], 3, "{claude}");
    assert_eq!(claude["result"], "done", "{claude}");
    assert!(claude["cost_usd"].as_f64().unwrap() > 0.0, "{claude}");
    let llm = &s["llm"];
    assert_eq!(llm["claude_attempts"], 1, "{llm}");
    assert_eq!(llm["planning_calls"], 0, "{llm}");
    assert!(llm.get("backend").is_none(), "no planning: {llm}");
    assert!(llm["claude_cost_usd"].as_f64().unwrap() > 0.0, "{llm}");
    let report = read(&dir.join("report.md"));
    assert!(report.contains("## Model use"), "{report}");
}

#[test]
fn the_run_budget_stops_claude_tasks() {
    let w = World::start(vec![Reply::text("spent"), Reply::text("never asked for")]);
    let config = w.config(json!({"limits": {"max_cost_usd": 0.000001}}));
    let scenario = write(
        w.cwd(),
        "chain.yaml",
        r#"name: chain
defaults:
  timeout: 60s
tasks:
  - id: first
    claude: {prompt: say something}
  - id: second
    depends_on: [first]
    claude: {prompt: say more}
"#,
    );
    let run = w.orchestra(&config, &["run", scenario.to_str().unwrap()]);
    assert_eq!(run.code(), 1, "{}", run.both());
    let s = json_file(&run.run_dir().join("summary.json"));
    assert_eq!(s["status"], "failed");
    let first = task(&s, "first");
    assert_eq!(first["status"], "failed");
    assert_eq!(first["attempts"][0]["failure"]["kind"], "budget", "{first}");
    assert_eq!(task(&s, "second")["status"], "skipped");
    assert_eq!(s["failures_by_kind"], json!({"budget": 1}));
    assert_eq!(w.mock.count(), 1, "the second task never reached the model");
    // The CLI was granted the run's whole budget, no more, and enforced it.
    let message = first["attempts"][0]["failure"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("Reached maximum budget ($0.000001)"), "{first}");
    assert!(run.stderr().contains("skipped   second: dependency `first` failed"), "{}", run.both());
    assert!(s["llm"]["claude_cost_usd"].as_f64().unwrap() > 0.000001, "{}", s["llm"]);
}
