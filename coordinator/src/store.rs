//! The durable run state: a small typed store over sled. The only place that opens sled.
//!
//! Layout: tree `runs` (run id → [`RunRecord`]), tree `tasks` (`<run>/<task>` → [`TaskRecord`]),
//! tree `events` (`<run>/<seq u64 BE>` → [`RunEvent`], append-only). Values are proto JSON, so
//! the store is readable by any version that speaks the same protocol.
//!
//! Writes go to sled and to a write-ahead journal (`journal.jsonl` beside sled's files).
//! [`Store::commit`] appends everything written since the last commit to the journal in one
//! `write`: from then on the writes survive a crash of the process (`kill -9`), which is what
//! callers need before they publish an effect. [`Store::sync`] makes sled itself durable and
//! fsyncs, then empties the journal; [`Store::open`] replays a journal left by a crash. A sled
//! flush per transition would cost a hand-off to sled's I/O threads and an fsync each time
//! (about 0.2 ms per task in `bench/noop.sh`); the journal costs one `write`.
//!
//! Architecture invariant: callers write every transition, then [`Store::commit`], and only
//! then publish the effect of that transition.

use orchestra_proto::{RunEvent, RunId, RunRecord, TaskRecord};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::fs::File;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state store at `{path}`")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("state store i/o failed")]
    Io(#[from] sled::Error),
    #[error("state store journal `{path}` i/o failed")]
    Journal {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("stored record `{key}` is not valid")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// One journal line: an insert into a tree.
#[derive(Deserialize)]
struct JournalEntry {
    tree: String,
    /// The key, hex-encoded (event keys are binary).
    key: String,
    value: Box<serde_json::value::RawValue>,
}

struct Journal {
    path: PathBuf,
    file: File,
    /// Lines written to sled but not yet to the journal file.
    pending: Vec<u8>,
}

/// A cheap-to-clone handle on the store.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    runs: sled::Tree,
    tasks: sled::Tree,
    events: sled::Tree,
    journal: Arc<Mutex<Journal>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

fn task_key(run: &RunId, task: &str) -> Vec<u8> {
    format!("{run}/{task}").into_bytes()
}

fn run_prefix(run: &RunId) -> Vec<u8> {
    format!("{run}/").into_bytes()
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("proto records always serialize")
}

fn from_json<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|source| StoreError::Corrupt { key: String::from_utf8_lossy(key).into(), source })
}

/// The journal's file name inside the store directory.
pub const JOURNAL: &str = "journal.jsonl";

