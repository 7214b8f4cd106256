//! The session summary a coach can use, against the local fake of the OpenAI service: who said
//! each line (two humans on their own tracks, one mixed stream to the service), and the
//! keyTopics, progress and recommendations the language model writes — validated, retried once,
//! and reported in `summaryError` when the model cannot give one. Speech is real: sentences by
//! `espeak-ng`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use orb::brain::openai::OpenAiBrain;
use orb::brain::openai_summary::ChatSummarizer;
use orb::brain::{Brain, BrainEvent, BrainInput, BrainIo, HeardFrame, SessionContext, Speaker};
use orb::config::OpenAiConfig;
use orb::summary::{RollingSummary, SessionRecord, SummaryIds, SummaryPolicy, TranscriptLine, session_summary};
use orb::testkit::OrbProcess;
use orb::testkit::fake_openai::{ChatAnswer, FakeOpenAi, default_summary};
use orb::testkit::human::Human;
use orb::testkit::openai_config;
use orb::testkit::relay::TestRelay;
use orb::testkit::speech::espeak;
use orb_protocol::summary::{DeliveredSummary, content_schema};
use orb_protocol::{ServerMessage, UserRole};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(60);

/// What the two humans say, in turn, and what the fake service transcribes it as.
const TURNS: [(&str, &str, &str); 3] = [
    ("coach-1", "en-us", "How did you sleep this week?"),
    ("client-1", "en-gb", "Much better, since I started my evening routine."),
    ("coach-1", "en-us", "What helped the most?"),
];
/// Silence between turns: longer than the fake service's 800 ms end of utterance.
const PAUSE: Duration = Duration::from_millis(1500);

fn config(fake: &FakeOpenAi) -> OpenAiConfig {
    openai_config(&fake.base_url())
}

fn spoken() -> Vec<Vec<i16>> {
    TURNS
        .iter()
        .map(|(_, voice, text)| espeak(text, voice).expect("espeak-ng speaks"))
        .collect()
}

