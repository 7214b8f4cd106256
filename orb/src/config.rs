//! Command line and environment configuration. Every flag has an environment equivalent so the
//! operator can configure a pod through env alone; the seed's flag names are kept.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use orb_api::assignment::Assignment;
use orb_api::cidr::CidrList;
use orb_api::duration::parse_duration;
use orb_api::ice::IceTransportPolicy;
use thiserror::Error;

use crate::brain::SessionContext;
use crate::media::IceServer;
use crate::proxy::{ProxyConfigError, ProxyEnv, ProxySettings};

/// Which brain drives the orb's speech.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BrainKind {
    /// Deterministic tone greeting and echo, for tests.
    Test,
    /// A speech-to-speech service speaking the OpenAI Realtime protocol.
    OpenaiRealtime,
    /// Whisper, a language model and a voice from model files, on the orb's own GPU or CPU.
    Local,
}

/// When the local brain answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LocalAnswer {
    /// When a turn names the orb (`--local-names`).
    Addressed,
    /// After every turn.
    Always,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Parser, Clone, Debug)]
#[command(name = "orb", version, about = "The AI participant of a tri-party coaching call")]
pub struct Cli {
    /// Room to join. Not with `--warm`: a warm orb gets its room from an assignment.
    #[arg(long, env = "ORB_ROOM", required_unless_present = "warm", conflicts_with = "warm")]
    pub room: Option<String>,
    /// Start warm: prepare the brain, then wait in no room until `POST /assign` (from the operator
    /// or the local runtime, with the credential in ORB_ASSIGN_TOKEN or `--assign-token-file`)
    /// names the room, its limits and its token.
    #[arg(long, env = "ORB_WARM", value_parser = clap::builder::BoolishValueParser::new())]
    pub warm: bool,
    /// File holding a warm orb's assignment credential (used when ORB_ASSIGN_TOKEN is unset).
    #[arg(long, env = "ORB_ASSIGN_TOKEN_FILE")]
    pub assign_token_file: Option<PathBuf>,
    /// Session id reported in status and the session summary.
    #[arg(long, env = "ORB_SESSION", default_value = "")]
    pub session: String,
    /// The coach's user id.
    #[arg(long, env = "ORB_COACH", default_value = "")]
    pub coach: String,
    /// The client's user id.
    #[arg(long, env = "ORB_CLIENT", default_value = "")]
    pub client: String,
    /// What the session is for, in the app's words (the AiOrb's `spec.purpose`, at most 1000
    /// characters). The model gets it with the coach's and the client's ids as the session's
    /// context, marked as information, not instructions.
    #[arg(long, env = "ORB_PURPOSE", default_value = "")]
    pub purpose: String,
    /// Longest the orb lives before it leaves on its own (bare integer = milliseconds).
    #[arg(long, env = "ORB_MAX_LIFETIME", default_value = "2h", value_parser = parse_duration)]
    pub max_lifetime: Duration,
    /// Time without activity in the room after which the orb leaves on its own.
    #[arg(long, env = "ORB_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Test mode: forces the test brain.
    #[arg(long, env = "ORB_TEST_MODE", value_parser = clap::builder::BoolishValueParser::new())]
    pub test_mode: bool,
    /// Base URL of signaling (ws:// or wss://); the orb connects to `{url}/ws-simple/{room}`.
    #[arg(long, env = "SIGNALING_URL", default_value = "ws://orb-signaling:8080")]
    pub signaling_url: String,
    /// File holding the signaling token (used when ORB_SIGNALING_TOKEN is unset).
    #[arg(long, env = "ORB_SIGNALING_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The orb's user id in the room.
    #[arg(long, env = "ORB_USER_ID")]
    pub user_id: Option<String>,
    /// Address of the HTTP server for /healthz, /readyz and /metrics.
    #[arg(long, env = "ORB_HTTP_ADDR", default_value = "0.0.0.0:9090")]
    pub http_addr: SocketAddr,
    /// Where the termination message is written on exit.
    #[arg(long, env = "ORB_TERMINATION_LOG", default_value = "/dev/termination-log")]
    pub termination_log: PathBuf,
    /// Brain to run (test mode implies `test`).
    #[arg(long, env = "ORB_BRAIN", value_enum, default_value = "openai-realtime")]
    pub brain: BrainKind,
    /// Delay before the test brain echoes what it hears.
    #[arg(long, env = "ORB_TEST_ECHO_DELAY", default_value = "100ms", value_parser = parse_duration)]
    pub test_echo_delay: Duration,
    /// Base URL of the realtime speech service.
    #[arg(long, env = "OPENAI_BASE_URL", default_value = "wss://api.openai.com/v1")]
    pub openai_base_url: String,
    /// Realtime model name.
    #[arg(long, env = "OPENAI_MODEL", default_value = "gpt-realtime")]
    pub openai_model: String,
    /// Voice of the realtime model.
    #[arg(long, env = "OPENAI_VOICE", default_value = "alloy")]
    pub openai_voice: String,
    /// Text model that writes the session summary (Chat Completions at the same base URL, with
    /// structured output).
    #[arg(long, env = "OPENAI_SUMMARY_MODEL", default_value = "gpt-4.1-mini")]
    pub openai_summary_model: String,
    /// Start a new realtime session, with the conversation so far, once the current one is this
    /// old: the service ends a session after 60 minutes, and a call may last two hours.
    #[arg(long, env = "OPENAI_SESSION_RENEW_AFTER", default_value = "50m", value_parser = parse_duration)]
    pub openai_session_renew_after: Duration,
    /// Instructions given to the realtime model.
    #[arg(
        long,
        env = "OPENAI_INSTRUCTIONS",
        default_value = "You are a supportive AI assistant taking part in a coaching session between a coach and a client. Speak briefly and only when it helps."
    )]
    pub openai_instructions: String,
    /// The local brain's models, under fixed names (`whisper/`, `llm.gguf`, `voice.onnx` with
    /// `voice.onnx.json`, `libonnxruntime.so`); the flags below name one file elsewhere.
    #[arg(long, env = "ORB_MODELS_DIR", default_value = "/models")]
    pub models_dir: PathBuf,
    /// A CTranslate2 Whisper directory (default: `<models-dir>/whisper`).
    #[arg(long, env = "ORB_ASR_MODEL")]
    pub asr_model: Option<PathBuf>,
    /// A GGUF language model with a chat template (default: `<models-dir>/llm.gguf`).
    #[arg(long, env = "ORB_LLM_MODEL")]
    pub llm_model: Option<PathBuf>,
    /// A Piper voice, `.onnx` with its `.onnx.json` beside it (default: `<models-dir>/voice.onnx`).
    #[arg(long, env = "ORB_VOICE_MODEL")]
    pub voice_model: Option<PathBuf>,
    /// ONNX Runtime's shared library (default: `<models-dir>/libonnxruntime.so`).
    #[arg(long, env = "ORB_ONNXRUNTIME_LIB")]
    pub onnxruntime_lib: Option<PathBuf>,
    /// The `espeak-ng` program, which gives the voice its phonemes.
    #[arg(long, env = "ORB_ESPEAK", default_value = "espeak-ng")]
    pub espeak: PathBuf,
    /// Names that address the orb, comma-separated (a turn naming one is answered).
    #[arg(long, env = "ORB_LOCAL_NAMES", value_delimiter = ',', default_value = "orb")]
    pub local_names: Vec<String>,
    /// When the local brain answers a turn.
    #[arg(long, env = "ORB_LOCAL_ANSWER", value_enum, default_value = "addressed")]
    pub local_answer: LocalAnswer,
    /// Silence that ends a human's turn.
    #[arg(long, env = "ORB_LOCAL_END_OF_TURN", default_value = "700ms", value_parser = parse_duration)]
    pub local_end_of_turn: Duration,
    /// How long a human talks over the orb before it stops speaking.
    #[arg(long, env = "ORB_LOCAL_BARGE_IN", default_value = "300ms", value_parser = parse_duration)]
    pub local_barge_in: Duration,
    /// Threads for the models (0: one per core).
    #[arg(long, env = "ORB_LOCAL_THREADS", default_value_t = 0)]
    pub local_threads: usize,
    /// Language-model layers on the GPU (a CUDA build; 0 runs on the CPU).
    #[arg(long, env = "ORB_LOCAL_GPU_LAYERS", default_value_t = 0)]
    pub local_gpu_layers: u32,
    /// Longest answer, in tokens.
    #[arg(long, env = "ORB_LOCAL_MAX_ANSWER_TOKENS", default_value_t = 96)]
    pub local_max_answer_tokens: usize,
    /// Instructions given to the local language model.
    #[arg(
        long,
        env = "ORB_LOCAL_INSTRUCTIONS",
        default_value = "You are Orb, a supportive AI assistant in a coaching session between a coach and a client. Answer in one or two short spoken sentences, without lists or formatting."
    )]
    pub local_instructions: String,
    /// STUN/TURN server URLs, comma-separated, besides those signaling hands out with the join
    /// (with a TURN credential minted for this orb: the usual way, no static password needed).
    #[arg(long, env = "ORB_ICE_SERVERS", value_delimiter = ',')]
    pub ice_servers: Vec<String>,
    /// Username for the TURN servers.
    #[arg(long, env = "ORB_TURN_USERNAME", default_value = "")]
    pub turn_username: String,
    /// Credential for the TURN servers.
    #[arg(long, env = "ORB_TURN_CREDENTIAL", default_value = "", hide_env_values = true)]
    pub turn_credential: String,
    /// `relay`: media only ever goes through a TURN relay (the orb's address is never revealed
    /// to peers and it sends to no address but the relay's); `all`: any path ICE finds.
    #[arg(long, env = "ORB_ICE_TRANSPORT_POLICY", default_value_t = IceTransportPolicy::All)]
    pub ice_transport_policy: IceTransportPolicy,
    /// Public address advertised in host candidates (NAT 1:1).
    #[arg(long, env = "ORB_PUBLIC_IP")]
    pub public_ip: Option<IpAddr>,
    /// Local UDP addresses for media, comma-separated; `0.0.0.0:0` means every non-loopback interface.
    #[arg(long, env = "ORB_UDP_ADDRS", value_delimiter = ',', default_value = "0.0.0.0:0")]
    pub udp_addrs: Vec<SocketAddr>,
    /// Remote ICE candidates in these ranges are dropped (comma-separated CIDRs; an empty value
    /// denies nothing). Hostname candidates are dropped while any range is denied.
    #[arg(long, env = "ORB_DENIED_CANDIDATE_CIDRS", default_value = orb_api::cidr::DEFAULT_DENIED_CANDIDATE_CIDRS)]
    pub denied_candidate_cidrs: String,
    /// Log output format.
    #[arg(long, env = "ORB_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("invalid room id: {0}")]
    Room(#[from] orb_api::naming::RoomIdError),
    #[error("signaling URL must start with ws:// or wss:// (got {0:?})")]
    SignalingUrl(String),
    #[error("OpenAI base URL must start with ws://, wss://, http:// or https:// (got {0:?})")]
    OpenaiUrl(String),
    #[error("cannot read the secret file {path}: {source}")]
    TokenFile { path: PathBuf, source: std::io::Error },
    #[error("the openai-realtime brain needs OPENAI_API_KEY")]
    MissingApiKey,
    #[error("{0} must be longer than zero")]
    ZeroDuration(&'static str),
    #[error("no UDP address for media was given")]
    NoUdpAddr,
    #[error("a warm orb needs its assignment credential in ORB_ASSIGN_TOKEN or --assign-token-file")]
    MissingAssignToken,
    #[error("a warm orb gets its room from its assignment; --room and --warm exclude each other")]
    RoomAndWarm,
    #[error("the session's purpose is longer than {max} characters", max = orb_api::MAX_PURPOSE_CHARS)]
    PurposeTooLong,
    #[error("--denied-candidate-cidrs: {0}")]
    DeniedCandidateCidrs(#[from] orb_api::cidr::CidrError),
    #[error(transparent)]
    Proxy(#[from] ProxyConfigError),
    #[error("the local brain's models are missing: {}", .0.join("; "))]
    MissingModels(Vec<String>),
    #[error("--local-names needs at least one name when --local-answer is addressed")]
    NoLocalNames,
}

/// The environment variable holding the orb's room token.
pub const SIGNALING_TOKEN_ENV: &str = "ORB_SIGNALING_TOKEN";
/// The environment variable of `--denied-candidate-cidrs`; empty denies nothing.
pub const ORB_DENIED_CANDIDATE_CIDRS_ENV: &str = "ORB_DENIED_CANDIDATE_CIDRS";
/// The environment variable holding the OpenAI API key.
pub const OPENAI_API_KEY_ENV: &str = "OPENAI_API_KEY";

/// Secrets are read from the environment only, so they never show up in `ps` or the pod spec.
#[derive(Clone, Default)]
pub struct Secrets {
    /// `ORB_SIGNALING_TOKEN`.
    pub signaling_token: Option<String>,
    /// `OPENAI_API_KEY`.
    pub openai_api_key: Option<String>,
    /// `ORB_ASSIGN_TOKEN`: a warm orb's assignment credential.
    pub assign_token: Option<String>,
    /// The proxy variables (a proxy URL may hold a password).
    pub proxy: ProxyEnv,
}

impl Secrets {
    pub fn from_env() -> Self {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.trim().is_empty());
        Self {
            signaling_token: var(SIGNALING_TOKEN_ENV),
            openai_api_key: var(OPENAI_API_KEY_ENV),
            assign_token: var(orb_api::assignment::ASSIGN_TOKEN_ENV),
            proxy: ProxyEnv::from_env(),
        }
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("signaling_token", &self.signaling_token.as_ref().map(|_| ".."))
            .field("openai_api_key", &self.openai_api_key.as_ref().map(|_| ".."))
            .field("assign_token", &self.assign_token.as_ref().map(|_| ".."))
            .field("proxy", &self.proxy)
            .finish()
    }
}

/// The OpenAI Realtime settings.
#[derive(Clone)]
pub struct OpenAiConfig {
    pub base_url: String,
    pub model: String,
    pub voice: String,
    pub instructions: String,
    pub api_key: String,
    /// The text model of the session summary.
    pub summary_model: String,
    /// Age at which the realtime session is renewed (`--openai-session-renew-after`).
    pub session_renew_after: Duration,
    /// How the service is reached: directly or through an HTTP proxy (shared: it is large).
    pub proxy: std::sync::Arc<ProxySettings>,
}

impl std::fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("voice", &self.voice)
            .field("summary_model", &self.summary_model)
            .field("api_key", &"..")
            .field("proxy", &self.proxy)
            .finish_non_exhaustive()
    }
}

