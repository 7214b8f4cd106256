//! Command line and environment configuration, validated once at start-up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use orb_api::duration::parse_duration;
use thiserror::Error;

use crate::auth::Authenticator;

pub use orb_api::auth::SIGNING_KEY_ENV;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RuntimeKind {
    /// Create `AiOrb` resources for the operator.
    Kubernetes,
    /// Start orb processes on this machine (development).
    Local,
    /// No orbs: calls run without an AI.
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Room tokens (JWT, HS256) decide who joins which room as whom.
    Jwt,
    /// Trust the join message, as seed 001 did. Local development only.
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

/// orb-signaling: WebSocket signaling for the tri-party orb call.
#[derive(Parser, Clone, Debug)]
#[command(name = "orb-signaling", version, about)]
pub struct Args {
    /// Address for HTTP and WebSocket.
    #[arg(long, env = "SIGNALING_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Where orbs come from.
    #[arg(long, env = "ORB_RUNTIME", value_enum, default_value = "kubernetes")]
    pub orb_runtime: RuntimeKind,
    /// How participants prove who they are.
    #[arg(long, env = "SIGNALING_AUTH", value_enum, default_value = "jwt")]
    pub auth: AuthMode,
    /// File holding the HS256 room-token key (alternative to ORB_SIGNING_KEY).
    #[arg(long, env = "ORB_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,
    /// Namespace of the AiOrbs (default: the Kubernetes client's default namespace).
    #[arg(long, env = "ORB_NAMESPACE")]
    pub orb_namespace: Option<String>,
    /// Create orbs with spec.testMode set.
    #[arg(long, env = "ORB_TEST_MODE")]
    pub orb_test_mode: bool,
    /// Minimum spacing of presence writes per room.
    #[arg(long, env = "SIGNALING_PRESENCE_DEBOUNCE", default_value = "2s", value_parser = duration)]
    pub presence_debounce: Duration,
    /// How long shutdown waits for connections to close.
    #[arg(long, env = "SIGNALING_DRAIN_TIMEOUT", default_value = "15s", value_parser = duration)]
    pub drain_timeout: Duration,
    /// Largest accepted text frame.
    #[arg(long, env = "SIGNALING_MAX_FRAME_BYTES", default_value_t = 65536)]
    pub max_frame_bytes: usize,
    /// Participants per room, the AI included.
    #[arg(long, env = "SIGNALING_MAX_PARTICIPANTS_PER_ROOM", default_value_t = 4)]
    pub max_participants_per_room: usize,
    /// Sustained inbound messages per second per connection (bursts of twice this pass).
    #[arg(long, env = "SIGNALING_MAX_MESSAGES_PER_SECOND", default_value_t = 50)]
    pub max_messages_per_second: u32,
    /// Sustained inbound bytes per second per connection (bursts of twice this pass, and always
    /// one frame of the socket's largest size).
    #[arg(long, env = "SIGNALING_MAX_BYTES_PER_SECOND", default_value_t = 65536)]
    pub max_bytes_per_second: u64,
    /// Close a socket that sends nothing (not even a pong) for this long, or does not join in it.
    #[arg(long, env = "SIGNALING_IDLE_SOCKET_TIMEOUT", default_value = "60s", value_parser = duration)]
    pub idle_socket_timeout: Duration,
    /// Outbound messages queued per connection before it counts as a slow consumer.
    #[arg(long, env = "SIGNALING_SEND_QUEUE", default_value_t = 256)]
    pub send_queue: usize,
    /// Open WebSocket connections on this replica at most; more are refused before the upgrade
    /// (HTTP 503).
    #[arg(long, env = "SIGNALING_MAX_CONNECTIONS", default_value_t = 10000)]
    pub max_connections: usize,
    /// Open WebSocket connections per client address at most (an IPv6 client is its /64); more
    /// are refused before the upgrade (HTTP 429).
    #[arg(long, env = "SIGNALING_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 50)]
    pub max_connections_per_client: usize,
    /// Open WebSocket connections per token user (room and user id of a room token) at most; more
    /// are refused before the upgrade (HTTP 429).
    #[arg(long, env = "SIGNALING_MAX_CONNECTIONS_PER_TOKEN", default_value_t = 4)]
    pub max_connections_per_token: usize,
    /// Rooms with open connections on this replica at most; a connection to another room is
    /// refused before the upgrade (HTTP 503), connections to those rooms are not.
    #[arg(long, env = "SIGNALING_MAX_ROOMS", default_value_t = 5000)]
    pub max_rooms: usize,
    /// A client must send a request's whole header within this time, or its TCP connection is
    /// closed (idle keep-alive connections included).
    #[arg(long, env = "SIGNALING_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub header_read_timeout: Duration,
    /// The request header a trusted proxy appends the client address to (e.g. X-Forwarded-For);
    /// its right-most entry is the client. Unset: the TCP peer address is the client.
    #[arg(long, env = "SIGNALING_TRUSTED_PROXY_HEADER")]
    pub trusted_proxy_header: Option<String>,
    /// Room tokens whose `exp` is further ahead than this are refused (a leaked token dies within
    /// it). Orb tokens live for their session's lifetime plus a minute: keep it at least the
    /// operator's `--max-orb-lifetime`.
    #[arg(long, env = "SIGNALING_MAX_TOKEN_TTL", default_value = "24h", value_parser = duration)]
    pub max_token_ttl: Duration,
    /// Largest accepted text frame from the orb (its session summary carries the transcript).
    #[arg(long, env = "SIGNALING_MAX_ORB_FRAME_BYTES", default_value_t = 8 << 20)]
    pub max_orb_frame_bytes: usize,
    /// POST each session summary here (JSON, signed), retried until it answers 2xx.
    #[arg(long, env = "ORB_SUMMARY_WEBHOOK_URL")]
    pub summary_webhook_url: Option<String>,
    /// File holding the webhook's HMAC-SHA256 key (`X-Orb-Signature`).
    #[arg(long, env = "ORB_SUMMARY_WEBHOOK_SECRET_FILE")]
    pub summary_webhook_secret_file: Option<PathBuf>,
    /// How long an undelivered summary is retried before it is given up.
    #[arg(long, env = "ORB_SUMMARY_RETRY_WINDOW", default_value = "24h", value_parser = duration)]
    pub summary_retry_window: Duration,
    /// Largest session summary stored, in bytes of its JSON; a larger one is refused
    /// (`summary_refused`). At most --max-orb-frame-bytes.
    #[arg(long, env = "ORB_SUMMARY_MAX_BYTES", default_value_t = crate::summary::DEFAULT_MAX_BYTES)]
    pub max_summary_bytes: usize,
    /// Directory of stored summaries for the local and none runtimes (the Kubernetes runtime keeps
    /// them in ConfigMaps). Unset: kept in memory only, lost on restart.
    #[arg(long, env = "ORB_SUMMARY_DIR")]
    pub summary_dir: Option<PathBuf>,
    /// Share rooms with other replicas through this Redis (`redis://` or `rediss://`, with a
    /// password or ACL user in the URL). Unset: this process holds every room itself.
    #[arg(long, env = "SIGNALING_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// This replica's name in Redis (default: host name, process id and start time).
    #[arg(long, env = "SIGNALING_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// STUN and TURN servers for the participants' peer connections, comma-separated
    /// (`stun:host[:port]`, `turn:host[:port][?transport=udp|tcp]`, `turns:…`); served at
    /// `/ice-servers` and sent after each join. TURN URLs need --turn-secret-file.
    #[arg(long, env = "SIGNALING_ICE_SERVERS", value_delimiter = ',')]
    pub ice_servers: Vec<String>,
    /// File holding the TURN relay's shared secret (coturn's `static-auth-secret`): TURN
    /// credentials are minted from it per the TURN REST convention.
    #[arg(long, env = "SIGNALING_TURN_SECRET_FILE")]
    pub turn_secret_file: Option<PathBuf>,
    /// How long a minted TURN credential is valid at most (never longer than the room token).
    #[arg(long, env = "SIGNALING_TURN_CREDENTIAL_TTL", default_value = "12h", value_parser = duration)]
    pub turn_credential_ttl: Duration,
    /// Origins whose pages may read `/ice-servers` (CORS), comma-separated, exact
    /// (`https://app.example.com`). Unset: no CORS headers.
    #[arg(long, env = "SIGNALING_CORS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub cors_allowed_origins: Vec<String>,
    /// Log output format.
    #[arg(long, env = "SIGNALING_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Local runtime: the orb binary (default: `orb` next to this binary, else on PATH).
    #[arg(long, env = "ORB_BINARY")]
    pub orb_binary: Option<PathBuf>,
    /// Local runtime: the base URL orbs reach signaling at (default: this server's own address);
    /// with several replicas, a load balancer in front of them, as the Service is in a cluster.
    #[arg(long, env = "LOCAL_ORB_SIGNALING_URL")]
    pub orb_signaling_url: Option<String>,
    /// Local runtime: directory of the per-orb logs `orb-<room>.log`.
    #[arg(long, env = "ORB_LOG_DIR", default_value = "orb-logs")]
    pub orb_log_dir: PathBuf,
    /// Local runtime: admitted, unfinished orbs at most; the rest queue (as the operator's flag).
    #[arg(long, env = "MAX_CONCURRENT_ORBS", default_value_t = 8)]
    pub max_concurrent_orbs: usize,
    /// Local runtime: lifetime of an orb from admission.
    #[arg(long, env = "MAX_ORB_LIFETIME", default_value = "2h", value_parser = duration)]
    pub max_orb_lifetime: Duration,
    /// Local runtime: an orb ends after this long without activity in its room.
    #[arg(long, env = "IDLE_TIMEOUT", default_value = "5m", value_parser = duration)]
    pub idle_timeout: Duration,
    /// Local runtime: an empty room's orb ends after this grace period.
    #[arg(long, env = "ORB_CLEANUP_GRACE_PERIOD", default_value = "60s", value_parser = duration)]
    pub empty_room_grace: Duration,
    /// Local runtime: orb processes kept started, brain ready, in no room; a room's orb is bound
    /// to one instead of starting a process (as the operator's flag). 0: every orb starts cold.
    #[arg(long, env = "ORB_WARM_POOL_SIZE", default_value_t = 0)]
    pub warm_orbs: usize,
}

/// Per-connection and per-room limits.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_participants_per_room: usize,
    pub max_messages_per_second: u32,
    pub max_bytes_per_second: u64,
    pub idle_socket_timeout: Duration,
    pub send_queue: usize,
    /// The text-frame cap of the orb's socket (see `--max-orb-frame-bytes`).
    pub max_orb_frame_bytes: usize,
    /// Connection caps checked before the upgrade.
    pub admission: crate::admission::AdmissionLimits,
}

