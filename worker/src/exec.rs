//! One attempt of the `exec` tool: spawn a program (argv, no shell) in a clean environment,
//! stream its output to files and events, and end its whole process group on exit, timeout,
//! cancellation or output overflow.
//!
//! Architecture invariant: this is the only place in orchestra that spawns a process.
//!
//! Ending a process group without racing pid reuse: the leader is never reaped before the group
//! is signalled. Exit is detected with `waitid(WNOWAIT)` on every SIGCHLD, which leaves the
//! leader a zombie, so its pid — the group id — cannot be recycled while we signal the group.

use crate::sandbox;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use orchestra_proto::{Failure, FailureKind, SpanId, Stream, TaskEvent, Timestamp, TraceId};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::{ChildStderr, ChildStdout};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// `PATH` of the clean environment unless the task sets its own.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// How long output is still read after the group was killed, in case a process that left the
/// group (double fork + `setsid`) keeps a pipe open.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

const READ_BUF: usize = 32 * 1024;

/// Receives the events of an attempt in order.
pub type EventSink<'a> = &'a mut (dyn FnMut(TaskEvent) + Send);

/// Why a program could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("program `{program}` not found in PATH `{path}`")]
    NotFound { program: String, path: String },
    #[error("failed to spawn `{program}`")]
    Io {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to register for child exit notifications")]
    Signal(#[source] std::io::Error),
}

impl SpawnError {
    /// The failure reported for this error, with a hint where one helps.
    pub fn to_failure(&self) -> Failure {
        let mut failure = Failure::from_error(FailureKind::Spawn, self);
        match self {
            SpawnError::NotFound { .. } => failure
                .chain
                .push("hint: use an absolute path, or set PATH in the task's env".to_owned()),
            SpawnError::Io { program, source }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                failure.chain.push(format!("hint: check that `{program}` is an executable file"))
            }
            SpawnError::Io { .. } => {}
            SpawnError::Signal(_) => failure.kind = FailureKind::Internal,
        }
        failure
    }
}

/// Finds the file `program` names: a path with a `/` is taken relative to `cwd`; a bare name is
/// looked up in `path` (a `PATH` value) like `execvp`, skipping entries that are not executable
/// files.
pub fn resolve_program(program: &str, path: &str, cwd: &Path) -> Result<PathBuf, SpawnError> {
    if program.contains('/') {
        return Ok(cwd.join(program));
    }
    if !program.is_empty() {
        for dir in path.split(':').filter(|d| !d.is_empty()) {
            // A relative entry is relative to the attempt's cwd, as it would be for `execvp`.
            let candidate = cwd.join(dir).join(program);
            let executable = std::fs::metadata(&candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false);
            if executable {
                return Ok(candidate);
            }
        }
    }
    Err(SpawnError::NotFound { program: program.to_owned(), path: path.to_owned() })
}

/// W3C `traceparent` of an attempt: `00-<trace id>-<span id>-01`.
pub fn traceparent(trace_id: &TraceId, span_id: &SpanId) -> String {
    format!("00-{trace_id}-{span_id}-01")
}

/// Identifiers an attempt sees in its environment.
#[derive(Debug, Clone, Copy)]
pub struct EnvIds<'a> {
    pub run_id: &'a str,
    pub task_id: &'a str,
    pub attempt: u32,
    pub trace_id: &'a TraceId,
    pub span_id: &'a SpanId,
}

/// The complete environment of an attempt; nothing of the worker's own environment is in it.
///
/// `PATH`, `HOME` (the workspace), `LANG` and `TMPDIR` come first and may be overridden by the
/// task's declared `env`; the `ORCHESTRA_*` variables and `TRACEPARENT` cannot be.
pub fn clean_env(
    workspace: &Path,
    tmp: &Path,
    declared: &BTreeMap<String, String>,
    ids: EnvIds<'_>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_owned(), DEFAULT_PATH.to_owned());
    env.insert("HOME".to_owned(), workspace.to_string_lossy().into_owned());
    env.insert("LANG".to_owned(), "C.UTF-8".to_owned());
    env.insert("TMPDIR".to_owned(), tmp.to_string_lossy().into_owned());
    env.extend(declared.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.insert("ORCHESTRA_RUN_ID".to_owned(), ids.run_id.to_owned());
    env.insert("ORCHESTRA_TASK_ID".to_owned(), ids.task_id.to_owned());
    env.insert("ORCHESTRA_ATTEMPT".to_owned(), ids.attempt.to_string());
    env.insert("TRACEPARENT".to_owned(), traceparent(ids.trace_id, ids.span_id));
    env
}

/// Everything needed to run one attempt of a program.
#[derive(Debug)]
pub struct ExecRequest<'a> {
    /// The resolved program (see [`resolve_program`]).
    pub program: &'a Path,
    /// `argv[0]` as the task wrote it.
    pub arg0: &'a str,
    pub args: &'a [String],
    /// The whole environment (see [`clean_env`]).
    pub env: &'a BTreeMap<String, String>,
    pub cwd: &'a Path,
    pub stdout_path: &'a Path,
    pub stderr_path: &'a Path,
    pub timeout: Duration,
    pub kill_grace: Duration,
    /// Bytes kept per stream; past it the attempt is ended.
    pub output_cap: u64,
    /// Kill the group leader when the spawning thread dies (see `sandbox`); slower spawns.
    pub die_with_worker: bool,
    /// For the `Started` event.
    pub worker_id: &'a str,
    pub started_at: Timestamp,
}

