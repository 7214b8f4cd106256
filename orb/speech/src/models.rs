//! Where the local brain's model files are. One directory holds them under fixed names (what
//! `scripts/install-models.sh` writes and what the chart mounts); each can also be named alone.

use std::path::{Path, PathBuf};

use crate::SpeechError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFiles {
    /// A CTranslate2 Whisper directory (`model.bin`, `vocabulary.txt`, `config.json`).
    pub speech_recognition: PathBuf,
    /// A GGUF language model with a chat template.
    pub language_model: PathBuf,
    /// A Piper voice (`.onnx`, with its `.onnx.json` beside it).
    pub voice: PathBuf,
    /// ONNX Runtime's shared library, which runs the voice.
    pub onnxruntime: PathBuf,
}

impl ModelFiles {
    /// The files under `dir` by their fixed names.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            speech_recognition: dir.join("whisper"),
            language_model: dir.join("llm.gguf"),
            voice: dir.join("voice.onnx"),
            onnxruntime: dir.join("libonnxruntime.so"),
        }
    }

    /// Every file that is missing, named together: a pod with a half-filled volume says all of
    /// what it lacks at once.
    pub fn check(&self) -> Result<(), Vec<SpeechError>> {
        let voice_json = PathBuf::from(format!("{}.json", self.voice.display()));
        let required: [(&'static str, PathBuf); 6] = [
            ("speech recognition model", self.speech_recognition.join("model.bin")),
            (
                "speech recognition vocabulary",
                self.speech_recognition.join("vocabulary.txt"),
            ),
            ("language model", self.language_model.clone()),
            ("voice", self.voice.clone()),
            ("voice settings", voice_json),
            ("ONNX Runtime library", self.onnxruntime.clone()),
        ];
        let missing: Vec<SpeechError> = required
            .into_iter()
            .filter_map(|(what, path)| crate::require_file(what, &path).err())
            .collect();
        if missing.is_empty() { Ok(()) } else { Err(missing) }
    }
}

/// The models `scripts/install-models.sh` put in this checkout (`target/models`), or in
/// `ORB_MODELS_DIR`: what the tests, the benchmark and dev mode use.
pub fn installed() -> Result<ModelFiles, Vec<SpeechError>> {
    let dir = std::env::var_os("ORB_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/models"));
    let files = ModelFiles::in_dir(&dir);
    files.check().map(|()| files)
}

/// [`installed`] for a test: `None` (with a message) when they are not installed, so a checkout
/// without them still runs the rest; a failure under CI, where install-deps puts them.
pub fn installed_for_tests() -> Option<ModelFiles> {
    match installed() {
        Ok(files) => Some(files),
        Err(missing) if std::env::var_os("CI").is_some() => panic!("models missing in CI: {missing:?}"),
        Err(missing) => {
            eprintln!(
                "skipped: run scripts/install-models.sh ({} files missing)",
                missing.len()
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_directory_names_every_missing_file() {
        let dir = std::env::temp_dir().join(format!("orb-models-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = ModelFiles::in_dir(&dir).check().unwrap_err();
        let text: Vec<String> = missing.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 6, "{text:?}");
        assert!(
            text[0].starts_with("speech recognition model not found at "),
            "{}",
            text[0]
        );
        assert!(text[0].contains("whisper/model.bin"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
