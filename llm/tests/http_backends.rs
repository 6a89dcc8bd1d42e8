//! The `anthropic` and `openai` backends against the scripted server over loopback: the same
//! scenarios for both, plus what each puts on the wire.

use orchestra_llm::anthropic::{Anthropic, AnthropicConfig};
use orchestra_llm::openai::{OpenAi, OpenAiConfig};
use orchestra_llm::{Backend, ErrorKind, LlmError, Message, Request};
use orchestra_testkit::{MockLlm, Reply};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Anthropic,
    OpenAi,
}

const BOTH: [Kind; 2] = [Kind::Anthropic, Kind::OpenAi];

fn backend_at(kind: Kind, base: &str) -> Box<dyn Backend> {
    let retry_base = Duration::from_millis(10);
    match kind {
        Kind::Anthropic => Box::new(
            Anthropic::new(AnthropicConfig {
                base_url: base.to_owned(),
                max_retries: 2,
                retry_base,
                ..AnthropicConfig::new("test-key", "model-a")
            })
            .unwrap(),
        ),
        Kind::OpenAi => Box::new(
            OpenAi::new(OpenAiConfig {
                api_key: Some("test-key".to_owned()),
                max_retries: 2,
                retry_base,
                ..OpenAiConfig::new(format!("{base}/v1"), "model-a")
            })
            .unwrap(),
        ),
    }
}

fn backend(kind: Kind, mock: &MockLlm) -> Box<dyn Backend> {
    backend_at(kind, &mock.url())
}

fn request(timeout: Duration) -> Request {
    Request {
        system: "you plan".to_owned(),
        messages: vec![Message::user("make a plan")],
        schema: json!({"type": "object", "properties": {"tasks": {"type": "array"}}}),
        schema_name: "submit_plan".to_owned(),
        model: None,
        max_tokens: 1000,
        timeout,
    }
}

/// The structured answer as each API's mock renders it.
fn plan_reply(kind: Kind, plan: Value) -> Reply {
    match kind {
        Kind::Anthropic => Reply::tool("submit_plan", plan),
        Kind::OpenAi => Reply::structured(plan),
    }
}

async fn call(
    kind: Kind,
    script: Vec<Reply>,
    timeout: Duration,
) -> (MockLlm, Result<orchestra_llm::Answer, LlmError>) {
    let mock = MockLlm::start(script).await;
    let result = backend(kind, &mock).complete(&request(timeout)).await;
    (mock, result)
}

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn success_reports_structured_answer_and_usage() {
    for kind in BOTH {
        let plan = json!({"tasks": [{"id": "a"}]});
        let (mock, result) =
            call(kind, vec![plan_reply(kind, plan.clone()).with_usage(42, 7)], SECOND).await;
        let answer = result.unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        assert_eq!(answer.structured, Some(plan.clone()), "{kind:?}");
        assert_eq!(serde_json::from_str::<Value>(&answer.text).unwrap(), plan, "{kind:?}");
        assert_eq!((answer.usage.input_tokens, answer.usage.output_tokens), (42, 7), "{kind:?}");
        assert_eq!(answer.usage.cost_usd, None);
        assert_eq!(answer.model.as_deref(), Some("model-a"), "{kind:?}");
        assert!(answer.latency > Duration::ZERO);
        assert_eq!(mock.count(), 1, "{kind:?}");
    }
}

#[tokio::test]
async fn plain_text_answer_has_no_structured_output() {
    for kind in BOTH {
        let (_mock, result) = call(kind, vec![Reply::text("just words")], SECOND).await;
        let answer = result.unwrap();
        assert_eq!((answer.structured, answer.text.as_str()), (None, "just words"), "{kind:?}");
        assert_eq!((answer.usage.input_tokens, answer.usage.output_tokens), (100, 20));
    }
}

/// Waits the server's `retry-after: 1` before the second attempt.
async fn honours_retry_after_on_429(kind: Kind) {
    let started = Instant::now();
    let script = vec![Reply::rate_limited(1), Reply::text("ok")];
    let (mock, result) = call(kind, script, Duration::from_secs(5)).await;
    assert_eq!(result.unwrap().text, "ok", "{kind:?}");
    assert_eq!(mock.count(), 2, "{kind:?}");
    let waited = started.elapsed();
    assert!(waited >= SECOND, "{kind:?}: retried after {waited:?}, before retry-after");
    assert!(waited < 2 * SECOND, "{kind:?}: {waited:?}");
}