impl ExecRequest<'_> {
    /// The argv reported in `Started`: the resolved program, then the arguments.
    pub fn argv(&self) -> Vec<String> {
        std::iter::once(self.program.to_string_lossy().into_owned())
            .chain(self.args.iter().cloned())
            .collect()
    }
}

/// What happened to one spawned attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecReport {
    /// `None` when nothing was spawned (and no `Started` event was sent).
    pub pid: Option<u32>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Bytes kept in the stdout file (at most the cap).
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// `None` on success.
    pub failure: Option<Failure>,
}

impl ExecReport {
    fn not_spawned(failure: Failure) -> Self {
        Self {
            pid: None,
            exit_code: None,
            signal: None,
            stdout_bytes: 0,
            stderr_bytes: 0,
            failure: Some(failure),
        }
    }
}

/// Why the worker ended the process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Timeout,
    Cancelled,
    OutputLimit(Stream),
}

/// One output stream: its file (created with the first byte), what was kept, and the event
/// sequence.
struct Sink {
    stream: Stream,
    file: Option<std::fs::File>,
    path: PathBuf,
    kept: u64,
    seq: u64,
    carry: Vec<u8>,
    capped: bool,
    eof: bool,
    write_error: Option<std::io::Error>,
}

impl Sink {
    fn new(stream: Stream, path: &Path) -> Self {
        Self {
            stream,
            file: None,
            path: path.to_owned(),
            kept: 0,
            seq: 0,
            carry: Vec::new(),
            capped: false,
            eof: false,
            write_error: None,
        }
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        let file = match &mut self.file {
            Some(f) => f,
            None => {
                if let Some(dir) = self.path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                self.file.insert(std::fs::File::create(&self.path)?)
            }
        };
        file.write_all(data)
    }

    /// Keeps what fits under the cap; returns true the first time the cap is exceeded.
    fn accept(&mut self, data: &[u8], cap: u64, events: EventSink<'_>) -> bool {
        let room = cap.saturating_sub(self.kept);
        let take = data.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        if take > 0 {
            let kept = &data[..take];
            if self.write_error.is_none()
                && let Err(e) = self.write(kept)
            {
                self.write_error = Some(e);
            }
            self.kept += take as u64;
            let chunk = decode_utf8(&mut self.carry, kept);
            self.emit(chunk, events);
        }
        if take < data.len() && !self.capped {
            self.capped = true;
            events(TaskEvent::OutputCapped { stream: self.stream, limit_bytes: cap });
            return true;
        }
        false
    }

    fn finish(&mut self, events: EventSink<'_>) {
        self.eof = true;
        if !self.carry.is_empty() {
            let chunk = String::from_utf8_lossy(&self.carry).into_owned();
            self.carry.clear();
            self.emit(chunk, events);
        }
    }

    fn emit(&mut self, chunk: String, events: EventSink<'_>) {
        if chunk.is_empty() {
            return;
        }
        events(TaskEvent::Output { stream: self.stream, seq: self.seq, chunk });
        self.seq += 1;
    }
}

#[derive(Debug, thiserror::Error)]
#[error("failed to write output file `{}`", path.display())]
struct OutputFileError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Length of an incomplete UTF-8 sequence at the end of `bytes` (0 to 3).
fn incomplete_utf8_tail(bytes: &[u8]) -> usize {
    for i in 1..=bytes.len().min(3) {
        let b = bytes[bytes.len() - i];
        if b & 0xC0 == 0x80 {
            continue;
        }
        let need = match b {
            0xF8.. => 1,
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        };
        return if need > i { i } else { 0 };
    }
    0
}

