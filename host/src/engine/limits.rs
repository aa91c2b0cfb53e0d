//! Bounds on the lists one request may carry, checked before any work is queued: every API
//! dialect reaches the engine through [`check`], so each limit is a 400 naming it, the same
//! everywhere. The body-size limit bounds bytes; these bound the work a list causes (a
//! template render per message, a LoRA load per adapter, a logit write per bias per token).

use super::{request::Prompt, stop, GenerationConfig};

/// Messages in one chat (a long agent session stays far below; each is templated).
pub const MAX_MESSAGES: usize = 4096;
/// LoRA adapters named by one request (each may be a download and a load).
pub const MAX_ADAPTERS: usize = 8;
/// `logit_bias` entries in one request (applied to the logits at every token).
pub const MAX_LOGIT_BIAS: usize = 1024;

/// `Err(message)` naming the first list over its limit.
pub fn check(prompt: &Prompt, config: &GenerationConfig) -> Result<(), String> {
    if let Prompt::Chat(messages) = prompt {
        over("messages", messages.len(), MAX_MESSAGES)?;
    }
    if let Some(adapters) = &config.adapters {
        over("adapters", adapters.len(), MAX_ADAPTERS)?;
    }
    over("logit_bias", config.logit_bias.len(), MAX_LOGIT_BIAS)?;
    stop::check_stop_limits(&config.stop)
}

fn over(what: &str, count: usize, max: usize) -> Result<(), String> {
    if count > max {
        return Err(format!(
            "{what}: at most {max} entries are allowed in one request, got {count}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ChatMessage;

    fn chat(n: usize) -> Prompt {
        Prompt::Chat(vec![ChatMessage::new("user", "hi"); n])
    }

    #[test]
    fn each_list_is_refused_one_over_its_limit_and_named() {
        let config = GenerationConfig::default();
        assert!(check(&chat(MAX_MESSAGES), &config).is_ok());
        let err = check(&chat(MAX_MESSAGES + 1), &config).unwrap_err();
        assert!(err.contains("messages") && err.contains("4096"), "{err}");

        let mut config = GenerationConfig {
            adapters: Some(vec!["a.safetensors".into(); MAX_ADAPTERS]),
            logit_bias: vec![(1, 1.0); MAX_LOGIT_BIAS],
            ..GenerationConfig::default()
        };
        let text = Prompt::Text("x".into());
        assert!(check(&text, &config).is_ok());
        config.adapters = Some(vec!["a.safetensors".into(); MAX_ADAPTERS + 1]);
        assert!(check(&text, &config).unwrap_err().contains("adapters"));
        config.adapters = None;
        config.logit_bias.push((2, 1.0));
        assert!(check(&text, &config).unwrap_err().contains("logit_bias"));
        config.logit_bias.clear();
        config.stop = vec!["s".into(); stop::MAX_STOPS + 1];
        assert!(check(&text, &config).unwrap_err().contains("stop"));
    }
}
