//! Helpers shared by the CLI test files: the real binary, scenario files, waiting, processes.
#![allow(dead_code, clippy::disallowed_methods)] // not every test file uses every helper

pub mod cluster;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `orchestra` binary with a clean `ORCHESTRA_*` environment and no progress line.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_orchestra"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ORCHESTRA_") {
            c.env_remove(k);
        }
    }
    c.env("NO_PROGRESS", "1").stdin(Stdio::null());
    c
}

pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Polls `f` every 20 ms until it holds; fails the test after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True if `pid` runs (a zombie runs nothing and holds nothing but a pid).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit(')').next().map(|s| !s.trim_start().starts_with('Z')).unwrap_or(false)
        }
        Err(_) => false,
    }
}

/// Starts `orchestra run SCENARIO` in `cwd` and waits until `task` has written its pid to
/// `work/<task>/pid`. Returns the child, the run directory and the task's pid.
pub fn start_until_pid(
    cwd: &Path,
    scenario: &Path,
    task: &str,
    output: fn() -> Stdio,
) -> (Child, PathBuf, i32) {
    let child = bin()
        .current_dir(cwd)
        .args(["run", scenario.to_str().unwrap()])
        .stdout(output())
        .stderr(output())
        .spawn()
        .unwrap();
    let runs = cwd.join("runs");
    let pid_file = format!("work/{task}/pid");
    let read_pid = |dir: &Path| {
        std::fs::read_to_string(dir.join(&pid_file)).ok().and_then(|p| p.trim().parse::<i32>().ok())
    };
    let mut found = None;
    wait_for("the task to start", Duration::from_secs(30), || {
        found = std::fs::read_dir(&runs)
            .into_iter()
            .flatten()
            .map(|e| e.unwrap().path())
            .find_map(|d| read_pid(&d).map(|pid| (d, pid)));
        found.is_some()
    });
    let (dir, pid) = found.unwrap();
    (child, dir, pid)
}

/// What one finished `orchestra` invocation printed, and where it ran.
pub struct Ran {
    pub out: std::process::Output,
    pub cwd: PathBuf,
}

impl Ran {
    pub fn code(&self) -> i32 {
        self.out.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    /// Both streams, for assertion messages.
    pub fn both(&self) -> String {
        format!("--- stdout\n{}--- stderr\n{}", self.stdout(), self.stderr())
    }
    /// The run directory printed on stdout (`run directory: …`), made absolute.
    pub fn run_dir(&self) -> PathBuf {
        let out = self.stdout();
        let dir = out.lines().find_map(|l| l.strip_prefix("run directory: "));
        self.cwd.join(dir.unwrap_or_else(|| panic!("no run directory printed:\n{}", self.both())))
    }
}

/// Runs `cmd` in `cwd`; fails the test (after killing it) when it runs longer than `limit`.
pub fn run_within(mut cmd: Command, cwd: &Path, limit: Duration) -> Ran {
    use std::io::Read;
    let mut child = cmd
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start orchestra");
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("orchestra did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = std::process::Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    Ran { out, cwd: cwd.to_path_buf() }
}

/// Writes a config file `orchestra.yaml` in `dir`: runs in `dir/runs`, plan cache in
/// `dir/plan-cache`, with `settings` merged over that (JSON is YAML).
pub fn config_file(dir: &Path, settings: serde_json::Value) -> PathBuf {
    let mut config = serde_json::json!({
        "runs_dir": dir.join("runs"),
        "llm": {"cache_dir": dir.join("plan-cache")},
    });
    merge(&mut config, settings);
    write(dir, "orchestra.yaml", &serde_json::to_string_pretty(&config).unwrap())
}

/// Deep-merges `over` into `base`: objects key by key, anything else replaced.
pub fn merge(base: &mut serde_json::Value, over: serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, o) => *b = o,
    }
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn json_file(path: &Path) -> serde_json::Value {
    serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The one directory in `runs` (for a run that printed none: a rejected plan).
pub fn only_run(runs: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(runs)
        .unwrap_or_else(|e| panic!("{}: {e}", runs.display()))
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "one run directory expected: {dirs:?}");
    dirs.into_iter().next().unwrap()
}

/// A scripted model server ([`orchestra_testkit::MockLlm`]) with the runtime that serves it,
/// for tests that are not async themselves.
pub struct LocalLlm {
    mock: orchestra_testkit::MockLlm,
    _rt: tokio::runtime::Runtime,
}

impl LocalLlm {
    pub fn start(script: Vec<orchestra_testkit::Reply>) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mock = rt.block_on(orchestra_testkit::MockLlm::start(script));
        Self { mock, _rt: rt }
    }
}

impl std::ops::Deref for LocalLlm {
    type Target = orchestra_testkit::MockLlm;
    fn deref(&self) -> &Self::Target {
        &self.mock
    }
}

/// A plan in the shape a model answers with: one `exec` task writing `hello.txt`.
pub fn model_plan() -> serde_json::Value {
    serde_json::json!({"tasks": [{
        "id": "hello",
        "description": "say hello",
        "tool": "exec",
        "program": "sh",
        "args": ["-c", "echo hello from the plan > hello.txt"],
        "outputs": ["hello.txt"],
    }]})
}
