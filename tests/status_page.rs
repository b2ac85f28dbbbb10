//! The status page in a real browser: a real Mosquitto, the `gsinfer`
//! binary, a real SMAP channel replayed at a modest rate, and headless
//! Chromium driven through chromedriver (WebDriver, via fantoccini). The page
//! must show real numbers that change, and sparklines; screenshots at a
//! laptop size (1366×768) and a phone size (390×844) are saved under
//! `target/artifacts/` for people to look at.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::gsinfer::{
    bin, find_program, free_port, http_get, wait_until, write_config, Service, GUARD,
};
use common::{data_dir, mosquitto_available, Broker};
use fantoccini::{ClientBuilder, Locator};

const CHANNEL: &str = "S-1";

/// A child process killed (and reaped) on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The integer in a tile's text, e.g. "1,234" → 1234.
fn number(text: &str) -> Option<u64> {
    let digits: String = text
        .chars()
        .take_while(|c| !c.is_alphabetic())
        .filter(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[test]
fn status_page_shows_live_numbers_and_sparklines() {
    let (Some(chromium), Some(driver)) = (
        find_program(&["chromium", "chromium-browser", "google-chrome"]),
        find_program(&["chromedriver", "/usr/lib/chromium/chromedriver"]),
    ) else {
        common::skip(
            "chromium or chromedriver not found (apt-get install chromium chromium-driver)",
        );
        return;
    };
    if !mosquitto_available() {
        return;
    }
    let Some(data) = data_dir() else { return };
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let status_port = free_port();
    let config = write_config(dir.path(), broker.port, status_port, "");
    let _service = Service::run(&config);
    assert!(
        wait_until(|| http_get(status_port, "/readyz").is_some_and(|(s, _)| s == 200)),
        "service never became ready"
    );
    // 30 s of telemetry: Chromium's cold start on a busy 2-core machine
    // once took longer than the 7.5 s the replay used to last, and the
    // page then never saw the window count grow.
    let _replay = Killed(
        Command::new(bin())
            .args([
                "replay",
                "--rate",
                "100",
                "--limit",
                "3000",
                "--channel",
                CHANNEL,
                "--config",
            ])
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let driver_port = free_port();
    let _driver = Killed(
        Command::new(&driver)
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_until(|| std::net::TcpStream::connect(("127.0.0.1", driver_port)).is_ok()),
        "chromedriver never listened"
    );
    let profile = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1366,768",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{driver_port}"))
            .await
            .expect("a WebDriver session with headless chromium");
        client
            .goto(&format!("http://127.0.0.1:{status_port}/"))
            .await
            .unwrap();

        let windows = || async {
            let text = client
                .find(Locator::Css("#tile-windows .value"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            number(&text)
        };
        // The counter shows real windows and grows while the replay runs.
        let deadline = Instant::now() + GUARD;
        let first = loop {
            if let Some(n) = windows().await.filter(|n| *n > 0) {
                break n;
            }
            assert!(Instant::now() < deadline, "the page never showed a window count");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let second = loop {
            if let Some(n) = windows().await.filter(|n| *n > first) {
                break n;
            }
            assert!(Instant::now() < deadline, "the window count stayed at {first}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(second > first);

        // A sparkline with a line in it for the channel, and its name.
        loop {
            let lines = client
                .find_all(Locator::Css("#channels svg.spark polyline"))
                .await
                .unwrap();
            if !lines.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "no sparkline appeared");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let table = client
            .find(Locator::Css("#channels"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(table.contains(CHANNEL), "{table}");
        let sources = client
            .find(Locator::Css("#sources"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        // (Pills are upper-cased by CSS; innerText follows the rendering.)
        let sources = sources.to_lowercase();
        assert!(sources.contains("connected") && sources.contains("samples/s"), "{sources}");
        let models = client.find(Locator::Css("#models")).await.unwrap().text().await.unwrap();
        let models = models.to_lowercase();
        assert!(models.contains("smap_lstm") && models.contains("ready"), "{models}");
        // The header shows the process's resident memory and its allocated heap.
        let memory = client.find(Locator::Css("#memory")).await.unwrap().text().await.unwrap();
        assert!(memory.ends_with("MiB)") && memory.contains("(heap "), "{memory}");

        // Let the replay run on a little so the sparklines fill, then look.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let png = client.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        std::fs::write(artifacts().join("status_page.png"), &png).unwrap();
        client.set_window_size(390, 844).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let png = client.screenshot().await.unwrap();
        std::fs::write(artifacts().join("status_page_phone.png"), &png).unwrap();
        client.close().await.unwrap();
    });
    eprintln!("screenshots in {}", artifacts().display());
}
