//! `--approve`: the plan is shown on a terminal and runs only after a yes. The test gives the
//! real binary a pseudo-terminal as stdin and answers through it.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{bin, examples};
use nix::pty::openpty;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::process::Stdio;

/// Runs the goal example with recorded answers and `--approve`, typing `answer` on the pty.
fn approve(answer: &str) -> (std::process::Output, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap().keep();
    let pty = openpty(None, None).unwrap();
    let slave: OwnedFd = pty.slave;
    let mut master = std::fs::File::from(pty.master);
    let child = bin()
        .current_dir(&tmp)
        .args(["run", "--approve", "--llm"])
        .arg(format!("scripted:{}", examples().join("goal-answers").display()))
        .arg(examples().join("goal.yaml"))
        .stdin(Stdio::from(slave))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The answer waits in the terminal's input until the prompt reads it.
    master.write_all(answer.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    drop(master);
    (out, tmp)
}

fn only_run_dir(tmp: &std::path::Path) -> std::path::PathBuf {
    let runs: Vec<_> =
        std::fs::read_dir(tmp.join("runs")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs[0].clone()
}

#[test]
fn yes_runs_the_shown_plan() {
    let (out, tmp) = approve("y\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("run these 4 tasks? [y/N]"), "{stderr}");
    assert!(stdout.contains("top-words"), "the plan table is shown: {stdout}");
    assert!(stdout.contains("run succeeded: 4/4"), "{stdout}");
    let run = only_run_dir(&tmp);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    // The approved plan carries how it was made: the two calls are on the run's record.
    assert_eq!(summary["llm"]["planning_calls"], 2, "{summary}");
    assert!(run.join("llm/call-2.answer.txt").is_file());
    std::fs::remove_dir_all(tmp).unwrap();
}

#[test]
fn anything_but_yes_runs_nothing() {
    let (out, tmp) = approve("n\n");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("not run; the plan is in"), "{stdout}");
    let run = only_run_dir(&tmp);
    assert!(run.join("plan.json").is_file());
    assert!(!run.join("state").exists(), "nothing is left to resume");
    assert!(!run.join("work/write-poem").join("poem.txt").exists(), "no task ran");
    std::fs::remove_dir_all(tmp).unwrap();
}
