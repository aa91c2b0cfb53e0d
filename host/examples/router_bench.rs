//! The latency `llmlocal router` adds, measured from outside: this process is only the
//! load generator; the fast fake node and the router run as two child processes (this
//! same binary with `--serve-node` / `--serve-router`), so neither competes with the
//! clients for a runtime, and the router runs `llmlocal::router::serve` exactly as
//! `llmlocal router` does (SQLite history on disk included).
//!
//! Three runs per path (node direct, then through the router), 100 clients unless
//! `--clients` says otherwise:
//! - 1 client, sequential requests;
//! - closed loop (each client sends its next request when the previous ends): the
//!   requests/s each path sustains, and latency at saturation;
//! - open loop at a fixed total rate below saturation: a request delayed by its client's
//!   previous one counts from its scheduled send time, so a stall is not hidden by the
//!   client waiting (coordinated omission). This is the "added latency at 100 concurrent
//!   clients" that proxies' published numbers describe;
//! - (`--runs paired`) the same open loop with every client alternating node and router, so
//!   both paths are measured in one time window: a stall of the machine (or of the load
//!   generator) lands on both instead of on whichever path ran then.
//!
//! Per run it also prints the TCP connections the node accepted (a proxy opening
//! connections per request shows there), and from Linux `schedstat` the CPU time and the
//! thread wake-ups per request of the node and the router processes: on a shared or small
//! machine these vary less from run to run than the latency percentiles do.
//!
//! Percentiles are exact (all samples, sorted). Numbers depend on the build profile and
//! the core count: on a 2-core machine the clients, router and node share two cores.
//!
//! `--pin` gives each process cores of its own (node a quarter, router a quarter but at
//! most 4, the load generator the rest; each runtime sized to its cores), as if each ran on
//! its own machine: unpinned, 36+ threads of three processes share every core and a
//! request's wake-ups queue behind the other processes' threads.
//!
//! `ROUTER_BENCH_DB=memory` keeps the router's history in an in-memory SQLite (to tell the
//! disk's share of the tail from the rest).
//!
//! `cargo run -p llmlocal --example router_bench -- --help` lists the flags (requests per
//! run, open-loop rate, clients, which runs, repeats, the router's worker threads, pinning).
//! With optimised code: `cargo run --profile release -p llmlocal --example router_bench`.

use anyhow::{bail, Context as _};
use axum::{
    body::Bytes,
    http::header,
    response::IntoResponse,
    routing::{get, post},
    serve::ListenerExt as _,
    Router,
};
use llmlocal::router::{self, RouterSettings, RouterState};
use serde_json::json;
use std::{
    alloc::{GlobalAlloc, Layout, System},
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

const READY: &str = "bench listening on http://";
const TOKEN: &str = "bench";

/// A fixed small OpenAI answer, serialised once.
fn answer_body() -> Bytes {
    Bytes::from(
        json!({
            "id": "x", "object": "chat.completion", "model": "m",
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": "ok" }, "finish_reason": "stop" }],
            "usage": { "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2 },
        })
        .to_string(),
    )
}

/// Counts this process's heap allocations (each child reports its own): a number that,
/// unlike timings, does not depend on what else the machine runs.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call goes to the system allocator with the caller's arguments unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Answers each connection with the allocation count so far (a plain thread, outside the
/// runtime being measured).
fn serve_alloc_count() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = writeln!(conn, "{}", ALLOCS.load(Ordering::Relaxed));
        }
    });
    Ok(addr)
}

/// Binds the server and tells the parent where it and the allocation count listen.
async fn listen() -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let counts = serve_alloc_count()?;
    println!("{READY}{} {counts}", listener.local_addr()?);
    Ok(listener)
}

/// Child mode: the fast node. `GET /accepted` answers how many TCP connections it has
/// accepted so far (a proxy that opens connections per request shows up there).
async fn serve_node() -> anyhow::Result<()> {
    let body = answer_body();
    let answer = move || {
        let body = body.clone();
        async move { ([(header::CONTENT_TYPE, "application/json")], body).into_response() }
    };
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    let app = Router::new()
        .route("/v1/chat/completions", post(answer))
        .route("/health", get(|| async { "ok" }))
        .route(
            "/accepted",
            get(move || async move { count.load(Ordering::Relaxed).to_string() }),
        );
    let listener = listen().await?.tap_io(move |tcp| {
        let _ = tcp;
        accepted.fetch_add(1, Ordering::Relaxed);
    });
    axum::serve(listener, app).await?;
    Ok(())
}

