//! `orchestra eval`: runs scenarios again and again and checks every run against the
//! scenario's `expect:` block.
//!
//! The pure core: [`judge`] turns what one run left behind ([`Observed`]) into pass/fail
//! [`Check`]s, [`aggregate`] turns a scenario's trials into its numbers (pass rate with a 95%
//! Wilson interval, durations, cost per verified success, counted failure reasons), and
//! [`render_table`] / [`render_markdown`] show them. The shell ([`command`]) finds the
//! scenarios, gives every trial its own runs directory (`<out>/<eval-id>/<scenario>/<trial>/`),
//! runs it through `orchestra run`'s own code in this process, then reads the run's
//! `summary.json` and artifacts.
//!
//! What `eval.json` holds ([`EvalReport`] and its parts) is defined in
//! `orchestra_proto::eval`: it leaves the process.
//!
//! Invariant: trials print nothing on stdout; eval's stdout carries only its table, or
//! `eval.json` with `--json`.

use crate::cli::{Cli, Command, EvalArgs};
use crate::commands::usage;
use crate::exit;
use crate::llm::LlmChoice;
use crate::report::pretty_json;
use crate::settings::{self, ExpectFile, ScenarioFile};
use anyhow::Context as _;
use clap::Parser as _;
use orchestra_proto::eval::{
    Check, EvalReport, FailureCount, Interval, SCHEMA_VERSION, ScenarioResult, Spread, Trial,
};
use orchestra_proto::summary::Summary;
use orchestra_proto::{PlanningReport, RunId, Timestamp, layout};
use regex::{Regex, RegexBuilder};
use sha2::{Digest, Sha256};
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The report files in an eval directory.
pub const EVAL_JSON: &str = "eval.json";
pub const EVAL_MD: &str = "eval.md";
/// Artifacts larger than this are not searched for `contains` or `matches`.
const MAX_SEARCHED_BYTES: u64 = 64 << 20;
/// Most memory a compiled `matches` pattern may take; over it, the pattern is rejected. Room
/// for `\w{80}` (Unicode classes are large) or `.{4000}`, not for `(a{1000}){1000}`.
pub const PATTERN_SIZE_LIMIT: usize = 4 << 20;
/// z for a two-sided 95% interval.
const Z95: f64 = 1.959_964;

// ---------------------------------------------------------------------------------------------
// The pure core

/// What one trial left behind, read from its run directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub exit_code: u8,
    /// `None` when the run wrote no summary (its plan was rejected).
    pub summary: Option<Summary>,
    /// Why there is no summary, in words.
    pub no_summary: String,
    /// Model spending when there is no summary (the rejected plan's calls).
    pub unsummarized_cost_usd: f64,
    /// One per `expect.artifacts` entry, in order.
    pub artifacts: Vec<ArtifactFacts>,
}

/// An expected artifact as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactFacts {
    /// Listed in the summary's artifacts.
    pub listed: bool,
    pub file: FileFacts,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileFacts {
    Missing,
    Unreadable(String),
    /// `bytes` only when a content check needs them (and the file is not too large).
    Present {
        sha256: String,
        bytes: Option<Vec<u8>>,
        size: u64,
    },
}

impl Observed {
    pub fn cost_usd(&self) -> f64 {
        match &self.summary {
            Some(s) => s.llm.as_ref().map_or(0.0, |l| l.cost_usd),
            None => self.unsummarized_cost_usd,
        }
    }
}

/// Checks one trial against the expectations: one [`Check`] per expectation, or a single
/// failed `run` check when the run left no summary.
pub fn judge(expect: &ExpectFile, obs: &Observed) -> Vec<Check> {
    let Some(summary) = &obs.summary else {
        return vec![fail("run", obs.no_summary.clone())];
    };
    let mut checks = Vec::new();
    if let Some(want) = expect.status {
        let want = want.status();
        checks.push(if summary.status == want {
            pass("status", format!("status {}", want.as_str()))
        } else {
            fail(
                "status",
                format!("status is {}, expected {}", summary.status.as_str(), want.as_str()),
            )
        });
    }
    for (id, want) in &expect.tasks {
        let want = want.status();
        let name = format!("task {id}");
        let found = summary.tasks.iter().find(|t| t.id.as_str() == id);
        checks.push(match found {
            Some(t) if t.status == want => pass(name, format!("task `{id}` {}", want.as_str())),
            Some(t) => fail(
                name,
                format!("task `{id}` is {}, expected {}", t.status.as_str(), want.as_str()),
            ),
            None => fail(name, format!("task `{id}` is not in the run's plan")),
        });
    }
    for (a, facts) in expect.artifacts.iter().zip(&obs.artifacts) {
        checks.push(judge_artifact(a, facts));
    }
    if let Some(bound) = expect.max_duration {
        let took = Duration::from_millis(summary.duration_ms);
        let detail = format!("took {}", secs(summary.duration_ms));
        checks.push(if took <= bound.0 {
            pass("max_duration", format!("{detail}, within {bound}"))
        } else {
            fail("max_duration", format!("{detail}, over the {bound} bound"))
        });
    }
    if let Some(bound) = expect.max_cost_usd {
        let cost = obs.cost_usd();
        checks.push(if cost <= bound {
            pass("max_cost_usd", format!("spent {}, within ${bound}", usd(cost)))
        } else {
            fail("max_cost_usd", format!("spent {}, over the ${bound} bound", usd(cost)))
        });
    }
    checks
}

