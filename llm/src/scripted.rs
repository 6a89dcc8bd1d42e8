//! Recorded answers: [`Scripted`] replays a directory of them, [`Recorder`] makes one.
//!
//! A fixture directory holds one answer per file, replayed in file-name order, one per call:
//! - `*.json`: a recorded answer `{"text": "...", "structured": <json|null>, "usage": {...},
//!   "model": "..."}` or a recorded failure `{"error": {"kind": "api_error", "message": "..."}}`;
//! - `*.txt` / `*.md`: a raw text answer (no usage).
//!
//! Other files and hidden files are ignored. Everything is read and checked at `open`, so a bad
//! fixture fails before the first call. [`Recorder`] writes `NNN.json` files in this format, so
//! a real session replays identically.

use crate::{Answer, Backend, ErrorKind, LlmError, Request, Usage};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// One `*.json` fixture file.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Recorded {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    structured: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    usage: Option<RecordedUsage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<RecordedError>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RecordedUsage {
    input_tokens: u64,
    output_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    cost_usd: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordedError {
    /// [`ErrorKind::as_str`] (`api_error`, `timeout`, ...).
    kind: String,
    message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    usage: Option<RecordedUsage>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    raw: String,
}

impl From<RecordedUsage> for Usage {
    fn from(u: RecordedUsage) -> Self {
        Usage { input_tokens: u.input_tokens, output_tokens: u.output_tokens, cost_usd: u.cost_usd }
    }
}

impl From<&Usage> for RecordedUsage {
    fn from(u: &Usage) -> Self {
        RecordedUsage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cost_usd: u.cost_usd,
        }
    }
}

impl Recorded {
    fn of(result: &Result<Answer, LlmError>) -> Self {
        match result {
            Ok(a) => Recorded {
                text: Some(a.text.clone()),
                structured: a.structured.clone(),
                usage: Some((&a.usage).into()),
                model: a.model.clone(),
                error: None,
            },
            Err(e) => Recorded {
                error: Some(RecordedError {
                    kind: e.kind.as_str().to_owned(),
                    message: e.message.clone(),
                    status: e.status,
                    usage: (e.usage != Usage::default()).then(|| (&e.usage).into()),
                    raw: e.raw.clone(),
                }),
                ..Recorded::default()
            },
        }
    }

    /// The replayed result, or why the file is not a valid fixture.
    fn into_result(self) -> Result<Result<Answer, LlmError>, String> {
        if let Some(error) = self.error {
            if self.text.is_some() || self.structured.is_some() || self.model.is_some() {
                return Err("an `error` fixture has no `text`, `structured` or `model`".into());
            }
            let kind = parse_kind(&error.kind)
                .ok_or_else(|| format!("unknown error kind `{}`", error.kind))?;
            let mut e = LlmError::new(kind, error.message)
                .with_usage(error.usage.map(Usage::from).unwrap_or_default())
                .with_raw(error.raw);
            e.status = error.status;
            return Ok(Err(e));
        }
        let text = match (self.text, &self.structured) {
            (Some(text), _) => text,
            (None, Some(structured)) => structured.to_string(),
            (None, None) => return Err("neither `text`, `structured` nor `error` is set".into()),
        };
        Ok(Ok(Answer {
            structured: self.structured,
            text,
            usage: self.usage.map(Usage::from).unwrap_or_default(),
            model: self.model,
            latency: Duration::ZERO,
        }))
    }
}

/// An [`ErrorKind`] from its `as_str` name (or its serde name).
fn parse_kind(name: &str) -> Option<ErrorKind> {
    const ALL: [ErrorKind; 9] = [
        ErrorKind::Api,
        ErrorKind::Timeout,
        ErrorKind::Transport,
        ErrorKind::Malformed,
        ErrorKind::MaxTurns,
        ErrorKind::Budget,
        ErrorKind::NoStructuredOutput,
        ErrorKind::Usage,
        ErrorKind::Fixture,
    ];
    ALL.into_iter()
        .find(|k| k.as_str() == name)
        .or_else(|| serde_json::from_value(Value::String(name.to_owned())).ok())
}

fn fixture_error(message: String) -> LlmError {
    LlmError::new(ErrorKind::Fixture, message)
}

/// Replays a directory of recorded answers, one per call, in file-name order.
#[derive(Debug)]
pub struct Scripted {
    dir: PathBuf,
    answers: Vec<Result<Answer, LlmError>>,
    next: AtomicUsize,
}

impl Scripted {
    /// Reads and checks every answer in `dir`. A missing or empty dir is an error.
    pub fn open(dir: &Path) -> Result<Self, LlmError> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            fixture_error(format!("cannot read scripted answers from `{}`: {e}", dir.display()))
        })?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| {
                fixture_error(format!("cannot read scripted answers from `{}`: {e}", dir.display()))
            })?;
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if !hidden && path.is_file() && matches!(ext, "json" | "txt" | "md") {
                files.push(path);
            }
        }
        files.sort();
        if files.is_empty() {
            let message = format!(
                "no scripted answers in `{}` (expected *.json, *.txt or *.md files)",
                dir.display()
            );
            return Err(fixture_error(message));
        }
        let answers = files.iter().map(|path| read_answer(path)).collect::<Result<_, _>>()?;
        Ok(Self { dir: dir.to_owned(), answers, next: AtomicUsize::new(0) })
    }

    /// How many answers the directory holds.
    pub fn len(&self) -> usize {
        self.answers.len()
    }

    /// Always false: `open` refuses an empty directory.
    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }
}

