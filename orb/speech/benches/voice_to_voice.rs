//! Voice-to-voice latency of the local brain's pipeline on this machine: scripted questions
//! (speech by `espeak-ng`) go through the voice detector and turn tracker frame by frame, then
//! Whisper, the language model (streamed) and the voice, as the orb runs them. Measured from the
//! last voiced frame of the question to the first 20 ms of the answer being ready to send, with
//! its parts. Prints p50/p95 per part.
//!
//!   cargo bench -p orb-speech --bench voice_to_voice            (CPU, the small models)
//!   ORB_LOCAL_GPU_LAYERS=99 cargo bench -p orb-speech --features cuda --bench voice_to_voice
//!
//! Models: `scripts/install-models.sh` (or `ORB_MODELS_DIR`). `ORB_BENCH_RUNS` repeats the set.

use std::time::{Duration, Instant};

use orb_speech::asr::SpeechRecognizer;
use orb_speech::llm::{ChatMessage, Flow, LanguageModel, LlmOptions, Role};
use orb_speech::resample::{CALL_RATE, resample, to_i16};
use orb_speech::sentences::SentenceSplitter;
use orb_speech::tts::Voice;
use orb_speech::turns::{TurnConfig, TurnEvent, TurnTracker};
use orb_speech::vad::{VadConfig, VoiceActivity};
use orb_speech::wav::espeak;

const QUESTIONS: [&str; 6] = [
    "Hey orb, how can I stay focused at work?",
    "Orb, what is a good goal for this week?",
    "Hey orb, how do I give feedback to my manager?",
    "Orb, can you suggest a way to sleep better?",
    "Hey orb, what should I do when I feel stuck?",
    "Orb, how can I plan my day?",
];

#[derive(Default)]
struct Parts {
    turn_wait: Vec<Duration>,
    asr: Vec<Duration>,
    first_token: Vec<Duration>,
    first_sentence: Vec<Duration>,
    first_audio: Vec<Duration>,
    voice_to_voice: Vec<Duration>,
}

fn quantile(values: &[Duration], q: f64) -> Duration {
    let mut v = values.to_vec();
    v.sort();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let models = match orb_speech::models::installed() {
        Ok(m) => m,
        Err(missing) => {
            eprintln!("models missing ({}): run scripts/install-models.sh", missing.len());
            std::process::exit(2);
        }
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let gpu_layers = std::env::var("ORB_LOCAL_GPU_LAYERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let runs: usize = std::env::var("ORB_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let mut asr = SpeechRecognizer::load(&models.speech_recognition).expect("whisper");
    let llm = LanguageModel::load(
        &models.language_model,
        LlmOptions {
            threads: threads as i32,
            gpu_layers,
            ..LlmOptions::default()
        },
    )
    .expect("language model");
    let mut voice = Voice::load(&models.voice, &models.onnxruntime, "espeak-ng".into(), threads).expect("voice");
    let turn_config = TurnConfig::default();
    let instructions = "You are Orb, a supportive AI assistant in a coaching session between a coach and a client. \
        Answer in one or two short spoken sentences, without lists or formatting.";
    let mut parts = Parts::default();
    // One untimed pass warms caches (the first inference allocates).
    for run in 0..=runs {
        for question in QUESTIONS {
            let mut pcm = vec![0i16; 48 * 300];
            let speech = espeak(question, "en-us").expect("espeak-ng");
            // The question's last voiced frame: its last 20 ms above -50 dBFS.
            let last_voice_frame = speech
                .chunks(960)
                .rposition(|f| {
                    f.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / f.len() as f64 > 32768f64.powi(2) * 1e-5
                })
                .unwrap();
            let last_voice_ms = (300 / 20 + last_voice_frame as u64 + 1) * 20;
            pcm.extend(speech);
            pcm.extend(vec![0i16; 48 * 2000]);
            let mut vad = VoiceActivity::new(VadConfig::default());
            let mut turns = TurnTracker::new(turn_config);
            let mut audio = Vec::new();
            let mut ended_ms = None;
            for (i, frame) in pcm.chunks(960).enumerate() {
                let voiced = vad.push(frame);
                audio.extend_from_slice(vad.listened());
                if let Some(TurnEvent::Ended(_)) = turns.frame(i as u64 * 20, 20, voiced) {
                    ended_ms = Some((i as u64 + 1) * 20);
                    break;
                }
            }
            let ended_ms = ended_ms.expect("the question ends a turn");
            // Frames arrive in real time: the turn ends this long after the last voice.
            let turn_wait = Duration::from_millis(ended_ms - last_voice_ms);
            let t0 = Instant::now();
            let text = asr.transcribe(&audio).expect("transcribed");
            let asr_time = t0.elapsed();
            let messages = [
                ChatMessage::new(Role::System, instructions),
                ChatMessage::new(Role::User, format!("client: {text}")),
            ];
            let t1 = Instant::now();
            let mut first_token = None;
            let mut first_sentence = None;
            let mut splitter = SentenceSplitter::default();
            llm.generate(&messages, 96, |piece| {
                first_token.get_or_insert_with(|| t1.elapsed());
                if let Some(s) = splitter.push(piece).into_iter().next() {
                    first_sentence = Some((s, t1.elapsed()));
                    return Flow::Stop;
                }
                Flow::Continue
            })
            .expect("an answer");
            let (sentence, sentence_time) =
                first_sentence.unwrap_or_else(|| (splitter.finish().unwrap_or_default(), t1.elapsed()));
            let t2 = Instant::now();
            let samples = voice.speak(&sentence).expect("spoken");
            let first_frame = to_i16(&resample(&samples, voice.sample_rate(), CALL_RATE));
            assert!(first_frame.len() >= 960, "{sentence:?} made no audio");
            let audio_time = t2.elapsed();
            if run == 0 {
                continue;
            }
            parts.turn_wait.push(turn_wait);
            parts.asr.push(asr_time);
            parts.first_token.push(first_token.unwrap_or_default());
            parts.first_sentence.push(sentence_time);
            parts.first_audio.push(audio_time);
            parts
                .voice_to_voice
                .push(turn_wait + asr_time + sentence_time + audio_time);
            eprintln!("{question:?} -> {text:?} -> {sentence:?}");
        }
    }
    println!(
        "voice to voice, {} questions × {runs}, {threads} threads, gpu layers {gpu_layers}",
        QUESTIONS.len()
    );
    println!("| part | p50 | p95 |");
    println!("|---|---:|---:|");
    for (name, values) in [
        ("turn wait (last voice → end of turn)", &parts.turn_wait),
        ("speech recognition", &parts.asr),
        ("language model: first token", &parts.first_token),
        ("language model: first sentence", &parts.first_sentence),
        ("voice: first sentence's audio", &parts.first_audio),
        ("**voice to voice**", &parts.voice_to_voice),
    ] {
        println!(
            "| {name} | {} ms | {} ms |",
            quantile(values, 0.5).as_millis(),
            quantile(values, 0.95).as_millis()
        );
    }
}
