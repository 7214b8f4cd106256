//! The local brain: everything on the orb's own pod, from model files (no service, nothing
//! leaves the pod). Each human's track goes through a voice detector and a turn tracker here, on
//! the async side; a finished turn goes to one worker thread that owns the models — Whisper
//! hears it, the language model answers if the orb was addressed, the voice speaks the answer a
//! sentence at a time, so the first sentence plays while the rest is being written. A human who
//! talks over the orb for [`LocalConfig::barge_in`] stops it, and the conversation keeps only
//! what was heard.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use orb_protocol::summary::SummaryContent;
use orb_protocol::{AiStatus, UserRole};
use orb_speech::asr::SpeechRecognizer;
use orb_speech::conversation::{AnswerPolicy, Conversation, heard_part};
use orb_speech::llm::{ChatMessage, Flow, LanguageModel, LlmOptions, Role};
use orb_speech::models::ModelFiles;
use orb_speech::resample::{CALL_RATE, LISTEN_RATE, resample, to_i16};
use orb_speech::sentences::SentenceSplitter;
use orb_speech::tts::Voice;
use orb_speech::turns::{TurnConfig, TurnEvent, TurnTracker};
use orb_speech::vad::{VadConfig, VoiceActivity};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::openai_summary::summary_prompt;
use super::{
    Brain, BrainError, BrainEvent, BrainInput, BrainIo, SessionContext, Speaker, Summarizer, SummaryError,
    SummaryRequest, session_instructions,
};
use crate::audio::FRAME_DURATION;

/// The lane the orb's answers play on.
const ANSWER_LANE: u32 = 0;
/// Audio kept from before a turn's first voiced frame: the detector opens a little late, and
/// Whisper misses a word that starts at the first sample.
const PRE_ROLL_MS: u64 = 300;

#[derive(Clone, Debug)]
pub struct LocalConfig {
    pub models: ModelFiles,
    /// The `espeak-ng` program (the voice's phonemes).
    pub espeak: PathBuf,
    pub threads: usize,
    /// Language-model layers on the GPU (0: CPU only).
    pub gpu_layers: u32,
    pub instructions: String,
    /// Names that address the orb.
    pub names: Vec<String>,
    pub policy: AnswerPolicy,
    pub turn: TurnConfig,
    /// How long a human talks over the orb before it stops.
    pub barge_in: Duration,
    /// Longest answer, in tokens.
    pub max_answer_tokens: usize,
}

pub struct LocalBrain {
    config: LocalConfig,
    shared: Arc<Shared>,
}

/// What the answering side and the summarizer share.
#[derive(Default)]
struct Shared {
    /// The language model once loaded.
    llm: OnceLock<Arc<LanguageModel>>,
    /// The rolling summary's latest text: what the answers' context keeps of the lines it drops.
    earlier: std::sync::Mutex<Option<String>>,
}

impl LocalBrain {
    pub fn new(config: LocalConfig) -> Self {
        Self {
            config,
            shared: Arc::default(),
        }
    }
}

impl Brain for LocalBrain {
    fn name(&self) -> &'static str {
        "local"
    }

    fn summarizer(&self) -> Arc<dyn Summarizer> {
        Arc::new(LocalSummarizer {
            shared: self.shared.clone(),
        })
    }

    fn run(self: Box<Self>, io: BrainIo) -> BoxFuture<'static, Result<(), BrainError>> {
        run(self.config, self.shared, io).boxed()
    }
}

/// What the async side asks of the worker.
enum Job {
    Turn {
        speaker: Arc<str>,
        role: UserRole,
        pcm: Vec<f32>,
        started: Instant,
        ended: Instant,
    },
    /// The answer `answer` was cut off after `heard_ms` of it played.
    Heard {
        answer: u64,
        heard_ms: u64,
    },
    Context(SessionContext),
}

/// What the worker tells the async side.
enum Done {
    Event(BrainEvent),
    AnswerAudio {
        answer: u64,
        pcm: Vec<i16>,
        origin: Instant,
    },
}

