//! Plan validation: a submitted [`Plan`] becomes a [`CheckedPlan`] the scheduler can run, or the
//! list of every problem in it at once.
//!
//! Pure: no I/O, no clock. Problems come out in a stable order: plan-level problems first, then
//! each task's problems in plan order, then one `cycle` problem per strongly connected component.

use orchestra_proto::{ClaudeSpec, Plan, PlanProblem, RunOptions, TaskId, TaskSpec, Tool};
use petgraph::graph::{DiGraph, NodeIndex};
use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap, VecDeque};

/// Limits a plan is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimits {
    /// Largest number of tasks accepted.
    pub max_tasks: u32,
    /// Largest number of `depends_on` entries of one task.
    pub max_depends: u32,
}

impl PlanLimits {
    pub const DEFAULT_MAX_DEPENDS: u32 = 256;

    /// `max_tasks` from the run's options, the default per-task dependency limit.
    pub fn from_options(options: &RunOptions) -> Self {
        Self { max_tasks: options.max_tasks, max_depends: Self::DEFAULT_MAX_DEPENDS }
    }
}

/// A plan that passed [`validate`], with the graph facts the scheduler needs.
///
/// Invariant: ids are unique and valid, every dependency names a task of the plan, there is no
/// cycle, so `order` is a topological order of all tasks.
#[derive(Debug, Clone)]
pub struct CheckedPlan {
    plan: Plan,
    order: Vec<usize>,
    dependencies: Vec<Vec<usize>>,
    dependents: Vec<Vec<usize>>,
    index: HashMap<TaskId, usize>,
}

impl CheckedPlan {
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn into_plan(self) -> Plan {
        self.plan
    }

    /// The tasks in plan order; every index below refers to this slice.
    pub fn tasks(&self) -> &[TaskSpec] {
        &self.plan.tasks
    }

    pub fn len(&self) -> usize {
        self.plan.tasks.len()
    }

    /// Always false for a checked plan; here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.plan.tasks.is_empty()
    }

    /// Task indices in topological order; among tasks ready at the same time, plan order.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Task ids in topological order (what `RunReply::Accepted` carries).
    pub fn order_ids(&self) -> Vec<TaskId> {
        self.order.iter().map(|&i| self.plan.tasks[i].id.clone()).collect()
    }

    /// Direct dependencies of task `i`, in `depends_on` order.
    pub fn dependencies(&self, i: usize) -> &[usize] {
        &self.dependencies[i]
    }

    /// Tasks that depend directly on task `i`, in plan order.
    pub fn dependents(&self, i: usize) -> &[usize] {
        &self.dependents[i]
    }

    pub fn index_of(&self, id: &TaskId) -> Option<usize> {
        self.index.get(id).copied()
    }
}

/// Unknown dependencies that get a "did you mean" search; the rest list no suggestion, so a
/// pathological plan cannot make validation quadratic in edit distances.
const MAX_SUGGESTIONS: usize = 64;
/// Ids listed in a hint when none is close to an unknown dependency.
const MAX_LISTED_IDS: usize = 8;

