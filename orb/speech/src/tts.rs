//! The voice: a Piper model (VITS exported to ONNX) run by ONNX Runtime, with phonemes from
//! `espeak-ng`, as Piper itself makes them. espeak-ng runs as a program, not a linked library:
//! its licence stays out of this binary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::Session;
use ort::value::Tensor;
use serde::Deserialize;
use unicode_normalization::UnicodeNormalization;

use crate::SpeechError;

/// ONNX Runtime loaded from `library`: once per process (it allows one environment).
fn environment(library: &Path) -> Result<&'static Environment, SpeechError> {
    static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();
    ENVIRONMENT
        .get_or_init(|| {
            let builder = ort::init_from(library).map_err(|e| format!("{}: {e}", library.display()))?;
            builder.with_name("orb").build().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| SpeechError::load("ONNX Runtime", e))
}

#[derive(Debug, Deserialize)]
struct VoiceFile {
    audio: AudioSection,
    espeak: EspeakSection,
    #[serde(default)]
    inference: InferenceSection,
    phoneme_id_map: HashMap<String, Vec<i64>>,
    #[serde(default = "one")]
    num_speakers: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
struct AudioSection {
    sample_rate: u32,
}

#[derive(Debug, Deserialize)]
struct EspeakSection {
    voice: String,
}

#[derive(Debug, Deserialize)]
struct InferenceSection {
    noise_scale: f32,
    length_scale: f32,
    noise_w: f32,
}

impl Default for InferenceSection {
    fn default() -> Self {
        Self {
            noise_scale: 0.667,
            length_scale: 1.0,
            noise_w: 0.8,
        }
    }
}

pub struct Voice {
    session: Session,
    config: VoiceFile,
    espeak: PathBuf,
}

impl Voice {
    /// Loads `model` (`.onnx`; its settings are `<model>.json` beside it) with the ONNX Runtime
    /// shared library at `onnxruntime`. `espeak` is the `espeak-ng` program.
    pub fn load(model: &Path, onnxruntime: &Path, espeak: PathBuf, threads: usize) -> Result<Self, SpeechError> {
        crate::require_file("voice", model)?;
        let json_path = PathBuf::from(format!("{}.json", model.display()));
        crate::require_file("voice settings", &json_path)?;
        crate::require_file("ONNX Runtime library", onnxruntime)?;
        let json = std::fs::read(&json_path).map_err(|e| SpeechError::load("voice settings", e))?;
        let config: VoiceFile = serde_json::from_slice(&json).map_err(|e| SpeechError::load("voice settings", e))?;
        for symbol in ["^", "_", "$"] {
            if !config.phoneme_id_map.contains_key(symbol) {
                return Err(SpeechError::load(
                    "voice settings",
                    format!("phoneme_id_map has no {symbol:?}"),
                ));
            }
        }
        let env = environment(onnxruntime)?;
        let session = build_session(env, model, threads).map_err(|e| SpeechError::load("voice", e))?;
        Ok(Self {
            session,
            config,
            espeak,
        })
    }

    /// The rate of what [`Voice::speak`] returns.
    pub fn sample_rate(&self) -> u32 {
        self.config.audio.sample_rate
    }

    /// Speaks `text` (a sentence or a few): samples at [`Voice::sample_rate`], full scale ±1.
    pub fn speak(&mut self, text: &str) -> Result<Vec<f32>, SpeechError> {
        let mut audio = Vec::new();
        for phonemes in phonemize(&self.espeak, &self.config.espeak.voice, text)? {
            let ids = phoneme_ids(&phonemes, &self.config.phoneme_id_map);
            if ids.len() <= 3 {
                continue;
            }
            audio.extend(self.synthesize(ids)?);
        }
        Ok(audio)
    }

