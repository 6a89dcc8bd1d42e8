//! The scripted server over real HTTP: routing, counting, recording, streaming, the script.

use orchestra_testkit::{MockLlm, Reply};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn post(
    mock: &MockLlm,
    path: &str,
    body: Value,
) -> (u16, Option<String>, Option<String>, String) {
    let response = client().post(format!("{}{path}", mock.url())).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    let header = |n: &str| response.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
    let (content_type, retry_after) = (header("content-type"), header("retry-after"));
    (status, content_type, retry_after, response.text().await.unwrap())
}

#[tokio::test]
async fn serves_the_script_in_order_then_500() {
    let mock = MockLlm::start(vec![Reply::text("one")]).await;
    mock.push(Reply::text("two"));
    let body = json!({"model": "m"});
    let mut texts = Vec::new();
    for _ in 0..3 {
        let (status, _, _, text) = post(&mock, "/v1/messages", body.clone()).await;
        let v: Value = serde_json::from_str(&text).unwrap();
        texts.push((status, v["content"][0]["text"].clone(), v["error"]["message"].clone()));
    }
    assert_eq!(
        texts,
        [
            (200, json!("one"), Value::Null),
            (200, json!("two"), Value::Null),
            (500, Value::Null, json!("mock script exhausted")),
        ]
    );
    assert_eq!((mock.count(), mock.remaining()), (3, 0));
}

#[tokio::test]
async fn other_requests_are_recorded_but_not_counted() {
    let mock = MockLlm::start(vec![Reply::text("x")]).await;
    let hello = client().head(format!("{}/api/hello", mock.url())).send().await.unwrap();
    assert_eq!(hello.status().as_u16(), 200);
    let (status, _, _, text) = post(&mock, "/v1/messages/count_tokens", json!({})).await;
    assert_eq!((status, text.as_str()), (200, ""));
    assert_eq!(mock.count(), 0);
    assert_eq!(mock.remaining(), 1);

    let body = json!({"model": "m", "messages": [{"role": "system", "content": "env"}],
        "thinking": {"type": "adaptive"}});
    let (status, _, _, _) = post(&mock, "/v1/messages?beta=true", body.clone()).await;
    assert_eq!(status, 200);
    let requests = mock.requests();
    let seen: Vec<(&str, &str)> =
        requests.iter().map(|r| (r.method.as_str(), r.path.as_str())).collect();
    assert_eq!(
        seen,
        [
            ("HEAD", "/api/hello"),
            ("POST", "/v1/messages/count_tokens"),
            ("POST", "/v1/messages?beta=true")
        ]
    );
    assert_eq!(requests[2].body, body);
    assert_eq!(requests[2].header("content-type"), Some("application/json"));
    assert_eq!(requests[0].body, Value::Null);
    assert_eq!(mock.count(), 1);
    assert_eq!(mock.model_requests().len(), 1);
}

#[tokio::test]
async fn streams_sse_when_asked() {
    let mock = MockLlm::start(vec![Reply::structured(json!({"ok": true})).with_usage(7, 3)]).await;
    let (status, content_type, _, text) =
        post(&mock, "/v1/messages", json!({"model": "claude-x", "stream": true})).await;
    assert_eq!((status, content_type.as_deref()), (200, Some("text/event-stream")));
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(events[0]["message"]["model"], "claude-x");
    assert_eq!(events[1]["content_block"]["name"], "StructuredOutput");
    let partial = events[2]["delta"]["partial_json"].as_str().unwrap();
    assert_eq!(serde_json::from_str::<Value>(partial).unwrap(), json!({"ok": true}));
    assert_eq!(events[4]["usage"]["input_tokens"], 7);
    assert_eq!(events[4]["usage"]["output_tokens"], 3);
}

#[tokio::test]
async fn errors_carry_status_body_and_retry_after() {
    let raw = Reply::Status { status: 503, body: "down".into(), retry_after: None };
    let mock = MockLlm::start(vec![Reply::rate_limited(4), raw]).await;
    let (status, _, retry_after, text) = post(&mock, "/v1/chat/completions", json!({})).await;
    assert_eq!((status, retry_after.as_deref()), (429, Some("4")));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    let (status, _, retry_after, text) = post(&mock, "/v1/chat/completions", json!({})).await;
    assert_eq!((status, retry_after, text.as_str()), (503, None, "down"));
}

#[tokio::test]
async fn openai_answers_chat_completions() {
    let mock = MockLlm::start(vec![Reply::structured(json!({"a": 1}))]).await;
    let (status, _, _, text) = post(&mock, "/v1/chat/completions", json!({"model": "llama"})).await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status, 200);
    assert_eq!(v["model"], "llama");
    assert_eq!(v["choices"][0]["message"]["content"], r#"{"a":1}"#);
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120})
    );
}

#[tokio::test]
async fn slow_replies_wait_and_drop_stops_the_server() {
    let mock = MockLlm::start(vec![Reply::text("late").after(Duration::from_millis(300))]).await;
    let started = Instant::now();
    let (status, _, _, _) = post(&mock, "/v1/messages", json!({})).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let url = mock.url();
    drop(mock);
    tokio::task::yield_now().await;
    let after = client().post(format!("{url}/v1/messages")).send().await;
    assert!(after.is_err(), "server still answering after drop: {after:?}");
}
