//! Headless Chromium and the real Mermaid package, as test infrastructure.
//!
//! - [`chromium`] / [`mermaid_js`]: the browser (Debian `chromium`) and the pinned Mermaid
//!   bundle, installed once by `scripts/install-chromium` and `scripts/install-mermaid`.
//! - [`check_mermaid`]: Mermaid's own verdict on diagram sources (`mermaid.parse`, then
//!   `mermaid.render`), one browser run for the whole batch.
//! - [`render`]: a local HTML file as the browser sees it: the DOM after load and a screenshot.
//!
//! Invariants: every browser run has a fresh profile, a hard timeout (the whole process group
//! is killed on expiry) and no network beyond loopback (`--no-proxy-server` and a host resolver
//! that resolves nothing else, IP literals included); pages are loaded from `file://` only.

use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Wall-clock bound of one browser run; generous, as tests run browsers in parallel on 2 cores.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);

/// How long (virtual time) a page may run its scripts before the DOM is dumped.
const VIRTUAL_TIME_BUDGET_MS: u32 = 10_000;

/// Path of a headless-capable Chromium, found or installed by `scripts/install-chromium`.
///
/// # Panics
/// When the install script fails or prints no runnable path.
pub fn chromium() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(|| crate::install("scripts/install-chromium")) {
        Ok(path) => path.clone(),
        Err(message) => panic!("cannot get headless chromium: {message}"),
    }
}

/// Path of the pinned Mermaid browser bundle (`mermaid.min.js`), installed by
/// `scripts/install-mermaid`.
///
/// # Panics
/// When the install script fails or prints no existing path.
pub fn mermaid_js() -> PathBuf {
    static JS: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match JS.get_or_init(|| crate::install("scripts/install-mermaid")) {
        Ok(path) => path.clone(),
        Err(message) => panic!("cannot get mermaid.min.js: {message}"),
    }
}

/// Parses each diagram with the real Mermaid (`mermaid.parse`, then `mermaid.render` into an
/// offscreen element) inside headless Chromium; `Ok(svg length)` or `Err(Mermaid's message)`,
/// one result per diagram, in order.
///
/// # Panics
/// When the browser cannot run, times out, or the page reports no verdict for every diagram.
pub fn check_mermaid(diagrams: &[String]) -> Vec<Result<usize, String>> {
    let dir = tempdir();
    let page = dir.path().join("check.html");
    let data = dir.path().join("diagrams.js");
    let sources = serde_json::to_string(diagrams).expect("strings serialize to JSON");
    write(&data, &format!("const DIAGRAMS = {sources};\n"));
    write(&page, &check_page(&file_url(&mermaid_js())));

    let run = run_browser(dir.path(), &["--dump-dom".to_owned(), file_url(&page)]);
    let results = extract_results(&run.stdout).unwrap_or_else(|e| {
        panic!("mermaid check page gave no results: {e}\nchromium stderr:\n{}", run.stderr_tail())
    });
    if results.len() != diagrams.len() {
        panic!(
            "mermaid check page gave {} results for {} diagrams: {results:?}\nchromium stderr:\n{}",
            results.len(),
            diagrams.len(),
            run.stderr_tail()
        );
    }
    results
}

/// A page as headless Chromium rendered it.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The serialized DOM after load (`--dump-dom`).
    pub dom: String,
}

/// Loads a local HTML file in headless Chromium; returns the DOM after load (`--dump-dom`)
/// and writes a PNG screenshot (1280×2000 window) to `screenshot`, creating its directory.
///
/// # Panics
/// When the browser cannot run, times out, or writes no screenshot.
pub fn render(html: &Path, screenshot: &Path) -> Rendered {
    let html = std::path::absolute(html).expect("absolute path of the html file");
    let shot = std::path::absolute(screenshot).expect("absolute path of the screenshot");
    if let Some(parent) = shot.parent() {
        fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("cannot create `{}`: {e}", parent.display()));
    }
    // A stale file must not pass for a fresh screenshot.
    let _ = fs::remove_file(&shot);
    let dir = tempdir();
    let run = run_browser(
        dir.path(),
        &[
            "--window-size=1280,2000".to_owned(),
            format!("--screenshot={}", shot.display()),
            "--dump-dom".to_owned(),
            file_url(&html),
        ],
    );
    if !shot.is_file() {
        panic!("chromium wrote no screenshot to `{}`\n{}", shot.display(), run.stderr_tail());
    }
    Rendered { dom: run.stdout }
}

