//! The distributed mode's processes for tests: a nats-server (testkit), an
//! `orchestra-coordinator` and `orchestra-worker` processes, each in its own temp directory
//! with a watchdog that kills it if the test process dies first; only processes started here
//! are signalled, by PID.

use super::{bin, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use orchestra_testkit::nats::NatsServer;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long any one CLI command of these tests may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an agent may take to say it is ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// An agent process: its stderr goes to `<dir>/<name>.log`.
pub struct Agent {
    pub name: String,
    pub dir: PathBuf,
    bin: &'static str,
    args: Vec<String>,
    child: Option<Child>,
    /// `sh` holding a pipe from this process: on EOF (this process died) it kills the agent.
    watchdog: Option<Child>,
    /// How many times it was launched; names its log file.
    lives: u32,
}

impl Agent {
    pub fn start(name: &str, root: &Path, bin: &'static str, args: &[&str], ready: &str) -> Agent {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut agent = Agent {
            name: name.to_owned(),
            dir,
            bin,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            child: None,
            watchdog: None,
            lives: 0,
        };
        agent.launch(ready);
        agent
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}.{}.log", self.name, self.lives))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn launch(&mut self, ready: &str) {
        self.lives += 1;
        let log = std::fs::File::create(self.log_path()).unwrap();
        let mut cmd = Command::new(self.bin);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ORCHESTRA_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let watchdog = Command::new("sh")
            .args(["-c", "trap '' INT HUP; read -r _; kill -9 \"$1\" 2>/dev/null", "sh"])
            .arg(child.id().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.watchdog = Some(watchdog);
        wait_for(&format!("{} to be ready", self.name), READY_TIMEOUT, || {
            let log = self.log();
            assert!(self.running(), "{} exited at start:\n{log}", self.name);
            log.contains(ready)
        });
    }

    /// The PID of the running process.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.as_ref().expect("the agent runs").id()).unwrap()
    }

    /// Sends `signal` to the running process (SIGSTOP, SIGCONT…).
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid()), signal).unwrap();
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Ends the watchdog before the agent is reaped, so that it never signals a reused PID.
    pub fn disarm(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }

    pub fn kill9(&mut self) {
        self.disarm();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, up to 15 s to exit, then SIGKILL. Returns the exit code of a graceful exit.
    pub fn stop(&mut self) -> Option<i32> {
        self.disarm();
        let mut child = self.child.take()?;
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
        if kill(pid, Signal::SIGTERM).is_ok() {
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(status)) = child.try_wait() {
                    return status.code();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub fn restart(&mut self, ready: &str) {
        self.stop();
        self.launch(ready);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// nats-server, a coordinator and two workers (`w1`, `w2`, 2 slots each).
pub struct Cluster {
    // Dropped in this order: the agents, the server, then their directories.
    pub coordinator: Agent,
    pub workers: Vec<Agent>,
    pub nats: NatsServer,
    pub root: tempfile::TempDir,
    /// Flags every worker gets after `--nats URL --id ID`.
    worker_args: Vec<String>,
}

impl Cluster {
    /// `planner`: the coordinator's `--llm`.
    pub fn start(planner: Option<&str>) -> Cluster {
        Cluster::with(planner, &[], &["w1", "w2"], &["--slots", "2"])
    }

    /// A server, a coordinator with `coordinator_args` (after `--nats URL --state state`), and
    /// one worker per id with `worker_args` (after `--nats URL --id ID --work-dir work`).
    pub fn with(
        planner: Option<&str>,
        coordinator_args: &[&str],
        workers: &[&str],
        worker_args: &[&str],
    ) -> Cluster {
        let nats = NatsServer::start();
        let root = tempfile::tempdir().unwrap();
        let url = nats.url();
        let mut args = vec!["--nats", &url, "--state", "state"];
        if let Some(llm) = planner {
            args.extend(["--llm", llm]);
        }
        args.extend(coordinator_args);
        let coordinator = Agent::start(
            "coordinator",
            root.path(),
            env!("CARGO_BIN_EXE_orchestra-coordinator"),
            &args,
            "coordinator ready",
        );
        let mut cluster = Cluster {
            root,
            coordinator,
            workers: Vec::new(),
            nats,
            worker_args: worker_args.iter().map(|a| (*a).to_owned()).collect(),
        };
        for id in workers {
            cluster.add_worker(id);
        }
        cluster
    }

    /// Starts one more worker, `id`, in its own directory; waits until it is ready.
    pub fn add_worker(&mut self, id: &str) {
        let url = self.url();
        let mut args = vec!["--nats", &url, "--id", id, "--work-dir", "work"];
        args.extend(self.worker_args.iter().map(String::as_str));
        let worker = Agent::start(
            id,
            self.root.path(),
            env!("CARGO_BIN_EXE_orchestra-worker"),
            &args,
            "worker ready",
        );
        self.workers.push(worker);
    }

    /// The worker named `id`.
    pub fn worker(&mut self, id: &str) -> &mut Agent {
        self.workers.iter_mut().find(|w| w.name == id).unwrap()
    }

    pub fn url(&self) -> String {
        self.nats.url()
    }

    /// The CLI's own directory.
    pub fn cli_dir(&self) -> PathBuf {
        let dir = self.root.path().join("cli");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for a in std::iter::once(&self.coordinator).chain(&self.workers) {
            out.push_str(&format!("--- {} ---\n{}\n", a.name, a.log()));
        }
        out
    }

    /// Stops every agent gracefully; each must exit 0.
    pub fn shutdown(mut self) {
        for w in &mut self.workers {
            assert_eq!(w.stop(), Some(0), "worker {} did not stop cleanly:\n{}", w.name, w.log());
        }
        let c = &mut self.coordinator;
        assert_eq!(c.stop(), Some(0), "the coordinator did not stop cleanly:\n{}", c.log());
        self.nats.stop();
    }
}

/// Runs the CLI to its end (bounded): exit code, stdout, stderr.
pub fn orchestra(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let mut child = bin()
        .current_dir(cwd)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "`orchestra {}` timed out\nstderr:\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn only_run_dir(runs: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "expected one run in {}: {dirs:?}", runs.display());
    dirs.into_iter().next().unwrap()
}

pub fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Per task: its status and how many attempts it took.
pub fn task_table(summary: &Value) -> Vec<(String, String, usize)> {
    summary["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap().to_owned(),
                t["status"].as_str().unwrap().to_owned(),
                t["attempts"].as_array().unwrap().len(),
            )
        })
        .collect()
}