/// One human's ears: voice, turns, and the audio of the turn in progress.
struct Track {
    role: UserRole,
    vad: VoiceActivity,
    turns: TurnTracker,
    /// Milliseconds of this track heard so far (its own clock).
    clock_ms: u64,
    /// 16 kHz audio from [`PRE_ROLL_MS`] before the turn in progress (or the last pre-roll).
    audio: Vec<f32>,
    /// Instant of `clock_ms == 0`'s frame, to turn track times into instants.
    first_at: Instant,
}

impl Track {
    fn new(role: UserRole, turn: TurnConfig, at: Instant) -> Self {
        Self {
            role,
            vad: VoiceActivity::new(VadConfig::default()),
            turns: TurnTracker::new(turn),
            clock_ms: 0,
            audio: Vec::new(),
            first_at: at,
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.first_at + Duration::from_millis(ms)
    }
}

/// The answer being played: which one, since when, until when.
struct Playing {
    answer: u64,
    first_audio: Instant,
    until: Instant,
    interrupted: bool,
}

async fn run(config: LocalConfig, shared: Arc<Shared>, mut io: BrainIo) -> Result<(), BrainError> {
    let (job_tx, job_rx) = std::sync::mpsc::channel::<Job>();
    let (done_tx, mut done_rx) = mpsc::channel::<Done>(256);
    let cancelled = Arc::new(AtomicU64::new(0));
    let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel();
    {
        let config = config.clone();
        let cancelled = cancelled.clone();
        std::thread::Builder::new()
            .name("orb-local-brain".into())
            .spawn(move || worker(config, shared, job_rx, done_tx, cancelled, loaded_tx))
            .map_err(|e| BrainError::Failed(format!("cannot start the model thread: {e}")))?;
    }
    match loaded_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(BrainError::Failed(e)),
        Err(_) => return Err(BrainError::Failed("the model thread ended while loading".into())),
    }
    let _ = io.events.send(BrainEvent::Ready).await;
    let _ = io.events.send(BrainEvent::Status(AiStatus::Listening)).await;

    let mut tracks: HashMap<Arc<str>, Track> = HashMap::new();
    let mut playing: Option<Playing> = None;
    let pre_roll = (PRE_ROLL_MS * u64::from(LISTEN_RATE) / 1000) as usize;
    loop {
        tokio::select! {
            input = io.input.recv() => {
                let Some(input) = input else { return Ok(()) };
                match input {
                    BrainInput::Connected { speaker, role } => {
                        tracks.entry(speaker).or_insert_with(|| Track::new(role, config.turn, Instant::now()));
                    }
                    BrainInput::Left { speaker } => {
                        tracks.remove(&speaker);
                    }
                    BrainInput::Context(context) => {
                        let _ = job_tx.send(Job::Context(context));
                    }
                    BrainInput::Audio(frame) => {
                        let track = tracks
                            .entry(frame.speaker.clone())
                            .or_insert_with(|| Track::new(frame.role, config.turn, frame.at));
                        let voiced = track.vad.push(&frame.pcm);
                        track.audio.extend_from_slice(track.vad.listened());
                        let start_ms = track.clock_ms;
                        let len_ms = FRAME_DURATION.as_millis() as u64;
                        track.clock_ms += len_ms;
                        let event = track.turns.frame(start_ms, len_ms, voiced);
                        if let Some(p) = playing.as_mut().filter(|p| !p.interrupted && Instant::now() < p.until)
                            && track.turns.voiced_ms() >= config.barge_in.as_millis() as u64
                        {
                            p.interrupted = true;
                            cancelled.store(p.answer, Ordering::SeqCst);
                            let heard_ms = Instant::now().duration_since(p.first_audio).as_millis() as u64;
                            info!(speaker = %frame.speaker, heard_ms, "barge-in: the orb stops speaking");
                            let _ = io.events.send(BrainEvent::Interrupt { lane: ANSWER_LANE }).await;
                            let _ = job_tx.send(Job::Heard { answer: p.answer, heard_ms });
                        }
                        if let Some(TurnEvent::Ended(turn)) = event {
                            let pcm = std::mem::take(&mut track.audio);
                            debug!(speaker = %frame.speaker, ms = turn.end_ms - turn.start_ms, "turn ended");
                            let _ = job_tx.send(Job::Turn {
                                speaker: frame.speaker.clone(),
                                role: track.role,
                                pcm,
                                started: track.at(turn.start_ms),
                                ended: track.at(turn.end_ms),
                            });
                        }
                        // Between turns only the pre-roll is kept.
                        if track.turns.open_since_ms().is_none() && track.audio.len() > pre_roll {
                            let extra = track.audio.len() - pre_roll;
                            track.audio.drain(..extra);
                        }
                    }
                }
            }
            done = done_rx.recv() => {
                let Some(done) = done else {
                    return Err(BrainError::Failed("the model thread stopped".into()));
                };
                match done {
                    Done::Event(event) => {
                        if io.events.send(event).await.is_err() {
                            return Ok(());
                        }
                    }
                    Done::AnswerAudio { answer, pcm, origin } => {
                        if cancelled.load(Ordering::SeqCst) == answer {
                            continue;
                        }
                        let now = Instant::now();
                        let length = Duration::from_secs_f64(pcm.len() as f64 / f64::from(CALL_RATE));
                        match playing.as_mut().filter(|p| p.answer == answer) {
                            Some(p) => p.until = p.until.max(now) + length,
                            None => {
                                playing = Some(Playing { answer, first_audio: now, until: now + length, interrupted: false });
                            }
                        }
                        let _ = io.events.send(BrainEvent::Audio { lane: ANSWER_LANE, pcm, origin: Some(origin) }).await;
                    }
                }
            }
        }
    }
}

