//! Attempts of real processes in real temp directories: exit codes, signals, timeouts, process
//! groups, output caps, environment, dry runs, artifacts and staged inputs.

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use orchestra_proto::{
    AttemptResult, Dispatch, FailureKind, InputRef, Outcome, RunId, SpanId, Stream, TaskEvent,
    TaskId, TaskSpec, TraceId,
};
use orchestra_worker::{AttemptContext, ClaudeToolConfig, run_attempt};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const TASK: &str = "t1";

/// These attempts run no `claude` task.
static NO_CLAUDE: LazyLock<ClaudeToolConfig> = LazyLock::new(ClaudeToolConfig::default);

fn sh(script: &str) -> Dispatch {
    exec("sh", &["-c", script])
}

fn exec(program: &str, args: &[&str]) -> Dispatch {
    let mut task = TaskSpec::exec(TaskId::new_unchecked(TASK), program, args);
    task.timeout_ms = 10_000;
    Dispatch { kill_grace_ms: 2_000, ..Dispatch::first(task) }
}

struct Run {
    dir: tempfile::TempDir,
    die_with_worker: bool,
}

struct Done {
    result: AttemptResult,
    events: Vec<TaskEvent>,
    elapsed: Duration,
}

impl Done {
    fn failure_kind(&self) -> Option<FailureKind> {
        match &self.result.outcome {
            Outcome::Failed { failure } => Some(failure.kind),
            _ => None,
        }
    }

    fn failure_text(&self) -> String {
        match &self.result.outcome {
            Outcome::Failed { failure } => failure.to_string(),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    fn pid(&self) -> Option<u32> {
        match self.events.first() {
            Some(TaskEvent::Started { pid, .. }) => *pid,
            other => panic!("first event is not Started: {other:?}"),
        }
    }

    fn output(&self, stream: Stream) -> String {
        let mut expected_seq = 0;
        let mut text = String::new();
        for e in &self.events {
            if let TaskEvent::Output { stream: s, seq, chunk } = e
                && *s == stream
            {
                assert_eq!(*seq, expected_seq, "seq of {stream:?}");
                expected_seq += 1;
                text += chunk;
            }
        }
        text
    }
}

impl Run {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap(), die_with_worker: false }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn workspace(&self) -> PathBuf {
        self.path().join("work").join(TASK)
    }

    async fn attempt(&self, dispatch: &Dispatch) -> Done {
        self.attempt_with(dispatch, &CancellationToken::new()).await
    }

    async fn attempt_with(&self, dispatch: &Dispatch, cancel: &CancellationToken) -> Done {
        let run_id = RunId::new_unchecked("r1");
        let trace_id = TraceId::new_unchecked("0af7651916cd43dd8448eb211c80319c");
        let span_id = SpanId::new_unchecked("b7ad6b7169203331");
        let cx = AttemptContext {
            run_dir: self.path(),
            run_id: &run_id,
            trace_id: &trace_id,
            span_id: &span_id,
            worker_id: "w1",
            die_with_worker: self.die_with_worker,
            claude: &NO_CLAUDE,
            objects: None,
        };
        let mut events = Vec::new();
        let mut sink = |e: TaskEvent| events.push(e);
        let start = Instant::now();
        let result = run_attempt(&cx, dispatch, &mut sink, cancel).await;
        let elapsed = start.elapsed();
        let started = events.iter().filter(|e| matches!(e, TaskEvent::Started { .. })).count();
        assert_eq!(started, 1, "exactly one Started: {events:?}");
        assert!(matches!(events[0], TaskEvent::Started { .. }), "Started comes first");
        Done { result, events, elapsed }
    }
}

/// Live (not zombie) processes whose process group is `pgid`.
fn live_group_members(pgid: i32) -> Vec<i32> {
    let mut live = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // `pid (comm) state ppid pgrp ...`; comm may contain spaces, so split after `)`.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" {
            live.push(pid);
        }
    }
    live
}

fn is_alive(pid: i32) -> bool {
    match kill(Pid::from_raw(pid), None) {
        Err(Errno::ESRCH) => false,
        _ => std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit_once(')').is_some_and(|(_, r)| !r.trim_start().starts_with('Z')))
            .unwrap_or(false),
    }
}