#[tokio::test]
async fn anthropic_honours_retry_after_on_429() {
    honours_retry_after_on_429(Kind::Anthropic).await;
}

#[tokio::test]
async fn openai_honours_retry_after_on_429() {
    honours_retry_after_on_429(Kind::OpenAi).await;
}

#[tokio::test]
async fn retry_after_past_the_timeout_gives_up_at_once() {
    for kind in BOTH {
        let started = Instant::now();
        let (mock, result) =
            call(kind, vec![Reply::rate_limited(30)], Duration::from_millis(500)).await;
        let err = result.unwrap_err();
        assert_eq!((err.kind, err.status), (ErrorKind::Api, Some(429)), "{kind:?}: {err}");
        assert!(err.message.contains("would pass the timeout"), "{err}");
        assert_eq!(mock.count(), 1);
        assert!(started.elapsed() < Duration::from_millis(400), "{:?}", started.elapsed());
    }
}

#[tokio::test]
async fn retries_a_500() {
    for kind in BOTH {
        let script = vec![Reply::error(500, "boom"), Reply::text("ok")];
        let (mock, result) = call(kind, script, SECOND).await;
        assert_eq!(result.unwrap().text, "ok", "{kind:?}");
        assert_eq!(mock.count(), 2, "{kind:?}");
    }
}

#[tokio::test]
async fn gives_up_after_max_retries_naming_the_status() {
    for kind in BOTH {
        let script = vec![Reply::error(529, "Overloaded"); 4];
        let (mock, result) = call(kind, script, SECOND).await;
        let err = result.unwrap_err();
        assert_eq!((err.kind, err.status), (ErrorKind::Api, Some(529)), "{kind:?}: {err}");
        assert!(err.message.contains("529") && err.message.contains("Overloaded"), "{err}");
        assert!(err.message.contains("3 attempts"), "{err}");
        assert!(err.raw.contains("overloaded_error"), "{}", err.raw);
        assert_eq!(mock.count(), 3, "1 attempt + max_retries 2");
    }
}

#[tokio::test]
async fn malformed_body_is_retried_once() {
    for kind in BOTH {
        let script =
            vec![Reply::malformed("not json"), Reply::malformed("still not"), Reply::text("x")];
        let (mock, result) = call(kind, script, SECOND).await;
        let err = result.unwrap_err();
        assert_eq!((err.kind, err.status), (ErrorKind::Malformed, Some(200)), "{kind:?}: {err}");
        assert_eq!(err.raw, "still not");
        assert_eq!(mock.count(), 2, "{kind:?}");

        let script = vec![Reply::malformed("not json"), Reply::text("fine")];
        let (mock, result) = call(kind, script, SECOND).await;
        assert_eq!(result.unwrap().text, "fine");
        assert_eq!(mock.count(), 2);
    }
}