fn judge_artifact(a: &settings::ExpectArtifactFile, facts: &ArtifactFacts) -> Check {
    let name = format!("artifact {}", a.path);
    let what = format!("artifact `{}`", a.path);
    let (sha256, bytes, size) = match (&facts.file, facts.listed) {
        (FileFacts::Missing, false) => {
            return fail(name, format!("{what} was not collected (not in artifacts.json)"));
        }
        (FileFacts::Missing, true) => {
            return fail(name, format!("{what} is listed but missing from artifacts/"));
        }
        (FileFacts::Unreadable(why), _) => {
            return fail(name, format!("{what} is unreadable: {why}"));
        }
        (FileFacts::Present { .. }, false) => {
            return fail(name, format!("{what} is in artifacts/ but not in artifacts.json"));
        }
        (FileFacts::Present { sha256, bytes, size }, true) => (sha256, bytes, *size),
    };
    if let Some(want) = &a.sha256
        && !want.eq_ignore_ascii_case(sha256)
    {
        return fail(
            name,
            format!("{what} has sha256 {}, expected {}", short(sha256), short(want)),
        );
    }
    let needs_text = a.contains.is_some() || a.matches.is_some();
    let text = match bytes {
        Some(b) => String::from_utf8_lossy(b),
        None if needs_text => {
            return fail(name, format!("{what} is too large to search ({size} bytes)"));
        }
        None => "".into(),
    };
    if let Some(want) = &a.contains
        && !text.contains(want.as_str())
    {
        return fail(name, format!("{what} does not contain {}", quoted(want)));
    }
    if let Some(re) = &a.matches {
        match pattern(re) {
            Ok(p) if p.is_match(&text) => {}
            Ok(_) => return fail(name, format!("{what} does not match /{re}/")),
            Err(e) => return fail(name, format!("invalid pattern /{re}/: {e}")),
        }
    }
    pass(name, format!("{what} present ({size} bytes)"))
}

/// Compiles an `expect.artifacts[].matches` pattern. The syntax is the `regex` crate's, in
/// multi-line mode: `^` and `$` match at the start and end of every line (as in `grep`), and a
/// line may end in `\r\n`. Matching takes time linear in the text; a pattern that compiles to
/// more than [`PATTERN_SIZE_LIMIT`] bytes is an error.
pub fn pattern(source: &str) -> Result<Regex, PatternError> {
    RegexBuilder::new(source)
        .multi_line(true)
        .crlf(true)
        .size_limit(PATTERN_SIZE_LIMIT)
        .build()
        .map_err(|e| PatternError::new(source, &e))
}

/// Why a `matches` pattern does not compile, in one line: the `regex` crate's message and,
/// for a one-line pattern, where in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}{}", .position.map(|p| format!(" at position {p}")).unwrap_or_default())]
pub struct PatternError {
    pub reason: String,
    /// 1-based character position in the pattern.
    pub position: Option<usize>,
}

impl PatternError {
    fn new(source: &str, err: &regex::Error) -> Self {
        let text = match err {
            regex::Error::Syntax(text) => text,
            regex::Error::CompiledTooBig(limit) => {
                let reason = format!(
                    "too large: compiled, it would take over {} MiB (counted repetitions \
                     multiply its size)",
                    limit >> 20
                );
                return Self { reason, position: None };
            }
            other => return Self { reason: other.to_string(), position: None },
        };
        // A syntax error reads `regex parse error:`, the pattern, a line of `^` under the
        // culprit (both indented by 4 for a one-line pattern), then `error: <reason>`.
        let lines: Vec<&str> = text.lines().collect();
        let reason = match lines.last().and_then(|l| l.strip_prefix("error: ")) {
            Some(reason) => reason.to_owned(),
            None => lines.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" "),
        };
        let position = match lines.as_slice() {
            [_, _, carets, _] if !source.contains('\n') => carets
                .strip_prefix("    ")
                .filter(|c| c.trim_start().starts_with('^'))
                .map(|c| c.len() - c.trim_start().len() + 1),
            _ => None,
        };
        Self { reason, position }
    }
}

fn pass(check: impl Into<String>, detail: String) -> Check {
    Check { check: check.into(), passed: true, detail }
}

fn fail(check: impl Into<String>, detail: String) -> Check {
    Check { check: check.into(), passed: false, detail }
}

/// A digest cut for a one-line message.
fn short(digest: &str) -> String {
    if digest.len() > 16 { format!("{}…", &digest[..16]) } else { digest.to_owned() }
}

/// A text quoted on one line, cut when long.
fn quoted(text: &str) -> String {
    let one_line: String = text.chars().take(80).collect();
    let more = if text.chars().count() > 80 { "…" } else { "" };
    format!("{:?}{more}", one_line)
}

