//! The objects the operator creates for an orb, built by pure functions from the AiOrb and the
//! configuration: the orb's pod and the Secret holding its signaling token, and the warm pool's
//! pods and their assignment credentials.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction,
    LocalObjectReference, Pod, PodSecurityContext, PodSpec, Probe, ResourceRequirements, SeccompProfile, Secret,
    SecretEnvSource, SecretKeySelector, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use orb_api::AiOrb;
use orb_api::assignment::ASSIGN_TOKEN_ENV;
use orb_api::ice::ICE_TRANSPORT_POLICY_ENV;
use orb_api::naming::{pod_name, token_secret_name};

use crate::config::PodSettings;
use crate::policy::Launch;

pub use crate::policy::TERMINATION_GRACE_SECONDS;
/// Added to the remaining lifetime for `activeDeadlineSeconds`, so the kubelet's backstop only
/// fires when the operator's own MaxLifetime termination did not.
pub const ACTIVE_DEADLINE_MARGIN: Duration = Duration::from_secs(60);
/// The orb's HTTP port (health, readiness, metrics).
pub const ORB_HTTP_PORT: i32 = 9090;
/// Non-root uid/gid of the orb image.
pub const ORB_UID: i64 = 65532;
/// The key of the token in the per-orb Secret.
pub const TOKEN_KEY: &str = "token";

pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_ORB: &str = "hybridcoach.io/orb";
pub const LABEL_ATTEMPT: &str = "hybridcoach.io/attempt";
/// Warm pool pods: `warm` while unbound, `bound` once bound to an AiOrb.
pub const LABEL_POOL: &str = "hybridcoach.io/pool";
pub const POOL_WARM: &str = "warm";
pub const POOL_BOUND: &str = "bound";
/// Selects every object the operator manages (its pod watch uses it).
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=orb-operator";

fn labels(orb: &AiOrb) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.into(), "orb".into()),
        ("app.kubernetes.io/component".into(), "ai-orb".into()),
        (LABEL_MANAGED_BY.into(), "orb-operator".into()),
        (LABEL_ORB.into(), orb.name_any()),
    ])
}

fn owned_meta(orb: &AiOrb, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: orb.namespace(),
        labels: Some(labels),
        owner_references: orb.controller_owner_ref(&()).map(|r| vec![r]),
        ..Default::default()
    }
}

/// The per-orb Secret with the orb's room token; owned by the AiOrb so it goes with it.
pub fn build_token_secret(orb: &AiOrb, token: &str) -> Secret {
    Secret {
        metadata: owned_meta(orb, token_secret_name(&orb.name_any()), labels(orb)),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            TOKEN_KEY.into(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(5),
        ..Default::default()
    }
}

/// The orb's candidate deny list, when the operator was given one (else the orb's default holds).
fn denied_candidates_env(settings: &PodSettings) -> Option<EnvVar> {
    let list = settings.denied_candidate_cidrs.as_ref()?;
    Some(env("ORB_DENIED_CANDIDATE_CIDRS", list.to_string()))
}

/// The pod for one attempt of an orb, running `launch` (see [`crate::policy::launch`]): what is
/// left of the session's lifetime, so a replacement pod does not get a fresh full lifetime.
pub fn build_pod(orb: &AiOrb, settings: &PodSettings, attempt: i32, launch: &Launch) -> Pod {
    let orb_name = orb.name_any();
    let lifetime_secs = launch.lifetime_left.as_secs().max(1);
    let token = secret_env("ORB_SIGNALING_TOKEN", token_secret_name(&orb_name));
    let mut pod_labels = labels(orb);
    pod_labels.insert(LABEL_ATTEMPT.into(), attempt.to_string());
    orb_pod(
        owned_meta(orb, pod_name(&orb_name, attempt), pod_labels),
        settings,
        launch.args.clone(),
        token,
        Some(active_deadline(lifetime_secs)),
    )
}

/// `activeDeadlineSeconds` for a pod with `lifetime_secs` of lifetime left from its start.
pub fn active_deadline(lifetime_secs: u64) -> i64 {
    (lifetime_secs + ACTIVE_DEADLINE_MARGIN.as_secs()) as i64
}

/// A warm pool pod: the orb started with `--warm`, in no room, owned by nobody until it is bound
/// to an AiOrb; its assignment credential comes from the Secret [`build_assign_secret`].
pub fn build_warm_pod(name: &str, namespace: &str, settings: &PodSettings) -> Pod {
    let labels = BTreeMap::from([
        (LABEL_NAME.into(), "orb".into()),
        ("app.kubernetes.io/component".into(), "ai-orb".into()),
        (LABEL_MANAGED_BY.into(), "orb-operator".into()),
        (LABEL_POOL.into(), POOL_WARM.into()),
    ]);
    let meta = ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        labels: Some(labels),
        ..Default::default()
    };
    let credential = secret_env(ASSIGN_TOKEN_ENV, assign_secret_name(name));
    // No deadline until bound: the binding sets the orb's own.
    orb_pod(meta, settings, vec!["--warm".into()], credential, None)
}