/// The node's count of accepted connections.
async fn accepted(node: &str) -> anyhow::Result<u64> {
    let text = reqwest::get(format!("{node}/accepted"))
        .await?
        .text()
        .await?;
    text.trim().parse().context("node /accepted")
}

/// Child mode: the router, with its history in `db`.
async fn serve_router(db: &str) -> anyhow::Result<()> {
    // ROUTER_BENCH_DB=memory: history in an in-memory SQLite, to price the disk.
    let on_disk = std::env::var("ROUTER_BENCH_DB").map_or(true, |v| v != "memory");
    let settings = RouterSettings {
        db_path: on_disk.then(|| db.into()),
        join_token: Some(TOKEN.into()),
        offline_after: Duration::from_secs(3600),
        ..RouterSettings::default()
    };
    let (state, _) = RouterState::open(settings)?;
    let listener = listen().await?;
    router::serve(listener, state, std::future::pending()).await?;
    Ok(())
}

/// A child process of this binary, killed on drop.
struct Proc {
    child: Child,
    url: String,
    /// Where it answers its allocation count.
    counts: SocketAddr,
}

/// Scheduler totals over all threads of a process (Linux `schedstat`; zeros elsewhere).
#[derive(Debug, Clone, Copy, Default)]
struct Sched {
    /// Time on a CPU, ns.
    cpu_ns: u64,
    /// Times a thread was put on a CPU: wake-ups, roughly.
    slices: u64,
    /// Heap allocations.
    allocs: u64,
}

impl Proc {
    fn allocs(&self) -> anyhow::Result<u64> {
        let mut text = String::new();
        std::net::TcpStream::connect(self.counts)?.read_to_string(&mut text)?;
        Ok(text.trim().parse()?)
    }

    fn sched(&self) -> Sched {
        let mut total = Sched {
            allocs: self.allocs().unwrap_or(0),
            ..Sched::default()
        };
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.child.id())) else {
            return total;
        };
        for task in tasks.flatten() {
            let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            // Fields: time on CPU (ns), time waiting to run (ns), timeslices run.
            let fields: Vec<u64> = text.split_whitespace().flat_map(str::parse).collect();
            if let [cpu_ns, _, slices] = fields[..] {
                total.cpu_ns += cpu_ns;
                total.slices += slices;
            }
        }
        total
    }
}

/// The two server processes.
struct Servers {
    node: Proc,
    router: Proc,
}