/// Decodes a chunk, carrying a character split across reads over to the next chunk.
fn decode_utf8(carry: &mut Vec<u8>, data: &[u8]) -> String {
    let mut bytes = std::mem::take(carry);
    bytes.extend_from_slice(data);
    let keep = incomplete_utf8_tail(&bytes);
    *carry = bytes.split_off(bytes.len() - keep);
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// True once the child `pid` has terminated; it is left a zombie (not reaped).
fn leader_exited(pid: Pid) -> bool {
    loop {
        match waitid(
            Id::Pid(pid),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
        ) {
            Ok(WaitStatus::StillAlive) => return false,
            Err(Errno::EINTR) => continue,
            // Exited, or something else reaped it (ECHILD): either way the leader is gone.
            Ok(_) | Err(_) => return true,
        }
    }
}

/// Kills the process group if the supervising future is dropped before the attempt ended.
struct GroupGuard {
    pgid: Pid,
    armed: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            signal_group(self.pgid, Signal::SIGKILL);
        }
    }
}

fn signal_group(pgid: Pid, signal: Signal) {
    // ESRCH only means that nobody is left in the group.
    let _ = killpg(pgid, signal);
}

fn signal_name(signal: i32) -> String {
    match Signal::try_from(signal) {
        Ok(s) => format!("{} ({signal})", s.as_str()),
        Err(_) => format!("signal {signal}"),
    }
}

fn classify(
    req: &ExecRequest<'_>,
    ending: Option<Ending>,
    status: &ExitStatus,
    write_error: Option<&OutputFileError>,
) -> Option<Failure> {
    let program = req.arg0;
    match ending {
        Some(Ending::Timeout) => {
            return Some(Failure::new(
                FailureKind::Timeout,
                format!("`{program}` timed out after {} ms", req.timeout.as_millis()),
            ));
        }
        Some(Ending::Cancelled) => {
            return Some(Failure::new(FailureKind::Cancelled, "the attempt was cancelled"));
        }
        Some(Ending::OutputLimit(stream)) => {
            return Some(Failure::new(
                FailureKind::OutputLimit,
                format!(
                    "`{program}` wrote more than the output cap of {} bytes to {}",
                    req.output_cap,
                    stream.as_str()
                ),
            ));
        }
        None => {}
    }
    if let Some(code) = status.code() {
        if code != 0 {
            return Some(
                Failure::new(FailureKind::ExitCode, format!("`{program}` exited with code {code}"))
                    .with_exit_code(code),
            );
        }
    } else if let Some(sig) = status.signal() {
        return Some(
            Failure::new(
                FailureKind::Signal,
                format!("`{program}` was killed by {}", signal_name(sig)),
            )
            .with_signal(sig),
        );
    }
    write_error.map(|e| Failure::from_error(FailureKind::Internal, e))
}

enum Step {
    Read(Stream, std::io::Result<usize>),
    Sigchld,
    Deadline,
    Cancel,
    Kill,
    DrainOver,
}

/// Reads the next chunk into `buf` (replacing its contents); 0 at end of file.
async fn read_pipe<R: AsyncReadExt + Unpin>(
    pipe: &mut Option<R>,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    buf.clear();
    match pipe {
        // `read_buf` fills spare capacity: the buffer is never zeroed.
        Some(p) => p.read_buf(buf).await,
        None => Ok(0),
    }
}

