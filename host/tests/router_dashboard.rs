//! The dashboard in real headless Chromium, driven over WebDriver (chromedriver) with
//! plain HTTP: the node table fills from the WebSocket, a killed node turns offline
//! without a reload, and the page reconnects after a router restart. Screenshots go to
//! target/test-artifacts/. Installs Debian's chromium + chromium-driver when missing.

mod router_support;
#[path = "support/webdriver.rs"]
mod webdriver;

use router_support::*;
use std::time::{Duration, Instant};
use webdriver::{ensure_chromium, Driver};

impl Driver {
    /// Rows of the node table as (id, status).
    async fn rows(&self) -> Vec<(String, String)> {
        let value = self
            .run("return Array.from(document.querySelectorAll('#nodes tbody tr')).map(r => [r.dataset.node, r.dataset.status]);")
            .await;
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r[0].as_str().unwrap().to_string(),
                    r[1].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    async fn wait_rows(&self, within: Duration, check: impl Fn(&[(String, String)]) -> bool) {
        let start = Instant::now();
        loop {
            let rows = self.rows().await;
            if check(&rows) {
                return;
            }
            assert!(
                start.elapsed() < within,
                "page never matched; rows: {rows:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn text(&self, id: &str) -> String {
        self.run(&format!(
            "return document.getElementById('{id}').textContent;"
        ))
        .await
        .as_str()
        .unwrap_or("")
        .to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_shows_nodes_live_in_headless_chromium() {
    ensure_chromium();
    let router = TestRouter::start(settings(None)).await;
    let url = router.url();
    let mut nodes = three_nodes(&url).await;
    for _ in 0..5 {
        assert_eq!(chat(&url, "m").await.0, 200);
    }
    let driver = Driver::start().await;
    driver.open(&format!("{url}/dashboard#key={ADMIN}")).await;
    driver
        .wait_rows(Duration::from_secs(10), |rows| {
            rows.len() == 3 && rows.iter().all(|(_, s)| s == "online")
        })
        .await;
    assert_eq!(driver.text("conn").await, "live");
    let recent = driver
        .run("return document.querySelectorAll('#requests tbody tr').length;")
        .await;
    assert_eq!(recent, 5, "recent requests listed");
    // The last-hour charts: five metrics, a total line and one per node that served.
    let charts = driver
        .run("return Array.from(document.querySelectorAll('#charts .chart')).map(c => [c.dataset.metric, c.querySelectorAll('polyline').length]);")
        .await;
    let charts = charts.as_array().expect("charts");
    assert_eq!(charts.len(), 5, "{charts:?}");
    assert!(
        charts.iter().all(|c| c[1].as_u64().is_some_and(|n| n >= 2)),
        "a total line and node lines in every chart: {charts:?}"
    );
    let rate = driver
        .run("return Number(document.querySelector('#charts [data-metric=requests_per_second] polyline[data-series=total]').dataset.last);")
        .await;
    assert!(
        rate.as_f64().is_some_and(|r| r > 0.0),
        "this minute's requests drawn: {rate}"
    );
    driver.screenshot("dashboard_charts.png").await;
    driver.screenshot("router_dashboard_online.png").await;

    // Kill n2: its row turns offline with no reload (the marker survives).
    driver.run("window.__noReload = 42; return null;").await;
    nodes[1].kill();
    driver
        .wait_rows(Duration::from_secs(5), |rows| {
            status_of(rows, "n2") == Some("offline") && status_of(rows, "n1") == Some("online")
        })
        .await;
    assert_eq!(
        driver.run("return window.__noReload;").await,
        42,
        "page reloaded"
    );
    let shot = driver.screenshot("router_dashboard_offline.png").await;
    eprintln!("screenshot: {}", shot.display());

    // Without an admin key the socket is refused: the page shows it is not live.
    driver.open(&format!("{url}/dashboard")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(driver.rows().await.len(), 0);
    assert_ne!(driver.text("conn").await, "live");

    // Router restart on the same address: the page reconnects by itself. (about:blank
    // first: a change of the fragment alone would not load the page again.)
    driver.open("about:blank").await;
    driver.open(&format!("{url}/dashboard#key={ADMIN}")).await;
    driver
        .wait_rows(Duration::from_secs(5), |rows| rows.len() == 3)
        .await;
    driver.run("window.__noReload = 7; return null;").await;
    let addr = router.addr;
    router.stop().await;
    let start = Instant::now();
    while driver.text("conn").await == "live" {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "page never noticed the router went away"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let router = TestRouter::start_on(settings(None), addr).await;
    let start = Instant::now();
    while driver.text("conn").await != "live" {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "page never reconnected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // In-memory database: the agents of n1 and n3 register again on their next heartbeat;
    // n2 (killed) is unknown to the new router, so its row is gone: fresh data.
    driver
        .wait_rows(Duration::from_secs(10), |rows| {
            rows.len() == 2
                && status_of(rows, "n1") == Some("online")
                && status_of(rows, "n3") == Some("online")
        })
        .await;
    assert_eq!(
        driver.run("return window.__noReload;").await,
        7,
        "page reloaded"
    );
    drop(nodes);
    router.stop().await;
}