impl Servers {
    /// (node, router) scheduler totals so far.
    fn sched(&self) -> (Sched, Sched) {
        (self.node.sched(), self.router.sched())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts this binary in a child mode, on `cpus` when given (see [`pin`]).
fn spawn_self(args: &[&str], cpus: Option<&[usize]>) -> anyhow::Result<Proc> {
    let exe = std::env::current_exe()?;
    let mut command = Command::new(exe);
    if let Some(cpus) = cpus {
        let list: Vec<String> = cpus.iter().map(usize::to_string).collect();
        command.env(CPUS_ENV, list.join(","));
    }
    let mut child = command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let parsed = line.trim().strip_prefix(READY).and_then(|rest| {
        let (addr, counts) = rest.split_once(' ')?;
        Some((addr.to_string(), counts.parse().ok()?))
    });
    let Some((addr, counts)) = parsed else {
        let _ = child.kill();
        bail!("child {args:?} did not start: {line:?}");
    };
    Ok(Proc {
        url: format!("http://{addr}"),
        child,
        counts,
    })
}

async fn register(router: &str, node: &str) -> anyhow::Result<()> {
    let reg = json!({ "node_id": "fast", "url": node, "models_available": ["m"] });
    let resp = reqwest::Client::new()
        .post(format!("{router}/api/nodes/register"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(reg.to_string())
        .send()
        .await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "registration: {}",
        resp.status()
    );
    Ok(())
}

struct Run {
    /// Sorted.
    latencies: Vec<Duration>,
    /// (latency, send time since the run's start) of the slowest requests, slowest first.
    slowest: Vec<(Duration, Duration)>,
    wall: Duration,
    /// Connections the node accepted during the run.
    connections: u64,
    /// CPU time per request of the node and the router processes, µs (all threads).
    node_cpu_us: f64,
    router_cpu_us: f64,
    /// Thread wake-ups per request of the node and the router.
    node_slices: f64,
    router_slices: f64,
    /// Heap allocations per request of the node and the router.
    node_allocs: f64,
    router_allocs: f64,
}

impl Run {
    /// Nearest-rank percentile, ms.
    fn pct(&self, p: f64) -> f64 {
        let n = self.latencies.len();
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        self.latencies[rank.clamp(1, n) - 1].as_secs_f64() * 1000.0
    }
    fn rps(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }
}

/// How clients pace their requests.
#[derive(Clone, Copy)]
enum Pace {
    /// Next request as soon as the previous one ends.
    Closed,
    /// Total requests/s over all clients; latency from the scheduled send time.
    Open(f64),
}

struct Load {
    client: reqwest::Client,
    body: Bytes,
}

impl Load {
    fn new() -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .http1_only()
            .build()?;
        let body = Bytes::from(
            json!({ "model": "m", "messages": [{ "role": "user", "content": "hi" }] }).to_string(),
        );
        Ok(Self { client, body })
    }

    /// One run; with several `bases`, each client sends its requests to them in turn
    /// (one [`Run`] per base, from the same time window).
    async fn run(
        &self,
        bases: &[&str],
        clients: usize,
        per_client: usize,
        pace: Pace,
    ) -> anyhow::Result<Vec<Run>> {
        let targets: Arc<[String]> = bases
            .iter()
            .map(|base| format!("{base}/v1/chat/completions"))
            .collect();
        let start = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|i| {
                let (client, body, targets) =
                    (self.client.clone(), self.body.clone(), targets.clone());
                // Open loop: each client sends every `clients / rate` s, staggered.
                let gap = match pace {
                    Pace::Closed => None,
                    Pace::Open(rate) => Some(Duration::from_secs_f64(clients as f64 / rate)),
                };
                let offset = gap.map(|g| g.mul_f64(i as f64 / clients as f64));
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(per_client);
                    let mut previous_end = start;
                    for k in 0..per_client {
                        let sent = match (gap, offset) {
                            (Some(gap), Some(offset)) => {
                                let at = start + offset + gap * k as u32;
                                tokio::time::sleep_until(at.into()).await;
                                // Late because the previous answer came after this send
                                // was due: count the wait (coordinated omission). Late
                                // only by timer slop (tokio timers tick in ms): do not.
                                if previous_end > at {
                                    at
                                } else {
                                    Instant::now()
                                }
                            }
                            _ => Instant::now(),
                        };
                        // Clients start on different targets, so each target gets every
                        // send slot's share.
                        let target = (i + k) % targets.len();
                        let resp = client
                            .post(&targets[target])
                            .header("content-type", "application/json")
                            .body(body.clone())
                            .send()
                            .await?;
                        anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
                        resp.bytes().await?;
                        previous_end = Instant::now();
                        lat.push((target, previous_end - sent, sent - start));
                    }
                    Ok(lat)
                })
            })
            .collect();
        let mut samples = Vec::with_capacity(clients * per_client);
        for task in tasks {
            samples.extend(task.await.context("client task")??);
        }
        let wall = start.elapsed();
        samples.sort_by_key(|(_, latency, _)| std::cmp::Reverse(*latency));
        Ok((0..targets.len())
            .map(|target| {
                let mine = samples.iter().filter(|(t, _, _)| *t == target);
                let slowest = mine.clone().take(SLOWEST).map(|(_, l, at)| (*l, *at));
                let mut latencies: Vec<Duration> = mine.map(|(_, latency, _)| *latency).collect();
                latencies.sort();
                Run::new(latencies, slowest.collect(), wall)
            })
            .collect())
    }
}

impl Run {
    fn new(latencies: Vec<Duration>, slowest: Vec<(Duration, Duration)>, wall: Duration) -> Self {
        Run {
            latencies,
            slowest,
            wall,
            connections: 0,
            node_cpu_us: 0.0,
            router_cpu_us: 0.0,
            node_slices: 0.0,
            router_slices: 0.0,
            node_allocs: 0.0,
            router_allocs: 0.0,
        }
    }
}

