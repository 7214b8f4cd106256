//! The brain: what the orb hears goes in, what it says (audio, text, status) comes out. A brain
//! runs as one task fed by a channel, so a slow brain never stalls the media path, and a local
//! GPU model can later be one more implementation of the same trait.

pub mod openai;
pub mod test;

use std::sync::Arc;

use futures::future::BoxFuture;
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
    },
    /// Topics of the conversation so far, for the session summary.
    Topics(Vec<String>),
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
    fn run(self: Box<Self>, io: BrainIo) -> BoxFuture<'static, Result<(), BrainError>>;
}