/// The brain alone, fed both tracks frame by frame in real time: each transcribed utterance goes
/// to the human whose track was voiced during it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_humans_in_turn_are_told_apart_on_the_mixed_stream() {
    let fake = FakeOpenAi::start().await.unwrap();
    fake.script_transcripts(TURNS.map(|(_, _, text)| text));
    let (in_tx, input) = mpsc::channel(256);
    let (events, mut ev_rx) = mpsc::channel(256);
    let brain = tokio::spawn(Box::new(OpenAiBrain::new(config(&fake))).run(BrainIo { input, events }));
    loop {
        let event = tokio::time::timeout(WAIT, ev_rx.recv()).await.unwrap().unwrap();
        if matches!(event, BrainEvent::Ready) {
            break;
        }
    }

    // Both tracks send a frame every 20 ms, as WebRTC does; one of them speaks at a time.
    let clips = spoken();
    let feeder = tokio::spawn(async move {
        let tracks: [Arc<str>; 2] = ["coach-1".into(), "client-1".into()];
        let mut script: Vec<(usize, &[i16])> = Vec::new();
        let pause = vec![0i16; PAUSE.as_millis() as usize * 48];
        for ((who, _, _), clip) in TURNS.iter().zip(&clips) {
            let track = tracks.iter().position(|t| &**t == *who).unwrap();
            script.push((track, &pause));
            script.push((track, clip));
        }
        script.push((0, &pause));
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for (speaking, samples) in script {
            for chunk in samples.chunks(960) {
                tick.tick().await;
                for (i, track) in tracks.iter().enumerate() {
                    let mut pcm = if i == speaking { chunk.to_vec() } else { vec![] };
                    pcm.resize(960, 0);
                    let frame = HeardFrame {
                        speaker: track.clone(),
                        role: if i == 0 { UserRole::Coach } else { UserRole::Client },
                        pcm,
                        at: Instant::now(),
                    };
                    if in_tx.send(BrainInput::Audio(frame)).await.is_err() {
                        return;
                    }
                }
            }
        }
        // Keep the input open until the test is done.
        std::future::pending::<()>().await;
    });

    let mut human_lines = Vec::new();
    while human_lines.len() < TURNS.len() {
        let event = tokio::time::timeout(WAIT, ev_rx.recv())
            .await
            .expect("transcripts of every turn")
            .unwrap();
        if let BrainEvent::Transcript {
            speaker: Speaker::Human(who),
            text,
            overlap,
            started,
        } = event
        {
            assert!(started.is_some(), "dated by the speaker's voice");
            human_lines.push((who.map(|w| w.to_string()), text, overlap));
        }
    }
    let expected: Vec<(Option<String>, String, bool)> = TURNS
        .iter()
        .map(|(who, _, text)| (Some(who.to_string()), text.to_string(), false))
        .collect();
    assert_eq!(human_lines, expected, "utterances: {:?}", fake.utterances());
    feeder.abort();
    let _ = feeder.await;
    tokio::time::timeout(WAIT, brain).await.unwrap().unwrap().unwrap();
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The whole call: an orb process with the openai-realtime brain, a coach and a client over
/// WebRTC speaking in turn, SIGTERM; the coach receives the summary with every line attributed
/// and the content the model wrote from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_ends_with_an_attributed_transcript_and_a_written_summary() {
    let fake = FakeOpenAi::start().await.unwrap();
    fake.script_transcripts(TURNS.map(|(_, _, text)| text));
    let relay = TestRelay::start().await.unwrap();
    let url = relay.url();
    let room = "summary-room";
    let mut orb = OrbProcess::spawn_openai(Path::new(env!("CARGO_BIN_EXE_orb")), &url, room, &fake.base_url()).unwrap();
    let mut coach = Human::join(&url, room, "coach-1", UserRole::Coach).await.unwrap();
    assert!(coach.wait_connected(WAIT).await, "coach connected");
    let mut client = Human::join(&url, room, "client-1", UserRole::Client).await.unwrap();
    assert!(client.wait_connected(WAIT).await, "client connected");
    assert!(
        orb.wait_metric("orb_peer_connections{state=\"connected\"} 2", WAIT)
            .await
    );

    for ((who, _, _), clip) in TURNS.iter().zip(spoken()) {
        let human = if *who == "coach-1" { &coach } else { &client };
        tokio::time::sleep(human.say(&clip) + PAUSE).await;
    }
    wait_until("every turn transcribed", || fake.utterances().len() >= TURNS.len()).await;

    orb.terminate().unwrap();
    let summary = coach
        .wait_signal(WAIT, |m| matches!(m, ServerMessage::SessionSummary(_)))
        .await
        .expect("the summary reaches the coach");
    let ServerMessage::SessionSummary(body) = summary else {
        unreachable!()
    };
    println!("{}", serde_json::to_string_pretty(&body).unwrap());
    let mut delivered = body.clone();
    delivered["type"] = json!("session_summary");
    let delivered: DeliveredSummary = serde_json::from_value(delivered).expect("the summary follows its schema");
    let summary = delivered.message.summary;
    let humans: Vec<(&str, UserRole, &str, bool)> = summary
        .transcript
        .iter()
        .filter(|l| l.role != UserRole::Ai)
        .map(|l| (l.speaker.as_str(), l.role, l.text.as_str(), l.overlap))
        .collect();
    assert_eq!(
        humans,
        [
            ("coach-1", UserRole::Coach, TURNS[0].2, false),
            ("client-1", UserRole::Client, TURNS[1].2, false),
            ("coach-1", UserRole::Coach, TURNS[2].2, false),
        ],
        "utterances: {:?}",
        fake.utterances()
    );
    assert!(
        summary
            .transcript
            .iter()
            .any(|l| l.speaker == "ai" && l.role == UserRole::Ai)
    );
    assert!(
        summary.transcript.windows(2).all(|w| w[0].offset_ms <= w[1].offset_ms),
        "in spoken order"
    );
    assert_eq!(summary.content, default_summary());
    assert_eq!(summary.summary_error, None);
    assert_eq!(summary.reason, "SessionComplete");

    // One text request (a short session needs no rolling step), with the schema and every line.
    let requests = fake.chat_requests();
    assert_eq!(requests.len(), 1);
    let (auth, request) = &requests[0];
    assert_eq!(auth, "Bearer test-key");
    assert_eq!(request["model"], "gpt-4.1-mini", "the default summary model");
    assert_eq!(request["response_format"]["json_schema"]["schema"], content_schema());
    let user = request["messages"][1]["content"].as_str().unwrap();
    for (who, _, text) in TURNS {
        let role = if who == "coach-1" { "coach" } else { "client" };
        assert!(user.contains(&format!("{who} ({role}): {text}")), "{user}");
    }
    assert_eq!(
        tokio::time::timeout(WAIT, orb.child.wait())
            .await
            .unwrap()
            .unwrap()
            .code(),
        Some(0)
    );
    let _ = std::fs::remove_file(&orb.termination_log);
}

