//! The Claude Code CLI in headless mode (`claude -p --output-format json`).
//!
//! Two halves. The pure half ([`Invocation::args`], [`parse_output`], [`ClaudeRun::failure`])
//! builds the command line and reads the CLI's result object; it does no I/O and is shared with
//! the L3 `claude` tool, which runs the CLI through the worker's own sandboxed executor. The
//! shell half ([`ClaudeCode`]) is the planner's backend: the only code in this crate that starts
//! a process.
//!
//! The contract followed here is the observed one in `notes/claude-code-cli.md`: success is
//! decided by `is_error`, `terminal_reason` and the exit code (API errors report
//! `subtype:"success"`), `--json-schema` may end without `structured_output`, an empty stdout
//! means a CLI usage error explained by one stderr line, and `--verbose` turns stdout into an
//! array of events.

use crate::{Answer, Backend, ErrorKind, LlmError, Message, Request, Role, Usage};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// One `claude -p` call, as data.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Invocation {
    pub prompt: String,
    pub system_prompt: Option<String>,
    pub json_schema: Option<Value>,
    pub model: Option<String>,
    pub max_turns: Option<u32>,
    pub max_budget_usd: Option<f64>,
    /// `None`: the CLI's default tool set; `Some(vec![])`: no tools at all (`--tools ""`).
    pub tools: Option<Vec<String>>,
    /// Rules for tools that run without a permission prompt (`--allowedTools`).
    pub allowed_tools: Vec<String>,
    pub permission_mode: Option<String>,
    pub no_session_persistence: bool,
}

impl Invocation {
    /// The arguments after the program name: `-p --output-format json [flags] -- <prompt>`.
    ///
    /// The prompt goes last, after `--`, so a prompt starting with `-` is never read as a flag
    /// and the variadic `--allowedTools` cannot swallow it. Never `--verbose` (it turns stdout
    /// into an array of events).
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec!["-p".into(), "--output-format".into(), "json".into()];
        let mut flag = |name: &str, value: String| {
            args.push(name.to_owned());
            args.push(value);
        };
        if let Some(system) = &self.system_prompt {
            flag("--system-prompt", system.clone());
        }
        if let Some(schema) = &self.json_schema {
            flag("--json-schema", schema.to_string());
        }
        if let Some(model) = &self.model {
            flag("--model", model.clone());
        }
        if let Some(turns) = self.max_turns {
            flag("--max-turns", turns.to_string());
        }
        if let Some(budget) = self.max_budget_usd {
            flag("--max-budget-usd", budget.to_string());
        }
        if let Some(tools) = &self.tools {
            flag("--tools", tools.join(","));
        }
        if let Some(mode) = &self.permission_mode {
            flag("--permission-mode", mode.clone());
        }
        if !self.allowed_tools.is_empty() {
            args.push("--allowedTools".into());
            args.extend(self.allowed_tools.iter().cloned());
        }
        if self.no_session_persistence {
            args.push("--no-session-persistence".into());
        }
        args.push("--".into());
        args.push(self.prompt.clone());
        args
    }
}

/// The CLI's result object. Every field is optional in the input; unknown ones are ignored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClaudeRun {
    pub is_error: bool,
    /// `success`, `error_max_turns`, `error_max_budget_usd`, ... Never decisive on its own.
    pub subtype: Option<String>,
    /// `completed`, `api_error`, `max_turns`, `budget_exhausted`,
    /// `structured_output_retry_exhausted`, ...
    pub terminal_reason: Option<String>,
    /// Text of the last assistant message (absent for the `error_*` subtypes).
    pub result: Option<String>,
    /// Present only when `--json-schema` succeeded.
    pub structured_output: Option<Value>,
    pub errors: Vec<String>,
    /// The `api_error` field (e.g. `connection_failed`), when the CLI named one.
    pub api_error: Option<String>,
    pub api_error_status: Option<u16>,
    pub session_id: Option<String>,
    pub num_turns: u32,
    pub total_cost_usd: Option<f64>,
    /// Input (including cache reads and writes) and output tokens over all models, from
    /// `modelUsage` (else `usage`); `cost_usd` = `total_cost_usd`.
    pub usage: Usage,
    /// The first model named in `modelUsage`.
    pub model: Option<String>,
    pub permission_denials: Vec<Denial>,
    pub duration_ms: Option<u64>,
}

/// A tool call the CLI refused for lack of permission (the run goes on).
#[derive(Debug, Clone, PartialEq)]
pub struct Denial {
    pub tool_name: String,
    pub tool_use_id: Option<String>,
    pub tool_input: Value,
}