/// Checks a plan against `limits`, reporting every problem at once.
pub fn validate(plan: &Plan, limits: &PlanLimits) -> Result<CheckedPlan, Vec<PlanProblem>> {
    let tasks = &plan.tasks;
    let n = tasks.len();
    let mut problems = Vec::new();
    if n == 0 {
        problems.push(problem(
            "empty_plan",
            "tasks",
            "the plan has no tasks",
            "add at least one task",
        ));
        return Err(problems);
    }
    if n > limits.max_tasks as usize {
        problems.push(problem(
            "too_many_tasks",
            "tasks",
            format!("the plan has {n} tasks; the limit is {}", limits.max_tasks),
            "split the work into smaller plans or raise `max_tasks`",
        ));
    }

    // First occurrence of each id.
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(n);
    for (i, t) in tasks.iter().enumerate() {
        index.entry(t.id.as_str()).or_insert(i);
    }

    let mut dependencies: Vec<Vec<usize>> = Vec::with_capacity(n);
    let mut suggestions = 0;
    for (i, t) in tasks.iter().enumerate() {
        let id = t.id.as_str();
        if let Err(e) = TaskId::parse(id) {
            problems.push(PlanProblem {
                code: "invalid_id".into(),
                path: format!("tasks[{i}].id"),
                message: format!("task id `{id}` {e}"),
                hint: None,
            });
        }
        if let Some(&first) = index.get(id).filter(|&&first| first != i) {
            problems.push(problem(
                "duplicate_id",
                format!("tasks[{i}].id"),
                format!("task id `{id}` is already used by tasks[{first}]"),
                "give every task a unique id",
            ));
        }

        if t.depends_on.len() > limits.max_depends as usize {
            problems.push(problem(
                "too_many_dependencies",
                format!("tasks[{i}].depends_on"),
                format!(
                    "task `{id}` has {} dependencies; the limit is {}",
                    t.depends_on.len(),
                    limits.max_depends
                ),
                "depend on fewer tasks, or add an intermediate task that gathers them",
            ));
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut deps = Vec::with_capacity(t.depends_on.len());
        for (k, dep) in t.depends_on.iter().enumerate() {
            let dep = dep.as_str();
            let path = format!("tasks[{i}].depends_on[{k}]");
            if dep == id {
                problems.push(problem(
                    "self_dependency",
                    path,
                    format!("task `{id}` depends on itself"),
                    "remove it from its own `depends_on`",
                ));
                continue;
            }
            match seen.entry(dep) {
                Entry::Occupied(first) => {
                    problems.push(problem(
                        "duplicate_dependency",
                        path,
                        format!(
                            "task `{id}` lists `{dep}` twice (first at depends_on[{}])",
                            first.get()
                        ),
                        "list each dependency once",
                    ));
                    continue;
                }
                Entry::Vacant(v) => {
                    v.insert(k);
                }
            }
            match index.get(dep) {
                Some(&j) => deps.push(j),
                None => {
                    let hint = if suggestions < MAX_SUGGESTIONS {
                        suggestions += 1;
                        Some(unknown_hint(dep, tasks))
                    } else {
                        None
                    };
                    problems.push(PlanProblem {
                        code: "unknown_dependency".into(),
                        path,
                        message: format!(
                            "task `{id}` depends on `{dep}`, which is not in the plan"
                        ),
                        hint,
                    });
                }
            }
        }
        dependencies.push(deps);

        match &t.tool {
            Tool::Exec(exec) => {
                if exec.program.trim().is_empty() {
                    problems.push(problem(
                        "empty_program",
                        format!("tasks[{i}].tool.program"),
                        format!("task `{id}` has an empty program"),
                        "name the program to run, e.g. `cargo`",
                    ));
                }
            }
            Tool::Claude(c) => check_claude(&mut problems, i, id, c),
        }
        if t.timeout_ms == 0 {
            problems.push(problem(
                "zero_timeout",
                format!("tasks[{i}].timeout_ms"),
                format!("task `{id}` has a timeout of zero"),
                "set `timeout_ms` to the longest one attempt may run",
            ));
        }
        let backoff = &t.retry.backoff;
        if backoff.jitter_pct > 100 {
            problems.push(problem(
                "invalid_backoff",
                format!("tasks[{i}].retry.backoff.jitter_pct"),
                format!("task `{id}` has a jitter of {}%", backoff.jitter_pct),
                "use a jitter between 0 and 100 percent",
            ));
        }
        if backoff.multiplier == 0 {
            problems.push(problem(
                "invalid_backoff",
                format!("tasks[{i}].retry.backoff.multiplier"),
                format!("task `{id}` has a backoff multiplier of zero"),
                "use 1 for a constant delay, 2 to double it after each retry",
            ));
        }
    }

    let (order, dependents) = topological_order(&dependencies);
    if order.len() < n {
        cycles(tasks, &index, &dependencies, &mut problems);
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let index = tasks.iter().enumerate().map(|(i, t)| (t.id.clone(), i)).collect();
    Ok(CheckedPlan { plan: plan.clone(), order, dependencies, dependents, index })
}

/// Permission modes of Claude Code a `claude` task may ask for.
pub const CLAUDE_PERMISSION_MODES: &[&str] =
    &["default", "acceptEdits", "auto", "dontAsk", "plan", "bypassPermissions"];

fn check_claude(problems: &mut Vec<PlanProblem>, i: usize, id: &str, c: &ClaudeSpec) {
    if c.prompt.trim().is_empty() {
        problems.push(problem(
            "empty_prompt",
            format!("tasks[{i}].tool.prompt"),
            format!("claude task `{id}` has an empty prompt"),
            "say what the agent should do, and which files it should leave behind",
        ));
    }
    if c.max_turns == Some(0) {
        problems.push(problem(
            "zero_max_turns",
            format!("tasks[{i}].tool.max_turns"),
            format!("claude task `{id}` allows zero turns"),
            "allow at least 1 turn, or leave `max_turns` out",
        ));
    }
    if let Some(b) = c.max_budget_usd
        && !(b.is_finite() && b > 0.0)
    {
        problems.push(problem(
            "bad_budget",
            format!("tasks[{i}].tool.max_budget_usd"),
            format!("claude task `{id}` has a budget of {b} USD"),
            "a budget must be a positive number of US dollars, e.g. 0.5",
        ));
    }
    if let Some(mode) = &c.permission_mode
        && !CLAUDE_PERMISSION_MODES.contains(&mode.as_str())
    {
        problems.push(problem(
            "unknown_permission_mode",
            format!("tasks[{i}].tool.permission_mode"),
            format!("claude task `{id}` asks for permission mode `{mode}`"),
            format!("use one of: {}", CLAUDE_PERMISSION_MODES.join(", ")),
        ));
    }
}

fn problem(
    code: &str,
    path: impl Into<String>,
    message: impl Into<String>,
    hint: impl Into<String>,
) -> PlanProblem {
    PlanProblem {
        code: code.into(),
        path: path.into(),
        message: message.into(),
        hint: Some(hint.into()),
    }
}

/// Kahn's algorithm, ties broken by plan order. Returns the (possibly partial, if there are
/// cycles) order and each task's dependents.
fn topological_order(dependencies: &[Vec<usize>]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let n = dependencies.len();
    let mut dependents = vec![Vec::new(); n];
    for (i, deps) in dependencies.iter().enumerate() {
        for &j in deps {
            dependents[j].push(i);
        }
    }
    let mut waiting: Vec<usize> = dependencies.iter().map(Vec::len).collect();
    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..n).filter(|&i| waiting[i] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for &d in &dependents[i] {
            waiting[d] -= 1;
            if waiting[d] == 0 {
                ready.push(Reverse(d));
            }
        }
    }
    (order, dependents)
}

/// One `cycle` problem per strongly connected component with more than one task, showing one
/// cycle through its first task (in plan order) as `a → b → c → a`, `a` depending on `b`.
///
/// Uses `kosaraju_scc`: petgraph's `tarjan_scc` recurses once per node of a path, which a long
/// chain would turn into a stack overflow.
fn cycles(
    tasks: &[TaskSpec],
    index: &HashMap<&str, usize>,
    dependencies: &[Vec<usize>],
    problems: &mut Vec<PlanProblem>,
) {
    let n = tasks.len();
    let mut graph: DiGraph<(), ()> = DiGraph::with_capacity(n, 0);
    for _ in 0..n {
        graph.add_node(());
    }
    for (i, deps) in dependencies.iter().enumerate() {
        for &j in deps {
            graph.add_edge(NodeIndex::new(i), NodeIndex::new(j), ());
        }
    }
    let mut component = vec![usize::MAX; n];
    let mut found: Vec<Vec<usize>> = Vec::new();
    for scc in petgraph::algo::kosaraju_scc(&graph) {
        if scc.len() < 2 {
            continue;
        }
        let c = found.len();
        for node in &scc {
            component[node.index()] = c;
        }
        let start = scc.iter().map(|node| node.index()).min().unwrap_or_default();
        found.push(cycle_through(start, c, &component, dependencies));
    }
    found.sort_by_key(|cycle| cycle[0]);
    for cycle in found {
        let (start, next) = (cycle[0], cycle[1]);
        let k = tasks[start]
            .depends_on
            .iter()
            .position(|d| index.get(d.as_str()) == Some(&next))
            .unwrap_or_default();
        let rendered: Vec<&str> =
            cycle.iter().chain(Some(&start)).map(|&i| tasks[i].id.as_str()).collect();
        problems.push(problem(
            "cycle",
            format!("tasks[{start}].depends_on[{k}]"),
            format!("dependency cycle: {}", rendered.join(" → ")),
            "each task depends on the next; remove one of these dependencies",
        ));
    }
}

/// The shortest cycle from `start` back to itself inside component `c` (breadth-first over
/// `dependencies`, so deterministic). Returns the tasks of the cycle, `start` first.
fn cycle_through(
    start: usize,
    c: usize,
    component: &[usize],
    dependencies: &[Vec<usize>],
) -> Vec<usize> {
    let mut parent: HashMap<usize, usize> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(u) = queue.pop_front() {
        for &v in &dependencies[u] {
            if v == start {
                let mut cycle = vec![u];
                let mut cur = u;
                while cur != start {
                    cur = parent[&cur];
                    cycle.push(cur);
                }
                cycle.reverse();
                return cycle;
            }
            if component[v] == c && !parent.contains_key(&v) {
                parent.insert(v, u);
                queue.push_back(v);
            }
        }
    }
    // Unreachable for a strongly connected component; a lone start is still a useful answer.
    vec![start]
}

/// "did you mean `x`?" when an id is close to `unknown`, else the known ids.
fn unknown_hint(unknown: &str, tasks: &[TaskSpec]) -> String {
    let limit = (unknown.chars().count() / 3).max(1);
    let best = tasks
        .iter()
        .filter_map(|t| {
            let id = t.id.as_str();
            let (a, b) = (id.chars().count(), unknown.chars().count());
            if a.abs_diff(b) > limit {
                return None;
            }
            let d = edit_distance(id, unknown);
            (d <= limit).then_some((d, id))
        })
        .min_by_key(|&(d, _)| d);
    if let Some((_, id)) = best {
        return format!("did you mean `{id}`?");
    }
    let mut listed: Vec<String> =
        tasks.iter().take(MAX_LISTED_IDS).map(|t| format!("`{}`", t.id)).collect();
    if tasks.len() > MAX_LISTED_IDS {
        listed.push(format!("and {} more", tasks.len() - MAX_LISTED_IDS));
    }
    format!("the plan's tasks are {}", listed.join(", "))
}

/// Edit distance over chars, counting a swap of two neighbours as one edit (optimal string
/// alignment): `biuld` is one edit from `build`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 0..a.len() {
        cur[0] = i + 1;
        for j in 0..b.len() {
            let substitute = prev[j] + usize::from(a[i] != b[j]);
            let mut d = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
            if i > 0 && j > 0 && a[i] == b[j - 1] && a[i - 1] == b[j] {
                d = d.min(before[j - 1] + 1);
            }
            cur[j + 1] = d;
        }
        std::mem::swap(&mut before, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests;
