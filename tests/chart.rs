//! The Helm chart, rendered by the real Helm 4 binary, checked against the code: lint, every CI
//! values file, security contexts, ports, RBAC coverage of exactly the API calls the operator
//! makes, the CRD copy, the rendered plain manifests and the dashboards.

mod support;

use std::collections::BTreeSet;

use clap::{CommandFactory, Parser};
use serde_json::Value;
use support::{CHART, helm, render, root, run};

fn values_files() -> Vec<Option<String>> {
    let mut files: Vec<Option<String>> = vec![None];
    for entry in std::fs::read_dir(root().join(CHART).join("ci")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with("-values.yaml") {
            files.push(Some(format!("{CHART}/ci/{name}")));
        }
    }
    files
}

fn find<'a>(objects: &'a [Value], kind: &str, name_suffix: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| {
            o["kind"] == kind
                && o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .ends_with(name_suffix)
        })
        .unwrap_or_else(|| panic!("no {kind} named *{name_suffix}"))
}

#[test]
fn lints_strictly_with_every_values_file() {
    for values in values_files() {
        let mut cmd = helm();
        cmd.args(["lint", "--strict", CHART]);
        if let Some(v) = &values {
            cmd.args(["-f", v]);
        }
        run(&mut cmd);
    }
}

#[test]
fn every_object_is_labelled_and_every_workload_is_locked_down() {
    for values in values_files() {
        let objects = render(values.as_deref(), &[]);
        assert!(!objects.is_empty());
        for o in &objects {
            let what = format!("{} {} ({values:?})", o["kind"], o["metadata"]["name"]);
            assert!(
                o["apiVersion"].is_string() && o["metadata"]["name"].is_string(),
                "{what}"
            );
            assert_eq!(
                o["metadata"]["labels"]["app.kubernetes.io/part-of"], "orb-operator",
                "{what}"
            );
            let pod_spec = match o["kind"].as_str().unwrap() {
                "Deployment" => &o["spec"]["template"]["spec"],
                "Pod" => &o["spec"],
                _ => continue,
            };
            assert_eq!(pod_spec["securityContext"]["runAsNonRoot"], true, "{what}");
            assert_eq!(
                pod_spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
                "{what}"
            );
            for c in pod_spec["containers"].as_array().unwrap() {
                let sc = &c["securityContext"];
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
                assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]), "{what}");
                // coturn's image carries NET_BIND_SERVICE as a file capability (it does not start
                // without it in the bounding set); nothing else gets any.
                let added = if c["name"] == "coturn" {
                    serde_json::json!(["NET_BIND_SERVICE"])
                } else {
                    Value::Null
                };
                assert_eq!(sc["capabilities"]["add"], added, "{what}");
                if o["kind"] == "Deployment" {
                    if c["name"] == "redis" || c["name"] == "coturn" {
                        // Not ours: probed on its port.
                        assert!(c["readinessProbe"]["tcpSocket"].is_object(), "{what}");
                    } else {
                        assert!(c["readinessProbe"]["httpGet"]["path"] == "/readyz", "{what}");
                        assert!(c["livenessProbe"]["httpGet"]["path"] == "/healthz", "{what}");
                    }
                    assert!(c["resources"]["requests"].is_object(), "{what}");
                }
            }
        }
    }
}

fn rules_of(role: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for g in rule["apiGroups"].as_array().unwrap() {
            for r in rule["resources"].as_array().unwrap() {
                for v in rule["verbs"].as_array().unwrap() {
                    out.insert((
                        g.as_str().unwrap().into(),
                        r.as_str().unwrap().into(),
                        v.as_str().unwrap().into(),
                    ));
                }
            }
        }
    }
    out
}

