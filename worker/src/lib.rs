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
//!   delivery is acked only after its `Finished` event was published;
//! - in remote mode (a private run directory), an attempt's artifacts and output files are in
//!   the object store before its `Finished` is published, and an input is fetched from there
//!   only if its size and hash match its record ([`remote`]).
//!
//! Tools: `exec` (a program with arguments) and `claude` (the Claude Code CLI as a sub-agent,
//! see [`claude`]); both run through [`exec`].
//!
//! Layers: [`service`] (bus I/O) → [`attempt`] (one attempt; the bus only as an object store)
//! → [`exec`] (the process) and [`artifacts`] (file copies); [`remote`] moves results through
//! the object store (also for L1: [`fetch_results`]). `unsafe` is allowed only in the private `sandbox` module.

#![deny(unsafe_code)]

pub mod artifacts;
pub mod attempt;
pub mod claude;
pub mod exec;
pub mod orphans;
pub mod remote;
#[allow(unsafe_code)]
mod sandbox;
pub mod service;

pub use attempt::{AttemptContext, AttemptPaths, run_attempt};
pub use claude::ClaudeToolConfig;
pub use exec::{EventSink, ExecReport, ExecRequest, SpawnError, execute};
pub use remote::{DEFAULT_MAX_OBJECT_BYTES, FetchReport, RemoteError, fetch_results};
pub use service::{WorkerConfig, WorkerError, WorkerOptions, run, run_with_options};