/// The 95% Wilson score interval of `passes` successes in `trials`; `[0, 1]` for no trials.
pub fn wilson(passes: u32, trials: u32) -> Interval {
    if trials == 0 {
        return Interval { low: 0.0, high: 1.0 };
    }
    let n = f64::from(trials);
    let p = f64::from(passes) / n;
    let z2 = Z95 * Z95;
    let denom = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denom;
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denom;
    Interval { low: round4((center - half).max(0.0)), high: round4((center + half).min(1.0)) }
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// Mean, min and max of durations; zeros for none.
pub fn spread(durations: &[u64]) -> Spread {
    let (Some(&min), Some(&max)) = (durations.iter().min(), durations.iter().max()) else {
        return Spread::default();
    };
    let mean = durations.iter().map(|&d| d as f64).sum::<f64>() / durations.len() as f64;
    Spread { mean: (mean * 10.0).round() / 10.0, min, max }
}

/// Reasons of failed checks, counted, most frequent first (ties in order of appearance).
pub fn count_failures(trials: &[Trial]) -> Vec<FailureCount> {
    let mut counts: Vec<FailureCount> = Vec::new();
    for check in trials.iter().flat_map(|t| &t.checks).filter(|c| !c.passed) {
        match counts.iter_mut().find(|f| f.reason == check.detail) {
            Some(f) => f.count += 1,
            None => counts.push(FailureCount { reason: check.detail.clone(), count: 1 }),
        }
    }
    // stable: equal counts keep their order of appearance
    counts.sort_by_key(|f| std::cmp::Reverse(f.count));
    counts
}

/// A scenario's numbers from its trials.
pub fn aggregate(name: &str, file: &str, runs: Vec<Trial>) -> ScenarioResult {
    let trials = runs.len() as u32;
    let passes = runs.iter().filter(|t| t.passed).count() as u32;
    let cost: f64 = runs.iter().map(|t| t.cost_usd).sum();
    let durations: Vec<u64> = runs.iter().map(|t| t.duration_ms).collect();
    ScenarioResult {
        name: name.to_owned(),
        file: file.to_owned(),
        trials,
        passes,
        pass_rate: if trials == 0 { 0.0 } else { round4(f64::from(passes) / f64::from(trials)) },
        pass_rate_ci95: wilson(passes, trials),
        passed: trials > 0 && passes == trials,
        duration_ms: spread(&durations),
        cost_usd: cost,
        cost_per_success_usd: (passes > 0).then(|| cost / f64::from(passes)),
        failures: count_failures(&runs),
        runs,
    }
}

/// The whole eval from its scenarios.
pub fn report(
    eval_id: &str,
    started_at: Timestamp,
    duration_ms: u64,
    repeat: u32,
    llm: Option<String>,
    model: Option<String>,
    scenarios: Vec<ScenarioResult>,
) -> EvalReport {
    let passed = scenarios.iter().filter(|s| s.passed).count() as u32;
    EvalReport {
        schema_version: SCHEMA_VERSION,
        eval_id: eval_id.to_owned(),
        started_at,
        duration_ms,
        repeat,
        llm,
        model,
        passed: passed as usize == scenarios.len(),
        scenarios_passed: passed,
        scenarios_total: scenarios.len() as u32,
        scenarios,
    }
}

fn secs(ms: u64) -> String {
    format!("{:.2}s", ms as f64 / 1000.0)
}

fn usd(x: f64) -> String {
    format!("${x:.4}")
}

fn percent(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

fn interval(i: Interval) -> String {
    format!("{:.0}–{:.0}%", i.low * 100.0, i.high * 100.0)
}

fn verdict(passed: bool) -> &'static str {
    if passed { "pass" } else { "FAIL" }
}

/// The terminal table: one line per scenario, then the counted failure reasons.
pub fn render_table(r: &EvalReport, eval_dir: &Path) -> String {
    let rows: Vec<[String; 7]> = r
        .scenarios
        .iter()
        .map(|s| {
            [
                s.name.clone(),
                verdict(s.passed).to_owned(),
                format!("{}/{}", s.passes, s.trials),
                percent(s.pass_rate),
                interval(s.pass_rate_ci95),
                format!(
                    "{} ({}–{})",
                    secs(s.duration_ms.mean.round() as u64),
                    secs(s.duration_ms.min),
                    secs(s.duration_ms.max)
                ),
                s.cost_per_success_usd.map_or("-".to_owned(), usd),
            ]
        })
        .collect();
    let head = [
        "scenario",
        "result",
        "passes",
        "rate",
        "95% interval",
        "duration mean (min–max)",
        "cost/success",
    ];
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            let pad = w - cell.chars().count();
            out.push_str(cell);
            if i + 1 < cells.len() {
                out.push_str(&" ".repeat(pad));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(&head);
    for row in &rows {
        out.push_str(&line(&row.iter().map(String::as_str).collect::<Vec<_>>()));
    }
    for s in r.scenarios.iter().filter(|s| !s.failures.is_empty()) {
        out.push('\n');
        let _ = writeln!(out, "{}:", s.name);
        for f in &s.failures {
            let _ = writeln!(out, "  {}× {}", f.count, f.reason);
        }
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "{}/{} scenarios passed every trial ({} trial{} each) · {}",
        r.scenarios_passed,
        r.scenarios_total,
        r.repeat,
        if r.repeat == 1 { "" } else { "s" },
        eval_dir.join(EVAL_MD).display()
    );
    out
}

/// `eval.md`: the outcome, a table of scenarios, then per scenario a table of its trials and
/// its counted failures. Paths are shown relative to the eval directory.
pub fn render_markdown(r: &EvalReport, eval_dir: &Path) -> String {
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    let trials: u32 = r.scenarios.iter().map(|s| s.trials).sum();
    let passes: u32 = r.scenarios.iter().map(|s| s.passes).sum();
    let mut out = format!("# Eval `{}`\n\n", r.eval_id);
    let _ = writeln!(
        out,
        "**{} — {} of {} scenarios passed every trial** ({passes} of {trials} trials passed; \
         {} trial{} per scenario; {})",
        if r.passed { "passed" } else { "failed" },
        r.scenarios_passed,
        r.scenarios_total,
        r.repeat,
        if r.repeat == 1 { "" } else { "s" },
        secs(r.duration_ms)
    );
    if let Some(llm) = &r.llm {
        let model = r.model.as_deref().map(|m| format!(", model `{m}`")).unwrap_or_default();
        let _ = writeln!(out, "\nPlanning backend: `{}`{model}", cell(llm));
    }
    out.push_str(
        "\n| scenario | result | passes | pass rate (95% interval) | duration mean (min–max) \
         | cost | cost per success |\n|---|---|---|---|---|---|---|\n",
    );
    for s in &r.scenarios {
        let _ = writeln!(
            out,
            "| [{name}](#{anchor}) | {} | {}/{} | {} ({}) | {} ({}–{}) | {} | {} |",
            verdict(s.passed),
            s.passes,
            s.trials,
            percent(s.pass_rate),
            interval(s.pass_rate_ci95),
            secs(s.duration_ms.mean.round() as u64),
            secs(s.duration_ms.min),
            secs(s.duration_ms.max),
            usd(s.cost_usd),
            s.cost_per_success_usd.map_or("–".to_owned(), usd),
            name = cell(&s.name),
            anchor = s.name.to_ascii_lowercase(),
        );
    }
    for s in &r.scenarios {
        let _ = write!(out, "\n## {}\n\n`{}`\n\n", s.name, cell(&s.file));
        out.push_str(
            "| trial | result | status | duration | cost | checks passed | run directory |\n\
             |---|---|---|---|---|---|---|\n",
        );
        for t in &s.runs {
            let ok = t.checks.iter().filter(|c| c.passed).count();
            let dir = t.run_dir.as_deref().map(|d| {
                Path::new(d)
                    .strip_prefix(eval_dir)
                    .map_or(d.to_owned(), |p| p.display().to_string())
            });
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {ok}/{} | {} |",
                t.trial,
                verdict(t.passed),
                t.status.map_or("no run", |s| s.as_str()),
                secs(t.duration_ms),
                usd(t.cost_usd),
                t.checks.len(),
                dir.map_or("–".to_owned(), |d| format!("`{}`", cell(&d))),
            );
        }
        if s.failures.is_empty() {
            out.push_str("\nEvery check passed.\n");
        } else {
            out.push_str("\nFailed checks:\n\n");
            for f in &s.failures {
                let _ = writeln!(out, "- {}× {}", f.count, f.reason);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The shell

/// A scenario to evaluate.
struct Entry {
    file: PathBuf,
    scenario: ScenarioFile,
    expect: ExpectFile,
}

/// Runs `orchestra eval`; returns the exit code.
pub async fn command(cli: &Cli, args: &EvalArgs) -> anyhow::Result<u8> {
    let entries = discover(&args.paths, cli.quiet)?;
    preflight(cli, args, &entries)?;
    let started = Instant::now();
    let started_at = Timestamp::now();
    let eval_id = RunId::generate(started_at).as_str().to_owned();
    let eval_dir = args.out.join(&eval_id);
    std::fs::create_dir_all(&eval_dir)
        .with_context(|| format!("cannot create the eval directory `{}`", eval_dir.display()))?;
    if !cli.quiet {
        eprintln!(
            "eval {eval_id}: {} scenario{} × {} trial{}",
            entries.len(),
            if entries.len() == 1 { "" } else { "s" },
            args.repeat,
            if args.repeat == 1 { "" } else { "s" },
        );
    }
    let mut results = Vec::with_capacity(entries.len());
    let mut interrupted = false;
    'scenarios: for entry in &entries {
        let name = entry.scenario.name.as_str();
        let mut trials = Vec::new();
        for n in 1..=args.repeat {
            let trial_dir = eval_dir.join(name).join(n.to_string());
            std::fs::create_dir_all(&trial_dir)
                .with_context(|| format!("cannot create `{}`", trial_dir.display()))?;
            let t0 = Instant::now();
            let code = run_trial(cli, args, &entry.file, &trial_dir).await?;
            let wall = t0.elapsed();
            if code == exit::INTERRUPTED {
                interrupted = true;
            }
            let (obs, run_dir) = observe(&entry.expect, code, &trial_dir);
            let checks = judge(&entry.expect, &obs);
            let passed = obs.summary.is_some() && checks.iter().all(|c| c.passed);
            let trial = Trial {
                trial: n,
                passed,
                exit_code: code,
                run_dir: run_dir.map(|d| d.display().to_string()),
                status: obs.summary.as_ref().map(|s| s.status),
                duration_ms: obs
                    .summary
                    .as_ref()
                    .map_or(u64::try_from(wall.as_millis()).unwrap_or(u64::MAX), |s| s.duration_ms),
                cost_usd: obs.cost_usd(),
                checks,
            };
            if !cli.quiet {
                eprintln!("{}", trial_line(name, args.repeat, &trial));
            }
            trials.push(trial);
            if interrupted {
                results.push(aggregate(name, &entry.file.display().to_string(), trials));
                break 'scenarios;
            }
        }
        results.push(aggregate(name, &entry.file.display().to_string(), trials));
    }
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let report = report(
        &eval_id,
        started_at,
        duration_ms,
        args.repeat,
        args.llm.as_ref().map(choice_name),
        args.model.clone(),
        results,
    );
    let json = pretty_json(&report);
    std::fs::write(eval_dir.join(EVAL_JSON), &json)
        .with_context(|| format!("cannot write {EVAL_JSON}"))?;
    std::fs::write(eval_dir.join(EVAL_MD), render_markdown(&report, &eval_dir))
        .with_context(|| format!("cannot write {EVAL_MD}"))?;
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        if args.json {
            stdout.write_all(&json)?;
        } else {
            stdout.write_all(render_table(&report, &eval_dir).as_bytes())?;
        }
    }
    Ok(if interrupted {
        exit::INTERRUPTED
    } else if report.passed {
        exit::SUCCESS
    } else {
        exit::FAILED
    })
}

fn trial_line(name: &str, repeat: u32, t: &Trial) -> String {
    let head =
        format!("{name} {}/{repeat}: {} in {}", t.trial, verdict(t.passed), secs(t.duration_ms));
    let failed: Vec<&str> =
        t.checks.iter().filter(|c| !c.passed).map(|c| c.detail.as_str()).collect();
    if failed.is_empty() { head } else { format!("{head}: {}", failed.join("; ")) }
}

/// How `--llm` was given.
fn choice_name(c: &LlmChoice) -> String {
    match c {
        LlmChoice::Backend(b) => b.as_str().to_owned(),
        LlmChoice::Scripted(dir) => format!("scripted:{}", dir.display()),
        LlmChoice::Record(dir) => format!("record:{}", dir.display()),
    }
}

/// The scenarios named by PATHS: files as given, directories' `*.yaml`/`*.yml` scenarios that
/// have an `expect:` block (sorted by name). Every problem is a usage error.
fn discover(paths: &[PathBuf], quiet: bool) -> anyhow::Result<Vec<Entry>> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut seen = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|e| {
            usage(
                format!("cannot read `{}`: {e}", path.display()),
                Some("pass scenario files, or directories that hold them"),
            )
        })?;
        let files = if meta.is_dir() {
            let found = scenarios_in(path, quiet)?;
            if found.is_empty() {
                return Err(usage(
                    format!("no scenario with an `expect:` block in `{}`", path.display()),
                    Some("eval runs scenario files (*.yaml) that have an `expect:` block"),
                ));
            }
            found
        } else {
            vec![path.clone()]
        };
        for file in files {
            let key = std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
            let scenario = settings::load_scenario(&file)?;
            let Some(expect) = scenario.expect.clone() else {
                return Err(usage(
                    format!(
                        "`{}` has no `expect:` block: eval has nothing to check",
                        file.display()
                    ),
                    Some("add one, for example `expect: { status: succeeded }`"),
                ));
            };
            if let Some(other) = entries.iter().find(|e| e.scenario.name == scenario.name) {
                return Err(usage(
                    format!(
                        "`{}` and `{}` are both named `{}`",
                        other.file.display(),
                        file.display(),
                        scenario.name
                    ),
                    Some("give each scenario its own `name`: it names its directory in the eval"),
                ));
            }
            entries.push(Entry { file, scenario, expect });
        }
    }
    Ok(entries)
}

