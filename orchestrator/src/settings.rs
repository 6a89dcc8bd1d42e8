//! The YAML file layer: scenario files and the config file (`orchestra.yaml`).
//!
//! Loading is parse, then check: serde (strict, `deny_unknown_fields`) reports type errors with
//! the field path and the YAML position; then the checks this layer owns (ids, one tool per task,
//! positive limits) run on the parsed value. Either way the result is one [`Diagnostic`]. Plan
//! checks that need the whole graph (duplicate ids, unknown dependencies, cycles) belong to L2.
//!
//! Resolution is pure: [`ScenarioFile::to_plan`] fills every [`TaskSpec`] from the task, the
//! scenario's `defaults` and the config, in that order of precedence.

// A `Diagnostic` is large, but at most one is made per process and callers match on the type.
#![allow(clippy::result_large_err)]

use crate::diagnostic::{Diagnostic, backticked, did_you_mean, split_expected};
use orchestra_proto::{
    Backoff, ExecSpec, Plan, RetryPolicy, RunOptions, TaskId, TaskSpec, Tool, ids::IdError,
};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The documented default config; parsing it gives [`ConfigFile::default`].
pub const DEFAULT_CONFIG_YAML: &str = include_str!("default-config.yaml");

/// Tool keys a task may use today.
pub const TOOLS: &[&str] = &["exec"];
/// Tool keys that are recognised but not available yet.
const RESERVED_TOOLS: &[&str] = &["shell", "claude", "http"];

const DURATION_EXPECTED: &str = "a duration such as `30s` or `2m`";
const SIZE_EXPECTED: &str = "a size such as `1048576` (bytes), `512KiB`, `1MiB` or `10MB`";
const PERCENT_EXPECTED: &str = "a percentage from 0 to 100 such as `20%` or `20`";
const ID_EXPECTED: &str = "1 to 64 letters, digits, `_` or `-`";

// ---------------------------------------------------------------------------------------------
// Scenario file

/// A scenario: what to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a scenario: a mapping with `name` and `tasks`")]
pub struct ScenarioFile {
    /// Name of the scenario: 1 to 64 letters, digits, `_` or `-`.
    pub name: String,
    /// What the scenario is for, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal: Option<String>,
    /// Values for every task that does not set its own.
    #[serde(default)]
    pub defaults: DefaultsFile,
    /// The tasks; each names exactly one tool.
    #[serde(default)]
    pub tasks: Vec<TaskFile>,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    // Tools that are not available yet, parsed so that the error can say so.
    #[serde(default, skip_serializing)]
    #[schemars(skip)]
    shell: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing)]
    #[schemars(skip)]
    claude: Option<serde_yaml::Value>,
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
}

impl ScenarioFile {
    /// The fully specified plan: per-task values override `defaults`, which override the
    /// config's `limits.default_timeout` and the built-in backoff.
    ///
    /// Ids are not re-checked; a file from [`load_scenario`] or [`load_scenario_str`] has valid
    /// ids and exactly one tool per task. A task without a tool (possible only for a value built
    /// otherwise) gets an `exec` of an empty program, which cannot run.
    pub fn to_plan(&self, cfg: &ConfigFile) -> Plan {
        Plan {
            name: self.name.clone(),
            goal: self.goal.clone(),
            tasks: self.tasks.iter().map(|t| self.task_spec(t, cfg)).collect(),
        }
    }

