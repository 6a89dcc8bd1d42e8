//! The retrying HTTP call shared by the `anthropic` and `openai` backends.
//!
//! Policy: 2xx with a parseable body is the answer; 429, 5xx (529 included) and transport
//! errors are retried with exponential backoff or after `retry-after`; a 2xx body that cannot
//! be parsed is retried once; 401/403 are [`ErrorKind::Usage`]; other statuses fail at once.
//! Everything, waits included, happens within the request's timeout: an attempt still running
//! at the deadline is [`ErrorKind::Timeout`]; a wait that would pass it ends the call at once
//! with the last error.

use crate::{ErrorKind, LlmError};
use std::time::Duration;
use tokio::time::Instant;

pub(crate) const DEFAULT_RETRY_BASE: Duration = Duration::from_millis(500);
/// The backoff stops growing at this multiple of the base.
const CAP_FACTOR: u32 = 16;
/// How much of an error body a message quotes when it has no `error.message`.
const QUOTE_LIMIT: usize = 200;

pub(crate) struct Retry {
    pub max_retries: u32,
    pub base: Duration,
}

/// Builds a client; installs rustls' ring provider unless one is installed already.
pub(crate) fn client(base_url: &str) -> Result<reqwest::Client, LlmError> {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another thread is fine: some provider is installed either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let url = reqwest::Url::parse(base_url).map_err(|e| {
        LlmError::new(ErrorKind::Usage, format!("invalid base URL `{base_url}`: {e}"))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(LlmError::new(
            ErrorKind::Usage,
            format!("invalid base URL `{base_url}`: the scheme must be http or https"),
        ));
    }
    let mut builder = reqwest::Client::builder();
    if is_loopback(&url) {
        // A proxy from the environment must not capture local servers.
        builder = builder.no_proxy();
    }
    builder.build().map_err(|e| {
        LlmError::new(ErrorKind::Usage, format!("cannot build an HTTP client: {}", chain(&e)))
    })
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host_str() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// An error and its sources, joined by `: `.
fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        source = e.source();
    }
    out
}

/// What one attempt came to.
#[derive(Debug)]
pub(crate) enum Outcome<T> {
    Done(T),
    /// Worth another attempt, after this wait when the server named one.
    Retry {
        error: LlmError,
        after: Option<Duration>,
    },
    Fail(LlmError),
}

/// Pure: what a response means. `parse` reads a 2xx body.
pub(crate) fn classify<T>(
    provider: &str,
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    parse: impl FnOnce(&[u8]) -> Result<T, String>,
) -> Outcome<T> {
    let raw = String::from_utf8_lossy(body).into_owned();
    if (200..300).contains(&status) {
        return match parse(body) {
            Ok(answer) => Outcome::Done(answer),
            Err(why) => Outcome::Retry {
                error: LlmError::new(
                    ErrorKind::Malformed,
                    format!("{provider} API answered {status} with an unreadable body: {why}"),
                )
                .with_status(status)
                .with_raw(raw),
                after: None,
            },
        };
    }
    let said = api_message(&raw);
    let error = |kind, message: String| {
        LlmError::new(kind, message).with_status(status).with_raw(raw.clone())
    };
    match status {
        401 | 403 => Outcome::Fail(error(
            ErrorKind::Usage,
            format!("{provider} API refused the credentials ({status}): {said}; check the API key"),
        )),
        429 | 500..=599 => Outcome::Retry {
            error: error(ErrorKind::Api, format!("{provider} API answered {status}: {said}")),
            after: retry_after,
        },
        _ => Outcome::Fail(error(
            ErrorKind::Api,
            format!("{provider} API answered {status}: {said}"),
        )),
    }
}

/// Pure: the API's own words from an error body: `error.message`, a string `error`, a
/// top-level `message`, else the start of the body.
pub(crate) fn api_message(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
        let found = v
            .pointer("/error/message")
            .or_else(|| v.get("error").filter(|e| e.is_string()))
            .or_else(|| v.get("message"))
            .and_then(|m| m.as_str());
        if let Some(m) = found {
            return m.to_owned();
        }
    }
    let body = body.trim();
    if body.is_empty() {
        return "(empty body)".to_owned();
    }
    let mut end = body.len().min(QUOTE_LIMIT);
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    if end < body.len() { format!("{}…", &body[..end]) } else { body.to_owned() }
}