/// The scenario files with an `expect:` block in `dir`, sorted; other YAML files are skipped.
fn scenarios_in(dir: &Path, quiet: bool) -> anyhow::Result<Vec<PathBuf>> {
    let read = std::fs::read_dir(dir)
        .map_err(|e| usage(format!("cannot read the directory `{}`: {e}", dir.display()), None))?;
    let mut yaml: Vec<PathBuf> = read
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    yaml.sort();
    let mut out = Vec::new();
    for file in yaml {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if settings::guess_kind_str(&text) == crate::cli::FileKind::Scenario && has_expect(&text) {
            out.push(file);
        } else if !quiet {
            eprintln!("skipped {}: not a scenario with an `expect:` block", file.display());
        }
    }
    Ok(out)
}

/// Whether YAML text has a top-level `expect` key (looks at lines, not at a parse).
fn has_expect(text: &str) -> bool {
    text.lines().any(|l| l.strip_prefix("expect").is_some_and(|r| r.trim_start().starts_with(':')))
}

/// Finds the usage errors every trial would stop at before anything runs: a bad config and,
/// when a scenario is a goal, a planning backend that cannot be set up (`--llm scripted:DIR`
/// with a missing DIR, a missing API key).
fn preflight(cli: &Cli, args: &EvalArgs, entries: &[Entry]) -> anyhow::Result<()> {
    let cfg = crate::commands::load_config(cli)?;
    if entries.iter().any(|e| e.scenario.is_goal()) {
        crate::llm::planner(&cfg, args.llm.as_ref(), args.model.as_deref())?;
    }
    Ok(())
}

