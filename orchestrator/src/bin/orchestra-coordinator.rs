//! `orchestra-coordinator`: the coordinator (L2) on NATS, as `orchestra agent coordinator`.

fn main() -> std::process::ExitCode {
    orchestra::agent::coordinator_main()
}
