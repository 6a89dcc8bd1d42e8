//! Inline SVG for `report.html`: the DAG in layers (a task's layer is the longest path to it
//! from a root) and the attempts on a timeline with one lane per worker. Pure string
//! building; every text is XML-escaped; colours are attributes, so the SVG needs no CSS.

use super::fmt_ms;
use super::mermaid::{attempt_outcome, attempt_span, status_class};
use orchestra_proto::TaskId;
use orchestra_proto::summary::{AttemptSummary, Summary};
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;

const PAD: u32 = 10;
const BOX_W: u32 = 160;
const BOX_H: u32 = 40;
const GAP_X: u32 = 48;
const GAP_Y: u32 = 14;

/// Fill and stroke of a task status or attempt outcome.
fn colours(class: &str) -> (&'static str, &'static str) {
    match class {
        "succeeded" => ("#d4f7d4", "#2e7d32"),
        "failed" => ("#f7d4d4", "#c62828"),
        "skipped" => ("#eeeeee", "#777777"),
        "cancelled" => ("#f7ecd4", "#ef6c00"),
        "running" => ("#d4e4f7", "#1565c0"),
        _ => ("#ffffff", "#555555"),
    }
}

/// Escapes text and attribute values.
pub(crate) fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// At most `max` characters, with `…` when cut.
pub(crate) fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The layer of every node: 0 for a root, else one more than its deepest dependency.
/// `deps[i]` are the indices node `i` depends on. Nodes on a cycle (a plan that was not
/// checked) stay in layer 0.
pub(crate) fn layers(deps: &[Vec<usize>]) -> Vec<usize> {
    let n = deps.len();
    let mut children = vec![Vec::new(); n];
    let mut waiting = vec![0usize; n];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds.iter().filter(|&&d| d < n) {
            children[d].push(i);
            waiting[i] += 1;
        }
    }
    let mut layer = vec![0; n];
    let mut ready: VecDeque<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
    while let Some(i) = ready.pop_front() {
        for &c in &children[i] {
            layer[c] = layer[c].max(layer[i] + 1);
            waiting[c] -= 1;
            if waiting[c] == 0 {
                ready.push_back(c);
            }
        }
    }
    layer
}

/// The order of nodes inside each layer: plan order for the first, then by the mean row of
/// their dependencies (fewer crossings), ties in plan order.
pub(crate) fn rows(deps: &[Vec<usize>], layer: &[usize]) -> Vec<Vec<usize>> {
    let depth = layer.iter().max().map_or(0, |m| m + 1);
    let mut by_layer: Vec<Vec<usize>> = vec![Vec::new(); depth];
    for (i, &l) in layer.iter().enumerate() {
        by_layer[l].push(i);
    }
    let mut row = vec![0usize; layer.len()];
    for nodes in &mut by_layer {
        let key = |i: usize| {
            let ds: Vec<_> = deps[i].iter().filter(|&&d| d < row.len()).collect();
            if ds.is_empty() {
                return (0, i);
            }
            // Mean row × 1000, as an integer: a total order with no float comparisons.
            let mean = ds.iter().map(|&&d| row[d] * 1000).sum::<usize>() / ds.len();
            (mean, i)
        };
        nodes.sort_by_key(|&i| key(i));
        for (r, &i) in nodes.iter().enumerate() {
            row[i] = r;
        }
    }
    by_layer
}

