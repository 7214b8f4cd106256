//! Real speech for scripted humans: the speech crate's WAV reading and `espeak-ng` sentences.

pub use orb_speech::wav::{WavError, espeak, wav_to_48k};