impl Store {
    #[allow(clippy::disallowed_methods)] // the one place that opens sled
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .flush_every_ms(Some(1000))
            .open()
            .map_err(|source| StoreError::Open { path: path.to_owned(), source })?;
        let journal_path = path.join(JOURNAL);
        let io = |source| StoreError::Journal { path: journal_path.clone(), source };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&journal_path)
            .map_err(io)?;
        let store = Self {
            runs: db.open_tree("runs")?,
            tasks: db.open_tree("tasks")?,
            events: db.open_tree("events")?,
            db,
            journal: Arc::new(Mutex::new(Journal {
                path: journal_path.clone(),
                file,
                pending: Vec::new(),
            })),
        };
        store.replay()?;
        Ok(store)
    }

    /// True if a process holds the store at `path` open (sled keeps an exclusive `flock` on
    /// its `db` file while open). Checked without taking the lock, from `/proc/locks`, so a
    /// probe never stands in the way of a run that opens its store at the same moment.
    /// Falls back to `false` where `/proc/locks` cannot be read.
    pub fn is_in_use(path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::metadata(path.join("db")) else { return false };
        let Ok(locks) = std::fs::read_to_string("/proc/locks") else { return false };
        let (ino, dev) = (meta.ino(), meta.dev());
        // `major:minor` of the device, in hex, as /proc/locks prints them.
        let (major, minor) = (
            ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff),
            ((dev >> 12) & 0xffff_ff00) | (dev & 0xff),
        );
        locks.lines().any(|line| {
            // `1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234567 0 EOF`
            let mut fields = line.split_whitespace().skip(1);
            fields.next() == Some("FLOCK")
                && fields.nth(3).and_then(|id| {
                    let mut parts = id.split(':');
                    let (maj, min, inode) = (parts.next()?, parts.next()?, parts.next()?);
                    Some(
                        u64::from_str_radix(maj, 16).ok()? == major
                            && u64::from_str_radix(min, 16).ok()? == minor
                            && inode.parse::<u64>().ok()? == ino,
                    )
                }) == Some(true)
        })
    }

    /// Re-applies a journal left behind by a crash, then makes it durable in sled.
    fn replay(&self) -> Result<(), StoreError> {
        let journal = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        let io = |source| StoreError::Journal { path: journal.path.clone(), source };
        let file = File::open(&journal.path).map_err(io)?;
        let mut replayed = 0usize;
        for line in std::io::BufReader::new(file).lines() {
            let line = line.map_err(io)?;
            // A line cut short (only possible if the OS crashed mid-write) ends the journal.
            let Ok(entry) = serde_json::from_str::<JournalEntry>(&line) else { break };
            let Ok(key) = hex::decode(&entry.key) else { break };
            self.tree(&entry.tree).insert(key, entry.value.get().as_bytes())?;
            replayed += 1;
        }
        if replayed > 0 {
            tracing::info!(entries = replayed, "replayed the state store journal");
        }
        self.db.flush()?;
        journal.file.set_len(0).map_err(io)?;
        Ok(())
    }

    fn tree(&self, name: &str) -> &sled::Tree {
        match name {
            "runs" => &self.runs,
            "events" => &self.events,
            _ => &self.tasks,
        }
    }

    fn insert(&self, tree: &str, key: Vec<u8>, value: Vec<u8>) -> Result<(), StoreError> {
        // The journal line is a `JournalEntry`, written by hand to avoid re-parsing `value`.
        let mut line = Vec::with_capacity(value.len() + key.len() * 2 + 40);
        line.extend_from_slice(b"{\"tree\":\"");
        line.extend_from_slice(tree.as_bytes());
        line.extend_from_slice(b"\",\"key\":\"");
        line.extend_from_slice(hex::encode(&key).as_bytes());
        line.extend_from_slice(b"\",\"value\":");
        line.extend_from_slice(&value);
        line.extend_from_slice(b"}\n");
        self.tree(tree).insert(key, value)?;
        let mut journal = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        journal.pending.extend_from_slice(&line);
        Ok(())
    }

    pub fn put_run(&self, run: &RunRecord) -> Result<(), StoreError> {
        self.insert("runs", run.run_id.as_str().as_bytes().to_vec(), to_json(run))
    }

    pub fn run(&self, run: &RunId) -> Result<Option<RunRecord>, StoreError> {
        match self.runs.get(run.as_str())? {
            Some(v) => Ok(Some(from_json(run.as_str().as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    pub fn runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        self.runs
            .iter()
            .map(|kv| kv.map_err(StoreError::from).and_then(|(k, v)| from_json(&k, &v)))
            .collect()
    }

    pub fn put_task(&self, run: &RunId, task: &TaskRecord) -> Result<(), StoreError> {
        self.insert("tasks", task_key(run, task.task_id.as_str()), to_json(task))
    }

    /// Writes many task records.
    pub fn put_tasks<'a>(
        &self,
        run: &RunId,
        tasks: impl IntoIterator<Item = &'a TaskRecord>,
    ) -> Result<(), StoreError> {
        for t in tasks {
            self.put_task(run, t)?;
        }
        Ok(())
    }

    /// Every task record of a run, in key order.
    pub fn tasks(&self, run: &RunId) -> Result<Vec<TaskRecord>, StoreError> {
        self.tasks
            .scan_prefix(run_prefix(run))
            .map(|kv| kv.map_err(StoreError::from).and_then(|(k, v)| from_json(&k, &v)))
            .collect()
    }

    /// Appends to the run's event log.
    pub fn append_event(&self, run: &RunId, event: &RunEvent) -> Result<(), StoreError> {
        let seq = self.db.generate_id()?;
        let mut key = run_prefix(run);
        key.extend_from_slice(&seq.to_be_bytes());
        self.insert("events", key, to_json(event))
    }

    /// The run's event log, oldest first.
    pub fn events(&self, run: &RunId) -> Result<Vec<RunEvent>, StoreError> {
        self.events
            .scan_prefix(run_prefix(run))
            .map(|kv| kv.map_err(StoreError::from).and_then(|(k, v)| from_json(&k, &v)))
            .collect()
    }

    /// Makes every write so far survive a crash of this process: one `write` to the journal.
    pub fn commit(&self) -> Result<(), StoreError> {
        let mut journal = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        if journal.pending.is_empty() {
            return Ok(());
        }
        let Journal { file, pending, path } = &mut *journal;
        file.write_all(pending)
            .map_err(|source| StoreError::Journal { path: path.clone(), source })?;
        pending.clear();
        Ok(())
    }

    /// Makes every write so far durable on disk (sled flushed and synced), and empties the
    /// journal. Slower than [`Store::commit`]: for the end of a run and for shutdown.
    pub fn sync(&self) -> Result<(), StoreError> {
        let mut journal = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        self.db.flush()?;
        let Journal { file, pending, path } = &mut *journal;
        pending.clear();
        file.set_len(0).map_err(|source| StoreError::Journal { path: path.clone(), source })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestra_proto::plan::{Plan, RunOptions};
    use orchestra_proto::{RunStatus, TaskId, TaskStatus, Timestamp, TraceId};

    fn run(id: &str) -> RunRecord {
        RunRecord {
            run_id: RunId::new_unchecked(id),
            trace_id: TraceId::generate(),
            status: RunStatus::Running,
            plan: Plan { name: "p".into(), goal: None, tasks: vec![] },
            options: RunOptions {
                max_parallel: 1,
                pool: "default".into(),
                dry_run: false,
                output_cap_bytes: 10,
                kill_grace_ms: 10,
                max_tasks: 10,
                max_llm_calls: 1,
                max_cost_usd: None,
            },
            created_at: Timestamp::from_millis(1),
            finished_at: None,
            seed: 1,
            planning: None,
        }
    }

    #[tokio::test]
    async fn records_survive_reopen_and_runs_do_not_mix() {
        let dir = tempfile::tempdir().unwrap();
        let (r1, r2) = (RunId::new_unchecked("r1"), RunId::new_unchecked("r10"));
        {
            let store = Store::open(dir.path()).unwrap();
            store.put_run(&run("r1")).unwrap();
            store.put_run(&run("r10")).unwrap();
            let mut a = TaskRecord::new(TaskId::new_unchecked("a"));
            store.put_tasks(&r1, [&a, &TaskRecord::new(TaskId::new_unchecked("b"))]).unwrap();
            a.status = TaskStatus::Succeeded;
            store.put_task(&r1, &a).unwrap();
            store.put_task(&r2, &TaskRecord::new(TaskId::new_unchecked("z"))).unwrap();
            store
                .append_event(&r1, &RunEvent::TaskCancelled { task_id: a.task_id.clone() })
                .unwrap();
            store.commit().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.run(&r1).unwrap().unwrap().run_id, r1);
        assert!(store.run(&RunId::new_unchecked("nope")).unwrap().is_none());
        assert_eq!(store.runs().unwrap().len(), 2);
        let tasks = store.tasks(&r1).unwrap();
        assert_eq!(tasks.len(), 2, "r10's tasks must not show up under r1");
        assert_eq!(tasks[0].status, TaskStatus::Succeeded);
        assert_eq!(store.events(&r1).unwrap().len(), 1);
        assert!(store.events(&r2).unwrap().is_empty());
    }

    #[test]
    fn a_journal_left_by_a_crash_is_replayed() {
        let (crashed, fresh) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let run = RunId::new_unchecked("r1");
        let store = Store::open(crashed.path()).unwrap();
        store.put_run(&self::run("r1")).unwrap();
        let mut a = TaskRecord::new(TaskId::new_unchecked("a"));
        store.put_task(&run, &a).unwrap();
        a.status = TaskStatus::Running;
        store.put_task(&run, &a).unwrap();
        store.append_event(&run, &RunEvent::TaskCancelled { task_id: a.task_id.clone() }).unwrap();
        store.commit().unwrap();
        store.put_task(&run, &TaskRecord::new(TaskId::new_unchecked("uncommitted"))).unwrap();
        // What a crash leaves: the committed journal, and a sled that never flushed.
        let journal = std::fs::read(crashed.path().join(JOURNAL)).unwrap();
        std::fs::write(fresh.path().join(JOURNAL), &journal).unwrap();
        // a torn last line (an OS crash mid-write) is ignored
        let mut torn = journal.clone();
        torn.extend_from_slice(b"{\"tree\":\"tasks\",\"ke");
        std::fs::write(fresh.path().join(JOURNAL), &torn).unwrap();

        let recovered = Store::open(fresh.path()).unwrap();
        assert_eq!(recovered.run(&run).unwrap().unwrap().run_id, run);
        let tasks = recovered.tasks(&run).unwrap();
        assert_eq!(tasks.len(), 1, "only committed writes are in the journal");
        assert_eq!(tasks[0].status, TaskStatus::Running, "later entries win");
        assert_eq!(recovered.events(&run).unwrap().len(), 1);
        assert_eq!(
            std::fs::metadata(fresh.path().join(JOURNAL)).unwrap().len(),
            0,
            "replayed, then emptied"
        );
        drop(recovered);
        // sync makes sled durable and empties the journal
        store.sync().unwrap();
        assert_eq!(std::fs::metadata(crashed.path().join(JOURNAL)).unwrap().len(), 0);
    }

    #[test]
    fn a_store_is_in_use_while_it_is_open() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!Store::is_in_use(dir.path()), "no store yet");
        let store = Store::open(dir.path()).unwrap();
        assert!(Store::is_in_use(dir.path()), "held by this process");
        drop(store);
        assert!(!Store::is_in_use(dir.path()), "released");
    }

    #[test]
    fn corrupt_records_are_reported_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.runs.insert("bad", b"{not json".to_vec()).unwrap();
        let err = store.run(&RunId::new_unchecked("bad")).unwrap_err();
        assert_eq!(err.to_string(), "stored record `bad` is not valid");
    }
}
