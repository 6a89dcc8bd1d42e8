//! Planning a goal with a model, through the real `orchestra` binary: recorded answers, the
//! anthropic and openai backends against a scripted server on loopback, the plan cache,
//! `--plan-only` then `--plan`, repair rounds, the call budget and usage errors.
#![allow(clippy::disallowed_methods)] // tests run the real binary

mod common;

use common::{
    LocalLlm, Ran, bin, config_file, examples, json_file, model_plan, only_run, read, run_within,
    write,
};
use orchestra_testkit::Reply;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Bound on one `orchestra` invocation.
const LIMIT: Duration = Duration::from_secs(60);
/// The variable the anthropic backend reads its key from in these tests.
const KEY_VAR: &str = "ORCH_TEST_ANTHROPIC_KEY";

/// `orchestra --config CONFIG ARGS…` in `cwd`.
fn orchestra(cwd: &Path, config: &Path, args: &[&str]) -> Ran {
    with_env(cwd, config, args, |_| {})
}

/// Like [`orchestra`], with the command adjusted first (environment).
fn with_env(cwd: &Path, config: &Path, args: &[&str], adjust: impl FnOnce(&mut Command)) -> Ran {
    let mut cmd = bin();
    cmd.arg("--config").arg(config).args(args);
    adjust(&mut cmd);
    run_within(cmd, cwd, LIMIT)
}

/// Config of the anthropic backend against `mock`, its key in [`KEY_VAR`].
fn anthropic(mock: &LocalLlm) -> Value {
    json!({"llm": {
        "backend": "anthropic",
        "anthropic": {"base_url": mock.url(), "api_key_env": KEY_VAR, "max_retries": 0},
        "call_timeout": "20s",
    }})
}

fn with_key(cmd: &mut Command) {
    cmd.env(KEY_VAR, "test-key");
}

/// A directory of recorded answers: `(file name, content)`.
fn answers(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    let d = dir.join("answers");
    std::fs::create_dir_all(&d).unwrap();
    for (name, text) in files {
        write(&d, name, text);
    }
    d
}