/// Where the operator's grants apply. That they are exactly what the operator uses is proven on a
/// real API server: every operator test of `tests/apiserver.rs` runs under these roles.
#[test]
fn operator_rbac_is_namespaced_unless_cluster_wide_is_chosen() {
    // By default one namespace, the release's (where signaling creates AiOrbs): no ClusterRole.
    let objects = render(None, &[]);
    assert!(
        !objects
            .iter()
            .any(|o| o["kind"] == "ClusterRole" || o["kind"] == "ClusterRoleBinding")
    );
    let watched = find(&objects, "Role", "orb-operator");
    assert_eq!(watched["metadata"]["namespace"], "orbs");
    let operator = find(&objects, "Deployment", "-operator");
    assert_eq!(env_of(operator, "WATCH_NAMESPACE").unwrap()["value"], "orbs");
    // Cluster-wide is an explicit choice.
    let wide = render(None, &["--set", "operator.clusterWide=true"]);
    assert_eq!(rules_of(find(&wide, "ClusterRole", "-operator")), rules_of(watched));
    assert!(env_of(find(&wide, "Deployment", "-operator"), "WATCH_NAMESPACE").is_none());
    let out = helm()
        .args(["template", "orb", CHART, "--set", "operator.clusterWide=true"])
        .args(["--set", "operator.watchNamespace=calls"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "cluster-wide and one namespace at once");
    assert_eq!(
        find(&objects, "Role", "-operator-own")["metadata"].get("namespace"),
        None
    );
    // Watching one namespace narrows the grant to a Role there.
    let narrowed = render(Some(&format!("{CHART}/ci/single-namespace-values.yaml")), &[]);
    assert!(!narrowed.iter().any(|o| o["kind"] == "ClusterRole"));
    let role = find(&narrowed, "Role", "orb-operator");
    assert_eq!(role["metadata"]["namespace"], "calls");
    assert_eq!(rules_of(role), rules_of(watched));
}

/// The Ingress routes the signaling socket and the web client, never /metrics or the probes.
#[test]
fn the_ingress_does_not_expose_metrics() {
    let objects = render(
        None,
        &[
            "--set",
            "signaling.ingress.enabled=true",
            "--set",
            "signaling.ingress.host=calls.example",
        ],
    );
    let ingress = find(&objects, "Ingress", "-signaling");
    let paths: Vec<(String, String)> = ingress["spec"]["rules"][0]["http"]["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["path"].as_str().unwrap().to_owned(),
                p["pathType"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let routed = |url: &str| {
        paths.iter().any(|(path, kind)| match kind.as_str() {
            "Exact" => url == path,
            _ => url.starts_with(path.as_str()),
        })
    };
    for public in [
        "/ws-simple/room-1",
        "/rooms/room-1",
        "/web/room.js",
        "/",
        "/auth/check",
        "/ice-servers",
    ] {
        assert!(routed(public), "{public} is not routed: {paths:?}");
    }
    for internal in ["/metrics", "/healthz", "/readyz", "/api/dev/token"] {
        assert!(!routed(internal), "{internal} is routed: {paths:?}");
    }
}

/// The orbs' UDP media may go anywhere but the cluster's own ranges and link-local addresses
/// (cloud metadata): a hostile ICE candidate cannot make an orb probe the cluster.
#[test]
fn orb_udp_egress_excludes_the_cluster_ranges() {
    let objects = render(None, &[]);
    let policy = find(&objects, "NetworkPolicy", "-orbs");
    let udp: Vec<&Value> = policy["spec"]["egress"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|rule| {
            rule["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["protocol"] == "UDP" && p["port"].is_null())
        })
        .collect();
    assert_eq!(udp.len(), 1, "one any-port UDP rule: {udp:?}");
    let block = &udp[0]["to"][0]["ipBlock"];
    assert_eq!(block["cidr"], "0.0.0.0/0");
    let except: Vec<&str> = block["except"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for range in ["169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"] {
        assert!(except.contains(&range), "{range} not excluded: {except:?}");
    }
    // The ranges follow values, and a TURN relay inside them can be let through.
    let custom = render(
        None,
        &[
            "--set",
            "networkPolicy.clusterCIDRs={100.64.0.0/10,fd00:10:96::/112}",
            "--set",
            "networkPolicy.turnCIDRs={100.64.1.5/32}",
        ],
    );
    let policy = find(&custom, "NetworkPolicy", "-orbs");
    let text = policy["spec"]["egress"].to_string();
    assert!(
        text.contains("100.64.0.0/10") && text.contains("100.64.1.5/32"),
        "{text}"
    );
    // An except lies inside its cidr: an IPv6 range is no exception to 0.0.0.0/0 (the policy
    // would be refused), and no IPv6 UDP rule exists to leave it out of.
    assert!(!text.contains("fd00:10:96::/112"), "{text}");
}

/// Whether the orbs' NetworkPolicy lets an orb open `protocol` `port` to `ip`, evaluated as the
/// API server does: some egress rule whose ports take it and whose peers include the address (an
/// ipBlock's cidr minus its excepts). Peers chosen by pod or namespace labels are pods, never an
/// address outside them, so they admit none here.
fn orb_egress_allows(objects: &[Value], protocol: &str, port: u16, ip: &str) -> bool {
    let ip: std::net::IpAddr = ip.parse().unwrap();
    let in_cidr = |cidr: &Value| {
        cidr.as_str()
            .unwrap()
            .parse::<orb_api::cidr::Cidr>()
            .unwrap()
            .contains(ip)
    };
    let ports_take = |rule: &Value| match rule["ports"].as_array() {
        None => true,
        Some(ports) => ports.iter().any(|p| {
            let first = p["port"].as_u64().map(|n| u16::try_from(n).unwrap());
            let last = p["endPort"].as_u64().map(|n| u16::try_from(n).unwrap()).or(first);
            p["protocol"].as_str().unwrap_or("TCP") == protocol
                && first.is_none_or(|first| (first..=last.unwrap()).contains(&port))
        }),
    };
    let peers_include = |rule: &Value| match rule["to"].as_array() {
        None => true,
        Some(peers) => peers.iter().any(|peer| {
            let block = &peer["ipBlock"];
            !block.is_null()
                && in_cidr(&block["cidr"])
                && !block["except"].as_array().into_iter().flatten().any(in_cidr)
        }),
    };
    find(objects, "NetworkPolicy", "-orbs")["spec"]["egress"]
        .as_array()
        .unwrap()
        .iter()
        .any(|rule| ports_take(rule) && peers_include(rule))
}

/// With the chart's defaults the orbs reach the AI service (HTTPS to a public address, which is no
/// stable range) but no HTTPS port in the cluster's ranges or link-local; `aiEndpointCIDRs` or a
/// proxy narrow it.
#[test]
fn orbs_reach_the_ai_service_over_https_by_default_and_only_outside_the_cluster() {
    const PUBLIC: &str = "162.159.140.245";
    let defaults = render(None, &[]);
    assert!(orb_egress_allows(&defaults, "TCP", 443, PUBLIC));
    assert!(orb_egress_allows(&defaults, "TCP", 443, "203.0.113.10"));
    for cluster in ["10.96.0.1", "172.20.3.4", "192.168.1.10", "169.254.169.254"] {
        assert!(!orb_egress_allows(&defaults, "TCP", 443, cluster), "443 to {cluster}");
    }
    assert!(!orb_egress_allows(&defaults, "TCP", 80, PUBLIC), "HTTPS only");
    assert!(!orb_egress_allows(&defaults, "TCP", 6443, "10.0.0.1"), "no API server");
    // The media rule is still UDP only.
    assert!(orb_egress_allows(&defaults, "UDP", 3478, PUBLIC));
    assert!(!orb_egress_allows(&defaults, "UDP", 3478, "10.0.0.1"));

    // The cluster's ranges follow clusterCIDRs.
    let custom = render(None, &["--set", "networkPolicy.clusterCIDRs={100.64.0.0/10}"]);
    assert!(!orb_egress_allows(&custom, "TCP", 443, "100.64.5.6"));
    assert!(orb_egress_allows(&custom, "TCP", 443, "10.1.2.3"));

    // aiEndpointCIDRs: 443 there only.
    let narrowed = render(None, &["--set", "networkPolicy.aiEndpointCIDRs={162.159.140.0/24}"]);
    assert!(orb_egress_allows(&narrowed, "TCP", 443, PUBLIC));
    assert!(!orb_egress_allows(&narrowed, "TCP", 443, "203.0.113.10"));

    // A proxy: its addresses on its port, and no HTTPS elsewhere.
    let proxied = render(
        None,
        &[
            "--set",
            "orb.proxy.https=http://egress-proxy.corp:3128",
            "--set",
            "networkPolicy.proxyCIDRs={10.20.0.5/32}",
        ],
    );
    assert!(orb_egress_allows(&proxied, "TCP", 3128, "10.20.0.5"));
    assert!(!orb_egress_allows(&proxied, "TCP", 3128, "10.20.0.6"));
    assert!(!orb_egress_allows(&proxied, "TCP", 443, PUBLIC));
    let default_port = render(
        None,
        &[
            "--set",
            "orb.proxy.https=egress-proxy.corp",
            "--set",
            "networkPolicy.proxyCIDRs={198.51.100.7/32}",
        ],
    );
    assert!(orb_egress_allows(&default_port, "TCP", 80, "198.51.100.7"));
}

/// `orb.proxy` reaches every orb pod the operator builds as the env the orb reads its proxy from,
/// before `orb.extraEnv`; settings that cannot work fail rendering, without echoing a password.
#[test]
fn orb_pods_get_the_proxy_the_chart_sets() {
    let objects = render(
        None,
        &[
            "--set",
            "orb.proxy.https=http://egress-proxy.corp:3128",
            "--set",
            "orb.proxy.noProxy={.internal,10.0.0.0/8}",
            "--set",
            "networkPolicy.proxyCIDRs={10.20.0.5/32}",
            "--set-json",
            r#"orb.extraEnv=[{"name":"RUST_LOG","value":"debug"}]"#,
        ],
    );
    let extra_env = env_of(find(&objects, "Deployment", "-operator"), "ORB_EXTRA_ENV").unwrap()["value"]
        .as_str()
        .unwrap()
        .to_owned();
    for pod in orb_pods_from_flags(&[format!("--orb-extra-env={extra_env}")]) {
        let env: Vec<(String, String)> = pod.spec.unwrap().containers[0]
            .env
            .clone()
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.value.unwrap_or_default()))
            .filter(|(name, _)| ["HTTPS_PROXY", "NO_PROXY", "RUST_LOG"].contains(&name.as_str()))
            .collect();
        assert_eq!(
            env,
            [
                ("HTTPS_PROXY".to_owned(), "http://egress-proxy.corp:3128".to_owned()),
                ("NO_PROXY".to_owned(), ".internal,10.0.0.0/8".to_owned()),
                ("RUST_LOG".to_owned(), "debug".to_owned()),
            ]
        );
    }
    // The names are the orb's, and it parses the values.
    assert!(orb::proxy::HTTPS_PROXY_ENV.contains(&"HTTPS_PROXY"));
    assert!(orb::proxy::NO_PROXY_ENV.contains(&"NO_PROXY"));
    orb::proxy::ProxySettings::parse(&orb::proxy::ProxyEnv {
        https_proxy: Some("http://egress-proxy.corp:3128".into()),
        http_proxy: None,
        no_proxy: Some(".internal,10.0.0.0/8".into()),
    })
    .unwrap();
    // Without a proxy the orbs get no proxy env (only the brain).
    assert_eq!(
        env_of(find(&render(None, &[]), "Deployment", "-operator"), "ORB_EXTRA_ENV").unwrap()["value"],
        r#"[{"name":"ORB_BRAIN","value":"openai-realtime"}]"#
    );

    for (extra, message) in [
        (
            vec!["--set", "orb.proxy.https=http://egress-proxy.corp:3128"],
            "orb.proxy.https needs networkPolicy.proxyCIDRs",
        ),
        (
            vec!["--set", "networkPolicy.proxyCIDRs={10.20.0.5/32}"],
            "networkPolicy.proxyCIDRs is for the proxy of orb.proxy.https",
        ),
        (
            vec![
                "--set",
                "orb.proxy.https=http://me:hunter2@egress-proxy.corp:3128",
                "--set",
                "networkPolicy.proxyCIDRs={10.20.0.5/32}",
            ],
            "is not http://host[:port]",
        ),
        (
            vec![
                "--set",
                "orb.proxy.https=https://egress-proxy.corp:443",
                "--set",
                "networkPolicy.proxyCIDRs={10.20.0.5/32}",
            ],
            "is not http://host[:port]",
        ),
    ] {
        let error = render_error(&extra);
        assert!(error.contains(message), "{extra:?}: {error}");
        assert!(!error.contains("hunter2"), "{error}");
    }
}

#[test]
fn signaling_rbac_grants_exactly_the_calls_its_kubernetes_runtime_makes() {
    let objects = render(None, &[]);
    // The orbs' lifecycle and presence, and the durable session summaries.
    let expected: BTreeSet<(String, String, String)> = orb_signaling::orb_runtime::kubernetes::API_CALLS
        .iter()
        .chain(orb_signaling::summary::kube_store::API_CALLS)
        .flat_map(|(g, r, verbs)| verbs.iter().map(move |v| (g.to_string(), r.to_string(), v.to_string())))
        .collect();
    let role = find(&objects, "Role", "-signaling");
    assert_eq!(rules_of(role), expected);
    // One rule per (apiGroup, resource).
    let mut seen = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for g in rule["apiGroups"].as_array().unwrap() {
            for r in rule["resources"].as_array().unwrap() {
                assert!(seen.insert((g.to_string(), r.to_string())), "two rules for {g} {r}");
            }
        }
    }
}

/// The env names a binary's flags read.
fn env_names(command: clap::Command) -> BTreeSet<String> {
    command
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect()
}

#[test]
fn the_signaling_deployment_sets_only_settings_signaling_reads() {
    let objects = render(Some(&format!("{CHART}/ci/monitoring-values.yaml")), &[]);
    let mut known = env_names(orb_signaling::config::Args::command());
    // Read by the config code itself: a key is never a flag (flags show in `ps`).
    known.insert(orb_signaling::config::WEBHOOK_SECRET_ENV.to_owned());
    let signaling = find(&objects, "Deployment", "-signaling");
    // The values file switches the summary webhook on, so its settings are checked too.
    assert!(env_of(signaling, orb_signaling::config::WEBHOOK_SECRET_ENV).is_some());
    let env = container_env(signaling);
    for name in &env {
        // A variable only there to be spliced into another one's value by Kubernetes, `$(NAME)`.
        let spliced = signaling["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["value"].as_str().is_some_and(|v| v.contains(&format!("$({name})"))));
        assert!(
            known.contains(name) || spliced,
            "the chart sets {name}, which orb-signaling does not read"
        );
    }
    signaling_config(signaling).unwrap_or_else(|e| panic!("orb-signaling refuses the chart's settings: {e}"));
}

#[test]
fn signaling_replicas_share_rooms_through_the_chart_s_redis_by_default() {
    let objects = render(None, &["--set", "signaling.ingress.enabled=true"]);
    let signaling = find(&objects, "Deployment", "-signaling");
    assert_eq!(signaling["spec"]["replicas"], 2);
    let url = env_of(signaling, "SIGNALING_REDIS_URL").expect("signaling is given Redis");
    assert_eq!(url["value"], "redis://:$(REDIS_PASSWORD)@orb-redis:6379");
    let password = env_of(signaling, "REDIS_PASSWORD").unwrap();
    assert_eq!(
        password["valueFrom"]["secretKeyRef"]["name"], "orb-redis",
        "by reference only"
    );
    let redis = find(&objects, "Deployment", "-redis");
    let container = &redis["spec"]["template"]["spec"]["containers"][0];
    assert!(
        container["image"]
            .as_str()
            .unwrap()
            .starts_with("docker.io/library/redis:")
    );
    assert_eq!(container["args"][0], "--requirepass");
    assert_eq!(redis["spec"]["strategy"]["type"], "Recreate");
    assert!(find(&objects, "Secret", "-redis")["data"]["password"].is_string());
    // Redis talks to signaling only.
    let policy = find(&objects, "NetworkPolicy", "-redis");
    assert_eq!(policy["spec"]["egress"], serde_json::json!([]));
    let from = &policy["spec"]["ingress"][0]["from"];
    assert_eq!(from.as_array().unwrap().len(), 1);
    assert_eq!(
        from[0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "orb-signaling"
    );
    // No affinity tricks: any replica serves any room.
    let ingress = find(&objects, "Ingress", "-signaling");
    let annotations = ingress["metadata"]["annotations"].as_object().unwrap();
    assert!(
        annotations.keys().all(|k| !k.contains("upstream-hash")),
        "{annotations:?}"
    );
}

#[test]
fn more_than_one_signaling_replica_needs_redis_and_an_own_redis_replaces_the_chart_s() {
    let out = helm()
        .args(["template", "orb", CHART, "--set", "redis.enabled=false"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("signaling.replicas > 1 needs Redis"), "{stderr}");

    let single = render(None, &["--set", "redis.enabled=false", "--set", "signaling.replicas=1"]);
    assert!(env_of(find(&single, "Deployment", "-signaling"), "SIGNALING_REDIS_URL").is_none());
    assert!(!single.iter().any(|o| o["metadata"]["name"] == "orb-redis"));

    let managed = render(None, &["--set", "signaling.redis.url=rediss://redis.example:6380"]);
    let url = env_of(find(&managed, "Deployment", "-signaling"), "SIGNALING_REDIS_URL").unwrap();
    assert_eq!(url["value"], "rediss://redis.example:6380");
    assert!(
        !managed.iter().any(|o| o["metadata"]["name"] == "orb-redis"),
        "no second Redis"
    );

    let secret = render(None, &["--set", "signaling.redis.existingSecret=my-redis"]);
    let url = env_of(find(&secret, "Deployment", "-signaling"), "SIGNALING_REDIS_URL").unwrap();
    assert_eq!(url["valueFrom"]["secretKeyRef"]["name"], "my-redis");
    assert_eq!(url["valueFrom"]["secretKeyRef"]["key"], "url");

    // A password in a plain value would sit in the pod spec: the schema refuses it.
    let out = helm()
        .args([
            "template",
            "orb",
            CHART,
            "--set",
            "signaling.redis.url=redis://:hunter2@redis:6379",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a URL with a password is accepted");
}

/// The env of the first container, by name.
fn env_of<'a>(deployment: &'a Value, name: &str) -> Option<&'a Value> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
}

/// A `$(NAME)` reference (Kubernetes splices another variable, a Secret's value, there) replaced
/// by a stand-in value.
fn spliced(value: &str) -> String {
    let mut out = value.to_owned();
    while let Some(start) = out.find("$(") {
        let end = start + out[start..].find(')').expect("a closed $(NAME)");
        out.replace_range(start..=end, "stand-in");
    }
    out
}

/// The configuration orb-signaling starts with from the rendered Deployment's env: each literal
/// value passed as the flag that reads that variable, the signing key as its env value. Variables
/// set from a Secret or the pod's fields are left out (a `$(NAME)` splice of one gets a stand-in).
fn signaling_config(deployment: &Value) -> Result<orb_signaling::config::Config, String> {
    let command = orb_signaling::config::Args::command();
    let mut argv = vec!["orb-signaling".to_owned()];
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    for var in env {
        let name = var["name"].as_str().unwrap();
        // The key file is the Secret's mount; the key itself is given below (both are refused).
        let Some(value) = var["value"].as_str().filter(|_| name != "ORB_SIGNING_KEY_FILE") else {
            continue;
        };
        // Not a flag's: a variable only spliced into another one.
        let Some(arg) = command.get_arguments().find(|a| a.get_env().is_some_and(|e| e == name)) else {
            continue;
        };
        let flag = arg.get_long().unwrap();
        let value = spliced(value);
        if arg.get_action().takes_values() {
            argv.push(format!("--{flag}={value}"));
        } else {
            match value.as_str() {
                "true" => argv.push(format!("--{flag}")),
                "false" => {}
                other => return Err(format!("{name}={other:?} is not a boolean")),
            }
        }
    }
    orb_signaling::config::Config::parse_from(&argv, Some("k".repeat(32))).map_err(|e| format!("{argv:?}: {e:#}"))
}

/// The limits signaling applies, as `(name, value)` pairs to compare.
fn signaling_limits(config: &orb_signaling::config::Config) -> Vec<(&'static str, String)> {
    let admission = &config.limits.admission;
    vec![
        ("maxConnections", admission.max_connections.to_string()),
        (
            "maxConnectionsPerClient",
            admission.max_connections_per_client.to_string(),
        ),
        (
            "maxConnectionsPerToken",
            admission.max_connections_per_token.to_string(),
        ),
        ("maxRooms", admission.max_rooms.to_string()),
        ("maxBytesPerSecond", config.limits.max_bytes_per_second.to_string()),
        (
            "headerReadTimeout",
            orb_api::duration::format_duration(config.header_read_timeout),
        ),
        ("maxSummaryBytes", config.summary.max_bytes.to_string()),
    ]
}

/// Every `signaling.limits` value reaches signaling as the setting it names: the chart's defaults
/// are the binary's, and other values are the ones signaling runs with. The client address comes
/// from X-Forwarded-For behind the chart's Ingress (the ingress controller sets it), from the TCP
/// peer without one, and from the header named when one is.
#[test]
fn signaling_gets_its_limits_and_trusts_a_proxy_header_only_behind_a_proxy() {
    let objects = render(None, &[]);
    let signaling = find(&objects, "Deployment", "-signaling");
    let defaults = orb_signaling::config::Config::parse_from(["orb-signaling"], Some("k".repeat(32))).unwrap();
    assert_eq!(
        signaling_limits(&signaling_config(signaling).unwrap()),
        signaling_limits(&defaults),
        "the chart's defaults are signaling's"
    );
    assert!(env_of(signaling, "SIGNALING_TRUSTED_PROXY_HEADER").is_none());

    // From a values file, as an operator sets them: YAML numbers reach the template as floats,
    // which must still render as integers (not 2e+07).
    let chosen = [
        ("maxConnections", "20000000"),
        ("maxConnectionsPerClient", "20"),
        ("maxConnectionsPerToken", "2"),
        ("maxRooms", "700"),
        ("maxBytesPerSecond", "131072"),
        ("headerReadTimeout", "2500ms"),
        ("maxSummaryBytes", "4194304"),
    ];
    let values = support::target_dir().join(format!("chart-signaling-limits-{}.yaml", std::process::id()));
    let yaml: String = chosen.iter().map(|(k, v)| format!("    {k}: {v}\n")).collect();
    std::fs::write(&values, format!("signaling:\n  limits:\n{yaml}")).unwrap();
    let objects = render(values.to_str(), &[]);
    let _ = std::fs::remove_file(&values);
    let config = signaling_config(find(&objects, "Deployment", "-signaling")).unwrap();
    let expected: Vec<(&str, String)> = chosen.iter().map(|(k, v)| (*k, v.to_string())).collect();
    assert_eq!(signaling_limits(&config), expected);
    // Values signaling would refuse at start-up are refused by the chart already.
    for bad in [
        "maxBytesPerSecond=1000",
        "headerReadTimeout=10",
        "maxSummaryBytes=16777216",
        "maxConnectionsPerToken=0",
    ] {
        let out = helm()
            .args(["template", "orb", CHART, "--set", &format!("signaling.limits.{bad}")])
            .output()
            .unwrap();
        assert!(!out.status.success(), "signaling.limits.{bad} is accepted");
    }

    let header = |extra: &[&str]| {
        let objects = render(None, extra);
        env_of(
            find(&objects, "Deployment", "-signaling"),
            "SIGNALING_TRUSTED_PROXY_HEADER",
        )
        .map(|e| e["value"].as_str().unwrap().to_owned())
    };
    assert_eq!(
        header(&["--set", "signaling.ingress.enabled=true"]).as_deref(),
        Some("X-Forwarded-For")
    );
    assert_eq!(
        header(&[
            "--set",
            "signaling.ingress.enabled=true",
            "--set",
            "signaling.limits.trustedProxyHeader=X-Real-IP"
        ])
        .as_deref(),
        Some("X-Real-IP")
    );
    assert_eq!(
        header(&["--set", "signaling.limits.trustedProxyHeader=X-Envoy-External-Address"]).as_deref(),
        Some("X-Envoy-External-Address")
    );
    let bad = helm()
        .args([
            "template",
            "orb",
            CHART,
            "--set",
            "signaling.limits.trustedProxyHeader=Bad Header",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success(), "a header name with a space is accepted");
}

const SUMMARY_ENV: &[&str] = &[
    "ORB_SUMMARY_WEBHOOK_URL",
    "ORB_SUMMARY_WEBHOOK_SECRET",
    "ORB_SUMMARY_WEBHOOK_SECRET_FILE",
    "ORB_SUMMARY_RETRY_WINDOW",
];

#[test]
fn the_summary_webhook_key_reaches_signaling_only_by_secret_reference() {
    const KEY: &str = "a-webhook-key-that-must-not-leak";
    let objects = render(
        None,
        &[
            "--set",
            "signaling.summaryWebhook.url=https://hooks.example.com/orb",
            "--set",
            &format!("signaling.summaryWebhook.secret={KEY}"),
            "--set",
            "signaling.summaryWebhook.retryWindow=48h",
        ],
    );
    let signaling = find(&objects, "Deployment", "-signaling");
    assert_eq!(
        env_of(signaling, "ORB_SUMMARY_WEBHOOK_URL").unwrap()["value"],
        "https://hooks.example.com/orb"
    );
    assert_eq!(env_of(signaling, "ORB_SUMMARY_RETRY_WINDOW").unwrap()["value"], "48h");
    let secret_env = env_of(signaling, orb_signaling::config::WEBHOOK_SECRET_ENV).unwrap();
    assert!(secret_env.get("value").is_none(), "{secret_env}");
    let reference = &secret_env["valueFrom"]["secretKeyRef"];
    let deployment_text = serde_json::to_string(signaling).unwrap();
    assert!(!deployment_text.contains(KEY), "the key is in the Deployment");
    // The chart's Secret holds the key, under the referenced name and key.
    let secret = find(&objects, "Secret", reference["name"].as_str().unwrap());
    assert_eq!(secret["metadata"]["name"], reference["name"]);
    let encoded = secret["data"][reference["key"].as_str().unwrap()].as_str().unwrap();
    assert_eq!(encoded, base64(KEY.as_bytes()));
    assert!(
        !deployment_text.contains(encoded),
        "the encoded key is in the Deployment"
    );

    // An existing Secret: referenced under its key; the chart creates none.
    let objects = render(
        None,
        &[
            "--set",
            "signaling.summaryWebhook.url=https://hooks.example.com/orb",
            "--set",
            "signaling.summaryWebhook.existingSecret=orb-summary-hmac",
            "--set",
            "signaling.summaryWebhook.secretKey=hmac",
        ],
    );
    let signaling = find(&objects, "Deployment", "-signaling");
    assert_eq!(
        env_of(signaling, orb_signaling::config::WEBHOOK_SECRET_ENV).unwrap()["valueFrom"]["secretKeyRef"],
        serde_json::json!({"name": "orb-summary-hmac", "key": "hmac"})
    );
    assert!(
        !objects
            .iter()
            .any(|o| o["kind"] == "Secret" && o["metadata"]["name"].as_str().unwrap().ends_with("-summary-webhook"))
    );

    // Both at once is refused.
    let out = helm()
        .args(["template", "orb", CHART])
        .args(["--set", "signaling.summaryWebhook.url=https://hooks.example.com/orb"])
        .args(["--set", "signaling.summaryWebhook.existingSecret=orb-summary-hmac"])
        .args(["--set", "signaling.summaryWebhook.secret=x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn without_a_summary_webhook_url_signaling_gets_no_webhook_settings() {
    // A key alone does not switch delivery on.
    for extra in [
        &[][..],
        &["--set", "signaling.summaryWebhook.secret=a-key"][..],
        &["--set", "signaling.summaryWebhook.existingSecret=orb-summary-hmac"][..],
    ] {
        let objects = render(None, extra);
        let env = container_env(find(&objects, "Deployment", "-signaling"));
        for name in SUMMARY_ENV {
            assert!(
                !env.iter().any(|e| e == name),
                "{name} is set without a url ({extra:?})"
            );
        }
        assert!(
            !objects
                .iter()
                .any(|o| o["kind"] == "Secret" && o["metadata"]["name"].as_str().unwrap().ends_with("-summary-webhook")),
            "{extra:?}"
        );
    }
}

#[test]
fn a_summary_webhook_url_must_be_http_or_https() {
    for bad in ["hooks.example.com/orb", "ftp://hooks.example.com/orb", "https://"] {
        let out = helm()
            .args(["template", "orb", CHART])
            .args(["--set", &format!("signaling.summaryWebhook.url={bad}")])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad} is accepted");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("summaryWebhook/url"),
            "{bad}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for good in [
        "http://receiver.apps:8080/summaries",
        "https://hooks.example.com/orb?team=1",
    ] {
        render(None, &["--set", &format!("signaling.summaryWebhook.url={good}")]);
    }
}

/// Standard base64 with padding (the encoding of a Secret's `data`).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The operator's pod builder and the orb binary agree: every argument the pod passes parses,
/// and every env var it sets is one the orb reads.
#[test]
fn orb_pods_start_the_orb_with_flags_and_env_it_reads() {
    use orb_api::{AiOrb, AiOrbSpec};
    let run = orb_operator::config::Cli::try_parse_from([
        "orb-operator",
        "--orb-image=orb:test",
        r#"--orb-extra-env=[{"name":"ORB_BRAIN","value":"test"}]"#,
    ])
    .unwrap()
    .run;
    let config = run.validate(Some("0123456789abcdef0123456789abcdef".into())).unwrap();
    let mut orb = AiOrb::new(
        "room-1",
        AiOrbSpec {
            room_id: "room-1".into(),
            session_id: Some("s-1".into()),
            coach_id: Some("coach-1".into()),
            client_id: Some("client-1".into()),
            idle_timeout_seconds: Some(120),
            test_mode: true,
            ..Default::default()
        },
    );
    orb.metadata.namespace = Some("calls".into());
    orb.metadata.uid = Some("uid-1".into());
    let pod = admitted_pod(&orb, &config);
    let container = &pod.spec.unwrap().containers[0];
    let args = container.args.clone().unwrap();
    let parsed = orb::config::Cli::try_parse_from(std::iter::once("orb".to_owned()).chain(args.iter().cloned()))
        .unwrap_or_else(|e| panic!("the orb refuses the pod's arguments {args:?}: {e}"));
    assert_eq!(parsed.room.as_deref(), Some("room-1"));
    let mut known = env_names(orb::config::Cli::command());
    known.extend([
        orb::config::SIGNALING_TOKEN_ENV.to_owned(),
        orb::config::OPENAI_API_KEY_ENV.to_owned(),
    ]);
    for env in container.env.iter().flatten() {
        assert!(
            known.contains(&env.name),
            "the pod sets {}, which the orb does not read",
            env.name
        );
    }
    // The probes and the metrics port are the orb's HTTP listener.
    let http = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "ORB_HTTP_ADDR")
        .unwrap();
    assert!(
        http.value
            .as_deref()
            .unwrap()
            .ends_with(&format!(":{}", orb_operator::pod::ORB_HTTP_PORT))
    );
}

/// The pod the operator builds for `orb`, admitted now.
fn admitted_pod(orb: &orb_api::AiOrb, config: &orb_operator::config::Config) -> k8s_openapi::api::core::v1::Pod {
    let limits = orb_operator::policy::orb_limits(&orb.spec, &config.limits);
    let now = jiff::Timestamp::now();
    let clock = orb_operator::policy::OrbClock {
        admitted_at: Some(now),
        ..Default::default()
    };
    let launch = orb_operator::policy::launch(&orb.spec, &limits, &clock, now, &config.pod.signaling_url);
    orb_operator::pod::build_pod(orb, &config.pod, 1, &launch)
}

/// A cold orb pod of room-1.
/// The operator's orb pods (a warm one and a cold one) from its command-line `flags`, as the
/// chart's values reach it.
fn orb_pods_from_flags(flags: &[String]) -> [k8s_openapi::api::core::v1::Pod; 2] {
    let args = ["orb-operator".to_owned(), "--orb-image=orb:test".to_owned()]
        .into_iter()
        .chain(flags.iter().cloned());
    let run = orb_operator::config::Cli::try_parse_from(args).unwrap().run;
    let config = run.validate(Some("0123456789abcdef0123456789abcdef".into())).unwrap();
    [
        orb_operator::pod::build_warm_pod("orb-warm-1", "calls", &config.pod),
        cold_pod(&config),
    ]
}

fn cold_pod(config: &orb_operator::config::Config) -> k8s_openapi::api::core::v1::Pod {
    let mut orb = orb_api::AiOrb::new(
        "room-1",
        orb_api::AiOrbSpec {
            room_id: "room-1".into(),
            ..Default::default()
        },
    );
    orb.metadata.namespace = Some("calls".into());
    orb.metadata.uid = Some("uid-1".into());
    admitted_pod(&orb, config)
}

fn container_env(deployment: &Value) -> Vec<String> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_operator_deployment_uses_real_settings_ports_and_ha() {
    let objects = render(Some(&format!("{CHART}/ci/monitoring-values.yaml")), &[]);
    let operator = find(&objects, "Deployment", "-operator");
    assert_eq!(operator["spec"]["replicas"], 2);
    assert_eq!(operator["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    let known = env_names(orb_operator::config::Cli::command());
    for env in container_env(operator) {
        assert!(
            known.contains(&env),
            "the chart sets {env}, which the operator does not read"
        );
    }
    let container = &operator["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["ports"][0]["containerPort"], 8081);
    let http_default = orb_operator::config::Cli::command()
        .get_arguments()
        .find(|a| a.get_long() == Some("http-addr"))
        .map(|a| a.get_default_values()[0].to_string_lossy().into_owned())
        .unwrap();
    assert!(http_default.ends_with(":8081"), "{http_default}");
    // Orb pods: the NetworkPolicy and the PodMonitor speak to the port the operator gives them.
    let policy = find(&objects, "NetworkPolicy", "-orbs");
    assert_eq!(
        policy["spec"]["ingress"][0]["ports"][0]["port"],
        orb_operator::pod::ORB_HTTP_PORT
    );
    let monitor = find(&objects, "PodMonitor", "-orbs");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/managed-by"],
        "orb-operator"
    );
    let alerts = find(&objects, "PrometheusRule", "orb");
    assert!(alerts["spec"]["groups"].as_array().unwrap().len() >= 2);
}

#[test]
fn the_signing_key_secret_is_generated_unless_one_is_given() {
    let objects = render(None, &[]);
    let secret = find(&objects, "Secret", "-signing-key");
    assert_eq!(secret["metadata"]["annotations"]["helm.sh/resource-policy"], "keep");
    assert!(
        secret["data"]["signing-key"].as_str().unwrap().len() >= 44,
        "at least 32 bytes, base64"
    );
    let given = render(Some(&format!("{CHART}/ci/single-namespace-values.yaml")), &[]);
    assert!(
        !given
            .iter()
            .any(|o| o["kind"] == "Secret" && o["metadata"]["name"] != "orb-redis")
    );
    // The same for the Redis password.
    let given = render(None, &["--set", "redis.existingSecret=mine"]);
    assert!(
        !given
            .iter()
            .any(|o| o["kind"] == "Secret" && o["metadata"]["name"] == "orb-redis")
    );
    let redis = find(&given, "Deployment", "-redis");
    assert_eq!(
        redis["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]["name"],
        "mine"
    );
}

#[test]
fn unknown_values_are_rejected() {
    let out = helm()
        .args(["template", "orb", CHART, "--set", "operator.replica=3"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("additional properties 'replica' not allowed"));
}

#[test]
fn the_chart_ships_the_crd_the_types_generate() {
    let copy = std::fs::read_to_string(root().join(CHART).join("files/crds/aiorbs.hybridcoach.io.yaml")).unwrap();
    assert!(
        copy == orb_api::crd_yaml(),
        "charts/orb-operator/files/crds is stale: copy crds/generated into it"
    );
    let rendered = render(None, &[]);
    let crd = find(&rendered, "CustomResourceDefinition", "aiorbs.hybridcoach.io");
    assert_eq!(crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep");
    let generated: Value = serde_norway::from_str(&copy).unwrap();
    // Helm writes whole floats (schemars' `maximum: 86400.0`) as integers; the schema is the same.
    assert!(
        integral(&crd["spec"]) == integral(&generated["spec"]),
        "the rendered CRD differs from crds/generated"
    );
    let without = render(None, &["--set", "crds.enabled=false"]);
    assert!(!without.iter().any(|o| o["kind"] == "CustomResourceDefinition"));
}

fn integral(v: &Value) -> Value {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && n.is_f64() => Value::from(f as i64),
            _ => v.clone(),
        },
        Value::Array(a) => Value::Array(a.iter().map(integral).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), integral(v))).collect()),
        _ => v.clone(),
    }
}

/// The command that renders manifests/install.yaml (also in docs/install.md).
const INSTALL_ARGS: &[&str] = &[
    "template",
    "orb",
    CHART,
    "--namespace",
    "orb-system",
    "--skip-tests",
    "--set",
    "auth.existingSecret=orb-signing-key",
    "--set",
    "redis.existingSecret=orb-redis-password",
];

#[test]
fn manifests_install_yaml_is_the_rendered_chart() {
    let out = run(helm().args(INSTALL_ARGS));
    let committed = std::fs::read(root().join("manifests/install.yaml")).unwrap();
    assert!(
        out.stdout == committed,
        "manifests/install.yaml is stale; regenerate it with: helm {} > manifests/install.yaml",
        INSTALL_ARGS.join(" ")
    );
}

#[test]
fn dashboards_are_portable_and_labelled_for_grafana() {
    let objects = render(None, &[]);
    let maps: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"].as_str().unwrap().contains("-dashboard-"))
        .collect();
    assert_eq!(maps.len(), 4);
    let mut uids = BTreeSet::new();
    for map in maps {
        assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
        let (_, json) = map["data"].as_object().unwrap().iter().next().unwrap();
        let dashboard: Value = serde_json::from_str(json.as_str().unwrap()).unwrap();
        let uid = dashboard["uid"].as_str().unwrap().to_owned();
        assert!(uids.insert(uid.clone()), "duplicate uid {uid}");
        assert_eq!(dashboard["templating"]["list"][0]["type"], "datasource", "{uid}");
        for panel in dashboard["panels"].as_array().unwrap() {
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "{uid}");
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                if expr.contains("rate(") {
                    assert!(expr.contains("[$__rate_interval]"), "{uid}: {expr}");
                }
            }
        }
    }
}

fn flatten(prefix: &str, node: &Value, out: &mut Vec<(String, Value)>) {
    const OPAQUE: &[&str] = &["resources", "Selector", "labels", "annotations", "affinity"];
    match node {
        Value::Object(map) if !map.is_empty() && !OPAQUE.iter().any(|s| prefix.ends_with(s)) => {
            for (k, v) in map {
                flatten(
                    &if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    },
                    v,
                    out,
                );
            }
        }
        _ => out.push((prefix.to_owned(), node.clone())),
    }
}

#[test]
fn docs_install_md_documents_every_value_with_its_default() {
    let values: Value =
        serde_norway::from_str(&std::fs::read_to_string(root().join(CHART).join("values.yaml")).unwrap()).unwrap();
    let mut keys = Vec::new();
    flatten("", &values, &mut keys);
    let doc = std::fs::read_to_string(root().join("docs/install.md")).unwrap();
    let documented: Vec<(String, Value)> = doc
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l
                .split(" | ")
                .map(|c| c.trim_matches(|ch| ch == '|' || ch == ' ' || ch == '`'))
                .collect();
            (
                cells[0].to_owned(),
                serde_json::from_str(cells[1]).unwrap_or_else(|e| panic!("{l}: {e}")),
            )
        })
        .collect();
    for (key, default) in &keys {
        let row = documented
            .iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("docs/install.md lacks {key}"));
        assert_eq!(&row.1, default, "docs/install.md states another default for {key}");
    }
    assert_eq!(
        documented.len(),
        keys.len(),
        "docs/install.md documents keys values.yaml does not have"
    );
}

