//! What a run leaves for people and machines: `summary.json`, `artifacts.json`, `report.md`
//! and `report.html`.
//!
//! [`summarize`] is pure: the stored run state in, the summary out. Every number a report
//! shows comes from the [`Summary`]; rendering reads the run directory only for the first
//! stderr lines of failed attempts. `report.md` comes from a minijinja template (built in, or
//! the user's `--report-template`); `report.html` from a built-in template with the DAG and
//! the timeline drawn as inline SVG, no scripts and nothing fetched at view time.

mod mermaid;
mod render;
mod svg;

pub use mermaid::{dag_mermaid, gantt_mermaid, plan_mermaid};
pub use render::{
    DEFAULT_HTML_TEMPLATE, DEFAULT_MARKDOWN_TEMPLATE, render_html, render_markdown,
    render_markdown_with,
};
pub use svg::{dag_svg, timeline_svg};

use orchestra_proto::summary::{
    AttemptSummary, DurationStats, LlmTotals, Protection, Summary, TaskSummary, Totals,
};
use orchestra_proto::{
    ArtifactRecord, FailureKind, RunRecord, Stream, TaskRecord, TaskStatus, Timestamp, Tool, layout,
};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Version of the `summary.json` shape.
pub const SUMMARY_SCHEMA_VERSION: u32 = 1;

/// Why the report files could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot read the report template `{}`", path.display())]
    ReadTemplate {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot render the report template `{}`", path.display())]
    Template {
        path: PathBuf,
        /// The template line the error is on, when known.
        excerpt: Option<String>,
        #[source]
        source: minijinja::Error,
    },
    #[error("cannot write `{}`", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ReportError {
    /// The user's template is unreadable or broken (a usage error), rather than the disk.
    pub fn is_template(&self) -> bool {
        matches!(self, Self::ReadTemplate { .. } | Self::Template { .. })
    }

    /// The whole story for a person: the error, its cause and the template line it is on.
    pub fn describe(&self) -> String {
        let mut out = self.to_string();
        if let Some(cause) = std::error::Error::source(self) {
            let _ = write!(out, ": {cause}");
        }
        if let Self::Template { excerpt: Some(line), .. } = self {
            let _ = write!(out, "\n{line}");
        }
        out
    }
}

/// Builds the summary of a run from its stored records. `now` ends a run that has not finished.
pub fn summarize(run: &RunRecord, tasks: &[TaskRecord], now: Timestamp) -> Summary {
    let by_id: BTreeMap<_, _> = tasks.iter().map(|t| (t.task_id.clone(), t)).collect();
    let mut totals = Totals { tasks: run.plan.tasks.len() as u32, ..Totals::default() };
    let mut durations = Vec::new();
    let mut failures_by_kind: BTreeMap<FailureKind, u32> = BTreeMap::new();
    let mut artifacts: Vec<ArtifactRecord> = Vec::new();
    let mut summaries = Vec::new();
    for spec in &run.plan.tasks {
        let fallback;
        let t = match by_id.get(&spec.id) {
            Some(t) => *t,
            None => {
                fallback = TaskRecord::new(spec.id.clone());
                &fallback
            }
        };
        match t.status {
            TaskStatus::Succeeded => totals.succeeded += 1,
            TaskStatus::Failed => totals.failed += 1,
            TaskStatus::Skipped => totals.skipped += 1,
            TaskStatus::Cancelled => totals.cancelled += 1,
            _ => totals.unfinished += 1,
        }
        totals.attempts += t.attempts.len() as u32;
        totals.retries += (t.attempts.len() as u32).saturating_sub(1);
        let mut task_ms = 0;
        let attempts = t
            .attempts
            .iter()
            .map(|a| {
                let duration_ms = match (a.started_at, a.finished_at) {
                    (Some(s), Some(f)) => Some(f.since(s).as_millis() as u64),
                    _ => None,
                };
                if let Some(d) = duration_ms {
                    durations.push(d);
                    task_ms += d;
                }
                if let Some(f) = &a.failure {
                    *failures_by_kind.entry(f.kind).or_default() += 1;
                }
                let out =
                    |s| layout::attempt_output(&t.task_id, a.attempt, s).display().to_string();
                AttemptSummary {
                    attempt: a.attempt,
                    worker_id: a.worker_id.clone(),
                    started_at: a.started_at,
                    duration_ms,
                    exit_code: a.exit_code,
                    signal: a.signal,
                    failure: a.failure.clone(),
                    stdout: out(Stream::Stdout),
                    stderr: out(Stream::Stderr),
                    claude: a.claude.clone(),
                }
            })
            .collect();
        artifacts.extend(t.artifacts.iter().cloned());
        summaries.push(TaskSummary {
            id: t.task_id.clone(),
            status: t.status,
            tool: match &spec.tool {
                Tool::Exec(e) => e.program.clone(),
                Tool::Claude(_) => "claude".to_owned(),
            },
            depends_on: spec.depends_on.clone(),
            timeout_ms: spec.timeout_ms,
            reason: t.reason.clone(),
            attempts,
            duration_ms: task_ms,
        });
    }
    if totals.tasks > 0 {
        totals.success_rate = f64::from(totals.succeeded) / f64::from(totals.tasks);
    }
    totals.attempt_duration_ms = stats(&mut durations);
    artifacts.sort();
    let end = run.finished_at.unwrap_or(now);
    Summary {
        schema_version: SUMMARY_SCHEMA_VERSION,
        run_id: run.run_id.to_string(),
        trace_id: run.trace_id.to_string(),
        name: run.plan.name.clone(),
        status: run.status,
        dry_run: run.options.dry_run,
        started_at: run.created_at,
        finished_at: run.finished_at,
        duration_ms: end.since(run.created_at).as_millis() as u64,
        totals,
        tasks: summaries,
        llm: llm_totals(run, tasks),
        artifacts,
        failures_by_kind,
        protections: protections(run),
    }
}