/// The Secret holding a warm pod's assignment credential, owned by the pod so it goes with it.
pub fn build_assign_secret(pod: &Pod, credential: &str) -> Secret {
    let name = pod.metadata.name.clone().unwrap_or_default();
    Secret {
        metadata: ObjectMeta {
            name: Some(assign_secret_name(&name)),
            namespace: pod.metadata.namespace.clone(),
            labels: pod.metadata.labels.clone(),
            owner_references: pod.controller_owner_ref(&()).map(|mut r| {
                // Owned, not controlled: nothing reconciles the Secret through its pod.
                r.controller = None;
                vec![r]
            }),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            TOKEN_KEY.into(),
            ByteString(credential.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}

/// The name of a warm pod's credential Secret.
pub fn assign_secret_name(pod: &str) -> String {
    format!("{pod}-assign")
}

fn secret_env(name: &str, secret: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret,
                key: TOKEN_KEY.into(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Every orb pod, cold or warm: `args`, the one secret env var, the settings' extra env, GPU,
/// security context and probes.
fn orb_pod(
    metadata: ObjectMeta,
    settings: &PodSettings,
    args: Vec<String>,
    secret: EnvVar,
    deadline: Option<i64>,
) -> Pod {
    let mut env_vars = vec![secret, env("ORB_HTTP_ADDR", format!("0.0.0.0:{ORB_HTTP_PORT}"))];
    env_vars.extend(denied_candidates_env(settings));
    env_vars.extend(
        settings
            .ice_transport_policy
            .map(|policy| env(ICE_TRANSPORT_POLICY_ENV, policy.to_string())),
    );
    if let Some((_, path)) = &settings.models {
        env_vars.push(env("ORB_MODELS_DIR", path.clone()));
    }
    env_vars.extend(settings.extra_env.iter().cloned());
    let mut resources: ResourceRequirements = settings.resources.clone();
    if settings.gpu_count > 0 {
        // Extended resources must be requested as limits (requests default to them).
        let gpus = Quantity(settings.gpu_count.to_string());
        resources
            .limits
            .get_or_insert_with(BTreeMap::new)
            .insert(settings.gpu_resource.clone(), gpus);
    }

    Pod {
        metadata,
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
            active_deadline_seconds: deadline,
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            node_selector: Some(settings.node_selector.clone()).filter(|m| !m.is_empty()),
            tolerations: Some(settings.tolerations.clone()).filter(|t| !t.is_empty()),
            runtime_class_name: settings.runtime_class.clone(),
            image_pull_secrets: Some(
                settings
                    .image_pull_secrets
                    .iter()
                    .map(|n| LocalObjectReference { name: n.clone() })
                    .collect::<Vec<_>>(),
            )
            .filter(|s| !s.is_empty()),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(ORB_UID),
                run_as_group: Some(ORB_UID),
                fs_group: Some(ORB_UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            containers: vec![Container {
                name: "orb".into(),
                image: Some(settings.image.clone()),
                image_pull_policy: Some(settings.image_pull_policy.clone()),
                args: Some(args),
                env: Some(env_vars),
                env_from: Some(
                    settings
                        .env_from_secrets
                        .iter()
                        .map(|s| EnvFromSource {
                            secret_ref: Some(SecretEnvSource {
                                name: s.clone(),
                                optional: Some(false),
                            }),
                            ..Default::default()
                        })
                        .collect::<Vec<_>>(),
                )
                .filter(|v| !v.is_empty()),
                ports: Some(vec![ContainerPort {
                    name: Some("http".into()),
                    container_port: ORB_HTTP_PORT,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                resources: Some(resources),
                // Seed: an orb silent for 60 s is unresponsive, for 120 s it is killed.
                readiness_probe: Some(probe("/readyz", 10, 6)),
                liveness_probe: Some(probe("/healthz", 30, 4)),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    read_only_root_filesystem: Some(true),
                    run_as_non_root: Some(true),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".into()]),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                termination_message_path: Some("/dev/termination-log".into()),
                termination_message_policy: Some("FallbackToLogsOnError".into()),
                volume_mounts: Some(
                    std::iter::once(VolumeMount {
                        name: "tmp".into(),
                        mount_path: "/tmp".into(),
                        ..Default::default()
                    })
                    .chain(settings.models.iter().map(|(volume, path)| VolumeMount {
                        name: volume.name.clone(),
                        mount_path: path.clone(),
                        read_only: Some(true),
                        ..Default::default()
                    }))
                    .collect(),
                ),
                ..Default::default()
            }],
            volumes: Some(
                std::iter::once(Volume {
                    name: "tmp".into(),
                    empty_dir: Some(EmptyDirVolumeSource {
                        size_limit: Some(Quantity("64Mi".into())),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .chain(settings.models.iter().map(|(volume, _)| volume.clone()))
                .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Toleration;
    use orb_api::AiOrbSpec;

    fn orb() -> AiOrb {
        let mut orb = AiOrb::new(
            "room-1",
            AiOrbSpec {
                room_id: "room-1".into(),
                session_id: Some("s-1".into()),
                coach_id: Some("coach-1".into()),
                test_mode: true,
                idle_timeout_seconds: Some(120),
                ..Default::default()
            },
        );
        orb.metadata.namespace = Some("calls".into());
        orb.metadata.uid = Some("uid-1".into());
        orb
    }

    /// The policy's launch of `orb` with `lifetime_left` seconds of its session left.
    fn launch(orb: &AiOrb, settings: &PodSettings, lifetime_left: i64) -> Launch {
        let limits = crate::policy::orb_limits(&orb.spec, &crate::policy::Limits::default());
        let now = k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let clock = crate::policy::OrbClock {
            admitted_at: Some(
                now - k8s_openapi::jiff::SignedDuration::from_secs(limits.lifetime.as_secs() as i64 - lifetime_left),
            ),
            ..Default::default()
        };
        crate::policy::launch(&orb.spec, &limits, &clock, now, &settings.signaling_url)
    }

    fn settings() -> PodSettings {
        PodSettings {
            image: "registry.example/orb:1.0".into(),
            image_pull_policy: "IfNotPresent".into(),
            signaling_url: "ws://orb-signaling:8080".into(),
            gpu_resource: "nvidia.com/gpu".into(),
            gpu_count: 1,
            node_selector: BTreeMap::from([("gpu".into(), "true".into())]),
            tolerations: vec![Toleration {
                key: Some("nvidia.com/gpu".into()),
                operator: Some("Exists".into()),
                ..Default::default()
            }],
            runtime_class: Some("nvidia".into()),
            image_pull_secrets: vec!["regcred".into()],
            extra_env: vec![env("RUST_LOG", "info")],
            env_from_secrets: vec!["ai-keys".into()],
            resources: Default::default(),
            denied_candidate_cidrs: Some("169.254.0.0/16,10.96.0.0/12".parse().unwrap()),
            ice_transport_policy: Some(orb_api::ice::IceTransportPolicy::Relay),
            models: None,
        }
    }

    #[test]
    fn the_models_volume_is_mounted_read_only_and_named_to_the_orb() {
        let volume: Volume = serde_json::from_value(serde_json::json!({
            "name": "models",
            "persistentVolumeClaim": {"claimName": "orb-models", "readOnly": true}
        }))
        .unwrap();
        let with_models = PodSettings {
            models: Some((volume, "/models".into())),
            ..settings()
        };
        let spec = build_pod(&orb(), &with_models, 1, &launch(&orb(), &with_models, 30))
            .spec
            .unwrap();
        let volumes = spec.volumes.unwrap();
        assert_eq!(
            volumes[1].persistent_volume_claim.as_ref().unwrap().claim_name,
            "orb-models"
        );
        let container = &spec.containers[0];
        let mount = &container.volume_mounts.as_ref().unwrap()[1];
        assert_eq!(
            (mount.name.as_str(), mount.mount_path.as_str(), mount.read_only),
            ("models", "/models", Some(true))
        );
        let env = container.env.as_ref().unwrap();
        assert!(
            env.iter()
                .any(|e| e.name == "ORB_MODELS_DIR" && e.value.as_deref() == Some("/models"))
        );
        // Without models, the pod has its scratch volume only.
        let plain = build_pod(&orb(), &settings(), 1, &launch(&orb(), &settings(), 30))
            .spec
            .unwrap();
        assert_eq!(plain.volumes.unwrap().len(), 1);
    }

    #[test]
    fn the_pod_carries_every_setting_and_the_safety_defaults() {
        let pod = build_pod(&orb(), &settings(), 2, &launch(&orb(), &settings(), 30));
        assert_eq!(pod.metadata.name.as_deref(), Some("orb-room-1-2"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("calls"));
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("AiOrb", "uid-1", Some(true))
        );
        let spec = pod.spec.unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.termination_grace_period_seconds, Some(10));
        assert_eq!(spec.active_deadline_seconds, Some(90));
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.runtime_class_name.as_deref(), Some("nvidia"));
        assert_eq!(spec.node_selector.unwrap()["gpu"], "true");
        assert_eq!(spec.tolerations.unwrap().len(), 1);
        assert_eq!(spec.image_pull_secrets.unwrap()[0].name, "regcred");
        assert_eq!(spec.security_context.as_ref().unwrap().run_as_non_root, Some(true));
        let c = &spec.containers[0];
        assert_eq!(c.image.as_deref(), Some("registry.example/orb:1.0"));
        assert_eq!(
            c.args.as_ref().unwrap(),
            &[
                "--room=room-1",
                "--signaling-url=ws://orb-signaling:8080",
                "--session=s-1",
                "--coach=coach-1",
                "--max-lifetime=30s",
                "--idle-timeout=120s",
                "--test-mode"
            ]
        );
        let env = c.env.as_ref().unwrap();
        let token = env.iter().find(|e| e.name == "ORB_SIGNALING_TOKEN").unwrap();
        assert!(token.value.is_none(), "the token never appears in the pod spec");
        assert_eq!(
            token.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap().name,
            "orb-room-1-token"
        );
        assert!(env.iter().any(|e| e.name == "RUST_LOG"));
        let denied = env.iter().find(|e| e.name == "ORB_DENIED_CANDIDATE_CIDRS").unwrap();
        assert_eq!(denied.value.as_deref(), Some("169.254.0.0/16,10.96.0.0/12"));
        let policy = env.iter().find(|e| e.name == ICE_TRANSPORT_POLICY_ENV).unwrap();
        assert_eq!(policy.value.as_deref(), Some("relay"));
        assert_eq!(
            c.env_from.as_ref().unwrap()[0].secret_ref.as_ref().unwrap().name,
            "ai-keys"
        );
        assert_eq!(
            c.resources.as_ref().unwrap().limits.as_ref().unwrap()["nvidia.com/gpu"],
            Quantity("1".into())
        );
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/readyz")
        );
        assert_eq!(
            c.liveness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/healthz")
        );
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap(), &["ALL"]);
    }

    #[test]
    fn no_gpu_and_no_optional_settings_leave_fields_unset() {
        let bare = PodSettings {
            gpu_count: 0,
            image: "orb".into(),
            ..Default::default()
        };
        let spec = build_pod(&orb(), &bare, 0, &launch(&orb(), &bare, 7200)).spec.unwrap();
        assert!(spec.node_selector.is_none() && spec.tolerations.is_none() && spec.image_pull_secrets.is_none());
        assert!(spec.containers[0].resources.as_ref().unwrap().limits.is_none());
        assert!(spec.containers[0].env_from.is_none());
        let env = spec.containers[0].env.as_ref().unwrap();
        assert!(
            !env.iter().any(|e| e.name == "ORB_DENIED_CANDIDATE_CIDRS"),
            "the orb's own default deny list"
        );
        assert!(
            !env.iter().any(|e| e.name == ICE_TRANSPORT_POLICY_ENV),
            "the orb's own default ICE transport policy"
        );
    }

    #[test]
    fn the_token_secret_is_owned_by_the_orb() {
        let s = build_token_secret(&orb(), "jwt");
        assert_eq!(s.metadata.name.as_deref(), Some("orb-room-1-token"));
        assert_eq!(s.data.unwrap()[TOKEN_KEY].0, b"jwt");
        assert_eq!(s.metadata.owner_references.unwrap()[0].name, "room-1");
    }
}
