//! Reliability of the distributed mode over real processes (R1, R2, R3, R5, R6, R10 of the
//! catalog in `shared/notes/nats-jetstream.md`): a nats-server, an `orchestra-coordinator`,
//! `orchestra-worker` processes and the `orchestra` CLI, with faults inflicted by signals to
//! PIDs this file started. Tasks write `<marks>/<task>.<pid>` (holding their working
//! directory, which names the worker) as they start: that is how the tests see which process
//! ran what, and check that no task process outlives its run.
//!
//! The tests run one at a time (they time redeliveries on a 2-core machine).
#![allow(clippy::disallowed_methods)] // tests spawn the binaries they test

mod common;

use common::cluster::{COMMAND_TIMEOUT, Cluster, json, only_run_dir, orchestra, sha256_hex};
use common::{alive, bin, wait_for, write};
use nix::sys::signal::Signal;
use orchestra_bus::NatsBus;
use orchestra_proto::{Ctx, Dispatch, Plan, RunId, TaskId, Timestamp, TraceId, codec, subjects};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// One test at a time: redelivery timings must not compete for the two cores.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The short ack wait of these tests (coordinator and workers agree; heartbeats every 1/3).
const ACK_WAIT: &str = "2s";

/// A task's start mark: the shell line that writes `<marks>/<task>.<pid>`.
fn mark(marks: &Path, task: &str) -> String {
    format!("pwd > {}/{task}.$$", marks.display())
}

/// One start of a task: its pid and the worker whose work directory it ran in.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Start {
    pid: i32,
    worker: String,
}

/// Starts per task, from the marks.
fn starts(marks: &Path, workers: &[&str]) -> BTreeMap<String, Vec<Start>> {
    let mut out: BTreeMap<String, Vec<Start>> = BTreeMap::new();
    for entry in std::fs::read_dir(marks).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let Some((task, pid)) = name.rsplit_once('.') else { continue };
        let Ok(cwd) = std::fs::read_to_string(&path) else { continue };
        if cwd.is_empty() {
            continue; // being written
        }
        let worker = workers
            .iter()
            .find(|w| cwd.contains(&format!("/{w}/work/")))
            .map_or_else(|| format!("unknown: {}", cwd.trim()), |w| (*w).to_owned());
        out.entry(task.to_owned()).or_default().push(Start { pid: pid.parse().unwrap(), worker });
    }
    out
}

