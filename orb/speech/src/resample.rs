//! Sample-rate conversion between the call (48 kHz), the listening models (16 kHz) and a voice's
//! own rate (22.05 kHz for most Piper voices), with windowed-sinc filters: a plain decimation
//! would fold everything above 8 kHz into the band the voice detector and Whisper listen to.

use std::f32::consts::PI;

/// The call's rate.
pub const CALL_RATE: u32 = 48_000;
/// What the voice detector and speech recognition take.
pub const LISTEN_RATE: u32 = 16_000;

/// Half-width of the interpolation kernel, in input samples at the lower of the two rates.
const KERNEL_HALF_WIDTH: usize = 16;

fn sinc(x: f32) -> f32 {
    if x.abs() < 1e-6 { 1.0 } else { (PI * x).sin() / (PI * x) }
}

/// Blackman window over `[-1, 1]`.
fn blackman(x: f32) -> f32 {
    if x.abs() >= 1.0 {
        return 0.0;
    }
    let t = (x + 1.0) / 2.0;
    0.42 - 0.5 * (2.0 * PI * t).cos() + 0.08 * (4.0 * PI * t).cos()
}

/// 48 kHz → 16 kHz as a stream of 20 ms frames: a low-pass at 7.2 kHz, then every third sample.
/// The filter's history is kept across frames, so frame boundaries leave no clicks.
pub struct Decimator {
    taps: Vec<f32>,
    /// The last `taps.len() - 1` input samples, then the current frame.
    window: Vec<f32>,
    /// Input samples still to skip before the next output sample.
    skip: usize,
}

impl Default for Decimator {
    fn default() -> Self {
        Self::new()
    }
}

impl Decimator {
    const FACTOR: usize = (CALL_RATE / LISTEN_RATE) as usize;

    pub fn new() -> Self {
        let n = 2 * KERNEL_HALF_WIDTH * Self::FACTOR + 1;
        // Cut-off as a fraction of the input's Nyquist rate: 0.9 of the output's band.
        let cutoff = 0.9 / Self::FACTOR as f32;
        let mid = (n / 2) as f32;
        let mut taps: Vec<f32> = (0..n)
            .map(|i| {
                let x = i as f32 - mid;
                cutoff * sinc(cutoff * x) * blackman(x / (mid + 1.0))
            })
            .collect();
        let gain: f32 = taps.iter().sum();
        taps.iter_mut().for_each(|t| *t /= gain);
        Self {
            window: vec![0.0; n - 1],
            taps,
            skip: 0,
        }
    }

    /// Appends the 16 kHz samples (full scale ±1) of `input` (48 kHz, any length) to `out`.
    pub fn push(&mut self, input: &[i16], out: &mut Vec<f32>) {
        let history = self.taps.len() - 1;
        self.window.extend(input.iter().map(|&s| f32::from(s) / 32768.0));
        let mut end = history + self.skip;
        while end < self.window.len() {
            let start = end - history;
            let y: f32 = self.window[start..=end]
                .iter()
                .zip(&self.taps)
                .map(|(x, t)| x * t)
                .sum();
            out.push(y);
            end += Self::FACTOR;
        }
        self.skip = end - self.window.len();
        let drop = self.window.len() - history;
        self.window.drain(..drop);
    }
}

/// Converts a whole buffer (a sentence of speech) from `from` Hz to `to` Hz.
pub fn resample(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || input.is_empty() {
        return input.to_vec();
    }
    let step = f64::from(from) / f64::from(to);
    // Below both Nyquist rates, scaled to input samples.
    let cutoff = (f64::from(to) / f64::from(from)).min(1.0) as f32 * 0.95;
    let half = (KERNEL_HALF_WIDTH as f32 / cutoff).ceil() as isize;
    let out_len = ((input.len() as f64) / step).floor() as usize;
    (0..out_len)
        .map(|n| {
            let t = n as f64 * step;
            let centre = t.floor() as isize;
            let mut acc = 0.0f32;
            for k in (centre - half + 1)..=(centre + half) {
                if k < 0 || k as usize >= input.len() {
                    continue;
                }
                let x = (t - k as f64) as f32;
                acc += input[k as usize] * cutoff * sinc(cutoff * x) * blackman(x / (half as f32 + 1.0));
            }
            acc
        })
        .collect()
}

/// Full-scale ±1 samples to 16-bit PCM, clipped.
pub fn to_i16(samples: &[f32]) -> Vec<i16> {
    samples
        .iter()
        .map(|&s| (s * 32767.0).round().clamp(-32768.0, 32767.0) as i16)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f32, rate: u32, n: usize, amplitude: f32) -> Vec<f32> {
        (0..n)
            .map(|i| amplitude * (2.0 * PI * freq * i as f32 / rate as f32).sin())
            .collect()
    }

    fn rms(x: &[f32]) -> f32 {
        (x.iter().map(|s| s * s).sum::<f32>() / x.len() as f32).sqrt()
    }

    fn decimate(input: &[f32], frame: usize) -> Vec<f32> {
        let pcm = to_i16(input);
        let mut d = Decimator::new();
        let mut out = Vec::new();
        for chunk in pcm.chunks(frame) {
            d.push(chunk, &mut out);
        }
        out
    }

    #[test]
    fn the_voice_band_passes_and_what_would_fold_into_it_does_not() {
        let pass = decimate(&tone(1000.0, CALL_RATE, 48_000, 0.5), 960);
        assert_eq!(pass.len(), 16_000);
        assert!(
            (rms(&pass[1000..]) - 0.5 / 2f32.sqrt()).abs() < 0.01,
            "{}",
            rms(&pass[1000..])
        );
        // 12 kHz would alias to 4 kHz without the filter.
        let stop = decimate(&tone(12_000.0, CALL_RATE, 48_000, 0.5), 960);
        assert!(rms(&stop[1000..]) < 0.005, "{}", rms(&stop[1000..]));
    }

    #[test]
    fn frame_size_does_not_change_the_output() {
        let x = tone(440.0, CALL_RATE, 9_600, 0.3);
        let a = decimate(&x, 960);
        let b = decimate(&x, 7);
        assert_eq!(a.len(), b.len());
        assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-6));
    }

    #[test]
    fn a_voice_rate_tone_keeps_its_pitch_and_level_at_the_call_rate() {
        let x = tone(500.0, 22_050, 22_050, 0.5);
        let y = resample(&x, 22_050, CALL_RATE);
        assert!((y.len() as i64 - 48_000).abs() <= 1);
        let expect = tone(500.0, CALL_RATE, y.len(), 0.5);
        // Same phase (t = 0 maps to t = 0), away from the edges.
        let err: f32 = y[1000..47_000]
            .iter()
            .zip(&expect[1000..47_000])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err < 0.01, "{err}");
    }
}
