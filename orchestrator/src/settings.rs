//! The YAML file layer: scenario files and the config file (`orchestra.yaml`).
//!
//! Loading is parse, then check: serde (strict, `deny_unknown_fields`) reports type errors with
//! the field path and the YAML position; then the checks this layer owns (ids, one tool per task,
//! positive limits) run on the parsed value. Either way the result is one [`Diagnostic`]. Plan
//! checks that need the whole graph (duplicate ids, unknown dependencies, cycles) belong to L2.
//!
//! Resolution is pure: [`ScenarioFile::to_plan`] fills every [`TaskSpec`] from the task, the
//! scenario's `defaults` and the config, in that order of precedence. A scenario with a `goal`
//! and no `tasks` is planned by L2's model instead: [`ScenarioFile::goal_request`] reads its
//! `context` files (the one I/O step here besides loading) and resolves the same defaults.

// A `Diagnostic` is large, but at most one is made per process and callers match on the type.
#![allow(clippy::result_large_err)]

use crate::diagnostic::{Diagnostic, backticked, did_you_mean, split_expected};
use orchestra_proto::llm::{ClaudeSpec, ContextFile, GoalRequest, TaskDefaults, ToolRules};
use orchestra_proto::{
    Backoff, ExecSpec, Plan, RetryPolicy, RunOptions, TaskId, TaskSpec, Tool, ids::IdError,
};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The documented default config; parsing it gives [`ConfigFile::default`].
pub const DEFAULT_CONFIG_YAML: &str = include_str!("default-config.yaml");

/// Tool keys a task may use today.
pub const TOOLS: &[&str] = &["exec", "claude"];
/// Tool keys that are recognised but not available yet.
const RESERVED_TOOLS: &[&str] = &["shell", "http"];

const DURATION_EXPECTED: &str = "a duration such as `30s` or `2m`";
const SIZE_EXPECTED: &str = "a size such as `1048576` (bytes), `512KiB`, `1MiB` or `10MB`";
const PERCENT_EXPECTED: &str = "a percentage from 0 to 100 such as `20%` or `20`";
const ID_EXPECTED: &str = "1 to 64 letters, digits, `_` or `-`";
const USD_EXPECTED: &str = "an amount in USD such as `0.50`";
const ENV_NAME_EXPECTED: &str = "a non-empty name without `=`, such as `RUST_LOG`";

// ---------------------------------------------------------------------------------------------
// Scenario file

/// A scenario: what to run. Either explicit `tasks`, or a `goal` that a model plans (with
/// both, the tasks are run and the goal describes them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a scenario: a mapping with `name` and `tasks` or a `goal`"
)]
pub struct ScenarioFile {
    /// Name of the scenario: 1 to 64 letters, digits, `_` or `-`.
    pub name: String,
    /// What the scenario is for, in words. Without `tasks`, the model makes a plan for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal: Option<String>,
    /// Files given to the model with the `goal`, relative to the scenario file's directory.
    /// Only with a `goal`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub context: Vec<String>,
    /// Values for every task that does not set its own (planned tasks included).
    #[serde(default)]
    pub defaults: DefaultsFile,
    /// The tasks; each names exactly one tool.
    #[serde(default)]
    pub tasks: Vec<TaskFile>,
    /// What `orchestra eval` checks after each run of the scenario (`orchestra run` ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<ExpectFile>,
    /// Where the scenario was read from, for errors found after loading.
    #[serde(skip)]
    #[schemars(skip)]
    source: Option<Source>,
}

/// The file and text a scenario was loaded from. Not part of the scenario's value: it never
/// makes two scenarios different.
#[derive(Clone)]
struct Source {
    file: PathBuf,
    text: String,
}

impl PartialEq for Source {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Source({})", self.file.display())
    }
}

/// Task settings shared by every task of a scenario.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, expecting = "a mapping of task defaults")]
pub struct DefaultsFile {
    /// Per-attempt timeout, such as `30s`; unset means the config's `limits.default_timeout`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Retries after the first attempt (0 = run once).
    pub retries: u32,
    /// Exit codes that are retried; empty means every non-zero exit code.
    pub retry_on_exit_codes: Vec<i32>,
    /// Delay between attempts.
    pub backoff: BackoffFile,
    /// Environment variables of every task.
    #[serde(deserialize_with = "scalar_map")]
    #[schemars(with = "BTreeMap<String, Scalar>")]
    pub env: BTreeMap<String, String>,
}

/// Exponential backoff between attempts: `min(initial * multiplier^(n-1), max) ± jitter`.
/// A field a task leaves unset comes from the scenario's `defaults`, then from the built-in
/// `{ initial: 500ms, multiplier: 2, max: 30s, jitter: 20% }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "a backoff mapping such as `{ initial: 500ms, multiplier: 2, max: 30s, jitter: 20% }`"
)]
pub struct BackoffFile {
    /// Delay before the first retry (default `500ms`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial: Option<HumanDuration>,
    /// Factor applied to the delay after each retry, at least 1 (default 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<u32>,
    /// Largest delay (default `30s`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<HumanDuration>,
    /// Random spread around the delay, `0%` to `100%` (default `20%`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Percent>,
}

impl BackoffFile {
    fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// One task of a scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a task: a mapping such as `{ id: greet, exec: { program: echo } }`"
)]
pub struct TaskFile {
    /// Id of the task, unique in the scenario: 1 to 64 letters, digits, `_` or `-`.
    pub id: String,
    /// What the task does, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Tool: run a program with arguments, directly (no shell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecFile>,
    /// Tool: a Claude Code sub-agent working in the task's workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claude: Option<ClaudeFile>,
    // Tools that are not available yet, parsed so that the error can say so.
    #[serde(default, skip_serializing)]
    #[schemars(skip)]
    shell: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing)]
    #[schemars(skip)]
    http: Option<serde_yaml::Value>,
    /// Environment variables, merged over `defaults.env`.
    #[serde(default, deserialize_with = "scalar_map", skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(with = "BTreeMap<String, Scalar>")]
    pub env: BTreeMap<String, String>,
    /// Ids of the tasks that must succeed before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Per-attempt timeout, such as `30s`; overrides `defaults.timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Retries after the first attempt; overrides `defaults.retries`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Exit codes that are retried; overrides `defaults.retry_on_exit_codes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on_exit_codes: Option<Vec<i32>>,
    /// Delay between attempts; each field set here overrides `defaults.backoff`.
    #[serde(default, skip_serializing_if = "BackoffFile::is_empty")]
    pub backoff: BackoffFile,
    /// Files (globs relative to the task workspace) kept as artifacts after a success.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
}

/// The `exec` tool: a program and its arguments, run without a shell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "an exec tool: a mapping such as `{ program: echo, args: [hello] }`"
)]
pub struct ExecFile {
    /// Program name (looked up in `PATH`) or path.
    pub program: String,
    /// Arguments, passed as they are.
    #[serde(default, deserialize_with = "scalar_list", skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<Scalar>")]
    pub args: Vec<String>,
}

/// The `claude` tool: a Claude Code sub-agent with a prompt, working in the task's workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a claude tool: a mapping such as `{ prompt: \"write hello.txt\", allowed_tools: [Write] }`"
)]
pub struct ClaudeFile {
    /// What the agent is asked to do.
    pub prompt: String,
    /// Claude tools the agent may use without asking, such as `Write` or `Bash(cat:*)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_tools: Vec<String>,
    /// How the agent handles permission requests (Claude Code's `--permission-mode`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permission_mode: Option<PermissionMode>,
    /// Most agent turns, at least 1; unset means the CLI's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<u32>,
    /// Most money the agent may spend, in USD, greater than zero.
    #[serde(default, deserialize_with = "opt_usd", skip_serializing_if = "Option::is_none")]
    pub max_budget: Option<f64>,
    /// Model, such as `sonnet`; unset means the CLI's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// A Claude Code permission mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PermissionMode {
    /// Read-only tools run; anything else not in `allowed_tools` is refused (no one is asked).
    Default,
    /// File edits inside the workspace are accepted without asking.
    AcceptEdits,
    /// Claude Code's `auto` mode.
    Auto,
    /// Refuse every tool that is not allowed, without asking.
    DontAsk,
    /// Plan only, change nothing.
    Plan,
    /// Every tool runs without asking. The CLI refuses this mode as root.
    BypassPermissions,
}

impl PermissionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PermissionMode::Default => "default",
            PermissionMode::AcceptEdits => "acceptEdits",
            PermissionMode::Auto => "auto",
            PermissionMode::DontAsk => "dontAsk",
            PermissionMode::Plan => "plan",
            PermissionMode::BypassPermissions => "bypassPermissions",
        }
    }
}

impl TaskFile {
    /// The tool keys present in this task, in declaration order.
    fn tool_keys(&self) -> Vec<&'static str> {
        [
            ("exec", self.exec.is_some()),
            ("shell", self.shell.is_some()),
            ("claude", self.claude.is_some()),
            ("http", self.http.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, present)| present.then_some(key))
        .collect()
    }

    /// The task's tool. A task without one (possible only for a value not loaded from a file)
    /// gets an `exec` of an empty program, which cannot run.
    fn tool(&self) -> Tool {
        if let Some(c) = &self.claude
            && self.exec.is_none()
        {
            return Tool::Claude(ClaudeSpec {
                prompt: c.prompt.clone(),
                allowed_tools: c.allowed_tools.clone(),
                permission_mode: c.permission_mode.map(|m| m.as_str().to_owned()),
                max_turns: c.max_turns,
                max_budget_usd: c.max_budget,
                model: c.model.clone(),
            });
        }
        let exec = self.exec.clone().unwrap_or(ExecFile { program: String::new(), args: vec![] });
        Tool::Exec(ExecSpec { program: exec.program, args: exec.args })
    }
}

impl ScenarioFile {
    /// The fully specified plan: per-task values override `defaults`, which override the
    /// config's `limits.default_timeout` and the built-in backoff. A goal scenario without
    /// tasks gives a plan without tasks: ask for [`Self::goal_request`] instead.
    ///
    /// Ids are not re-checked; a file from [`load_scenario`] or [`load_scenario_str`] has valid
    /// ids and exactly one tool per task.
    pub fn to_plan(&self, cfg: &ConfigFile) -> Plan {
        Plan {
            name: self.name.clone(),
            goal: self.goal.clone(),
            tasks: self.tasks.iter().map(|t| self.task_spec(t, cfg)).collect(),
        }
    }

    /// True when the plan must come from the model: a goal and no tasks.
    pub fn is_goal(&self) -> bool {
        self.tasks.is_empty() && self.goal.is_some()
    }

    /// The request for L2's model to plan the `goal`: the `context` files read from `base_dir`
    /// (the scenario file's directory) and bounded by `llm.context`, the tools of `planning`,
    /// and the defaults a task without values of its own gets in [`Self::to_plan`].
    /// `policy_summary` is empty and `no_cache` false; the caller sets them.
    ///
    /// Fails when the scenario has no goal or a context file cannot be read; the error points
    /// at `context[i]` in the scenario file.
    pub fn goal_request(
        &self,
        cfg: &ConfigFile,
        base_dir: &Path,
    ) -> Result<GoalRequest, Diagnostic> {
        let Some(goal) = self.goal.clone() else {
            return Err(self.diagnostic(
                "invalid scenario",
                Problem::value(
                    FieldPath::default().key("goal"),
                    "the scenario has no goal to plan",
                )
                .expected("a `goal`: what the model should make a plan for"),
            ));
        };
        let size = |b: ByteSize| usize::try_from(b.0).unwrap_or(usize::MAX);
        let max_file = size(cfg.llm.context.max_file_bytes);
        let mut left = size(cfg.llm.context.max_total_bytes);
        let mut context = Vec::with_capacity(self.context.len());
        for (i, rel) in self.context.iter().enumerate() {
            let path = base_dir.join(rel);
            let keep = max_file.min(left);
            let read = read_prefix(&path, keep).map_err(|why| {
                self.diagnostic(
                    "failed to read the context of scenario",
                    context_problem(i, &path, base_dir, why),
                )
            })?;
            let text = cut_utf8(&read.prefix, keep).ok_or_else(|| {
                self.diagnostic(
                    "failed to read the context of scenario",
                    Problem::value(
                        FieldPath::default().key("context").index(i),
                        format!("`{}` is not UTF-8 text", path.display()),
                    )
                    .expected("a text file"),
                )
            })?;
            left -= text.len();
            context.push(ContextFile {
                path: rel.clone(),
                sha256: read.sha256,
                truncated: read.len > text.len() as u64,
                text: text.to_owned(),
            });
        }
        let none = BackoffFile::default();
        Ok(GoalRequest {
            name: self.name.clone(),
            goal,
            context,
            tools: ToolRules {
                tools: cfg.planning.tools.iter().map(|t| t.as_str().to_owned()).collect(),
                programs: cfg.planning.programs.clone(),
            },
            defaults: TaskDefaults {
                timeout_ms: self.timeout_ms(None, cfg),
                retry: self.retry(None, None, &none),
            },
            policy_summary: String::new(),
            no_cache: false,
        })
    }