/// A model answer (as text) whose only task depends on a task not in the plan.
fn invalid_plan(dependency: &str) -> Value {
    let mut plan = model_plan();
    plan["tasks"][0]["depends_on"] = json!([dependency]);
    plan
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn the_goal_example_plans_repairs_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    std::fs::copy(examples().join("goal.yaml"), cwd.join("goal.yaml")).unwrap();
    copy_dir(&examples().join("context"), &cwd.join("context"));
    copy_dir(&examples().join("goal-answers"), &cwd.join("goal-answers"));
    let config = config_file(cwd, json!({}));

    let run = orchestra(cwd, &config, &["run", "goal.yaml", "--llm", "scripted:goal-answers"]);
    assert_eq!(run.code(), 0, "{}", run.both());
    assert!(run.stderr().contains("planned by scripted: 2 calls"), "{}", run.both());
    let dir = run.run_dir();

    let planning = json_file(&dir.join("llm/planning.json"));
    let calls = planning["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2, "{planning}");
    assert_eq!(calls[0]["outcome"]["kind"], "invalid");
    assert_eq!(calls[0]["outcome"]["problems"][0]["code"], "unknown_dependency");
    assert_eq!(calls[1]["outcome"]["kind"], "accepted");
    assert!(
        calls[1]["request"].as_str().unwrap().contains("top-word"),
        "the repair request names the problem: {}",
        calls[1]["request"]
    );

    // The raw answer is kept as the model wrote it: prose and a fenced block.
    let recorded = json_file(&examples().join("goal-answers/001.json"));
    let answer = read(&dir.join("llm/call-1.answer.txt"));
    assert_eq!(answer, recorded["text"].as_str().unwrap());
    assert!(answer.starts_with("Here is the plan:\n\n```json\n"), "{answer}");
    assert!(dir.join("llm/call-1.request.md").is_file());

    let plan = json_file(&dir.join("plan.json"));
    let ids: Vec<&str> =
        plan["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["write-poem", "top-words", "count-lines", "summarize"]);
    assert_eq!(plan["tasks"][3]["depends_on"], json!(["top-words", "count-lines"]));
    assert_eq!(plan["tasks"][0]["timeout_ms"], 30_000, "the scenario's defaults apply");
    assert!(read(&dir.join("plan.mmd")).starts_with("flowchart"));

    assert_eq!(
        read(&dir.join("artifacts/summarize/summary.txt")),
        "lines: 3\n      4 rain\n      4 the\n      2 is\n"
    );
    let s = json_file(&dir.join("summary.json"));
    assert_eq!(s["status"], "succeeded");
    let llm = &s["llm"];
    assert_eq!(llm["backend"], "scripted");
    assert_eq!(llm["planning_calls"], 2);
    assert_eq!(llm["repair_rounds"], 1);
    assert_eq!(llm["plan_cached"], false);
    assert_eq!(llm["input_tokens"], 2410 + 2902);
    let cost = llm["cost_usd"].as_f64().unwrap();
    assert!((cost - 0.0273).abs() < 1e-9, "{llm}");
    let report = read(&dir.join("report.md"));
    assert!(report.contains("## Model use"), "{report}");
    assert!(report.contains("$0.0273"), "{report}");
}

#[test]
fn the_plan_cache_answers_the_same_request_without_a_call() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let mock = LocalLlm::start(vec![Reply::tool("submit_plan", model_plan())]);
    let config = config_file(cwd, anthropic(&mock));
    let goal = "say hello into hello.txt";
    let go = |extra: &[&str]| {
        let mut args = vec!["run", "--goal", goal];
        args.extend_from_slice(extra);
        with_env(cwd, &config, &args, with_key)
    };

    let first = go(&[]);
    assert_eq!(first.code(), 0, "{}", first.both());
    assert!(first.stderr().contains("planned by anthropic (claude-sonnet-4-5): 1 call"));
    assert_eq!(read(&first.run_dir().join("artifacts/hello/hello.txt")), "hello from the plan\n");
    assert_eq!(mock.count(), 1);
    let request = &mock.model_requests()[0];
    assert_eq!(request.header("x-api-key"), Some("test-key"));
    assert_eq!(request.body["tool_choice"], json!({"type": "tool", "name": "submit_plan"}));
    assert!(request.body["messages"][0].to_string().contains(goal), "{}", request.body);

    let second = go(&[]);
    assert_eq!(second.code(), 0, "{}", second.both());
    assert!(second.stderr().contains("plan from the cache"), "{}", second.both());
    assert_eq!(mock.count(), 1, "the cache answered");
    let s = json_file(&second.run_dir().join("summary.json"));
    assert_eq!(s["llm"]["plan_cached"], true);
    assert_eq!(s["llm"]["planning_calls"], 0);

    mock.push(Reply::tool("submit_plan", model_plan()));
    let fresh = go(&["--no-cache"]);
    assert_eq!(fresh.code(), 0, "{}", fresh.both());
    assert!(fresh.stderr().contains("planned by anthropic"), "{}", fresh.both());
    assert_eq!(mock.count(), 2, "--no-cache asks the model");

    let list = orchestra(cwd, &config, &["plans", "list"]);
    assert_eq!(list.code(), 0, "{}", list.both());
    let rows: Vec<String> = list.stdout().lines().skip(1).map(str::to_owned).collect();
    assert_eq!(rows.len(), 1, "{}", list.both());
    assert!(rows[0].contains(goal) && rows[0].contains("anthropic"), "{}", rows[0]);

    let listed = orchestra(cwd, &config, &["plans", "list", "--json"]);
    assert_eq!(listed.code(), 0, "{}", listed.both());
    let plans: Value = serde_json::from_str(&listed.stdout()).unwrap();
    assert_eq!(plans.as_array().map(Vec::len), Some(1), "{plans}");
    assert_eq!(plans[0]["goal"], goal);
    let key = plans[0]["key"].as_str().unwrap().to_owned();
    assert!(rows[0].starts_with(&key[..12]), "{}", rows[0]);

    let show = orchestra(cwd, &config, &["plans", "show", &key[..8]]);
    assert_eq!(show.code(), 0, "{}", show.both());
    assert!(show.stdout().contains(&format!("key:      {key}")), "{}", show.both());
    assert!(show.stdout().contains(&format!("goal:     {goal}")), "{}", show.both());
    assert!(show.stdout().contains("echo hello from the plan"), "{}", show.both());
    let shown = show.stdout();
    let task_row = shown.lines().find(|l| l.trim_start().starts_with("1  hello"));
    assert!(task_row.is_some(), "the task table: {shown}");

    let missing = orchestra(cwd, &config, &["plans", "show", "zzz"]);
    assert_eq!(missing.code(), 2, "{}", missing.both());
    assert!(missing.stderr().contains("no cached plan matches `zzz`"), "{}", missing.both());
}

#[test]
fn plan_only_then_run_that_plan_without_a_model() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let mut plan = model_plan();
    plan["tasks"].as_array_mut().unwrap().push(json!({
        "id": "shout", "tool": "exec", "program": "sh", "depends_on": ["hello"],
        "args": ["-c", "tr a-z A-Z < inputs/hello/hello.txt > loud.txt"], "outputs": ["loud.txt"],
    }));
    let dir = answers(cwd, &[("001.txt", &plan.to_string())]);
    // Any model call would fail: the scripted directory does not exist.
    let config = config_file(
        cwd,
        json!({"llm": {"backend": "scripted", "scripted": {"dir": cwd.join("no-answers")}}}),
    );
    let scripted = format!("scripted:{}", dir.display());

    let checked = orchestra(
        cwd,
        &config,
        &["run", "--goal", "hello, loudly", "--plan-only", "--llm", &scripted],
    );
    assert_eq!(checked.code(), 0, "{}", checked.both());
    let out = checked.stdout();
    assert!(out.contains("plan checked: 2 tasks, nothing was run"), "{out}");
    let header = out.lines().next().unwrap_or_default();
    assert!(header.contains("task") && header.contains("after"), "{out}");
    assert!(out.lines().any(|l| l.contains("shout") && l.contains("hello")), "{out}");
    let run_dir = checked.run_dir();
    assert!(run_dir.join("plan.json").is_file() && run_dir.join("plan.mmd").is_file());
    assert!(run_dir.join("llm/planning.json").is_file());
    assert!(!run_dir.join("state").exists(), "a checked plan leaves no state store");
    assert!(!run_dir.join("summary.json").exists(), "nothing ran");
    assert!(!run_dir.join("work/hello/hello.txt").exists(), "nothing ran");

    let plan_file = run_dir.join("plan.json");
    let run = orchestra(cwd, &config, &["run", "--plan", plan_file.to_str().unwrap()]);
    assert_eq!(run.code(), 0, "{}", run.both());
    assert!(!run.stderr().contains("planning with a model"), "{}", run.both());
    let dir = run.run_dir();
    assert_ne!(dir, run_dir, "a new run");
    assert_eq!(read(&dir.join("artifacts/shout/loud.txt")), "HELLO FROM THE PLAN\n");
    let s = json_file(&dir.join("summary.json"));
    assert_eq!(s["totals"]["succeeded"], 2);
    assert!(s.get("llm").is_none(), "no model was used: {}", s["llm"]);
    assert_eq!(json_file(&dir.join("plan.json")), json_file(&plan_file), "exactly that plan");

    // A hand-edited plan with a cycle is refused, naming it.
    let mut cyclic = json_file(&plan_file);
    cyclic["tasks"][0]["depends_on"] = json!(["shout"]);
    let cyclic_file = write(cwd, "cyclic.json", &cyclic.to_string());
    let refused = orchestra(cwd, &config, &["run", "--plan", cyclic_file.to_str().unwrap()]);
    assert_eq!(refused.code(), 2, "{}", refused.both());
    assert!(
        refused.stderr().contains("dependency cycle: hello → shout → hello"),
        "{}",
        refused.both()
    );

    // A JSON syntax error names file, line and column.
    let broken = "{\n  \"name\": \"broken\",\n  \"tasks\": [\n    {\"id\": \"a\",}\n  ]\n}\n";
    write(cwd, "broken.json", broken);
    let refused = orchestra(cwd, &config, &["run", "--plan", "broken.json"]);
    assert_eq!(refused.code(), 2, "{}", refused.both());
    assert!(
        refused.stderr().contains("`broken.json`:4:16: not a valid plan"),
        "{}",
        refused.both()
    );
    let runs = std::fs::read_dir(cwd.join("runs")).unwrap().count();
    assert_eq!(runs, 2, "a refused plan leaves no run directory");
}

