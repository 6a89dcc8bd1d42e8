//! The Anthropic Messages API over HTTP (`POST {base}/v1/messages`, non-streaming).
//!
//! The answer schema is forced as a tool (`tool_choice: {type: "tool"}`), so the model's
//! answer arrives as that tool's input. The retrying HTTP call shared with the `openai`
//! backend lives in [`http`] here: its decisions (classify a response, back off) are pure.

use crate::http;
use crate::{Answer, Backend, ErrorKind, LlmError, Request, Role, Usage};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
pub const DEFAULT_VERSION: &str = "2023-06-01";

/// How to reach the Messages API.
#[derive(Clone)]
pub struct AnthropicConfig {
    /// Without a trailing `/v1`; default [`DEFAULT_BASE_URL`].
    pub base_url: String,
    pub api_key: String,
    /// Used when the request names no model.
    pub model: String,
    /// Retries after the first attempt, for 429, 5xx, 529 and transport errors.
    pub max_retries: u32,
    /// The `anthropic-version` header; default [`DEFAULT_VERSION`].
    pub version: String,
    /// First retry delay; it doubles per retry up to 16× (500 ms → 8 s), with jitter. A
    /// `retry-after` header overrides it.
    pub retry_base: Duration,
}

impl AnthropicConfig {
    /// The defaults: public endpoint, 2 retries, 500 ms retry base.
    pub fn new(api_key: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            api_key: api_key.into(),
            model: model.into(),
            max_retries: 2,
            version: DEFAULT_VERSION.to_owned(),
            retry_base: http::DEFAULT_RETRY_BASE,
        }
    }
}

impl Default for AnthropicConfig {
    /// [`AnthropicConfig::new`] with no key and no model.
    fn default() -> Self {
        Self::new("", "")
    }
}

impl std::fmt::Debug for AnthropicConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnthropicConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &"<redacted>")
            .field("model", &self.model)
            .field("max_retries", &self.max_retries)
            .field("version", &self.version)
            .field("retry_base", &self.retry_base)
            .finish()
    }
}

/// The `anthropic` backend.
pub struct Anthropic {
    cfg: AnthropicConfig,
    url: String,
    client: reqwest::Client,
}

impl Anthropic {
    /// Fails ([`ErrorKind::Usage`]) on an empty key or an unusable base URL.
    pub fn new(cfg: AnthropicConfig) -> Result<Self, LlmError> {
        if cfg.api_key.trim().is_empty() {
            return Err(LlmError::new(
                ErrorKind::Usage,
                "the anthropic API key is empty: set it in the configuration or ANTHROPIC_API_KEY",
            ));
        }
        let base = cfg.base_url.trim_end_matches('/');
        let client = http::client(base)?;
        let url = format!("{base}/v1/messages");
        Ok(Self { cfg, url, client })
    }

    fn body(&self, request: &Request, model: &str) -> Value {
        let messages: Vec<Value> = request
            .messages
            .iter()
            .map(|m| json!({"role": role(m.role), "content": m.content}))
            .collect();
        let mut body = json!({
            "model": model,
            "max_tokens": request.max_tokens,
            "messages": messages,
        });
        if !request.system.is_empty() {
            body["system"] = json!(request.system);
        }
        if forces_schema(request) {
            body["tools"] = json!([{
                "name": request.schema_name,
                "description": "Submit your answer as this tool's input. It must follow the input schema.",
                "input_schema": request.schema,
            }]);
            body["tool_choice"] = json!({"type": "tool", "name": request.schema_name});
        }
        body
    }
}

fn role(role: Role) -> &'static str {
    match role {
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

/// A request without a schema (null, or no name) asks for plain text.
pub(crate) fn forces_schema(request: &Request) -> bool {
    !request.schema.is_null() && !request.schema_name.is_empty()
}

#[async_trait::async_trait]
impl Backend for Anthropic {
    fn name(&self) -> &'static str {
        "anthropic"
    }

    fn model(&self) -> Option<&str> {
        Some(&self.cfg.model)
    }

    async fn complete(&self, request: &Request) -> Result<Answer, LlmError> {
        let started = Instant::now();
        let model = request.model.as_deref().unwrap_or(&self.cfg.model);
        if model.is_empty() {
            return Err(LlmError::new(ErrorKind::Usage, "no anthropic model configured"));
        }
        let body = self.body(request, model);
        let send = || {
            self.client
                .post(&self.url)
                .header("x-api-key", &self.cfg.api_key)
                .header("anthropic-version", &self.cfg.version)
                .json(&body)
        };
        let retry = http::Retry { max_retries: self.cfg.max_retries, base: self.cfg.retry_base };
        let mut answer = http::call("anthropic", send, &retry, request.timeout, |bytes| {
            parse_message(bytes, &request.schema_name)
        })
        .await?;
        answer.latency = started.elapsed();
        Ok(answer)
    }
}

