//! The local brain on the real small models (CPU): two humans on their own tracks, speech by
//! `espeak-ng`. Coach–client talk is transcribed and attributed but not answered; a question that
//! names the orb is answered with speech (checked by transcribing it back); talking over the
//! answer stops it; the session's summary comes from the same language model.

use std::sync::Arc;
use std::time::Duration;

use orb::brain::local::{LocalBrain, LocalConfig};
use orb::brain::{Brain, BrainEvent, BrainInput, BrainIo, HeardFrame, SessionContext, Speaker, SummaryRequest};
use orb_protocol::UserRole;
use orb_protocol::summary::TranscriptLine;
use orb_speech::asr::SpeechRecognizer;
use orb_speech::conversation::AnswerPolicy;
use orb_speech::models::ModelFiles;
use orb_speech::resample::Decimator;
use orb_speech::turns::TurnConfig;
use orb_speech::wav::espeak;
use tokio::sync::mpsc;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(40);

fn config(models: ModelFiles, policy: AnswerPolicy) -> LocalConfig {
    LocalConfig {
        models,
        espeak: "espeak-ng".into(),
        threads: 2,
        gpu_layers: 0,
        instructions: "You are Orb, a supportive AI assistant in a coaching session. Answer in one short sentence."
            .into(),
        names: vec!["orb".into()],
        policy,
        turn: TurnConfig::default(),
        barge_in: Duration::from_millis(300),
        max_answer_tokens: 48,
    }
}

struct Running {
    input: mpsc::Sender<BrainInput>,
    events: mpsc::Receiver<BrainEvent>,
    brain_summarizer: Arc<dyn orb::brain::Summarizer>,
}

