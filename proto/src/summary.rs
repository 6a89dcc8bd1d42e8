//! `summary.json`: the machine-readable outcome of a run (also `orchestra run --json`).

use crate::{ArtifactRecord, FailureKind, RunStatus, TaskId, TaskStatus, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    /// Version of this document's shape.
    pub schema_version: u32,
    pub run_id: String,
    pub trace_id: String,
    pub name: String,
    pub status: RunStatus,
    pub dry_run: bool,
    pub started_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// Wall time of the run.
    pub duration_ms: u64,
    pub totals: Totals,
    /// In plan order.
    pub tasks: Vec<TaskSummary>,
    pub artifacts: Vec<ArtifactRecord>,
    /// Failed attempts per failure class (retried ones included).
    pub failures_by_kind: BTreeMap<FailureKind, u32>,
    /// Model use: planning calls and `claude` tasks. Absent when the run used no model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<LlmTotals>,
    /// The protections an attempt of this run got from the worker, active or not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protections: Vec<Protection>,
}

/// One protection of the worker's sandbox and whether this run's attempts had it.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Protection {
    /// Stable key: `process_group`, `clean_env`, `workspace`, `timeout`, `output_cap`,
    /// `rlimits`, `landlock`, `network`.
    pub name: String,
    pub active: bool,
    /// What it does, or what is missing, in one sentence with this run's numbers.
    pub detail: String,
}

/// Every model call of a run, summed.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmTotals {
    /// Planning backend and model, when the plan came from a model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The plan came from the plan cache.
    pub plan_cached: bool,
    /// Planning calls (repair rounds included).
    pub planning_calls: u32,
    pub repair_rounds: u32,
    pub planning_latency_ms: u64,
    /// `claude` task attempts.
    pub claude_attempts: u32,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub planning_cost_usd: f64,
    pub claude_cost_usd: f64,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Totals {
    pub tasks: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub skipped: u32,
    pub cancelled: u32,
    /// Tasks not finished (an interrupted run).
    pub unfinished: u32,
    /// succeeded / tasks, 0.0–1.0.
    pub success_rate: f64,
    pub attempts: u32,
    /// Attempts beyond the first, over all tasks.
    pub retries: u32,
    /// Over the durations of every finished attempt.
    pub attempt_duration_ms: DurationStats,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DurationStats {
    pub count: u32,
    pub mean: f64,
    pub p50: u64,
    pub p95: u64,
    pub max: u64,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSummary {
    pub id: TaskId,
    pub status: TaskStatus,
    /// What runs: the program of an `exec` task, `claude` for a sub-agent.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tool: String,
    /// The plan's edges, so the DAG can be drawn from the summary alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<TaskId>,
    /// Per-attempt timeout.
    #[serde(default)]
    pub timeout_ms: u64,
    /// Why it was skipped or cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub attempts: Vec<AttemptSummary>,
    /// Sum of attempt durations.
    pub duration_ms: u64,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptSummary {
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<crate::Failure>,
    /// Relative paths of the attempt's captured output (a stream that printed nothing has no
    /// file).
    pub stdout: String,
    pub stderr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claude: Option<crate::ClaudeReport>,
}

/// One run as `orchestra runs list --json` prints it.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListedRun {
    pub run_id: String,
    /// `succeeded`, `failed`, `cancelled`, `running`, `interrupted` or `planned`.
    pub status: String,
    pub name: Option<String>,
    pub duration_ms: Option<u64>,
    pub tasks: Option<u32>,
    pub succeeded: Option<u32>,
    pub failed: Option<u32>,
    /// Money spent on models (planning and `claude` tasks), when the run used any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    pub dir: String,
}
