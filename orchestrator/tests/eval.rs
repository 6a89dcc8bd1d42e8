//! `orchestra eval` through the real binary: the shipped benchmarks, repeats, failing
//! expectations and usage errors.
#![allow(clippy::disallowed_methods)] // tests run the binary they test

mod common;

use common::{bin, examples, write};
use orchestra_proto::eval::EvalReport;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

fn eval(cwd: &Path, args: &[&str]) -> Output {
    bin().current_dir(cwd).arg("eval").args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The one eval directory under `out`.
fn eval_dir(out: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> =
        std::fs::read_dir(out).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.into_iter().next().unwrap()
}

/// `eval.json` as JSON, after checking that it reads back as the proto type (strictly: an
/// unknown field fails).
fn eval_json(dir: &Path) -> Value {
    let bytes = std::fs::read(dir.join("eval.json")).unwrap();
    if let Err(e) = serde_json::from_slice::<EvalReport>(&bytes) {
        panic!("eval.json is not an EvalReport: {e}");
    }
    serde_json::from_slice(&bytes).unwrap()
}

fn scripted() -> String {
    format!("scripted:{}", examples().join("eval/goal-answers").display())
}

#[test]
fn the_shipped_benchmarks_pass_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = examples().join("eval");
    let out = eval(tmp.path(), &[dir.to_str().unwrap(), "--llm", &scripted(), "--json"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // stdout is eval.json and nothing else: the runs' own outcome lines are silenced
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("stdout is not JSON ({e}): {}", text(&out.stdout));
    });
    let dir = eval_dir(&tmp.path().join("eval"));
    let report = eval_json(&dir);
    assert_eq!(printed, report);
    assert_eq!(report["passed"], true);
    assert_eq!(report["scenarios_total"], 3);
    assert_eq!(report["scenarios_passed"], 3);
    let scenarios = report["scenarios"].as_array().unwrap();
    let names: Vec<&str> = scenarios.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["build", "data", "release-notes"]);
    for s in scenarios {
        assert_eq!(s["pass_rate"], 1.0, "{s:#}");
        assert_eq!(s["trials"], 1);
        assert_eq!(s["failures"], serde_json::json!([]));
        let run = &s["runs"][0];
        assert_eq!(run["status"], "succeeded");
        assert!(run["checks"].as_array().unwrap().len() >= 5, "{run:#}");
        let run_dir = tmp.path().join(run["run_dir"].as_str().unwrap());
        assert!(run_dir.join("summary.json").is_file(), "{}", run_dir.display());
    }
    // the goal scenario was planned by the recording, repair round included, and paid for
    let goal = &scenarios[2];
    let run_dir = tmp.path().join(goal["runs"][0]["run_dir"].as_str().unwrap());
    let planning: Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("llm/planning.json")).unwrap()).unwrap();
    assert_eq!(planning["calls"].as_array().unwrap().len(), 2, "{planning:#}");
    assert!((goal["cost_usd"].as_f64().unwrap() - 0.0287).abs() < 1e-9, "{goal:#}");
    assert_eq!(goal["cost_per_success_usd"], goal["cost_usd"]);
    // the data pipeline's checksum was verified
    let data = &scenarios[1]["runs"][0]["checks"];
    assert!(data.to_string().contains("artifact merge/merged.csv"), "{data}");
    let md = std::fs::read_to_string(dir.join("eval.md")).unwrap();
    for want in ["3 of 3 scenarios passed", "## build", "## data", "## release-notes"] {
        assert!(md.contains(want), "no {want:?} in\n{md}");
    }
    assert!(stderr.contains("release-notes 1/1: pass"), "{stderr}");
}

