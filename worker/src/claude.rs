//! The `claude` tool: a Claude Code sub-agent run headless (`claude -p … --output-format json`)
//! in the task's workspace, through the same [`crate::exec`] path as an `exec` task.
//!
//! Pure parts live here: the CLI's argv and environment, the root/bypass decision, and turning
//! the ended process (exit, stdout JSON, stderr) into a [`ClaudeReport`] and a [`Failure`].
//! [`crate::attempt`] does the I/O.
//!
//! Invariants: `IS_SANDBOX` reaches the CLI only when the task asks for `bypassPermissions`, the
//! worker runs as root and the operator allowed it ([`ClaudeToolConfig::allow_bypass_as_root`]);
//! the CLI always runs with non-essential traffic, telemetry and the auto-updater off.

use orchestra_llm::claude_code::{ClaudeRun, Invocation, parse_output};
use orchestra_llm::{ErrorKind, LlmError};
use orchestra_proto::{ClaudeReport, ClaudeSpec, Failure, FailureKind};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Longest `ClaudeReport::result` kept; the whole answer stays in the attempt's stdout file.
pub const RESULT_LIMIT: usize = 4 * 1024;

/// The permission mode the CLI refuses as root unless `IS_SANDBOX=1`.
const BYPASS: &str = "bypassPermissions";

/// Environment variables the CLI always gets: no calls home, no self-update.
const ALWAYS: [(&str, &str); 3] = [
    ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
    ("DISABLE_TELEMETRY", "1"),
    ("DISABLE_AUTOUPDATER", "1"),
];

/// How this worker runs the Claude Code CLI for `claude` tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaudeToolConfig {
    /// The CLI: a bare name is looked up in the attempt's `PATH`. Default `claude`.
    pub program: PathBuf,
    /// Added to the task's clean environment (API key, base URL, `HOME`…; the operator
    /// decides). The `ORCHESTRA_*` ids, `TRACEPARENT` and `IS_SANDBOX` cannot be set here, and
    /// the typed settings below win over the same names.
    pub env: Vec<(String, String)>,
    /// `CLAUDE_CODE_MAX_RETRIES`: the CLI's own retries of a failed API call. Default 2.
    pub max_retries: u32,
    /// `API_TIMEOUT_MS`: the CLI's timeout per API request. Default 120000.
    pub api_timeout_ms: u64,
    /// Lets a task use `bypassPermissions` while the worker runs as root, by telling the CLI it
    /// is in a sandbox (`IS_SANDBOX=1`). Only for workers that do run inside one. Default off.
    pub allow_bypass_as_root: bool,
}

impl Default for ClaudeToolConfig {
    fn default() -> Self {
        Self {
            program: PathBuf::from("claude"),
            env: Vec::new(),
            max_retries: 2,
            api_timeout_ms: 120_000,
            allow_bypass_as_root: false,
        }
    }
}

/// What to do about `bypassPermissions` and root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootBypass {
    /// Nothing special: not root, or not bypassing.
    Plain,
    /// Root, bypassing, allowed: run with `IS_SANDBOX=1`.
    Sandbox,
    /// Root, bypassing, not allowed: fail before spawning.
    Refuse,
}

/// Decides how a task's permission mode meets a root worker.
pub fn root_bypass(permission_mode: Option<&str>, is_root: bool, allowed: bool) -> RootBypass {
    match (permission_mode == Some(BYPASS) && is_root, allowed) {
        (false, _) => RootBypass::Plain,
        (true, true) => RootBypass::Sandbox,
        (true, false) => RootBypass::Refuse,
    }
}

/// The failure of a task refused by [`RootBypass::Refuse`].
pub fn refusal() -> Failure {
    let mut failure = Failure::new(
        FailureKind::UsageError,
        "the claude CLI refuses permission mode `bypassPermissions` when run as root",
    );
    failure.chain.push(
        "hint: run the worker as a non-root user, or, only if it runs inside a sandbox, set \
         `allow_bypass_as_root` in its claude tool configuration (the CLI then gets IS_SANDBOX=1)"
            .to_owned(),
    );
    failure
}

/// The CLI's arguments (after the program) for a task.
pub fn args(spec: &ClaudeSpec) -> Vec<String> {
    Invocation {
        prompt: spec.prompt.clone(),
        allowed_tools: spec.allowed_tools.clone(),
        permission_mode: spec.permission_mode.clone(),
        max_turns: spec.max_turns,
        max_budget_usd: spec.max_budget_usd,
        model: spec.model.clone(),
        ..Invocation::default()
    }
    .args()
}