/// Runs one trial through `orchestra run`'s code, silenced, in `runs_dir`.
async fn run_trial(cli: &Cli, args: &EvalArgs, file: &Path, runs_dir: &Path) -> anyhow::Result<u8> {
    // Made by clap, so that every `run` flag has its default (today's and tomorrow's).
    let argv = [OsStr::new("orchestra"), OsStr::new("run"), OsStr::new("--"), file.as_os_str()];
    let mut inner = Cli::try_parse_from(argv)
        .with_context(|| format!("cannot prepare the run of `{}`", file.display()))?;
    inner.config = cli.config.clone();
    inner.verbose = cli.verbose;
    inner.quiet = true;
    let Command::Run(run) = &mut inner.command else {
        anyhow::bail!("`orchestra run` arguments did not parse as a run");
    };
    run.llm = args.llm.clone();
    run.model = args.model.clone();
    run.no_cache = !args.use_cache;
    run.common.workers = args.workers;
    run.common.runs_dir = Some(runs_dir.to_path_buf());
    run.common.json = false;
    run.common.silent = true;
    let Command::Run(run) = &inner.command else { unreachable!("matched above") };
    crate::commands::run(&inner, run).await
}

/// Reads what a trial left in `trial_dir`: the run directory's summary, planning cost and the
/// expected artifacts.
fn observe(expect: &ExpectFile, exit_code: u8, trial_dir: &Path) -> (Observed, Option<PathBuf>) {
    let run_dir = std::fs::read_dir(trial_dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.is_dir());
    let mut obs = Observed {
        exit_code,
        summary: None,
        no_summary: String::new(),
        unsummarized_cost_usd: 0.0,
        artifacts: Vec::new(),
    };
    let Some(dir) = &run_dir else {
        obs.no_summary = format!("no run: the plan was rejected (exit {exit_code})");
        return (obs, None);
    };
    match std::fs::read(dir.join(layout::SUMMARY)) {
        Ok(bytes) => match serde_json::from_slice::<Summary>(&bytes) {
            Ok(s) => obs.summary = Some(s),
            Err(e) => obs.no_summary = format!("summary.json is not valid: {e}"),
        },
        Err(_) => {
            obs.no_summary = if exit_code == exit::USAGE {
                format!("no run: the model's plan was rejected (exit {exit_code})")
            } else {
                format!("the run wrote no summary.json (exit {exit_code})")
            };
            obs.unsummarized_cost_usd = std::fs::read(dir.join(layout::PLANNING))
                .ok()
                .and_then(|b| serde_json::from_slice::<PlanningReport>(&b).ok())
                .map_or(0.0, |p| p.cost_usd());
        }
    }
    if let Some(summary) = &obs.summary {
        obs.artifacts = expect.artifacts.iter().map(|a| artifact_facts(a, summary, dir)).collect();
    }
    (obs, run_dir)
}

