//! Finding the JSON in a model's answer (pure).
//!
//! Structured output wins; otherwise the text is searched in this order: the whole text, the
//! first fenced block (```` ```json ```` or a bare ```` ``` ````) holding a JSON object, the first
//! balanced `{...}` in the prose that parses. When nothing is found, the error says precisely
//! why, in one line that can be fed back to the model verbatim.

use crate::Answer;
use serde_json::Value;

/// Why no JSON could be taken from an answer. Positions are 1-based, relative to the answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    #[error("the answer is empty; answer with one JSON object")]
    Empty,
    #[error(
        "the answer contains no JSON object (it starts with \"{preview}\"); answer with one JSON object"
    )]
    NoJson { preview: String },
    #[error(
        "the JSON object starting at line {line}, column {column} is cut off: the answer ends with {open} brace(s) still open; answer with the complete JSON object"
    )]
    Truncated { line: usize, column: usize, open: usize },
    #[error("invalid JSON at line {line}, column {column}: {message}")]
    Invalid { line: usize, column: usize, message: String },
}

/// The answer as JSON: its structured output, else the JSON found in its text.
pub fn extract_json(answer: &Answer) -> Result<Value, ExtractError> {
    match &answer.structured {
        Some(value) => Ok(value.clone()),
        None => from_text(&answer.text),
    }
}

/// The JSON in a text answer; see the module documentation for the search order.
pub fn from_text(text: &str) -> Result<Value, ExtractError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(ExtractError::Empty);
    }
    if let Ok(value) = serde_json::from_str::<Value>(trimmed) {
        return Ok(value);
    }
    // The first problem met, in text order, is the one reported.
    let mut problem: Option<ExtractError> = None;

    let fences = fences(text);
    let mut fenced_value = None;
    for (fence, _) in fences.iter().filter(|(_, json)| *json) {
        match serde_json::from_str::<Value>(&text[fence.clone()]) {
            Ok(value @ Value::Object(_)) => return Ok(value),
            Ok(value) => {
                fenced_value.get_or_insert(value);
            }
            // A fenced block cut off is reported by the brace scan below, as Truncated.
            Err(e) if e.is_eof() => {}
            Err(e) => {
                if text[fence.clone()].trim_start().starts_with(['{', '[']) {
                    problem.get_or_insert_with(|| invalid(text, fence.start, &e));
                }
            }
        }
    }
    // A fenced array or scalar is what the model meant, rather than an object inside it.
    if let Some(value) = fenced_value {
        return Ok(value);
    }

    // Code in another language is not the answer, braces and all.
    let foreign: Vec<_> = fences.into_iter().filter(|(_, json)| !json).map(|(r, _)| r).collect();
    let mut from = 0;
    while let Some(start) = next_object_start(text, from) {
        if let Some(code) = foreign.iter().find(|r| r.contains(&start)) {
            from = code.end;
            continue;
        }
        match balanced_end(text, start) {
            Ok(end) => match serde_json::from_str::<Value>(&text[start..end]) {
                Ok(value) => return Ok(value),
                Err(e) => {
                    problem.get_or_insert_with(|| invalid(text, start, &e));
                    from = end;
                }
            },
            Err(open) => {
                // Everything after an unclosed `{` lies inside it: no later span is top-level.
                let (line, column) = line_column(text, start);
                problem.get_or_insert(ExtractError::Truncated { line, column, open });
                break;
            }
        }
    }
    Err(problem.unwrap_or_else(|| ExtractError::NoJson { preview: preview(trimmed) }))
}

/// Byte ranges of the contents of fenced blocks, in order, each with whether it may hold JSON
/// (tagged `json`, any case, or untagged). A fence never closed runs to the end of the text.
fn fences(text: &str) -> Vec<(std::ops::Range<usize>, bool)> {
    // Inside a fence: its content start and whether it may hold JSON.
    let mut open: Option<(usize, bool)> = None;
    let mut out = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let Some(info) = line.trim().strip_prefix("```") else { continue };
        match open {
            Some((content, json)) if info.is_empty() => {
                out.push((content..start, json));
                open = None;
            }
            Some(_) => {}
            None => {
                let lang = info.trim().to_ascii_lowercase();
                let json = matches!(lang.as_str(), "" | "json" | "jsonc" | "json5");
                open = Some((offset, json));
            }
        }
    }
    if let Some((content, json)) = open {
        out.push((content..text.len(), json));
    }
    out
}