/// Pure: the `retry-after` (seconds) or `retry-after-ms` header value as a wait.
pub(crate) fn parse_retry_after(secs: Option<&str>, millis: Option<&str>) -> Option<Duration> {
    let ms = millis.and_then(|v| v.trim().parse::<f64>().ok()).map(|ms| ms / 1000.0);
    let secs = secs.and_then(|v| v.trim().parse::<f64>().ok());
    ms.or(secs).and_then(|s| Duration::try_from_secs_f64(s).ok())
}

/// Pure: the wait before retry number `retry` (0-based): `base · 2^retry`, capped at 16×
/// base, of which a `jitter` fraction (0..1) of the upper half is kept ("equal jitter").
pub(crate) fn backoff(base: Duration, retry: u32, jitter: f64) -> Duration {
    let factor = 2u32.saturating_pow(retry).min(CAP_FACTOR);
    let full = base.saturating_mul(factor);
    let half = full / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

/// Sends with retries, all within `timeout`. `send` builds a fresh request per attempt.
pub(crate) async fn call<T>(
    provider: &'static str,
    send: impl Fn() -> reqwest::RequestBuilder,
    retry: &Retry,
    timeout: Duration,
    parse: impl Fn(&[u8]) -> Result<T, String>,
) -> Result<T, LlmError> {
    let deadline = Instant::now() + timeout;
    let mut retries = 0u32;
    let mut malformed = 0u32;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempt = tokio::time::timeout(remaining, attempt(send())).await;
        let outcome = match attempt {
            Err(_elapsed) => {
                return Err(LlmError::new(
                    ErrorKind::Timeout,
                    format!("{provider} API gave no answer within {timeout:?}"),
                ));
            }
            Ok(Err(e)) => Outcome::Retry {
                error: LlmError::new(
                    ErrorKind::Transport,
                    format!("cannot reach the {provider} API: {}", chain(&e)),
                ),
                after: None,
            },
            Ok(Ok((status, after, body))) => classify(provider, status, after, &body, &parse),
        };
        let (error, after) = match outcome {
            Outcome::Done(answer) => return Ok(answer),
            Outcome::Fail(error) => return Err(error),
            Outcome::Retry { error, after } => (error, after),
        };
        let attempts = retries + 1;
        if error.kind == ErrorKind::Malformed {
            malformed += 1;
        }
        if retries >= retry.max_retries || malformed > 1 {
            return Err(gave_up(error, attempts, None));
        }
        let wait = after.unwrap_or_else(|| backoff(retry.base, retries, rand::random()));
        let remaining = deadline.saturating_duration_since(Instant::now());
        if wait >= remaining {
            return Err(gave_up(error, attempts, Some(wait)));
        }
        tracing::warn!(
            provider,
            status = error.status,
            attempt = attempts,
            wait_ms = wait.as_millis() as u64,
            "model call failed, retrying"
        );
        tokio::time::sleep(wait).await;
        retries += 1;
    }
}

fn gave_up(mut error: LlmError, attempts: u32, wait: Option<Duration>) -> LlmError {
    let plural = if attempts == 1 { "" } else { "s" };
    error.message = match wait {
        None => format!("{} ({attempts} attempt{plural})", error.message),
        Some(wait) => format!(
            "{} ({attempts} attempt{plural}; the next retry, in {wait:?}, would pass the timeout)",
            error.message
        ),
    };
    error
}