/// The CLI's environment: the task's clean environment `base`, then the operator's `env`, then
/// the typed settings and the fixed variables. `IS_SANDBOX` is removed unless `sandbox`.
pub fn env(
    base: BTreeMap<String, String>,
    config: &ClaudeToolConfig,
    sandbox: bool,
) -> BTreeMap<String, String> {
    let mut env = base;
    for (k, v) in &config.env {
        if !protected(k) {
            env.insert(k.clone(), v.clone());
        }
    }
    env.insert("CLAUDE_CODE_MAX_RETRIES".to_owned(), config.max_retries.to_string());
    env.insert("API_TIMEOUT_MS".to_owned(), config.api_timeout_ms.to_string());
    for (k, v) in ALWAYS {
        env.insert(k.to_owned(), v.to_owned());
    }
    env.remove("IS_SANDBOX");
    if sandbox {
        env.insert("IS_SANDBOX".to_owned(), "1".to_owned());
    }
    env
}

/// Names the operator's `env` may not set: the attempt's ids, and the sandbox switch.
fn protected(name: &str) -> bool {
    name.starts_with("ORCHESTRA_") || name == "TRACEPARENT" || name == "IS_SANDBOX"
}

/// The failure class of a CLI error.
pub fn failure_kind(kind: ErrorKind) -> FailureKind {
    match kind {
        ErrorKind::Api => FailureKind::ApiError,
        ErrorKind::MaxTurns => FailureKind::MaxTurns,
        ErrorKind::Budget => FailureKind::Budget,
        ErrorKind::Usage => FailureKind::UsageError,
        ErrorKind::Malformed => FailureKind::Internal,
        ErrorKind::Timeout
        | ErrorKind::Transport
        | ErrorKind::NoStructuredOutput
        | ErrorKind::Fixture => FailureKind::ApiError,
    }
}

/// How the CLI process ended, as `exec` saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Ended<'a> {
    /// `exec`'s failure, `None` on exit 0.
    pub failure: Option<Failure>,
    pub exit_code: Option<i32>,
    pub stdout: &'a str,
    pub stderr: &'a str,
}

/// What the attempt reports: the CLI's result when one was parsed, and the failure if any.
///
/// A timeout, cancel, signal, output overflow or spawn error keeps its own failure. Otherwise
/// the CLI's output decides: exit 0 with a clean result succeeds; an error becomes the failure
/// class of its [`ErrorKind`], with the CLI's stderr line in the chain.
pub fn conclude(ended: Ended<'_>) -> (Option<ClaudeReport>, Option<Failure>) {
    let parsed = parse_output(ended.stdout, ended.stderr);
    let report = parsed.as_ref().ok().map(report);
    let own = ended.failure.as_ref().is_some_and(|f| f.kind != FailureKind::ExitCode);
    if own {
        return (report, ended.failure);
    }
    let error = match &parsed {
        Ok(run) => run.failure(ended.exit_code),
        Err(e) => Some(e.clone()),
    };
    let failure = match error {
        Some(e) => Some(from_llm(&e, ended.exit_code, ended.stderr)),
        // Exit 0: success. A non-zero exit with a clean result object is still a failure.
        None => ended.failure,
    };
    (report, failure)
}

fn from_llm(e: &LlmError, exit_code: Option<i32>, stderr: &str) -> Failure {
    let mut failure = Failure::new(failure_kind(e.kind), e.message.clone());
    if let Some(line) = stderr_line(stderr)
        && !e.message.contains(line)
    {
        failure.chain.push(line.to_owned());
    }
    failure.exit_code = exit_code.filter(|c| *c != 0);
    failure
}

/// The last non-empty line of the CLI's stderr: where it says what went wrong.
fn stderr_line(stderr: &str) -> Option<&str> {
    stderr.lines().map(str::trim).rfind(|l| !l.is_empty())
}

/// The wire report of a parsed result.
pub fn report(run: &ClaudeRun) -> ClaudeReport {
    ClaudeReport {
        result: run.result.as_deref().map(|r| cut(r, RESULT_LIMIT).to_owned()),
        session_id: run.session_id.clone(),
        turns: run.num_turns,
        cost_usd: run.usage.cost_usd.unwrap_or(0.0),
        input_tokens: run.usage.input_tokens,
        output_tokens: run.usage.output_tokens,
        permission_denials: run.permission_denials.iter().map(|d| d.tool_name.clone()).collect(),
        model: run.model.clone(),
    }
}