struct Models {
    asr: SpeechRecognizer,
    llm: Arc<LanguageModel>,
    voice: Voice,
}

fn load(config: &LocalConfig) -> Result<Models, String> {
    let files = &config.models;
    let started = std::time::Instant::now();
    let asr = SpeechRecognizer::load(&files.speech_recognition).map_err(|e| e.to_string())?;
    let options = LlmOptions {
        threads: config.threads as i32,
        gpu_layers: config.gpu_layers,
        ..LlmOptions::default()
    };
    let llm = Arc::new(LanguageModel::load(&files.language_model, options).map_err(|e| e.to_string())?);
    let voice = Voice::load(&files.voice, &files.onnxruntime, config.espeak.clone(), config.threads)
        .map_err(|e| e.to_string())?;
    info!(ms = started.elapsed().as_millis() as u64, "local models loaded");
    Ok(Models { asr, llm, voice })
}

/// The model thread: one job at a time, in order.
fn worker(
    config: LocalConfig,
    shared: Arc<Shared>,
    jobs: std::sync::mpsc::Receiver<Job>,
    done: mpsc::Sender<Done>,
    cancelled: Arc<AtomicU64>,
    loaded: tokio::sync::oneshot::Sender<Result<(), String>>,
) {
    let mut models = match load(&config) {
        Ok(m) => m,
        Err(e) => {
            let _ = loaded.send(Err(e));
            return;
        }
    };
    let _ = shared.llm.set(models.llm.clone());
    let _ = loaded.send(Ok(()));
    let event = |e| done.blocking_send(Done::Event(e)).is_ok();
    let mut conversation = Conversation::new(config.instructions.clone(), config.names.clone(), config.policy);
    let mut answers = 0u64;
    // The last answer's sentences with their played length, for a barge-in's truncation.
    let mut last_answer: (u64, Vec<(String, u64)>) = (0, Vec::new());
    while let Ok(job) = jobs.recv() {
        match job {
            Job::Context(c) => {
                conversation.set_instructions(session_instructions(&config.instructions, &c));
            }
            Job::Heard { answer, heard_ms } => {
                if last_answer.0 == answer {
                    let heard = heard_part(&last_answer.1, heard_ms);
                    conversation.revise_last_said(&heard);
                }
            }
            Job::Turn {
                speaker,
                role,
                pcm,
                started,
                ended,
            } => {
                let asr_started = std::time::Instant::now();
                let text = match models.asr.transcribe(&pcm) {
                    Ok(t) => t,
                    Err(e) => {
                        event(BrainEvent::Error(e.to_string()));
                        continue;
                    }
                };
                debug!(ms = asr_started.elapsed().as_millis() as u64, %text, "heard");
                if text.is_empty() {
                    continue;
                }
                event(BrainEvent::Transcript {
                    speaker: Speaker::Human(Some(speaker.clone())),
                    text: text.clone(),
                    overlap: false,
                    started: Some(started),
                });
                let who = match role {
                    UserRole::Coach => "coach",
                    UserRole::Client => "client",
                    UserRole::Ai => "assistant",
                };
                if !conversation.heard(who, &text) {
                    continue;
                }
                answers += 1;
                event(BrainEvent::Status(AiStatus::Processing));
                conversation.set_earlier(shared.earlier.lock().unwrap_or_else(|e| e.into_inner()).clone());
                let sentences = answer(
                    &config,
                    &mut models,
                    &mut conversation,
                    answers,
                    ended,
                    &done,
                    &cancelled,
                );
                let spoken: Vec<&str> = sentences.iter().map(|(s, _)| s.as_str()).collect();
                conversation.said(&spoken.join(" "));
                if !spoken.is_empty() {
                    event(BrainEvent::Transcript {
                        speaker: Speaker::Ai,
                        text: spoken.join(" "),
                        overlap: false,
                        started: None,
                    });
                }
                last_answer = (answers, sentences);
                event(BrainEvent::Status(AiStatus::Listening));
            }
        }
    }
}

