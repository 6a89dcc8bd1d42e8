//! The scripted backend against fixture directories, and record → replay round trips.

use orchestra_llm::scripted::{Recorder, Scripted};
use orchestra_llm::{Answer, Backend, ErrorKind, LlmError, Message, Request, Usage};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn fixtures(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scripted").join(name)
}

fn request(goal: &str) -> Request {
    Request {
        system: "plan".into(),
        messages: vec![Message::user(goal)],
        schema: json!({"type": "object"}),
        schema_name: "submit_plan".into(),
        model: None,
        max_tokens: 1000,
        timeout: Duration::from_secs(5),
    }
}

/// What a call returned, comparable.
#[derive(Debug, PartialEq)]
enum Got {
    Answer {
        text: String,
        structured: Option<serde_json::Value>,
        usage: Usage,
        model: Option<String>,
    },
    Error {
        kind: ErrorKind,
        message: String,
        status: Option<u16>,
    },
}

fn got(result: Result<Answer, LlmError>) -> Got {
    match result {
        Ok(a) => {
            Got::Answer { text: a.text, structured: a.structured, usage: a.usage, model: a.model }
        }
        Err(e) => Got::Error { kind: e.kind, message: e.message, status: e.status },
    }
}

fn text(t: &str) -> Got {
    Got::Answer { text: t.into(), structured: None, usage: Usage::default(), model: None }
}

async fn calls(backend: &dyn Backend, n: usize) -> Vec<Got> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(got(backend.complete(&request(&format!("goal {i}"))).await));
    }
    out
}

#[tokio::test]
async fn replays_mixed_files_in_name_order_then_runs_out() {
    let dir = fixtures("mixed");
    let scripted = Scripted::open(&dir).unwrap();
    assert_eq!((scripted.name(), scripted.model(), scripted.len()), ("scripted", None, 4));
    let got = calls(&scripted, 6).await;
    let exhausted = |call: usize| Got::Error {
        kind: ErrorKind::Fixture,
        message: format!(
            "scripted answers in `{}` ran out: it has 4 answer(s) and this is call {call}",
            dir.display()
        ),
        status: None,
    };
    assert_eq!(
        got,
        [
            Got::Answer {
                text: r#"{"tasks":[]}"#.into(),
                structured: Some(json!({"tasks": []})),
                usage: Usage { input_tokens: 1200, output_tokens: 80, cost_usd: Some(0.0042) },
                model: Some("claude-sonnet-5-5".into()),
            },
            text("Here is the plan:\n\n```json\n{\"tasks\": [{\"id\": \"build\"}]}\n```\n"),
            text("not a plan at all\n"),
            Got::Error {
                kind: ErrorKind::Api,
                message: "API Error: 529 Overloaded".into(),
                status: Some(529)
            },
            exhausted(5),
            exhausted(6),
        ]
    );
}

#[test]
fn open_refuses_missing_empty_and_bad_dirs() {
    #[track_caller]
    fn check(dir: &Path, expect: &str) {
        let err = Scripted::open(dir).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Fixture);
        assert!(
            err.message.starts_with(expect),
            "{:?} does not start with {expect:?}",
            err.message
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    check(&missing, &format!("cannot read scripted answers from `{}`: ", missing.display()));
    check(tmp.path(), &format!("no scripted answers in `{}`", tmp.path().display()));

    std::fs::write(tmp.path().join("README"), "no extension").unwrap();
    std::fs::write(tmp.path().join(".hidden.txt"), "hidden").unwrap();
    check(tmp.path(), "no scripted answers in");

    let bad = tmp.path().join("001.json");
    std::fs::write(&bad, r#"{"txt": "typo"}"#).unwrap();
    check(tmp.path(), &format!("bad scripted answer `{}`: unknown field `txt`", bad.display()));
    std::fs::write(&bad, r#"{"error": {"kind": "api_error"}}"#).unwrap();
    check(tmp.path(), &format!("bad scripted answer `{}`: missing field `message`", bad.display()));
    std::fs::write(&bad, r#"{"usage": {"input_tokens": 1}}"#).unwrap();
    check(tmp.path(), &format!("bad scripted answer `{}`: neither `text`", bad.display()));
}

#[tokio::test]
async fn record_then_replay_gives_the_same_calls() {
    let tmp = tempfile::tempdir().unwrap();
    let recorded = tmp.path().join("recorded");
    let recorder =
        Recorder::new(Box::new(Scripted::open(&fixtures("mixed")).unwrap()), &recorded).unwrap();
    assert_eq!(recorder.name(), "scripted");
    // Five calls: four answers, then the inner backend's exhaustion error is recorded too.
    let live = calls(&recorder, 5).await;
    let mut names: Vec<String> = std::fs::read_dir(&recorded)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["001.json", "002.json", "003.json", "004.json", "005.json"]);

    let replay = calls(&Scripted::open(&recorded).unwrap(), 5).await;
    assert_eq!(replay, live);
    assert!(matches!(&replay[4], Got::Error { kind: ErrorKind::Fixture, .. }), "{:?}", replay[4]);

    // A second recorder in the same dir continues the numbering.
    let again =
        Recorder::new(Box::new(Scripted::open(&fixtures("mixed")).unwrap()), &recorded).unwrap();
    calls(&again, 1).await;
    assert!(recorded.join("006.json").is_file());
}

#[tokio::test]
async fn recorded_file_format() {
    let tmp = tempfile::tempdir().unwrap();
    let recorder =
        Recorder::new(Box::new(Scripted::open(&fixtures("mixed")).unwrap()), tmp.path()).unwrap();
    calls(&recorder, 4).await;
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join(name)).unwrap()).unwrap()
    };
    assert_eq!(
        read("001.json"),
        json!({
            "text": "{\"tasks\":[]}",
            "structured": {"tasks": []},
            "usage": {"input_tokens": 1200, "output_tokens": 80, "cost_usd": 0.0042},
            "model": "claude-sonnet-5-5"
        })
    );
    assert_eq!(
        read("003.json"),
        json!({"text": "not a plan at all\n", "usage": {"input_tokens": 0, "output_tokens": 0}})
    );
    assert_eq!(
        read("004.json"),
        json!({"error": {"kind": "api_error", "message": "API Error: 529 Overloaded", "status": 529}})
    );
}