/// The run's DAG: one `g.task[data-task][data-status]` box per task, arrows for
/// dependencies, tasks in layers from left to right.
pub fn dag_svg(s: &Summary) -> String {
    let index: BTreeMap<&TaskId, usize> =
        s.tasks.iter().enumerate().map(|(i, t)| (&t.id, i)).collect();
    let deps: Vec<Vec<usize>> = s
        .tasks
        .iter()
        .map(|t| t.depends_on.iter().filter_map(|d| index.get(d).copied()).collect())
        .collect();
    if s.tasks.is_empty() {
        return empty_svg("the plan has no tasks");
    }
    let layer = layers(&deps);
    let by_layer = rows(&deps, &layer);
    // At least one layer and one row: there is a task.
    let columns = by_layer.len() as u32;
    let tallest = by_layer.iter().map(Vec::len).max().unwrap_or(1) as u32;
    let width = PAD * 2 + columns * BOX_W + (columns - 1) * GAP_X;
    let height = PAD * 2 + tallest * BOX_H + (tallest - 1) * GAP_Y;
    let mut pos = vec![(0u32, 0u32); s.tasks.len()];
    for (l, nodes) in by_layer.iter().enumerate() {
        let offset = (tallest - nodes.len() as u32) * (BOX_H + GAP_Y) / 2;
        for (r, &i) in nodes.iter().enumerate() {
            pos[i] = (PAD + l as u32 * (BOX_W + GAP_X), PAD + offset + r as u32 * (BOX_H + GAP_Y));
        }
    }
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"dag\" width=\"{width}\" \
         height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" \
         aria-label=\"task graph\">\n<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" \
         refX=\"10\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\">\
         <path d=\"M0,0L10,5L0,10z\" fill=\"#666\"/></marker></defs>\n"
    );
    for (i, t) in s.tasks.iter().enumerate() {
        for &d in &deps[i] {
            let (x1, y1) = (pos[d].0 + BOX_W, pos[d].1 + BOX_H / 2);
            let (x2, y2) = (pos[i].0, pos[i].1 + BOX_H / 2);
            let mx = (x1 + x2) / 2;
            let _ = writeln!(
                out,
                "<path class=\"edge\" data-from=\"{}\" data-to=\"{}\" d=\"M{x1},{y1} C{mx},{y1} \
                 {mx},{y2} {x2},{y2}\" fill=\"none\" stroke=\"#666\" stroke-width=\"1.5\" \
                 marker-end=\"url(#arrow)\"/>",
                xml(s.tasks[d].id.as_str()),
                xml(t.id.as_str()),
            );
        }
    }
    for (i, t) in s.tasks.iter().enumerate() {
        let class = status_class(t.status);
        let (fill, stroke) = colours(class);
        let (x, y) = pos[i];
        let attempts = match t.attempts.len() {
            1 => "1 attempt".to_owned(),
            n => format!("{n} attempts"),
        };
        let detail =
            if t.tool.is_empty() { attempts.clone() } else { format!("{} · {attempts}", t.tool) };
        let dash = if class == "skipped" { " stroke-dasharray=\"4 3\"" } else { "" };
        let _ = writeln!(
            out,
            "<g class=\"task\" data-task=\"{id}\" data-status=\"{status}\" \
             transform=\"translate({x},{y})\"><title>{id}: {status}, {attempts}</title>\
             <rect width=\"{BOX_W}\" height=\"{BOX_H}\" rx=\"6\" fill=\"{fill}\" \
             stroke=\"{stroke}\" stroke-width=\"1.5\"{dash}/>\
             <text x=\"8\" y=\"17\" font-size=\"13\" font-weight=\"bold\">{label}</text>\
             <text x=\"8\" y=\"32\" font-size=\"11\" fill=\"#444\">{detail}</text></g>",
            id = xml(t.id.as_str()),
            status = t.status.as_str(),
            label = xml(&clip(t.id.as_str(), 20)),
            detail = xml(&clip(&detail, 25)),
        );
    }
    out.push_str("</svg>");
    out
}

const LABEL_W: f64 = 130.0;
const PLOT_W: f64 = 680.0;
const ROW_H: u32 = 22;
const BAR_H: u32 = 16;
const AXIS_H: u32 = 26;

/// Round tick positions in ms, about six over `span`.
pub(crate) fn ticks(span: u64) -> Vec<u64> {
    let span = span.max(1);
    let raw = span as f64 / 6.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude);
    let step = (step.round() as u64).max(1);
    (0..=span / step).map(|i| i * step).collect()
}

/// Bars of one worker lane packed into rows: an attempt takes the first row free at its
/// start, so attempts that overlap on one worker (several slots) do not hide each other.
pub(crate) fn pack(bars: &[(u64, u64)]) -> Vec<usize> {
    let mut row_end: Vec<u64> = Vec::new();
    bars.iter()
        .map(|&(start, end)| match row_end.iter().position(|&e| e <= start) {
            Some(r) => {
                row_end[r] = end;
                r
            }
            None => {
                row_end.push(end);
                row_end.len() - 1
            }
        })
        .collect()
}

