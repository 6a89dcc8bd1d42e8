//! `report.md` and `report.html` from minijinja templates. The templates get the summary as
//! it is in `summary.json` plus helpers computed here (formatted numbers, the Mermaid
//! diagrams, errors grouped by class with their first stderr lines, the inline SVGs).

use super::mermaid::{dag_mermaid, gantt_mermaid};
use super::svg::{clip, dag_svg, timeline_svg};
use super::{ReportError, fmt_bytes, fmt_ms, headline};
use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value, context};
use orchestra_proto::RunStatus;
use orchestra_proto::summary::Summary;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The built-in `report.md` template; `--report-template FILE` replaces it.
pub const DEFAULT_MARKDOWN_TEMPLATE: &str = include_str!("../../templates/report.md.j2");
/// The built-in `report.html` template.
pub const DEFAULT_HTML_TEMPLATE: &str = include_str!("../../templates/report.html.j2");

const MARKDOWN_NAME: &str = "report.md.j2";
const HTML_NAME: &str = "report.html.j2";
/// Lines of a failed attempt's stderr shown in a report, and characters per line.
const STDERR_LINES: usize = 5;
const STDERR_LINE_CHARS: usize = 300;

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(true);
    // Printing an undefined value is an error (a typo shows), testing one is not.
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    env.set_auto_escape_callback(|name| {
        if name == HTML_NAME { AutoEscape::Html } else { AutoEscape::None }
    });
    env.add_filter("ms", |v: f64| fmt_ms(v.max(0.0).round() as u64));
    env.add_filter("bytes", |v: u64| fmt_bytes(v));
    env.add_filter("cell", |v: String| cell(&v));
    env.add_filter("code_spans", |v: String| Value::from_safe_string(code_spans(&v)));
    env
}

/// HTML for a message that quotes with backticks, as failure messages do: escaped, and each
/// `` `span` `` as `<code>span</code>`. An unpaired backtick stays as it is.
fn code_spans(s: &str) -> String {
    let parts: Vec<&str> = s.split('`').collect();
    let mut out = String::with_capacity(s.len());
    for (i, part) in parts.iter().enumerate() {
        let escaped = super::svg::xml(part);
        match (i % 2 == 1, i + 1 == parts.len()) {
            // An odd part is inside backticks, unless no backtick closes it.
            (true, false) => {
                out.push_str("<code>");
                out.push_str(&escaped);
                out.push_str("</code>");
            }
            (true, true) => {
                out.push('`');
                out.push_str(&escaped);
            }
            (false, _) => out.push_str(&escaped),
        }
    }
    out
}

fn render(
    name: &str,
    source: &str,
    path: &Path,
    ctx: &BTreeMap<&str, Value>,
) -> Result<String, ReportError> {
    let err = |e: minijinja::Error| {
        let excerpt = e.line().and_then(|n| {
            source.lines().nth(n.checked_sub(1)?).map(|l| format!("{n:>4} | {}", clip(l, 200)))
        });
        ReportError::Template { path: path.to_owned(), excerpt, source: e }
    };
    let mut env = environment();
    env.add_template_owned(name.to_owned(), source.to_owned()).map_err(err)?;
    env.get_template(name).and_then(|t| t.render(ctx)).map_err(err)
}

/// Renders `report.md` with the built-in template.
pub fn render_markdown(s: &Summary, run_dir: &Path) -> Result<String, ReportError> {
    let path = PathBuf::from(format!("{MARKDOWN_NAME} (built in)"));
    render(MARKDOWN_NAME, DEFAULT_MARKDOWN_TEMPLATE, &path, &context(s, run_dir))
}

/// Renders `report.md` with a user's template, `source` read from `path` (named in errors).
pub fn render_markdown_with(
    s: &Summary,
    run_dir: &Path,
    path: &Path,
    source: &str,
) -> Result<String, ReportError> {
    render(&path.display().to_string(), source, path, &context(s, run_dir))
}

/// Renders `report.html`: one self-contained page, inline CSS and SVG, no scripts.
pub fn render_html(s: &Summary, run_dir: &Path) -> Result<String, ReportError> {
    let mut ctx = context(s, run_dir);
    ctx.insert("dag_svg", Value::from_safe_string(dag_svg(s)));
    ctx.insert("timeline_svg", Value::from_safe_string(timeline_svg(s)));
    let path = PathBuf::from(format!("{HTML_NAME} (built in)"));
    render(HTML_NAME, DEFAULT_HTML_TEMPLATE, &path, &ctx)
}

/// A Markdown table cell: one line, `|` escaped.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\r', '\n'], " ")
}

fn first_lines(run_dir: &Path, rel: &str) -> Vec<String> {
    std::fs::read(run_dir.join(rel))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .lines()
                .take(STDERR_LINES)
                .map(|l| clip(l, STDERR_LINE_CHARS))
                .collect()
        })
        .unwrap_or_default()
}

