//! What a run leaves for people and machines: `summary.json`, `artifacts.json`, `report.md`.
//!
//! [`summarize`] is pure: the stored run state in, the summary out.

use orchestra_proto::summary::{
    AttemptSummary, DurationStats, LlmTotals, Summary, TaskSummary, Totals,
};
use orchestra_proto::{
    ArtifactRecord, FailureKind, RunRecord, RunStatus, Stream, TaskRecord, TaskStatus, Timestamp,
    layout,
};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// Version of the `summary.json` shape.
pub const SUMMARY_SCHEMA_VERSION: u32 = 1;

/// Builds the summary of a run from its stored records. `now` ends a run that has not finished.
pub fn summarize(run: &RunRecord, tasks: &[TaskRecord], now: Timestamp) -> Summary {
    let by_id: BTreeMap<_, _> = tasks.iter().map(|t| (t.task_id.clone(), t)).collect();
    let mut totals = Totals {
        tasks: run.plan.tasks.len() as u32,
        succeeded: 0,
        failed: 0,
        skipped: 0,
        cancelled: 0,
        unfinished: 0,
        success_rate: 0.0,
        attempts: 0,
        retries: 0,
        attempt_duration_ms: DurationStats::default(),
    };
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
    }
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

fn ms(v: u64) -> String {
    if v >= 1000 { format!("{:.2}s", v as f64 / 1000.0) } else { format!("{v}ms") }
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
        ms(s.duration_ms)
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

fn first_lines(run_dir: &Path, rel: &str, n: usize) -> Vec<String> {
    std::fs::read(run_dir.join(rel))
        .map(|b| String::from_utf8_lossy(&b).lines().take(n).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Renders `report.md`. Reads the first stderr lines of failed attempts from the run directory.
pub fn render_markdown(s: &Summary, run_dir: &Path) -> String {
    let mut md = String::new();
    let icon = match s.status {
        RunStatus::Succeeded => "✅",
        RunStatus::Failed => "❌",
        RunStatus::Cancelled => "⏹️",
        RunStatus::Running => "⏳",
    };
    let _ = writeln!(md, "# {icon} {}\n", s.name);
    let _ = writeln!(md, "**{}**\n", headline(s));
    let _ = writeln!(md, "- run: `{}`", s.run_id);
    let _ = writeln!(md, "- trace: `{}`", s.trace_id);
    let _ = writeln!(md, "- started: {}", s.started_at.rfc3339());
    if s.dry_run {
        let _ = writeln!(md, "- dry run: nothing was spawned");
    }
    let t = &s.totals;
    let d = &t.attempt_duration_ms;
    let _ = writeln!(md, "\n## Metrics\n");
    let _ = writeln!(md, "| success rate | attempts | retries | mean | p50 | p95 | max |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    let _ = writeln!(
        md,
        "| {:.0}% | {} | {} | {} | {} | {} | {} |",
        t.success_rate * 100.0,
        t.attempts,
        t.retries,
        ms(d.mean.round() as u64),
        ms(d.p50),
        ms(d.p95),
        ms(d.max)
    );
    if let Some(l) = &s.llm {
        let _ = writeln!(md, "\n## Model use\n");
        let _ = writeln!(
            md,
            "| planning | calls | repair rounds | claude attempts | tokens in | tokens out | cost |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        let planning = match (&l.backend, &l.model) {
            (Some(b), _) if l.plan_cached => format!("{b} (plan from cache)"),
            (Some(b), Some(m)) => format!("{b} `{m}`"),
            (Some(b), None) => b.clone(),
            (None, _) => "explicit tasks".into(),
        };
        let _ = writeln!(
            md,
            "| {planning} | {} | {} | {} | {} | {} | ${:.4} (planning ${:.4}, claude ${:.4}) |",
            l.planning_calls,
            l.repair_rounds,
            l.claude_attempts,
            l.input_tokens,
            l.output_tokens,
            l.cost_usd,
            l.planning_cost_usd,
            l.claude_cost_usd
        );
    }
    let _ = writeln!(md, "\n## Tasks\n");
    let _ = writeln!(md, "| task | status | attempts | duration | exit | note |");
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for task in &s.tasks {
        let last = task.attempts.last();
        let exit = last
            .and_then(|a| {
                a.exit_code.map(|c| c.to_string()).or(a.signal.map(|sig| format!("signal {sig}")))
            })
            .unwrap_or_default();
        let note = task
            .reason
            .clone()
            .or_else(|| last.and_then(|a| a.failure.as_ref()).map(|f| f.message.clone()))
            .unwrap_or_default()
            .replace('|', "\\|");
        let _ = writeln!(
            md,
            "| `{}` | {} | {} | {} | {} | {} |",
            task.id,
            task.status.as_str(),
            task.attempts.len(),
            ms(task.duration_ms),
            exit,
            note
        );
    }
    let _ = writeln!(md, "\n## Artifacts\n");
    if s.artifacts.is_empty() {
        let _ = writeln!(md, "none");
    } else {
        let _ = writeln!(md, "| artifact | task | size | sha256 |");
        let _ = writeln!(md, "|---|---|---|---|");
        for a in &s.artifacts {
            let _ = writeln!(
                md,
                "| `artifacts/{}/{}` | `{}` | {} B | `{}` |",
                a.task, a.path, a.task, a.size, a.sha256
            );
        }
    }
    let _ = writeln!(md, "\n## Errors\n");
    if s.failures_by_kind.is_empty() {
        let _ = writeln!(md, "none");
    }
    for kind in s.failures_by_kind.keys() {
        let _ = writeln!(md, "### {kind} ({})\n", s.failures_by_kind[kind]);
        for task in &s.tasks {
            for a in &task.attempts {
                let Some(f) = a.failure.as_ref().filter(|f| f.kind == *kind) else { continue };
                let link = if run_dir.join(&a.stderr).is_file() {
                    format!(" ([stderr]({}))", a.stderr)
                } else {
                    String::new()
                };
                let _ = writeln!(md, "- `{}` attempt {}: {}{link}", task.id, a.attempt, f.message);
                let lines = first_lines(run_dir, &a.stderr, 5);
                if !lines.is_empty() {
                    let _ = writeln!(md, "\n  ```text");
                    for l in lines {
                        let _ = writeln!(md, "  {l}");
                    }
                    let _ = writeln!(md, "  ```\n");
                }
            }
        }
    }
    md
}

/// The plan's DAG as a Mermaid flowchart; with statuses, nodes are coloured by them.
pub fn plan_mermaid(
    plan: &orchestra_proto::Plan,
    statuses: Option<&BTreeMap<orchestra_proto::TaskId, TaskStatus>>,
) -> String {
    let index: BTreeMap<_, _> = plan.tasks.iter().enumerate().map(|(i, t)| (&t.id, i)).collect();
    let mut out = String::from("flowchart LR\n");
    for (i, t) in plan.tasks.iter().enumerate() {
        let tool = match &t.tool {
            orchestra_proto::Tool::Exec(e) => e.program.clone(),
            orchestra_proto::Tool::Claude(_) => "claude".to_owned(),
        };
        let label = format!("{}<br/><small>{}</small>", t.id, mermaid_escape(&tool));
        let _ = writeln!(out, "  t{i}[\"{label}\"]");
    }
    for (i, t) in plan.tasks.iter().enumerate() {
        for d in &t.depends_on {
            if let Some(j) = index.get(d) {
                let _ = writeln!(out, "  t{j} --> t{i}");
            }
        }
    }
    if let Some(statuses) = statuses {
        for (class, fill) in [
            ("succeeded", "#d4f7d4"),
            ("failed", "#f7d4d4"),
            ("skipped", "#eeeeee"),
            ("cancelled", "#f7ecd4"),
            ("pending", "#ffffff"),
        ] {
            let _ = writeln!(out, "  classDef {class} fill:{fill},stroke:#555");
        }
        for (i, t) in plan.tasks.iter().enumerate() {
            let class = match statuses.get(&t.id) {
                Some(TaskStatus::Succeeded) => "succeeded",
                Some(TaskStatus::Failed) => "failed",
                Some(TaskStatus::Skipped) => "skipped",
                Some(TaskStatus::Cancelled) => "cancelled",
                _ => "pending",
            };
            let _ = writeln!(out, "  class t{i} {class}");
        }
    }
    out
}

fn mermaid_escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '"' => "#quot;".to_owned(),
            '<' => "#lt;".to_owned(),
            '>' => "#gt;".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

/// Writes `summary.json`, `artifacts.json` and `report.md` into the run directory.
pub fn write_all(run_dir: &Path, s: &Summary) -> std::io::Result<()> {
    std::fs::write(run_dir.join(layout::SUMMARY), pretty_json(s))?;
    std::fs::write(run_dir.join(layout::ARTIFACTS_INDEX), pretty_json(&s.artifacts))?;
    std::fs::write(run_dir.join(layout::REPORT), render_markdown(s, run_dir))?;
    Ok(())
}

/// Pretty JSON with a final newline, as every file orchestra writes for people.
pub fn pretty_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).expect("proto types always serialize");
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestra_proto::plan::{Plan, RunOptions};
    use orchestra_proto::{AttemptRecord, Failure, RunId, TaskId, TaskSpec, TraceId};

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

    /// A fixed run: one task retried then succeeded with an artifact, one failed for good,
    /// one skipped. Its summary.json and report.md are golden files.
    #[test]
    fn golden_summary_and_report() {
        let id = |s: &str| TaskId::new_unchecked(s);
        let plan = Plan {
            name: "golden".into(),
            goal: None,
            tasks: vec![
                TaskSpec::exec(id("build"), "make", &[]),
                TaskSpec::exec(id("test"), "make", &["test"]),
                TaskSpec {
                    depends_on: vec![id("test")],
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
        test.attempts = vec![attempt(1, 0, 2000, Some(exit(1)))];
        let mut ship = TaskRecord::new(id("ship"));
        ship.status = TaskStatus::Skipped;
        ship.reason = Some("dependency `test` failed".into());
        let s = summarize(&run, &[ship, test, build], at(9999));
        assert_eq!(s.totals.retries, 1);
        assert_eq!(s.failures_by_kind[&FailureKind::ExitCode], 2);
        insta::assert_json_snapshot!("golden_summary", s);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tasks/test/1")).unwrap();
        std::fs::write(dir.path().join("tasks/test/1/stderr"), "1 test failed\nline 2\n").unwrap();
        insta::assert_snapshot!("golden_report", render_markdown(&s, dir.path()));
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
}
