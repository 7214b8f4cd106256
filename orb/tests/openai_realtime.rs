//! The openai-realtime brain against a local server that speaks the OpenAI Realtime event
//! protocol: session setup, audio both ways, transcripts, a service error and a dropped
//! connection, after which the brain reconnects and carries on.

// The handshake callback's error type is tungstenite's HTTP response, not ours to shrink.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures::{SinkExt, StreamExt};
use orb::audio::{FRAME_SAMPLES, tone, tone_power};
use orb::brain::openai::OpenAiBrain;
use orb::brain::{Brain, BrainEvent, BrainInput, BrainIo, HeardFrame, Speaker};
use orb::config::OpenAiConfig;
use orb::signaling::Backoff;
use orb::testkit::openai_config;
use orb_protocol::UserRole;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

const WAIT: Duration = Duration::from_secs(30);

/// What the fake service saw on one connection.
#[derive(Debug, Default)]
struct Seen {
    authorization: String,
    path: String,
    first_event: String,
    input_samples_24k: Vec<i16>,
    /// The `conversation.item.truncate` a barge-in sent.
    truncate: Option<Value>,
}

fn b64_pcm(samples: &[i16]) -> String {
    B64.encode(samples.iter().flat_map(|s| s.to_le_bytes()).collect::<Vec<u8>>())
}

/// Serves connection 1 (a full turn, an error, then an abrupt close) and connection 2 (session
/// only), reporting what each saw.
async fn fake_service(listener: TcpListener, seen_tx: mpsc::UnboundedSender<Seen>) {
    for connection in 1..=2 {
        let (stream, _) = listener.accept().await.unwrap();
        let mut seen = Seen::default();
        let (auth_tx, auth_rx) = std::sync::mpsc::channel();
        let mut ws = tokio_tungstenite::accept_hdr_async(stream, |req: &Request, resp: Response| {
            let auth = req
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap_or("").to_owned());
            auth_tx.send((auth.unwrap_or_default(), req.uri().to_string())).unwrap();
            Ok(resp)
        })
        .await
        .unwrap();
        (seen.authorization, seen.path) = auth_rx.recv().unwrap();
        let send = |v: Value| Message::text(v.to_string());
        ws.send(send(json!({"type": "session.created", "session": {"id": "sess_1"}})))
            .await
            .unwrap();
        let Some(Ok(Message::Text(first))) = ws.next().await else {
            panic!("no session.update")
        };
        let first: Value = serde_json::from_str(&first).unwrap();
        seen.first_event = first["type"].as_str().unwrap_or_default().to_owned();
        ws.send(send(json!({"type": "session.updated", "session": {"id": "sess_1"}})))
            .await
            .unwrap();
        if connection == 2 {
            seen_tx.send(seen).unwrap();
            // Stay until the brain closes.
            while let Some(Ok(_)) = ws.next().await {}
            return;
        }
        // Collect 200 ms of input audio, then play one turn.
        while seen.input_samples_24k.len() < 4800 {
            let Some(Ok(Message::Text(text))) = ws.next().await else {
                panic!("input ended")
            };
            let event: Value = serde_json::from_str(&text).unwrap();
            if event["type"] == "input_audio_buffer.append" {
                let bytes = B64.decode(event["audio"].as_str().unwrap()).unwrap();
                seen.input_samples_24k
                    .extend(bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])));
            }
        }
        // 100 ms of a 600 Hz tone at 24 kHz (tone() counts at 48 kHz, so ask for twice the pitch).
        let reply = tone(1200.0, 2400, 8000, 0);
        for event in [
            json!({"type": "input_audio_buffer.speech_started", "audio_start_ms": 0, "item_id": "item_1"}),
            json!({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 200, "item_id": "item_1"}),
            json!({"type": "input_audio_buffer.committed", "item_id": "item_1"}),
            json!({"type": "conversation.item.input_audio_transcription.completed", "item_id": "item_1", "transcript": "hello orb"}),
            json!({"type": "response.created", "response": {"id": "resp_1"}}),
            json!({"type": "response.output_audio.delta", "response_id": "resp_1", "item_id": "item_ai_1", "content_index": 0, "delta": b64_pcm(&reply)}),
            json!({"type": "response.output_audio.delta", "response_id": "resp_1", "item_id": "item_ai_1", "content_index": 0, "delta": b64_pcm(&reply)}),
            json!({"type": "response.output_audio_transcript.done", "response_id": "resp_1", "transcript": "Hi there"}),
            json!({"type": "response.done", "response": {"id": "resp_1", "status": "completed"}}),
            // The human speaks over the reply still playing.
            json!({"type": "input_audio_buffer.speech_started", "audio_start_ms": 400, "item_id": "item_2"}),
        ] {
            ws.send(send(event)).await.unwrap();
        }
        while seen.truncate.is_none() {
            let Some(Ok(Message::Text(text))) = ws.next().await else {
                panic!("input ended before the truncate")
            };
            let event: Value = serde_json::from_str(&text).unwrap();
            match event["type"].as_str() {
                Some("input_audio_buffer.append") => {}
                Some("conversation.item.truncate") => seen.truncate = Some(event),
                other => panic!("unexpected {other:?} after the reply ended (nothing to cancel)"),
            }
        }
        let error = json!({"type": "error", "error": {"type": "invalid_request_error", "code": "bad_thing", "message": "boom"}});
        ws.send(send(error)).await.unwrap();
        seen_tx.send(seen).unwrap();
        // Drop the TCP connection without a close handshake, as a crashed service would.
        drop(ws);
    }
}

