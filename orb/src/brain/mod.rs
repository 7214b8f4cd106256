//! The brain: what the orb hears goes in, what it says (audio, text, status) comes out. A brain
//! runs as one task fed by a channel, so a slow brain never stalls the media path, and a local
//! GPU model can later be one more implementation of the same trait.

pub mod attribution;
pub mod openai;
pub mod openai_summary;
pub mod test;

use std::sync::Arc;

use futures::future::BoxFuture;
use orb_protocol::summary::{SummaryContent, TranscriptLine};
use orb_protocol::{AiStatus, UserRole};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// One 20 ms mono 48 kHz frame a human said, with the instant it arrived.
#[derive(Clone, Debug)]
pub struct HeardFrame {
    pub speaker: Arc<str>,
    pub role: UserRole,
    pub pcm: Vec<i16>,
    pub at: Instant,
}

#[derive(Clone, Debug)]
pub enum BrainInput {
    /// A human's media is flowing.
    Connected {
        speaker: Arc<str>,
        role: UserRole,
    },
    Left {
        speaker: Arc<str>,
    },
    Audio(HeardFrame),
}

/// Who said a transcript line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Speaker {
    Ai,
    /// A human; the brain may not know which one (a mixed input stream).
    Human(Option<Arc<str>>),
}

#[derive(Clone, Debug)]
pub enum BrainEvent {
    /// The brain can listen and answer.
    Ready,
    /// The brain cannot answer for now (its service is unreachable); it keeps trying.
    NotReady,
    Status(AiStatus),
    /// Audio to play: 48 kHz mono, any length. Lanes are mixed, so an answer and an echo of
    /// another speaker can overlap; `origin` is when the input this answers ended, for latency.
    Audio {
        lane: u32,
        pcm: Vec<i16>,
        origin: Option<Instant>,
    },
    /// Drop whatever is still queued on a lane (the human interrupted).
    Interrupt {
        lane: u32,
    },
    /// A finished transcript line.
    Transcript {
        speaker: Speaker,
        text: String,
        /// Another human spoke during it too (`speaker` is the one heard longest).
        overlap: bool,
        /// When the utterance started, if the brain knows (else: now).
        started: Option<Instant>,
    },
    /// A problem the brain survived (the orb reports it and carries on).
    Error(String),
}

#[derive(Debug, Error)]
pub enum BrainError {
    #[error("brain failed: {0}")]
    Failed(String),
}

/// Channels a brain runs on.
pub struct BrainIo {
    pub input: mpsc::Receiver<BrainInput>,
    pub events: mpsc::Sender<BrainEvent>,
}

/// A pluggable AI brain. `run` returns when the input channel closes (the orb is ending) or the
/// brain fails for good.
pub trait Brain: Send + 'static {
    fn name(&self) -> &'static str;
    /// What writes this brain's session summaries (with its language model).
    fn summarizer(&self) -> Arc<dyn Summarizer>;
    fn run(self: Box<Self>, io: BrainIo) -> BoxFuture<'static, Result<(), BrainError>>;
}

/// One step of a summary: `lines` of the transcript, and the summary of the lines before them
/// to carry forward (a long session is summarised in chunks as it goes).
#[derive(Clone, Copy, Debug)]
pub struct SummaryRequest<'a> {
    pub previous: Option<&'a SummaryContent>,
    pub lines: &'a [TranscriptLine],
}

/// Why one attempt at a summary failed.
#[derive(Debug, Error)]
pub enum SummaryError {
    #[error("the summary service is unreachable: {0}")]
    Unreachable(String),
    #[error("the summary service answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the model's answer is not a valid summary: {0}")]
    Invalid(String),
    #[error("the model refused: {0}")]
    Refused(String),
}

/// Writes `keyTopics`, `progress` and `recommendations` from transcript lines. One call is one
/// attempt, its answer checked ([`SummaryContent::check`]); the caller decides on retries.
pub trait Summarizer: Send + Sync + 'static {
    fn summarize<'a>(&'a self, request: SummaryRequest<'a>) -> BoxFuture<'a, Result<SummaryContent, SummaryError>>;
}
