//! Durable run state as the coordinator stores it (and as `orchestra runs` reads it).

use crate::{
    ArtifactRecord, Failure, Plan, RunId, RunOptions, RunStatus, TaskId, TaskStatus, Timestamp,
    TraceId,
};
use serde::{Deserialize, Serialize};

/// One run: its plan and options never change after acceptance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRecord {
    pub run_id: RunId,
    pub trace_id: TraceId,
    pub status: RunStatus,
    pub plan: Plan,
    pub options: RunOptions,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// Seed of the scheduler's jitter, so a resumed run makes the same choices.
    pub seed: u64,
    /// How the plan was made, when a model made it (a resumed run never asks again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planning: Option<crate::PlanningReport>,
}

/// One task of a run and every attempt made at it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRecord {
    pub task_id: TaskId,
    pub status: TaskStatus,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<AttemptRecord>,
    /// When the next attempt may be dispatched (status `retrying`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Timestamp>,
    /// Why the task was skipped or cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Artifacts of the successful attempt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<ArtifactRecord>,
}

impl TaskRecord {
    pub fn new(task_id: TaskId) -> Self {
        Self {
            task_id,
            status: TaskStatus::Pending,
            attempts: Vec::new(),
            retry_at: None,
            reason: None,
            artifacts: Vec::new(),
        }
    }

    /// The number of the latest attempt (0 before the first dispatch).
    pub fn last_attempt(&self) -> u32 {
        self.attempts.last().map_or(0, |a| a.attempt)
    }
}

/// One attempt at a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub dispatched_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Set when the attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// True once the attempt finished successfully.
    #[serde(default)]
    pub succeeded: bool,
    /// What a `claude` attempt reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claude: Option<crate::llm::ClaudeReport>,
}