#[test]
fn a_plan_still_invalid_after_the_repair_rounds_is_refused_with_the_answers_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let first = invalid_plan("nope").to_string();
    let second = invalid_plan("still-nope").to_string();
    let dir = answers(cwd, &[("001.txt", &first), ("002.txt", &second)]);
    let config = config_file(cwd, json!({"llm": {"max_repair_rounds": 1}}));
    let scripted = format!("scripted:{}", dir.display());

    let run = orchestra(cwd, &config, &["run", "--goal", "say hello", "--llm", &scripted]);
    assert_eq!(run.code(), 2, "{}", run.both());
    let err = run.stderr();
    assert!(err.contains("the model's plan was still invalid after 2 calls"), "{err}");
    assert!(err.contains("depends on `still-nope`, which is not in the plan"), "{err}");
    assert!(!err.contains("`nope`"), "only the last problems: {err}");
    assert!(err.contains("llm.max_repair_rounds"), "{err}");
    let kept = only_run(&cwd.join("runs"));
    assert!(
        err.contains(&format!("the model's answers are kept in {}", kept.join("llm").display()))
    );
    assert_eq!(read(&kept.join("llm/call-1.answer.txt")), first);
    assert_eq!(read(&kept.join("llm/call-2.answer.txt")), second);
    assert!(kept.join("llm/planning.json").is_file());
    assert!(!kept.join("state").exists(), "{}", kept.display());
    assert!(!kept.join("plan.json").exists(), "no plan was accepted");
}

