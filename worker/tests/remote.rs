//! Remote mode on one shared in-process bus: each worker has its own run directory, results
//! travel through the object store, and the test plays L1 with a third directory.

use bytes::Bytes;
use orchestra_bus::{Bus, MemBus, QueueConfig, Subscription, WorkQueue};
use orchestra_proto::{
    ArtifactRecord, AttemptResult, Ctx, Dispatch, Envelope, FailureKind, InputRef, Outcome, RunId,
    Stream, TaskEvent, TaskId, TaskSpec, Timestamp, TraceId, codec, layout, subjects,
};
use orchestra_worker::{FetchReport, RemoteError, WorkerConfig, WorkerError, WorkerOptions};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const POOL: &str = "default";

fn run_id() -> RunId {
    RunId::new_unchecked("r1")
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn sh(task: &str, script: &str, outputs: &[&str]) -> Dispatch {
    let mut task = TaskSpec::exec(TaskId::new_unchecked(task), "sh", &["-c", script]);
    task.timeout_ms = 30_000;
    task.outputs = outputs.iter().map(|o| o.to_string()).collect();
    Dispatch::first(task)
}

fn remote() -> WorkerOptions {
    WorkerOptions { remote: true, ..Default::default() }
}

fn inputs(records: &[ArtifactRecord]) -> Vec<InputRef> {
    records
        .iter()
        .map(|r| InputRef {
            task: r.task.clone(),
            path: r.path.clone(),
            size: r.size,
            sha256: r.sha256.clone(),
        })
        .collect()
}

/// The shared bus and queue, and the test's view of the run's task events.
struct Cluster {
    bus: Arc<MemBus>,
    queue: Arc<dyn WorkQueue>,
    trace: TraceId,
    events: Subscription,
}

/// One worker with its own run directory.
struct Worker {
    dir: tempfile::TempDir,
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), WorkerError>>,
}

impl Worker {
    fn run_dir(&self) -> PathBuf {
        self.dir.path().join(run_id().as_str())
    }

    /// Shuts the worker down; it must stop within 10 s.
    async fn stop(self) -> tempfile::TempDir {
        self.shutdown.cancel();
        let stopped = tokio::time::timeout(Duration::from_secs(10), self.handle).await;
        stopped.expect("worker stops").unwrap().unwrap();
        self.dir
    }
}

impl Cluster {
    async fn new() -> Self {
        let bus = MemBus::new();
        let dyn_bus: Arc<dyn Bus> = bus.clone();
        let queue = dyn_bus
            .work_queue(QueueConfig::new(
                subjects::TASK_STREAM,
                vec![subjects::TASK_QUEUE_ALL.to_owned()],
                "workers",
            ))
            .await
            .unwrap();
        let events = bus.subscribe(&subjects::task_events_all(&run_id())).await.unwrap();
        Self { bus, queue, trace: TraceId::generate(), events }
    }

    fn worker(&self, id: &str, slots: usize, options: WorkerOptions) -> Worker {
        let dir = tempfile::tempdir().unwrap();
        let shutdown = CancellationToken::new();
        let config = WorkerConfig {
            worker_id: id.into(),
            pool: POOL.into(),
            runs_dir: dir.path().to_owned(),
            slots,
            heartbeat: Duration::from_secs(30),
        };
        let bus: Arc<dyn Bus> = self.bus.clone();
        let handle = tokio::spawn(orchestra_worker::run_with_options(
            bus,
            self.queue.clone(),
            config,
            options,
            shutdown.clone(),
        ));
        Worker { dir, shutdown, handle }
    }

    async fn dispatch(&self, d: &Dispatch) {
        let run = run_id();
        let ctx = Ctx::run(run.clone(), self.trace.clone()).task(d.task.id.clone(), d.attempt);
        let env = ctx.envelope(Timestamp::now(), d.clone());
        let msg_id = subjects::dispatch_msg_id(&run, &d.task.id, d.attempt);
        let payload = Bytes::from(codec::encode(&env));
        let ack = self.queue.publish(&subjects::task_queue(POOL), &msg_id, payload).await.unwrap();
        assert!(!ack.duplicate);
    }

    async fn next_event(&mut self) -> Envelope<TaskEvent> {
        let msg = tokio::time::timeout(Duration::from_secs(15), self.events.next())
            .await
            .expect("an event within 15 s")
            .unwrap();
        codec::decode(&msg.payload).unwrap()
    }