fn line(speaker: &str, role: UserRole, text: &str, offset_ms: u64) -> TranscriptLine {
    TranscriptLine {
        speaker: speaker.into(),
        role,
        text: text.into(),
        offset_ms,
        overlap: false,
    }
}

/// What the orb would send after `answers` from the model.
async fn summary_after(answers: Vec<ChatAnswer>) -> (Value, usize) {
    let fake = FakeOpenAi::start().await.unwrap();
    fake.script_chat(answers);
    let rolling = RollingSummary::start(
        Arc::new(ChatSummarizer::new(&config(&fake))),
        SummaryPolicy::default(),
        SessionContext::default(),
    );
    let mut record = SessionRecord::default();
    record.participants.insert("coach-1".into(), UserRole::Coach);
    record.participants.insert("client-1".into(), UserRole::Client);
    for l in [
        line("coach-1", UserRole::Coach, TURNS[0].2, 1_000),
        line("client-1", UserRole::Client, TURNS[1].2, 4_000),
    ] {
        record.add_line(l.clone());
        rolling.add(l);
    }
    let written = rolling.finish(Instant::now() + WAIT).await;
    let ids = SummaryIds {
        summary: "sum-1",
        room: "room-1",
        session: "session-1",
        coach: "coach-1",
        client: "client-1",
    };
    let message = session_summary(&ids, &record, Duration::from_secs(60), "SessionComplete", written);
    let mut body = serde_json::to_value(message).unwrap();
    body["type"] = json!("session_summary");
    serde_json::from_value::<DeliveredSummary>(body.clone()).expect("the summary follows its schema");
    (body, fake.chat_requests().len())
}

#[tokio::test]
async fn a_malformed_answer_is_retried_once_and_then_the_summary_says_why() {
    // Twice not a summary: the summary goes out with its transcript and the reason.
    let (body, requests) = summary_after(vec![
        ChatAnswer::Content("Sure! Here is the summary: sleep.".into()),
        ChatAnswer::Content(r#"{"keyTopics": "sleep", "progress": "better"}"#.into()),
    ])
    .await;
    assert_eq!(requests, 2, "retried once");
    let summary = &body["summary"];
    assert_eq!(
        summary["summaryError"],
        "the model's answer is not a valid summary: invalid type: string \"sleep\", expected a sequence at line 1 column 21 (tried twice)"
    );
    assert_eq!(summary["keyTopics"], json!([]));
    assert_eq!(summary["transcript"].as_array().unwrap().len(), 2);

    // A bad first answer, a good second: no error.
    let (body, requests) = summary_after(vec![ChatAnswer::Content("{".into())]).await;
    assert_eq!(requests, 2);
    assert_eq!(body["summary"]["keyTopics"], json!(default_summary().key_topics));
    assert!(body["summary"].get("summaryError").is_none());

    // The service failing is reported as such.
    let (body, requests) = summary_after(vec![ChatAnswer::Status(503), ChatAnswer::Status(503)]).await;
    assert_eq!(requests, 2);
    let error = body["summary"]["summaryError"].as_str().unwrap();
    assert!(error.starts_with("the summary service answered 503"), "{error}");
}