/// Writes and speaks one answer; returns its sentences with their audio length in ms.
fn answer(
    config: &LocalConfig,
    models: &mut Models,
    conversation: &mut Conversation,
    id: u64,
    origin: Instant,
    done: &mpsc::Sender<Done>,
    cancelled: &AtomicU64,
) -> Vec<(String, u64)> {
    let llm = models.llm.clone();
    let budget = (llm.context_tokens() as usize).saturating_sub(config.max_answer_tokens + 16);
    let messages = conversation.messages(budget, |t| llm.count_tokens(t));
    let mut splitter = SentenceSplitter::default();
    let mut spoken = Vec::new();
    let mut speak = |sentence: String, voice: &mut Voice| -> Flow {
        if cancelled.load(Ordering::SeqCst) == id {
            return Flow::Stop;
        }
        match voice.speak(&sentence) {
            Ok(samples) if !samples.is_empty() => {
                let pcm = to_i16(&resample(&samples, voice.sample_rate(), CALL_RATE));
                let ms = pcm.len() as u64 * 1000 / u64::from(CALL_RATE);
                spoken.push((sentence, ms));
                if done
                    .blocking_send(Done::AnswerAudio {
                        answer: id,
                        pcm,
                        origin,
                    })
                    .is_err()
                {
                    return Flow::Stop;
                }
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "the voice failed on a sentence"),
        }
        Flow::Continue
    };
    let voice = &mut models.voice;
    // A small model may start its answer the way the transcript's lines start ("coach: …"):
    // the label is not said.
    let mut held = Some(String::new());
    let result = llm.generate(&messages, config.max_answer_tokens, |piece| {
        let piece = match held.as_mut() {
            Some(start) => {
                start.push_str(piece);
                if start.len() < LABEL_PREFIX_CHARS && !start.contains(':') {
                    return Flow::Continue;
                }
                let start = held.take().expect("held");
                strip_speaker_label(&start).to_owned()
            }
            None => piece.to_owned(),
        };
        for sentence in splitter.push(&piece) {
            if speak(sentence, voice) == Flow::Stop {
                return Flow::Stop;
            }
        }
        Flow::Continue
    });
    match result {
        Ok(_) => {
            if let Some(start) = held.take() {
                for sentence in splitter.push(strip_speaker_label(&start)) {
                    speak(sentence, voice);
                }
            }
            if let Some(rest) = splitter.finish() {
                speak(rest, voice);
            }
        }
        Err(e) => {
            let _ = done.blocking_send(Done::Event(BrainEvent::Error(e.to_string())));
        }
    }
    spoken
}

