//! Operator configuration: flags with env equivalents (names from the seed where it had one),
//! validated once at start-up into [`Config`], so a bad value stops the operator with a clear
//! message instead of surfacing as a failed reconcile later.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements, Toleration};
use orb_api::auth::SigningKey;
use orb_api::cidr::CidrList;
use orb_api::duration::parse_duration;
use orb_api::ice::IceTransportPolicy;
use thiserror::Error;

use crate::policy::Limits;

#[derive(Parser, Debug)]
#[command(
    name = "orb-operator",
    version,
    about = "Runs AiOrbs as GPU pods and enforces their limits"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the AiOrb CustomResourceDefinition as YAML and exit.
    Crd,
    /// Print the whole admission queue, in the order the admitter follows, and exit. Reads the
    /// API with the same settings as the operator (`--max-concurrent-orbs`, `--watch-namespace`,
    /// `--operator-namespace` and their env variables).
    Queue,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Admitted, non-terminal orbs at most; the rest queue.
    #[arg(long, env = "MAX_CONCURRENT_ORBS", default_value_t = 8)]
    pub max_concurrent_orbs: usize,
    /// Queued orbs whose place is written into `status.queuePosition`, from the head of the
    /// queue; orbs further back have none, so a freed slot rewrites at most this many statuses.
    #[arg(long, env = "ORB_QUEUE_POSITIONS", default_value_t = 10)]
    pub queue_positions: usize,
    /// Default orb lifetime from admission.
    #[arg(long, env = "MAX_ORB_LIFETIME", default_value = "2h", value_parser = parse_duration)]
    pub max_orb_lifetime: Duration,
    /// Default idle timeout (no activity in the room).
    #[arg(long, env = "IDLE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Default grace before an empty room's orb ends.
    #[arg(long, env = "ORB_CLEANUP_GRACE_PERIOD", default_value = "60s", value_parser = parse_duration)]
    pub empty_room_grace: Duration,
    /// Lifetime cap of test-mode orbs.
    #[arg(long, env = "ORB_TEST_MODE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub test_mode_timeout: Duration,
    /// How long finished AiOrbs are kept before deletion.
    #[arg(long, env = "FINISHED_ORB_TTL", default_value = "1h", value_parser = parse_duration)]
    pub finished_orb_ttl: Duration,
    /// How long past its grace period a terminating pod may linger (a lost node) before its orb
    /// is recorded PodLost and its slot released.
    #[arg(long, env = "ORB_STUCK_POD_MARGIN", default_value = "2m", value_parser = parse_duration)]
    pub stuck_pod_margin: Duration,
    /// Orb pods kept running in no room, brain ready; an admitted orb is bound to one instead of
    /// starting a pod (a cold start). Extra GPU holders besides the cap; the pool shrinks as the
    /// cap fills. 0 disables the pool.
    #[arg(long, env = "ORB_WARM_POOL_SIZE", default_value_t = 0)]
    pub warm_orbs: usize,
    /// Namespace of the warm pool: only AiOrbs in it are bound to warm orbs (a pod serves its own
    /// namespace). Default: `--watch-namespace`, else the operator's namespace.
    #[arg(long, env = "ORB_WARM_POOL_NAMESPACE")]
    pub warm_pool_namespace: Option<String>,
    /// An AiOrb with `spec.startAt` is admitted and started this long before it, so its orb is in
    /// the room when the first person arrives.
    #[arg(long, env = "ORB_PREWARM_LEAD", default_value = "2m", value_parser = parse_duration)]
    pub prewarm_lead: Duration,
    /// Replacements of a failed orb pod while its room is occupied.
    #[arg(long, env = "MAX_ORB_RESTARTS", default_value_t = 3)]
    pub max_orb_restarts: i32,
    /// Container image of the orb pods (required to run).
    #[arg(long, env = "ORB_IMAGE")]
    pub orb_image: Option<String>,
    /// Pull policy of the orb image.
    #[arg(long, env = "ORB_IMAGE_PULL_POLICY", default_value = "IfNotPresent")]
    pub orb_image_pull_policy: String,
    /// Signaling URL the orbs join through.
    #[arg(long, env = "SIGNALING_URL", default_value = "ws://orb-signaling:8080")]
    pub signaling_url: String,
    /// Watch one namespace only; all namespaces when unset.
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "OPERATOR_HTTP_ADDR", default_value = "0.0.0.0:8081")]
    pub http_addr: SocketAddr,
    /// Extended resource requested per orb pod.
    #[arg(long, env = "ORB_GPU_RESOURCE", default_value = "nvidia.com/gpu")]
    pub gpu_resource: String,
    /// Units of the GPU resource per orb pod; 0 requests none.
    #[arg(long, env = "ORB_GPU_COUNT", default_value_t = 1)]
    pub gpu_count: u32,
    /// Node selector of orb pods, as key=value pairs separated by commas.
    #[arg(long, env = "ORB_NODE_SELECTOR", default_value = "")]
    pub orb_node_selector: String,
    /// Tolerations of orb pods, as a JSON array of Kubernetes tolerations.
    #[arg(long, env = "ORB_TOLERATIONS", default_value = "[]")]
    pub orb_tolerations: String,
    /// RuntimeClass of orb pods (for example `nvidia`).
    #[arg(long, env = "ORB_RUNTIME_CLASS")]
    pub orb_runtime_class: Option<String>,
    /// Image pull secrets of orb pods, comma-separated Secret names.
    #[arg(long, env = "ORB_IMAGE_PULL_SECRETS", default_value = "")]
    pub orb_image_pull_secrets: String,
    /// Extra env of the orb container, as a JSON array of Kubernetes EnvVars.
    #[arg(long, env = "ORB_EXTRA_ENV", default_value = "[]")]
    pub orb_extra_env: String,
    /// The local brain's models for orb pods: a Kubernetes volume source as JSON (say
    /// `{"persistentVolumeClaim":{"claimName":"orb-models","readOnly":true}}` or
    /// `{"image":{"reference":"registry/models:v1"}}`), mounted read-only at
    /// `--orb-models-mount-path` and named to the orb as ORB_MODELS_DIR. Empty: no models volume.
    #[arg(long, env = "ORB_MODELS_VOLUME", default_value = "")]
    pub orb_models_volume: String,
    #[arg(long, env = "ORB_MODELS_MOUNT_PATH", default_value = "/models")]
    pub orb_models_mount_path: String,
    /// Secrets whose keys become env of the orb container (AI API keys), comma-separated.
    #[arg(long, env = "ORB_ENV_FROM_SECRETS", default_value = "")]
    pub orb_env_from_secrets: String,
    /// Resources of the orb container (besides the GPU), as JSON ResourceRequirements.
    #[arg(long, env = "ORB_RESOURCES", default_value = "{}")]
    pub orb_resources: String,
    /// Remote ICE candidates the orbs drop, as comma-separated CIDRs: the orb's own defaults
    /// (loopback, link-local, unspecified) plus the cluster's pod and service ranges. Passed to
    /// every orb pod as `ORB_DENIED_CANDIDATE_CIDRS`; unset, the orbs keep their defaults.
    #[arg(long, env = "ORB_DENIED_CANDIDATE_CIDRS")]
    pub orb_denied_candidate_cidrs: Option<String>,
    /// The orbs' ICE transport policy: `all` (any candidate pair) or `relay` (media only through
    /// the TURN relay signaling names). Passed to every orb pod as `ORB_ICE_TRANSPORT_POLICY`;
    /// unset, the orbs keep their default (`all`).
    #[arg(long, env = "ORB_ICE_TRANSPORT_POLICY")]
    pub orb_ice_transport_policy: Option<IceTransportPolicy>,
    /// File with the key that signs orb room tokens (shared with signaling).
    #[arg(long, env = "ORB_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<std::path::PathBuf>,
    /// Run leader election over a Lease; disable only with a single replica.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Namespace of the leader Lease and the admission ledger (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub operator_namespace: String,
    /// This replica's identity in leader election.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Log format: `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

