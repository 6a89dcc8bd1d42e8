//! `orchestra` (L1): the CLI. Settings, the run directory, progress, logs, the report; in the
//! default embedded mode it also wires L2 and L3 in this process (`local`). In the distributed
//! mode (`run --nats`, `attach`: `remote`) they are other processes on NATS, started with
//! `orchestra agent coordinator|worker` (`agent`, also the `orchestra-coordinator` and
//! `orchestra-worker` binaries).
//!
//! Architecture invariant: L1 talks to L2 and L3 only through bus messages; the one exception
//! is reading the run's stored state (through the coordinator's `Store`) to write the summary
//! in embedded mode (over NATS it asks the coordinator with `RunRequest::State`).

#![forbid(unsafe_code)]

pub mod agent;
pub mod cli;
pub mod commands;
pub mod diagnostic;
pub mod eval;
pub mod exit;
pub mod llm;
pub mod local;
pub mod logging;
pub mod progress;
pub mod remote;
pub mod report;
pub mod runs;
pub mod settings;
