//! The benchmark's results: a table on stdout and the same as JSON.

use crate::{Setup, Speed};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub setup: Setup,
    pub direct: Speed,
    pub plugin: Speed,
    /// plugin / direct.
    pub prompt_ratio: f64,
    pub gen_ratio: f64,
    /// Aggregate generation tokens/s through the plugin with 1 and `setup.parallel` generations.
    pub aggregate_single_tps: f64,
    pub aggregate_parallel_tps: f64,
    pub parallel_factor: f64,
}

impl Report {
    pub fn new(setup: Setup, direct: Speed, plugin: Speed, single: f64, parallel: f64) -> Self {
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        Report {
            prompt_ratio: ratio(plugin.prompt_tps, direct.prompt_tps),
            gen_ratio: ratio(plugin.gen_tps, direct.gen_tps),
            parallel_factor: ratio(parallel, single),
            setup,
            direct,
            plugin,
            aggregate_single_tps: single,
            aggregate_parallel_tps: parallel,
        }
    }

    pub fn table(&self) -> String {
        let s = &self.setup;
        let mut out = format!(
            "model {} | threads {} | batch {} | prompt {} tokens | generate {} tokens | best of {}\n\n",
            s.model.display(),
            s.threads,
            s.batch_size,
            s.prompt_tokens,
            s.gen_tokens,
            s.repeat
        );
        out += &format!(
            "{:<34} {:>14} {:>14}\n",
            "path", "prompt tok/s", "gen tok/s"
        );
        out += &format!(
            "{:<34} {:>14.1} {:>14.1}\n",
            "llama.cpp direct (llama-cpp-2)", self.direct.prompt_tps, self.direct.gen_tps
        );
        out += &format!(
            "{:<34} {:>14.1} {:>14.1}\n",
            "llmlocal host -> llama-cpp plugin", self.plugin.prompt_tps, self.plugin.gen_tps
        );
        out += &format!(
            "{:<34} {:>14.3} {:>14.3}\n\n",
            "ratio plugin / direct", self.prompt_ratio, self.gen_ratio
        );
        out += &format!(
            "aggregate generation through the plugin: 1 generation {:.1} tok/s, {} parallel \
             {:.1} tok/s, factor {:.2}\n",
            self.aggregate_single_tps,
            s.parallel,
            self.aggregate_parallel_tps,
            self.parallel_factor
        );
        out
    }
}
