//! Chat-template overrides: llama-server's `--chat-template NAME_OR_JINJA` and
//! `--chat-template-file PATH`, and the `chat_template` / `chat_template_file` config keys.
//!
//! A value is a built-in template name (the llama.cpp names we can honour, below) or a Jinja
//! template. The override replaces the model's own template for every chat route and
//! `/apply-template`. Built-ins carry their end-of-turn marker as a stop sequence, so a
//! model whose end-of-generation token differs still stops at the end of its turn.

use super::template::{ChatTemplate, CHATML_STOP, CHATML_TEMPLATE};
use std::path::Path;

/// A built-in template: its llama.cpp name, Jinja source and end-of-turn stops.
struct Builtin {
    name: &'static str,
    source: &'static str,
    stops: &'static [&'static str],
}

/// llama.cpp's `llama2`: the system prompt inside the first `[INST]`.
const LLAMA2: &str = "{% set has_sys = messages|length > 0 and messages[0]['role'] == 'system' %}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' }}{% if has_sys and loop.index == 2 %}{{ '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' }}{% endif %}{{ m['content'] + ' [/INST]' }}{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}";

const LLAMA3: &str = "{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

/// llama.cpp's `gemma`: no system role, so the system prompt opens the first user turn.
const GEMMA: &str = "{% set has_sys = messages|length > 0 and messages[0]['role'] == 'system' %}{% for m in messages %}{% if not (loop.first and has_sys) %}{% set role = 'model' if m['role'] == 'assistant' else 'user' %}{% set prefix = messages[0]['content'] + '\\n\\n' if has_sys and loop.index == 2 else '' %}{{ '<start_of_turn>' + role + '\\n' + prefix + m['content'] | trim + '<end_of_turn>\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}";

const PHI3: &str = "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}";

const MISTRAL_V7: &str = "{% for m in messages %}{% if m['role'] == 'system' %}{{ '[SYSTEM_PROMPT] ' + m['content'] + '[/SYSTEM_PROMPT]' }}{% elif m['role'] == 'user' %}{{ '[INST] ' + m['content'] + '[/INST]' }}{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}";

const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "chatml",
        source: CHATML_TEMPLATE,
        stops: &[CHATML_STOP],
    },
    Builtin {
        name: "llama2",
        source: LLAMA2,
        stops: &[],
    },
    Builtin {
        name: "llama3",
        source: LLAMA3,
        stops: &["<|eot_id|>"],
    },
    Builtin {
        name: "gemma",
        source: GEMMA,
        stops: &["<end_of_turn>"],
    },
    Builtin {
        name: "phi3",
        source: PHI3,
        stops: &["<|end|>"],
    },
    Builtin {
        name: "mistral-v7",
        source: MISTRAL_V7,
        stops: &[],
    },
];

/// The built-in names, for messages and the README.
pub fn builtin_names() -> Vec<&'static str> {
    BUILTINS.iter().map(|b| b.name).collect()
}

/// Compiles an override for a model with these special-token texts: a built-in name, else
/// the value as a Jinja template. The error says which it was taken for and why it fails.
pub fn compile(value: &str, bos: &str, eos: &str) -> Result<ChatTemplate, String> {
    if let Some(builtin) = BUILTINS.iter().find(|b| b.name == value.trim()) {
        let stops = builtin.stops.iter().map(|s| s.to_string()).collect();
        return ChatTemplate::with_stops(builtin.source, bos, eos, stops);
    }
    if !value.contains("{{") && !value.contains("{%") {
        return Err(format!(
            "`{value}` is neither a built-in template ({}) nor a Jinja template",
            builtin_names().join(", ")
        ));
    }
    ChatTemplate::new(value, bos, eos)
        .map_err(|err| format!("the Jinja template does not compile: {err}"))
}

/// Checks an override at startup (with empty special tokens, which templates only print).
pub fn check(value: &str) -> Result<(), String> {
    compile(value, "", "").map(drop)
}

/// Reads and checks a `--chat-template-file` / `chat_template_file`: its text is the
/// template (a built-in name in a file is taken as a name too, as llama-server does).
pub fn read_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    check(&text).map_err(|err| format!("{}: {err}", path.display()))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ChatMessage;

    fn chat() -> Vec<ChatMessage> {
        vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi"),
            ChatMessage::new("assistant", "Hello."),
            ChatMessage::new("user", "Bye"),
        ]
    }

    #[test]
    fn every_builtin_compiles_and_renders_its_format() {
        let render = |name: &str| {
            compile(name, "<s>", "</s>")
                .expect("compiles")
                .render(&chat(), true)
                .expect("renders")
        };
        assert!(render("chatml").starts_with("<|im_start|>system\nBe brief.<|im_end|>"));
        assert_eq!(
            render("llama2"),
            "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello.</s>[INST] Bye [/INST]"
        );
        assert!(render("llama3").ends_with(
            "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        ));
        assert_eq!(
            render("gemma"),
            "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
        );
        assert!(render("phi3").ends_with("<|user|>\nBye<|end|>\n<|assistant|>\n"));
        assert_eq!(
            render("mistral-v7"),
            "[SYSTEM_PROMPT] Be brief.[/SYSTEM_PROMPT][INST] Hi[/INST] Hello.</s>[INST] Bye[/INST]"
        );
        let llama3 = compile("llama3", "", "").expect("compiles");
        assert_eq!(llama3.stop_sequences(), vec!["<|eot_id|>".to_string()]);
    }

    #[test]
    fn jinja_is_taken_as_is_and_anything_else_is_named() {
        let t =
            compile("{% for m in messages %}<{{ m.role }}>{% endfor %}", "", "").expect("compiles");
        assert_eq!(
            t.render(&chat(), true).expect("renders"),
            "<system><user><assistant><user>"
        );
        let err = check("chatml2").expect_err("unknown name");
        assert!(err.contains("chatml2") && err.contains("llama3"), "{err}");
        let err = check("{% for %}").expect_err("bad Jinja");
        assert!(err.contains("does not compile"), "{err}");
    }
}
