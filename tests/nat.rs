//! Calls across NATs, as a platform team's first real call goes: the humans' browsers on home
//! networks behind NAT routers, the orb behind its node's NAT, signaling and the chart's TURN relay
//! (Debian's coturn with the `turnserver.conf` the chart renders) on the "internet" between them.
//! The network is the lab of `netlab`: namespaces, veth pairs and nftables masquerade made by the
//! test; nothing leaves them.
//!
//! `NAT_LAB_RUNS=<n>` repeats the relayed call n times (the 20-run check of the issue); every run
//! prints its time to connected. `NAT_LAB_CAPTURE=1` writes `internet.pcap` beside the logs.

mod netlab;
mod pages;
mod support;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use netlab::{Host, INTERNET, Lab, SiteSpec};
use orb::testkit::human::{Human, HumanNet, RTCIceServer};
use orb_protocol::UserRole;
use pages::{PATIENCE, Page, Pages, chromium, peer_state, scenario, wait_connected, wait_for, wait_orb_audio};
use serde_json::Value;
use support::{Process, render, root, tool, workspace_bin};

const SIGNALING_PORT: u16 = 8080;
const TURN_PORT: u16 = 3478;
const TURN_SECRET: &str = "nat-lab-turn-secret-0123456789abcdef";
const SIGNING_KEY: &str = "nat-lab-signing-key-0123456789abcdef";
/// chromedriver's port inside a browser site.
const DRIVER_PORT: u16 = 9515;

fn lab_or_skip(name: &str) -> Option<Lab> {
    if let Some(why) = Lab::unavailable() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the network lab is required in CI: {why}"
        );
        eprintln!("skipped: {why}");
        return None;
    }
    Some(Lab::new(name))
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::File::create(dir.join(name)).unwrap()
}

/// The relay's URLs as signaling hands them out: UDP, and TCP for networks that block UDP.
fn relay_urls() -> String {
    format!("turn:{INTERNET}:{TURN_PORT}?transport=udp,turn:{INTERNET}:{TURN_PORT}?transport=tcp")
}

/// A TURN REST credential (username `<expiry>:<user>`, base64 HMAC-SHA1 of it), made with
/// openssl so that the test shares no code with what it checks.
fn turn_credential(user: &str, valid_for: Duration) -> (String, String) {
    let expiry = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + valid_for.as_secs();
    let username = format!("{expiry}:{user}");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf %s '{username}' | openssl dgst -sha1 -hmac '{TURN_SECRET}' -binary | openssl base64 -A"
        ))
        .output()
        .unwrap();
    (username, String::from_utf8(out.stdout).unwrap())
}

/// A call's world: signaling (dev mode, its local runtime starting orbs in the `pod` site) and,
/// when asked, the chart's TURN relay on the internet. Fields drop in order: processes first,
/// the lab last.
struct World {
    dir: PathBuf,
    pod: Host,
    drivers: Vec<(Host, u16)>,
    _processes: Vec<Process>,
    lab: Lab,
}