/// `text` cut to at most `limit` bytes, on a character boundary.
fn cut(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(prompt: &str) -> ClaudeSpec {
        ClaudeSpec {
            prompt: prompt.to_owned(),
            allowed_tools: Vec::new(),
            permission_mode: None,
            max_turns: None,
            max_budget_usd: None,
            model: None,
        }
    }

    #[test]
    fn root_and_bypass() {
        let check = |mode: Option<&str>, root: bool, allowed: bool, expect: RootBypass| {
            assert_eq!(root_bypass(mode, root, allowed), expect, "{mode:?} root={root} {allowed}");
        };
        check(None, false, false, RootBypass::Plain);
        check(None, true, false, RootBypass::Plain);
        check(None, true, true, RootBypass::Plain);
        check(Some("acceptEdits"), true, false, RootBypass::Plain);
        check(Some("acceptEdits"), true, true, RootBypass::Plain);
        check(Some("bypassPermissions"), false, false, RootBypass::Plain);
        check(Some("bypassPermissions"), false, true, RootBypass::Plain);
        check(Some("bypassPermissions"), true, false, RootBypass::Refuse);
        check(Some("bypassPermissions"), true, true, RootBypass::Sandbox);
        // the mode is matched exactly, as the CLI does
        check(Some("bypasspermissions"), true, false, RootBypass::Plain);
    }

    #[test]
    fn refusal_says_how_to_allow_it() {
        let f = refusal();
        assert_eq!(f.kind, FailureKind::UsageError);
        assert!(f.message.contains("as root"), "{f}");
        assert!(f.to_string().contains("allow_bypass_as_root"), "{f}");
        assert!(f.to_string().contains("sandbox"), "{f}");
    }

    #[test]
    fn environment() {
        let base: BTreeMap<String, String> = [
            ("PATH", "/usr/bin"),
            ("HOME", "/ws"),
            ("ORCHESTRA_TASK_ID", "t1"),
            ("IS_SANDBOX", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let check = |config: &ClaudeToolConfig, sandbox: bool, expect: &[(&str, &str)]| {
            let got = env(base.clone(), config, sandbox);
            let got: Vec<(&str, &str)> =
                got.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            assert_eq!(got, expect, "sandbox={sandbox}");
        };
        let fixed = |rest: &[(&'static str, &'static str)]| {
            let mut all = vec![
                ("API_TIMEOUT_MS", "120000"),
                ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
                ("CLAUDE_CODE_MAX_RETRIES", "2"),
                ("DISABLE_AUTOUPDATER", "1"),
                ("DISABLE_TELEMETRY", "1"),
            ];
            all.extend_from_slice(rest);
            all.sort();
            all
        };
        let default = ClaudeToolConfig::default();
        // a task's IS_SANDBOX never reaches the CLI
        check(
            &default,
            false,
            &fixed(&[("HOME", "/ws"), ("ORCHESTRA_TASK_ID", "t1"), ("PATH", "/usr/bin")]),
        );
        check(
            &default,
            true,
            &fixed(&[
                ("HOME", "/ws"),
                ("IS_SANDBOX", "1"),
                ("ORCHESTRA_TASK_ID", "t1"),
                ("PATH", "/usr/bin"),
            ]),
        );
        // the operator's env goes on top, but not over the ids, the sandbox switch, the typed
        // settings or the fixed variables
        let config = ClaudeToolConfig {
            env: [
                ("HOME", "/home/agent"),
                ("ANTHROPIC_API_KEY", "k"),
                ("ORCHESTRA_TASK_ID", "forged"),
                ("TRACEPARENT", "forged"),
                ("IS_SANDBOX", "1"),
                ("CLAUDE_CODE_MAX_RETRIES", "9"),
                ("DISABLE_TELEMETRY", "0"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            max_retries: 0,
            api_timeout_ms: 5_000,
            ..ClaudeToolConfig::default()
        };
        check(
            &config,
            false,
            &[
                ("ANTHROPIC_API_KEY", "k"),
                ("API_TIMEOUT_MS", "5000"),
                ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
                ("CLAUDE_CODE_MAX_RETRIES", "0"),
                ("DISABLE_AUTOUPDATER", "1"),
                ("DISABLE_TELEMETRY", "1"),
                ("HOME", "/home/agent"),
                ("ORCHESTRA_TASK_ID", "t1"),
                ("PATH", "/usr/bin"),
            ],
        );
    }

    #[test]
    fn argv() {
        let check = |spec: ClaudeSpec, expect: &[&str]| {
            assert_eq!(args(&spec), expect);
        };
        check(spec("hi"), &["-p", "--output-format", "json", "--", "hi"]);
        check(
            ClaudeSpec {
                allowed_tools: vec!["Write".into(), "Bash(cat:*)".into()],
                permission_mode: Some("acceptEdits".into()),
                max_turns: Some(3),
                max_budget_usd: Some(0.5),
                model: Some("sonnet".into()),
                ..spec("-do it")
            },
            &[
                "-p",
                "--output-format",
                "json",
                "--model",
                "sonnet",
                "--max-turns",
                "3",
                "--max-budget-usd",
                "0.5",
                "--permission-mode",
                "acceptEdits",
                "--allowedTools",
                "Write",
                "Bash(cat:*)",
                "--",
                "-do it",
            ],
        );
    }

    #[test]
    fn error_kinds() {
        let check = |kind: ErrorKind, expect: FailureKind| {
            assert_eq!(failure_kind(kind), expect, "{kind}");
        };
        check(ErrorKind::Api, FailureKind::ApiError);
        check(ErrorKind::MaxTurns, FailureKind::MaxTurns);
        check(ErrorKind::Budget, FailureKind::Budget);
        check(ErrorKind::Usage, FailureKind::UsageError);
        check(ErrorKind::Malformed, FailureKind::Internal);
        check(ErrorKind::Timeout, FailureKind::ApiError);
        check(ErrorKind::Transport, FailureKind::ApiError);
        check(ErrorKind::NoStructuredOutput, FailureKind::ApiError);
        check(ErrorKind::Fixture, FailureKind::ApiError);
    }

    const SUCCESS: &str = r#"{"type":"result","subtype":"success","is_error":false,"num_turns":3,
        "result":"done","session_id":"s-1","total_cost_usd":0.05,"terminal_reason":"completed",
        "usage":{"input_tokens":100,"cache_read_input_tokens":20,"output_tokens":7},
        "modelUsage":{"claude-opus-5-5":{"costUSD":0.05}},
        "permission_denials":[{"tool_name":"Bash","tool_use_id":"t","tool_input":{}}]}"#;
    const API_ERROR: &str = r#"{"type":"result","subtype":"success","is_error":true,"num_turns":1,
        "result":"API Error: 500 boom","api_error_status":500,"terminal_reason":"api_error",
        "total_cost_usd":0}"#;
    const MAX_TURNS: &str = r#"{"type":"result","subtype":"error_max_turns","is_error":true,
        "num_turns":2,"errors":["Reached maximum number of turns (1)"],
        "terminal_reason":"max_turns","total_cost_usd":0.01}"#;
    const BUDGET: &str = r#"{"type":"result","subtype":"error_max_budget_usd","is_error":true,
        "num_turns":1,"errors":["Reached maximum budget ($0.001)"],
        "terminal_reason":"budget_exhausted","total_cost_usd":0.5}"#;

    /// What a conclusion looks like: the failure kind (None: success), its message and chain
    /// (`|`-joined) when failed, and the reported turns and cost when a result was parsed.
    #[derive(Debug, PartialEq)]
    struct Seen {
        kind: Option<FailureKind>,
        text: String,
        report: Option<(u32, f64)>,
    }

    fn seen(kind: Option<FailureKind>, text: &str, report: Option<(u32, f64)>) -> Seen {
        Seen { kind, text: text.to_owned(), report }
    }

    #[test]
    fn conclusions() {
        let exit = |code: i32| {
            (code != 0).then(|| {
                Failure::new(FailureKind::ExitCode, format!("`claude` exited with code {code}"))
                    .with_exit_code(code)
            })
        };
        let check =
            |failure: Option<Failure>, code: Option<i32>, out: &str, err: &str, expect: Seen| {
                let (report, failure) =
                    conclude(Ended { failure, exit_code: code, stdout: out, stderr: err });
                let got = Seen {
                    kind: failure.as_ref().map(|f| f.kind),
                    text: failure
                        .as_ref()
                        .map(|f| {
                            std::iter::once(f.message.clone())
                                .chain(f.chain.clone())
                                .collect::<Vec<_>>()
                                .join("|")
                        })
                        .unwrap_or_default(),
                    report: report.map(|r| (r.turns, r.cost_usd)),
                };
                assert_eq!(got, expect, "{out:?} {err:?}");
            };
        // success: exit 0 and a clean result
        check(None, Some(0), SUCCESS, "", seen(None, "", Some((3, 0.05))));
        // API error, exit 1
        check(
            exit(1),
            Some(1),
            API_ERROR,
            "",
            seen(Some(FailureKind::ApiError), "API Error: 500 boom", Some((1, 0.0))),
        );
        check(
            exit(1),
            Some(1),
            MAX_TURNS,
            "",
            seen(
                Some(FailureKind::MaxTurns),
                "Reached maximum number of turns (1)",
                Some((2, 0.01)),
            ),
        );
        check(
            exit(1),
            Some(1),
            BUDGET,
            "",
            seen(Some(FailureKind::Budget), "Reached maximum budget ($0.001)", Some((1, 0.5))),
        );
        // an error result even with exit 0 is a failure
        check(
            None,
            Some(0),
            API_ERROR,
            "",
            seen(Some(FailureKind::ApiError), "API Error: 500 boom", Some((1, 0.0))),
        );
        // a clean result with a non-zero exit is still a failure
        check(
            exit(2),
            Some(2),
            SUCCESS,
            "",
            seen(
                Some(FailureKind::ApiError),
                "claude exited with code 2 without reporting an error (terminal_reason completed)",
                Some((3, 0.05)),
            ),
        );
        // CLI usage errors: nothing on stdout, one line on stderr
        check(
            exit(1),
            Some(1),
            "",
            "error: unknown option '--bogus'\n",
            seen(
                Some(FailureKind::UsageError),
                "claude printed no result: error: unknown option '--bogus'",
                None,
            ),
        );
        check(
            exit(1),
            Some(1),
            "",
            "--dangerously-skip-permissions cannot be used with root/sudo privileges for security reasons\n",
            seen(
                Some(FailureKind::UsageError),
                "claude printed no result: --dangerously-skip-permissions cannot be used with root/sudo privileges for security reasons",
                None,
            ),
        );
        // unreadable output is our problem, with the stderr line kept
        check(
            exit(1),
            Some(1),
            "not json",
            "something broke",
            seen(
                Some(FailureKind::Internal),
                "unreadable claude output: expected ident at line 1 column 2|something broke",
                None,
            ),
        );
        // exec's own endings keep their kind; a result is still reported when there is one
        let timeout = Some(Failure::new(FailureKind::Timeout, "`claude` timed out after 10 ms"));
        check(
            timeout.clone(),
            None,
            "",
            "",
            seen(Some(FailureKind::Timeout), "`claude` timed out after 10 ms", None),
        );
        check(
            timeout,
            None,
            SUCCESS,
            "",
            seen(Some(FailureKind::Timeout), "`claude` timed out after 10 ms", Some((3, 0.05))),
        );
        let signal = Some(
            Failure::new(FailureKind::Signal, "`claude` was killed by SIGKILL (9)").with_signal(9),
        );
        check(
            signal,
            None,
            "",
            "",
            seen(Some(FailureKind::Signal), "`claude` was killed by SIGKILL (9)", None),
        );
        let cancelled = Some(Failure::new(FailureKind::Cancelled, "the attempt was cancelled"));
        check(
            cancelled,
            Some(143),
            "",
            "",
            seen(Some(FailureKind::Cancelled), "the attempt was cancelled", None),
        );
        let capped = Some(Failure::new(FailureKind::OutputLimit, "too much"));
        check(
            capped,
            None,
            "{\"type\":\"res",
            "",
            seen(Some(FailureKind::OutputLimit), "too much", None),
        );
    }

    #[test]
    fn report_fields() {
        let long = "é".repeat(RESULT_LIMIT);
        let out = format!(
            r#"{{"type":"result","is_error":false,"result":"{long}","session_id":"s","num_turns":1,
            "total_cost_usd":0.25,"usage":{{"input_tokens":10,"output_tokens":2}},
            "modelUsage":{{"claude-sonnet-5-5":{{"inputTokens":10,"outputTokens":2}}}},
            "permission_denials":[{{"tool_name":"Write"}},{{"tool_name":"Bash"}}]}}"#
        );
        let run = parse_output(&out, "").unwrap();
        let r = report(&run);
        let result = r.result.as_deref().unwrap();
        assert_eq!(result.len(), RESULT_LIMIT, "cut on a character boundary");
        assert!(long.starts_with(result));
        assert_eq!(r.session_id.as_deref(), Some("s"));
        assert_eq!((r.turns, r.cost_usd, r.input_tokens, r.output_tokens), (1, 0.25, 10, 2));
        assert_eq!(r.permission_denials, ["Write", "Bash"]);
        assert_eq!(r.model.as_deref(), Some("claude-sonnet-5-5"));
    }

    #[test]
    fn cuts() {
        let check = |text: &str, limit: usize, expect: &str| {
            assert_eq!(cut(text, limit), expect, "{text:?} at {limit}");
        };
        check("", 3, "");
        check("abc", 3, "abc");
        check("abcd", 3, "abc");
        check("aé", 2, "a");
        check("aé", 3, "aé");
        check("€", 2, "");
    }
}
