//! Distributed mode: a remote worker has its own run directory, so results travel through the
//! bus's object store.
//!
//! - worker, after an attempt: [`upload_artifacts`] puts each artifact into
//!   [`subjects::ARTIFACTS_BUCKET`] under its SHA-256 hex, [`upload_logs`] puts the attempt's
//!   output files into [`subjects::LOGS_BUCKET`] under [`subjects::log_object`];
//! - worker, before staging: [`fetch_inputs`] fetches the dependency artifacts its run directory
//!   lacks;
//! - L1, after a run: [`fetch_results`] makes its run directory look like an embedded one.
//!
//! Invariants: an artifact read from the store is written only if its size and SHA-256 match
//! its record, and every file is written aside then renamed, so a run directory never holds a
//! partial or unverified artifact. Objects are held in memory whole, so they are bounded
//! ([`DEFAULT_MAX_OBJECT_BYTES`]).

use crate::artifacts::{self, ArtifactError};
use bytes::Bytes;
use orchestra_bus::{Bus, BusError};
use orchestra_proto::{ArtifactRecord, InputRef, RunId, Stream, TaskId, layout, subjects};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use tracing::warn;

/// Largest artifact (and output file) a remote worker moves through the object store: 256 MiB.
/// A larger artifact fails its attempt; a larger output file is uploaded truncated.
pub const DEFAULT_MAX_OBJECT_BYTES: u64 = 256 * 1024 * 1024;

/// Why results could not be moved through the object store. On a worker it is reported as an
/// [`orchestra_proto::FailureKind::Artifact`] failure.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(
        "artifact `{path}` of task `{task}` is {size} bytes, more than the {limit} bytes a remote \
         worker moves through the object store"
    )]
    TooLarge { task: TaskId, path: String, size: u64, limit: u64 },
    #[error(
        "artifact `{path}` of task `{task}` (sha256 {sha256}) is not in object store `{bucket}`"
    )]
    NotInStore { task: TaskId, path: String, sha256: String, bucket: &'static str },
    #[error(
        "artifact `{path}` of task `{task}` does not match its record: expected {expected_size} \
         bytes with sha256 {expected_sha256}, got {size} bytes with sha256 {sha256}"
    )]
    Mismatch {
        task: TaskId,
        path: String,
        expected_size: u64,
        expected_sha256: String,
        size: u64,
        sha256: String,
    },
    #[error("artifact path `{path}` of task `{task}` is unsafe")]
    BadPath {
        task: TaskId,
        path: String,
        #[source]
        source: Box<ArtifactError>,
    },
    #[error("failed to put `{key}` into object store `{bucket}`")]
    Put {
        bucket: &'static str,
        key: String,
        #[source]
        source: BusError,
    },
    #[error("failed to get `{key}` from object store `{bucket}`")]
    Get {
        bucket: &'static str,
        key: String,
        #[source]
        source: BusError,
    },
    #[error("failed to read `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to write `{}`", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a file task stopped before it finished")]
    Join {
        #[source]
        source: tokio::task::JoinError,
    },
}

/// What [`fetch_results`] did. Paths are relative to the run directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchReport {
    /// Files written from the store.
    pub written: Vec<PathBuf>,
    /// Files already present with the right content, left alone.
    pub present: Vec<PathBuf>,
    /// Output files the store does not hold: a stream that wrote nothing leaves none.
    pub absent_logs: Vec<PathBuf>,
    /// Bytes written.
    pub bytes: u64,
}

/// An artifact as both [`ArtifactRecord`] and [`InputRef`] describe it.
#[derive(Debug, Clone, Copy)]
struct Wanted<'a> {
    task: &'a TaskId,
    path: &'a str,
    size: u64,
    sha256: &'a str,
}

impl<'a> From<&'a ArtifactRecord> for Wanted<'a> {
    fn from(r: &'a ArtifactRecord) -> Self {
        Self { task: &r.task, path: &r.path, size: r.size, sha256: &r.sha256 }
    }
}

impl<'a> From<&'a InputRef> for Wanted<'a> {
    fn from(r: &'a InputRef) -> Self {
        Self { task: &r.task, path: &r.path, size: r.size, sha256: &r.sha256 }
    }
}

impl Wanted<'_> {
    /// `artifacts/<task>/<path>`, once the path is known to stay inside.
    fn rel(&self) -> Result<PathBuf, RemoteError> {
        artifacts::check_relative(self.path).map_err(|source| RemoteError::BadPath {
            task: self.task.clone(),
            path: self.path.to_owned(),
            source: Box::new(source),
        })?;
        Ok(layout::artifact(self.task, self.path))
    }

    /// Checks content of `size` bytes hashing to `sha256` against the record.
    fn check(&self, size: u64, sha256: String) -> Result<(), RemoteError> {
        if size == self.size && sha256 == self.sha256 {
            return Ok(());
        }
        Err(RemoteError::Mismatch {
            task: self.task.clone(),
            path: self.path.to_owned(),
            expected_size: self.size,
            expected_sha256: self.sha256.to_owned(),
            size,
            sha256,
        })
    }
}

