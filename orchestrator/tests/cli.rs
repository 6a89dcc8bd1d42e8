//! The real `orchestra` binary, end to end: exit codes, stdout/stderr, and the run directory.
#![allow(clippy::disallowed_methods)] // tests run the real binary and tools such as sha256sum

mod common;

use common::{alive, bin, examples, start_until_pid, wait_for, write};

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Run {
    out: Output,
    dir: Option<PathBuf>,
}

impl Run {
    fn code(&self) -> i32 {
        self.out.status.code().unwrap_or(-1)
    }
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    fn dir(&self) -> &Path {
        self.dir.as_deref().unwrap_or_else(|| {
            panic!("no run directory printed:\n{}{}", self.stdout(), self.stderr())
        })
    }
    fn summary(&self) -> Value {
        json_file(&self.dir().join("summary.json"))
    }
}

fn json_file(p: &Path) -> Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

fn run_dir_from(stdout: &str) -> Option<PathBuf> {
    stdout.lines().find_map(|l| l.strip_prefix("run directory: ")).map(PathBuf::from)
}

fn orchestra(cwd: &Path, args: &[&str]) -> Run {
    let out = bin().current_dir(cwd).args(args).output().unwrap();
    let dir = run_dir_from(&String::from_utf8_lossy(&out.stdout)).map(|d| cwd.join(d));
    Run { out, dir }
}

fn task<'a>(summary: &'a Value, id: &str) -> &'a Value {
    summary["tasks"].as_array().unwrap().iter().find(|t| t["id"] == id).unwrap()
}

fn sha256sum(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
}

#[test]
fn hello_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let hello = examples().join("hello.yaml");
    let run = orchestra(tmp.path(), &["run", hello.to_str().unwrap()]);
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout(), run.stderr());
    assert!(run.stdout().starts_with("run succeeded: 5/5 tasks succeeded"), "{}", run.stdout());
    let dir = run.dir();
    assert!(
        dir.starts_with(tmp.path().join("runs")),
        "default runs dir is ./runs: {}",
        dir.display()
    );
    for f in [
        "scenario.yaml",
        "config.yaml",
        "plan.json",
        "logs.jsonl",
        "summary.json",
        "report.md",
        "artifacts.json",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let artifact = dir.join("artifacts/combine/greetings.txt");
    assert_eq!(
        std::fs::read_to_string(&artifact).unwrap(),
        "bonjour, world\nhello, world\n안녕, world\n"
    );
    let index = json_file(&dir.join("artifacts.json"));
    let combined = index.as_array().unwrap().iter().find(|a| a["task"] == "combine").unwrap();
    assert_eq!(combined["path"], "greetings.txt");
    assert_eq!(combined["sha256"].as_str().unwrap(), sha256sum(&artifact));
    assert_eq!(combined["size"].as_u64().unwrap(), std::fs::metadata(&artifact).unwrap().len());

    let s = run.summary();
    assert_eq!(s["status"], "succeeded");
    assert_eq!(s["totals"]["succeeded"], 5);
    assert_eq!(s["totals"]["success_rate"], 1.0);
    assert_eq!(s["tasks"].as_array().unwrap().len(), 5);
    assert_eq!(task(&s, "combine")["attempts"][0]["exit_code"], 0);
    // a stream with no output leaves no file
    assert!(!dir.join("tasks/greet-ko/1/stdout").exists());

    let trace = s["trace_id"].as_str().unwrap().to_owned();
    let logs = std::fs::read_to_string(dir.join("logs.jsonl")).unwrap();
    let mut layers = std::collections::BTreeSet::new();
    for line in logs.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(v["run_id"], s["run_id"], "{line}");
        assert_eq!(v["trace_id"], trace.as_str(), "{line}");
        assert!(v["level"].is_string() && v["ts"].is_string(), "{line}");
        if v.get("task_id").is_some() {
            assert!(v.get("attempt").is_some(), "task lines carry the attempt: {line}");
        }
        layers.insert(v["layer"].as_str().unwrap().to_owned());
    }
    for l in ["L1", "L2", "L3"] {
        assert!(layers.contains(l), "no {l} line in logs.jsonl: {layers:?}");
    }
    assert!(logs.contains("\"console\":true"), "console lines are logged too");
    assert!(
        logs.lines()
            .any(|l| l.contains("\"console\":true") && l.contains("\"task_id\":\"combine\"")),
        "console lines about a task carry its id"
    );
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(report.contains("| `combine` | succeeded | 1 |"), "{report}");
    assert!(report.contains(&sha256sum(&artifact)), "{report}");
}

