//! The deployment files, checked without a Docker engine so they cannot rot:
//! - docker-compose.yml: its structure, and its commands against the real binaries' `--help`;
//!   `docker-compose config -q` too when the (Python) docker-compose is installed;
//! - deploy/nats.conf: read by a small parser, accepted by nats-server, and run: each role
//!   (coordinator, worker, cli) does its job over `NatsBus` and is refused what is not its job;
//! - deploy/Dockerfile: built and run when a Docker engine is reachable (SKIP otherwise);
//! - scripts/cluster: the local topology started, used for a run, and stopped.
#![allow(clippy::disallowed_methods)] // tests start processes

mod common;

use bytes::Bytes;
use orchestra_bus::{Bus, BusError, NatsBus, NatsOptions, WorkQueue};
use orchestra_proto::{RunId, TaskId, subjects};
use orchestra_testkit::nats::NatsServer;
use serde_json::{Map, Value as Json};
use serde_yaml::Value as Yaml;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

// --- docker-compose.yml ------------------------------------------------------------------------

/// docker-compose.yml with its `<<` merge keys applied, as Compose sees it.
fn compose() -> Yaml {
    let mut value: Yaml = serde_yaml::from_str(&read("docker-compose.yml")).unwrap();
    value.apply_merge().unwrap();
    value
}

fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    compose
        .get("services")
        .and_then(|s| s.get(name))
        .unwrap_or_else(|| panic!("docker-compose.yml has no service `{name}`"))
}

/// A command-like field: a list of strings, or one string split on whitespace.
fn words(value: Option<&Yaml>) -> Vec<String> {
    match value {
        None => Vec::new(),
        Some(Yaml::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(Yaml::Sequence(items)) => items
            .iter()
            .map(|v| v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}")).to_owned())
            .collect(),
        Some(other) => panic!("not a command: {other:?}"),
    }
}

/// `source:target[:mode]` volume entries as (source, target).
fn volumes(service: &Yaml) -> Vec<(String, String)> {
    words(service.get("volumes"))
        .iter()
        .map(|v| {
            let mut parts = v.split(':');
            let source = parts.next().unwrap_or_default().to_owned();
            let target = parts.next().unwrap_or_else(|| panic!("volume without target: {v}"));
            (source, target.to_owned())
        })
        .collect()
}

/// The value after `flag` in `command`.
fn flag_value<'a>(command: &'a [String], flag: &str) -> Option<&'a str> {
    command.iter().position(|w| w == flag).and_then(|i| command.get(i + 1)).map(String::as_str)
}

fn env_var(service: &Yaml, name: &str) -> Option<String> {
    match service.get("environment")?.get(name)? {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Null => Some(String::new()),
        other => Some(format!("{other:?}")),
    }
}

/// Named volumes declared at the top level.
fn named_volumes(compose: &Yaml) -> BTreeSet<String> {
    match compose.get("volumes") {
        Some(Yaml::Mapping(m)) => m.keys().filter_map(|k| k.as_str().map(str::to_owned)).collect(),
        _ => BTreeSet::new(),
    }
}

#[test]
fn compose_has_the_four_services() {
    let c = compose();
    let names: BTreeSet<&str> = match c.get("services") {
        Some(Yaml::Mapping(m)) => m.keys().filter_map(Yaml::as_str).collect(),
        other => panic!("services is not a mapping: {other:?}"),
    };
    assert_eq!(names, BTreeSet::from(["nats", "coordinator", "worker", "cli"]));
    // The CLI is a client started on demand, not a service `up` starts.
    assert_eq!(words(service(&c, "cli").get("profiles")), ["cli"]);
    for name in ["nats", "coordinator", "worker"] {
        assert!(service(&c, name).get("profiles").is_none(), "{name} must start with `up`");
    }
}

#[test]
fn worker_is_scalable() {
    let c = compose();
    let worker = service(&c, "worker");
    for key in ["container_name", "ports", "hostname"] {
        assert!(worker.get(key).is_none(), "`--scale worker=N` needs a worker without `{key}`");
    }
    // No named volume either: replicas would share one work directory.
    let named = named_volumes(&c);
    for (source, target) in volumes(worker) {
        assert!(!named.contains(&source), "worker mounts named volume {source} at {target}");
    }
}

#[test]
fn coordinator_keeps_its_state_in_a_named_volume() {
    let c = compose();
    let coordinator = service(&c, "coordinator");
    let command = words(coordinator.get("command"));
    let state = flag_value(&command, "--state").expect("the coordinator's command sets --state");
    let mount = volumes(coordinator).into_iter().find(|(_, target)| target == state);
    let (source, _) = mount.unwrap_or_else(|| panic!("no volume is mounted at --state {state}"));
    assert!(named_volumes(&c).contains(&source), "{source} is not a named volume");
}

