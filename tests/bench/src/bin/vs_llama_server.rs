//! `llmlocal serve` against llama-server on the same GGUF, the same threads and slots, over
//! HTTP as apps use them: single-stream decoding, 4-stream aggregate, the time to first
//! token of a chat's second turn after a long first turn, and the same after more chats than
//! slots took turns in between (the first chat's history then comes from the host-RAM prompt
//! cache, `--cache-ram`, or is read again). Rounds are interleaved (the order
//! alternates), the first is a warm-up, medians with min–max spread are reported; tokens
//! are counted from each server's own `usage`, never from stream events.
//!
//! `cargo xtask bench --suite vs-llama-server` builds llama-server from a pinned llama.cpp
//! source and runs this; by hand:
//! ```sh
//! vs_llama_server --llmlocal target/debug/llmlocal --plugin-dir target/plugins \
//!     --llama-server PATH --model target/bench/random-llama-85m-f16.gguf --threads 2
//! ```

use anyhow::{bail, Context};
use clap::Parser;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

#[derive(Debug, Parser)]
#[command(about = "Benchmark llmlocal serve against llama-server over HTTP")]
struct Args {
    /// The `llmlocal` binary.
    #[arg(long)]
    llmlocal: PathBuf,
    /// Folder with the llama-cpp plugin library.
    #[arg(long)]
    plugin_dir: PathBuf,
    /// The `llama-server` binary.
    #[arg(long)]
    llama_server: PathBuf,
    /// The GGUF both serve.
    #[arg(long)]
    model: PathBuf,
    /// CPU threads for both (default: all cores).
    #[arg(long)]
    threads: Option<u32>,
    /// Slots (parallel sequences) for both.
    #[arg(long, default_value_t = 4)]
    parallel: u32,
    /// Context length per slot.
    #[arg(long, default_value_t = 2048)]
    context: u32,
    /// Measured rounds (after one warm-up round).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Tokens generated per stream.
    #[arg(long, default_value_t = 128)]
    gen_tokens: u32,
    /// About how many tokens the chat's first user message has.
    #[arg(long, default_value_t = 1000)]
    first_turn_tokens: usize,
    /// Chats whose first turns run before the first one's second turn in the interleaved
    /// case (default: slots + 1, so the first chat loses its slot).
    #[arg(long)]
    interleaved_chats: Option<usize>,
    /// Host-RAM prompt cache MiB for both servers (`--cache-ram`; 0 = off; default: each
    /// server's own default).
    #[arg(long, value_name = "MIB")]
    cache_ram: Option<u64>,
    /// Which cases to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "single,aggregate,turn2,interleaved"
    )]
    cases: Vec<Case>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Case {
    Single,
    Aggregate,
    Turn2,
    Interleaved,
}

/// One server under test; killed when dropped.
struct Server {
    name: &'static str,
    base: String,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<Stdio> {
    let file = std::fs::File::create(dir.join(format!("{name}.log")))?;
    Ok(Stdio::from(file))
}

fn start_llmlocal(args: &Args, threads: u32, logs: &Path) -> anyhow::Result<Server> {
    let port = free_port()?;
    // In process, as plugins installed next to the binary run (a --plugin-dir elsewhere
    // would default to a worker process).
    let mut command = Command::new(&args.llmlocal);
    command
        .args(["--isolation", "in-process", "--plugin-dir"])
        .arg(&args.plugin_dir)
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .arg("--model")
        .arg(format!("m={}", args.model.display()))
        .args(["--backend", "llama-cpp"])
        .args(["--threads", &threads.to_string()])
        .args(["--parallel", &args.parallel.to_string()])
        .args(["--context-length", &args.context.to_string()]);
    if let Some(mib) = args.cache_ram {
        command.args(["--cache-ram", &mib.to_string()]);
    }
    let child = command
        .stdout(log_file(logs, "llmlocal")?)
        .stderr(log_file(logs, "llmlocal.err")?)
        .spawn()
        .with_context(|| format!("start {}", args.llmlocal.display()))?;
    Ok(Server {
        name: "llmlocal",
        base: format!("http://127.0.0.1:{port}"),
        child,
    })
}

fn start_llama_server(args: &Args, threads: u32, logs: &Path) -> anyhow::Result<Server> {
    let port = free_port()?;
    let total_context = args.context * args.parallel;
    let mut command = Command::new(&args.llama_server);
    command
        .arg("-m")
        .arg(&args.model)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["-t", &threads.to_string(), "-tb", &threads.to_string()])
        .args(["-np", &args.parallel.to_string()])
        .args(["-c", &total_context.to_string()])
        .args(["--alias", "m"]);
    if let Some(mib) = args.cache_ram {
        command.args(["--cache-ram", &mib.to_string()]);
    }
    let child = command
        .stdout(log_file(logs, "llama-server")?)
        .stderr(log_file(logs, "llama-server.err")?)
        .spawn()
        .with_context(|| format!("start {}", args.llama_server.display()))?;
    Ok(Server {
        name: "llama-server",
        base: format!("http://127.0.0.1:{port}"),
        child,
    })
}

