//! Speech recognition: Whisper run by candle, from a CTranslate2 model directory (`model.bin`,
//! `vocabulary.txt`, optional `config.json`) — the format faster-whisper models ship in. The
//! weights are read straight from `model.bin` and renamed to candle's layout in memory, so no
//! conversion step and no Python are needed.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::whisper::{self, Config, audio, model::Whisper};

use crate::SpeechError;

/// Longest audio one call transcribes (Whisper's window); longer turns are cut by the caller.
pub const MAX_SECONDS: usize = whisper::CHUNK_LENGTH;
/// Silence put before and after what is transcribed.
const PAD_MS: usize = 300;

pub struct SpeechRecognizer {
    model: Whisper,
    config: Config,
    filters: Vec<f32>,
    vocabulary: Vec<Vec<u8>>,
    prompt: Vec<u32>,
    end_of_text: u32,
    /// Ids at and above this are special (task, language, timestamps).
    first_special: u32,
    suppressed: Vec<u32>,
    /// Tokens that are only a space.
    blanks: Vec<u32>,
    device: Device,
}

impl SpeechRecognizer {
    /// Loads the CTranslate2 Whisper model in `dir`.
    pub fn load(dir: &Path) -> Result<Self, SpeechError> {
        let model_bin = dir.join("model.bin");
        let vocabulary_txt = dir.join("vocabulary.txt");
        crate::require_file("speech recognition model", &model_bin)?;
        crate::require_file("speech recognition vocabulary", &vocabulary_txt)?;
        let load = |e: &dyn std::fmt::Display| SpeechError::load("speech recognition model", e);
        // The GPU when this is a CUDA build and one is there; the CPU otherwise.
        let device = Device::cuda_if_available(0).map_err(|e| load(&e))?;
        let bytes = std::fs::read(&model_bin).map_err(|e| load(&e))?;
        let tensors = ct2::read(&bytes, &device).map_err(|e| load(&e))?;
        let (weights, config) = ct2::to_candle(tensors).map_err(|e| load(&e))?;
        let vb = VarBuilder::from_tensors(weights, DType::F32, &device);
        let model = Whisper::load(&vb, config.clone()).map_err(|e| load(&e))?;

        let text = std::fs::read_to_string(&vocabulary_txt).map_err(|e| load(&e))?;
        let tokens: Vec<&str> = text.lines().collect();
        let id = |name: &str| tokens.iter().position(|t| *t == name).map(|i| i as u32);
        let need = |name: &str| id(name).ok_or_else(|| load(&format!("the vocabulary has no {name}")));
        let end_of_text = need(whisper::EOT_TOKEN)?;
        let start = need(whisper::SOT_TOKEN)?;
        let no_timestamps = need(whisper::NO_TIMESTAMPS_TOKEN)?;
        // A multilingual model is told the language and the task; an English one only not to
        // write timestamps.
        let prompt = match id("<|en|>") {
            Some(english) => vec![start, english, need(whisper::TRANSCRIBE_TOKEN)?, no_timestamps],
            None => vec![start, no_timestamps],
        };
        let suppressed = std::fs::read(dir.join("config.json"))
            .ok()
            .and_then(|json| serde_json::from_slice::<Ct2Config>(&json).ok())
            .map(|c| c.suppress_ids)
            .unwrap_or_default();
        Ok(Self {
            model,
            filters: mel_filters(config.num_mel_bins),
            config,
            vocabulary: tokens.iter().map(|t| gpt2_bytes(t)).collect(),
            prompt,
            end_of_text,
            first_special: end_of_text,
            suppressed,
            blanks: tokens
                .iter()
                .enumerate()
                .filter(|(_, t)| **t == "Ġ")
                .map(|(i, _)| i as u32)
                .collect(),
            device,
        })
    }