#[derive(Deserialize)]
struct MessageResponse {
    content: Vec<Block>,
    model: Option<String>,
    #[serde(default)]
    usage: TokenUsage,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    ToolUse {
        name: String,
        input: Value,
    },
    #[serde(other)]
    Other,
}

#[derive(Default, Deserialize)]
struct TokenUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

/// Pure: a Messages API response body → the answer. The tool call named `schema_name` (else
/// the first tool call) is the structured answer; without one, the text blocks are the answer.
fn parse_message(bytes: &[u8], schema_name: &str) -> Result<Answer, String> {
    let msg: MessageResponse = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let usage = Usage {
        input_tokens: msg.usage.input_tokens,
        output_tokens: msg.usage.output_tokens,
        cost_usd: None,
    };
    let mut tools = msg.content.iter().filter_map(|b| match b {
        Block::ToolUse { name, input } => Some((name, input)),
        _ => None,
    });
    let first = tools.clone().next();
    let tool = tools.find(|(name, _)| *name == schema_name).or(first);
    let (structured, text) = match tool {
        Some((_, input)) => (Some(input.clone()), input.to_string()),
        None => {
            let text = msg
                .content
                .iter()
                .filter_map(|b| match b {
                    Block::Text { text } => Some(text.as_str()),
                    _ => None,
                })
                .collect();
            (None, text)
        }
    };
    Ok(Answer { structured, text, usage, model: msg.model, latency: Duration::ZERO })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;

    fn check_parse(body: Value, expect_structured: Option<Value>, expect_text: &str) {
        let answer = parse_message(body.to_string().as_bytes(), "submit_plan").unwrap();
        assert_eq!((answer.structured, answer.text.as_str()), (expect_structured, expect_text));
    }

    #[test]
    fn parses_messages() {
        let usage = json!({"input_tokens": 7, "output_tokens": 3});
        check_parse(
            json!({"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "usage": usage}),
            None,
            "ab",
        );
        check_parse(
            json!({"content": [{"type": "text", "text": "x"}, {"type": "tool_use", "id": "t", "name": "submit_plan", "input": {"k": 1}}]}),
            Some(json!({"k": 1})),
            r#"{"k":1}"#,
        );
        check_parse(
            json!({"content": [
                {"type": "tool_use", "name": "other", "input": {"o": 1}},
                {"type": "tool_use", "name": "submit_plan", "input": {"k": 2}}]}),
            Some(json!({"k": 2})),
            r#"{"k":2}"#,
        );
        check_parse(
            json!({"content": [{"type": "tool_use", "name": "other", "input": {"o": 1}}]}),
            Some(json!({"o": 1})),
            r#"{"o":1}"#,
        );
        check_parse(json!({"content": [{"type": "thinking", "thinking": "hm"}]}), None, "");
    }

    #[test]
    fn parse_reads_usage_and_model_and_rejects_wrong_shapes() {
        let body =
            json!({"model": "m1", "content": [], "usage": {"input_tokens": 7, "output_tokens": 3}});
        let answer = parse_message(body.to_string().as_bytes(), "s").unwrap();
        assert_eq!(answer.usage, Usage { input_tokens: 7, output_tokens: 3, cost_usd: None });
        assert_eq!(answer.model.as_deref(), Some("m1"));
        assert!(parse_message(b"{}", "s").is_err());
        assert!(parse_message(b"[1]", "s").is_err());
    }

    #[test]
    fn body_forces_the_schema_tool() {
        let backend = Anthropic::new(AnthropicConfig::new("k", "m")).unwrap();
        let mut request = Request {
            system: "sys".into(),
            messages: vec![Message::user("u"), Message::assistant("a"), Message::user("u2")],
            schema: json!({"type": "object"}),
            schema_name: "submit_plan".into(),
            model: None,
            max_tokens: 99,
            timeout: Duration::from_secs(1),
        };
        let body = backend.body(&request, "m");
        assert_eq!(body["tool_choice"], json!({"type": "tool", "name": "submit_plan"}));
        assert_eq!(body["tools"][0]["input_schema"], json!({"type": "object"}));
        assert_eq!(body["system"], "sys");
        assert_eq!(body["max_tokens"], 99);
        assert_eq!(body["messages"][1], json!({"role": "assistant", "content": "a"}));
        request.schema = Value::Null;
        request.system.clear();
        let body = backend.body(&request, "m");
        assert!(body.get("tools").is_none() && body.get("tool_choice").is_none());
        assert!(body.get("system").is_none());
    }

    #[test]
    fn new_rejects_an_empty_key_and_debug_hides_the_key() {
        let err = Anthropic::new(AnthropicConfig::new(" ", "m")).err().unwrap();
        assert_eq!(err.kind, ErrorKind::Usage);
        let shown = format!("{:?}", AnthropicConfig::new("sk-secret", "m"));
        assert!(!shown.contains("sk-secret"), "{shown}");
    }
}
