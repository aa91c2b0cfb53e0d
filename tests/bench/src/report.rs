//! The backend benchmark's results (llama.cpp direct vs the plugin through the host, each in
//! its own child process per round): a table on stdout and the same as JSON.

use crate::{
    child::{Measured, Spread},
    Setup,
};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub setup: Setup,
    /// Recorded runs of each kind per child (its median is the round's value).
    pub runs_per_child: usize,
    pub direct: Measured,
    pub plugin: Measured,
    /// plugin / direct, per round.
    pub prompt_ratio: Spread,
    pub gen_ratio: Spread,
    /// Aggregate generation tokens/s through the plugin with 1 and `setup.parallel` generations.
    pub aggregate_single_tps: f64,
    pub aggregate_parallel_tps: f64,
    pub parallel_factor: f64,
}

impl Report {
    pub fn new(
        setup: Setup,
        runs_per_child: usize,
        direct: Measured,
        plugin: Measured,
        (single, parallel): (f64, f64),
    ) -> Self {
        Report {
            prompt_ratio: direct.ratio_to(&plugin, |o| &o.pp_runs),
            gen_ratio: direct.ratio_to(&plugin, |o| &o.tg_runs),
            parallel_factor: if single > 0.0 { parallel / single } else { 0.0 },
            setup,
            runs_per_child,
            direct,
            plugin,
            aggregate_single_tps: single,
            aggregate_parallel_tps: parallel,
        }
    }

    pub fn table(&self) -> String {
        let s = &self.setup;
        let (fewest, most) = (
            self.direct.tg_tokens.0.min(self.plugin.tg_tokens.0),
            self.direct.tg_tokens.1.max(self.plugin.tg_tokens.1),
        );
        let mut out = format!(
            "model {} | threads {} | batch {} | prompt {} tokens | generate {} tokens (counted: \
             {fewest}..={most}) | {} interleaved rounds, each path in a fresh process, {} runs \
             per process | median [min–max] over rounds\n\n",
            s.model.display(),
            s.threads,
            s.batch_size,
            s.prompt_tokens,
            s.gen_tokens,
            s.repeat,
            self.runs_per_child
        );
        out += &format!(
            "{:<34} {:>26} {:>26}\n",
            "path", "prompt tok/s", "gen tok/s"
        );
        let row = |name: &str, m: &Measured| {
            format!("{name:<34} {:>26} {:>26}\n", m.pp.show(1), m.tg.show(1))
        };
        out += &row("llama.cpp direct (llama-cpp-2)", &self.direct);
        out += &row("llmlocal host -> llama-cpp plugin", &self.plugin);
        out += &format!(
            "{:<34} {:>26} {:>26}\n\n",
            "ratio plugin / direct, per round",
            self.prompt_ratio.show(3),
            self.gen_ratio.show(3)
        );
        out += &format!(
            "aggregate generation through the plugin (own process): 1 generation {:.1} tok/s, \
             {} parallel {:.1} tok/s, factor {:.2}\n",
            self.aggregate_single_tps,
            s.parallel,
            self.aggregate_parallel_tps,
            self.parallel_factor
        );
        out
    }
}
