//! `llmlocal presets`: the curated model names `pull`, `run` and `serve --model` accept.

use crate::models::{Preset, PresetSource, PRESETS, PRESETS_VERSION};
use std::fmt::Write as _;

#[derive(Debug, clap::Args)]
pub struct PresetsArgs {
    /// Print the table as JSON (`{"version": N, "presets": [...]}`) instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &PresetsArgs) -> anyhow::Result<()> {
    let text = if args.json {
        let doc = serde_json::json!({ "version": PRESETS_VERSION, "presets": PRESETS });
        serde_json::to_string_pretty(&doc)? + "\n"
    } else {
        table(PRESETS)
    };
    // write_all, not print!: a closed pipe (`| head`) is an error to report, not a panic.
    std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes())?;
    Ok(())
}

/// The text table: one row per preset, then how to use one.
pub fn table(presets: &[Preset]) -> String {
    let header = ["NAME", "BACKEND", "TEMPLATE", "CONTEXT", "KIND", "FILES"];
    let rows: Vec<[String; 6]> = presets.iter().map(row).collect();
    let mut out = super::table::aligned(header, &rows);
    let _ = writeln!(
        out,
        "\npreset table v{PRESETS_VERSION}. Use a name with `llmlocal pull NAME`, `llmlocal run NAME \"prompt\"` \
         or `llmlocal serve --model NAME`;\nNAME-QUANT (e.g. `llama3.2:1b-q8_0`) picks another listed quantization. \
         `--json` adds each entry's model card."
    );
    out
}

fn row(p: &Preset) -> [String; 6] {
    let kind = match (p.embedding, p.tools) {
        (true, _) => "embedding",
        (false, true) => "chat+tools",
        (false, false) => "chat",
    };
    let files = match &p.source {
        PresetSource::Embedded { file } => format!("built in ({file})"),
        PresetSource::Hub {
            repo,
            default_quant,
            quants,
        } => {
            let tags: Vec<String> = quants
                .iter()
                .map(|(q, _)| {
                    if q == default_quant {
                        format!("{q}*")
                    } else {
                        q.to_string()
                    }
                })
                .collect();
            format!("{repo} [{}]", tags.join(" "))
        }
    };
    [
        p.name.to_string(),
        p.backend.to_string(),
        p.template.to_string(),
        p.context_length.to_string(),
        kind.to_string(),
        files,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_a_row_and_the_default_quant_is_marked() {
        let text = table(PRESETS);
        for p in PRESETS {
            assert!(text.contains(p.name), "{} listed:\n{text}", p.name);
        }
        assert!(text.contains("Qwen/Qwen3-0.6B-GGUF [Q8_0*]"), "{text}");
        assert!(text.contains("built in (stories260K.gguf)"), "{text}");
        assert!(crate::models::presets::find("stories").is_some());
    }
}