    fn synthesize(&mut self, ids: Vec<i64>) -> Result<Vec<f32>, SpeechError> {
        let infer = |e: ort::Error| SpeechError::Inference(format!("voice: {e}"));
        let n = ids.len();
        let i = &self.config.inference;
        let scales = vec![i.noise_scale, i.length_scale, i.noise_w];
        let mut inputs = ort::inputs![
            "input" => Tensor::from_array(([1usize, n], ids)).map_err(infer)?,
            "input_lengths" => Tensor::from_array(([1usize], vec![n as i64])).map_err(infer)?,
            "scales" => Tensor::from_array(([3usize], scales)).map_err(infer)?,
        ];
        if self.config.num_speakers > 1 {
            inputs.push((
                "sid".into(),
                Tensor::from_array(([1usize], vec![0i64])).map_err(infer)?.into(),
            ));
        }
        let outputs = self.session.run(inputs).map_err(infer)?;
        let (_, samples) = outputs[0].try_extract_tensor::<f32>().map_err(infer)?;
        // Piper normalises each sentence's peak; quiet voices would otherwise vary by sentence.
        let peak = samples.iter().fold(0.0f32, |m, s| m.max(s.abs())).max(0.01);
        let gain = 0.9 / peak;
        Ok(samples.iter().map(|s| s * gain).collect())
    }
}

fn build_session(env: &Environment, model: &Path, threads: usize) -> ort::Result<Session> {
    Session::builder(env)?
        .with_intra_threads(threads)?
        .commit_from_file(model)
}

/// Text → one phoneme list per sentence, as piper-phonemize makes them: espeak-ng's IPA per
/// clause, language-switch marks removed, the clause's punctuation put back, decomposed (NFD)
/// into one phoneme per code point.
pub fn phonemize(espeak: &Path, voice: &str, text: &str) -> Result<Vec<Vec<String>>, SpeechError> {
    let mut sentences = Vec::new();
    let mut current: Vec<String> = Vec::new();
    for (clause, terminator) in split_clauses(text) {
        let out = Command::new(espeak)
            .args(["-q", "--ipa", "-v", voice, "--"])
            .arg(&clause)
            .output()
            .map_err(|e| SpeechError::Inference(format!("{}: {e}", espeak.display())))?;
        if !out.status.success() {
            return Err(SpeechError::Inference(format!(
                "{} failed: {}",
                espeak.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let raw = String::from_utf8_lossy(&out.stdout);
        let mut phonemes = raw
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        while let (Some(a), Some(b)) = (phonemes.find('('), phonemes.find(')')) {
            if b <= a {
                break;
            }
            phonemes.replace_range(a..=b, "");
        }
        if let Some(t) = terminator {
            phonemes.push(t);
            if matches!(t, ',' | ':' | ';') {
                phonemes.push(' ');
            }
        }
        current.extend(phonemes.nfd().map(String::from));
        if matches!(terminator, Some('.' | '?' | '!')) {
            sentences.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        sentences.push(current);
    }
    Ok(sentences)
}

/// Clauses of `text` with the punctuation that ended each (`None` for a trailing one).
fn split_clauses(text: &str) -> Vec<(String, Option<char>)> {
    let mut clauses = Vec::new();
    let mut clause = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let at_break = chars.peek().is_none_or(|n| n.is_whitespace());
        if matches!(c, '.' | ',' | '!' | '?' | ':' | ';') && at_break {
            if !clause.trim().is_empty() {
                clauses.push((clause.trim().to_owned(), Some(c)));
            }
            clause.clear();
        } else {
            clause.push(c);
        }
    }
    if !clause.trim().is_empty() {
        clauses.push((clause.trim().to_owned(), None));
    }
    clauses
}

/// Piper's ids: `^ _ p1 _ p2 _ … pn _ $`; a phoneme the voice does not know is skipped.
fn phoneme_ids(phonemes: &[String], map: &HashMap<String, Vec<i64>>) -> Vec<i64> {
    let mut ids = Vec::with_capacity(2 * phonemes.len() + 3);
    ids.extend(&map["^"]);
    ids.extend(&map["_"]);
    for p in phonemes {
        if let Some(v) = map.get(p) {
            ids.extend(v);
            ids.extend(&map["_"]);
        }
    }
    ids.extend(&map["$"]);
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clauses_keep_their_punctuation_and_decimals_stay_whole() {
        assert_eq!(
            split_clauses("Hello, world! Pi is 3.14; ok"),
            vec![
                ("Hello".to_owned(), Some(',')),
                ("world".to_owned(), Some('!')),
                ("Pi is 3.14".to_owned(), Some(';')),
                ("ok".to_owned(), None),
            ]
        );
    }

    #[test]
    fn ids_interleave_the_pad_and_skip_unknown_phonemes() {
        let map: HashMap<String, Vec<i64>> = [("^", 1), ("_", 0), ("$", 2), ("a", 14), ("b", 15)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), vec![v]))
            .collect();
        let phonemes: Vec<String> = ["a", "?", "b"].into_iter().map(String::from).collect();
        assert_eq!(phoneme_ids(&phonemes, &map), vec![1, 0, 14, 0, 15, 0, 2]);
    }
}
