//! `orchestra runs list|show|gc` through the real binary, over real and fake run directories.
#![allow(clippy::disallowed_methods)] // tests run the real binary

mod common;

use common::{bin, examples, start_until_pid, wait_for, write};

use orchestra_proto::Timestamp;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

struct Out(Output);

impl Out {
    fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    /// The run directory printed by `orchestra run`.
    fn dir(&self, cwd: &Path) -> PathBuf {
        let out = self.stdout();
        let d = out.lines().find_map(|l| l.strip_prefix("run directory: "));
        cwd.join(d.unwrap_or_else(|| panic!("no run directory:\n{out}{}", self.stderr())))
    }
    /// The run ids of a `runs list` table, in order.
    fn listed(&self) -> Vec<(String, String)> {
        let out = self.stdout();
        let mut lines = out.lines();
        assert!(lines.next().is_some_and(|h| h.starts_with("run ")), "no header:\n{out}");
        lines
            .map(|l| {
                let mut cols = l.split_whitespace();
                (cols.next().unwrap().to_owned(), cols.next().unwrap().to_owned())
            })
            .collect()
    }
}

fn orchestra(cwd: &Path, args: &[&str]) -> Out {
    Out(bin().current_dir(cwd).args(args).output().unwrap())
}

fn ok(cwd: &Path, args: &[&str]) -> Out {
    let out = orchestra(cwd, args);
    assert_eq!(out.code(), 0, "{args:?}\n{}{}", out.stdout(), out.stderr());
    out
}

fn name(dir: &Path) -> String {
    dir.file_name().unwrap().to_str().unwrap().to_owned()
}

fn hello() -> String {
    examples().join("hello.yaml").display().to_string()
}

const FAILING: &str =
    "name: failing\ntasks:\n  - { id: bad, exec: { program: sh, args: [-c, 'exit 3'] } }\n";

/// Run ids have a resolution of one second: wait for the next one so ids sort by time.
fn next_second() {
    let now = Timestamp::now().compact();
    wait_for("the next second", Duration::from_secs(2), || Timestamp::now().compact() != now);
}

#[test]
fn list_on_an_empty_or_missing_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let out = ok(tmp.path(), &["runs", "list", "--runs-dir", missing.to_str().unwrap()]);
    assert_eq!(out.stdout().trim(), format!("no runs in {}", missing.display()));
    // the default runs dir is ./runs, which does not exist here
    assert_eq!(ok(tmp.path(), &["runs", "list"]).stdout().trim(), "no runs in runs");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::create_dir(empty.join("not-a-run")).unwrap(); // no plan.json, no state/
    let out = Out(bin()
        .current_dir(tmp.path())
        .env("ORCHESTRA_RUNS_DIR", &empty)
        .args(["runs", "list"])
        .output()
        .unwrap());
    assert_eq!(out.code(), 0);
    assert_eq!(out.stdout().trim(), format!("no runs in {}", empty.display()));
    let json = ok(tmp.path(), &["runs", "list", "--json", "--runs-dir", empty.to_str().unwrap()]);
    assert_eq!(serde_json::from_str::<Value>(&json.stdout()).unwrap(), serde_json::json!([]));
    let gc = ok(tmp.path(), &["runs", "gc", "--runs-dir", missing.to_str().unwrap()]);
    assert!(gc.stdout().contains("no runs in"), "{}", gc.stdout());
}

