//! Plans and the messages that carry them: what L1 submits and what L2 dispatches to L3.
//!
//! A [`TaskSpec`] in a [`Plan`] is fully specified: defaults are resolved before submission, so a
//! worker never has to decide anything that is not written in its [`Dispatch`].

use crate::llm::{ClaudeSpec, GoalRequest, PlanningReport};
use crate::{RunStatus, TaskId, TaskStatus};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A checked-or-to-be-checked DAG of tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal: Option<String>,
    pub tasks: Vec<TaskSpec>,
}

/// One task of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub id: TaskId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub tool: Tool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<TaskId>,
    /// Variables added to the clean environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Per-attempt timeout.
    pub timeout_ms: u64,
    pub retry: RetryPolicy,
    /// Files (globs relative to the workspace) collected as artifacts after a success.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
}

impl TaskSpec {
    /// An `exec` task with no dependencies, no declared environment or outputs, a 10 minute
    /// timeout and no retries: a starting point for plans built in code (and tests).
    pub fn exec(id: TaskId, program: impl Into<String>, args: &[&str]) -> Self {
        Self {
            id,
            description: None,
            tool: Tool::Exec(ExecSpec {
                program: program.into(),
                args: args.iter().map(|a| (*a).to_owned()).collect(),
            }),
            depends_on: Vec::new(),
            env: BTreeMap::new(),
            timeout_ms: 600_000,
            retry: RetryPolicy::default(),
            outputs: Vec::new(),
        }
    }
}

impl Dispatch {
    /// Attempt 1 of a task, with a 1 MiB output cap and a 1 s kill grace.
    pub fn first(task: TaskSpec) -> Self {
        Self {
            task,
            attempt: 1,
            inputs: Vec::new(),
            output_cap_bytes: 1 << 20,
            kill_grace_ms: 1_000,
            dry_run: false,
        }
    }
}

/// The tool a task runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Tool {
    /// A program with arguments, run directly (no shell).
    Exec(ExecSpec),
    /// A Claude Code sub-agent working in the task's workspace.
    Claude(ClaudeSpec),
}

impl Tool {
    pub fn name(&self) -> &'static str {
        match self {
            Tool::Exec(_) => "exec",
            Tool::Claude(_) => "claude",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecSpec {
    pub program: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

/// When and how often a failed attempt is retried.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 = run once).
    pub max_retries: u32,
    /// Non-zero exit codes that are retried; empty means every non-zero code.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_on_exit_codes: Vec<i32>,
    pub backoff: Backoff,
}

/// Exponential backoff with jitter: `min(initial * multiplier^(n-1), max) ± jitter%`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    pub initial_ms: u64,
    pub multiplier: u32,
    pub max_ms: u64,
    /// Spread in percent (0–100) applied symmetrically around the computed delay.
    pub jitter_pct: u8,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial_ms: 500, multiplier: 2, max_ms: 30_000, jitter_pct: 20 }
    }
}

/// How a run executes, decided by L1 and fixed for the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunOptions {
    /// Attempts in flight at once.
    pub max_parallel: u32,
    /// Worker pool the tasks are queued for.
    pub pool: String,
    /// Go through every layer but spawn nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Bytes kept per output stream of one attempt; the attempt is ended past it.
    pub output_cap_bytes: u64,
    /// Time between SIGTERM and SIGKILL when an attempt is ended.
    pub kill_grace_ms: u64,
    /// Largest plan accepted.
    pub max_tasks: u32,
    /// Model calls allowed for planning this run (repair rounds included).
    #[serde(default = "default_max_llm_calls")]
    pub max_llm_calls: u32,
    /// Money the run may spend on models (planning and `claude` tasks); `None`: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
}

fn default_max_llm_calls() -> u32 {
    RunOptions::DEFAULT_MAX_LLM_CALLS
}

impl RunOptions {
    pub const DEFAULT_MAX_LLM_CALLS: u32 = 4;
}

/// L1 → L2 on [`crate::subjects::RUN_SUBMIT`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RunRequest {
    /// Check a plan and, unless `plan_only`, start running it under the envelope's run id.
    Start {
        plan: Plan,
        options: RunOptions,
        plan_only: bool,
        /// How a model made this plan, when L1 had it planned first (`--approve`) and now
        /// submits it as reviewed: recorded with the run and counted against its budget.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        planning: Option<PlanningReport>,
    },
    /// Ask the coordinator's model for a plan for this goal, check it, and unless `plan_only`
    /// run it under the envelope's run id.
    Goal { goal: GoalRequest, options: RunOptions, plan_only: bool },
    /// Continue the run of the envelope's run id from its stored state.
    Resume {},
    /// The stored state of the envelope's run id (L1 writes the summary and report from it
    /// when the coordinator runs elsewhere).
    State {},
}

/// L2 → L1, the reply to a [`RunRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RunReply {
    /// The plan is valid; the run is running (or, for `plan_only`, checked and stored).
    Accepted {
        tasks: u32,
        order: Vec<TaskId>,
        /// The plan the coordinator made, for a `Goal` request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        plan: Option<Plan>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        planning: Option<PlanningReport>,
    },
    /// A resumed run: what was already done.
    Resumed { status: RunStatus, tasks: BTreeMap<TaskId, TaskStatus> },
    /// The stored state of a run, for `RunRequest::State`.
    State { run: Box<crate::RunRecord>, tasks: Vec<crate::TaskRecord> },
    /// The plan (or request) is invalid; every problem at once.
    Rejected {
        problems: Vec<PlanProblem>,
        /// For a `Goal` request: the calls made before giving up (raw answers included).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        planning: Option<PlanningReport>,
    },
}

/// One thing wrong with a plan.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanProblem {
    /// Stable machine-readable code: `duplicate_id`, `unknown_dependency`, `cycle`, …
    pub code: String,
    /// Where: a field path such as `tasks[2].depends_on[0]`.
    pub path: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// An artifact of a dependency, staged into a task's workspace before it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputRef {
    pub task: TaskId,
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// L2 → L3 on the pool's work queue: one attempt of one task, fully specified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dispatch {
    pub task: TaskSpec,
    /// 1-based attempt number; results of other attempts are fenced out.
    pub attempt: u32,
    /// Artifacts of the task's dependencies, staged under `inputs/<task>/<path>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<InputRef>,
    pub output_cap_bytes: u64,
    pub kill_grace_ms: u64,
    #[serde(default)]
    pub dry_run: bool,
}
