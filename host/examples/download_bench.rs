//! Download throughput and peak memory: llmlocal's downloader vs `curl -o`, both fetching the
//! same generated file from a loopback mock of the Hugging Face hub in the same run.
//!
//! ```text
//! cargo run -p llmlocal --example download_bench -- [--size-mib 1024] [--runs 2]
//! ```
//! Each download runs in a child process (this binary with `--client`, or curl), so its peak
//! RSS (VmHWM) is its own and not the mock's. The file is generated chunk by chunk by the mock,
//! never held in memory. A third child (`--raw`) fetches with plain reqwest and no hash: the
//! HTTP stack's own speed, to tell transfer cost from verification cost.
//!
//! Knobs for finding where time goes: `BENCH_RAW_HASH=1` makes the raw child sha256 inline
//! (the price of the hash alone), `BENCH_RAW_TIMEOUT=1` gives it a reqwest read timeout,
//! `BENCH_NO_LFS=1` serves the file as a plain git file, so llmlocal has no sha256 to check,
//! `BENCH_WORKERS=N` gives the downloading children N tokio workers (0: current-thread).
//!
//! Numbers to compare with curl come from `--release` (`cargo run --release -p llmlocal
//! --example download_bench`): in the dev profile our crate is at opt-level 1 (its deps at 3),
//! which slows the mock's data generation and the download loop alike. Where sha256 is
//! verified, one core's SHA-256 rate bounds the result: on a 2.1 GHz Xeon OpenSSL's best is
//! ~1.26 GiB/s, below curl's loopback rate there.

#[path = "../tests/support/hf_mock.rs"]
mod hf_mock;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use hf_mock::{Content, MockHub};
use llmlocal::models::{CancellationToken, ManagerConfig, ModelManager, ModelSpec};

const REPO: &str = "bench/big";
const FILE: &str = "big-Q8_0.gguf";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let child = matches!(args.get(1).map(String::as_str), Some("--client" | "--raw"));
    let rt = runtime(child)?;
    if args.get(1).map(String::as_str) == Some("--client") {
        let (url, cache) = (args.get(2).context("url")?, args.get(3).context("cache")?);
        return rt.block_on(client(url, Path::new(cache)));
    }
    if args.get(1).map(String::as_str) == Some("--raw") {
        let (url, out) = (args.get(2).context("url")?, args.get(3).context("out")?);
        return rt.block_on(raw(url, Path::new(out)));
    }
    let size_mib: u64 = flag(&args, "--size-mib").unwrap_or(1024);
    let runs: usize = flag(&args, "--runs").unwrap_or(2) as usize;
    rt.block_on(bench(size_mib, runs))
}

