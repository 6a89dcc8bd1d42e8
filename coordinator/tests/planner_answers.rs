//! Golden tests of raw model answers: each answer → the plan it yields, or the problems and
//! the repair message the model would get back.

use orchestra_coordinator::plan::PlanLimits;
use orchestra_coordinator::planner::{self, draft, prompt::Prompts};
use orchestra_llm::{Answer, Usage, extract};
use orchestra_proto::{GoalRequest, RetryPolicy, TaskDefaults, ToolRules};
use std::time::Duration;

fn goal() -> GoalRequest {
    GoalRequest {
        name: "golden".into(),
        goal: "build and test".into(),
        context: vec![],
        tools: ToolRules { tools: vec!["exec".into()], programs: vec![] },
        defaults: TaskDefaults { timeout_ms: 60_000, retry: RetryPolicy::default() },
        policy_summary: String::new(),
        no_cache: false,
    }
}

/// The plan as JSON, or the problems and the repair message.
fn outcome(text: &str, goal: &GoalRequest) -> String {
    let answer = Answer {
        structured: None,
        text: text.into(),
        usage: Usage::default(),
        model: None,
        latency: Duration::ZERO,
    };
    let limits = PlanLimits { max_tasks: 100, max_depends: 100 };
    let prompts = Prompts::default();
    let (problems, extract_error) = match extract::extract_json(&answer) {
        Err(e) => (vec![], Some(e.to_string())),
        Ok(v) => match draft::to_plan(&v, goal)
            .and_then(|p| planner::check(&p, goal, &limits).map(|_| p))
        {
            Ok(plan) => return serde_json::to_string_pretty(&plan).unwrap(),
            Err(problems) => (problems, None),
        },
    };
    let problems_json = serde_json::to_string_pretty(&problems).unwrap();
    let repair = prompts.repair(&problems, extract_error.as_deref()).unwrap();
    format!("PROBLEMS {problems_json}\n--- repair message ---\n{repair}")
}

macro_rules! golden {
    ($name:ident, $text:expr) => {
        golden!($name, $text, goal());
    };
    ($name:ident, $text:expr, $goal:expr) => {
        #[test]
        fn $name() {
            insta::assert_snapshot!(stringify!($name), outcome($text, &$goal));
        }
    };
}

const CLEAN: &str = r#"{"tasks": [
  {"id": "build", "tool": "exec", "program": "cargo", "args": ["build"], "outputs": ["target/app"]},
  {"id": "test", "tool": "exec", "program": "cargo", "args": ["test"], "depends_on": ["build"], "retries": 1, "timeout_seconds": 30}
]}"#;

golden!(clean_json, CLEAN);
golden!(fenced, &format!("Here is the plan:\n\n```json\n{CLEAN}\n```\n"));
golden!(
    wrapped_in_prose,
    &format!("Sure! I split the goal into two steps. {CLEAN} Let me know if you want changes.")
);
golden!(
    truncated,
    r#"{"tasks": [{"id": "build", "tool": "exec", "program": "cargo", "args": ["bu"#
);
golden!(empty, "");
golden!(prose_only, "I would first build the project and then run the tests.");
golden!(
    wrong_schema,
    r#"{"steps": [{"name": "build", "command": "cargo build"}], "tasks": [{"id": "b", "tool": "exec", "comand": "cargo", "timeout_seconds": "10s"}]}"#
);
golden!(
    cycle,
    r#"{"tasks": [
  {"id": "a", "tool": "exec", "program": "true", "depends_on": ["c"]},
  {"id": "b", "tool": "exec", "program": "true", "depends_on": ["a"]},
  {"id": "c", "tool": "exec", "program": "true", "depends_on": ["b"]}
]}"#
);
golden!(unknown_tool, r#"{"tasks": [{"id": "fetch", "tool": "http", "program": "curl"}]}"#);
golden!(
    tool_not_allowed,
    r#"{"tasks": [{"id": "notes", "tool": "claude", "prompt": "write notes.md"}]}"#
);
golden!(
    program_not_allowed,
    r#"{"tasks": [{"id": "build", "tool": "exec", "program": "carg", "args": ["build"]}]}"#,
    GoalRequest {
        tools: ToolRules {
            tools: vec!["exec".into()],
            programs: vec!["cargo".into(), "make".into()]
        },
        ..goal()
    }
);
golden!(
    unknown_dependency,
    r#"{"tasks": [
  {"id": "build", "tool": "exec", "program": "make"},
  {"id": "test", "tool": "exec", "program": "make", "args": ["test"], "depends_on": ["biuld"]}
]}"#
);
golden!(empty_tasks, r#"{"tasks": []}"#);
golden!(
    duplicate_ids,
    r#"{"tasks": [{"id": "x", "tool": "exec", "program": "true"}, {"id": "x", "tool": "exec", "program": "false"}]}"#
);
golden!(array_not_object, r#"[{"id": "x", "tool": "exec", "program": "true"}]"#);
golden!(
    claude_task,
    r#"{"tasks": [{"id": "notes", "tool": "claude", "prompt": "Summarise README.md into notes.md", "allowed_tools": ["Read", "Write"], "max_turns": 4, "max_budget_usd": 0.2, "outputs": ["notes.md"]}]}"#,
    GoalRequest {
        tools: ToolRules { tools: vec!["exec".into(), "claude".into()], programs: vec![] },
        ..goal()
    }
);
