//! Any OpenAI-compatible chat-completions endpoint (OpenAI, Ollama, vLLM, llama.cpp, …):
//! `POST {base}/chat/completions`, non-streaming.
//!
//! The schema goes in `response_format` (`json_schema`, not strict: local servers vary in
//! what they enforce); the content is kept as text and parsed as JSON when it parses. Retries
//! and timeouts follow the same rules as the `anthropic` backend.

use crate::anthropic::forces_schema;
use crate::http;
use crate::{Answer, Backend, ErrorKind, LlmError, Request, Role, Usage};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Ollama's OpenAI-compatible endpoint on this machine.
pub const DEFAULT_BASE_URL: &str = "http://localhost:11434/v1";

/// How to reach the endpoint.
#[derive(Clone)]
pub struct OpenAiConfig {
    /// Up to the version, e.g. `http://localhost:11434/v1`; `/chat/completions` is appended.
    pub base_url: String,
    /// Sent as `Authorization: Bearer …` when given and not empty.
    pub api_key: Option<String>,
    /// Used when the request names no model.
    pub model: String,
    /// Retries after the first attempt, for 429, 5xx and transport errors.
    pub max_retries: u32,
    /// First retry delay; it doubles per retry up to 16× (500 ms → 8 s), with jitter. A
    /// `retry-after` header overrides it.
    pub retry_base: Duration,
}

impl OpenAiConfig {
    /// No key, 2 retries, 500 ms retry base.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            api_key: None,
            model: model.into(),
            max_retries: 2,
            retry_base: http::DEFAULT_RETRY_BASE,
        }
    }
}

impl Default for OpenAiConfig {
    /// A local Ollama (`http://localhost:11434/v1`), no model.
    fn default() -> Self {
        Self::new(DEFAULT_BASE_URL, "")
    }
}

impl std::fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .field("max_retries", &self.max_retries)
            .field("retry_base", &self.retry_base)
            .finish()
    }
}

/// The `openai` backend.
pub struct OpenAi {
    cfg: OpenAiConfig,
    url: String,
    client: reqwest::Client,
}

impl OpenAi {
    /// Fails ([`ErrorKind::Usage`]) on an unusable base URL.
    pub fn new(cfg: OpenAiConfig) -> Result<Self, LlmError> {
        let base = cfg.base_url.trim_end_matches('/');
        let client = http::client(base)?;
        let url = format!("{base}/chat/completions");
        Ok(Self { cfg, url, client })
    }

    fn body(&self, request: &Request, model: &str) -> Value {
        let system = (!request.system.is_empty())
            .then(|| json!({"role": "system", "content": request.system}));
        let messages: Vec<Value> = system
            .into_iter()
            .chain(request.messages.iter().map(|m| {
                let role = match m.role {
                    Role::User => "user",
                    Role::Assistant => "assistant",
                };
                json!({"role": role, "content": m.content})
            }))
            .collect();
        let mut body = json!({
            "model": model,
            "messages": messages,
            "max_tokens": request.max_tokens,
        });
        if forces_schema(request) {
            body["response_format"] = json!({
                "type": "json_schema",
                "json_schema": {"name": request.schema_name, "schema": request.schema, "strict": false},
            });
        }
        body
    }
}

#[async_trait::async_trait]
impl Backend for OpenAi {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn model(&self) -> Option<&str> {
        Some(&self.cfg.model)
    }

    async fn complete(&self, request: &Request) -> Result<Answer, LlmError> {
        let started = Instant::now();
        let model = request.model.as_deref().unwrap_or(&self.cfg.model);
        if model.is_empty() {
            return Err(LlmError::new(ErrorKind::Usage, "no openai model configured"));
        }
        let body = self.body(request, model);
        let key = self.cfg.api_key.as_deref().filter(|k| !k.is_empty());
        let send = || {
            let builder = self.client.post(&self.url).json(&body);
            match key {
                Some(key) => builder.bearer_auth(key),
                None => builder,
            }
        };
        let retry = http::Retry { max_retries: self.cfg.max_retries, base: self.cfg.retry_base };
        let mut answer =
            http::call("openai", send, &retry, request.timeout, parse_completion).await?;
        answer.latency = started.elapsed();
        Ok(answer)
    }
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
    model: Option<String>,
    #[serde(default)]
    usage: Option<TokenUsage>,
}

#[derive(Deserialize)]
struct Choice {
    message: ChoiceMessage,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    tool_calls: Vec<ToolCall>,
    #[serde(default)]
    refusal: Option<String>,
}