impl Load {
    /// [`Load::run`] against `base`, counting the connections the node accepts and the
    /// CPU time the two servers use meanwhile.
    async fn measure(
        &self,
        base: &str,
        servers: &Servers,
        clients: usize,
        per_client: usize,
        pace: Pace,
    ) -> anyhow::Result<Run> {
        let before = accepted(&servers.node.url).await?;
        let sched_before = servers.sched();
        let mut runs = self.run(&[base], clients, per_client, pace).await?;
        let mut run = runs.pop().context("one run")?;
        let sched_after = servers.sched();
        // The count request itself opens one connection (a fresh client each time).
        run.connections = (accepted(&servers.node.url).await? - before).saturating_sub(1);
        let per_request = |after: u64, before: u64| {
            after.saturating_sub(before) as f64 / run.latencies.len() as f64
        };
        run.node_cpu_us = per_request(sched_after.0.cpu_ns, sched_before.0.cpu_ns) / 1000.0;
        run.router_cpu_us = per_request(sched_after.1.cpu_ns, sched_before.1.cpu_ns) / 1000.0;
        run.node_slices = per_request(sched_after.0.slices, sched_before.0.slices);
        run.node_allocs = per_request(sched_after.0.allocs, sched_before.0.allocs);
        run.router_allocs = per_request(sched_after.1.allocs, sched_before.1.allocs);
        run.router_slices = per_request(sched_after.1.slices, sched_before.1.slices);
        Ok(run)
    }
}

/// Slowest requests listed per run with `--slowest` (when they were sent shows stalls that
/// recur on a period, e.g. a background task's).
const SLOWEST: usize = 12;

fn print_slowest(name: &str, run: &Run) {
    let list: Vec<String> = run
        .slowest
        .iter()
        .map(|(latency, at)| {
            format!(
                "{:.1}@{:.0}",
                latency.as_secs_f64() * 1e3,
                at.as_secs_f64() * 1e3
            )
        })
        .collect();
    println!("  slowest {name} (ms@ms since start): {}", list.join(" "));
}

fn report(label: &str, direct: &Run, routed: &Run) {
    for (name, run) in [("direct", direct), ("router", routed)] {
        println!(
            "{label:<22} {name:>7} {:>9.3} {:>9.3} {:>9.3} {:>9.0} {:>8} {:>6} {:>7.1} {:>7.1} {:>6.2} {:>6.2} {:>6.1} {:>6.1}",
            run.pct(50.0),
            run.pct(99.0),
            run.pct(99.9),
            run.rps(),
            run.latencies.len(),
            run.connections,
            run.node_cpu_us,
            run.router_cpu_us,
            run.node_slices,
            run.router_slices,
            run.node_allocs,
            run.router_allocs,
        );
    }
    println!(
        "{label:<22} {:>7} {:>9.3} {:>9.3} {:>9.3}",
        "added",
        routed.pct(50.0) - direct.pct(50.0),
        routed.pct(99.0) - direct.pct(99.0),
        routed.pct(99.9) - direct.pct(99.9),
    );
}

/// One kind of run (`--runs single,closed,open,paired`).
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Single,
    Closed,
    Open,
    /// Open loop where each client alternates between the node and the router: both paths
    /// share the same time window, so a stall of the machine hits both alike.
    Paired,
}

struct Args {
    requests: usize,
    rate: f64,
    clients: usize,
    runs: Vec<Kind>,
    repeat: usize,
    /// Worker threads of the router's runtime (0: current-thread); None: tokio's default.
    router_threads: Option<String>,
    /// Each process on cores of its own.
    pin: bool,
    /// List each run's slowest requests.
    slowest: bool,
}

const USAGE: &str = "flags: --requests N (per multi-client run, default 20000), --rate R \
     (open-loop requests/s, default 2000), --clients C (default 100), --runs single,closed,open,paired \
     (default single,closed,open; paired: open loop, each client alternating node and router, \
     no CPU columns), --repeat K (each run K times, default 1), --router-threads T (the \
     router's tokio workers; 0: a current-thread runtime; default: as `llmlocal router`, one \
     per core, at most 4), --pin (node, router and load generator each on cores of their \
     own; Linux), --slowest (list each run's slowest requests and when they were sent)";

