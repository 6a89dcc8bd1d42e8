//! The plan as a model writes it: a flat, forgiving JSON shape with its JSON Schema, turned
//! into a [`Plan`] with every problem found at once (each with a field path the model can act
//! on). Pure: no I/O.

use orchestra_proto::{
    ClaudeSpec, ExecSpec, GoalRequest, Plan, PlanProblem, RetryPolicy, TaskId, TaskSpec, Tool,
};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// Fields a planned task may have.
const FIELDS: &[&str] = &[
    "id",
    "description",
    "tool",
    "program",
    "args",
    "prompt",
    "allowed_tools",
    "permission_mode",
    "max_turns",
    "max_budget_usd",
    "model",
    "depends_on",
    "outputs",
    "env",
    "timeout_seconds",
    "retries",
];

/// The JSON Schema the model's answer must follow (given to the backend as the tool / response
/// format schema, and quoted in the prompt).
pub fn schema() -> Value {
    let strings = json!({"type": "array", "items": {"type": "string"}});
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["tasks"],
        "properties": {
            "tasks": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["id", "tool"],
                    "properties": {
                        "id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$",
                               "description": "unique task id: letters, digits, _ and -"},
                        "description": {"type": "string"},
                        "tool": {"type": "string", "enum": ["exec", "claude"]},
                        "program": {"type": "string",
                                    "description": "exec: the program to run (no shell unless allowed)"},
                        "args": strings,
                        "prompt": {"type": "string", "description": "claude: what the agent must do"},
                        "allowed_tools": strings,
                        "permission_mode": {"type": "string"},
                        "max_turns": {"type": "integer", "minimum": 1},
                        "max_budget_usd": {"type": "number", "exclusiveMinimum": 0},
                        "model": {"type": "string"},
                        "depends_on": strings,
                        "outputs": {"type": "array", "items": {"type": "string"},
                                    "description": "files (globs, relative to the task's workspace) handed to dependents"},
                        "env": {"type": "object", "additionalProperties": {"type": "string"}},
                        "timeout_seconds": {"type": "integer", "minimum": 1},
                        "retries": {"type": "integer", "minimum": 0, "maximum": 10}
                    }
                }
            }
        }
    })
}

/// Turns the model's JSON into a plan named after the goal, filling defaults. Structural
/// problems only; the DAG checks and tool rules come after.
pub fn to_plan(value: &Value, goal: &GoalRequest) -> Result<Plan, Vec<PlanProblem>> {
    let mut problems = Vec::new();
    let Some(obj) = value.as_object() else {
        return Err(vec![bad(
            "not_an_object",
            "",
            "the answer is not a JSON object",
            type_of(value),
        )]);
    };
    for key in obj.keys().filter(|k| *k != "tasks") {
        problems.push(unknown_field(key, key, &["tasks"]));
    }
    let Some(tasks) = obj.get("tasks") else {
        problems.push(PlanProblem {
            code: "missing_field".into(),
            path: "tasks".into(),
            message: "the answer has no `tasks` array".into(),
            hint: Some("answer with {\"tasks\": [ … ]}".into()),
        });
        return Err(problems);
    };
    let Some(tasks) = tasks.as_array() else {
        problems.push(bad("wrong_type", "tasks", "`tasks` must be an array", type_of(tasks)));
        return Err(problems);
    };
    if tasks.is_empty() {
        problems.push(PlanProblem {
            code: "empty_plan".into(),
            path: "tasks".into(),
            message: "the plan has no tasks".into(),
            hint: Some("plan at least one task that works towards the goal".into()),
        });
    }
    let mut specs = Vec::with_capacity(tasks.len());
    for (i, t) in tasks.iter().enumerate() {
        if let Some(spec) = task(&mut problems, i, t, goal) {
            specs.push(spec);
        }
    }
    if problems.is_empty() {
        Ok(Plan { name: goal.name.clone(), goal: Some(goal.goal.clone()), tasks: specs })
    } else {
        Err(problems)
    }
}