/// Spawns the program and supervises it to the end. Sends `Started` (right after the spawn),
/// `Output` and `OutputCapped` events; never `Finished` (the caller adds artifacts first).
pub async fn execute(
    req: &ExecRequest<'_>,
    events: EventSink<'_>,
    cancel: &CancellationToken,
) -> ExecReport {
    let mut out = Sink::new(Stream::Stdout, req.stdout_path);
    let mut err = Sink::new(Stream::Stderr, req.stderr_path);

    // Registered before the spawn so that the leader's exit cannot be missed.
    let mut sigchld = match signal(SignalKind::child()) {
        Ok(s) => s,
        Err(e) => return ExecReport::not_spawned(SpawnError::Signal(e).to_failure()),
    };

    let mut cmd = tokio::process::Command::new(req.program);
    cmd.as_std_mut().arg0(req.arg0);
    cmd.args(req.args)
        .env_clear()
        .envs(req.env)
        .current_dir(req.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    sandbox::confine(&mut cmd, req.die_with_worker);

    // The one place a process is spawned (clippy.toml `disallowed-methods`).
    #[allow(clippy::disallowed_methods)]
    let spawned = cmd.spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let err = SpawnError::Io { program: req.program.display().to_string(), source: e };
            return ExecReport::not_spawned(err.to_failure());
        }
    };
    let Some(raw_pid) = child.id() else {
        // Only possible once the child was reaped, which we have not done.
        return ExecReport::not_spawned(Failure::new(
            FailureKind::Internal,
            "spawned child has no pid",
        ));
    };
    let pid = Pid::from_raw(raw_pid as i32);
    let mut guard = GroupGuard { pgid: pid, armed: true };
    events(TaskEvent::Started {
        worker_id: req.worker_id.to_owned(),
        pid: Some(raw_pid),
        argv: req.argv(),
        started_at: req.started_at,
    });

    let mut stdout: Option<ChildStdout> = child.stdout.take();
    let mut stderr: Option<ChildStderr> = child.stderr.take();
    let mut out_buf = Vec::with_capacity(READ_BUF);
    let mut err_buf = Vec::with_capacity(READ_BUF);

    let deadline = tokio::time::sleep(req.timeout);
    let kill_timer = tokio::time::sleep(Duration::ZERO);
    let drain_timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(deadline, kill_timer, drain_timer);

    let mut ending: Option<Ending> = None;
    let mut kill_armed = false;
    let mut exited = false;

    // Starts ending the group: SIGTERM now, SIGKILL after the grace period.
    let begin_end =
        |reason: Ending, ending: &mut Option<Ending>, exited: bool, kill_armed: &mut bool| {
            if ending.is_some() {
                return None;
            }
            *ending = Some(reason);
            if exited {
                return None;
            }
            if req.kill_grace.is_zero() {
                signal_group(pid, Signal::SIGKILL);
                None
            } else {
                signal_group(pid, Signal::SIGTERM);
                *kill_armed = true;
                Some(Instant::now() + req.kill_grace)
            }
        };

    loop {
        if exited && out.eof && err.eof {
            break;
        }
        let step = tokio::select! {
            r = read_pipe(&mut stdout, &mut out_buf), if !out.eof => Step::Read(Stream::Stdout, r),
            r = read_pipe(&mut stderr, &mut err_buf), if !err.eof => Step::Read(Stream::Stderr, r),
            _ = sigchld.recv(), if !exited => Step::Sigchld,
            () = &mut deadline, if ending.is_none() && !exited => Step::Deadline,
            () = cancel.cancelled(), if ending.is_none() && !exited => Step::Cancel,
            () = &mut kill_timer, if kill_armed && !exited => Step::Kill,
            () = &mut drain_timer, if exited => Step::DrainOver,
        };
        let arm = match step {
            Step::Read(stream, result) => {
                let (sink, buf) = match stream {
                    Stream::Stdout => (&mut out, &out_buf),
                    Stream::Stderr => (&mut err, &err_buf),
                };
                match result {
                    Ok(0) | Err(_) => {
                        sink.finish(events);
                        None
                    }
                    Ok(n) => {
                        if sink.accept(&buf[..n], req.output_cap, events) {
                            begin_end(
                                Ending::OutputLimit(stream),
                                &mut ending,
                                exited,
                                &mut kill_armed,
                            )
                        } else {
                            None
                        }
                    }
                }
            }
            Step::Sigchld => {
                if leader_exited(pid) {
                    exited = true;
                    // Whatever the leader left behind in its group goes with it.
                    signal_group(pid, Signal::SIGKILL);
                    drain_timer.as_mut().reset(Instant::now() + DRAIN_AFTER_EXIT);
                }
                None
            }
            Step::Deadline => begin_end(Ending::Timeout, &mut ending, exited, &mut kill_armed),
            Step::Cancel => begin_end(Ending::Cancelled, &mut ending, exited, &mut kill_armed),
            Step::Kill => {
                kill_armed = false;
                signal_group(pid, Signal::SIGKILL);
                None
            }
            Step::DrainOver => {
                // A process outside the group still holds a pipe: stop reading.
                if !out.eof {
                    out.finish(events);
                }
                if !err.eof {
                    err.finish(events);
                }
                None
            }
        };
        if let Some(at) = arm {
            kill_timer.as_mut().reset(at);
        }
    }
    drop(stdout);
    drop(stderr);
    // The group was killed when the leader exited; nothing is left to guard.
    guard.armed = false;

    let status = match child.wait().await {
        Ok(s) => s,
        Err(e) => {
            let mut report = ExecReport::not_spawned(Failure::new(
                FailureKind::Internal,
                format!("failed to wait for pid {raw_pid}: {e}"),
            ));
            report.pid = Some(raw_pid);
            report.stdout_bytes = out.kept;
            report.stderr_bytes = err.kept;
            return report;
        }
    };
    let write_error = out
        .write_error
        .take()
        .map(|source| OutputFileError { path: out.path.clone(), source })
        .or_else(|| {
            err.write_error.take().map(|source| OutputFileError { path: err.path.clone(), source })
        });
    ExecReport {
        pid: Some(raw_pid),
        exit_code: status.code(),
        signal: status.signal(),
        stdout_bytes: out.kept,
        stderr_bytes: err.kept,
        failure: classify(req, ending, &status, write_error.as_ref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_tails() {
        let check = |bytes: &[u8], expect: usize| {
            assert_eq!(incomplete_utf8_tail(bytes), expect, "{bytes:?}");
        };
        check(b"", 0);
        check(b"abc", 0);
        check("é".as_bytes(), 0);
        check(&"é".as_bytes()[..1], 1);
        check(&"€".as_bytes()[..1], 1);
        check(&"€".as_bytes()[..2], 2);
        check("€".as_bytes(), 0);
        check(&"😀".as_bytes()[..3], 3);
        check("a😀".as_bytes(), 0);
        check(&[b'a', 0x80], 0);
        check(&[0xFF], 0);
    }

    #[test]
    fn utf8_split_across_chunks() {
        let text = "héllo €uro 😀!";
        let bytes = text.as_bytes();
        for split in 0..=bytes.len() {
            let mut carry = Vec::new();
            let mut got = decode_utf8(&mut carry, &bytes[..split]);
            got += &decode_utf8(&mut carry, &bytes[split..]);
            assert!(carry.is_empty(), "split {split}");
            assert_eq!(got, text, "split {split}");
        }
    }

    #[test]
    fn programs_resolve_in_the_clean_path() {
        let cwd = Path::new("/work/space");
        let check = |program: &str, path: &str, expect: Option<&str>| {
            let got = resolve_program(program, path, cwd).ok();
            assert_eq!(got.as_deref(), expect.map(Path::new), "{program} in {path}");
        };
        check("sh", DEFAULT_PATH, Some("/usr/bin/sh"));
        check("sh", "/bin", Some("/bin/sh"));
        check("sh", "", None);
        check("sh", "/nonexistent:/bin", Some("/bin/sh"));
        check("no-such-program-xyz", DEFAULT_PATH, None);
        check("", DEFAULT_PATH, None);
        check("./run.sh", DEFAULT_PATH, Some("/work/space/./run.sh"));
        check("/bin/true", "", Some("/bin/true"));
        // a directory is not a program
        check("usr", "/", None);
        // relative PATH entries are taken from the attempt's cwd
        check("sh", "bin", None);
        let cwd = Path::new("/");
        assert_eq!(resolve_program("sh", "bin", cwd).ok().as_deref(), Some(Path::new("/bin/sh")));
    }

    #[test]
    fn environment_is_built_from_scratch() {
        let trace = TraceId::new_unchecked("0af7651916cd43dd8448eb211c80319c");
        let span = SpanId::new_unchecked("b7ad6b7169203331");
        let ids =
            EnvIds { run_id: "r1", task_id: "t1", attempt: 2, trace_id: &trace, span_id: &span };
        let declared: BTreeMap<String, String> = [
            ("FOO", "bar"),
            ("PATH", "/opt/bin"),
            ("ORCHESTRA_TASK_ID", "forged"),
            ("TRACEPARENT", "forged"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let env = clean_env(Path::new("/ws"), Path::new("/ws/.tmp"), &declared, ids);
        let got: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            got,
            vec![
                ("FOO", "bar"),
                ("HOME", "/ws"),
                ("LANG", "C.UTF-8"),
                ("ORCHESTRA_ATTEMPT", "2"),
                ("ORCHESTRA_RUN_ID", "r1"),
                ("ORCHESTRA_TASK_ID", "t1"),
                ("PATH", "/opt/bin"),
                ("TMPDIR", "/ws/.tmp"),
                ("TRACEPARENT", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ]
        );
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(9), "SIGKILL (9)");
        assert_eq!(signal_name(15), "SIGTERM (15)");
        assert_eq!(signal_name(64), "signal 64");
    }
}
