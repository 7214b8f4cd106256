//! The test brain: deterministic, no model. It greets with a [`GREETING_HZ`] tone when the first
//! human connects and echoes every voiced frame it hears after a fixed delay, each speaker on
//! its own lane, so an end-to-end test can recognise both its greeting and a round trip.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use orb_protocol::AiStatus;
use orb_protocol::summary::SummaryContent;
use tokio::time::Instant;

use super::{Brain, BrainError, BrainEvent, BrainInput, BrainIo, Speaker, Summarizer, SummaryError, SummaryRequest};
use crate::audio::{FRAME_DURATION, FRAME_SAMPLES, VOICE_THRESHOLD, rms, tone};

/// Frequency of the greeting tone.
pub const GREETING_HZ: f32 = 440.0;
/// Length of the greeting.
pub const GREETING: Duration = Duration::from_millis(600);

pub struct TestBrain {
    echo_delay: Duration,
}

impl TestBrain {
    pub fn new(echo_delay: Duration) -> Self {
        Self { echo_delay }
    }
}

impl Brain for TestBrain {
    fn name(&self) -> &'static str {
        "test"
    }

    fn summarizer(&self) -> Arc<dyn Summarizer> {
        Arc::new(TestSummarizer)
    }

    fn run(self: Box<Self>, io: BrainIo) -> BoxFuture<'static, Result<(), BrainError>> {
        run(self.echo_delay, io).boxed()
    }
}

/// The test brain's summaries: no model, the same content for the same transcript.
pub struct TestSummarizer;

impl Summarizer for TestSummarizer {
    fn summarize<'a>(&'a self, request: SummaryRequest<'a>) -> BoxFuture<'a, Result<SummaryContent, SummaryError>> {
        let mut key_topics = request.previous.map(|p| p.key_topics.clone()).unwrap_or_default();
        if !key_topics.iter().any(|t| t == "test") {
            key_topics.push("test".to_owned());
        }
        let mut speakers: Vec<&str> = request.lines.iter().map(|l| l.speaker.as_str()).collect();
        speakers.sort_unstable();
        speakers.dedup();
        let last: String = request
            .lines
            .last()
            .map_or("", |l| l.text.as_str())
            .chars()
            .take(200)
            .collect();
        let content = SummaryContent {
            key_topics,
            progress: format!("Heard {}; the last line: \"{last}\"", speakers.join(", ")),
            recommendations: vec!["Listen back to the transcript.".to_owned()],
        };
        futures::future::ready(Ok(content)).boxed()
    }
}

struct Burst {
    frames: usize,
    first: Instant,
    last: Instant,
}

