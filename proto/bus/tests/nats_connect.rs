//! `NatsBus::connect_with`: credentials (user/password, token, nkey), TLS (server-verified and
//! mutual), clear errors when the options are unusable or nothing listens, and reconnecting
//! after a server restart. Each test starts its own nats-server on a random loopback port.

// TLS tests generate their certificates with the `openssl` command.
#![allow(clippy::disallowed_methods)]

use bytes::Bytes;
use orchestra_bus::{Bus, BusError, NatsBus, NatsOptions};
use orchestra_testkit::nats::NatsServer;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A user nkey pair made for these tests only (`nkeys::KeyPair::new_user()`).
const NKEY_SEED: &str = "SUACQEUNDDZH27LZ76GCU5CQ4J3RAYCJJ7TSGP74AUNM4RK67RTDXB73RA";
const NKEY_PUBLIC: &str = "UC5WT63JQZDNJCSP5GYAWABAG2C6IMYE2PM2KPW3TZMBQL4VVFBOFQ5B";

async fn connect(url: &str, opts: &NatsOptions) -> Result<Arc<NatsBus>, BusError> {
    NatsBus::connect_with(url, opts).await.map(Arc::new)
}

/// A request/reply round trip through the server: proves the connection works.
async fn round_trip(bus: Arc<NatsBus>) {
    let mut service = bus.subscribe("svc.echo").await.expect("subscribe");
    bus.flush().await.expect("flush");
    let responder = bus.clone();
    let server = tokio::spawn(async move {
        let request = tokio::time::timeout(Duration::from_secs(5), service.next())
            .await
            .expect("a request within 5 s")
            .expect("subscription open");
        let reply = request.reply.expect("reply subject");
        responder.publish(&reply, request.payload).await.expect("reply");
    });
    let got = bus.request("svc.echo", Bytes::from_static(b"ping"), Duration::from_secs(5)).await;
    assert_eq!(got, Ok(Bytes::from_static(b"ping")), "request/reply through the server");
    server.await.expect("responder");
}

/// Asserts that connecting fails with a message naming the URL and containing `expect`.
async fn refused(url: &str, opts: &NatsOptions, expect: &str) {
    match connect(url, opts).await {
        Ok(_) => panic!("connecting to {url} with {opts:?} must fail"),
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.contains(&format!("cannot connect to {url}: ")) && message.contains(expect),
                "error for {opts:?}: `{message}`, expected `cannot connect to {url}: …{expect}…`"
            );
        }
    }
}

fn user(user: &str, password: &str) -> NatsOptions {
    NatsOptions {
        user: Some(user.to_owned()),
        password: Some(password.to_owned()),
        ..Default::default()
    }
}

fn token(token: &str) -> NatsOptions {
    NatsOptions { token: Some(token.to_owned()), ..Default::default() }
}

/// A loopback URL where nothing listens (a port just released by the OS).
fn nothing_listens() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("nats://127.0.0.1:{port}")
}

#[tokio::test]
async fn user_and_password() {
    let server = NatsServer::start_with(&["--user", "a", "--pass", "b"]);
    let url = server.url();
    round_trip(connect(&url, &user("a", "b")).await.expect("right credentials")).await;
    refused(&url, &user("a", "wrong"), "authorization violation").await;
    refused(&url, &user("x", "b"), "authorization violation").await;
    refused(&url, &NatsOptions::default(), "authorization violation").await;
}

#[tokio::test]
async fn token_auth() {
    let server = NatsServer::start_with(&["--auth", "s3cret"]);
    let url = server.url();
    round_trip(connect(&url, &token("s3cret")).await.expect("right token")).await;
    refused(&url, &token("other"), "authorization violation").await;
    refused(&url, &NatsOptions::default(), "authorization violation").await;
}

#[tokio::test]
async fn nkey_from_a_seed_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("nats.conf");
    std::fs::write(&config, format!("authorization {{ users = [ {{ nkey: {NKEY_PUBLIC} }} ] }}\n"))
        .expect("write config");
    let server = NatsServer::start_with(&["-c", &config.to_string_lossy()]);
    let url = server.url();

    // As `nk -gen user` writes it, and with decoration around the seed.
    let plain = dir.path().join("user.nk");
    std::fs::write(&plain, format!("{NKEY_SEED}\n")).expect("write seed");
    let decorated = dir.path().join("decorated.nk");
    std::fs::write(&decorated, format!("# test user\n\n  {NKEY_SEED}  \n")).expect("write seed");
    for file in [plain, decorated] {
        let opts = NatsOptions { nkey_file: Some(file.clone()), ..Default::default() };
        let bus = connect(&url, &opts).await;
        round_trip(bus.unwrap_or_else(|e| panic!("nkey from {}: {e}", file.display()))).await;
    }
    refused(&url, &NatsOptions::default(), "authorization violation").await;
}