fn read_answer(path: &Path) -> Result<Result<Answer, LlmError>, LlmError> {
    let bad =
        |why: String| fixture_error(format!("bad scripted answer `{}`: {why}", path.display()));
    let content = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    if path.extension().is_some_and(|e| e != "json") {
        return Ok(Ok(Answer {
            structured: None,
            text: content,
            usage: Usage::default(),
            model: None,
            latency: Duration::ZERO,
        }));
    }
    let recorded: Recorded = serde_json::from_str(&content).map_err(|e| bad(e.to_string()))?;
    recorded.into_result().map_err(bad)
}

#[async_trait::async_trait]
impl Backend for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }

    fn model(&self) -> Option<&str> {
        None
    }

    async fn complete(&self, _request: &Request) -> Result<Answer, LlmError> {
        let index = self.next.fetch_add(1, Ordering::SeqCst);
        match self.answers.get(index) {
            Some(answer) => answer.clone(),
            None => Err(fixture_error(format!(
                "scripted answers in `{}` ran out: it has {} answer(s) and this is call {}",
                self.dir.display(),
                self.answers.len(),
                index + 1
            ))),
        }
    }
}

/// Wraps a backend and writes each of its answers (or errors) as the next `NNN.json` in a
/// directory, which [`Scripted`] then replays.
pub struct Recorder {
    inner: Box<dyn Backend>,
    dir: PathBuf,
    next: Mutex<u32>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("inner", &self.inner.name())
            .field("dir", &self.dir)
            .finish()
    }
}

impl Recorder {
    /// Creates `dir` if needed; numbering continues after the highest number that starts a
    /// file name already there.
    pub fn new(inner: Box<dyn Backend>, dir: &Path) -> Result<Self, LlmError> {
        let cannot = |e: std::io::Error| {
            fixture_error(format!("cannot record answers in `{}`: {e}", dir.display()))
        };
        std::fs::create_dir_all(dir).map_err(cannot)?;
        let mut next = 1;
        for entry in std::fs::read_dir(dir).map_err(cannot)? {
            let name = entry.map_err(cannot)?.file_name();
            let digits: String =
                name.to_string_lossy().chars().take_while(char::is_ascii_digit).collect();
            if let Ok(n) = digits.parse::<u32>() {
                next = next.max(n.saturating_add(1));
            }
        }
        Ok(Self { inner, dir: dir.to_owned(), next: Mutex::new(next) })
    }

    fn take_number(&self) -> u32 {
        let mut next = self.next.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let number = *next;
        *next += 1;
        number
    }
}

#[async_trait::async_trait]
impl Backend for Recorder {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn model(&self) -> Option<&str> {
        self.inner.model()
    }

    async fn complete(&self, request: &Request) -> Result<Answer, LlmError> {
        // Numbered at the call, so the files replay in call order.
        let path = self.dir.join(format!("{:03}.json", self.take_number()));
        let result = self.inner.complete(request).await;
        let mut json = serde_json::to_string_pretty(&Recorded::of(&result)).map_err(|e| {
            fixture_error(format!("cannot encode the answer for `{}`: {e}", path.display()))
        })?;
        json.push('\n');
        tokio::fs::write(&path, json).await.map_err(|e| {
            fixture_error(format!("cannot record the answer to `{}`: {e}", path.display()))
        })?;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kinds_by_name() {
        #[track_caller]
        fn check(name: &str, expect: Option<ErrorKind>) {
            assert_eq!(parse_kind(name), expect, "{name}");
        }
        check("api_error", Some(ErrorKind::Api));
        check("api", Some(ErrorKind::Api));
        check("no_structured_output", Some(ErrorKind::NoStructuredOutput));
        check("max_turns", Some(ErrorKind::MaxTurns));
        check("fixture", Some(ErrorKind::Fixture));
        check("boom", None);
    }

    #[test]
    fn fixture_files() {
        #[track_caller]
        fn check(json: Value, expect: Result<(&str, Option<Value>, u64), &str>) {
            let recorded: Recorded = serde_json::from_value(json.clone()).unwrap();
            let got = recorded
                .into_result()
                .map(|r| r.map(|a| (a.text, a.structured, a.usage.input_tokens)));
            let expect = expect
                .map(|(t, s, i)| Ok::<_, String>((t.to_owned(), s, i)))
                .map_err(str::to_owned);
            assert_eq!(got.map(|r| r.map_err(|e| e.to_string())), expect, "{json}");
        }
        check(json!({"text": "hi"}), Ok(("hi", None, 0)));
        check(json!({"structured": {"a": 1}}), Ok((r#"{"a":1}"#, Some(json!({"a": 1})), 0)));
        check(
            json!({"text": "t", "structured": null, "usage": {"input_tokens": 5}}),
            Ok(("t", None, 5)),
        );
        check(json!({}), Err("neither `text`, `structured` nor `error` is set"));
        check(json!({"error": {"kind": "nope", "message": "m"}}), Err("unknown error kind `nope`"));
        check(
            json!({"text": "t", "error": {"kind": "api_error", "message": "m"}}),
            Err("an `error` fixture has no `text`, `structured` or `model`"),
        );
    }
}
