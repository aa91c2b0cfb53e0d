//! The `llmlocal pull / list / rm` commands (the CLI module owns argument parsing and calls
//! these with plain arguments).

use std::time::SystemTime;

use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use super::cache::CachedRepo;
use super::config::ManagerConfig;
use super::error::Result;
use super::manager::{ModelManager, ResolvedModel};
use super::spec::{FileSelector, HfSource, ModelSource, ModelSpec};

/// `llmlocal pull <repo>[:<quant>]` or `llmlocal pull <repo> --file <name>`: downloads with a
/// progress bar (bytes, rate, ETA) on stderr; Ctrl-C stops and keeps the partial data.
pub async fn pull(config: &ManagerConfig, spec: &str, file: Option<&str>) -> Result<ResolvedModel> {
    let mut spec = ModelSpec::parse(spec)?;
    if let (Some(file), ModelSource::HuggingFace(hf)) = (file, &spec.source) {
        let hf = HfSource {
            selector: FileSelector::File(file.to_string()),
            ..hf.clone()
        };
        spec = ModelSpec::hugging_face(&hf.repo, Some(&hf.revision), hf.selector)?
            .with_name(spec.name);
    }
    let manager = ModelManager::new(config.clone())?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<super::progress::Progress>();
    let cancel = CancellationToken::new();
    let on_ctrl_c = cancel.clone();
    let ctrl_c = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_ctrl_c.cancel();
        }
    });
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:30!} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} (ETA {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let view = bar.clone();
    let painter = tokio::spawn(async move {
        while let Some(p) = rx.recv().await {
            view.set_length(p.bytes_total);
            view.set_position(p.bytes_done);
            view.set_message(p.file.clone());
        }
    });
    let result = manager.pull(&spec, Some(tx), cancel).await;
    let _ = painter.await;
    ctrl_c.abort();
    match &result {
        Ok(model) => {
            bar.finish_and_clear();
            print_pulled(model);
        }
        Err(_) => bar.abandon(),
    }
    result
}

fn print_pulled(model: &ResolvedModel) {
    if let Some(p) = &model.picked {
        println!(
            "picked {} ({}) to fit {} of memory",
            p.quant.as_deref().unwrap_or("the largest GGUF"),
            human_bytes(p.size),
            p.budget
                .map(human_bytes)
                .unwrap_or_else(|| "an unknown amount".into()),
        );
    }
    if let Some(why) = &model.cache_only {
        println!(
            "{}: every file is in the cache; using it without checking the hub ({why})",
            model.repo.as_deref().unwrap_or(&model.name)
        );
    }
    println!(
        "{} {} -> {} ({} downloaded)",
        model.repo.as_deref().unwrap_or(&model.name),
        model
            .commit
            .as_deref()
            .map(|c| &c[..c.len().min(12)])
            .unwrap_or(""),
        model.path.display(),
        human_bytes(model.downloaded_bytes)
    );
}

/// `llmlocal list`: the cached models as a table on stdout.
pub fn list(config: &ManagerConfig) -> Result<()> {
    let manager = ModelManager::new(config.clone())?;
    let repos = manager.list()?;
    print!("{}", format_table(&repos, SystemTime::now()));
    Ok(())
}

/// `llmlocal rm <repo>`: deletes one repository from the cache; prints and returns the bytes freed.
pub fn rm(config: &ManagerConfig, repo: &str) -> Result<u64> {
    let manager = ModelManager::new(config.clone())?;
    let freed = manager.remove(repo)?;
    println!("removed {repo} ({})", human_bytes(freed));
    Ok(freed)
}

/// The `list` table: REPO, REVISIONS, FILES, SIZE, LAST USED.
pub fn format_table(repos: &[CachedRepo], now: SystemTime) -> String {
    let rows: Vec<[String; 5]> = repos
        .iter()
        .map(|r| {
            let refs: Vec<String> = r
                .revisions
                .iter()
                .map(|v| {
                    let short = &v.commit[..v.commit.len().min(8)];
                    if v.refs.is_empty() {
                        short.to_string()
                    } else {
                        format!("{} ({short})", v.refs.join(","))
                    }
                })
                .collect();
            let files: usize = r.revisions.iter().map(|v| v.files.len()).sum();
            [
                r.repo.clone(),
                refs.join(" "),
                files.to_string(),
                human_bytes(r.size_bytes + r.partial_bytes),
                r.last_used
                    .map(|t| ago(now, t))
                    .unwrap_or_else(|| "never".into()),
            ]
        })
        .collect();
    let header = ["REPO", "REVISIONS", "FILES", "SIZE", "LAST USED"];
    let mut out = crate::cli::table::aligned(header, &rows);
    if rows.is_empty() {
        out.push_str("(no models cached)\n");
    }
    out
}

fn ago(now: SystemTime, then: SystemTime) -> String {
    let secs = now.duration_since(then).unwrap_or_default().as_secs();
    match secs {
        0..=59 => "just now".into(),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86_400),
    }
}

/// 1536 -> "1.5 KiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
