//! Finds silent nodes: a node not heard from for half the offline timeout gets its
//! `/health` probed; if that fails it is offline (so it goes offline within the timeout).
//! Offline nodes are probed each round and come back online when they answer.

use super::{history::now_ms, RouterState};
use futures_util::future::join_all;
use std::time::Duration;

pub async fn run(state: RouterState) {
    let period = state.settings.check_interval();
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        check(&state).await;
    }
}

async fn check(state: &RouterState) {
    let half = state.settings.offline_after / 2;
    let due: Vec<_> = state
        .nodes
        .silent_since()
        .into_iter()
        .filter(|(_, _, silent, offline)| *offline || silent.is_none_or(|s| s >= half))
        .collect();
    let timeout = (state.settings.offline_after / 4)
        .clamp(Duration::from_millis(100), Duration::from_secs(2));
    let probes = due.iter().map(|(_, url, _, _)| probe(state, url, timeout));
    let results = join_all(probes).await;
    for ((id, _, _, offline), healthy) in due.into_iter().zip(results) {
        let change = match (healthy, offline) {
            (true, _) => state.nodes.probe_ok(&id, now_ms()),
            (false, false) => state.nodes.mark_offline(&id, now_ms()),
            (false, true) => None,
        };
        if let Some(change) = change {
            state.persist(change).await;
        }
    }
}

async fn probe(state: &RouterState, base: &str, timeout: Duration) -> bool {
    let resp = state
        .client
        .get(format!("{base}/health"))
        .timeout(timeout)
        .send()
        .await;
    matches!(resp, Ok(r) if r.status().is_success())
}
