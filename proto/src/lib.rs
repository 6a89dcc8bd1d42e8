//! `orchestra-proto`: the one wire vocabulary of orchestra.
//!
//! Everything that leaves a process — a bus message, a stored record, `--json` output — is a
//! type from this crate. It is serde-only: no tokio, no I/O, no clock reads except in
//! [`Timestamp::now`] and the id generators, which the pure cores never call.
//!
//! Architecture invariants:
//! - every subject string is spelled in [`subjects`] and nowhere else;
//! - every message crosses the bus as bytes produced by [`codec::encode`];
//! - wire types reject unknown fields, so a version skew is a loud error, not silent data loss.

#![forbid(unsafe_code)]

pub mod codec;
pub mod envelope;
pub mod eval;
pub mod events;
pub mod failure;
pub mod ids;
pub mod layout;
pub mod llm;
pub mod plan;
pub mod state;
pub mod subjects;
pub mod summary;
pub mod time;

pub use envelope::Ctx;
pub use envelope::{Envelope, PROTOCOL_VERSION};
pub use events::{
    ArtifactRecord, AttemptResult, Control, Outcome, RunEvent, RunOutcome, RunStatus, Stream,
    TaskEvent, TaskStatus,
};
pub use failure::{Failure, FailureKind};
pub use ids::{MessageId, RunId, SpanId, TaskId, TraceId};
pub use llm::{
    CachedPlan, CallOutcome, ClaudeReport, ClaudeSpec, ContextFile, GoalRequest, LlmCall,
    PlanningReport, TaskDefaults, ToolRules,
};
pub use plan::{
    Backoff, Dispatch, ExecSpec, InputRef, Plan, PlanProblem, RetryPolicy, RunOptions, RunReply,
    RunRequest, TaskSpec, Tool,
};
pub use state::{AttemptRecord, RunRecord, TaskRecord};
pub use time::Timestamp;
