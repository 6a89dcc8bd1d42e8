//! The envelope every bus message travels in.

use crate::{MessageId, RunId, SpanId, TaskId, Timestamp, TraceId};
use serde::{Deserialize, Serialize};

/// Bumped on any incompatible wire change; receivers reject other versions.
pub const PROTOCOL_VERSION: u32 = 1;

/// A message with its routing and tracing context.
///
/// `task_id` and `attempt` are set on every task-scoped message (dispatches and task events),
/// so any process can log it with the full context without decoding the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope<T> {
    /// Protocol version, [`PROTOCOL_VERSION`].
    pub v: u32,
    /// Unique id of this message.
    pub id: MessageId,
    pub run_id: RunId,
    /// W3C trace id shared by every message and log line of the run.
    pub trace_id: TraceId,
    /// The span that caused this message (W3C parent id), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<SpanId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<TaskId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    pub sent_at: Timestamp,
    pub body: T,
}

/// The tracing context a message is sent in; cheap to clone and pass around.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ctx {
    pub run_id: RunId,
    pub trace_id: TraceId,
    pub parent_id: Option<SpanId>,
    pub task_id: Option<TaskId>,
    pub attempt: Option<u32>,
}

impl Ctx {
    pub fn run(run_id: RunId, trace_id: TraceId) -> Self {
        Self { run_id, trace_id, parent_id: None, task_id: None, attempt: None }
    }

    pub fn task(&self, task_id: TaskId, attempt: u32) -> Self {
        Self { task_id: Some(task_id), attempt: Some(attempt), ..self.clone() }
    }

    pub fn with_parent(mut self, parent: SpanId) -> Self {
        self.parent_id = Some(parent);
        self
    }

    /// Wraps a body, stamping a fresh message id and `sent_at`.
    pub fn envelope<T>(&self, sent_at: Timestamp, body: T) -> Envelope<T> {
        Envelope {
            v: PROTOCOL_VERSION,
            id: MessageId::generate(),
            run_id: self.run_id.clone(),
            trace_id: self.trace_id.clone(),
            parent_id: self.parent_id.clone(),
            task_id: self.task_id.clone(),
            attempt: self.attempt,
            sent_at,
            body,
        }
    }
}

impl<T> Envelope<T> {
    pub fn ctx(&self) -> Ctx {
        Ctx {
            run_id: self.run_id.clone(),
            trace_id: self.trace_id.clone(),
            parent_id: self.parent_id.clone(),
            task_id: self.task_id.clone(),
            attempt: self.attempt,
        }
    }
}