#[tokio::test]
async fn wrong_shape_is_malformed() {
    for kind in BOTH {
        let script = vec![Reply::malformed(r#"{"unexpected": true}"#); 2];
        let (_mock, result) = call(kind, script, SECOND).await;
        assert_eq!(result.unwrap_err().kind, ErrorKind::Malformed, "{kind:?}");
    }
}

#[tokio::test]
async fn slow_reply_times_out() {
    for kind in BOTH {
        let started = Instant::now();
        let script = vec![Reply::text("late").after(Duration::from_secs(3))];
        let (mock, result) = call(kind, script, Duration::from_millis(300)).await;
        let err = result.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Timeout, "{kind:?}: {err}");
        assert!(err.message.contains("300ms"), "{err}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(900),
            "{took:?}"
        );
        assert_eq!(mock.count(), 1);
    }
}

#[tokio::test]
async fn bad_key_is_a_usage_error_without_retries() {
    for kind in BOTH {
        let (mock, result) = call(kind, vec![Reply::error(401, "invalid x-api-key")], SECOND).await;
        let err = result.unwrap_err();
        assert_eq!((err.kind, err.status), (ErrorKind::Usage, Some(401)), "{kind:?}: {err}");
        assert!(
            err.message.contains("invalid x-api-key") && err.message.contains("check the API key"),
            "{err}"
        );
        assert_eq!(mock.count(), 1);
    }
}

#[tokio::test]
async fn other_4xx_fails_at_once_quoting_the_api() {
    for kind in BOTH {
        let (mock, result) =
            call(kind, vec![Reply::error(400, "max_tokens: too large")], SECOND).await;
        let err = result.unwrap_err();
        assert_eq!((err.kind, err.status), (ErrorKind::Api, Some(400)), "{kind:?}: {err}");
        assert!(err.message.contains("max_tokens: too large"), "{err}");
        assert_eq!(mock.count(), 1);
    }
}

#[tokio::test]
async fn unreachable_server_is_a_transport_error() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    for kind in BOTH {
        let base = format!("http://127.0.0.1:{port}");
        let err = backend_at(kind, &base).complete(&request(SECOND)).await.unwrap_err();
        assert_eq!((err.kind, err.status), (ErrorKind::Transport, None), "{kind:?}: {err}");
        assert!(err.message.contains("3 attempts"), "{err}");
    }
}

#[tokio::test]
async fn anthropic_request_forces_the_schema_tool() {
    let mock = MockLlm::start(vec![Reply::text("a")]).await;
    let mut req = request(SECOND);
    req.model = Some("model-override".to_owned());
    req.messages.push(Message::assistant("bad plan"));
    req.messages.push(Message::user("fix it"));
    backend(Kind::Anthropic, &mock).complete(&req).await.unwrap();

    let requests = mock.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/v1/messages"));
    assert_eq!(r.header("x-api-key"), Some("test-key"));
    assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let b = &r.body;
    assert_eq!(b["model"], "model-override");
    assert_eq!(b["max_tokens"], 1000);
    assert_eq!(b["system"], "you plan");
    assert_eq!(
        b["messages"],
        json!([
            {"role": "user", "content": "make a plan"},
            {"role": "assistant", "content": "bad plan"},
            {"role": "user", "content": "fix it"},
        ])
    );
    assert_eq!(b["tool_choice"], json!({"type": "tool", "name": "submit_plan"}));
    assert_eq!(b["tools"][0]["name"], "submit_plan");
    assert_eq!(b["tools"][0]["input_schema"], req.schema);
    assert!(b.get("stream").is_none());
}

#[tokio::test]
async fn openai_request_carries_the_response_format() {
    let mock = MockLlm::start(vec![Reply::text("a")]).await;
    backend(Kind::OpenAi, &mock).complete(&request(SECOND)).await.unwrap();

    let requests = mock.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/v1/chat/completions"));
    assert_eq!(r.header("authorization"), Some("Bearer test-key"));
    let b = &r.body;
    assert_eq!(b["model"], "model-a");
    assert_eq!(
        b["messages"],
        json!([{"role": "system", "content": "you plan"}, {"role": "user", "content": "make a plan"}])
    );
    assert_eq!(
        b["response_format"],
        json!({"type": "json_schema", "json_schema": {
            "name": "submit_plan", "schema": request(SECOND).schema, "strict": false}})
    );
}

#[tokio::test]
async fn openai_without_a_key_sends_no_authorization() {
    let mock = MockLlm::start(vec![Reply::text("a")]).await;
    let backend = OpenAi::new(OpenAiConfig::new(format!("{}/v1", mock.url()), "m")).unwrap();
    backend.complete(&request(SECOND)).await.unwrap();
    assert_eq!(mock.requests()[0].header("authorization"), None);
}

#[test]
fn names_and_models() {
    let a = Anthropic::new(AnthropicConfig::new("k", "claude-x")).unwrap();
    let o = OpenAi::new(OpenAiConfig::new("http://localhost:11434/v1", "llama")).unwrap();
    assert_eq!((a.name(), a.model()), ("anthropic", Some("claude-x")));
    assert_eq!((o.name(), o.model()), ("openai", Some("llama")));
}