type Bar<'a> = (u64, u64, &'a TaskId, &'a AttemptSummary);

/// Every started attempt as a `rect.attempt[data-task][data-attempt][data-outcome]` on its
/// worker's lane, over a time axis in ms from the run's start.
pub fn timeline_svg(s: &Summary) -> String {
    let mut lanes: BTreeMap<&str, Vec<Bar<'_>>> = BTreeMap::new();
    for t in &s.tasks {
        for a in &t.attempts {
            if let Some((start, end)) = attempt_span(s, a) {
                let lane = a.worker_id.as_deref().unwrap_or("unassigned");
                lanes.entry(lane).or_default().push((start, end, &t.id, a));
            }
        }
    }
    if lanes.is_empty() {
        return empty_svg("no attempt started");
    }
    let span = lanes.values().flatten().map(|b| b.1).max().unwrap_or(0).max(s.duration_ms).max(1);
    let x = |ms: u64| LABEL_W + ms as f64 * PLOT_W / span as f64;
    let mut body = String::new();
    let mut y = PAD;
    for (lane, mut bars) in lanes {
        bars.sort_by_key(|b| (b.0, b.2.as_str(), b.3.attempt));
        let rows = pack(&bars.iter().map(|b| (b.0, b.1)).collect::<Vec<_>>());
        let lane_h = (rows.iter().max().map_or(0, |r| r + 1) as u32) * ROW_H;
        let _ = writeln!(
            body,
            "<g class=\"lane\" data-worker=\"{w}\"><title>worker {w}</title>\
             <rect x=\"0\" y=\"{y}\" width=\"{total_w}\" height=\"{lane_h}\" fill=\"#f6f8fa\"/>\
             <text x=\"6\" y=\"{ty}\" font-size=\"12\">{label}</text></g>",
            w = xml(lane),
            total_w = LABEL_W + PLOT_W + f64::from(PAD),
            ty = y + ROW_H / 2 + 4,
            label = xml(&clip(lane, 18)),
        );
        for ((start, end, task, a), row) in bars.into_iter().zip(rows) {
            let outcome = attempt_outcome(a);
            let (fill, stroke) = colours(outcome);
            let bx = x(start);
            let bw = (x(end) - bx).max(2.0);
            let by = y + row as u32 * ROW_H + (ROW_H - BAR_H) / 2;
            let name = format!("{task}/{}", a.attempt);
            let took = a.duration_ms.map_or_else(|| "unfinished".to_owned(), fmt_ms);
            let _ = write!(
                body,
                "<rect class=\"attempt\" data-task=\"{t}\" data-attempt=\"{n}\" \
                 data-outcome=\"{outcome}\" x=\"{bx:.1}\" y=\"{by}\" width=\"{bw:.1}\" \
                 height=\"{BAR_H}\" rx=\"3\" fill=\"{fill}\" stroke=\"{stroke}\">\
                 <title>{t} attempt {n}: {outcome}, {took}, from {from} to {to}</title></rect>",
                t = xml(task.as_str()),
                n = a.attempt,
                from = fmt_ms(start),
                to = fmt_ms(end),
            );
            // The name goes inside the bar when it fits (about 6.5 px per character).
            if bw >= name.chars().count() as f64 * 6.5 + 8.0 {
                let _ = write!(
                    body,
                    "<text x=\"{:.1}\" y=\"{}\" font-size=\"11\">{}</text>",
                    bx + 4.0,
                    by + BAR_H - 4,
                    xml(&name)
                );
            }
            body.push('\n');
        }
        y += lane_h + 4;
    }
    let axis_y = y + 2;
    let _ = write!(
        body,
        "<g class=\"axis\"><line x1=\"{LABEL_W}\" y1=\"{axis_y}\" x2=\"{}\" y2=\"{axis_y}\" \
         stroke=\"#444\"/>",
        LABEL_W + PLOT_W
    );
    for t in ticks(span) {
        let tx = x(t);
        let _ = write!(
            body,
            "<line x1=\"{tx:.1}\" y1=\"{axis_y}\" x2=\"{tx:.1}\" y2=\"{}\" stroke=\"#444\"/>\
             <text x=\"{tx:.1}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
            axis_y + 4,
            axis_y + 16,
            fmt_ms(t)
        );
    }
    body.push_str("</g>\n");
    let width = LABEL_W + PLOT_W + f64::from(PAD) * 2.0;
    let height = axis_y + AXIS_H;
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"timeline\" width=\"{width}\" \
         height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" \
         aria-label=\"attempts per worker over time\">\n{body}</svg>"
    )
}

