//! Mermaid text: the DAG as a flowchart coloured by task status, the attempts as a Gantt
//! chart on worker lanes. Written for Mermaid 11: node ids are `t<index>`, labels are quoted
//! and entity-escaped, Gantt names avoid the characters its grammar reserves (`#`, `:`, `;`).

use orchestra_proto::summary::{AttemptSummary, Summary};
use orchestra_proto::{FailureKind, Plan, TaskId, TaskStatus, Tool};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One box of a flowchart.
struct Node<'a> {
    id: &'a TaskId,
    tool: &'a str,
    depends_on: &'a [TaskId],
    status: Option<TaskStatus>,
}

/// The plan's DAG as a Mermaid flowchart; with statuses, nodes are coloured by them.
pub fn plan_mermaid(plan: &Plan, statuses: Option<&BTreeMap<TaskId, TaskStatus>>) -> String {
    let nodes: Vec<_> = plan
        .tasks
        .iter()
        .map(|t| Node {
            id: &t.id,
            tool: match &t.tool {
                Tool::Exec(e) => &e.program,
                Tool::Claude(_) => "claude",
            },
            depends_on: &t.depends_on,
            status: statuses.map(|s| s.get(&t.id).copied().unwrap_or(TaskStatus::Pending)),
        })
        .collect();
    flowchart(&nodes, statuses.is_some())
}

/// The run's DAG from its summary, every task coloured by its status.
pub fn dag_mermaid(s: &Summary) -> String {
    let nodes: Vec<_> = s
        .tasks
        .iter()
        .map(|t| Node {
            id: &t.id,
            tool: &t.tool,
            depends_on: &t.depends_on,
            status: Some(t.status),
        })
        .collect();
    flowchart(&nodes, true)
}

/// The class (and colour) of a task status; shared with the HTML report.
pub(crate) fn status_class(s: TaskStatus) -> &'static str {
    match s {
        TaskStatus::Succeeded => "succeeded",
        TaskStatus::Failed => "failed",
        TaskStatus::Skipped => "skipped",
        TaskStatus::Cancelled => "cancelled",
        TaskStatus::Dispatched | TaskStatus::Running | TaskStatus::Retrying => "running",
        TaskStatus::Pending => "pending",
    }
}

const CLASSES: [(&str, &str); 6] = [
    ("succeeded", "fill:#d4f7d4,stroke:#2e7d32"),
    ("failed", "fill:#f7d4d4,stroke:#c62828"),
    ("skipped", "fill:#eeeeee,stroke:#777777,stroke-dasharray:4 3"),
    ("cancelled", "fill:#f7ecd4,stroke:#ef6c00"),
    ("running", "fill:#d4e4f7,stroke:#1565c0"),
    ("pending", "fill:#ffffff,stroke:#555555"),
];

fn flowchart(nodes: &[Node<'_>], coloured: bool) -> String {
    let index: BTreeMap<_, _> = nodes.iter().enumerate().map(|(i, n)| (n.id, i)).collect();
    let mut out = String::from("flowchart LR\n");
    for (i, n) in nodes.iter().enumerate() {
        let label = if n.tool.is_empty() {
            escape(n.id.as_str())
        } else {
            format!("{}<br/><small>{}</small>", escape(n.id.as_str()), escape(n.tool))
        };
        let _ = writeln!(out, "  t{i}[\"{label}\"]");
    }
    for (i, n) in nodes.iter().enumerate() {
        for d in n.depends_on {
            if let Some(j) = index.get(d) {
                let _ = writeln!(out, "  t{j} --> t{i}");
            }
        }
    }
    if coloured {
        let used: Vec<_> = nodes.iter().filter_map(|n| n.status.map(status_class)).collect();
        for (class, style) in CLASSES.iter().filter(|(c, _)| used.contains(c)) {
            let _ = writeln!(out, "  classDef {class} {style}");
        }
        for (i, n) in nodes.iter().enumerate() {
            if let Some(s) = n.status {
                let _ = writeln!(out, "  class t{i} {}", status_class(s));
            }
        }
    }
    out
}

/// Escapes a flowchart label: Mermaid entity codes for the characters that end or change a
/// quoted label (`"`, `#`, markup, a leading backtick that starts a Markdown string).
fn escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '"' => "#quot;".to_owned(),
            '#' => "#35;".to_owned(),
            '<' => "#lt;".to_owned(),
            '>' => "#gt;".to_owned(),
            '&' => "#amp;".to_owned(),
            '`' => "#96;".to_owned(),
            '\n' | '\r' | '\t' => " ".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

/// How an attempt ended, for colours and Gantt tags.
pub(crate) fn attempt_outcome(a: &AttemptSummary) -> &'static str {
    match (&a.failure, a.duration_ms) {
        (Some(f), _) if f.kind == FailureKind::Cancelled => "cancelled",
        (Some(_), _) => "failed",
        (None, Some(_)) => "succeeded",
        (None, None) => "running",
    }
}

