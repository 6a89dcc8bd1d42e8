//! `orchestra runs list|show|gc`: the runs directory as a list of runs.
//!
//! The pure core decides: [`classify`] turns what a run directory holds into a [`RunState`],
//! [`select`] orders and filters, [`gc_decide`] chooses what to delete. The shell
//! ([`scan`], [`command`]) reads directories and files and opens a run's state store only when
//! the run has no `summary.json` (so listing finished runs stays fast).
//!
//! Invariant: gc deletes only finished and planned runs, and checks the store lock of each
//! run right before deleting it: a running or interrupted run is never deleted.

use crate::cli::{Cli, RunsArgs, RunsCommand, StatusFilter};
use crate::commands::{load_config, usage};
use crate::exit;
use crate::report;
use anyhow::Context as _;
use orchestra_coordinator::store::Store;
use orchestra_proto::summary::{ListedRun, Summary};
use orchestra_proto::{Plan, RunId, RunStatus, Timestamp, layout};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Runs kept by `gc` when neither `--keep` nor `--older-than` is given.
pub const DEFAULT_KEEP: usize = 20;

/// What a run directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Has `summary.json`.
    Finished(RunStatus),
    /// No summary, and its state store is held by a live process.
    Running,
    /// No summary, the store opens and holds the run: `orchestra resume` continues it.
    Interrupted,
    /// A `--plan-only` leftover: `plan.json`, no store, no summary.
    Planned,
    /// A summary or store that cannot be read, or a store without the run.
    Unknown,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Finished(s) => s.as_str(),
            Self::Running => "running",
            Self::Interrupted => "interrupted",
            Self::Planned => "planned",
            Self::Unknown => "unknown",
        }
    }

    /// Whether `gc` may delete a run in this state.
    pub fn collectable(self) -> bool {
        matches!(self, Self::Finished(_) | Self::Planned)
    }
}

/// What `summary.json` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SummaryProbe {
    Missing,
    Status(RunStatus),
    Unreadable,
}

/// What the state store said (asked only when there is no summary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreProbe {
    /// Another process holds the store (or it cannot be opened).
    Locked,
    /// The stored run record's status.
    Record(RunStatus),
    /// The store opened but holds no record of this run, or one that cannot be read.
    NoRecord,
}

/// The facts about a run directory that decide its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub summary: SummaryProbe,
    pub has_plan: bool,
    /// `None`: no `state/` directory.
    pub store: Option<StoreProbe>,
}

/// The state of a run directory; `None` if it is not a run directory.
pub fn classify(p: &Probe) -> Option<RunState> {
    Some(match (p.summary, p.store) {
        (SummaryProbe::Status(RunStatus::Running), _) => RunState::Unknown,
        (SummaryProbe::Status(s), _) => RunState::Finished(s),
        (SummaryProbe::Unreadable, _) => RunState::Unknown,
        (SummaryProbe::Missing, Some(StoreProbe::Locked)) => RunState::Running,
        // A finished record without a summary: killed before writing it; resume writes it.
        (SummaryProbe::Missing, Some(StoreProbe::Record(_))) => RunState::Interrupted,
        (SummaryProbe::Missing, Some(StoreProbe::NoRecord)) => RunState::Unknown,
        (SummaryProbe::Missing, None) if p.has_plan => RunState::Planned,
        (SummaryProbe::Missing, None) => return None,
    })
}

/// The UTC time at the start of a run id (`20261125T100757Z-…`), to the second.
pub fn run_id_time(id: &str) -> Option<Timestamp> {
    let b = id.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    if !(digits(0..8) && b.get(8) == Some(&b'T') && digits(9..15) && b.get(15) == Some(&b'Z')) {
        return None;
    }
    if b.len() > 16 && b[16] != b'-' {
        return None;
    }
    let s = &id[..16];
    let rfc = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    );
    let t = humantime::parse_rfc3339(&rfc).ok()?;
    let ms = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
    Some(Timestamp::from_millis(ms as u64))
}

