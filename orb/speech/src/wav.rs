//! Speech files: WAV (PCM16 mono) read and resampled to the call's 48 kHz, and sentences spoken
//! by `espeak-ng` (which must be installed) — what the tests, the benchmarks and scripted humans
//! say to an orb.

use std::process::Command;

use crate::resample::{CALL_RATE, resample, to_i16};

/// Why a WAV cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WavError {
    #[error("not a RIFF/WAVE file")]
    NotWave,
    #[error("only 16-bit PCM is supported (format {format}, {bits} bits)")]
    Format { format: u16, bits: u16 },
    #[error("only mono is supported ({0} channels)")]
    Channels(u16),
    #[error("no data chunk")]
    NoData,
    #[error("espeak-ng: {0}")]
    Espeak(String),
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(i..i + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?))
}

/// The samples of a mono PCM16 WAV, at 48 kHz. A data chunk whose size says "streamed" (larger
/// than the file, as `espeak-ng --stdout` writes it) runs to the end of the file.
pub fn wav_to_48k(bytes: &[u8]) -> Result<Vec<i16>, WavError> {
    if bytes.get(0..4) != Some(b"RIFF") || bytes.get(8..12) != Some(b"WAVE") {
        return Err(WavError::NotWave);
    }
    let (mut i, mut rate) = (12, None);
    while let (Some(id), Some(size)) = (bytes.get(i..i + 4), u32_at(bytes, i + 4)) {
        let body = i + 8;
        match id {
            b"fmt " => {
                let format = u16_at(bytes, body).ok_or(WavError::NotWave)?;
                let channels = u16_at(bytes, body + 2).ok_or(WavError::NotWave)?;
                let bits = u16_at(bytes, body + 14).ok_or(WavError::NotWave)?;
                if format != 1 || bits != 16 {
                    return Err(WavError::Format { format, bits });
                }
                if channels != 1 {
                    return Err(WavError::Channels(channels));
                }
                rate = u32_at(bytes, body + 4);
            }
            b"data" => {
                let rate = rate.ok_or(WavError::NotWave)?;
                let end = body.saturating_add(size as usize).min(bytes.len());
                let samples: Vec<i16> = bytes[body..end]
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
                    .collect();
                let samples: Vec<f32> = samples.iter().map(|&s| f32::from(s) / 32768.0).collect();
                return Ok(to_i16(&resample(&samples, rate, CALL_RATE)));
            }
            _ => {}
        }
        i = body + size as usize + (size as usize & 1);
    }
    Err(WavError::NoData)
}

/// A mono PCM16 WAV of `samples` at `rate` (what a browser's fake microphone plays).
pub fn to_wav(samples: &[i16], rate: u32) -> Vec<u8> {
    let data = 2 * samples.len() as u32;
    let mut b = b"RIFF".to_vec();
    b.extend((36 + data).to_le_bytes());
    b.extend(b"WAVEfmt ");
    b.extend(16u32.to_le_bytes());
    b.extend(1u16.to_le_bytes()); // PCM
    b.extend(1u16.to_le_bytes()); // mono
    b.extend(rate.to_le_bytes());
    b.extend((rate * 2).to_le_bytes());
    b.extend(2u16.to_le_bytes());
    b.extend(16u16.to_le_bytes());
    b.extend(b"data");
    b.extend(data.to_le_bytes());
    b.extend(samples.iter().flat_map(|s| s.to_le_bytes()));
    b
}

/// `text` spoken by `espeak-ng` in `voice` (say `en-us`, `en-gb`), at 48 kHz.
pub fn espeak(text: &str, voice: &str) -> Result<Vec<i16>, WavError> {
    let out = Command::new("espeak-ng")
        .args(["--stdout", "-v", voice, text])
        .output()
        .map_err(|e| WavError::Espeak(e.to_string()))?;
    if !out.status.success() {
        return Err(WavError::Espeak(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    wav_to_48k(&out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WAV whose data chunk claims `data_size` bytes (a streamed WAV claims more than it has).
    fn wav(rate: u32, samples: &[i16], data_size: u32) -> Vec<u8> {
        let mut b = to_wav(samples, rate);
        b[40..44].copy_from_slice(&data_size.to_le_bytes());
        b
    }

    #[test]
    fn wav_is_read_and_resampled_to_48k() {
        let samples = vec![1000i16; 2400];
        assert_eq!(wav_to_48k(&wav(48_000, &samples, 4800)).unwrap(), samples);
        // A streamed WAV (size unknown) at 24 kHz: twice as many samples.
        let up = wav_to_48k(&wav(24_000, &samples, 0x7fff_f000)).unwrap();
        assert_eq!(up.len(), 4800);
        assert!(
            up[100..4700].iter().all(|&s| (s - 1000).abs() <= 3),
            "{:?}",
            &up[100..110]
        );
        assert!(matches!(wav_to_48k(b"RIFF0000WAVX"), Err(WavError::NotWave)));
    }
}