async fn wait_ready(http: &reqwest::Client, server: &mut Server) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Some(status) = server.child.try_wait()? {
            bail!("{} exited while starting: {status}", server.name);
        }
        let health = http.get(format!("{}/health", server.base)).send().await;
        if health.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("{} did not become ready in 120 s", server.name)
}

/// A streamed chat: time to the first non-empty content, the whole time, the answer and the
/// server's usage.
struct Streamed {
    ttft_ms: f64,
    total_ms: f64,
    text: String,
    completion_tokens: u64,
}

async fn stream_chat(
    http: &reqwest::Client,
    server: &Server,
    messages: &Value,
    max_tokens: u32,
    ignore_eos: bool,
) -> anyhow::Result<Streamed> {
    let body = json!({"model": "m", "messages": messages, "stream": true,
                      "max_tokens": max_tokens, "temperature": 0, "ignore_eos": ignore_eos,
                      "stream_options": {"include_usage": true}});
    let started = Instant::now();
    let response = http
        .post(format!("{}/v1/chat/completions", server.base))
        .json(&body)
        .send()
        .await?;
    if !response.status().is_success() {
        let status = response.status();
        bail!("{}: {status}: {}", server.name, response.text().await?);
    }
    let mut bytes = response.bytes_stream();
    let (mut buffer, mut text, mut first, mut usage) = (String::new(), String::new(), None, None);
    while let Some(chunk) = bytes.next().await {
        buffer.push_str(std::str::from_utf8(&chunk?)?);
        while let Some(end) = buffer.find('\n') {
            let line: String = buffer.drain(..=end).collect();
            let Some(data) = line.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let event: Value = serde_json::from_str(data)
                .with_context(|| format!("{}: bad event {data}", server.name))?;
            if let Some(piece) = event["choices"][0]["delta"]["content"].as_str() {
                if !piece.is_empty() && first.is_none() {
                    first = Some(started.elapsed());
                }
                text.push_str(piece);
            }
            if let Some(tokens) = event["usage"]["completion_tokens"].as_u64() {
                usage = Some(tokens);
            }
        }
    }
    let total = started.elapsed();
    Ok(Streamed {
        ttft_ms: first.unwrap_or(total).as_secs_f64() * 1000.0,
        total_ms: total.as_secs_f64() * 1000.0,
        text,
        completion_tokens: usage.with_context(|| format!("{}: no usage", server.name))?,
    })
}

fn story_prompt() -> Value {
    json!([{"role": "user", "content": "Tell me a long story about a fox."}])
}

/// Decoding speed of one stream: tokens after the first over the time after the first.
async fn single_stream(
    http: &reqwest::Client,
    server: &Server,
    tokens: u32,
) -> anyhow::Result<f64> {
    let run = stream_chat(http, server, &story_prompt(), tokens, true).await?;
    let decode_s = (run.total_ms - run.ttft_ms) / 1000.0;
    Ok(run.completion_tokens.saturating_sub(1) as f64 / decode_s.max(1e-9))
}