#[test]
fn list_then_gc_real_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let failing = write(cwd, "failing.yaml", FAILING);
    let first = ok(cwd, &["run", &hello()]).dir(cwd);
    next_second();
    let failed = orchestra(cwd, &["run", failing.to_str().unwrap()]);
    assert_eq!(failed.code(), 1, "{}", failed.stderr());
    let failed = failed.dir(cwd);
    next_second();
    let last = ok(cwd, &["run", &hello()]).dir(cwd);

    let list = ok(cwd, &["runs", "list"]);
    let expect = [(&last, "succeeded"), (&failed, "failed"), (&first, "succeeded")]
        .map(|(d, s)| (name(d), s.to_owned()));
    assert_eq!(list.listed(), expect, "{}", list.stdout());
    let rows: Vec<_> = list.stdout().lines().map(str::to_owned).collect();
    assert!(rows[1].ends_with("5/5       0         -  hello"), "{}", rows[1]);
    assert!(rows[2].ends_with("0/1       1         -  failing"), "{}", rows[2]);

    let only_failed = ok(cwd, &["runs", "list", "--status", "failed"]);
    assert_eq!(only_failed.listed(), [(name(&failed), "failed".to_owned())]);
    assert_eq!(ok(cwd, &["runs", "list", "--limit", "1"]).listed()[..], expect[..1]);
    let json: Value = serde_json::from_str(&ok(cwd, &["runs", "list", "--json"]).stdout()).unwrap();
    let json = json.as_array().unwrap();
    assert_eq!(json.len(), 3);
    assert_eq!(json[1]["run_id"], name(&failed));
    assert_eq!(json[1]["status"], "failed");
    assert_eq!((json[0]["tasks"].as_u64(), json[0]["succeeded"].as_u64()), (Some(5), Some(5)));

    // --dry-run deletes nothing
    let dry = ok(cwd, &["runs", "gc", "--keep", "1", "--dry-run"]);
    assert!(dry.stdout().contains(&format!("would delete {} (failed)", name(&failed))));
    assert!(dry.stdout().contains("would delete 2 runs, kept 1"), "{}", dry.stdout());
    for d in [&first, &failed, &last] {
        assert!(d.is_dir(), "--dry-run deleted {}", d.display());
    }
    // --keep-failed spares the failed run
    let spare = ok(cwd, &["runs", "gc", "--keep", "1", "--keep-failed", "--dry-run"]);
    assert!(spare.stdout().contains("would delete 1 run, kept 2"), "{}", spare.stdout());
    // a real gc keeps the newest
    let gc = ok(cwd, &["runs", "gc", "--keep", "1"]);
    assert!(gc.stdout().contains(&format!("deleted {} (succeeded)", name(&first))));
    assert!(gc.stdout().contains("deleted 2 runs, kept 1"), "{}", gc.stdout());
    assert!(last.is_dir());
    assert!(!first.exists() && !failed.exists());
    // --older-than: the remaining run is seconds old
    let young = ok(cwd, &["runs", "gc", "--older-than", "7d"]);
    assert!(young.stdout().contains("deleted 0 runs, kept 1"), "{}", young.stdout());
    assert!(last.is_dir());
}

#[test]
fn a_thousand_finished_runs_list_in_well_under_a_second() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let real = ok(cwd, &["run", &hello()]).dir(cwd);
    let summary: Value =
        serde_json::from_slice(&std::fs::read(real.join("summary.json")).unwrap()).unwrap();
    let runs = cwd.join("runs");
    let base = 1_577_836_800_000; // 2020-01-01
    for i in 0..1000u64 {
        let id = format!("{}-{i:06x}", Timestamp::from_millis(base + i * 1000).compact());
        let dir = runs.join(&id);
        std::fs::create_dir(&dir).unwrap();
        let mut s = summary.clone();
        s["run_id"] = Value::String(id);
        std::fs::write(dir.join("summary.json"), serde_json::to_vec(&s).unwrap()).unwrap();
    }
    let start = Instant::now();
    let list = ok(cwd, &["runs", "list"]);
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_secs(2), "listing 1001 runs took {elapsed:?}");
    let listed = list.listed();
    assert_eq!(listed.len(), 1001);
    assert_eq!(listed[0].0, name(&real));
    assert_eq!(
        listed[1].0,
        format!("{}-{:06x}", Timestamp::from_millis(base + 999_000).compact(), 999)
    );
    assert!(listed.iter().all(|(_, s)| s == "succeeded"));
}