    fn task_spec(&self, t: &TaskFile, cfg: &ConfigFile) -> TaskSpec {
        let mut env = self.defaults.env.clone();
        env.extend(t.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        TaskSpec {
            id: TaskId::new_unchecked(&t.id),
            description: t.description.clone(),
            tool: t.tool(),
            depends_on: t.depends_on.iter().map(TaskId::new_unchecked).collect(),
            env,
            timeout_ms: self.timeout_ms(t.timeout, cfg),
            retry: self.retry(t.retries, t.retry_on_exit_codes.as_ref(), &t.backoff),
            outputs: t.outputs.clone(),
        }
    }

    /// A task's timeout: its own, else `defaults.timeout`, else `limits.default_timeout`.
    fn timeout_ms(&self, own: Option<HumanDuration>, cfg: &ConfigFile) -> u64 {
        own.or(self.defaults.timeout).unwrap_or(cfg.limits.default_timeout).as_millis()
    }

    /// A task's retry policy: each of its own values, else `defaults`, else the built-in.
    fn retry(
        &self,
        retries: Option<u32>,
        codes: Option<&Vec<i32>>,
        b: &BackoffFile,
    ) -> RetryPolicy {
        let d = &self.defaults;
        let db = &d.backoff;
        let builtin = Backoff::default();
        RetryPolicy {
            max_retries: retries.unwrap_or(d.retries),
            retry_on_exit_codes: codes.unwrap_or(&d.retry_on_exit_codes).clone(),
            backoff: Backoff {
                initial_ms: b
                    .initial
                    .or(db.initial)
                    .map_or(builtin.initial_ms, HumanDuration::as_millis),
                multiplier: b.multiplier.or(db.multiplier).unwrap_or(builtin.multiplier),
                max_ms: b.max.or(db.max).map_or(builtin.max_ms, HumanDuration::as_millis),
                jitter_pct: b.jitter.or(db.jitter).map_or(builtin.jitter_pct, |p| p.0),
            },
        }
    }

    /// A diagnostic about this scenario, located in its file when it was loaded from one.
    fn diagnostic(&self, title: &str, p: Problem) -> Diagnostic {
        match &self.source {
            Some(source) => problem_diagnostic(title, &source.file, &source.text, p),
            None => Diagnostic {
                path: Some(p.path.to_string()),
                expected: p.expected,
                hint: p.hint,
                ..Diagnostic::new(title, p.message)
            },
        }
    }

    fn check(&self) -> Result<(), Problem> {
        let root = FieldPath::default();
        check_token(&root.key("name"), "scenario name", &self.name)?;
        if let Some(goal) = &self.goal
            && goal.trim().is_empty()
            && self.tasks.is_empty()
        {
            return Err(Problem::value(root.key("goal"), "the goal is empty")
                .expected("what the model should make a plan for, in words"));
        }
        if self.tasks.is_empty() && self.goal.is_none() {
            return Err(Problem::value(
                root.key("tasks"),
                "the scenario has neither tasks nor a goal",
            )
            .expected("a list of tasks such as `[{ id: greet, exec: { program: echo } }]`")
            .hint("give the tasks to run, or a `goal` for the model to make a plan for"));
        }
        if !self.context.is_empty() && self.goal.is_none() {
            return Err(Problem::key(root.key("context"), "`context` is given without a goal")
                .expected("`context` only together with a `goal`")
                .hint("context files are shown to the model that plans the goal: add a `goal`, or remove `context`"));
        }
        for (i, path) in self.context.iter().enumerate() {
            if path.trim().is_empty() {
                return Err(Problem::value(root.key("context").index(i), "the path is empty")
                    .expected("a file path relative to the scenario file, such as `README.md`"));
            }
        }
        let defaults = root.key("defaults");
        check_timeout(&defaults.key("timeout"), self.defaults.timeout)?;
        check_backoff(&defaults.key("backoff"), &self.defaults.backoff)?;
        check_env(&defaults.key("env"), &self.defaults.env)?;
        for (i, task) in self.tasks.iter().enumerate() {
            check_task(&root.key("tasks").index(i), task)?;
        }
        if let Some(expect) = &self.expect {
            self.check_expect(&root.key("expect"), expect)?;
        }
        Ok(())
    }

    /// An `expect` block checks something, names tasks that exist (when the scenario lists its
    /// tasks) and has valid digests, patterns and bounds.
    fn check_expect(&self, at: &FieldPath, e: &ExpectFile) -> Result<(), Problem> {
        if e == &ExpectFile::default() {
            let fields: Vec<String> = ExpectFile::FIELDS.iter().map(|f| format!("`{f}`")).collect();
            return Err(Problem::value(at.clone(), "the expect block checks nothing")
                .expected(format!("at least one of {}", fields.join(", "))));
        }
        let known: Vec<&str> = self.tasks.iter().map(|t| t.id.as_str()).collect();
        let check_known = |at: FieldPath, at_key: bool, id: &str| -> Result<(), Problem> {
            if let Err(err) = TaskId::parse(id) {
                let p = id_problem(at, "task id", id, &err);
                return Err(Problem { at_key, ..p });
            }
            if known.is_empty() || known.contains(&id) {
                return Ok(());
            }
            let message = format!("no task `{id}` in this scenario");
            let p = if at_key { Problem::key(at, message) } else { Problem::value(at, message) };
            let p = p.expected(one_of(&known));
            Err(match did_you_mean(id, &known) {
                Some(name) => p.hint(format!("did you mean `{name}`?")),
                None => p,
            })
        };
        for id in e.tasks.keys() {
            check_known(at.key("tasks").key(id), true, id)?;
        }
        for (i, a) in e.artifacts.iter().enumerate() {
            let at = at.key("artifacts").index(i);
            let Some((task, path)) = a.split_path() else {
                return Err(Problem::value(
                    at.key("path"),
                    format!("`{}` does not name a task and a file", a.path),
                )
                .expected("`task/path`: a task id, `/`, and the path in its workspace, such as `build/out/app`"));
            };
            check_known(at.key("path"), false, task)?;
            if path.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
                return Err(Problem::value(
                    at.key("path"),
                    format!("`{}` is not a plain relative path", a.path),
                )
                .expected("a path inside the task's workspace, without empty, `.` or `..` parts"));
            }
            if a.contains.as_deref() == Some("") {
                return Err(Problem::value(at.key("contains"), "the text is empty")
                    .expected("the text the file must contain"));
            }
            if let Some(re) = &a.matches
                && let Err(err) = crate::eval::pattern(re)
            {
                return Err(Problem::value(
                    at.key("matches"),
                    format!("invalid regular expression: {err}"),
                )
                .expected("a regular expression such as `^total: [0-9]+$`")
                .hint("the syntax is the Rust `regex` crate's (https://docs.rs/regex/#syntax); `^` and `$` match at line starts and ends"));
            }
            if let Some(digest) = &a.sha256
                && (digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(Problem::value(
                    at.key("sha256"),
                    format!("`{digest}` is not a SHA-256 digest"),
                )
                .expected("64 hexadecimal digits, as printed by `sha256sum FILE`"));
            }
        }
        if let Some(d) = e.max_duration
            && d.0.is_zero()
        {
            return Err(Problem::value(at.key("max_duration"), "the duration is zero")
                .expected(format!("{DURATION_EXPECTED}, greater than zero")));
        }
        if let Some(usd) = e.max_cost_usd
            && !(usd.is_finite() && usd >= 0.0)
        {
            let why = if usd.is_finite() {
                format!("the cost bound is negative ({usd})")
            } else {
                "the cost bound is not a finite number".to_owned()
            };
            return Err(Problem::value(at.key("max_cost_usd"), why)
                .expected(format!("{USD_EXPECTED}, 0 or more")));
        }
        Ok(())
    }
}

/// What `orchestra eval` checks after a run. Every field is optional; each one given is a
/// check that passes or fails with a reason.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "an expect block: a mapping such as `{ status: succeeded }`"
)]
pub struct ExpectFile {
    /// The run's final status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<ExpectedRunStatus>,
    /// The final status of tasks, by task id.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tasks: BTreeMap<String, ExpectedTaskStatus>,
    /// Files the run must have collected as artifacts, and what they must hold.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<ExpectArtifactFile>,
    /// Longest the run may take (wall time), such as `30s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<HumanDuration>,
    /// Most the run may spend on models (planning and `claude` tasks), in USD; `0` means
    /// nothing.
    #[serde(deserialize_with = "opt_usd", skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
}

impl ExpectFile {
    const FIELDS: [&str; 5] = ["status", "tasks", "artifacts", "max_duration", "max_cost_usd"];
}

/// A run status `expect.status` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedRunStatus {
    Succeeded,
    Failed,
    Cancelled,
}

impl ExpectedRunStatus {
    pub fn status(self) -> orchestra_proto::RunStatus {
        use orchestra_proto::RunStatus;
        match self {
            Self::Succeeded => RunStatus::Succeeded,
            Self::Failed => RunStatus::Failed,
            Self::Cancelled => RunStatus::Cancelled,
        }
    }
}

/// A final task status `expect.tasks` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedTaskStatus {
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl ExpectedTaskStatus {
    pub fn status(self) -> orchestra_proto::TaskStatus {
        use orchestra_proto::TaskStatus;
        match self {
            Self::Succeeded => TaskStatus::Succeeded,
            Self::Failed => TaskStatus::Failed,
            Self::Skipped => TaskStatus::Skipped,
            Self::Cancelled => TaskStatus::Cancelled,
        }
    }
}

/// An artifact the run must have: listed in `artifacts.json` and present in `artifacts/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "an expected artifact: a mapping such as `{ path: build/out.txt, contains: ok }`"
)]
pub struct ExpectArtifactFile {
    /// `task/path`: the task's id and the file's path in its workspace, such as
    /// `test/report.txt`.
    pub path: String,
    /// Text the file must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    /// A regular expression (the Rust `regex` crate's syntax) that must match somewhere in the
    /// file; `^` and `$` match at line starts and ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<String>,
    /// The file's SHA-256, 64 hex digits (any case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl ExpectArtifactFile {
    /// The task id and the path in its workspace; `None` without a `/` or a part.
    pub fn split_path(&self) -> Option<(&str, &str)> {
        self.path.split_once('/').filter(|(task, path)| !task.is_empty() && !path.is_empty())
    }
}

/// The start of a file and the digest of all of it.
struct Prefix {
    /// Up to `keep` bytes, plus up to 3 more so that a character cut at `keep` can be told from
    /// bytes that are not UTF-8.
    prefix: Vec<u8>,
    /// SHA-256 hex of the whole file.
    sha256: String,
    /// Size of the whole file.
    len: u64,
}

/// Reads the first `keep` bytes of `path` (and a little more) and hashes the whole file.
fn read_prefix(path: &Path, keep: usize) -> std::io::Result<Prefix> {
    let mut file = std::fs::File::open(path)?;
    let want = keep.saturating_add(3);
    let mut hasher = Sha256::new();
    let mut prefix = Vec::new();
    let mut len = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        let chunk = &buf[..n];
        hasher.update(chunk);
        len += n as u64;
        let room = want.saturating_sub(prefix.len());
        prefix.extend_from_slice(&chunk[..room.min(n)]);
    }
    Ok(Prefix { prefix, sha256: hex::encode(hasher.finalize()), len })
}

/// The longest text of at most `keep` bytes at the start of `bytes`, cut on a character
/// boundary. `None` when `bytes` is not UTF-8 (an incomplete character at the very end of
/// `bytes` is not held against it: `bytes` may itself be cut).
fn cut_utf8(bytes: &[u8], keep: usize) -> Option<&str> {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) if err.error_len().is_none() => {
            // `bytes` ends inside a character: the valid part is all there is.
            std::str::from_utf8(&bytes[..err.valid_up_to()]).ok()?
        }
        Err(_) => return None,
    };
    let mut end = keep.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(&text[..end])
}

fn context_problem(i: usize, path: &Path, base_dir: &Path, err: std::io::Error) -> Problem {
    let problem = Problem::value(
        FieldPath::default().key("context").index(i),
        format!("cannot read `{}`: {err}", path.display()),
    );
    match err.kind() {
        std::io::ErrorKind::NotFound => problem.hint(format!(
            "context paths are relative to the scenario file's directory (`{}`)",
            base_dir.display()
        )),
        std::io::ErrorKind::IsADirectory => problem.hint("name files, not directories"),
        _ => problem,
    }
}

fn check_task(at: &FieldPath, task: &TaskFile) -> Result<(), Problem> {
    if let Err(err) = TaskId::parse(&task.id) {
        return Err(id_problem(at.key("id"), "task id", &task.id, &err));
    }
    let tools = task.tool_keys();
    match tools.as_slice() {
        [] => {
            return Err(Problem::value(at.clone(), format!("task `{}` has no tool", task.id))
                .expected(format!("exactly one of {}", one_of(TOOLS)))
                .hint("add for example `exec: { program: echo, args: [hello] }`"));
        }
        [tool] if RESERVED_TOOLS.contains(tool) => {
            return Err(Problem::key(
                at.key(tool),
                format!("the `{tool}` tool is not available yet"),
            )
            .expected(one_of(TOOLS)));
        }
        [_] => {}
        [first, second, ..] => {
            return Err(Problem::key(
                at.key(second),
                format!("task `{}` has more than one tool: `{first}` and `{second}`", task.id),
            )
            .expected(format!("exactly one of {}", one_of(TOOLS)))
            .hint("split the work into one task per tool and connect them with `depends_on`"));
        }
    }
    if let Some(exec) = &task.exec
        && exec.program.trim().is_empty()
    {
        return Err(Problem::value(at.key("exec").key("program"), "the program is empty")
            .expected("a program name or path such as `echo` or `./build.sh`"));
    }
    if let Some(claude) = &task.claude {
        check_claude(&at.key("claude"), claude)?;
    }
    for (j, dep) in task.depends_on.iter().enumerate() {
        if let Err(err) = TaskId::parse(dep) {
            return Err(id_problem(at.key("depends_on").index(j), "task id", dep, &err));
        }
    }
    check_timeout(&at.key("timeout"), task.timeout)?;
    check_backoff(&at.key("backoff"), &task.backoff)?;
    check_env(&at.key("env"), &task.env)
}

fn check_claude(at: &FieldPath, c: &ClaudeFile) -> Result<(), Problem> {
    if c.prompt.trim().is_empty() {
        return Err(Problem::value(at.key("prompt"), "the prompt is empty")
            .expected("what the agent should do, such as `write a haiku to haiku.txt`"));
    }
    for (i, tool) in c.allowed_tools.iter().enumerate() {
        if tool.trim().is_empty() {
            return Err(Problem::value(at.key("allowed_tools").index(i), "the tool name is empty")
                .expected("a Claude Code tool such as `Write`, `Read` or `Bash(cat:*)`"));
        }
    }
    if c.max_turns == Some(0) {
        return Err(Problem::value(at.key("max_turns"), "the turn limit is 0")
            .expected("a whole number of at least 1"));
    }
    if let Some(budget) = c.max_budget {
        check_money(&at.key("max_budget"), "the budget", budget)?;
    }
    Ok(())
}