    /// Transcribes up to [`MAX_SECONDS`] of 16 kHz mono audio (full scale ±1); the text, trimmed.
    pub fn transcribe(&mut self, pcm: &[f32]) -> Result<String, SpeechError> {
        let infer = |e: candle_core::Error| SpeechError::Inference(format!("speech recognition: {e}"));
        // Whisper hears speech that starts at the first sample, or that is quiet, far worse
        // than the same words with a little silence around them at a normal level.
        let pad = PAD_MS * whisper::SAMPLE_RATE / 1000;
        let speech = &pcm[..pcm.len().min(MAX_SECONDS * whisper::SAMPLE_RATE - 2 * pad)];
        let peak = speech.iter().fold(0.0f32, |m, s| m.max(s.abs()));
        let gain = if peak > 1e-3 { 0.9 / peak } else { 1.0 };
        let mut padded = vec![0.0f32; pad];
        padded.extend(speech.iter().map(|s| s * gain));
        padded.extend(std::iter::repeat_n(0.0, pad));
        let mel = audio::pcm_to_mel(&self.config, &padded, &self.filters);
        let frames = mel.len() / self.config.num_mel_bins;
        let mel = Tensor::from_vec(mel, (1, self.config.num_mel_bins, frames), &self.device).map_err(infer)?;
        // The encoder runs on the audio there is, not on a 30-second window of mostly padding
        // (whisper.cpp's "audio context" trick): several times faster for a spoken turn, with
        // the same words on the tests' speech. Frames: 10 ms each, an even number (the
        // encoder's second convolution halves them).
        let heard = (padded.len() / whisper::HOP_LENGTH + 1).next_multiple_of(2);
        let mel = mel
            .narrow(2, 0, frames.min(heard).min(whisper::N_FRAMES))
            .map_err(infer)?;
        let features = self.model.encoder.forward(&mel, true).map_err(infer)?;
        let mut tokens = self.prompt.clone();
        let mut text = Vec::new();
        let budget = self.config.max_target_positions / 2;
        for step in 0..budget {
            let input = Tensor::new(tokens.as_slice(), &self.device)
                .and_then(|t| t.unsqueeze(0))
                .map_err(infer)?;
            let hidden = self
                .model
                .decoder
                .forward(&input, &features, step == 0)
                .map_err(infer)?;
            let (_, len, _) = hidden.dims3().map_err(infer)?;
            let logits: Vec<f32> = hidden
                .i((..1, len - 1..))
                .and_then(|last| self.model.decoder.final_linear(&last))
                .and_then(|l| l.i(0))
                .and_then(|l| l.i(0))
                .and_then(|l| l.to_vec1())
                .map_err(infer)?;
            let next = self.pick(&logits, step == 0);
            if next == self.end_of_text {
                break;
            }
            tokens.push(next);
            text.extend_from_slice(&self.vocabulary[next as usize]);
        }
        Ok(String::from_utf8_lossy(&text).trim().to_owned())
    }

    /// Greedy choice among text tokens and the end of text. As Whisper's own decoder does, the
    /// first token may be neither the end nor a blank: the caller only transcribes speech.
    fn pick(&self, logits: &[f32], first: bool) -> u32 {
        logits
            .iter()
            .enumerate()
            .filter(|&(id, _)| {
                let id = id as u32;
                let allowed = id < self.first_special || (id == self.end_of_text && !first);
                allowed && !self.suppressed.contains(&id) && !(first && self.blanks.contains(&id))
            })
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(self.end_of_text, |(id, _)| id as u32)
    }
}

#[derive(serde::Deserialize)]
struct Ct2Config {
    #[serde(default)]
    suppress_ids: Vec<u32>,
}

/// GPT-2's byte-level BPE writes each byte as a printable character; this undoes it. Special
/// tokens (`<|…|>`) are never text.
fn gpt2_bytes(token: &str) -> Vec<u8> {
    if token.starts_with("<|") && token.ends_with("|>") {
        return Vec::new();
    }
    token
        .chars()
        .filter_map(|c| {
            let c = c as u32;
            let printable =
                |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
            if printable(c) {
                return Some(c as u8);
            }
            // The other bytes were mapped, in order, to 256, 257, …
            let n = c.checked_sub(256)?;
            (0u32..256).filter(|&b| !printable(b)).nth(n as usize).map(|b| b as u8)
        })
        .collect()
}