#[test]
fn show_by_id_and_by_path() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let failing = write(cwd, "failing.yaml", FAILING);
    let dir = orchestra(cwd, &["run", failing.to_str().unwrap()]).dir(cwd);
    let id = name(&dir);
    for arg in [id.clone(), dir.display().to_string()] {
        let out = ok(cwd, &["runs", "show", &arg]);
        let text = out.stdout();
        assert!(text.starts_with("run failed: 0/1 tasks succeeded in "), "{text}");
        assert!(text.contains("\ntask  status "), "{text}");
        let row = text.lines().find(|l| l.starts_with("bad ")).unwrap_or_else(|| panic!("{text}"));
        let cols: Vec<_> = row.split_whitespace().collect();
        assert_eq!(&cols[..2], ["bad", "failed"], "{row}");
        assert_eq!((cols[2], cols[4]), ("1", "3"), "attempts and exit code: {row}");
        assert!(row.contains("exited with code 3"), "{row}");
        let last = text.lines().last().unwrap_or_default();
        assert!(last.starts_with("run directory: ") && last.ends_with(&id), "{text}");
    }
    let json = ok(cwd, &["runs", "show", &id, "--json"]);
    assert_eq!(json.0.stdout, std::fs::read(dir.join("summary.json")).unwrap());

    let unknown = orchestra(cwd, &["runs", "show", "20200101T000000Z-000000"]);
    assert_eq!(unknown.code(), 2, "{}", unknown.stderr());
    assert!(unknown.stderr().starts_with("error: no run `20200101T000000Z-000000` in `runs`"));
    assert!(unknown.stderr().contains("hint: run `orchestra runs list`"), "{}", unknown.stderr());
    assert!(unknown.stdout().is_empty());
    // a directory that is not a run
    let not_run = orchestra(cwd, &["runs", "show", cwd.to_str().unwrap()]);
    assert_eq!(not_run.code(), 2, "{}", not_run.stderr());
    assert!(not_run.stderr().contains("is not a run directory"), "{}", not_run.stderr());
}

/// Ends what the test started, even when it fails: the orchestra process and the task it
/// left running in its own process group.
struct Cleanup {
    child: Child,
    task_pid: Option<i32>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(pid) = self.task_pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[test]
fn gc_never_deletes_running_or_interrupted_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let failing = write(cwd, "failing.yaml", FAILING);
    let finished = orchestra(cwd, &["run", failing.to_str().unwrap()]).dir(cwd);
    let slow = write(
        cwd,
        "slow.yaml",
        "name: slow\ntasks:\n  - { id: nap, exec: { program: sh, args: [-c, 'echo $$ > pid; exec sleep 30'] } }\n",
    );
    let (child, running, pid) = start_until_pid(cwd, &slow, "nap", Stdio::null);
    let mut cleanup = Cleanup { child, task_pid: Some(pid) };
    let id = name(&running);

    let list = ok(cwd, &["runs", "list"]);
    assert!(list.listed().contains(&(id.clone(), "running".to_owned())), "{}", list.stdout());
    let show = ok(cwd, &["runs", "show", &id]);
    assert!(show.stdout().contains("is running"), "{}", show.stdout());

    let gc = ok(cwd, &["runs", "gc", "--keep", "0"]);
    assert!(gc.stdout().contains(&format!("skipped {id} (running)")), "{}", gc.stdout());
    assert!(gc.stdout().contains(&format!("deleted {}", name(&finished))), "{}", gc.stdout());
    assert!(running.is_dir(), "gc deleted a running run");
    assert!(!finished.exists());
    assert!(cleanup.child.try_wait().unwrap().is_none(), "the run must still be going");

    // kill -9: the run is interrupted, resumable, and kept
    cleanup.child.kill().unwrap();
    cleanup.child.wait().unwrap();
    let list = ok(cwd, &["runs", "list"]);
    assert_eq!(list.listed(), [(id.clone(), "interrupted".to_owned())], "{}", list.stdout());
    let show = ok(cwd, &["runs", "show", &id]);
    assert!(show.stdout().contains("was interrupted"), "{}", show.stdout());
    assert!(show.stdout().contains("orchestra resume"), "{}", show.stdout());
    let gc = ok(cwd, &["runs", "gc", "--keep", "0"]);
    assert!(gc.stdout().contains(&format!("skipped {id} (interrupted")), "{}", gc.stdout());
    assert!(gc.stdout().contains("deleted 0 runs"), "{}", gc.stdout());
    assert!(running.join("state").is_dir(), "gc deleted an interrupted run");
}
