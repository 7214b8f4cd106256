//! Voice activity per track: a small neural detector (earshot) on 16 ms frames at 16 kHz, behind
//! a gate with an onset and a hangover. A fan, a keyboard or a tone scores low on the network,
//! and a single loud frame cannot open the gate; the gap between two words cannot close it.

use crate::resample::Decimator;

/// Samples per detector frame at 16 kHz (16 ms): what earshot's network takes.
pub const VAD_FRAME: usize = 256;
/// One detector frame in milliseconds.
pub const VAD_FRAME_MS: u64 = 16;

/// How the gate reads the detector's per-frame scores.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VadConfig {
    /// A frame at or above this score is voice-like.
    pub threshold: f32,
    /// Consecutive voice-like frames that open the gate (4 × 16 ms).
    pub onset_frames: u32,
    /// Consecutive quiet frames that close it again.
    pub hangover_frames: u32,
}

impl Default for VadConfig {
    fn default() -> Self {
        Self {
            // Noise that starts abruptly scores up to ~0.57 while the network adapts to it.
            threshold: 0.6,
            onset_frames: 4,
            hangover_frames: 10,
        }
    }
}

/// The gate's state machine over scores, apart from the network so it can be tested alone.
#[derive(Clone, Debug)]
pub struct Gate {
    config: VadConfig,
    open: bool,
    run: u32,
}

impl Gate {
    pub fn new(config: VadConfig) -> Self {
        Self {
            config,
            open: false,
            run: 0,
        }
    }

    /// Takes one frame's score; answers whether the gate is open after it.
    pub fn score(&mut self, score: f32) -> bool {
        let voice_like = score >= self.config.threshold;
        if voice_like != self.open {
            self.run += 1;
            let needed = if self.open {
                self.config.hangover_frames
            } else {
                self.config.onset_frames
            };
            if self.run >= needed {
                self.open = voice_like;
                self.run = 0;
            }
        } else {
            self.run = 0;
        }
        self.open
    }

    pub fn is_open(&self) -> bool {
        self.open
    }
}

/// Voice activity of one track at the call's rate.
pub struct VoiceActivity {
    detector: Box<earshot::Detector>,
    decimator: Decimator,
    pending: Vec<f32>,
    listened: Vec<f32>,
    gate: Gate,
}

impl VoiceActivity {
    pub fn new(config: VadConfig) -> Self {
        Self {
            detector: earshot::Detector::default_boxed(),
            decimator: Decimator::new(),
            pending: Vec::with_capacity(2 * VAD_FRAME),
            listened: Vec::with_capacity(2 * VAD_FRAME),
            gate: Gate::new(config),
        }
    }

    /// Takes a frame of the call (48 kHz); answers whether the track is voiced after it.
    pub fn push(&mut self, pcm: &[i16]) -> bool {
        self.listened.clear();
        self.decimator.push(pcm, &mut self.listened);
        // The low-pass can overshoot a clipped input past full scale; the network takes ±1.
        self.pending.extend(self.listened.iter().map(|s| s.clamp(-1.0, 1.0)));
        let whole = self.pending.len() / VAD_FRAME * VAD_FRAME;
        for frame in self.pending[..whole].chunks_exact(VAD_FRAME) {
            let score = self.detector.predict_f32(frame);
            self.gate.score(score);
        }
        self.pending.drain(..whole);
        self.gate.is_open()
    }

    /// The 16 kHz samples of the frame last pushed (what speech recognition takes).
    pub fn listened(&self) -> &[f32] {
        &self.listened
    }

    pub fn is_voiced(&self) -> bool {
        self.gate.is_open()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_loud_frame_does_not_open_the_gate_and_a_short_gap_does_not_close_it() {
        let mut g = Gate::new(VadConfig::default());
        assert!(!g.score(0.9));
        assert!(!g.score(0.1));
        assert!(!g.score(0.9));
        assert!(!g.score(0.9));
        assert!(!g.score(0.9));
        assert!(g.score(0.9));
        for _ in 0..9 {
            assert!(g.score(0.0));
        }
        assert!(g.score(0.8), "a word after a 144 ms gap keeps the gate open");
        for _ in 0..9 {
            g.score(0.0);
        }
        assert!(!g.score(0.0), "ten quiet frames close it");
    }

    proptest! {
        /// Scores below the threshold never open the gate, whatever their pattern.
        #[test]
        fn quiet_scores_never_open_the_gate(scores in proptest::collection::vec(0.0f32..0.6, 0..500)) {
            let mut g = Gate::new(VadConfig::default());
            for s in scores {
                prop_assert!(!g.score(s));
            }
        }

        /// Isolated voice-like frames (never `onset_frames` in a row) never open the gate.
        #[test]
        fn scattered_blips_never_open_the_gate(blips in proptest::collection::vec(proptest::bool::ANY, 0..500)) {
            let mut g = Gate::new(VadConfig::default());
            let mut run = 0;
            for blip in blips {
                // Cap runs at onset - 1 by forcing a quiet frame.
                let voice_like = blip && run < 3;
                run = if voice_like { run + 1 } else { 0 };
                let score = if voice_like { 0.9 } else { 0.1 };
                prop_assert!(!g.score(score));
            }
        }
    }
}