    /// The result of the next attempt to finish.
    async fn finished(&mut self) -> (TaskId, AttemptResult) {
        for _ in 0..10_000 {
            let env = self.next_event().await;
            if let TaskEvent::Finished(result) = env.body {
                return (env.task_id.unwrap(), *result);
            }
        }
        panic!("no Finished event");
    }

    /// Waits for `n` spawned attempts to start.
    async fn started(&mut self, n: usize) {
        let mut seen = 0;
        while seen < n {
            let env = self.next_event().await;
            match env.body {
                TaskEvent::Started { pid: Some(_), .. } => seen += 1,
                TaskEvent::Finished(r) => panic!("finished before {n} started: {r:?}"),
                _ => {}
            }
        }
    }

    async fn object(&self, bucket: &str, key: &str) -> Option<Bytes> {
        self.bus.object_get(bucket, key).await.unwrap()
    }
}

fn succeeded(result: &AttemptResult) {
    assert_eq!(result.outcome, Outcome::Succeeded {}, "{result:#?}");
}

fn failure_of(result: &AttemptResult) -> (FailureKind, String) {
    match &result.outcome {
        Outcome::Failed { failure } => (failure.kind, failure.message.clone()),
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn read(dir: &Path, rel: impl AsRef<Path>) -> Vec<u8> {
    let path = dir.join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_runs_on_two_workers_and_comes_home_byte_for_byte() {
    let mut c = Cluster::new().await;
    let run = run_id();
    let (a, b) = (TaskId::new_unchecked("a"), TaskId::new_unchecked("b"));

    // Task `a` on w1.
    let w1 = c.worker("w1", 1, remote());
    let script = "mkdir -p d && printf 'hello\\n' > d/out.txt && printf 'xyz' > y.bin \
                  && echo made && echo warned >&2";
    c.dispatch(&sh("a", script, &["d/out.txt", "y.bin"])).await;
    let (task, a_result) = c.finished().await;
    assert_eq!(task, a);
    succeeded(&a_result);
    assert_eq!(a_result.artifacts.len(), 2);
    let w1_run = w1.run_dir();
    for record in &a_result.artifacts {
        let local = read(&w1_run, layout::artifact(&a, &record.path));
        assert_eq!(sha256_hex(&local), record.sha256);
        let stored = c.object(subjects::ARTIFACTS_BUCKET, &record.sha256).await;
        assert_eq!(stored.as_deref(), Some(&local[..]), "{} is in the store", record.path);
    }
    for (stream, text) in [(Stream::Stdout, "made\n"), (Stream::Stderr, "warned\n")] {
        let key = subjects::log_object(&run, &a, 1, stream);
        assert_eq!(key, format!("r1/a/1/{}", stream.as_str()));
        let stored = c.object(subjects::LOGS_BUCKET, &key).await;
        assert_eq!(stored.as_deref(), Some(text.as_bytes()), "{key}");
    }
    let w1_dir = w1.stop().await;

    // Task `b` on w2, whose run directory has never seen `a`'s artifacts.
    let w2 = c.worker("w2", 1, remote());
    let mut d = sh("b", "cat inputs/a/d/out.txt inputs/a/y.bin > copy.txt", &["copy.txt"]);
    d.inputs = inputs(&a_result.artifacts);
    c.dispatch(&d).await;
    let (task, b_result) = c.finished().await;
    assert_eq!(task, b);
    succeeded(&b_result);
    let w2_run = w2.run_dir();
    assert_eq!(read(&w2_run, layout::artifact(&b, "copy.txt")), b"hello\nxyz");
    assert_eq!(read(&w2_run, layout::artifact(&a, "y.bin")), b"xyz", "fetched into w2's run dir");
    // `b` wrote no output: no log objects.
    assert_eq!(c.object(subjects::LOGS_BUCKET, "r1/b/1/stdout").await, None);
    let w2_dir = w2.stop().await;

    // L1 brings everything home.
    let l1 = tempfile::tempdir().unwrap();
    let attempts = [(a.clone(), 1), (b.clone(), 1)];
    let records: Vec<_> = a_result.artifacts.iter().chain(&b_result.artifacts).cloned().collect();
    let report = orchestra_worker::fetch_results(&*c.bus, l1.path(), &run, &attempts, &records)
        .await
        .unwrap();
    let logs = |task: &TaskId, stream| layout::attempt_output(task, 1, stream);
    let mut expect_written = vec![
        logs(&a, Stream::Stdout),
        logs(&a, Stream::Stderr),
        layout::artifact(&a, "d/out.txt"),
        layout::artifact(&a, "y.bin"),
        layout::artifact(&b, "copy.txt"),
    ];
    expect_written.sort();
    let mut written = report.written.clone();
    written.sort();
    assert_eq!(written, expect_written);
    assert_eq!(report.absent_logs, [logs(&b, Stream::Stdout), logs(&b, Stream::Stderr)]);
    assert!(report.present.is_empty());
    assert_eq!(report.bytes, 5 + 7 + 6 + 3 + 9);
    for rel in &expect_written[..] {
        let worker_run = if rel.starts_with("artifacts/b") { &w2_run } else { &w1_run };
        assert_eq!(read(l1.path(), rel), read(worker_run, rel), "{}", rel.display());
    }

    // A second fetch finds everything in place.
    let again = orchestra_worker::fetch_results(&*c.bus, l1.path(), &run, &attempts, &records)
        .await
        .unwrap();
    assert_eq!(again.written, Vec::<PathBuf>::new());
    assert_eq!(again.present.len(), 5);
    assert_eq!(again.bytes, 0);
    drop((w1_dir, w2_dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_missing_from_the_store_fails_the_attempt_naming_it() {
    let mut c = Cluster::new().await;
    let w = c.worker("w1", 1, remote());
    let mut d = sh("b", "cat inputs/a/out.txt", &[]);
    let sha256 = sha256_hex(b"never uploaded");
    d.inputs = vec![InputRef {
        task: TaskId::new_unchecked("a"),
        path: "out.txt".into(),
        size: 14,
        sha256: sha256.clone(),
    }];
    c.dispatch(&d).await;
    let (_, result) = c.finished().await;
    let (kind, message) = failure_of(&result);
    assert_eq!(kind, FailureKind::Artifact);
    assert_eq!(
        message,
        format!(
            "artifact `out.txt` of task `a` (sha256 {sha256}) is not in object store \
             `orchestra-artifacts`"
        )
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_input_is_refused() {
    let mut c = Cluster::new().await;
    let sha256 = sha256_hex(b"good");
    c.bus
        .object_put(subjects::ARTIFACTS_BUCKET, &sha256, Bytes::from_static(b"evil"))
        .await
        .unwrap();
    let w = c.worker("w1", 1, remote());
    let mut d = sh("b", "cat inputs/a/out.txt", &[]);
    d.inputs = vec![InputRef {
        task: TaskId::new_unchecked("a"),
        path: "out.txt".into(),
        size: 4,
        sha256,
    }];
    c.dispatch(&d).await;
    let (_, result) = c.finished().await;
    let (kind, message) = failure_of(&result);
    assert_eq!(kind, FailureKind::Artifact);
    assert!(message.starts_with("artifact `out.txt` of task `a` does not match"), "{message}");
    assert!(!w.run_dir().join(layout::artifact(&TaskId::new_unchecked("a"), "out.txt")).exists());
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_over_the_limit_fails_the_attempt() {
    let mut c = Cluster::new().await;
    let w = c.worker("w1", 1, WorkerOptions { max_object_bytes: 4, ..remote() });
    c.dispatch(&sh("a", "printf 0123456789 > big.txt", &["big.txt"])).await;
    let (_, result) = c.finished().await;
    let (kind, message) = failure_of(&result);
    assert_eq!(kind, FailureKind::Artifact);
    assert_eq!(
        message,
        "artifact `big.txt` of task `a` is 10 bytes, more than the 4 bytes a remote worker moves \
         through the object store"
    );
    assert!(result.artifacts.is_empty(), "no record of an artifact nobody can fetch");
    assert_eq!(c.object(subjects::ARTIFACTS_BUCKET, &sha256_hex(b"0123456789")).await, None);
    w.stop().await;
}

#[tokio::test]
async fn fetch_results_refuses_a_tampered_object_and_names_it() {
    let bus = MemBus::new();
    let run = run_id();
    let a = TaskId::new_unchecked("a");
    let good = b"the real bytes";
    let record = ArtifactRecord {
        task: a.clone(),
        path: "out.txt".into(),
        size: 14,
        sha256: sha256_hex(good),
    };
    bus.object_put(
        subjects::ARTIFACTS_BUCKET,
        &record.sha256,
        Bytes::from_static(b"the fake bytes"),
    )
    .await
    .unwrap();
    let l1 = tempfile::tempdir().unwrap();
    let err =
        orchestra_worker::fetch_results(&*bus, l1.path(), &run, &[], std::slice::from_ref(&record))
            .await
            .unwrap_err();
    assert!(matches!(err, RemoteError::Mismatch { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "artifact `out.txt` of task `a` does not match its record: expected 14 bytes with \
             sha256 {}, got 14 bytes with sha256 {}",
            record.sha256,
            sha256_hex(b"the fake bytes")
        )
    );
    assert!(!l1.path().join(layout::artifact(&a, "out.txt")).exists(), "nothing unverified lands");

    // Missing entirely: named with its hash.
    let bus = MemBus::new();
    let err =
        orchestra_worker::fetch_results(&*bus, l1.path(), &run, &[], &[record]).await.unwrap_err();
    assert!(matches!(err, RemoteError::NotInStore { .. }), "{err:?}");

    // A local file with the wrong content is replaced by the verified one.
    let bus = MemBus::new();
    let record = ArtifactRecord {
        task: a.clone(),
        path: "out.txt".into(),
        size: 14,
        sha256: sha256_hex(good),
    };
    bus.object_put(subjects::ARTIFACTS_BUCKET, &record.sha256, Bytes::from_static(good))
        .await
        .unwrap();
    let dest = l1.path().join(layout::artifact(&a, "out.txt"));
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::write(&dest, b"stale").unwrap();
    let report =
        orchestra_worker::fetch_results(&*bus, l1.path(), &run, &[], &[record]).await.unwrap();
    assert_eq!(
        report,
        FetchReport {
            written: vec![layout::artifact(&a, "out.txt")],
            bytes: 14,
            ..Default::default()
        }
    );
    assert_eq!(std::fs::read(&dest).unwrap(), good);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_hands_running_attempts_back_at_once() {
    let mut c = Cluster::new().await;
    let w = c.worker("w1", 1, remote());
    let d = sh("long", "sleep 30", &[]);
    c.dispatch(&d).await;
    c.started(1).await;
    let started = std::time::Instant::now();
    w.stop().await;
    assert!(started.elapsed() < Duration::from_secs(5), "no waiting for the attempt");

    // No result was published: the delivery came back instead, at once.
    while let Some(msg) = c.events.try_next() {
        let env: Envelope<TaskEvent> = codec::decode(&msg.payload).unwrap();
        assert!(!matches!(env.body, TaskEvent::Finished(_)), "{env:?}");
    }
    let again = c.queue.next(Duration::from_secs(2)).await.unwrap().expect("redelivered");
    assert_eq!(again.info.delivered, 2);
    let env: Envelope<Dispatch> = codec::decode(&again.payload).unwrap();
    assert_eq!(env.body, d);
    again.acker.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_grace_lets_short_attempts_finish_and_hands_back_the_rest() {
    let mut c = Cluster::new().await;
    let options = WorkerOptions { drain_grace: Duration::from_millis(1500), ..remote() };
    let w = c.worker("w1", 2, options);
    c.dispatch(&sh("short", "sleep 0.3; echo done", &[])).await;
    c.dispatch(&sh("long", "sleep 30", &[])).await;
    c.started(2).await;
    w.shutdown.cancel();

    let (task, result) = c.finished().await;
    assert_eq!(task.as_str(), "short");
    succeeded(&result);
    let stdout = c.object(subjects::LOGS_BUCKET, "r1/short/1/stdout").await;
    assert_eq!(stdout.as_deref(), Some(&b"done\n"[..]));

    let started = std::time::Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(10), w.handle).await;
    stopped.expect("worker stops").unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    while let Some(msg) = c.events.try_next() {
        let env: Envelope<TaskEvent> = codec::decode(&msg.payload).unwrap();
        assert!(!matches!(env.body, TaskEvent::Finished(_)), "{env:?}");
    }
    let again = c.queue.next(Duration::from_secs(2)).await.unwrap().expect("redelivered");
    assert_eq!(again.info.delivered, 2);
    let env: Envelope<Dispatch> = codec::decode(&again.payload).unwrap();
    assert_eq!(env.body.task.id.as_str(), "long");
    again.acker.ack().await.unwrap();
    assert_eq!(c.queue.pending().await.unwrap(), 0, "the short one was acked");
}