/// An amount of USD that must be greater than zero.
fn check_money(at: &FieldPath, what: &str, usd: f64) -> Result<(), Problem> {
    let why = if usd.is_nan() || usd.is_infinite() {
        format!("{what} is not a finite number")
    } else if usd < 0.0 {
        format!("{what} is negative ({usd})")
    } else if usd == 0.0 {
        format!("{what} is 0")
    } else {
        return Ok(());
    };
    Err(Problem::value(at.clone(), why).expected(format!("{USD_EXPECTED}, greater than zero")))
}

fn check_token(at: &FieldPath, what: &str, value: &str) -> Result<(), Problem> {
    orchestra_proto::ids::check_token(value, TaskId::MAX_LEN)
        .map_err(|err| id_problem(at.clone(), what, value, &err))
}

fn id_problem(at: FieldPath, what: &str, value: &str, err: &IdError) -> Problem {
    Problem::value(at, format!("invalid {what} `{value}`: it {err}")).expected(ID_EXPECTED)
}

fn check_timeout(at: &FieldPath, timeout: Option<HumanDuration>) -> Result<(), Problem> {
    match timeout {
        Some(t) if t.0.is_zero() => Err(Problem::value(at.clone(), "the timeout is zero")
            .expected(format!("{DURATION_EXPECTED}, greater than zero"))),
        _ => Ok(()),
    }
}

fn check_backoff(at: &FieldPath, b: &BackoffFile) -> Result<(), Problem> {
    if b.multiplier == Some(0) {
        return Err(Problem::value(at.key("multiplier"), "the multiplier is 0")
            .expected("a whole number of at least 1"));
    }
    if let (Some(initial), Some(max)) = (b.initial, b.max)
        && max < initial
    {
        return Err(Problem::value(
            at.key("max"),
            format!("`max` ({max}) is less than `initial` ({initial})"),
        )
        .expected(format!("a duration of at least `{initial}`")));
    }
    Ok(())
}

fn check_env(at: &FieldPath, env: &BTreeMap<String, String>) -> Result<(), Problem> {
    for name in env.keys() {
        check_env_name(&at.key(name), true, name)?;
    }
    Ok(())
}

fn check_env_name(at: &FieldPath, at_key: bool, name: &str) -> Result<(), Problem> {
    if name.is_empty() || name.contains(['=', '\0']) {
        let message = format!("invalid environment variable name `{name}`");
        let p = if at_key {
            Problem::key(at.clone(), message)
        } else {
            Problem::value(at.clone(), message)
        };
        return Err(p.expected(ENV_NAME_EXPECTED));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Config file

/// The config file (`orchestra.yaml`): how scenarios are run on this machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, expecting = "a config: a mapping such as `{ workers: 2 }`")]
pub struct ConfigFile {
    /// Directory in which each run gets its own directory.
    #[serde(serialize_with = "lossy_path")]
    pub runs_dir: PathBuf,
    /// Worker slots in embedded mode: how many attempts run at once. At least 1.
    pub workers: u32,
    /// Worker pool the tasks are queued for: letters, digits, `_` and `-`.
    pub pool: String,
    /// Limits of every run.
    pub limits: LimitsFile,
    /// Console logging.
    pub logging: LoggingFile,
    /// The model that plans a scenario's `goal`.
    pub llm: LlmFile,
    /// What a planned task may use.
    pub planning: PlanningFile,
    /// The `claude` tool in the workers.
    pub claude_tool: ClaudeToolFile,
}

/// Limits of every run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, expecting = "a mapping of limits")]
pub struct LimitsFile {
    /// Largest number of tasks a plan may have.
    pub max_tasks: u32,
    /// Output kept per stream per attempt: bytes, or a size such as `512KiB`, `1MiB`, `10MB`.
    pub output_cap: ByteSize,
    /// Time between SIGTERM and SIGKILL when an attempt is ended.
    pub kill_grace: HumanDuration,
    /// Task timeout when neither the task nor the scenario's `defaults` set one.
    pub default_timeout: HumanDuration,
    /// Cap on attempts in flight at once (queued for a worker or running); unset means
    /// `2 × workers`, so that a worker never waits for the coordinator between two tasks.
    pub max_parallel: Option<u32>,
    /// Model calls for planning one run, repair rounds included. At least 1.
    pub max_llm_calls: u32,
    /// Money one run may spend on models (planning and `claude` tasks), in USD; unset means
    /// no cap.
    #[serde(deserialize_with = "opt_usd")]
    pub max_cost_usd: Option<f64>,
}

/// Console logging.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, expecting = "a mapping of logging settings")]
pub struct LoggingFile {
    /// Level of operator logs on the console (task progress is shown regardless, unless `-q`).
    pub level: LogLevel,
    /// Console format.
    pub format: LogFormat,
}

/// A log level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    #[default]
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

impl From<LogLevel> for tracing::Level {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Error => tracing::Level::ERROR,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Trace => tracing::Level::TRACE,
        }
    }
}

/// How console output looks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Progress on a terminal, plain lines otherwise.
    #[default]
    Auto,
    /// One line per event.
    Plain,
    /// One JSON object per line.
    Json,
}

/// The model that plans a scenario's `goal`, and how it is asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, expecting = "a mapping of LLM settings")]
pub struct LlmFile {
    /// Which backend asks the model.
    pub backend: LlmBackend,
    /// Model name; unset means the backend's default.
    pub model: Option<String>,
    /// Times an invalid plan is sent back to the model with its problems before giving up.
    pub max_repair_rounds: u32,
    /// Time limit of one model call, the backend's own retries included.
    pub call_timeout: HumanDuration,
    /// Most tokens the model may answer with, at least 1.
    pub max_tokens: u32,
    /// Directory of prompt templates that override the built-in ones (same file names);
    /// relative to the current directory.
    #[serde(serialize_with = "lossy_opt_path")]
    pub prompts_dir: Option<PathBuf>,
    /// Directory of the plan cache; relative to the current directory.
    #[serde(serialize_with = "lossy_path")]
    pub cache_dir: PathBuf,
    /// How much of the scenario's `context` files the model is given.
    pub context: ContextFileLimits,
    /// Prices per model name, for backends that do not report the cost of a call.
    pub prices: BTreeMap<String, PriceFile>,
    /// The `claude-code` backend.
    pub claude_code: ClaudeCodeFile,
    /// The `anthropic` backend.
    pub anthropic: AnthropicFile,
    /// The `openai` backend.
    pub openai: OpenAiFile,
    /// The `scripted` backend.
    pub scripted: ScriptedFile,
}

/// An LLM backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LlmBackend {
    /// The Claude Code CLI in headless mode.
    #[default]
    ClaudeCode,
    /// The Anthropic Messages API over HTTP.
    Anthropic,
    /// Any OpenAI-compatible chat endpoint (Ollama, vLLM, llama.cpp, …).
    #[serde(rename = "openai")]
    OpenAi,
    /// Recorded answers, replayed (tests, demos, offline eval).
    Scripted,
}

impl LlmBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            LlmBackend::ClaudeCode => "claude-code",
            LlmBackend::Anthropic => "anthropic",
            LlmBackend::OpenAi => "openai",
            LlmBackend::Scripted => "scripted",
        }
    }
}

/// Bounds on the `context` files given to the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, expecting = "a mapping such as `{ max_file_bytes: 64KiB }`")]
pub struct ContextFileLimits {
    /// Bytes of one file; the rest is cut off (the file is marked truncated).
    pub max_file_bytes: ByteSize,
    /// Bytes of all files together; later files are cut or left empty.
    pub max_total_bytes: ByteSize,
}

/// The price of a model, in USD per million tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a price such as `{ input_per_mtok: 3.0, output_per_mtok: 15.0 }`"
)]
pub struct PriceFile {
    /// USD per million input tokens.
    #[serde(deserialize_with = "usd")]
    pub input_per_mtok: f64,
    /// USD per million output tokens.
    #[serde(deserialize_with = "usd")]
    pub output_per_mtok: f64,
}

/// The `claude-code` backend: the Claude Code CLI, asked for structured output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, expecting = "a mapping of claude-code settings")]
pub struct ClaudeCodeFile {
    /// The CLI: a program name (looked up in `PATH`) or path.
    pub program: String,
    /// Agent turns of one planning call, at least 1.
    pub max_turns: u32,
    /// Retries of a failed API request inside the CLI.
    pub max_retries: u32,
    /// Time limit of one API request inside the CLI.
    pub api_timeout: HumanDuration,
}

/// The `anthropic` backend: the Messages API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, expecting = "a mapping of anthropic settings")]
pub struct AnthropicFile {
    /// Base URL of the API, `http://` or `https://`.
    pub base_url: String,
    /// Environment variable that holds the API key.
    pub api_key_env: String,
    /// Retries of a request that failed transiently (429, 5xx).
    pub max_retries: u32,
}

/// The `openai` backend: an OpenAI-compatible chat completions endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, expecting = "a mapping of openai settings")]
pub struct OpenAiFile {
    /// Base URL of the API (the part before `/chat/completions`), `http://` or `https://`.
    pub base_url: String,
    /// Environment variable that holds the API key; no key is sent when it is unset.
    pub api_key_env: String,
    /// Retries of a request that failed transiently (429, 5xx).
    pub max_retries: u32,
}

/// The `scripted` backend: answers recorded earlier, replayed in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, expecting = "a mapping such as `{ dir: fixtures/plans }`")]
pub struct ScriptedFile {
    /// Directory of the recorded answers; relative to the current directory.
    #[serde(serialize_with = "lossy_opt_path")]
    pub dir: Option<PathBuf>,
}

/// What a task planned by the model may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, expecting = "a mapping such as `{ tools: [exec] }`")]
pub struct PlanningFile {
    /// Tools a planned task may use.
    pub tools: Vec<ToolKind>,
    /// Programs a planned `exec` task may run; empty means any.
    pub programs: Vec<String>,
}

/// A kind of tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ToolKind {
    /// A program with arguments, run directly.
    Exec,
    /// A Claude Code sub-agent.
    Claude,
}

impl ToolKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ToolKind::Exec => "exec",
            ToolKind::Claude => "claude",
        }
    }
}

/// The `claude` tool: how workers run Claude Code sub-agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default, expecting = "a mapping of claude tool settings")]
pub struct ClaudeToolFile {
    /// The CLI: a program name (looked up in `PATH`) or path.
    pub program: String,
    /// Retries of a failed API request inside the CLI.
    pub max_retries: u32,
    /// Time limit of one API request inside the CLI.
    pub api_timeout: HumanDuration,
    /// Allow `permission_mode: bypassPermissions` when the worker runs as root.
    pub allow_bypass_as_root: bool,
    /// Environment variables passed from the worker's environment to the CLI.
    pub env: Vec<String>,
}

impl Default for ConfigFile {
    fn default() -> Self {
        Self {
            runs_dir: PathBuf::from("runs"),
            workers: 2,
            pool: "default".to_owned(),
            limits: LimitsFile::default(),
            logging: LoggingFile::default(),
            llm: LlmFile::default(),
            planning: PlanningFile::default(),
            claude_tool: ClaudeToolFile::default(),
        }
    }
}

impl Default for LimitsFile {
    fn default() -> Self {
        Self {
            max_tasks: 1000,
            output_cap: ByteSize(1 << 20),
            kill_grace: HumanDuration::from_secs(2),
            default_timeout: HumanDuration::from_secs(600),
            max_parallel: None,
            max_llm_calls: RunOptions::DEFAULT_MAX_LLM_CALLS,
            max_cost_usd: None,
        }
    }
}

impl Default for LlmFile {
    fn default() -> Self {
        Self {
            backend: LlmBackend::default(),
            model: None,
            max_repair_rounds: 2,
            call_timeout: HumanDuration::from_secs(300),
            max_tokens: 8192,
            prompts_dir: None,
            cache_dir: PathBuf::from(".orchestra/plan-cache"),
            context: ContextFileLimits::default(),
            prices: BTreeMap::new(),
            claude_code: ClaudeCodeFile::default(),
            anthropic: AnthropicFile::default(),
            openai: OpenAiFile::default(),
            scripted: ScriptedFile::default(),
        }
    }
}

impl Default for ContextFileLimits {
    fn default() -> Self {
        Self { max_file_bytes: ByteSize(64 << 10), max_total_bytes: ByteSize(256 << 10) }
    }
}

impl Default for ClaudeCodeFile {
    fn default() -> Self {
        Self {
            program: "claude".to_owned(),
            max_turns: 3,
            max_retries: 2,
            api_timeout: HumanDuration::from_secs(120),
        }
    }
}

impl Default for AnthropicFile {
    fn default() -> Self {
        Self {
            base_url: "https://api.anthropic.com".to_owned(),
            api_key_env: "ANTHROPIC_API_KEY".to_owned(),
            max_retries: 3,
        }
    }
}

impl Default for OpenAiFile {
    fn default() -> Self {
        Self {
            base_url: "http://localhost:11434/v1".to_owned(),
            api_key_env: "OPENAI_API_KEY".to_owned(),
            max_retries: 3,
        }
    }
}

impl Default for PlanningFile {
    fn default() -> Self {
        Self { tools: vec![ToolKind::Exec, ToolKind::Claude], programs: Vec::new() }
    }
}

impl Default for ClaudeToolFile {
    fn default() -> Self {
        Self {
            program: "claude".to_owned(),
            max_retries: 2,
            api_timeout: HumanDuration::from_secs(120),
            allow_bypass_as_root: false,
            env: ["ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN", "HOME"]
                .map(str::to_owned)
                .to_vec(),
        }
    }
}

impl ConfigFile {
    /// The options of one run: `max_parallel` is `limits.max_parallel`, else `2 × workers`;
    /// the model budgets are `limits.max_llm_calls` and `limits.max_cost_usd`; `dry_run` is
    /// false.
    pub fn run_options(&self) -> RunOptions {
        RunOptions {
            max_parallel: self.limits.max_parallel.unwrap_or(self.workers.saturating_mul(2)),
            pool: self.pool.clone(),
            dry_run: false,
            output_cap_bytes: self.limits.output_cap.0,
            kill_grace_ms: self.limits.kill_grace.as_millis(),
            max_tasks: self.limits.max_tasks,
            max_llm_calls: self.limits.max_llm_calls,
            max_cost_usd: self.limits.max_cost_usd,
        }
    }

