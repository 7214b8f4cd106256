//! The OpenAI brain's session summaries: a text-only Chat Completions request to the service at
//! the configured base URL (`POST {base}/chat/completions`), its answer constrained to the
//! summary's JSON schema (`response_format: json_schema`, strict; the schema is generated from
//! [`SummaryContent`]) and checked again on arrival, since a model or a proxy may still answer
//! something else.

use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use orb_protocol::summary::{SummaryContent, TranscriptLine, content_schema};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Summarizer, SummaryError, SummaryRequest, session_instructions};
use crate::config::OpenAiConfig;
use crate::proxy::ProxyConnector;

/// Largest answer read: a summary is a few KiB.
const MAX_ANSWER_BYTES: usize = 1 << 20;
/// How much of an error answer is quoted in the error.
const QUOTED_ERROR_CHARS: usize = 300;

/// What the model is told. The schema carries the shape; this carries the purpose.
const INSTRUCTIONS: &str = "You write the summary of a coaching session for the coach. You get \
the transcript (each line: minutes:seconds from the start, the speaker's id and role — coach, \
client, or ai for the AI assistant in the call — and what was said), possibly only the latest \
part of it together with the summary of the part before, which you extend and correct. Answer \
with: keyTopics, the main subjects, a few words each, most important first, at most 8; \
progress, the client's progress in this session as the coach would note it (what moved, what is \
stuck), at most a few sentences; recommendations, concrete next steps for the coach and the \
client, at most 8. Use only what the transcript says; write in the language of the session.";

type HttpsClient = Client<hyper_rustls::HttpsConnector<ProxyConnector>, Full<Bytes>>;

/// Writes summaries with the Chat Completions API of the brain's service.
pub struct ChatSummarizer {
    url: String,
    api_key: String,
    model: String,
    client: Result<HttpsClient, String>,
}

/// `{base}/chat/completions`, with ws(s) turned into http(s): the realtime base URL names the
/// same service.
pub fn chat_completions_url(base_url: &str) -> String {
    let base = base_url.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("wss://") {
        format!("https://{rest}")
    } else if let Some(rest) = base.strip_prefix("ws://") {
        format!("http://{rest}")
    } else {
        base.to_owned()
    };
    format!("{base}/chat/completions")
}

impl ChatSummarizer {
    pub fn new(config: &OpenAiConfig) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // The same CA roots as the realtime connection (the image has no system store).
        let client = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)
            .map(|b| {
                // Through the same proxy as the realtime connection, when one is set.
                let connector = b
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(ProxyConnector::new(config.proxy.clone()));
                Client::builder(TokioExecutor::new()).build(connector)
            })
            .map_err(|e| format!("TLS setup: {e}"));
        Self {
            url: chat_completions_url(&config.base_url),
            api_key: config.api_key.clone(),
            model: config.summary_model.clone(),
            client,
        }
    }

    async fn attempt(&self, request: SummaryRequest<'_>) -> Result<SummaryContent, SummaryError> {
        let client = self.client.as_ref().map_err(|e| SummaryError::Unreachable(e.clone()))?;
        let body = request_body(&self.model, request);
        let req = http::Request::post(&self.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::AUTHORIZATION, format!("Bearer {}", self.api_key))
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| SummaryError::Unreachable(format!("invalid request to {}: {e}", self.url)))?;
        let resp = client
            .request(req)
            .await
            .map_err(|e| SummaryError::Unreachable(format!("{}: {e}", self.url)))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| SummaryError::Unreachable(format!("reading the answer: {e}")))?
            .to_bytes();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            return Err(SummaryError::Status {
                status: status.as_u16(),
                body: text.chars().take(QUOTED_ERROR_CHARS).collect(),
            });
        }
        parse_answer(&bytes)
    }
}

impl Summarizer for ChatSummarizer {
    fn summarize<'a>(&'a self, request: SummaryRequest<'a>) -> BoxFuture<'a, Result<SummaryContent, SummaryError>> {
        self.attempt(request).boxed()
    }
}

/// What any model is asked for one summary step: its instructions (with the session's context)
/// and the transcript lines, after the summary so far when there is one.
pub fn summary_prompt(request: SummaryRequest<'_>) -> (String, String) {
    let mut user = String::new();
    if let Some(previous) = request.previous {
        user.push_str("The summary of the session before these lines:\n");
        user.push_str(&serde_json::to_string(previous).unwrap_or_default());
        user.push_str("\n\nThe lines since:\n");
    } else {
        user.push_str("The transcript:\n");
    }
    for line in request.lines {
        user.push_str(&transcript_line(line));
        user.push('\n');
    }
    (session_instructions(INSTRUCTIONS, request.context), user)
}

/// The Chat Completions request of one summary step.
pub fn request_body(model: &str, request: SummaryRequest<'_>) -> Value {
    let (system, user) = summary_prompt(request);
    json!({
        "model": model,
        "messages": [
            { "role": "system", "content": system },
            { "role": "user", "content": user },
        ],
        "response_format": {
            "type": "json_schema",
            "json_schema": { "name": "session_summary", "strict": true, "schema": content_schema() },
        },
    })
}

