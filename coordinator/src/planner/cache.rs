//! The plan cache: one JSON file per key in a directory, written atomically. A damaged entry
//! is a miss (and a warning), never an error that stops a run.

use orchestra_proto::{CachedPlan, GoalRequest};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tracing::warn;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot write the plan cache entry `{}`", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the plan cache directory `{}`", path.display())]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no cached plan matches `{prefix}`")]
    NotFound { prefix: String },
    #[error("`{prefix}` matches {count} cached plans")]
    Ambiguous { prefix: String, count: usize },
}

/// What the cache key covers. Changing any of it asks the model again.
#[derive(Serialize)]
struct KeyParts<'a> {
    name: &'a str,
    goal: &'a str,
    context: Vec<(&'a str, &'a str)>,
    tools: &'a orchestra_proto::ToolRules,
    defaults: &'a orchestra_proto::TaskDefaults,
    policy: &'a str,
    prompt_version: &'a str,
    backend: &'a str,
    model: Option<&'a str>,
}

/// The cache key of a goal request (SHA-256 hex).
pub fn key(goal: &GoalRequest, prompt_version: &str, backend: &str, model: Option<&str>) -> String {
    let parts = KeyParts {
        name: &goal.name,
        goal: &goal.goal,
        context: goal.context.iter().map(|f| (f.path.as_str(), f.sha256.as_str())).collect(),
        tools: &goal.tools,
        defaults: &goal.defaults,
        policy: &goal.policy_summary,
        prompt_version,
        backend,
        model,
    };
    // Plain data: serializing cannot fail.
    let bytes = serde_json::to_vec(&parts).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

#[derive(Debug, Clone)]
pub struct PlanCache {
    dir: PathBuf,
}

impl PlanCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn get(&self, key: &str) -> Option<CachedPlan> {
        let path = self.dir.join(format!("{key}.json"));
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "plan cache entry unreadable; asking the model");
                return None;
            }
        };
        match serde_json::from_slice::<CachedPlan>(&bytes) {
            Ok(entry) if entry.key == key => Some(entry),
            Ok(_) => {
                warn!(path = %path.display(), "plan cache entry has another key; ignored");
                None
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e, "plan cache entry damaged; ignored");
                None
            }
        }
    }

    pub fn put(&self, entry: &CachedPlan) -> Result<(), CacheError> {
        let path = self.dir.join(format!("{}.json", entry.key));
        let tmp = self.dir.join(format!(".{}.json.tmp", entry.key));
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let mut bytes = serde_json::to_vec_pretty(entry).map_err(std::io::Error::other)?;
            bytes.push(b'\n');
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|source| CacheError::Write { path, source })
    }

    /// Every readable entry, newest first. A missing directory is an empty cache.
    pub fn list(&self) -> Result<Vec<CachedPlan>, CacheError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(CacheError::List { path: self.dir.clone(), source }),
        };
        let mut plans: Vec<CachedPlan> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let key = name.strip_suffix(".json")?;
                if key.starts_with('.') {
                    return None;
                }
                self.get(key)
            })
            .collect();
        plans.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| a.key.cmp(&b.key)));
        Ok(plans)
    }

    /// The one entry whose key starts with `prefix`.
    pub fn find(&self, prefix: &str) -> Result<CachedPlan, CacheError> {
        let mut matches: Vec<CachedPlan> =
            self.list()?.into_iter().filter(|p| p.key.starts_with(prefix)).collect();
        match matches.len() {
            0 => Err(CacheError::NotFound { prefix: prefix.to_owned() }),
            1 => Ok(matches.remove(0)),
            count => Err(CacheError::Ambiguous { prefix: prefix.to_owned(), count }),
        }
    }
}