async fn start(config: LocalConfig) -> Running {
    let brain = Box::new(LocalBrain::new(config));
    let brain_summarizer = brain.summarizer();
    let (input, input_rx) = mpsc::channel(1024);
    let (events_tx, mut events) = mpsc::channel(1024);
    tokio::spawn(brain.run(BrainIo {
        input: input_rx,
        events: events_tx,
    }));
    loop {
        match tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("ready")
            .expect("running")
        {
            BrainEvent::Ready => break,
            BrainEvent::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
    for (speaker, role) in [("coach-1", UserRole::Coach), ("client-1", UserRole::Client)] {
        input
            .send(BrainInput::Connected {
                speaker: speaker.into(),
                role,
            })
            .await
            .unwrap();
    }
    Running {
        input,
        events,
        brain_summarizer,
    }
}

/// `pcm` on `who`'s track and silence on the other's, 20 ms frames, as fast as the brain takes them.
async fn say(input: &mpsc::Sender<BrainInput>, who: &str, pcm: &[i16]) {
    for chunk in pcm.chunks(960) {
        for (speaker, role) in [("coach-1", UserRole::Coach), ("client-1", UserRole::Client)] {
            let mut frame = if speaker == who { chunk.to_vec() } else { Vec::new() };
            frame.resize(960, 0);
            let heard = HeardFrame {
                speaker: speaker.into(),
                role,
                pcm: frame,
                at: Instant::now(),
            };
            input.send(BrainInput::Audio(heard)).await.unwrap();
        }
    }
}

fn silence(ms: usize) -> Vec<i16> {
    vec![0; ms * 48]
}

fn words(text: &str) -> usize {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orb_answers_when_named_and_only_then_with_speech() {
    let Some(models) = orb_speech::models::installed_for_tests() else {
        return;
    };
    let asr_dir = models.speech_recognition.clone();
    let mut brain = start(config(models, AnswerPolicy::WhenAddressed)).await;

    let mut coach = silence(300);
    coach.extend(espeak("How was your week?", "en-us").unwrap());
    coach.extend(silence(1200));
    say(&brain.input, "coach-1", &coach).await;
    let mut client = silence(300);
    client.extend(espeak("Hey orb, how can I stay focused at work?", "en-us").unwrap());
    client.extend(silence(1200));
    say(&brain.input, "client-1", &client).await;
    let asked = Instant::now();

    let mut lines: Vec<(Speaker, String)> = Vec::new();
    let mut answer: Vec<i16> = Vec::new();
    let mut first_audio = None;
    // Until the orb's own transcript line: its answer is complete then.
    while !lines.iter().any(|(s, _)| *s == Speaker::Ai) {
        let event = tokio::time::timeout(WAIT, brain.events.recv())
            .await
            .expect("an answer")
            .unwrap();
        match event {
            BrainEvent::Transcript { speaker, text, .. } => {
                eprintln!("{speaker:?}: {text}");
                lines.push((speaker, text));
            }
            BrainEvent::Audio { pcm, origin, .. } => {
                assert!(origin.is_some(), "answers carry the question's end for latency");
                first_audio.get_or_insert_with(Instant::now);
                answer.extend(pcm);
            }
            BrainEvent::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
    eprintln!(
        "lines: {lines:?}; first audio {:?} after the question was sent",
        first_audio.map(|t| t - asked)
    );
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0].0, Speaker::Human(Some("coach-1".into())));
    assert_eq!(
        lines[1].0,
        Speaker::Human(Some("client-1".into())),
        "the question is the client's"
    );
    assert!(lines[1].1.to_lowercase().contains("focus"), "{lines:?}");
    assert!(words(&lines[2].1) >= 2, "{lines:?}");

    // What the orb said is speech: Whisper reads words back from it.
    assert!(answer.len() > 48_000 / 2, "at least half a second of answer");
    let mut listened = Vec::new();
    Decimator::new().push(&answer, &mut listened);
    let heard = SpeechRecognizer::load(&asr_dir).unwrap().transcribe(&listened).unwrap();
    eprintln!("the orb said {:?}; heard back {heard:?}", lines[2].1);
    assert!(words(&heard) >= 2, "{heard:?}");

    // The session's summary, by the same language model, in the summary's shape.
    let transcript: Vec<TranscriptLine> = lines
        .iter()
        .enumerate()
        .map(|(i, (speaker, text))| TranscriptLine {
            speaker: match speaker {
                Speaker::Ai => "ai".into(),
                Speaker::Human(who) => who.as_deref().unwrap_or("human").into(),
            },
            role: match i {
                0 => UserRole::Coach,
                1 => UserRole::Client,
                _ => UserRole::Ai,
            },
            text: text.clone(),
            offset_ms: i as u64 * 3000,
            overlap: false,
        })
        .collect();
    let context = SessionContext {
        coach: "coach-1".into(),
        client: "client-1".into(),
        purpose: "Focus at work".into(),
    };
    let summarizing = Instant::now();
    let summary = brain
        .brain_summarizer
        .summarize(SummaryRequest {
            context: &context,
            previous: None,
            lines: &transcript,
        })
        .await
        .expect("a summary in the summary's shape");
    eprintln!("summary in {:?}: {summary:?}", summarizing.elapsed());
    assert!(!summary.key_topics.is_empty() && !summary.progress.is_empty() && !summary.recommendations.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn talking_over_the_orb_stops_it() {
    let Some(models) = orb_speech::models::installed_for_tests() else {
        return;
    };
    let mut brain = start(config(models, AnswerPolicy::Always)).await;
    let mut question = silence(300);
    question.extend(espeak("What is one thing I could do to sleep better?", "en-us").unwrap());
    question.extend(silence(1200));
    say(&brain.input, "client-1", &question).await;
    loop {
        match tokio::time::timeout(WAIT, brain.events.recv())
            .await
            .expect("an answer")
            .unwrap()
        {
            BrainEvent::Audio { .. } => break,
            BrainEvent::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
    // The coach talks over the answer while it plays.
    say(
        &brain.input,
        "coach-1",
        &espeak("Sorry, let me stop you there.", "en-us").unwrap(),
    )
    .await;
    loop {
        match tokio::time::timeout(WAIT, brain.events.recv())
            .await
            .expect("an interruption")
            .unwrap()
        {
            BrainEvent::Interrupt { lane } => {
                assert_eq!(lane, 0);
                break;
            }
            BrainEvent::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
}
