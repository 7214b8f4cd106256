//! The local brain's parts on the real small models (installed by `scripts/install-models.sh`
//! into `target/models`, or `ORB_MODELS_DIR`): speech in, text out, text in, speech out, and the
//! voice detector on real speech and real noise. Skipped with a message when the models are not
//! installed, except in CI.

use std::process::Command;

use orb_speech::asr::SpeechRecognizer;
use orb_speech::llm::{ChatMessage, Flow, LanguageModel, LlmOptions, Role};
use orb_speech::resample::{CALL_RATE, Decimator, LISTEN_RATE, resample};
use orb_speech::tts::Voice;
use orb_speech::turns::{TurnConfig, TurnEvent, TurnTracker};
use orb_speech::vad::{VadConfig, VoiceActivity};
use orb_speech::wav::{espeak, wav_to_48k};

fn listen(pcm48: &[i16]) -> Vec<f32> {
    let mut d = Decimator::new();
    let mut out = Vec::new();
    d.push(pcm48, &mut out);
    out
}

fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

/// Voiced or not per 20 ms frame of `pcm` (48 kHz), as the orb's tracks are heard.
fn voiced_frames(pcm: &[i16]) -> Vec<bool> {
    let mut vad = VoiceActivity::new(VadConfig::default());
    pcm.chunks(960).map(|f| vad.push(f)).collect()
}

fn turns(voiced: &[bool]) -> Vec<TurnEvent> {
    let mut t = TurnTracker::new(TurnConfig::default());
    let mut events: Vec<TurnEvent> = voiced
        .iter()
        .enumerate()
        .filter_map(|(i, &v)| t.frame(i as u64 * 20, 20, v))
        .collect();
    // Two seconds of silence after the recording ends.
    let n = voiced.len() as u64;
    events.extend((0..100).filter_map(|i| t.frame((n + i) * 20, 20, false)));
    events
}

fn silence(ms: usize) -> Vec<i16> {
    vec![0; 48 * ms]
}