    /// The price of `model` from `llm.prices`, if listed.
    pub fn price(&self, model: &str) -> Option<&PriceFile> {
        self.llm.prices.get(model)
    }

    fn check(&self) -> Result<(), Problem> {
        let root = FieldPath::default();
        at_least_one(root.key("workers"), self.workers, "the number of workers")?;
        check_token(&root.key("pool"), "pool name", &self.pool)?;
        let limits = root.key("limits");
        at_least_one(limits.key("max_tasks"), self.limits.max_tasks, "the task limit")?;
        if let Some(n) = self.limits.max_parallel {
            at_least_one(limits.key("max_parallel"), n, "the parallelism limit")?;
        }
        check_size(&limits.key("output_cap"), "the output cap", self.limits.output_cap)?;
        check_timeout(&limits.key("default_timeout"), Some(self.limits.default_timeout))?;
        at_least_one(
            limits.key("max_llm_calls"),
            self.limits.max_llm_calls,
            "the model call limit",
        )
        .map_err(|p| p.hint("planning makes at least one model call; repair rounds add more"))?;
        if let Some(usd) = self.limits.max_cost_usd {
            check_money(&limits.key("max_cost_usd"), "the cost limit", usd)
                .map_err(|p| p.hint("leave it unset (`null`) for no cap"))?;
        }
        self.check_llm(&root.key("llm"))?;
        self.check_planning(&root.key("planning"))?;
        let tool = root.key("claude_tool");
        check_program(&tool.key("program"), &self.claude_tool.program)?;
        check_timeout(&tool.key("api_timeout"), Some(self.claude_tool.api_timeout))?;
        for (i, name) in self.claude_tool.env.iter().enumerate() {
            check_env_name(&tool.key("env").index(i), false, name)?;
        }
        Ok(())
    }

    fn check_llm(&self, at: &FieldPath) -> Result<(), Problem> {
        let llm = &self.llm;
        check_timeout(&at.key("call_timeout"), Some(llm.call_timeout))?;
        at_least_one(at.key("max_tokens"), llm.max_tokens, "the token limit")?;
        let context = at.key("context");
        check_size(&context.key("max_file_bytes"), "the file limit", llm.context.max_file_bytes)?;
        check_size(
            &context.key("max_total_bytes"),
            "the total limit",
            llm.context.max_total_bytes,
        )?;
        for (model, price) in &llm.prices {
            let at = at.key("prices").key(model);
            for (field, usd) in [
                ("input_per_mtok", price.input_per_mtok),
                ("output_per_mtok", price.output_per_mtok),
            ] {
                let why = if !usd.is_finite() {
                    "the price is not a finite number".to_owned()
                } else if usd < 0.0 {
                    format!("the price is negative ({usd})")
                } else {
                    continue;
                };
                return Err(Problem::value(at.key(field), why)
                    .expected("USD per million tokens, 0 or more, such as `3.0`"));
            }
        }
        let cc = at.key("claude_code");
        check_program(&cc.key("program"), &llm.claude_code.program)?;
        at_least_one(cc.key("max_turns"), llm.claude_code.max_turns, "the turn limit")?;
        check_timeout(&cc.key("api_timeout"), Some(llm.claude_code.api_timeout))?;
        check_url(&at.key("anthropic").key("base_url"), &llm.anthropic.base_url)?;
        check_env_name(&at.key("anthropic").key("api_key_env"), false, &llm.anthropic.api_key_env)?;
        check_url(&at.key("openai").key("base_url"), &llm.openai.base_url)?;
        check_env_name(&at.key("openai").key("api_key_env"), false, &llm.openai.api_key_env)
    }

    fn check_planning(&self, at: &FieldPath) -> Result<(), Problem> {
        if self.planning.tools.is_empty() {
            return Err(Problem::value(at.key("tools"), "no tool is allowed")
                .expected(format!("a list of tools from {}", one_of(&["exec", "claude"])))
                .hint("a planned task needs at least one tool"));
        }
        for (i, program) in self.planning.programs.iter().enumerate() {
            check_program(&at.key("programs").index(i), program)?;
        }
        Ok(())
    }
}

fn at_least_one(at: FieldPath, value: u32, what: &str) -> Result<(), Problem> {
    if value == 0 {
        Err(Problem::value(at, format!("{what} is 0")).expected("a whole number of at least 1"))
    } else {
        Ok(())
    }
}

fn check_size(at: &FieldPath, what: &str, size: ByteSize) -> Result<(), Problem> {
    if size.0 == 0 {
        return Err(Problem::value(at.clone(), format!("{what} is 0"))
            .expected(format!("{SIZE_EXPECTED}, greater than zero")));
    }
    Ok(())
}

fn check_program(at: &FieldPath, program: &str) -> Result<(), Problem> {
    if program.trim().is_empty() {
        return Err(Problem::value(at.clone(), "the program is empty")
            .expected("a program name (looked up in `PATH`) or path"));
    }
    Ok(())
}

fn check_url(at: &FieldPath, url: &str) -> Result<(), Problem> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
    if rest.is_none_or(|host| host.is_empty() || host.starts_with('/')) {
        return Err(Problem::value(at.clone(), format!("invalid URL `{url}`"))
            .expected("an `http://` or `https://` URL such as `http://localhost:11434/v1`"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Loading

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Scenario,
    Config,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Scenario => "scenario",
            Kind::Config => "config",
        }
    }

    fn schema_hint(self) -> &'static str {
        match self {
            Kind::Scenario => "run `orchestra config schema scenario` for the full schema",
            Kind::Config => "run `orchestra config schema` for the full schema",
        }
    }

    fn empty_hint(self) -> String {
        match self {
            Kind::Scenario => {
                format!(
                    "a scenario needs a `name`, and `tasks` or a `goal`; {}",
                    self.schema_hint()
                )
            }
            Kind::Config => "run `orchestra config init` to write the documented defaults, or \
                             remove the file to use them"
                .to_owned(),
        }
    }
}

/// Reads and checks a scenario file.
pub fn load_scenario(path: &Path) -> Result<ScenarioFile, Diagnostic> {
    let text = read(Kind::Scenario, path)?;
    let scenario = parse(Kind::Scenario, path, &text, ScenarioFile::check)?;
    Ok(ScenarioFile { source: Some(Source { file: path.to_path_buf(), text }), ..scenario })
}

/// Parses and checks scenario text; `name` is how errors refer to it.
pub fn load_scenario_str(name: &str, text: &str) -> Result<ScenarioFile, Diagnostic> {
    let scenario = parse(Kind::Scenario, Path::new(name), text, ScenarioFile::check)?;
    let source = Source { file: PathBuf::from(name), text: text.to_owned() };
    Ok(ScenarioFile { source: Some(source), ..scenario })
}

/// Reads and checks a config file.
pub fn load_config(path: &Path) -> Result<ConfigFile, Diagnostic> {
    let text = read(Kind::Config, path)?;
    parse(Kind::Config, path, &text, ConfigFile::check)
}

/// Parses and checks config text; `name` is how errors refer to it.
pub fn load_config_str(name: &str, text: &str) -> Result<ConfigFile, Diagnostic> {
    parse(Kind::Config, Path::new(name), text, ConfigFile::check)
}

/// The JSON Schema of the config file.
pub fn config_schema() -> serde_json::Value {
    schemars::schema_for!(ConfigFile).to_value()
}

/// The JSON Schema of a scenario file.
pub fn scenario_schema() -> serde_json::Value {
    schemars::schema_for!(ScenarioFile).to_value()
}

/// The config as YAML that [`load_config_str`] reads back (paths that are not UTF-8 are
/// written lossily).
pub fn to_yaml(cfg: &ConfigFile) -> String {
    // Plain strings, integers and unit enums: serializing cannot fail.
    serde_yaml::to_string(cfg).unwrap_or_else(|err| format!("# cannot write the config: {err}\n"))
}

/// What `path` most likely is: a scenario if it has a top-level `name`, `goal` or `tasks` key,
/// else a config. Reads the file; an unreadable file is guessed to be a config.
pub fn guess_kind(path: &Path) -> crate::cli::FileKind {
    guess_kind_str(&std::fs::read_to_string(path).unwrap_or_default())
}

/// [`guess_kind`] for text. Works on broken YAML too: it looks at lines, not at a parse.
pub fn guess_kind_str(text: &str) -> crate::cli::FileKind {
    let scenario = text.lines().any(|line| {
        ["name", "goal", "tasks"].iter().any(|key| {
            line.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
    });
    if scenario { crate::cli::FileKind::Scenario } else { crate::cli::FileKind::Config }
}

fn lossy_path<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

#[allow(clippy::ref_option)] // the signature serde's `serialize_with` calls
fn lossy_opt_path<S: Serializer>(path: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match path {
        Some(path) => s.serialize_some(&path.to_string_lossy()),
        None => s.serialize_none(),
    }
}

fn read(kind: Kind, path: &Path) -> Result<String, Diagnostic> {
    std::fs::read_to_string(path).map_err(|err| {
        let hint = match err.kind() {
            std::io::ErrorKind::NotFound => {
                Some("check the path; it is relative to the current directory".to_owned())
            }
            std::io::ErrorKind::IsADirectory => {
                Some("pass a YAML file, not a directory".to_owned())
            }
            _ => None,
        };
        Diagnostic {
            file: Some(path.to_path_buf()),
            hint,
            ..Diagnostic::new(format!("failed to read {}", kind.noun()), err.to_string())
        }
    })
}

fn parse<T: de::DeserializeOwned>(
    kind: Kind,
    file: &Path,
    text: &str,
    check: fn(&T) -> Result<(), Problem>,
) -> Result<T, Diagnostic> {
    let invalid = |message: String| Diagnostic {
        file: Some(file.to_path_buf()),
        ..Diagnostic::new(format!("invalid {}", kind.noun()), message)
    };
    // A first pass as an untyped value separates syntax errors and empty files from type errors.
    match serde_yaml::from_str::<serde_yaml::Value>(text) {
        Err(err) => return Err(yaml_error(invalid(String::new()), text, &err)),
        Ok(serde_yaml::Value::Null) => {
            let message = if text.trim().is_empty() {
                "the file is empty"
            } else {
                "the file has no content, only comments"
            };
            return Err(Diagnostic { hint: Some(kind.empty_hint()), ..invalid(message.into()) });
        }
        Ok(_) => {}
    }
    let value: T = serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text))
        .map_err(|err| {
            let mut path = err.path().to_string();
            let mut d = yaml_error(invalid(String::new()), text, err.inner());
            // serde_yaml prefixes its own path (that of the enclosing mapping); ours is better.
            if let Some((head, rest)) = d.message.split_once(": ")
                && path.starts_with(head)
            {
                d.message = rest.to_owned();
            }
            // For an unknown field the path ends with the field; name the mapping instead.
            if let Some(field) =
                d.message.strip_prefix("unknown field `").and_then(|r| r.split('`').next())
            {
                path = path
                    .strip_suffix(field)
                    .map_or(path.clone(), |p| p.trim_end_matches('.').to_owned());
            }
            if !path.is_empty() && path != "." {
                d.path = Some(path);
            }
            with_expected_and_hint(kind, d)
        })?;
    check(&value)
        .map_err(|p| problem_diagnostic(&format!("invalid {}", kind.noun()), file, text, p))?;
    Ok(value)
}

/// The diagnostic of a problem found after parsing `text` (read from `file`), located.
fn problem_diagnostic(title: &str, file: &Path, text: &str, p: Problem) -> Diagnostic {
    let location = locate(text, &p.path.0, p.at_key);
    let d = Diagnostic {
        file: Some(file.to_path_buf()),
        path: Some(p.path.to_string()),
        expected: p.expected,
        hint: p.hint,
        ..Diagnostic::new(title, p.message)
    };
    match location {
        Some((line, column)) => d.at(text, line, column),
        None => d,
    }
}

/// Fills `d` from a YAML error: its message without the position, and the position.
fn yaml_error(mut d: Diagnostic, text: &str, err: &serde_yaml::Error) -> Diagnostic {
    let mut message = err.to_string();
    if let Some(loc) = err.location() {
        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
        message = message.replacen(&suffix, "", 1);
        d = d.at(text, loc.line(), loc.column());
    }
    d.message = message;
    d
}

/// Moves serde's `…, expected X` into `expected` and adds a hint for unknown names.
fn with_expected_and_hint(kind: Kind, mut d: Diagnostic) -> Diagnostic {
    let (message, expected) = split_expected(&d.message);
    let names: Vec<&str> = expected
        .as_deref()
        .map(backticked)
        .unwrap_or_default()
        .into_iter()
        .filter(|n| !RESERVED_TOOLS.contains(n))
        .collect();
    let unknown = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))
        .and_then(|rest| rest.split('`').next());
    if let Some(word) = unknown {
        d.hint = Some(match did_you_mean(word, &names) {
            Some(name) => format!("did you mean `{name}`?"),
            None if RESERVED_TOOLS.contains(&word) => {
                format!("the `{word}` tool is not available yet")
            }
            None => kind.schema_hint().to_owned(),
        });
        d.expected = Some(one_of(&names));
    } else {
        d.expected = expected;
    }
    if message.starts_with("invalid type: integer")
        && d.expected.as_deref().is_some_and(|e| e.starts_with("a duration"))
    {
        d.hint = Some("add a unit, for example `30s`".into());
    }
    d.message = message;
    d
}

/// Names as serde lists them: `` `a` ``, `` `a` or `b` ``, `` one of `a`, `b`, `c` ``.
fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.as_slice() {
        [] => "nothing".to_owned(),
        [one] => one.clone(),
        [a, b] => format!("{a} or {b}"),
        many => format!("one of {}", many.join(", ")),
    }
}

// ---------------------------------------------------------------------------------------------
// Problems found after parsing, and where they are

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A field path such as `tasks[1].exec.args`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct FieldPath(Vec<Seg>);