fn kinds(list: &str) -> anyhow::Result<Vec<Kind>> {
    list.split(',')
        .map(|name| match name {
            "single" => Ok(Kind::Single),
            "closed" => Ok(Kind::Closed),
            "open" => Ok(Kind::Open),
            "paired" => Ok(Kind::Paired),
            other => bail!("unknown run {other:?} (single, closed, open, paired)"),
        })
        .collect()
}

fn args(rest: &[String]) -> anyhow::Result<Args> {
    let mut parsed = Args {
        requests: 20_000,
        rate: 2000.0,
        clients: 100,
        runs: vec![Kind::Single, Kind::Closed, Kind::Open],
        repeat: 1,
        router_threads: None,
        pin: false,
        slowest: false,
    };
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        if flag == "--pin" || flag == "--slowest" {
            parsed.pin |= flag == "--pin";
            parsed.slowest |= flag == "--slowest";
            continue;
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--requests" => parsed.requests = value.parse().context("--requests")?,
            "--rate" => parsed.rate = value.parse().context("--rate")?,
            "--clients" => parsed.clients = value.parse().context("--clients")?,
            "--runs" => parsed.runs = kinds(value)?,
            "--repeat" => parsed.repeat = value.parse().context("--repeat")?,
            "--router-threads" => {
                value.parse::<usize>().context("--router-threads")?;
                parsed.router_threads = Some(value.clone());
            }
            other => bail!("unknown flag {other} ({USAGE})"),
        }
    }
    anyhow::ensure!(parsed.rate > 0.0, "--rate must be positive");
    anyhow::ensure!(parsed.clients > 0, "--clients must be positive");
    Ok(parsed)
}

/// A run's label, client count, requests per client and pacing.
fn plan(kind: Kind, args: &Args) -> (String, usize, usize, Pace) {
    let per_client = args.requests.div_ceil(args.clients);
    let clients = args.clients;
    match kind {
        Kind::Single => ("1 client".into(), 1, 5000, Pace::Closed),
        Kind::Closed => (
            format!("{clients} clients closed"),
            clients,
            per_client,
            Pace::Closed,
        ),
        Kind::Open => (
            format!("{clients} clients @{}/s", args.rate),
            clients,
            per_client,
            Pace::Open(args.rate),
        ),
        Kind::Paired => (
            format!("{clients} cl @{}/s paired", args.rate),
            clients,
            per_client,
            Pace::Open(args.rate),
        ),
    }
}

async fn bench(args: Args, cores: Option<Cores>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("bench.sqlite");
    let db = db.display().to_string();
    let mut router_args = vec!["--serve-router", &db];
    router_args.extend(args.router_threads.as_deref());
    let servers = Servers {
        node: spawn_self(&["--serve-node"], cores.as_ref().map(|c| &c.node[..]))?,
        router: spawn_self(&router_args, cores.as_ref().map(|c| &c.router[..]))?,
    };
    let (node, router) = (&servers.node.url, &servers.router.url);
    register(router, node).await?;
    let load = Load::new()?;
    // Warm up both paths (connections, allocator, the router's pool).
    for url in [node, router] {
        load.run(&[url], 100, 20, Pace::Closed).await?;
    }
    match &cores {
        Some(cores) => println!(
            "pinned: node on CPUs {:?}, router on {:?}, load generator on {:?}",
            cores.node, cores.router, cores.load
        ),
        None => println!(
            "{} cores; load generator, router and node in 3 processes, unpinned",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ),
    }
    println!(
        "conns: TCP connections the node accepted during the run (from the load generator \
         when direct, from the router when routed); node/rtr us: CPU time per request; \
         nd/rtr wk: thread wake-ups per request; nd/rtr al: heap allocations per request"
    );
    println!(
        "{:<22} {:>7} {:>9} {:>9} {:>9} {:>9} {:>8} {:>6} {:>7} {:>7} {:>6} {:>6}",
        "run",
        "path",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "req/s",
        "requests",
        "conns",
        "node us",
        "rtr us",
        "nd wk",
        "rtr wk"
    );
    for _ in 0..args.repeat {
        for &kind in &args.runs {
            let (label, clients, per, pace) = plan(kind, &args);
            let (direct, routed) = if kind == Kind::Paired {
                let mut runs = load.run(&[node, router], clients, per, pace).await?;
                let routed = runs.pop().context("the routed run")?;
                (runs.pop().context("the direct run")?, routed)
            } else {
                let direct = load.measure(node, &servers, clients, per, pace).await?;
                (
                    direct,
                    load.measure(router, &servers, clients, per, pace).await?,
                )
            };
            report(&label, &direct, &routed);
            if args.slowest {
                print_slowest("direct", &direct);
                print_slowest("router", &routed);
            }
        }
    }
    Ok(())
}