fn empty_svg(text: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"300\" height=\"30\" \
         viewBox=\"0 0 300 30\" role=\"img\"><text x=\"10\" y=\"20\" font-size=\"13\">{}</text></svg>",
        xml(text)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_escapes_everything_that_matters() {
        let check = |input: &str, expect: &str| assert_eq!(xml(input), expect, "{input}");
        check("plain", "plain");
        check("<script>", "&lt;script&gt;");
        check("a&b", "a&amp;b");
        check("\"'", "&quot;&#39;");
    }

    #[test]
    fn clips_long_text() {
        let check = |input: &str, max, expect: &str| assert_eq!(clip(input, max), expect);
        check("short", 10, "short");
        check("exactly10!", 10, "exactly10!");
        check("much-longer-text", 5, "much…");
        check("ünïcödé", 3, "ün…");
    }

    #[test]
    fn layers_are_longest_paths() {
        let check = |deps: Vec<Vec<usize>>, expect: Vec<usize>| {
            assert_eq!(layers(&deps), expect, "{deps:?}");
        };
        check(vec![], vec![]);
        check(vec![vec![]], vec![0]);
        check(vec![vec![], vec![]], vec![0, 0]);
        // chain
        check(vec![vec![], vec![0], vec![1]], vec![0, 1, 2]);
        // diamond with a shortcut: d after b and a lands after b
        check(vec![vec![], vec![0], vec![0], vec![1, 0]], vec![0, 1, 1, 2]);
        // dependencies listed after their dependents
        check(vec![vec![1], vec![2], vec![]], vec![2, 1, 0]);
        // a cycle stays in layer 0; out-of-range indices are ignored
        check(vec![vec![1], vec![0], vec![9]], vec![0, 0, 0]);
    }

    #[test]
    fn rows_follow_dependencies() {
        let check = |deps: Vec<Vec<usize>>, expect: Vec<Vec<usize>>| {
            let layer = layers(&deps);
            assert_eq!(rows(&deps, &layer), expect, "{deps:?}");
        };
        check(vec![], vec![]);
        check(vec![vec![], vec![], vec![0]], vec![vec![0, 1], vec![2]]);
        // children ordered by their parent's row, not by plan order
        check(vec![vec![], vec![], vec![1], vec![0]], vec![vec![0, 1], vec![3, 2]]);
        // equal parents keep plan order
        check(vec![vec![], vec![0], vec![0]], vec![vec![0], vec![1, 2]]);
    }

    #[test]
    fn ticks_are_round() {
        let check = |span, expect: Vec<u64>| assert_eq!(ticks(span), expect, "{span}");
        check(0, vec![0, 1]);
        check(1, vec![0, 1]);
        check(10, vec![0, 2, 4, 6, 8, 10]);
        check(2500, vec![0, 500, 1000, 1500, 2000, 2500]);
        check(7000, vec![0, 2000, 4000, 6000]);
        check(60_000, vec![0, 10_000, 20_000, 30_000, 40_000, 50_000, 60_000]);
    }

    #[test]
    fn overlapping_bars_get_their_own_rows() {
        let check = |bars: Vec<(u64, u64)>, expect: Vec<usize>| {
            assert_eq!(pack(&bars), expect, "{bars:?}");
        };
        check(vec![], vec![]);
        check(vec![(0, 10), (10, 20)], vec![0, 0]);
        check(vec![(0, 10), (5, 20), (12, 30)], vec![0, 1, 0]);
        check(vec![(0, 100), (1, 2), (3, 4), (5, 6)], vec![0, 1, 1, 1]);
        check(vec![(0, 100), (1, 50), (2, 60)], vec![0, 1, 2]);
    }
}
