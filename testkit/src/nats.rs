//! Real nats-server processes for tests: the pinned binary, started on a random loopback port
//! with JetStream in a private store dir, and the faults tests inflict on it (graceful stop,
//! `kill -9`, restart on the same port and store).
//!
//! Invariants: a server only listens on `127.0.0.1`; every server has a watchdog (`sh`) that
//! holds the read end of a pipe whose only write end is in the test process, so when the test
//! process dies, however it dies, the watchdog kills the server (SIGKILL, by PID) and removes its
//! dir. Only PIDs this module started are signalled. Dropping a [`NatsServer`] kills the server
//! and removes its dir.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// How long a server may take to start (the first start on a cold cache included).
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long [`NatsServer::stop`] waits after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Log lines kept for error messages.
const LOG_TAIL: usize = 60;

/// The log line that carries the client port.
const LISTENING: &str = "Listening for client connections on 127.0.0.1:";
/// The log line printed once the server accepts clients (JetStream included).
const READY: &str = "Server is ready";

/// The watchdog. Reads commands on stdin: `pid N` (the server to kill), `nopid` (it is gone).
/// On EOF it kills the current server and removes the dir `$1`. It ignores SIGINT, SIGHUP and SIGTERM
/// so that a Ctrl-C or a signal to the process group does not stop it before its cleanup.
const WATCHDOG: &str = r#"
trap '' INT HUP TERM
pid=
while read -r cmd arg; do
    case "$cmd" in
        pid) pid=$arg ;;
        nopid) pid= ;;
    esac
done
if [ -n "$pid" ]; then kill -KILL "$pid" 2>/dev/null; fi
rm -rf "$1"
"#;

/// Path of nats-server 2.15.1, installed once by `scripts/install-nats-server`.
///
/// # Panics
/// When the install script fails or prints no runnable path.
pub fn nats_server_bin() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(|| crate::install("scripts/install-nats-server")) {
        Ok(path) => path.clone(),
        Err(message) => panic!("cannot get nats-server: {message}"),
    }
}

/// A nats-server process owned by a test. Drop kills it (by PID) and removes its dir.
pub struct NatsServer {
    bin: PathBuf,
    /// Holds `js/` (the JetStream store); removed on drop.
    dir: tempfile::TempDir,
    args: Vec<String>,
    port: u16,
    pid: u32,
    /// The running server; `None` after [`NatsServer::stop`] or [`NatsServer::kill9`].
    child: Option<Child>,
    watchdog: Child,
    /// The watchdog's stdin: commands, and EOF when the test process ends.
    watchdog_in: Option<ChildStdin>,
    /// The last lines the server logged.
    log: Arc<Mutex<VecDeque<String>>>,
}

impl std::fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsServer")
            .field("url", &self.url())
            .field("pid", &self.pid)
            .field("running", &self.child.is_some())
            .finish_non_exhaustive()
    }
}

impl NatsServer {
    /// Starts a server on a random loopback port with JetStream in its own store dir, and
    /// waits until it is ready.
    ///
    /// # Panics
    /// When the server cannot be installed or started, or is not ready within 20 s.
    pub fn start() -> NatsServer {
        Self::start_with(&[])
    }

