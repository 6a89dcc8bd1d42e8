use super::*;
use orchestra_proto::{ExecSpec, RetryPolicy};

fn task(id: &str, deps: &[&str]) -> TaskSpec {
    TaskSpec {
        id: TaskId::new_unchecked(id),
        description: None,
        tool: Tool::Exec(ExecSpec { program: "true".into(), args: Vec::new() }),
        depends_on: deps.iter().map(|d| TaskId::new_unchecked(*d)).collect(),
        env: Default::default(),
        timeout_ms: 1_000,
        retry: RetryPolicy::default(),
        outputs: Vec::new(),
    }
}

/// `[("a", &[]), ("b", &["a"])]`: b depends on a.
fn plan(tasks: &[(&str, &[&str])]) -> Plan {
    Plan {
        name: "test".into(),
        goal: None,
        tasks: tasks.iter().map(|(id, d)| task(id, d)).collect(),
    }
}

const LIMITS: PlanLimits = PlanLimits { max_tasks: 100, max_depends: 4 };

/// One line per problem: `code path: message`, then `  hint: …` when there is one.
fn render(problems: &[PlanProblem]) -> String {
    let mut out = String::new();
    for p in problems {
        out.push_str(&format!("{} {}: {}\n", p.code, p.path, p.message));
        if let Some(h) = &p.hint {
            out.push_str(&format!("  hint: {h}\n"));
        }
    }
    out
}

/// Validates `plan` and compares its problems, without hints, with `expect`.
#[track_caller]
fn check(plan: Plan, expect: &[&str]) {
    let got = match validate(&plan, &LIMITS) {
        Ok(_) => Vec::new(),
        Err(problems) => {
            problems.iter().map(|p| format!("{} {}: {}", p.code, p.path, p.message)).collect()
        }
    };
    assert_eq!(got, expect);
}

/// Validates a plan expected to be valid and compares its topological order with `expect`.
#[track_caller]
fn check_order(plan: Plan, expect: &str) {
    let checked = match validate(&plan, &LIMITS) {
        Ok(c) => c,
        Err(p) => panic!("unexpected problems:\n{}", render(&p)),
    };
    let got: Vec<String> = checked.order_ids().iter().map(|id| id.to_string()).collect();
    assert_eq!(got.join(" "), expect);
}

fn problems(plan: Plan) -> Vec<PlanProblem> {
    match validate(&plan, &LIMITS) {
        Ok(_) => panic!("expected problems"),
        Err(p) => p,
    }
}

#[test]
fn valid_plans_and_their_order() {
    check_order(plan(&[("a", &[])]), "a");
    check_order(plan(&[("a", &[]), ("b", &[]), ("c", &[])]), "a b c");
    check_order(plan(&[("c", &["b"]), ("b", &["a"]), ("a", &[])]), "a b c");
    // diamond: among ready tasks, plan order
    check_order(plan(&[("d", &["b", "c"]), ("c", &["a"]), ("b", &["a"]), ("a", &[])]), "a c b d");
    check_order(plan(&[("x", &[]), ("y", &["x"]), ("a", &[]), ("z", &["a"])]), "x y a z");
    // once ready, a task declared earlier goes before one declared later
    check_order(plan(&[("b", &["a"]), ("a", &[]), ("c", &[])]), "a b c");
}

#[test]
fn graph_facts() {
    let checked =
        validate(&plan(&[("d", &["b", "c"]), ("b", &["a"]), ("c", &["a"]), ("a", &[])]), &LIMITS)
            .unwrap();
    assert_eq!(checked.len(), 4);
    assert_eq!(checked.dependencies(0), &[1, 2]);
    assert_eq!(checked.dependents(3), &[1, 2]);
    assert_eq!(checked.dependents(0), &[] as &[usize]);
    assert_eq!(checked.index_of(&TaskId::new_unchecked("c")), Some(2));
    assert_eq!(checked.index_of(&TaskId::new_unchecked("zz")), None);
    assert_eq!(checked.order(), &[3, 1, 2, 0]);
}

#[test]
fn single_problems() {
    check(plan(&[]), &["empty_plan tasks: the plan has no tasks"]);
    check(
        plan(&[("a", &[]), ("a", &[])]),
        &["duplicate_id tasks[1].id: task id `a` is already used by tasks[0]"],
    );
    check(
        plan(&[("a", &[]), ("b", &[]), ("a", &[]), ("a", &[])]),
        &[
            "duplicate_id tasks[2].id: task id `a` is already used by tasks[0]",
            "duplicate_id tasks[3].id: task id `a` is already used by tasks[0]",
        ],
    );
    check(
        plan(&[("a", &["nope"])]),
        &[
            "unknown_dependency tasks[0].depends_on[0]: task `a` depends on `nope`, which is not in the plan",
        ],
    );
    check(
        plan(&[("a", &[]), ("b", &["a", "b"])]),
        &["self_dependency tasks[1].depends_on[1]: task `b` depends on itself"],
    );
    check(
        plan(&[("a", &[]), ("b", &["a", "a"])]),
        &[
            "duplicate_dependency tasks[1].depends_on[1]: task `b` lists `a` twice (first at depends_on[0])",
        ],
    );
    check(
        plan(&[("a", &["b"]), ("b", &["a"])]),
        &["cycle tasks[0].depends_on[0]: dependency cycle: a → b → a"],
    );
    check(
        plan(&[("x", &[]), ("a", &["x", "c"]), ("b", &["a"]), ("c", &["b"])]),
        &["cycle tasks[1].depends_on[1]: dependency cycle: a → c → b → a"],
    );
    check(
        plan(&[
            ("a", &["b", "c", "d", "e", "f"]),
            ("b", &[]),
            ("c", &[]),
            ("d", &[]),
            ("e", &[]),
            ("f", &[]),
        ]),
        &["too_many_dependencies tasks[0].depends_on: task `a` has 5 dependencies; the limit is 4"],
    );
    check(
        plan(&[("a.b", &[])]),
        &[
            "invalid_id tasks[0].id: task id `a.b` contains `.`; only letters, digits, `_` and `-` are allowed",
        ],
    );
    check(plan(&[("", &[])]), &["invalid_id tasks[0].id: task id `` is empty"]);
}

