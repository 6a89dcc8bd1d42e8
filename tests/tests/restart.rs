//! A long-lived coordinator that stops mid-run and starts again on the same store resumes
//! every run that was running, without re-running what succeeded; L1 can ask it for a run's
//! stored state.

use bytes::Bytes;
use orchestra::local::queue_config;
use orchestra_bus::{Bus, MemBus};
use orchestra_coordinator::service::{Coordinator, CoordinatorConfig};
use orchestra_coordinator::store::Store;
use orchestra_proto::plan::{Plan, RunOptions};
use orchestra_proto::{
    Ctx, RunId, RunReply, RunRequest, RunStatus, TaskId, TaskSpec, TaskStatus, Timestamp, TraceId,
    codec, subjects,
};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn options() -> RunOptions {
    RunOptions {
        max_parallel: 2,
        pool: "default".into(),
        dry_run: false,
        output_cap_bytes: 1 << 20,
        kill_grace_ms: 500,
        max_tasks: 100,
        max_llm_calls: 4,
        max_cost_usd: None,
    }
}

async fn request(bus: &Arc<dyn Bus>, ctx: &Ctx, req: RunRequest) -> RunReply {
    let bytes = Bytes::from(codec::encode(&ctx.envelope(Timestamp::now(), req)));
    let reply = bus.request(subjects::RUN_SUBMIT, bytes, Duration::from_secs(10)).await.unwrap();
    codec::decode::<RunReply>(&reply).unwrap().body
}

/// A coordinator (and, with `runs_dir`, a worker) on a fresh in-process bus over `state`.
async fn start(
    state: &Path,
    runs_dir: Option<&Path>,
) -> (Arc<dyn Bus>, CancellationToken, Vec<tokio::task::JoinHandle<()>>) {
    let bus: Arc<dyn Bus> = MemBus::new();
    let queue = bus.work_queue(queue_config("default")).await.unwrap();
    let store = Store::open(state).unwrap();
    let shutdown = CancellationToken::new();
    let config = CoordinatorConfig { resume_running: true, ..CoordinatorConfig::default() };
    let coordinator = Coordinator::new(bus.clone(), queue.clone(), store, config);
    let mut handles = vec![coordinator.start(shutdown.clone()).await.unwrap()];
    if let Some(dir) = runs_dir {
        let config = orchestra_worker::service::WorkerConfig {
            worker_id: "w-after-restart".into(),
            pool: "default".into(),
            runs_dir: dir.to_owned(),
            slots: 2,
            heartbeat: Duration::from_secs(5),
        };
        let (b, token) = (bus.clone(), shutdown.clone());
        handles.push(tokio::spawn(async move {
            orchestra_worker::service::run(b, queue, config, token).await.unwrap();
        }));
    }
    (bus, shutdown, handles)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_coordinator_resumes_running_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let run_id = RunId::generate(Timestamp::now());
    std::fs::create_dir_all(tmp.path().join(run_id.as_str())).unwrap();
    let ctx = Ctx::run(run_id.clone(), TraceId::generate());
    let plan = Plan {
        name: "chain".into(),
        goal: None,
        tasks: vec![
            TaskSpec::exec(TaskId::new_unchecked("a"), "true", &[]),
            TaskSpec {
                depends_on: vec![TaskId::new_unchecked("a")],
                ..TaskSpec::exec(TaskId::new_unchecked("b"), "true", &[])
            },
        ],
    };

    // First life: no worker, so the run is accepted, `a` dispatched, and nothing finishes.
    {
        let (bus, shutdown, handles) = start(&state, None).await;
        let req = RunRequest::Start { plan, options: options(), plan_only: false, planning: None };
        assert!(matches!(request(&bus, &ctx, req).await, RunReply::Accepted { .. }));
        let RunReply::State { run, tasks } = request(&bus, &ctx, RunRequest::State {}).await else {
            panic!("no state")
        };
        assert_eq!(run.status, RunStatus::Running);
        assert_eq!(tasks[0].status, TaskStatus::Dispatched);
        shutdown.cancel();
        for h in handles {
            h.await.unwrap();
        }
    }

    // Second life: the coordinator resumes the run by itself; a worker finishes it.
    let (bus, shutdown, handles) = start(&state, Some(tmp.path())).await;
    let mut events = bus.subscribe(&subjects::run_events(&run_id)).await.unwrap();
    // Resume may already have finished the run before we subscribed: ask for the state.
    let finished = loop {
        let RunReply::State { run, tasks } = request(&bus, &ctx, RunRequest::State {}).await else {
            panic!("no state")
        };
        if run.status != RunStatus::Running {
            break (run, tasks);
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), events.next()).await;
    };
    let (run, tasks) = finished;
    assert_eq!(run.status, RunStatus::Succeeded);
    assert!(tasks.iter().all(|t| t.status == TaskStatus::Succeeded), "{tasks:?}");
    let a = &tasks[0];
    assert_eq!(a.attempts.len(), 2, "the lost attempt 1 is fenced; attempt 2 ran");
    assert_eq!(a.attempts[1].worker_id.as_deref(), Some("w-after-restart"));
    // A second resume of a run that is no longer running changes nothing.
    let again = request(&bus, &ctx, RunRequest::Resume {}).await;
    assert!(matches!(again, RunReply::Resumed { status: RunStatus::Succeeded, .. }), "{again:?}");
    // An unknown run has no state.
    let other = Ctx::run(RunId::generate(Timestamp::now()), TraceId::generate());
    assert!(matches!(request(&bus, &other, RunRequest::State {}).await, RunReply::Rejected { .. }));
    shutdown.cancel();
    for h in handles {
        h.await.unwrap();
    }
}