/// Where an attempt sits on the run's time axis: ms from the run's start, start and end.
/// `None` for an attempt that never started. An unfinished attempt ends with the run.
pub(crate) fn attempt_span(s: &Summary, a: &AttemptSummary) -> Option<(u64, u64)> {
    let start = a.started_at?.since(s.started_at).as_millis() as u64;
    let end = match a.duration_ms {
        Some(d) => start + d,
        None => s.duration_ms.max(start),
    };
    Some((start, end))
}

/// Every started attempt as a bar on its worker's lane (`section <worker>`), named
/// `<task>/<n>` (as in `tasks/<task>/<n>/`; `#` starts a comment there) and tagged `done` (succeeded), `crit` (failed or cancelled) or `active`
/// (unfinished). Times are ms from the run's start (`dateFormat x`). `None` when no attempt
/// started (nothing to draw; Mermaid rejects an empty chart on some versions).
pub fn gantt_mermaid(s: &Summary) -> Option<String> {
    let mut lanes: BTreeMap<String, Vec<(u64, u64, &TaskId, &AttemptSummary)>> = BTreeMap::new();
    for t in &s.tasks {
        for a in &t.attempts {
            if let Some((start, end)) = attempt_span(s, a) {
                let lane = a.worker_id.as_deref().map_or_else(|| "unassigned".to_owned(), section);
                lanes.entry(lane).or_default().push((start, end, &t.id, a));
            }
        }
    }
    if lanes.is_empty() {
        return None;
    }
    let span = lanes.values().flatten().map(|b| b.1).max().unwrap_or(0).max(s.duration_ms);
    // d3 formats the axis in the viewer's local time; from the epoch, seconds and
    // milliseconds are right in every time zone, minutes in all but the half-hour ones.
    let axis = match span {
        0..60_000 => "%S.%L",
        60_000..3_600_000 => "%M:%S",
        _ => "%H:%M",
    };
    let mut out = String::from("gantt\n");
    let _ = writeln!(out, "  dateFormat x\n  axisFormat {axis}\n  todayMarker off");
    let mut n = 0;
    for (lane, mut bars) in lanes {
        bars.sort_by_key(|b| (b.0, b.2.as_str(), b.3.attempt));
        let _ = writeln!(out, "  section {lane}");
        for (start, end, task, a) in bars {
            let tag = match attempt_outcome(a) {
                "succeeded" => "done, ",
                "running" => "active, ",
                _ => "crit, ",
            };
            // A zero-length bar is invisible: give it one millisecond.
            let end = end.max(start + 1);
            let _ = writeln!(out, "  {task}/{} :{tag}a{n}, {start}, {end}", a.attempt);
            n += 1;
        }
    }
    Some(out)
}