#[derive(Deserialize)]
struct ToolCall {
    function: Function,
}

#[derive(Deserialize)]
struct Function {
    arguments: String,
}

#[derive(Default, Deserialize)]
struct TokenUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// Pure: a chat-completion body → the answer. The text is the first choice's content (its
/// text parts when it is a list), else its first tool call's arguments, else its refusal.
fn parse_completion(bytes: &[u8]) -> Result<Answer, String> {
    let completion: Completion = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let Some(choice) = completion.choices.into_iter().next() else {
        return Err("no choices".to_owned());
    };
    let message = choice.message;
    let text = match message.content {
        Some(Value::String(s)) => Some(s),
        Some(Value::Array(parts)) => {
            Some(parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect())
        }
        Some(Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    };
    let text = text
        .or_else(|| message.tool_calls.into_iter().next().map(|c| c.function.arguments))
        .or(message.refusal)
        .unwrap_or_default();
    let structured = serde_json::from_str(text.trim()).ok();
    let usage = completion.usage.unwrap_or_default();
    Ok(Answer {
        structured,
        text,
        usage: Usage {
            input_tokens: usage.prompt_tokens,
            output_tokens: usage.completion_tokens,
            cost_usd: None,
        },
        model: completion.model,
        latency: Duration::ZERO,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;

    fn check_parse(message: Value, expect_structured: Option<Value>, expect_text: &str) {
        let body = json!({"choices": [{"index": 0, "message": message}]});
        let answer = parse_completion(body.to_string().as_bytes()).unwrap();
        assert_eq!((answer.structured, answer.text.as_str()), (expect_structured, expect_text));
    }

    #[test]
    fn parses_completions() {
        check_parse(json!({"content": "hello"}), None, "hello");
        check_parse(json!({"content": r#"{"a":1}"#}), Some(json!({"a": 1})), r#"{"a":1}"#);
        check_parse(json!({"content": " [1, 2]\n"}), Some(json!([1, 2])), " [1, 2]\n");
        check_parse(json!({"content": "{broken"}), None, "{broken");
        check_parse(
            json!({"content": [{"type": "text", "text": "{\"b\":"}, {"type": "text", "text": "2}"}]}),
            Some(json!({"b": 2})),
            r#"{"b":2}"#,
        );
        check_parse(
            json!({"content": null, "tool_calls": [{"id": "c", "type": "function",
                "function": {"name": "f", "arguments": "{\"x\":true}"}}]}),
            Some(json!({"x": true})),
            r#"{"x":true}"#,
        );
        check_parse(json!({"content": null, "refusal": "no"}), None, "no");
        check_parse(json!({}), None, "");
    }

    #[test]
    fn parse_reads_usage_and_rejects_wrong_shapes() {
        let body = json!({"model": "llama", "choices": [{"message": {"content": "x"}}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 4}});
        let answer = parse_completion(body.to_string().as_bytes()).unwrap();
        assert_eq!(answer.usage, Usage { input_tokens: 11, output_tokens: 4, cost_usd: None });
        assert_eq!(answer.model.as_deref(), Some("llama"));
        assert_eq!(parse_completion(br#"{"choices": []}"#).unwrap_err(), "no choices");
        assert!(parse_completion(b"{}").is_err());
        assert!(parse_completion(b"nope").is_err());
    }

    #[test]
    fn body_puts_system_first_and_the_schema_in_response_format() {
        let backend = OpenAi::new(OpenAiConfig::new("http://127.0.0.1:1/v1/", "m")).unwrap();
        assert_eq!(backend.url, "http://127.0.0.1:1/v1/chat/completions");
        let mut request = Request {
            system: "sys".into(),
            messages: vec![Message::user("u")],
            schema: json!({"type": "object"}),
            schema_name: "submit_plan".into(),
            model: None,
            max_tokens: 50,
            timeout: Duration::from_secs(1),
        };
        let body = backend.body(&request, "m");
        assert_eq!(
            body["messages"],
            json!([{"role": "system", "content": "sys"}, {"role": "user", "content": "u"}])
        );
        assert_eq!(
            body["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "submit_plan", "schema": {"type": "object"}, "strict": false}})
        );
        request.schema = Value::Null;
        request.system.clear();
        let body = backend.body(&request, "m");
        assert!(body.get("response_format").is_none());
        assert_eq!(body["messages"], json!([{"role": "user", "content": "u"}]));
    }
}
