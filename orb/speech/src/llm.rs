//! The language model: a GGUF file run by llama.cpp, chat-templated by the model's own template,
//! streamed token by token so the first sentence can be spoken while the rest is written.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::OnceLock;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;

use crate::SpeechError;

/// One process-wide llama.cpp backend (it refuses a second initialisation).
fn backend() -> Result<&'static LlamaBackend, SpeechError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // llama.cpp and ggml log to stderr by default; the orb logs through tracing.
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default().with_logs_enabled(false));
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| SpeechError::load("language model backend", e))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct LlmOptions {
    /// Tokens of context per generation (prompt and answer).
    pub context_tokens: u32,
    pub threads: i32,
    /// Layers offloaded to the GPU (0 on a CPU build).
    pub gpu_layers: u32,
    /// 0 is greedy (deterministic, what the tests use).
    pub temperature: f32,
}

impl Default for LlmOptions {
    fn default() -> Self {
        Self {
            context_tokens: 2048,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get() as i32),
            gpu_layers: 0,
            temperature: 0.0,
        }
    }
}

/// Whether generation goes on after a piece of text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

pub struct LanguageModel {
    /// Held while a context is made: llama.cpp may adjust the model then, so two threads (an
    /// answer and a summary) must not make one at the same time.
    contexts: std::sync::Mutex<()>,
    model: LlamaModel,
    template: LlamaChatTemplate,
    options: LlmOptions,
}

impl LanguageModel {
    pub fn load(path: &Path, options: LlmOptions) -> Result<Self, SpeechError> {
        crate::require_file("language model", path)?;
        let backend = backend()?;
        let params = LlamaModelParams::default().with_n_gpu_layers(options.gpu_layers);
        let model =
            LlamaModel::load_from_file(backend, path, &params).map_err(|e| SpeechError::load("language model", e))?;
        // A GGUF without a template is read as ChatML, what the small instruction models use.
        let template = match model.chat_template(None) {
            Ok(t) => t,
            Err(_) => LlamaChatTemplate::new("chatml").map_err(|e| SpeechError::load("language model", e))?,
        };
        Ok(Self {
            contexts: std::sync::Mutex::new(()),
            model,
            template,
            options,
        })
    }

    /// Tokens `text` takes (for trimming the conversation to the context).
    pub fn count_tokens(&self, text: &str) -> usize {
        self.model.vocab().tokenize(text.as_bytes(), false, false).len()
    }

    pub fn context_tokens(&self) -> u32 {
        self.options.context_tokens
    }

    /// Answers `messages`, calling `on_text` with each piece of text as it is generated, until
    /// the model ends its turn, `max_tokens` are written or `on_text` says stop. Returns the text.
    pub fn generate(
        &self,
        messages: &[ChatMessage],
        max_tokens: usize,
        on_text: impl FnMut(&str) -> Flow,
    ) -> Result<String, SpeechError> {
        self.generate_constrained(messages, max_tokens, None, on_text)
    }

    /// [`LanguageModel::generate`], the output held to a GBNF `grammar` (root rule `root`) when
    /// one is given: a small model then cannot write anything but, say, the JSON asked for.
    pub fn generate_constrained(
        &self,
        messages: &[ChatMessage],
        max_tokens: usize,
        grammar: Option<&str>,
        mut on_text: impl FnMut(&str) -> Flow,
    ) -> Result<String, SpeechError> {
        let infer = |e: &dyn std::fmt::Display| SpeechError::Inference(format!("language model: {e}"));
        let chat = messages
            .iter()
            .map(|m| LlamaChatMessage::new(m.role.as_str().to_owned(), m.content.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| infer(&e))?;
        let prompt = self
            .model
            .apply_chat_template(&self.template, &chat, true)
            .map_err(|e| infer(&e))?;
        let vocab = self.model.vocab();
        let tokens = vocab.tokenize(prompt.as_bytes(), false, true);
        let n_ctx = self.options.context_tokens as usize;
        if tokens.len() + 1 >= n_ctx {
            return Err(SpeechError::Inference(format!(
                "language model: the prompt takes {} tokens of a {n_ctx}-token context",
                tokens.len()
            )));
        }
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(self.options.context_tokens))
            .with_n_batch(self.options.context_tokens)
            .with_n_threads(self.options.threads)
            .with_n_threads_batch(self.options.threads);
        let mut ctx = {
            let _making = self.contexts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            self.model.new_context(backend()?, params).map_err(|e| infer(&e))?
        };
        let mut batch = LlamaBatch::new(tokens.len().max(1), 1);
        let last = tokens.len() - 1;
        for (i, &t) in tokens.iter().enumerate() {
            batch.add(t, i as i32, &[0], i == last).map_err(|e| infer(&e))?;
        }
        ctx.decode(&mut batch).map_err(|e| infer(&e))?;
        let mut sampler = if let Some(grammar) = grammar {
            let constrained = LlamaSampler::grammar(&self.model, grammar, "root").map_err(|e| infer(&e))?;
            LlamaSampler::chain_simple([constrained, LlamaSampler::greedy()])
        } else if self.options.temperature > 0.0 {
            LlamaSampler::chain_simple([
                LlamaSampler::top_k(40),
                LlamaSampler::temp(self.options.temperature),
                LlamaSampler::dist(0x0ab),
            ])
        } else {
            LlamaSampler::greedy()
        };
        let budget = max_tokens.min(n_ctx - tokens.len() - 1);
        let mut pending = Vec::new();
        let mut text = String::new();
        for position in (tokens.len() as i32..).take(budget) {
            let token = sampler.sample(&ctx, batch.n_tokens() - 1);
            if vocab.is_eog(token) {
                break;
            }
            pending.extend(vocab.token_to_piece(token, false, None));
            // A token may end inside a UTF-8 character: hand on only whole characters.
            let valid = match std::str::from_utf8(&pending) {
                Ok(s) => s.len(),
                Err(e) => e.valid_up_to(),
            };
            if valid > 0 {
                let piece = std::str::from_utf8(&pending[..valid]).expect("valid prefix").to_owned();
                pending.drain(..valid);
                text.push_str(&piece);
                if on_text(&piece) == Flow::Stop {
                    break;
                }
            }
            batch.clear();
            batch.add(token, position, &[0], true).map_err(|e| infer(&e))?;
            ctx.decode(&mut batch).map_err(|e| infer(&e))?;
        }
        Ok(text)
    }
}