/// What the worker does to every attempt today, and what it does not do yet (no rlimits,
/// no Landlock, no network isolation): the report says so plainly.
pub fn protections(run: &RunRecord) -> Vec<Protection> {
    let o = &run.options;
    let timeouts = run.plan.tasks.iter().map(|t| t.timeout_ms);
    let timeout = match (timeouts.clone().min(), timeouts.max()) {
        (Some(lo), Some(hi)) if lo == hi => format!("{} per attempt", fmt_ms(lo)),
        (Some(lo), Some(hi)) => {
            format!("{} to {} per attempt, set per task", fmt_ms(lo), fmt_ms(hi))
        }
        _ => "per attempt, set per task".to_owned(),
    };
    let p = |name: &str, active, detail: String| Protection { name: name.into(), active, detail };
    vec![
        p(
            "process_group",
            true,
            format!(
                "each attempt runs in its own process group; a timeout, a cancel or an output \
                 overflow ends the whole group (SIGTERM, then SIGKILL after {})",
                fmt_ms(o.kill_grace_ms)
            ),
        ),
        p(
            "clean_env",
            true,
            "the environment is cleared: only PATH, HOME, LANG, TMPDIR, the task's declared env \
             and the ORCHESTRA_* ids reach the program"
                .into(),
        ),
        p(
            "workspace",
            true,
            "the working directory and HOME are the task's own directory under work/ in the \
             run directory (a convention, not a confinement)"
                .into(),
        ),
        p("timeout", true, format!("{timeout}; past it the attempt's process group is ended")),
        p(
            "output_cap",
            true,
            format!(
                "{} kept per output stream; past it the attempt is ended",
                fmt_bytes(o.output_cap_bytes)
            ),
        ),
        p(
            "rlimits",
            false,
            "not active: no memory, CPU-time or process-count limits are applied".into(),
        ),
        p(
            "landlock",
            false,
            "not active: no filesystem confinement; a task can read and write whatever the \
             orchestra user can"
                .into(),
        ),
        p(
            "network",
            false,
            "not active: no network isolation; a task can reach any host the machine can".into(),
        ),
    ]
}

/// Model use of a run: planning calls from the run record, `claude` attempts from the tasks.
/// `None` when the run used no model.
pub fn llm_totals(run: &RunRecord, tasks: &[TaskRecord]) -> Option<LlmTotals> {
    let mut t = LlmTotals::default();
    if let Some(p) = &run.planning {
        t.backend = Some(p.backend.clone());
        t.model = p.model.clone();
        t.plan_cached = p.cached;
        t.planning_calls = p.calls.len() as u32;
        t.repair_rounds = t.planning_calls.saturating_sub(1);
        t.planning_latency_ms = p.calls.iter().map(|c| c.latency_ms).sum();
        t.input_tokens += p.input_tokens();
        t.output_tokens += p.output_tokens();
        t.planning_cost_usd = p.cost_usd();
    }
    for c in tasks.iter().flat_map(|t| &t.attempts).filter_map(|a| a.claude.as_ref()) {
        t.claude_attempts += 1;
        t.input_tokens += c.input_tokens;
        t.output_tokens += c.output_tokens;
        t.claude_cost_usd += c.cost_usd;
    }
    t.cost_usd = t.planning_cost_usd + t.claude_cost_usd;
    (run.planning.is_some() || t.claude_attempts > 0).then_some(t)
}