/// Reads what `claude -p --output-format json` printed.
///
/// Err only when there is no result object: an empty stdout is a CLI usage error
/// ([`ErrorKind::Usage`], explained by the stderr line); anything unparsable is
/// [`ErrorKind::Malformed`]. A JSON array of events (`--verbose`) or NDJSON (`stream-json`)
/// yields its last `type:"result"` element.
pub fn parse_output(stdout: &str, stderr: &str) -> Result<ClaudeRun, LlmError> {
    let out = stdout.trim();
    if out.is_empty() {
        let line = stderr.lines().map(str::trim).find(|l| !l.is_empty());
        let message = match line {
            Some(line) => format!("claude printed no result: {line}"),
            None => "claude printed no result and nothing on stderr".to_owned(),
        };
        return Err(LlmError::new(ErrorKind::Usage, message).with_raw(stderr));
    }
    let malformed = |why: String| {
        LlmError::new(ErrorKind::Malformed, format!("unreadable claude output: {why}"))
            .with_raw(stdout)
    };
    let raw = find_result(out).map_err(malformed)?;
    let object: Value = serde_json::from_str(raw).map_err(|e| malformed(e.to_string()))?;
    Ok(ClaudeRun::from_object(&object, first_model_key(raw)))
}

/// The text of the result object: the whole output, the last result of an array of events,
/// or the last result line of NDJSON.
fn find_result(out: &str) -> Result<&str, String> {
    let parsed = |raw: &str| serde_json::from_str::<Value>(raw).ok().filter(is_result);
    match serde_json::from_str::<Value>(out) {
        Ok(Value::Array(_)) => {
            let events: Vec<&serde_json::value::RawValue> =
                serde_json::from_str(out).map_err(|e| e.to_string())?;
            let last = events.into_iter().rev().find(|raw| parsed(raw.get()).is_some());
            last.map(|raw| raw.get())
                .ok_or_else(|| "an array of events without a result event".into())
        }
        Ok(value) if is_result(&value) => Ok(out),
        Ok(other) => Err(format!("not a result object: {}", preview(&other))),
        Err(err) => out
            .lines()
            .rev()
            .map(str::trim)
            .find(|line| parsed(line).is_some())
            .ok_or_else(|| err.to_string()),
    }
}

/// An object that is a result event: `type:"result"`, or no `type` at all.
fn is_result(value: &Value) -> bool {
    value.as_object().is_some_and(|o| match o.get("type") {
        None => true,
        Some(t) => t == "result",
    })
}

fn preview(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(80) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text,
    }
}