/// A worker id as a Gantt section name: no `#`, `:` or `;`.
fn section(worker: &str) -> String {
    let s: String = worker
        .chars()
        .map(|c| if matches!(c, '#' | ':' | ';' | '\n' | '\r') { '_' } else { c })
        .collect();
    if s.trim().is_empty() { "unassigned".to_owned() } else { s.trim().to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestra_proto::summary::{TaskSummary, Totals};
    use orchestra_proto::{Failure, RunStatus, TaskSpec, Timestamp};

    fn id(s: &str) -> TaskId {
        TaskId::new_unchecked(s)
    }

    #[test]
    fn escapes_labels() {
        let check = |input: &str, expect: &str| assert_eq!(escape(input), expect, "{input}");
        check("make", "make");
        check("a\"b", "a#quot;b");
        check("c#", "c#35;");
        check("<b>&", "#lt;b#gt;#amp;");
        check("`x`", "#96;x#96;");
        check("two\nlines", "two lines");
        check("ünïcode", "ünïcode");
    }

    #[test]
    fn plan_flowchart() {
        let check = |plan: Plan, statuses: Option<BTreeMap<TaskId, TaskStatus>>, expect: &str| {
            assert_eq!(plan_mermaid(&plan, statuses.as_ref()), expect);
        };
        let plan = |tasks| Plan { name: "p".into(), goal: None, tasks };
        let after = |t: TaskSpec, deps: &[&str]| TaskSpec {
            depends_on: deps.iter().map(|d| id(d)).collect(),
            ..t
        };
        check(plan(vec![]), None, "flowchart LR\n");
        check(
            plan(vec![TaskSpec::exec(id("a"), "echo", &[])]),
            None,
            "flowchart LR\n  t0[\"a<br/><small>echo</small>\"]\n",
        );
        check(
            plan(vec![
                TaskSpec::exec(id("a"), "/bin/sh \"x\"", &[]),
                after(TaskSpec::exec(id("b"), "b", &[]), &["a"]),
                after(TaskSpec::exec(id("c"), "c", &[]), &["a", "b", "missing"]),
            ]),
            None,
            "flowchart LR\n  t0[\"a<br/><small>/bin/sh #quot;x#quot;</small>\"]\n  \
             t1[\"b<br/><small>b</small>\"]\n  t2[\"c<br/><small>c</small>\"]\n  \
             t0 --> t1\n  t0 --> t2\n  t1 --> t2\n",
        );
        check(
            plan(vec![TaskSpec::exec(id("a"), "x", &[]), TaskSpec::exec(id("b"), "y", &[])]),
            Some([(id("a"), TaskStatus::Failed)].into()),
            "flowchart LR\n  t0[\"a<br/><small>x</small>\"]\n  t1[\"b<br/><small>y</small>\"]\n  \
             classDef failed fill:#f7d4d4,stroke:#c62828\n  \
             classDef pending fill:#ffffff,stroke:#555555\n  class t0 failed\n  class t1 pending\n",
        );
    }

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_millis(1_000_000 + ms)
    }

    fn attempt(
        n: u32,
        worker: Option<&str>,
        start: Option<u64>,
        dur: Option<u64>,
    ) -> AttemptSummary {
        AttemptSummary {
            attempt: n,
            worker_id: worker.map(str::to_owned),
            started_at: start.map(at),
            duration_ms: dur,
            exit_code: None,
            signal: None,
            failure: None,
            stdout: String::new(),
            stderr: String::new(),
            claude: None,
        }
    }

    fn summary(duration_ms: u64, tasks: Vec<(&str, TaskStatus, Vec<AttemptSummary>)>) -> Summary {
        Summary {
            schema_version: 1,
            run_id: "r".into(),
            trace_id: "t".into(),
            name: "n".into(),
            status: RunStatus::Succeeded,
            dry_run: false,
            started_at: at(0),
            finished_at: None,
            duration_ms,
            totals: Totals::default(),
            tasks: tasks
                .into_iter()
                .map(|(t, status, attempts)| TaskSummary {
                    id: id(t),
                    status,
                    tool: String::new(),
                    depends_on: Vec::new(),
                    timeout_ms: 0,
                    reason: None,
                    attempts,
                    duration_ms: 0,
                })
                .collect(),
            artifacts: Vec::new(),
            failures_by_kind: BTreeMap::new(),
            llm: None,
            protections: Vec::new(),
        }
    }

    #[test]
    fn summary_flowchart_colours_every_status() {
        let s = summary(
            0,
            vec![
                ("a", TaskStatus::Succeeded, vec![]),
                ("b", TaskStatus::Running, vec![]),
                ("c", TaskStatus::Retrying, vec![]),
            ],
        );
        assert_eq!(
            dag_mermaid(&s),
            "flowchart LR\n  t0[\"a\"]\n  t1[\"b\"]\n  t2[\"c\"]\n  \
             classDef succeeded fill:#d4f7d4,stroke:#2e7d32\n  \
             classDef running fill:#d4e4f7,stroke:#1565c0\n  \
             class t0 succeeded\n  class t1 running\n  class t2 running\n"
        );
    }

    #[test]
    fn gantt_chart() {
        let check = |s: Summary, expect: Option<&str>| {
            assert_eq!(gantt_mermaid(&s).as_deref(), expect);
        };
        let failed = |mut a: AttemptSummary, kind| {
            a.failure = Some(Failure::new(kind, "x"));
            a
        };
        let head =
            |axis: &str| format!("gantt\n  dateFormat x\n  axisFormat {axis}\n  todayMarker off\n");
        // nothing started: no chart
        check(summary(10, vec![]), None);
        check(
            summary(10, vec![("a", TaskStatus::Pending, vec![attempt(1, None, None, None)])]),
            None,
        );
        // one lane; zero-length bar stretched to 1ms; unfinished ends with the run
        check(
            summary(
                500,
                vec![
                    ("a", TaskStatus::Succeeded, vec![attempt(1, Some("w1"), Some(0), Some(0))]),
                    ("b", TaskStatus::Running, vec![attempt(1, Some("w1"), Some(100), None)]),
                ],
            ),
            Some(
                &(head("%S.%L")
                    + "  section w1\n  a/1 :done, a0, 0, 1\n  b/1 :active, a1, 100, 500\n"),
            ),
        );
        // lanes sorted by worker, bars by start; failed and cancelled are crit; unsafe names
        check(
            summary(
                120_000,
                vec![
                    (
                        "a",
                        TaskStatus::Succeeded,
                        vec![
                            failed(
                                attempt(1, Some("w:2#x"), Some(50), Some(10)),
                                FailureKind::Timeout,
                            ),
                            attempt(2, Some("w1"), Some(70_000), Some(1000)),
                        ],
                    ),
                    (
                        "b",
                        TaskStatus::Cancelled,
                        vec![failed(attempt(1, None, Some(0), Some(5)), FailureKind::Cancelled)],
                    ),
                ],
            ),
            Some(
                &(head("%M:%S")
                    + "  section unassigned\n  b/1 :crit, a0, 0, 5\n  \
                   section w1\n  a/2 :done, a1, 70000, 71000\n  \
                   section w_2_x\n  a/1 :crit, a2, 50, 60\n"),
            ),
        );
        // long runs: hours on the axis
        check(
            summary(
                4_000_000,
                vec![(
                    "a",
                    TaskStatus::Succeeded,
                    vec![attempt(1, Some("w"), Some(0), Some(3_900_000))],
                )],
            ),
            Some(&(head("%H:%M") + "  section w\n  a/1 :done, a0, 0, 3900000\n")),
        );
    }

    #[test]
    fn sections_are_safe() {
        let check = |input: &str, expect: &str| assert_eq!(section(input), expect, "{input}");
        check("local-123", "local-123");
        check("w 1", "w 1");
        check("a:b;c#d", "a_b_c_d");
        check("  ", "unassigned");
    }
}