impl World {
    fn start(name: &str, pod_nat: SiteSpec, relay: bool) -> Option<World> {
        let lab = lab_or_skip(name)?;
        let dir = root().join("target/nat-tests").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("orbs")).unwrap();
        let inet = lab.internet();
        let pod = lab.site("pod", "10.244.0", pod_nat);
        let mut processes = Vec::new();
        processes.extend(capture(&inet, &dir));
        let mut ice = Vec::new();
        if relay {
            processes.push(coturn(&inet, &dir));
            let secret = dir.join("turn-secret");
            std::fs::write(&secret, TURN_SECRET).unwrap();
            ice = vec![
                "--ice-servers".to_owned(),
                relay_urls(),
                "--turn-secret-file".to_owned(),
            ];
            ice.push(secret.display().to_string());
        }
        // The local runtime starts each orb through this script: the same process, in the pod.
        let orb_in_pod = dir.join("orb-in-pod.sh");
        std::fs::write(
            &orb_in_pod,
            format!(
                "#!/bin/sh\nexec ip netns exec {} {} \"$@\"\n",
                pod.ns,
                workspace_bin("orb").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&orb_in_pod, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let log = log_file(&dir, "signaling.log");
        processes.push(Process(
            inet.command(workspace_bin("orb-signaling"))
                .args(["--listen", &format!("{INTERNET}:{SIGNALING_PORT}")])
                .args(["--orb-runtime", "local", "--auth", "jwt"])
                .arg("--orb-binary")
                .arg(&orb_in_pod)
                .arg("--orb-log-dir")
                .arg(dir.join("orbs"))
                .args(["--orb-signaling-url", &format!("ws://{INTERNET}:{SIGNALING_PORT}")])
                .args(["--empty-room-grace", "2s"])
                .args(&ice)
                .env("ORB_SIGNING_KEY", SIGNING_KEY)
                .env("ORB_BRAIN", "test")
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start orb-signaling"),
        ));
        inet.wait_for_port(INTERNET, SIGNALING_PORT, PATIENCE);
        Some(World {
            dir,
            pod,
            drivers: Vec::new(),
            _processes: processes,
            lab,
        })
    }

    /// A home network behind its own router with chromedriver on it; returns the site's index.
    fn browser_site(&mut self, name: &str, lan: &str, spec: SiteSpec) -> usize {
        let host = self.lab.site(name, lan, spec);
        self._processes.push(Process(
            host.command(tool("chromedriver", "./scripts/install-deps.sh"))
                .arg(format!("--port={DRIVER_PORT}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromedriver"),
        ));
        host.wait_for_port(Ipv4Addr::LOCALHOST, DRIVER_PORT, PATIENCE);
        let port = host.forward(DRIVER_PORT);
        self.drivers.push((host, port));
        self.drivers.len() - 1
    }

    /// A Chromium page in browser site `site`.
    async fn page(&self, site: usize, name: &str) -> Page {
        let profile = self.dir.join(format!("profile-{name}"));
        chromium(name, self.drivers[site].1, &profile, &[]).await
    }

    fn room_url(&self, room: &str, role: &str) -> String {
        let name = if role == "coach" { "Coach" } else { "Client" };
        format!("http://{INTERNET}:{SIGNALING_PORT}/rooms/{room}?role={role}&name={name}")
    }

    /// The metrics of the room's orb, read inside the pod (its HTTP port is in its log).
    fn orb_metrics(&self, room: &str) -> String {
        let log = std::fs::read_to_string(self.dir.join("orbs").join(format!("orb-{room}.log"))).unwrap_or_default();
        let Some(port) = log
            .lines()
            .find_map(|l| l.split("--http-addr=127.0.0.1:").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|p| p.parse::<u16>().ok())
        else {
            return String::new();
        };
        self.pod
            .http_get(Ipv4Addr::LOCALHOST, port, "/metrics")
            .unwrap_or_default()
    }

    /// Waits until the room's orb reports `needle` among its metrics.
    async fn wait_orb_metric(&self, room: &str, needle: &str) {
        wait_for(&format!("the orb of {room} to report {needle}"), || async {
            self.orb_metrics(room).contains(needle).then_some(())
        })
        .await;
    }
}

/// With `NAT_LAB_CAPTURE` set, everything crossing the internet is written to `internet.pcap`
/// beside the logs (tcpdump), for reading a failed run.
fn capture(inet: &Host, dir: &Path) -> Option<Process> {
    std::env::var_os("NAT_LAB_CAPTURE")?;
    let p = Process(
        inet.command("tcpdump")
            .args(["-i", "any", "-n", "-U", "-w"])
            .arg(dir.join("internet.pcap"))
            .stderr(Stdio::null())
            .spawn()
            .ok()?,
    );
    std::thread::sleep(Duration::from_millis(500));
    Some(p)
}

/// coturn on the internet as the chart runs it: the chart's start script and `turnserver.conf`
/// (its deny list for the cluster's and private ranges included), listening on the internet's
/// address instead of a pod's.
fn coturn(inet: &Host, dir: &Path) -> Process {
    let objects = render(
        None,
        &[
            "--set",
            "turn.enabled=true",
            "--set",
            &format!("turn.publicHost={INTERNET}"),
            "--set",
            "turn.hostNetwork=true",
        ],
    );
    let script = support::relay_start(&objects, dir, TURN_SECRET);
    let log = log_file(dir, "coturn.log");
    let p = Process(
        inet.command("sh")
            .args(["-c", &script, "coturn"])
            .arg(format!("--listening-ip={INTERNET}"))
            .arg(format!("--relay-ip={INTERNET}"))
            .arg(format!("--pidfile={}", dir.join("turnserver.pid").display()))
            .arg(format!("--userdb={}", dir.join("turndb").display()))
            .args(["--log-file=stdout", "--simple-log"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start turnserver"),
    );
    inet.wait_for_port(INTERNET, TURN_PORT, PATIENCE);
    p
}

/// The selected candidate pair of the page's connection to `peer` (`local`, `remote` types).
async fn pair_types(page: &Page, peer: &str) -> Value {
    page.js("return window.orbCall.selectedPairTypes()").await[peer].clone()
}

/// The room page's peer id of the orb, once it knows one.
async fn ai_peer(page: &Page) -> String {
    wait_for(&format!("{}: the orb in the room", page.name), || async {
        page.call().await["aiPeerId"].as_str().map(str::to_owned)
    })
    .await
}

async fn user_id(page: &Page) -> String {
    wait_for(&format!("{}: its user id", page.name), || async {
        page.call().await["userId"].as_str().map(str::to_owned)
    })
    .await
}

/// Case 1 of the issue: no ICE servers anywhere. The humans on one home network reach each other;
/// nobody reaches the orb behind its node's NAT. The page says so, the orb counts the failure, and
/// the humans' call goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_relay_the_page_says_the_ai_cannot_be_heard_and_the_humans_talk_on() {
    let name = "no-relay";
    let Some(mut world) = World::start(name, SiteSpec::HOME, false) else {
        return;
    };
    let home = world.browser_site("home", "192.168.1", SiteSpec::HOME);
    let pages = Pages::default();
    let world = &world;
    scenario(name, &world.dir, &pages, async {
        let room = "nat-no-relay";
        let coach = pages.add(world.page(home, "coach").await);
        coach.client.goto(&world.room_url(room, "coach")).await.unwrap();
        let coach_id = user_id(&coach).await;
        let client = pages.add(world.page(home, "client").await);
        client.client.goto(&world.room_url(room, "client")).await.unwrap();
        let call = wait_connected(&client, &[&coach_id]).await;
        let ai = call["aiPeerId"].as_str().expect("the orb joined the room").to_owned();
        for page in [&coach, &client] {
            wait_for(&format!("{}: the AI's media reported as failed", page.name), || async {
                (page.call().await["aiMediaFailed"] == true).then_some(())
            })
            .await;
            let shown = page
                .js("const n = document.getElementById('ai-media-notice'); return !n.hidden && n.textContent")
                .await;
            assert!(
                shown.as_str().is_some_and(|t| t.contains("could not connect")),
                "{}: the notice is visible: {shown}",
                page.name
            );
        }
        world
            .wait_orb_metric(room, "orb_peer_connect_failures_total{stage=\"ice\"} 2")
            .await;
        assert!(
            world
                .orb_metrics(room)
                .contains("orb_peer_media_paths_total{path=\"relay\"} 0")
        );
        // The humans' own connection carried on: still up, directly on their network.
        let coach_call = coach.call().await;
        let client_id = client.call().await["userId"].as_str().unwrap().to_owned();
        assert_eq!(peer_state(&coach_call, &client_id).as_deref(), Some("connected"));
        assert_ne!(peer_state(&coach_call, &ai).as_deref(), Some("connected"));
        assert_eq!(pair_types(&coach, &client_id).await["local"], "host");
    })
    .await;
}

/// Cases 2 and 6 of the issue, and the 20-run check (`NAT_LAB_RUNS`): coach and client at home,
/// the orb behind a symmetric NAT (only the relay can carry its media), ICE servers and TURN
/// credentials from signaling for the pages (`/ice-servers`) and for the orb (the `ice-servers`
/// message, no password in its environment). Both humans hear the orb through the relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_humans_hear_an_orb_behind_a_symmetric_nat_through_the_chart_s_relay() {
    let name = "relay";
    let Some(mut world) = World::start(name, SiteSpec::SYMMETRIC, true) else {
        return;
    };
    let home = world.browser_site("home", "192.168.1", SiteSpec::HOME);
    let runs: usize = std::env::var("NAT_LAB_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let pages = Pages::default();
    let world = &world;
    scenario(name, &world.dir, &pages, async {
        let coach = pages.add(world.page(home, "coach").await);
        let client = pages.add(world.page(home, "client").await);
        let mut connected = Vec::new();
        for run in 0..runs {
            let room = format!("nat-relay-{run}");
            let started = Instant::now();
            coach.client.goto(&world.room_url(&room, "coach")).await.unwrap();
            client.client.goto(&world.room_url(&room, "client")).await.unwrap();
            let coach_call = wait_connected(&coach, &["ai"]).await;
            let ai = coach_call["aiPeerId"].as_str().unwrap().to_owned();
            wait_connected(&client, &["ai"]).await;
            let elapsed = started.elapsed();
            connected.push(elapsed);
            eprintln!("run {run}: both humans connected to the orb {elapsed:?} after opening the pages");
            for page in [&coach, &client] {
                wait_orb_audio(page, &ai).await;
                let types = pair_types(page, &ai).await;
                assert!(
                    types["local"] == "relay" || types["remote"] == "relay",
                    "{}: the media to the orb goes through the relay: {types}",
                    page.name
                );
                let servers = page.call().await["iceServers"].to_string();
                assert!(
                    servers.contains("turn:"),
                    "{}: ICE servers from signaling: {servers}",
                    page.name
                );
            }
            world
                .wait_orb_metric(&room, "orb_peer_media_paths_total{path=\"relay\"} 2")
                .await;
            let orb_log = std::fs::read_to_string(world.dir.join("orbs").join(format!("orb-{room}.log"))).unwrap();
            assert!(orb_log.contains("ICE servers from signaling"), "{orb_log}");
        }
        connected.sort();
        let at = |q: f64| connected[((connected.len() - 1) as f64 * q).round() as usize];
        eprintln!(
            "{runs} of {runs} runs connected through the relay; time to connected p50 {:?}, p95 {:?}",
            at(0.5),
            at(0.95)
        );
    })
    .await;
}

/// Cases 3 and 4 of the issue: the coach at home, the client on another network behind a NAT that
/// forwards no UDP at all. The client reaches the relay over TCP; everyone connects to everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn humans_behind_two_nats_one_without_udp_reach_each_other_and_the_orb() {
    let name = "two-nats";
    let Some(mut world) = World::start(name, SiteSpec::HOME, true) else {
        return;
    };
    let home = world.browser_site("home", "192.168.1", SiteSpec::HOME);
    let office = world.browser_site("office", "192.168.7", SiteSpec::UDP_BLOCKED);
    let pages = Pages::default();
    let world = &world;
    scenario(name, &world.dir, &pages, async {
        let room = "nat-two-nats";
        let coach = pages.add(world.page(home, "coach").await);
        coach.client.goto(&world.room_url(room, "coach")).await.unwrap();
        let coach_id = user_id(&coach).await;
        let client = pages.add(world.page(office, "client").await);
        client.client.goto(&world.room_url(room, "client")).await.unwrap();
        let call = wait_connected(&client, &["ai", &coach_id]).await;
        let client_id = call["userId"].as_str().unwrap().to_owned();
        wait_connected(&coach, &["ai", &client_id]).await;
        let ai = ai_peer(&client).await;
        wait_orb_audio(&client, &ai).await;
        wait_orb_audio(&coach, &ai).await;
        for peer in [ai.as_str(), coach_id.as_str()] {
            let types = pair_types(&client, peer).await;
            assert_eq!(types["local"], "relay", "without UDP the client relays: {types}");
            assert_eq!(types["relayProtocol"], "tcp", "over TURN/TCP: {types}");
        }
    })
    .await;
}

/// A path that dies mid-call (the home network loses everything but its signaling connection
/// until the browser gives the connection up): when the network comes back, the page connects to
/// the orb again by itself, without a rejoin, and hears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_media_path_dies_reconnects_to_the_orb_by_itself() {
    let name = "path-dies";
    let Some(mut world) = World::start(name, SiteSpec::SYMMETRIC, true) else {
        return;
    };
    let home = world.browser_site("home", "192.168.1", SiteSpec::HOME);
    let pages = Pages::default();
    let world = &world;
    scenario(name, &world.dir, &pages, async {
        let room = "nat-path-dies";
        let coach = pages.add(world.page(home, "coach").await);
        coach.client.goto(&world.room_url(room, "coach")).await.unwrap();
        let call = wait_connected(&coach, &["ai"]).await;
        let ai = call["aiPeerId"].as_str().unwrap().to_owned();
        wait_orb_audio(&coach, &ai).await;
        let site = &world.drivers[home].0;
        world.lab.cut_off(site, SIGNALING_PORT);
        wait_for("coach: the connection to the orb given up", || async {
            (peer_state(&coach.call().await, &ai).as_deref() == Some("failed")).then_some(())
        })
        .await;
        world.lab.restore(site);
        let call = wait_connected(&coach, &["ai"]).await;
        assert!(call["aiReconnects"].as_u64() >= Some(1), "{call}");
        assert_eq!(call["aiPeerId"].as_str(), Some(ai.as_str()), "the same orb, no rejoin");
        wait_orb_audio(&coach, &ai).await;
        assert_eq!(coach.call().await["aiMediaFailed"], false);
    })
    .await;
}

/// The orb alone against a scripted human (webrtc-rs, like the orb) at home: the orb takes its
/// ICE servers and TURN credential from signaling's `ice-servers` message; the human's credential
/// is minted by the test. Quick, and it pins the orb's own relay handling.
#[test]
fn an_orb_behind_a_symmetric_nat_reaches_a_home_through_the_relay() {
    let Some(lab) = lab_or_skip("orb-relay") else { return };
    let dir = root().join("target/nat-tests/orb-relay");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let inet = lab.internet();
    let home = lab.site("home", "192.168.1", SiteSpec::HOME);
    let pod = lab.site("pod", "10.244.0", SiteSpec::SYMMETRIC);
    let _capture = capture(&inet, &dir);
    let _turn = coturn(&inet, &dir);
    let secret = dir.join("turn-secret");
    std::fs::write(&secret, TURN_SECRET).unwrap();
    let log = log_file(&dir, "signaling.log");
    let _signaling = Process(
        inet.command(workspace_bin("orb-signaling"))
            .args(["--listen", &format!("{INTERNET}:{SIGNALING_PORT}")])
            .args(["--orb-runtime", "none", "--auth", "none"])
            .args(["--ice-servers", &relay_urls(), "--turn-secret-file"])
            .arg(&secret)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start orb-signaling"),
    );
    inet.wait_for_port(INTERNET, SIGNALING_PORT, PATIENCE);
    let log = log_file(&dir, "orb.log");
    let _orb = Process(
        pod.command(workspace_bin("orb"))
            .args([
                "--room=room-nat",
                "--session=session-1",
                "--coach=coach-1",
                "--client=client-1",
                "--test-mode",
                &format!("--signaling-url=ws://{INTERNET}:{SIGNALING_PORT}"),
                "--http-addr=127.0.0.1:9090",
            ])
            .arg(format!(
                "--termination-log={}",
                dir.join("orb.termination-log").display()
            ))
            .env("ORB_BRAIN", "test")
            .env("ORB_DENIED_CANDIDATE_CIDRS", "")
            .env("RUST_LOG", "info,rtc_ice=debug,rtc_turn=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start orb"),
    );
    let (user, pass) = turn_credential("coach-1", Duration::from_secs(3600));
    let servers = vec![RTCIceServer {
        urls: vec![
            format!("stun:{INTERNET}:{TURN_PORT}"),
            format!("turn:{INTERNET}:{TURN_PORT}?transport=udp"),
        ],
        username: user,
        credential: pass,
    }];
    let net = HumanNet {
        udp_addrs: vec![format!("{}:0", home.addr)],
        ice_servers: servers,
    };
    // The human's sockets are the home's: its runtime lives on a thread inside that namespace.
    let heard = netlab::in_namespace(&home.ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let url = format!("ws://{INTERNET}:{SIGNALING_PORT}");
            let mut human = Human::join_from(&url, "room-nat", "coach-1", UserRole::Coach, net)
                .await
                .expect("join");
            if !human.wait_connected(PATIENCE).await {
                return false;
            }
            let heard = human
                .wait_for_tone(orb::brain::test::GREETING_HZ, 5, PATIENCE)
                .await
                .is_some();
            human.leave().await;
            heard
        })
    });
    assert!(
        heard,
        "the coach connected to the orb and heard it; logs in {}",
        dir.display()
    );
    let metrics = pod.http_get(Ipv4Addr::LOCALHOST, 9090, "/metrics").unwrap_or_default();
    assert!(
        metrics.contains("orb_peer_media_paths_total{path=\"relay\"} 1"),
        "the orb counted its media path as relayed:\n{metrics}"
    );
    let orb_log = std::fs::read_to_string(dir.join("orb.log")).unwrap();
    assert!(orb_log.contains("ICE servers from signaling"), "{orb_log}");
}
