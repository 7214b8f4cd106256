//! Calls across NATs: the network lab (`netlab`) puts the humans on home networks, the orb behind
//! its node's NAT and signaling with a real coturn relay on the "internet" between them.

mod netlab;
mod support;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use netlab::{Host, INTERNET, Lab, SiteSpec};
use orb::testkit::human::{Human, HumanNet, RTCIceServer};
use orb_protocol::UserRole;
use support::{Process, root, workspace_bin};

/// Only guards against a hang.
const PATIENCE: Duration = Duration::from_secs(90);
const SIGNALING_PORT: u16 = 8080;
const TURN_PORT: u16 = 3478;
const TURN_SECRET: &str = "nat-lab-turn-secret";

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

fn log_dir(name: &str) -> PathBuf {
    let dir = root().join("target/nat-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn log_file(dir: &std::path::Path, name: &str) -> std::fs::File {
    std::fs::File::create(dir.join(name)).unwrap()
}

/// With `NAT_LAB_CAPTURE` set, everything crossing the internet is written to
/// `internet.pcap` beside the logs (tcpdump), for reading a failed run.
fn capture(inet: &Host, dir: &std::path::Path) -> Option<Process> {
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

/// coturn on the internet, with the TURN REST shared secret.
fn coturn(inet: &Host, dir: &std::path::Path) -> Process {
    let log = log_file(dir, "coturn.log");
    let p = Process(
        inet.command("turnserver")
            .args([
                "-n",
                "--no-cli",
                "--fingerprint",
                "--realm=orb.test",
                "--use-auth-secret",
            ])
            .arg(format!("--static-auth-secret={TURN_SECRET}"))
            .arg(format!("--listening-ip={INTERNET}"))
            .arg(format!("--relay-ip={INTERNET}"))
            .arg(format!("--listening-port={TURN_PORT}"))
            .args([
                "--min-port=49152",
                "--max-port=49999",
                "--log-file=stdout",
                "--simple-log",
                "--verbose",
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start turnserver"),
    );
    inet.wait_for_port(INTERNET, TURN_PORT, PATIENCE);
    p
}

/// A TURN REST credential (username `<expiry>:<user>`, base64 HMAC-SHA1 of it), made with
/// openssl so that the test does not share code with what it checks.
fn turn_credential(user: &str, valid_for: Duration) -> (String, String) {
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + valid_for.as_secs();
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

fn signaling(inet: &Host, dir: &std::path::Path) -> Process {
    let log = log_file(dir, "signaling.log");
    let p = Process(
        inet.command(workspace_bin("orb-signaling"))
            .args(["--listen", &format!("{INTERNET}:{SIGNALING_PORT}")])
            .args(["--orb-runtime", "none", "--auth", "none"])
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start orb-signaling"),
    );
    inet.wait_for_port(INTERNET, SIGNALING_PORT, PATIENCE);
    p
}

fn orb(pod: &Host, dir: &std::path::Path, room: &str, env: &[(&str, String)]) -> Process {
    let log = log_file(dir, "orb.log");
    Process(
        pod.command(workspace_bin("orb"))
            .args([
                &format!("--room={room}"),
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
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start orb"),
    )
}

/// Runs a human's call on its own thread inside `host`'s namespace: joins, waits for the orb's
/// media, returns whether it connected and heard the greeting.
fn human_in(host: &Host, room: &str, user: &str, role: UserRole, ice_servers: Vec<RTCIceServer>) -> bool {
    let net = HumanNet {
        udp_addrs: vec![format!("{}:0", host.addr)],
        ice_servers,
    };
    let (room, user) = (room.to_owned(), user.to_owned());
    netlab::in_namespace(&host.ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let url = format!("ws://{INTERNET}:{SIGNALING_PORT}");
            let mut human = Human::join_from(&url, &room, &user, role, net).await.expect("join");
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
    })
}

#[test]
fn an_orb_behind_a_symmetric_nat_reaches_a_home_through_the_relay() {
    let Some(lab) = lab_or_skip("relay") else { return };
    let dir = log_dir("relay");
    let inet = lab.internet();
    let home = lab.site("home", "192.168.1", SiteSpec::HOME);
    let pod = lab.site("pod", "10.244.0", SiteSpec::SYMMETRIC);
    let _capture = capture(&inet, &dir);
    let _turn = coturn(&inet, &dir);
    let _signaling = signaling(&inet, &dir);
    let (orb_user, orb_pass) = turn_credential("orb", Duration::from_secs(3600));
    let _orb = orb(
        &pod,
        &dir,
        "room-nat",
        &[
            ("ORB_ICE_SERVERS", format!("turn:{INTERNET}:{TURN_PORT}?transport=udp")),
            ("ORB_TURN_USERNAME", orb_user),
            ("ORB_TURN_CREDENTIAL", orb_pass),
        ],
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
    assert!(
        human_in(&home, "room-nat", "coach-1", UserRole::Coach, servers),
        "the coach connected to the orb and heard it; logs in {}",
        dir.display()
    );
    let metrics = pod.http_get(Ipv4Addr::LOCALHOST, 9090, "/metrics").unwrap_or_default();
    assert!(
        metrics.contains("orb_peer_media_paths_total{path=\"relay\"} 1"),
        "the orb counted its media path as relayed:\n{metrics}"
    );
}
