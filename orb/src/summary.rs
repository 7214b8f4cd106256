//! The transcript and the `session_summary` the coach receives when the orb ends (the types are
//! the protocol's, [`orb_protocol::summary`]). Its content — `keyTopics`, `progress`,
//! `recommendations` — is written by the brain's [`Summarizer`] as the session goes: a rolling
//! step every [`SummaryPolicy::every_lines`] lines or [`SummaryPolicy::every`], each extending
//! the summary of the lines before, so the step left at the end covers only the last lines and
//! fits in the goodbye. Every step is tried twice at most; when the content cannot be written
//! (or not for all lines), the summary still goes out, with its transcript and a `summaryError`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use orb_protocol::UserRole;
use orb_protocol::summary::{SessionSummary, SessionSummaryMessage, SummaryContent, SummaryParticipant};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{info, warn};

pub use orb_protocol::summary::TranscriptLine;

use crate::brain::{SessionContext, Summarizer, SummaryRequest};

/// What the orb remembers of the session.
#[derive(Clone, Debug, Default)]
pub struct SessionRecord {
    pub transcript: Vec<TranscriptLine>,
    /// Every human seen in the room, with their role.
    pub participants: BTreeMap<String, UserRole>,
}

/// Longest transcript kept; a two-hour session of short turns stays well below it.
const MAX_TRANSCRIPT_LINES: usize = 5_000;

impl SessionRecord {
    /// Keeps `line`; `false` once the transcript is full.
    pub fn add_line(&mut self, line: TranscriptLine) -> bool {
        let kept = self.transcript.len() < MAX_TRANSCRIPT_LINES;
        if kept {
            self.transcript.push(line);
        }
        kept
    }
}

/// Identity of the session for the summary.
pub struct SummaryIds<'a> {
    pub summary: &'a str,
    pub room: &'a str,
    pub session: &'a str,
    pub coach: &'a str,
    pub client: &'a str,
}

/// The summary's content as written, and why it is missing or partial if it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub content: SummaryContent,
    pub error: Option<String>,
}

/// The `session_summary` message.
pub fn session_summary(
    ids: &SummaryIds<'_>,
    record: &SessionRecord,
    duration: Duration,
    reason: &str,
    written: Written,
) -> SessionSummaryMessage {
    let mut transcript = record.transcript.clone();
    // Lines arrive when their transcription is done; they are listed as they were said.
    transcript.sort_by_key(|l| l.offset_ms);
    SessionSummaryMessage {
        summary_id: ids.summary.to_owned(),
        room_id: ids.room.to_owned(),
        session_id: ids.session.to_owned(),
        coach_id: ids.coach.to_owned(),
        client_id: ids.client.to_owned(),
        from_id: None,
        summary: SessionSummary {
            duration: duration.as_millis() as u64,
            participants: record
                .participants
                .iter()
                .map(|(id, role)| SummaryParticipant {
                    user_id: id.clone(),
                    user_role: *role,
                })
                .collect(),
            content: written.content,
            transcript,
            reason: reason.to_owned(),
            summary_error: written.error,
        },
    }
}

/// When the summary is written.
#[derive(Clone, Debug)]
pub struct SummaryPolicy {
    /// A rolling step once this many lines are not summarised yet…
    pub every_lines: usize,
    /// …or the oldest of them waited this long (also the pause after a failed step).
    pub every: Duration,
    /// Most lines and characters of transcript in one step: bounds every request, the last too.
    pub max_chunk_lines: usize,
    pub max_chunk_chars: usize,
    /// How long the last step may take when the session ends (the goodbye has the pod's 10 s
    /// grace period; the summary's delivery needs the rest).
    pub final_timeout: Duration,
}

impl Default for SummaryPolicy {
    fn default() -> Self {
        Self {
            every_lines: 40,
            every: Duration::from_secs(300),
            max_chunk_lines: 80,
            max_chunk_chars: 24_000,
            final_timeout: Duration::from_secs(4),
        }
    }
}

/// One step, tried again once if it fails. `Err` says why, for `summaryError`.
pub async fn summarize_with_retry(
    summarizer: &dyn Summarizer,
    context: &SessionContext,
    previous: Option<&SummaryContent>,
    lines: &[TranscriptLine],
) -> Result<SummaryContent, String> {
    let request = SummaryRequest {
        context,
        previous,
        lines,
    };
    match summarizer.summarize(request).await {
        Ok(content) => Ok(content),
        Err(first) => {
            warn!(error = %first, "summary step failed; trying once more");
            summarizer
                .summarize(request)
                .await
                .map_err(|e| format!("{e} (tried twice)"))
        }
    }
}