impl FieldPath {
    fn key(&self, key: &str) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_owned()));
        Self(segs)
    }

    fn index(&self, index: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        Self(segs)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A problem found by a check after parsing.
#[derive(Debug)]
struct Problem {
    path: FieldPath,
    /// Point at the key of the last path segment rather than at its value.
    at_key: bool,
    message: String,
    expected: Option<String>,
    hint: Option<String>,
}

impl Problem {
    fn value(path: FieldPath, message: impl Into<String>) -> Self {
        Self { path, at_key: false, message: message.into(), expected: None, hint: None }
    }

    fn key(path: FieldPath, message: impl Into<String>) -> Self {
        Self { at_key: true, ..Self::value(path, message) }
    }

    fn expected(mut self, expected: impl Into<String>) -> Self {
        self.expected = Some(expected.into());
        self
    }

    fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// The 1-based (line, column) of a field path such as `tasks[3].depends_on[0]` in a YAML
/// text, for messages about a file that was already parsed (plan problems found by L2).
pub fn locate_path(text: &str, path: &str) -> Option<(usize, usize)> {
    let mut segs = Vec::new();
    for part in path.split('.') {
        let (key, rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            segs.push(Seg::Key(key.to_owned()));
        }
        for index in rest.split('[') {
            let index = index.trim_end_matches(']');
            if !index.is_empty() {
                segs.push(Seg::Index(index.parse().ok()?));
            }
        }
    }
    if segs.is_empty() {
        return None;
    }
    locate(text, &segs, false)
}

/// The 1-based (line, column) of the node at `path` in `text` (of its key if `at_key`).
///
/// It walks the document with a seed that fails on arrival: the YAML deserializer stamps an
/// error with the position of the node being read, which is exactly the position wanted.
fn locate(text: &str, path: &[Seg], at_key: bool) -> Option<(usize, usize)> {
    let de = serde_yaml::Deserializer::from_str(text);
    let err = Finder { path, at_key }.deserialize(de).err()?;
    if !err.to_string().contains(FOUND) {
        return None;
    }
    err.location().map(|l| (l.line(), l.column()))
}

const FOUND: &str = "\u{1}found";

struct Finder<'p> {
    path: &'p [Seg],
    at_key: bool,
}

impl<'de> DeserializeSeed<'de> for Finder<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.path.split_first() {
            None => d.deserialize_any(Fail),
            Some((Seg::Key(key), rest)) => {
                d.deserialize_map(MapFinder { key, rest, at_key: self.at_key })
            }
            Some((Seg::Index(index), rest)) => {
                d.deserialize_seq(SeqFinder { index: *index, rest, at_key: self.at_key })
            }
        }
    }
}

/// A visitor that fails with [`FOUND`] on whatever it is given.
struct Fail;

impl<'de> Visitor<'de> for Fail {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("anything")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_some<D: Deserializer<'de>>(self, _: D) -> Result<(), D::Error> {
        Err(de::Error::custom(FOUND))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(FOUND))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(FOUND))
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(FOUND))
    }
}

struct MapFinder<'p> {
    key: &'p str,
    rest: &'p [Seg],
    at_key: bool,
}

impl<'de> Visitor<'de> for MapFinder<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let fail = self.rest.is_empty() && self.at_key;
        while let Some(hit) = map.next_key_seed(KeyMatch { key: self.key, fail })? {
            if hit {
                return map.next_value_seed(Finder { path: self.rest, at_key: self.at_key });
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

struct SeqFinder<'p> {
    index: usize,
    rest: &'p [Seg],
    at_key: bool,
}

impl<'de> Visitor<'de> for SeqFinder<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        for _ in 0..self.index {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(Finder { path: self.rest, at_key: self.at_key })?;
        Ok(())
    }
}

/// Reads a mapping key: `true` if it is `key`; fails with [`FOUND`] there if `fail`.
struct KeyMatch<'p> {
    key: &'p str,
    fail: bool,
}

impl<'de> DeserializeSeed<'de> for KeyMatch<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyMatch<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        match v == self.key {
            true if self.fail => Err(E::custom(FOUND)),
            hit => Ok(hit),
        }
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

// ---------------------------------------------------------------------------------------------
// Value types

/// A duration written for humans: `500ms`, `30s`, `2m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn from_millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }

    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    /// Whole milliseconds, saturating.
    pub fn as_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(DURATION_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                parse_duration(v)
                    .map(HumanDuration)
                    .map_err(|why| E::custom(format!("{why}, expected {DURATION_EXPECTED}")))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for HumanDuration {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration such as `500ms`, `30s`, `2m` or `1h 30m`.",
            "examples": ["30s", "2m"],
        })
    }
}

/// Why `s` is not a duration, in a sentence.
fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|err| match err {
        humantime::DurationError::UnknownUnit { unit, .. } if unit.is_empty() => {
            format!("invalid duration `{s}`: the unit is missing")
        }
        humantime::DurationError::UnknownUnit { unit, .. } => {
            format!("invalid duration `{s}`: unknown unit `{unit}`")
        }
        humantime::DurationError::Empty => "invalid duration: the value is empty".to_owned(),
        humantime::DurationError::NumberExpected(0) => {
            format!("invalid duration `{s}`: it does not start with a number")
        }
        humantime::DurationError::NumberExpected(at) => {
            format!("invalid duration `{s}`: a number is missing at position {}", at + 1)
        }
        humantime::DurationError::InvalidCharacter(at) => {
            format!("invalid duration `{s}`: unexpected character at position {}", at + 1)
        }
        other => format!("invalid duration `{s}`: {other}"),
    })
}

/// A byte count: an integer, or a number with a unit (`B`, `KB`, `KiB`, `MB`, `MiB`, `GB`,
/// `GiB`, `TB`, `TiB`; any case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `1048576`, `512KiB`, `1 MiB`, `10MB`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        if digits.is_empty() {
            return Err(format!("invalid size `{s}`: it does not start with a number"));
        }
        let number: u64 =
            digits.parse().map_err(|_| format!("invalid size `{s}`: the number is too large"))?;
        let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "kib" => 1 << 10,
            "mb" => 1_000_000,
            "mib" => 1 << 20,
            "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            "tb" => 1_000_000_000_000,
            "tib" => 1 << 40,
            _ => return Err(format!("invalid size `{s}`: unknown unit `{}`", unit.trim())),
        };
        number
            .checked_mul(factor)
            .map(ByteSize)
            .ok_or_else(|| format!("invalid size `{s}`: it is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, size) in
            [("TiB", 1u64 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)]
        {
            if n >= size && n.is_multiple_of(size) {
                return write!(f, "{}{unit}", n / size);
            }
        }
        write!(f, "{n}")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(SIZE_EXPECTED)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v)
                    .map_err(|why| E::custom(format!("{why}, expected {SIZE_EXPECTED}")))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for ByteSize {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A size in bytes: an integer, or a number with a unit such as `512KiB`, `1MiB` or `10MB`.",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^\\s*[0-9]+\\s*([KkMmGgTt][Ii]?)?[Bb]?\\s*$" }
            ],
            "examples": ["1MiB", 1048576],
        })
    }
}

/// A percentage from 0 to 100, written `20%` or `20`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Percent(pub u8);

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}%", self.0))
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        fn in_range<E: de::Error>(v: u64, written: &str) -> Result<Percent, E> {
            match u8::try_from(v) {
                Ok(p) if p <= 100 => Ok(Percent(p)),
                _ => Err(E::custom(format!(
                    "`{written}` is outside 0–100%, expected {PERCENT_EXPECTED}"
                ))),
            }
        }
        impl Visitor<'_> for V {
            type Value = Percent;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(PERCENT_EXPECTED)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Percent, E> {
                in_range(v, &v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Percent, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => in_range(u64::MAX, &v.to_string()),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Percent, E> {
                let t = v.trim();
                let digits = t.strip_suffix('%').unwrap_or(t).trim_end();
                match digits.parse::<u64>() {
                    Ok(n) => in_range(n, v),
                    Err(_) if digits.starts_with('-') => in_range(u64::MAX, v),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Percent {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Percent".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A percentage from 0 to 100, written `20%` or `20`.",
            "anyOf": [
                { "type": "integer", "minimum": 0, "maximum": 100 },
                { "type": "string", "pattern": "^\\s*[0-9]{1,3}\\s*%?\\s*$" }
            ],
        })
    }
}

/// A string, also written as a bare number or boolean (`PORT: 8080`, `args: [-n, 3]`).
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Scalar {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Scalar".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": ["string", "integer", "boolean"] })
    }
}

fn scalar_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let map = BTreeMap::<String, Scalar>::deserialize(d)?;
    Ok(map.into_iter().map(|(k, v)| (k, v.0)).collect())
}

fn scalar_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list = Vec::<Scalar>::deserialize(d)?;
    Ok(list.into_iter().map(|v| v.0).collect())
}

/// An amount of USD, written as a number (`0.5`, `2`). Its range is checked after parsing.
struct Usd(f64);

impl<'de> Deserialize<'de> for Usd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Usd;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(USD_EXPECTED)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Usd, E> {
                Ok(Usd(v))
            }
            // Amounts of money are far below 2^52: the conversions are exact.
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Usd, E> {
                Ok(Usd(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Usd, E> {
                Ok(Usd(v as f64))
            }
        }
        d.deserialize_any(V)
    }
}

fn usd<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Usd::deserialize(d).map(|u| u.0)
}

