//! `eval.json`: the machine-readable outcome of `orchestra eval` (also `orchestra eval --json`):
//! every scenario, every trial, every check.

use crate::{RunStatus, Timestamp};
use serde::{Deserialize, Serialize};

/// Version of the shape of [`EvalReport`].
pub const SCHEMA_VERSION: u32 = 1;

/// One eval: every scenario, run `repeat` times, and the checks of every run.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalReport {
    /// Version of this document's shape ([`SCHEMA_VERSION`]).
    pub schema_version: u32,
    /// Names the eval's directory, such as `20261125T100757Z-a1b2c3`.
    pub eval_id: String,
    pub started_at: Timestamp,
    /// Wall time of the whole eval.
    pub duration_ms: u64,
    /// Trials per scenario.
    pub repeat: u32,
    /// The `--llm` choice, when given, such as `scripted:examples/eval/goal-answers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<String>,
    /// The `--model` choice, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Every scenario passed every trial.
    pub passed: bool,
    /// Scenarios that passed every trial.
    pub scenarios_passed: u32,
    pub scenarios_total: u32,
    /// In the order they ran (files sorted by name within a directory).
    pub scenarios: Vec<ScenarioResult>,
}

/// One scenario over all its trials.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioResult {
    /// The scenario's `name`; also its directory in the eval.
    pub name: String,
    /// The scenario file, as found.
    pub file: String,
    /// Trials run (fewer than `repeat` when the eval was interrupted).
    pub trials: u32,
    /// Trials whose every check passed.
    pub passes: u32,
    /// passes / trials, 0.0–1.0.
    pub pass_rate: f64,
    /// 95% Wilson score interval of the pass rate.
    pub pass_rate_ci95: Interval,
    /// Every trial passed.
    pub passed: bool,
    /// Over the trials' run durations.
    pub duration_ms: Spread,
    /// Model spending of all trials, in USD.
    pub cost_usd: f64,
    /// cost_usd / passes; `null` when no trial passed.
    pub cost_per_success_usd: Option<f64>,
    /// The reasons of failed checks, each once with how many times it occurred, most frequent
    /// first.
    pub failures: Vec<FailureCount>,
    /// Every trial, in order.
    pub runs: Vec<Trial>,
}

/// A closed interval of rates, 0.0–1.0.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

/// Mean, least and greatest of some durations in milliseconds; zeros for none.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spread {
    /// Rounded to a tenth of a millisecond.
    pub mean: f64,
    pub min: u64,
    pub max: u64,
}

/// A reason some checks failed for, and how often.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureCount {
    /// The failed checks' `detail`.
    pub reason: String,
    pub count: u32,
}

/// One run of a scenario and its checks.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trial {
    /// 1-based.
    pub trial: u32,
    /// The run left a summary and every check passed.
    pub passed: bool,
    /// What `orchestra run` would have exited with.
    pub exit_code: u8,
    /// The run directory, when the run left one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_dir: Option<String>,
    /// The run's final status; absent when the run wrote no summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
    /// The run's wall time (the trial's, when no run started).
    pub duration_ms: u64,
    /// Model spending of the run, in USD.
    pub cost_usd: f64,
    /// One per expectation, or one failed `run` check when the run wrote no summary.
    pub checks: Vec<Check>,
}

/// One expectation of one trial.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// What is checked: `run`, `status`, `task <id>`, `artifact <task/path>`, `max_duration`,
    /// `max_cost_usd`.
    pub check: String,
    pub passed: bool,
    /// What was found, in one line; for a failure, why it failed.
    pub detail: String,
}