#[test]
fn the_call_budget_stops_the_repair() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let limits = json!({"limits": {"max_llm_calls": 1}});

    let dir = answers(cwd, &[("001.txt", &invalid_plan("nope").to_string())]);
    let config = config_file(cwd, limits.clone());
    let scripted = format!("scripted:{}", dir.display());
    let run = orchestra(cwd, &config, &["run", "--goal", "say hello", "--llm", &scripted]);
    assert_eq!(run.code(), 2, "{}", run.both());
    assert!(run.stderr().contains("limit of 1 model call"), "{}", run.both());
    assert!(run.stderr().contains("limits.max_llm_calls"), "{}", run.both());
    assert!(run.stderr().contains("depends on `nope`"), "the problems still show: {}", run.both());

    // Counted at the server: the cap, not the script, stopped the second call.
    let mock = LocalLlm::start(vec![
        Reply::tool("submit_plan", invalid_plan("nope")),
        Reply::tool("submit_plan", model_plan()),
    ]);
    let mut settings = anthropic(&mock);
    common::merge(&mut settings, limits);
    let config = config_file(cwd, settings);
    let run = with_env(cwd, &config, &["run", "--goal", "say hello"], with_key);
    assert_eq!(run.code(), 2, "{}", run.both());
    assert!(run.stderr().contains("limit of 1 model call"), "{}", run.both());
    assert_eq!(mock.count(), 1);
    assert_eq!(mock.remaining(), 1);
}

