//! `testkit::browser` against the real headless Chromium and the pinned Mermaid bundle:
//! valid diagrams pass, a broken one fails with Mermaid's own parse error, and a local page
//! renders to a DOM and a screenshot.

use orchestra_testkit::browser::{check_mermaid, render};
use std::time::Instant;

const FLOWCHART: &str = "flowchart LR
  fetch[\"fetch sources\"]:::succeeded --> build[\"build\"]:::failed
  fetch --> lint[\"lint\"]:::succeeded
  build --> test[\"test\"]:::skipped
  classDef succeeded fill:#d4f7d4,stroke:#2a7a2a
  classDef failed fill:#f7d4d4,stroke:#a02a2a
  classDef skipped fill:#eeeeee,stroke:#888888";

const GANTT: &str = "gantt
  dateFormat x
  axisFormat %M:%S
  section worker-1
  fetch #1 :done, a1, 0, 1500
  build #1 :crit, a2, 1500, 4000
  section worker-2
  lint #1 :done, a3, 1600, 2100";

const BROKEN: &str = "flowchart LR
  a --> --> b";

#[test]
fn mermaid_accepts_valid_and_rejects_broken_diagrams() {
    let diagrams = [FLOWCHART, GANTT, BROKEN, "not a diagram"].map(str::to_owned);
    let started = Instant::now();
    let results = check_mermaid(&diagrams);
    eprintln!("check_mermaid of {} diagrams took {:?}", diagrams.len(), started.elapsed());

    assert_eq!(results.len(), 4, "{results:?}");
    let svg = |i: usize| results[i].clone().unwrap_or_else(|e| panic!("diagram {i}: {e}"));
    assert!(svg(0) > 1000, "flowchart svg is {} bytes", svg(0));
    assert!(svg(1) > 1000, "gantt svg is {} bytes", svg(1));
    let err = results[2].clone().expect_err("the broken flowchart must fail");
    assert!(err.contains("Parse error on line 2"), "{err}");
    let err = results[3].clone().expect_err("unknown diagram type must fail");
    assert!(err.contains("No diagram type detected"), "{err}");
}

#[test]
fn mermaid_check_of_nothing_is_empty() {
    assert!(check_mermaid(&[]).is_empty());
}

#[test]
fn mermaid_keeps_non_ascii_and_markup_in_messages() {
    // Labels with quotes, ampersands and non-ASCII pass; the error text round-trips intact.
    let ok = "flowchart TD\n  a[\"ünïcode & <b>ok</b>\"] --> b";
    let bad = "flowchart TD\n  a[\"é\" --> b";
    let results = check_mermaid(&[ok.to_owned(), bad.to_owned()]);
    assert!(results[0].is_ok(), "{results:?}");
    let err = results[1].clone().expect_err("unbalanced bracket must fail");
    assert!(err.contains("Parse error") && err.contains('é'), "{err}");
}

#[test]
fn render_gives_the_dom_and_a_screenshot() {
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("page with space.html");
    std::fs::write(
        &html,
        r##"<!doctype html><html><head><meta charset="utf-8"><title>run report</title></head>
<body><h1 id="headline">run succeeded</h1>
<svg id="dag" width="300" height="120" xmlns="http://www.w3.org/2000/svg">
  <rect id="node-build" x="10" y="10" width="120" height="40" fill="#2a2"/>
  <text x="20" y="35">build</text>
</svg>
<p id="late"></p>
<script>document.getElementById("late").textContent = "scripted " + (6 * 7);</script>
</body></html>"##,
    )
    .unwrap();
    let shot = dir.path().join("shots/report.png");

    let started = Instant::now();
    let page = render(&html, &shot);
    eprintln!("render took {:?}", started.elapsed());

    assert!(page.dom.contains(r#"<svg id="dag""#), "{}", page.dom);
    assert!(page.dom.contains(r#"<rect id="node-build""#), "{}", page.dom);
    assert!(page.dom.contains("scripted 42"), "the DOM is taken after scripts ran: {}", page.dom);
    let png = std::fs::read(&shot).unwrap();
    assert!(png.len() > 1000, "screenshot is {} bytes", png.len());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
}
