//! A local fake of the OpenAI service the openai-realtime brain uses, on loopback:
//!
//! * `GET /v1/realtime` (WebSocket): the Realtime event protocol with a server VAD of its own.
//!   It hears the appended audio, cuts it into utterances at 800 ms of silence, and sends
//!   `input_audio_buffer.speech_started`/`speech_stopped` (with `audio_start_ms`/`audio_end_ms`
//!   on the appended audio's clock, and an `item_id`), `conversation.item.input_audio_transcription.completed`
//!   with the next scripted transcript, and a short spoken-less answer
//!   (`response.output_audio_transcript.done`).
//!   It records the `instructions` of every `session.update`.
//! * `POST /v1/chat/completions`: answers each request with the next scripted answer (or a
//!   valid default summary), and records the request.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use orb_protocol::summary::SummaryContent;
use serde_json::{Value, json};

use crate::audio::{VOICE_THRESHOLD, rms};

/// 20 ms at 24 kHz: the fake VAD's window.
const WINDOW: usize = 480;
/// Silence that ends an utterance.
const HANGOVER_MS: u64 = 800;
/// Audio kept before the first voiced window, as the service's `prefix_padding_ms`.
const PREFIX_MS: u64 = 300;

/// One answer of the chat endpoint.
#[derive(Clone, Debug)]
pub enum ChatAnswer {
    /// 200 with this as the message's content.
    Content(String),
    /// This status with an error body.
    Status(u16),
}

/// An utterance the fake's VAD found, on the appended audio's clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Utterance {
    pub start_ms: u64,
    pub end_ms: u64,
    pub transcript: String,
}

#[derive(Default)]
struct Shared {
    transcripts: Mutex<VecDeque<String>>,
    chat_answers: Mutex<VecDeque<ChatAnswer>>,
    chat_requests: Mutex<Vec<(String, Value)>>,
    utterances: Mutex<Vec<Utterance>>,
    session_instructions: Mutex<Vec<String>>,
}

pub struct FakeOpenAi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

/// The summary the chat endpoint gives when nothing else is scripted.
pub fn default_summary() -> SummaryContent {
    SummaryContent {
        key_topics: vec!["sleep".into(), "evening routine".into()],
        progress: "The client sleeps better since starting an evening routine and wants to keep it up.".into(),
        recommendations: vec![
            "Keep the evening routine for two more weeks.".into(),
            "Note in a diary what disturbs sleep.".into(),
        ],
    }
}

impl FakeOpenAi {
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .route("/v1/realtime", get(realtime))
            .route("/v1/chat/completions", post(chat))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared, task })
    }

    /// The base URL to give the orb (`--openai-base-url`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// What the next utterances are transcribed as, in order (then `utterance N`).
    pub fn script_transcripts(&self, transcripts: impl IntoIterator<Item = impl Into<String>>) {
        let mut queue = self.shared.transcripts.lock().expect("lock");
        queue.extend(transcripts.into_iter().map(Into::into));
    }

    /// The next answers of the chat endpoint, in order (then [`default_summary`]).
    pub fn script_chat(&self, answers: impl IntoIterator<Item = ChatAnswer>) {
        self.shared.chat_answers.lock().expect("lock").extend(answers);
    }

    /// Every chat request: its `Authorization` header and its body.
    pub fn chat_requests(&self) -> Vec<(String, Value)> {
        self.shared.chat_requests.lock().expect("lock").clone()
    }

    /// The `instructions` of every `session.update`, in order of arrival.
    pub fn session_instructions(&self) -> Vec<String> {
        self.shared.session_instructions.lock().expect("lock").clone()
    }

    /// Every utterance transcribed so far.
    pub fn utterances(&self) -> Vec<Utterance> {
        self.shared.utterances.lock().expect("lock").clone()
    }
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn chat(State(shared): State<Arc<Shared>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    shared.chat_requests.lock().expect("lock").push((auth, body.clone()));
    let answer = shared.chat_answers.lock().expect("lock").pop_front();
    let content = match answer {
        Some(ChatAnswer::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let error = json!({"error": {"message": "scripted failure", "type": "server_error"}});
            return (status, Json(error)).into_response();
        }
        Some(ChatAnswer::Content(content)) => content,
        None => serde_json::to_string(&default_summary()).expect("serialises"),
    };
    Json(json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "model": body["model"],
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": content, "refusal": null },
            "finish_reason": "stop"
        }]
    }))
    .into_response()
}