impl ClaudeRun {
    /// Reads the fields leniently: a field with an unexpected type counts as absent.
    fn from_object(o: &Value, model: Option<String>) -> Self {
        let str_of = |key: &str| o.get(key).and_then(Value::as_str).map(str::to_owned);
        let u64_of = |v: &Value, key: &str| v.get(key).and_then(Value::as_u64).unwrap_or(0);
        let usage = o.get("usage").unwrap_or(&Value::Null);
        let total_cost_usd = o.get("total_cost_usd").and_then(Value::as_f64);
        ClaudeRun {
            is_error: o.get("is_error").and_then(Value::as_bool).unwrap_or(false),
            subtype: str_of("subtype"),
            terminal_reason: str_of("terminal_reason"),
            result: str_of("result"),
            structured_output: o.get("structured_output").filter(|v| !v.is_null()).cloned(),
            errors: o
                .get("errors")
                .and_then(Value::as_array)
                .map(|errors| {
                    errors
                        .iter()
                        .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            api_error: str_of("api_error"),
            api_error_status: o
                .get("api_error_status")
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok()),
            session_id: str_of("session_id"),
            num_turns: o
                .get("num_turns")
                .and_then(Value::as_u64)
                .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
            total_cost_usd,
            usage: match o.get("modelUsage").and_then(Value::as_object).filter(|m| !m.is_empty()) {
                // `modelUsage` is the CLI's own accounting (it matches `total_cost_usd`);
                // `usage` misses the last call of a failed run (all of it for a budget stop).
                Some(models) => Usage {
                    input_tokens: models
                        .values()
                        .map(|m| {
                            u64_of(m, "inputTokens")
                                + u64_of(m, "cacheReadInputTokens")
                                + u64_of(m, "cacheCreationInputTokens")
                        })
                        .sum(),
                    output_tokens: models.values().map(|m| u64_of(m, "outputTokens")).sum(),
                    cost_usd: total_cost_usd,
                },
                None => Usage {
                    input_tokens: u64_of(usage, "input_tokens")
                        + u64_of(usage, "cache_creation_input_tokens")
                        + u64_of(usage, "cache_read_input_tokens"),
                    output_tokens: u64_of(usage, "output_tokens"),
                    cost_usd: total_cost_usd,
                },
            },
            model,
            permission_denials: o
                .get("permission_denials")
                .and_then(Value::as_array)
                .map(|ds| ds.iter().filter_map(Denial::from_value).collect())
                .unwrap_or_default(),
            duration_ms: o.get("duration_ms").and_then(Value::as_u64),
        }
    }

    /// Whether this run failed, and how. Decided from `is_error`, `terminal_reason` and the
    /// exit code (`None`: not known), never from `subtype` alone.
    ///
    /// `max_turns` → MaxTurns, `budget_exhausted` → Budget, `structured_output_retry_exhausted`
    /// → NoStructuredOutput, `api_error` or `is_error` → Api (Transport when the CLI says the
    /// connection failed), a non-zero exit with nothing else → Api. The error carries this
    /// run's usage and cost, and `result` or the `errors` as its message.
    pub fn failure(&self, exit_code: Option<i32>) -> Option<LlmError> {
        let reason = self.terminal_reason.as_deref();
        let kind = match reason {
            Some("max_turns") => ErrorKind::MaxTurns,
            Some("budget_exhausted") => ErrorKind::Budget,
            Some("structured_output_retry_exhausted") => ErrorKind::NoStructuredOutput,
            Some("api_error") => self.api_kind(),
            // Older or newer CLIs may lack terminal_reason: with is_error set, the subtype
            // says which limit was hit.
            _ if self.is_error => match self.subtype.as_deref() {
                Some("error_max_turns") => ErrorKind::MaxTurns,
                Some("error_max_budget_usd") => ErrorKind::Budget,
                Some("error_max_structured_output_retries") => ErrorKind::NoStructuredOutput,
                _ => self.api_kind(),
            },
            _ => match exit_code {
                Some(code) if code != 0 => {
                    let message = format!(
                        "claude exited with code {code} without reporting an error{}",
                        reason.map(|r| format!(" (terminal_reason {r})")).unwrap_or_default()
                    );
                    return Some(
                        LlmError::new(ErrorKind::Api, message).with_usage(self.usage.clone()),
                    );
                }
                _ => return None,
            },
        };
        let mut error = LlmError::new(kind, self.message()).with_usage(self.usage.clone());
        error.status = self.api_error_status;
        Some(error)
    }

    fn api_kind(&self) -> ErrorKind {
        match self.api_error.as_deref() {
            Some("connection_failed") => ErrorKind::Transport,
            _ => ErrorKind::Api,
        }
    }

    /// `result`, else the `errors` joined, else a description from the result's fields.
    fn message(&self) -> String {
        if let Some(result) = self.result.as_deref().filter(|r| !r.trim().is_empty()) {
            return result.to_owned();
        }
        if !self.errors.is_empty() {
            return self.errors.join("; ");
        }
        format!(
            "claude reported an error without a message (subtype {}, terminal_reason {})",
            self.subtype.as_deref().unwrap_or("none"),
            self.terminal_reason.as_deref().unwrap_or("none")
        )
    }
}

impl Denial {
    fn from_value(v: &Value) -> Option<Self> {
        Some(Denial {
            tool_name: v.get("tool_name")?.as_str()?.to_owned(),
            tool_use_id: v.get("tool_use_id").and_then(Value::as_str).map(str::to_owned),
            tool_input: v.get("tool_input").cloned().unwrap_or(Value::Null),
        })
    }
}

/// The first key of `modelUsage` in the text (a `serde_json::Map` may sort its keys).
fn first_model_key(raw: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Outer {
        #[serde(rename = "modelUsage", default)]
        model_usage: FirstKey,
    }
    #[derive(Default)]
    struct FirstKey(Option<String>);
    impl<'de> serde::Deserialize<'de> for FirstKey {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = FirstKey;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a map")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<FirstKey, A::Error> {
                    let first = map.next_key::<String>()?;
                    if first.is_some() {
                        map.next_value::<serde::de::IgnoredAny>()?;
                        while map
                            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                            .is_some()
                        {}
                    }
                    Ok(FirstKey(first))
                }
            }
            d.deserialize_map(Visit)
        }
    }
    let outer: Outer = serde_json::from_str(raw).ok()?;
    outer.model_usage.0
}

/// Configuration of the planner's Claude Code backend.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaudeCodeConfig {
    /// The `claude` binary; a bare name is looked up on `PATH`.
    pub program: PathBuf,
    pub model: Option<String>,
    pub max_turns: u32,
    /// Passed as `CLAUDE_CODE_MAX_RETRIES` (the CLI's default of 10 costs minutes).
    pub max_retries: u32,
    /// Passed as `API_TIMEOUT_MS`.
    pub api_timeout_ms: u64,
    /// `--max-budget-usd` for each call, when set.
    pub max_budget_usd: Option<f64>,
    /// The child's whole environment besides the variables above: the child starts from an
    /// empty environment. It needs at least `PATH`, `HOME` and the credentials; see
    /// [`ClaudeCodeConfig::inherited_env`].
    pub env: Vec<(String, String)>,
}