impl Limits {
    /// The WebSocket layer's own cap: frames above `max_frame_bytes` still arrive (and get an
    /// `error` reply) up to this size; beyond it the WebSocket layer fails the read and the socket
    /// is dropped.
    pub fn transport_max_bytes(&self) -> usize {
        self.max_frame_bytes.saturating_mul(4)
    }

    /// The largest frame the WebSocket layer reads on a socket: the orb's may carry its summary.
    /// Without auth (`None`) anyone may be the orb.
    pub fn socket_max_bytes(&self, identity: Option<&crate::room::Identity>) -> usize {
        if identity.is_none_or(|id| id.is_ai()) {
            self.transport_max_bytes().max(self.max_orb_frame_bytes)
        } else {
            self.transport_max_bytes()
        }
    }

    /// The text-frame cap of a socket: the orb's (its summary carries the whole transcript) or
    /// everyone else's.
    pub fn frame_cap(&self, orb: bool) -> usize {
        if orb {
            self.max_orb_frame_bytes
        } else {
            self.max_frame_bytes
        }
    }

    /// How often the server pings a quiet socket, so live clients answer well inside the timeout.
    pub fn keepalive_interval(&self) -> Duration {
        (self.idle_socket_timeout / 3).clamp(Duration::from_millis(100), Duration::from_secs(20))
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub orb_runtime: RuntimeKind,
    pub auth: Authenticator,
    pub orb_namespace: Option<String>,
    pub orb_test_mode: bool,
    pub presence_debounce: Duration,
    pub drain_timeout: Duration,
    /// How long a client may take to send a request header (`--header-read-timeout`).
    pub header_read_timeout: Duration,
    pub limits: Limits,
    pub summary: crate::summary::SummarySettings,
    pub log_format: LogFormat,
    /// Rooms shared through Redis (`--redis-url`).
    pub redis: Option<crate::cluster::RedisSettings>,
    /// How `--orb-runtime=local` starts orbs (its signing key is set from `auth`).
    pub local: crate::orb_runtime::local::LocalSettings,
    /// The ICE servers participants get (`--ice-servers`, `--turn-secret-file`,
    /// `--turn-credential-ttl`).
    pub ice: crate::ice::IceSettings,
    /// Origins allowed to read `/ice-servers` across origins (`--cors-allowed-origins`).
    pub cors: crate::cors::AllowedOrigins,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("--auth=jwt: {0}")]
    SigningKey(#[from] orb_api::auth::KeyLoadError),
    #[error("--{flag} {message}")]
    OutOfRange { flag: &'static str, message: &'static str },
    #[error(
        "--auth=none is refused with --orb-runtime=kubernetes: anyone could create orbs and claim any role; use --auth=jwt (none is for --orb-runtime=local or none)"
    )]
    AuthNoneWithKubernetes,
    #[error("--redis-url must be a redis:// or rediss:// URL: {0}")]
    RedisUrl(String),
    #[error("--replica-id must be 1 to 128 characters of A-Z a-z 0-9 - _ . (got {0:?})")]
    ReplicaId(String),
    #[error("--trusted-proxy-header must be an HTTP header name such as X-Forwarded-For (got {0:?})")]
    TrustedProxyHeader(String),
    #[error("--summary-webhook-url must be an absolute http:// or https:// URL (got {0:?})")]
    WebhookUrl(String),
    #[error("cannot read the summary webhook secret file {path}: {source}")]
    WebhookSecretFile { path: PathBuf, source: std::io::Error },
    #[error("the summary webhook secret is empty; set ORB_SUMMARY_WEBHOOK_SECRET or the file to a non-empty key")]
    EmptyWebhookSecret,
    #[error(transparent)]
    Ice(#[from] crate::ice::IceConfigError),
    #[error("cannot read --turn-secret-file {path}: {source}")]
    TurnSecretFile { path: PathBuf, source: std::io::Error },
    #[error("--turn-secret-file {0} is empty (white space only); write the TURN server's static-auth-secret into it")]
    EmptyTurnSecret(PathBuf),
    #[error(transparent)]
    Cors(#[from] crate::cors::OriginError),
}

/// The TURN secret from `--turn-secret-file`, white space around it dropped.
fn turn_secret(file: Option<&std::path::Path>) -> Result<Option<crate::ice::TurnSecret>, ConfigError> {
    let Some(path) = file else { return Ok(None) };
    let content = std::fs::read(path).map_err(|source| ConfigError::TurnSecretFile {
        path: path.to_owned(),
        source,
    })?;
    crate::ice::TurnSecret::from_file_content(&content)
        .map(Some)
        .ok_or_else(|| ConfigError::EmptyTurnSecret(path.to_owned()))
}

/// The webhook's signing key: the env value, else the file (a trailing line break dropped).
fn webhook_secret(env: Option<String>, file: Option<&std::path::Path>) -> Result<Option<Vec<u8>>, ConfigError> {
    let raw = match (env, file) {
        (Some(v), _) => v.into_bytes(),
        (None, Some(path)) => std::fs::read(path).map_err(|source| ConfigError::WebhookSecretFile {
            path: path.to_owned(),
            source,
        })?,
        (None, None) => return Ok(None),
    };
    let key = orb_api::auth::without_trailing_line_break(raw);
    if key.is_empty() {
        return Err(ConfigError::EmptyWebhookSecret);
    }
    Ok(Some(key))
}

/// Checks the scheme and the URL's syntax; the password in it is never printed.
fn redis_url_ok(url: &str) -> Result<(), ConfigError> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(ConfigError::RedisUrl("the scheme must be redis or rediss".into()));
    }
    redis::Client::open(url)
        .map(drop)
        .map_err(|e| ConfigError::RedisUrl(e.to_string()))
}