/// A code fence longer than any run of backticks in `lines`.
fn fence(lines: &[String]) -> String {
    let longest = lines.iter().flat_map(|l| l.split(|c| c != '`').map(str::len)).max().unwrap_or(0);
    "`".repeat(longest.max(2) + 1)
}

/// What the templates see: see the header of `templates/report.md.j2`.
fn context(s: &Summary, run_dir: &Path) -> BTreeMap<&'static str, Value> {
    let t = &s.totals;
    let d = &t.attempt_duration_ms;
    let exists = |rel: &str| run_dir.join(rel).is_file().then(|| rel.to_owned());
    let metrics = context! {
        success_rate => format!("{:.0}%", t.success_rate * 100.0),
        attempts => t.attempts,
        retries => t.retries,
        mean => fmt_ms(d.mean.round() as u64),
        p50 => fmt_ms(d.p50),
        p95 => fmt_ms(d.p95),
        max => fmt_ms(d.max),
        by_status => [
            ("succeeded", t.succeeded),
            ("failed", t.failed),
            ("skipped", t.skipped),
            ("cancelled", t.cancelled),
            ("unfinished", t.unfinished),
        ]
        .iter()
        .map(|(status, count)| context! { status => status, count => count })
        .collect::<Vec<_>>(),
    };
    let llm = s.llm.as_ref().map(|l| {
        let planning = match (&l.backend, &l.model) {
            (Some(b), _) if l.plan_cached => format!("{b} (plan from cache)"),
            (Some(b), Some(m)) => format!("{b} `{m}`"),
            (Some(b), None) => b.clone(),
            (None, _) => "explicit tasks".into(),
        };
        context! {
            planning,
            calls => l.planning_calls,
            repair_rounds => l.repair_rounds,
            claude_attempts => l.claude_attempts,
            input_tokens => l.input_tokens,
            output_tokens => l.output_tokens,
            cost => format!("${:.4}", l.cost_usd),
            planning_cost => format!("${:.4}", l.planning_cost_usd),
            claude_cost => format!("${:.4}", l.claude_cost_usd),
        }
    });
    let tasks: Vec<Value> = s
        .tasks
        .iter()
        .map(|task| {
            let last = task.attempts.last();
            let exit = last
                .and_then(|a| {
                    a.exit_code
                        .map(|c| c.to_string())
                        .or(a.signal.map(|sig| format!("signal {sig}")))
                })
                .unwrap_or_default();
            let note = task
                .reason
                .clone()
                .or_else(|| last.and_then(|a| a.failure.as_ref()).map(|f| f.message.clone()))
                .unwrap_or_default();
            context! {
                id => task.id.as_str(),
                status => task.status.as_str(),
                tool => task.tool,
                depends_on => task.depends_on.iter().map(|d| d.as_str()).collect::<Vec<_>>(),
                attempts => task.attempts.len(),
                duration => fmt_ms(task.duration_ms),
                timeout => fmt_ms(task.timeout_ms),
                exit,
                note,
                stdout => last.and_then(|a| exists(&a.stdout)),
                stderr => last.and_then(|a| exists(&a.stderr)),
            }
        })
        .collect();
    let artifacts: Vec<Value> = s
        .artifacts
        .iter()
        .map(|a| {
            context! {
                path => format!("artifacts/{}/{}", a.task, a.path),
                task => a.task.as_str(),
                size => a.size,
                size_human => fmt_bytes(a.size),
                sha256 => a.sha256,
            }
        })
        .collect();
    let errors: Vec<Value> = s
        .failures_by_kind
        .iter()
        .map(|(kind, count)| {
            let items: Vec<Value> = s
                .tasks
                .iter()
                .flat_map(|task| task.attempts.iter().map(move |a| (task, a)))
                .filter_map(|(task, a)| {
                    let f = a.failure.as_ref().filter(|f| f.kind == *kind)?;
                    let lines = first_lines(run_dir, &a.stderr);
                    Some(context! {
                        task => task.id.as_str(),
                        attempt => a.attempt,
                        message => f.message,
                        stdout => exists(&a.stdout),
                        stderr => exists(&a.stderr),
                        fence => fence(&lines),
                        lines,
                    })
                })
                .collect();
            context! { kind => kind.as_str(), count, items }
        })
        .collect();
    let icon = match s.status {
        RunStatus::Succeeded => "✅",
        RunStatus::Failed => "❌",
        RunStatus::Cancelled => "⏹️",
        RunStatus::Running => "⏳",
    };
    let mut ctx = BTreeMap::new();
    ctx.insert("summary", Value::from_serialize(s));
    ctx.insert("icon", Value::from(icon));
    ctx.insert("headline", Value::from(headline(s)));
    ctx.insert("started", Value::from(s.started_at.rfc3339()));
    ctx.insert("duration", Value::from(fmt_ms(s.duration_ms)));
    ctx.insert("metrics", metrics);
    ctx.insert("llm", Value::from(llm));
    ctx.insert("dag_mermaid", Value::from(dag_mermaid(s)));
    ctx.insert("gantt_mermaid", Value::from(gantt_mermaid(s)));
    ctx.insert("tasks", Value::from(tasks));
    ctx.insert("artifacts", Value::from(artifacts));
    ctx.insert("errors", Value::from(errors));
    ctx.insert("protections", Value::from_serialize(&s.protections));
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::{golden_run_dir, golden_summary};

    #[test]
    fn table_cells_stay_in_their_cell() {
        let check = |input: &str, expect: &str| assert_eq!(cell(input), expect, "{input}");
        check("plain", "plain");
        check("a|b", "a\\|b");
        check("two\nlines\r\n", "two lines  ");
    }

    #[test]
    fn code_spans_become_code() {
        let check = |input: &str, expect: &str| assert_eq!(code_spans(input), expect, "{input}");
        check("", "");
        check("plain", "plain");
        check("`make` exited with code 2", "<code>make</code> exited with code 2");
        check("a `b` c `d`", "a <code>b</code> c <code>d</code>");
        check("unpaired ` tick", "unpaired ` tick");
        check("`a` and ` b", "<code>a</code> and ` b");
        check("`<x>` & <y>", "<code>&lt;x&gt;</code> &amp; &lt;y&gt;");
    }

    #[test]
    fn fences_outlast_backticks() {
        let check = |lines: &[&str], expect: &str| {
            let lines: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
            assert_eq!(fence(&lines), expect, "{lines:?}");
        };
        check(&[], "```");
        check(&["no ticks"], "```");
        check(&["`one` and ``two``"], "```");
        check(&["```rust"], "````");
        check(&["a", "x`````y"], "``````");
    }

    #[test]
    fn user_templates_see_the_summary_and_the_helpers() {
        let s = golden_summary();
        let dir = golden_run_dir();
        let check = |source: &str, expect: &str| {
            let out = render_markdown_with(&s, dir.path(), Path::new("t.md.j2"), source);
            assert_eq!(out.unwrap(), expect, "{source}");
        };
        check("{{ summary.totals.retries }}", "1");
        check("{{ summary.duration_ms | ms }}", "2.50s");
        check("{{ 1536 | bytes }}", "1.5 KiB");
        check("{{ 'a|b' | cell }}", "a\\|b");
        check("{{ metrics.success_rate }} {{ metrics.p95 }}", "33% 2.00s");
        check("{% for e in errors %}{{ e.kind }}={{ e.count }}{% endfor %}", "exit_code=2");
        check(
            "{{ errors[0].items[1].stderr }}: {{ errors[0].items[1].lines[0] }}",
            "tasks/test/1/stderr: 1 test failed",
        );
        check("{{ errors[0].items[0].stderr is none }}", "True");
        check("{{ tasks[2].depends_on | join(',') }}", "test,build");
        check("{{ artifacts[0].path }} {{ artifacts[0].size_human }}", "artifacts/build/app 3 B");
        check("{{ llm.planning }} {{ llm.cost }}", "claude-code `sonnet` $0.0250");
        check("{{ protections | selectattr('active') | list | length }}", "5");
        check("{{ gantt_mermaid[:5] }}", "gantt");
        check("{{ '<b>' }}", "<b>");
    }

    #[test]
    fn broken_user_templates_name_their_file() {
        let s = golden_summary();
        let dir = golden_run_dir();
        let check = |source: &str, expect: &str| {
            let e =
                render_markdown_with(&s, dir.path(), Path::new("mine.md.j2"), source).unwrap_err();
            let shown = e.describe();
            assert!(
                shown.starts_with("cannot render the report template `mine.md.j2`: "),
                "{shown}"
            );
            assert!(shown.contains(expect), "{shown}");
        };
        check("{% if %}", "syntax error");
        check(
            "line 1\n{{ summary.nmae }}",
            "undefined value (in mine.md.j2:2)\n   2 | {{ summary.nmae }}",
        );
        check("{{ nothing | nofilter }}", "unknown filter");
        check("{% for x in 3 %}{% endfor %}", "not iterable");
    }

    #[test]
    fn html_escapes_what_it_shows() {
        let mut s = golden_summary();
        s.name = "<script>alert(1)</script>".into();
        s.tasks[1].reason = Some("a <b>bold</b> & \"quoted\" reason".into());
        let dir = golden_run_dir();
        std::fs::write(dir.path().join("tasks/test/1/stderr"), "<img src=x onerror=alert(1)>\n")
            .unwrap();
        let html = render_html(&s, dir.path()).unwrap();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"), "{html}");
        assert!(
            html.contains("a &lt;b&gt;bold&lt;/b&gt; &amp; &quot;quoted&quot; reason"),
            "{html}"
        );
        assert!(!html.contains("<img"), "{html}");
    }
}
