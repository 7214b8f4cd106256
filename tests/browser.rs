//! The whole path in a real browser: Chromium (and, in one scenario, Firefox) pages with a fake
//! camera and microphone join a room served by `orb-signaling` in dev mode (`--orb-runtime
//! local`), the local runtime starts a real `orb` process under the operator's policy, and every
//! WebRTC connection of the mesh comes up with the orb's audio flowing. Then the leave and cleanup paths, and the concurrency cap's queue.
//!
//! Every wait polls page state (`window.orbCall`, exposed by the room page) or the per-orb log with
//! a generous limit that only guards against a hang; nothing asserts on how fast things happen.
//! A failing test saves a screenshot of each page to `target/browser-failures/`.

mod pages;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fantoccini::Locator;
use futures::{SinkExt, StreamExt};
use orb_api::auth::{Role, RoomClaims, SigningKey, unix_now};
use pages::{
    PATIENCE, Page, Pages, chromium, peer_state, scenario, wait_connected, wait_for, wait_for_within, wait_orb_audio,
    webdriver_session,
};
use serde_json::{Value, json};
use support::{Process, free_port, root, tool, workspace_bin};

const SIGNING_KEY: &str = "browser-tests-signing-key-0123456789abcdef";
/// The empty-room grace of these tests.
const GRACE: Duration = Duration::from_secs(2);

/// Signaling in dev mode, chromedriver (and geckodriver when asked), and the directory holding
/// their logs.
struct Stack {
    port: u16,
    driver_port: u16,
    firefox_driver_port: Option<u16>,
    dir: PathBuf,
    /// Signaling replicas (one unless started with Redis), the first serving `port`.
    signaling: Vec<Process>,
    _drivers: Vec<Process>,
}

/// One signaling process in dev mode on `port`, logging to `<dir>/<log>`; its orbs run the test
/// brain.
fn signaling_process(dir: &Path, log: &str, port: u16, extra: &[&str]) -> Process {
    signaling_process_with(dir, log, port, extra, &[("ORB_BRAIN", "test")])
}

