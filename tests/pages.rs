//! Browser pages driven over WebDriver for the end-to-end tests: a Chromium (or Firefox) session
//! with fake media devices, the room page's `window.orbCall` state, and waits on it. Every wait
//! only guards against a hang ([`PATIENCE`]); nothing asserts on how fast things happen.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use futures::FutureExt;
use serde_json::{Value, json};

use crate::support::{root, tool};

/// Only guards against a hang: a busy 2-core machine starts browsers and debug orbs slowly.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// Headless Chromium with fake media devices and its own profile in `profile`, through the
/// chromedriver on `driver_port`; `extra` flags on top (say, a file as the microphone).
pub async fn chromium(name: &str, driver_port: u16, profile: &Path, extra: &[String]) -> Page {
    let chromium = tool("chromium", "./scripts/install-deps.sh");
    let mut args = vec![
        "--headless=new".to_owned(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-dev-shm-usage".into(),
        "--use-fake-device-for-media-stream".into(),
        "--use-fake-ui-for-media-stream".into(),
        "--autoplay-policy=no-user-gesture-required".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--no-first-run".into(),
        "--disable-background-timer-throttling".into(),
        "--disable-renderer-backgrounding".into(),
        // Host candidates with real addresses, not mDNS names: the orb is on this machine.
        "--disable-features=WebRtcHideLocalIpsWithMdns".into(),
        "--window-size=1280,800".into(),
        format!("--user-data-dir={}", profile.display()),
    ];
    args.extend(extra.iter().cloned());
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), json!({ "binary": chromium, "args": args }));
    webdriver_session(name, "chromium", driver_port, caps).await
}

/// A WebDriver session; a browser that starts too slowly on a loaded machine is retried, not
/// failed.
pub async fn webdriver_session(
    name: &str,
    browser: &str,
    driver_port: u16,
    caps: serde_json::Map<String, Value>,
) -> Page {
    let mut attempt = 0;
    let client = loop {
        attempt += 1;
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{driver_port}"))
            .await
        {
            Ok(client) => break client,
            Err(e) if attempt < 3 => eprintln!("{name}: {browser} did not start ({e}); retrying"),
            Err(e) => panic!("{name}: no WebDriver session with {browser}: {e}"),
        }
    };
    Page {
        name: name.to_owned(),
        client,
    }
}

/// One participant's browser.
pub struct Page {
    pub name: String,
    pub client: Client,
}

impl Page {
    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("{}: script failed: {e}\n{script}", self.name))
    }

    pub async fn call(&self) -> Value {
        self.js("return window.orbCall ? JSON.parse(JSON.stringify(window.orbCall)) : null")
            .await
    }

    pub async fn stats(&self) -> Value {
        self.js("return window.orbCall.stats()").await
    }

    pub async fn screenshot(&self, path: &Path) {
        if let Ok(png) = self.client.screenshot().await {
            let _ = std::fs::create_dir_all(path.parent().unwrap());
            let _ = std::fs::write(path, png);
        }
    }
}

/// Polls `f` until it returns `Some`; panics with `what` after [`PATIENCE`].
pub async fn wait_for<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_for_within(what, PATIENCE, f).await
}

/// [`wait_for`] with its own patience.
pub async fn wait_for_within<T, F, Fut>(what: &str, patience: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(started.elapsed() < patience, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub fn peer_state(call: &Value, peer: &str) -> Option<String> {
    call["peers"][peer]["connectionState"].as_str().map(str::to_owned)
}

/// Waits until the page's peer connections to everyone in `peers` (its AI peer for `"ai"`) are
/// connected; returns the page's state then.
pub async fn wait_connected(page: &Page, peers: &[&str]) -> Value {
    wait_for(&format!("{}: peers {peers:?} connected", page.name), || async {
        let call = page.call().await;
        let all = peers.iter().all(|p| {
            let id = if *p == "ai" {
                call["aiPeerId"].as_str().unwrap_or("-")
            } else {
                p
            };
            peer_state(&call, id).as_deref() == Some("connected")
        });
        all.then_some(call)
    })
    .await
}

/// Waits until the audio received from the orb grows on the page.
pub async fn wait_orb_audio(page: &Page, ai: &str) {
    let first = wait_for(&format!("{}: audio bytes from the orb", page.name), || async {
        page.stats().await[ai].as_u64().filter(|b| *b > 0)
    })
    .await;
    wait_for(&format!("{}: growing audio bytes from the orb", page.name), || async {
        page.stats().await[ai].as_u64().filter(|b| *b > first + 1000)
    })
    .await;
}

/// The pages a scenario opened, for the screenshots of a failure.
#[derive(Default)]
pub struct Pages(std::sync::Mutex<Vec<Arc<Page>>>);

impl Pages {
    pub fn add(&self, page: Page) -> Arc<Page> {
        let page = Arc::new(page);
        self.0.lock().unwrap().push(page.clone());
        page
    }

    pub fn all(&self) -> Vec<Arc<Page>> {
        self.0.lock().unwrap().clone()
    }
}

/// Runs a scenario whose servers log into `logs`; on failure saves a screenshot of every page,
/// then fails with the logs' place.
pub async fn scenario(name: &str, logs: &Path, pages: &Pages, body: impl Future<Output = ()>) {
    let outcome = std::panic::AssertUnwindSafe(body).catch_unwind().await;
    if let Err(panic) = outcome {
        let dir = root().join("target/browser-failures");
        for page in pages.all() {
            page.screenshot(&dir.join(format!("{name}-{}.png", page.name))).await;
        }
        eprintln!(
            "screenshots in {}; signaling and orb logs in {}",
            dir.display(),
            logs.display()
        );
        for page in pages.all() {
            let _ = page.client.clone().close().await;
        }
        std::panic::resume_unwind(panic);
    }
    for page in pages.all() {
        let _ = page.client.clone().close().await;
    }
}
