//! Helpers shared by the CLI test files: the real binary, scenario files, waiting, processes.
#![allow(dead_code, clippy::disallowed_methods)] // not every test file uses every helper

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `orchestra` binary with a clean `ORCHESTRA_*` environment and no progress line.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_orchestra"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ORCHESTRA_") {
            c.env_remove(k);
        }
    }
    c.env("NO_PROGRESS", "1").stdin(Stdio::null());
    c
}

pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Polls `f` every 20 ms until it holds; fails the test after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True if `pid` runs (a zombie runs nothing and holds nothing but a pid).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit(')').next().map(|s| !s.trim_start().starts_with('Z')).unwrap_or(false)
        }
        Err(_) => false,
    }
}

/// Starts `orchestra run SCENARIO` in `cwd` and waits until `task` has written its pid to
/// `work/<task>/pid`. Returns the child, the run directory and the task's pid.
pub fn start_until_pid(
    cwd: &Path,
    scenario: &Path,
    task: &str,
    output: fn() -> Stdio,
) -> (Child, PathBuf, i32) {
    let child = bin()
        .current_dir(cwd)
        .args(["run", scenario.to_str().unwrap()])
        .stdout(output())
        .stderr(output())
        .spawn()
        .unwrap();
    let runs = cwd.join("runs");
    let pid_file = format!("work/{task}/pid");
    let read_pid = |dir: &Path| {
        std::fs::read_to_string(dir.join(&pid_file)).ok().and_then(|p| p.trim().parse::<i32>().ok())
    };
    let mut found = None;
    wait_for("the task to start", Duration::from_secs(30), || {
        found = std::fs::read_dir(&runs)
            .into_iter()
            .flatten()
            .map(|e| e.unwrap().path())
            .find_map(|d| read_pid(&d).map(|pid| (d, pid)));
        found.is_some()
    });
    let (dir, pid) = found.unwrap();
    (child, dir, pid)
}