/// The check page: loads Mermaid and the diagrams, writes the verdicts as JSON into
/// `<pre id="results">`. The JSON escapes `<`, `>`, `&` and non-ASCII so the DOM dump
/// carries it verbatim (no HTML entities).
fn check_page(mermaid_url: &str) -> String {
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8">
<script src="{mermaid_url}"></script>
<script src="diagrams.js"></script>
</head><body>
<div id="stage" style="position:absolute;left:-10000px;top:0;width:1200px"></div>
<pre id="results">pending</pre>
<script>
(async () => {{
  const message = (e) => String((e && e.message) || e);
  const out = [];
  try {{
    mermaid.initialize({{ startOnLoad: false, securityLevel: "strict" }});
    const stage = document.getElementById("stage");
    for (let i = 0; i < DIAGRAMS.length; i++) {{
      try {{
        await mermaid.parse(DIAGRAMS[i]);
        const {{ svg }} = await mermaid.render("orchestra-check-" + i, DIAGRAMS[i], stage);
        out.push({{ ok: svg.length }});
      }} catch (e) {{
        out.push({{ err: message(e) }});
      }}
    }}
  }} catch (e) {{
    out.length = 0;
    out.push({{ fatal: message(e) }});
  }}
  document.getElementById("results").textContent = JSON.stringify(out).replace(
    /[<>&\u007f-\uffff]/g,
    (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"),
  );
}})();
</script>
</body></html>
"#
    )
}

/// Reads the verdicts out of the dumped DOM of the check page.
fn extract_results(dom: &str) -> Result<Vec<Result<usize, String>>, String> {
    const OPEN: &str = r#"<pre id="results">"#;
    let start = dom.find(OPEN).ok_or("no results element in the DOM")? + OPEN.len();
    let len = dom[start..].find("</pre>").ok_or("unterminated results element")?;
    let text = &dom[start..start + len];
    if text == "pending" {
        return Err("the page did not finish within its time budget".to_owned());
    }
    let items: Vec<Value> =
        serde_json::from_str(text).map_err(|e| format!("results are not JSON ({e}): {text}"))?;
    items
        .iter()
        .map(|item| {
            if let Some(n) = item.get("ok").and_then(Value::as_u64) {
                Ok(Ok(usize::try_from(n).unwrap_or(usize::MAX)))
            } else if let Some(e) = item.get("err").and_then(Value::as_str) {
                Ok(Err(e.to_owned()))
            } else if let Some(e) = item.get("fatal").and_then(Value::as_str) {
                Err(format!("mermaid failed to start: {e}"))
            } else {
                Err(format!("unexpected result item {item}"))
            }
        })
        .collect()
}

