//! `orchestra-testkit`: test support, used only as a dev-dependency.
//!
//! - [`MockLlm`]: a local HTTP server on `127.0.0.1` that speaks the Anthropic Messages API
//!   (JSON and SSE) and the OpenAI chat-completions API, answering from a script of [`Reply`]s
//!   and recording every request. The real Claude Code CLI accepts it (see
//!   `tests/real_claude.rs`).
//! - [`claude_bin`] / [`claude_env`]: the pinned real Claude Code CLI and the environment that
//!   keeps every byte it sends on loopback.
//! - [`browser`]: headless Chromium and the real Mermaid package (`scripts/install-chromium`,
//!   `scripts/install-mermaid`) to check generated diagrams and render HTML reports.
//! - [`nats`]: real nats-server processes on random loopback ports (`scripts/install-nats-server`),
//!   killed with the test process, with stop / `kill -9` / restart for fault tests.
//!
//! Invariants: the mock listens on loopback only and never rejects a request body; the script
//! is consumed one reply per model request, in order; an exhausted script answers 500 (counted),
//! never hangs.

#![forbid(unsafe_code)]

pub mod browser;
mod mock;
pub mod nats;

pub use mock::{MockLlm, Recorded, Reply};

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Path of the pinned Claude Code CLI, installed once by `scripts/install-claude-code`.
///
/// # Panics
/// When the install script fails or prints no runnable path.
pub fn claude_bin() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(install_claude) {
        Ok(path) => path.clone(),
        Err(message) => panic!("cannot get the Claude Code CLI: {message}"),
    }
}

fn install_claude() -> Result<PathBuf, String> {
    install("scripts/install-claude-code")
}

/// Runs one of the project's install scripts (`scripts/install-*`), which install a tool once
/// under `~/.cache` and print its path on the last line of stdout.
// The test kit runs the project's own install scripts; the browser module starts chromium.
#[allow(clippy::disallowed_methods)]
pub(crate) fn install(script: &str) -> Result<PathBuf, String> {
    let script = workspace_root().join(script);
    // Through bash, so a checkout that lost the executable bit still works.
    let out = std::process::Command::new("bash")
        .arg(&script)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("failed to run `{}`: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "`{}` exited with {}: {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let path = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
    if path.as_os_str().is_empty() || !path.is_file() {
        return Err(format!("`{}` printed no existing path: {stdout:?}", script.display()));
    }
    Ok(path)
}

/// The environment for the real CLI against a local server: nothing leaves loopback, no
/// retries, a 10 s request timeout. Use with `env_clear()`; `home` should be a fresh temp dir.
pub fn claude_env(base_url: &str, home: &Path) -> Vec<(String, String)> {
    [
        ("PATH", "/usr/bin:/bin"),
        ("HOME", &home.to_string_lossy()),
        ("ANTHROPIC_BASE_URL", base_url),
        ("ANTHROPIC_API_KEY", "dummy"),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
        ("DISABLE_TELEMETRY", "1"),
        ("DISABLE_AUTOUPDATER", "1"),
        ("CLAUDE_CODE_MAX_RETRIES", "0"),
        ("API_TIMEOUT_MS", "10000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_keeps_traffic_local() {
        let env = claude_env("http://127.0.0.1:9", Path::new("/tmp/h"));
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("ANTHROPIC_BASE_URL"), Some("http://127.0.0.1:9"));
        assert_eq!(get("HOME"), Some("/tmp/h"));
        assert_eq!(get("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"), Some("1"));
        assert_eq!(get("CLAUDE_CODE_MAX_RETRIES"), Some("0"));
        assert_eq!(env.len(), 9);
    }

    #[test]
    fn workspace_root_holds_the_install_script() {
        assert!(workspace_root().join("scripts/install-claude-code").is_file());
    }
}