fn artifact_facts(
    a: &settings::ExpectArtifactFile,
    summary: &Summary,
    run_dir: &Path,
) -> ArtifactFacts {
    let Some((task, path)) = a.split_path() else {
        return ArtifactFacts { listed: false, file: FileFacts::Missing };
    };
    let listed = summary.artifacts.iter().any(|r| r.task.as_str() == task && r.path == path);
    let file = run_dir.join(layout::ARTIFACTS_DIR).join(task).join(path);
    let meta = match std::fs::metadata(&file) {
        Ok(m) if m.is_file() => m,
        Ok(_) => return ArtifactFacts { listed, file: FileFacts::Unreadable("not a file".into()) },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return ArtifactFacts { listed, file: FileFacts::Missing };
        }
        Err(e) => return ArtifactFacts { listed, file: FileFacts::Unreadable(e.to_string()) },
    };
    let wants_text = a.contains.is_some() || a.matches.is_some();
    let result = if wants_text && meta.len() <= MAX_SEARCHED_BYTES {
        std::fs::read(&file).map(|bytes| (hex::encode(Sha256::digest(&bytes)), Some(bytes)))
    } else {
        hash_file(&file).map(|digest| (digest, None))
    };
    ArtifactFacts {
        listed,
        file: match result {
            Ok((sha256, bytes)) => FileFacts::Present { sha256, bytes, size: meta.len() },
            Err(e) => FileFacts::Unreadable(e.to_string()),
        },
    }
}

