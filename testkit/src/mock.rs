//! The scripted LLM server: one axum app answering both the Anthropic Messages API and the
//! OpenAI chat-completions API. Rendering a reply is pure ([`render`]); the handler only
//! records, pops the script, sleeps and writes.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

const DEFAULT_INPUT_TOKENS: u64 = 100;
const DEFAULT_OUTPUT_TOKENS: u64 = 20;
const EXHAUSTED: &str =
    r#"{"type":"error","error":{"type":"api_error","message":"mock script exhausted"}}"#;

/// One scripted answer, served to one model request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// An assistant text answer.
    Text(String),
    /// A `tool_use` block (Anthropic) / a `tool_calls` entry (OpenAI).
    Tool { name: String, input: Value },
    /// Anthropic: a `StructuredOutput` tool call (what `claude --json-schema` expects).
    /// OpenAI: the JSON serialized as the message content.
    Structured(Value),
    /// An error response with this status and raw body, and a `retry-after` header when given.
    Status { status: u16, body: String, retry_after: Option<u64> },
    /// 200 with this non-JSON body (a broken event stream when the request streams).
    Malformed(String),
    /// Waits, then answers `then`.
    Slow { delay: Duration, then: Box<Reply> },
    /// Reports this usage for `then` (default: 100 input, 20 output tokens).
    WithUsage { input_tokens: u64, output_tokens: u64, then: Box<Reply> },
}

impl Reply {
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text(text.into())
    }
    pub fn tool(name: impl Into<String>, input: Value) -> Self {
        Self::Tool { name: name.into(), input }
    }
    pub fn structured(value: Value) -> Self {
        Self::Structured(value)
    }
    /// An error in the provider's JSON shape (`{"type":"error","error":{"type","message"}}`;
    /// OpenAI clients read the same `error.message`).
    pub fn error(status: u16, message: &str) -> Self {
        let body =
            json!({"type": "error", "error": {"type": error_type(status), "message": message}});
        Self::Status { status, body: body.to_string(), retry_after: None }
    }
    /// A 429 with `retry-after: secs`.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        match Self::error(429, "rate limited") {
            Self::Status { status, body, .. } => {
                Self::Status { status, body, retry_after: Some(retry_after_secs) }
            }
            other => other,
        }
    }
    pub fn malformed(body: impl Into<String>) -> Self {
        Self::Malformed(body.into())
    }
    /// This reply, served after `delay`.
    pub fn after(self, delay: Duration) -> Self {
        Self::Slow { delay, then: Box::new(self) }
    }
    /// This reply, reporting the given usage.
    pub fn with_usage(self, input_tokens: u64, output_tokens: u64) -> Self {
        Self::WithUsage { input_tokens, output_tokens, then: Box::new(self) }
    }
}

/// Anthropic's error `type` for a status.
fn error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

/// A request as the server saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub method: String,
    /// Path and query, e.g. `/v1/messages?beta=true`.
    pub path: String,
    /// Lowercase names, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body as JSON; `Null` when it is not JSON.
    pub body: Value,
}

impl Recorded {
    /// The first value of a header (name in lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Script {
    replies: VecDeque<Reply>,
    requests: Vec<Recorded>,
    count: usize,
}

type Shared = Arc<Mutex<Script>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Script> {
    shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A scripted LLM server on `127.0.0.1`. Dropping it stops accepting connections.
pub struct MockLlm {
    url: String,
    shared: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for MockLlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockLlm").field("url", &self.url).finish_non_exhaustive()
    }
}

impl MockLlm {
    /// Starts the server; `script` is served in order, one reply per model request.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start(script: Vec<Reply>) -> MockLlm {
        let shared: Shared =
            Arc::new(Mutex::new(Script { replies: script.into(), ..Script::default() }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("mock LLM: cannot bind a loopback port");
        let addr = listener.local_addr().expect("mock LLM: no local address");
        let app = axum::Router::new().fallback(handle).with_state(shared.clone());
        let server = tokio::spawn(async move {
            // Serving ends only when the task is aborted (drop) or the listener fails.
            let _ = axum::serve(listener, app).await;
        });
        MockLlm { url: format!("http://{addr}"), shared, server }
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Appends a reply to the script.
    pub fn push(&self, reply: Reply) {
        lock(&self.shared).replies.push_back(reply);
    }

    /// Every request received, model requests or not, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared).requests.clone()
    }

    /// Model requests only (`POST …/v1/messages`, `POST …/chat/completions`).
    pub fn model_requests(&self) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| api_of(&r.method, &r.path).is_some()).collect()
    }

    /// Number of model requests received, including those answered "script exhausted".
    pub fn count(&self) -> usize {
        lock(&self.shared).count
    }

    /// Replies not served yet.
    pub fn remaining(&self) -> usize {
        lock(&self.shared).replies.len()
    }
}