/// WebRTC transport settings.
#[derive(Clone, Debug)]
pub struct RtcConfig {
    /// Configured servers; signaling's are added per join.
    pub ice_servers: Vec<IceServer>,
    /// Relay candidates only.
    pub relay_only: bool,
    pub public_ip: Option<IpAddr>,
    pub udp_addrs: Vec<SocketAddr>,
    /// Remote candidates in these ranges never reach the WebRTC stack.
    pub denied_candidates: CidrList,
}

#[derive(Clone, Debug)]
pub enum BrainConfig {
    Test { echo_delay: Duration },
    OpenAi(OpenAiConfig),
    Local(crate::brain::local::LocalConfig),
}

/// Validated configuration. Its `Debug` leaves the token out.
#[derive(Clone)]
pub struct Config {
    pub room: String,
    pub session: String,
    pub coach: String,
    pub client: String,
    pub purpose: String,
    pub user_id: String,
    pub max_lifetime: Duration,
    pub idle_timeout: Duration,
    pub test_mode: bool,
    /// `{signaling_url}/ws-simple/{room}`.
    pub signaling_endpoint: String,
    pub token: Option<String>,
    pub http_addr: SocketAddr,
    pub termination_log: PathBuf,
    pub brain: BrainConfig,
    pub rtc: RtcConfig,
    /// Set for a warm orb until it is assigned: the credential `POST /assign` must carry. The
    /// room fields are empty until then.
    pub warm: Option<String>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("room", &self.room)
            .field("session", &self.session)
            .field("user_id", &self.user_id)
            .field("max_lifetime", &self.max_lifetime)
            .field("idle_timeout", &self.idle_timeout)
            .field("test_mode", &self.test_mode)
            .field("signaling_endpoint", &self.signaling_endpoint)
            .field("token", &self.token.as_ref().map(|_| ".."))
            .field("brain", &self.brain)
            .field("rtc", &self.rtc)
            .field("warm", &self.warm.is_some())
            .finish_non_exhaustive()
    }
}

