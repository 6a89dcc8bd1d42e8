//! Exit codes, one meaning each.

/// Every task succeeded (or, for `--plan-only`, the plan is valid).
pub const SUCCESS: u8 = 0;
/// The run finished, and some tasks failed or were skipped.
pub const FAILED: u8 = 1;
/// Usage, config, scenario or plan errors: nothing ran.
pub const USAGE: u8 = 2;
/// orchestra itself failed (state store, disk, bus): the run state is kept for `resume`.
pub const INTERNAL: u8 = 3;
/// Interrupted (Ctrl-C): running tasks were ended, the run was marked cancelled.
pub const INTERRUPTED: u8 = 130;
