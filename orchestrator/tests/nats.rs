//! The distributed mode through the real binaries: a nats-server (testkit), one
//! `orchestra-coordinator`, two `orchestra-worker` processes ([`common::cluster`]), and the
//! `orchestra` CLI with `--nats`.
#![allow(clippy::disallowed_methods)] // tests spawn the binaries they test

mod common;

use common::cluster::{
    COMMAND_TIMEOUT, Cluster, json, only_run_dir, orchestra, sha256_hex, task_table,
};
use common::{bin, examples, wait_for, write};
use orchestra_testkit::nats::NatsServer;
use std::collections::BTreeSet;
use std::process::{Command, Stdio};

#[test]
fn hello_runs_on_two_workers_and_its_results_come_home() {
    let cluster = Cluster::start(None);
    let url = cluster.url();
    let cli = cluster.cli_dir();
    let hello = examples().join("hello.yaml");
    let hello = hello.to_str().unwrap();

    // The same scenario in embedded mode, for the expected artifact.
    let (code, _, err) = orchestra(&cli, &["run", hello, "--runs-dir", "embedded"]);
    assert_eq!(code, 0, "embedded run failed:\n{err}");
    let embedded =
        std::fs::read(only_run_dir(&cli.join("embedded")).join("artifacts/combine/greetings.txt"))
            .unwrap();

    let (code, out, err) = orchestra(&cli, &["run", hello, "--nats", &url, "--runs-dir", "runs"]);
    assert_eq!(code, 0, "run --nats failed:\nstdout:\n{out}\nstderr:\n{err}\n{}", cluster.logs());
    assert!(out.contains("run succeeded: 5/5 tasks succeeded"), "{out}");
    let run_dir = only_run_dir(&cli.join("runs"));
    assert!(
        err.contains(&format!("run {} submitted", run_dir.file_name().unwrap().to_string_lossy())),
        "{err}"
    );

    let summary = json(&run_dir.join("summary.json"));
    assert_eq!(summary["status"], "succeeded");
    assert_eq!(summary["totals"]["succeeded"], 5);
    let table = task_table(&summary);
    assert_eq!(table.len(), 5);
    assert!(table.iter().all(|(_, status, attempts)| status == "succeeded" && *attempts == 1));
    let workers: BTreeSet<String> = summary["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["attempts"].as_array().unwrap().iter())
        .map(|a| a["worker_id"].as_str().expect("every attempt names its worker").to_owned())
        .collect();
    assert!(
        workers.iter().all(|w| w == "w1" || w == "w2"),
        "attempts ran on unknown workers: {workers:?}"
    );

    // Results came home: the artifact, byte for byte as in embedded mode, and as recorded.
    let greetings = std::fs::read(run_dir.join("artifacts/combine/greetings.txt")).unwrap();
    assert_eq!(greetings, embedded);
    let record = summary["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["task"] == "combine")
        .expect("combine's artifact is recorded")
        .clone();
    assert_eq!(record["sha256"].as_str().unwrap(), sha256_hex(&greetings));
    for task in ["prepare", "greet-en", "greet-fr", "greet-ko"] {
        assert!(run_dir.join("artifacts").join(task).is_dir(), "artifacts of {task} are missing");
    }
    for file in
        ["report.md", "report.html", "artifacts.json", "plan.json", "scenario.yaml", "logs.jsonl"]
    {
        assert!(run_dir.join(file).is_file(), "{file} is missing");
    }
    let report = std::fs::read_to_string(run_dir.join("report.md")).unwrap();
    assert!(report.contains("greetings.txt"), "{report}");

    // attach of the finished run, into another runs directory: the same summary and files.
    let run_id = run_dir.file_name().unwrap().to_str().unwrap().to_owned();
    let (code, out, err) =
        orchestra(&cli, &["attach", &run_id, "--nats", &url, "--runs-dir", "attached"]);
    assert_eq!(code, 0, "attach failed:\n{out}\n{err}");
    assert!(err.contains("already finished: succeeded"), "{err}");
    let attached = cli.join("attached").join(&run_id);
    assert_eq!(
        std::fs::read(attached.join("summary.json")).unwrap(),
        std::fs::read(run_dir.join("summary.json")).unwrap()
    );
    assert_eq!(std::fs::read(attached.join("artifacts/combine/greetings.txt")).unwrap(), embedded);
    assert!(attached.join("report.md").is_file());
    assert!(attached.join("plan.json").is_file());

    cluster.shutdown();
}

#[test]
fn a_coordinator_killed_mid_run_resumes_and_attach_completes_the_run_directory() {
    let mut cluster = Cluster::start(None);
    let url = cluster.url();
    let cli = cluster.cli_dir();
    let mut scenario = String::from("name: chain\ntasks:\n");
    let ids = ["a", "b", "c", "d", "e"];
    for (i, id) in ids.iter().enumerate() {
        let after = if i == 0 { String::new() } else { format!(", depends_on: [{}]", ids[i - 1]) };
        scenario.push_str(&format!(
            "  - {{ id: {id}{after}, exec: {{ program: sh, args: [-c, 'sleep 1; echo {id}-out'] }} }}\n"
        ));
    }
    let file = write(&cli, "chain.yaml", &scenario);

    // The CLI follows the run; it is killed with the coordinator once two tasks succeeded.
    let err_path = cli.join("run.stderr");
    let mut run = bin()
        .current_dir(&cli)
        .args(["run", file.to_str().unwrap(), "--nats", &url, "--runs-dir", "runs"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let stderr = || std::fs::read_to_string(&err_path).unwrap_or_default();
    wait_for("two tasks to succeed", COMMAND_TIMEOUT, || stderr().contains("succeeded b#1"));
    cluster.coordinator.kill9();
    let _ = run.kill();
    let _ = run.wait();
    let seen = stderr();
    let succeeded_before: Vec<&str> =
        ids.iter().copied().filter(|id| seen.contains(&format!("succeeded {id}#"))).collect();
    assert!(succeeded_before.len() >= 2, "{seen}");
    let run_dir = only_run_dir(&cli.join("runs"));
    assert!(!run_dir.join("summary.json").exists(), "the killed CLI wrote no summary");

    // Restarted on the same state, the coordinator resumes the run by itself; attach follows
    // it to the end and completes the run directory.
    cluster.coordinator.restart("coordinator ready");
    let run_id = run_dir.file_name().unwrap().to_str().unwrap().to_owned();
    let (code, out, err) =
        orchestra(&cli, &["attach", &run_id, "--nats", &url, "--runs-dir", "runs"]);
    assert_eq!(code, 0, "attach failed:\n{out}\n{err}\n{}", cluster.logs());
    assert!(out.contains("run succeeded: 5/5 tasks succeeded"), "{out}");

    let summary = json(&run_dir.join("summary.json"));
    assert_eq!(summary["status"], "succeeded");
    for (id, status, attempts) in task_table(&summary) {
        assert_eq!(status, "succeeded", "task {id}");
        if succeeded_before.contains(&id.as_str()) {
            assert_eq!(attempts, 1, "task {id} succeeded before the kill and ran again");
        }
    }
    // Every task's successful attempt printed its line, and the line came home.
    for t in summary["tasks"].as_array().unwrap() {
        let id = t["id"].as_str().unwrap();
        let last = t["attempts"].as_array().unwrap().last().unwrap()["attempt"].as_u64().unwrap();
        let stdout = run_dir.join(format!("tasks/{id}/{last}/stdout"));
        assert_eq!(
            std::fs::read_to_string(&stdout).unwrap_or_default(),
            format!("{id}-out\n"),
            "{}",
            stdout.display()
        );
    }
    assert!(run_dir.join("report.md").is_file());
    cluster.shutdown();
}

#[test]
fn without_a_coordinator_run_says_how_to_start_one() {
    let nats = NatsServer::start();
    let url = nats.url();
    let dir = tempfile::tempdir().unwrap();
    let hello = examples().join("hello.yaml");
    let (code, _, err) = orchestra(
        dir.path(),
        &["run", hello.to_str().unwrap(), "--nats", &url, "--runs-dir", "runs"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("error: no coordinator answers on {url}")), "{err}");
    assert!(err.contains(&format!("orchestra agent coordinator --nats {url}")), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path().join("runs")).unwrap().collect();
    assert!(left.is_empty(), "a run directory was left behind: {left:?}");

    let (code, _, err) =
        orchestra(dir.path(), &["attach", "20261125T100757Z-a1b2c3", "--nats", &url]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no coordinator answers"), "{err}");
}

#[test]
fn agents_report_bad_flags_and_unreachable_servers_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let check = |bin: &str, args: &[&str], expect: &str| {
        let out = Command::new(bin)
            .args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .env_remove("ORCHESTRA_NATS_URL")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bin} {args:?}: {err}");
        assert!(err.contains(expect), "{bin} {args:?}: {err}");
    };
    let worker = env!("CARGO_BIN_EXE_orchestra-worker");
    let coordinator = env!("CARGO_BIN_EXE_orchestra-coordinator");
    let orchestra = env!("CARGO_BIN_EXE_orchestra");
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("nats://127.0.0.1:{port}");
    check(worker, &["--slots", "0"], "--slots");
    check(worker, &["--nats", &url], &format!("error: cannot connect to {url}"));
    check(worker, &["--nats", &url, "--pool", "a.b"], "invalid pool name `a.b`");
    check(
        coordinator,
        &["--nats", &url, "--state", "s"],
        &format!("error: cannot connect to {url}"),
    );
    check(orchestra, &["agent", "worker", "--nats", &url], "hint: check the URL");
    check(worker, &["--tls-cert", "c.pem"], "--tls-key");
    for bin in [worker, coordinator] {
        let out = Command::new(bin).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && help.contains("Examples:"), "{help}");
    }
}

#[test]
fn the_coordinator_plans_a_goal_with_its_own_model() {
    let answers = examples().join("goal-answers");
    let llm = format!("scripted:{}", answers.display());
    let cluster = Cluster::start(Some(&llm));
    let url = cluster.url();
    let cli = cluster.cli_dir();
    let goal = examples().join("goal.yaml");
    let goal = goal.to_str().unwrap();

    // The CLI's own planner flags have no say over NATS.
    let (code, _, err) = orchestra(&cli, &["run", goal, "--nats", &url, "--llm", &llm]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("with --nats the coordinator plans"), "{err}");

    let (code, out, err) = orchestra(&cli, &["run", goal, "--nats", &url, "--runs-dir", "runs"]);
    assert_eq!(code, 0, "goal run failed:\n{out}\n{err}\n{}", cluster.logs());
    assert!(err.contains("planned by scripted: 2 calls"), "{err}");
    let run_dir = only_run_dir(&cli.join("runs"));
    let planning = json(&run_dir.join("llm/planning.json"));
    assert_eq!(planning["calls"].as_array().unwrap().len(), 2);
    assert!(run_dir.join("llm/call-1.answer.txt").is_file());
    let plan = json(&run_dir.join("plan.json"));
    let tasks = plan["tasks"].as_array().unwrap().len();
    let summary = json(&run_dir.join("summary.json"));
    assert_eq!(summary["status"], "succeeded");
    assert_eq!(summary["totals"]["succeeded"].as_u64().unwrap() as usize, tasks);
    let artifacts = summary["artifacts"].as_array().unwrap();
    assert!(!artifacts.is_empty());
    for a in artifacts {
        let path = run_dir
            .join("artifacts")
            .join(a["task"].as_str().unwrap())
            .join(a["path"].as_str().unwrap());
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(a["sha256"].as_str().unwrap(), sha256_hex(&bytes), "{}", path.display());
    }
    cluster.shutdown();
}
