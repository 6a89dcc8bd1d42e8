//! The durable run state: a small typed store over sled. The only place that opens sled.
//!
//! Layout: tree `runs` (run id → [`RunRecord`]), tree `tasks` (`<run>/<task>` → [`TaskRecord`]),
//! tree `events` (`<run>/<seq u64 BE>` → [`RunEvent`], append-only). Values are proto JSON, so
//! the store is readable by any version that speaks the same protocol.
//!
//! Architecture invariant: callers write every transition, then [`Store::flush`], and only then
//! publish the effect of that transition.

use orchestra_proto::{RunEvent, RunId, RunRecord, TaskRecord};
use serde::{Serialize, de::DeserializeOwned};
use std::path::{Path, PathBuf};

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
    #[error("stored record `{key}` is not valid")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A cheap-to-clone handle on the store.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    runs: sled::Tree,
    tasks: sled::Tree,
    events: sled::Tree,
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

impl Store {
    #[allow(clippy::disallowed_methods)] // the one place that opens sled
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .flush_every_ms(None)
            .open()
            .map_err(|source| StoreError::Open { path: path.to_owned(), source })?;
        Ok(Self {
            runs: db.open_tree("runs")?,
            tasks: db.open_tree("tasks")?,
            events: db.open_tree("events")?,
            db,
        })
    }

    pub fn put_run(&self, run: &RunRecord) -> Result<(), StoreError> {
        self.runs.insert(run.run_id.as_str(), to_json(run))?;
        Ok(())
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
        self.tasks.insert(task_key(run, task.task_id.as_str()), to_json(task))?;
        Ok(())
    }

    /// Writes many task records atomically.
    pub fn put_tasks<'a>(
        &self,
        run: &RunId,
        tasks: impl IntoIterator<Item = &'a TaskRecord>,
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for t in tasks {
            batch.insert(task_key(run, t.task_id.as_str()), to_json(t));
        }
        self.tasks.apply_batch(batch)?;
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
        self.events.insert(key, to_json(event))?;
        Ok(())
    }

    /// The run's event log, oldest first.
    pub fn events(&self, run: &RunId) -> Result<Vec<RunEvent>, StoreError> {
        self.events
            .scan_prefix(run_prefix(run))
            .map(|kv| kv.map_err(StoreError::from).and_then(|(k, v)| from_json(&k, &v)))
            .collect()
    }

    /// Makes every write so far durable: written out of sled's buffers and synced.
    ///
    /// Synchronous on purpose: on this path it costs tens of microseconds, less than handing
    /// the work to sled's I/O threads and waking up again (measured with `bench/noop.sh`).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
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
            },
            created_at: Timestamp::from_millis(1),
            finished_at: None,
            seed: 1,
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
            store.flush().unwrap();
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
    fn corrupt_records_are_reported_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.runs.insert("bad", b"{not json".to_vec()).unwrap();
        let err = store.run(&RunId::new_unchecked("bad")).unwrap_err();
        assert_eq!(err.to_string(), "stored record `bad` is not valid");
    }
}