impl Default for ClaudeCodeConfig {
    fn default() -> Self {
        Self {
            program: PathBuf::from("claude"),
            model: None,
            max_turns: 3,
            max_retries: 2,
            api_timeout_ms: 120_000,
            max_budget_usd: None,
            env: Vec::new(),
        }
    }
}

impl ClaudeCodeConfig {
    /// The variables of the current process the CLI needs: `PATH`, `HOME`, locale, temp dir,
    /// proxies, and everything starting with `ANTHROPIC_`, `CLAUDE_`, `AWS_` or `GOOGLE_`
    /// (credentials and endpoints for the API, Bedrock and Vertex).
    pub fn inherited_env() -> Vec<(String, String)> {
        const NAMES: &[&str] = &[
            "PATH",
            "HOME",
            "USER",
            "LANG",
            "LC_ALL",
            "TMPDIR",
            "XDG_CONFIG_HOME",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "NO_PROXY",
            "http_proxy",
            "https_proxy",
            "no_proxy",
        ];
        const PREFIXES: &[&str] = &["ANTHROPIC_", "CLAUDE_", "AWS_", "GOOGLE_"];
        std::env::vars()
            .filter(|(k, _)| {
                NAMES.contains(&k.as_str()) || PREFIXES.iter().any(|p| k.starts_with(p))
            })
            .collect()
    }
}

/// The planner's backend: one `claude -p` process per call, no tools, in an empty temp dir.
#[derive(Debug, Clone)]
pub struct ClaudeCode {
    cfg: ClaudeCodeConfig,
}

impl ClaudeCode {
    pub fn new(cfg: ClaudeCodeConfig) -> Self {
        Self { cfg }
    }

    /// The invocation for one planning request (pure).
    pub fn invocation(&self, request: &Request) -> Invocation {
        Invocation {
            prompt: flatten(&request.messages),
            system_prompt: Some(request.system.clone()),
            json_schema: Some(request.schema.clone()),
            model: request.model.clone().or_else(|| self.cfg.model.clone()),
            max_turns: Some(self.cfg.max_turns),
            max_budget_usd: self.cfg.max_budget_usd,
            tools: Some(Vec::new()),
            allowed_tools: Vec::new(),
            permission_mode: None,
            no_session_persistence: true,
        }
    }

    /// Runs the CLI once, bounded by `timeout`.
    // The planner's CLI call is one of the two places allowed to start a process (clippy.toml).
    #[allow(clippy::disallowed_methods)]
    async fn run(&self, args: &[String], timeout: Duration) -> Result<Output, LlmError> {
        let program = self.cfg.program.display().to_string();
        let workdir =
            tempfile::Builder::new().prefix("orchestra-claude-").tempdir().map_err(|e| {
                LlmError::new(
                    ErrorKind::Usage,
                    format!("cannot create a working dir for claude: {e}"),
                )
            })?;
        let mut cmd = tokio::process::Command::new(&self.cfg.program);
        cmd.args(args)
            .env_clear()
            .envs(self.cfg.env.iter().map(|(k, v)| (k, v)))
            .env("CLAUDE_CODE_MAX_RETRIES", self.cfg.max_retries.to_string())
            .env("API_TIMEOUT_MS", self.cfg.api_timeout_ms.to_string())
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .env("DISABLE_TELEMETRY", "1")
            .env("DISABLE_AUTOUPDATER", "1")
            .current_dir(workdir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| spawn_error(&program, &e))?;
        let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(LlmError::new(ErrorKind::Usage, "claude's output pipes are missing"));
        };
        let collect = async {
            let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
            let (status, o, e) = tokio::join!(
                child.wait(),
                out.read_to_end(&mut stdout),
                err.read_to_end(&mut stderr)
            );
            let io = |e: std::io::Error| {
                LlmError::new(ErrorKind::Transport, format!("reading from claude failed: {e}"))
            };
            o.map_err(io)?;
            e.map_err(io)?;
            Ok::<_, LlmError>(Output {
                status: status.map_err(io)?,
                stdout: String::from_utf8_lossy(&stdout).into_owned(),
                stderr: String::from_utf8_lossy(&stderr).into_owned(),
            })
        };
        let result = tokio::time::timeout(timeout, collect).await;
        match result {
            Ok(output) => output,
            Err(_) => {
                // kill_on_drop covers every other exit path; here the child is still running.
                if let Err(e) = child.kill().await {
                    tracing::warn!(error = %e, "failed to kill a timed-out claude");
                }
                Err(LlmError::new(
                    ErrorKind::Timeout,
                    format!("claude did not finish within {timeout:?}"),
                ))
            }
        }
    }
}