async fn realtime(State(shared): State<Arc<Shared>>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| serve_realtime(socket, shared))
}

/// The fake's server VAD over the appended 24 kHz audio.
#[derive(Default)]
struct Vad {
    /// Samples heard so far.
    at: u64,
    window: Vec<i16>,
    /// Start of the current utterance, and the end of its last voiced window.
    speech: Option<(u64, u64)>,
    items: u32,
}

fn ms(samples: u64) -> u64 {
    samples / 24
}

impl Vad {
    /// Feeds samples; returns the events they cause.
    fn push(&mut self, samples: &[i16], shared: &Shared) -> Vec<Value> {
        let mut events = Vec::new();
        for &s in samples {
            self.window.push(s);
            if self.window.len() < WINDOW {
                continue;
            }
            let start = self.at;
            self.at += WINDOW as u64;
            let voiced = rms(&self.window) >= VOICE_THRESHOLD;
            self.window.clear();
            match (&mut self.speech, voiced) {
                (None, true) => {
                    self.items += 1;
                    let begin = ms(start).saturating_sub(PREFIX_MS);
                    self.speech = Some((begin, self.at));
                    events.push(json!({"type": "input_audio_buffer.speech_started", "audio_start_ms": begin, "item_id": self.item()}));
                }
                (Some((_, last)), true) => *last = self.at,
                (Some((begin, last)), false) if ms(self.at - *last) >= HANGOVER_MS => {
                    let (begin, end) = (*begin, ms(*last));
                    self.speech = None;
                    let item = self.item();
                    let transcript = shared
                        .transcripts
                        .lock()
                        .expect("lock")
                        .pop_front()
                        .unwrap_or_else(|| format!("utterance {}", self.items));
                    shared.utterances.lock().expect("lock").push(Utterance {
                        start_ms: begin,
                        end_ms: end,
                        transcript: transcript.clone(),
                    });
                    let response = format!("resp_{}", self.items);
                    events.extend([
                        json!({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": end, "item_id": item}),
                        json!({"type": "input_audio_buffer.committed", "item_id": item}),
                        json!({"type": "response.created", "response": {"id": response}}),
                        json!({"type": "conversation.item.input_audio_transcription.completed", "item_id": item, "content_index": 0, "transcript": transcript}),
                        json!({"type": "response.output_audio_transcript.done", "response_id": response, "transcript": "Thank you, go on."}),
                        json!({"type": "response.done", "response": {"id": response, "status": "completed"}}),
                    ]);
                }
                _ => {}
            }
        }
        events
    }

    fn item(&self) -> String {
        format!("item_{}", self.items)
    }
}

async fn serve_realtime(mut socket: WebSocket, shared: Arc<Shared>) {
    let send = |v: Value| Message::Text(v.to_string().into());
    if socket
        .send(send(json!({"type": "session.created", "session": {"id": "sess_fake"}})))
        .await
        .is_err()
    {
        return;
    }
    let mut vad = Vad::default();
    while let Some(Ok(message)) = socket.recv().await {
        let Message::Text(text) = message else { continue };
        let Ok(event) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let replies = match event["type"].as_str() {
            Some("session.update") => {
                let instructions = event["session"]["instructions"].as_str().unwrap_or_default();
                let mut seen = shared.session_instructions.lock().expect("lock");
                seen.push(instructions.to_owned());
                vec![json!({"type": "session.updated", "session": {"id": "sess_fake"}})]
            }
            Some("input_audio_buffer.append") => {
                let bytes = B64
                    .decode(event["audio"].as_str().unwrap_or_default())
                    .unwrap_or_default();
                let samples: Vec<i16> = bytes
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
                    .collect();
                vad.push(&samples, &shared)
            }
            _ => vec![],
        };
        for reply in replies {
            if socket.send(send(reply)).await.is_err() {
                return;
            }
        }
    }
}
