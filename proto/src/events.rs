//! Events: what workers report about attempts and what the coordinator reports about runs.

use crate::{Failure, TaskId, Timestamp};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// L3 → L2 and L1 on `orchestra.v1.run.<run>.task.<task>`; the envelope carries task and attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TaskEvent {
    /// The worker admitted the attempt and spawned it (or, in a dry run, would have).
    Started {
        worker_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
        argv: Vec<String>,
        started_at: Timestamp,
    },
    /// A chunk of output, in order per stream (`seq` counts chunks from 0).
    Output { stream: Stream, seq: u64, chunk: String },
    /// The stream reached the output cap; the rest was discarded and the attempt ended.
    OutputCapped { stream: Stream, limit_bytes: u64 },
    /// The attempt is still alive (sent periodically while it runs).
    Heartbeat {},
    /// The attempt is over.
    Finished(Box<AttemptResult>),
}

/// How an attempt ended, with everything the summary needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptResult {
    pub outcome: Outcome,
    pub worker_id: String,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<ArtifactRecord>,
    /// What a `claude` attempt reported (cost, turns, denials), success or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claude: Option<crate::llm::ClaudeReport>,
}

impl AttemptResult {
    pub fn duration_ms(&self) -> u64 {
        self.finished_at.since(self.started_at).as_millis() as u64
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case", deny_unknown_fields)]
pub enum Outcome {
    Succeeded {},
    Failed {
        failure: Failure,
    },
    /// Dry run: nothing was spawned; `argv` in `Started` is what would have run.
    DryRun {},
}

impl Outcome {
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Succeeded {} | Outcome::DryRun {})
    }
}

/// A collected output file, content-addressed.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactRecord {
    pub task: TaskId,
    /// Path relative to the task workspace, `/`-separated.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// The state of a task in the run.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Waiting for dependencies or a free slot.
    Pending,
    /// Handed to the work queue, not yet reported started.
    Dispatched,
    Running,
    /// Failed; another attempt is scheduled after a backoff.
    Retrying,
    Succeeded,
    Failed,
    /// Not run because a dependency failed or was skipped.
    Skipped,
    /// Not run, or ended, because the run was cancelled.
    Cancelled,
}

impl TaskStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Skipped | Self::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Dispatched => "dispatched",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Cancelled => "cancelled",
        }
    }
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Counts at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunOutcome {
    pub status: RunStatus,
    pub succeeded: u32,
    pub failed: u32,
    pub skipped: u32,
    pub cancelled: u32,
}

/// L2 → L1 on `orchestra.v1.run.<run>.events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RunEvent {
    /// An attempt was queued for a worker.
    TaskDispatched {
        task_id: TaskId,
        attempt: u32,
    },
    /// An attempt failed and another is scheduled.
    TaskRetrying {
        task_id: TaskId,
        attempt: u32,
        delay_ms: u64,
        failure: Failure,
    },
    TaskSucceeded {
        task_id: TaskId,
        attempt: u32,
    },
    /// The task failed for good (no retries left, or not retryable).
    TaskFailed {
        task_id: TaskId,
        attempt: u32,
        failure: Failure,
    },
    TaskSkipped {
        task_id: TaskId,
        reason: String,
    },
    TaskCancelled {
        task_id: TaskId,
    },
    /// A cancel was received; running attempts are being ended.
    Cancelling {
        reason: String,
    },
    /// The run is over; nothing more will be published for it.
    Finished(RunOutcome),
}

/// L1 → L2 and L3 on `orchestra.v1.run.<run>.ctl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Control {
    /// Stop the run: nothing new is dispatched, running attempts are ended.
    Cancel { reason: String },
}
