//! Runs every conformance case against [`NatsBus`] on a real nats-server 2.15.1.
//!
//! One server per test binary, started on first use by `orchestra_testkit::nats` (random
//! loopback port, JetStream in a fresh store dir, a watchdog that kills it when this process
//! exits). It lives in a static and is never dropped: the watchdog is what stops it.

use orchestra_bus::NatsBus;
use orchestra_testkit::nats::NatsServer;
use std::sync::{Arc, OnceLock};

static SERVER: OnceLock<NatsServer> = OnceLock::new();

fn shared_server_url() -> String {
    SERVER.get_or_init(NatsServer::start).url()
}

async fn connect_to_the_shared_server() -> Arc<NatsBus> {
    let url = tokio::task::spawn_blocking(shared_server_url).await.expect("server start");
    NatsBus::connect(&url).await.unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

orchestra_bus::conformance_tests!(connect_to_the_shared_server().await);