impl Drop for MockLlm {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Which API a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Anthropic,
    OpenAi,
}

fn api_of(method: &str, path_and_query: &str) -> Option<Api> {
    if method != "POST" {
        return None;
    }
    let path = path_and_query.split('?').next().unwrap_or("");
    if path.ends_with("/v1/messages") {
        Some(Api::Anthropic)
    } else if path.ends_with("/chat/completions") {
        Some(Api::OpenAi)
    } else {
        None
    }
}

async fn handle(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path_and_query().map_or_else(|| uri.path().to_owned(), |pq| pq.to_string());
    let recorded = Recorded {
        method: method.to_string(),
        path: path.clone(),
        headers: headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    let api = api_of(method.as_str(), &path);
    let (reply, seq) = {
        let mut script = lock(&shared);
        let reply = if api.is_some() {
            script.count += 1;
            Some(script.replies.pop_front())
        } else {
            None
        };
        let seq = script.count;
        script.requests.push(recorded.clone());
        (reply, seq)
    };
    let (Some(api), Some(reply)) = (api, reply) else {
        return build(Rendered::empty());
    };
    let Some(reply) = reply else {
        return build(Rendered::json(500, EXHAUSTED.to_owned()));
    };
    let (delay, usage, base) = unwrap(reply);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let model = recorded.body.get("model").and_then(Value::as_str).unwrap_or("mock-model");
    let stream = recorded.body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    build(render(api, &base, usage, model, stream, seq))
}

/// Strips `Slow` and `WithUsage` layers: total delay, usage, and the answer itself.
fn unwrap(mut reply: Reply) -> (Duration, (u64, u64), Reply) {
    let mut delay = Duration::ZERO;
    let mut usage = None;
    loop {
        match reply {
            Reply::Slow { delay: d, then } => {
                delay += d;
                reply = *then;
            }
            Reply::WithUsage { input_tokens, output_tokens, then } => {
                usage.get_or_insert((input_tokens, output_tokens));
                reply = *then;
            }
            other => {
                return (
                    delay,
                    usage.unwrap_or((DEFAULT_INPUT_TOKENS, DEFAULT_OUTPUT_TOKENS)),
                    other,
                );
            }
        }
    }
}

/// A response ready to write.
#[derive(Debug, Clone, PartialEq)]
struct Rendered {
    status: u16,
    content_type: Option<&'static str>,
    retry_after: Option<u64>,
    body: String,
}

impl Rendered {
    fn empty() -> Self {
        Self { status: 200, content_type: None, retry_after: None, body: String::new() }
    }
    fn json(status: u16, body: String) -> Self {
        Self { status, content_type: Some("application/json"), retry_after: None, body }
    }
    fn sse(body: String) -> Self {
        Self { status: 200, content_type: Some("text/event-stream"), retry_after: None, body }
    }
}

fn build(r: Rendered) -> Response {
    let mut builder = Response::builder()
        .status(StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    if let Some(ct) = r.content_type {
        builder = builder.header(header::CONTENT_TYPE, ct);
    }
    if let Some(secs) = r.retry_after {
        builder = builder.header(header::RETRY_AFTER, secs.to_string());
    }
    builder.body(Body::from(r.body)).unwrap_or_else(|_| Response::new(Body::empty()))
}

/// The content of an answer, provider-neutral.
enum Content<'a> {
    Text(&'a str),
    Tool { name: &'a str, input: &'a Value },
}

/// Renders a plain reply (no `Slow`/`WithUsage` layer) for `api`.
fn render(
    api: Api,
    reply: &Reply,
    usage: (u64, u64),
    model: &str,
    stream: bool,
    seq: usize,
) -> Rendered {
    let content = match reply {
        Reply::Text(text) => Content::Text(text),
        Reply::Tool { name, input } => Content::Tool { name, input },
        Reply::Structured(value) => match api {
            Api::Anthropic => Content::Tool { name: "StructuredOutput", input: value },
            Api::OpenAi => return render_openai_text(&value.to_string(), usage, model, seq),
        },
        Reply::Status { status, body, retry_after } => {
            return Rendered { retry_after: *retry_after, ..Rendered::json(*status, body.clone()) };
        }
        Reply::Malformed(body) => {
            return if stream && api == Api::Anthropic {
                Rendered::sse(format!("event: message_start\ndata: {body}\n\n"))
            } else {
                Rendered::json(200, body.clone())
            };
        }
        Reply::Slow { then, .. } | Reply::WithUsage { then, .. } => {
            return render(api, then, usage, model, stream, seq);
        }
    };
    match api {
        Api::Anthropic if stream => anthropic_sse(&content, usage, model, seq),
        Api::Anthropic => anthropic_json(&content, usage, model, seq),
        Api::OpenAi => match content {
            Content::Text(text) => render_openai_text(text, usage, model, seq),
            Content::Tool { name, input } => openai_tool(name, input, usage, model, seq),
        },
    }
}

fn anthropic_usage(usage: (u64, u64)) -> Value {
    json!({
        "input_tokens": usage.0,
        "output_tokens": usage.1,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    })
}

fn anthropic_block(content: &Content<'_>, seq: usize) -> (Value, &'static str) {
    match content {
        Content::Text(text) => (json!({"type": "text", "text": text}), "end_turn"),
        Content::Tool { name, input } => (
            json!({"type": "tool_use", "id": format!("toolu_mock_{seq}"), "name": name, "input": input}),
            "tool_use",
        ),
    }
}

fn anthropic_json(content: &Content<'_>, usage: (u64, u64), model: &str, seq: usize) -> Rendered {
    let (block, stop_reason) = anthropic_block(content, seq);
    let body = json!({
        "id": format!("msg_mock_{seq}"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [block],
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": anthropic_usage(usage),
    });
    Rendered::json(200, body.to_string())
}

fn anthropic_sse(content: &Content<'_>, usage: (u64, u64), model: &str, seq: usize) -> Rendered {
    let (start_block, delta, stop_reason) = match content {
        Content::Text(text) => (
            json!({"type": "text", "text": ""}),
            json!({"type": "text_delta", "text": text}),
            "end_turn",
        ),
        Content::Tool { name, input } => (
            json!({"type": "tool_use", "id": format!("toolu_mock_{seq}"), "name": name, "input": {}}),
            json!({"type": "input_json_delta", "partial_json": input.to_string()}),
            "tool_use",
        ),
    };
    let events = [
        (
            "message_start",
            json!({"type": "message_start", "message": {
                "id": format!("msg_mock_{seq}"), "type": "message", "role": "assistant",
                "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": anthropic_usage((usage.0, 1)),
            }}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": start_block}),
        ),
        ("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": delta})),
        ("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
        (
            "message_delta",
            json!({"type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                "usage": anthropic_usage(usage)}),
        ),
        ("message_stop", json!({"type": "message_stop"})),
    ];
    let body =
        events.iter().map(|(name, data)| format!("event: {name}\ndata: {data}\n\n")).collect();
    Rendered::sse(body)
}

fn openai_body(message: Value, finish: &str, usage: (u64, u64), model: &str, seq: usize) -> Value {
    json!({
        "id": format!("chatcmpl-mock-{seq}"),
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1, "total_tokens": usage.0 + usage.1},
    })
}

fn render_openai_text(text: &str, usage: (u64, u64), model: &str, seq: usize) -> Rendered {
    let message = json!({"role": "assistant", "content": text});
    Rendered::json(200, openai_body(message, "stop", usage, model, seq).to_string())
}

fn openai_tool(name: &str, input: &Value, usage: (u64, u64), model: &str, seq: usize) -> Rendered {
    let message = json!({"role": "assistant", "content": null, "tool_calls": [{
        "id": format!("call_mock_{seq}"),
        "type": "function",
        "function": {"name": name, "arguments": input.to_string()},
    }]});
    Rendered::json(200, openai_body(message, "tool_calls", usage, model, seq).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_api(method: &str, path: &str, expect: Option<Api>) {
        assert_eq!(api_of(method, path), expect, "{method} {path}");
    }

    #[test]
    fn routes() {
        check_api("POST", "/v1/messages", Some(Api::Anthropic));
        check_api("POST", "/v1/messages?beta=true", Some(Api::Anthropic));
        check_api("POST", "/v1/chat/completions", Some(Api::OpenAi));
        check_api("POST", "/chat/completions", Some(Api::OpenAi));
        check_api("HEAD", "/api/hello", None);
        check_api("GET", "/v1/messages", None);
        check_api("POST", "/v1/messages/count_tokens", None);
        check_api("POST", "/v1/models", None);
    }

    /// Renders `reply` and compares status and body (parsed as JSON when it is JSON).
    fn check_render(api: Api, reply: Reply, stream: bool, status: u16, expect: Value) {
        let (_, usage, base) = unwrap(reply);
        let r = render(api, &base, usage, "m", stream, 1);
        let body = serde_json::from_str(&r.body).unwrap_or(Value::String(r.body.clone()));
        assert_eq!((r.status, body), (status, expect));
    }

    fn usage(input: u64, output: u64) -> Value {
        json!({"cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
            "input_tokens": input, "output_tokens": output})
    }

    fn message(content: Value, stop_reason: &str, usage: Value) -> Value {
        json!({"content": [content], "id": "msg_mock_1", "model": "m", "role": "assistant",
            "stop_reason": stop_reason, "stop_sequence": null, "type": "message", "usage": usage})
    }

    #[test]
    fn renders_anthropic_json() {
        let a = Api::Anthropic;
        check_render(
            a,
            Reply::text("hi"),
            false,
            200,
            message(json!({"type": "text", "text": "hi"}), "end_turn", usage(100, 20)),
        );
        check_render(
            a,
            Reply::structured(json!({"a": 1})).with_usage(5, 6),
            false,
            200,
            message(
                json!({"type": "tool_use", "id": "toolu_mock_1", "name": "StructuredOutput", "input": {"a": 1}}),
                "tool_use",
                usage(5, 6),
            ),
        );
        check_render(a, Reply::malformed("nope"), false, 200, json!("nope"));
        check_render(
            a,
            Reply::malformed("nope"),
            true,
            200,
            json!("event: message_start\ndata: nope\n\n"),
        );
        check_render(
            a,
            Reply::error(529, "Overloaded"),
            false,
            529,
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        );
        check_render(
            a,
            Reply::Status { status: 500, body: "boom".into(), retry_after: None },
            true,
            500,
            json!("boom"),
        );
    }

    #[test]
    fn renders_anthropic_stream() {
        let (_, usage, base) = unwrap(Reply::tool("Bash", json!({"command": "ls"})));
        let r = render(Api::Anthropic, &base, usage, "m", true, 3);
        assert_eq!(r.content_type, Some("text/event-stream"));
        let names: Vec<&str> = r.body.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let datas: Vec<Value> = r
            .body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(datas[1]["content_block"]["name"], "Bash");
        assert_eq!(datas[2]["delta"]["partial_json"], r#"{"command":"ls"}"#);
        assert_eq!(datas[4]["delta"]["stop_reason"], "tool_use");
        assert_eq!(datas[4]["usage"]["output_tokens"], 20);
    }

    fn completion(message: Value, finish: &str) -> Value {
        json!({"choices": [{"finish_reason": finish, "index": 0, "message": message}], "created": 0,
            "id": "chatcmpl-mock-1", "model": "m", "object": "chat.completion",
            "usage": {"completion_tokens": 20, "prompt_tokens": 100, "total_tokens": 120}})
    }

    #[test]
    fn renders_openai() {
        let o = Api::OpenAi;
        let text = |t: &str| json!({"role": "assistant", "content": t});
        check_render(o, Reply::text("hi"), false, 200, completion(text("hi"), "stop"));
        check_render(
            o,
            Reply::structured(json!({"a": 1})),
            false,
            200,
            completion(text(r#"{"a":1}"#), "stop"),
        );
        check_render(
            o,
            Reply::tool("f", json!({"x": true})),
            false,
            200,
            completion(
                json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_mock_1",
                    "type": "function", "function": {"name": "f", "arguments": r#"{"x":true}"#}}]}),
                "tool_calls",
            ),
        );
        check_render(o, Reply::malformed("nope"), true, 200, json!("nope"));
    }

    #[test]
    fn unwraps_layers() {
        let reply =
            Reply::text("x").with_usage(1, 2).after(Duration::from_millis(5)).with_usage(9, 9);
        assert_eq!(unwrap(reply), (Duration::from_millis(5), (9, 9), Reply::text("x")));
        let r = Reply::rate_limited(3);
        assert!(matches!(r, Reply::Status { status: 429, retry_after: Some(3), .. }));
    }
}