/// Unusable options fail before any connection attempt, naming the option.
#[tokio::test]
async fn unusable_options_are_named() {
    let url = nothing_listens();
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing");
    let no_seed = dir.path().join("no-seed.nk");
    std::fs::write(&no_seed, "not a seed\n").expect("write");
    let path = |p: &Path| Some(p.to_path_buf());
    let cases: Vec<(NatsOptions, String)> = vec![
        (
            NatsOptions { user: Some("a".into()), ..Default::default() },
            "a user needs a password".into(),
        ),
        (
            NatsOptions { password: Some("b".into()), ..Default::default() },
            "a password needs a user".into(),
        ),
        (
            NatsOptions { nkey_file: path(&missing), ..Default::default() },
            format!("reading nkey file `{}`", missing.display()),
        ),
        (
            NatsOptions { nkey_file: path(&no_seed), ..Default::default() },
            format!("nkey file `{}` holds no seed", no_seed.display()),
        ),
        (
            NatsOptions { creds_file: path(&missing), ..Default::default() },
            format!("credentials file `{}`: No such file", missing.display()),
        ),
        (
            NatsOptions { tls_ca: path(&missing), ..Default::default() },
            format!("TLS CA file `{}`", missing.display()),
        ),
        (
            NatsOptions { tls_ca: path(dir.path()), ..Default::default() },
            format!("TLS CA file `{}` is not a file", dir.path().display()),
        ),
        (
            NatsOptions { tls_cert: path(&no_seed), ..Default::default() },
            "a TLS client certificate needs a key".into(),
        ),
        (
            NatsOptions { tls_key: path(&no_seed), ..Default::default() },
            "a TLS key needs a client certificate".into(),
        ),
        (
            NatsOptions { tls_cert: path(&missing), tls_key: path(&no_seed), ..Default::default() },
            format!("TLS certificate `{}`", missing.display()),
        ),
    ];
    for (opts, expect) in &cases {
        refused(&url, opts, expect).await;
    }
}

#[tokio::test]
async fn nothing_listening_fails_at_once() {
    let url = nothing_listens();
    let start = Instant::now();
    refused(&url, &NatsOptions::default(), "Connection refused").await;
    assert!(start.elapsed() < Duration::from_secs(6), "failed after {:?}", start.elapsed());
    // The plain `connect` behaves the same.
    let plain = NatsBus::connect(&url).await;
    assert!(
        matches!(&plain, Err(BusError::Transport(m)) if m.starts_with(&format!("cannot connect to {url}: "))),
        "connect: {:?}",
        plain.map(|_| ())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_a_server_restart() {
    let mut server = NatsServer::start();
    let url = server.url();
    let bus = connect(&url, &NatsOptions { name: "restart-test".into(), ..Default::default() })
        .await
        .expect("connect");
    round_trip(bus.clone()).await;
    tokio::task::block_in_place(|| server.kill9());
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| server.restart());
    // Commands wait for the reconnection; the round trip must work within its own bounds.
    tokio::time::timeout(Duration::from_secs(20), round_trip(bus))
        .await
        .expect("a round trip within 20 s of the restart");
}

// ---- TLS ----

/// CA, server (for IP 127.0.0.1) and client certificates made with `openssl`; `None` (and a
/// SKIP line) when `openssl` is missing.
struct Certs {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running openssl {args:?}: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_certs(dir: &Path) -> Option<Certs> {
    let found = Command::new("openssl").arg("version").stdout(Stdio::null()).status();
    if !found.is_ok_and(|s| s.success()) {
        println!("SKIP: `openssl` not found; TLS connection tests did not run");
        return None;
    }
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let ca = [
        &["req", "-x509"][..],
        &ec,
        &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=orchestra test CA"],
        &["-addext", "basicConstraints=critical,CA:TRUE"],
        &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
    ]
    .concat();
    openssl(dir, &ca);
    for (name, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let subject = format!("/CN={name}");
        let req = [&["req"][..], &ec, &["-keyout", &key, "-out", &csr, "-subj", &subject]].concat();
        openssl(dir, &req);
        std::fs::write(
            dir.join(&ext),
            format!(
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"
            ),
        )
        .expect("write extensions");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }
    Some(Certs {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    })
}

#[tokio::test]
async fn tls_with_a_private_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(certs) = make_certs(dir.path()) else { return };
    let server = NatsServer::start_with(&[
        "--tls",
        "--tlscert",
        &certs.server_cert.to_string_lossy(),
        "--tlskey",
        &certs.server_key.to_string_lossy(),
    ]);
    let url = server.url();
    let trusted = NatsOptions { tls_ca: Some(certs.ca.clone()), ..Default::default() };
    round_trip(connect(&url, &trusted).await.expect("TLS with the CA")).await;
    // Without the CA the server's certificate is not trusted.
    let untrusted = NatsOptions { tls_required: true, ..Default::default() };
    refused(&url, &untrusted, "invalid peer certificate").await;
}

#[tokio::test]
async fn tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(certs) = make_certs(dir.path()) else { return };
    let server = NatsServer::start_with(&[
        "--tlsverify",
        "--tlscert",
        &certs.server_cert.to_string_lossy(),
        "--tlskey",
        &certs.server_key.to_string_lossy(),
        "--tlscacert",
        &certs.ca.to_string_lossy(),
    ]);
    let url = server.url();
    let mutual = NatsOptions {
        tls_ca: Some(certs.ca.clone()),
        tls_cert: Some(certs.client_cert.clone()),
        tls_key: Some(certs.client_key.clone()),
        ..Default::default()
    };
    round_trip(connect(&url, &mutual).await.expect("mutual TLS")).await;
    let server_only = NatsOptions { tls_ca: Some(certs.ca.clone()), ..Default::default() };
    refused(&url, &server_only, "CertificateRequired").await;
}