#[test]
fn flaky_task_succeeds_on_retry() {
    let tmp = tempfile::tempdir().unwrap();
    let run = orchestra(tmp.path(), &["run", examples().join("flaky.yaml").to_str().unwrap()]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let s = run.summary();
    let flaky = task(&s, "flaky");
    assert_eq!(flaky["status"], "succeeded");
    let attempts = flaky["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["exit_code"], 3);
    assert_eq!(attempts[0]["failure"]["kind"], "exit_code");
    assert_eq!(s["totals"]["retries"], 1);
    assert!(run.stderr().contains("retrying  flaky#1"), "{}", run.stderr());
    let stderr1 = std::fs::read_to_string(run.dir().join("tasks/flaky/1/stderr")).unwrap();
    assert!(stderr1.contains("not ready yet"));
}

#[test]
fn json_flag_prints_the_summary_on_stdout() {
    let tmp = tempfile::tempdir().unwrap();
    let out = bin()
        .current_dir(tmp.path())
        .args(["run", examples().join("hello.yaml").to_str().unwrap(), "--json", "-j", "1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is exactly the summary json");
    assert_eq!(v["totals"]["succeeded"], 5);
}

fn canary_scenario(dir: &Path) -> (PathBuf, PathBuf) {
    let canary = dir.join("canary");
    let scenario = write(
        dir,
        "canary.yaml",
        &format!(
            "name: canary\ntasks:\n  - id: touch\n    exec: {{ program: touch, args: ['{}'] }}\n  - id: after\n    depends_on: [touch]\n    exec: {{ program: 'true' }}\n",
            canary.display()
        ),
    );
    (scenario, canary)
}

#[test]
fn dry_run_spawns_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (scenario, canary) = canary_scenario(tmp.path());
    let run = orchestra(tmp.path(), &["run", scenario.to_str().unwrap(), "--dry-run"]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert!(!canary.exists(), "--dry-run must not spawn anything");
    let line = run.stderr().lines().find(|l| l.contains("would run touch#1:")).map(str::to_owned);
    let line = line.unwrap_or_else(|| panic!("no `would run` line:\n{}", run.stderr()));
    assert!(line.ends_with(&format!("touch {}", canary.display())), "{line}");
    let s = run.summary();
    assert_eq!(s["dry_run"], true);
    assert_eq!(s["totals"]["succeeded"], 2);
    // and the same scenario for real does touch it: the canary can fail
    let real = orchestra(tmp.path(), &["run", scenario.to_str().unwrap()]);
    assert_eq!(real.code(), 0);
    assert!(canary.exists());
}

#[test]
fn plan_only_runs_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (scenario, canary) = canary_scenario(tmp.path());
    let run = orchestra(tmp.path(), &["run", scenario.to_str().unwrap(), "--plan-only"]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert!(!canary.exists());
    assert!(run.stdout().contains("plan checked: 2 tasks"), "{}", run.stdout());
    let plan = json_file(&run.dir().join("plan.json"));
    assert_eq!(plan["tasks"][1]["depends_on"][0], "touch");
    assert!(!run.dir().join("tasks").exists());
    assert!(!run.dir().join("summary.json").exists());
}

#[test]
fn failed_task_skips_its_dependents_and_exits_1() {
    let tmp = tempfile::tempdir().unwrap();
    let scenario = write(
        tmp.path(),
        "fail.yaml",
        "name: fail\ntasks:\n  - { id: bad, exec: { program: sh, args: [-c, 'echo boom >&2; exit 7'] } }\n  - { id: child, depends_on: [bad], exec: { program: 'true' } }\n  - { id: grandchild, depends_on: [child], exec: { program: 'true' } }\n  - { id: other, exec: { program: 'true' } }\n",
    );
    let run = orchestra(tmp.path(), &["run", scenario.to_str().unwrap()]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    let s = run.summary();
    assert_eq!(s["status"], "failed");
    assert_eq!(task(&s, "bad")["attempts"][0]["exit_code"], 7);
    assert_eq!(task(&s, "child")["status"], "skipped");
    assert_eq!(task(&s, "grandchild")["status"], "skipped");
    assert_eq!(task(&s, "other")["status"], "succeeded");
    assert!(task(&s, "child")["reason"].as_str().unwrap().contains("bad"));
    let report = std::fs::read_to_string(run.dir().join("report.md")).unwrap();
    assert!(report.contains("### exit_code (1)"), "{report}");
    assert!(report.contains("boom"), "first stderr lines are in the report: {report}");
}

#[test]
fn timeout_ends_the_whole_process_group() {
    let tmp = tempfile::tempdir().unwrap();
    let scenario = write(
        tmp.path(),
        "timeout.yaml",
        "name: timeout\ntasks:\n  - id: hang\n    timeout: 500ms\n    exec: { program: sh, args: [-c, 'sleep 30 & echo $! > pids; sleep 30 & echo $! >> pids; wait'] }\n",
    );
    let started = Instant::now();
    let run = orchestra(tmp.path(), &["run", scenario.to_str().unwrap()]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    assert!(started.elapsed() < Duration::from_secs(20), "the timeout did not end the task");
    let s = run.summary();
    assert_eq!(task(&s, "hang")["attempts"][0]["failure"]["kind"], "timeout");
    let pids = std::fs::read_to_string(run.dir().join("work/hang/pids")).unwrap();
    let pids: Vec<i32> = pids.split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert_eq!(pids.len(), 2);
    for pid in pids {
        assert!(!alive(pid), "background child {pid} outlived the timeout");
    }
}

#[test]
fn output_cap_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write(tmp.path(), "orchestra.yaml", "limits:\n  output_cap: 10KiB\n");
    let scenario = write(
        tmp.path(),
        "flood.yaml",
        "name: flood\ntasks:\n  - { id: flood, exec: { program: yes, args: [flood] } }\n",
    );
    let run = orchestra(
        tmp.path(),
        &["--config", config.to_str().unwrap(), "run", scenario.to_str().unwrap()],
    );
    assert_eq!(run.code(), 1, "{}", run.stderr());
    let stdout = std::fs::metadata(run.dir().join("tasks/flood/1/stdout")).unwrap().len();
    assert!(stdout <= 10 * 1024, "stdout file has {stdout} bytes, over the cap");
    let s = run.summary();
    assert_eq!(task(&s, "flood")["attempts"][0]["failure"]["kind"], "output_limit");
    assert!(run.stderr().contains("output cap of 10240 bytes"), "{}", run.stderr());
}

fn only_run_dir(runs: &Path) -> PathBuf {
    let dirs: Vec<_> = std::fs::read_dir(runs).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

#[test]
fn kill_9_then_resume_does_not_rerun_succeeded_tasks() {
    let tmp = tempfile::tempdir().unwrap();
    let ledger = tmp.path().join("ledger");
    let scenario = write(
        tmp.path(),
        "long.yaml",
        &format!(
            "name: long\ndefaults:\n  env: {{ LEDGER: '{}' }}\ntasks:\n  - {{ id: a1, exec: {{ program: sh, args: [-c, 'echo a1 >> $LEDGER'] }} }}\n  - {{ id: a2, exec: {{ program: sh, args: [-c, 'echo a2 >> $LEDGER'] }} }}\n  - {{ id: a3, exec: {{ program: sh, args: [-c, 'echo a3 >> $LEDGER'] }} }}\n  - {{ id: slow, depends_on: [a1, a2, a3], exec: {{ program: sh, args: [-c, 'echo slow-start >> $LEDGER; sleep 1; echo slow-end >> $LEDGER'] }} }}\n  - {{ id: last, depends_on: [slow], exec: {{ program: sh, args: [-c, 'echo last >> $LEDGER'] }} }}\n",
            ledger.display()
        ),
    );
    let mut child = bin()
        .current_dir(tmp.path())
        .args(["run", scenario.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("slow to start", Duration::from_secs(30), || {
        std::fs::read_to_string(&ledger).map(|l| l.contains("slow-start")).unwrap_or(false)
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let dir = only_run_dir(&tmp.path().join("runs"));
    assert!(!dir.join("summary.json").exists(), "the killed run never finished");

    let run = orchestra(tmp.path(), &["resume", dir.to_str().unwrap()]);
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout(), run.stderr());
    let ledger = std::fs::read_to_string(&ledger).unwrap();
    for id in ["a1", "a2", "a3", "last"] {
        assert_eq!(
            ledger.lines().filter(|l| *l == id).count(),
            1,
            "{id} ran more than once:\n{ledger}"
        );
    }
    assert!(ledger.contains("slow-end"));
    let s = run.summary();
    assert_eq!(s["status"], "succeeded");
    let slow = task(&s, "slow");
    assert_eq!(
        slow["attempts"].as_array().unwrap().len(),
        2,
        "the lost attempt is kept, a new one ran: {slow}"
    );
    assert_eq!(task(&s, "a1")["attempts"].as_array().unwrap().len(), 1);
    // resuming a finished run changes nothing and says so
    let again = orchestra(tmp.path(), &["resume", dir.to_str().unwrap()]);
    assert_eq!(again.code(), 0);
    assert!(again.stderr().contains("already finished"), "{}", again.stderr());
}

#[test]
fn ctrl_c_cancels_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let scenario = write(
        tmp.path(),
        "sleepy.yaml",
        "name: sleepy\ntasks:\n  - { id: nap, exec: { program: sh, args: [-c, 'echo $$ > pid; if [ $ORCHESTRA_ATTEMPT = 1 ]; then exec sleep 30; fi'] } }\n  - { id: after, depends_on: [nap], exec: { program: 'true' } }\n",
    );
    let (child, dir, pid) = start_until_pid(tmp.path(), &scenario, "nap", Stdio::piped);
    let started = Instant::now();
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(!alive(pid), "the task's process survived the cancel");
    let s = json_file(&dir.join("summary.json"));
    assert_eq!(s["status"], "cancelled");
    assert_eq!(task(&s, "nap")["status"], "cancelled");
    assert_eq!(task(&s, "after")["status"], "cancelled");

    // a cancelled run can be continued: what was cancelled runs again, as a new attempt
    let resumed = orchestra(tmp.path(), &["resume", dir.to_str().unwrap()]);
    assert_eq!(resumed.code(), 0, "{}\n{}", resumed.stdout(), resumed.stderr());
    let s = resumed.summary();
    assert_eq!(s["status"], "succeeded");
    assert_eq!(task(&s, "nap")["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(task(&s, "nap")["attempts"][0]["failure"]["kind"], "cancelled");
    assert_eq!(task(&s, "after")["status"], "succeeded");
}

fn assert_usage_error(run: &Run, needles: &[&str]) {
    assert_eq!(run.code(), 2, "stdout:\n{}\nstderr:\n{}", run.stdout(), run.stderr());
    let err = run.stderr();
    assert!(err.starts_with("error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` not in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn malformed_yaml_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let f =
        write(tmp.path(), "bad.yaml", "name: bad\ntasks:\n  - id: a\n    exec: { program: true\n");
    let run = orchestra(tmp.path(), &["run", f.to_str().unwrap()]);
    assert_usage_error(&run, &["bad.yaml:"]);
    assert!(
        !tmp.path().join("runs").exists()
            || std::fs::read_dir(tmp.path().join("runs")).unwrap().next().is_none()
    );
}

#[test]
fn unknown_field_is_a_usage_error_with_a_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let f = write(
        tmp.path(),
        "typo.yaml",
        "name: typo\ntasks:\n  - id: a\n    exec: { program: 'true' }\n    depends: [b]\n",
    );
    let run = orchestra(tmp.path(), &["run", f.to_str().unwrap()]);
    assert_usage_error(&run, &["typo.yaml:5:5", "unknown field `depends`", "depends_on"]);
}

#[test]
fn cycle_is_reported_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let f = write(
        tmp.path(),
        "cycle.yaml",
        "name: cycle\ntasks:\n  - { id: a, depends_on: [c], exec: { program: 'true' } }\n  - { id: b, depends_on: [a], exec: { program: 'true' } }\n  - { id: c, depends_on: [b], exec: { program: 'true' } }\n  - { id: d, depends_on: [nope], exec: { program: 'true' } }\n",
    );
    let run = orchestra(tmp.path(), &["run", f.to_str().unwrap()]);
    assert_usage_error(&run, &["invalid plan", "2 problems", "→", "nope"]);
    let err = run.stderr();
    let cycle_line = err.lines().find(|l| l.contains("→")).unwrap();
    // the whole cycle, closed: a → b → c → a in dependency order, whichever node it starts at
    let nodes: Vec<&str> =
        cycle_line.rsplit(": ").next().unwrap().split(" → ").map(str::trim).collect();
    assert_eq!(nodes.len(), 4, "{cycle_line}");
    assert_eq!(nodes.first(), nodes.last(), "{cycle_line}");
    assert!(
        std::fs::read_dir(tmp.path().join("runs")).map(|mut d| d.next().is_none()).unwrap_or(true),
        "a rejected plan leaves no run directory"
    );
}

#[test]
fn unknown_dependency_is_reported_with_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let f = write(
        tmp.path(),
        "dep.yaml",
        "name: dep\ntasks:\n  - { id: build, exec: { program: 'true' } }\n  - { id: test, depends_on: [biuld], exec: { program: 'true' } }\n",
    );
    let run = orchestra(tmp.path(), &["run", f.to_str().unwrap()]);
    assert_usage_error(&run, &["tasks[1].depends_on[0]", "biuld", "build", "dep.yaml:4:"]);
}

#[test]
fn missing_file_and_bad_flags_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let run = orchestra(tmp.path(), &["run", "does-not-exist.yaml"]);
    assert_usage_error(&run, &["does-not-exist.yaml"]);
    let run = orchestra(tmp.path(), &["run"]);
    assert_eq!(run.code(), 2);
    let run = orchestra(
        tmp.path(),
        &["run", examples().join("hello.yaml").to_str().unwrap(), "--workers", "0"],
    );
    assert_usage_error(&run, &["--workers"]);
    let run = orchestra(tmp.path(), &["resume", "nope"]);
    assert_usage_error(&run, &["nope"]);
}

#[test]
fn help_and_version() {
    let tmp = tempfile::tempdir().unwrap();
    for args in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["resume", "--help"],
        vec!["config", "--help"],
        vec!["config", "init", "--help"],
        vec!["config", "validate", "--help"],
        vec!["config", "schema", "--help"],
    ] {
        let run = orchestra(tmp.path(), &args);
        assert_eq!(run.code(), 0, "{args:?}");
        assert!(run.stdout().contains("Usage:"), "{args:?}: {}", run.stdout());
    }
    let run = orchestra(tmp.path(), &["run", "--help"]);
    assert!(run.stdout().contains("--plan-only") && run.stdout().contains("Examples:"));
    let run = orchestra(tmp.path(), &["--version"]);
    assert!(run.stdout().starts_with("orchestra 0."), "{}", run.stdout());
}

#[test]
fn config_init_validate_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let run = orchestra(tmp.path(), &["config", "init"]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert!(tmp.path().join("orchestra.yaml").is_file());
    let again = orchestra(tmp.path(), &["config", "init"]);
    assert_usage_error(&again, &["already exists", "--force"]);
    let run = orchestra(tmp.path(), &["config", "validate", "orchestra.yaml"]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let run = orchestra(
        tmp.path(),
        &["config", "validate", examples().join("hello.yaml").to_str().unwrap()],
    );
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert!(run.stdout().contains("valid scenario (5 tasks)"));
    let bad = write(tmp.path(), "bad.yaml", "workers: many\n");
    let run =
        orchestra(tmp.path(), &["config", "validate", bad.to_str().unwrap(), "--kind", "config"]);
    assert_usage_error(&run, &["bad.yaml:1:"]);
    for kind in ["config", "scenario"] {
        let run = orchestra(tmp.path(), &["config", "schema", kind]);
        assert_eq!(run.code(), 0);
        let v: Value = serde_json::from_str(&run.stdout()).unwrap();
        assert_eq!(v["additionalProperties"], false, "{kind}");
    }
    // the written default config is used from ./orchestra.yaml and runs hello
    let run = orchestra(tmp.path(), &["run", examples().join("hello.yaml").to_str().unwrap()]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
}

#[test]
fn quiet_prints_only_the_outcome_and_still_reports_failures() {
    let tmp = tempfile::tempdir().unwrap();
    let run =
        orchestra(tmp.path(), &["-q", "run", examples().join("hello.yaml").to_str().unwrap()]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert!(run.stderr().is_empty(), "quiet run printed progress:\n{}", run.stderr());
    assert!(run.stdout().starts_with("run succeeded: 5/5"));
    let f = write(
        tmp.path(),
        "bad.yaml",
        "name: bad\ntasks:\n  - { id: bad, exec: { program: 'false' } }\n",
    );
    let run = orchestra(tmp.path(), &["-q", "run", f.to_str().unwrap()]);
    assert_eq!(run.code(), 1);
    assert!(run.stderr().contains("failed    bad#1: exit_code"), "{}", run.stderr());
}

#[test]
fn resume_ends_the_process_groups_a_killed_run_left_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let scenario = write(
        tmp.path(),
        "orphan.yaml",
        "name: orphan\ntasks:\n  - { id: long, exec: { program: sh, args: [-c, 'if [ $ORCHESTRA_ATTEMPT = 1 ]; then echo $$ > pid; exec sleep 60; fi'] } }\n",
    );
    let (mut child, dir, pid) = start_until_pid(tmp.path(), &scenario, "long", Stdio::null);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(alive(pid), "the task runs on in its own process group after orchestra is killed");

    let run = orchestra(tmp.path(), &["resume", dir.to_str().unwrap()]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert!(run.stderr().contains("ended 1 process group(s)"), "{}", run.stderr());
    wait_for("the orphan to die", Duration::from_secs(5), || !alive(pid));
    assert_eq!(task(&run.summary(), "long")["attempts"].as_array().unwrap().len(), 2);
}

#[test]
fn a_terminal_gets_a_live_status_line() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("SKIP: `script` (util-linux) is not installed, no pseudo-terminal to test with");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cmd = format!(
        "{} run {} --runs-dir {}",
        env!("CARGO_BIN_EXE_orchestra"),
        examples().join("hello.yaml").display(),
        tmp.path().join("runs").display()
    );
    // `script` runs the command on a pseudo-terminal: stderr is a TTY there.
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env_remove("NO_PROGRESS")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\r\x1b[2K"), "no in-place rewrite on a terminal: {text:?}");
    assert!(text.contains("5/5 done · 0 running · 0 failed"), "{text:?}");
    assert!(text.contains("run succeeded: 5/5"), "{text:?}");
}

#[test]
fn a_report_template_replaces_report_md_and_a_broken_one_stops_before_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let hello = examples().join("hello.yaml");
    let good = write(
        tmp.path(),
        "mine.md.j2",
        "# {{ summary.name }}: {{ summary.status }}, {{ summary.totals.succeeded }}/{{ summary.totals.tasks }}\n",
    );
    let r = orchestra(
        tmp.path(),
        &["run", hello.to_str().unwrap(), "--report-template", good.to_str().unwrap()],
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(
        std::fs::read_to_string(r.dir().join("report.md")).unwrap(),
        "# hello: succeeded, 5/5\n"
    );
    assert!(r.dir().join("report.html").is_file(), "the HTML report is written either way");

    let bad = write(tmp.path(), "bad.md.j2", "{% for t in tasks %}\n");
    let runs_before = std::fs::read_dir(tmp.path().join("runs")).unwrap().count();
    let r = orchestra(
        tmp.path(),
        &["run", hello.to_str().unwrap(), "--report-template", bad.to_str().unwrap()],
    );
    assert_eq!(r.code(), 2);
    assert!(
        r.stderr().contains("bad.md.j2") && r.stderr().contains("syntax error"),
        "{}",
        r.stderr()
    );
    let runs_after = std::fs::read_dir(tmp.path().join("runs")).unwrap().count();
    assert_eq!(runs_before, runs_after, "nothing ran");
}

/// README's first command, `cargo run --release -p orchestra -- run …`, needs to know which of
/// the package's binaries to run.
#[test]
fn cargo_run_picks_the_orchestra_binary() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains("\ndefault-run = \"orchestra\"\n"),
        "orchestrator/Cargo.toml needs default-run"
    );
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    assert!(readme.contains("cargo run --release -p orchestra -- run examples/hello.yaml"));
}
