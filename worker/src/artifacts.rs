//! Artifacts: declared outputs copied out of a workspace after a success, and dependencies'
//! artifacts staged into a workspace before a spawn. Both are hashed (SHA-256) while copied.
//!
//! Invariants: nothing outside the workspace is ever collected (patterns are relative without
//! `..`, and every match is resolved, symlinks included, and checked to be inside); a file
//! appears at its destination only complete (written aside, then renamed), and a staged input
//! only if its size and hash match the record.

use orchestra_proto::{ArtifactRecord, InputRef, TaskId, layout};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Why outputs could not be collected or inputs staged. Always reported as
/// [`orchestra_proto::FailureKind::Artifact`].
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("output pattern is empty")]
    Empty,
    #[error("`{pattern}` is absolute; paths must be relative to the workspace")]
    Absolute { pattern: String },
    #[error("`{pattern}` contains `..`; paths must stay inside the workspace")]
    ParentDir { pattern: String },
    #[error("output `{pattern}` is not a valid glob")]
    BadGlob {
        pattern: String,
        #[source]
        source: glob::PatternError,
    },
    #[error("workspace path `{}` is not valid UTF-8", path.display())]
    NonUtf8Workspace { path: PathBuf },
    #[error("output `{pattern}` does not exist")]
    Missing { pattern: String },
    #[error("output glob `{pattern}` matched no file")]
    NoMatch { pattern: String },
    #[error("output `{path}` is a directory; use a glob such as `{path}/**/*`")]
    Directory { path: String },
    #[error("output `{path}` resolves to `{}`, outside the workspace", target.display())]
    Escapes { path: String, target: PathBuf },
    #[error("failed to read `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to copy `{}` to `{}`", from.display(), to.display())]
    Copy {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("input `{path}` of task `{task}` is not in the artifact store")]
    InputMissing { task: TaskId, path: String },
    #[error(
        "input `{path}` of task `{task}` does not match its record: expected {expected_size} \
         bytes with sha256 {expected_sha256}, found {size} bytes with sha256 {sha256}"
    )]
    InputMismatch {
        task: TaskId,
        path: String,
        expected_size: u64,
        expected_sha256: String,
        size: u64,
        sha256: String,
    },
}

/// Checks that a declared output (or input path) is relative and has no `..` component.
pub fn check_relative(pattern: &str) -> Result<(), ArtifactError> {
    if pattern.is_empty() {
        return Err(ArtifactError::Empty);
    }
    if pattern.starts_with('/') {
        return Err(ArtifactError::Absolute { pattern: pattern.to_owned() });
    }
    if pattern.split('/').any(|c| c == "..") {
        return Err(ArtifactError::ParentDir { pattern: pattern.to_owned() });
    }
    Ok(())
}

fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// `a/./b//c` → `a/b/c`: the path of a record, relative and `/`-separated.
fn normalize(rel: &Path) -> String {
    let parts: Vec<_> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy()),
            _ => None,
        })
        .collect();
    parts.join("/")
}

/// Expands the declared outputs into `relative path → path in the workspace`.
fn expand(
    workspace: &Path,
    patterns: &[String],
) -> Result<BTreeMap<String, PathBuf>, ArtifactError> {
    let mut files = BTreeMap::new();
    for pattern in patterns {
        check_relative(pattern)?;
        if !is_glob(pattern) {
            let path = workspace.join(pattern);
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // A dangling symlink is reported as what it is: it points somewhere else.
                    if let Ok(target) = std::fs::read_link(&path) {
                        return Err(ArtifactError::Escapes { path: pattern.clone(), target });
                    }
                    return Err(ArtifactError::Missing { pattern: pattern.clone() });
                }
                Err(source) => return Err(ArtifactError::Read { path, source }),
            };
            let rel = normalize(Path::new(pattern));
            if meta.is_dir() {
                return Err(ArtifactError::Directory { path: rel });
            }
            files.insert(rel, path);
            continue;
        }
        let Some(root) = workspace.to_str() else {
            return Err(ArtifactError::NonUtf8Workspace { path: workspace.to_owned() });
        };
        let full = format!("{}/{pattern}", glob::Pattern::escape(root));
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: true,
        };
        let paths = glob::glob_with(&full, options)
            .map_err(|source| ArtifactError::BadGlob { pattern: pattern.clone(), source })?;
        let mut matched = false;
        for entry in paths {
            let path = entry.map_err(|e| {
                let path = e.path().to_owned();
                ArtifactError::Read { path, source: e.into() }
            })?;
            if std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            let Ok(rel) = path.strip_prefix(workspace) else { continue };
            files.insert(normalize(rel), path);
            matched = true;
        }
        if !matched {
            return Err(ArtifactError::NoMatch { pattern: pattern.clone() });
        }
    }
    Ok(files)
}