    /// Like [`NatsServer::start`], with extra command-line arguments (e.g. `--user a --pass b`,
    /// `--auth TOKEN`, `-c nats.conf`); they are passed again on every restart.
    ///
    /// # Panics
    /// As [`NatsServer::start`].
    pub fn start_with(args: &[&str]) -> NatsServer {
        let bin = nats_server_bin();
        let dir = tempfile::Builder::new()
            .prefix("orchestra-nats-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for nats-server: {e}"));
        let (watchdog, watchdog_in) = spawn_watchdog(dir.path());
        let mut server = NatsServer {
            bin,
            dir,
            args: args.iter().map(|&a| a.to_owned()).collect(),
            port: 0,
            pid: 0,
            child: None,
            watchdog,
            watchdog_in: Some(watchdog_in),
            log: Arc::default(),
        };
        server.launch();
        server
    }

    /// The client URL, `nats://127.0.0.1:PORT`; it stays the same across restarts.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// PID of the server process started last (it may have been stopped since).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The JetStream store dir (kept across restarts).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("js")
    }

    /// Whether the server process is still running (it may have died on its own).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_)) | Err(_)) => {
                self.child = None;
                self.tell_watchdog("nopid");
                false
            }
            None => false,
        }
    }

    /// The last lines the server logged, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
    }

    /// Graceful stop: SIGTERM, wait up to 10 s, then SIGKILL. A no-op when not running.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok() {
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    self.tell_watchdog("nopid");
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill_and_reap(child);
    }

    /// Crash: SIGKILL, then reap. A no-op when not running.
    pub fn kill9(&mut self) {
        if let Some(child) = self.child.take() {
            self.kill_and_reap(child);
        }
    }

    /// Stops the server if it runs ([`NatsServer::stop`]), then starts it again on the same
    /// port with the same store dir and arguments, and waits until it is ready.
    ///
    /// # Panics
    /// As [`NatsServer::start`].
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    fn kill_and_reap(&mut self, mut child: Child) {
        let _ = child.kill();
        // Killed: the PID stays ours until reaped, so the watchdog may forget it first.
        self.tell_watchdog("nopid");
        let _ = child.wait();
    }

    fn tell_watchdog(&mut self, command: &str) {
        if let Some(stdin) = self.watchdog_in.as_mut() {
            let _ = writeln!(stdin, "{command}");
            let _ = stdin.flush();
        }
    }

    /// Starts the server (on `self.port` once known, else a random port) and waits until it
    /// is ready.
    // The test kit starts the servers tests run against.
    #[allow(clippy::disallowed_methods)]
    fn launch(&mut self) {
        let port = if self.port == 0 { "-1".to_owned() } else { self.port.to_string() };
        let mut child = Command::new(&self.bin)
            .args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
            .arg(self.store_dir())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.pid = child.id();
        let stderr = child.stderr.take();
        self.child = Some(child);
        self.tell_watchdog(&format!("pid {}", self.pid));

        let (tx, rx) = mpsc::channel();
        let log = self.log.clone();
        if let Some(stderr) = stderr {
            // Reads the log for the port and readiness, then keeps draining it so the server
            // never blocks on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(port) = line.split(LISTENING).nth(1) {
                        let _ = tx.send(Started::Port(port.trim().parse().unwrap_or(0)));
                    }
                    if line.contains(READY) {
                        let _ = tx.send(Started::Ready);
                    }
                    let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
                    if log.len() == LOG_TAIL {
                        log.pop_front();
                    }
                    log.push_back(line);
                }
            });
        }
        let deadline = Instant::now() + START_TIMEOUT;
        let mut port = None;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Started::Port(p)) => port = Some(p),
                Ok(Started::Ready) => break,
                Err(RecvTimeoutError::Timeout) => {
                    self.kill9();
                    panic!(
                        "nats-server was not ready within {START_TIMEOUT:?}:\n{}",
                        self.log_tail()
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.kill9();
                    panic!("nats-server exited before it was ready:\n{}", self.log_tail());
                }
            }
        }
        match port {
            Some(p) if p != 0 && (self.port == 0 || self.port == p) => self.port = p,
            _ => {
                self.kill9();
                panic!("nats-server reported no usable client port:\n{}", self.log_tail());
            }
        }
    }
}

enum Started {
    Port(u16),
    Ready,
}

/// Starts the watchdog for the dir `dir`; returns it and its stdin.
// The test kit starts the servers tests run against, and their watchdogs.
#[allow(clippy::disallowed_methods)]
fn spawn_watchdog(dir: &Path) -> (Child, ChildStdin) {
    let mut watchdog = Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG)
        .arg("nats-watchdog")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the nats-server watchdog: {e}"));
    let Some(stdin) = watchdog.stdin.take() else {
        let _ = watchdog.kill();
        let _ = watchdog.wait();
        panic!("the nats-server watchdog has no stdin");
    };
    (watchdog, stdin)
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill9();
        // EOF: the watchdog removes the dir (as TempDir's drop does) and exits.
        drop(self.watchdog_in.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.watchdog.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}