/// Tokio's default multi-thread runtime; in a downloading child, `BENCH_WORKERS=N` sets its
/// worker count (0: a current-thread runtime), to see what cross-thread wake-ups cost a
/// single transfer. (The parent, the mock hub, keeps the default.)
fn runtime(child: bool) -> anyhow::Result<tokio::runtime::Runtime> {
    let workers: Option<usize> = std::env::var("BENCH_WORKERS")
        .ok()
        .filter(|_| child)
        .map(|n| n.parse())
        .transpose()
        .context("BENCH_WORKERS")?;
    let mut builder = match workers {
        Some(0) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    Ok(builder.enable_all().build()?)
}

fn flag(args: &[String], name: &str) -> Option<u64> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

/// The child: one pull into `cache`, then print the peak RSS. `BENCH_LOG=debug` prints the
/// download pipeline's timings (to stderr).
async fn client(url: &str, cache: &Path) -> anyhow::Result<()> {
    if let Ok(filter) = std::env::var("BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let mut config = ManagerConfig::new(cache);
    config.endpoint = url.to_string();
    let manager = ModelManager::new(config)?;
    let spec = ModelSpec::parse(&format!("hf://{REPO}/{FILE}"))?;
    let r = manager.pull(&spec, None, CancellationToken::new()).await?;
    println!(
        "downloaded {} bytes, cpu_s {}, vmhwm_kib {}",
        r.downloaded_bytes,
        cpu_seconds(),
        vm_hwm_kib().unwrap_or(0)
    );
    Ok(())
}

/// Baseline: a plain reqwest GET written to a file, no hashing (what the HTTP stack alone does).
async fn raw(url: &str, out: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    let client = if std::env::var_os("BENCH_RAW_TIMEOUT").is_some() {
        reqwest::Client::builder()
            .read_timeout(std::time::Duration::from_secs(30))
            .build()?
    } else {
        reqwest::Client::new()
    };
    let mut resp = client.get(url).send().await?.error_for_status()?;
    let mut file = std::io::BufWriter::with_capacity(256 << 10, std::fs::File::create(out)?);
    let mut n = 0u64;
    // BENCH_RAW_HASH: sha256 inline on the async task, to price the hash on its own.
    let mut hasher = std::env::var_os("BENCH_RAW_HASH").map(|_| {
        use sha2::Digest;
        sha2::Sha256::new()
    });
    while let Some(chunk) = resp.chunk().await? {
        file.write_all(&chunk)?;
        if let Some(h) = hasher.as_mut() {
            sha2::Digest::update(h, &chunk);
        }
        n += chunk.len() as u64;
    }
    file.flush()?;
    println!(
        "raw {n} bytes, cpu_s {}, vmhwm_kib {}",
        cpu_seconds(),
        vm_hwm_kib().unwrap_or(0)
    );
    Ok(())
}

/// CPU time of this process (all threads) from /proc/self/stat, as `user+system` seconds.
/// Fields 14 and 15 of stat (utime, stime) are the 12th and 13th after the `)` that ends the
/// command name. (Counting only the fields that parse as numbers, as this did before, skipped
/// the state letter and a tpgid of -1, and so reported the system time alone.)
fn cpu_seconds() -> String {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let field = |i: usize| -> f64 {
        let ticks: u64 = after
            .split_whitespace()
            .nth(i)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        ticks as f64 / 100.0
    };
    format!("{:.2}+{:.2}", field(11), field(12))
}

fn vm_hwm_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

async fn bench(size_mib: u64, runs: usize) -> anyhow::Result<()> {
    let hub = MockHub::start().await;
    let size = size_mib << 20;
    eprintln!("hashing the {size_mib} MiB test file for the mock's etag...");
    hub.add_repo(
        REPO,
        &format!("{:040x}", 1),
        // BENCH_NO_LFS: serve it as a plain git file (no sha256 to check), to price the hash.
        vec![(
            FILE,
            Content::generated(size, 7),
            std::env::var_os("BENCH_NO_LFS").is_none(),
        )],
    );
    let sha = hub.sha256_of(REPO, FILE);
    let cdn_url = format!("{}/cdn/{sha}", hub.cdn_url);
    let tmp = tempfile::tempdir()?;
    let mib_s = |s: f64| size as f64 / (1 << 20) as f64 / s;
    let (mut best_curl, mut best_ours, mut hwm) = (f64::MAX, f64::MAX, 0u64);
    let mut ratios = Vec::with_capacity(runs);
    for run in 0..runs {
        // Alternate the order so that neither always meets the other's page-cache writeback.
        let (curl_s, (ours_s, run_hwm, cpu)) = if run % 2 == 0 {
            let c = tokio::task::block_in_place(|| run_curl(&cdn_url, tmp.path(), size))?;
            (
                c,
                tokio::task::block_in_place(|| run_ours(&hub.url, tmp.path(), run))?,
            )
        } else {
            let o = tokio::task::block_in_place(|| run_ours(&hub.url, tmp.path(), run))?;
            (
                tokio::task::block_in_place(|| run_curl(&cdn_url, tmp.path(), size))?,
                o,
            )
        };
        let raw_s = tokio::task::block_in_place(|| run_raw(&cdn_url, tmp.path()))?;
        println!(
            "run {run}: curl {curl_s:.2}s ({:.0} MiB/s)  llmlocal {ours_s:.2}s ({:.0} MiB/s, sha256 verified, cpu user+sys {cpu})  \
             ratio {:.2}  llmlocal peak RSS {} MiB  [plain reqwest, no hash: {raw_s:.2}s]",
            mib_s(curl_s),
            mib_s(ours_s),
            curl_s / ours_s,
            run_hwm / 1024
        );
        ratios.push(curl_s / ours_s);
        best_curl = best_curl.min(curl_s);
        best_ours = best_ours.min(ours_s);
        hwm = hwm.max(run_hwm);
    }
    println!(
        "best of {runs}: {size_mib} MiB  curl {:.0} MiB/s  llmlocal {:.0} MiB/s  ratio {:.2}  llmlocal peak RSS {} MiB",
        mib_s(best_curl),
        mib_s(best_ours),
        best_curl / best_ours,
        hwm / 1024
    );
    // Run-to-run spread on a shared 2-core VM is wide; the median says what a typical pull gets.
    ratios.sort_by(f64::total_cmp);
    if let (Some(low), Some(high)) = (ratios.first(), ratios.last()) {
        let mid = ratios.len() / 2;
        let median = match ratios.len() % 2 {
            0 => (ratios[mid - 1] + ratios[mid]) / 2.0,
            _ => ratios[mid],
        };
        println!("per-run ratio: median {median:.2}, range {low:.2}-{high:.2}");
    }
    Ok(())
}

/// `curl -o` of the CDN URL; seconds.
fn run_curl(url: &str, dir: &Path, size: u64) -> anyhow::Result<f64> {
    let out = dir.join("curl.out");
    let t = Instant::now();
    let status = Command::new("curl")
        .args(["-s", "-f", "-o"])
        .arg(&out)
        .arg(url)
        .status()
        .context("run curl")?;
    let secs = t.elapsed().as_secs_f64();
    if !status.success() || std::fs::metadata(&out)?.len() != size {
        bail!("curl failed: {status}");
    }
    std::fs::remove_file(&out)?;
    Ok(secs)
}

/// This binary as `--client` (a full pull: HEAD, GET, verify, link); (seconds, VmHWM KiB, cpu).
fn run_ours(hub_url: &str, dir: &Path, run: usize) -> anyhow::Result<(f64, u64, String)> {
    let cache = dir.join(format!("cache{run}"));
    let t = Instant::now();
    let child = Command::new(std::env::current_exe()?)
        .arg("--client")
        .arg(hub_url)
        .arg(&cache)
        .output()?;
    let secs = t.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&child.stdout);
    if !child.status.success() {
        bail!(
            "llmlocal client failed: {stdout}{}",
            String::from_utf8_lossy(&child.stderr)
        );
    }
    if std::env::var_os("BENCH_LOG").is_some() {
        eprint!("{}", String::from_utf8_lossy(&child.stderr));
    }
    let field = |name: &str| {
        stdout
            .split(name)
            .nth(1)
            .and_then(|v| v.split([',', '\n']).next())
            .map(|v| v.trim().to_string())
    };
    let hwm = field("vmhwm_kib ")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    std::fs::remove_dir_all(&cache)?;
    Ok((
        secs,
        hwm,
        format!("{}s", field("cpu_s ").unwrap_or_default()),
    ))
}

/// This binary as `--raw` (plain reqwest to a file, no hash); seconds.
fn run_raw(url: &str, dir: &Path) -> anyhow::Result<f64> {
    let out = dir.join("raw.out");
    let t = Instant::now();
    let child = Command::new(std::env::current_exe()?)
        .arg("--raw")
        .arg(url)
        .arg(&out)
        .output()?;
    let secs = t.elapsed().as_secs_f64();
    if !child.status.success() {
        bail!(
            "raw client failed: {}",
            String::from_utf8_lossy(&child.stderr)
        );
    }
    std::fs::remove_file(&out)?;
    Ok(secs)
}