fn opt_usd<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    Ok(Option::<Usd>::deserialize(d)?.map(|u| u.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "\
name: hello
goal: say hello
defaults:
  timeout: 30s
  retries: 1
  retry_on_exit_codes: [3]
  backoff: { initial: 1s, jitter: 10% }
  env: { GREETING: hi, NAME: nobody }
tasks:
  - id: greet
    exec: { program: echo, args: [hello, 42, true] }
    env: { NAME: world, PORT: 8080 }
  - id: later
    description: runs after greet
    exec:
      program: ./later.sh
    depends_on: [greet]
    timeout: 5m
    retries: 0
    retry_on_exit_codes: []
    backoff: { multiplier: 3, max: 10s }
    outputs: [hello.txt, \"out/*.txt\"]
";

    fn scenario(text: &str) -> ScenarioFile {
        load_scenario_str("s.yaml", text).unwrap_or_else(|d| panic!("{d}"))
    }

    fn config(text: &str) -> ConfigFile {
        load_config_str("orchestra.yaml", text).unwrap_or_else(|d| panic!("{d}"))
    }

    /// Snapshots the rendered error of each case under `<prefix>_<case>`.
    fn snap_errors(prefix: &str, load: fn(&str) -> Option<Diagnostic>, cases: &[(&str, &str)]) {
        let mut settings = insta::Settings::clone_current();
        settings.set_prepend_module_to_snapshot(false);
        settings.set_omit_expression(true);
        for (case, text) in cases {
            let rendered = match load(text) {
                Some(d) => {
                    assert_eq!(d.exit_code(), 2);
                    d.render()
                }
                None => panic!("{prefix}_{case}: loaded without error"),
            };
            settings.set_description(*text);
            settings.bind(|| insta::assert_snapshot!(format!("{prefix}_{case}"), rendered));
        }
    }

    #[test]
    fn scenario_errors() {
        snap_errors(
            "scenario",
            |t| load_scenario_str("bad.yaml", t).err(),
            &[
                (
                    "malformed_indentation",
                    "name: x\ntasks:\n  - id: a\n   exec: { program: echo }\n",
                ),
                ("malformed_unclosed_quote", "name: \"x\ntasks: []\n"),
                ("malformed_tab", "name: x\ntasks:\n\t- id: a\n"),
                ("unknown_top_level_close", "nmae: hello\ntasks: []\n"),
                ("unknown_top_level_far", "name: x\npolicy: strict\ntasks: []\n"),
                (
                    "unknown_task_field_close",
                    "name: x\ntasks:\n  - id: a\n    exec: { program: echo }\n    descripton: typo\n",
                ),
                (
                    "unknown_task_field_far",
                    "name: x\ntasks:\n  - id: a\n    exec: { program: echo }\n    polcy: strict\n",
                ),
                (
                    "unknown_exec_field",
                    "name: x\ntasks:\n  - id: a\n    exec: { program: echo, arg: [x] }\n",
                ),
                (
                    "wrong_type_list",
                    "name: x\ntasks:\n  - id: a\n    exec: { program: echo, args: hello }\n",
                ),
                ("wrong_type_tool", "name: x\ntasks:\n  - id: a\n    exec: echo hello\n"),
                ("wrong_type_tasks", "name: x\ntasks: greet\n"),
                ("wrong_type_top_level", "- a\n- b\n"),
                ("missing_name", "tasks:\n  - id: a\n    exec: { program: echo }\n"),
                ("missing_id", "name: x\ntasks:\n  - exec: { program: echo }\n"),
                ("missing_program", "name: x\ntasks:\n  - id: a\n    exec: { args: [x] }\n"),
                (
                    "bad_duration",
                    "name: x\ntasks:\n  - id: a\n    exec: { program: echo }\n    timeout: 3x\n",
                ),
                ("duration_without_unit", "name: x\ndefaults:\n  timeout: 30\ntasks: []\n"),
                (
                    "zero_timeout",
                    "name: x\ntasks:\n  - id: a\n    exec: { program: echo }\n    timeout: 0s\n",
                ),
                (
                    "jitter_too_large",
                    "name: x\ndefaults:\n  backoff: { jitter: 150% }\ntasks: []\n",
                ),
                (
                    "jitter_not_a_number",
                    "name: x\ndefaults:\n  backoff:\n    jitter: lots\ntasks: []\n",
                ),
                (
                    "zero_multiplier",
                    "name: x\ndefaults:\n  backoff:\n    multiplier: 0\ntasks:\n  - id: a\n    exec: { program: echo }\n",
                ),
                (
                    "max_below_initial",
                    "name: x\ntasks:\n  - id: a\n    exec: { program: echo }\n    backoff: { initial: 5s, max: 1s }\n",
                ),
                (
                    "bad_task_id",
                    "name: x\ntasks:\n  - id: a\n    exec: { program: echo }\n  - id: build.all\n    exec: { program: make }\n",
                ),
                (
                    "bad_dependency_id",
                    "name: x\ntasks:\n  - id: a\n    exec: { program: echo }\n    depends_on: [ok, \"not ok\"]\n",
                ),
                ("bad_name", "name: hello world\ntasks: []\n"),
                ("no_tasks", "name: x\ntasks: []\n"),
                ("neither_tasks_nor_goal", "name: x\n"),
                ("empty_goal", "name: x\ngoal: \" \"\n"),
                (
                    "context_without_goal",
                    "name: x\ncontext: [README.md]\ntasks:\n  - id: a\n    exec: { program: echo }\n",
                ),
                ("empty_context_path", "name: x\ngoal: g\ncontext: [a.md, \"\"]\n"),
                (
                    "claude_empty_prompt",
                    "name: x\ntasks:\n  - id: a\n    claude: { prompt: \"\" }\n",
                ),
                (
                    "claude_bad_permission_mode",
                    "name: x\ntasks:\n  - id: a\n    claude: { prompt: hi, permission_mode: acceptedits }\n",
                ),
                (
                    "claude_zero_max_turns",
                    "name: x\ntasks:\n  - id: a\n    claude:\n      prompt: hi\n      max_turns: 0\n",
                ),
                (
                    "claude_negative_budget",
                    "name: x\ntasks:\n  - id: a\n    claude:\n      prompt: hi\n      max_budget: -0.5\n",
                ),
                (
                    "claude_budget_not_a_number",
                    "name: x\ntasks:\n  - id: a\n    claude: { prompt: hi, max_budget: $1 }\n",
                ),
                (
                    "claude_unknown_field",
                    "name: x\ntasks:\n  - id: a\n    claude: { prompt: hi, allowed_tool: [Write] }\n",
                ),
                (
                    "claude_and_exec",
                    "name: x\ntasks:\n  - id: a\n    exec: { program: echo }\n    claude: { prompt: hi }\n",
                ),
                (
                    "two_tools",
                    "name: x\ntasks:\n  - id: a\n    exec: { program: echo }\n    shell: echo hi\n",
                ),
                ("no_tool", "name: x\ntasks:\n  - id: a\n    description: nothing to run\n"),
                ("reserved_tool", "name: x\ntasks:\n  - id: a\n    http: { url: \"http://x\" }\n"),
                ("empty_program", "name: x\ntasks:\n  - id: a\n    exec: { program: \"\" }\n"),
                (
                    "bad_env_name",
                    "name: x\ntasks:\n  - id: a\n    exec: { program: echo }\n    env:\n      \"A=B\": c\n",
                ),
                (
                    "env_value_list",
                    "name: x\ntasks:\n  - id: a\n    exec: { program: echo }\n    env: { A: [1] }\n",
                ),
                ("duplicate_field", "name: x\nname: y\ntasks: []\n"),
                (
                    "expect_empty",
                    "name: x\ntasks:\n  - id: build\n    exec: { program: make }\nexpect: {}\n",
                ),
                (
                    "expect_not_a_mapping",
                    "name: x\ntasks:\n  - id: build\n    exec: { program: make }\nexpect: succeeded\n",
                ),
                (
                    "expect_unknown_field",
                    "name: x\ntasks:\n  - id: build\n    exec: { program: make }\nexpect:\n  statu: succeeded\n",
                ),
                (
                    "expect_bad_status",
                    "name: x\ntasks:\n  - id: build\n    exec: { program: make }\nexpect:\n  status: succeded\n",
                ),
                (
                    "expect_running_status",
                    "name: x\ntasks:\n  - id: build\n    exec: { program: make }\nexpect:\n  status: running\n",
                ),
                (
                    "expect_bad_task_status",
                    "name: x\ntasks:\n  - id: build\n    exec: { program: make }\nexpect:\n  tasks: { build: done }\n",
                ),
                (
                    "expect_unknown_task",
                    "name: x\ntasks:\n  - id: build\n    exec: { program: make }\nexpect:\n  tasks:\n    biuld: succeeded\n",
                ),
                ("expect_bad_task_id", "name: x\ngoal: g\nexpect:\n  tasks: { \"a b\": failed }\n"),
                (
                    "expect_artifact_without_task",
                    "name: x\ntasks:\n  - id: build\n    exec: { program: make }\nexpect:\n  artifacts:\n    - path: out.txt\n",
                ),
                (
                    "expect_artifact_unknown_task",
                    "name: x\ntasks:\n  - id: build\n    exec: { program: make }\nexpect:\n  artifacts:\n    - { path: test/out.txt }\n",
                ),
                (
                    "expect_artifact_dotdot",
                    "name: x\ntasks:\n  - id: build\n    exec: { program: make }\nexpect:\n  artifacts:\n    - path: build/../secret\n",
                ),
                (
                    "expect_artifact_unknown_field",
                    "name: x\ntasks:\n  - id: build\n    exec: { program: make }\nexpect:\n  artifacts:\n    - { path: build/out, contain: ok }\n",
                ),
                (
                    "expect_artifact_missing_path",
                    "name: x\ntasks:\n  - id: build\n    exec: { program: make }\nexpect:\n  artifacts:\n    - { contains: ok }\n",
                ),
                (
                    "expect_artifact_bad_sha256",
                    "name: x\ntasks:\n  - id: build\n    exec: { program: make }\nexpect:\n  artifacts:\n    - path: build/out\n      sha256: abc123\n",
                ),
                (
                    "expect_artifact_bad_regex",
                    "name: x\ntasks:\n  - id: build\n    exec: { program: make }\nexpect:\n  artifacts:\n    - path: build/out\n      matches: '^total: ([0-9]+$'\n",
                ),
                (
                    "expect_artifact_huge_regex",
                    "name: x\ntasks:\n  - id: build\n    exec: { program: make }\nexpect:\n  artifacts:\n    - path: build/out\n      matches: '(a{1000}){1000}'\n",
                ),
                (
                    "expect_artifact_empty_contains",
                    "name: x\ntasks:\n  - id: build\n    exec: { program: make }\nexpect:\n  artifacts:\n    - { path: build/out, contains: \"\" }\n",
                ),
                (
                    "expect_zero_duration",
                    "name: x\ntasks:\n  - id: build\n    exec: { program: make }\nexpect:\n  max_duration: 0s\n",
                ),
                (
                    "expect_duration_without_unit",
                    "name: x\ntasks:\n  - id: build\n    exec: { program: make }\nexpect:\n  max_duration: 30\n",
                ),
                (
                    "expect_negative_cost",
                    "name: x\ntasks:\n  - id: build\n    exec: { program: make }\nexpect:\n  max_cost_usd: -1\n",
                ),
                (
                    "expect_cost_not_a_number",
                    "name: x\ntasks:\n  - id: build\n    exec: { program: make }\nexpect:\n  max_cost_usd: cheap\n",
                ),
                ("empty_file", ""),
                ("only_comments", "# nothing yet\n\n"),
            ],
        );
    }

    #[test]
    fn config_errors() {
        snap_errors(
            "config",
            |t| load_config_str("orchestra.yaml", t).err(),
            &[
                ("bad_size", "limits:\n  output_cap: 1 parsec\n"),
                ("negative_size", "limits:\n  output_cap: -1\n"),
                ("zero_workers", "runs_dir: runs\nworkers: 0\n"),
                ("bad_pool", "pool: gpu.large\n"),
                ("bad_duration", "limits:\n  kill_grace: soon\n"),
                ("unknown_level", "logging:\n  level: infoo\n"),
                ("unknown_limit", "limits:\n  max_paralel: 4\n"),
                ("zero_max_parallel", "limits:\n  max_parallel: 0\n"),
                ("empty_file", "\n"),
                ("bad_backend", "llm:\n  backend: claude_code\n"),
                ("unknown_backend", "llm:\n  backend: gemini\n"),
                ("zero_call_timeout", "llm:\n  call_timeout: 0s\n"),
                ("zero_max_tokens", "llm: { max_tokens: 0 }\n"),
                (
                    "negative_price",
                    "llm:\n  prices:\n    m1: { input_per_mtok: -3, output_per_mtok: 15 }\n",
                ),
                ("price_missing_field", "llm:\n  prices:\n    m1: { input_per_mtok: 3 }\n"),
                ("zero_context_file_bytes", "llm:\n  context: { max_file_bytes: 0 }\n"),
                ("bad_base_url", "llm:\n  openai: { base_url: localhost:11434 }\n"),
                ("unknown_llm_field", "llm:\n  modle: sonnet\n"),
                ("unknown_planning_tool", "planning:\n  tools: [exec, claud]\n"),
                ("reserved_planning_tool", "planning:\n  tools: [shell]\n"),
                (
                    "price_not_a_number",
                    "llm:\n  prices:\n    m1: { input_per_mtok: cheap, output_per_mtok: 1 }\n",
                ),
                ("no_planning_tools", "planning:\n  tools: []\n"),
                ("empty_planning_program", "planning:\n  programs: [cargo, \" \"]\n"),
                ("zero_max_llm_calls", "limits:\n  max_llm_calls: 0\n"),
                ("zero_max_cost", "limits:\n  max_cost_usd: 0\n"),
                ("negative_max_cost", "limits: { max_cost_usd: -1.5 }\n"),
                ("bad_claude_tool_env", "claude_tool:\n  env: [HOME, \"A=B\"]\n"),
                ("empty_claude_tool_program", "claude_tool:\n  program: \"\"\n"),
            ],
        );
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.yaml");
        for d in [load_scenario(&path).unwrap_err(), load_config(&path).unwrap_err()] {
            assert_eq!(d.file.as_deref(), Some(path.as_path()));
            assert_eq!(d.exit_code(), 2);
            let rendered = d.render().replace(&path.display().to_string(), "[PATH]");
            let mut settings = insta::Settings::clone_current();
            settings.set_prepend_module_to_snapshot(false);
            settings.set_omit_expression(true);
            settings.add_filter(r"caused by: .*", "caused by: [OS ERROR]");
            let name = if d.title.contains("scenario") {
                "scenario_unreadable"
            } else {
                "config_unreadable"
            };
            settings.bind(|| insta::assert_snapshot!(name, rendered));
        }
    }

    #[test]
    fn loads_files_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.yaml");
        std::fs::write(&path, HELLO).unwrap();
        assert_eq!(load_scenario(&path).unwrap(), scenario(HELLO));
        std::fs::write(&path, "workers: 0\n").unwrap();
        let d = load_config(&path).unwrap_err();
        assert_eq!(d.file.as_deref(), Some(path.as_path()));
        assert_eq!((d.line, d.column, d.path.as_deref()), (Some(1), Some(10), Some("workers")));
    }

    #[test]
    fn plan_takes_task_values_then_defaults_then_config() {
        let cfg = ConfigFile {
            limits: LimitsFile {
                default_timeout: HumanDuration::from_secs(7),
                ..LimitsFile::default()
            },
            ..ConfigFile::default()
        };
        let plan = scenario(HELLO).to_plan(&cfg);
        let env = |pairs: &[(&str, &str)]| {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()
        };
        let want = Plan {
            name: "hello".into(),
            goal: Some("say hello".into()),
            tasks: vec![
                TaskSpec {
                    id: TaskId::new_unchecked("greet"),
                    description: None,
                    tool: Tool::Exec(ExecSpec {
                        program: "echo".into(),
                        args: vec!["hello".into(), "42".into(), "true".into()],
                    }),
                    depends_on: vec![],
                    env: env(&[("GREETING", "hi"), ("NAME", "world"), ("PORT", "8080")]),
                    timeout_ms: 30_000,
                    retry: RetryPolicy {
                        max_retries: 1,
                        retry_on_exit_codes: vec![3],
                        backoff: Backoff {
                            initial_ms: 1000,
                            multiplier: 2,
                            max_ms: 30_000,
                            jitter_pct: 10,
                        },
                    },
                    outputs: vec![],
                },
                TaskSpec {
                    id: TaskId::new_unchecked("later"),
                    description: Some("runs after greet".into()),
                    tool: Tool::Exec(ExecSpec { program: "./later.sh".into(), args: vec![] }),
                    depends_on: vec![TaskId::new_unchecked("greet")],
                    env: env(&[("GREETING", "hi"), ("NAME", "nobody")]),
                    timeout_ms: 300_000,
                    retry: RetryPolicy {
                        max_retries: 0,
                        retry_on_exit_codes: vec![],
                        backoff: Backoff {
                            initial_ms: 1000,
                            multiplier: 3,
                            max_ms: 10_000,
                            jitter_pct: 10,
                        },
                    },
                    outputs: vec!["hello.txt".into(), "out/*.txt".into()],
                },
            ],
        };
        assert_eq!(plan, want);
    }

    #[test]
    fn plan_without_defaults_uses_config_and_builtins() {
        let s = scenario("name: bare\ntasks:\n  - id: a\n    exec: { program: true }\n");
        let plan = s.to_plan(&ConfigFile::default());
        assert_eq!(plan.goal, None);
        let [task] = plan.tasks.as_slice() else { panic!("{plan:?}") };
        assert_eq!(task.timeout_ms, 600_000);
        assert_eq!(task.retry, RetryPolicy::default());
        assert_eq!(task.tool, Tool::Exec(ExecSpec { program: "true".into(), args: vec![] }));
        assert!(task.env.is_empty() && task.outputs.is_empty() && task.depends_on.is_empty());
    }

    #[test]
    fn run_options_follow_the_config() {
        let check =
            |text: &str, want: RunOptions| assert_eq!(config(text).run_options(), want, "{text}");
        let default = RunOptions {
            max_parallel: 4,
            pool: "default".into(),
            dry_run: false,
            output_cap_bytes: 1 << 20,
            kill_grace_ms: 2000,
            max_tasks: 1000,
            max_llm_calls: 4,
            max_cost_usd: None,
        };
        check("{}", default.clone());
        check("workers: 5", RunOptions { max_parallel: 10, ..default.clone() });
        check(
            "workers: 5\nlimits: { max_parallel: 3 }",
            RunOptions { max_parallel: 3, ..default.clone() },
        );
        check(
            "pool: gpu\nlimits: { output_cap: 512KiB, kill_grace: 500ms, max_tasks: 10 }",
            RunOptions {
                pool: "gpu".into(),
                output_cap_bytes: 512 * 1024,
                kill_grace_ms: 500,
                max_tasks: 10,
                ..default.clone()
            },
        );
        check(
            "limits: { max_llm_calls: 1, max_cost_usd: 2.5 }",
            RunOptions { max_llm_calls: 1, max_cost_usd: Some(2.5), ..default },
        );
    }

    #[test]
    fn default_config_text_is_the_default() {
        assert_eq!(config(DEFAULT_CONFIG_YAML), ConfigFile::default());
        assert_eq!(config("{}"), ConfigFile::default());
        // every key of the documented file is commented
        for line in DEFAULT_CONFIG_YAML
            .lines()
            .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_lowercase()))
        {
            let at = DEFAULT_CONFIG_YAML.find(line).unwrap();
            let before = DEFAULT_CONFIG_YAML[..at].trim_end().lines().last().unwrap_or("");
            assert!(
                before.trim_start().starts_with('#') || line.trim_end().ends_with(':'),
                "no comment above `{line}`"
            );
        }
    }

    #[test]
    fn config_round_trips_through_yaml() {
        let cfg = config(
            "runs_dir: /tmp/r\nworkers: 3\npool: p\nlimits: { output_cap: 1000, max_parallel: 2 }\nlogging: { level: debug, format: json }\n",
        );
        let yaml = to_yaml(&cfg);
        assert_eq!(config(&yaml), cfg, "{yaml}");
        assert_eq!(config(&to_yaml(&ConfigFile::default())), ConfigFile::default());
        assert_eq!(cfg.logging.level.as_str(), "debug");
        assert_eq!(tracing::Level::from(cfg.logging.level), tracing::Level::DEBUG);
    }

    #[test]
    fn scenario_round_trips_through_yaml() {
        let s = scenario(HELLO);
        let yaml = serde_yaml::to_string(&s).unwrap();
        assert_eq!(scenario(&yaml), s, "{yaml}");
    }

    #[test]
    fn schemas_are_strict_and_complete() {
        let check = |schema: serde_json::Value, keys: &[&str]| {
            let text = serde_json::to_string(&schema).unwrap();
            let back: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(back["additionalProperties"], serde_json::Value::Bool(false), "{text}");
            for key in keys {
                assert!(back["properties"][key].is_object(), "no `{key}` in {text}");
                assert!(back["properties"][key].to_string().len() > 2);
            }
            assert_eq!(back["properties"].as_object().unwrap().len(), keys.len(), "{text}");
            back
        };
        let cfg = check(
            config_schema(),
            &["runs_dir", "workers", "pool", "limits", "logging", "llm", "planning", "claude_tool"],
        );
        assert!(cfg["properties"]["workers"]["description"].is_string());
        let cfg_text = cfg.to_string();
        for word in [
            "claude-code",
            "openai",
            "max_llm_calls",
            "max_cost_usd",
            "input_per_mtok",
            "allow_bypass_as_root",
        ] {
            assert!(cfg_text.contains(word), "no `{word}` in {cfg_text}");
        }
        let s =
            check(scenario_schema(), &["name", "goal", "context", "defaults", "tasks", "expect"]);
        assert_eq!(s["required"], serde_json::json!(["name"]));
        let text = s.to_string();
        // nested structs are strict too, and the reserved tools are not advertised
        assert!(text.matches("\"additionalProperties\":false").count() >= 4, "{text}");
        assert!(!text.contains("\"shell\"") && !text.contains("\"http\""), "{text}");
        assert!(!text.contains("\"source\""), "{text}");
        for word in [
            "\"exec\"",
            "\"claude\"",
            "acceptEdits",
            "max_budget",
            "allowed_tools",
            "max_cost_usd",
            "sha256",
            "\"skipped\"",
        ] {
            assert!(text.contains(word), "no {word} in {text}");
        }
    }

    #[test]
    fn parses_sizes() {
        let check = |s: &str, want: Result<u64, &str>| {
            assert_eq!(
                ByteSize::parse(s).map(|b| b.0).map_err(|e| e.to_string()),
                want.map_err(str::to_owned),
                "{s}"
            );
        };
        check("0", Ok(0));
        check("1048576", Ok(1 << 20));
        check("512KiB", Ok(512 * 1024));
        check("1MiB", Ok(1 << 20));
        check("1 mib", Ok(1 << 20));
        check("10MB", Ok(10_000_000));
        check("2GiB", Ok(2 << 30));
        check("3kb", Ok(3000));
        check("7B", Ok(7));
        check("1TiB", Ok(1 << 40));
        check("MiB", Err("invalid size `MiB`: it does not start with a number"));
        check("1.5MiB", Err("invalid size `1.5MiB`: unknown unit `.5MiB`"));
        check("99999999999TiB", Err("invalid size `99999999999TiB`: it is too large"));
        check(
            "99999999999999999999",
            Err("invalid size `99999999999999999999`: the number is too large"),
        );
        let display = |n: u64| ByteSize(n).to_string();
        assert_eq!(
            [display(1 << 20), display(1536), display(2048), display(1000), display(0)],
            ["1MiB", "1536", "2KiB", "1000", "0"]
        );
    }

    #[test]
    fn parses_durations_and_percentages() {
        #[derive(Debug, Deserialize)]
        struct D {
            d: HumanDuration,
        }
        #[derive(Debug, Deserialize)]
        struct P {
            p: Percent,
        }
        let duration =
            |s: &str| serde_yaml::from_str::<D>(&format!("d: {s}")).map(|v| v.d.as_millis()).ok();
        assert_eq!(duration("500ms"), Some(500));
        assert_eq!(duration("30s"), Some(30_000));
        assert_eq!(duration("2m"), Some(120_000));
        assert_eq!(duration("1h 30m"), Some(5_400_000));
        assert_eq!(duration("30"), None);
        assert_eq!(duration("x"), None);
        let percent = |s: &str| serde_yaml::from_str::<P>(&format!("p: {s}")).map(|v| v.p.0).ok();
        assert_eq!(percent("20%"), Some(20));
        assert_eq!(percent("20"), Some(20));
        assert_eq!(percent("\"20\""), Some(20));
        assert_eq!(percent("0%"), Some(0));
        assert_eq!(percent("100 %"), Some(100));
        assert_eq!(percent("101%"), None);
        assert_eq!(percent("-1"), None);
        assert_eq!(percent("-1%"), None);
        assert_eq!(percent("1.5"), None);
        assert_eq!(HumanDuration::from_millis(1500).to_string(), "1s 500ms");
    }

    #[test]
    fn locates_field_paths_given_as_text() {
        let text = "name: x\ntasks:\n  - id: a\n    exec: { program: p }\n  - id: b\n    depends_on: [a, zz]\n    exec: { program: p }\n";
        assert_eq!(locate_path(text, "tasks[1].depends_on[1]"), Some((6, 21)));
        assert_eq!(locate_path(text, "tasks[0].id"), Some((3, 9)));
        assert_eq!(locate_path(text, ""), None);
        assert_eq!(locate_path(text, "tasks[x]"), None);
    }

    #[test]
    fn locates_keys_and_values() {
        let text = "name: x\ntasks:\n  - id: a\n    exec:\n      program: echo\n  - id: b\n    env: { K: v }\n";
        let check = |path: FieldPath, at_key: bool, want: Option<(usize, usize)>| {
            assert_eq!(locate(text, &path.0, at_key), want, "{path} key={at_key}");
        };
        let root = FieldPath::default();
        let tasks = root.key("tasks");
        check(root.key("name"), false, Some((1, 7)));
        check(root.key("name"), true, Some((1, 1)));
        check(tasks.clone(), false, Some((3, 3)));
        check(tasks.index(0), false, Some((3, 5)));
        check(tasks.index(0).key("exec").key("program"), false, Some((5, 16)));
        check(tasks.index(0).key("exec"), true, Some((4, 5)));
        check(tasks.index(1).key("id"), false, Some((6, 9)));
        check(tasks.index(1).key("env").key("K"), true, Some((7, 12)));
        check(tasks.index(2), false, None);
        check(root.key("nope"), false, None);
        check(root.key("name").key("deeper"), false, None);
        assert_eq!(tasks.index(1).key("env").to_string(), "tasks[1].env");
    }

    #[test]
    fn guesses_the_kind_of_a_file() {
        use crate::cli::FileKind;
        let check = |text: &str, want: FileKind| assert_eq!(guess_kind_str(text), want, "{text}");
        check("name: x\ntasks: []\n", FileKind::Scenario);
        check("# c\ntasks:\n  - id: a\n", FileKind::Scenario);
        check("goal : x", FileKind::Scenario);
        check("workers: 2\n", FileKind::Config);
        check("names: 2\n  name: x\n", FileKind::Config);
        check("", FileKind::Config);
        assert_eq!(guess_kind(Path::new("/nonexistent/x.yaml")), FileKind::Config);
    }

    #[test]
    fn claude_tasks_become_claude_tools() {
        let check = |claude: &str, want: ClaudeSpec| {
            let text = format!("name: x\ntasks:\n  - id: a\n    claude: {claude}\n");
            let plan = scenario(&text).to_plan(&ConfigFile::default());
            assert_eq!(plan.tasks[0].tool, Tool::Claude(want), "{claude}");
        };
        let bare = ClaudeSpec {
            prompt: "hi".into(),
            allowed_tools: vec![],
            permission_mode: None,
            max_turns: None,
            max_budget_usd: None,
            model: None,
        };
        check("{ prompt: hi }", bare.clone());
        check(
            "{ prompt: \"write it\", allowed_tools: [Write, \"Bash(cat:*)\"], permission_mode: acceptEdits, max_turns: 5, max_budget: 0.50, model: sonnet }",
            ClaudeSpec {
                prompt: "write it".into(),
                allowed_tools: vec!["Write".into(), "Bash(cat:*)".into()],
                permission_mode: Some("acceptEdits".into()),
                max_turns: Some(5),
                max_budget_usd: Some(0.5),
                model: Some("sonnet".into()),
            },
        );
        check(
            "{ prompt: hi, max_budget: 2 }",
            ClaudeSpec { max_budget_usd: Some(2.0), ..bare.clone() },
        );
        for (mode, want) in [
            ("default", PermissionMode::Default),
            ("acceptEdits", PermissionMode::AcceptEdits),
            ("auto", PermissionMode::Auto),
            ("dontAsk", PermissionMode::DontAsk),
            ("plan", PermissionMode::Plan),
            ("bypassPermissions", PermissionMode::BypassPermissions),
        ] {
            assert_eq!(want.as_str(), mode);
            check(
                &format!("{{ prompt: hi, permission_mode: {mode} }}"),
                ClaudeSpec { permission_mode: Some(mode.into()), ..bare.clone() },
            );
        }
    }

    #[test]
    fn claude_tasks_keep_the_task_settings() {
        let s = scenario(
            "name: x\ndefaults: { timeout: 1m, retries: 2 }\ntasks:\n  - id: a\n    claude: { prompt: hi }\n    outputs: [out.md]\n    env: { K: v }\n",
        );
        let [t] = s.to_plan(&ConfigFile::default()).tasks.try_into().unwrap();
        assert_eq!((t.timeout_ms, t.retry.max_retries), (60_000, 2));
        assert_eq!(t.outputs, ["out.md"]);
        assert_eq!(t.env.get("K").map(String::as_str), Some("v"));
        let yaml = serde_yaml::to_string(&s).unwrap();
        assert_eq!(scenario(&yaml), s, "{yaml}");
    }

    #[test]
    fn goal_scenarios_need_no_tasks() {
        let s = scenario("name: g\ngoal: count the words of README.md\ncontext: [README.md]\n");
        assert!(s.is_goal());
        assert_eq!(s.context, ["README.md"]);
        assert!(s.to_plan(&ConfigFile::default()).tasks.is_empty());
        // with both, the tasks are run and the goal describes them
        let both =
            scenario("name: g\ngoal: greet\ntasks:\n  - id: a\n    exec: { program: echo }\n");
        assert!(!both.is_goal());
        assert_eq!(both.to_plan(&ConfigFile::default()).goal.as_deref(), Some("greet"));
        assert!(!scenario(HELLO).is_goal());
    }

    #[test]
    fn expect_blocks_parse() {
        let s = scenario(
            "name: x\ntasks:\n  - id: build\n    exec: { program: make }\nexpect:\n  status: failed\n  tasks: { build: skipped }\n  artifacts:\n    - path: build/out/app.txt\n      contains: ok\n      matches: '^ok$'\n      sha256: 9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08\n    - { path: build/log }\n  max_duration: 1m 30s\n  max_cost_usd: 0\n",
        );
        let e = s.expect.clone().unwrap();
        assert_eq!(e.status, Some(ExpectedRunStatus::Failed));
        assert_eq!(e.status.unwrap().status(), orchestra_proto::RunStatus::Failed);
        assert_eq!(e.tasks["build"].status(), orchestra_proto::TaskStatus::Skipped);
        assert_eq!(e.artifacts.len(), 2);
        assert_eq!(e.artifacts[0].split_path(), Some(("build", "out/app.txt")));
        assert_eq!(e.artifacts[0].contains.as_deref(), Some("ok"));
        assert_eq!(e.artifacts[0].matches.as_deref(), Some("^ok$"));
        assert_eq!(e.artifacts[1].sha256, None);
        assert_eq!(e.max_duration, Some(HumanDuration::from_secs(90)));
        assert_eq!(e.max_cost_usd, Some(0.0));
        // round trip, and `run` ignores the block
        let yaml = serde_yaml::to_string(&s).unwrap();
        assert_eq!(scenario(&yaml), s, "{yaml}");
        assert_eq!(s.to_plan(&ConfigFile::default()).tasks.len(), 1);
        // a goal scenario's tasks come from the model: any valid id may be expected
        let g = scenario(
            "name: g\ngoal: count\nexpect:\n  tasks: { count: succeeded }\n  artifacts: [{ path: count/n.txt }]\n",
        );
        assert_eq!(g.expect.unwrap().tasks.len(), 1);
        assert_eq!(scenario(HELLO).expect, None);
        let split = |p: &str| {
            ExpectArtifactFile { path: p.into(), contains: None, matches: None, sha256: None }
                .split_path()
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
        };
        assert_eq!(split("a/b/c"), Some(("a".into(), "b/c".into())));
        assert_eq!(split("a/"), None);
        assert_eq!(split("/a"), None);
        assert_eq!(split("a"), None);
    }

    /// Files to write: (path, content).
    type Files<'a> = &'a [(&'a str, &'a [u8])];

    /// Writes `files` into a temp dir, loads `text` as `<dir>/s.yaml` and asks for its goal.
    fn goal_request_in(
        text: &str,
        files: Files,
        cfg: &ConfigFile,
    ) -> (tempfile::TempDir, Result<GoalRequest, Diagnostic>) {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        let path = dir.path().join("s.yaml");
        std::fs::write(&path, text).unwrap();
        let s = load_scenario(&path).unwrap_or_else(|d| panic!("{d}"));
        let request = s.goal_request(cfg, dir.path());
        (dir, request)
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[test]
    fn goal_request_reads_the_context_and_resolves_defaults() {
        let text = "name: g\ngoal: summarise\ncontext: [notes.md, docs/a.txt]\ndefaults:\n  retries: 2\n  backoff: { initial: 1s }\n";
        let cfg = config(
            "limits: { default_timeout: 3m }\nplanning: { tools: [exec], programs: [wc, cat] }\n",
        );
        let (_dir, request) =
            goal_request_in(text, &[("notes.md", b"# notes\n"), ("docs/a.txt", b"a\n")], &cfg);
        let request = request.unwrap();
        let want = GoalRequest {
            name: "g".into(),
            goal: "summarise".into(),
            context: vec![
                ContextFile {
                    path: "notes.md".into(),
                    sha256: sha256_hex(b"# notes\n"),
                    text: "# notes\n".into(),
                    truncated: false,
                },
                ContextFile {
                    path: "docs/a.txt".into(),
                    sha256: sha256_hex(b"a\n"),
                    text: "a\n".into(),
                    truncated: false,
                },
            ],
            tools: ToolRules {
                tools: vec!["exec".into()],
                programs: vec!["wc".into(), "cat".into()],
            },
            defaults: TaskDefaults {
                timeout_ms: 180_000,
                retry: RetryPolicy {
                    max_retries: 2,
                    retry_on_exit_codes: vec![],
                    backoff: Backoff { initial_ms: 1000, ..Backoff::default() },
                },
            },
            policy_summary: String::new(),
            no_cache: false,
        };
        assert_eq!(request, want);
    }

    #[test]
    fn goal_request_defaults_match_a_bare_task() {
        // the defaults given to the model are what `to_plan` gives a task with no own values
        let text = "name: g\ngoal: x\ndefaults: { timeout: 45s, retry_on_exit_codes: [7], backoff: { max: 9s, jitter: 5% } }\ntasks:\n  - id: bare\n    exec: { program: true }\n";
        for cfg in [ConfigFile::default(), config("limits: { default_timeout: 1s }")] {
            let s = scenario(text);
            let request = s.goal_request(&cfg, Path::new("/nonexistent")).unwrap();
            let [task] = s.to_plan(&cfg).tasks.try_into().unwrap();
            assert_eq!(
                request.defaults,
                TaskDefaults { timeout_ms: task.timeout_ms, retry: task.retry }
            );
            assert_eq!(request.tools.tools, ["exec", "claude"]);
            assert!(request.tools.programs.is_empty() && request.context.is_empty());
        }
        let bare =
            scenario("name: g\ngoal: x\n").goal_request(&ConfigFile::default(), Path::new("."));
        let defaults = bare.unwrap().defaults;
        assert_eq!(defaults, TaskDefaults { timeout_ms: 600_000, retry: RetryPolicy::default() });
    }

    #[test]
    fn goal_request_bounds_the_context() {
        // (files, max_file_bytes, max_total_bytes) → (text, truncated) per file
        let check = |files: &[&str], per_file: u64, total: u64, want: &[(&str, bool)]| {
            let names: Vec<String> = (0..files.len()).map(|i| format!("f{i}.txt")).collect();
            let text = format!("name: g\ngoal: x\ncontext: [{}]\n", names.join(", "));
            let written: Vec<(&str, &[u8])> =
                names.iter().zip(files).map(|(n, f)| (n.as_str(), f.as_bytes())).collect();
            let mut cfg = ConfigFile::default();
            cfg.llm.context = ContextFileLimits {
                max_file_bytes: ByteSize(per_file),
                max_total_bytes: ByteSize(total),
            };
            let (_dir, request) = goal_request_in(&text, &written, &cfg);
            let request = request.unwrap();
            let got: Vec<(&str, bool)> =
                request.context.iter().map(|c| (c.text.as_str(), c.truncated)).collect();
            assert_eq!(got, want, "{files:?} {per_file} {total}");
            for (c, full) in request.context.iter().zip(files) {
                assert_eq!(
                    c.sha256,
                    sha256_hex(full.as_bytes()),
                    "the digest is of the whole file"
                );
            }
        };
        check(&["abc"], 3, 100, &[("abc", false)]);
        check(&["abcd"], 3, 100, &[("abc", true)]);
        check(&[""], 3, 100, &[("", false)]);
        // cut on a character boundary: `é` is 2 bytes, `€` is 3
        check(&["aé"], 2, 100, &[("a", true)]);
        check(&["aé"], 3, 100, &[("aé", false)]);
        check(&["€€"], 4, 100, &[("€", true)]);
        check(&["€€"], 2, 100, &[("", true)]);
        // the total: later files are cut, then emptied
        check(&["aaaa", "bbbb", "cccc"], 4, 6, &[("aaaa", false), ("bb", true), ("", true)]);
        check(&["aaaa", "", "cc"], 4, 4, &[("aaaa", false), ("", false), ("", true)]);
        check(&["aa", "bb"], 10, 4, &[("aa", false), ("bb", false)]);
        // a file much larger than the read buffer
        let big = "x".repeat(200_000);
        check(&[&big, "y"], 100, 101, &[(&big[..100], true), ("y", false)]);
    }

    #[test]
    fn cuts_utf8_on_char_boundaries() {
        let check = |bytes: &[u8], keep: usize, want: Option<&str>| {
            assert_eq!(cut_utf8(bytes, keep), want, "{bytes:?} {keep}");
        };
        check(b"hello", 10, Some("hello"));
        check(b"hello", 2, Some("he"));
        check(b"hello", 0, Some(""));
        check("é".as_bytes(), 1, Some(""));
        check("aé".as_bytes(), 2, Some("a"));
        // a prefix that ends inside a character is fine
        check(&"a€".as_bytes()[..3], 3, Some("a"));
        check(b"a\xff", 1, None);
        check(b"\xc3\x28", 5, None);
    }

    #[test]
    fn goal_request_errors() {
        let mut settings = insta::Settings::clone_current();
        settings.set_prepend_module_to_snapshot(false);
        settings.set_omit_expression(true);
        settings.add_filter(r"(cannot read `[^`]*`): .*", "$1: [OS ERROR]");
        let cases: &[(&str, &str, Files)] = &[
            (
                "missing",
                "name: g\ngoal: x\ncontext:\n  - here.md\n  - missing.md\n",
                &[("here.md", b"ok")],
            ),
            ("directory", "name: g\ngoal: x\ncontext: [docs]\n", &[("docs/a.md", b"ok")]),
            ("not_utf8", "name: g\ngoal: x\ncontext: [bin.dat]\n", &[("bin.dat", b"\x00\xff\xfe")]),
        ];
        for (case, text, files) in cases {
            let (dir, request) = goal_request_in(text, files, &ConfigFile::default());
            let d = request.unwrap_err();
            assert_eq!(d.exit_code(), 2);
            assert_eq!(d.file.as_deref(), Some(dir.path().join("s.yaml").as_path()));
            assert!(d.line.is_some() && d.path.as_deref().unwrap().starts_with("context["), "{d}");
            let rendered = d.render().replace(&dir.path().display().to_string(), "[DIR]");
            settings.set_description(*text);
            settings.bind(|| insta::assert_snapshot!(format!("goal_request_{case}"), rendered));
        }
        // a scenario without a goal has nothing to plan
        let s = scenario("name: x\ntasks:\n  - id: a\n    exec: { program: echo }\n");
        let d = s.goal_request(&ConfigFile::default(), Path::new(".")).unwrap_err();
        assert_eq!((d.path.as_deref(), d.line), (Some("goal"), None));
        assert_eq!(d.file.as_deref(), Some(Path::new("s.yaml")));
    }

    #[test]
    fn config_sections_parse() {
        let cfg = config(
            "llm:\n  backend: openai\n  model: qwen3\n  max_repair_rounds: 0\n  call_timeout: 90s\n  max_tokens: 100\n  prompts_dir: prompts\n  cache_dir: /tmp/c\n  context: { max_file_bytes: 1KiB, max_total_bytes: 2000 }\n  prices:\n    qwen3: { input_per_mtok: 0, output_per_mtok: 0.5 }\n  claude_code: { program: /opt/claude, max_turns: 1, max_retries: 0, api_timeout: 10s }\n  anthropic: { base_url: \"http://127.0.0.1:9\", api_key_env: KEY, max_retries: 1 }\n  openai: { base_url: \"https://example.com/v1\", api_key_env: OKEY, max_retries: 0 }\n  scripted: { dir: fixtures }\nplanning: { tools: [claude], programs: [cargo] }\nclaude_tool: { program: c2, max_retries: 5, api_timeout: 1m, allow_bypass_as_root: true, env: [HOME] }\nlimits: { max_llm_calls: 2, max_cost_usd: 0.25 }\n",
        );
        let want = LlmFile {
            backend: LlmBackend::OpenAi,
            model: Some("qwen3".into()),
            max_repair_rounds: 0,
            call_timeout: HumanDuration::from_secs(90),
            max_tokens: 100,
            prompts_dir: Some("prompts".into()),
            cache_dir: "/tmp/c".into(),
            context: ContextFileLimits {
                max_file_bytes: ByteSize(1024),
                max_total_bytes: ByteSize(2000),
            },
            prices: [("qwen3".to_owned(), PriceFile { input_per_mtok: 0.0, output_per_mtok: 0.5 })]
                .into(),
            claude_code: ClaudeCodeFile {
                program: "/opt/claude".into(),
                max_turns: 1,
                max_retries: 0,
                api_timeout: HumanDuration::from_secs(10),
            },
            anthropic: AnthropicFile {
                base_url: "http://127.0.0.1:9".into(),
                api_key_env: "KEY".into(),
                max_retries: 1,
            },
            openai: OpenAiFile {
                base_url: "https://example.com/v1".into(),
                api_key_env: "OKEY".into(),
                max_retries: 0,
            },
            scripted: ScriptedFile { dir: Some("fixtures".into()) },
        };
        assert_eq!(cfg.llm, want);
        assert_eq!(
            cfg.planning,
            PlanningFile { tools: vec![ToolKind::Claude], programs: vec!["cargo".into()] }
        );
        assert_eq!(
            cfg.claude_tool,
            ClaudeToolFile {
                program: "c2".into(),
                max_retries: 5,
                api_timeout: HumanDuration::from_secs(60),
                allow_bypass_as_root: true,
                env: vec!["HOME".into()],
            }
        );
        assert_eq!((cfg.limits.max_llm_calls, cfg.limits.max_cost_usd), (2, Some(0.25)));
        assert_eq!(cfg.price("qwen3").map(|p| p.output_per_mtok), Some(0.5));
        assert_eq!(cfg.price("other"), None);
        assert_eq!(config(&to_yaml(&cfg)), cfg);
    }

    #[test]
    fn config_sections_have_defaults() {
        let cfg = ConfigFile::default();
        let llm = &cfg.llm;
        assert_eq!(
            (llm.backend, llm.backend.as_str(), llm.model.as_deref()),
            (LlmBackend::ClaudeCode, "claude-code", None)
        );
        assert_eq!(
            (llm.max_repair_rounds, llm.call_timeout.as_millis(), llm.max_tokens),
            (2, 300_000, 8192)
        );
        assert_eq!(
            (llm.prompts_dir.as_deref(), llm.cache_dir.as_path()),
            (None, Path::new(".orchestra/plan-cache"))
        );
        assert_eq!(
            (llm.context.max_file_bytes.0, llm.context.max_total_bytes.0),
            (65_536, 262_144)
        );
        assert!(llm.prices.is_empty());
        assert_eq!(
            (
                llm.claude_code.program.as_str(),
                llm.claude_code.max_turns,
                llm.claude_code.max_retries,
                llm.claude_code.api_timeout.as_millis()
            ),
            ("claude", 3, 2, 120_000)
        );
        assert_eq!(
            (
                llm.anthropic.base_url.as_str(),
                llm.anthropic.api_key_env.as_str(),
                llm.anthropic.max_retries
            ),
            ("https://api.anthropic.com", "ANTHROPIC_API_KEY", 3)
        );
        assert_eq!(
            (llm.openai.base_url.as_str(), llm.openai.api_key_env.as_str(), llm.openai.max_retries),
            ("http://localhost:11434/v1", "OPENAI_API_KEY", 3)
        );
        assert_eq!(llm.scripted.dir, None);
        assert_eq!(cfg.planning.tools, [ToolKind::Exec, ToolKind::Claude]);
        assert!(cfg.planning.programs.is_empty());
        assert_eq!(
            (
                cfg.claude_tool.program.as_str(),
                cfg.claude_tool.max_retries,
                cfg.claude_tool.api_timeout.as_millis(),
                cfg.claude_tool.allow_bypass_as_root
            ),
            ("claude", 2, 120_000, false)
        );
        assert_eq!(
            cfg.claude_tool.env,
            ["ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN", "HOME"]
        );
        assert_eq!((cfg.limits.max_llm_calls, cfg.limits.max_cost_usd), (4, None));
        // a partial section keeps the defaults of the fields it leaves out
        let partial = config("llm: { claude_code: { max_turns: 9 } }\nclaude_tool: { env: [] }\n");
        assert_eq!(partial.llm.claude_code.max_turns, 9);
        assert_eq!(partial.llm.claude_code.program, "claude");
        assert!(partial.claude_tool.env.is_empty());
        assert_eq!(partial.llm.backend, LlmBackend::ClaudeCode);
        let backends =
            |text: &str| config(&format!("llm: {{ backend: {text} }}")).llm.backend.as_str();
        assert_eq!(
            ["claude-code", "anthropic", "openai", "scripted"].map(backends),
            ["claude-code", "anthropic", "openai", "scripted"]
        );
    }
}
