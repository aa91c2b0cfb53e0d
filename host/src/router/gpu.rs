//! NVIDIA GPU load for heartbeats, read with `nvidia-smi` (present wherever the NVIDIA
//! driver is, so no NVML binding or build dependency). The command runs on Tokio's
//! blocking pool with a timeout, never on the async path; a machine without it stops
//! being asked after the first try.

use std::{
    io,
    path::PathBuf,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, AtomicU32, Ordering},
    time::Duration,
};

/// `nvidia-smi` arguments: one CSV line per GPU, `util %, used MiB, total MiB`.
pub const QUERY: [&str; 2] = [
    "--query-gpu=utilization.gpu,memory.used,memory.total",
    "--format=csv,noheader,nounits",
];
/// Longest wait for one reading (nvidia-smi can hang on a wedged driver).
const TIMEOUT: Duration = Duration::from_secs(3);
/// Failed runs in a row after which the probe gives up (no driver, no device).
const MAX_FAILURES: u32 = 3;
const MIB: u64 = 1024 * 1024;

/// Load over all of the machine's NVIDIA GPUs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuLoad {
    /// Mean utilisation 0-100 over the GPUs that report it (None: none does, e.g. MIG).
    pub percent: Option<f32>,
    /// Summed over GPUs that report it.
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub gpus: u32,
}

/// Parses `nvidia-smi` output for [`QUERY`]; None when it lists no GPU.
pub fn parse(text: &str) -> Option<GpuLoad> {
    let mut load = GpuLoad {
        percent: None,
        memory_used_bytes: 0,
        memory_total_bytes: 0,
        gpus: 0,
    };
    let (mut util_sum, mut util_count) = (0.0f32, 0u32);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [util, used, total] = fields[..] else {
            continue; // not a data line (a warning nvidia-smi printed)
        };
        // "[N/A]" / "[Not Supported]" (MIG, some boards) leave that value out.
        if let Ok(util) = util.parse::<f32>() {
            util_sum += util.clamp(0.0, 100.0);
            util_count += 1;
        }
        load.memory_used_bytes += used.parse::<u64>().map_or(0, |m| m * MIB);
        load.memory_total_bytes += total.parse::<u64>().map_or(0, |m| m * MIB);
        load.gpus += 1;
    }
    if load.gpus == 0 {
        return None;
    }
    load.percent = (util_count > 0).then(|| util_sum / util_count as f32);
    Some(load)
}

/// Reads GPU load at heartbeat time.
pub struct GpuProbe {
    command: Option<PathBuf>,
    failures: AtomicU32,
    /// A run still in progress (a hung nvidia-smi): do not start another.
    busy: std::sync::Arc<AtomicBool>,
}

impl GpuProbe {
    /// `command`: the nvidia-smi to run; None never reads a GPU.
    pub fn new(command: Option<PathBuf>) -> Self {
        Self {
            command,
            failures: AtomicU32::new(0),
            busy: Default::default(),
        }
    }

    /// The current load; None without an NVIDIA GPU (or while nvidia-smi misbehaves).
    pub async fn sample(&self) -> Option<GpuLoad> {
        let command = self.command.clone()?;
        if self.failures.load(Ordering::Relaxed) >= MAX_FAILURES
            || self.busy.swap(true, Ordering::AcqRel)
        {
            return None;
        }
        let busy = self.busy.clone();
        let run = tokio::task::spawn_blocking(move || {
            let result = query(&command);
            busy.store(false, Ordering::Release);
            result
        });
        let text = match tokio::time::timeout(TIMEOUT, run).await {
            Ok(Ok(Ok(text))) => text,
            Ok(Ok(Err(err))) => return self.failed(&err.to_string()),
            Ok(Err(err)) => return self.failed(&err.to_string()),
            Err(_) => return self.failed("nvidia-smi timed out"),
        };
        let load = parse(&text);
        if load.is_none() {
            return self.failed("nvidia-smi listed no GPU");
        }
        self.failures.store(0, Ordering::Relaxed);
        load
    }

    fn failed(&self, why: &str) -> Option<GpuLoad> {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures == MAX_FAILURES {
            tracing::debug!("node agent: no GPU load ({why}); not asking nvidia-smi again");
        }
        None
    }
}

/// Runs nvidia-smi; a missing binary counts as failing for good.
fn query(command: &std::path::Path) -> io::Result<String> {
    let output = Command::new(command)
        .args(QUERY)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "{} exited with {}",
            command.display(),
            output.status
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real output of the query on an idle NVIDIA H100 80GB HBM3 (driver-reported MiB).
    const H100_IDLE: &str = "0, 0, 81559\n";

    #[test]
    fn parses_real_nvidia_smi_output() {
        let load = parse(H100_IDLE).unwrap();
        assert_eq!(load.gpus, 1);
        assert_eq!(load.percent, Some(0.0));
        assert_eq!(load.memory_used_bytes, 0);
        assert_eq!(load.memory_total_bytes, 81559 * MIB);
    }

    #[test]
    fn averages_busy_gpus_and_skips_missing_values() {
        let two = "87, 40213, 81559\n13, 1024, 81559\n";
        let load = parse(two).unwrap();
        assert_eq!(load.gpus, 2);
        assert_eq!(load.percent, Some(50.0));
        assert_eq!(load.memory_used_bytes, (40213 + 1024) * MIB);
        assert_eq!(load.memory_total_bytes, 2 * 81559 * MIB);
        // MIG mode: utilisation is not reported, memory is.
        let mig = parse("[N/A], 512, 81559\n").unwrap();
        assert_eq!(mig.percent, None);
        assert_eq!(mig.memory_used_bytes, 512 * MIB);
    }

    #[test]
    fn no_gpu_is_none() {
        assert_eq!(parse(""), None);
        assert_eq!(
            parse("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."),
            None
        );
    }

    #[tokio::test]
    async fn a_missing_binary_means_no_gpu() {
        let probe = GpuProbe::new(Some("/nonexistent/nvidia-smi".into()));
        for _ in 0..MAX_FAILURES + 1 {
            assert_eq!(probe.sample().await, None);
        }
        assert_eq!(probe.failures.load(Ordering::Relaxed), MAX_FAILURES);
        assert_eq!(GpuProbe::new(None).sample().await, None);
    }
}