impl Config {
    pub fn from_cli(cli: Cli, secrets: Secrets) -> Result<Self, ConfigError> {
        let room = match (cli.room.clone(), cli.warm) {
            (Some(room), false) => {
                orb_api::naming::validate_room_id(&room)?;
                room
            }
            (None, true) => String::new(),
            _ => return Err(ConfigError::RoomAndWarm),
        };
        let signaling_endpoint = endpoint(&cli.signaling_url, &room)?;
        if cli.max_lifetime.is_zero() {
            return Err(ConfigError::ZeroDuration("--max-lifetime"));
        }
        if cli.idle_timeout.is_zero() {
            return Err(ConfigError::ZeroDuration("--idle-timeout"));
        }
        check_purpose(&cli.purpose)?;
        if cli.udp_addrs.is_empty() {
            return Err(ConfigError::NoUdpAddr);
        }
        let warm = if cli.warm {
            let credential = read_secret(secrets.assign_token.clone(), cli.assign_token_file.as_ref())?;
            Some(credential.ok_or(ConfigError::MissingAssignToken)?)
        } else {
            None
        };
        let denied_candidates: CidrList = cli.denied_candidate_cidrs.parse()?;
        let token = read_secret(secrets.signaling_token, cli.token_file.as_ref())?;
        let kind = if cli.test_mode { BrainKind::Test } else { cli.brain };
        let brain = match kind {
            BrainKind::Test => BrainConfig::Test {
                echo_delay: cli.test_echo_delay,
            },
            BrainKind::OpenaiRealtime => {
                let url = cli.openai_base_url.trim_end_matches('/').to_owned();
                if !["ws://", "wss://", "http://", "https://"]
                    .iter()
                    .any(|p| url.starts_with(p))
                {
                    return Err(ConfigError::OpenaiUrl(url));
                }
                BrainConfig::OpenAi(OpenAiConfig {
                    base_url: url,
                    model: cli.openai_model,
                    voice: cli.openai_voice,
                    instructions: cli.openai_instructions,
                    api_key: secrets.openai_api_key.ok_or(ConfigError::MissingApiKey)?,
                    summary_model: cli.openai_summary_model,
                    session_renew_after: cli.openai_session_renew_after,
                    proxy: ProxySettings::parse(&secrets.proxy)?.into(),
                })
            }
            BrainKind::Local => BrainConfig::Local(local_config(&cli)?),
        };
        let user_id = cli.user_id.unwrap_or_else(|| default_user_id(&room));
        Ok(Self {
            signaling_endpoint,
            room,
            session: cli.session,
            coach: cli.coach,
            client: cli.client,
            purpose: cli.purpose,
            user_id,
            max_lifetime: cli.max_lifetime,
            idle_timeout: cli.idle_timeout,
            test_mode: cli.test_mode,
            token,
            http_addr: cli.http_addr,
            termination_log: cli.termination_log,
            brain,
            rtc: RtcConfig {
                ice_servers: static_ice_servers(cli.ice_servers, cli.turn_username, cli.turn_credential),
                relay_only: cli.ice_transport_policy == IceTransportPolicy::Relay,
                public_ip: cli.public_ip,
                udp_addrs: cli.udp_addrs,
                denied_candidates,
            },
            warm,
        })
    }