/// A `file://` URL for an absolute path, percent-encoding every byte outside
/// `A-Za-z0-9-._~/`.
fn file_url(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut url = String::from("file://");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            url.push(char::from(b));
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

/// The flags of every run: headless, fresh profile (added by the caller), nothing fetched
/// beyond loopback, no background services.
fn base_flags(profile: &Path) -> Vec<String> {
    [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--allow-file-access-from-files",
        "--no-proxy-server",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--disable-breakpad",
        "--no-first-run",
        "--no-default-browser-check",
        "--hide-scrollbars",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([
        format!("--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}"),
        format!("--user-data-dir={}", profile.display()),
    ])
    .collect()
}

struct BrowserRun {
    stdout: String,
    stderr: String,
}

impl BrowserRun {
    /// The last lines of stderr, for panic messages.
    fn stderr_tail(&self) -> String {
        let lines: Vec<&str> = self.stderr.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// Runs chromium with the base flags plus `args`, in its own process group, stdout and stderr
/// to files in `dir`; kills the group when it runs past [`BROWSER_TIMEOUT`].
// Test infrastructure: clippy.toml reserves spawning for the worker's executor.
#[allow(clippy::disallowed_methods)]
fn run_browser(dir: &Path, args: &[String]) -> BrowserRun {
    use std::os::unix::process::CommandExt;
    let bin = chromium();
    let profile = dir.join("profile");
    let out_path = dir.join("stdout");
    let err_path = dir.join("stderr");
    let stdout = fs::File::create(&out_path).expect("create the browser's stdout file");
    let stderr = fs::File::create(&err_path).expect("create the browser's stderr file");
    let mut child = Command::new(&bin)
        .args(base_flags(&profile))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("failed to start `{}`: {e}", bin.display()));

    let status = wait_bounded(&mut child, BROWSER_TIMEOUT);
    let run = BrowserRun {
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
    };
    match status {
        Some(status) if status.success() => run,
        Some(status) => panic!("`{}` exited with {status}\n{}", bin.display(), run.stderr_tail()),
        None => panic!(
            "`{}` ran past {BROWSER_TIMEOUT:?} and was killed\n{}",
            bin.display(),
            run.stderr_tail()
        ),
    }
}

/// Waits for `child` at most `limit`; on expiry kills its process group (SIGKILL, by the
/// child's pid, which leads the group) and returns `None`.
fn wait_bounded(child: &mut std::process::Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    // Bounded: at most limit / 50 ms iterations.
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("failed to wait for chromium: {e}"),
        }
    }
    // The leader is not reaped yet, so its pid still names our group.
    let pgid = i32::try_from(child.id()).ok().map(nix::unistd::Pid::from_raw);
    if let Some(pgid) = pgid {
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("orchestra-browser-")
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"))
}

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("cannot write `{}`: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_are_percent_encoded() {
        fn check(path: &str, expect: &str) {
            assert_eq!(file_url(Path::new(path)), expect, "{path}");
        }
        check("/tmp/a.html", "file:///tmp/a.html");
        check("/a b/c.html", "file:///a%20b/c.html");
        check("/x/#?%.html", "file:///x/%23%3F%25.html");
        check("/r/~user/a-b_c.d", "file:///r/~user/a-b_c.d");
        check("/é", "file:///%C3%A9");
    }

    #[test]
    fn results_are_read_from_the_dom() {
        fn check(dom: &str, expect: Result<Vec<Result<usize, String>>, &str>) {
            let got = extract_results(dom);
            match expect {
                Ok(items) => assert_eq!(got, Ok(items), "{dom}"),
                Err(fragment) => {
                    let err = got.expect_err(dom);
                    assert!(err.contains(fragment), "{err:?} lacks {fragment:?}");
                }
            }
        }
        let pre = |s: &str| format!(r#"<body><pre id="results">{s}</pre></body>"#);
        check(&pre("[]"), Ok(vec![]));
        check(
            &pre(r#"[{"ok":12},{"err":"Parse error \u003c"}]"#),
            Ok(vec![Ok(12), Err("Parse error <".into())]),
        );
        check(&pre("pending"), Err("did not finish"));
        check(&pre(r#"[{"fatal":"mermaid is not defined"}]"#), Err("mermaid is not defined"));
        check(&pre(r#"[{"what":1}]"#), Err("unexpected result item"));
        check(&pre("[{"), Err("not JSON"));
        check("<body></body>", Err("no results element"));
        check(r#"<pre id="results">[]"#, Err("unterminated"));
    }

    // Spawns `sh` to check the timeout path without a 90 s browser hang.
    #[allow(clippy::disallowed_methods)]
    #[test]
    fn timeout_kills_the_whole_process_group() {
        use std::io::{BufRead, BufReader};
        use std::os::unix::process::CommandExt;
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30 & echo $!; wait"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let grandchild = format!("/proc/{}", line.trim());
        assert!(Path::new(&grandchild).exists(), "{grandchild}");

        let started = Instant::now();
        assert_eq!(wait_bounded(&mut child, Duration::from_millis(200)), None);
        assert!(started.elapsed() < Duration::from_secs(5));
        // The orphaned grandchild is reaped by its new parent shortly after the kill.
        let gone = (0..100).any(|_| {
            let state = fs::read_to_string(format!("{grandchild}/stat")).unwrap_or_default();
            let dead = state.is_empty() || state.contains(") Z ");
            if !dead {
                std::thread::sleep(Duration::from_millis(20));
            }
            dead
        });
        assert!(gone, "{grandchild} survived the group kill");
    }

    #[test]
    fn flags_keep_traffic_local() {
        let flags = base_flags(Path::new("/tmp/p"));
        let has = |f: &str| flags.iter().any(|x| x == f);
        assert!(has("--no-proxy-server"));
        assert!(has("--user-data-dir=/tmp/p"));
        assert!(flags.iter().any(|f| f.starts_with("--host-resolver-rules=MAP * ~NOTFOUND")));
    }
}