fn marks_dir(cluster: &Cluster) -> PathBuf {
    let dir = cluster.root.path().join("marks");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits (bounded) until no task process recorded in `marks` runs any more.
fn assert_no_task_process_left(marks: &Path, within: Duration) {
    let pids: Vec<i32> = starts(marks, &[])
        .values()
        .flatten()
        .map(|s| s.pid)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let deadline = Instant::now() + within;
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "task processes still alive after {within:?}: {left:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `orchestra run FILE --nats URL --runs-dir runs ARGS…` in the background; output in files.
struct Cli {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Cli {
    fn spawn(cwd: &Path, file: &Path, url: &str, args: &[&str]) -> Cli {
        let (out, err) = (cwd.join("run.stdout"), cwd.join("run.stderr"));
        let child = bin()
            .current_dir(cwd)
            .args(["run", file.to_str().unwrap(), "--nats", url, "--runs-dir", "runs"])
            .args(args)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        Cli { child, out, err }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits for the exit (bounded): the code (-1 for a signal), stdout, stderr.
    fn wait(mut self, limit: Duration) -> (i32, String, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("`orchestra run` did not finish within {limit:?}:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = std::fs::read_to_string(&self.out).unwrap_or_default();
        (status.code().unwrap_or(-1), out, self.stderr())
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The task entry of `summary` named `id`.
fn task<'a>(summary: &'a Value, id: &str) -> &'a Value {
    summary["tasks"].as_array().unwrap().iter().find(|t| t["id"] == id).unwrap()
}

fn attempts(task: &Value) -> &Vec<Value> {
    task["attempts"].as_array().unwrap()
}

/// An attempt recorded as successful: exit code 0 and no failure.
fn succeeded(attempt: &Value) -> bool {
    attempt["exit_code"] == 0 && attempt.get("failure").is_none_or(Value::is_null)
}

/// Each listed task succeeded, with exactly one successful attempt.
fn assert_each_succeeded_once(summary: &Value, ids: &[String]) {
    for id in ids {
        let t = task(summary, id);
        assert_eq!(t["status"], "succeeded", "task {id}: {t}");
        let ok = attempts(t).iter().filter(|a| succeeded(a)).count();
        assert_eq!(ok, 1, "task {id} has {ok} successful attempts: {t}");
    }
}

fn secs(since: Instant) -> String {
    format!("{:.1}s", since.elapsed().as_secs_f64())
}

/// R1: `kill -9` a worker while its tasks run; they complete on the other worker, each task
/// succeeds exactly once, and the killed worker's task processes die with it.
#[test]
fn r1_a_killed_workers_tasks_complete_elsewhere_and_its_processes_die() {
    let _serial = serial();
    let t0 = Instant::now();
    let agent = ["--ack-wait", ACK_WAIT];
    let mut cluster =
        Cluster::with(None, &agent, &["w1", "w2"], &["--slots", "2", "--ack-wait", ACK_WAIT]);
    let (url, cli, marks) = (cluster.url(), cluster.cli_dir(), marks_dir(&cluster));
    let ids: Vec<String> = (1..=4).map(|i| format!("t{i}")).collect();
    let mut scenario = String::from("name: r1\ntasks:\n");
    for id in &ids {
        // `exec`: the sleeping process is the attempt's leader, which dies with its worker.
        let script = format!("{}; exec sleep 3", mark(&marks, id));
        scenario.push_str(&format!(
            "  - {{ id: {id}, exec: {{ program: sh, args: [-c, '{script}'] }} }}\n"
        ));
    }
    scenario.push_str(
        "  - { id: after, depends_on: [t1, t2, t3, t4], exec: { program: echo, args: [done] } }\n",
    );
    let file = write(&cli, "r1.yaml", &scenario);
    let run = Cli::spawn(&cli, &file, &url, &["-j", "4"]);

    let workers = ["w1", "w2"];
    wait_for("a task to start on w1", COMMAND_TIMEOUT, || {
        starts(&marks, &workers).values().flatten().any(|s| s.worker == "w1")
    });
    cluster.worker("w1").kill9();
    let killed_at = Instant::now();
    let on_w1: Vec<Start> =
        starts(&marks, &workers).values().flatten().filter(|s| s.worker == "w1").cloned().collect();
    // PR_SET_PDEATHSIG: the leaders die at once, long before their 3 s sleep ends.
    wait_for("w1's task processes to die", Duration::from_millis(1500), || {
        on_w1.iter().all(|s| !alive(s.pid))
    });
    let died_after = killed_at.elapsed();

    let (code, out, err) = run.wait(COMMAND_TIMEOUT);
    assert_eq!(code, 0, "run failed:\n{out}\n{err}\n{}", cluster.logs());
    let summary = json(&only_run_dir(&cli.join("runs")).join("summary.json"));
    let mut all = ids.clone();
    all.push("after".to_owned());
    assert_each_succeeded_once(&summary, &all);
    let seen = starts(&marks, &workers);
    let moved: Vec<&String> =
        seen.iter().filter(|(_, s)| s.iter().any(|s| s.worker == "w1")).map(|(id, _)| id).collect();
    assert!(!moved.is_empty());
    for id in &moved {
        assert!(
            seen[*id].iter().any(|s| s.worker == "w2"),
            "task {id} ran on the killed w1 and never on w2: {seen:?}"
        );
    }
    assert_no_task_process_left(&marks, Duration::from_secs(5));
    eprintln!(
        "R1: {} task(s) moved from w1 to w2 ({moved:?}); w1's processes gone {died_after:?} after the kill; {}",
        moved.len(),
        secs(t0)
    );
    cluster.workers.retain(|w| w.name != "w1");
    cluster.shutdown();
}

/// R2: a worker stopped (SIGSTOP) past the ack wait loses its task to the other worker; resumed
/// after that worker's result was committed, its late result is fenced.
#[test]
fn r2_a_paused_workers_task_is_redelivered_and_its_late_result_fenced() {
    let _serial = serial();
    let t0 = Instant::now();
    let agent = ["--ack-wait", ACK_WAIT];
    let mut cluster =
        Cluster::with(None, &agent, &["w1", "w2"], &["--slots", "1", "--ack-wait", ACK_WAIT]);
    let (url, cli, marks) = (cluster.url(), cluster.cli_dir(), marks_dir(&cluster));
    let scenario = format!(
        "name: r2\ntasks:\n\
         \x20 - {{ id: slow, outputs: [where.txt], exec: {{ program: sh, args: [-c, '{}; sleep 4; pwd > where.txt'] }} }}\n\
         \x20 - {{ id: after, depends_on: [slow], exec: {{ program: sh, args: [-c, 'sleep 3; cat inputs/slow/where.txt'] }} }}\n",
        mark(&marks, "slow")
    );
    let file = write(&cli, "r2.yaml", &scenario);
    let run = Cli::spawn(&cli, &file, &url, &[]);

    let workers = ["w1", "w2"];
    let mut first = None;
    wait_for("slow to start", COMMAND_TIMEOUT, || {
        first = starts(&marks, &workers).get("slow").and_then(|s| s.first().cloned());
        first.is_some()
    });
    let first = first.unwrap();
    let paused = first.worker.clone();
    let other = if paused == "w1" { "w2" } else { "w1" };
    cluster.worker(&paused).signal(Signal::SIGSTOP);
    let stopped_at = Instant::now();
    wait_for("slow to be redelivered", Duration::from_secs(20), || {
        starts(&marks, &workers).get("slow").is_some_and(|s| s.iter().any(|s| s.worker == other))
    });
    let redelivered_after = stopped_at.elapsed();
    wait_for("slow to succeed", Duration::from_secs(20), || {
        run.stderr().contains("succeeded slow#")
    });
    cluster.worker(&paused).signal(Signal::SIGCONT);
    let paused_for = stopped_at.elapsed();
    // The resumed worker finds its attempt over and reports it, while `after` still runs.
    let paused_log = || cluster.workers.iter().find(|w| w.name == paused).unwrap().log();
    wait_for("the late result to be sent", Duration::from_secs(10), || {
        paused_log().matches("attempt finished").count() >= 1
    });

    let (code, out, err) = run.wait(COMMAND_TIMEOUT);
    assert_eq!(code, 0, "run failed:\n{out}\n{err}\n{}", cluster.logs());
    let run_dir = only_run_dir(&cli.join("runs"));
    let summary = json(&run_dir.join("summary.json"));
    assert_each_succeeded_once(&summary, &["slow".to_owned(), "after".to_owned()]);
    let slow = task(&summary, "slow");
    assert_eq!(attempts(slow).len(), 1, "a redelivery is the same attempt: {slow}");
    assert_eq!(attempts(slow)[0]["worker_id"], other, "the attempt is credited to {other}: {slow}");
    // The committed result is the other worker's: its artifact names its work directory.
    let other_dir = format!("/{other}/work/");
    let artifact = std::fs::read(run_dir.join("artifacts/slow/where.txt")).unwrap();
    let text = String::from_utf8_lossy(&artifact);
    assert!(text.contains(&other_dir), "slow's artifact came from {text}, not {other}");
    let recorded = summary["artifacts"].as_array().unwrap().iter().find(|a| a["task"] == "slow");
    assert_eq!(recorded.unwrap()["sha256"].as_str().unwrap(), sha256_hex(&artifact));
    let after_out = std::fs::read_to_string(run_dir.join("tasks/after/1/stdout")).unwrap();
    assert!(after_out.contains(&other_dir), "after read {after_out}");
    assert_eq!(starts(&marks, &workers)["slow"].len(), 2);
    assert_no_task_process_left(&marks, Duration::from_secs(5));
    eprintln!(
        "R2: slow paused on {paused}, redelivered to {other} {redelivered_after:?} after SIGSTOP, \
         SIGCONT after {paused_for:?}; recorded worker_id {}; {}",
        attempts(slow)[0]["worker_id"],
        secs(t0)
    );
    cluster.shutdown();
}

/// R3: nats-server restarted mid-run, gracefully then by `kill -9`: the chain completes, nothing
/// is lost.
#[test]
fn r3_a_restarted_nats_server_loses_nothing() {
    let _serial = serial();
    let t0 = Instant::now();
    let agent = ["--ack-wait", ACK_WAIT];
    let mut cluster =
        Cluster::with(None, &agent, &["w1", "w2"], &["--slots", "2", "--ack-wait", ACK_WAIT]);
    let (url, cli, marks) = (cluster.url(), cluster.cli_dir(), marks_dir(&cluster));
    let ids: Vec<String> = (1..=6).map(|i| format!("c{i}")).collect();
    let mut scenario = String::from("name: r3\ntasks:\n");
    for (i, id) in ids.iter().enumerate() {
        let after = if i == 0 { String::new() } else { format!(", depends_on: [{}]", ids[i - 1]) };
        let script = format!("{}; sleep 1; echo {id}-out > out.txt", mark(&marks, id));
        scenario.push_str(&format!(
            "  - {{ id: {id}{after}, outputs: [out.txt], exec: {{ program: sh, args: [-c, '{script}'] }} }}\n"
        ));
    }
    let file = write(&cli, "r3.yaml", &scenario);
    let run = Cli::spawn(&cli, &file, &url, &[]);
    let started = |id: &str| starts(&marks, &["w1", "w2"]).contains_key(id);

    wait_for("c2 to start", COMMAND_TIMEOUT, || started("c2"));
    cluster.nats.restart(); // SIGTERM, then the same port and store
    wait_for("c4 to start", COMMAND_TIMEOUT, || started("c4"));
    cluster.nats.kill9();
    cluster.nats.restart();

    let (code, out, err) = run.wait(COMMAND_TIMEOUT);
    let run_dir = only_run_dir(&cli.join("runs"));
    let run_id = run_dir.file_name().unwrap().to_str().unwrap().to_owned();
    let attached = code != 0;
    if attached {
        // The CLI gave up during an outage: attach follows the run to its end.
        eprintln!("R3: the CLI exited {code} during the restarts:\n{err}");
        let (code, out, err) =
            orchestra(&cli, &["attach", &run_id, "--nats", &url, "--runs-dir", "runs"]);
        assert_eq!(code, 0, "attach failed:\n{out}\n{err}\n{}", cluster.logs());
    } else {
        assert!(out.contains("run succeeded: 6/6 tasks succeeded"), "{out}");
    }
    let summary = json(&run_dir.join("summary.json"));
    assert_eq!(summary["status"], "succeeded");
    assert_each_succeeded_once(&summary, &ids);
    for id in &ids {
        let path = run_dir.join("artifacts").join(id).join("out.txt");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(bytes, format!("{id}-out\n").into_bytes());
        let recorded = summary["artifacts"].as_array().unwrap().iter().find(|a| a["task"] == **id);
        assert_eq!(recorded.unwrap()["sha256"].as_str().unwrap(), sha256_hex(&bytes));
    }
    let runs: usize = starts(&marks, &["w1", "w2"]).values().map(Vec::len).sum();
    assert_no_task_process_left(&marks, Duration::from_secs(5));
    eprintln!("R3: 6/6 succeeded, {runs} task starts, attach needed: {attached}; {}", secs(t0));
    cluster.shutdown();
}

/// The dispatch of `id`'s attempt 1 in `run`, as the coordinator publishes it.
fn dispatch_of(run: &str, plan: &Plan, id: &str) -> (String, Vec<u8>) {
    let spec = plan.tasks.iter().find(|t| t.id.as_str() == id).unwrap().clone();
    let run = RunId::parse(run).unwrap();
    let task = TaskId::parse(id).unwrap();
    let body = Dispatch {
        task: spec,
        attempt: 1,
        inputs: Vec::new(),
        output_cap_bytes: 1 << 20,
        kill_grace_ms: 1000,
        dry_run: false,
    };
    let ctx = Ctx::run(run.clone(), TraceId::generate()).task(task.clone(), 1);
    let env = ctx.envelope(Timestamp::now(), body);
    (subjects::dispatch_msg_id(&run, &task, 1), codec::encode(&env))
}

/// R5: the same dispatch published twice with the same msg id is stored and delivered once;
/// a duplicate published while a run's task runs does not run it again.
#[test]
fn r5_duplicate_dispatches_are_deduplicated() {
    let _serial = serial();
    let t0 = Instant::now();
    let mut cluster = Cluster::start(None);
    let (url, cli, marks) = (cluster.url(), cluster.cli_dir(), marks_dir(&cluster));
    let scenario = format!(
        "name: r5\ntasks:\n  - {{ id: once, exec: {{ program: sh, args: [-c, '{}; sleep 2'] }} }}\n",
        mark(&marks, "once")
    );
    let file = write(&cli, "r5.yaml", &scenario);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let bus = rt.block_on(NatsBus::connect(&url)).unwrap();
    let bus: std::sync::Arc<dyn orchestra_bus::Bus> = bus;
    let queue = rt.block_on(bus.work_queue(orchestra::local::queue_config("default"))).unwrap();
    let subject = subjects::task_queue("default");

    // Run level: the duplicate goes out while the task runs; an idle worker slot would take it.
    let run = Cli::spawn(&cli, &file, &url, &[]);
    wait_for("once to start", COMMAND_TIMEOUT, || {
        starts(&marks, &["w1", "w2"]).contains_key("once")
    });
    let run_dir = only_run_dir(&cli.join("runs"));
    let run_id = run_dir.file_name().unwrap().to_str().unwrap().to_owned();
    let plan: Plan = serde_json::from_value(json(&run_dir.join("plan.json"))).unwrap();
    let (msg_id, payload) = dispatch_of(&run_id, &plan, "once");
    let ack = rt.block_on(queue.publish(&subject, &msg_id, payload.clone().into())).unwrap();
    assert!(ack.duplicate, "the coordinator's dispatch {msg_id} was not recognised");
    let (code, out, err) = run.wait(COMMAND_TIMEOUT);
    assert_eq!(code, 0, "run failed:\n{out}\n{err}\n{}", cluster.logs());
    std::thread::sleep(Duration::from_millis(500)); // time for a wrongly queued copy to start
    let seen = starts(&marks, &["w1", "w2"]);
    assert_eq!(seen["once"].len(), 1, "once ran more than once: {seen:?}");
    assert_each_succeeded_once(&json(&run_dir.join("summary.json")), &["once".to_owned()]);

    // Queue level, with the workers stopped: a new msg id twice, one message, one delivery.
    for w in &mut cluster.workers {
        assert_eq!(w.stop(), Some(0), "{}", w.log());
    }
    let (_, payload) = dispatch_of(&run_id, &plan, "once");
    let msg_id = format!("{msg_id}-r5");
    let first = rt.block_on(queue.publish(&subject, &msg_id, payload.clone().into())).unwrap();
    let second = rt.block_on(queue.publish(&subject, &msg_id, payload.into())).unwrap();
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(first.sequence, second.sequence);
    let delivery = rt.block_on(queue.next(Duration::from_secs(2))).unwrap().expect("one delivery");
    assert_eq!(delivery.info.delivered, 1);
    rt.block_on(delivery.acker.term()).unwrap(); // never run it
    let again = rt.block_on(queue.next(Duration::from_millis(500))).unwrap();
    assert!(again.is_none(), "a second delivery: {again:?}");
    eprintln!("R5: duplicates recognised at run and queue level; {}", secs(t0));
    cluster.workers.clear();
    cluster.shutdown();
}

/// R6: a task that always exits 3 with `retries: 2` fails after 3 attempts with a clear record,
/// its dependents are skipped, the rest runs, and the run exits 1.
#[test]
fn r6_a_poison_task_fails_after_its_attempts_and_its_dependents_are_skipped() {
    let _serial = serial();
    let t0 = Instant::now();
    let cluster = Cluster::start(None);
    let (url, cli, marks) = (cluster.url(), cluster.cli_dir(), marks_dir(&cluster));
    let scenario = format!(
        "name: r6\n\
         defaults:\n  backoff: {{ initial: 100ms, multiplier: 2, max: 1s, jitter: 0% }}\n\
         tasks:\n\
         \x20 - {{ id: poison, retries: 2, exec: {{ program: sh, args: [-c, '{}; echo poisoned >&2; exit 3'] }} }}\n\
         \x20 - {{ id: child, depends_on: [poison], exec: {{ program: echo, args: [child] }} }}\n\
         \x20 - {{ id: grandchild, depends_on: [child], exec: {{ program: echo, args: [grandchild] }} }}\n\
         \x20 - {{ id: healthy, exec: {{ program: echo, args: [healthy] }} }}\n",
        mark(&marks, "poison")
    );
    let file = write(&cli, "r6.yaml", &scenario);
    let (code, out, err) =
        orchestra(&cli, &["run", file.to_str().unwrap(), "--nats", &url, "--runs-dir", "runs"]);
    assert_eq!(code, 1, "run:\n{out}\n{err}\n{}", cluster.logs());
    let run_dir = only_run_dir(&cli.join("runs"));
    let summary = json(&run_dir.join("summary.json"));
    assert_eq!(summary["status"], "failed");
    let poison = task(&summary, "poison");
    assert_eq!(poison["status"], "failed", "{poison}");
    let tries = attempts(poison);
    assert_eq!(tries.len(), 3, "{poison}");
    for (n, a) in tries.iter().enumerate() {
        assert_eq!(a["attempt"], n + 1, "{a}");
        assert_eq!(a["exit_code"], 3, "{a}");
        assert_eq!(a["failure"]["kind"], "exit_code", "{a}");
        assert!(!succeeded(a), "{a}");
    }
    for id in ["child", "grandchild"] {
        let t = task(&summary, id);
        assert_eq!(t["status"], "skipped", "{t}");
        assert!(attempts(t).is_empty(), "{t}");
    }
    let reason = task(&summary, "child").to_string();
    assert!(reason.contains("poison"), "child's record does not name poison: {reason}");
    assert_eq!(task(&summary, "healthy")["status"], "succeeded");
    assert_eq!(starts(&marks, &["w1", "w2"])["poison"].len(), 3);
    let stderr_3 = std::fs::read_to_string(run_dir.join("tasks/poison/3/stderr")).unwrap();
    assert!(stderr_3.contains("poisoned"), "{stderr_3}");
    eprintln!("R6: poison failed after 3 attempts, dependents skipped; {}", secs(t0));
    cluster.shutdown();
}

/// Per worker id, the task ids whose successful attempt it ran.
fn by_worker(summary: &Value) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in summary["tasks"].as_array().unwrap() {
        for a in attempts(t).iter().filter(|a| succeeded(a)) {
            let worker = a["worker_id"].as_str().unwrap_or("none").to_owned();
            out.entry(worker).or_default().push(t["id"].as_str().unwrap().to_owned());
        }
    }
    out
}

/// R10: 200 short tasks on 1 worker process, then on 4: every worker gets work, and the union
/// of succeeded tasks equals the plan.
#[test]
fn r10_work_spreads_over_worker_processes_and_nothing_is_lost() {
    let _serial = serial();
    let mut cluster = Cluster::with(None, &[], &["w1"], &["--slots", "2"]);
    let (url, cli) = (cluster.url(), cluster.cli_dir());
    let ids: Vec<String> = (1..=200).map(|i| format!("s{i:03}")).collect();
    let mut scenario = String::from("name: r10\ntasks:\n");
    for id in &ids {
        scenario
            .push_str(&format!("  - {{ id: {id}, exec: {{ program: sleep, args: ['0.05'] }} }}\n"));
    }
    let file = write(&cli, "r10.yaml", &scenario);
    let plan: BTreeSet<String> = ids.iter().cloned().collect();
    let mut timings = Vec::new();
    for (round, workers) in [(1, vec!["w1"]), (2, vec!["w1", "w2", "w3", "w4"])] {
        for id in workers.iter().skip(cluster.workers.len()) {
            cluster.add_worker(id);
        }
        let runs = format!("runs{round}");
        let t = Instant::now();
        let (code, out, err) = orchestra(
            &cli,
            &["run", file.to_str().unwrap(), "--nats", &url, "--runs-dir", &runs, "-j", "8"],
        );
        timings.push(t.elapsed());
        assert_eq!(code, 0, "round {round}:\n{out}\n{err}\n{}", cluster.logs());
        let summary = json(&only_run_dir(&cli.join(&runs)).join("summary.json"));
        assert_each_succeeded_once(&summary, &ids);
        let spread = by_worker(&summary);
        let done: BTreeSet<String> = spread.values().flatten().cloned().collect();
        assert_eq!(done, plan, "round {round}");
        assert_eq!(spread.values().map(Vec::len).sum::<usize>(), 200, "round {round}");
        let names: BTreeSet<&str> = spread.keys().map(String::as_str).collect();
        assert_eq!(names, workers.iter().copied().collect(), "round {round}: {spread:?}");
        let counts: Vec<(String, usize)> =
            spread.iter().map(|(w, t)| (w.clone(), t.len())).collect();
        eprintln!("R10 round {round}: {counts:?} in {:?}", timings.last().unwrap());
    }
    cluster.shutdown();
}
