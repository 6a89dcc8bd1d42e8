//! `orchestra-worker`: L3, the stateless worker.
//!
//! It pulls a [`Dispatch`](orchestra_proto::Dispatch) from its pool's work queue, runs the tool as
//! a subprocess in the task workspace, streams output to files and task events, collects the
//! declared outputs as SHA-256-addressed artifacts, and reports one `Finished` per attempt.
//!
//! Architecture invariants:
//! - this crate, and only [`exec`] inside it, spawns processes;
//! - an attempt runs in its own process group, with a clean environment, stdin from /dev/null;
//!   when it ends (exit, timeout, cancel, output cap) no process of its group survives;
//! - nothing outside the workspace is collected as an artifact, and a staged input is used only
//!   if its size and hash match its record;
//! - the worker keeps no state between attempts beyond the files of the run directory; a
//!   delivery is acked only after its `Finished` event was published.
//!
//! Tools: `exec` (a program with arguments) and `claude` (the Claude Code CLI as a sub-agent,
//! see [`claude`]); both run through [`exec`].
//!
//! Layers: [`service`] (bus I/O) → [`attempt`] (one attempt, bus-free) → [`exec`] (the process)
//! and [`artifacts`] (file copies). `unsafe` is allowed only in the private `sandbox` module.

#![deny(unsafe_code)]

pub mod artifacts;
pub mod attempt;
pub mod claude;
pub mod exec;
pub mod orphans;
#[allow(unsafe_code)]
mod sandbox;
pub mod service;

pub use attempt::{AttemptContext, AttemptPaths, run_attempt};
pub use claude::ClaudeToolConfig;
pub use exec::{EventSink, ExecReport, ExecRequest, SpawnError, execute};
pub use service::{WorkerConfig, WorkerError, WorkerOptions, run, run_with_options};
