//! Per-attempt overhead: 1000 `/bin/true` attempts at concurrency 2, against `xargs -P2`.
//! Ignored by default (timing-sensitive); run on a quiet machine with `cargo test -p
//! orchestra-worker --release --test throughput -- --ignored --nocapture --test-threads=1`.
//! Directory creation dominates the worker's own cost on some filesystems (ext4 without a
//! journal scans recently deleted inodes), so results depend on recent deletions.
#![allow(clippy::disallowed_methods)] // the baseline (xargs) is spawned directly

use bytes::Bytes;
use orchestra_bus::{Bus, MemBus, QueueConfig};
use orchestra_proto::{
    Ctx, Dispatch, Envelope, Outcome, RunId, SpanId, TaskEvent, TaskId, TaskSpec, Timestamp,
    TraceId, codec, subjects,
};
use orchestra_worker::WorkerConfig;
use orchestra_worker::{AttemptContext, ClaudeToolConfig, run_attempt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const N: usize = 1000;

fn dispatch(i: usize) -> Dispatch {
    Dispatch::first(TaskSpec::exec(TaskId::new_unchecked(format!("t{i}")), "/bin/true", &[]))
}

fn xargs() -> Duration {
    let start = Instant::now();
    let mut child = std::process::Command::new("sh")
        .args(["-c", &format!("seq {N} | xargs -n1 -P2 /bin/true")])
        .spawn()
        .unwrap();
    assert!(child.wait().unwrap().success());
    start.elapsed()
}

async fn worker() -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let dir = Arc::new(dir.path().to_owned());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut lanes = Vec::new();
    for _ in 0..2 {
        let (dir, next) = (dir.clone(), next.clone());
        lanes.push(tokio::spawn(async move {
            let (run_id, trace_id) = (RunId::new_unchecked("r"), TraceId::generate());
            let claude = ClaudeToolConfig::default();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= N {
                    return;
                }
                let span_id = SpanId::generate();
                let cx = AttemptContext {
                    run_dir: &dir,
                    run_id: &run_id,
                    trace_id: &trace_id,
                    span_id: &span_id,
                    worker_id: "w",
                    die_with_worker: false,
                    claude: &claude,
                    objects: None,
                };
                let mut events = Vec::new();
                let mut sink = |e: TaskEvent| events.push(e);
                let r = run_attempt(&cx, &dispatch(i), &mut sink, &CancellationToken::new()).await;
                assert_eq!(r.outcome, Outcome::Succeeded {});
            }
        }));
    }
    for lane in lanes {
        lane.await.unwrap();
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "timing benchmark"]
async fn thousand_true_attempts_keep_up_with_xargs() {
    let base = xargs();
    let ours = worker().await;
    let ratio = ours.as_secs_f64() / base.as_secs_f64();
    println!("xargs -P2: {base:?}, worker: {ours:?}, ratio {ratio:.2}");
    assert!(ratio < 1.3, "worker is {ratio:.2}x xargs");
}

/// The same through the service: work queue in, task events out, acks.
async fn service() -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let bus: Arc<dyn Bus> = MemBus::new();
    let queue = bus
        .work_queue(QueueConfig::new(
            subjects::TASK_STREAM,
            vec![subjects::TASK_QUEUE_ALL.to_owned()],
            "workers",
        ))
        .await
        .unwrap();
    let run = RunId::new_unchecked("r");
    let mut events = bus.subscribe(&subjects::task_events_all(&run)).await.unwrap();
    let ctx = Ctx::run(run.clone(), TraceId::generate());
    let start = Instant::now();
    for i in 0..N {
        let d = dispatch(i);
        let env = ctx.task(d.task.id.clone(), 1).envelope(Timestamp::now(), d);
        let id = subjects::dispatch_msg_id(&run, &env.body.task.id, 1);
        queue
            .publish(&subjects::task_queue("default"), &id, Bytes::from(codec::encode(&env)))
            .await
            .unwrap();
    }
    let shutdown = CancellationToken::new();
    let config = WorkerConfig {
        worker_id: "w".into(),
        pool: "default".into(),
        runs_dir: dir.path().to_owned(),
        slots: 2,
        heartbeat: Duration::from_secs(30),
    };
    let worker =
        tokio::spawn(orchestra_worker::run(bus.clone(), queue.clone(), config, shutdown.clone()));
    let mut finished = 0;
    while finished < N {
        let msg =
            tokio::time::timeout(Duration::from_secs(30), events.next()).await.unwrap().unwrap();
        let env: Envelope<TaskEvent> = codec::decode(&msg.payload).unwrap();
        if let TaskEvent::Finished(r) = env.body {
            assert_eq!(r.outcome, Outcome::Succeeded {});
            finished += 1;
        }
    }
    let elapsed = start.elapsed();
    shutdown.cancel();
    worker.await.unwrap().unwrap();
    elapsed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "timing benchmark"]
async fn thousand_true_dispatches_keep_up_with_xargs() {
    let base = xargs();
    let ours = service().await;
    let ratio = ours.as_secs_f64() / base.as_secs_f64();
    println!("xargs -P2: {base:?}, service: {ours:?}, ratio {ratio:.2}");
    assert!(ratio < 1.3, "service is {ratio:.2}x xargs");
}