/// `[mm:ss] speaker (role): text`, as the model reads it.
fn transcript_line(line: &TranscriptLine) -> String {
    let secs = line.offset_ms / 1000;
    let role = serde_json::to_value(line.role)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let overlap = if line.overlap { " [over another voice]" } else { "" };
    format!(
        "[{:02}:{:02}] {} ({role}){overlap}: {}",
        secs / 60,
        secs % 60,
        line.speaker,
        line.text
    )
}

#[derive(Deserialize)]
struct ChatCompletion {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: AnswerMessage,
}

#[derive(Deserialize)]
struct AnswerMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
}

/// The summary in a Chat Completions answer, checked.
pub fn parse_answer(body: &[u8]) -> Result<SummaryContent, SummaryError> {
    let completion: ChatCompletion =
        serde_json::from_slice(body).map_err(|e| SummaryError::Invalid(format!("not a chat completion: {e}")))?;
    let message = completion
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| SummaryError::Invalid("no choices".into()))?
        .message;
    if let Some(refusal) = message.refusal {
        return Err(SummaryError::Refused(refusal));
    }
    let content = message
        .content
        .ok_or_else(|| SummaryError::Invalid("no content".into()))?;
    let summary: SummaryContent = serde_json::from_str(&content).map_err(|e| SummaryError::Invalid(e.to_string()))?;
    summary.check().map_err(|e| SummaryError::Invalid(e.to_string()))?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use orb_protocol::UserRole;

    use super::*;
    use crate::brain::SessionContext;

    fn answer(content: &str) -> Vec<u8> {
        json!({"id": "c1", "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content, "refusal": null}, "finish_reason": "stop"}
        ]})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn the_url_is_the_realtime_services_own() {
        assert_eq!(
            chat_completions_url("wss://api.openai.com/v1"),
            "https://api.openai.com/v1/chat/completions"
        );
        assert_eq!(
            chat_completions_url("http://127.0.0.1:9/v1/"),
            "http://127.0.0.1:9/v1/chat/completions"
        );
    }

    #[test]
    fn the_request_asks_for_the_schema_and_names_every_speaker() {
        let lines = [
            TranscriptLine {
                speaker: "coach-1".into(),
                role: UserRole::Coach,
                text: "How was the week?".into(),
                offset_ms: 61_500,
                overlap: false,
            },
            TranscriptLine {
                speaker: "client-1".into(),
                role: UserRole::Client,
                text: "Better.".into(),
                offset_ms: 64_000,
                overlap: true,
            },
        ];
        let previous = SummaryContent {
            key_topics: vec!["sleep".into()],
            progress: "Sleeps longer.".into(),
            recommendations: vec![],
        };
        let body = request_body(
            "m",
            SummaryRequest {
                context: &SessionContext {
                    coach: "coach-1".into(),
                    client: "client-1".into(),
                    purpose: "Sleep and energy".into(),
                },
                previous: Some(&previous),
                lines: &lines,
            },
        );
        assert_eq!(body["model"], "m");
        assert_eq!(body["response_format"]["type"], "json_schema");
        assert_eq!(body["response_format"]["json_schema"]["strict"], true);
        assert_eq!(body["response_format"]["json_schema"]["schema"], content_schema());
        let system = body["messages"][0]["content"].as_str().unwrap();
        assert!(system.starts_with(INSTRUCTIONS), "{system}");
        assert!(system.contains(r#""purpose":"Sleep and energy""#), "{system}");
        let user = body["messages"][1]["content"].as_str().unwrap();
        assert!(user.contains("\"keyTopics\":[\"sleep\"]"), "{user}");
        assert!(user.contains("[01:01] coach-1 (coach): How was the week?"), "{user}");
        assert!(
            user.contains("[01:04] client-1 (client) [over another voice]: Better."),
            "{user}"
        );
    }

    #[test]
    fn answers_are_checked() {
        let good = r#"{"keyTopics":["sleep"],"progress":"Better sleep.","recommendations":["Keep a diary."]}"#;
        assert_eq!(parse_answer(&answer(good)).unwrap().key_topics, ["sleep"]);
        for (body, why) in [
            (b"<html>".to_vec(), "not a chat completion"),
            (json!({"choices": []}).to_string().into_bytes(), "no choices"),
            (answer("{\"keyTopics\": 5}"), "invalid type"),
            (
                answer("{\"keyTopics\": [\"a\"], \"progress\": \"p\"}"),
                "missing field `recommendations`",
            ),
            (
                answer(r#"{"keyTopics":[],"progress":"","recommendations":[]}"#),
                "progress is empty",
            ),
        ] {
            let err = parse_answer(&body).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
        let refused = json!({"choices": [{"message": {"content": null, "refusal": "no"}}]}).to_string();
        assert!(matches!(
            parse_answer(refused.as_bytes()),
            Err(SummaryError::Refused(_))
        ));
    }
}