fn hash_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{
        ExpectArtifactFile, ExpectedRunStatus, ExpectedTaskStatus, HumanDuration,
    };
    use orchestra_proto::RunStatus;

    /// A summary with the given run status, tasks, artifacts, duration and model cost.
    fn summary(
        status: &str,
        tasks: &[(&str, &str)],
        artifacts: &[(&str, &str)],
        duration_ms: u64,
        cost: Option<f64>,
    ) -> Summary {
        let tasks: Vec<_> = tasks
            .iter()
            .map(|(id, st)| serde_json::json!({"id": id, "status": st, "attempts": [], "duration_ms": 1}))
            .collect();
        let artifacts: Vec<_> = artifacts
            .iter()
            .map(|(task, path)| serde_json::json!({"task": task, "path": path, "size": 1, "sha256": "00"}))
            .collect();
        let mut v = serde_json::json!({
            "schema_version": 1, "run_id": "20261125T100757Z-a1b2c3", "trace_id": "0".repeat(32),
            "name": "s", "status": status, "dry_run": false, "started_at": "2026-11-25T10:07:57.000Z",
            "duration_ms": duration_ms,
            "totals": {"tasks": 0, "succeeded": 0, "failed": 0, "skipped": 0, "cancelled": 0,
                       "unfinished": 0, "success_rate": 0.0, "attempts": 0, "retries": 0,
                       "attempt_duration_ms": {"count": 0, "mean": 0.0, "p50": 0, "p95": 0, "max": 0}},
            "tasks": tasks, "artifacts": artifacts, "failures_by_kind": {},
        });
        if let Some(c) = cost {
            v["llm"] = serde_json::json!({"plan_cached": false, "planning_calls": 2, "repair_rounds": 1,
                "planning_latency_ms": 0, "claude_attempts": 0, "input_tokens": 0, "output_tokens": 0,
                "cost_usd": c, "planning_cost_usd": c, "claude_cost_usd": 0.0});
        }
        serde_json::from_value(v).unwrap()
    }

    fn observed(summary: Option<Summary>, artifacts: Vec<ArtifactFacts>) -> Observed {
        Observed {
            exit_code: 0,
            summary,
            no_summary: "no run: the plan was rejected (exit 2)".into(),
            unsummarized_cost_usd: 0.02,
            artifacts,
        }
    }

    fn artifact(path: &str) -> ExpectArtifactFile {
        ExpectArtifactFile { path: path.into(), contains: None, matches: None, sha256: None }
    }

    fn present(text: &str) -> ArtifactFacts {
        ArtifactFacts {
            listed: true,
            file: FileFacts::Present {
                sha256: hex::encode(Sha256::digest(text.as_bytes())),
                bytes: Some(text.as_bytes().to_vec()),
                size: text.len() as u64,
            },
        }
    }

    /// The failed checks' details, or `["pass"]` when every check passed.
    fn check(expect: &ExpectFile, obs: &Observed, want: &[&str]) {
        let checks = judge(expect, obs);
        let failed: Vec<&str> =
            checks.iter().filter(|c| !c.passed).map(|c| c.detail.as_str()).collect();
        let got = if failed.is_empty() { vec!["pass"] } else { failed };
        assert_eq!(got, want, "{checks:#?}");
    }

    #[test]
    fn judges_status_tasks_and_bounds() {
        let ok = summary("succeeded", &[("a", "succeeded"), ("b", "skipped")], &[], 1500, None);
        let obs = observed(Some(ok.clone()), vec![]);
        let status = |s| ExpectFile { status: Some(s), ..ExpectFile::default() };
        check(&status(ExpectedRunStatus::Succeeded), &obs, &["pass"]);
        check(&status(ExpectedRunStatus::Failed), &obs, &["status is succeeded, expected failed"]);
        let tasks = |t: &[(&str, ExpectedTaskStatus)]| ExpectFile {
            tasks: t.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            ..ExpectFile::default()
        };
        check(&tasks(&[("b", ExpectedTaskStatus::Skipped)]), &obs, &["pass"]);
        check(
            &tasks(&[("a", ExpectedTaskStatus::Failed), ("zz", ExpectedTaskStatus::Succeeded)]),
            &obs,
            &["task `a` is succeeded, expected failed", "task `zz` is not in the run's plan"],
        );
        let duration = |s| ExpectFile {
            max_duration: Some(HumanDuration::from_secs(s)),
            ..ExpectFile::default()
        };
        check(&duration(2), &obs, &["pass"]);
        check(&duration(1), &obs, &["took 1.50s, over the 1s bound"]);
        let cost = |c| ExpectFile { max_cost_usd: Some(c), ..ExpectFile::default() };
        check(&cost(0.0), &obs, &["pass"]);
        let spent = observed(Some(summary("succeeded", &[], &[], 1, Some(0.0287))), vec![]);
        check(&cost(0.05), &spent, &["pass"]);
        check(&cost(0.01), &spent, &["spent $0.0287, over the $0.01 bound"]);
        check(&cost(0.0), &spent, &["spent $0.0287, over the $0 bound"]);
    }

    #[test]
    fn a_run_without_summary_fails_once() {
        let expect = ExpectFile {
            status: Some(ExpectedRunStatus::Failed),
            max_cost_usd: Some(1.0),
            ..ExpectFile::default()
        };
        let obs = observed(None, vec![]);
        check(&expect, &obs, &["no run: the plan was rejected (exit 2)"]);
        assert_eq!(judge(&expect, &obs).len(), 1);
        assert_eq!(obs.cost_usd(), 0.02);
    }

    #[test]
    fn judges_artifacts() {
        let text = "ok add = 5\n5/5 tests passed\n";
        let one = |a: ExpectArtifactFile, facts: ArtifactFacts, want: &[&str]| {
            let s = summary("succeeded", &[], &[], 1, None);
            let expect = ExpectFile { artifacts: vec![a], ..ExpectFile::default() };
            check(&expect, &observed(Some(s), vec![facts]), want);
        };
        let with = |f: fn(&mut ExpectArtifactFile)| {
            let mut a = artifact("test/out.txt");
            f(&mut a);
            a
        };
        one(artifact("test/out.txt"), present(text), &["pass"]);
        one(
            artifact("test/out.txt"),
            ArtifactFacts { listed: false, file: FileFacts::Missing },
            &["artifact `test/out.txt` was not collected (not in artifacts.json)"],
        );
        one(
            artifact("test/out.txt"),
            ArtifactFacts { listed: true, file: FileFacts::Missing },
            &["artifact `test/out.txt` is listed but missing from artifacts/"],
        );
        one(
            artifact("test/out.txt"),
            ArtifactFacts { listed: false, ..present(text) },
            &["artifact `test/out.txt` is in artifacts/ but not in artifacts.json"],
        );
        one(
            artifact("test/out.txt"),
            ArtifactFacts { listed: true, file: FileFacts::Unreadable("permission denied".into()) },
            &["artifact `test/out.txt` is unreadable: permission denied"],
        );
        one(with(|a| a.contains = Some("5/5 tests passed".into())), present(text), &["pass"]);
        one(
            with(|a| a.contains = Some("6/6".into())),
            present(text),
            &["artifact `test/out.txt` does not contain \"6/6\""],
        );
        one(with(|a| a.matches = Some("^[0-9]+/5 tests".into())), present(text), &["pass"]);
        one(
            with(|a| a.matches = Some("^tests$".into())),
            present(text),
            &["artifact `test/out.txt` does not match /^tests$/"],
        );
        let digest = hex::encode(Sha256::digest(text.as_bytes()));
        let upper = digest.to_ascii_uppercase();
        one(
            with(|a| a.sha256 = Some("x".into())),
            present(text),
            &["artifact `test/out.txt` has sha256 033a3020a92dbbb7…, expected x"],
        );
        let mut a = artifact("test/out.txt");
        a.sha256 = Some(upper);
        one(a, present(text), &["pass"]);
        let big = ArtifactFacts {
            listed: true,
            file: FileFacts::Present { sha256: digest, bytes: None, size: 1 << 30 },
        };
        one(
            with(|a| a.contains = Some("x".into())),
            big.clone(),
            &["artifact `test/out.txt` is too large to search (1073741824 bytes)"],
        );
        one(artifact("test/out.txt"), big, &["pass"]);
    }

    #[test]
    fn patterns_match_lines() {
        let check = |re: &str, text: &str, want: bool| {
            let p = pattern(re).unwrap_or_else(|e| panic!("{re}: {e}"));
            assert_eq!(p.is_match(text), want, "/{re}/ on {text:?}");
        };
        check("abc", "xxabcxx", true);
        check("abc", "ab", false);
        check("", "anything", true);
        check("a.c", "a\nc", false);
        check("^abc$", "xabc", false);
        check("^b$", "a\nb\nc", true);
        check("^b$", "a\nb\r\nc", true);
        check("^$", "a\n\nb", true);
        check("^$", "ab", false);
        check("a$", "ba\n", true);
        check("^(cat|dog)s?$", "dogs", true);
        check("^(cat|dog)s?$", "birds", false);
        check("\\d{3}-\\d{4}", "call 55-1234", false);
        check("[0-9]+ tests passed", "5 tests passed", true);
        check("^lines: 3$", "lines: 3\nfoo", true);
        check("^rows 1000\nsum 47110$", "x\nrows 1000\nsum 47110\n", true);
        check("^mul\\(6, 7\\) = 42$", "ok mul(6, 7) = 42", false);
        check("^ok mul\\(6, 7\\) = 42$", "x\nok mul(6, 7) = 42\n", true);
        check("안녕", "안녕, world", true);
        // linear time: no backtracking blow-up
        check("^(a*)*b$", &"a".repeat(5_000), false);
        check("(x+x+)+y", &"x".repeat(5_000), false);
    }

    #[test]
    fn pattern_errors() {
        let check = |re: &str, want: &str| {
            let e = pattern(re).unwrap_err();
            assert_eq!(e.to_string(), want, "{re}");
        };
        check("(ab", "unclosed group at position 1");
        check("ab)", "unopened group at position 3");
        check("[ab", "unclosed character class at position 1");
        check("*a", "repetition operator missing expression at position 1");
        check("[z-a]", "invalid character class range, the start must be <= the end at position 2");
        check("\\q", "unrecognized escape sequence at position 1");
        check(
            "(?=a)",
            "look-around, including look-ahead and look-behind, is not supported at position 1",
        );
        check("안녕(", "unclosed group at position 3");
        // no position for a pattern of several lines
        check("ab\n(c", "unclosed group");
        let too_large = "too large: compiled, it would take over 4 MiB (counted \
                         repetitions multiply its size)";
        check("(a{1000}){1000}", too_large);
        check("\\w{1000}", too_large);
        // everyday patterns stay well under the limit
        for re in ["^[0-9a-f]{64}$", "\\w{40}", "^(\\d+\\.){3}\\d+$", "(?i)^error: .*$"] {
            assert!(pattern(re).is_ok(), "{re}");
        }
    }

    #[test]
    fn wilson_intervals() {
        let check = |k, n, low, high| {
            assert_eq!(wilson(k, n), Interval { low, high }, "{k}/{n}");
        };
        check(1, 1, 0.2065, 1.0);
        check(3, 3, 0.4385, 1.0);
        check(0, 10, 0.0, 0.2775);
        check(5, 10, 0.2366, 0.7634);
        check(0, 0, 0.0, 1.0);
        check(19, 20, 0.7639, 0.9911);
    }

    fn trial(n: u32, passed: bool, ms: u64, cost: f64, failures: &[&str]) -> Trial {
        Trial {
            trial: n,
            passed,
            exit_code: u8::from(!passed),
            run_dir: Some(format!("eval/20261125T100757Z-a1b2c3/s/{n}/20261125T100758Z-d4e5f6")),
            status: Some(if passed { RunStatus::Succeeded } else { RunStatus::Failed }),
            duration_ms: ms,
            cost_usd: cost,
            checks: failures.iter().map(|f| fail("status", (*f).to_owned())).collect(),
        }
    }

    #[test]
    fn aggregates_trials() {
        let s = aggregate(
            "s",
            "s.yaml",
            vec![
                trial(1, true, 100, 0.01, &[]),
                trial(2, false, 300, 0.01, &["b", "a"]),
                trial(3, false, 200, 0.01, &["a"]),
                trial(4, true, 200, 0.01, &[]),
            ],
        );
        assert_eq!((s.trials, s.passes, s.pass_rate, s.passed), (4, 2, 0.5, false));
        assert_eq!(s.duration_ms, Spread { mean: 200.0, min: 100, max: 300 });
        assert!((s.cost_usd - 0.04).abs() < 1e-12);
        assert!((s.cost_per_success_usd.unwrap() - 0.02).abs() < 1e-12);
        let reasons: Vec<_> = s.failures.iter().map(|f| (f.reason.as_str(), f.count)).collect();
        assert_eq!(reasons, [("a", 2), ("b", 1)]);

        let none = aggregate("s", "s.yaml", vec![trial(1, false, 10, 0.5, &["x"])]);
        assert_eq!(none.cost_per_success_usd, None);
        assert!(!none.passed);
        let json = serde_json::to_value(&none).unwrap();
        assert!(json["cost_per_success_usd"].is_null(), "{json}");

        let all = aggregate("s", "s.yaml", vec![trial(1, true, 10, 0.0, &[])]);
        assert!(all.passed);
        assert_eq!(all.cost_per_success_usd, Some(0.0));
        assert_eq!(spread(&[]), Spread::default());
    }

    #[test]
    fn renders_table_and_markdown() {
        let scenarios = vec![
            aggregate(
                "build",
                "examples/eval/build.yaml",
                vec![trial(1, true, 1234, 0.0, &[]), trial(2, true, 1100, 0.0, &[])],
            ),
            aggregate(
                "data",
                "examples/eval/data.yaml",
                vec![
                    trial(1, false, 50, 0.0, &["artifact `m/x` has sha256 ab…, expected cd…"]),
                    trial(2, true, 70, 0.0, &[]),
                ],
            ),
        ];
        let r = report(
            "20261125T100757Z-a1b2c3",
            Timestamp::from_millis(0),
            2000,
            2,
            None,
            None,
            scenarios,
        );
        assert!(!r.passed);
        assert_eq!((r.scenarios_passed, r.scenarios_total), (1, 2));
        let dir = Path::new("eval/20261125T100757Z-a1b2c3");
        let table = render_table(&r, dir);
        insta::assert_snapshot!("eval_table", table);
        let md = render_markdown(&r, dir);
        insta::assert_snapshot!("eval_markdown", md);
    }

    #[test]
    fn finds_expect_blocks_by_line() {
        assert!(has_expect("name: x\nexpect:\n  status: failed\n"));
        assert!(has_expect("expect : {}"));
        assert!(!has_expect("name: x\n  expect: nested\n"));
        assert!(!has_expect("expected: 1\n"));
    }
}