enum Command {
    Line(TranscriptLine),
    Finish {
        deadline: Instant,
        reply: oneshot::Sender<Written>,
    },
}

/// The summary being written while the session goes on, in a task of its own so that a slow
/// model never holds up the session.
pub struct RollingSummary {
    commands: mpsc::UnboundedSender<Command>,
}

impl RollingSummary {
    pub fn start(summarizer: Arc<dyn Summarizer>, policy: SummaryPolicy, context: SessionContext) -> Self {
        let (commands, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(summarizer, policy, Arc::new(context), rx));
        Self { commands }
    }

    pub fn add(&self, line: TranscriptLine) {
        let _ = self.commands.send(Command::Line(line));
    }

    /// Writes what is left (until `deadline`) and returns the content.
    pub async fn finish(&self, deadline: Instant) -> Written {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Finish { deadline, reply }).is_err() {
            return Written {
                error: Some("the summary writer stopped".into()),
                ..Written::default()
            };
        }
        answer.await.unwrap_or_else(|_| Written {
            error: Some("the summary writer stopped".into()),
            ..Written::default()
        })
    }
}

type Step = BoxFuture<'static, (usize, Result<SummaryContent, String>)>;

struct State {
    summarizer: Arc<dyn Summarizer>,
    context: Arc<SessionContext>,
    policy: SummaryPolicy,
    content: Option<SummaryContent>,
    /// Lines not summarised yet, with when each arrived.
    pending: VecDeque<(Instant, TranscriptLine)>,
    summarised: usize,
    last_error: Option<String>,
    /// No step before this after a failed one.
    retry_after: Option<Instant>,
}

impl State {
    /// When the next rolling step is due, if one is.
    fn due(&self) -> Option<Instant> {
        let (oldest, _) = self.pending.front()?;
        let due = if self.pending.len() >= self.policy.every_lines {
            *oldest
        } else {
            *oldest + self.policy.every
        };
        Some(self.retry_after.map_or(due, |r| r.max(due)))
    }

    /// A step over the oldest pending lines, within the chunk bounds (one line at least).
    fn step(&self) -> Step {
        let mut chars = 0;
        let lines: Vec<TranscriptLine> = self
            .pending
            .iter()
            .map(|(_, l)| l)
            .take(self.policy.max_chunk_lines)
            .take_while(|l| {
                chars += l.text.len() + l.speaker.len();
                chars <= self.policy.max_chunk_chars
            })
            .cloned()
            .collect();
        let lines = if lines.is_empty() {
            self.pending.iter().take(1).map(|(_, l)| l.clone()).collect()
        } else {
            lines
        };
        let summarizer = self.summarizer.clone();
        let context = self.context.clone();
        let previous = self.content.clone();
        async move {
            let result = summarize_with_retry(&*summarizer, &context, previous.as_ref(), &lines).await;
            (lines.len(), result)
        }
        .boxed()
    }

    fn done(&mut self, taken: usize, result: Result<SummaryContent, String>) {
        match result {
            Ok(content) => {
                self.pending.drain(..taken);
                self.summarised += taken;
                self.content = Some(content);
                self.last_error = None;
                self.retry_after = None;
                info!(lines = self.summarised, "summary written so far");
            }
            Err(error) => {
                warn!(%error, "summary step failed; the lines wait for the next one");
                self.last_error = Some(error);
                self.retry_after = Some(Instant::now() + self.policy.every);
            }
        }
    }

    /// The last steps, until nothing is pending or `deadline`.
    async fn finish(mut self, in_flight: Option<Step>, deadline: Instant) -> Written {
        let mut step = in_flight;
        loop {
            if let Some(running) = step.take() {
                match tokio::time::timeout_at(deadline, running).await {
                    Ok((taken, result)) => self.done(taken, result),
                    Err(_) => {
                        self.last_error = Some("the summary was not written in time".into());
                        break;
                    }
                }
            }
            // A failed step at the end is final: its lines were tried twice.
            if self.pending.is_empty() || (self.last_error.is_some() && self.retry_after.is_some()) {
                break;
            }
            step = Some(self.step());
        }
        let error = (!self.pending.is_empty()).then(|| {
            let why = self.last_error.clone().unwrap_or_default();
            let total = self.summarised + self.pending.len();
            if self.summarised == 0 {
                why
            } else {
                format!(
                    "{why}; keyTopics, progress and recommendations cover the first {} of {total} lines",
                    self.summarised
                )
            }
        });
        info!(lines = self.summarised, error = ?error, "session summary written");
        Written {
            content: self.content.unwrap_or_default(),
            error,
        }
    }
}

