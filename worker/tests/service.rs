//! The worker service on a real in-process bus: dispatches in, task events out, acks, control.

use bytes::Bytes;
use orchestra_bus::{Bus, MemBus, QueueConfig, Subscription, WorkQueue};
use orchestra_proto::{
    Control, Ctx, Dispatch, Envelope, FailureKind, Outcome, RunId, TaskEvent, TaskId, TaskSpec,
    Timestamp, TraceId, codec, subjects,
};
use orchestra_worker::{WorkerConfig, WorkerError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const POOL: &str = "default";

struct Cluster {
    bus: Arc<MemBus>,
    queue: Arc<dyn WorkQueue>,
    run: RunId,
    trace: TraceId,
    events: Subscription,
    shutdown: CancellationToken,
    worker: JoinHandle<Result<(), WorkerError>>,
    _dir: tempfile::TempDir,
}

fn sh(task: &str, script: &str) -> Dispatch {
    let mut task = TaskSpec::exec(TaskId::new_unchecked(task), "sh", &["-c", script]);
    task.timeout_ms = 10_000;
    Dispatch::first(task)
}

impl Cluster {
    async fn start(slots: usize, heartbeat: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
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
        let run = RunId::new_unchecked("r1");
        let events = bus.subscribe(&subjects::task_events_all(&run)).await.unwrap();
        let shutdown = CancellationToken::new();
        let config = WorkerConfig {
            worker_id: "w1".into(),
            pool: POOL.into(),
            runs_dir: dir.path().to_owned(),
            slots,
            heartbeat,
        };
        let worker =
            tokio::spawn(orchestra_worker::run(dyn_bus, queue.clone(), config, shutdown.clone()));
        Self { bus, queue, run, trace: TraceId::generate(), events, shutdown, worker, _dir: dir }
    }

    async fn dispatch(&self, d: &Dispatch) {
        self.dispatch_at(d, Timestamp::now()).await;
    }

    async fn dispatch_at(&self, d: &Dispatch, sent_at: Timestamp) {
        let ctx = Ctx::run(self.run.clone(), self.trace.clone()).task(d.task.id.clone(), d.attempt);
        let env = ctx.envelope(sent_at, d.clone());
        let msg_id = subjects::dispatch_msg_id(&self.run, &d.task.id, d.attempt);
        let ack = self
            .queue
            .publish(&subjects::task_queue(POOL), &msg_id, Bytes::from(codec::encode(&env)))
            .await
            .unwrap();
        assert!(!ack.duplicate);
    }

    /// Task events until `finished` attempts have finished (bounded by 10 s).
    async fn events_until(&mut self, finished: usize) -> Vec<Envelope<TaskEvent>> {
        let mut got = Vec::new();
        let mut done = 0;
        while done < finished {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.events.next())
                .await
                .unwrap_or_else(|_| panic!("timed out; events so far: {got:#?}"))
                .unwrap();
            let env: Envelope<TaskEvent> = codec::decode(&msg.payload).unwrap();
            assert_eq!(
                msg.subject,
                subjects::task_events(&self.run, env.task_id.as_ref().unwrap()),
                "published on the task's subject"
            );
            done += usize::from(matches!(env.body, TaskEvent::Finished(_)));
            got.push(env);
        }
        got
    }

    async fn wait_started(&mut self) {
        let msg = tokio::time::timeout(Duration::from_secs(10), self.events.next())
            .await
            .unwrap()
            .unwrap();
        let env: Envelope<TaskEvent> = codec::decode(&msg.payload).unwrap();
        assert!(matches!(env.body, TaskEvent::Started { pid: Some(_), .. }), "{env:?}");
    }

    async fn pending_drains(&self) -> u64 {
        for _ in 0..200 {
            if self.queue.pending().await.unwrap() == 0 {
                return 0;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.queue.pending().await.unwrap()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(10), self.worker).await;
        result.expect("worker stops").unwrap().unwrap();
    }
}

fn finished(env: &Envelope<TaskEvent>) -> Option<&orchestra_proto::AttemptResult> {
    match &env.body {
        TaskEvent::Finished(r) => Some(r),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_dispatches_are_run_reported_and_acked() {
    let mut c = Cluster::start(2, Duration::from_secs(30)).await;
    for (task, script) in [("a", "echo a"), ("b", "exit 4"), ("c", "echo c >&2")] {
        c.dispatch(&sh(task, script)).await;
    }
    let events = c.events_until(3).await;

    let mut by_task: HashMap<String, Vec<&Envelope<TaskEvent>>> = HashMap::new();
    for env in &events {
        assert_eq!(env.run_id, c.run);
        assert_eq!(env.trace_id, c.trace, "one run is one trace");
        assert_eq!(env.attempt, Some(1));
        assert!(env.parent_id.is_some(), "events carry the attempt's span");
        by_task.entry(env.task_id.clone().unwrap().to_string()).or_default().push(env);
    }
    assert_eq!(by_task.len(), 3);
    for (task, envs) in &by_task {
        assert!(matches!(envs[0].body, TaskEvent::Started { pid: Some(_), .. }), "{task}");
        let result = finished(envs.last().unwrap()).expect("Finished comes last");
        assert_eq!(result.worker_id, "w1");
        let spans: Vec<_> = envs.iter().map(|e| e.parent_id.clone()).collect();
        assert!(spans.windows(2).all(|w| w[0] == w[1]), "one span per attempt: {task}");
        match task.as_str() {
            "a" | "c" => assert_eq!(result.outcome, Outcome::Succeeded {}, "{task}"),
            _ => assert_eq!(result.exit_code, Some(4)),
        }
    }
    let a_output: Vec<_> = by_task["a"]
        .iter()
        .filter_map(|e| match &e.body {
            TaskEvent::Output { chunk, .. } => Some(chunk.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(a_output, ["a\n"]);
    assert_eq!(c.pending_drains().await, 0);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_bound_the_attempts_in_flight() {
    let mut c = Cluster::start(2, Duration::from_secs(30)).await;
    let spans = tempfile::tempdir().unwrap();
    for i in 0..5 {
        // Each process records when it ran, in nanoseconds.
        let mut d = sh(
            &format!("t{i}"),
            "a=$(date +%s%N); sleep 0.1; echo $a $(date +%s%N) > \"$OUT/$ORCHESTRA_TASK_ID\"",
        );
        d.task.env.insert("OUT".into(), spans.path().to_str().unwrap().into());
        c.dispatch(&d).await;
    }
    let events = c.events_until(5).await;
    assert!(events.iter().filter_map(finished).all(|r| r.outcome == Outcome::Succeeded {}));
    let mut edges = Vec::new();
    for i in 0..5 {
        let text = std::fs::read_to_string(spans.path().join(format!("t{i}"))).unwrap();
        let (a, b) = text.trim().split_once(' ').unwrap();
        edges.push((a.parse::<u128>().unwrap(), 1));
        edges.push((b.parse::<u128>().unwrap(), -1));
    }
    edges.sort();
    let (mut running, mut most) = (0, 0);
    for (_, step) in edges {
        running += step;
        most = most.max(running);
    }
    assert_eq!(most, 2, "two slots, five tasks");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_sent_while_an_attempt_runs() {
    let mut c = Cluster::start(1, Duration::from_millis(50)).await;
    c.dispatch(&sh("slow", "sleep 0.4")).await;
    let events = c.events_until(1).await;
    let beats = events.iter().filter(|e| matches!(e.body, TaskEvent::Heartbeat {})).count();
    assert!((3..=40).contains(&beats), "{beats} heartbeats in 400 ms at 50 ms");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_that_does_not_decode_is_terminated() {
    let mut c = Cluster::start(1, Duration::from_secs(30)).await;
    c.queue
        .publish(&subjects::task_queue(POOL), "junk", Bytes::from_static(b"{not json"))
        .await
        .unwrap();
    c.dispatch(&sh("after", "true")).await;
    let events = c.events_until(1).await;
    assert!(events.iter().all(|e| e.task_id.as_ref().unwrap().as_str() == "after"));
    assert_eq!(c.pending_drains().await, 0, "the junk was terminated, not redelivered");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_control_ends_the_runs_attempts() {
    let mut c = Cluster::start(2, Duration::from_secs(30)).await;
    let before_cancel = Timestamp::now();
    c.dispatch(&sh("long", "sleep 30")).await;
    c.wait_started().await;
    let ctl = Ctx::run(c.run.clone(), c.trace.clone())
        .envelope(Timestamp::now(), Control::Cancel { reason: "user pressed ctrl-c".into() });
    c.bus.publish(&subjects::run_control(&c.run), Bytes::from(codec::encode(&ctl))).await.unwrap();
    let events = c.events_until(1).await;
    let result = finished(events.last().unwrap()).unwrap();
    match &result.outcome {
        Outcome::Failed { failure } => {
            assert_eq!(failure.kind, FailureKind::Cancelled);
            assert_eq!(failure.message, "run cancelled: user pressed ctrl-c");
        }
        other => panic!("{other:?}"),
    }
    assert!(result.duration_ms() < 5_000);

    // A dispatch sent before the cancel and still queued is not spawned...
    c.dispatch_at(&sh("late", "sleep 30"), before_cancel).await;
    let events = c.events_until(1).await;
    assert!(matches!(events[0].body, TaskEvent::Started { pid: None, .. }), "{events:?}");
    let failure = match &finished(events.last().unwrap()).unwrap().outcome {
        Outcome::Failed { failure } => failure.kind,
        other => panic!("{other:?}"),
    };
    assert_eq!(failure, FailureKind::Cancelled);

    // ...while one sent after it (the run was resumed) runs.
    tokio::time::sleep(Duration::from_millis(5)).await;
    c.dispatch(&sh("resumed", "echo again")).await;
    let events = c.events_until(1).await;
    assert_eq!(finished(events.last().unwrap()).unwrap().outcome, Outcome::Succeeded {});
    assert_eq!(c.pending_drains().await, 0);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reports_running_attempts_as_cancelled() {
    let mut c = Cluster::start(2, Duration::from_secs(30)).await;
    c.dispatch(&sh("long", "sleep 30")).await;
    c.wait_started().await;
    c.shutdown.cancel();
    let events = c.events_until(1).await;
    let result = finished(events.last().unwrap()).unwrap();
    match &result.outcome {
        Outcome::Failed { failure } => {
            assert_eq!(failure.kind, FailureKind::Cancelled);
            assert_eq!(failure.message, "worker `w1` is shutting down");
        }
        other => panic!("{other:?}"),
    }
    c.stop().await;
}