/// How orb pods are built.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodSettings {
    pub image: String,
    pub image_pull_policy: String,
    pub signaling_url: String,
    pub gpu_resource: String,
    pub gpu_count: u32,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    pub runtime_class: Option<String>,
    pub image_pull_secrets: Vec<String>,
    pub extra_env: Vec<EnvVar>,
    pub env_from_secrets: Vec<String>,
    pub resources: ResourceRequirements,
    /// `ORB_DENIED_CANDIDATE_CIDRS` of the orb pods; `None` leaves the orb's default.
    pub denied_candidate_cidrs: Option<CidrList>,
    /// `ORB_ICE_TRANSPORT_POLICY` of the orb pods; `None` leaves the orb's default.
    pub ice_transport_policy: Option<IceTransportPolicy>,
    /// The local brain's models: a volume (named `models`) and where it is mounted.
    pub models: Option<(k8s_openapi::api::core::v1::Volume, String)>,
}

/// The warm pool: its size and the namespace its pods run in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSettings {
    pub size: usize,
    pub namespace: String,
}

/// The validated configuration of a running operator.
#[derive(Clone, Debug)]
pub struct Config {
    pub limits: Limits,
    pub pod: PodSettings,
    pub signing_key: SigningKey,
    pub watch_namespace: Option<String>,
    /// The warm pool; `None` when its size is 0.
    pub pool: Option<PoolSettings>,
    pub queue_positions: usize,
    pub http_addr: SocketAddr,
    pub leader_election: bool,
    pub operator_namespace: String,
    pub identity: String,
    pub json_logs: bool,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("--orb-image (ORB_IMAGE) is required")]
    MissingImage,
    #[error(transparent)]
    SigningKey(#[from] orb_api::auth::KeyLoadError),
    #[error("{flag}: {message}")]
    Invalid { flag: &'static str, message: String },
}

fn invalid(flag: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        message: message.into(),
    }
}