#[test]
fn task_field_problems() {
    let with = |f: &dyn Fn(&mut TaskSpec)| {
        let mut p = plan(&[("a", &[])]);
        f(&mut p.tasks[0]);
        p
    };
    check(
        with(&|t| t.tool = Tool::Exec(ExecSpec { program: "  ".into(), args: vec!["x".into()] })),
        &["empty_program tasks[0].tool.program: task `a` has an empty program"],
    );
    check(
        with(&|t| t.timeout_ms = 0),
        &["zero_timeout tasks[0].timeout_ms: task `a` has a timeout of zero"],
    );
    check(
        with(&|t| t.retry.backoff.jitter_pct = 101),
        &["invalid_backoff tasks[0].retry.backoff.jitter_pct: task `a` has a jitter of 101%"],
    );
    check(with(&|t| t.retry.backoff.jitter_pct = 100), &[]);
    check(
        with(&|t| t.retry.backoff.multiplier = 0),
        &[
            "invalid_backoff tasks[0].retry.backoff.multiplier: task `a` has a backoff multiplier of zero",
        ],
    );
}

#[test]
fn too_many_tasks() {
    let ids: Vec<String> = (0..101).map(|i| format!("t{i}")).collect();
    let tasks: Vec<(&str, &[&str])> = ids.iter().map(|id| (id.as_str(), &[] as &[&str])).collect();
    check(plan(&tasks), &["too_many_tasks tasks: the plan has 101 tasks; the limit is 100"]);
    check(plan(&tasks[..100]), &[]);
}

#[test]
fn unknown_dependency_hints() {
    let hint = |p: Plan| problems(p)[0].hint.clone().unwrap_or_default();
    assert_eq!(hint(plan(&[("build", &[]), ("test", &["biuld"])])), "did you mean `build`?");
    assert_eq!(hint(plan(&[("build", &[]), ("test", &["buil"])])), "did you mean `build`?");
    assert_eq!(
        hint(plan(&[("lint", &[]), ("link", &[]), ("t", &["lin"])])),
        "did you mean `lint`?"
    );
    assert_eq!(
        hint(plan(&[("build", &[]), ("test", &["deploy"])])),
        "the plan's tasks are `build`, `test`"
    );
    let ids: Vec<String> = (0..10).map(|i| format!("task{i}")).collect();
    let mut tasks: Vec<(&str, &[&str])> =
        ids.iter().map(|id| (id.as_str(), &[] as &[&str])).collect();
    tasks.push(("x", &["completely-else"]));
    assert_eq!(
        hint(plan(&tasks)),
        "the plan's tasks are `task0`, `task1`, `task2`, `task3`, `task4`, `task5`, `task6`, \
         `task7`, and 3 more"
    );
}

#[test]
fn edit_distances() {
    for (a, b, d) in [
        ("", "", 0),
        ("a", "", 1),
        ("kitten", "sitting", 3),
        ("build", "biuld", 1),
        ("tëst", "test", 1),
        ("ab", "ba", 1),
        ("abc", "ca", 3),
    ] {
        assert_eq!(edit_distance(a, b), d, "{a} {b}");
        assert_eq!(edit_distance(b, a), d, "{b} {a}");
    }
}

#[test]
fn every_problem_at_once() {
    let mut p = plan(&[
        ("fetch", &[]),
        ("build", &["fetch", "fetch", "tset"]),
        ("test", &["build", "package"]),
        ("package", &["test"]),
        ("build", &["build"]),
        ("x", &["y"]),
        ("y", &["z"]),
        ("z", &["x"]),
    ]);
    p.tasks[0].timeout_ms = 0;
    p.tasks[5].tool = Tool::Exec(ExecSpec { program: String::new(), args: Vec::new() });
    insta::assert_snapshot!(render(&problems(p)));
}

#[test]
fn two_cycles_sharing_nothing_and_one_component_with_two_cycles() {
    // {a, b, c} is one component holding a → b → a and a → b → c → a: reported once, shortest.
    let p = plan(&[
        ("a", &["b"]),
        ("b", &["c", "a"]),
        ("c", &["a"]),
        ("p", &["q"]),
        ("q", &["p"]),
        ("leaf", &["a", "q"]),
    ]);
    insta::assert_snapshot!(render(&problems(p)));
}

#[test]
fn long_chain_and_long_cycle_do_not_overflow() {
    let n = 100_000;
    let ids: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
    let deps: Vec<[&str; 1]> = (0..n).map(|i| [ids[(i + n - 1) % n].as_str()]).collect();
    let limits = PlanLimits { max_tasks: n as u32, max_depends: 1 };
    let mut tasks: Vec<(&str, &[&str])> = (0..n).map(|i| (ids[i].as_str(), &deps[i][..])).collect();
    // As a ring: one cycle through every task.
    let problems = validate(&plan(&tasks), &limits).unwrap_err();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].code, "cycle");
    assert!(
        problems[0].message.starts_with("dependency cycle: t0 → t99999 → t99998"),
        "{}",
        &problems[0].message[..60]
    );
    // As a chain: valid, in order.
    tasks[0].1 = &[];
    let checked = validate(&plan(&tasks), &limits).unwrap();
    assert_eq!(checked.order(), (0..n).collect::<Vec<_>>());
}
