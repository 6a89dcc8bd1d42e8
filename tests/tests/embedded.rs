//! The in-process cluster (L2 + L3 on MemBus) driven directly over the bus, as L1 does.

use bytes::Bytes;
use orchestra::local::{LocalCluster, LocalOptions};
use orchestra_proto::plan::{Plan, RunOptions};
use orchestra_proto::{
    Ctx, RunEvent, RunId, RunReply, RunRequest, RunStatus, TaskId, TaskSpec, TaskStatus, Timestamp,
    TraceId, codec, subjects,
};
use std::time::Duration;

fn task(id: &str, deps: &[&str], program: &str, args: &[&str]) -> TaskSpec {
    TaskSpec {
        depends_on: deps.iter().map(|d| TaskId::new_unchecked(*d)).collect(),
        ..TaskSpec::exec(TaskId::new_unchecked(id), program, args)
    }
}

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

/// Every run event is published only after the transition it reports is in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transitions_are_stored_before_they_are_published() {
    let tmp = tempfile::tempdir().unwrap();
    let run_id = RunId::generate(Timestamp::now());
    let run_dir = tmp.path().join(run_id.as_str());
    std::fs::create_dir_all(&run_dir).unwrap();
    let cluster = LocalCluster::start(LocalOptions {
        state_dir: run_dir.join("state"),
        runs_dir: tmp.path().to_owned(),
        slots: 2,
        pool: "default".into(),
        planner: None,
        claude: Default::default(),
    })
    .await
    .unwrap();
    let bus = cluster.bus();
    let ctx = Ctx::run(run_id.clone(), TraceId::generate());
    let mut events = bus.subscribe(&subjects::run_events(&run_id)).await.unwrap();
    let plan = Plan {
        name: "diamond".into(),
        goal: None,
        tasks: vec![
            task("a", &[], "true", &[]),
            task("b", &["a"], "true", &[]),
            task("c", &["a"], "false", &[]),
            task("d", &["b", "c"], "true", &[]),
            task("e", &["b"], "true", &[]),
        ],
    };
    let req = RunRequest::Start { plan, options: options(), plan_only: false, planning: None };
    let reply = bus
        .request(
            subjects::RUN_SUBMIT,
            Bytes::from(codec::encode(&ctx.envelope(Timestamp::now(), req))),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let reply = codec::decode::<RunReply>(&reply).unwrap().body;
    assert!(matches!(reply, RunReply::Accepted { tasks: 5, .. }), "{reply:?}");

    let store = cluster.store().clone();
    let status_of = |id: &TaskId| {
        store.tasks(&run_id).unwrap().into_iter().find(|t| &t.task_id == id).unwrap().status
    };
    let mut seen = Vec::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .expect("run events keep coming")
            .expect("bus open");
        let ev = codec::decode::<RunEvent>(&msg.payload).unwrap();
        assert_eq!(ev.trace_id, ctx.trace_id, "one run, one trace");
        match &ev.body {
            RunEvent::TaskSucceeded { task_id, .. } => {
                assert_eq!(status_of(task_id), TaskStatus::Succeeded)
            }
            RunEvent::TaskFailed { task_id, .. } => {
                assert_eq!(status_of(task_id), TaskStatus::Failed)
            }
            RunEvent::TaskSkipped { task_id, .. } => {
                assert_eq!(status_of(task_id), TaskStatus::Skipped)
            }
            RunEvent::Finished(outcome) => {
                assert_eq!(outcome.status, RunStatus::Failed);
                assert_eq!((outcome.succeeded, outcome.failed, outcome.skipped), (3, 1, 1));
                let run = store.run(&run_id).unwrap().unwrap();
                assert_eq!(
                    run.status,
                    RunStatus::Failed,
                    "the run record is final before Finished is published"
                );
                break;
            }
            _ => {}
        }
        seen.push(ev.body);
    }
    let pos = |want: &dyn Fn(&RunEvent) -> bool| seen.iter().position(want).unwrap();
    let a_done =
        pos(&|e| matches!(e, RunEvent::TaskSucceeded { task_id, .. } if task_id.as_str() == "a"));
    let b_sent =
        pos(&|e| matches!(e, RunEvent::TaskDispatched { task_id, .. } if task_id.as_str() == "b"));
    assert!(a_done < b_sent, "b was dispatched before a succeeded: {seen:?}");
    assert!(seen.iter().any(|e| matches!(e, RunEvent::TaskSkipped { task_id, reason } if task_id.as_str() == "d" && reason.contains('c'))));
    cluster.shutdown().await;
}