struct Output {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

fn spawn_error(program: &str, e: &std::io::Error) -> LlmError {
    let message = if e.kind() == std::io::ErrorKind::NotFound {
        format!(
            "claude code program `{program}` not found; install it with `scripts/install-claude-code` or `npm i -g @anthropic-ai/claude-code`"
        )
    } else {
        format!("cannot start claude code program `{program}`: {e}")
    };
    LlmError::new(ErrorKind::Usage, message)
}

/// The conversation as one prompt. A single message is passed as is; a repair conversation
/// keeps the first message and labels the later turns.
fn flatten(messages: &[Message]) -> String {
    let [first, rest @ ..] = messages else { return String::new() };
    let mut prompt = first.content.clone();
    for message in rest {
        let label = match message.role {
            Role::Assistant => "## Your previous answer",
            Role::User => "## Problems found",
        };
        prompt.push_str("\n\n");
        prompt.push_str(label);
        prompt.push_str("\n\n");
        prompt.push_str(&message.content);
    }
    prompt
}

#[async_trait::async_trait]
impl Backend for ClaudeCode {
    fn name(&self) -> &'static str {
        "claude-code"
    }

    fn model(&self) -> Option<&str> {
        self.cfg.model.as_deref()
    }

    #[tracing::instrument(skip_all, fields(backend = "claude-code"))]
    async fn complete(&self, request: &Request) -> Result<Answer, LlmError> {
        if request.messages.is_empty() {
            return Err(LlmError::new(ErrorKind::Usage, "the request has no messages"));
        }
        let started = Instant::now();
        let invocation = self.invocation(request);
        let output = self.run(&invocation.args(), request.timeout).await?;
        let latency = started.elapsed();
        let mut answer = answer_from(output.status.code(), &output.stdout, &output.stderr)?;
        answer.latency = latency;
        answer.model = answer.model.or(invocation.model);
        tracing::debug!(?latency, cost_usd = ?answer.usage.cost_usd, "claude answered");
        Ok(answer)
    }
}