/// Puts each artifact (already collected into `<run_dir>/artifacts/`) into the store under its
/// SHA-256, once per distinct content. The bytes are checked against the record first.
pub async fn upload_artifacts(
    bus: &dyn Bus,
    run_dir: &Path,
    records: &[ArtifactRecord],
    max_bytes: u64,
) -> Result<(), RemoteError> {
    if let Some(r) = records.iter().find(|r| r.size > max_bytes) {
        return Err(RemoteError::TooLarge {
            task: r.task.clone(),
            path: r.path.clone(),
            size: r.size,
            limit: max_bytes,
        });
    }
    let mut sent = HashSet::new();
    for record in records {
        if !sent.insert(record.sha256.as_str()) {
            continue;
        }
        let wanted = Wanted::from(record);
        let path = run_dir.join(wanted.rel()?);
        let bytes = read_bounded(path, max_bytes).await?;
        if bytes.len() as u64 > max_bytes {
            return Err(RemoteError::TooLarge {
                task: record.task.clone(),
                path: record.path.clone(),
                size: bytes.len() as u64,
                limit: max_bytes,
            });
        }
        let bytes = Bytes::from(bytes);
        wanted.check(bytes.len() as u64, hash(bytes.clone()).await?)?;
        let bucket = subjects::ARTIFACTS_BUCKET;
        bus.object_put(bucket, &record.sha256, bytes).await.map_err(|source| RemoteError::Put {
            bucket,
            key: record.sha256.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Puts the attempt's output files that exist into the store; returns how many. A file larger
/// than `max_bytes` is uploaded truncated to it.
pub async fn upload_logs(
    bus: &dyn Bus,
    run_dir: &Path,
    run: &RunId,
    task: &TaskId,
    attempt: u32,
    max_bytes: u64,
) -> Result<usize, RemoteError> {
    let mut sent = 0;
    for stream in [Stream::Stdout, Stream::Stderr] {
        let path = run_dir.join(layout::attempt_output(task, attempt, stream));
        let mut bytes = match read_bounded(path.clone(), max_bytes).await {
            Ok(bytes) => bytes,
            Err(RemoteError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        if bytes.len() as u64 > max_bytes {
            warn!(path = %path.display(), limit = max_bytes, "output file too large for the object store; uploading its beginning");
            bytes.truncate(usize::try_from(max_bytes).unwrap_or(usize::MAX));
        }
        let (bucket, key) =
            (subjects::LOGS_BUCKET, subjects::log_object(run, task, attempt, stream));
        bus.object_put(bucket, &key, Bytes::from(bytes))
            .await
            .map_err(|source| RemoteError::Put { bucket, key, source })?;
        sent += 1;
    }
    Ok(sent)
}

/// Makes every input available at `<run_dir>/artifacts/<task>/<path>`: a file already there
/// with the right size and hash is kept, any other is fetched from the store by SHA-256 and
/// verified. Returns how many were fetched.
pub async fn fetch_inputs(
    bus: &dyn Bus,
    run_dir: &Path,
    inputs: &[InputRef],
) -> Result<usize, RemoteError> {
    let mut fetched = 0;
    for input in inputs {
        if let Fetched::Written(_) = fetch_artifact(bus, run_dir, input.into()).await? {
            fetched += 1;
        }
    }
    Ok(fetched)
}

/// L1 after a distributed run: downloads the output files of the given attempts into
/// `<run_dir>/tasks/<task>/<attempt>/` and the artifacts into `<run_dir>/artifacts/<task>/`,
/// verifying each artifact's SHA-256 and skipping files already present with the right content.
/// Stops at the first error (a mismatch names the artifact).
pub async fn fetch_results(
    bus: &dyn Bus,
    run_dir: &Path,
    run: &RunId,
    attempts: &[(TaskId, u32)],
    records: &[ArtifactRecord],
) -> Result<FetchReport, RemoteError> {
    let mut report = FetchReport::default();
    for (task, attempt) in attempts {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rel = layout::attempt_output(task, *attempt, stream);
            let (bucket, key) =
                (subjects::LOGS_BUCKET, subjects::log_object(run, task, *attempt, stream));
            let got = bus.object_get(bucket, &key).await.map_err(|source| RemoteError::Get {
                bucket,
                key,
                source,
            })?;
            let Some(bytes) = got else {
                report.absent_logs.push(rel);
                continue;
            };
            let dest = run_dir.join(&rel);
            let len = bytes.len() as u64;
            let written = blocking(move || {
                if std::fs::read(&dest).is_ok_and(|local| local == bytes) {
                    return Ok(false);
                }
                write_atomic(&dest, &bytes)?;
                Ok(true)
            })
            .await?;
            if written {
                report.bytes += len;
                report.written.push(rel);
            } else {
                report.present.push(rel);
            }
        }
    }
    for record in records {
        match fetch_artifact(bus, run_dir, record.into()).await? {
            Fetched::Present(rel) => report.present.push(rel),
            Fetched::Written(rel) => {
                report.bytes += record.size;
                report.written.push(rel);
            }
        }
    }
    Ok(report)
}

enum Fetched {
    Present(PathBuf),
    Written(PathBuf),
}

/// Ensures `<run_dir>/artifacts/<task>/<path>` holds the wanted content, fetching it if not.
async fn fetch_artifact(
    bus: &dyn Bus,
    run_dir: &Path,
    wanted: Wanted<'_>,
) -> Result<Fetched, RemoteError> {
    let rel = wanted.rel()?;
    let dest = run_dir.join(&rel);
    let (size, sha256) = (wanted.size, wanted.sha256.to_owned());
    let local = dest.clone();
    if blocking(move || Ok(file_matches(&local, size, &sha256))).await? {
        return Ok(Fetched::Present(rel));
    }
    let bucket = subjects::ARTIFACTS_BUCKET;
    let got = bus.object_get(bucket, wanted.sha256).await.map_err(|source| RemoteError::Get {
        bucket,
        key: wanted.sha256.to_owned(),
        source,
    })?;
    let Some(bytes) = got else {
        return Err(RemoteError::NotInStore {
            task: wanted.task.clone(),
            path: wanted.path.to_owned(),
            sha256: wanted.sha256.to_owned(),
            bucket,
        });
    };
    wanted.check(bytes.len() as u64, hash(bytes.clone()).await?)?;
    blocking(move || write_atomic(&dest, &bytes)).await?;
    Ok(Fetched::Written(rel))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The SHA-256 hex of `bytes`, computed off the async threads.
async fn hash(bytes: Bytes) -> Result<String, RemoteError> {
    blocking(move || Ok(sha256_hex(&bytes))).await
}

/// True when `path` is a file of `size` bytes with this SHA-256.
fn file_matches(path: &Path, size: u64, sha256: &str) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == size)
        && artifacts::hash_file(path).is_ok_and(|(n, h)| n == size && h == sha256)
}

/// Reads at most `max + 1` bytes of `path`, so a caller can tell that it is longer than `max`.
async fn read_bounded(path: PathBuf, max: u64) -> Result<Vec<u8>, RemoteError> {
    blocking(move || {
        let read_err = |source| RemoteError::Read { path: path.clone(), source };
        let file = std::fs::File::open(&path).map_err(read_err)?;
        let mut bytes = Vec::new();
        file.take(max.saturating_add(1)).read_to_end(&mut bytes).map_err(read_err)?;
        Ok(bytes)
    })
    .await
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to a temporary file next to `dest` (creating parents), then renames it.
fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<(), RemoteError> {
    let write_err = |source| RemoteError::Write { path: dest.to_owned(), source };
    let parent = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(write_err)?;
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = parent.join(format!(".{name}.fetch-{}-{seq}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        std::fs::rename(&tmp, dest)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(write_err)
}

/// Runs file work (reads, hashes, writes) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RemoteError> + Send + 'static,
) -> Result<T, RemoteError> {
    tokio::task::spawn_blocking(f).await.map_err(|source| RemoteError::Join { source })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mismatch_is_found_by_size_or_hash() {
        let task = TaskId::new_unchecked("t");
        let good = sha256_hex(b"abc");
        let check = |bytes: &[u8], size: u64, sha256: &str, expect: Option<&str>| {
            let wanted = Wanted { task: &task, path: "out.txt", size, sha256 };
            let checked = wanted.check(bytes.len() as u64, sha256_hex(bytes));
            assert_eq!(checked.err().map(|e| e.to_string()).as_deref(), expect);
        };
        check(b"abc", 3, &good, None);
        let bad_hash = format!(
            "artifact `out.txt` of task `t` does not match its record: expected 3 bytes with \
             sha256 {}, got 3 bytes with sha256 {good}",
            "0".repeat(64)
        );
        check(b"abc", 3, &"0".repeat(64), Some(&bad_hash));
        let bad_size = format!(
            "artifact `out.txt` of task `t` does not match its record: expected 4 bytes with \
             sha256 {good}, got 3 bytes with sha256 {good}"
        );
        check(b"abc", 4, &good, Some(&bad_size));
    }

    #[test]
    fn unsafe_record_paths_are_refused() {
        let task = TaskId::new_unchecked("t");
        let check = |path: &str, ok: bool| {
            let wanted = Wanted { task: &task, path, size: 0, sha256: "" };
            assert_eq!(wanted.rel().is_ok(), ok, "{path}");
        };
        check("out.txt", true);
        check("dir/out.txt", true);
        check("../escape", false);
        check("a/../../escape", false);
        check("/etc/passwd", false);
        check("", false);
    }

    #[test]
    fn file_matching_checks_size_and_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello").unwrap();
        let sha = sha256_hex(b"hello");
        let check = |path: &Path, size: u64, sha256: &str, expect: bool| {
            assert_eq!(file_matches(path, size, sha256), expect);
        };
        check(&path, 5, &sha, true);
        check(&path, 4, &sha, false);
        check(&path, 5, &sha256_hex(b"hellp"), false);
        check(&dir.path().join("missing"), 5, &sha, false);
        check(dir.path(), 5, &sha, false);
    }
}
