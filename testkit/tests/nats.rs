//! The nats-server harness: start and connect, restart and `kill -9` with the JetStream store
//! kept, cleanup on drop, and the watchdog that kills a server when its test process dies.

// These tests start the process whose death the watchdog must notice.
#![allow(clippy::disallowed_methods)]

use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use orchestra_testkit::nats::NatsServer;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whether `pid` is a live process (a zombie counts as dead).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| !matches!(state, 'Z' | 'X')),
        Err(_) => false,
    }
}

/// Waits (bounded) until `pid` is gone.
fn dies_within(pid: u32, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    !alive(pid)
}

async fn connect(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// Creates a file-backed stream `KEEP` on `keep.>` and publishes `n` acked messages.
async fn stream_with_messages(url: &str, n: u64) {
    let js = jetstream::new(connect(url).await);
    js.create_stream(stream::Config {
        name: "KEEP".into(),
        subjects: vec!["keep.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("create stream");
    for i in 0..n {
        let ack = js.publish("keep.m", format!("m{i}").into()).await.expect("publish");
        ack.await.expect("publish ack");
    }
}

/// The payloads stored in stream `KEEP`, in order.
async fn stored_messages(url: &str) -> Vec<String> {
    let js = jetstream::new(connect(url).await);
    let mut keep = js.get_stream("KEEP").await.expect("stream KEEP exists after the restart");
    let count = keep.info().await.expect("stream info").state.messages;
    let mut got = Vec::new();
    for seq in 1..=count {
        let message = keep.get_raw_message(seq).await.expect("stored message");
        got.push(String::from_utf8_lossy(&message.payload).into_owned());
    }
    got
}

#[tokio::test]
async fn start_gives_a_loopback_url_clients_can_use() {
    let server = NatsServer::start();
    let url = server.url();
    assert!(url.starts_with("nats://127.0.0.1:"), "url {url}");
    assert_eq!(url, format!("nats://127.0.0.1:{}", server.port()));
    assert!(alive(server.pid()), "the server runs");

    let client = connect(&url).await;
    let mut sub = client.subscribe("hello").await.expect("subscribe");
    client.flush().await.expect("flush");
    client.publish("hello", "world".into()).await.expect("publish");
    let message = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("a message within 5 s")
        .expect("subscription open");
    assert_eq!(&message.payload[..], b"world");

    // JetStream is on, with its store in the server's own dir.
    stream_with_messages(&url, 1).await;
    assert!(server.store_dir().join("jetstream").is_dir(), "store under {:?}", server.store_dir());
}

#[tokio::test]
async fn restart_keeps_the_port_and_the_stream_messages() {
    let mut server = NatsServer::start();
    let url = server.url();
    stream_with_messages(&url, 3).await;
    let first_pid = server.pid();

    server.restart();
    assert_eq!(server.url(), url, "same port after a restart");
    assert_ne!(server.pid(), first_pid, "a new process");
    assert!(!alive(first_pid), "the old process is gone");
    assert_eq!(
        stored_messages(&url).await,
        ["m0", "m1", "m2"],
        "messages after a graceful restart"
    );
}

#[tokio::test]
async fn kill9_stops_the_server_and_restart_recovers_the_store() {
    let mut server = NatsServer::start();
    let url = server.url();
    stream_with_messages(&url, 2).await;
    let pid = server.pid();

    server.kill9();
    assert!(!alive(pid), "the server is dead right after kill9");
    assert!(!server.is_running());
    let refused = async_nats::ConnectOptions::new().connect(&url).await;
    assert!(refused.is_err(), "nothing listens on {url} after kill9");

    server.restart();
    assert!(server.is_running());
    assert_eq!(stored_messages(&url).await, ["m0", "m1"], "acked messages survive kill -9");
}

#[tokio::test]
async fn stop_is_graceful_and_idempotent() {
    let mut server = NatsServer::start();
    let pid = server.pid();
    server.stop();
    assert!(!alive(pid), "stopped");
    assert!(
        server.log_tail().contains("Server Exiting"),
        "SIGTERM shutdown:\n{}",
        server.log_tail()
    );
    server.stop();
    server.kill9();
    assert!(!server.is_running());
}

#[test]
fn start_with_passes_arguments_on_every_start() {
    let mut server = NatsServer::start_with(&["--auth", "s3cret"]);
    let check = |url: String| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let anonymous = async_nats::ConnectOptions::new().connect(&url).await;
            assert!(anonymous.is_err(), "the token is required");
            let with_token =
                async_nats::ConnectOptions::with_token("s3cret".into()).connect(&url).await;
            assert!(with_token.is_ok(), "the token is accepted: {:?}", with_token.err());
        });
    };
    check(server.url());
    server.restart();
    check(server.url());
}

#[test]
fn drop_kills_the_server_and_removes_its_dir() {
    let server = NatsServer::start();
    let pid = server.pid();
    let dir = server.store_dir();
    assert!(dir.is_dir());
    drop(server);
    assert!(!alive(pid), "the server is dead after drop");
    assert!(!dir.exists(), "{} removed", dir.display());
}

const CHILD_ENV: &str = "ORCHESTRA_TESTKIT_NATS_WATCHDOG_CHILD";

/// In the child process only: starts a server, reports it, and waits to be killed.
#[test]
fn watchdog_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let server = NatsServer::start();
    println!("SERVER {} {}", server.pid(), server.store_dir().display());
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn the_watchdog_kills_the_server_when_the_test_process_dies() {
    let exe = std::env::current_exe().expect("the test binary");
    let mut child = Command::new(exe)
        .args(["watchdog_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the child test process");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // The harness prints `test watchdog_child ... ` before the line, unterminated.
            if let Some((_, rest)) = line.split_once("SERVER ") {
                let _ = tx.send(rest.to_owned());
            }
        }
    });
    let report = rx.recv_timeout(Duration::from_secs(30));
    // Whatever happened, the child dies now: SIGKILL, so no destructor runs in it.
    let _ = child.kill();
    let _ = child.wait();
    let report = report.expect("the child reported its server within 30 s");
    let (pid, dir) = report.split_once(' ').expect("`pid dir`");
    let pid: u32 = pid.parse().expect("numeric pid");
    let dir = PathBuf::from(dir);

    assert!(dies_within(pid, Duration::from_secs(10)), "server {pid} outlived its test process");
    let parent = dir.parent().map(Path::to_path_buf).expect("store dir has a parent");
    let start = Instant::now();
    while parent.exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!parent.exists(), "{} removed by the watchdog", parent.display());
}