/// The next `{` at or after `from` that can start a JSON object: followed (after whitespace)
/// by `"` or `}`. A brace in prose (`{name}`) is not a start.
fn next_object_start(text: &str, from: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    (from..bytes.len()).find(|&i| {
        bytes[i] == b'{'
            && matches!(text[i + 1..].trim_start().as_bytes().first(), Some(b'"' | b'}'))
    })
}

/// The end (exclusive) of the `{...}` span starting at `start`, skipping braces in strings;
/// `Err(open braces)` when the text ends first.
fn balanced_end(text: &str, start: usize) -> Result<usize, usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, b) in text.bytes().enumerate().skip(start) {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i + 1);
                }
            }
            _ => {}
        }
    }
    Err(depth)
}

/// An Invalid error for a parse of `text[span_start..]`, positioned in the whole text.
fn invalid(text: &str, span_start: usize, e: &serde_json::Error) -> ExtractError {
    // serde_json counts lines from 1 and columns in bytes from 1; column 0 means it had just
    // read the newline, so the problem is at the end of the line before.
    let span = &text[span_start..];
    let line_start: usize =
        span.split_inclusive('\n').take(e.line().saturating_sub(1)).map(str::len).sum();
    let in_span = match e.column() {
        0 => line_start.saturating_sub(1),
        column => line_start + column - 1,
    };
    let mut at = (span_start + in_span).min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let (line, column) = line_column(text, at);
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
    ExtractError::Invalid { line, column, message }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The start of the answer on one line, at most 60 characters.
fn preview(text: &str) -> String {
    let flat: String =
        text.chars().map(|c| if c.is_whitespace() { ' ' } else { c }).take(61).collect();
    if flat.chars().count() > 60 {
        format!("{}...", flat.chars().take(60).collect::<String>())
    } else {
        flat
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[track_caller]
    fn check(text: &str, expect: Result<Value, ExtractError>) {
        assert_eq!(from_text(text), expect, "{text:?}");
    }

    fn invalid(line: usize, column: usize, message: &str) -> Result<Value, ExtractError> {
        Err(ExtractError::Invalid { line, column, message: message.into() })
    }

    fn truncated(line: usize, column: usize, open: usize) -> Result<Value, ExtractError> {
        Err(ExtractError::Truncated { line, column, open })
    }

    #[test]
    fn clean() {
        check(r#"{"a": 1}"#, Ok(json!({"a": 1})));
        check("\n  {\"a\": [1, 2]}\n\n", Ok(json!({"a": [1, 2]})));
        check("{}", Ok(json!({})));
    }

    #[test]
    fn fenced() {
        check("```json\n{\"a\": 1}\n```", Ok(json!({"a": 1})));
        check("Here:\n```JSON\n{\"a\": 1}\n```\nDone.", Ok(json!({"a": 1})));
        check("Here:\n```\n{\"a\": 1}\n```\n", Ok(json!({"a": 1})));
        check("  ```json  \n{\"a\": 1}\n  ```\n", Ok(json!({"a": 1})));
        // Two fences: the first object wins.
        check("```json\n{\"a\": 1}\n```\nor\n```json\n{\"a\": 2}\n```", Ok(json!({"a": 1})));
        // A fence that is not an object is skipped for a later object.
        check("```\nnot json\n```\n```json\n{\"b\": 2}\n```", Ok(json!({"b": 2})));
        check("```json\n[1]\n```\n```json\n{\"b\": 2}\n```", Ok(json!({"b": 2})));
        // A fenced array alone is returned as is, not the object inside it.
        check("Plan:\n```json\n[{\"a\": 1}]\n```", Ok(json!([{"a": 1}])));
        // Other languages are not JSON even if they contain braces.
        check("```rust\nfn f() { }\n```\n{\"c\": 3}", Ok(json!({"c": 3})));
    }

    #[test]
    fn prose() {
        check("Sure! {\"a\": 1}", Ok(json!({"a": 1})));
        check("{\"a\": 1}\nHope this helps.", Ok(json!({"a": 1})));
        check("Before {\"a\": {\"b\": 1}} after {\"z\": 0}", Ok(json!({"a": {"b": 1}})));
        check(
            r#"Use {placeholders} freely: {"s": "a } brace { and \" quote"}"#,
            Ok(json!({"s": "a } brace { and \" quote"})),
        );
        check(
            r#"{"s": "}{", "n": {"m": "{{"}} trailing"#,
            Ok(json!({"s": "}{", "n": {"m": "{{"}})),
        );
        // A balanced span that fails to parse is skipped for a later one.
        check("{\"a\": oops} then {\"b\": 1}", Ok(json!({"b": 1})));
    }

    #[test]
    fn not_objects() {
        check("[1, 2]", Ok(json!([1, 2])));
        check("  \"just a string\" ", Ok(json!("just a string")));
        check("42", Ok(json!(42)));
    }

    #[test]
    fn errors() {
        check("", Err(ExtractError::Empty));
        check(" \n\t ", Err(ExtractError::Empty));
        check(
            "I cannot help with that.",
            Err(ExtractError::NoJson { preview: "I cannot help with that.".into() }),
        );
        check("a\nb {name} c", Err(ExtractError::NoJson { preview: "a b {name} c".into() }));
        check(
            &"x".repeat(100),
            Err(ExtractError::NoJson { preview: format!("{}...", "x".repeat(60)) }),
        );
        check("{\"tasks\": [{\"id\": \"a\"}, {\"id\": \"b\"", truncated(1, 1, 2));
        check("Plan:\n  {\"a\": \"}\"", truncated(2, 3, 1));
        check("```json\n{\"a\": {\"b\": 1}\n", truncated(2, 1, 1));
        check("{\"a\": 1,}", invalid(1, 9, "trailing comma"));
        check("Here it is:\n{\n  \"a\": 1\n  \"b\": 2\n}", invalid(4, 3, "expected `,` or `}`"));
        check("```json\n{\n  \"a\": tru\n}\n```", invalid(3, 11, "expected ident"));
        check("é {\"é\": x}", invalid(1, 9, "expected value"));
        // The first problem in the text is reported.
        check("{\"a\": oops} then {\"b\": ", invalid(1, 7, "expected value"));
    }

    #[test]
    fn display_is_one_line() {
        let errors = [
            ExtractError::Empty,
            ExtractError::NoJson { preview: "hello".into() },
            ExtractError::Truncated { line: 3, column: 1, open: 2 },
            ExtractError::Invalid { line: 4, column: 3, message: "expected `,` or `}`".into() },
        ];
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "the answer is empty; answer with one JSON object",
                "the answer contains no JSON object (it starts with \"hello\"); answer with one JSON object",
                "the JSON object starting at line 3, column 1 is cut off: the answer ends with 2 brace(s) still open; answer with the complete JSON object",
                "invalid JSON at line 4, column 3: expected `,` or `}`",
            ]
        );
    }

    #[test]
    fn structured_first() {
        let answer = |structured: Option<Value>, text: &str| Answer {
            structured,
            text: text.into(),
            usage: crate::Usage::default(),
            model: None,
            latency: std::time::Duration::ZERO,
        };
        assert_eq!(extract_json(&answer(Some(json!({"s": 1})), "{\"t\": 2}")), Ok(json!({"s": 1})));
        assert_eq!(extract_json(&answer(None, "{\"t\": 2}")), Ok(json!({"t": 2})));
        assert_eq!(extract_json(&answer(None, "")), Err(ExtractError::Empty));
    }
}
