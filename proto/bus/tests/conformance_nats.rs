//! Runs every conformance case against [`NatsBus`] on a real nats-server 2.15.1.
//!
//! One server per test binary, started on first use: `scripts/install-nats-server` provides the
//! binary, and the server listens on a random loopback port with JetStream in a fresh store dir.
//! It runs under a small `sh` watchdog that reads its stdin: the test process holds the only
//! write end of that pipe, so when the process exits (however it exits) the watchdog sees EOF,
//! kills the server it started, and removes the store dir. No server outlives the tests.

#![allow(clippy::disallowed_methods)]

use orchestra_bus::NatsBus;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::Duration;

/// The shared server: its client URL, and the watchdog whose stdin keeps it alive.
struct Server {
    url: String,
    _watchdog: Mutex<Child>,
}

static SERVER: OnceLock<Server> = OnceLock::new();

/// Runs the server in the background; on EOF on stdin, kills it (SIGKILL: the store is thrown
/// away) and removes the store dir. A Ctrl-C does not stop the watchdog before its cleanup.
/// `$1` is the binary, `$2` the store dir.
const WATCHDOG: &str = r#"
trap '' INT HUP
"$1" -a 127.0.0.1 -p -1 -js -sd "$2" &
pid=$!
read -r _ || true
kill -KILL "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
rm -rf "$2"
"#;

fn install_nats_server() -> PathBuf {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/install-nats-server");
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(out.status.success(), "{} failed: {}", script.display(), out.status);
    let path = String::from_utf8(out.stdout).expect("utf-8 path");
    PathBuf::from(path.trim())
}

fn start_server() -> Server {
    let binary = install_nats_server();
    let store = std::env::temp_dir().join(format!(
        "orchestra-nats-conformance-{}-{:08x}",
        std::process::id(),
        rand_u32()
    ));
    std::fs::create_dir_all(&store).expect("create the store dir");
    let mut watchdog = Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG)
        .arg("nats-watchdog")
        .arg(&binary)
        .arg(&store)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the nats-server watchdog");
    let stderr = watchdog.stderr.take().expect("piped stderr");
    let (port_tx, port_rx) = mpsc::channel();
    // Reads the log until the port shows up, then keeps draining so the server never blocks.
    std::thread::spawn(move || {
        let marker = "Listening for client connections on 127.0.0.1:";
        let mut port_tx = Some(port_tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(port) = line.split(marker).nth(1)
                && let Some(tx) = port_tx.take()
            {
                let _ = tx.send(port.trim().parse::<u16>().expect("numeric port"));
            }
        }
    });
    let port = port_rx
        .recv_timeout(Duration::from_secs(15))
        .expect("nats-server did not report its client port within 15 s");
    Server { url: format!("nats://127.0.0.1:{port}"), _watchdog: Mutex::new(watchdog) }
}

fn rand_u32() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}

fn shared_server_url() -> String {
    SERVER.get_or_init(start_server).url.clone()
}

async fn connect_to_the_shared_server() -> Arc<NatsBus> {
    let url = tokio::task::spawn_blocking(shared_server_url).await.expect("server start");
    NatsBus::connect(&url).await.unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

orchestra_bus::conformance_tests!(connect_to_the_shared_server().await);
