//! Paths inside a run directory, relative to it. Worker and CLI agree on them through here.

use crate::{Stream, TaskId};
use std::path::PathBuf;

pub const SCENARIO: &str = "scenario.yaml";
pub const CONFIG: &str = "config.yaml";
pub const PLAN: &str = "plan.json";
pub const LOGS: &str = "logs.jsonl";
pub const SUMMARY: &str = "summary.json";
pub const REPORT: &str = "report.md";
/// The same content as `report.md`, as one self-contained page.
pub const REPORT_HTML: &str = "report.html";
pub const ARTIFACTS_DIR: &str = "artifacts";
pub const ARTIFACTS_INDEX: &str = "artifacts.json";
/// `TMPDIR` of the run's tasks.
pub const TMP_DIR: &str = "tmp";
/// The embedded run's sled store.
pub const STATE_DIR: &str = "state";

/// `tasks/<task>/<attempt>/<stdout|stderr>`
pub fn attempt_output(task: &TaskId, attempt: u32, stream: Stream) -> PathBuf {
    attempt_dir(task, attempt).join(stream.as_str())
}

/// `tasks/<task>/<attempt>`
pub fn attempt_dir(task: &TaskId, attempt: u32) -> PathBuf {
    PathBuf::from("tasks").join(task.as_str()).join(attempt.to_string())
}

/// `work/<task>`: the task's working directory, kept across its attempts.
pub fn workspace(task: &TaskId) -> PathBuf {
    PathBuf::from("work").join(task.as_str())
}

/// `artifacts/<task>/<path>`
pub fn artifact(task: &TaskId, path: &str) -> PathBuf {
    PathBuf::from(ARTIFACTS_DIR).join(task.as_str()).join(path)
}

/// Where a dependency's artifact is staged inside a workspace: `inputs/<task>/<path>`.
pub fn staged_input(task: &TaskId, path: &str) -> PathBuf {
    PathBuf::from("inputs").join(task.as_str()).join(path)
}

/// The plan's DAG as a Mermaid flowchart.
pub const PLAN_MERMAID: &str = "plan.mmd";
/// How a model made the plan: `llm/planning.json`, and per call `llm/call-<n>.request.md` and
/// `llm/call-<n>.answer.txt` (the raw answer).
pub const LLM_DIR: &str = "llm";
pub const PLANNING: &str = "llm/planning.json";

/// `llm/call-<n>.<what>`
pub fn llm_call(round: u32, what: &str) -> PathBuf {
    PathBuf::from(LLM_DIR).join(format!("call-{round}.{what}"))
}