/// [`signaling_process`] with `env` (the orbs' brain and its settings: the orbs inherit it).
fn signaling_process_with(dir: &Path, log: &str, port: u16, extra: &[&str], env: &[(&str, &str)]) -> Process {
    let log = std::fs::File::create(dir.join(log)).unwrap();
    Process(
        Command::new(workspace_bin("orb-signaling"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--orb-runtime", "local", "--auth", "jwt"])
            .arg("--orb-binary")
            .arg(workspace_bin("orb"))
            .arg("--orb-log-dir")
            .arg(dir.join("orbs"))
            .args(["--empty-room-grace", &format!("{}ms", GRACE.as_millis())])
            .args(extra)
            .env("ORB_SIGNING_KEY", SIGNING_KEY)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start orb-signaling"),
    )
}

fn wait_for_port(p: u16) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", p)).is_err() {
        assert!(started.elapsed() < PATIENCE, "port {p} never opened");
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Stack {
    fn start(name: &str, extra: &[&str]) -> Self {
        Self::start_with(name, extra, false)
    }

    fn start_with(name: &str, extra: &[&str], firefox: bool) -> Self {
        let dir = Self::fresh_dir(name);
        let port = free_port();
        let signaling = signaling_process(&dir, "signaling.log", port, extra);
        Self::with_browsers(dir, port, vec![signaling], firefox)
    }

    fn fresh_dir(name: &str) -> PathBuf {
        let dir = root().join("target/browser-tests").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Signaling replicas on `ports` sharing rooms through `redis` (replica `i` logs to
    /// `signaling-<i>.log`); orbs connect to `orb_url`.
    fn start_replicas(name: &str, ports: &[u16], redis: &str, orb_url: &str) -> Self {
        let dir = Self::fresh_dir(name);
        let signaling = ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let replica = format!("replica-{i}");
                let extra = [
                    "--redis-url",
                    redis,
                    "--replica-id",
                    &replica,
                    "--orb-signaling-url",
                    orb_url,
                ];
                signaling_process(&dir, &format!("signaling-{i}.log"), *port, &extra)
            })
            .collect();
        let stack = Self::with_browsers(dir, ports[0], signaling, false);
        for p in &ports[1..] {
            wait_for_port(*p);
        }
        stack
    }

    fn with_browsers(dir: PathBuf, port: u16, signaling: Vec<Process>, firefox: bool) -> Self {
        let driver_port = free_port();
        let driver = Process(
            Command::new(tool("chromedriver", "./scripts/install-deps.sh"))
                .arg(format!("--port={driver_port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromedriver"),
        );
        let mut drivers = vec![driver];
        let mut firefox_driver_port = None;
        if firefox {
            let p = free_port();
            drivers.push(Process(
                Command::new(tool("geckodriver", "./scripts/install-deps.sh"))
                    .arg(format!("--port={p}"))
                    .stdout(std::fs::File::create(dir.join("geckodriver.log")).unwrap())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start geckodriver"),
            ));
            firefox_driver_port = Some(p);
        }
        let stack = Self {
            port,
            driver_port,
            firefox_driver_port,
            dir,
            signaling,
            _drivers: drivers,
        };
        for p in [port, driver_port].into_iter().chain(firefox_driver_port) {
            wait_for_port(p);
        }
        stack
    }

    fn room_url(&self, room: &str, role: &str) -> String {
        room_url_at(self.port, room, role)
    }

    fn orb_log(&self, room: &str) -> String {
        std::fs::read_to_string(self.dir.join("orbs").join(format!("orb-{room}.log"))).unwrap_or_default()
    }

    /// A browser with fake media devices and its own profile.
    async fn browser(&self, name: &str) -> Page {
        self.browser_with(name, &[]).await
    }

    /// [`Stack::browser`] with extra Chromium flags (say, a file as the microphone).
    async fn browser_with(&self, name: &str, extra: &[String]) -> Page {
        let profile = self.dir.join(format!("profile-{name}"));
        chromium(name, self.driver_port, &profile, extra).await
    }

    /// Firefox (headless) with fake media devices, through geckodriver.
    async fn firefox(&self, name: &str) -> Page {
        let port = self.firefox_driver_port.expect("the stack was started with Firefox");
        let firefox = tool("firefox-esr", "./scripts/install-deps.sh");
        let prefs = json!({
            // Fake camera and microphone, granted without a prompt.
            "media.navigator.streams.fake": true,
            "media.navigator.permission.disabled": true,
            "media.autoplay.default": 0,
            // Host candidates with real addresses, not mDNS names: the orb is on this machine.
            "media.peerconnection.ice.obfuscate_host_addresses": false,
            // Nothing to reach outside this machine.
            "app.update.enabled": false,
            "network.captive-portal-service.enabled": false,
            "network.connectivity-service.enabled": false,
            "browser.safebrowsing.malware.enabled": false,
            "browser.safebrowsing.phishing.enabled": false,
            "datareporting.policy.dataSubmissionEnabled": false,
            "toolkit.telemetry.enabled": false,
        });
        let mut caps = serde_json::Map::new();
        caps.insert(
            "moz:firefoxOptions".into(),
            json!({ "binary": firefox, "args": ["-headless", "-width=1280", "-height=800"], "prefs": prefs }),
        );
        webdriver_session(name, "firefox", port, caps).await
    }
}

fn room_url_at(port: u16, room: &str, role: &str) -> String {
    let name = if role == "coach" { "Coach" } else { "Client" };
    format!("http://127.0.0.1:{port}/rooms/{room}?role={role}&name={name}")
}

/// Waits until the page heard, as the loudest sound from the orb, the test brain's greeting
/// ([`orb::brain::test::GREETING_HZ`]) or the echo of the fake microphone's tone (what this page's
/// own microphone is loudest at; both humans have the same fake device): within two FFT bins.
async fn wait_orb_content(page: &Page) {
    let greeting = f64::from(orb::brain::test::GREETING_HZ);
    let tolerance = 2.0 * 48_000.0 / 4096.0;
    let (orb_hz, mic_hz) = wait_for(&format!("{}: the orb's tone or echo", page.name), || async {
        let peaks = page
            .js("return [window.orbCall.orbPeakHz(), window.orbCall.micPeakHz()]")
            .await;
        let (orb, mic) = (peaks[0].as_f64()?, peaks[1].as_f64());
        let matches = |hz: f64| (orb - hz).abs() <= tolerance;
        (matches(greeting) || mic.is_some_and(matches)).then_some((orb, mic))
    })
    .await;
    eprintln!(
        "{}: loudest from the orb {orb_hz:.0} Hz (microphone {mic_hz:?} Hz)",
        page.name
    );
}

/// A coach and a client in a call with the orb.
struct Meeting {
    coach: Arc<Page>,
    client: Arc<Page>,
    ai: String,
    coach_id: String,
    client_id: String,
}

/// The coach's page opens `coach_url` and connects to the orb, then the client's page opens
/// `client_url`: every connection of the mesh comes up, with one orb, and both hear it.
async fn meet(stack: &Stack, pages: &Pages, coach_url: &str, client_url: &str) -> Meeting {
    let coach = pages.add(stack.browser("coach").await);
    coach.client.goto(coach_url).await.unwrap();
    let coach_call = wait_connected(&coach, &["ai"]).await;
    let ai = coach_call["aiPeerId"].as_str().unwrap().to_owned();
    let coach_id = coach_call["userId"].as_str().unwrap().to_owned();
    let client = pages.add(stack.browser("client").await);
    client.client.goto(client_url).await.unwrap();
    let client_call = wait_connected(&client, &["ai", &coach_id]).await;
    assert_eq!(
        client_call["aiPeerId"].as_str(),
        Some(ai.as_str()),
        "one orb in the room"
    );
    let client_id = client_call["userId"].as_str().unwrap().to_owned();
    wait_connected(&coach, &["ai", &client_id]).await;
    wait_orb_audio(&coach, &ai).await;
    wait_orb_audio(&client, &ai).await;
    Meeting {
        coach,
        client,
        ai,
        coach_id,
        client_id,
    }
}

fn orb_pid(log: &str) -> Option<u32> {
    let line = log.lines().find(|l| l.contains("[orb-runtime] started"))?;
    let rest = &line[line.find("(pid ")? + 5..];
    rest.split(',').next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coach_and_client_meet_the_orb_hear_it_and_leave() {
    let name = "meet";
    let stack = Stack::start(name, &[]);
    let pages = Pages::default();
    let stack_ref = &stack;
    scenario(name, &stack.dir, &pages, async {
        let room = "browser-meet";
        let Meeting {
            coach,
            client,
            ai,
            coach_id,
            client_id: _,
        } = meet(
            stack_ref,
            &pages,
            &stack_ref.room_url(room, "coach"),
            &stack_ref.room_url(room, "client"),
        )
        .await;
        // Both humans hear the orb (the test brain greets, then echoes; RTP flows throughout), and
        // what they hear is the orb's content: its loudest sound is the greeting tone or
        // the echo of a human's microphone (the test brain's only two voices), not noise.
        for page in [&coach, &client] {
            wait_orb_content(page).await;
        }
        let shot = root().join("target/browser-screenshots/coach-page.png");
        coach.screenshot(&shot).await;

        // The coach leaves: the client's connection to the coach closes, the orb stays.
        coach
            .client
            .find(Locator::Id("leave"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let left = wait_for("client: the peer to the coach closed", || async {
            let call = client.call().await;
            (peer_state(&call, &coach_id).as_deref() == Some("closed")).then_some(call)
        })
        .await;
        assert_eq!(peer_state(&left, &ai).as_deref(), Some("connected"), "the orb stays");
        wait_orb_audio(&client, &ai).await;
        assert_eq!(peer_state(&client.call().await, &ai).as_deref(), Some("connected"));

        // Everyone leaves: after the empty-room grace the orb process ends with RoomCleanup.
        let pid = orb_pid(&stack_ref.orb_log(room)).expect("the orb's pid in its log");
        // Taken before the click, so the room emptied after it.
        let emptied = Instant::now();
        client
            .client
            .find(Locator::Id("leave"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_for("the orb to end with RoomCleanup", || async {
            let log = stack_ref.orb_log(room);
            log.contains("orb ended: Succeeded RoomCleanup").then_some(())
        })
        .await;
        assert!(emptied.elapsed() >= GRACE, "the orb ended before the grace period");
        let log = stack_ref.orb_log(room);
        assert!(log.contains("terminating the orb: RoomCleanup"), "{log}");
        assert!(log.contains("orb exited (attempt 0, exit code Some(0))"), "{log}");
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "orb process {pid} still exists"
        );
    })
    .await;
}

/// The web client in Firefox and Chromium at once: a Firefox coach and a Chromium client meet the
/// orb, every connection of the mesh comes up across the two browsers, and both hear the orb.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firefox_coach_and_a_chromium_client_share_the_call() {
    let name = "firefox";
    let stack = Stack::start_with(name, &[], true);
    let pages = Pages::default();
    let stack_ref = &stack;
    scenario(name, &stack.dir, &pages, async {
        let room = "browser-firefox";
        let coach = pages.add(stack_ref.firefox("coach-firefox").await);
        coach.client.goto(&stack_ref.room_url(room, "coach")).await.unwrap();
        let coach_call = wait_connected(&coach, &["ai"]).await;
        let ai = coach_call["aiPeerId"].as_str().unwrap().to_owned();
        let coach_id = coach_call["userId"].as_str().unwrap().to_owned();

        let client = pages.add(stack_ref.browser("client-chromium").await);
        client.client.goto(&stack_ref.room_url(room, "client")).await.unwrap();
        let client_call = wait_connected(&client, &["ai", &coach_id]).await;
        let client_id = client_call["userId"].as_str().unwrap().to_owned();
        wait_connected(&coach, &["ai", &client_id]).await;

        wait_orb_audio(&coach, &ai).await;
        wait_orb_audio(&client, &ai).await;
        // The humans' media crosses browsers too: each receives the other's audio.
        wait_orb_audio(&coach, &client_id).await;
        wait_orb_audio(&client, &coach_id).await;
    })
    .await;
}

/// A human stand-in without media: holds a room (and its orb) through a plain WebSocket.
struct StandIn {
    close: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn stand_in(port: u16, room: &str) -> StandIn {
    stand_in_as(port, room, &format!("client-{room}"), Role::Client).await
}

/// [`stand_in`] as `user` in `role`; as the AI it joins as the orb does, and answers nothing.
async fn stand_in_as(port: u16, room: &str, user: &str, role: Role) -> StandIn {
    let key = SigningKey::new(SIGNING_KEY.as_bytes().to_vec()).unwrap();
    let token = key.mint(&RoomClaims {
        room: room.to_owned(),
        sub: user.to_owned(),
        role,
        exp: unix_now() + 3600,
        session: None,
        iat: orb_api::auth::unix_now(),
        aud: orb_api::auth::ROOM_TOKEN_AUDIENCE.into(),
        orb: None,
    });
    let url = format!("ws://127.0.0.1:{port}/ws-simple/{room}?token={token}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("stand-in connects");
    let participant_type = if role == Role::Ai { "ai" } else { "human" };
    let join = json!({"type": "join", "roomId": room, "userId": user, "userRole": role.as_str(),
        "userName": "stand-in", "participantType": participant_type});
    ws.send(join.to_string().into()).await.unwrap();
    let (close, mut closed) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut closed => {
                    let _ = ws.close(None).await;
                    // Read until the server's close reply so the leave is clean.
                    while let Some(Ok(_)) = ws.next().await {}
                    return;
                }
                // Reading answers the server's keepalive pings.
                msg = ws.next() => if msg.is_none() { return },
            }
        }
    });
    StandIn { close, task }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ninth_room_queues_until_another_room_ends() {
    let name = "queue";
    let stack = Stack::start(name, &["--max-concurrent-orbs", "8"]);
    let pages = Pages::default();
    let stack_ref = &stack;
    scenario(name, &stack.dir, &pages, async {
        let mut stand_ins = Vec::new();
        for i in 1..=8 {
            stand_ins.push(stand_in(stack_ref.port, &format!("busy-{i}")).await);
        }
        for i in 1..=8 {
            let room = format!("busy-{i}");
            wait_for(&format!("the orb of {room} ready"), || async {
                stack_ref.orb_log(&room).contains("orb ready").then_some(())
            })
            .await;
        }

        // The ninth room waits in the queue and says so.
        let room = "browser-queued";
        let coach = pages.add(stack_ref.browser("coach").await);
        coach.client.goto(&stack_ref.room_url(room, "coach")).await.unwrap();
        wait_for("the page to show queued", || async {
            let call = coach.call().await;
            (call["aiStatus"].as_str() == Some("queued")).then_some(())
        })
        .await;
        let status = coach
            .js("return document.getElementById('orb-status').dataset.status")
            .await;
        assert_eq!(status, json!("queued"));
        assert!(stack_ref.orb_log(room).contains("orb queued at position 1"));
        assert!(!stack_ref.orb_log(room).contains("[orb-runtime] started"));

        // Another room ends: its orb goes after the grace period and the ninth room's orb comes.
        let first = stand_ins.remove(0);
        let _ = first.close.send(());
        let _ = first.task.await;
        wait_for("busy-1's orb to end", || async {
            stack_ref
                .orb_log("busy-1")
                .contains("orb ended: Succeeded RoomCleanup")
                .then_some(())
        })
        .await;
        let call = wait_connected(&coach, &["ai"]).await;
        assert_ne!(call["aiStatus"].as_str(), Some("queued"));
        let ai = call["aiPeerId"].as_str().unwrap().to_owned();
        wait_orb_audio(&coach, &ai).await;
        for s in stand_ins {
            let _ = s.close.send(());
            let _ = s.task.await;
        }
    })
    .await;
}

/// Real speech, as a microphone: `espeak-ng` speaks a few sentences into a WAV that Chromium
/// loops as its fake capture device.
fn speech_wav(dir: &Path) -> PathBuf {
    let wav = dir.join("speech.wav");
    let text = "Let us start with the breathing exercise. Breathe in slowly, and hold it. \
                Now breathe out. How does your chest feel today? A little lighter, I think. \
                Good. We will try it once more, and then talk about your week.";
    let status = Command::new(tool("espeak-ng", "./scripts/install-deps.sh"))
        .args(["-s", "170", "-g", "2", "-w"])
        .arg(&wav)
        .arg(text)
        .status()
        .expect("run espeak-ng");
    assert!(status.success(), "espeak-ng failed");
    wav
}

/// A coach and a client join `room` with their microphones (Chromium flags), the coach first:
/// both connected to the orb and to each other. Returns their pages, the orb's id and theirs.
async fn join_with_mics(
    stack: &Stack,
    pages: &Pages,
    room: &str,
    coach_mic: &str,
    client_mic: &str,
) -> (Arc<Page>, Arc<Page>, String, String, String) {
    let coach = pages.add(stack.browser_with("coach", &[coach_mic.to_owned()]).await);
    coach.client.goto(&stack.room_url(room, "coach")).await.unwrap();
    let coach_call = wait_connected(&coach, &["ai"]).await;
    let ai = coach_call["aiPeerId"].as_str().unwrap().to_owned();
    let coach_id = coach_call["userId"].as_str().unwrap().to_owned();
    let client = pages.add(stack.browser_with("client", &[client_mic.to_owned()]).await);
    client.client.goto(&stack.room_url(room, "client")).await.unwrap();
    let client_call = wait_connected(&client, &["ai", &coach_id]).await;
    let client_id = client_call["userId"].as_str().unwrap().to_owned();
    (coach, client, ai, coach_id, client_id)
}

/// The idle timeout measures speech, not signaling: with real speech from both people the call
/// lasts several idle timeouts although no signaling message flows once the media is up (the orb
/// reports the voice it hears); when both mute, nobody says anything and the orb ends with
/// `IdleTimeout` — no sooner than the idle timeout after the silence began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_talking_keep_their_orb_and_silence_ends_it() {
    let name = "speech";
    let idle = Duration::from_secs(6);
    let stack = Stack::start(name, &["--idle-timeout", "6s"]);
    let mic = format!("--use-file-for-fake-audio-capture={}", speech_wav(&stack.dir).display());
    let pages = Pages::default();
    let stack_ref = &stack;
    scenario(name, &stack.dir, &pages, async {
        let room = "browser-speech";
        let (coach, client, ai, _, _) = join_with_mics(stack_ref, &pages, room, &mic, &mic).await;
        wait_orb_audio(&coach, &ai).await;

        // They talk for three idle timeouts: the orb stays.
        let talking = Instant::now();
        while talking.elapsed() < idle * 3 {
            let log = stack_ref.orb_log(room);
            assert!(!log.contains("orb ended"), "the orb ended while people talked:\n{log}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(peer_state(&client.call().await, &ai).as_deref(), Some("connected"));

        // Both mute: silence. The orb ends for idleness, an idle timeout later at the earliest.
        let silent = Instant::now();
        for page in [&coach, &client] {
            page.js("window.orbCall.setMuted(true); return window.orbCall.muted")
                .await;
        }
        wait_for("the orb to end with IdleTimeout", || async {
            let log = stack_ref.orb_log(room);
            log.contains("orb ended: Succeeded IdleTimeout").then_some(())
        })
        .await;
        assert!(silent.elapsed() >= idle, "the orb ended before the idle timeout");
    })
    .await;
}

/// A WAV for a fake microphone: `text` spoken by espeak-ng (none: silence), then `pause` of
/// silence; Chromium loops it.
/// [`wait_for`] a step that runs language and speech models on the CPU: on a 2-core machine busy
/// with other tests one answer has taken over 100 s, so only a hang is given up on.
async fn wait_for_models<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    wait_for_within(what, Duration::from_secs(420), f).await
}

fn mic_wav(dir: &Path, name: &str, text: Option<&str>, pause: Duration) -> String {
    let mut pcm = text
        .map(|t| orb::testkit::speech::espeak(t, "en-us").unwrap())
        .unwrap_or_default();
    pcm.extend(std::iter::repeat_n(0i16, pause.as_millis() as usize * 48));
    let path = dir.join(name);
    std::fs::write(&path, orb_speech::wav::to_wav(&pcm, 48_000)).unwrap();
    format!("--use-file-for-fake-audio-capture={}", path.display())
}

/// The first object under `value` that has `key`.
fn find_key<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    match value {
        Value::Object(map) => map.get(key).or_else(|| map.values().find_map(|v| find_key(v, key))),
        Value::Array(items) => items.iter().find_map(|v| find_key(v, key)),
        _ => None,
    }
}

/// The local brain in a browser call: the client's microphone asks the orb a question (speech by
/// espeak-ng, Chromium's fake capture device), the coach's is silent. Both pages hear the orb's
/// spoken answer; when they leave, the session's summary attributes the question to the client,
/// holds the orb's answer, and its topics come from the local language model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_brain_answers_a_question_asked_in_the_browser() {
    let Some(models) = orb_speech::models::installed_for_tests() else {
        return;
    };
    let name = "local-brain";
    let dir = Stack::fresh_dir(name);
    let port = free_port();
    let models_dir = models.language_model.parent().unwrap().display().to_string();
    let summaries = dir.join("summaries");
    let signaling = signaling_process_with(
        &dir,
        "signaling.log",
        port,
        &["--summary-dir", summaries.to_str().unwrap()],
        &[
            ("ORB_BRAIN", "local"),
            ("ORB_MODELS_DIR", &models_dir),
            ("ORB_LOCAL_THREADS", "1"),
        ],
    );
    let stack = Stack::with_browsers(dir, port, vec![signaling], false);
    let question = mic_wav(
        &stack.dir,
        "question.wav",
        Some("Hey orb, how can I stay focused at work?"),
        Duration::from_secs(8),
    );
    let quiet = mic_wav(&stack.dir, "quiet.wav", None, Duration::from_secs(2));
    let pages = Pages::default();
    let stack_ref = &stack;
    scenario(name, &stack.dir, &pages, async {
        let room = "browser-local-brain";
        let (coach, client, _, coach_id, client_id) = join_with_mics(stack_ref, &pages, room, &quiet, &question).await;
        for page in [&client, &coach] {
            wait_for_models(&format!("{}: the orb's answer heard", page.name), || async {
                let level = page.js("return window.orbCall.audioLevel").await.as_f64()?;
                (level > 0.05).then_some(())
            })
            .await;
        }
        // The answer ends (the orb's line is in the transcript once it is spoken): two quiet
        // seconds on the client's page.
        let quiet_since = std::sync::Mutex::new(None::<Instant>);
        wait_for_models("client: the orb's answer finished", || async {
            let level = client.js("return window.orbCall.audioLevel").await.as_f64()?;
            let mut since = quiet_since.lock().unwrap();
            if level > 0.01 {
                *since = None;
                return None;
            }
            (since.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(2)).then_some(())
        })
        .await;
        // The local model summarises as the call goes: the question and the answer are in a
        // summary step before the humans leave.
        wait_for_models("the orb's summary of the call so far", || async {
            stack_ref.orb_log(room).contains("summary written so far").then_some(())
        })
        .await;
        for page in [&coach, &client] {
            page.client
                .find(Locator::Id("leave"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
        }
        let summary = wait_for_models("the session's summary", || async {
            let entry = std::fs::read_dir(&summaries)
                .ok()?
                .flatten()
                .find(|e| e.path().extension().is_some_and(|x| x == "json"))?;
            serde_json::from_str::<Value>(&std::fs::read_to_string(entry.path()).ok()?).ok()
        })
        .await;
        let transcript = find_key(&summary, "transcript")
            .and_then(Value::as_array)
            .expect("a transcript");
        let lines_of = |speaker: &str| -> Vec<String> {
            transcript
                .iter()
                .filter(|l| l["speaker"] == speaker)
                .map(|l| l["text"].as_str().unwrap_or_default().to_lowercase())
                .collect()
        };
        assert!(
            lines_of(&client_id).iter().any(|t| t.contains("focus")),
            "the question is the client's: {transcript:?}"
        );
        assert!(
            lines_of(&coach_id).is_empty(),
            "the silent coach said nothing: {transcript:?}"
        );
        assert!(
            lines_of("ai").iter().any(|t| !t.is_empty()),
            "the orb's answer: {transcript:?}"
        );
        let topics = find_key(&summary, "keyTopics")
            .and_then(Value::as_array)
            .expect("keyTopics");
        assert!(!topics.is_empty(), "{summary}");
    })
    .await;
}

/// A load balancer in front of signaling replicas, as the Service is in a cluster: each
/// connection goes to the first backend that accepts it.
async fn failover_proxy(backends: Vec<u16>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let backends = backends.clone();
            tokio::spawn(async move {
                for backend in backends {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", backend)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A call spread over three signaling replicas sharing rooms through a real Redis: the coach on
/// replica A (through a balancer that prefers A), the client on B, the orb on C; every connection
/// of the mesh comes up with the orb's audio. Then A is killed with SIGKILL: the client and the
/// orb see the coach leave, the coach's page reconnects (the balancer now sends it to B) and
/// rejoins, and the call is whole again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_across_three_replicas_survives_losing_one() {
    let name = "replicas";
    let redis = orb_signaling::cluster::testing::RedisServer::start();
    let ports = [free_port(), free_port(), free_port()];
    let orb_url = format!("ws://127.0.0.1:{}", ports[2]);
    let mut stack = Stack::start_replicas(name, &ports, &redis.url(), &orb_url);
    let coach_entry = failover_proxy(vec![ports[0], ports[1]]).await;
    let pages = Pages::default();
    let logs = stack.dir.clone();
    let stack_ref = &mut stack;
    scenario(name, &logs, &pages, async {
        let room = "browser-replicas";
        let Meeting {
            coach,
            client,
            ai,
            coach_id,
            client_id,
        } = meet(
            stack_ref,
            &pages,
            &room_url_at(coach_entry, room, "coach"),
            &room_url_at(ports[1], room, "client"),
        )
        .await;
        // The orb reached replica C (its log names the endpoint it joined).
        let joined = stack_ref.orb_log(room);
        let joined = joined
            .lines()
            .find(|l| l.contains("joined signaling"))
            .unwrap_or_default();
        assert!(joined.contains(&format!("127.0.0.1:{}", ports[2])), "{joined}");

        let killed = Instant::now();
        stack_ref.signaling[0].0.kill().unwrap();
        stack_ref.signaling[0].0.wait().unwrap();
        wait_for("client: the coach left", || async {
            let call = client.call().await;
            call["departures"]
                .as_array()?
                .iter()
                .any(|d| d == coach_id.as_str())
                .then_some(())
        })
        .await;
        wait_for("the orb: the coach left", || async {
            let log = stack_ref.orb_log(room);
            log.lines()
                .any(|l| l.contains("closed peer connection") && l.contains(coach_id.as_str()))
                .then_some(())
        })
        .await;
        eprintln!("the coach's departure was seen {:?} after the kill", killed.elapsed());
        wait_for("coach: rejoined through another replica", || async {
            let call = coach.call().await;
            (call["reconnects"].as_u64()? >= 1 && call["signaling"] == "open").then_some(())
        })
        .await;
        wait_connected(&coach, &["ai", &client_id]).await;
        wait_connected(&client, &["ai", &coach_id]).await;
        wait_orb_audio(&coach, &ai).await;
        let errors = coach.call().await["errors"].clone();
        assert_eq!(errors, json!([]), "the coach's page saw no error");
    })
    .await;
    drop(redis);
}

/// A page whose token signaling refuses (here: a valid token for another room) is refused before
/// the upgrade; the page asks `/auth/check` why, stops retrying and shows the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_stops_the_page_with_the_reason() {
    let name = "refused";
    let stack = Stack::start(name, &[]);
    let pages = Pages::default();
    let stack_ref = &stack;
    scenario(name, &stack.dir, &pages, async {
        let key = SigningKey::new(SIGNING_KEY.as_bytes().to_vec()).unwrap();
        let token = key.mint(&RoomClaims::new("browser-elsewhere", "coach-refused", Role::Coach, 600));
        let coach = pages.add(stack_ref.browser("coach").await);
        let url = format!("{}&token={token}", stack_ref.room_url("browser-refused", "coach"));
        coach.client.goto(&url).await.unwrap();
        let call = wait_for("the page to stop with the refusal", || async {
            let call = coach.call().await;
            (call["signaling"] == "refused").then_some(call)
        })
        .await;
        let errors = call["errors"].to_string();
        assert!(errors.contains("refused the room token"), "{errors}");
        assert!(errors.contains("another room"), "{errors}");
        let message = coach.js("return document.getElementById('message').textContent").await;
        assert!(
            message.as_str().unwrap_or_default().contains("another room"),
            "{message}"
        );
        // It stays stopped: no reconnect follows.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let call = coach.call().await;
        assert_eq!(
            (call["reconnects"].as_u64(), call["signaling"].as_str()),
            (Some(0), Some("refused"))
        );
        let log = std::fs::read_to_string(stack_ref.dir.join("signaling.log")).unwrap();
        assert!(!log.contains(&token), "the token reached the log");
    })
    .await;
}

/// The page takes its ICE servers from `/ice-servers` before any peer connection (a TURN server
/// among them, which the browser accepts only with the minted credentials), shows their URLs and
/// never the credentials, and reports each peer's selected candidate pair; the orb connects as
/// ever. In a second room, whose orb waits in the queue (the cap is 1), an AI that never answers
/// the offers joins: both pages say the AI's media could not connect, and the humans' call goes
/// on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_uses_signalings_ice_servers_and_says_when_the_ai_cannot_connect() {
    let name = "ice";
    // Nothing answers there: STUN and TURN gather nothing, host candidates still connect.
    let closed = free_port();
    let stun = format!("stun:127.0.0.1:{closed}");
    let turn = format!("turn:127.0.0.1:{closed}?transport=udp");
    let secret = std::env::temp_dir().join(format!("orb-browser-turn-secret-{}", std::process::id()));
    std::fs::write(&secret, "browser-turn-secret").unwrap();
    let stack = Stack::start(
        name,
        &[
            "--ice-servers",
            &format!("{stun},{turn}"),
            "--turn-secret-file",
            secret.to_str().unwrap(),
            "--max-concurrent-orbs",
            "1",
        ],
    );
    let pages = Pages::default();
    let stack_ref = &stack;
    let (stun_ref, turn_ref) = (&stun, &turn);
    scenario(name, &stack.dir, &pages, async {
        let uses_signalings_servers = |call: &Value| {
            assert_eq!(call["iceSource"], "http", "{call}");
            assert_eq!(call["iceServers"], json!([{"urls": [stun_ref]}, {"urls": [turn_ref]}]));
            let shown = call.to_string();
            assert!(!shown.contains("credential") && !shown.contains("username"), "{shown}");
            assert!(
                !shown.contains("refused the ICE servers"),
                "the browser took the TURN entry with its credentials: {shown}"
            );
            assert_eq!(call["errors"], json!([]), "{call}");
        };
        let direct = |pairs: &Value, peer: &str| {
            assert_eq!(pairs[peer]["local"], "host", "{pairs}");
            let remote = pairs[peer]["remote"].as_str().unwrap_or_default();
            assert!(["host", "prflx"].contains(&remote), "{pairs}");
        };

        // The orb's room: its media connects with these servers configured.
        let first = pages.add(stack_ref.browser("coach-orb").await);
        first
            .client
            .goto(&stack_ref.room_url("browser-ice-orb", "coach"))
            .await
            .unwrap();
        let call = wait_connected(&first, &["ai"]).await;
        let ai = call["aiPeerId"].as_str().unwrap().to_owned();
        wait_orb_audio(&first, &ai).await;
        let call = first.call().await;
        uses_signalings_servers(&call);
        assert_eq!(
            (call["aiMedia"].as_str(), call["aiMediaFailed"].as_bool()),
            (Some("connected"), Some(false))
        );
        direct(&first.js("return window.orbCall.selectedPairTypes()").await, &ai);

        // The second room: its orb queued, an AI that never answers.
        let room = "browser-ice-silent";
        let coach = pages.add(stack_ref.browser("coach").await);
        coach.client.goto(&stack_ref.room_url(room, "coach")).await.unwrap();
        let client = pages.add(stack_ref.browser("client").await);
        client.client.goto(&stack_ref.room_url(room, "client")).await.unwrap();
        let coach_id = wait_for("the coach's user id", || async {
            coach.call().await["userId"].as_str().map(str::to_owned)
        })
        .await;
        let client_call = wait_connected(&client, &[coach_id.as_str()]).await;
        let client_id = client_call["userId"].as_str().unwrap().to_owned();
        wait_connected(&coach, &[client_id.as_str()]).await;
        let silent = stand_in_as(stack_ref.port, room, "ai-silent", Role::Ai).await;
        for (page, other) in [(&coach, &client_id), (&client, &coach_id)] {
            let call = wait_for(&format!("{}: the AI's media reported failed", page.name), || async {
                let call = page.call().await;
                (call["aiMediaFailed"] == true).then_some(call)
            })
            .await;
            assert_eq!(call["aiPeerId"], "ai-silent", "{call}");
            uses_signalings_servers(&call);
            let notice = page
                .js("const n = document.getElementById('ai-media-notice'); return n.hidden ? null : n.textContent")
                .await;
            assert!(
                notice.as_str().unwrap_or_default().contains("could not connect"),
                "{notice}"
            );
            assert!(call["log"].to_string().contains("could not connect"), "{call}");
            assert_eq!(peer_state(&call, other).as_deref(), Some("connected"), "{call}");
            direct(&page.js("return window.orbCall.selectedPairTypes()").await, other);
        }
        // The humans still hear each other.
        let heard = client.stats().await[coach_id.as_str()].as_u64().unwrap_or(0);
        wait_for("the client to keep hearing the coach", || async {
            (client.stats().await[coach_id.as_str()].as_u64().unwrap_or(0) > heard + 1000).then_some(())
        })
        .await;
        let _ = silent.close.send(());
        let _ = silent.task.await;
    })
    .await;
    let _ = std::fs::remove_file(&secret);
}
