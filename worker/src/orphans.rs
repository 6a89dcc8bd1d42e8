//! A run's ledger of live process groups (`<run_dir>/pids`), so that process groups left
//! behind when orchestra itself is killed can be ended when the run resumes.
//!
//! Each attempt's process group gets a `+ <pgid> <start time>` line when it is spawned and a
//! `- <pgid>` line once it is gone; both are one `write` on a file kept open per run.
//! [`end_orphans`] ends every group started and never ended whose leader is still the same
//! process (same start time, so a reused pid is never signalled).

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The ledger's file name inside a run directory.
pub const LEDGER: &str = "pids";

/// Start time of a process in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: count fields after its closing `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Appends to the ledgers of the runs this worker works for.
#[derive(Default)]
pub struct Ledger {
    files: Mutex<HashMap<PathBuf, File>>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").finish_non_exhaustive()
    }
}

impl Ledger {
    fn append(&self, run_dir: &Path, line: &str) {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if !files.contains_key(run_dir) {
            let opened =
                std::fs::OpenOptions::new().create(true).append(true).open(run_dir.join(LEDGER));
            match opened {
                Ok(f) => {
                    files.insert(run_dir.to_owned(), f);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open the process ledger");
                    return;
                }
            }
        }
        if let Some(f) = files.get_mut(run_dir)
            && let Err(e) = f.write_all(line.as_bytes())
        {
            tracing::warn!(error = %e, "cannot write the process ledger");
        }
    }

    /// A process group was spawned (its leader is `pgid`).
    pub fn started(&self, run_dir: &Path, pgid: u32) {
        if let Some(t) = start_time(pgid) {
            self.append(run_dir, &format!("+ {pgid} {t}\n"));
        }
    }

    /// The process group is gone.
    pub fn ended(&self, run_dir: &Path, pgid: u32) {
        self.append(run_dir, &format!("- {pgid}\n"));
    }
}

/// Ends (SIGKILL) the process groups that the ledger of `run_dir` shows as still running and
/// whose leader is still the recorded process, then empties the ledger. Returns how many
/// groups were ended. Meant for `resume`, before anything of the run runs again.
pub fn end_orphans(run_dir: &Path) -> usize {
    let path = run_dir.join(LEDGER);
    let Ok(text) = std::fs::read_to_string(&path) else { return 0 };
    let mut live: BTreeMap<u32, u64> = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next().and_then(|p| p.parse::<u32>().ok())) {
            (Some("+"), Some(pgid)) => {
                if let Some(t) = parts.next().and_then(|t| t.parse().ok()) {
                    live.insert(pgid, t);
                }
            }
            (Some("-"), Some(pgid)) => {
                live.remove(&pgid);
            }
            _ => {}
        }
    }
    let mut ended = 0;
    for (pgid, started) in live {
        if start_time(pgid) == Some(started)
            && killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL).is_ok()
        {
            tracing::warn!(pgid, "ended a process group left behind by a crashed run");
            ended += 1;
        }
    }
    let _ = std::fs::write(&path, "");
    ended
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_this_process_is_stable() {
        let me = std::process::id();
        let t = start_time(me).unwrap();
        assert_eq!(start_time(me), Some(t));
        assert_eq!(start_time(u32::MAX), None);
    }

    #[test]
    fn only_unended_groups_with_the_same_leader_are_ended() {
        let dir = tempfile::tempdir().unwrap();
        // A pid that is not running and one whose start time does not match: neither is signalled.
        std::fs::write(
            dir.path().join(LEDGER),
            format!("+ 4000000 1\n+ {} 1\n+ 7 9\n- 7\ngarbage\n", std::process::id()),
        )
        .unwrap();
        assert_eq!(end_orphans(dir.path()), 0);
        assert_eq!(std::fs::read_to_string(dir.path().join(LEDGER)).unwrap(), "");
        assert_eq!(end_orphans(tempfile::tempdir().unwrap().path()), 0, "no ledger, nothing to do");
    }
}