/// Mean and nearest-rank percentiles.
pub fn stats(values: &mut [u64]) -> DurationStats {
    if values.is_empty() {
        return DurationStats::default();
    }
    values.sort_unstable();
    let n = values.len();
    let rank = |p: f64| values[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
    DurationStats {
        count: n as u32,
        mean: values.iter().sum::<u64>() as f64 / n as f64,
        p50: rank(0.50),
        p95: rank(0.95),
        max: values[n - 1],
    }
}

/// A duration for people: `250ms`, `1.50s`, `2m05s`, `1h02m`.
pub fn fmt_ms(v: u64) -> String {
    match v {
        0..1_000 => format!("{v}ms"),
        1_000..60_000 => format!("{:.2}s", v as f64 / 1000.0),
        60_000..3_600_000 => match (v / 60_000, v % 60_000 / 1000) {
            (m, 0) => format!("{m}m"),
            (m, s) => format!("{m}m{s:02}s"),
        },
        _ => match (v / 3_600_000, v % 3_600_000 / 60_000) {
            (h, 0) => format!("{h}h"),
            (h, m) => format!("{h}h{m:02}m"),
        },
    }
}

/// A size for people: `512 B`, `1.5 KiB`, `1 MiB`.
pub fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    let text = format!("{v:.1}");
    format!("{} {}", text.strip_suffix(".0").unwrap_or(&text), UNITS[unit])
}

/// The headline used on the console and in the report.
pub fn headline(s: &Summary) -> String {
    let t = &s.totals;
    let what = if s.dry_run { "dry run" } else { "run" };
    let mut line = format!(
        "{what} {}: {}/{} tasks succeeded in {}",
        s.status.as_str(),
        t.succeeded,
        t.tasks,
        fmt_ms(s.duration_ms)
    );
    for (n, label) in [(t.failed, "failed"), (t.skipped, "skipped"), (t.cancelled, "cancelled")] {
        if n > 0 {
            let _ = write!(line, ", {n} {label}");
        }
    }
    if t.unfinished > 0 {
        let _ = write!(line, ", {} unfinished", t.unfinished);
    }
    if t.retries > 0 {
        let _ =
            write!(line, " ({} {})", t.retries, if t.retries == 1 { "retry" } else { "retries" });
    }
    line
}

/// Reads a user's `report.md` template and checks its syntax, so that a typo is found before
/// a run starts rather than after it ends (values it uses are checked when it renders).
pub fn check_template(path: &Path) -> Result<(), ReportError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ReportError::ReadTemplate { path: path.to_owned(), source })?;
    let env = minijinja::Environment::new();
    env.template_from_str(&text).map(|_| ()).map_err(|source| ReportError::Template {
        path: path.to_owned(),
        excerpt: None,
        source,
    })
}

/// Writes `summary.json`, `artifacts.json`, `report.html` and `report.md` into the run
/// directory, `report.md` from `template` when given (else the built-in one). A broken
/// template fails last, after every other file is written, and leaves no `report.md`.
pub fn write_all(run_dir: &Path, s: &Summary, template: Option<&Path>) -> Result<(), ReportError> {
    let write = |name: &str, bytes: &[u8]| {
        let path = run_dir.join(name);
        std::fs::write(&path, bytes).map_err(|source| ReportError::Write { path, source })
    };
    write(layout::SUMMARY, &pretty_json(s))?;
    write(layout::ARTIFACTS_INDEX, &pretty_json(&s.artifacts))?;
    write(layout::REPORT_HTML, render_html(s, run_dir)?.as_bytes())?;
    let markdown = match template {
        None => render_markdown(s, run_dir)?,
        Some(path) => {
            let source = std::fs::read_to_string(path)
                .map_err(|source| ReportError::ReadTemplate { path: path.to_owned(), source });
            match source.and_then(|text| render_markdown_with(s, run_dir, path, &text)) {
                Ok(md) => md,
                Err(e) => {
                    // A report.md left by an earlier finish of this run would be out of date.
                    let _ = std::fs::remove_file(run_dir.join(layout::REPORT));
                    return Err(e);
                }
            }
        }
    };
    write(layout::REPORT, markdown.as_bytes())
}