/// `sox` noise of `kind` (white, pink, brown) at 48 kHz, `seconds` long, scaled by `volume`: the
/// same samples on every run (`-R` seeds the generator), so the test checks fixed realizations.
/// On fresh ones the detector is not perfect: docs/local-brain.md gives the measured rates.
fn noise(kind: &str, seconds: u32, volume: f32) -> Vec<i16> {
    let out = Command::new("sox")
        .args([
            "-R",
            "-n",
            "-r",
            "48000",
            "-b",
            "16",
            "-c",
            "1",
            "-t",
            "wav",
            "-",
            "synth",
            &seconds.to_string(),
            kind,
            "vol",
            &volume.to_string(),
        ])
        .output()
        .expect("sox (scripts/install-deps.sh installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wav_to_48k(&out.stdout).unwrap()
}

#[test]
fn speech_opens_one_turn_and_a_pause_inside_a_sentence_does_not_end_it() {
    let mut pcm = silence(500);
    pcm.extend(espeak("I think my goal for this week", "en-us").unwrap());
    pcm.extend(silence(350));
    pcm.extend(espeak("is to finish the report early.", "en-us").unwrap());
    pcm.extend(silence(500));
    let events = turns(&voiced_frames(&pcm));
    let ended: Vec<_> = events.iter().filter(|e| matches!(e, TurnEvent::Ended(_))).collect();
    assert_eq!(ended.len(), 1, "{events:?}");
    let TurnEvent::Ended(turn) = ended[0] else {
        unreachable!()
    };
    // The turn covers both halves: it starts near 0.5 s and ends near the end of the speech.
    assert!((400..800).contains(&turn.start_ms), "{turn:?}");
    assert!(turn.end_ms + 600 > (pcm.len() / 48) as u64 - 500, "{turn:?}");
}

fn dbfs(pcm: &[i16]) -> f32 {
    let ms = pcm.iter().map(|&s| (f32::from(s) / 32768.0).powi(2)).sum::<f32>() / pcm.len() as f32;
    10.0 * ms.log10()
}

/// Noise up to as loud as the speech the tests use (espeak-ng's is about -20 dBFS RMS while it
/// speaks). Louder noise than the voice itself (clipping rumble near full scale) does read as
/// voice to the detector: the documented limit.
#[test]
fn noise_and_tones_never_open_a_turn() {
    for kind in ["whitenoise", "pinknoise", "brownnoise"] {
        for volume in [0.05, 0.2] {
            let pcm = noise(kind, 5, volume);
            let events = turns(&voiced_frames(&pcm));
            assert!(events.is_empty(), "{kind} at {:.1} dBFS: {events:?}", dbfs(&pcm));
        }
    }
    // A steady hum (a fan's motor, a mains buzz): 100 Hz with harmonics.
    let hum: Vec<i16> = (0..48_000 * 5)
        .map(|i| {
            let t = i as f32 / 48_000.0;
            let x =
                (2.0 * std::f32::consts::PI * 100.0 * t).sin() + 0.5 * (2.0 * std::f32::consts::PI * 200.0 * t).sin();
            (x * 6000.0) as i16
        })
        .collect();
    assert!(turns(&voiced_frames(&hum)).is_empty());
}

#[test]
fn whisper_transcribes_espeak_speech() {
    let Some(files) = orb_speech::models::installed_for_tests() else {
        return;
    };
    let mut asr = SpeechRecognizer::load(&files.speech_recognition).unwrap();
    let pcm = espeak("Hey orb, how can I stay focused at work?", "en-us").unwrap();
    let text = asr.transcribe(&listen(&pcm)).unwrap();
    let w = words(&text);
    for expected in ["orb", "stay", "focused"] {
        assert!(w.iter().any(|x| x == expected), "{text:?}");
    }
}

#[test]
fn the_voice_speaks_what_whisper_then_reads_back() {
    let Some(files) = orb_speech::models::installed_for_tests() else {
        return;
    };
    let mut voice = Voice::load(&files.voice, &files.onnxruntime, "espeak-ng".into(), 2).unwrap();
    let sentence = "The quick brown fox jumps over the lazy dog.";
    let spoken = voice.speak(sentence).unwrap();
    assert!(
        spoken.len() > voice.sample_rate() as usize,
        "at least a second of speech"
    );
    let heard = resample(&spoken, voice.sample_rate(), LISTEN_RATE);
    let mut asr = SpeechRecognizer::load(&files.speech_recognition).unwrap();
    let text = asr.transcribe(&heard).unwrap();
    // The voice adds random variation (Piper's noise scales), so Whisper tiny may mishear a
    // word ("quit brown fox"): most of them come back.
    let w = words(&text);
    let heard = ["quick", "brown", "fox", "lazy", "dog"]
        .iter()
        .filter(|e| w.iter().any(|x| x == *e))
        .count();
    assert!(heard >= 4, "{text:?}");
    // And at the call's rate it is a voice to the voice detector.
    let call = orb_speech::resample::to_i16(&resample(&spoken, voice.sample_rate(), CALL_RATE));
    assert!(voiced_frames(&call).iter().filter(|v| **v).count() > 25);
}

#[test]
fn the_language_model_answers_in_streamed_pieces_and_can_be_stopped() {
    let Some(files) = orb_speech::models::installed_for_tests() else {
        return;
    };
    let llm = LanguageModel::load(&files.language_model, LlmOptions::default()).unwrap();
    let messages = [
        ChatMessage::new(
            Role::System,
            "You are a concise coaching assistant. Answer in one sentence.",
        ),
        ChatMessage::new(Role::User, "What is one way to stay focused at work?"),
    ];
    let mut pieces = 0;
    let answer = llm
        .generate(&messages, 64, |_| {
            pieces += 1;
            Flow::Continue
        })
        .unwrap();
    assert!(words(&answer).len() >= 3, "{answer:?}");
    assert!(pieces > 1);
    // Stopping after the first piece stops the generation there.
    let mut seen = 0;
    let stopped = llm
        .generate(&messages, 64, |_| {
            seen += 1;
            Flow::Stop
        })
        .unwrap();
    assert_eq!(seen, 1);
    assert!(stopped.len() < answer.len());
    // Greedy decoding is repeatable.
    assert_eq!(llm.generate(&messages, 64, |_| Flow::Continue).unwrap(), answer);
}

#[test]
fn a_missing_model_is_named_at_load() {
    let err = match LanguageModel::load(std::path::Path::new("/nonexistent/llm.gguf"), LlmOptions::default()) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("loaded a missing file"),
    };
    assert_eq!(
        err,
        "language model not found at /nonexistent/llm.gguf (see --models-dir and the per-model flags)"
    );
}