#[test]
fn nats_mounts_the_conf_and_a_jetstream_volume() {
    let c = compose();
    let nats = service(&c, "nats");
    let image = nats.get("image").and_then(Yaml::as_str).expect("nats has an image");
    let tag = image.strip_prefix("nats:").expect("the official nats image");
    let version: Vec<u32> =
        tag.split(['.', '-']).take(2).map(|p| p.parse().expect("a versioned tag")).collect();
    assert!(version >= vec![2, 10], "sync_interval needs nats-server 2.10+, got {image}");

    let mounts = volumes(nats);
    let command = words(nats.get("command"));
    let conf = command.last().expect("nats has a command naming its config");
    assert!(
        mounts.contains(&("./deploy/nats.conf".to_owned(), conf.clone())),
        "deploy/nats.conf is not mounted at {conf}: {mounts:?}"
    );
    let parsed = nats_conf();
    let store = parsed["jetstream"]["store_dir"].as_str().expect("jetstream.store_dir");
    let (source, _) = mounts
        .iter()
        .find(|(_, target)| target == store)
        .unwrap_or_else(|| panic!("nothing is mounted at the JetStream store_dir {store}"));
    assert!(named_volumes(&c).contains(source), "{source} is not a named volume");
    // Every password variable the conf reads is passed to the server.
    for user in users(&parsed) {
        let var = password_var(&user);
        let value = env_var(nats, &var).unwrap_or_else(|| panic!("nats does not get ${var}"));
        assert!(value.starts_with(&format!("${{{var}:?")), "{var} must be required: {value}");
    }
}

#[test]
fn cli_mounts_examples_and_runs() {
    let c = compose();
    let cli = service(&c, "cli");
    let workdir = cli.get("working_dir").and_then(Yaml::as_str).expect("cli has a working_dir");
    let mounts = volumes(cli);
    for dir in ["examples", "runs"] {
        assert!(
            mounts.contains(&(format!("./{dir}"), format!("{workdir}/{dir}"))),
            "./{dir} is not mounted at {workdir}/{dir}: {mounts:?}"
        );
    }
    let command = words(cli.get("command"));
    assert_eq!(command.first().map(String::as_str), Some("run"));
    let scenario = command.get(1).expect("run names a scenario");
    assert!(root().join(scenario).is_file(), "the cli runs {scenario}, which does not exist");
}

/// The `--help` of the binary a compose service runs. The binaries are the package's own,
/// built for this test; without them, `orchestra agent <role> --help` stands in.
fn help(entrypoint: &str, command: &[String]) -> String {
    let orchestra = env!("CARGO_BIN_EXE_orchestra");
    let mut cmd = match entrypoint {
        "orchestra" => {
            let mut c = Command::new(orchestra);
            c.arg(command.first().expect("a subcommand"));
            c
        }
        "orchestra-coordinator" | "orchestra-worker" => {
            let exe = match entrypoint {
                "orchestra-coordinator" => option_env!("CARGO_BIN_EXE_orchestra-coordinator"),
                _ => option_env!("CARGO_BIN_EXE_orchestra-worker"),
            };
            match exe {
                Some(exe) => Command::new(exe),
                None => {
                    let mut c = Command::new(orchestra);
                    c.args(["agent", entrypoint.trim_start_matches("orchestra-")]);
                    c
                }
            }
        }
        other => panic!("unknown entrypoint `{other}`"),
    };
    let out = cmd.arg("--help").stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{entrypoint} --help failed: {}", show(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// True if `help` documents `flag` (not just a longer flag that starts with it).
fn has_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(i, _)| {
        let next = help[i + flag.len()..].chars().next();
        !matches!(next, Some(c) if c.is_ascii_alphanumeric() || c == '-')
    })
}

#[test]
fn compose_commands_use_flags_the_binaries_have() {
    let c = compose();
    let conf = nats_conf();
    for name in ["coordinator", "worker", "cli"] {
        let s = service(&c, name);
        let entrypoint = words(s.get("entrypoint"));
        let [entrypoint] = entrypoint.as_slice() else {
            panic!("{name}: the entrypoint is one binary, got {entrypoint:?}")
        };
        let command = words(s.get("command"));
        let help = help(entrypoint, &command);
        for word in command.iter().filter(|w| w.starts_with("--")) {
            let flag = word.split('=').next().unwrap_or(word);
            assert!(has_flag(&help, flag), "{name}: `{entrypoint}` has no {flag}:\n{help}");
        }
        // Each role logs in as its own NATS user, with the password the server checks.
        assert_eq!(flag_value(&command, "--nats"), Some("nats://nats:4222"), "{name}");
        let user = flag_value(&command, "--user").unwrap_or_else(|| panic!("{name}: no --user"));
        assert!(users(&conf).contains(user), "{name}: nats.conf has no user `{user}`");
        assert!(has_flag(&help, "ORCHESTRA_NATS_PASSWORD") || has_flag(&help, "--password"));
        let password = env_var(s, "ORCHESTRA_NATS_PASSWORD")
            .unwrap_or_else(|| panic!("{name}: no ORCHESTRA_NATS_PASSWORD"));
        let var = password_var(user);
        assert!(password.starts_with(&format!("${{{var}:?")), "{name}: password is {password}");
    }
}

