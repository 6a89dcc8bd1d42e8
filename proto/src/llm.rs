//! Planning with a language model, as data: the goal L1 submits, the `claude` tool's spec and
//! result, and the record of every model call a plan cost.

use crate::{PlanProblem, RetryPolicy, Timestamp};
use serde::{Deserialize, Serialize};

/// A goal to plan, submitted instead of a plan (`RunRequest::Goal`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoalRequest {
    /// Name of the plan to make (the scenario's name).
    pub name: String,
    pub goal: String,
    /// Files the model may read, already bounded by L1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub context: Vec<ContextFile>,
    /// What a planned task may use; the plan is checked against it.
    pub tools: ToolRules,
    /// Defaults filled into every planned task the model left open.
    pub defaults: TaskDefaults,
    /// Plain-words summary of the policy, shown to the model so it plans inside the rules.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub policy_summary: String,
    /// Skip the plan cache (the answer is still stored in it).
    #[serde(default)]
    pub no_cache: bool,
}

/// A file given to the model as context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextFile {
    pub path: String,
    pub sha256: String,
    /// Content, possibly cut at the context limit.
    pub text: String,
    #[serde(default)]
    pub truncated: bool,
}

/// What tools a plan may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolRules {
    /// Tool kinds allowed: `exec`, `claude`.
    pub tools: Vec<String>,
    /// Programs an `exec` task may run, by name; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub programs: Vec<String>,
}

/// Defaults for the fields of a planned task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskDefaults {
    pub timeout_ms: u64,
    pub retry: RetryPolicy,
}

/// A task that is a Claude Code sub-agent, run in the task's workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaudeSpec {
    pub prompt: String,
    /// Claude tools the agent may use without asking (`--allowedTools`), e.g. `Write`,
    /// `Bash(cat:*)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_tools: Vec<String>,
    /// `default`, `acceptEdits`, `auto`, `dontAsk`, `plan` or `bypassPermissions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permission_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_budget_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// What a `claude` attempt reported, success or not.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaudeReport {
    /// The agent's final text (cut to a few KiB; the whole answer is in the attempt's stdout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    pub turns: u32,
    pub cost_usd: f64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Tools the agent asked for and was refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permission_denials: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// How planning went: every model call, its cost and what was wrong with its answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanningReport {
    /// `claude-code`, `anthropic`, `openai`, `scripted`.
    pub backend: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Version of the prompt templates (a digest of their text).
    pub prompt_version: String,
    /// The plan cache key (SHA-256 hex).
    pub cache_key: String,
    /// True when the plan came from the cache (then `calls` is empty).
    pub cached: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<LlmCall>,
}

impl PlanningReport {
    pub fn input_tokens(&self) -> u64 {
        self.calls.iter().map(|c| c.input_tokens).sum()
    }
    pub fn output_tokens(&self) -> u64 {
        self.calls.iter().map(|c| c.output_tokens).sum()
    }
    pub fn cost_usd(&self) -> f64 {
        self.calls.iter().map(|c| c.cost_usd).sum()
    }
}

/// One call to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmCall {
    /// 1-based; calls after the first are repair rounds.
    pub round: u32,
    pub started_at: Timestamp,
    pub latency_ms: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Reported by the backend, or priced from the configured table (0 when unknown).
    pub cost_usd: f64,
    /// True when `cost_usd` came from the backend rather than the price table.
    #[serde(default)]
    pub cost_reported: bool,
    /// The message sent this round (the goal prompt, or the repair request).
    pub request: String,
    /// What the model answered, verbatim (empty when the call failed).
    pub answer: String,
    pub outcome: CallOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CallOutcome {
    /// The answer was a valid plan.
    Accepted {},
    /// The answer was not a valid plan; these problems were sent back to the model.
    Invalid { problems: Vec<PlanProblem> },
    /// The call produced no answer.
    Error { class: String, message: String },
}

/// A plan a model made, kept in the plan cache (`<cache dir>/<key>.json`) so that an identical
/// request is answered without a model call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CachedPlan {
    /// SHA-256 hex over goal, context digests, tool rules, policy, defaults, prompt version,
    /// backend and model.
    pub key: String,
    pub created_at: Timestamp,
    pub backend: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub prompt_version: String,
    pub goal: String,
    pub plan: crate::Plan,
    /// Calls and money it took to make.
    pub calls: u32,
    pub cost_usd: f64,
}
