//! One attempt from start to result: prepare the workspace, stage inputs, run the tool, collect
//! outputs. Events go to a sink, the result is returned; the bus is used only as an object store,
//! for inputs of a remote attempt. Both tools (`exec`, `claude`) spawn through
//! [`exec::execute`]; a `claude` attempt is then judged by its JSON result.

use crate::artifacts::{self, ArtifactError};
use crate::claude::{self, ClaudeToolConfig, RootBypass};
use crate::exec::{self, EnvIds, EventSink, ExecRequest, SpawnError};
use crate::remote;
use orchestra_bus::Bus;
use orchestra_proto::{
    AttemptResult, Dispatch, Failure, FailureKind, Outcome, RunId, SpanId, Stream, TaskEvent,
    TaskId, Timestamp, Tool, TraceId, layout,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Where an attempt lives on disk. All paths are absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptPaths {
    pub run_dir: PathBuf,
    /// `<run_dir>/work/<task>`: cwd and `HOME`, kept across attempts.
    pub workspace: PathBuf,
    /// `<run_dir>/tmp`: `TMPDIR`, shared by the run's tasks (one directory per run rather than
    /// per attempt: creating directories is the worker's main cost on short tasks).
    pub tmp: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl AttemptPaths {
    pub fn new(run_dir: &Path, task: &TaskId, attempt: u32) -> Self {
        let run_dir = std::path::absolute(run_dir).unwrap_or_else(|_| run_dir.to_owned());
        let workspace = run_dir.join(layout::workspace(task));
        Self {
            tmp: run_dir.join(layout::TMP_DIR),
            stdout: run_dir.join(layout::attempt_output(task, attempt, Stream::Stdout)),
            stderr: run_dir.join(layout::attempt_output(task, attempt, Stream::Stderr)),
            workspace,
            run_dir,
        }
    }

    fn create(&self) -> Result<(), PrepareError> {
        let dirs = [self.tmp.as_path(), self.workspace.as_path()];
        for dir in dirs {
            std::fs::create_dir_all(dir)
                .map_err(|source| PrepareError { path: dir.to_path_buf(), source })?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("failed to create `{}`", path.display())]
struct PrepareError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Who runs the attempt and in which trace.
#[derive(Clone, Copy)]
pub struct AttemptContext<'a> {
    pub run_dir: &'a Path,
    pub run_id: &'a RunId,
    pub trace_id: &'a TraceId,
    /// The attempt's own span (`TRACEPARENT`, and the envelopes' `parent_id`).
    pub span_id: &'a SpanId,
    pub worker_id: &'a str,
    /// See [`crate::WorkerOptions::die_with_worker`].
    pub die_with_worker: bool,
    /// How `claude` tasks run the Claude Code CLI.
    pub claude: &'a ClaudeToolConfig,
    /// Remote mode: where dependency inputs missing from `run_dir` are fetched from (this bus's
    /// object store, see [`remote::fetch_inputs`]). `None`: they must be in `run_dir`.
    pub objects: Option<&'a dyn Bus>,
}

impl std::fmt::Debug for AttemptContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttemptContext")
            .field("run_dir", &self.run_dir)
            .field("run_id", &self.run_id)
            .field("worker_id", &self.worker_id)
            .field("die_with_worker", &self.die_with_worker)
            .field("remote", &self.objects.is_some())
            .finish_non_exhaustive()
    }
}

/// What to spawn for a task: the program, its argv and environment, or why it must not run.
struct Launch {
    program: Result<PathBuf, SpawnError>,
    /// The program as the task (or the worker's configuration) names it.
    arg0: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    /// Set when the attempt is refused before spawning.
    refusal: Option<Failure>,
}

impl Launch {
    fn new(
        cx: &AttemptContext<'_>,
        dispatch: &Dispatch,
        paths: &AttemptPaths,
        ids: EnvIds<'_>,
    ) -> Self {
        let task = &dispatch.task;
        let env = exec::clean_env(&paths.workspace, &paths.tmp, &task.env, ids);
        let (arg0, args, env, refusal) = match &task.tool {
            Tool::Exec(spec) => (spec.program.clone(), spec.args.clone(), env, None),
            Tool::Claude(spec) => {
                let is_root = nix::unistd::geteuid().is_root();
                let decision = claude::root_bypass(
                    spec.permission_mode.as_deref(),
                    is_root,
                    cx.claude.allow_bypass_as_root,
                );
                let refusal = match decision {
                    RootBypass::Plain => None,
                    RootBypass::Sandbox => {
                        info!(
                            task_id = %task.id,
                            "the worker runs as root and the task asks for bypassPermissions: \
                             setting IS_SANDBOX=1 because allow_bypass_as_root is on"
                        );
                        None
                    }
                    RootBypass::Refuse => Some(claude::refusal()),
                };
                let env = claude::env(env, cx.claude, decision == RootBypass::Sandbox);
                let arg0 = cx.claude.program.to_string_lossy().into_owned();
                (arg0, claude::args(spec), env, refusal)
            }
        };
        let path_var = env.get("PATH").map_or(exec::DEFAULT_PATH, String::as_str);
        let program = exec::resolve_program(&arg0, path_var, &paths.workspace);
        Self { program, arg0, args, env, refusal }
    }
}

/// Runs one attempt of a dispatch to its end.
///
/// Sends exactly one `Started` (with `pid: None` when nothing was spawned: dry run, a `claude`
/// task refused before spawning, bad workspace, failed staging, spawn error), then `Output`/`OutputCapped` events. The caller
/// publishes `Finished` with the returned result.
pub async fn run_attempt(
    cx: &AttemptContext<'_>,
    dispatch: &Dispatch,
    events: EventSink<'_>,
    cancel: &CancellationToken,
) -> AttemptResult {
    let started_at = Timestamp::now();
    let task = &dispatch.task;
    let paths = AttemptPaths::new(cx.run_dir, &task.id, dispatch.attempt);
    let mut result = AttemptResult {
        outcome: Outcome::Succeeded {},
        worker_id: cx.worker_id.to_owned(),
        started_at,
        finished_at: started_at,
        exit_code: None,
        signal: None,
        stdout_bytes: 0,
        stderr_bytes: 0,
        artifacts: Vec::new(),
        claude: None,
    };
    let ids = EnvIds {
        run_id: cx.run_id.as_str(),
        task_id: task.id.as_str(),
        attempt: dispatch.attempt,
        trace_id: cx.trace_id,
        span_id: cx.span_id,
    };
    let launch = Launch::new(cx, dispatch, &paths, ids);
    let argv: Vec<String> = std::iter::once(match &launch.program {
        Ok(p) => p.to_string_lossy().into_owned(),
        Err(_) => launch.arg0.clone(),
    })
    .chain(launch.args.iter().cloned())
    .collect();

    let mut not_spawned = |events: EventSink<'_>, failure: Option<Failure>| {
        events(TaskEvent::Started {
            worker_id: cx.worker_id.to_owned(),
            pid: None,
            argv: argv.clone(),
            started_at,
        });
        result.outcome = match failure {
            Some(failure) => Outcome::Failed { failure },
            None => Outcome::DryRun {},
        };
        result.finished_at = Timestamp::now();
        result.clone()
    };

    if dispatch.dry_run {
        return not_spawned(events, None);
    }
    if let Some(failure) = launch.refusal.clone() {
        return not_spawned(events, Some(failure));
    }
    if let Err(e) = paths.create() {
        return not_spawned(events, Some(Failure::from_error(FailureKind::Internal, &e)));
    }
    if cancel.is_cancelled() {
        let failure = Failure::new(FailureKind::Cancelled, "the attempt was cancelled");
        return not_spawned(events, Some(failure));
    }
    if !dispatch.inputs.is_empty() {
        if let Some(bus) = cx.objects {
            let fetched = tokio::select! {
                r = remote::fetch_inputs(bus, &paths.run_dir, &dispatch.inputs) => r,
                () = cancel.cancelled() => {
                    let failure = Failure::new(FailureKind::Cancelled, "the attempt was cancelled");
                    return not_spawned(events, Some(failure));
                }
            };
            if let Err(e) = fetched {
                return not_spawned(events, Some(Failure::from_error(FailureKind::Artifact, &e)));
            }
        }
        let (run_dir, workspace, inputs) =
            (paths.run_dir.clone(), paths.workspace.clone(), dispatch.inputs.clone());
        let staged = blocking(move || artifacts::stage_inputs(&run_dir, &workspace, &inputs)).await;
        if let Err(failure) = staged {
            return not_spawned(events, Some(failure));
        }
    }
    let program = match &launch.program {
        Ok(p) => p,
        Err(e) => {
            return not_spawned(events, Some(e.to_failure()));
        }
    };

    let req = ExecRequest {
        program,
        arg0: &launch.arg0,
        args: &launch.args,
        env: &launch.env,
        cwd: &paths.workspace,
        stdout_path: &paths.stdout,
        stderr_path: &paths.stderr,
        timeout: Duration::from_millis(task.timeout_ms),
        kill_grace: Duration::from_millis(dispatch.kill_grace_ms),
        output_cap: dispatch.output_cap_bytes,
        die_with_worker: cx.die_with_worker,
        worker_id: cx.worker_id,
        started_at,
    };
    let report = exec::execute(&req, events, cancel).await;
    if report.pid.is_none() {
        let failure = report.failure.unwrap_or_else(|| {
            Failure::new(FailureKind::Internal, "the attempt ended without being spawned")
        });
        return not_spawned(events, Some(failure));
    }
    result.exit_code = report.exit_code;
    result.signal = report.signal;
    result.stdout_bytes = report.stdout_bytes;
    result.stderr_bytes = report.stderr_bytes;
    let mut failure = report.failure;
    if matches!(task.tool, Tool::Claude(_)) {
        let stdout = read_output(&paths.stdout).await;
        let stderr = read_output(&paths.stderr).await;
        let ended = claude::Ended {
            failure,
            exit_code: report.exit_code,
            stdout: &stdout,
            stderr: &stderr,
        };
        let (claude, concluded) = claude::conclude(ended);
        result.claude = claude;
        failure = concluded;
    }
    result.outcome = match failure {
        Some(failure) => Outcome::Failed { failure },
        None if task.outputs.is_empty() => Outcome::Succeeded {},
        None => {
            let (run_dir, workspace, id, outputs) = (
                paths.run_dir.clone(),
                paths.workspace.clone(),
                task.id.clone(),
                task.outputs.clone(),
            );
            let collected =
                blocking(move || artifacts::collect_outputs(&run_dir, &workspace, &id, &outputs))
                    .await;
            match collected {
                Ok(records) => {
                    result.artifacts = records;
                    Outcome::Succeeded {}
                }
                Err(failure) => Outcome::Failed { failure },
            }
        }
    };
    result.finished_at = Timestamp::now();
    result
}

/// An output file of the attempt as text; empty when the stream wrote nothing.
async fn read_output(path: &Path) -> String {
    match tokio::fs::read(path).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(path = %path.display(), error = %e, "failed to read an attempt's output");
            }
            String::new()
        }
    }
}

/// Runs file work off the async threads; an artifact error becomes an `Artifact` failure.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ArtifactError> + Send + 'static,
) -> Result<T, Failure> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Failure::from_error(FailureKind::Artifact, &e)),
        Err(e) => Err(Failure::new(FailureKind::Internal, format!("artifact task failed: {e}"))),
    }
}