#[test]
fn docker_compose_config_accepts_the_file() {
    let Ok(path) = which("docker-compose") else {
        println!("SKIP: `docker-compose` is not installed (Debian package docker-compose)");
        return;
    };
    let run = |passwords: bool| {
        let mut cmd = Command::new(&path);
        cmd.current_dir(root()).args(["-f", "docker-compose.yml", "config", "-q"]);
        for var in ["COORDINATOR", "WORKER", "CLI"].map(|r| format!("ORCHESTRA_{r}_PASSWORD")) {
            cmd.env_remove(&var);
            if passwords {
                cmd.env(&var, "test-only");
            }
        }
        cmd.stdin(Stdio::null()).output().unwrap()
    };
    let out = run(true);
    assert!(out.status.success(), "docker-compose config: {}", show(&out));
    // Without the passwords it refuses, and says why.
    let out = run(false);
    assert!(!out.status.success());
    assert!(show(&out).contains("set the NATS passwords"), "{}", show(&out));
}

/// A Docker engine check in the style of testcontainers: with an engine, build the image and
/// run each binary in it; without one, say so and pass.
#[test]
fn image_builds_and_runs_with_a_docker_engine() {
    let engine =
        Path::new("/var/run/docker.sock").exists() || std::env::var_os("DOCKER_HOST").is_some();
    let docker = which("docker");
    let (true, Ok(docker)) = (engine, docker) else {
        println!(
            "SKIP: no Docker engine (no /var/run/docker.sock, no DOCKER_HOST, or no docker CLI)"
        );
        return;
    };
    let tag = "orchestra:deploy-test";
    let out = Command::new(&docker)
        .current_dir(root())
        .args(["build", "-f", "deploy/Dockerfile", "-t", tag, "."])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "docker build: {}", show(&out));
    for bin in ["orchestra", "orchestra-coordinator", "orchestra-worker"] {
        let out = Command::new(&docker)
            .args(["run", "--rm", "--entrypoint", bin, tag, "--help"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{bin} --help in the image: {}", show(&out));
    }
    let out = Command::new(&docker)
        .args(["run", "--rm", "--entrypoint", "id", tag, "-u"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&out.stdout).trim(), "0", "the image runs as root");
}

// --- deploy/nats.conf --------------------------------------------------------------------------

/// A reader for the subset of the NATS configuration format that deploy/nats.conf uses: maps
/// (`key: value`, `key = value`, `key { … }`), arrays, quoted and bare strings, `#` and `//`
/// comments. Every scalar is a string.
mod natsconf {
    use serde_json::{Map, Value};

    pub fn parse(text: &str) -> Result<Value, String> {
        let mut p = Parser { chars: text.chars().collect(), at: 0 };
        let map = p.map_body(None)?;
        Ok(Value::Object(map))
    }

    struct Parser {
        chars: Vec<char>,
        at: usize,
    }

    impl Parser {
        fn peek(&self) -> Option<char> {
            self.chars.get(self.at).copied()
        }

        fn error(&self, what: &str) -> String {
            let line =
                self.chars[..self.at.min(self.chars.len())].iter().filter(|&&c| c == '\n').count()
                    + 1;
            format!("line {line}: {what}")
        }

        /// Skips whitespace, separators and comments between items.
        fn skip(&mut self) {
            while let Some(c) = self.peek() {
                if c.is_whitespace() || c == ',' || c == ';' {
                    self.at += 1;
                } else if c == '#' || (c == '/' && self.chars.get(self.at + 1) == Some(&'/')) {
                    while self.peek().is_some_and(|c| c != '\n') {
                        self.at += 1;
                    }
                } else {
                    break;
                }
            }
        }

        fn skip_blanks(&mut self) {
            while self.peek().is_some_and(|c| c == ' ' || c == '\t') {
                self.at += 1;
            }
        }

        fn map_body(&mut self, close: Option<char>) -> Result<Map<String, Value>, String> {
            let mut map = Map::new();
            loop {
                self.skip();
                match self.peek() {
                    None if close.is_none() => return Ok(map),
                    None => return Err(self.error("unclosed `{`")),
                    Some(c) if Some(c) == close => {
                        self.at += 1;
                        return Ok(map);
                    }
                    Some(_) => {}
                }
                let key = match self.peek() {
                    Some(q @ ('"' | '\'')) => self.quoted(q)?,
                    _ => self.word(|c| c.is_whitespace() || matches!(c, ':' | '=' | '{')),
                };
                if key.is_empty() {
                    return Err(self.error("expected a key"));
                }
                self.skip_blanks();
                if matches!(self.peek(), Some(':' | '=')) {
                    self.at += 1;
                }
                let value = self.value()?;
                map.insert(key, value);
            }
        }

        fn value(&mut self) -> Result<Value, String> {
            self.skip_blanks();
            match self.peek() {
                Some('{') => {
                    self.at += 1;
                    Ok(Value::Object(self.map_body(Some('}'))?))
                }
                Some('[') => {
                    self.at += 1;
                    let mut items = Vec::new();
                    loop {
                        self.skip();
                        match self.peek() {
                            None => return Err(self.error("unclosed `[`")),
                            Some(']') => {
                                self.at += 1;
                                return Ok(Value::Array(items));
                            }
                            Some(_) => items.push(self.value()?),
                        }
                    }
                }
                Some(q @ ('"' | '\'')) => Ok(Value::String(self.quoted(q)?)),
                Some(_) => {
                    let word = self.word(|c| matches!(c, '\n' | ',' | ';' | '}' | ']' | '#'));
                    Ok(Value::String(word.trim().to_owned()))
                }
                None => Err(self.error("expected a value")),
            }
        }

        fn quoted(&mut self, quote: char) -> Result<String, String> {
            self.at += 1;
            let start = self.at;
            while self.peek().is_some_and(|c| c != quote) {
                self.at += 1;
            }
            if self.peek().is_none() {
                return Err(self.error("unclosed quote"));
            }
            let s: String = self.chars[start..self.at].iter().collect();
            self.at += 1;
            Ok(s)
        }

        fn word(&mut self, end: impl Fn(char) -> bool) -> String {
            let start = self.at;
            while self.peek().is_some_and(|c| !end(c)) {
                self.at += 1;
            }
            self.chars[start..self.at].iter().collect()
        }
    }
}

#[test]
fn the_conf_reader_reads_the_format() {
    fn check(text: &str, expect: Json) {
        assert_eq!(natsconf::parse(text).unwrap(), expect, "{text}");
    }
    check("port: 4222", serde_json::json!({ "port": "4222" }));
    check("port = 4222\nhost 0.0.0.0", serde_json::json!({ "port": "4222", "host": "0.0.0.0" }));
    check("# c\n// c\na: b # c", serde_json::json!({ "a": "b" }));
    check(
        "js { sync_interval: always }",
        serde_json::json!({ "js": { "sync_interval": "always" } }),
    );
    check("a: [x, \"y z\"\n 'w']", serde_json::json!({ "a": ["x", "y z", "w"] }));
    check(
        "u: [{user: a}, {user: b}]",
        serde_json::json!({ "u": [{ "user": "a" }, { "user": "b" }] }),
    );
    check("\"$JS.API.>\": 1", serde_json::json!({ "$JS.API.>": "1" }));
    check("url: nats://h:1", serde_json::json!({ "url": "nats://h:1" }));
    assert!(natsconf::parse("a { b: c").is_err());
    assert!(natsconf::parse("a: [b").is_err());
    assert!(natsconf::parse("a: \"b").is_err());
}

fn nats_conf() -> Json {
    natsconf::parse(&read("deploy/nats.conf")).unwrap_or_else(|e| panic!("deploy/nats.conf: {e}"))
}

/// The account's users, by name.
fn user_entries(conf: &Json) -> Vec<Map<String, Json>> {
    let accounts = conf["accounts"].as_object().expect("nats.conf has accounts");
    accounts
        .values()
        .flat_map(|a| a["users"].as_array().cloned().unwrap_or_default())
        .map(|u| u.as_object().expect("a user is a map").clone())
        .collect()
}

fn users(conf: &Json) -> BTreeSet<String> {
    user_entries(conf).iter().map(|u| u["user"].as_str().expect("user name").to_owned()).collect()
}

/// The environment variable holding `user`'s password.
fn password_var(user: &str) -> String {
    format!("ORCHESTRA_{}_PASSWORD", user.to_uppercase())
}

fn allowed(user: &Map<String, Json>, direction: &str) -> BTreeSet<String> {
    user["permissions"][direction]["allow"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: no {direction}.allow", user["user"]))
        .iter()
        .map(|s| s.as_str().expect("a subject").to_owned())
        .collect()
}

#[test]
fn nats_conf_syncs_always_and_gives_each_role_its_subjects() {
    let conf = nats_conf();
    assert_eq!(conf["jetstream"]["sync_interval"], "always");
    assert!(conf["jetstream"]["store_dir"].is_string());
    let accounts = conf["accounts"].as_object().unwrap();
    assert_eq!(accounts.len(), 1, "the three roles share one account");
    assert_eq!(accounts.values().next().unwrap()["jetstream"], "enabled");
    assert_eq!(users(&conf), BTreeSet::from(["coordinator", "worker", "cli"].map(String::from)));

    let queue = subjects::TASK_QUEUE_ALL;
    let stream = subjects::TASK_STREAM;
    let submit = subjects::RUN_SUBMIT;
    for user in user_entries(&conf) {
        let name = user["user"].as_str().unwrap();
        // No secret in git: the password is a reference to the environment.
        assert_eq!(user["password"], format!("${}", password_var(name)), "{name}");
        let (publish, subscribe) = (allowed(&user, "publish"), allowed(&user, "subscribe"));
        assert!(subscribe.contains("_INBOX.>"), "{name} gets no replies");
        assert!(!publish.iter().any(|s| s == ">" || s == "$JS.API.>"), "{name}: too broad");
        let has = |set: &BTreeSet<String>, s: &str| set.contains(s);
        match name {
            "coordinator" => {
                assert!(has(&subscribe, submit));
                assert!(has(&publish, queue));
                assert!(has(&publish, &format!("$JS.API.STREAM.CREATE.{stream}")));
                assert_eq!(user["permissions"]["allow_responses"], "true");
            }
            "worker" => {
                assert!(has(&publish, &format!("$JS.ACK.{stream}.>")));
                assert!(has(&publish, &format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.*")));
                assert!(!has(&publish, queue) && !has(&subscribe, submit));
                for bucket in [subjects::ARTIFACTS_BUCKET, subjects::LOGS_BUCKET] {
                    assert!(has(&publish, &format!("$O.{bucket}.>")), "worker puts to {bucket}");
                }
            }
            "cli" => {
                assert!(has(&publish, submit));
                assert!(!has(&publish, queue) && !has(&subscribe, submit));
                assert!(!publish.iter().any(|s| s.starts_with("$O.")), "the cli only reads");
                for bucket in [subjects::ARTIFACTS_BUCKET, subjects::LOGS_BUCKET] {
                    let get = format!("$JS.API.DIRECT.GET.OBJ_{bucket}.>");
                    assert!(has(&publish, &get), "cli reads {bucket}");
                }
            }
            other => panic!("unexpected user {other}"),
        }
    }
}

/// deploy/nats.conf for a test server: no monitoring port and no store dir (the test kit sets
/// host, port and store dir on the command line) and, when given, literal passwords.
fn test_conf(passwords: bool) -> String {
    read("deploy/nats.conf")
        .lines()
        .filter(|l| !l.starts_with("http_port:") && !l.trim().starts_with("store_dir:"))
        .map(|l| match l.trim().strip_prefix("password: $") {
            Some(var) if passwords => {
                l.replace(&format!("${var}"), &format!("\"{}\"", secret(var)))
            }
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The test password behind a password variable.
fn secret(var: &str) -> String {
    format!("pw-{}", var.to_lowercase())
}

#[test]
fn nats_server_accepts_the_conf_and_requires_the_passwords() {
    let bin = orchestra_testkit::nats::nats_server_bin();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nats.conf");
    std::fs::write(&conf, test_conf(false)).unwrap();
    let check = |passwords: bool| {
        let mut cmd = Command::new(&bin);
        cmd.arg("-t").arg("-c").arg(&conf).stdin(Stdio::null());
        for user in ["coordinator", "worker", "cli"] {
            let var = password_var(user);
            cmd.env_remove(&var);
            if passwords {
                cmd.env(&var, secret(&var));
            }
        }
        cmd.output().unwrap()
    };
    let out = check(true);
    assert!(out.status.success(), "nats-server -t: {}", show(&out));
    let out = check(false);
    assert!(!out.status.success(), "a server without passwords must not start");
    assert!(show(&out).contains("ORCHESTRA_COORDINATOR_PASSWORD"), "{}", show(&out));
}

async fn login(url: &str, user: &str) -> Arc<NatsBus> {
    let opts = NatsOptions {
        name: format!("deploy-test-{user}"),
        user: Some(user.to_owned()),
        password: Some(secret(&password_var(user))),
        ..NatsOptions::default()
    };
    match NatsBus::connect_with(url, &opts).await {
        Ok(bus) => Arc::new(bus),
        Err(e) => panic!("{user} cannot log in: {e}"),
    }
}

const WAIT: Duration = Duration::from_secs(10);

async fn next_payload(sub: &mut orchestra_bus::Subscription, what: &str) -> Bytes {
    match tokio::time::timeout(WAIT, sub.next()).await {
        Ok(Some(m)) => m.payload,
        Ok(None) => panic!("{what}: subscription closed"),
        Err(_) => panic!("{what}: nothing within {WAIT:?}"),
    }
}

/// Each role does everything its process does over a real nats-server running deploy/nats.conf,
/// and is refused a sample of what the other roles do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_can_do_its_job_and_no_more() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nats.conf");
    std::fs::write(&conf, test_conf(true)).unwrap();
    let server = NatsServer::start_with(&["-c", conf.to_str().unwrap()]);
    let url = server.url();

    let bad = NatsOptions {
        user: Some("cli".into()),
        password: Some("wrong".into()),
        ..NatsOptions::default()
    };
    assert!(NatsBus::connect_with(&url, &bad).await.is_err(), "a wrong password logs in");
    let (coordinator, worker, cli) =
        (login(&url, "coordinator").await, login(&url, "worker").await, login(&url, "cli").await);
    let run = RunId::new_unchecked("r1");
    let task = TaskId::new_unchecked("t1");

    // Before any worker put something, the buckets do not exist: the cli reads nothing.
    let got = cli.object_get(subjects::ARTIFACTS_BUCKET, "0000").await;
    assert_eq!(got, Ok(None), "cli reading a missing bucket");

    // Both agents open the work queue; a worker may be first.
    let config = orchestra::local::queue_config(subjects::DEFAULT_POOL);
    let wq: Arc<dyn WorkQueue> = worker.work_queue(config.clone()).await.expect("worker queue");
    let cq: Arc<dyn WorkQueue> = coordinator.work_queue(config.clone()).await.expect("coord queue");
    let mut exhausted = cq.exhausted().await.expect("coordinator watches exhausted tasks");

    let mut requests =
        coordinator.queue_subscribe(subjects::RUN_SUBMIT, "coordinator").await.unwrap();
    let mut coord_tasks = coordinator.subscribe(&subjects::task_events_all(&run)).await.unwrap();
    let mut coord_ctl = coordinator.subscribe(&subjects::run_control(&run)).await.unwrap();
    let mut worker_ctl = worker.subscribe(&subjects::run_control_all()).await.unwrap();
    let mut cli_run = cli.subscribe(&subjects::run_all(&run)).await.unwrap();
    for bus in [&coordinator, &worker, &cli] {
        bus.flush().await.unwrap();
    }

    // cli → coordinator: a run request and its answer.
    let answer = {
        let coordinator = coordinator.clone();
        tokio::spawn(async move {
            let m = tokio::time::timeout(WAIT, requests.next()).await.unwrap().unwrap();
            let reply = m.reply.expect("a request has a reply subject");
            coordinator.publish(&reply, Bytes::from_static(b"accepted")).await.unwrap();
            // `requests` is dropped here: the coordinator stops answering.
        })
    };
    let reply = cli.request(subjects::RUN_SUBMIT, Bytes::from_static(b"run"), WAIT).await;
    assert_eq!(reply, Ok(Bytes::from_static(b"accepted")));
    answer.await.unwrap();

    // coordinator → worker: a dispatch through JetStream, de-duplicated, heartbeated, redelivered
    // after a nak, acked.
    let queue_subject = subjects::task_queue(subjects::DEFAULT_POOL);
    let msg_id = subjects::dispatch_msg_id(&run, &task, 1);
    let ack = cq.publish(&queue_subject, &msg_id, Bytes::from_static(b"d1")).await.unwrap();
    assert!(!ack.duplicate);
    let again = cq.publish(&queue_subject, &msg_id, Bytes::from_static(b"d1")).await.unwrap();
    assert!(again.duplicate, "the same dispatch twice is stored once");
    let d = wq.next(WAIT).await.unwrap().expect("the worker gets the dispatch");
    assert_eq!(d.payload, Bytes::from_static(b"d1"));
    d.acker.progress().await.expect("worker heartbeat");
    d.acker.nak(None).await.expect("worker nak");
    let d = wq.next(WAIT).await.unwrap().expect("redelivered after the nak");
    assert_eq!(d.info.delivered, 2);
    d.acker.ack().await.expect("worker ack");
    let d2 = cq.publish(&queue_subject, "r1/t2/1", Bytes::from_static(b"d2")).await.unwrap();
    let d = wq.next(WAIT).await.unwrap().expect("second dispatch");
    assert_eq!(d.info.stream_sequence, d2.sequence);
    d.acker.term().await.expect("worker term");
    assert_eq!(cq.pending().await, Ok(0), "acked and terminated dispatches are gone");

    // A poison dispatch: delivered max_deliver times, reported to the coordinator, removed.
    let poison = cq.publish(&queue_subject, "r1/t3/1", Bytes::from_static(b"d3")).await.unwrap();
    let max = config.max_deliver.expect("the queue bounds deliveries");
    for _ in 0..max {
        let d = wq.next(WAIT).await.unwrap().expect("the poison dispatch again");
        d.acker.nak(None).await.unwrap();
    }
    // The server notices the exhaustion when a worker asks for more.
    let (report, more) =
        tokio::join!(tokio::time::timeout(WAIT, exhausted.recv()), wq.next(Duration::from_secs(2)));
    assert!(matches!(more, Ok(None)), "delivered past max_deliver");
    let report = report.expect("no exhaustion advisory").expect("the advisory channel closed");
    assert_eq!((report.sequence, report.payload.as_ref()), (poison.sequence, &b"d3"[..]));
    cq.remove(report.sequence).await.expect("coordinator removes the poison dispatch");
    assert_eq!(cq.pending().await, Ok(0));

    // Events: worker → coordinator and cli; coordinator → cli; cli → coordinator and workers.
    worker.publish(&subjects::task_events(&run, &task), Bytes::from_static(b"te")).await.unwrap();
    assert_eq!(next_payload(&mut coord_tasks, "coordinator: task event").await, "te");
    assert_eq!(next_payload(&mut cli_run, "cli: task event").await, "te");
    coordinator.publish(&subjects::run_events(&run), Bytes::from_static(b"re")).await.unwrap();
    assert_eq!(next_payload(&mut cli_run, "cli: run event").await, "re");
    cli.publish(&subjects::run_control(&run), Bytes::from_static(b"cancel")).await.unwrap();
    assert_eq!(next_payload(&mut coord_ctl, "coordinator: control").await, "cancel");
    assert_eq!(next_payload(&mut worker_ctl, "worker: control").await, "cancel");
    assert_eq!(next_payload(&mut cli_run, "cli: its own control").await, "cancel");

    // Results: the worker puts (and replaces) objects, the cli and other workers read them.
    let log_key = subjects::log_object(&run, &task, 1, orchestra_proto::Stream::Stdout);
    let big = Bytes::from(vec![7u8; 300 * 1024]);
    for (bucket, key) in [(subjects::ARTIFACTS_BUCKET, "ab12"), (subjects::LOGS_BUCKET, &log_key)] {
        worker.object_put(bucket, key, Bytes::from_static(b"old")).await.expect("worker put");
        worker.object_put(bucket, key, big.clone()).await.expect("worker replaces");
        assert_eq!(cli.object_get(bucket, key).await, Ok(Some(big.clone())), "cli get {bucket}");
        assert_eq!(worker.object_get(bucket, key).await, Ok(Some(big.clone())));
        assert_eq!(cli.object_get(bucket, "missing").await, Ok(None));
    }

    // Refused: a worker cannot answer run requests (nobody answers once the coordinator stops).
    let mut forged = worker.queue_subscribe(subjects::RUN_SUBMIT, "coordinator").await.unwrap();
    worker.flush().await.unwrap();
    coordinator.flush().await.unwrap();
    let reply = cli.request(subjects::RUN_SUBMIT, Bytes::from_static(b"run"), WAIT).await;
    assert_eq!(reply, Err(BusError::NoResponders { subject: subjects::RUN_SUBMIT.into() }));
    assert!(forged.try_next().is_none());

    // Refused: a worker cannot publish run events; what it may publish still arrives, in order.
    worker.publish(&subjects::run_events(&run), Bytes::from_static(b"forged")).await.unwrap();
    worker.publish(&subjects::task_events(&run, &task), Bytes::from_static(b"te2")).await.unwrap();
    assert_eq!(next_payload(&mut cli_run, "cli after a forged run event").await, "te2");

    // Refused (each waits for a JetStream timeout, so together): the cli cannot open the work
    // queue or put objects; the coordinator cannot pull dispatches.
    let pending = cq.publish(&queue_subject, "r1/t4/1", Bytes::from_static(b"d4")).await.unwrap();
    let bounded = Duration::from_secs(30);
    let (cli_queue, cli_put, coord_pull) = tokio::join!(
        tokio::time::timeout(bounded, cli.work_queue(config.clone())),
        tokio::time::timeout(
            bounded,
            cli.object_put(subjects::ARTIFACTS_BUCKET, "cd34", Bytes::from_static(b"x"))
        ),
        tokio::time::timeout(bounded, cq.next(Duration::from_secs(1))),
    );
    assert!(!matches!(cli_queue, Ok(Ok(_))), "the cli opened the work queue");
    assert!(!matches!(cli_put, Ok(Ok(()))), "the cli put an object");
    assert!(matches!(coord_pull, Ok(Ok(None) | Err(_)) | Err(_)), "the coordinator pulled");
    let d = wq.next(WAIT).await.unwrap().expect("the dispatch is still there for a worker");
    assert_eq!(d.info.stream_sequence, pending.sequence);
    d.acker.ack().await.unwrap();
    assert_eq!(cli.object_get(subjects::ARTIFACTS_BUCKET, "cd34").await, Ok(None));

    // The server refused exactly the forbidden operations above, nothing the roles need.
    let expected = BTreeSet::from(
        [
            ("worker", "Subscription", subjects::RUN_SUBMIT.to_owned()),
            ("worker", "Publish", subjects::run_events(&run)),
            (
                "coordinator",
                "Publish",
                format!("$JS.API.CONSUMER.MSG.NEXT.{}.default", config.name),
            ),
            ("cli", "Publish", format!("$O.{}.C.*", subjects::ARTIFACTS_BUCKET)),
            ("cli", "Publish", format!("$JS.API.STREAM.INFO.{}", config.name)),
        ]
        .map(|(u, k, s)| (u.to_owned(), k.to_owned(), s)),
    );
    let log = server.log_tail();
    assert_eq!(violations(&log), expected, "server log:\n{log}");
}

/// (user, `Publish` or `Subscription`, subject) of each permission violation in a server log;
/// object chunk subjects end in `*` instead of their random id.
fn violations(log: &str) -> BTreeSet<(String, String, String)> {
    log.lines()
        .filter_map(|line| {
            let user = line.split("/user:").nth(1)?.split('"').next()?.to_owned();
            let (before, after) = line.split_once(" Violation - Subject \"")?;
            let kind = before.rsplit(' ').next()?.to_owned();
            let mut subject = after.split('"').next()?.to_owned();
            if let Some(i) = subject.find(".C.").filter(|_| subject.starts_with("$O.")) {
                subject.replace_range(i + 3.., "*");
            }
            Some((user, kind, subject))
        })
        .collect()
}

// --- scripts/cluster ---------------------------------------------------------------------------

fn cluster(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(root().join("scripts/cluster"));
    cmd.args(args).arg("--dir").arg(dir).stdin(Stdio::null());
    // The binaries built for this test run, not whatever else is in the target dir.
    let bins = Path::new(env!("CARGO_BIN_EXE_orchestra")).parent().unwrap().to_owned();
    cmd.env("ORCHESTRA_BIN_DIR", bins);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ORCHESTRA_NATS") {
            cmd.env_remove(k);
        }
    }
    cmd.output().unwrap()
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The processes `scripts/cluster` recorded: (name, pid, executable).
fn recorded(dir: &Path) -> Vec<(String, i32, String)> {
    let Ok(text) = std::fs::read_to_string(dir.join("pids")) else { return Vec::new() };
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_owned(), w.next()?.parse().ok()?, w.next()?.to_owned()))
        })
        .collect()
}

/// True if `pid` runs `exe` (so a reused pid does not count).
fn runs(pid: i32, exe: &str) -> bool {
    let link = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let same = link.is_some_and(|l| l.to_string_lossy().trim_end_matches(" (deleted)") == exe);
    same && common::alive(pid)
}

/// Stops a cluster the test started, even when the test fails half-way.
struct ClusterGuard(PathBuf);

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        let leftovers = recorded(&self.0);
        if leftovers.iter().any(|(_, pid, exe)| runs(*pid, exe)) {
            let _ = cluster(&self.0, &["down"]);
        }
        for (_, pid, exe) in recorded(&self.0) {
            if runs(pid, &exe) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// `export NAME=value` lines as pairs.
fn exports(stdout: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn cluster_script_starts_runs_and_stops_the_topology() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    let _guard = ClusterGuard(dir.clone());

    let out = cluster(&dir, &["up", "--workers", "2"]);
    assert!(out.status.success(), "cluster up: {}", show(&out));
    let procs = recorded(&dir);
    let names: Vec<&str> = procs.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["nats", "coordinator", "worker-1", "worker-2"]);
    for (name, pid, exe) in &procs {
        assert!(runs(*pid, exe), "{name} (pid {pid}) does not run {exe}");
    }
    let url = std::fs::read_to_string(dir.join("url")).unwrap().trim().to_owned();
    let env = exports(&out.stdout);
    assert!(env.contains(&("ORCHESTRA_NATS_URL".into(), url.clone())), "{}", show(&out));
    assert!(env.contains(&("ORCHESTRA_NATS_USER".into(), "cli".into())));
    let addr = url.strip_prefix("nats://").expect("a nats:// URL");
    assert!(addr.starts_with("127.0.0.1:"), "the cluster listens on loopback only: {url}");
    std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{url} does not answer: {e}"));

    // Idempotent: a second `up` leaves the running cluster as it is.
    let again = cluster(&dir, &["up", "--workers", "2"]);
    assert!(again.status.success(), "second up: {}", show(&again));
    assert_eq!(recorded(&dir), procs);
    assert_eq!(exports(&again.stdout), env);
    let status = cluster(&dir, &["status"]);
    assert_eq!(status.status.code(), Some(0), "status: {}", show(&status));

    // A real run through it, logged in as the cli user with the exported credentials.
    let work = tmp.path().join("cli");
    std::fs::create_dir_all(&work).unwrap();
    let hello = common::examples().join("hello.yaml");
    let run = common::bin()
        .current_dir(&work)
        .args(["run", hello.to_str().unwrap(), "--nats", &url])
        .envs(env.iter().filter(|(k, _)| k != "ORCHESTRA_NATS_URL").cloned())
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0), "orchestra run --nats: {}", show(&run));
    let runs_dir = work.join("runs");
    let run_dir = std::fs::read_dir(&runs_dir).unwrap().next().expect("a run directory").unwrap();
    let greetings = run_dir.path().join("artifacts/combine/greetings.txt");
    let text = std::fs::read_to_string(&greetings).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(text, "bonjour, world\nhello, world\n안녕, world\n");
    // `attach` takes everything from the exported environment, the URL included.
    let run_id = run_dir.file_name().to_string_lossy().into_owned();
    let attach = common::bin()
        .current_dir(&work)
        .args(["attach", &run_id])
        .envs(env.iter().cloned())
        .output()
        .unwrap();
    assert_eq!(attach.status.code(), Some(0), "orchestra attach: {}", show(&attach));
    // The real agents and CLI needed nothing that deploy/nats.conf does not allow.
    let nats_log = std::fs::read_to_string(dir.join("logs/nats.log")).unwrap();
    assert!(!nats_log.contains("Violation"), "permission violations:\n{nats_log}");

    let out = cluster(&dir, &["down"]);
    assert!(out.status.success(), "cluster down: {}", show(&out));
    let deadline = Instant::now() + Duration::from_secs(30);
    for (name, pid, exe) in &procs {
        while runs(*pid, exe) {
            assert!(Instant::now() < deadline, "{name} (pid {pid}) still runs after down");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(cluster(&dir, &["status"]).status.code(), Some(3), "status after down");
    let out = cluster(&dir, &["down"]);
    assert!(out.status.success(), "a second down: {}", show(&out));
}

#[test]
fn cluster_script_rejects_what_it_cannot_do() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let check = |args: &[&str], code: i32, says: &str| {
        let out = cluster(&dir, args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", show(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stderr.contains(says) || stdout.contains(says), "{args:?}: {}", show(&out));
    };
    check(&["up", "--workers", "x"], 1, "--workers wants a number");
    check(&["up", "--slots", "0"], 1, "--slots wants a positive number");
    check(&["up", "--frob"], 1, "unknown argument `--frob`");
    check(&["frob"], 1, "unknown command `frob`");
    check(&["status"], 3, "not running");
    check(&["down"], 0, "not running");
    check(&["env"], 1, "no cluster in");
}

fn which(program: &str) -> Result<PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file()).ok_or(())
}