    fn task_spec(&self, t: &TaskFile, cfg: &ConfigFile) -> TaskSpec {
        let d = &self.defaults;
        let mut env = d.env.clone();
        env.extend(t.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let builtin = Backoff::default();
        let (b, db) = (&t.backoff, &d.backoff);
        let backoff = Backoff {
            initial_ms: b
                .initial
                .or(db.initial)
                .map_or(builtin.initial_ms, HumanDuration::as_millis),
            multiplier: b.multiplier.or(db.multiplier).unwrap_or(builtin.multiplier),
            max_ms: b.max.or(db.max).map_or(builtin.max_ms, HumanDuration::as_millis),
            jitter_pct: b.jitter.or(db.jitter).map_or(builtin.jitter_pct, |p| p.0),
        };
        let exec = t.exec.clone().unwrap_or(ExecFile { program: String::new(), args: Vec::new() });
        TaskSpec {
            id: TaskId::new_unchecked(&t.id),
            description: t.description.clone(),
            tool: Tool::Exec(ExecSpec { program: exec.program, args: exec.args }),
            depends_on: t.depends_on.iter().map(TaskId::new_unchecked).collect(),
            env,
            timeout_ms: t.timeout.or(d.timeout).unwrap_or(cfg.limits.default_timeout).as_millis(),
            retry: RetryPolicy {
                max_retries: t.retries.unwrap_or(d.retries),
                retry_on_exit_codes: t
                    .retry_on_exit_codes
                    .clone()
                    .unwrap_or_else(|| d.retry_on_exit_codes.clone()),
                backoff,
            },
            outputs: t.outputs.clone(),
        }
    }

    fn check(&self) -> Result<(), Problem> {
        let root = FieldPath::default();
        check_token(&root.key("name"), "scenario name", &self.name)?;
        if self.tasks.is_empty() {
            let problem = Problem::value(root.key("tasks"), "the scenario has no tasks")
                .expected("a list of tasks such as `[{ id: greet, exec: { program: echo } }]`");
            return Err(if self.goal.is_some() {
                problem.hint(
                    "planning a goal with an LLM is not available yet in this version: \
                     write the tasks explicitly",
                )
            } else {
                problem
            });
        }
        let defaults = root.key("defaults");
        check_timeout(&defaults.key("timeout"), self.defaults.timeout)?;
        check_backoff(&defaults.key("backoff"), &self.defaults.backoff)?;
        check_env(&defaults.key("env"), &self.defaults.env)?;
        for (i, task) in self.tasks.iter().enumerate() {
            check_task(&root.key("tasks").index(i), task)?;
        }
        Ok(())
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
            .expected(format!("one of {}", one_of(TOOLS))));
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
    for (j, dep) in task.depends_on.iter().enumerate() {
        if let Err(err) = TaskId::parse(dep) {
            return Err(id_problem(at.key("depends_on").index(j), "task id", dep, &err));
        }
    }
    check_timeout(&at.key("timeout"), task.timeout)?;
    check_backoff(&at.key("backoff"), &task.backoff)?;
    check_env(&at.key("env"), &task.env)
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
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(Problem::key(
                at.key(name),
                format!("invalid environment variable name `{name}`"),
            )
            .expected("a non-empty name without `=`, such as `RUST_LOG`"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Config file

/// The config file (`orchestra.yaml`): how scenarios are run on this machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
}

/// Limits of every run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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

impl Default for ConfigFile {
    fn default() -> Self {
        Self {
            runs_dir: PathBuf::from("runs"),
            workers: 2,
            pool: "default".to_owned(),
            limits: LimitsFile::default(),
            logging: LoggingFile::default(),
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
        }
    }
}

impl ConfigFile {
    /// The options of one run: `max_parallel` is `limits.max_parallel`, else `2 × workers`;
    /// `dry_run` is false.
    pub fn run_options(&self) -> RunOptions {
        RunOptions {
            max_parallel: self.limits.max_parallel.unwrap_or(self.workers.saturating_mul(2)),
            pool: self.pool.clone(),
            dry_run: false,
            output_cap_bytes: self.limits.output_cap.0,
            kill_grace_ms: self.limits.kill_grace.as_millis(),
            max_tasks: self.limits.max_tasks,
        }
    }

    fn check(&self) -> Result<(), Problem> {
        let root = FieldPath::default();
        let at_least_one = |at: FieldPath, value: u32, what: &str| {
            if value == 0 {
                Err(Problem::value(at, format!("{what} is 0"))
                    .expected("a whole number of at least 1"))
            } else {
                Ok(())
            }
        };
        at_least_one(root.key("workers"), self.workers, "the number of workers")?;
        check_token(&root.key("pool"), "pool name", &self.pool)?;
        let limits = root.key("limits");
        at_least_one(limits.key("max_tasks"), self.limits.max_tasks, "the task limit")?;
        if let Some(n) = self.limits.max_parallel {
            at_least_one(limits.key("max_parallel"), n, "the parallelism limit")?;
        }
        if self.limits.output_cap.0 == 0 {
            return Err(Problem::value(limits.key("output_cap"), "the output cap is 0")
                .expected(format!("{SIZE_EXPECTED}, greater than zero")));
        }
        check_timeout(&limits.key("default_timeout"), Some(self.limits.default_timeout))
    }
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
                format!("a scenario needs at least `name` and `tasks`; {}", self.schema_hint())
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
    parse(Kind::Scenario, path, &text, ScenarioFile::check)
}

/// Parses and checks scenario text; `name` is how errors refer to it.
pub fn load_scenario_str(name: &str, text: &str) -> Result<ScenarioFile, Diagnostic> {
    parse(Kind::Scenario, Path::new(name), text, ScenarioFile::check)
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
    check(&value).map_err(|p| {
        let location = locate(text, &p.path.0, p.at_key);
        let d = Diagnostic {
            path: Some(p.path.to_string()),
            expected: p.expected,
            hint: p.hint,
            ..invalid(p.message)
        };
        match location {
            Some((line, column)) => d.at(text, line, column),
            None => d,
        }
    })?;
    Ok(value)
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
                ("goal_without_tasks", "name: x\ngoal: do it\n"),
                (
                    "two_tools",
                    "name: x\ntasks:\n  - id: a\n    exec: { program: echo }\n    shell: echo hi\n",
                ),
                ("no_tool", "name: x\ntasks:\n  - id: a\n    description: nothing to run\n"),
                ("reserved_tool", "name: x\ntasks:\n  - id: a\n    claude: { prompt: hi }\n"),
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
                ..default
            },
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
        let cfg = check(config_schema(), &["runs_dir", "workers", "pool", "limits", "logging"]);
        assert!(cfg["properties"]["workers"]["description"].is_string());
        let s = check(scenario_schema(), &["name", "goal", "defaults", "tasks"]);
        assert_eq!(s["required"], serde_json::json!(["name"]));
        let text = s.to_string();
        // nested structs are strict too, and the reserved tools are not advertised
        assert!(text.matches("\"additionalProperties\":false").count() >= 4, "{text}");
        assert!(!text.contains("\"shell\""), "{text}");
        assert!(text.contains("\"exec\""), "{text}");
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
}