/// One run as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEntry {
    pub id: String,
    pub dir: PathBuf,
    pub state: RunState,
    /// From the run id, else the directory's mtime.
    pub created: Option<Timestamp>,
    pub name: Option<String>,
    pub duration_ms: Option<u64>,
    pub tasks: Option<u32>,
    pub succeeded: Option<u32>,
    pub failed: Option<u32>,
    /// Money spent on models, when the run used any.
    pub cost_usd: Option<f64>,
}

impl RunEntry {
    /// An entry with only what the directory name says.
    pub fn new(id: &str, dir: PathBuf, state: RunState) -> Self {
        Self {
            id: id.to_owned(),
            dir,
            state,
            created: run_id_time(id),
            name: None,
            duration_ms: None,
            tasks: None,
            succeeded: None,
            failed: None,
            cost_usd: None,
        }
    }

    fn fill_from_summary(&mut self, s: &Summary, with_duration: bool) {
        self.name = Some(s.name.clone());
        self.duration_ms = with_duration.then_some(s.duration_ms);
        self.tasks = Some(s.totals.tasks);
        self.succeeded = Some(s.totals.succeeded);
        self.failed = Some(s.totals.failed);
        self.cost_usd = s.llm.as_ref().map(|l| l.cost_usd);
    }
}

/// Whether a run in `state` passes `--status`.
pub fn matches(state: RunState, filter: StatusFilter) -> bool {
    use RunStatus as S;
    matches!(
        (filter, state),
        (StatusFilter::Succeeded, RunState::Finished(S::Succeeded))
            | (StatusFilter::Failed, RunState::Finished(S::Failed))
            | (StatusFilter::Cancelled, RunState::Finished(S::Cancelled))
            | (StatusFilter::Finished, RunState::Finished(_))
            | (StatusFilter::Running, RunState::Running)
            | (StatusFilter::Interrupted, RunState::Interrupted)
            | (StatusFilter::Planned, RunState::Planned)
    )
}

/// Newest first (run ids start with their UTC time), filtered, at most `limit`.
pub fn select(
    mut runs: Vec<RunEntry>,
    filter: Option<StatusFilter>,
    limit: Option<usize>,
) -> Vec<RunEntry> {
    runs.sort_by(|a, b| b.id.cmp(&a.id));
    runs.retain(|r| filter.is_none_or(|f| matches(r.state, f)));
    runs.truncate(limit.unwrap_or(usize::MAX));
    runs
}

/// What `gc` deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcPolicy {
    /// Keep the newest N collectable runs.
    pub keep: Option<usize>,
    /// Delete only runs at least this old.
    pub older_than: Option<Duration>,
    pub keep_failed: bool,
}

impl GcPolicy {
    /// `--keep` defaults to [`DEFAULT_KEEP`] when neither limit is given.
    pub fn new(keep: Option<usize>, older_than: Option<Duration>, keep_failed: bool) -> Self {
        let keep = if keep.is_none() && older_than.is_none() { Some(DEFAULT_KEEP) } else { keep };
        Self { keep, older_than, keep_failed }
    }
}

/// What `gc` does with one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcDecision {
    Delete,
    /// Within the newest N, too young, or a failed run under `--keep-failed`.
    Keep,
    /// Never collected: running, interrupted or unknown.
    Skip,
}

/// One decision per run, in the order of `runs`. The newest N are counted among collectable
/// runs by run id; a run is deleted only if it is beyond them *and* old enough (each limit
/// that is set must agree). A run of unknown age is never old enough.
pub fn gc_decide(
    runs: &[(&str, RunState, Option<Timestamp>)],
    policy: GcPolicy,
    now: Timestamp,
) -> Vec<GcDecision> {
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by(|&a, &b| runs[b].0.cmp(runs[a].0));
    let mut out = vec![GcDecision::Skip; runs.len()];
    let mut rank = 0;
    for i in order {
        let (_, state, created) = runs[i];
        if !state.collectable() {
            continue;
        }
        let beyond = policy.keep.is_none_or(|n| rank >= n);
        rank += 1;
        let old = policy.older_than.is_none_or(|d| created.is_some_and(|c| now.since(c) >= d));
        let spared = policy.keep_failed && state == RunState::Finished(RunStatus::Failed);
        out[i] = if beyond && old && !spared { GcDecision::Delete } else { GcDecision::Keep };
    }
    out
}