/// Checks the plan against what the goal request allows: tool kinds and programs.
pub fn check_tools(plan: &Plan, goal: &GoalRequest) -> Vec<PlanProblem> {
    let rules = &goal.tools;
    let mut problems = Vec::new();
    for (i, t) in plan.tasks.iter().enumerate() {
        let kind = t.tool.name();
        if !rules.tools.iter().any(|k| k == kind) {
            problems.push(PlanProblem {
                code: "tool_not_allowed".into(),
                path: format!("tasks[{i}].tool"),
                message: format!("task `{}` uses the `{kind}` tool, which is not allowed", t.id),
                hint: Some(format!("use one of: {}", rules.tools.join(", "))),
            });
        }
        if let Tool::Exec(e) = &t.tool
            && !rules.programs.is_empty()
            && !rules.programs.contains(&e.program)
        {
            let hint = match strsim_closest(&e.program, &rules.programs) {
                Some(near) => {
                    format!("did you mean `{near}`? allowed: {}", rules.programs.join(", "))
                }
                None => format!("allowed programs: {}", rules.programs.join(", ")),
            };
            problems.push(PlanProblem {
                code: "program_not_allowed".into(),
                path: format!("tasks[{i}].program"),
                message: format!("task `{}` runs `{}`, which is not allowed", t.id, e.program),
                hint: Some(hint),
            });
        }
    }
    problems
}

fn strsim_closest<'a>(word: &str, candidates: &'a [String]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.as_str())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn task(
    problems: &mut Vec<PlanProblem>,
    i: usize,
    value: &Value,
    goal: &GoalRequest,
) -> Option<TaskSpec> {
    let at = format!("tasks[{i}]");
    let Some(obj) = value.as_object() else {
        problems.push(bad("wrong_type", &at, "a task must be an object", type_of(value)));
        return None;
    };
    let before = problems.len();
    let mut f = Fields { problems, at: &at, obj };
    for key in obj.keys().filter(|k| !FIELDS.contains(&k.as_str())) {
        let path = format!("{at}.{key}");
        f.problems.push(unknown_field(&path, key, FIELDS));
    }
    let id = match f.string("id", true) {
        Some(s) => match TaskId::parse(&s) {
            Ok(id) => Some(id),
            Err(e) => {
                f.problems.push(bad(
                    "bad_id",
                    &format!("{at}.id"),
                    &format!("task id `{s}` is invalid: {e}"),
                    "1 to 64 letters, digits, `_` or `-`".into(),
                ));
                None
            }
        },
        None => None,
    };
    let description = f.string("description", false);
    let tool = f.string("tool", true);
    let depends_on: Vec<TaskId> = f
        .strings("depends_on")
        .into_iter()
        .enumerate()
        .filter_map(|(j, d)| match TaskId::parse(&d) {
            Ok(id) => Some(id),
            Err(e) => {
                let path = format!("{at}.depends_on[{j}]");
                let msg = format!("dependency `{d}` is not a valid task id: {e}");
                f.problems.push(bad("bad_id", &path, &msg, "the id of another task".into()));
                None
            }
        })
        .collect();
    let outputs = f.strings("outputs");
    let env = f.env();
    let timeout_ms =
        f.integer("timeout_seconds", 1, 86_400).map_or(goal.defaults.timeout_ms, |s| s * 1000);
    let retry = match f.integer("retries", 0, 10) {
        Some(n) => RetryPolicy { max_retries: n as u32, ..goal.defaults.retry.clone() },
        None => goal.defaults.retry.clone(),
    };
    let exec_fields = ["program", "args"];
    let claude_fields =
        ["prompt", "allowed_tools", "permission_mode", "max_turns", "max_budget_usd", "model"];
    let tool = match tool.as_deref() {
        Some("exec") => {
            f.forbid(&claude_fields, "exec");
            let program = f.string("program", true);
            let args = f.strings("args");
            program.map(|program| Tool::Exec(ExecSpec { program, args }))
        }
        Some("claude") => {
            f.forbid(&exec_fields, "claude");
            let prompt = f.string("prompt", true);
            let allowed_tools = f.strings("allowed_tools");
            let permission_mode = f.string("permission_mode", false);
            let max_turns = f.integer("max_turns", 1, 1000).map(|n| n as u32);
            let max_budget_usd = f.number("max_budget_usd");
            let model = f.string("model", false);
            prompt.map(|prompt| {
                Tool::Claude(ClaudeSpec {
                    prompt,
                    allowed_tools,
                    permission_mode,
                    max_turns,
                    max_budget_usd,
                    model,
                })
            })
        }
        Some(other) => {
            f.problems.push(bad(
                "unknown_tool",
                &format!("{at}.tool"),
                &format!("unknown tool `{other}`"),
                "`exec` (a program with arguments) or `claude` (a Claude Code sub-agent)".into(),
            ));
            None
        }
        None => None,
    };
    if problems.len() > before {
        return None;
    }
    Some(TaskSpec {
        id: id?,
        description,
        tool: tool?,
        depends_on,
        env,
        timeout_ms,
        retry,
        outputs,
    })
}

