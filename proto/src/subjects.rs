//! Every subject orchestra uses, spelled once. Nothing outside this module writes `orchestra.`.
//!
//! | subject | pattern | from → to |
//! |---|---|---|
//! | [`RUN_SUBMIT`] | request/reply | L1 → L2 |
//! | `orchestra.v1.run.<run>.events` | pub/sub | L2 → L1 (run events) |
//! | `orchestra.v1.run.<run>.task.<task>` | pub/sub | L3 → L2, L1 (task events) |
//! | `orchestra.v1.run.<run>.ctl` | pub/sub | L1 → L2 and L3 (cancel) |
//! | `orchestra.v1.task.<pool>` | work queue | L2 → L3 (dispatches) |
//!
//! Object store buckets (distributed mode: results of remote workers, L3 → L3 and L1):
//! [`ARTIFACTS_BUCKET`] keyed by SHA-256 hex, [`LOGS_BUCKET`] keyed by [`log_object`].
//!
//! Run ids, task ids and pool names are restricted to `[A-Za-z0-9_-]`, so they are always a
//! single subject token.

use crate::{RunId, Stream, TaskId};

pub const PREFIX: &str = "orchestra.v1";
/// Request/reply: a [`crate::RunRequest`] answered by a [`crate::RunReply`].
pub const RUN_SUBMIT: &str = "orchestra.v1.run.submit";
/// Every subject of the work-queue stream.
pub const TASK_QUEUE_ALL: &str = "orchestra.v1.task.>";
/// Name of the work-queue stream that carries dispatches.
pub const TASK_STREAM: &str = "ORCHESTRA_TASKS";
/// The default worker pool.
pub const DEFAULT_POOL: &str = "default";

/// Object store bucket of artifacts produced by remote workers; the key is the lowercase SHA-256
/// hex of the content, so a put is idempotent and a get is verifiable.
pub const ARTIFACTS_BUCKET: &str = "orchestra-artifacts";
/// Object store bucket of remote attempts' output files, keyed by [`log_object`].
pub const LOGS_BUCKET: &str = "orchestra-logs";

/// Key of an attempt's output file in [`LOGS_BUCKET`]: `<run>/<task>/<attempt>/<stdout|stderr>`.
pub fn log_object(run: &RunId, task: &TaskId, attempt: u32, stream: Stream) -> String {
    format!("{run}/{task}/{attempt}/{}", stream.as_str())
}

/// Run events from the coordinator.
pub fn run_events(run: &RunId) -> String {
    format!("{PREFIX}.run.{run}.events")
}

/// Task events from workers, for one task.
pub fn task_events(run: &RunId, task: &TaskId) -> String {
    format!("{PREFIX}.run.{run}.task.{task}")
}

/// Task events from workers, for every task of a run.
pub fn task_events_all(run: &RunId) -> String {
    format!("{PREFIX}.run.{run}.task.*")
}

/// Everything about one run (run events and task events).
pub fn run_all(run: &RunId) -> String {
    format!("{PREFIX}.run.{run}.>")
}

/// Control messages (cancel) for one run.
pub fn run_control(run: &RunId) -> String {
    format!("{PREFIX}.run.{run}.ctl")
}

/// Control messages of every run (workers listen to all of them).
pub fn run_control_all() -> String {
    format!("{PREFIX}.run.*.ctl")
}

/// The work queue of a worker pool.
pub fn task_queue(pool: &str) -> String {
    format!("{PREFIX}.task.{pool}")
}

/// De-duplication id of a dispatch: one per (run, task, attempt).
pub fn dispatch_msg_id(run: &RunId, task: &TaskId, attempt: u32) -> String {
    format!("{run}/{task}/{attempt}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spelled_as_documented() {
        let run = RunId::new_unchecked("r1");
        let task = TaskId::new_unchecked("t1");
        assert_eq!(run_events(&run), "orchestra.v1.run.r1.events");
        assert_eq!(task_events(&run, &task), "orchestra.v1.run.r1.task.t1");
        assert_eq!(task_events_all(&run), "orchestra.v1.run.r1.task.*");
        assert_eq!(run_all(&run), "orchestra.v1.run.r1.>");
        assert_eq!(run_control(&run), "orchestra.v1.run.r1.ctl");
        assert_eq!(run_control_all(), "orchestra.v1.run.*.ctl");
        assert_eq!(task_queue(DEFAULT_POOL), "orchestra.v1.task.default");
        assert_eq!(dispatch_msg_id(&run, &task, 2), "r1/t1/2");
        assert!(RUN_SUBMIT.starts_with(PREFIX));
        assert_eq!(log_object(&run, &task, 3, Stream::Stderr), "r1/t1/3/stderr");
        assert_eq!(ARTIFACTS_BUCKET, "orchestra-artifacts");
        assert_eq!(LOGS_BUCKET, "orchestra-logs");
    }
}