/// `850ms`, `1.23s`, `2m05s`, `1h02m`.
pub fn fmt_duration(ms: u64) -> String {
    let s = ms / 1000;
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{:.2}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

/// The `runs list` table.
pub fn render_list(runs: &[RunEntry]) -> String {
    let width = runs.iter().map(|r| r.id.len()).max().unwrap_or(3).max(3);
    let dash = || "-".to_owned();
    let mut out = format!(
        "{:width$}  {:11}  {:>8}  {:>7}  {:>6}  {:>8}  name\n",
        "run", "status", "duration", "tasks", "failed", "cost"
    );
    for r in runs {
        let tasks = match (r.succeeded, r.tasks) {
            (Some(s), Some(t)) => format!("{s}/{t}"),
            (None, Some(t)) => format!("-/{t}"),
            _ => dash(),
        };
        let _ = writeln!(
            out,
            "{:width$}  {:11}  {:>8}  {:>7}  {:>6}  {:>8}  {}",
            r.id,
            r.state.as_str(),
            r.duration_ms.map_or_else(dash, fmt_duration),
            tasks,
            r.failed.map_or_else(dash, |f| f.to_string()),
            r.cost_usd.map_or_else(dash, |c| format!("${c:.4}")),
            r.name.as_deref().unwrap_or("-"),
        );
    }
    out
}

/// The task table of `runs show`: id, status, attempts, duration, exit code or signal, note.
pub fn render_tasks(s: &Summary) -> String {
    let width = s.tasks.iter().map(|t| t.id.as_str().len()).max().unwrap_or(4).max(4);
    let mut out = format!(
        "{:width$}  {:10}  {:>8}  {:>8}  {:>6}  note\n",
        "task", "status", "attempts", "duration", "exit"
    );
    for t in &s.tasks {
        let last = t.attempts.last();
        let exit = last
            .and_then(|a| {
                a.exit_code.map(|c| c.to_string()).or(a.signal.map(|g| format!("sig {g}")))
            })
            .unwrap_or_else(|| "-".into());
        let note = t
            .reason
            .clone()
            .or_else(|| last.and_then(|a| a.failure.as_ref()).map(|f| f.message.clone()))
            .unwrap_or_default();
        let line = format!(
            "{:width$}  {:10}  {:>8}  {:>8}  {:>6}  {note}",
            t.id.as_str(),
            t.status.as_str(),
            t.attempts.len(),
            fmt_duration(t.duration_ms),
            exit,
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

// ---- the shell: files, directories, the store ----

fn read_summary(dir: &Path) -> (SummaryProbe, Option<Summary>) {
    match std::fs::read(dir.join(layout::SUMMARY)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (SummaryProbe::Missing, None),
        Err(_) => (SummaryProbe::Unreadable, None),
        Ok(bytes) => match serde_json::from_slice::<Summary>(&bytes) {
            Ok(s) => (SummaryProbe::Status(s.status), Some(s)),
            Err(_) => (SummaryProbe::Unreadable, None),
        },
    }
}

/// Opens the run's store (only when asked: it takes the store's lock for a moment) and, if
/// it holds the run, summarizes it as of `now`.
fn read_store(dir: &Path, id: &str, now: Timestamp) -> (StoreProbe, Option<Summary>) {
    let state = crate::local::state_dir(dir);
    if Store::is_in_use(&state) {
        return (StoreProbe::Locked, None);
    }
    let Ok(store) = Store::open(&state) else {
        return (StoreProbe::Locked, None);
    };
    let run_id = RunId::new_unchecked(id);
    match (store.run(&run_id), store.tasks(&run_id)) {
        (Ok(Some(record)), Ok(tasks)) => {
            (StoreProbe::Record(record.status), Some(report::summarize(&record, &tasks, now)))
        }
        _ => (StoreProbe::NoRecord, None),
    }
}

fn read_plan(dir: &Path) -> Option<Plan> {
    serde_json::from_slice(&std::fs::read(dir.join(layout::PLAN)).ok()?).ok()
}

fn mtime(dir: &Path) -> Option<Timestamp> {
    let t = std::fs::metadata(dir).and_then(|m| m.modified()).ok()?;
    Some(Timestamp::from_millis(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as u64))
}

/// Reads one run directory; `None` if it is not one. Opens the store only without a summary.
pub fn inspect(dir: &Path, now: Timestamp) -> Option<(RunEntry, Option<Summary>)> {
    let id = dir.file_name()?.to_str()?;
    RunId::parse(id).ok()?;
    let (summary_probe, mut summary) = read_summary(dir);
    let mut store = None;
    if summary_probe == SummaryProbe::Missing && crate::local::state_dir(dir).is_dir() {
        let (probe, s) = read_store(dir, id, now);
        store = Some(probe);
        summary = s;
    }
    let has_plan = summary_probe == SummaryProbe::Missing && dir.join(layout::PLAN).is_file();
    let state = classify(&Probe { summary: summary_probe, has_plan, store })?;
    let mut entry = RunEntry::new(id, dir.to_owned(), state);
    if entry.created.is_none() {
        entry.created = mtime(dir);
    }
    match (&summary, state) {
        (Some(s), RunState::Finished(_)) => entry.fill_from_summary(s, true),
        (Some(s), _) => entry.fill_from_summary(s, false),
        (None, _) => {
            if let Some(plan) = read_plan(dir) {
                entry.name = Some(plan.name);
                entry.tasks = Some(plan.tasks.len() as u32);
            }
        }
    }
    Some((entry, summary))
}

/// Every run in `runs_dir`, unordered; a missing directory has none.
pub fn scan(runs_dir: &Path, now: Timestamp) -> anyhow::Result<Vec<RunEntry>> {
    let entries = match std::fs::read_dir(runs_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        r => {
            r.with_context(|| format!("cannot read the runs directory `{}`", runs_dir.display()))?
        }
    };
    let mut runs = Vec::new();
    for e in entries {
        let e =
            e.with_context(|| format!("cannot read the runs directory `{}`", runs_dir.display()))?;
        if e.file_type().is_ok_and(|t| t.is_dir())
            && let Some((entry, _)) = inspect(&e.path(), now)
        {
            runs.push(entry);
        }
    }
    Ok(runs)
}

/// `orchestra runs …`: returns the exit code.
pub fn command(cli: &Cli, args: &RunsArgs) -> anyhow::Result<u8> {
    let mut cfg = load_config(cli)?;
    if let Some(dir) = &args.runs_dir {
        cfg.runs_dir = dir.clone();
    }
    let now = Timestamp::now();
    match &args.command {
        RunsCommand::List { json, status, limit } => {
            list(&cfg.runs_dir, *json, *status, *limit, now)
        }
        RunsCommand::Show { run, json } => show(&cfg.runs_dir, run, *json, now),
        RunsCommand::Gc { keep, older_than, keep_failed, dry_run } => {
            gc(&cfg.runs_dir, GcPolicy::new(*keep, *older_than, *keep_failed), *dry_run, now)
        }
    }
}

fn list(
    runs_dir: &Path,
    json: bool,
    status: Option<StatusFilter>,
    limit: Option<usize>,
    now: Timestamp,
) -> anyhow::Result<u8> {
    let runs = select(scan(runs_dir, now)?, status, limit);
    if json {
        let listed: Vec<ListedRun> = runs
            .iter()
            .map(|r| ListedRun {
                run_id: r.id.clone(),
                status: r.state.as_str().to_owned(),
                name: r.name.clone(),
                duration_ms: r.duration_ms,
                tasks: r.tasks,
                succeeded: r.succeeded,
                failed: r.failed,
                cost_usd: r.cost_usd,
                dir: r.dir.display().to_string(),
            })
            .collect();
        use std::io::Write;
        std::io::stdout().write_all(&report::pretty_json(&listed))?;
    } else if runs.is_empty() {
        println!("no runs in {}", runs_dir.display());
    } else {
        print!("{}", render_list(&runs));
    }
    Ok(exit::SUCCESS)
}

fn show(runs_dir: &Path, run: &str, json: bool, now: Timestamp) -> anyhow::Result<u8> {
    let not_found = || {
        usage(
            format!("no run `{run}` in `{}`", runs_dir.display()),
            Some("run `orchestra runs list` to see the runs, or pass a run directory"),
        )
    };
    let path = Path::new(run);
    let dir = if path.is_dir() { path.to_path_buf() } else { runs_dir.join(run) };
    if !dir.is_dir() {
        return Err(not_found());
    }
    let Some((entry, summary)) = inspect(&dir, now) else {
        return Err(usage(
            format!("`{}` is not a run directory", dir.display()),
            Some("run `orchestra runs list` to see the runs"),
        ));
    };
    let resume = format!("`orchestra resume {}` continues it", dir.display());
    match (entry.state, summary) {
        (RunState::Finished(_), _) if json => {
            let bytes = std::fs::read(dir.join(layout::SUMMARY)).with_context(|| {
                format!("cannot read `{}`", dir.join(layout::SUMMARY).display())
            })?;
            use std::io::Write;
            std::io::stdout().write_all(&bytes)?;
            return Ok(exit::SUCCESS);
        }
        (_, Some(s)) if json => {
            // An interrupted run: its summary as of now, from the store.
            use std::io::Write;
            std::io::stdout().write_all(&report::pretty_json(&s))?;
            return Ok(exit::SUCCESS);
        }
        (state, _) if json => {
            return Err(usage(
                format!("run `{}` is {} and has no summary yet", entry.id, state.as_str()),
                None,
            ));
        }
        (RunState::Finished(_), Some(s)) => {
            println!("{}", report::headline(&s));
            print!("{}", render_tasks(&s));
        }
        (RunState::Interrupted, Some(s)) => {
            let t = &s.totals;
            println!(
                "run {} was interrupted: {}/{} tasks succeeded, {} failed, {} unfinished; {resume}",
                entry.id, t.succeeded, t.tasks, t.failed, t.unfinished
            );
            print!("{}", render_tasks(&s));
        }
        (RunState::Running, _) => {
            println!("run {} is running (another process holds its state store)", entry.id);
        }
        (RunState::Planned, _) => {
            let tasks = entry.tasks.map_or_else(|| "?".to_owned(), |t| t.to_string());
            println!("run {} was only planned (--plan-only): {tasks} tasks, nothing ran", entry.id);
        }
        (state, _) => {
            println!(
                "run {} is {}: its summary or state store cannot be read",
                entry.id,
                state.as_str()
            );
        }
    }
    println!("run directory: {}", dir.display());
    Ok(exit::SUCCESS)
}

/// True if another process holds the run's store (checked without taking its lock).
fn store_in_use(dir: &Path) -> bool {
    Store::is_in_use(&crate::local::state_dir(dir))
}

fn gc(runs_dir: &Path, policy: GcPolicy, dry_run: bool, now: Timestamp) -> anyhow::Result<u8> {
    let runs = select(scan(runs_dir, now)?, None, None);
    if runs.is_empty() {
        println!("no runs in {}", runs_dir.display());
        return Ok(exit::SUCCESS);
    }
    let facts: Vec<_> = runs.iter().map(|r| (r.id.as_str(), r.state, r.created)).collect();
    let decisions = gc_decide(&facts, policy, now);
    let (mut deleted, mut kept, mut skipped, mut errors) = (0, 0, 0, 0);
    for (r, d) in runs.iter().zip(decisions) {
        match d {
            GcDecision::Keep => kept += 1,
            GcDecision::Skip => {
                skipped += 1;
                let why = match r.state {
                    RunState::Interrupted => "interrupted, resumable",
                    other => other.as_str(),
                };
                println!("skipped {} ({why})", r.id);
            }
            // Checked again right before deleting: the run may have been resumed since.
            GcDecision::Delete if store_in_use(&r.dir) => {
                skipped += 1;
                println!("skipped {} (running)", r.id);
            }
            GcDecision::Delete if dry_run => {
                deleted += 1;
                println!("would delete {} ({})", r.id, r.state.as_str());
            }
            GcDecision::Delete => match std::fs::remove_dir_all(&r.dir) {
                Ok(()) => {
                    deleted += 1;
                    println!("deleted {} ({})", r.id, r.state.as_str());
                }
                Err(e) => {
                    errors += 1;
                    eprintln!("error: cannot delete `{}`\ncaused by: {e}", r.dir.display());
                }
            },
        }
    }
    let verb = if dry_run { "would delete" } else { "deleted" };
    println!(
        "{verb} {deleted} run{}, kept {kept}, skipped {skipped} (running, interrupted or unknown)",
        if deleted == 1 { "" } else { "s" }
    );
    Ok(if errors > 0 { exit::INTERNAL } else { exit::SUCCESS })
}

#[cfg(test)]
mod tests {
    use super::*;
    use RunState as R;
    use RunStatus::{Cancelled, Failed, Running, Succeeded};

    #[test]
    fn classification() {
        let check = |summary, has_plan, store, expect: Option<RunState>| {
            let p = Probe { summary, has_plan, store };
            assert_eq!(classify(&p), expect, "{p:?}");
        };
        use StoreProbe::{Locked, NoRecord, Record};
        use SummaryProbe::{Missing, Status, Unreadable};
        check(Status(Succeeded), true, None, Some(R::Finished(Succeeded)));
        check(Status(Failed), false, None, Some(R::Finished(Failed)));
        check(Status(Cancelled), true, Some(Locked), Some(R::Finished(Cancelled)));
        check(Status(Running), true, None, Some(R::Unknown));
        check(Unreadable, true, None, Some(R::Unknown));
        check(Missing, true, Some(Locked), Some(R::Running));
        check(Missing, false, Some(Locked), Some(R::Running));
        check(Missing, true, Some(Record(Running)), Some(R::Interrupted));
        check(Missing, true, Some(Record(Succeeded)), Some(R::Interrupted));
        check(Missing, true, Some(NoRecord), Some(R::Unknown));
        check(Missing, true, None, Some(R::Planned));
        check(Missing, false, None, None);
    }

    #[test]
    fn run_id_times() {
        let check = |id: &str, expect: Option<u64>| {
            assert_eq!(run_id_time(id).map(Timestamp::as_millis), expect, "{id}");
        };
        check("19700101T000001Z-abcdef", Some(1000));
        check("20251125T100757Z-a1b2c3", Some(1_764_065_277_000));
        check("20251125T100757Z", Some(1_764_065_277_000));
        check("20251125T100757Zx", None);
        check("20251125T1007", None);
        check("20251325T100757Z-a1b2c3", None);
        check("my-run", None);
        check("", None);
        let t = Timestamp::from_millis(1_764_065_277_000);
        assert_eq!(run_id_time(RunId::generate(t).as_str()), Some(t));
    }

    fn entry(id: &str, state: RunState) -> RunEntry {
        RunEntry::new(id, PathBuf::from(id), state)
    }

    #[test]
    fn selection() {
        let runs = vec![
            entry("20250101T000002Z-aaaaaa", R::Finished(Failed)),
            entry("20250101T000001Z-aaaaaa", R::Finished(Succeeded)),
            entry("20250101T000004Z-aaaaaa", R::Running),
            entry("20250101T000003Z-aaaaaa", R::Planned),
        ];
        let check = |filter, limit, expect: &[&str]| {
            let got: Vec<_> =
                select(runs.clone(), filter, limit).into_iter().map(|r| r.id).collect();
            let expect: Vec<_> =
                expect.iter().map(|s| format!("20250101T00000{s}Z-aaaaaa")).collect();
            assert_eq!(got, expect, "{filter:?} {limit:?}");
        };
        check(None, None, &["4", "3", "2", "1"]);
        check(None, Some(2), &["4", "3"]);
        check(None, Some(0), &[]);
        check(Some(StatusFilter::Finished), None, &["2", "1"]);
        check(Some(StatusFilter::Finished), Some(1), &["2"]);
        check(Some(StatusFilter::Failed), None, &["2"]);
        check(Some(StatusFilter::Succeeded), None, &["1"]);
        check(Some(StatusFilter::Cancelled), None, &[]);
        check(Some(StatusFilter::Running), None, &["4"]);
        check(Some(StatusFilter::Planned), None, &["3"]);
        check(Some(StatusFilter::Interrupted), None, &[]);
    }

    #[test]
    fn gc_decisions() {
        use GcDecision::{Delete as D, Keep as K, Skip as S};
        const DAY: u64 = 86_400_000;
        let now = Timestamp::from_millis(100 * DAY);
        let day = |d: u64| Some(Timestamp::from_millis(now.as_millis() - d * DAY));
        // Unordered on purpose: the decision follows the run ids, not the slice order.
        let runs = [
            ("r3", R::Finished(Succeeded), day(3)),
            ("r9", R::Running, day(0)),
            ("r5", R::Finished(Failed), day(1)),
            ("r8", R::Interrupted, day(0)),
            ("r1", R::Finished(Succeeded), day(10)),
            ("r4", R::Planned, day(2)),
            ("r2", R::Finished(Cancelled), None),
            ("r0", R::Unknown, day(20)),
        ];
        let check = |keep, older_days: Option<u64>, keep_failed, expect: [GcDecision; 8]| {
            let older = older_days.map(|d| Duration::from_millis(d * DAY));
            let policy = GcPolicy { keep, older_than: older, keep_failed };
            assert_eq!(gc_decide(&runs, policy, now), expect, "{policy:?}");
        };
        //                          r3 r9 r5 r8 r1 r4 r2 r0
        check(Some(0), None, false, [D, S, D, S, D, D, D, S]);
        check(Some(2), None, false, [D, S, K, S, D, K, D, S]);
        check(Some(2), None, true, [D, S, K, S, D, K, D, S]);
        check(Some(0), None, true, [D, S, K, S, D, D, D, S]);
        check(Some(100), None, false, [K, S, K, S, K, K, K, S]);
        check(None, Some(3), false, [D, S, K, S, D, K, K, S]);
        check(None, Some(0), false, [D, S, D, S, D, D, K, S]);
        // both limits must agree
        check(Some(3), Some(2), false, [K, S, K, S, D, K, K, S]);
        check(None, None, false, [D, S, D, S, D, D, D, S]);
        assert_eq!(GcPolicy::new(None, None, false).keep, Some(DEFAULT_KEEP));
        assert_eq!(GcPolicy::new(None, Some(Duration::ZERO), false).keep, None);
        assert_eq!(GcPolicy::new(Some(3), None, true).keep, Some(3));
    }

    #[test]
    fn durations() {
        let check = |ms, expect: &str| assert_eq!(fmt_duration(ms), expect, "{ms}");
        check(0, "0ms");
        check(999, "999ms");
        check(1000, "1.00s");
        check(1234, "1.23s");
        check(59_999, "60.00s");
        check(60_000, "1m00s");
        check(125_000, "2m05s");
        check(3_600_000, "1h00m");
        check(3_720_000, "1h02m");
    }

    #[test]
    fn list_table() {
        let mut done = entry("20250101T000001Z-aaaaaa", R::Finished(Failed));
        done.name = Some("hello".into());
        done.duration_ms = Some(1500);
        (done.tasks, done.succeeded, done.failed) = (Some(5), Some(3), Some(1));
        done.cost_usd = Some(0.0273);
        let mut planned = entry("20250101T000002Z-bbbbbb", R::Planned);
        planned.tasks = Some(2);
        let got = render_list(&[planned, done]);
        let expect = "\
run                      status       duration    tasks  failed      cost  name
20250101T000002Z-bbbbbb  planned             -      -/2       -         -  -
20250101T000001Z-aaaaaa  failed          1.50s      3/5       1   $0.0273  hello
";
        assert_eq!(got, expect);
    }
}