async fn run(
    summarizer: Arc<dyn Summarizer>,
    policy: SummaryPolicy,
    context: Arc<SessionContext>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut state = State {
        summarizer,
        context,
        policy,
        content: None,
        pending: VecDeque::new(),
        summarised: 0,
        last_error: None,
        retry_after: None,
    };
    let mut in_flight: Option<Step> = None;
    loop {
        let due = if in_flight.is_none() { state.due() } else { None };
        tokio::select! {
            command = commands.recv() => match command {
                None => return,
                Some(Command::Line(line)) => state.pending.push_back((Instant::now(), line)),
                Some(Command::Finish { deadline, reply }) => {
                    // The final step starts clean: an earlier failure is no reason to skip it.
                    state.retry_after = None;
                    state.last_error = None;
                    let _ = reply.send(state.finish(in_flight.take(), deadline).await);
                    return;
                }
            },
            (taken, result) = async { in_flight.as_mut().expect("guarded").await }, if in_flight.is_some() => {
                in_flight = None;
                state.done(taken, result);
            }
            _ = sleep_until_opt(due), if due.is_some() => in_flight = Some(state.step()),
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
    use std::sync::Mutex;

    use super::*;
    use crate::brain::SummaryError;
    use crate::brain::test::TestSummarizer;

    fn line(speaker: &str, text: &str, offset_ms: u64) -> TranscriptLine {
        TranscriptLine {
            speaker: speaker.into(),
            role: if speaker == "ai" { UserRole::Ai } else { UserRole::Coach },
            text: text.into(),
            offset_ms,
            overlap: false,
        }
    }

    const IDS: SummaryIds<'static> = SummaryIds {
        summary: "sum-1",
        room: "room123",
        session: "s1",
        coach: "coach-1",
        client: "client-1",
    };

    #[test]
    fn summary_has_the_seed_shape_and_lines_in_spoken_order() {
        let mut r = SessionRecord::default();
        r.participants.insert("coach-1".into(), UserRole::Coach);
        r.add_line(line("ai", "Hello", 900));
        r.add_line(line("coach-1", "Hi", 5));
        let written = Written {
            content: SummaryContent {
                key_topics: vec!["breathing".into()],
                progress: "p".into(),
                recommendations: vec!["r".into()],
            },
            error: None,
        };
        let m = session_summary(&IDS, &r, Duration::from_secs(1500), "SessionComplete", written);
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["roomId"], "room123");
        assert_eq!(v["summaryId"], "sum-1");
        assert_eq!(v["clientId"], "client-1");
        assert_eq!(v["summary"]["duration"], 1_500_000);
        assert_eq!(v["summary"]["keyTopics"][0], "breathing");
        assert_eq!(v["summary"]["participants"][0]["userRole"], "coach");
        assert_eq!(v["summary"]["transcript"][0]["speaker"], "coach-1");
        assert_eq!(v["summary"]["transcript"][1]["role"], "ai");
        assert!(v["summary"].get("summaryError").is_none());
    }

    /// Records what each step was given; fails the steps listed in `fail` (by call number).
    #[derive(Default)]
    struct Recording {
        calls: Mutex<Vec<(bool, usize)>>,
        fail: Vec<usize>,
    }

    impl Summarizer for Recording {
        fn summarize<'a>(&'a self, r: SummaryRequest<'a>) -> BoxFuture<'a, Result<SummaryContent, SummaryError>> {
            let mut calls = self.calls.lock().unwrap();
            calls.push((r.previous.is_some(), r.lines.len()));
            let n = calls.len();
            drop(calls);
            let result = if self.fail.contains(&n) {
                Err(SummaryError::Invalid(format!("call {n}")))
            } else {
                TestSummarizer.summarize(r).now_or_never().unwrap()
            };
            futures::future::ready(result).boxed()
        }
    }

    fn policy() -> SummaryPolicy {
        SummaryPolicy {
            every_lines: 3,
            every: Duration::from_secs(60),
            max_chunk_lines: 4,
            final_timeout: Duration::from_secs(4),
            ..SummaryPolicy::default()
        }
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn long_sessions_are_summarised_in_chunks_so_the_last_step_is_small() {
        let s = Arc::new(Recording::default());
        let rolling = RollingSummary::start(s.clone(), policy(), SessionContext::default());
        for i in 0..7 {
            rolling.add(line("coach-1", &format!("line {i}"), i));
            settle().await;
        }
        // Two rolling steps of three lines, the second carrying the first's summary forward.
        assert_eq!(*s.calls.lock().unwrap(), [(false, 3), (true, 3)]);
        // One line waits; after `every` it is summarised too, even with no more lines.
        tokio::time::sleep(Duration::from_secs(61)).await;
        settle().await;
        assert_eq!(s.calls.lock().unwrap().len(), 3);
        rolling.add(line("client-1", "last", 8));
        let written = rolling.finish(Instant::now() + Duration::from_secs(4)).await;
        assert_eq!(
            s.calls.lock().unwrap().last(),
            Some(&(true, 1)),
            "the last step: one line"
        );
        assert_eq!(written.error, None);
        assert_eq!(written.content.key_topics, ["test"]);
        assert!(written.content.progress.contains("\"last\""), "{written:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_step_is_retried_once_and_its_lines_wait_for_the_next() {
        // Calls 1 and 2 (a step and its retry) fail; the lines stay pending and the final step
        // covers them all, in chunks of at most four.
        let s = Arc::new(Recording {
            fail: vec![1, 2],
            ..Recording::default()
        });
        let rolling = RollingSummary::start(s.clone(), policy(), SessionContext::default());
        for i in 0..6 {
            rolling.add(line("coach-1", "x", i));
            settle().await;
        }
        assert_eq!(
            *s.calls.lock().unwrap(),
            [(false, 3), (false, 3)],
            "no new step before `every`"
        );
        let written = rolling.finish(Instant::now() + Duration::from_secs(4)).await;
        assert_eq!(
            *s.calls.lock().unwrap(),
            [(false, 3), (false, 3), (false, 4), (true, 2)]
        );
        assert_eq!(written.error, None);
    }

    #[tokio::test(start_paused = true)]
    async fn when_the_model_fails_the_summary_says_why_and_what_it_covers() {
        let s = Arc::new(Recording {
            fail: vec![2, 3],
            ..Recording::default()
        });
        let rolling = RollingSummary::start(s.clone(), policy(), SessionContext::default());
        for i in 0..4 {
            rolling.add(line("coach-1", "x", i));
            settle().await;
        }
        let written = rolling.finish(Instant::now() + Duration::from_secs(4)).await;
        let error = written.error.unwrap();
        assert!(
            error.contains("call 3 (tried twice)") && error.contains("cover the first 3 of 4 lines"),
            "{error}"
        );
        assert_eq!(written.content.key_topics, ["test"], "the part written is kept");

        // Nothing written at all: empty content and the reason.
        let s = Arc::new(Recording {
            fail: vec![1, 2],
            ..Recording::default()
        });
        let rolling = RollingSummary::start(s, policy(), SessionContext::default());
        rolling.add(line("coach-1", "x", 0));
        let written = rolling.finish(Instant::now() + Duration::from_secs(4)).await;
        assert_eq!(written.content, SummaryContent::default());
        assert_eq!(
            written.error.as_deref(),
            Some("the model's answer is not a valid summary: call 2 (tried twice)")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_session_needs_no_model() {
        let s = Arc::new(Recording::default());
        let rolling = RollingSummary::start(s.clone(), policy(), SessionContext::default());
        let written = rolling.finish(Instant::now() + Duration::from_secs(4)).await;
        assert_eq!(written, Written::default());
        assert!(s.calls.lock().unwrap().is_empty());
    }

    /// A model slower than the goodbye allows: the summary goes out anyway, saying so.
    #[tokio::test(start_paused = true)]
    async fn a_slow_model_cannot_hold_up_the_goodbye() {
        struct Slow;
        impl Summarizer for Slow {
            fn summarize<'a>(&'a self, _: SummaryRequest<'a>) -> BoxFuture<'a, Result<SummaryContent, SummaryError>> {
                futures::future::pending().boxed()
            }
        }
        let rolling = RollingSummary::start(Arc::new(Slow), policy(), SessionContext::default());
        rolling.add(line("coach-1", "x", 0));
        let start = Instant::now();
        let written = rolling.finish(start + Duration::from_secs(4)).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(4));
        assert_eq!(written.error.as_deref(), Some("the summary was not written in time"));
    }
}