/// The env variable holding the summary webhook's signing key itself.
pub const WEBHOOK_SECRET_ENV: &str = "ORB_SUMMARY_WEBHOOK_SECRET";

impl Config {
    /// Validates the arguments; the signing key comes from `env_key` (the value of
    /// [`SIGNING_KEY_ENV`]) or the key file.
    pub fn from_args(args: Args, env_key: Option<String>) -> Result<Self, ConfigError> {
        let range = |ok: bool, flag, message| {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::OutOfRange { flag, message })
            }
        };
        range(
            (1024..=16 << 20).contains(&args.max_frame_bytes),
            "max-frame-bytes",
            "must be between 1024 and 16777216",
        )?;
        range(
            (args.max_frame_bytes..=64 << 20).contains(&args.max_orb_frame_bytes),
            "max-orb-frame-bytes",
            "must be between --max-frame-bytes and 67108864",
        )?;
        range(
            (1024..=args.max_orb_frame_bytes).contains(&args.max_summary_bytes),
            "max-summary-bytes",
            "must be between 1024 and --max-orb-frame-bytes",
        )?;
        range(
            (Duration::from_secs(60)..=Duration::from_secs(30 * 86_400)).contains(&args.max_token_ttl),
            "max-token-ttl",
            "must be between 1m and 30 days",
        )?;
        range(
            args.summary_retry_window >= Duration::from_secs(1),
            "summary-retry-window",
            "must be at least 1s",
        )?;
        range(
            (2..=64).contains(&args.max_participants_per_room),
            "max-participants-per-room",
            "must be between 2 and 64",
        )?;
        range(
            args.max_messages_per_second >= 1,
            "max-messages-per-second",
            "must be at least 1",
        )?;
        range(
            args.max_bytes_per_second >= 1024,
            "max-bytes-per-second",
            "must be at least 1024",
        )?;
        range(
            args.header_read_timeout >= Duration::from_millis(100),
            "header-read-timeout",
            "must be at least 100ms",
        )?;
        range(
            args.idle_socket_timeout >= Duration::from_secs(1),
            "idle-socket-timeout",
            "must be at least 1s",
        )?;
        range(
            (1..=65536).contains(&args.send_queue),
            "send-queue",
            "must be between 1 and 65536",
        )?;
        range(args.max_connections >= 1, "max-connections", "must be at least 1")?;
        range(
            args.max_connections_per_client >= 1,
            "max-connections-per-client",
            "must be at least 1",
        )?;
        range(
            args.max_connections_per_token >= 1,
            "max-connections-per-token",
            "must be at least 1",
        )?;
        range(args.max_rooms >= 1, "max-rooms", "must be at least 1")?;
        range(
            (Duration::from_secs(60)..=Duration::from_secs(30 * 86_400)).contains(&args.turn_credential_ttl),
            "turn-credential-ttl",
            "must be between 1m and 30 days",
        )?;
        let ice = crate::ice::IceSettings::new(
            &args.ice_servers,
            turn_secret(args.turn_secret_file.as_deref())?,
            args.turn_credential_ttl,
        )?;
        let cors = crate::cors::AllowedOrigins::new(&args.cors_allowed_origins)?;
        let trusted_proxy_header = args
            .trusted_proxy_header
            .as_deref()
            .filter(|name| !name.is_empty())
            .map(|name| {
                http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| ConfigError::TrustedProxyHeader(name.to_owned()))
            })
            .transpose()?;
        range(
            args.presence_debounce >= Duration::from_millis(100),
            "presence-debounce",
            "must be at least 100ms",
        )?;
        let summary_webhook_url = args
            .summary_webhook_url
            .as_deref()
            .map(|raw| {
                raw.parse::<http::Uri>()
                    .ok()
                    .filter(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some())
                    .ok_or_else(|| ConfigError::WebhookUrl(raw.to_owned()))
            })
            .transpose()?;
        let auth = match args.auth {
            // Without tokens anyone could create rooms, each an AiOrb holding a GPU, and claim the
            // coach role: only where no cluster orbs are made.
            AuthMode::None if args.orb_runtime == RuntimeKind::Kubernetes => {
                return Err(ConfigError::AuthNoneWithKubernetes);
            }
            AuthMode::None => Authenticator::None,
            AuthMode::Jwt => Authenticator::Jwt {
                key: orb_api::auth::load_signing_key(env_key, args.signing_key_file.as_deref())?,
                max_ttl: args.max_token_ttl,
            },
        };
        range(
            args.max_concurrent_orbs >= 1,
            "max-concurrent-orbs",
            "must be at least 1",
        )?;
        range(args.warm_orbs <= 100, "warm-orbs", "must be at most 100")?;
        let local = crate::orb_runtime::local::LocalSettings {
            orb_binary: args.orb_binary,
            signaling_url: args.orb_signaling_url,
            log_dir: args.orb_log_dir,
            limits: orb_policy::Limits {
                max_concurrent_orbs: args.max_concurrent_orbs,
                max_orb_lifetime: args.max_orb_lifetime,
                idle_timeout: args.idle_timeout,
                empty_room_grace: args.empty_room_grace,
                ..Default::default()
            },
            test_mode: args.orb_test_mode,
            signing_key: match &auth {
                Authenticator::Jwt { key, .. } => Some(key.clone()),
                Authenticator::None => None,
            },
            warm_orbs: args.warm_orbs,
        };
        let redis = args
            .redis_url
            .map(|url| {
                redis_url_ok(&url)?;
                let replica_id = args.replica_id.unwrap_or_else(crate::cluster::default_replica_id);
                let valid = (1..=128).contains(&replica_id.len())
                    && replica_id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                if !valid {
                    return Err(ConfigError::ReplicaId(replica_id));
                }
                Ok(crate::cluster::RedisSettings { url, replica_id })
            })
            .transpose()?;
        Ok(Self {
            redis,
            local,
            ice,
            cors,
            listen: args.listen,
            orb_runtime: args.orb_runtime,
            auth,
            orb_namespace: args.orb_namespace,
            orb_test_mode: args.orb_test_mode,
            presence_debounce: args.presence_debounce,
            drain_timeout: args.drain_timeout,
            header_read_timeout: args.header_read_timeout,
            limits: Limits {
                max_frame_bytes: args.max_frame_bytes,
                max_participants_per_room: args.max_participants_per_room,
                max_messages_per_second: args.max_messages_per_second,
                max_bytes_per_second: args.max_bytes_per_second,
                idle_socket_timeout: args.idle_socket_timeout,
                send_queue: args.send_queue,
                max_orb_frame_bytes: args.max_orb_frame_bytes,
                admission: crate::admission::AdmissionLimits {
                    max_connections: args.max_connections,
                    max_connections_per_client: args.max_connections_per_client,
                    max_connections_per_token: args.max_connections_per_token,
                    max_rooms: args.max_rooms,
                    trusted_proxy_header,
                },
            },
            summary: crate::summary::SummarySettings {
                webhook_url: summary_webhook_url,
                webhook_secret: webhook_secret(
                    std::env::var(WEBHOOK_SECRET_ENV).ok().filter(|v| !v.is_empty()),
                    args.summary_webhook_secret_file.as_deref(),
                )?,
                retry_window: args.summary_retry_window,
                dir: args.summary_dir,
                max_bytes: args.max_summary_bytes,
            },
            log_format: args.log_format,
        })
    }

    /// Parses a command line as the binary would, with `env_key` as the signing key's env value.
    /// Other env variables are read by clap as usual.
    pub fn parse_from<I, T>(argv: I, env_key: Option<String>) -> anyhow::Result<Self>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Ok(Self::from_args(Args::try_parse_from(argv)?, env_key)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str], key: Option<&str>) -> Result<Config, String> {
        let argv = std::iter::once("orb-signaling").chain(extra.iter().copied());
        Config::parse_from(argv, key.map(str::to_owned)).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = parse(&[], Some(&"k".repeat(32))).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.orb_runtime, RuntimeKind::Kubernetes);
        assert!(matches!(c.auth, Authenticator::Jwt { .. }));
        assert_eq!(c.presence_debounce, Duration::from_secs(2));
        assert_eq!(c.limits.max_frame_bytes, 65536);
        assert_eq!(
            (
                c.limits.admission.max_connections,
                c.limits.admission.max_connections_per_client,
                c.limits.admission.max_connections_per_token,
                c.limits.admission.max_rooms
            ),
            (10000, 50, 4, 5000)
        );
        assert_eq!(c.limits.max_bytes_per_second, 65536);
        assert_eq!(c.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.admission.trusted_proxy_header, None);
    }

    #[test]
    fn jwt_needs_exactly_one_strong_key() {
        assert!(parse(&[], None).unwrap_err().contains("signing key is required"));
        assert!(parse(&[], Some("short")).unwrap_err().contains("at least 32 bytes"));
        let err = parse(&["--signing-key-file", "/nonexistent/key"], Some(&"k".repeat(32))).unwrap_err();
        assert!(err.contains("not both"), "{err}");
        let err = parse(&["--signing-key-file", "/nonexistent/key"], None).unwrap_err();
        assert!(err.contains("cannot read the signing key file"), "{err}");
        assert!(matches!(
            parse(&["--auth", "none", "--orb-runtime", "local"], None).unwrap().auth,
            Authenticator::None
        ));
    }

    /// A file with `content` in a fresh temporary directory.
    fn secret_file(name: &str, content: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("orb-signaling-config-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("turn-secret");
        std::fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn ice_servers_are_checked_and_turn_needs_a_secret() {
        let dev = ["--auth=none", "--orb-runtime=none"];
        let with = |extra: &[&str]| parse(&[&dev[..], extra].concat(), None);
        let c = with(&[]).unwrap();
        assert!(!c.ice.is_configured());
        assert!(c.cors.is_empty());
        let c = with(&["--ice-servers", "stun:stun.example.org:3478, stun:192.0.2.1"]).unwrap();
        assert!(c.ice.is_configured() && !c.ice.issues_credentials());

        let err = with(&["--ice-servers", "stun:a.example.org,turn:t.example.org"]).unwrap_err();
        assert!(
            err.contains("--turn-secret-file") && err.contains("turn:t.example.org"),
            "{err}"
        );
        let err = with(&["--ice-servers", "https://t.example.org"]).unwrap_err();
        assert!(err.contains("--ice-servers") && err.contains("scheme"), "{err}");
        let err = with(&["--ice-servers", "turn://t.example.org:3478"]).unwrap_err();
        assert!(err.contains("--ice-servers") && err.contains("without //"), "{err}");

        let empty = secret_file("empty", " \n");
        let err = with(&[
            "--ice-servers",
            "turns:t.example.org:443?transport=tcp",
            "--turn-secret-file",
            empty.to_str().unwrap(),
        ])
        .unwrap_err();
        assert!(err.contains("--turn-secret-file") && err.contains("is empty"), "{err}");
        let err = with(&["--turn-secret-file", "/nonexistent/turn-secret"]).unwrap_err();
        assert!(
            err.contains("cannot read --turn-secret-file /nonexistent/turn-secret"),
            "{err}"
        );
        let good = secret_file("good", "north\n");
        let c = with(&[
            "--ice-servers",
            "turn:t.example.org",
            "--turn-secret-file",
            good.to_str().unwrap(),
            "--turn-credential-ttl",
            "1h",
        ])
        .unwrap();
        assert!(c.ice.issues_credentials());
        assert!(!format!("{c:?}").contains("north"), "the secret is never printed");
        assert_eq!(c.ice.list_for("u", None, 0).ttl, 3600);

        let err = with(&["--cors-allowed-origins", "https://app.example.com/"]).unwrap_err();
        assert!(err.contains("--cors-allowed-origins"), "{err}");
        let c = with(&[
            "--cors-allowed-origins",
            "https://app.example.com,http://localhost:3000",
        ])
        .unwrap();
        assert!(!c.cors.is_empty());
    }

    #[test]
    fn bad_values_are_named() {
        let err = parse(
            &["--auth=none", "--orb-runtime=none", "--presence-debounce", "5 parsecs"],
            None,
        )
        .unwrap_err();
        assert!(err.contains("invalid duration"), "{err}");
        let err = parse(
            &["--auth=none", "--orb-runtime=none", "--max-participants-per-room", "1"],
            None,
        )
        .unwrap_err();
        assert!(err.contains("--max-participants-per-room"), "{err}");
        let err = parse(
            &[
                "--auth=none",
                "--orb-runtime=none",
                "--trusted-proxy-header",
                "X Forwarded",
            ],
            None,
        )
        .unwrap_err();
        assert!(err.contains("--trusted-proxy-header"), "{err}");
        let err = parse(&["--auth=none", "--orb-runtime=none", "--max-connections", "0"], None).unwrap_err();
        assert!(err.contains("--max-connections"), "{err}");
        let err = parse(
            &["--auth=none", "--orb-runtime=none", "--summary-webhook-url", "ftp://x"],
            None,
        )
        .unwrap_err();
        assert!(err.contains("--summary-webhook-url"), "{err}");
        let err = parse(
            &["--auth=none", "--orb-runtime=none", "--turn-credential-ttl", "10s"],
            None,
        )
        .unwrap_err();
        assert!(err.contains("--turn-credential-ttl"), "{err}");
        let err = parse(&["--auth=none", "--orb-runtime", "docker"], None).unwrap_err();
        assert!(err.contains("docker"), "{err}");
        // No tokens with cluster orbs: anyone could create GPU pods and claim any role.
        let err = parse(&["--auth=none"], None).unwrap_err();
        assert!(
            err.contains("--auth=none") && err.contains("--orb-runtime=kubernetes"),
            "{err}"
        );
    }
}