async fn run(echo_delay: Duration, mut io: BrainIo) -> Result<(), BrainError> {
    let send = |e| io.events.send(e);
    let _ = send(BrainEvent::Ready).await;
    let _ = send(BrainEvent::Status(AiStatus::Listening)).await;
    let mut greeted = false;
    let mut lanes: HashMap<Arc<str>, u32> = HashMap::new();
    let mut bursts: HashMap<Arc<str>, Burst> = HashMap::new();
    let mut pending: VecDeque<(Instant, BrainEvent)> = VecDeque::new();
    loop {
        let next_due = pending.front().map(|(at, _)| *at);
        let burst_check = tokio::time::sleep(Duration::from_millis(200));
        tokio::select! {
            input = io.input.recv() => {
                let Some(input) = input else { return Ok(()) };
                match input {
                    BrainInput::Connected { .. } if !greeted => {
                        greeted = true;
                        let samples = (GREETING.as_millis() as usize / 20) * FRAME_SAMPLES;
                        let _ = io.events.send(BrainEvent::Audio { lane: 0, pcm: tone(GREETING_HZ, samples, 8000, 0), origin: None }).await;
                        let _ = io.events.send(BrainEvent::Transcript { speaker: Speaker::Ai, text: "Hello from the test orb.".into(), overlap: false, started: None }).await;
                    }
                    BrainInput::Connected { .. } => {}
                    BrainInput::Left { speaker } => {
                        bursts.remove(&speaker);
                    }
                    BrainInput::Context(_) => {}
                    BrainInput::Audio(frame) => {
                        if rms(&frame.pcm) < VOICE_THRESHOLD {
                            continue;
                        }
                        let next_lane = lanes.len() as u32 + 1;
                        let lane = *lanes.entry(frame.speaker.clone()).or_insert(next_lane);
                        let burst = bursts.entry(frame.speaker.clone()).or_insert(Burst { frames: 0, first: frame.at, last: frame.at });
                        burst.frames += 1;
                        burst.last = frame.at;
                        pending.push_back((frame.at + echo_delay, BrainEvent::Audio { lane, pcm: frame.pcm, origin: Some(frame.at) }));
                    }
                }
            }
            _ = sleep_until_opt(next_due) => {
                let now = Instant::now();
                while pending.front().is_some_and(|(at, _)| *at <= now) {
                    let (_, event) = pending.pop_front().expect("checked");
                    if io.events.send(event).await.is_err() {
                        return Ok(());
                    }
                }
            }
            _ = burst_check, if !bursts.is_empty() => {}
        }
        // A burst ends after half a second of silence: one transcript line per utterance.
        let now = Instant::now();
        let ended: Vec<Arc<str>> = bursts
            .iter()
            .filter(|(_, b)| now.duration_since(b.last) >= Duration::from_millis(500))
            .map(|(s, _)| s.clone())
            .collect();
        for speaker in ended {
            let burst = bursts.remove(&speaker).expect("listed");
            let ms = burst.frames as u128 * FRAME_DURATION.as_millis();
            let _ = io
                .events
                .send(BrainEvent::Transcript {
                    speaker: Speaker::Human(Some(speaker)),
                    text: format!("({ms} ms of speech)"),
                    // Each speaker is heard on its own: who spoke is known, overlap or not.
                    overlap: false,
                    started: Some(burst.first),
                })
                .await;
            let _ = io
                .events
                .send(BrainEvent::Transcript {
                    speaker: Speaker::Ai,
                    text: "(echo)".into(),
                    overlap: false,
                    started: None,
                })
                .await;
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => futures::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brain::HeardFrame;
    use orb_protocol::UserRole;
    use tokio::sync::mpsc;

    #[tokio::test(start_paused = true)]
    async fn greets_once_then_echoes_voiced_frames_after_the_delay() {
        let (in_tx, input) = mpsc::channel(16);
        let (events, mut ev_rx) = mpsc::channel(64);
        let task = tokio::spawn(Box::new(TestBrain::new(Duration::from_millis(100))).run(BrainIo { input, events }));
        assert!(matches!(ev_rx.recv().await, Some(BrainEvent::Ready)));
        assert!(matches!(
            ev_rx.recv().await,
            Some(BrainEvent::Status(AiStatus::Listening))
        ));
        let coach: Arc<str> = "coach".into();
        for _ in 0..2 {
            in_tx
                .send(BrainInput::Connected {
                    speaker: coach.clone(),
                    role: UserRole::Coach,
                })
                .await
                .unwrap();
        }
        let Some(BrainEvent::Audio {
            lane: 0,
            pcm,
            origin: None,
        }) = ev_rx.recv().await
        else {
            panic!("greeting")
        };
        assert_eq!(pcm.len(), 30 * FRAME_SAMPLES);
        assert!(matches!(
            ev_rx.recv().await,
            Some(BrainEvent::Transcript {
                speaker: Speaker::Ai,
                ..
            })
        ));

        let sent_at = Instant::now();
        let voiced = tone(1000.0, FRAME_SAMPLES, 8000, 0);
        let silent = vec![0i16; FRAME_SAMPLES];
        for pcm in [silent, voiced.clone()] {
            let frame = HeardFrame {
                speaker: coach.clone(),
                role: UserRole::Coach,
                pcm,
                at: Instant::now(),
            };
            in_tx.send(BrainInput::Audio(frame)).await.unwrap();
        }
        let Some(BrainEvent::Audio {
            lane: 1,
            pcm,
            origin: Some(origin),
        }) = ev_rx.recv().await
        else {
            panic!("echo")
        };
        assert_eq!(pcm, voiced, "only the voiced frame comes back");
        assert_eq!(origin, sent_at);
        assert_eq!(Instant::now() - sent_at, Duration::from_millis(100));
        // Silence afterwards closes the utterance with a transcript line.
        let Some(BrainEvent::Transcript {
            speaker: Speaker::Human(Some(who)),
            text,
            started: Some(started),
            ..
        }) = ev_rx.recv().await
        else {
            panic!("transcript")
        };
        assert_eq!((&*who, text.as_str()), ("coach", "(20 ms of speech)"));
        assert_eq!(started, sent_at, "dated by its first voiced frame");
        drop(in_tx);
        task.await.unwrap().unwrap();
    }
}
