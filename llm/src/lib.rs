//! `orchestra-llm`: language-model backends behind one trait.
//!
//! A [`Backend`] turns a [`Request`] (system prompt, a conversation, the JSON Schema the answer
//! must follow) into an [`Answer`] (structured output when the backend produced it, the raw
//! text always, token usage and cost). Backends: `claude_code` (the Claude Code CLI in headless
//! mode), `anthropic` (Messages API over HTTP), `openai` (any OpenAI-compatible chat endpoint),
//! `scripted` (replays recorded answers; a recorder saves real ones as fixtures).
//!
//! Invariants:
//! - a backend never decides whether an answer is a *good* plan: it returns what the model said
//!   (plus usage), and errors only when there is no answer at all; `extract` and the planner in
//!   L2 judge the content;
//! - every call is bounded by [`Request::timeout`]; HTTP backends retry only transient statuses
//!   (429, 5xx, 529) and honour `retry-after`;
//! - `claude_code` is the only module here that starts a process (the planner's CLI call); the
//!   parse of the CLI's JSON result is pure and shared with the L3 `claude` tool.

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use std::time::Duration;

pub mod anthropic;
pub mod claude_code;
pub mod extract;
mod http;
pub mod openai;
pub mod scripted;

/// Who said a message of the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn user(content: impl Into<String>) -> Self {
        Self { role: Role::User, content: content.into() }
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self { role: Role::Assistant, content: content.into() }
    }
}

/// One call to a model.
#[derive(Debug, Clone)]
pub struct Request {
    pub system: String,
    /// Alternating user/assistant messages, starting and ending with a user message. Repair
    /// rounds append the model's previous answer and the errors found in it.
    pub messages: Vec<Message>,
    /// JSON Schema the answer must follow (forced through a tool / response format where the
    /// backend supports it).
    pub schema: serde_json::Value,
    /// Name of that schema as a tool or response format, e.g. `submit_plan`.
    pub schema_name: String,
    /// Model override; `None` uses the backend's configured model.
    pub model: Option<String>,
    pub max_tokens: u32,
    /// Hard limit for the whole call, retries included.
    pub timeout: Duration,
}

/// Tokens and money one call used.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// As reported by the backend (Claude Code computes it); `None` when it did not say, in
    /// which case the planner prices the tokens from its price table.
    pub cost_usd: Option<f64>,
}

/// What the model answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The answer as JSON when the backend got it as structured output (a tool call, a JSON
    /// response format, Claude Code's `structured_output`).
    pub structured: Option<serde_json::Value>,
    /// The raw answer: the text the model wrote, or the structured output serialized. Kept in
    /// the run directory as is.
    pub text: String,
    pub usage: Usage,
    /// The model that answered, when the backend says.
    pub model: Option<String>,
    pub latency: Duration,
}

/// Why a call produced no answer. The kind decides whether the planner may try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The API answered with an error (after the backend's own retries).
    Api,
    /// The call ran past its timeout.
    Timeout,
    /// Could not connect or the connection broke.
    Transport,
    /// The response could not be understood (not JSON, wrong shape).
    Malformed,
    /// The model stopped at its turn limit.
    MaxTurns,
    /// The call's own budget was exhausted.
    Budget,
    /// The model never produced structured output although it was required.
    NoStructuredOutput,
    /// The backend was invoked wrongly (bad flag, missing key, bad configuration): not worth
    /// retrying.
    Usage,
    /// Scripted answers ran out, a fixture was unreadable.
    Fixture,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api_error",
            Self::Timeout => "timeout",
            Self::Transport => "transport",
            Self::Malformed => "malformed",
            Self::MaxTurns => "max_turns",
            Self::Budget => "budget",
            Self::NoStructuredOutput => "no_structured_output",
            Self::Usage => "usage",
            Self::Fixture => "fixture",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A call that produced no usable answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct LlmError {
    pub kind: ErrorKind,
    pub message: String,
    /// HTTP status, when there was one.
    pub status: Option<u16>,
    /// Usage spent on the failed call (Claude Code reports cost even for failures).
    pub usage: Usage,
    /// Whatever the backend printed, kept for the run directory.
    pub raw: String,
}

impl LlmError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            status: None,
            usage: Usage::default(),
            raw: String::new(),
        }
    }
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }
    pub fn with_raw(mut self, raw: impl Into<String>) -> Self {
        self.raw = raw.into();
        self
    }
    pub fn with_usage(mut self, usage: Usage) -> Self {
        self.usage = usage;
        self
    }
}

/// A language model the planner can ask.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// `claude-code`, `anthropic`, `openai`, `scripted`.
    fn name(&self) -> &'static str;
    /// The configured model, part of the plan cache key.
    fn model(&self) -> Option<&str>;
    async fn complete(&self, request: &Request) -> Result<Answer, LlmError>;
}