    /// A warm orb's configuration for its assignment, checked as the same values on a cold
    /// orb's command line would be.
    pub fn assigned(&self, a: &Assignment) -> Result<Self, ConfigError> {
        orb_api::naming::validate_room_id(&a.room)?;
        if a.max_lifetime_seconds == 0 {
            return Err(ConfigError::ZeroDuration("maxLifetimeSeconds"));
        }
        if a.idle_timeout_seconds == 0 {
            return Err(ConfigError::ZeroDuration("idleTimeoutSeconds"));
        }
        let purpose = a.purpose.clone().unwrap_or_default();
        check_purpose(&purpose)?;
        Ok(Self {
            signaling_endpoint: endpoint(&a.signaling_url, &a.room)?,
            room: a.room.clone(),
            session: a.session.clone().unwrap_or_default(),
            coach: a.coach.clone().unwrap_or_default(),
            client: a.client.clone().unwrap_or_default(),
            purpose,
            user_id: default_user_id(&a.room),
            max_lifetime: Duration::from_secs(a.max_lifetime_seconds),
            idle_timeout: Duration::from_secs(a.idle_timeout_seconds),
            token: a.token.clone().filter(|t| !t.trim().is_empty()),
            warm: None,
            ..self.clone()
        })
    }
}

impl Config {
    /// What the brain is told of the session besides what it hears.
    pub fn session_context(&self) -> SessionContext {
        SessionContext {
            coach: self.coach.clone(),
            client: self.client.clone(),
            purpose: self.purpose.clone(),
        }
    }
}