/// Collects the declared outputs of a task from its workspace into `<run_dir>/artifacts/<task>/`,
/// returning one record per file, sorted by path.
pub fn collect_outputs(
    run_dir: &Path,
    workspace: &Path,
    task: &TaskId,
    patterns: &[String],
) -> Result<Vec<ArtifactRecord>, ArtifactError> {
    let files = expand(workspace, patterns)?;
    let root = std::fs::canonicalize(workspace)
        .map_err(|source| ArtifactError::Read { path: workspace.to_owned(), source })?;
    let mut records = Vec::with_capacity(files.len());
    for (rel, path) in files {
        let real =
            std::fs::canonicalize(&path).map_err(|source| match std::fs::read_link(&path) {
                Ok(target) => ArtifactError::Escapes { path: rel.clone(), target },
                Err(_) => ArtifactError::Read { path: path.clone(), source },
            })?;
        if !real.starts_with(&root) {
            return Err(ArtifactError::Escapes { path: rel, target: real });
        }
        let dest = run_dir.join(layout::artifact(task, &rel));
        let (size, sha256) = copy_hashed(&real, &dest, None)?;
        records.push(ArtifactRecord { task: task.clone(), path: rel, size, sha256 });
    }
    // Already in path order (BTreeMap), kept explicit for the contract.
    records.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(records)
}

/// Copies each input from `<run_dir>/artifacts/<task>/<path>` to `<workspace>/inputs/<task>/<path>`,
/// checking its size and SHA-256 against the record.
pub fn stage_inputs(
    run_dir: &Path,
    workspace: &Path,
    inputs: &[InputRef],
) -> Result<(), ArtifactError> {
    for input in inputs {
        check_relative(&input.path)?;
        let src = run_dir.join(layout::artifact(&input.task, &input.path));
        if !src.is_file() {
            return Err(ArtifactError::InputMissing {
                task: input.task.clone(),
                path: input.path.clone(),
            });
        }
        let dest = workspace.join(layout::staged_input(&input.task, &input.path));
        copy_hashed(&src, &dest, Some(input))?;
    }
    Ok(())
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Copies `from` to `to` (creating parents), hashing on the way. The bytes are written to a
/// temporary file next to `to` and renamed into place only if they match `expect` (when given).
/// Size and SHA-256 hex of a file, read in chunks.
pub(crate) fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                size += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((size, hex::encode(hasher.finalize())))
}

fn copy_hashed(
    from: &Path,
    to: &Path,
    expect: Option<&InputRef>,
) -> Result<(u64, String), ArtifactError> {
    let copy_err =
        |source| ArtifactError::Copy { from: from.to_owned(), to: to.to_owned(), source };
    let parent = to.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(copy_err)?;
    let name = to.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = parent.join(format!(".{name}.partial-{}-{seq}", std::process::id()));

    let result = (|| {
        let mut src = std::fs::File::open(from)
            .map_err(|source| ArtifactError::Read { path: from.to_owned(), source })?;
        let mut dst = std::fs::File::create(&tmp).map_err(copy_err)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(ArtifactError::Read { path: from.to_owned(), source }),
            };
            hasher.update(&buf[..n]);
            dst.write_all(&buf[..n]).map_err(copy_err)?;
            size += n as u64;
        }
        let sha256 = hex::encode(hasher.finalize());
        if let Some(input) = expect
            && (input.size != size || input.sha256 != sha256)
        {
            return Err(ArtifactError::InputMismatch {
                task: input.task.clone(),
                path: input.path.clone(),
                expected_size: input.size,
                expected_sha256: input.sha256.clone(),
                size,
                sha256,
            });
        }
        std::fs::rename(&tmp, to).map_err(copy_err)?;
        Ok((size, sha256))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_only() {
        let check = |pattern: &str, ok: bool| {
            assert_eq!(check_relative(pattern).is_ok(), ok, "{pattern:?}");
        };
        check("out.txt", true);
        check("dist/**/*.js", true);
        check("./a/b", true);
        check("a..b", true);
        check("..a/b", true);
        check("", false);
        check("/etc/passwd", false);
        check("../x", false);
        check("a/../../x", false);
        check("a/..", false);
        check("..", false);
    }

    #[test]
    fn record_paths_are_normalized() {
        let check = |rel: &str, expect: &str| assert_eq!(normalize(Path::new(rel)), expect);
        check("a", "a");
        check("./a/b", "a/b");
        check("a//b/./c", "a/b/c");
    }

    #[test]
    fn globs_are_recognized() {
        let check = |p: &str, expect: bool| assert_eq!(is_glob(p), expect, "{p}");
        check("a.txt", false);
        check("*.txt", true);
        check("a?.txt", true);
        check("[ab].txt", true);
        check("dir/**", true);
    }
}