/// Tokens/s of `streams` concurrent streams: all their tokens over the wall time.
async fn aggregate(
    http: &reqwest::Client,
    server: &Server,
    streams: usize,
    tokens: u32,
) -> anyhow::Result<f64> {
    let prompt = story_prompt();
    let started = Instant::now();
    let runs = futures_util::future::join_all(
        (0..streams).map(|_| stream_chat(http, server, &prompt, tokens, true)),
    )
    .await;
    let mut total = 0;
    for run in runs {
        total += run?.completion_tokens;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// About `tokens` tokens of prose, different every round.
fn long_message(tokens: usize, round: usize) -> String {
    const SENTENCE: &str = "The little fox walked along the river and looked at the trees. ";
    let mut text = format!("Round {round}. ");
    while text.len() < tokens * 3 {
        text.push_str(SENTENCE);
    }
    text
}

/// Time to first token of a chat's second turn, right after its long first turn.
async fn turn2_ttft(
    http: &reqwest::Client,
    server: &Server,
    first_turn_tokens: usize,
    round: usize,
) -> anyhow::Result<f64> {
    let mut messages =
        vec![json!({"role": "user", "content": long_message(first_turn_tokens, round)})];
    let first = stream_chat(http, server, &json!(messages), 32, false).await?;
    messages.push(json!({"role": "assistant", "content": first.text}));
    messages.push(json!({"role": "user", "content": "And then what happened?"}));
    Ok(stream_chat(http, server, &json!(messages), 8, false)
        .await?
        .ttft_ms)
}

/// Time to first token of chat 0's second turn after `chats` chats' long first turns, one
/// after the other: with more chats than slots, chat 0's slot went to another chat.
async fn interleaved_ttft(
    http: &reqwest::Client,
    server: &Server,
    chats: usize,
    first_turn_tokens: usize,
    round: usize,
) -> anyhow::Result<f64> {
    let mut first = None;
    for chat in 0..chats.max(1) {
        // The chats differ from their first words on: only the chat template's start is
        // common, as between unrelated conversations.
        let content = format!("Chat {chat}. {}", long_message(first_turn_tokens, round));
        let messages = vec![json!({"role": "user", "content": content})];
        let answer = stream_chat(http, server, &json!(messages), 32, false).await?;
        first.get_or_insert((messages, answer.text));
    }
    let (mut messages, answer) = first.context("no chat ran")?;
    messages.push(json!({"role": "assistant", "content": answer}));
    messages.push(json!({"role": "user", "content": "And then what happened?"}));
    Ok(stream_chat(http, server, &json!(messages), 8, false)
        .await?
        .ttft_ms)
}

#[derive(Debug, Default, serde::Serialize)]
struct Samples {
    single_tok_s: Vec<f64>,
    aggregate_tok_s: Vec<f64>,
    turn2_ttft_ms: Vec<f64>,
    interleaved_ttft_ms: Vec<f64>,
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

fn spread(values: &[f64]) -> (f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

fn report(label: &str, ours: &[f64], theirs: &[f64], higher_is_better: bool) -> Value {
    let (a, b) = (median(ours), median(theirs));
    let ratio = if higher_is_better { a / b } else { b / a };
    let (ours_min, ours_max) = spread(ours);
    let (theirs_min, theirs_max) = spread(theirs);
    println!(
        "{label:<28} llmlocal {a:>9.1} ({ours_min:.1}–{ours_max:.1})   llama-server {b:>9.1} \
         ({theirs_min:.1}–{theirs_max:.1})   llmlocal/llama-server {ratio:.3}x{}",
        if higher_is_better {
            ""
        } else {
            " (speed: their time / ours)"
        }
    );
    json!({"llmlocal": ours, "llama_server": theirs, "median_llmlocal": a,
           "median_llama_server": b, "ratio": ratio})
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    // A relative path with several `/` reads as a hub spec to `llmlocal --model`.
    args.model = std::fs::canonicalize(&args.model)
        .with_context(|| format!("model {}", args.model.display()))?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    let logs = tempfile::tempdir()?;
    // No pooled connections: llama-server closes idle ones, and a reused closed connection
    // fails the next request.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(600))
        .build()?;
    let mut servers = [
        start_llmlocal(&args, threads, logs.path())?,
        start_llama_server(&args, threads, logs.path())?,
    ];
    for server in &mut servers {
        wait_ready(&http, server).await?;
    }
    println!(
        "model {}, {threads} threads, {} slots x {} context, {} tokens per stream, {} rounds \
         (+1 warm-up), interleaved",
        args.model.display(),
        args.parallel,
        args.context,
        args.gen_tokens,
        args.rounds
    );
    let mut samples = [Samples::default(), Samples::default()];
    for round in 0..=args.rounds {
        // Alternate who goes first, so neither always meets a warmer or busier machine.
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for &i in &order {
            let server = &servers[i];
            let mut line = format!("round {round} {:<12}", server.name);
            let mut sample = Samples::default();
            if args.cases.contains(&Case::Single) {
                let single = single_stream(&http, server, args.gen_tokens).await?;
                line.push_str(&format!(" single {single:.1} tok/s,"));
                sample.single_tok_s.push(single);
            }
            if args.cases.contains(&Case::Aggregate) {
                let agg = aggregate(&http, server, args.parallel as usize, args.gen_tokens).await?;
                line.push_str(&format!(" {} streams {agg:.1} tok/s,", args.parallel));
                sample.aggregate_tok_s.push(agg);
            }
            if args.cases.contains(&Case::Turn2) {
                let ttft = turn2_ttft(&http, server, args.first_turn_tokens, round).await?;
                line.push_str(&format!(" turn-2 TTFT {ttft:.1} ms,"));
                sample.turn2_ttft_ms.push(ttft);
            }
            if args.cases.contains(&Case::Interleaved) {
                let chats = args.interleaved_chats.unwrap_or(args.parallel as usize + 1);
                let ttft =
                    interleaved_ttft(&http, server, chats, args.first_turn_tokens, round).await?;
                line.push_str(&format!(" turn-2 TTFT after {chats} chats {ttft:.1} ms"));
                sample.interleaved_ttft_ms.push(ttft);
            }
            println!("{line}{}", if round == 0 { " (warm-up)" } else { "" });
            if round > 0 {
                let into = &mut samples[i];
                into.single_tok_s.append(&mut sample.single_tok_s);
                into.aggregate_tok_s.append(&mut sample.aggregate_tok_s);
                into.turn2_ttft_ms.append(&mut sample.turn2_ttft_ms);
                into.interleaved_ttft_ms
                    .append(&mut sample.interleaved_ttft_ms);
            }
        }
    }
    let [ours, theirs] = &samples;
    println!("medians (min–max) of {} rounds:", args.rounds);
    let mut results = json!({
        "model": args.model, "threads": threads, "parallel": args.parallel,
        "cache_ram_mib": args.cache_ram,
    });
    let cases = [
        (
            "single_stream_tok_s",
            "single-stream tok/s".to_string(),
            &ours.single_tok_s,
            &theirs.single_tok_s,
            true,
        ),
        (
            "aggregate_tok_s",
            format!("{}-stream tok/s", args.parallel),
            &ours.aggregate_tok_s,
            &theirs.aggregate_tok_s,
            true,
        ),
        (
            "turn2_ttft_ms",
            "chat turn-2 TTFT ms".to_string(),
            &ours.turn2_ttft_ms,
            &theirs.turn2_ttft_ms,
            false,
        ),
        (
            "interleaved_ttft_ms",
            "turn-2 TTFT, interleaved ms".to_string(),
            &ours.interleaved_ttft_ms,
            &theirs.interleaved_ttft_ms,
            false,
        ),
    ];
    for (key, label, ours, theirs, higher_is_better) in cases {
        if !ours.is_empty() {
            results[key] = report(&label, ours, theirs, higher_is_better);
        }
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}
