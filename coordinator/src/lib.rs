//! `orchestra-coordinator` (L2): turns a plan into a checked DAG, schedules attempts, retries,
//! skips, cancels, and owns the durable run state.
//!
//! - `plan` (pure): validation of a plan, every problem at once.
//! - `planner`: a goal → a plan through an `orchestra-llm` backend (prompt, extract, check,
//!   repair rounds, budgets, plan cache); its pure steps are `planner::draft` and
//!   `planner::prompt`.
//! - `sched` (pure): the scheduler state machine; time is an input, effects are the output.
//! - `store`: the typed sled store — the only place that opens sled.
//! - `service`: the only awaiting loop; feeds the scheduler and applies its effects
//!   (write + commit before publish).
//!
//! Architecture invariant: `plan` and `sched` do no I/O and read no clock.

#![forbid(unsafe_code)]

pub mod plan;
pub mod planner;
pub mod sched;
pub mod service;
pub mod store;