/// Whisper's mel filterbank (librosa's Slaney-scale, Slaney-normalised filters for a 400-point
/// FFT at 16 kHz), row-major `[n_mels][201]`: computed, so no asset file is needed.
pub fn mel_filters(n_mels: usize) -> Vec<f32> {
    let (rate, n_fft) = (whisper::SAMPLE_RATE as f64, whisper::N_FFT);
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let log_step = 6.4f64.ln() / 27.0;
    let hz_to_mel = |f: f64| {
        if f < min_log_hz {
            f / f_sp
        } else {
            min_log_mel + (f / min_log_hz).ln() / log_step
        }
    };
    let mel_to_hz = |m: f64| {
        if m < min_log_mel {
            f_sp * m
        } else {
            min_log_hz * (log_step * (m - min_log_mel)).exp()
        }
    };
    let bins = n_fft / 2 + 1;
    let (low, high) = (hz_to_mel(0.0), hz_to_mel(rate / 2.0));
    let edges: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(low + (high - low) * i as f64 / (n_mels + 1) as f64))
        .collect();
    let mut weights = vec![0f32; n_mels * bins];
    for i in 0..n_mels {
        let norm = 2.0 / (edges[i + 2] - edges[i]);
        for k in 0..bins {
            let f = k as f64 * rate / n_fft as f64;
            let rising = (f - edges[i]) / (edges[i + 1] - edges[i]);
            let falling = (edges[i + 2] - f) / (edges[i + 2] - edges[i + 1]);
            weights[i * bins + k] = (rising.min(falling).max(0.0) * norm) as f32;
        }
    }
    weights
}

/// CTranslate2's `model.bin`: a header, then named arrays (little-endian, unaligned), then
/// aliases. Layout of binary version ≥ 4, what CTranslate2 has written since 2.0.
mod ct2 {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    pub enum Ct2Error {
        #[error("model.bin ends early")]
        Truncated,
        #[error("model.bin is CTranslate2 binary version {0}; versions 4 to 6 are read")]
        Version(u32),
        #[error("model.bin holds a {0}, not a Whisper model")]
        Spec(String),
        #[error("model.bin: {0}")]
        Layout(String),
        #[error(transparent)]
        Tensor(#[from] candle_core::Error),
    }