/// Pretty JSON with a final newline, as every file orchestra writes for people.
pub fn pretty_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).expect("proto types always serialize");
    out.push(b'\n');
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use orchestra_proto::plan::{Plan, RunOptions};
    use orchestra_proto::{AttemptRecord, Failure, RunId, RunStatus, TaskId, TaskSpec, TraceId};

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_millis(1_764_065_277_000 + ms)
    }

    fn attempt(n: u32, start: u64, end: u64, failure: Option<Failure>) -> AttemptRecord {
        AttemptRecord {
            attempt: n,
            dispatched_at: at(start),
            worker_id: Some("w-1".into()),
            started_at: Some(at(start)),
            finished_at: Some(at(end)),
            exit_code: Some(failure.as_ref().and_then(|f| f.exit_code).unwrap_or(0)),
            signal: None,
            succeeded: failure.is_none(),
            failure,
            claude: None,
        }
    }

    /// The fixed run of the golden files: one task retried then succeeded with an artifact,
    /// one failed for good, one skipped after it.
    pub(crate) fn golden_summary() -> Summary {
        let id = |s: &str| TaskId::new_unchecked(s);
        let plan = Plan {
            name: "golden".into(),
            goal: None,
            tasks: vec![
                TaskSpec::exec(id("build"), "make", &[]),
                TaskSpec { timeout_ms: 30_000, ..TaskSpec::exec(id("test"), "make", &["test"]) },
                TaskSpec {
                    depends_on: vec![id("test"), id("build")],
                    ..TaskSpec::exec(id("ship"), "true", &[])
                },
            ],
        };
        let run = RunRecord {
            run_id: RunId::new_unchecked("20251125T100757Z-a1b2c3"),
            trace_id: TraceId::new_unchecked("4bf92f3577b34da6a3ce929d0e0e4736"),
            status: RunStatus::Failed,
            plan,
            options: RunOptions {
                max_parallel: 2,
                pool: "default".into(),
                dry_run: false,
                output_cap_bytes: 1024,
                kill_grace_ms: 100,
                max_tasks: 10,
                max_llm_calls: 4,
                max_cost_usd: Some(1.0),
            },
            created_at: at(0),
            finished_at: Some(at(2500)),
            seed: 1,
            planning: Some(orchestra_proto::PlanningReport {
                backend: "claude-code".into(),
                model: Some("sonnet".into()),
                prompt_version: "0123456789ab".into(),
                cache_key: "ab".repeat(32),
                cached: false,
                calls: (1..=2)
                    .map(|round| orchestra_proto::LlmCall {
                        round,
                        started_at: at(0),
                        latency_ms: 700,
                        input_tokens: 2000,
                        output_tokens: 300,
                        cost_usd: 0.0125,
                        cost_reported: true,
                        request: "Goal: ship it".into(),
                        answer: "{}".into(),
                        outcome: orchestra_proto::CallOutcome::Accepted {},
                    })
                    .collect(),
            }),
        };
        let exit = |code| {
            Failure::new(FailureKind::ExitCode, format!("`make` exited with code {code}"))
                .with_exit_code(code)
        };
        let mut build = TaskRecord::new(id("build"));
        build.status = TaskStatus::Succeeded;
        build.attempts = vec![attempt(1, 0, 100, Some(exit(2))), attempt(2, 600, 900, None)];
        build.artifacts = vec![ArtifactRecord {
            task: id("build"),
            path: "app".into(),
            size: 3,
            sha256: "ab".repeat(32),
        }];
        let mut test = TaskRecord::new(id("test"));
        test.status = TaskStatus::Failed;
        let mut t1 = attempt(1, 0, 2000, Some(exit(1)));
        t1.worker_id = Some("w-2".into());
        test.attempts = vec![t1];
        let mut ship = TaskRecord::new(id("ship"));
        ship.status = TaskStatus::Skipped;
        ship.reason = Some("dependency `test` failed".into());
        summarize(&run, &[ship, test, build], at(9999))
    }

    /// A run directory for the golden run: stderr of the failed `test` attempt.
    pub(crate) fn golden_run_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tasks/test/1")).unwrap();
        std::fs::write(dir.path().join("tasks/test/1/stderr"), "1 test failed\nline 2\n").unwrap();
        dir
    }

    #[test]
    fn golden_summary_and_report() {
        let s = golden_summary();
        assert_eq!(s.totals.retries, 1);
        assert_eq!(s.failures_by_kind[&FailureKind::ExitCode], 2);
        assert_eq!(s.tasks[2].depends_on.len(), 2);
        insta::assert_json_snapshot!("golden_summary", s);
        let dir = golden_run_dir();
        insta::assert_snapshot!("golden_report", render_markdown(&s, dir.path()).unwrap());
    }

    #[test]
    fn golden_html() {
        let s = golden_summary();
        let dir = golden_run_dir();
        let html = render_html(&s, dir.path()).unwrap();
        assert!(html.len() < 100_000, "report.html is {} bytes", html.len());
        for needle in [
            "id=\"outcome\"",
            "id=\"metrics\"",
            "id=\"dag\"",
            "id=\"timeline\"",
            "id=\"tasks\"",
            "id=\"artifacts\"",
            "id=\"errors\"",
            "id=\"protections\"",
            "<g class=\"task\" data-task=\"ship\" data-status=\"skipped\"",
            "<rect class=\"attempt\" data-task=\"build\" data-attempt=\"2\"",
        ] {
            assert!(html.contains(needle), "{needle} missing");
        }
        for banned in ["<script", "<link", "<img", "<iframe", "@import", "url(h", "url(/", "src="] {
            assert!(!html.contains(banned), "{banned} in a self-contained report");
        }
        insta::assert_snapshot!("golden_report_html", html);
    }

    #[test]
    fn write_all_writes_every_file_even_when_the_template_is_broken() {
        let s = golden_summary();
        let dir = golden_run_dir();
        let tpl = dir.path().join("broken.md.j2");
        std::fs::write(&tpl, "# {{ summary.name }\n").unwrap();
        let err = write_all(dir.path(), &s, Some(&tpl)).unwrap_err();
        assert!(err.is_template());
        let msg = err.to_string();
        assert!(msg.contains("broken.md.j2"), "{msg}");
        for f in [layout::SUMMARY, layout::ARTIFACTS_INDEX, layout::REPORT_HTML] {
            assert!(dir.path().join(f).is_file(), "{f} not written");
        }
        assert!(!dir.path().join(layout::REPORT).exists());

        std::fs::write(&tpl, "{{ summary.name }}: {{ headline }}\n").unwrap();
        write_all(dir.path(), &s, Some(&tpl)).unwrap();
        let md = std::fs::read_to_string(dir.path().join(layout::REPORT)).unwrap();
        assert_eq!(
            md,
            "golden: run failed: 1/3 tasks succeeded in 2.50s, 1 failed, 1 skipped (1 retry)\n"
        );

        let missing = dir.path().join("missing.j2");
        let err = write_all(dir.path(), &s, Some(&missing)).unwrap_err();
        assert!(matches!(err, ReportError::ReadTemplate { .. }), "{err:?}");
    }

    #[test]
    fn percentiles_nearest_rank() {
        let check = |mut v: Vec<u64>, p50, p95, mean: f64| {
            let s = stats(&mut v);
            assert_eq!((s.p50, s.p95), (p50, p95), "{v:?}");
            assert!((s.mean - mean).abs() < 1e-9);
        };
        check(vec![5], 5, 5, 5.0);
        check(vec![1, 2], 1, 2, 1.5);
        check((1..=100).rev().collect(), 50, 95, 50.5);
        check(vec![10, 10, 10, 1000], 10, 1000, 257.5);
        assert_eq!(stats(&mut []).count, 0);
    }

    #[test]
    fn durations_for_people() {
        let check = |ms, expect: &str| assert_eq!(fmt_ms(ms), expect, "{ms}");
        check(0, "0ms");
        check(999, "999ms");
        check(1000, "1.00s");
        check(2500, "2.50s");
        check(59_999, "60.00s");
        check(60_000, "1m");
        check(125_000, "2m05s");
        check(3_600_000, "1h");
        check(3_720_000, "1h02m");
    }

    #[test]
    fn sizes_for_people() {
        let check = |n, expect: &str| assert_eq!(fmt_bytes(n), expect, "{n}");
        check(0, "0 B");
        check(1023, "1023 B");
        check(1024, "1 KiB");
        check(1536, "1.5 KiB");
        check(1 << 20, "1 MiB");
        check(5 << 30, "5 GiB");
        check(3 << 40, "3 TiB");
        check(2048 << 40, "2048 TiB");
    }

    #[test]
    fn protections_say_what_is_not_active() {
        let s = golden_summary();
        let active: Vec<_> = s.protections.iter().map(|p| (p.name.as_str(), p.active)).collect();
        assert_eq!(
            active,
            [
                ("process_group", true),
                ("clean_env", true),
                ("workspace", true),
                ("timeout", true),
                ("output_cap", true),
                ("rlimits", false),
                ("landlock", false),
                ("network", false),
            ]
        );
        let detail = |name: &str| {
            s.protections.iter().find(|p| p.name == name).map(|p| p.detail.clone()).unwrap()
        };
        assert!(
            detail("timeout").starts_with("30.00s to 10m per attempt"),
            "{}",
            detail("timeout")
        );
        assert!(detail("output_cap").starts_with("1 KiB kept"), "{}", detail("output_cap"));
        assert!(detail("process_group").contains("after 100ms"));
    }
}
