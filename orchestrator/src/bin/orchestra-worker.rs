//! `orchestra-worker`: a worker (L3) on NATS, as `orchestra agent worker`.

fn main() -> std::process::ExitCode {
    orchestra::agent::worker_main()
}
