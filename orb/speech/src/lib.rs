//! The parts of the orb's local brain: who is speaking (voice activity per track), when a turn
//! ends, and — from model files on disk, never downloaded — speech recognition, a language model
//! and a voice. Each part is synchronous and owns no thread; the orb runs them on blocking tasks
//! and wires them into its brain.

pub mod asr;
pub mod conversation;
pub mod llm;
pub mod models;
pub mod resample;
pub mod sentences;
pub mod tts;
pub mod turns;
pub mod vad;
pub mod wav;

use std::path::Path;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum SpeechError {
    /// A model file the configuration names is not there: said at start, with the flag to set.
    #[error("{what} not found at {path} (see --models-dir and the per-model flags)")]
    Missing { what: &'static str, path: String },
    #[error("cannot load the {what}: {reason}")]
    Load { what: &'static str, reason: String },
    #[error("{0}")]
    Inference(String),
}

impl SpeechError {
    pub fn load(what: &'static str, reason: impl std::fmt::Display) -> Self {
        SpeechError::Load {
            what,
            reason: reason.to_string(),
        }
    }
}

/// Fails with [`SpeechError::Missing`] unless `path` is a readable file.
pub fn require_file(what: &'static str, path: &Path) -> Result<(), SpeechError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(SpeechError::Missing {
            what,
            path: path.display().to_string(),
        })
    }
}