/// Waits (bounded) until no live process is left in the group; returns the survivors.
async fn group_survivors(pgid: i32) -> Vec<i32> {
    for _ in 0..100 {
        let live = live_group_members(pgid);
        if live.is_empty() {
            return live;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    live_group_members(pgid)
}

fn read_pids(path: &Path) -> Vec<i32> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().map(|l| l.trim().parse().unwrap()).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[tokio::test]
async fn exit_zero_succeeds_and_output_goes_to_files_and_events() {
    let run = Run::new();
    let done = run.attempt(&sh("echo hello; echo oops >&2")).await;
    assert_eq!(done.result.outcome, Outcome::Succeeded {});
    assert_eq!(done.result.exit_code, Some(0));
    assert_eq!(done.result.signal, None);
    assert_eq!(done.result.stdout_bytes, 6);
    assert_eq!(done.result.stderr_bytes, 5);
    assert_eq!(done.result.worker_id, "w1");
    assert!(done.pid().is_some());
    assert_eq!(done.output(Stream::Stdout), "hello\n");
    assert_eq!(done.output(Stream::Stderr), "oops\n");
    let attempt_dir = run.path().join("tasks").join(TASK).join("1");
    assert_eq!(std::fs::read_to_string(attempt_dir.join("stdout")).unwrap(), "hello\n");
    assert_eq!(std::fs::read_to_string(attempt_dir.join("stderr")).unwrap(), "oops\n");
    match &done.events[0] {
        TaskEvent::Started { worker_id, argv, .. } => {
            assert_eq!(worker_id, "w1");
            assert!(argv[0].ends_with("/sh"), "{argv:?}");
            assert_eq!(argv[1..], ["-c", "echo hello; echo oops >&2"]);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn non_zero_exit_code_fails_with_the_code() {
    let run = Run::new();
    let done = run.attempt(&sh("exit 3")).await;
    assert_eq!(done.failure_kind(), Some(FailureKind::ExitCode));
    assert_eq!(done.result.exit_code, Some(3));
    match &done.result.outcome {
        Outcome::Failed { failure } => {
            assert_eq!(failure.exit_code, Some(3));
            assert!(failure.message.contains("exited with code 3"), "{failure}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn missing_program_is_a_spawn_failure_naming_it() {
    let run = Run::new();
    let done = run.attempt(&exec("no-such-program-xyz", &[])).await;
    assert_eq!(done.failure_kind(), Some(FailureKind::Spawn));
    assert_eq!(done.pid(), None);
    let text = done.failure_text();
    assert!(text.contains("`no-such-program-xyz` not found"), "{text}");
    assert!(text.contains("/usr/local/bin:/usr/bin:/bin"), "{text}");
    assert!(text.contains("hint:"), "{text}");
}

#[tokio::test]
async fn non_executable_program_is_a_spawn_failure() {
    let run = Run::new();
    std::fs::create_dir_all(run.workspace()).unwrap();
    std::fs::write(run.workspace().join("script"), "#!/bin/sh\necho hi\n").unwrap();
    let done = run.attempt(&exec("./script", &[])).await;
    assert_eq!(done.failure_kind(), Some(FailureKind::Spawn));
    let text = done.failure_text();
    assert!(text.contains("failed to spawn"), "{text}");
    assert!(text.contains("script"), "{text}");
    assert!(text.contains("ermission denied"), "{text}");
}

#[tokio::test]
async fn killed_by_its_own_signal_is_a_signal_failure() {
    let run = Run::new();
    let done = run.attempt(&sh("kill -9 $$")).await;
    assert_eq!(done.failure_kind(), Some(FailureKind::Signal));
    assert_eq!(done.result.signal, Some(9));
    assert_eq!(done.result.exit_code, None);
    assert!(done.failure_text().contains("SIGKILL"), "{}", done.failure_text());
}

#[tokio::test]
async fn timeout_ends_the_whole_process_group() {
    let run = Run::new();
    let mut d = sh("sleep 30 & echo $! >> pids; sleep 30 & echo $! >> pids; echo $$ >> pids; wait");
    d.task.timeout_ms = 300;
    let done = run.attempt(&d).await;
    assert_eq!(done.failure_kind(), Some(FailureKind::Timeout));
    assert!(done.failure_text().contains("300 ms"), "{}", done.failure_text());
    assert!(done.elapsed < Duration::from_secs(5), "{:?}", done.elapsed);
    let pgid = done.pid().unwrap() as i32;
    assert_eq!(group_survivors(pgid).await, Vec::<i32>::new());
    let pids = read_pids(&run.workspace().join("pids"));
    assert_eq!(pids.len(), 3);
    for pid in pids {
        assert!(!is_alive(pid), "pid {pid} survived");
    }
}

#[tokio::test]
async fn term_ignoring_task_is_killed_after_the_grace() {
    let run = Run::new();
    let mut d = sh("trap '' TERM; echo ready; sleep 30; echo never");
    d.task.timeout_ms = 200;
    d.kill_grace_ms = 300;
    let done = run.attempt(&d).await;
    assert_eq!(done.failure_kind(), Some(FailureKind::Timeout));
    assert_eq!(done.result.signal, Some(9), "ended by SIGKILL");
    assert!(done.elapsed >= Duration::from_millis(500), "{:?}", done.elapsed);
    assert!(done.elapsed < Duration::from_secs(5), "{:?}", done.elapsed);
    assert_eq!(done.output(Stream::Stdout), "ready\n");
    assert_eq!(group_survivors(done.pid().unwrap() as i32).await, Vec::<i32>::new());
}

#[tokio::test]
async fn term_honouring_task_ends_before_the_grace() {
    let run = Run::new();
    let mut d = sh("sleep 30");
    d.task.timeout_ms = 100;
    d.kill_grace_ms = 10_000;
    let done = run.attempt(&d).await;
    assert_eq!(done.failure_kind(), Some(FailureKind::Timeout));
    assert!(done.elapsed < Duration::from_secs(5), "{:?}", done.elapsed);
}

#[tokio::test]
async fn background_children_do_not_outlive_a_successful_leader() {
    let run = Run::new();
    let done = run.attempt(&sh("sleep 30 & echo $! > pid; echo done")).await;
    assert_eq!(done.result.outcome, Outcome::Succeeded {});
    assert!(done.elapsed < Duration::from_secs(5), "waited for the background child");
    assert_eq!(done.output(Stream::Stdout), "done\n");
    assert_eq!(group_survivors(done.pid().unwrap() as i32).await, Vec::<i32>::new());
    let pid = read_pids(&run.workspace().join("pid"))[0];
    assert!(!is_alive(pid), "background pid {pid} survived");
}

#[tokio::test]
async fn output_cap_holds_and_ends_the_attempt() {
    let run = Run::new();
    let mut d = sh("head -c 1048576 /dev/zero | tr '\\0' a; sleep 30");
    d.output_cap_bytes = 10 * 1024;
    let done = run.attempt(&d).await;
    assert_eq!(done.failure_kind(), Some(FailureKind::OutputLimit));
    assert!(done.failure_text().contains("10240 bytes"), "{}", done.failure_text());
    assert!(done.elapsed < Duration::from_secs(5), "{:?}", done.elapsed);
    let file = run.path().join("tasks").join(TASK).join("1").join("stdout");
    let len = std::fs::metadata(file).unwrap().len();
    assert_eq!(len, 10 * 1024);
    assert_eq!(done.result.stdout_bytes, 10 * 1024);
    assert_eq!(done.output(Stream::Stdout).len(), 10 * 1024);
    let capped: Vec<_> =
        done.events.iter().filter(|e| matches!(e, TaskEvent::OutputCapped { .. })).collect();
    assert_eq!(capped, [&TaskEvent::OutputCapped { stream: Stream::Stdout, limit_bytes: 10240 }]);
}

#[tokio::test]
async fn environment_is_clean_and_declared_env_is_visible() {
    // cargo runs tests with CARGO_MANIFEST_DIR set: it must not leak.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    let run = Run::new();
    let mut d = exec("env", &[]);
    d.task.env.insert("FOO".into(), "bar baz".into());
    let done = run.attempt(&d).await;
    assert_eq!(done.result.outcome, Outcome::Succeeded {});
    let stdout = done.output(Stream::Stdout);
    let env: BTreeMap<&str, &str> = stdout.lines().filter_map(|l| l.split_once('=')).collect();
    let ws = run.workspace();
    let ws = ws.to_str().unwrap();
    let tmp = run.path().join("tmp");
    let tmp = tmp.to_str().unwrap();
    let expect: BTreeMap<&str, &str> = [
        ("FOO", "bar baz"),
        ("HOME", ws),
        ("LANG", "C.UTF-8"),
        ("ORCHESTRA_ATTEMPT", "1"),
        ("ORCHESTRA_RUN_ID", "r1"),
        ("ORCHESTRA_TASK_ID", TASK),
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("TMPDIR", tmp),
        ("TRACEPARENT", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    ]
    .into_iter()
    .collect();
    assert_eq!(env, expect);
    assert!(Path::new(&tmp).is_dir());
}

#[tokio::test]
async fn cwd_is_the_workspace_and_it_is_kept_across_attempts() {
    let run = Run::new();
    let done = run.attempt(&sh("pwd; echo one > state")).await;
    assert_eq!(done.output(Stream::Stdout).trim_end(), run.workspace().to_str().unwrap());
    let mut second = sh("cat state");
    second.attempt = 2;
    let done = run.attempt(&second).await;
    assert_eq!(done.output(Stream::Stdout), "one\n");
    assert!(run.path().join("tasks").join(TASK).join("2").join("stdout").is_file());
}

#[tokio::test]
async fn stdin_is_empty() {
    let run = Run::new();
    let done = run.attempt(&sh("cat; echo end")).await;
    assert_eq!(done.result.outcome, Outcome::Succeeded {});
    assert_eq!(done.output(Stream::Stdout), "end\n");
}

#[tokio::test]
async fn dry_run_spawns_nothing() {
    let run = Run::new();
    let mut d = sh("touch canary");
    d.dry_run = true;
    let done = run.attempt(&d).await;
    assert_eq!(done.result.outcome, Outcome::DryRun {});
    assert_eq!(done.events.len(), 1);
    match &done.events[0] {
        TaskEvent::Started { pid, argv, .. } => {
            assert_eq!(*pid, None);
            assert!(argv[0].ends_with("/sh"), "{argv:?}");
            assert_eq!(argv[1..], ["-c", "touch canary"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(!run.workspace().join("canary").exists());
    assert!(!run.path().join("tasks").exists(), "no output files in a dry run");
}

#[tokio::test]
async fn cancellation_ends_the_group() {
    let run = Run::new();
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        trigger.cancel();
    });
    let done = run.attempt_with(&sh("sleep 30 & sleep 30; wait"), &cancel).await;
    assert_eq!(done.failure_kind(), Some(FailureKind::Cancelled));
    assert!(done.elapsed < Duration::from_secs(5), "{:?}", done.elapsed);
    assert_eq!(group_survivors(done.pid().unwrap() as i32).await, Vec::<i32>::new());
}

#[tokio::test]
async fn already_cancelled_attempt_spawns_nothing() {
    let run = Run::new();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let done = run.attempt_with(&sh("touch canary"), &cancel).await;
    assert_eq!(done.failure_kind(), Some(FailureKind::Cancelled));
    assert_eq!(done.pid(), None);
    assert!(!run.workspace().join("canary").exists());
}

#[tokio::test]
async fn artifacts_are_copied_with_their_sha256() {
    let run = Run::new();
    let mut d = sh("mkdir -p out; printf hello > out/a.txt; printf world > b.txt; \
                    printf x > out/skip.log; printf h > .hidden.txt");
    d.task.outputs = vec!["out/*.txt".into(), "b.txt".into(), "./b.txt".into()];
    let done = run.attempt(&d).await;
    assert_eq!(done.result.outcome, Outcome::Succeeded {}, "{:?}", done.result);
    let got: Vec<(&str, u64, &str)> = done
        .result
        .artifacts
        .iter()
        .map(|a| (a.path.as_str(), a.size, a.sha256.as_str()))
        .collect();
    let (b, a) = (sha256_hex(b"world"), sha256_hex(b"hello"));
    assert_eq!(got, [("b.txt", 5, b.as_str()), ("out/a.txt", 5, a.as_str())]);
    assert!(done.result.artifacts.iter().all(|a| a.task.as_str() == TASK));
    let store = run.path().join("artifacts").join(TASK);
    assert_eq!(std::fs::read(store.join("out/a.txt")).unwrap(), b"hello");
    assert_eq!(std::fs::read(store.join("b.txt")).unwrap(), b"world");
    assert!(!store.join("out/skip.log").exists());
    let leftovers: Vec<_> = std::fs::read_dir(store.join("out")).unwrap().flatten().collect();
    assert_eq!(leftovers.len(), 1, "no temporary files left: {leftovers:?}");
}

async fn check_bad_outputs(outputs: &[&str], script: &str, expect: &str) {
    let mut d = sh(script);
    d.task.outputs = outputs.iter().map(|o| (*o).to_owned()).collect();
    let run = Run::new();
    let done = run.attempt(&d).await;
    assert_eq!(done.failure_kind(), Some(FailureKind::Artifact), "{outputs:?}");
    let text = done.failure_text();
    assert!(text.contains(expect), "{outputs:?}: {text}");
    assert_eq!(done.result.exit_code, Some(0));
    assert!(!run.path().join("artifacts").join(TASK).join("link").exists());
}

#[tokio::test]
async fn bad_outputs_fail_as_artifact_errors() {
    let check = check_bad_outputs;
    check(&["../x"], "true", "contains `..`").await;
    check(&["a/../../x"], "true", "contains `..`").await;
    check(&["/etc/passwd"], "true", "is absolute").await;
    check(&["link"], "ln -s /etc/passwd link", "outside the workspace").await;
    check(&["*"], "ln -s /etc/passwd link", "outside the workspace").await;
    check(&["link"], "ln -s /nonexistent/x link", "outside the workspace").await;
    check(&["missing.txt"], "true", "`missing.txt` does not exist").await;
    check(&["*.none"], "true", "matched no file").await;
    check(&["dir"], "mkdir dir", "is a directory").await;
}

#[tokio::test]
async fn symlinks_inside_the_workspace_are_collected() {
    let run = Run::new();
    let mut d = sh("printf data > real.txt; ln -s real.txt alias.txt");
    d.task.outputs = vec!["alias.txt".into()];
    let done = run.attempt(&d).await;
    assert_eq!(done.result.outcome, Outcome::Succeeded {}, "{:?}", done.result);
    assert_eq!(done.result.artifacts[0].path, "alias.txt");
    assert_eq!(done.result.artifacts[0].sha256, sha256_hex(b"data"));
}

fn store_artifact(run: &Run, task: &str, path: &str, content: &[u8]) -> InputRef {
    let file = run.path().join("artifacts").join(task).join(path);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, content).unwrap();
    InputRef {
        task: TaskId::new_unchecked(task),
        path: path.to_owned(),
        size: content.len() as u64,
        sha256: sha256_hex(content),
    }
}

#[tokio::test]
async fn inputs_are_staged_and_verified() {
    let run = Run::new();
    let input = store_artifact(&run, "dep", "out/data.txt", b"payload");
    let mut d = sh("cat inputs/dep/out/data.txt");
    d.inputs = vec![input];
    let done = run.attempt(&d).await;
    assert_eq!(done.result.outcome, Outcome::Succeeded {}, "{:?}", done.result);
    assert_eq!(done.output(Stream::Stdout), "payload");
}

#[tokio::test]
async fn inputs_that_do_not_match_their_record_fail_the_attempt() {
    let run = Run::new();
    let mut input = store_artifact(&run, "dep", "data.txt", b"payload");
    input.sha256 = sha256_hex(b"something else");
    let mut d = sh("touch canary");
    d.inputs = vec![input];
    let done = run.attempt(&d).await;
    assert_eq!(done.failure_kind(), Some(FailureKind::Artifact));
    assert!(done.failure_text().contains("does not match its record"), "{}", done.failure_text());
    assert_eq!(done.pid(), None);
    assert!(!run.workspace().join("canary").exists());
    assert!(!run.workspace().join("inputs/dep/data.txt").exists());

    let mut input = store_artifact(&run, "dep", "data.txt", b"payload");
    input.size += 1;
    d.inputs = vec![input];
    assert_eq!(run.attempt(&d).await.failure_kind(), Some(FailureKind::Artifact));

    let mut missing = store_artifact(&run, "dep", "data.txt", b"payload");
    missing.path = "other.txt".into();
    d.inputs = vec![missing];
    let done = run.attempt(&d).await;
    assert!(done.failure_text().contains("not in the artifact store"), "{}", done.failure_text());

    let mut escape = store_artifact(&run, "dep", "data.txt", b"payload");
    escape.path = "../../etc/passwd".into();
    d.inputs = vec![escape];
    assert_eq!(run.attempt(&d).await.failure_kind(), Some(FailureKind::Artifact));
}

#[tokio::test]
async fn utf8_split_across_reads_is_reassembled() {
    let run = Run::new();
    // `€` is three bytes; print them with a pause in between so they arrive in separate reads.
    let done = run.attempt(&sh("printf '\\342'; sleep 0.05; printf '\\202\\254\\n'")).await;
    assert_eq!(done.output(Stream::Stdout), "€\n");
}

fn context<'a>(
    run_dir: &'a Path,
    ids: &'a (RunId, TraceId, SpanId),
    die_with_worker: bool,
) -> AttemptContext<'a> {
    AttemptContext {
        run_dir,
        run_id: &ids.0,
        trace_id: &ids.1,
        span_id: &ids.2,
        worker_id: "w1",
        die_with_worker,
        claude: &NO_CLAUDE,
        objects: None,
    }
}

fn ids() -> (RunId, TraceId, SpanId) {
    (RunId::new_unchecked("r1"), TraceId::generate(), SpanId::generate())
}

fn started_pid(events: &[TaskEvent]) -> Option<i32> {
    events.iter().find_map(|e| match e {
        TaskEvent::Started { pid, .. } => pid.map(|p| p as i32),
        _ => None,
    })
}

#[tokio::test]
async fn dropping_an_attempt_ends_its_group() {
    let run = Run::new();
    let ids = ids();
    let cx = context(run.path(), &ids, false);
    let mut events = Vec::new();
    let mut sink = |e: TaskEvent| events.push(e);
    let d = sh("sleep 30 & sleep 30; wait");
    let cancel = CancellationToken::new();
    let attempt = run_attempt(&cx, &d, &mut sink, &cancel);
    assert!(tokio::time::timeout(Duration::from_millis(300), attempt).await.is_err());
    let pgid = started_pid(&events).expect("spawned");
    assert_eq!(group_survivors(pgid).await, Vec::<i32>::new());
}

/// Runs an attempt on its own thread and lets the thread end while the attempt runs, without
/// dropping it (as if the process died); returns the leader's pid.
fn abandon_attempt(run_dir: PathBuf, die_with_worker: bool) -> i32 {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let ids = ids();
        let cx = context(&run_dir, &ids, die_with_worker);
        let (tx, rx) = std::sync::mpsc::channel();
        let mut sink = move |e: TaskEvent| {
            let _ = tx.send(e);
        };
        // The leader is `sleep` itself: the death signal reaches only the leader.
        let d = exec("sleep", &["30"]);
        let cancel = CancellationToken::new();
        let mut attempt = Box::pin(run_attempt(&cx, &d, &mut sink, &cancel));
        rt.block_on(async {
            assert!(tokio::time::timeout(Duration::from_millis(200), &mut attempt).await.is_err());
        });
        std::mem::forget(attempt);
        std::mem::forget(rt);
        let events: Vec<_> = rx.try_iter().collect();
        started_pid(&events).expect("spawned")
    })
    .join()
    .unwrap()
}

#[tokio::test]
async fn die_with_worker_kills_the_leader_when_the_spawning_thread_ends() {
    let run = Run::new();
    let pid = abandon_attempt(run.path().to_owned(), true);
    for _ in 0..100 {
        if !is_alive(pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let survived = is_alive(pid);
    let _ = nix::sys::signal::killpg(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    assert!(!survived, "leader {pid} outlived its spawning thread");

    // Without the option the leader lives on (and is cleaned up here).
    let pid = abandon_attempt(run.path().to_owned(), false);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(is_alive(pid), "leader {pid} died without die_with_worker");
    nix::sys::signal::killpg(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
}

#[tokio::test]
async fn both_spawn_paths_behave_the_same() {
    for die_with_worker in [false, true] {
        let run = Run { die_with_worker, ..Run::new() };
        let done = run.attempt(&sh("echo $PWD")).await;
        assert_eq!(done.result.outcome, Outcome::Succeeded {}, "{die_with_worker}");
        assert_eq!(done.output(Stream::Stdout).trim_end(), run.workspace().to_str().unwrap());

        let mut d = sh("sleep 30 & echo $! > pid; wait");
        d.task.timeout_ms = 200;
        let done = run.attempt(&d).await;
        assert_eq!(done.failure_kind(), Some(FailureKind::Timeout), "{die_with_worker}");
        assert_eq!(group_survivors(done.pid().unwrap() as i32).await, Vec::<i32>::new());
        assert!(!is_alive(read_pids(&run.workspace().join("pid"))[0]));

        let done = run.attempt(&exec("no-such-program-xyz", &[])).await;
        assert_eq!(done.failure_kind(), Some(FailureKind::Spawn), "{die_with_worker}");
    }
}

#[tokio::test]
async fn a_silent_stream_leaves_no_file() {
    let run = Run::new();
    let done = run.attempt(&sh("echo only-stderr >&2")).await;
    assert_eq!(done.result.outcome, Outcome::Succeeded {});
    let dir = run.path().join("tasks").join(TASK).join("1");
    assert!(!dir.join("stdout").exists());
    assert_eq!(std::fs::read_to_string(dir.join("stderr")).unwrap(), "only-stderr\n");
    let done = run.attempt(&exec("true", &[])).await;
    assert_eq!(done.result.outcome, Outcome::Succeeded {});
    assert_eq!((done.result.stdout_bytes, done.result.stderr_bytes), (0, 0));
}