#[test]
fn dockerfiles_build_the_binaries_the_chart_runs_as_its_user_and_ports() {
    for (dir, bin, port) in [
        ("operator", "orb-operator", 8081),
        ("signaling", "orb-signaling", 8080),
        ("orb", "orb", 9090),
    ] {
        let file = std::fs::read_to_string(root().join(dir).join("Dockerfile")).unwrap();
        assert!(file.contains(&format!("--bin {bin}")), "{dir}/Dockerfile builds {bin}");
        assert!(
            file.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{bin}\"]")),
            "{dir}/Dockerfile runs {bin}"
        );
        assert!(
            file.contains("USER 65532:65532"),
            "{dir}/Dockerfile runs as the chart's uid"
        );
        assert!(
            file.contains(&format!("EXPOSE {port}")),
            "{dir}/Dockerfile exposes {port}"
        );
    }
    // The chart's pods and the operator's orb pods run as that uid.
    assert_eq!(orb_operator::pod::ORB_UID, 65532);
    let objects = render(None, &[]);
    for name in ["-operator", "-signaling"] {
        let d = find(&objects, "Deployment", name);
        assert_eq!(d["spec"]["template"]["spec"]["securityContext"]["runAsUser"], 65532);
    }
    let signaling = find(&objects, "Deployment", "-signaling");
    assert_eq!(
        signaling["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"],
        8080
    );
}

