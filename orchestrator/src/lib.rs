//! `orchestra` (L1): the CLI. Settings, the run directory, progress, logs, the report; in the
//! default embedded mode it also wires L2 and L3 in this process (`local`).
//!
//! Architecture invariant: L1 talks to L2 and L3 only through bus messages; the one exception
//! is reading the run's stored state (through the coordinator's `Store`) to write the summary.

#![forbid(unsafe_code)]

pub mod cli;
pub mod commands;
pub mod diagnostic;
pub mod eval;
pub mod exit;
pub mod llm;
pub mod local;
pub mod logging;
pub mod progress;
pub mod report;
pub mod runs;
pub mod settings;