    struct Reader<'a> {
        bytes: &'a [u8],
        at: usize,
    }

    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Result<&'a [u8], Ct2Error> {
            let end = self
                .at
                .checked_add(n)
                .filter(|&e| e <= self.bytes.len())
                .ok_or(Ct2Error::Truncated)?;
            let out = &self.bytes[self.at..end];
            self.at = end;
            Ok(out)
        }
        fn u8(&mut self) -> Result<u8, Ct2Error> {
            Ok(self.take(1)?[0])
        }
        fn u16(&mut self) -> Result<u16, Ct2Error> {
            Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
        }
        fn u32(&mut self) -> Result<u32, Ct2Error> {
            Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
        }
        /// A length-prefixed string with its trailing NUL.
        fn string(&mut self) -> Result<String, Ct2Error> {
            let n = self.u16()? as usize;
            let raw = self.take(n)?;
            Ok(String::from_utf8_lossy(raw.strip_suffix(&[0]).unwrap_or(raw)).into_owned())
        }
    }

    /// Every array of `bytes`, by CTranslate2 name (aliases resolved to copies).
    pub fn read(bytes: &[u8], device: &Device) -> Result<HashMap<String, Tensor>, Ct2Error> {
        let mut r = Reader { bytes, at: 0 };
        let version = r.u32()?;
        if !(4..=6).contains(&version) {
            return Err(Ct2Error::Version(version));
        }
        let spec = r.string()?;
        if !spec.starts_with("Whisper") {
            return Err(Ct2Error::Spec(spec));
        }
        let _revision = r.u32()?;
        let count = r.u32()?;
        let mut arrays = HashMap::with_capacity(count as usize);
        for _ in 0..count {
            let name = r.string()?;
            let rank = r.u8()? as usize;
            let dims = (0..rank)
                .map(|_| r.u32().map(|d| d as usize))
                .collect::<Result<Vec<_>, _>>()?;
            let dtype = match r.u8()? {
                0 => DType::F32,
                1 => DType::I64, // int8: read below as scalars only
                2 | 3 => DType::I64,
                4 => DType::F16,
                5 => DType::BF16,
                other => return Err(Ct2Error::Layout(format!("{name}: unknown type {other}"))),
            };
            let size = r.u32()? as usize;
            let raw = r.take(size)?;
            if rank == 0 || !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
                // Scalars and integer settings (head counts, flags) are not weights.
                continue;
            }
            let tensor = Tensor::from_raw_buffer(raw, dtype, &dims, device)?;
            arrays.insert(name, tensor);
        }
        let aliases = r.u32()?;
        for _ in 0..aliases {
            let alias = r.string()?;
            let target = r.string()?;
            if let Some(t) = arrays.get(&target).cloned() {
                arrays.insert(alias, t);
            }
        }
        Ok(arrays)
    }

    /// Renames CTranslate2's Whisper arrays to candle's (splitting its stacked projections)
    /// and reads the model's shape off them.
    pub fn to_candle(mut arrays: HashMap<String, Tensor>) -> Result<(HashMap<String, Tensor>, Config), Ct2Error> {
        let mut take = |name: &str| {
            arrays
                .remove(name)
                .ok_or_else(|| Ct2Error::Layout(format!("no {name}")))
        };
        let mut out = HashMap::new();
        let mut put = |k: String, v: Tensor| {
            out.insert(k, v);
        };
        let norm = |take: &mut dyn FnMut(&str) -> Result<Tensor, Ct2Error>,
                    from: &str|
         -> Result<(Tensor, Tensor), Ct2Error> {
            Ok((take(&format!("{from}/gamma"))?, take(&format!("{from}/beta"))?))
        };
        let embeddings = take("decoder/embeddings/weight")?;
        let (vocab_size, d_model) = embeddings.dims2()?;
        put("model.decoder.embed_tokens.weight".into(), embeddings);
        let conv1 = take("encoder/conv1/weight")?;
        let num_mel_bins = conv1.dims3()?.1;
        put("model.encoder.conv1.weight".into(), conv1);
        put("model.encoder.conv1.bias".into(), take("encoder/conv1/bias")?);
        put("model.encoder.conv2.weight".into(), take("encoder/conv2/weight")?);
        put("model.encoder.conv2.bias".into(), take("encoder/conv2/bias")?);
        let encoder_positions = take("encoder/position_encodings/encodings")?;
        let max_source_positions = encoder_positions.dims2()?.0;
        put("model.encoder.embed_positions.weight".into(), encoder_positions);
        let decoder_positions = take("decoder/position_encodings/encodings")?;
        let max_target_positions = decoder_positions.dims2()?.0;
        put("model.decoder.embed_positions.weight".into(), decoder_positions);
        for side in ["encoder", "decoder"] {
            let (w, b) = norm(&mut take, &format!("{side}/layer_norm"))?;
            put(format!("model.{side}.layer_norm.weight"), w);
            put(format!("model.{side}.layer_norm.bias"), b);
        }
        let mut counts = [0usize; 2];
        for (s, side) in ["encoder", "decoder"].into_iter().enumerate() {
            for i in 0.. {
                let from = format!("{side}/layer_{i}");
                let Ok(qkv) = take(&format!("{from}/self_attention/linear_0/weight")) else {
                    break;
                };
                counts[s] += 1;
                let to = format!("model.{side}.layers.{i}");
                let qkv_bias = take(&format!("{from}/self_attention/linear_0/bias"))?;
                let d = qkv.dims2()?.0 / 3;
                for (j, proj) in ["q_proj", "k_proj", "v_proj"].into_iter().enumerate() {
                    put(format!("{to}.self_attn.{proj}.weight"), qkv.narrow(0, j * d, d)?);
                    if proj != "k_proj" {
                        put(format!("{to}.self_attn.{proj}.bias"), qkv_bias.narrow(0, j * d, d)?);
                    }
                }
                put(
                    format!("{to}.self_attn.out_proj.weight"),
                    take(&format!("{from}/self_attention/linear_1/weight"))?,
                );
                put(
                    format!("{to}.self_attn.out_proj.bias"),
                    take(&format!("{from}/self_attention/linear_1/bias"))?,
                );
                let (w, b) = norm(&mut take, &format!("{from}/self_attention/layer_norm"))?;
                put(format!("{to}.self_attn_layer_norm.weight"), w);
                put(format!("{to}.self_attn_layer_norm.bias"), b);
                if side == "decoder" {
                    put(
                        format!("{to}.encoder_attn.q_proj.weight"),
                        take(&format!("{from}/attention/linear_0/weight"))?,
                    );
                    put(
                        format!("{to}.encoder_attn.q_proj.bias"),
                        take(&format!("{from}/attention/linear_0/bias"))?,
                    );
                    let kv = take(&format!("{from}/attention/linear_1/weight"))?;
                    let kv_bias = take(&format!("{from}/attention/linear_1/bias"))?;
                    let d = kv.dims2()?.0 / 2;
                    put(format!("{to}.encoder_attn.k_proj.weight"), kv.narrow(0, 0, d)?);
                    put(format!("{to}.encoder_attn.v_proj.weight"), kv.narrow(0, d, d)?);
                    put(format!("{to}.encoder_attn.v_proj.bias"), kv_bias.narrow(0, d, d)?);
                    put(
                        format!("{to}.encoder_attn.out_proj.weight"),
                        take(&format!("{from}/attention/linear_2/weight"))?,
                    );
                    put(
                        format!("{to}.encoder_attn.out_proj.bias"),
                        take(&format!("{from}/attention/linear_2/bias"))?,
                    );
                    let (w, b) = norm(&mut take, &format!("{from}/attention/layer_norm"))?;
                    put(format!("{to}.encoder_attn_layer_norm.weight"), w);
                    put(format!("{to}.encoder_attn_layer_norm.bias"), b);
                }
                for (ct2, candle) in [("linear_0", "fc1"), ("linear_1", "fc2")] {
                    put(
                        format!("{to}.{candle}.weight"),
                        take(&format!("{from}/ffn/{ct2}/weight"))?,
                    );
                    put(format!("{to}.{candle}.bias"), take(&format!("{from}/ffn/{ct2}/bias"))?);
                }
                let (w, b) = norm(&mut take, &format!("{from}/ffn/layer_norm"))?;
                put(format!("{to}.final_layer_norm.weight"), w);
                put(format!("{to}.final_layer_norm.bias"), b);
            }
        }
        // Heads are not in the arrays: d_model / 64 for every Whisper size.
        let heads = d_model / 64;
        let config = Config {
            num_mel_bins,
            max_source_positions,
            d_model,
            encoder_attention_heads: heads,
            encoder_layers: counts[0],
            vocab_size,
            max_target_positions,
            decoder_attention_heads: heads,
            decoder_layers: counts[1],
            suppress_tokens: Vec::new(),
        };
        Ok((out, config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_tokens_decode_to_their_bytes() {
        assert_eq!(gpt2_bytes("Ġhello"), b" hello");
        assert_eq!(gpt2_bytes("Ċ"), b"\n");
        assert_eq!(gpt2_bytes("<|en|>"), b"");
        // "é" is two bytes, each written as its own character.
        assert_eq!(String::from_utf8(gpt2_bytes("Ã©")).unwrap(), "é");
    }

    #[test]
    fn the_mel_filterbank_has_whisper_s_shape() {
        let f = mel_filters(80);
        assert_eq!(f.len(), 80 * 201);
        // Each filter is a triangle: non-zero on a contiguous run of bins.
        for row in f.chunks(201) {
            let nz: Vec<usize> = row
                .iter()
                .enumerate()
                .filter(|(_, w)| **w > 0.0)
                .map(|(i, _)| i)
                .collect();
            assert!(!nz.is_empty());
            assert_eq!(nz.last().unwrap() - nz[0] + 1, nz.len());
        }
        // Whisper's own mel_80 asset has 0.02486259 there.
        assert!((f[1] - 0.024_862_59).abs() < 1e-6, "{}", f[1]);
    }

    #[test]
    fn a_file_that_is_not_a_model_is_refused_clearly() {
        let err = ct2::read(&[6, 0, 0, 0, 3, 0], &Device::Cpu).unwrap_err();
        assert_eq!(err.to_string(), "model.bin ends early");
        let err = ct2::read(&[1, 0, 0, 0], &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("version 1"), "{err}");
    }
}