#[test]
fn approve_needs_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let dir = answers(cwd, &[("001.txt", &model_plan().to_string())]);
    let config = config_file(cwd, json!({}));
    let scripted = format!("scripted:{}", dir.display());
    // `bin()` gives the binary /dev/null as stdin.
    let run =
        orchestra(cwd, &config, &["run", "--goal", "say hello", "--approve", "--llm", &scripted]);
    assert_eq!(run.code(), 2, "{}", run.both());
    let err = run.stderr();
    assert!(err.contains("stdin is not one"), "{err}");
    assert!(err.contains("--plan-only") && err.contains("--plan runs/<run>/plan.json"), "{err}");
    assert!(!cwd.join("runs").exists(), "nothing was created");
}

#[test]
fn the_openai_backend_asks_for_a_json_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let mock = LocalLlm::start(vec![Reply::structured(model_plan())]);
    let config = config_file(
        cwd,
        json!({"llm": {
            "backend": "openai",
            "model": "test-model",
            "openai": {"base_url": format!("{}/v1", mock.url()), "max_retries": 0},
        }}),
    );
    let run = with_env(cwd, &config, &["run", "--goal", "say hello"], |c| {
        c.env_remove("OPENAI_API_KEY");
    });
    assert_eq!(run.code(), 0, "{}", run.both());
    assert_eq!(read(&run.run_dir().join("artifacts/hello/hello.txt")), "hello from the plan\n");
    let requests = mock.model_requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, "/v1/chat/completions");
    assert_eq!(requests[0].body["model"], "test-model");
    let format = &requests[0].body["response_format"];
    assert_eq!(format["type"], "json_schema", "{}", requests[0].body);
    assert_eq!(requests[0].header("authorization"), None, "no key was set");
    let s = json_file(&run.run_dir().join("summary.json"));
    assert_eq!(s["llm"]["backend"], "openai");
    assert_eq!(s["llm"]["model"], "test-model");
    assert_eq!(s["llm"]["input_tokens"], 100);
}

#[test]
fn usage_errors_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let config = config_file(cwd, json!({}));
    let check = |args: &[&str], expect: &str| {
        let run = orchestra(cwd, &config, args);
        assert_eq!(run.code(), 2, "{args:?}: {}", run.both());
        assert!(run.stderr().contains(expect), "{args:?}: {}", run.both());
    };
    check(&["run", "--goal", "x", "--llm", "bogus"], "unknown backend `bogus`");
    check(&["run", "--goal", "x", "--llm", "record"], "needs a directory");
    check(&["run", "--goal", "x", "--llm", "scripted:no-such-dir"], "no-such-dir");
    let hello = examples().join("hello.yaml");
    check(
        &["run", hello.to_str().unwrap(), "--goal", "x"],
        "has explicit tasks; --goal would be ignored",
    );
    check(&["run"], "required");
    check(&["run", "--goal", "x", "--plan", "p.json"], "cannot be used with");

    let no_key = config_file(
        cwd,
        json!({"llm": {"backend": "anthropic", "anthropic": {"api_key_env": "ORCH_TEST_NO_SUCH_KEY"}}}),
    );
    let run = with_env(cwd, &no_key, &["run", "--goal", "x"], |c| {
        c.env_remove("ORCH_TEST_NO_SUCH_KEY");
    });
    assert_eq!(run.code(), 2, "{}", run.both());
    assert!(run.stderr().contains("$ORCH_TEST_NO_SUCH_KEY"), "{}", run.both());
    assert!(run.stderr().contains("llm.anthropic.api_key_env"), "{}", run.both());
    assert!(!cwd.join("runs").exists(), "no run was created");
}
