//! Failures as data: what crosses the bus when something goes wrong.

use serde::{Deserialize, Serialize};

/// The class of a failure; decides retries and groups errors in the report.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The program could not be started (not found, not executable, bad working directory).
    Spawn,
    /// The program exited with a non-zero code.
    ExitCode,
    /// The program was killed by a signal it did not ask for.
    Signal,
    /// The attempt ran past its timeout; its process group was ended.
    Timeout,
    /// The program wrote more than the output cap; it was ended.
    OutputLimit,
    /// Declared outputs were missing or could not be collected.
    Artifact,
    /// The task was not allowed to run.
    Policy,
    /// The run was cancelled while the attempt ran.
    Cancelled,
    /// A model API answered with an error (a `claude` task or planning).
    ApiError,
    /// A `claude` task stopped at its turn limit.
    MaxTurns,
    /// A money cap was reached: the task's own or the run's.
    Budget,
    /// A tool was invoked wrongly (bad flag, refused mode, missing key): retrying cannot help.
    UsageError,
    /// A bug or an environment problem inside orchestra itself.
    Internal,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spawn => "spawn",
            Self::ExitCode => "exit_code",
            Self::Signal => "signal",
            Self::Timeout => "timeout",
            Self::OutputLimit => "output_limit",
            Self::Artifact => "artifact",
            Self::Policy => "policy",
            Self::Cancelled => "cancelled",
            Self::ApiError => "api_error",
            Self::MaxTurns => "max_turns",
            Self::Budget => "budget",
            Self::UsageError => "usage_error",
            Self::Internal => "internal",
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure with its cause chain, outermost first.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), chain: Vec::new(), exit_code: None, signal: None }
    }

    /// Builds a failure from an error and its `source()` chain.
    pub fn from_error(kind: FailureKind, err: &(dyn std::error::Error + 'static)) -> Self {
        let mut chain = Vec::new();
        let mut cur = err.source();
        while let Some(e) = cur {
            chain.push(e.to_string());
            cur = e.source();
        }
        Self { chain, ..Self::new(kind, err.to_string()) }
    }

    pub fn with_exit_code(mut self, code: i32) -> Self {
        self.exit_code = Some(code);
        self
    }

    pub fn with_signal(mut self, signal: i32) -> Self {
        self.signal = Some(signal);
        self
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)?;
        for c in &self.chain {
            write!(f, ": {c}")?;
        }
        Ok(())
    }
}