struct Fields<'a> {
    problems: &'a mut Vec<PlanProblem>,
    at: &'a str,
    obj: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn path(&self, key: &str) -> String {
        format!("{}.{key}", self.at)
    }

    fn string(&mut self, key: &str, required: bool) -> Option<String> {
        match self.obj.get(key) {
            None | Some(Value::Null) if required => {
                let path = self.path(key);
                self.problems.push(PlanProblem {
                    code: "missing_field".into(),
                    message: format!("`{path}` is required"),
                    path,
                    hint: None,
                });
                None
            }
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(v) => {
                let path = self.path(key);
                self.problems.push(bad(
                    "wrong_type",
                    &path,
                    &format!("`{path}` must be a string"),
                    type_of(v),
                ));
                None
            }
        }
    }

    fn strings(&mut self, key: &str) -> Vec<String> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (j, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        v => {
                            let path = format!("{}[{j}]", self.path(key));
                            let msg = format!("`{path}` must be a string");
                            self.problems.push(bad("wrong_type", &path, &msg, type_of(v)));
                        }
                    }
                }
                out
            }
            Some(v) => {
                let path = self.path(key);
                let msg = format!("`{path}` must be an array of strings");
                self.problems.push(bad("wrong_type", &path, &msg, type_of(v)));
                Vec::new()
            }
        }
    }

    fn integer(&mut self, key: &str, min: u64, max: u64) -> Option<u64> {
        let v = self.obj.get(key)?;
        if v.is_null() {
            return None;
        }
        match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                let path = self.path(key);
                let msg = format!("`{path}` must be a whole number from {min} to {max}");
                self.problems.push(bad("bad_value", &path, &msg, v.to_string()));
                None
            }
        }
    }

    fn number(&mut self, key: &str) -> Option<f64> {
        let v = self.obj.get(key)?;
        if v.is_null() {
            return None;
        }
        match v.as_f64() {
            Some(n) if n.is_finite() && n > 0.0 => Some(n),
            _ => {
                let path = self.path(key);
                let msg = format!("`{path}` must be a positive number");
                self.problems.push(bad("bad_value", &path, &msg, v.to_string()));
                None
            }
        }
    }

    fn env(&mut self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        match self.obj.get("env") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    match v {
                        Value::String(s) => {
                            env.insert(k.clone(), s.clone());
                        }
                        v => {
                            let path = format!("{}.{k}", self.path("env"));
                            let msg = format!("`{path}` must be a string");
                            self.problems.push(bad("wrong_type", &path, &msg, type_of(v)));
                        }
                    }
                }
            }
            Some(v) => {
                let path = self.path("env");
                let msg = format!("`{path}` must be an object of strings");
                self.problems.push(bad("wrong_type", &path, &msg, type_of(v)));
            }
        }
        env
    }

    /// Fields of the other tool are a mistake, not something to ignore silently.
    fn forbid(&mut self, keys: &[&str], tool: &str) {
        for key in keys.iter().filter(|k| self.obj.contains_key(**k)) {
            let path = self.path(key);
            self.problems.push(PlanProblem {
                code: "field_not_for_tool".into(),
                message: format!("`{path}` does not apply to a `{tool}` task"),
                path,
                hint: Some("remove it, or change `tool`".into()),
            });
        }
    }
}

fn bad(code: &str, path: &str, message: &str, found: String) -> PlanProblem {
    PlanProblem {
        code: code.into(),
        path: path.into(),
        message: message.into(),
        hint: Some(format!("found {found}")),
    }
}

fn unknown_field(path: &str, key: &str, known: &[&str]) -> PlanProblem {
    let near = known.iter().map(|k| (edit_distance(key, k), *k)).min_by_key(|(d, _)| *d);
    let hint = match near {
        Some((d, k)) if d <= 2 => format!("did you mean `{k}`?"),
        _ => format!("known fields: {}", known.join(", ")),
    };
    PlanProblem {
        code: "unknown_field".into(),
        path: path.into(),
        message: format!("unknown field `{key}`"),
        hint: Some(hint),
    }
}

fn type_of(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {:?}", truncate(s, 40)),
        Value::Array(a) => format!("an array of {} items", a.len()),
        Value::Object(_) => "an object".into(),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let cut: String = s.chars().take(max).collect();
        format!("{cut}…")
    }
}