/// How much of an answer's start is held back to see whether it begins with a speaker label.
const LABEL_PREFIX_CHARS: usize = 16;

/// `text` without a leading `coach:`, `client:`, `assistant:` or `orb:` label.
fn strip_speaker_label(text: &str) -> &str {
    let trimmed = text.trim_start();
    for label in ["coach:", "client:", "assistant:", "orb:", "participant:"] {
        if trimmed
            .get(..label.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(label))
        {
            return trimmed[label.len()..].trim_start();
        }
    }
    text
}

/// Summaries written by the local language model, held to the summary's JSON shape by a
/// grammar (a small model writes valid JSON only when it cannot do otherwise).
pub struct LocalSummarizer {
    shared: Arc<Shared>,
}

/// GBNF of [`SummaryContent`], kept short: the session's last step must be written within the
/// goodbye's few seconds on a CPU (at most 3 topics, 2 recommendations, a few sentences).
const SUMMARY_GRAMMAR: &str = r#"
root ::= "{\"keyTopics\": " topics ", \"progress\": " text ", \"recommendations\": " steps "}"
topics ::= "[" topic ("," " " topic){0,2} "]"
steps ::= "[" step ("," " " step){0,1} "]"
topic ::= "\"" [^"\\\n]{2,40} "\""
step ::= "\"" [^"\\\n]{2,100} "\""
text ::= "\"" [^"\\\n]{2,240} "\""
"#;
/// Enough tokens for the longest answer the grammar allows.
const SUMMARY_MAX_TOKENS: usize = 240;

impl Summarizer for LocalSummarizer {
    fn summarize<'a>(&'a self, request: SummaryRequest<'a>) -> BoxFuture<'a, Result<SummaryContent, SummaryError>> {
        let Some(llm) = self.shared.llm.get().cloned() else {
            return futures::future::ready(Err(SummaryError::Unreachable(
                "the local language model is not loaded".into(),
            )))
            .boxed();
        };
        let (system, user) = summary_prompt(request);
        async move {
            let json = tokio::task::spawn_blocking(move || {
                let messages = [
                    ChatMessage::new(Role::System, system),
                    ChatMessage::new(Role::User, user),
                ];
                llm.generate_constrained(&messages, SUMMARY_MAX_TOKENS, Some(SUMMARY_GRAMMAR), |_| Flow::Continue)
            })
            .await
            .map_err(|e| SummaryError::Unreachable(e.to_string()))?
            .map_err(|e| SummaryError::Unreachable(e.to_string()))?;
            let content: SummaryContent =
                serde_json::from_str(&json).map_err(|e| SummaryError::Invalid(format!("{e}: {json}")))?;
            content.check().map_err(|e| SummaryError::Invalid(e.to_string()))?;
            *self.shared.earlier.lock().unwrap_or_else(|e| e.into_inner()) = Some(earlier_text(&content));
            Ok(content)
        }
        .boxed()
    }
}

/// The rolling summary as a line of the answers' context.
fn earlier_text(content: &SummaryContent) -> String {
    format!(
        "topics: {}; progress: {}",
        content.key_topics.join(", "),
        content.progress
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_speaker_label_at_the_start_of_an_answer_is_not_said() {
        assert_eq!(strip_speaker_label("client: Try a timer."), "Try a timer.");
        assert_eq!(strip_speaker_label("  Coach:Breathe."), "Breathe.");
        assert_eq!(
            strip_speaker_label("Focus: one task at a time."),
            "Focus: one task at a time."
        );
        assert_eq!(
            strip_speaker_label("Él dijo: sí"),
            "Él dijo: sí",
            "no label, and no slicing inside a character"
        );
    }
}