#[test]
fn repeat_runs_every_trial_in_its_own_run_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let data = examples().join("eval/data.yaml");
    let out = eval(tmp.path(), &[data.to_str().unwrap(), "--repeat", "3", "--out", "results"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(stdout.contains("1/1 scenarios passed every trial (3 trials each)"), "{stdout}");
    assert!(!stdout.contains("run succeeded"), "a run printed on stdout:\n{stdout}");
    let dir = eval_dir(&tmp.path().join("results"));
    let s = &eval_json(&dir)["scenarios"][0];
    assert_eq!((s["trials"].as_u64(), s["passes"].as_u64()), (Some(3), Some(3)), "{s:#}");
    assert_eq!(s["pass_rate"], 1.0);
    assert_eq!(s["pass_rate_ci95"]["low"], 0.4385);
    assert_eq!(s["pass_rate_ci95"]["high"], 1.0);
    let runs: Vec<&str> =
        s["runs"].as_array().unwrap().iter().map(|r| r["run_dir"].as_str().unwrap()).collect();
    for (i, run) in runs.iter().enumerate() {
        let want = dir.join("data").join((i + 1).to_string());
        let got = tmp.path().join(run);
        assert_eq!(got.parent().unwrap(), want, "{runs:?}");
        assert!(got.join("artifacts/merge/merged.csv").is_file());
    }
}

#[test]
fn missed_expectations_exit_1_with_their_reasons() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("scenarios");
    std::fs::create_dir(&dir).unwrap();
    // holds: the run fails as expected
    write(
        &dir,
        "a-fails.yaml",
        "name: fails\ntasks:\n  - id: a\n    exec: { program: sh, args: [-c, 'exit 3'] }\n\
         expect:\n  status: failed\n  tasks: { a: failed }\n",
    );
    // cannot hold: wrong digest, wrong status
    write(
        &dir,
        "b-wrong.yaml",
        "name: wrong\ntasks:\n  - id: a\n    exec: { program: sh, args: [-c, 'echo hi > out.txt'] }\n\
         \x20   outputs: [out.txt]\n\
         expect:\n  status: failed\n  artifacts:\n    - path: a/out.txt\n      contains: hi\n\
         \x20     sha256: 0000000000000000000000000000000000000000000000000000000000000000\n",
    );
    write(&dir, "notes.yaml", "# not a scenario\nworkers: 2\n");
    let out = eval(tmp.path(), &["scenarios", "-n", "2"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("skipped scenarios/notes.yaml"), "{stderr}");
    assert!(stdout.contains("1/2 scenarios passed every trial"), "{stdout}");
    let status = "status is succeeded, expected failed";
    let digest = "artifact `a/out.txt` has sha256 98ea6e4f216f2fb4…, expected 0000000000000000…";
    assert!(stdout.contains(&format!("2× {status}")), "{stdout}");
    assert!(stdout.contains(&format!("2× {digest}")), "{stdout}");

    let dir = eval_dir(&tmp.path().join("eval"));
    let report = eval_json(&dir);
    assert_eq!(report["passed"], false);
    let s = &report["scenarios"];
    assert_eq!(s[0]["name"], "fails");
    assert_eq!(s[0]["passed"], true);
    assert_eq!(s[1]["name"], "wrong");
    assert_eq!(s[1]["passes"], 0);
    assert_eq!(s[1]["pass_rate"], 0.0);
    assert_eq!(s[1]["cost_per_success_usd"], Value::Null);
    assert_eq!(
        s[1]["failures"],
        serde_json::json!([{"reason": status, "count": 2}, {"reason": digest, "count": 2}])
    );
    let md = std::fs::read_to_string(dir.join("eval.md")).unwrap();
    assert!(md.contains(&format!("- 2× {digest}")), "{md}");
    assert!(md.contains("1 of 2 scenarios passed"), "{md}");
}

#[test]
fn usage_errors_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let none = write(
        tmp.path(),
        "none.yaml",
        "name: none\ntasks:\n  - id: a\n    exec: { program: echo }\n",
    );
    let out = eval(tmp.path(), &[none.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("has no `expect:` block"), "{stderr}");
    assert!(out.stdout.is_empty());

    let bad = write(
        tmp.path(),
        "bad.yaml",
        "name: bad\ntasks:\n  - id: build\n    exec: { program: echo }\nexpect:\n  status: succeded\n",
    );
    let out = eval(tmp.path(), &[bad.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bad.yaml:6:11"), "{stderr}");
    assert!(stderr.contains("did you mean `succeeded`?"), "{stderr}");

    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let goal = examples().join("eval/goal.yaml");
    let goal = goal.to_str().unwrap();
    for args in [
        vec!["empty"],
        vec!["no-such-dir"],
        vec![goal, "--repeat", "0"],
        vec![goal, "--workers", "0"],
        vec![goal, "--llm", "scripted:no-such-dir"],
    ] {
        let out = eval(tmp.path(), &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
    }
    // nothing ran: no eval directory was made
    assert!(!tmp.path().join("eval").exists());
}

#[test]
fn help_has_examples() {
    let out = bin().args(["eval", "--help"]).output().unwrap();
    let help = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    for want in ["--repeat", "--use-cache", "expect:", "Examples:", "Wilson"] {
        assert!(help.contains(want), "no {want:?} in\n{help}");
    }
}