/// Evaluates a ValidatingAdmissionPolicy the way the API server does, with the `cel` crate: its
/// variables in order, then each validation; `Err` carries the message of the first refusal.
fn admit(policy: &Value, request: Value, object: Value, old_object: Value) -> Result<(), String> {
    let spec = &policy["spec"];
    let mut context = cel::Context::default();
    context.add_variable("request", &request).unwrap();
    context.add_variable("object", &object).unwrap();
    context.add_variable("oldObject", &old_object).unwrap();
    let mut variables = serde_json::Map::new();
    for var in spec["variables"].as_array().into_iter().flatten() {
        let expr = var["expression"].as_str().unwrap();
        let program = cel::Program::compile(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        context.add_variable("variables", &variables).unwrap();
        let value = program.execute(&context).unwrap_or_else(|e| panic!("{expr}: {e}"));
        let cel::Value::Bool(b) = value else {
            panic!("{expr} is not a bool: {value:?}")
        };
        variables.insert(var["name"].as_str().unwrap().to_owned(), Value::Bool(b));
    }
    context.add_variable("variables", &variables).unwrap();
    for validation in spec["validations"].as_array().unwrap() {
        let expr = validation["expression"].as_str().unwrap();
        let program = cel::Program::compile(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        match program.execute(&context).unwrap_or_else(|e| panic!("{expr}: {e}")) {
            cel::Value::Bool(true) => {}
            cel::Value::Bool(false) => {
                let message = validation["messageExpression"].as_str().unwrap();
                let program = cel::Program::compile(message).unwrap_or_else(|e| panic!("{message}: {e}"));
                let cel::Value::String(text) = program.execute(&context).unwrap() else {
                    panic!("{message} is not a string")
                };
                return Err(text.to_string());
            }
            other => panic!("{expr} is not a bool: {other:?}"),
        }
    }
    Ok(())
}

fn aiorb(room: &str, labels: Value) -> Value {
    serde_json::json!({
        "apiVersion": "hybridcoach.io/v1",
        "kind": "AiOrb",
        "metadata": {"name": room, "namespace": "orbs", "labels": labels},
        "spec": {"roomId": room, "testMode": false},
    })
}

fn request(operation: &str, username: &str, groups: &[&str]) -> Value {
    let mut user = serde_json::json!({ "username": username });
    if !groups.is_empty() {
        user["groups"] = serde_json::json!(groups);
    }
    serde_json::json!({"operation": operation, "userInfo": user})
}

/// No API server here: the policy's CEL is evaluated with the `cel` crate against the requests the
/// API server would build. Signaling's ServiceAccount and the listed users and groups may create
/// AiOrbs; another ServiceAccount, a user, signaling of another namespace may not; the operator's
/// label and finalizer writes pass, a spec change by anyone else does not.
#[test]
fn the_admission_policy_lets_only_signaling_and_listed_creators_create_aiorbs() {
    let objects = render(
        None,
        &[
            "--set",
            "admissionPolicy.allowedCreators={alice}",
            "--set",
            "admissionPolicy.allowedGroups={platform}",
        ],
    );
    let policy = find(&objects, "ValidatingAdmissionPolicy", "-aiorb-creators");
    let binding = find(&objects, "ValidatingAdmissionPolicyBinding", "-aiorb-creators");
    assert_eq!(policy["apiVersion"], "admissionregistration.k8s.io/v1");
    assert_eq!(binding["spec"]["policyName"], policy["metadata"]["name"]);
    assert_eq!(binding["spec"]["validationActions"], serde_json::json!(["Deny"]));
    assert_eq!(policy["spec"]["failurePolicy"], "Fail");
    let rules = &policy["spec"]["matchConstraints"]["resourceRules"];
    assert_eq!(rules.as_array().unwrap().len(), 1);
    assert_eq!(rules[0]["apiGroups"], serde_json::json!(["hybridcoach.io"]));
    // The status subresource too: its operator fields are the operator's alone.
    assert_eq!(rules[0]["resources"], serde_json::json!(["aiorbs", "aiorbs/status"]));
    assert_eq!(rules[0]["operations"], serde_json::json!(["CREATE", "UPDATE"]));
    assert_eq!(
        policy["spec"]["matchConstraints"]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "orbs"
    );

    let orb = aiorb("room-1", serde_json::json!({}));
    let create = |user: &str, groups: &[&str]| admit(policy, request("CREATE", user, groups), orb.clone(), Value::Null);
    for allowed in [
        "system:serviceaccount:orbs:orb-signaling",
        "system:serviceaccount:orbs:orb-test",
        "alice",
    ] {
        assert_eq!(create(allowed, &[]), Ok(()), "{allowed}");
    }
    assert_eq!(create("bob", &["system:authenticated", "platform"]), Ok(()));
    for refused in [
        "system:serviceaccount:orbs:default",
        "system:serviceaccount:other:orb-signaling",
        "system:serviceaccount:orbs:orb-operator",
        "mallory",
        "",
    ] {
        let message = create(refused, &["system:authenticated"]).unwrap_err();
        assert!(
            message.starts_with("AiOrbs are created by signaling (system:serviceaccount:orbs:orb-signaling)")
                && message.ends_with(&format!("not by {refused}")),
            "{message}"
        );
        assert!(create(refused, &[]).is_err(), "{refused} without groups");
    }

    // The operator's writes to the main resource: a finalizer, the finished label. Same spec.
    let operator = "system:serviceaccount:orbs:orb-operator";
    let mut labelled = aiorb("room-1", serde_json::json!({"hybridcoach.io/finished": "true"}));
    labelled["metadata"]["finalizers"] = serde_json::json!(["hybridcoach.io/orb-cleanup"]);
    assert_eq!(
        admit(policy, request("UPDATE", operator, &[]), labelled.clone(), orb.clone()),
        Ok(())
    );
    // A spec change: signaling's own is fine, nobody else's.
    let mut changed = orb.clone();
    changed["spec"]["testMode"] = Value::Bool(true);
    assert_eq!(
        admit(
            policy,
            request("UPDATE", "system:serviceaccount:orbs:orb-signaling", &[]),
            changed.clone(),
            orb.clone()
        ),
        Ok(())
    );
    for refused in [operator, "mallory"] {
        let message = admit(policy, request("UPDATE", refused, &[]), changed.clone(), orb.clone()).unwrap_err();
        assert!(
            message.starts_with("the spec of an AiOrb is changed by signaling"),
            "{message}"
        );
    }

    // The finished label and the operator's status fields: the operator's alone. Every status field
    // is checked: each one of the CRD's but signaling's (presence, the summary) is the operator's.
    let signaling = "system:serviceaccount:orbs:orb-signaling";
    let message = admit(policy, request("UPDATE", signaling, &[]), labelled.clone(), orb.clone()).unwrap_err();
    assert!(
        message.contains("hybridcoach.io/finished of an AiOrb is set by the operator"),
        "{message}"
    );
    let crd: Value = serde_norway::from_str(
        &std::fs::read_to_string(root().join("crds/generated/aiorbs.hybridcoach.io.yaml")).unwrap(),
    )
    .unwrap();
    let fields = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
        .as_object()
        .unwrap();
    let mut queued = orb.clone();
    queued["status"] = serde_json::json!({"phase": "Queued", "participants": 1});
    for field in fields.keys() {
        let mut forged = queued.clone();
        forged["status"][field] = serde_json::json!("forged");
        let verdict = admit(
            policy,
            request("UPDATE", signaling, &[]),
            forged.clone(),
            queued.clone(),
        );
        let signalings = ["participants", "lastActivityTime", "summary"].contains(&field.as_str());
        assert_eq!(verdict.is_ok(), signalings, "{field}: {verdict:?}");
        assert_eq!(
            admit(policy, request("UPDATE", operator, &[]), forged, queued.clone()),
            Ok(()),
            "{field}"
        );
    }
}

#[test]
fn the_admission_policy_matches_every_namespace_only_when_the_operator_does() {
    let objects = render(None, &["--set", "operator.clusterWide=true"]);
    let policy = find(&objects, "ValidatingAdmissionPolicy", "-aiorb-creators");
    assert!(policy["spec"]["matchConstraints"]["namespaceSelector"].is_null());
    assert!(
        policy["metadata"]["name"].as_str().unwrap().starts_with("orbs-"),
        "cluster-scoped: named after the release's namespace too"
    );
}

#[test]
fn a_disabled_admission_policy_is_not_rendered() {
    let objects = render(None, &["--set", "admissionPolicy.enabled=false"]);
    assert!(
        !objects.iter().any(|o| o["kind"]
            .as_str()
            .unwrap_or_default()
            .starts_with("ValidatingAdmissionPolicy")),
        "policy rendered while disabled"
    );
}

/// The operator hands the orbs the orb's default deny list plus the cluster's ranges.
#[test]
fn orbs_drop_candidates_in_the_cluster_ranges() {
    let objects = render(
        None,
        &["--set", "networkPolicy.clusterCIDRs={10.96.0.0/12,10.244.0.0/16}"],
    );
    let operator = find(&objects, "Deployment", "-operator");
    let value = env_of(operator, "ORB_DENIED_CANDIDATE_CIDRS").unwrap()["value"]
        .as_str()
        .unwrap()
        .to_owned();
    let run = orb_operator::config::Cli::try_parse_from([
        "orb-operator",
        "--orb-image=orb:test",
        &format!("--orb-denied-candidate-cidrs={value}"),
    ])
    .unwrap()
    .run;
    let config = run.validate(Some("0123456789abcdef0123456789abcdef".into())).unwrap();
    let list = config.pod.denied_candidate_cidrs.unwrap();
    assert_eq!(
        list.to_string(),
        format!(
            "{},10.96.0.0/12,10.244.0.0/16",
            orb_api::cidr::DEFAULT_DENIED_CANDIDATE_CIDRS
        ),
        "the chart's defaults are the orb's"
    );
    for denied in ["169.254.169.254", "127.0.0.1", "10.96.0.1", "10.244.1.2"] {
        assert!(list.contains(denied.parse().unwrap()), "{denied}");
    }
}

#[test]
fn warm_pool_pods_start_the_orb_warm_and_the_operator_may_reach_them() {
    // The chart's pool settings reach the operator, which accepts them.
    let objects = render(
        None,
        &[
            "--set",
            "orb.warmPool.size=3",
            "--set",
            "orb.prewarmLead=90s",
            "--set-json",
            r#"networkPolicy.prometheusNamespaceSelector={"name":"monitoring"}"#,
        ],
    );
    let operator = find(&objects, "Deployment", "-operator");
    assert_eq!(env_of(operator, "ORB_WARM_POOL_SIZE").unwrap()["value"], "3");
    assert_eq!(env_of(operator, "ORB_PREWARM_LEAD").unwrap()["value"], "90s");
    let run = orb_operator::config::Cli::try_parse_from([
        "orb-operator",
        "--orb-image=orb:test",
        "--warm-orbs=3",
        "--prewarm-lead=90s",
        "--watch-namespace=calls",
    ])
    .unwrap()
    .run;
    let config = run.validate(Some("0123456789abcdef0123456789abcdef".into())).unwrap();
    let pool = config.pool.clone().expect("a pool");
    assert_eq!((pool.size, pool.namespace.as_str()), (3, "calls"));
    // A warm pod's command line and env are ones the orb reads.
    let pod = orb_operator::pod::build_warm_pod("orb-warm-1", "calls", &config.pod);
    let container = &pod.spec.unwrap().containers[0];
    let args = container.args.clone().unwrap();
    let parsed = orb::config::Cli::try_parse_from(std::iter::once("orb".to_owned()).chain(args.iter().cloned()))
        .unwrap_or_else(|e| panic!("the orb refuses the warm pod's arguments {args:?}: {e}"));
    assert!(parsed.warm && parsed.room.is_none());
    let mut known = env_names(orb::config::Cli::command());
    known.insert(orb_api::assignment::ASSIGN_TOKEN_ENV.to_owned());
    for env in container.env.iter().flatten() {
        assert!(
            known.contains(&env.name),
            "the warm pod sets {}, which the orb does not read",
            env.name
        );
    }
    // With ingress limited to Prometheus, the operator may still post assignments.
    let policy = find(&objects, "NetworkPolicy", "-orbs");
    let from = policy["spec"]["ingress"][0]["from"].as_array().unwrap();
    assert!(
        from.iter()
            .any(|peer| peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "orb-operator"),
        "{from:?}"
    );
}

/// Hostile users, round two, item 6: the orbs' port 9090 (`/assign`, `/metrics`) was open to every
/// source by default, and any pod could reach signaling and forge the client-address header it
/// trusts behind the chart's Ingress.
#[test]
fn no_port_is_open_to_every_pod() {
    let peers_of = |policy: &Value| -> Vec<Value> {
        let ingress = policy["spec"]["ingress"].as_array().unwrap();
        assert_eq!(ingress.len(), 1, "{ingress:?}");
        let from = ingress[0]["from"]
            .as_array()
            .expect("a rule without `from` admits every source");
        assert!(!from.is_empty());
        for peer in from {
            assert!(
                peer.get("ipBlock").is_none()
                    && (peer.get("podSelector").is_some() || peer["namespaceSelector"] != serde_json::json!({})),
                "a peer admitting every pod: {peer}"
            );
        }
        from.clone()
    };
    let objects = render(None, &[]);
    let orbs = peers_of(find(&objects, "NetworkPolicy", "-orbs"));
    let names: Vec<&Value> = orbs
        .iter()
        .map(|p| &p["podSelector"]["matchLabels"]["app.kubernetes.io/name"])
        .collect();
    assert!(
        names.contains(&&Value::from("orb-operator")) && names.contains(&&Value::from("prometheus")),
        "{orbs:?}"
    );
    // No trusted header, no policy: signaling sees every client's own address.
    assert!(
        !objects
            .iter()
            .any(|o| o["kind"] == "NetworkPolicy" && o["metadata"]["name"] == "orb-signaling")
    );

    let behind_ingress = render(
        None,
        &[
            "--set",
            "signaling.ingress.enabled=true",
            "--set",
            "signaling.ingress.host=calls.example",
        ],
    );
    let signaling = find(&behind_ingress, "NetworkPolicy", "orb-signaling");
    assert_eq!(
        signaling["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "orb-signaling"
    );
    let peers = peers_of(signaling);
    assert_eq!(
        peers[0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "ingress-nginx"
    );
    assert_eq!(peers[1]["podSelector"]["matchLabels"]["app.kubernetes.io/name"], "orb");
    // A header set by hand (a Gateway, a load balancer) gets the same policy.
    let header = render(None, &["--set", "signaling.limits.trustedProxyHeader=X-Real-IP"]);
    find(&header, "NetworkPolicy", "orb-signaling");
}

/// Hostile users, round two, item 4: the ServiceAccount the admission policy lets create AiOrbs for
/// `helm test` (and its Role) outlived a failed test; it goes whatever the outcome.
#[test]
fn the_helm_test_identity_does_not_outlive_the_test() {
    let objects = render(None, &[]);
    for kind in ["ServiceAccount", "Role", "RoleBinding"] {
        let object = find(&objects, kind, "-test");
        let policy = object["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
            .as_str()
            .unwrap();
        assert!(
            policy.split(',').any(|p| p == "hook-succeeded") && policy.split(',').any(|p| p == "hook-failed"),
            "{kind}: {policy}"
        );
    }
}

/// The chart's in-cluster relay, as `ci/turn-values.yaml` sets it up (LoadBalancer, TLS, relay-only
/// orbs, an IPv6 cluster range).
const TURN_VALUES: &str = "charts/orb-operator/ci/turn-values.yaml";

/// The `turnserver.conf` the chart renders, line by line (comments left out).
fn turn_conf(objects: &[Value]) -> Vec<String> {
    find(objects, "ConfigMap", "-turn")["data"]["turnserver.conf"]
        .as_str()
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn has(objects: &[Value], kind: &str, name: &str) -> bool {
    objects
        .iter()
        .any(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

/// `helm template` that must fail, with its error output.
fn render_error(extra: &[&str]) -> String {
    let out = helm()
        .args(["template", "orb", CHART, "--namespace", "orbs"])
        .args(extra)
        .output()
        .unwrap();
    assert!(!out.status.success(), "rendered with {extra:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn without_turn_settings_nothing_is_installed_and_signaling_hands_out_no_servers() {
    let objects = render(None, &[]);
    assert!(
        !objects
            .iter()
            .any(|o| o["metadata"]["name"].as_str().unwrap().contains("-turn")),
        "TURN objects by default"
    );
    let signaling = find(&objects, "Deployment", "-signaling");
    for name in [
        "SIGNALING_ICE_SERVERS",
        "SIGNALING_TURN_SECRET_FILE",
        "SIGNALING_TURN_CREDENTIAL_TTL",
        "SIGNALING_CORS_ALLOWED_ORIGINS",
    ] {
        assert!(env_of(signaling, name).is_none(), "{name}");
    }
    // STUN alone needs no relay and no secret.
    let stun = render(None, &["--set", "turn.stunURLs={stun:stun.example.com:3478}"]);
    let signaling = find(&stun, "Deployment", "-signaling");
    assert_eq!(
        env_of(signaling, "SIGNALING_ICE_SERVERS").unwrap()["value"],
        "stun:stun.example.com:3478"
    );
    assert!(env_of(signaling, "SIGNALING_TURN_SECRET_FILE").is_none());
}

/// The volume of `deployment` (pod spec) that its first container mounts at the directory of `file`.
fn secret_behind<'a>(deployment: &'a Value, file: &str) -> &'a Value {
    let spec = &deployment["spec"]["template"]["spec"];
    let dir = std::path::Path::new(file).parent().unwrap().to_str().unwrap();
    let mount = spec["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == dir)
        .unwrap_or_else(|| panic!("nothing mounted at {dir}"));
    let volume = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(
        volume["secret"]["items"],
        serde_json::json!([{"key": "secret", "path": "secret"}]),
        "{file}"
    );
    &volume["secret"]["secretName"]
}

/// coturn checks the credentials signaling mints: both read the one Secret, which the chart
/// generates once and keeps, and which never appears in a pod spec or on a command line.
#[test]
fn the_relay_and_signaling_share_one_secret_and_signaling_hands_out_the_relay_s_urls() {
    let objects = render(Some(TURN_VALUES), &[]);
    let secret = find(&objects, "Secret", "-turn-secret");
    assert_eq!(secret["metadata"]["annotations"]["helm.sh/resource-policy"], "keep");
    let encoded = secret["data"]["secret"].as_str().unwrap();
    assert!(encoded.len() >= 64, "at least 48 characters, base64");
    let signaling = find(&objects, "Deployment", "-signaling");
    let relay = find(&objects, "Deployment", "-turn");
    let secret_file = env_of(signaling, "SIGNALING_TURN_SECRET_FILE").unwrap()["value"]
        .as_str()
        .unwrap();
    assert_eq!(secret_behind(signaling, secret_file), "orb-turn-secret");
    // coturn's container appends the secret from its mount to the configuration it starts with.
    let container = &relay["spec"]["template"]["spec"]["containers"][0];
    let script = container["command"][2].as_str().unwrap();
    let relay_file = "/var/run/orb-turn-secret/secret";
    assert!(script.contains(&format!("$(cat {relay_file})")), "{script}");
    assert!(script.contains("static-auth-secret=%s"), "{script}");
    assert!(
        script.contains("exec turnserver -c /var/tmp/turnserver.conf \"$@\""),
        "{script}"
    );
    assert_eq!(secret_behind(relay, relay_file), "orb-turn-secret");
    let in_memory = relay["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "scratch")
        .unwrap();
    assert_eq!(in_memory["emptyDir"]["medium"], "Memory");
    for deployment in [signaling, relay] {
        let text = deployment.to_string();
        assert!(
            !text.contains(encoded) && !text.contains("--static-auth-secret"),
            "{text}"
        );
    }
    assert!(
        !turn_conf(&objects).iter().any(|l| l.starts_with("static-auth-secret")),
        "the ConfigMap holds no secret"
    );
    // What signaling hands out: the STUN URLs, then the relay's on UDP, TCP and TLS.
    assert_eq!(
        env_of(signaling, "SIGNALING_ICE_SERVERS").unwrap()["value"],
        "stun:turn.example.com:3478,turn:turn.example.com:3478?transport=udp,\
         turn:turn.example.com:3478?transport=tcp,turns:turn.example.com:443?transport=tcp"
    );
    assert_eq!(
        env_of(signaling, "SIGNALING_TURN_CREDENTIAL_TTL").unwrap()["value"],
        "12h"
    );
    assert_eq!(
        env_of(signaling, "SIGNALING_CORS_ALLOWED_ORIGINS").unwrap()["value"],
        "https://app.example.com"
    );

    // A given Secret: used by both, none generated.
    let given = render(Some(TURN_VALUES), &["--set", "turn.existingSecret=my-turn"]);
    assert!(!has(&given, "Secret", "orb-turn-secret"));
    assert_eq!(
        secret_behind(find(&given, "Deployment", "-signaling"), secret_file),
        "my-turn"
    );
    assert_eq!(
        secret_behind(find(&given, "Deployment", "-turn"), relay_file),
        "my-turn"
    );
}

#[test]
fn the_relay_takes_time_limited_credentials_only_and_relays_udp_only() {
    let objects = render(Some(TURN_VALUES), &[]);
    let conf = turn_conf(&objects);
    for line in [
        "use-auth-secret",
        "realm=turn.example.com",
        "listening-port=3478",
        "tls-listening-port=5349",
        "cert=/etc/coturn-tls/tls.crt",
        "pkey=/etc/coturn-tls/tls.key",
        "no-tlsv1",
        "no-tlsv1_1",
        "no-dtls",
        "external-ip=203.0.113.10",
        "min-port=49152",
        "max-port=49171",
        "user-quota=12",
        "total-quota=400",
        "fingerprint",
        "no-tcp-relay",
        "no-multicast-peers",
        "no-cli",
        "no-rfc5780",
        "no-software-attribute",
    ] {
        assert!(conf.iter().any(|l| l == line), "{line} missing: {conf:?}");
    }
    // No way around the credentials, no loopback peers, no relaying of server applications.
    for option in [
        "lt-cred-mech",
        "user=",
        "no-auth",
        "allow-loopback-peers",
        "server-relay",
        "allowed-peer-ip",
        "cli-password",
    ] {
        assert!(!conf.iter().any(|l| l.starts_with(option)), "{option}: {conf:?}");
    }
    // Without a certificate: no TLS listener, and signaling hands out no turns: URL.
    let plain = render(Some(TURN_VALUES), &["--set", "turn.tls.secretName="]);
    let conf = turn_conf(&plain);
    assert!(conf.iter().any(|l| l == "no-tls"), "{conf:?}");
    assert!(!conf.iter().any(|l| l.starts_with("tls-listening-port")));
    let servers = env_of(find(&plain, "Deployment", "-signaling"), "SIGNALING_ICE_SERVERS").unwrap()["value"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!servers.contains("turns:"), "{servers}");
    assert!(!has(&plain, "Secret", "turn-example-com-tls"));
    let relay = find(&plain, "Deployment", "-turn");
    assert!(!relay.to_string().contains("coturn-tls"));
}

/// The LoadBalancer exposes every port a relayed candidate may name, keeps the peers' addresses
/// (the relay's permissions are per address), and fronts one pod; on the host network there is
/// neither a Service nor a NetworkPolicy (which does not apply there), TLS binds 443 itself.
#[test]
fn the_relay_is_reachable_behind_a_load_balancer_or_on_chosen_nodes() {
    let objects = render(Some(TURN_VALUES), &[]);
    let service = find(&objects, "Service", "-turn");
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    assert_eq!(service["spec"]["externalTrafficPolicy"], "Local");
    assert_eq!(
        service["metadata"]["annotations"]["metallb.universe.tf/loadBalancerIPs"],
        "203.0.113.10"
    );
    let ports: BTreeSet<(u64, String, String)> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["port"].as_u64().unwrap(),
                p["protocol"].as_str().unwrap().to_owned(),
                p["targetPort"].to_string().trim_matches('"').to_owned(),
            )
        })
        .collect();
    let mut expected: BTreeSet<(u64, String, String)> = [
        (3478, "UDP", "turn-udp"),
        (3478, "TCP", "turn-tcp"),
        (443, "TCP", "turns"),
    ]
    .into_iter()
    .map(|(p, proto, target)| (p, proto.to_owned(), target.to_owned()))
    .collect();
    expected.extend((49152..=49171).map(|p| (p, "UDP".to_owned(), p.to_string())));
    assert_eq!(ports, expected);
    let relay = find(&objects, "Deployment", "-turn");
    let spec = &relay["spec"]["template"]["spec"];
    assert_eq!(relay["spec"]["replicas"], 1);
    assert!(spec["hostNetwork"].is_null());
    let turns = spec["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "turns")
        .unwrap();
    assert_eq!(turns["containerPort"], 5349, "no privileged port in the pod");
    assert_eq!(spec["securityContext"]["runAsUser"], 65534);
    assert_eq!(spec["automountServiceAccountToken"], false);

    let host = render(
        Some(&format!("{CHART}/ci/turn-host-network-values.yaml")),
        &["--set", "turn.tls.secretName=turn-tls"],
    );
    assert!(!has(&host, "Service", "orb-turn"));
    assert!(!has(&host, "NetworkPolicy", "orb-turn"));
    let relay = find(&host, "Deployment", "-turn");
    let spec = &relay["spec"]["template"]["spec"];
    assert_eq!(relay["spec"]["replicas"], 2);
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["nodeSelector"]["node-role.example.com/turn"], "true");
    assert!(spec["tolerations"].is_array());
    // Container ports on the host network are host ports: the scheduler puts one relay per node.
    let ports: Vec<(u64, &str)> = spec["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["containerPort"].as_u64().unwrap(), p["protocol"].as_str().unwrap()))
        .collect();
    assert_eq!(ports, [(3478, "UDP"), (3478, "TCP"), (443, "TCP")]);
    let conf = turn_conf(&host);
    assert!(conf.iter().any(|l| l == "tls-listening-port=443"), "{conf:?}");
    assert!(conf.iter().any(|l| l == "max-port=65535"), "{conf:?}");
    assert!(!conf.iter().any(|l| l.starts_with("external-ip")), "{conf:?}");
}

/// `a.b.c.d/n` or an IPv6 range as the first and last address, written the way the chart writes
/// coturn's ranges: dotted IPv4, uncompressed lower-case IPv6.
fn range_of(cidr: &str) -> String {
    let (addr, bits) = cidr.split_once('/').unwrap();
    let bits: u32 = bits.parse().unwrap();
    match addr.parse::<std::net::IpAddr>().unwrap() {
        std::net::IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            let first = std::net::Ipv4Addr::from(u32::from(a) & mask);
            let last = std::net::Ipv4Addr::from(u32::from(a) | !mask);
            format!("{first}-{last}")
        }
        std::net::IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            let groups = |v: u128| {
                std::net::Ipv6Addr::from(v)
                    .segments()
                    .iter()
                    .map(|s| format!("{s:x}"))
                    .collect::<Vec<_>>()
                    .join(":")
            };
            format!("{}-{}", groups(u128::from(a) & mask), groups(u128::from(a) | !mask))
        }
    }
}

/// The relay never relays into the cluster: every cluster range, IPv4 and IPv6, and the fixed
/// ranges (loopback, link-local with the metadata address, unique-local, CGNAT, multicast) become
/// coturn `denied-peer-ip` ranges, computed from the CIDRs by the chart as the standard library
/// computes them; the relay's egress NetworkPolicy leaves out the same ranges, per family.
#[test]
fn the_relay_refuses_peers_in_every_cluster_range_ipv4_and_ipv6() {
    let cluster = [
        "10.96.0.0/12",
        "10.244.0.0/16",
        "192.168.1.0/24",
        "172.20.0.0/14",
        "198.18.0.0/15",
        "203.0.113.7/32",
        "fd00:10:96::/112",
        "2001:db8:abcd:12::/63",
        "2600:1f18:4000::/36",
        "fdaa:bbcc:1:2:3:4:5:0/125",
        "2001:db8::7/128",
    ];
    let objects = render(
        Some(TURN_VALUES),
        &[
            "--set",
            &format!("networkPolicy.clusterCIDRs={{{}}}", cluster.join(",")),
        ],
    );
    let denied: Vec<String> = turn_conf(&objects)
        .iter()
        .filter_map(|l| l.strip_prefix("denied-peer-ip=").map(str::to_owned))
        .collect();
    let fixed = [
        "0.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "100.64.0.0/10",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::1/128",
        "::ffff:0:0/96",
        "fe80::/10",
        "fc00::/7",
        "ff00::/8",
    ];
    let expected: Vec<String> = fixed.iter().chain(&cluster).map(|c| range_of(c)).collect();
    assert_eq!(denied, expected);
    assert!(
        denied.contains(&"169.254.0.0-169.254.255.255".to_owned()),
        "cloud metadata"
    );
    assert!(denied.contains(&"fd00:10:96:0:0:0:0:0-fd00:10:96:0:0:0:0:ffff".to_owned()));

    let policy = find(&objects, "NetworkPolicy", "orb-turn");
    let egress = policy["spec"]["egress"].as_array().unwrap();
    assert_eq!(egress.len(), 1);
    assert_eq!(egress[0]["ports"], serde_json::json!([{"protocol": "UDP"}]));
    let mut left_out = Vec::new();
    for peer in egress[0]["to"].as_array().unwrap() {
        let block = &peer["ipBlock"];
        let v6 = block["cidr"] == "::/0";
        assert!(v6 || block["cidr"] == "0.0.0.0/0", "{block}");
        for except in block["except"].as_array().unwrap() {
            let except = except.as_str().unwrap();
            assert_eq!(except.contains(':'), v6, "{except} outside {}", block["cidr"]);
            left_out.push(except.to_owned());
        }
    }
    let mut all: Vec<String> = fixed.iter().chain(&cluster).map(|c| c.to_string()).collect();
    all.sort();
    left_out.sort();
    assert_eq!(left_out, all);
    // Anyone may reach the relay's ports: that is its job; the credentials guard it.
    let ingress = policy["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 1);
    assert!(ingress[0].get("from").is_none());

    for bad in [
        "10.0.0.0/33",
        "300.1.1.0/24",
        "fd00::1::/64",
        "fd00::/129",
        "10.0.0.0",
        "::/128",
        "::/64",
        "0.0.0.0/32",
    ] {
        let message = render_error(&[
            "-f",
            TURN_VALUES,
            "--set",
            &format!("networkPolicy.clusterCIDRs={{{bad}}}"),
        ]);
        assert!(message.contains(bad), "{bad}: {message}");
    }
}

/// The orbs may reach the chart's relay pods on its ports, and any other relay through
/// networkPolicy.turnCIDRs: UDP, and TCP on the ports its URLs name.
#[test]
fn the_orbs_network_policy_lets_their_media_reach_the_relay() {
    let egress_of = |objects: &[Value]| -> Vec<Value> {
        find(objects, "NetworkPolicy", "-orbs")["spec"]["egress"]
            .as_array()
            .unwrap()
            .clone()
    };
    let objects = render(Some(TURN_VALUES), &[]);
    let to_relay = egress_of(&objects)
        .into_iter()
        .find(|r| r["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "orb-turn")
        .expect("a rule to the relay pods");
    assert_eq!(
        to_relay["ports"],
        serde_json::json!([
            {"port": 3478, "protocol": "UDP"},
            {"port": 3478, "protocol": "TCP"},
            {"port": 5349, "protocol": "TCP"},
            {"port": 49152, "endPort": 49171, "protocol": "UDP"},
        ])
    );
    // Its ports are the relay's container ports and its Service's targets.
    let relay = find(&objects, "Deployment", "-turn");
    let container_ports: BTreeSet<(u64, String)> = relay["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["containerPort"].as_u64().unwrap(),
                p["protocol"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for port in to_relay["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["endPort"].is_null())
    {
        let key = (
            port["port"].as_u64().unwrap(),
            port["protocol"].as_str().unwrap().to_owned(),
        );
        assert!(container_ports.contains(&key), "{key:?} not a container port");
    }

    // A managed relay: its addresses, UDP, and TCP on its URLs' ports (turns: without a port is 5349).
    let external = render(
        None,
        &[
            "--set",
            "turn.external.urls={turn:turn.example.net:3478?transport=udp,turns:turn.example.net:443?transport=tcp,turns:turn.example.net}",
            "--set",
            "turn.external.existingSecret=managed-turn",
            "--set",
            "networkPolicy.turnCIDRs={198.51.100.0/24,2001:db8:7::/48}",
        ],
    );
    assert!(
        !external
            .iter()
            .any(|o| o["metadata"]["name"].as_str().unwrap().starts_with("orb-turn")),
        "nothing installed for a managed relay"
    );
    let rule = egress_of(&external)
        .into_iter()
        .find(|r| r["to"][0]["ipBlock"]["cidr"] == "198.51.100.0/24")
        .expect("a rule to turnCIDRs");
    assert_eq!(rule["to"][1]["ipBlock"]["cidr"], "2001:db8:7::/48");
    assert_eq!(
        rule["ports"],
        serde_json::json!([
            {"protocol": "UDP"},
            {"port": 3478, "protocol": "TCP"},
            {"port": 443, "protocol": "TCP"},
            {"port": 5349, "protocol": "TCP"},
        ])
    );
    let signaling = find(&external, "Deployment", "-signaling");
    assert_eq!(
        env_of(signaling, "SIGNALING_ICE_SERVERS").unwrap()["value"],
        "turn:turn.example.net:3478?transport=udp,turns:turn.example.net:443?transport=tcp,turns:turn.example.net"
    );
    let file = env_of(signaling, "SIGNALING_TURN_SECRET_FILE").unwrap()["value"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(secret_behind(signaling, &file), "managed-turn");
}

#[test]
fn turn_settings_that_cannot_work_fail_rendering_with_a_clear_message() {
    let relay = [
        "--set",
        "turn.enabled=true",
        "--set",
        "turn.publicHost=turn.example.com",
    ];
    let lb = [&relay[..], &["--set", "turn.externalIP=203.0.113.10"]].concat();
    let with = |base: &[&'static str], more: &[&'static str]| [base, more].concat();
    for (args, message) in [
        (relay[..2].to_vec(), "turn.enabled needs turn.publicHost"),
        (relay.to_vec(), "turn.externalIP is required with the LoadBalancer"),
        (
            with(&lb, &["--set", "turn.external.urls={turn:turn.example.net:3478}"]),
            "turn.enabled installs a relay and turn.external.urls names another",
        ),
        (
            vec!["--set", "turn.external.urls={turn:turn.example.net:3478}"],
            "turn.external.urls needs turn.external.existingSecret",
        ),
        (
            vec!["--set", "orb.iceTransportPolicy=relay"],
            "orb.iceTransportPolicy=relay sends the orbs' media only through a TURN relay",
        ),
        (
            with(&lb, &["--set", "turn.replicas=2"]),
            "turn.replicas > 1 needs turn.hostNetwork",
        ),
        (
            with(&lb, &["--set", "turn.hostNetwork=true", "--set", "turn.replicas=2"]),
            "turn.externalIP is one address",
        ),
        (
            with(&lb, &["--set", "turn.relayPorts.max=65535"]),
            "turn.relayPorts spans 16384 ports",
        ),
        (
            with(
                &lb,
                &[
                    "--set",
                    "turn.relayPorts.min=50000",
                    "--set",
                    "turn.relayPorts.max=49999",
                ],
            ),
            "turn.relayPorts.min is above turn.relayPorts.max",
        ),
        (
            vec!["--set", "networkPolicy.udpRelayCIDRs={10.1.2.3/32}"],
            "networkPolicy.udpRelayCIDRs is now networkPolicy.turnCIDRs",
        ),
        // The schema's refusals.
        (vec!["--set", "orb.iceTransportPolicy=none"], "iceTransportPolicy"),
        (
            vec!["--set", "turn.external.urls={https://turn.example.net}"],
            "external/urls",
        ),
        (vec!["--set", "turn.stunURLs={stun:a,b}"], "stunURLs"),
        (vec!["--set", "signaling.corsAllowedOrigins={*}"], "corsAllowedOrigins"),
        (with(&lb, &["--set", "turn.relayPorts.min=80"]), "relayPorts/min"),
    ] {
        let stderr = render_error(&args);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    // The host network takes any range and several relays.
    render(
        None,
        &with(
            &relay,
            &[
                "--set",
                "turn.hostNetwork=true",
                "--set",
                "turn.replicas=3",
                "--set",
                "turn.relayPorts.max=65535",
            ],
        ),
    );
}

/// `orb.iceTransportPolicy` reaches every orb pod the operator builds, through the operator's own
/// setting (the same path as the candidate deny list).
#[test]
fn orb_pods_get_the_ice_transport_policy_the_chart_sets() {
    let policy_of = |objects: &[Value]| {
        env_of(
            find(objects, "Deployment", "-operator"),
            orb_api::ice::ICE_TRANSPORT_POLICY_ENV,
        )
        .unwrap()["value"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(policy_of(&render(None, &[])), "all");
    let value = policy_of(&render(Some(TURN_VALUES), &[]));
    assert_eq!(value, "relay");
    let run = orb_operator::config::Cli::try_parse_from([
        "orb-operator",
        "--orb-image=orb:test",
        &format!("--orb-ice-transport-policy={value}"),
    ])
    .unwrap()
    .run;
    let config = run.validate(Some("0123456789abcdef0123456789abcdef".into())).unwrap();
    for pod in [
        orb_operator::pod::build_warm_pod("orb-warm-1", "calls", &config.pod),
        cold_pod(&config),
    ] {
        let env = pod.spec.unwrap().containers[0].env.clone().unwrap();
        let policy = env
            .iter()
            .find(|e| e.name == orb_api::ice::ICE_TRANSPORT_POLICY_ENV)
            .unwrap();
        assert_eq!(policy.value.as_deref(), Some("relay"));
    }
}

/// `orb.brain: local` with its models: the operator gets the volume and mounts it into every orb
/// pod, which is told where it is and which brain to run; a local brain without models, or with
/// two sources, does not render.
#[test]
fn a_local_brain_gets_its_models_volume_in_every_orb_pod() {
    let objects = render(
        None,
        &[
            "--set",
            "orb.brain=local",
            "--set",
            "orb.models.persistentVolumeClaim=orb-models",
        ],
    );
    let operator = find(&objects, "Deployment", "-operator");
    let value = |name: &str| env_of(operator, name).unwrap()["value"].as_str().unwrap().to_owned();
    let extra_env = value("ORB_EXTRA_ENV");
    assert!(
        extra_env.contains(r#"{"name":"ORB_BRAIN","value":"local"}"#),
        "{extra_env}"
    );
    for pod in orb_pods_from_flags(&[
        format!("--orb-models-volume={}", value("ORB_MODELS_VOLUME")),
        format!("--orb-models-mount-path={}", value("ORB_MODELS_MOUNT_PATH")),
        format!("--orb-extra-env={extra_env}"),
    ]) {
        let spec = pod.spec.unwrap();
        let claim = spec
            .volumes
            .unwrap()
            .iter()
            .find_map(|v| v.persistent_volume_claim.clone())
            .unwrap();
        assert_eq!((claim.claim_name.as_str(), claim.read_only), ("orb-models", Some(true)));
        let env = spec.containers[0].env.clone().unwrap();
        let get = |n: &str| env.iter().find(|e| e.name == n).and_then(|e| e.value.clone());
        assert_eq!(get("ORB_MODELS_DIR").as_deref(), Some("/models"));
        assert_eq!(get("ORB_BRAIN").as_deref(), Some("local"));
        // What the chart passes, the orb reads.
        let orb_env = env_names(orb::config::Cli::command());
        assert!(orb_env.contains("ORB_MODELS_DIR") && orb_env.contains("ORB_BRAIN"));
    }
    assert!(
        render_error(&["--set", "orb.brain=local"])
            .contains("set orb.models.persistentVolumeClaim or orb.models.image")
    );
    assert!(
        render_error(&[
            "--set",
            "orb.models.persistentVolumeClaim=a",
            "--set",
            "orb.models.image=b"
        ])
        .contains("not both")
    );
    assert!(render_error(&["--set", "orb.brain=gpt"]).contains("openai-realtime"));
}

/// Signaling's TURN settings (SIGNALING_ICE_SERVERS, SIGNALING_TURN_SECRET_FILE,
/// SIGNALING_TURN_CREDENTIAL_TTL, SIGNALING_CORS_ALLOWED_ORIGINS) as the chart passes them.
#[test]
fn the_signaling_deployment_s_turn_settings_are_ones_signaling_reads() {
    let known = env_names(orb_signaling::config::Args::command());
    let objects = render(Some(TURN_VALUES), &[]);
    for name in container_env(find(&objects, "Deployment", "-signaling")) {
        if name.starts_with("SIGNALING_") {
            assert!(
                known.contains(&name),
                "the chart sets {name}, which orb-signaling does not read"
            );
        }
    }
}

#[test]
fn orbs_read_the_ice_transport_policy_the_operator_passes() {
    let known = env_names(orb::config::Cli::command());
    assert!(known.contains(orb_api::ice::ICE_TRANSPORT_POLICY_ENV));
}

/// The relay's start script, run by `sh` with the container's paths moved into a directory and a
/// stand-in `turnserver` that prints its arguments: it hands coturn the rendered configuration
/// plus the secret from the mounted Secret, in a file only its user reads, and refuses a secret
/// that could add lines or options to the configuration.
#[test]
fn the_relay_starts_with_the_rendered_configuration_and_the_mounted_secret() {
    let objects = render(Some(TURN_VALUES), &[]);
    let dir = support::target_dir().join(format!("chart-relay-start-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let stand_in = bin.join("turnserver");
    std::fs::write(&stand_in, "#!/bin/sh\necho \"$@\"\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755)).unwrap();
    let start = |secret: &str| {
        let script = support::relay_start(&objects, &dir, secret);
        let _ = std::fs::remove_file(dir.join("scratch/turnserver.conf"));
        std::process::Command::new("sh")
            .args(["-c", &script, "coturn", "--relay-ip=192.0.2.1"])
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .output()
            .unwrap()
    };

    // A trailing line break (a Secret made with `echo`) is no part of the secret.
    let out = start("s3cret-A+b/c=._~\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let assembled = dir.join("scratch/turnserver.conf");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("-c {} --relay-ip=192.0.2.1", assembled.display())
    );
    let conf = find(&objects, "ConfigMap", "-turn")["data"]["turnserver.conf"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        std::fs::read_to_string(&assembled).unwrap(),
        format!("{conf}static-auth-secret=s3cret-A+b/c=._~\n")
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&assembled).unwrap().mode() & 0o777, 0o600);

    for bad in ["", "two words", "secret\nallow-loopback-peers", "a#comment", "x\"y"] {
        let out = start(bad);
        assert!(!out.status.success(), "{bad:?} accepted");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("the TURN secret must be"),
            "{bad:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.is_empty() && !assembled.exists(), "{bad:?}: coturn started");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