/// One HTTP exchange: status, the server's wait hint, the whole body.
async fn attempt(
    request: reqwest::RequestBuilder,
) -> Result<(u16, Option<Duration>, Vec<u8>), reqwest::Error> {
    let response = request.send().await?;
    let status = response.status().as_u16();
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok());
    let after = parse_retry_after(header("retry-after"), header("retry-after-ms"));
    let body = response.bytes().await?;
    Ok((status, after, body.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_classify(status: u16, retry_after: Option<u64>, body: &str, expect: &str) {
        let parse = |b: &[u8]| -> Result<serde_json::Value, String> {
            serde_json::from_slice(b).map_err(|e| e.to_string())
        };
        let outcome =
            classify("p", status, retry_after.map(Duration::from_secs), body.as_bytes(), parse);
        let got = match outcome {
            Outcome::Done(v) => format!("done {v}"),
            Outcome::Retry { error, after } => {
                format!("retry {error} after={after:?} status={:?}", error.status)
            }
            Outcome::Fail(error) => format!("fail {error} status={:?}", error.status),
        };
        assert_eq!(got, expect);
    }

    #[test]
    fn classifies_responses() {
        check_classify(200, None, r#"{"a":1}"#, r#"done {"a":1}"#);
        check_classify(
            200,
            None,
            "not json",
            "retry malformed: p API answered 200 with an unreadable body: expected ident at line 1 column 2 after=None status=Some(200)",
        );
        let overloaded =
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        check_classify(
            529,
            None,
            overloaded,
            "retry api_error: p API answered 529: Overloaded after=None status=Some(529)",
        );
        check_classify(
            429,
            Some(2),
            r#"{"error":{"message":"slow down"}}"#,
            "retry api_error: p API answered 429: slow down after=Some(2s) status=Some(429)",
        );
        check_classify(
            500,
            None,
            "boom",
            "retry api_error: p API answered 500: boom after=None status=Some(500)",
        );
        check_classify(
            401,
            None,
            r#"{"error":{"message":"invalid x-api-key"}}"#,
            "fail usage: p API refused the credentials (401): invalid x-api-key; check the API key status=Some(401)",
        );
        check_classify(
            403,
            None,
            "",
            "fail usage: p API refused the credentials (403): (empty body); check the API key status=Some(403)",
        );
        check_classify(
            400,
            None,
            r#"{"error":"bad"}"#,
            "fail api_error: p API answered 400: bad status=Some(400)",
        );
        check_classify(
            404,
            None,
            r#"{"message":"nope"}"#,
            "fail api_error: p API answered 404: nope status=Some(404)",
        );
    }

    #[test]
    fn quotes_long_bodies_briefly() {
        let long = "é".repeat(300);
        let said = api_message(&long);
        assert!(said.ends_with('…'));
        assert!(said.len() <= QUOTE_LIMIT + '…'.len_utf8());
    }

    fn check_backoff(retry: u32, jitter: f64, expect_ms: u64) {
        assert_eq!(
            backoff(Duration::from_millis(500), retry, jitter),
            Duration::from_millis(expect_ms),
            "retry {retry} jitter {jitter}"
        );
    }

    #[test]
    fn backs_off_exponentially_with_a_cap() {
        check_backoff(0, 0.0, 250);
        check_backoff(0, 1.0, 500);
        check_backoff(1, 1.0, 1000);
        check_backoff(2, 0.5, 1500);
        check_backoff(4, 1.0, 8000);
        check_backoff(5, 1.0, 8000);
        check_backoff(40, 0.0, 4000);
        check_backoff(3, 7.0, 4000);
    }

    fn check_retry_after(secs: Option<&str>, ms: Option<&str>, expect: Option<Duration>) {
        assert_eq!(parse_retry_after(secs, ms), expect, "{secs:?} {ms:?}");
    }

    #[test]
    fn reads_retry_after() {
        check_retry_after(Some("3"), None, Some(Duration::from_secs(3)));
        check_retry_after(Some(" 1.5 "), None, Some(Duration::from_millis(1500)));
        check_retry_after(Some("0"), None, Some(Duration::ZERO));
        check_retry_after(Some("3"), Some("250"), Some(Duration::from_millis(250)));
        check_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT"), None, None);
        check_retry_after(Some("-1"), None, None);
        check_retry_after(None, None, None);
    }

    #[test]
    fn spots_loopback() {
        for (url, expect) in [
            ("http://127.0.0.1:8080", true),
            ("http://localhost:11434/v1", true),
            ("http://[::1]:80", true),
            ("https://api.anthropic.com", false),
            ("http://10.0.0.1", false),
        ] {
            assert_eq!(is_loopback(&reqwest::Url::parse(url).unwrap()), expect, "{url}");
        }
    }

    #[test]
    fn rejects_bad_base_urls() {
        for url in ["not a url", "ftp://example.com", ""] {
            let err = client(url).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Usage, "{url}");
        }
    }
}
