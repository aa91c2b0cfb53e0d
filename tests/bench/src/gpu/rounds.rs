//! The interleaved comparison of direct llama.cpp, the in-process plugin and HTTP: one run of
//! each path after the other, so that all three see the same GPU state.
//!
//! The H100's prompt speed moved in steps of ~10 % from one second to the next (the same
//! process ran pp512 at 72k tok/s in one block of runs and 79k in the next), so paths measured
//! in blocks of their own, seconds apart, differed by more than the 3 % being looked for.
//! Here each round warms every path up, then makes `repeat` prompt-only runs of each path in
//! turn, then `repeat` generation runs in turn; the order turns with every run.

use super::{
    direct_process::DirectProcess,
    plugin::{self, Kind, Runs},
    HttpSeries, ModelJob, Server,
};
use crate::Speed;
use llmlocal::plugins::LoadedModel;
use std::time::Instant;

/// The paths measured in the rounds.
#[derive(Debug, Clone, Copy)]
pub enum Part {
    Direct,
    Plugin,
    HttpIds,
    /// `direct-bench http`: the same client against the thinnest HTTP front end (`--http-floor`).
    HttpFloor,
}

const PARTS: [Part; 4] = [Part::Direct, Part::Plugin, Part::HttpIds, Part::HttpFloor];

/// What the rounds measured: per path, the speeds of its runs; HTTP keeps its series (with
/// the server's own timings).
pub struct Measured<'a> {
    pub direct: Option<Speed>,
    pub plugin: Speed,
    pub http_ids: Option<HttpSeries<'a>>,
    pub http_floor: Option<HttpSeries<'a>>,
}

/// The paths, each run one measurement at a time.
struct Lanes<'a> {
    model: &'a LoadedModel,
    job: &'a ModelJob<'a>,
    prompt: &'a [u32],
    direct: Option<DirectProcess>,
    direct_runs: Runs,
    plugin_runs: Runs,
    http: Option<HttpSeries<'a>>,
    floor: Option<HttpSeries<'a>>,
}

/// `job.rounds` rounds over the paths (see the module doc). A direct or HTTP failure drops
/// that path (reported on stderr); a plugin failure ends the measurement. `floor`: the
/// `direct-bench http` server, when `--http-floor` asked for it.
pub fn rounds<'a>(
    job: &'a ModelJob<'a>,
    model: &'a LoadedModel,
    server: Option<&'a mut Server>,
    floor: Option<&'a mut Server>,
    prompt: &'a [u32],
) -> anyhow::Result<Measured<'a>> {
    let setup = &job.setup;
    // The first generation of a context pays first-use costs (cuBLAS handles, CUDA graphs):
    // each path makes one unmeasured run of prompt + generation first.
    plugin::speed(model, setup, prompt, Kind::Generation)?;
    let series = |server: &'a mut Server, what: &str| {
        HttpSeries::start(server, &serde_json::json!(prompt), setup)
            .map_err(|e| eprintln!("{what}: {e:#}"))
            .ok()
    };
    let http = server.and_then(|server| series(server, "HTTP (token-id prompt)"));
    let floor = floor.and_then(|server| series(server, "HTTP floor"));
    let direct = job.direct_bench.and_then(|exe| {
        DirectProcess::start(exe, setup)
            .and_then(|mut direct| direct.run(Kind::Generation).map(|_| direct))
            .map_err(|e| eprintln!("direct-bench: {e:#}"))
            .ok()
    });
    let mut lanes = Lanes {
        model,
        job,
        prompt,
        direct,
        direct_runs: Runs::default(),
        plugin_runs: Runs::default(),
        http,
        floor,
    };
    for round in 0..job.rounds {
        eprintln!("{}: round {}/{} ...", job.label, round + 1, job.rounds);
        lanes.round(round)?;
    }
    Ok(Measured {
        direct: lanes.direct.is_some().then(|| lanes.direct_runs.speed()),
        plugin: lanes.plugin_runs.speed(),
        http_ids: lanes.http,
        http_floor: lanes.floor,
    })
}

impl Lanes<'_> {
    /// Warm-up prompt passes on every path, then the prompt-only runs and the generation runs,
    /// one run of each path in turn.
    fn round(&mut self, round: usize) -> anyhow::Result<()> {
        let repeat = self.job.setup.repeat;
        let parts: Vec<Part> = PARTS.into_iter().filter(|&p| self.has(p)).collect();
        for &part in &parts {
            let until = Instant::now() + plugin::WARM_UP / parts.len() as u32;
            while Instant::now() < until && self.has(part) {
                self.run(part, Kind::Prompt, false)?;
            }
        }
        for kind in [Kind::Prompt, Kind::Generation] {
            for i in 0..repeat {
                for k in 0..parts.len() {
                    let part = parts[(round * repeat + i + k) % parts.len()];
                    self.run(part, kind, true)?;
                }
            }
        }
        Ok(())
    }

    /// Whether `part` is still measured (direct and HTTP drop out after a failure).
    fn has(&self, part: Part) -> bool {
        match part {
            Part::Direct => self.direct.is_some(),
            Part::Plugin => true,
            Part::HttpIds => self.http.is_some(),
            Part::HttpFloor => self.floor.is_some(),
        }
    }

    /// One run of `part`, kept when `record`.
    fn run(&mut self, part: Part, kind: Kind, record: bool) -> anyhow::Result<()> {
        match part {
            Part::Direct => {
                let Some(direct) = self.direct.as_mut() else {
                    return Ok(());
                };
                match direct.run(kind) {
                    Ok(tps) if record => self.direct_runs.push(kind, tps),
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("direct-bench: {e:#}");
                        self.direct = None;
                    }
                }
            }
            Part::Plugin => {
                let tps = plugin::speed(self.model, &self.job.setup, self.prompt, kind)?;
                if record {
                    self.plugin_runs.push(kind, tps);
                }
            }
            Part::HttpIds => run_http(&mut self.http, kind, record, "HTTP (token-id prompt)"),
            Part::HttpFloor => run_http(&mut self.floor, kind, record, "HTTP floor"),
        }
        Ok(())
    }
}

/// One run of an HTTP lane; a failure is reported and drops the lane.
fn run_http(lane: &mut Option<HttpSeries<'_>>, kind: Kind, record: bool, what: &str) {
    let Some(series) = lane.as_mut() else {
        return;
    };
    if let Err(e) = series.run(kind, record) {
        eprintln!("{what}: {e:#}");
        *lane = None;
    }
}