/// The operator checked the AiOrb's purpose already; the orb checks again what reaches it by any
/// other way (a hand-started orb, an assignment), in characters as the CRD counts them.
fn check_purpose(purpose: &str) -> Result<(), ConfigError> {
    if purpose.chars().count() > orb_api::MAX_PURPOSE_CHARS {
        return Err(ConfigError::PurposeTooLong);
    }
    Ok(())
}

/// The configured URLs as one server with the configured credential (none when no URL is set).
fn local_config(cli: &Cli) -> Result<crate::brain::local::LocalConfig, ConfigError> {
    use orb_speech::conversation::AnswerPolicy;
    let mut models = orb_speech::models::ModelFiles::in_dir(&cli.models_dir);
    for (flag, path) in [
        (&cli.asr_model, &mut models.speech_recognition),
        (&cli.llm_model, &mut models.language_model),
        (&cli.voice_model, &mut models.voice),
        (&cli.onnxruntime_lib, &mut models.onnxruntime),
    ] {
        if let Some(p) = flag {
            *path = p.clone();
        }
    }
    models
        .check()
        .map_err(|missing| ConfigError::MissingModels(missing.iter().map(ToString::to_string).collect()))?;
    let names: Vec<String> = cli
        .local_names
        .iter()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() && cli.local_answer == LocalAnswer::Addressed {
        return Err(ConfigError::NoLocalNames);
    }
    for (name, d) in [
        ("--local-end-of-turn", cli.local_end_of_turn),
        ("--local-barge-in", cli.local_barge_in),
    ] {
        if d.is_zero() {
            return Err(ConfigError::ZeroDuration(name));
        }
    }
    let threads = match cli.local_threads {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    Ok(crate::brain::local::LocalConfig {
        models,
        espeak: cli.espeak.clone(),
        threads,
        gpu_layers: cli.local_gpu_layers,
        instructions: cli.local_instructions.clone(),
        names,
        policy: match cli.local_answer {
            LocalAnswer::Addressed => AnswerPolicy::WhenAddressed,
            LocalAnswer::Always => AnswerPolicy::Always,
        },
        turn: orb_speech::turns::TurnConfig {
            end_silence_ms: cli.local_end_of_turn.as_millis() as u64,
            ..orb_speech::turns::TurnConfig::default()
        },
        barge_in: cli.local_barge_in,
        max_answer_tokens: cli.local_max_answer_tokens.max(8),
    })
}

fn static_ice_servers(urls: Vec<String>, username: String, credential: String) -> Vec<IceServer> {
    let urls: Vec<String> = urls.into_iter().filter(|s| !s.trim().is_empty()).collect();
    if urls.is_empty() {
        return vec![];
    }
    vec![IceServer {
        urls,
        username,
        credential,
    }]
}

fn default_user_id(room: &str) -> String {
    format!("ai-orb-{room}")
}

/// `{signaling_url}/ws-simple/{room}`, for a `ws://` or `wss://` base.
fn endpoint(signaling_url: &str, room: &str) -> Result<String, ConfigError> {
    let base = signaling_url.trim_end_matches('/');
    if !(base.starts_with("ws://") || base.starts_with("wss://")) {
        return Err(ConfigError::SignalingUrl(signaling_url.to_owned()));
    }
    Ok(format!("{base}/ws-simple/{room}"))
}

/// A secret from the environment, else from a file; trimmed, empty meaning none.
fn read_secret(env_value: Option<String>, file: Option<&PathBuf>) -> Result<Option<String>, ConfigError> {
    let raw = match (env_value, file) {
        (Some(value), _) => value,
        (None, Some(path)) => std::fs::read_to_string(path).map_err(|source| ConfigError::TokenFile {
            path: path.clone(),
            source,
        })?,
        (None, None) => return Ok(None),
    };
    Ok(Some(raw.trim().to_owned()).filter(|t| !t.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut all = vec!["orb"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap()
    }

    #[test]
    fn seed_flags_parse_with_bare_milliseconds() {
        let c = cli(&[
            "--room=room123",
            "--session=abc456",
            "--coach=c1",
            "--client=c2",
            "--max-lifetime=7200000",
            "--idle-timeout=300000",
            "--test-mode",
            "--signaling-url=ws://localhost:8080/",
        ]);
        let cfg = Config::from_cli(c, Secrets::default()).unwrap();
        assert_eq!(cfg.max_lifetime, Duration::from_secs(7200));
        assert_eq!(cfg.idle_timeout, Duration::from_secs(300));
        assert_eq!(cfg.signaling_endpoint, "ws://localhost:8080/ws-simple/room123");
        assert!(
            matches!(cfg.brain, BrainConfig::Test { .. }),
            "test mode implies the test brain"
        );
        assert_eq!(cfg.user_id, "ai-orb-room123");
        assert!(cfg.token.is_none());
    }

    #[test]
    fn the_purpose_is_the_sessions_context_with_the_coach_and_client() {
        let cfg = Config::from_cli(
            cli(&[
                "--room=r",
                "--test-mode",
                "--coach=coach-1",
                "--client=client-2",
                "--purpose=Quarterly goals review",
            ]),
            Secrets::default(),
        )
        .unwrap();
        assert_eq!(
            cfg.session_context(),
            SessionContext {
                coach: "coach-1".into(),
                client: "client-2".into(),
                purpose: "Quarterly goals review".into()
            }
        );
        // Counted in characters: 1000 of them fit however many bytes they take.
        let longest = format!("--purpose={}", "é".repeat(orb_api::MAX_PURPOSE_CHARS));
        assert!(Config::from_cli(cli(&["--room=r", "--test-mode", &longest]), Secrets::default()).is_ok());
        let too_long = format!("--purpose={}", "e".repeat(orb_api::MAX_PURPOSE_CHARS + 1));
        let err = Config::from_cli(cli(&["--room=r", "--test-mode", &too_long]), Secrets::default()).unwrap_err();
        assert_eq!(err.to_string(), "the session's purpose is longer than 1000 characters");
    }

    #[test]
    fn openai_brain_needs_a_key() {
        let err = Config::from_cli(cli(&["--room=r", "--brain=openai-realtime"]), Secrets::default()).unwrap_err();
        assert!(matches!(err, ConfigError::MissingApiKey));
        let secrets = Secrets {
            openai_api_key: Some("k".into()),
            signaling_token: Some(" tok\n".into()),
            ..Secrets::default()
        };
        let cfg = Config::from_cli(cli(&["--room=r"]), secrets).unwrap();
        assert_eq!(cfg.token.as_deref(), Some("tok"));
        let BrainConfig::OpenAi(o) = cfg.brain else { panic!() };
        assert_eq!(o.model, "gpt-realtime");
        assert_eq!(o.summary_model, "gpt-4.1-mini");
    }

    #[test]
    fn debug_output_hides_secrets() {
        let secrets = Secrets {
            openai_api_key: Some("sk-very-secret".into()),
            signaling_token: Some("jwt-very-secret".into()),
            assign_token: Some("assign-very-secret".into()),
            proxy: ProxyEnv {
                https_proxy: Some("http://me:proxy-very-secret@proxy:3128".into()),
                ..ProxyEnv::default()
            },
        };
        let cfg = Config::from_cli(cli(&["--room=r"]), secrets.clone()).unwrap();
        let shown = format!("{cfg:?} {secrets:?}");
        assert!(!shown.contains("very-secret"), "{shown}");
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Config::from_cli(cli(&["--room=a b", "--test-mode"]), Secrets::default()).is_err());
        assert!(
            Config::from_cli(
                cli(&["--room=r", "--test-mode", "--signaling-url=http://x"]),
                Secrets::default()
            )
            .is_err()
        );
        assert!(Cli::try_parse_from(["orb", "--room=r", "--idle-timeout=5d"]).is_err());
        let bad_proxy = Secrets {
            openai_api_key: Some("k".into()),
            proxy: ProxyEnv {
                https_proxy: Some("socks5://proxy:1080".into()),
                ..ProxyEnv::default()
            },
            ..Secrets::default()
        };
        assert!(matches!(
            Config::from_cli(cli(&["--room=r"]), bad_proxy),
            Err(ConfigError::Proxy(_))
        ));
        assert!(
            Config::from_cli(
                cli(&["--room=r", "--test-mode", "--max-lifetime=0"]),
                Secrets::default()
            )
            .is_err()
        );
    }

    #[test]
    fn token_file_is_read_and_trimmed() {
        let path = std::env::temp_dir().join(format!("orb-token-{}", std::process::id()));
        std::fs::write(&path, "secret-token\n").unwrap();
        let c = cli(&["--room=r", "--test-mode", &format!("--token-file={}", path.display())]);
        let cfg = Config::from_cli(c, Secrets::default()).unwrap();
        assert_eq!(cfg.token.as_deref(), Some("secret-token"));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn ice_settings_split_on_commas() {
        let c = cli(&[
            "--room=r",
            "--test-mode",
            "--ice-servers=stun:a:3478,turn:b:3478",
            "--udp-addrs=127.0.0.1:0,[::1]:0",
            "--public-ip=203.0.113.7",
        ]);
        let cfg = Config::from_cli(c, Secrets::default()).unwrap();
        assert_eq!(cfg.rtc.ice_servers.len(), 1);
        assert_eq!(cfg.rtc.ice_servers[0].urls, ["stun:a:3478", "turn:b:3478"]);
        assert!(!cfg.rtc.relay_only);
        assert_eq!(cfg.rtc.udp_addrs.len(), 2);
        assert_eq!(cfg.rtc.public_ip, Some("203.0.113.7".parse().unwrap()));
    }

    #[test]
    fn a_warm_orb_has_no_room_until_assigned_and_checks_its_assignment() {
        assert!(
            Cli::try_parse_from(["orb", "--warm", "--room=r"]).is_err(),
            "room and warm exclude each other"
        );
        assert!(Cli::try_parse_from(["orb"]).is_err(), "a cold orb needs a room");
        let err = Config::from_cli(cli(&["--warm", "--test-mode"]), Secrets::default()).unwrap_err();
        assert!(matches!(err, ConfigError::MissingAssignToken), "{err}");
        let secrets = Secrets {
            assign_token: Some("cred\n".into()),
            ..Secrets::default()
        };
        let warm = Config::from_cli(cli(&["--warm", "--test-mode"]), secrets).unwrap();
        assert_eq!(warm.warm.as_deref(), Some("cred"));
        assert_eq!(warm.room, "");
        let mut a = Assignment {
            room: "room-7".into(),
            session: Some("s1".into()),
            coach: Some("c".into()),
            client: None,
            purpose: Some("Goals review".into()),
            max_lifetime_seconds: 90,
            idle_timeout_seconds: 30,
            signaling_url: "ws://sig:8080/".into(),
            token: Some("t".into()),
        };
        let bound = warm.assigned(&a).unwrap();
        assert_eq!(bound.signaling_endpoint, "ws://sig:8080/ws-simple/room-7");
        assert_eq!(bound.user_id, "ai-orb-room-7");
        assert_eq!(bound.max_lifetime, Duration::from_secs(90));
        assert_eq!(bound.token.as_deref(), Some("t"));
        assert_eq!(
            bound.session_context(),
            SessionContext {
                coach: "c".into(),
                client: String::new(),
                purpose: "Goals review".into()
            }
        );
        assert!(bound.warm.is_none() && matches!(bound.brain, BrainConfig::Test { .. }));
        // The same values a cold orb's flags would refuse.
        a.room = "a b".into();
        assert!(warm.assigned(&a).is_err());
        a.room = "r".into();
        a.signaling_url = "http://x".into();
        assert!(warm.assigned(&a).is_err());
        a.signaling_url = "ws://x".into();
        a.purpose = Some("x".repeat(orb_api::MAX_PURPOSE_CHARS + 1));
        assert!(matches!(warm.assigned(&a), Err(ConfigError::PurposeTooLong)));
        a.purpose = None;
        a.idle_timeout_seconds = 0;
        assert!(warm.assigned(&a).is_err());
    }

    #[test]
    fn the_candidate_deny_list_defaults_to_local_ranges_and_an_empty_value_denies_nothing() {
        let cfg = Config::from_cli(cli(&["--room=r", "--test-mode"]), Secrets::default()).unwrap();
        assert_eq!(cfg.rtc.denied_candidates, CidrList::default_denied());
        let cfg = Config::from_cli(
            cli(&["--room=r", "--test-mode", "--denied-candidate-cidrs="]),
            Secrets::default(),
        )
        .unwrap();
        assert!(cfg.rtc.denied_candidates.is_empty());
        let cfg = Config::from_cli(
            cli(&[
                "--room=r",
                "--test-mode",
                "--denied-candidate-cidrs=10.96.0.0/12, fe80::/10",
            ]),
            Secrets::default(),
        )
        .unwrap();
        assert_eq!(cfg.rtc.denied_candidates.to_string(), "10.96.0.0/12,fe80::/10");
        let err = Config::from_cli(
            cli(&["--room=r", "--test-mode", "--denied-candidate-cidrs=10.0.0.0/33"]),
            Secrets::default(),
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("--denied-candidate-cidrs: "), "{err}");
    }

    #[test]
    fn the_ice_transport_policy_is_the_operator_s() {
        let cmd = <Cli as clap::CommandFactory>::command();
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some("ice-transport-policy"))
            .unwrap();
        assert_eq!(arg.get_env().unwrap(), orb_api::ice::ICE_TRANSPORT_POLICY_ENV);
        let relay = Config::from_cli(
            cli(&["--room=r", "--test-mode", "--ice-transport-policy=relay"]),
            Secrets::default(),
        )
        .unwrap();
        assert!(relay.rtc.relay_only);
        let err = Cli::try_parse_from(["orb", "--room=r", "--ice-transport-policy=none"]).unwrap_err();
        assert!(err.to_string().contains("not an ICE transport policy"), "{err}");
    }

    /// The local runtime and the test harnesses turn the list off through the environment: an
    /// empty `ORB_DENIED_CANDIDATE_CIDRS` is an empty list, not "unset, use the default".
    #[test]
    fn an_empty_environment_value_denies_nothing() {
        let cmd = <Cli as clap::CommandFactory>::command();
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some("denied-candidate-cidrs"))
            .unwrap();
        assert_eq!(arg.get_env().unwrap(), ORB_DENIED_CANDIDATE_CIDRS_ENV);
        // clap reads the variable itself; parse a copy of the flag with the variable set in a
        // child process so this test does not change its own environment.
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args(["--exact", "config::tests::empty_env_probe", "--nocapture", "--ignored"])
            .env(ORB_DENIED_CANDIDATE_CIDRS_ENV, "")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && stdout.contains("denied=[]"), "{stdout}");
    }

    #[test]
    #[ignore = "run by an_empty_environment_value_denies_nothing with the variable set"]
    fn empty_env_probe() {
        let cfg = Config::from_cli(cli(&["--room=r", "--test-mode"]), Secrets::default()).unwrap();
        println!("denied=[{}]", cfg.rtc.denied_candidates);
    }
}
