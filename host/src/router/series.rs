//! Per-minute traffic over the last hour, per node and in total, for the dashboard charts:
//! requests/s, error rate, p50/p99 latency and generated tokens/s. Memory stays bounded
//! whatever the load: latencies go into a fixed log-scale histogram per minute, and minutes
//! older than an hour are dropped.

use super::types::RequestRecord;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Minutes shown.
pub const MINUTES: usize = 60;
/// The key of the all-nodes series.
pub const TOTAL: &str = "total";
/// Latency histogram: bucket `i` holds latencies up to `GROWTH^(i+1)` ms (1.25^64 ≈ 1.6e6 ms).
const BUCKETS: usize = 64;
const GROWTH: f64 = 1.25;

#[derive(Debug, Clone)]
struct Minute {
    requests: u64,
    errors: u64,
    tokens_out: u64,
    latency: [u32; BUCKETS],
}

impl Default for Minute {
    fn default() -> Self {
        Minute {
            requests: 0,
            errors: 0,
            tokens_out: 0,
            latency: [0; BUCKETS],
        }
    }
}

impl Minute {
    fn add(&mut self, r: &RequestRecord) {
        self.requests += 1;
        if r.status >= 400 || r.error.is_some() {
            self.errors += 1;
        }
        self.tokens_out += r.tokens_out.unwrap_or(0);
        let ms = r.latency_ms.max(1.0);
        let bucket = (ms.ln() / GROWTH.ln())
            .floor()
            .clamp(0.0, (BUCKETS - 1) as f64);
        self.latency[bucket as usize] += 1;
    }

    /// The upper bound of the bucket holding quantile `q` (0 when empty).
    fn quantile_ms(&self, q: f64) -> f64 {
        let total: u64 = self.latency.iter().map(|&n| u64::from(n)).sum();
        if total == 0 {
            return 0.0;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &n) in self.latency.iter().enumerate() {
            seen += u64::from(n);
            if seen >= rank {
                return GROWTH.powi(i as i32 + 1);
            }
        }
        GROWTH.powi(BUCKETS as i32)
    }
}

/// Minutes by (minute number since the epoch, series key).
#[derive(Debug, Default)]
pub struct Series {
    minutes: BTreeMap<(i64, String), Minute>,
}

impl Series {
    /// Counts a finished request in its node's series and the total.
    pub fn record(&mut self, r: &RequestRecord, now_ms: i64) {
        let minute = r.ts_ms.div_euclid(60_000);
        let keys = [Some(TOTAL.to_string()), r.node_id.clone()];
        for key in keys.into_iter().flatten() {
            self.minutes.entry((minute, key)).or_default().add(r);
        }
        self.prune(now_ms);
    }

    fn prune(&mut self, now_ms: i64) {
        let oldest = now_ms.div_euclid(60_000) - MINUTES as i64 + 1;
        self.minutes.retain(|(minute, _), _| *minute >= oldest);
    }

    /// `{"start_ms": first minute, "series": {KEY: {"requests_per_second": [60], "error_rate",
    /// "p50_ms", "p99_ms", "tokens_per_second"}}}`, oldest minute first; the current minute
    /// is counted over the seconds elapsed so far.
    pub fn view(&self, now_ms: i64) -> Value {
        let now = now_ms.div_euclid(60_000);
        let first = now - MINUTES as i64 + 1;
        let elapsed_now = ((now_ms - now * 60_000) as f64 / 1000.0).max(1.0);
        let mut series: BTreeMap<&str, [Vec<f64>; 5]> = BTreeMap::new();
        for ((_, key), _) in self.minutes.range((first, String::new())..) {
            series
                .entry(key.as_str())
                .or_insert_with(|| std::array::from_fn(|_| vec![0.0; MINUTES]));
        }
        for ((minute, key), m) in self.minutes.range((first, String::new())..) {
            let Some(lines) = series.get_mut(key.as_str()) else {
                continue;
            };
            let i = (minute - first) as usize;
            let seconds = if *minute == now { elapsed_now } else { 60.0 };
            lines[0][i] = m.requests as f64 / seconds;
            lines[1][i] = m.errors as f64 / m.requests.max(1) as f64;
            lines[2][i] = m.quantile_ms(0.5);
            lines[3][i] = m.quantile_ms(0.99);
            lines[4][i] = m.tokens_out as f64 / seconds;
        }
        let mut out = Map::new();
        for (key, [rps, errors, p50, p99, tps]) in series {
            out.insert(
                key.to_string(),
                json!({
                    "requests_per_second": rps,
                    "error_rate": errors,
                    "p50_ms": p50,
                    "p99_ms": p99,
                    "tokens_per_second": tps,
                }),
            );
        }
        json!({ "start_ms": first * 60_000, "series": out })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(ts_ms: i64, node: &str, status: u16, latency_ms: f64, tokens: u64) -> RequestRecord {
        RequestRecord {
            ts_ms,
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            model: Some("m".into()),
            node_id: Some(node.into()),
            status,
            latency_ms,
            ttfb_ms: 1.0,
            tokens_in: Some(1),
            tokens_out: Some(tokens),
            attempts: 1,
            error: None,
        }
    }

    #[test]
    fn per_node_and_total_minutes_with_rates_quantiles_and_expiry() {
        let now = 100 * 60_000 + 30_000; // 30 s into minute 100
        let mut s = Series::default();
        s.record(&request(now - 60_000, "a", 200, 10.0, 60), now);
        s.record(&request(now - 60_000, "b", 500, 1000.0, 0), now);
        s.record(&request(now, "a", 200, 20.0, 30), now);
        s.record(&request(now - 3_600_000, "a", 200, 5.0, 0), now); // an hour ago: dropped
        let view = s.view(now);
        let total = &view["series"]["total"];
        let a = &view["series"]["a"];
        assert_eq!(view["start_ms"], (100 - 59) * 60_000);
        assert_eq!(total["requests_per_second"][58], 2.0 / 60.0);
        assert_eq!(total["error_rate"][58], 0.5);
        assert_eq!(view["series"]["b"]["error_rate"][58], 1.0);
        // The current minute counts over the 30 s so far.
        assert_eq!(a["requests_per_second"][59], 1.0 / 30.0);
        assert_eq!(a["tokens_per_second"][59], 1.0);
        assert_eq!(a["tokens_per_second"][58], 1.0);
        let (p50, p99) = (
            total["p50_ms"][58].as_f64().unwrap(),
            total["p99_ms"][58].as_f64().unwrap(),
        );
        assert!((10.0..=12.5).contains(&p50), "p50 {p50}");
        assert!((1000.0..=1250.0).contains(&p99), "p99 {p99}");
        assert_eq!(
            a["requests_per_second"][0], 0.0,
            "nothing left from an hour ago"
        );
        assert_eq!(s.minutes.len(), 5, "the old minute was pruned");
    }
}
