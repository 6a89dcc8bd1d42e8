//! The reports as people see them: every Mermaid diagram in `report.md` is parsed and
//! rendered by the real Mermaid package, and `report.html` is loaded in headless Chromium,
//! whose DOM is checked and whose screenshot is kept as a test artifact
//! (`$CARGO_TARGET_DIR/test-artifacts/report-*.png`).
#![allow(clippy::disallowed_methods)]

mod common;

use common::{bin, examples, only_run, read, write};
use orchestra_testkit::browser;
use std::path::{Path, PathBuf};

/// A run with every kind of outcome: a retry, a failure, a skip, artifacts, stderr with
/// characters that need escaping in Markdown, Mermaid and HTML.
const MIXED: &str = r#"
name: mixed
defaults: { timeout: 20s }
tasks:
  - id: prepare
    exec: { program: sh, args: [-c, 'echo "data <b>&</b> |pipes| `ticks`" > data.txt'] }
    outputs: [data.txt]
  - id: flaky
    depends_on: [prepare]
    retries: 1
    backoff: { initial: 10ms, jitter: 0% }
    exec: { program: sh, args: [-c, 'test -e marker && exit 0; touch marker; echo "first try <fails> \"quoted\"" >&2; exit 3'] }
  - id: broken
    depends_on: [prepare]
    exec: { program: sh, args: [-c, 'echo "boom: a|b <c> & d" >&2; exit 7'] }
  - id: after-broken
    depends_on: [broken]
    exec: { program: "true" }
  - id: combine
    depends_on: [flaky, prepare]
    exec: { program: cat, args: [inputs/prepare/data.txt] }
"#;

fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("test-artifacts")
}

fn run(dir: &Path, scenario: &Path, extra: &[&str]) -> PathBuf {
    let out = bin().current_dir(dir).arg("run").arg(scenario).args(extra).output().unwrap();
    assert!(out.status.code().is_some_and(|c| c <= 1), "{}", String::from_utf8_lossy(&out.stderr));
    only_run(&dir.join("runs"))
}

fn mermaid_blocks(md: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in md.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```mermaid") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn mermaid_in_the_reports_is_valid_for_mermaid() {
    let mut diagrams = Vec::new();
    for (scenario, extra) in [
        (examples().join("hello.yaml"), vec![]),
        (
            examples().join("goal.yaml"),
            vec![
                "--llm".to_owned(),
                format!("scripted:{}", examples().join("goal-answers").display()),
            ],
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let run_dir = run(tmp.path(), &scenario, &extra);
        let md = read(&run_dir.join("report.md"));
        let blocks = mermaid_blocks(&md);
        assert_eq!(blocks.len(), 2, "a DAG and a Gantt chart in:\n{md}");
        assert!(blocks[0].starts_with("flowchart"), "{}", blocks[0]);
        assert!(blocks[1].starts_with("gantt"), "{}", blocks[1]);
        diagrams.extend(blocks);
        diagrams.push(read(&run_dir.join("plan.mmd")));
    }
    let tmp = tempfile::tempdir().unwrap();
    let scenario = write(tmp.path(), "mixed.yaml", MIXED);
    let run_dir = run(tmp.path(), &scenario, &[]);
    diagrams.extend(mermaid_blocks(&read(&run_dir.join("report.md"))));
    diagrams.push(read(&run_dir.join("plan.mmd")));
    let results = browser::check_mermaid(&diagrams);
    assert_eq!(results.len(), diagrams.len());
    for (d, r) in diagrams.iter().zip(&results) {
        match r {
            Ok(svg_len) => assert!(*svg_len > 500, "tiny SVG for:\n{d}"),
            Err(e) => panic!("Mermaid rejected a generated diagram: {e}\n{d}"),
        }
    }
}

#[test]
fn the_html_report_renders_in_chromium() {
    let tmp = tempfile::tempdir().unwrap();
    let scenario = write(tmp.path(), "mixed.yaml", MIXED);
    let run_dir = run(tmp.path(), &scenario, &[]);
    let html = run_dir.join("report.html");
    let text = read(&html);
    assert!(!text.contains("<script"), "the report runs no script");
    for external in ["src=\"http", "href=\"http", "url(http", "@import", "<link"] {
        assert!(!text.contains(external), "the report fetches something: {external}");
    }
    let shot = artifacts_dir().join("report-mixed.png");
    let page = browser::render(&html, &shot);
    let dom = &page.dom;
    for id in
        ["outcome", "metrics", "dag", "timeline", "tasks", "artifacts", "errors", "protections"]
    {
        assert!(dom.contains(&format!("id=\"{id}\"")), "#{id} missing from the rendered DOM");
    }
    for (task, status) in [
        ("prepare", "succeeded"),
        ("flaky", "succeeded"),
        ("broken", "failed"),
        ("after-broken", "skipped"),
        ("combine", "succeeded"),
    ] {
        let node = format!("data-task=\"{task}\" data-status=\"{status}\"");
        assert!(dom.contains(&node), "no DAG node {node}");
    }
    assert!(
        dom.contains("data-task=\"flaky\" data-attempt=\"2\""),
        "the retry is a bar of its own"
    );
    // Escaped, not interpreted: the stderr line shows as text.
    assert!(dom.contains("boom: a|b &lt;c&gt; &amp; d"), "stderr line not shown escaped");
    assert!(!dom.contains("<c>"), "markup from a task's output reached the DOM");
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "screenshot {} bytes", png.len());
}