fn comma_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(String::from)
        .collect()
}

fn json<T: serde::de::DeserializeOwned>(flag: &'static str, s: &str) -> Result<T, ConfigError> {
    serde_json::from_str(s).map_err(|e| invalid(flag, format!("not valid JSON for this setting: {e}")))
}

impl RunArgs {
    fn models_volume(&self) -> Result<Option<(k8s_openapi::api::core::v1::Volume, String)>, ConfigError> {
        if self.orb_models_volume.trim().is_empty() {
            return Ok(None);
        }
        let mut source: serde_json::Map<String, serde_json::Value> =
            json("--orb-models-volume", &self.orb_models_volume)?;
        source.insert("name".into(), "models".into());
        let volume: k8s_openapi::api::core::v1::Volume = serde_json::from_value(source.into())
            .map_err(|e| invalid("--orb-models-volume", format!("not a volume source: {e}")))?;
        let path = self.orb_models_mount_path.trim();
        if !path.starts_with('/') || path == "/" {
            return Err(invalid("--orb-models-mount-path", "must be an absolute path below /"));
        }
        Ok(Some((volume, path.to_owned())))
    }

    /// Validates the flags. `signing_key_env` is `ORB_SIGNING_KEY`, read by the caller so that the
    /// key never appears in `--help` or in parsed-argument debug output.
    pub fn validate(&self, signing_key_env: Option<String>) -> Result<Config, ConfigError> {
        if !(1..=10_000).contains(&self.max_concurrent_orbs) {
            // 0 would admit nothing and queue every call forever: refused, not accepted silently.
            return Err(invalid("--max-concurrent-orbs", "must be between 1 and 10000"));
        }
        if self.queue_positions > 10_000 {
            return Err(invalid("--queue-positions", "must be between 0 and 10000"));
        }
        let day = Duration::from_secs(orb_api::MAX_DURATION_SECONDS as u64);
        for (flag, d, min) in [
            ("--max-orb-lifetime", self.max_orb_lifetime, Duration::from_secs(1)),
            ("--idle-timeout", self.idle_timeout, Duration::from_secs(1)),
            ("--empty-room-grace", self.empty_room_grace, Duration::ZERO),
            ("--test-mode-timeout", self.test_mode_timeout, Duration::from_secs(1)),
            ("--finished-orb-ttl", self.finished_orb_ttl, Duration::ZERO),
            ("--stuck-pod-margin", self.stuck_pod_margin, Duration::ZERO),
            ("--prewarm-lead", self.prewarm_lead, Duration::ZERO),
        ] {
            if d < min || d > day * 30 {
                return Err(invalid(flag, format!("{d:?} is out of range")));
            }
        }
        if self.warm_orbs > 1_000 {
            return Err(invalid("--warm-orbs", "must be between 0 and 1000"));
        }
        if !(0..=100).contains(&self.max_orb_restarts) {
            return Err(invalid("--max-orb-restarts", "must be between 0 and 100"));
        }
        let image = self
            .orb_image
            .clone()
            .filter(|i| !i.trim().is_empty())
            .ok_or(ConfigError::MissingImage)?;
        if !["Always", "IfNotPresent", "Never"].contains(&self.orb_image_pull_policy.as_str()) {
            return Err(invalid(
                "--orb-image-pull-policy",
                "must be Always, IfNotPresent or Never",
            ));
        }
        if !(self.signaling_url.starts_with("ws://") || self.signaling_url.starts_with("wss://")) {
            return Err(invalid("--signaling-url", "must start with ws:// or wss://"));
        }
        let mut node_selector = BTreeMap::new();
        for pair in comma_list(&self.orb_node_selector) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| invalid("--orb-node-selector", format!("{pair:?} is not key=value")))?;
            node_selector.insert(k.trim().to_owned(), v.trim().to_owned());
        }
        if !["text", "json"].contains(&self.log_format.as_str()) {
            return Err(invalid("--log-format", "must be text or json"));
        }
        let signing_key = orb_api::auth::load_signing_key(signing_key_env, self.signing_key_file.as_deref())?;
        let identity = self.identity.clone().unwrap_or_else(|| {
            std::env::var("HOSTNAME").unwrap_or_else(|_| format!("orb-operator-{}", std::process::id()))
        });
        Ok(Config {
            limits: Limits {
                max_concurrent_orbs: self.max_concurrent_orbs,
                max_orb_lifetime: self.max_orb_lifetime,
                idle_timeout: self.idle_timeout,
                empty_room_grace: self.empty_room_grace,
                test_mode_timeout: self.test_mode_timeout,
                finished_orb_ttl: self.finished_orb_ttl,
                max_restarts: self.max_orb_restarts,
                stuck_pod_margin: self.stuck_pod_margin,
                prewarm_lead: self.prewarm_lead,
                ..Limits::default()
            },
            pod: PodSettings {
                image,
                image_pull_policy: self.orb_image_pull_policy.clone(),
                signaling_url: self.signaling_url.clone(),
                gpu_resource: self.gpu_resource.clone(),
                gpu_count: self.gpu_count,
                node_selector,
                tolerations: json("--orb-tolerations", &self.orb_tolerations)?,
                runtime_class: self.orb_runtime_class.clone().filter(|s| !s.is_empty()),
                image_pull_secrets: comma_list(&self.orb_image_pull_secrets),
                extra_env: json("--orb-extra-env", &self.orb_extra_env)?,
                env_from_secrets: comma_list(&self.orb_env_from_secrets),
                resources: json("--orb-resources", &self.orb_resources)?,
                denied_candidate_cidrs: self
                    .orb_denied_candidate_cidrs
                    .as_deref()
                    .map(str::parse)
                    .transpose()
                    .map_err(|e: orb_api::cidr::CidrError| invalid("--orb-denied-candidate-cidrs", e.to_string()))?,
                ice_transport_policy: self.orb_ice_transport_policy,
                models: self.models_volume()?,
            },
            signing_key,
            watch_namespace: self.watch_namespace.clone().filter(|s| !s.is_empty()),
            pool: (self.warm_orbs > 0).then(|| PoolSettings {
                size: self.warm_orbs,
                namespace: [&self.warm_pool_namespace, &self.watch_namespace]
                    .into_iter()
                    .flatten()
                    .find(|ns| !ns.is_empty())
                    .cloned()
                    .unwrap_or_else(|| self.operator_namespace.clone()),
            }),
            queue_positions: self.queue_positions,
            http_addr: self.http_addr,
            leader_election: self.leader_election,
            operator_namespace: self.operator_namespace.clone(),
            identity,
            json_logs: self.log_format == "json",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("orb-operator").chain(args.iter().copied()))
    }

    fn config(args: &[&str]) -> Result<Config, ConfigError> {
        parse(args).unwrap().run.validate(Some(KEY.into()))
    }

    #[test]
    fn defaults_are_the_seed_values() {
        let c = config(&["--orb-image", "orb:1"]).unwrap();
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.pod.gpu_resource, "nvidia.com/gpu");
        assert_eq!(c.pod.signaling_url, "ws://orb-signaling:8080");
        assert_eq!(c.http_addr.to_string(), "0.0.0.0:8081");
        assert!(c.leader_election);
        assert_eq!(c.pool, None, "the warm pool is opt-in");
    }

    #[test]
    fn the_warm_pool_runs_in_the_pool_then_the_watched_then_the_own_namespace() {
        let ns = |args: &[&str]| {
            let mut all = vec!["--orb-image", "orb:1", "--operator-namespace", "orb-system"];
            all.extend_from_slice(args);
            config(&all).unwrap().pool.map(|p| (p.size, p.namespace))
        };
        assert_eq!(ns(&["--warm-orbs", "2"]), Some((2, "orb-system".into())));
        assert_eq!(
            ns(&["--warm-orbs", "2", "--watch-namespace", "calls"]),
            Some((2, "calls".into()))
        );
        assert_eq!(
            ns(&[
                "--warm-orbs",
                "1",
                "--watch-namespace",
                "calls",
                "--warm-pool-namespace",
                "gpu"
            ]),
            Some((1, "gpu".into()))
        );
        assert!(config(&["--orb-image", "x", "--warm-orbs", "5000"]).is_err());
    }

    #[test]
    fn seed_style_values_parse() {
        let c = config(&[
            "--orb-image",
            "orb:1",
            "--max-orb-lifetime",
            "7200000",
            "--idle-timeout",
            "300000",
        ])
        .unwrap();
        assert_eq!(c.limits.max_orb_lifetime, Duration::from_secs(7200));
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(300));
    }

    #[test]
    fn pod_settings_parse_from_their_text_forms() {
        let c = config(&[
            "--orb-image",
            "orb:1",
            "--orb-node-selector",
            "gpu=true, zone=a",
            "--orb-tolerations",
            r#"[{"key":"nvidia.com/gpu","operator":"Exists","effect":"NoSchedule"}]"#,
            "--orb-env-from-secrets",
            "ai-keys",
            "--orb-resources",
            r#"{"limits":{"memory":"2Gi"}}"#,
        ])
        .unwrap();
        assert_eq!(c.pod.node_selector.get("zone").map(String::as_str), Some("a"));
        assert_eq!(c.pod.tolerations[0].key.as_deref(), Some("nvidia.com/gpu"));
        assert_eq!(c.pod.env_from_secrets, vec!["ai-keys"]);
        assert_eq!(c.pod.denied_candidate_cidrs, None, "unset: the orb's own default");
        assert_eq!(c.pod.ice_transport_policy, None, "unset: the orb's own default");
        assert!(c.pod.resources.limits.unwrap().contains_key("memory"));
    }

    #[test]
    fn the_candidate_deny_list_is_validated_and_may_be_empty() {
        let c = config(&[
            "--orb-image",
            "x",
            "--orb-denied-candidate-cidrs",
            "127.0.0.0/8, 10.96.0.0/12",
        ])
        .unwrap();
        assert_eq!(
            c.pod.denied_candidate_cidrs.unwrap().to_string(),
            "127.0.0.0/8,10.96.0.0/12"
        );
        let c = config(&["--orb-image", "x", "--orb-denied-candidate-cidrs", ""]).unwrap();
        assert!(c.pod.denied_candidate_cidrs.unwrap().is_empty());
        let e = config(&["--orb-image", "x", "--orb-denied-candidate-cidrs", "10.0.0.0/40"])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--orb-denied-candidate-cidrs: "), "{e}");
    }

    #[test]
    fn the_ice_transport_policy_is_all_or_relay() {
        let c = config(&["--orb-image", "x", "--orb-ice-transport-policy", "relay"]).unwrap();
        assert_eq!(c.pod.ice_transport_policy, Some(IceTransportPolicy::Relay));
        let e = parse(&["--orb-image", "x", "--orb-ice-transport-policy", "none"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`all` or `relay`"), "{e}");
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let msg = |args: &[&str]| config(args).unwrap_err().to_string();
        assert!(msg(&[]).contains("ORB_IMAGE"));
        assert!(msg(&["--orb-image", "x", "--orb-tolerations", "{"]).contains("--orb-tolerations"));
        assert!(msg(&["--orb-image", "x", "--orb-node-selector", "gpu"]).contains("key=value"));
        assert!(msg(&["--orb-image", "x", "--signaling-url", "http://x"]).contains("ws://"));
        assert!(msg(&["--orb-image", "x", "--max-orb-lifetime", "0"]).contains("--max-orb-lifetime"));
        let e = parse(&["--idle-timeout", "soon"]).unwrap_err().to_string();
        assert!(e.contains("invalid duration"), "{e}");
        let e = parse(&["--orb-image", "x"])
            .unwrap()
            .run
            .validate(None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ORB_SIGNING_KEY"), "{e}");
        let e = parse(&["--orb-image", "x"])
            .unwrap()
            .run
            .validate(Some("short".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 32 bytes"), "{e}");
    }
}