/// A child exits when its stdin closes: the bench ended, even if it was killed.
fn exit_with_parent() {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
}

/// The router child's runtime: `threads` workers, 0 for a current-thread runtime, none
/// given for `llmlocal router`'s default ([`llmlocal::router::default_worker_threads`]).
fn router_runtime(threads: Option<&String>) -> anyhow::Result<tokio::runtime::Runtime> {
    let threads = match threads {
        Some(threads) => threads.parse::<usize>().context("--router-threads")?,
        None => llmlocal::router::default_worker_threads(),
    };
    let mut builder = match threads {
        0 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
    };
    Ok(builder.enable_all().build()?)
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if let Ok(list) = std::env::var(CPUS_ENV) {
        let cpus = list
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<usize>, _>>()
            .context(CPUS_ENV)?;
        pin(&cpus)?;
    }
    match argv.first().map(String::as_str) {
        Some("--serve-node") => {
            exit_with_parent();
            tokio::runtime::Runtime::new()?.block_on(serve_node())
        }
        Some("--serve-router") => {
            exit_with_parent();
            let db = argv.get(1).context("--serve-router DB")?;
            router_runtime(argv.get(2))?.block_on(serve_router(db))
        }
        _ => {
            let args = args(&argv)?;
            let cores = args.pin.then(Cores::split).transpose()?;
            if let Some(cores) = &cores {
                // Before the runtime starts, so its workers are sized to these cores.
                pin(&cores.load)?;
            }
            tokio::runtime::Runtime::new()?.block_on(bench(args, cores))
        }
    }
}

/// Where `--pin` puts each process: in a child, the CPU list it pins itself to.
const CPUS_ENV: &str = "ROUTER_BENCH_CPUS";

/// The CPUs of each process under `--pin`.
struct Cores {
    node: Vec<usize>,
    router: Vec<usize>,
    load: Vec<usize>,
}

impl Cores {
    /// Splits the CPUs this process may use: a quarter for the node, a quarter (at most 4,
    /// the router's default worker count) for the router, the rest for the load generator.
    fn split() -> anyhow::Result<Self> {
        let cpus = allowed_cpus()?;
        let quarter = cpus.len() / 4;
        anyhow::ensure!(
            quarter >= 1,
            "--pin needs at least 4 CPUs (this process may use {})",
            cpus.len()
        );
        let router_end = quarter + quarter.min(4);
        Ok(Self {
            node: cpus[..quarter].to_vec(),
            router: cpus[quarter..router_end].to_vec(),
            load: cpus[router_end..].to_vec(),
        })
    }
}

/// The CPUs the scheduler may run this process on.
#[cfg(target_os = "linux")]
fn allowed_cpus() -> anyhow::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is a plain bit set (all zero = empty); the call writes at most
    // size_of::<cpu_set_t>() bytes into it, and CPU_ISSET only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
        }
        let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
        Ok((0..max).filter(|&cpu| libc::CPU_ISSET(cpu, &set)).collect())
    }
}

/// Restricts this process (its current thread and every thread it starts later) to `cpus`.
#[cfg(target_os = "linux")]
fn pin(cpus: &[usize]) -> anyhow::Result<()> {
    // SAFETY: as in `allowed_cpus`; CPU_SET writes only inside the set (cpu < its size is
    // checked first), and sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
        for &cpu in cpus {
            anyhow::ensure!(cpu < max, "CPU {cpu} out of range");
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "sched_setaffinity {cpus:?}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn allowed_cpus() -> anyhow::Result<Vec<usize>> {
    bail!("--pin needs Linux")
}

#[cfg(not(target_os = "linux"))]
fn pin(_cpus: &[usize]) -> anyhow::Result<()> {
    bail!("--pin needs Linux")
}
