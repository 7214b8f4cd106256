//! PCM and Opus: the call runs at 48 kHz mono in 20 ms frames (960 samples), which is what
//! browsers send and what one RTP packet carries.

use thiserror::Error;

pub const SAMPLE_RATE: u32 = 48_000;
/// Samples in one 20 ms frame at 48 kHz; also the RTP timestamp step per frame.
pub const FRAME_SAMPLES: usize = 960;
pub const FRAME_DURATION: std::time::Duration = std::time::Duration::from_millis(20);
/// Frames quieter than this RMS (full scale = 1, about -40 dBFS) count as silence, not speech.
pub const VOICE_THRESHOLD: f32 = 0.01;
/// Largest Opus packet we produce or accept (RFC 6716 bounds a frame well below this).
pub const MAX_OPUS_PACKET: usize = 1500;

#[derive(Debug, Error)]
#[error("opus: {0}")]
pub struct CodecError(#[from] opus::Error);

/// Encodes 20 ms mono frames for the orb's outgoing track.
pub struct Encoder {
    inner: opus::Encoder,
    out: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Result<Self, CodecError> {
        let mut inner = opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)?;
        // In-band FEC lets receivers conceal a lost packet from the next one.
        inner.set_inband_fec(true)?;
        inner.set_bitrate(opus::Bitrate::Bits(32_000))?;
        Ok(Self {
            inner,
            out: vec![0; MAX_OPUS_PACKET],
        })
    }

    /// Encodes exactly one frame of [`FRAME_SAMPLES`] samples.
    pub fn encode(&mut self, frame: &[i16]) -> Result<&[u8], CodecError> {
        let n = self.inner.encode(frame, &mut self.out)?;
        Ok(&self.out[..n])
    }
}

/// Decodes a human's Opus packets (mono or stereo on the wire) to 48 kHz mono.
pub struct Decoder {
    inner: opus::Decoder,
    // 120 ms is the longest Opus packet.
    pcm: Vec<i16>,
}

impl Decoder {
    pub fn new() -> Result<Self, CodecError> {
        Ok(Self {
            // Decoding to mono downmixes stereo packets inside libopus.
            inner: opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)?,
            pcm: vec![0; SAMPLE_RATE as usize * 120 / 1000],
        })
    }

    pub fn decode(&mut self, packet: &[u8]) -> Result<&[i16], CodecError> {
        let n = self.inner.decode(packet, &mut self.pcm, false)?;
        Ok(&self.pcm[..n])
    }
}

/// A sine tone, the test brain's greeting and the test peers' known signal.
pub fn tone(freq_hz: f32, samples: usize, amplitude: i16, phase_offset: usize) -> Vec<i16> {
    (0..samples)
        .map(|i| {
            let t = (i + phase_offset) as f32 / SAMPLE_RATE as f32;
            (f32::from(amplitude) * (2.0 * std::f32::consts::PI * freq_hz * t).sin()) as i16
        })
        .collect()
}

/// Relative power of `freq_hz` in `pcm` (Goertzel), normalised to the block's total power so
/// that it reads ~1 for a pure tone and ~0 when the tone is absent, independent of level.
pub fn tone_power(pcm: &[i16], freq_hz: f32) -> f32 {
    if pcm.is_empty() {
        return 0.0;
    }
    let n = pcm.len() as f32;
    let coeff = 2.0 * (2.0 * std::f32::consts::PI * freq_hz / SAMPLE_RATE as f32).cos();
    let (mut s1, mut s2) = (0.0f32, 0.0f32);
    let mut energy = 0.0f32;
    for &x in pcm {
        let x = f32::from(x) / 32768.0;
        energy += x * x;
        let s0 = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    if energy < 1e-6 {
        return 0.0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    // A pure tone of N samples gives power ≈ N²A²/4 and energy ≈ N·A²/2.
    (2.0 * power / (n * energy)).min(1.0)
}

/// Root mean square level in [0, 1].
pub fn rms(pcm: &[i16]) -> f32 {
    if pcm.is_empty() {
        return 0.0;
    }
    let sum: f64 = pcm.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    ((sum / pcm.len() as f64).sqrt() / 32768.0) as f32
}

/// Halves the sample rate (48 → 24 kHz) with a small low-pass so speech does not alias.
pub fn downsample_2x(input: &[i16]) -> Vec<i16> {
    input
        .chunks_exact(2)
        .map(|pair| ((i32::from(pair[0]) + i32::from(pair[1])) / 2) as i16)
        .collect()
}

/// Doubles the sample rate (24 → 48 kHz) by linear interpolation; `last` carries the previous
/// chunk's final sample so chunk boundaries stay smooth.
pub fn upsample_2x(input: &[i16], last: &mut i16) -> Vec<i16> {
    let mut out = Vec::with_capacity(input.len() * 2);
    for &x in input {
        out.push(((i32::from(*last) + i32::from(x)) / 2) as i16);
        out.push(x);
        *last = x;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opus_round_trip_keeps_a_tone() {
        let mut enc = Encoder::new().unwrap();
        let mut dec = Decoder::new().unwrap();
        let mut decoded = Vec::new();
        for i in 0..10 {
            let frame = tone(1000.0, FRAME_SAMPLES, 8000, i * FRAME_SAMPLES);
            let packet = enc.encode(&frame).unwrap().to_vec();
            decoded.extend_from_slice(dec.decode(&packet).unwrap());
        }
        assert_eq!(decoded.len(), 10 * FRAME_SAMPLES);
        let tail = &decoded[5 * FRAME_SAMPLES..];
        assert!(tone_power(tail, 1000.0) > 0.8, "{}", tone_power(tail, 1000.0));
        assert!(tone_power(tail, 440.0) < 0.05);
    }

    #[test]
    fn goertzel_tells_tones_apart() {
        let a = tone(440.0, FRAME_SAMPLES * 2, 10000, 0);
        assert!(tone_power(&a, 440.0) > 0.9);
        assert!(tone_power(&a, 1000.0) < 0.05);
        assert_eq!(tone_power(&vec![0; 960], 440.0), 0.0);
    }

    #[test]
    fn resampling_round_trip_preserves_length_and_level() {
        let x = tone(300.0, 960, 10000, 0);
        let down = downsample_2x(&x);
        assert_eq!(down.len(), 480);
        let mut last = 0;
        let up = upsample_2x(&down, &mut last);
        assert_eq!(up.len(), 960);
        assert!((rms(&up) - rms(&x)).abs() < 0.02);
    }
}