/// The planner's verdict on a finished CLI run (`exit_code` `None`: killed by a signal).
/// Success requires `structured_output`; `latency` is left at zero and `model` is the one
/// the CLI reported.
fn answer_from(exit_code: Option<i32>, stdout: &str, stderr: &str) -> Result<Answer, LlmError> {
    let Some(code) = exit_code else {
        return Err(
            LlmError::new(ErrorKind::Transport, "claude was killed by a signal").with_raw(stderr)
        );
    };
    if stdout.trim().is_empty() && stderr.trim().is_empty() {
        // Not a usage error (those explain themselves on stderr): the CLI died, e.g. on
        // SIGTERM (exit 143).
        let message = format!("claude exited with code {code} and printed nothing");
        return Err(LlmError::new(ErrorKind::Transport, message));
    }
    let run = parse_output(stdout, stderr)?;
    if let Some(error) = run.failure(Some(code)) {
        return Err(error.with_raw(stdout));
    }
    let Some(structured) = run.structured_output else {
        let text = run.result.unwrap_or_default();
        let message = format!("claude answered without structured output: {text}");
        // `raw` is the model's prose: the planner may still find the plan in it (fenced or
        // inline JSON).
        return Err(LlmError::new(ErrorKind::NoStructuredOutput, message)
            .with_usage(run.usage)
            .with_raw(text));
    };
    Ok(Answer {
        text: structured.to_string(),
        structured: Some(structured),
        usage: run.usage,
        model: run.model,
        latency: Duration::ZERO,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixture(name: &str) -> String {
        let path = format!("{}/tests/fixtures/claude/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn args() {
        #[track_caller]
        fn check(inv: Invocation, expect: &[&str]) {
            assert_eq!(inv.args(), expect);
        }
        let base = Invocation { prompt: "plan it".into(), ..Invocation::default() };
        check(base.clone(), &["-p", "--output-format", "json", "--", "plan it"]);
        check(
            Invocation { prompt: "-starts with a dash".into(), ..base.clone() },
            &["-p", "--output-format", "json", "--", "-starts with a dash"],
        );
        check(
            Invocation { tools: Some(vec![]), no_session_persistence: true, ..base.clone() },
            &[
                "-p",
                "--output-format",
                "json",
                "--tools",
                "",
                "--no-session-persistence",
                "--",
                "plan it",
            ],
        );
        check(
            Invocation { tools: Some(vec!["Bash".into(), "Read".into()]), ..base.clone() },
            &["-p", "--output-format", "json", "--tools", "Bash,Read", "--", "plan it"],
        );
        check(
            Invocation {
                allowed_tools: vec!["Bash(git *)".into(), "Edit".into()],
                permission_mode: Some("acceptEdits".into()),
                ..base.clone()
            },
            &[
                "-p",
                "--output-format",
                "json",
                "--permission-mode",
                "acceptEdits",
                "--allowedTools",
                "Bash(git *)",
                "Edit",
                "--",
                "plan it",
            ],
        );
        check(
            Invocation {
                system_prompt: Some("sys".into()),
                json_schema: Some(json!({"type": "object"})),
                model: Some("sonnet".into()),
                max_turns: Some(3),
                max_budget_usd: Some(0.5),
                ..base
            },
            &[
                "-p",
                "--output-format",
                "json",
                "--system-prompt",
                "sys",
                "--json-schema",
                r#"{"type":"object"}"#,
                "--model",
                "sonnet",
                "--max-turns",
                "3",
                "--max-budget-usd",
                "0.5",
                "--",
                "plan it",
            ],
        );
    }

    #[test]
    fn parse_fields() {
        let run = parse_output(&fixture("success_text.json"), "").unwrap();
        assert_eq!(
            run,
            ClaudeRun {
                is_error: false,
                subtype: Some("success".into()),
                terminal_reason: Some("completed".into()),
                result: Some("hi there".into()),
                structured_output: None,
                errors: vec![],
                api_error: None,
                api_error_status: None,
                session_id: Some("2e3d13d0-224a-41fb-8c4c-22a6eb822314".into()),
                num_turns: 1,
                total_cost_usd: Some(0.0008),
                usage: Usage { input_tokens: 100, output_tokens: 20, cost_usd: Some(0.0008) },
                model: Some("claude-opus-5-5".into()),
                permission_denials: vec![],
                duration_ms: Some(102),
            }
        );
    }

    #[test]
    fn parse_lenient() {
        #[track_caller]
        fn check(stdout: &str, expect: ClaudeRun) {
            assert_eq!(parse_output(stdout, "").unwrap(), expect);
        }
        check("{}", ClaudeRun::default());
        check(r#"{"type":"result","whatever":[1,2]}"#, ClaudeRun::default());
        // Wrong types count as absent.
        check(
            r#"{"is_error":"yes","num_turns":-1,"api_error_status":"500","errors":"x"}"#,
            ClaudeRun::default(),
        );
        check(
            r#"{"errors":["a",{"b":1}],"api_error_status":529,"structured_output":null}"#,
            ClaudeRun {
                errors: vec!["a".into(), r#"{"b":1}"#.into()],
                api_error_status: Some(529),
                ..ClaudeRun::default()
            },
        );
        check(
            r#"{"permission_denials":[{"tool_name":"Bash","tool_use_id":"t1","tool_input":{"command":"rm x"}},{"no":"name"}]}"#,
            ClaudeRun {
                permission_denials: vec![Denial {
                    tool_name: "Bash".into(),
                    tool_use_id: Some("t1".into()),
                    tool_input: json!({"command": "rm x"}),
                }],
                ..ClaudeRun::default()
            },
        );
        check(
            r#"{"structured_output":{"tasks":[]},"result":"{\"tasks\":[]}"}"#,
            ClaudeRun {
                structured_output: Some(json!({"tasks": []})),
                result: Some(r#"{"tasks":[]}"#.into()),
                ..ClaudeRun::default()
            },
        );
        // The first model in the text, not the first in sorted order.
        check(
            r#"{"modelUsage":{"zeta-model":{"costUSD":1},"alpha-model":{}}}"#,
            ClaudeRun { model: Some("zeta-model".into()), ..ClaudeRun::default() },
        );
        check(r#"{"modelUsage":{}}"#, ClaudeRun::default());
        check(r#"{"modelUsage":null}"#, ClaudeRun::default());
        // Cache reads and writes count as input.
        check(
            r#"{"usage":{"input_tokens":10,"cache_creation_input_tokens":5,"cache_read_input_tokens":7,"output_tokens":2},"total_cost_usd":0.5}"#,
            ClaudeRun {
                usage: Usage { input_tokens: 22, output_tokens: 2, cost_usd: Some(0.5) },
                total_cost_usd: Some(0.5),
                ..ClaudeRun::default()
            },
        );
    }

    #[test]
    fn parse_errors() {
        #[track_caller]
        fn check(stdout: &str, stderr: &str, kind: ErrorKind, message: &str) {
            let err = parse_output(stdout, stderr).unwrap_err();
            assert_eq!((err.kind, err.message.as_str()), (kind, message));
        }
        check(
            "",
            "error: unknown option '--bogus-flag'\n",
            ErrorKind::Usage,
            "claude printed no result: error: unknown option '--bogus-flag'",
        );
        check(
            " \n",
            "\n  Error: Invalid session ID. Must be a valid UUID.\nmore\n",
            ErrorKind::Usage,
            "claude printed no result: Error: Invalid session ID. Must be a valid UUID.",
        );
        check("", "", ErrorKind::Usage, "claude printed no result and nothing on stderr");
        check(
            "API Error: 500 boom",
            "",
            ErrorKind::Malformed,
            "unreadable claude output: expected value at line 1 column 1",
        );
        check(
            "[1, 2]",
            "",
            ErrorKind::Malformed,
            "unreadable claude output: an array of events without a result event",
        );
        check(
            r#"{"type":"system"}"#,
            "",
            ErrorKind::Malformed,
            r#"unreadable claude output: not a result object: {"type":"system"}"#,
        );
        check("42", "", ErrorKind::Malformed, "unreadable claude output: not a result object: 42");
    }

    #[test]
    fn parse_event_streams() {
        // --verbose: a JSON array of events, the result last.
        let run = parse_output(&fixture("verbose_array_api_error.json"), "").unwrap();
        assert_eq!(run.terminal_reason.as_deref(), Some("api_error"));
        assert!(run.is_error);
        // stream-json: one event per line.
        let ndjson = "{\"type\":\"system\",\"subtype\":\"init\"}\n{\"type\":\"assistant\"}\n{\"type\":\"result\",\"result\":\"done\",\"num_turns\":2}\n";
        let run = parse_output(ndjson, "").unwrap();
        assert_eq!((run.result.as_deref(), run.num_turns), (Some("done"), 2));
    }

    #[test]
    fn failure() {
        #[track_caller]
        fn check(file: &str, exit: Option<i32>, expect: Option<(ErrorKind, Option<u16>, &str)>) {
            let run = parse_output(&fixture(file), "").unwrap();
            let got = run.failure(exit);
            if let Some(e) = &got {
                assert_eq!(e.usage, run.usage, "{file}: the error carries the run's usage");
            }
            let got = got.map(|e| (e.kind, e.status, e.message));
            assert_eq!(got, expect.map(|(k, s, m)| (k, s, m.to_owned())), "{file}");
        }
        check("success_text.json", Some(0), None);
        check("success_text.json", None, None);
        check(
            "success_text.json",
            Some(1),
            Some((
                ErrorKind::Api,
                None,
                "claude exited with code 1 without reporting an error (terminal_reason completed)",
            )),
        );
        check("success_structured.json", Some(0), None);
        check("text_without_structured_output.json", Some(0), None);
        check(
            "api_error_500.json",
            Some(1),
            Some((
                ErrorKind::Api,
                Some(500),
                "API Error: 500 boom. This is a server-side issue, usually temporary — try again in a moment. If it persists, check your inference gateway (127.0.0.1:27826).",
            )),
        );
        check(
            "api_error_refused.json",
            Some(1),
            Some((
                ErrorKind::Transport,
                None,
                "API Error: Connection refused — a firewall or proxy may be blocking it (ECONNREFUSED)",
            )),
        );
        check(
            "api_error_timeout.json",
            Some(1),
            Some((
                ErrorKind::Api,
                None,
                "Request timed out. If the API is slow to answer, or a proxy or gateway holds responses, set API_TIMEOUT_MS above 2000.",
            )),
        );
        check(
            "max_turns.json",
            Some(1),
            Some((ErrorKind::MaxTurns, None, "Reached maximum number of turns (1)")),
        );
        check(
            "budget.json",
            Some(1),
            Some((ErrorKind::Budget, None, "Reached maximum budget ($0.001)")),
        );
        check(
            "structured_retries.json",
            Some(1),
            Some((
                ErrorKind::NoStructuredOutput,
                None,
                "Failed to provide valid structured output after 5 attempts — last StructuredOutput error: Output does not match required schema: root: must have required property 'name'",
            )),
        );
    }

    #[test]
    fn usage_counts_every_call() {
        #[track_caller]
        fn check(file: &str, expect: (u64, u64, f64)) {
            let run = parse_output(&fixture(file), "").unwrap();
            let u = run.usage;
            assert_eq!(
                (u.input_tokens, u.output_tokens, u.cost_usd),
                (expect.0, expect.1, Some(expect.2)),
                "{file}"
            );
        }
        // The CLI's `usage` says 0 here: the only call was the one over budget.
        check("budget.json", (50_000, 1_000, 0.22));
        // `usage` misses the sixth call; `modelUsage` has all of them.
        check("structured_retries.json", (500, 100, 0.004));
        check("text_without_structured_output.json", (200, 40, 0.0016));
        check("api_error_500.json", (0, 0, 0.0));
    }

    #[test]
    fn failure_without_terminal_reason() {
        #[track_caller]
        fn check(json: Value, exit: Option<i32>, expect: Option<(ErrorKind, &str)>) {
            let run = parse_output(&json.to_string(), "").unwrap();
            let got = run.failure(exit).map(|e| (e.kind, e.message));
            assert_eq!(got, expect.map(|(k, m)| (k, m.to_owned())), "{json}");
        }
        check(json!({"subtype": "error_max_turns"}), Some(0), None);
        check(
            json!({"is_error": true, "subtype": "error_max_turns", "errors": ["a", "b"]}),
            Some(1),
            Some((ErrorKind::MaxTurns, "a; b")),
        );
        check(
            json!({"is_error": true, "subtype": "error_max_budget_usd"}),
            None,
            Some((
                ErrorKind::Budget,
                "claude reported an error without a message (subtype error_max_budget_usd, terminal_reason none)",
            )),
        );
        check(
            json!({"is_error": true, "subtype": "error_max_structured_output_retries", "errors": ["x"]}),
            Some(1),
            Some((ErrorKind::NoStructuredOutput, "x")),
        );
        check(
            json!({"is_error": true, "subtype": "success", "result": "API Error: 400 bad"}),
            Some(1),
            Some((ErrorKind::Api, "API Error: 400 bad")),
        );
        check(
            json!({"is_error": true, "subtype": "error_during_execution", "result": " "}),
            Some(1),
            Some((
                ErrorKind::Api,
                "claude reported an error without a message (subtype error_during_execution, terminal_reason none)",
            )),
        );
        check(
            json!({"is_error": false, "terminal_reason": "max_turns", "errors": ["m"]}),
            Some(0),
            Some((ErrorKind::MaxTurns, "m")),
        );
        check(
            json!({"result": "ok"}),
            Some(143),
            Some((ErrorKind::Api, "claude exited with code 143 without reporting an error")),
        );
    }

    #[test]
    fn verdict() {
        #[track_caller]
        fn check(
            exit: Option<i32>,
            stdout: &str,
            stderr: &str,
            expect: Result<Value, (ErrorKind, &str)>,
        ) {
            let got = answer_from(exit, stdout, stderr);
            if let Err(e) = &got
                && !matches!(e.kind, ErrorKind::Usage | ErrorKind::NoStructuredOutput)
                && !stdout.is_empty()
            {
                assert_eq!(e.raw, stdout, "raw keeps the CLI's output");
            }
            let got = got.map(|a| a.structured.unwrap()).map_err(|e| (e.kind, e.message));
            assert_eq!(got, expect.map_err(|(k, m)| (k, m.to_owned())));
        }
        check(Some(0), &fixture("success_structured.json"), "", Ok(json!({"name": "plan-a"})));
        check(
            Some(0),
            &fixture("text_without_structured_output.json"),
            "",
            Err((
                ErrorKind::NoStructuredOutput,
                "claude answered without structured output: still no json",
            )),
        );
        check(
            Some(0),
            &fixture("success_text.json"),
            "",
            Err((
                ErrorKind::NoStructuredOutput,
                "claude answered without structured output: hi there",
            )),
        );
        check(
            Some(1),
            &fixture("max_turns.json"),
            "",
            Err((ErrorKind::MaxTurns, "Reached maximum number of turns (1)")),
        );
        check(None, "", "", Err((ErrorKind::Transport, "claude was killed by a signal")));
        check(
            Some(143),
            "",
            "",
            Err((ErrorKind::Transport, "claude exited with code 143 and printed nothing")),
        );
        check(
            Some(1),
            "",
            "Error: --json-schema is not valid JSON: x\n",
            Err((
                ErrorKind::Usage,
                "claude printed no result: Error: --json-schema is not valid JSON: x",
            )),
        );
        let answer = answer_from(Some(0), &fixture("success_structured.json"), "").unwrap();
        assert_eq!(answer.text, r#"{"name":"plan-a"}"#);
        assert_eq!(answer.model.as_deref(), Some("claude-opus-5-5"));
        assert_eq!((answer.usage.input_tokens, answer.usage.output_tokens), (100, 20));
    }

    #[test]
    fn flatten_conversation() {
        #[track_caller]
        fn check(messages: &[Message], expect: &str) {
            assert_eq!(flatten(messages), expect);
        }
        check(&[], "");
        check(&[Message::user("goal")], "goal");
        check(
            &[Message::user("goal"), Message::assistant("{bad}"), Message::user("line 1: oops")],
            "goal\n\n## Your previous answer\n\n{bad}\n\n## Problems found\n\nline 1: oops",
        );
    }

    #[test]
    fn invocation_for_planning() {
        let backend = ClaudeCode::new(ClaudeCodeConfig {
            model: Some("sonnet".into()),
            ..ClaudeCodeConfig::default()
        });
        let request = Request {
            system: "you plan".into(),
            messages: vec![Message::user("goal")],
            schema: json!({"type": "object"}),
            schema_name: "submit_plan".into(),
            model: None,
            max_tokens: 4000,
            timeout: Duration::from_secs(5),
        };
        assert_eq!(
            backend.invocation(&request).args(),
            [
                "-p",
                "--output-format",
                "json",
                "--system-prompt",
                "you plan",
                "--json-schema",
                r#"{"type":"object"}"#,
                "--model",
                "sonnet",
                "--max-turns",
                "3",
                "--tools",
                "",
                "--no-session-persistence",
                "--",
                "goal",
            ]
        );
        let request = Request { model: Some("haiku".into()), ..request };
        assert_eq!(backend.invocation(&request).model.as_deref(), Some("haiku"));
    }
}