/// `coach-1` speaks a 1 kHz tone in real time, 20 ms a frame, until the brain's input closes.
fn coach_speaks_a_tone(input: mpsc::Sender<BrainInput>) -> tokio::task::JoinHandle<()> {
    let speaker: Arc<str> = "coach-1".into();
    tokio::spawn(async move {
        for i in 0.. {
            let frame = HeardFrame {
                speaker: speaker.clone(),
                role: UserRole::Coach,
                pcm: tone(1000.0, FRAME_SAMPLES, 8000, i * FRAME_SAMPLES),
                at: tokio::time::Instant::now(),
            };
            if input.send(BrainInput::Audio(frame)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

fn kind(e: &BrainEvent) -> String {
    match e {
        BrainEvent::Ready => "ready".into(),
        BrainEvent::NotReady => "not-ready".into(),
        BrainEvent::Status(s) => format!("status:{}", serde_json::to_value(s).unwrap().as_str().unwrap()),
        BrainEvent::Audio { origin, .. } => format!("audio{}", if origin.is_some() { "+origin" } else { "" }),
        BrainEvent::Interrupt { .. } => "interrupt".into(),
        BrainEvent::Transcript {
            speaker: Speaker::Ai,
            text,
            ..
        } => format!("ai:{text}"),
        BrainEvent::Transcript {
            speaker: Speaker::Human(who),
            text,
            ..
        } => format!("{}:{text}", who.as_deref().unwrap_or("human")),
        BrainEvent::Error(e) => format!("error:{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_brain_speaks_the_protocol_and_survives_errors_and_disconnects() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let service = tokio::spawn(fake_service(listener, seen_tx));

    let config = openai_config(&format!("http://{addr}/v1"));
    let backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(50));
    let brain = Box::new(OpenAiBrain::new(config).with_backoff(backoff));
    let (in_tx, input) = mpsc::channel(256);
    let (events, mut ev_rx) = mpsc::channel(256);
    let brain_task = tokio::spawn(brain.run(BrainIo { input, events }));

    let feeder = coach_speaks_a_tone(in_tx.clone());

    let mut kinds = Vec::new();
    let mut reply_audio = Vec::new();
    loop {
        let event = tokio::time::timeout(WAIT, ev_rx.recv())
            .await
            .expect("brain event")
            .unwrap();
        if let BrainEvent::Audio { pcm, .. } = &event {
            reply_audio.extend_from_slice(pcm);
        }
        let k = kind(&event);
        let lost = k.starts_with("error:realtime service:");
        kinds.push(k);
        if lost {
            break;
        }
    }
    assert_eq!(
        kinds,
        [
            "ready",
            "status:listening",
            "interrupt",
            "status:listening",
            "status:processing",
            // The only voice on the stream then was the coach's track.
            "coach-1:hello orb",
            "audio+origin",
            "audio",
            "ai:Hi there",
            "status:listening",
            "interrupt",
            "status:listening",
            "error:realtime service error bad_thing: boom",
            kinds.last().unwrap().as_str(),
        ]
    );
    // 2 × 100 ms at 24 kHz became 200 ms at 48 kHz, still the same tone.
    assert_eq!(reply_audio.len(), 2 * 4800);
    assert!(tone_power(&reply_audio[960..], 600.0) > 0.8);

    let first = seen_rx.recv().await.unwrap();
    assert_eq!(first.authorization, "Bearer test-key");
    assert_eq!(first.path, "/v1/realtime?model=test-model");
    assert_eq!(first.first_event, "session.update");
    // The model's record of its reply is cut to what was played: at most the 200 ms it sent.
    let truncate = first.truncate.as_ref().unwrap();
    assert_eq!(truncate["item_id"], "item_ai_1");
    assert_eq!(truncate["content_index"], 0);
    assert!(truncate["audio_end_ms"].as_u64().unwrap() <= 200, "{truncate}");
    // 48 kHz 1 kHz in, 24 kHz out: the tone sits at 2 kHz when read at 48 kHz.
    assert!(tone_power(&first.input_samples_24k[480..], 2000.0) > 0.8);

    // The brain reconnects on its own, sets the session up again and is ready again.
    let second = tokio::time::timeout(WAIT, seen_rx.recv()).await.unwrap().unwrap();
    assert_eq!(second.first_event, "session.update");
    let mut after = Vec::new();
    while after.last().map(String::as_str) != Some("ready") {
        let event = tokio::time::timeout(WAIT, ev_rx.recv())
            .await
            .expect("brain event")
            .unwrap();
        after.push(kind(&event));
    }
    assert_eq!(after.first().map(String::as_str), Some("not-ready"), "{after:?}");
    assert!(
        !brain_task.is_finished(),
        "the brain survived the error and the disconnect"
    );

    feeder.abort();
    drop(in_tx);
    tokio::time::timeout(WAIT, brain_task).await.unwrap().unwrap().unwrap();
    tokio::time::timeout(WAIT, service).await.unwrap().unwrap();
}

/// Reads the next text event the orb sends that is not input audio.
async fn next_non_audio<S>(ws: &mut S) -> Option<Value>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match ws.next().await? {
            Ok(Message::Text(text)) => {
                let event: Value = serde_json::from_str(&text).unwrap();
                if event["type"] != "input_audio_buffer.append" {
                    return Some(event);
                }
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// A session as old as `--openai-session-renew-after` is replaced, at a quiet moment, by a new
/// one that is given the call so far; the orb neither stops being ready nor reports an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_renewed_at_its_cap_keeps_the_conversation() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (carried_tx, mut carried_rx) = mpsc::unbounded_channel::<Value>();
    let service = tokio::spawn(async move {
        for connection in 1..=2 {
            let (stream, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            let send = |v: Value| Message::text(v.to_string());
            ws.send(send(
                json!({"type": "session.created", "session": {"id": format!("sess_{connection}")}}),
            ))
            .await
            .unwrap();
            let update = next_non_audio(&mut ws).await.unwrap();
            assert_eq!(update["type"], "session.update");
            if connection == 2 {
                carried_tx.send(next_non_audio(&mut ws).await.unwrap()).unwrap();
                while let Some(Ok(_)) = ws.next().await {}
                return;
            }
            ws.send(send(json!({"type": "session.updated", "session": {"id": "sess_1"}})))
                .await
                .unwrap();
            for event in [
                json!({"type": "input_audio_buffer.speech_started", "audio_start_ms": 0, "item_id": "item_1"}),
                json!({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 200, "item_id": "item_1"}),
                json!({"type": "conversation.item.input_audio_transcription.completed", "item_id": "item_1", "transcript": "my goal is a marathon"}),
                json!({"type": "response.created", "response": {"id": "resp_1"}}),
                json!({"type": "response.output_audio.delta", "item_id": "item_ai_1", "content_index": 0, "delta": b64_pcm(&tone(1200.0, 2400, 8000, 0))}),
                json!({"type": "response.output_audio_transcript.done", "transcript": "A fine goal"}),
                json!({"type": "response.done", "response": {"id": "resp_1", "status": "completed"}}),
            ] {
                ws.send(send(event)).await.unwrap();
            }
            // The orb closes this session by itself once it is old enough and quiet.
            assert_eq!(
                next_non_audio(&mut ws).await,
                None,
                "nothing but audio until the orb closes"
            );
        }
    });

    let config = OpenAiConfig {
        session_renew_after: Duration::from_secs(1),
        ..openai_config(&format!("http://{addr}/v1"))
    };
    let brain = Box::new(OpenAiBrain::new(config));
    let (in_tx, input) = mpsc::channel(256);
    let (events, mut ev_rx) = mpsc::channel(256);
    let brain_task = tokio::spawn(brain.run(BrainIo { input, events }));
    let feeder = coach_speaks_a_tone(in_tx.clone());

    let carried = tokio::time::timeout(WAIT, carried_rx.recv()).await.unwrap().unwrap();
    assert_eq!(carried["type"], "conversation.item.create", "{carried}");
    assert_eq!(carried["item"]["role"], "system");
    let text = carried["item"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("coach-1: my goal is a marathon"), "{text}");
    assert!(text.contains("you (the AI): A fine goal"), "{text}");

    feeder.abort();
    drop(in_tx);
    tokio::time::timeout(WAIT, brain_task).await.unwrap().unwrap().unwrap();
    let mut kinds = Vec::new();
    while let Ok(event) = ev_rx.try_recv() {
        kinds.push(kind(&event));
    }
    assert_eq!(kinds.iter().filter(|k| *k == "ready").count(), 1, "{kinds:?}");
    assert!(
        !kinds.iter().any(|k| k == "not-ready" || k.starts_with("error:")),
        "a renewal is not a loss: {kinds:?}"
    );
    tokio::time::timeout(WAIT, service).await.unwrap().unwrap();
}
