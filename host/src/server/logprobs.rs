//! Per-token logprobs in each dialect's shape, and the one check of how many alternatives a
//! request may ask for. The numbers come from the engine's stream ([`TokenLogprobs`]); the
//! dialects differ only in layout:
//! - OpenAI chat and Ollama: `[{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]`
//! - OpenAI completions: `{tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}`
//! - llama-server (`n_probs`): `[{id, token, logprob, bytes, top_logprobs: [{id, …}]}]`

use super::error::ApiError;
use crate::engine::{TokenLogprob, TokenLogprobs};
use llmlocal_plugin_api::MAX_TOP_LOGPROBS;
use serde_json::{json, Map, Value};

/// How many alternatives a request field (`top_logprobs`, `logprobs`, `n_probs`) asks for:
/// 0 to 20 (OpenAI's limit, and the backend contract's), else a 400 naming the field.
pub fn top_count(field: &str, value: i64) -> Result<u32, ApiError> {
    u32::try_from(value)
        .ok()
        .filter(|&n| n <= MAX_TOP_LOGPROBS)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{field} must be an integer from 0 to {MAX_TOP_LOGPROBS}, got {value}"
            ))
        })
}

/// An integer field's value, or a 400 naming the field.
fn integer(field: &str, value: &Value) -> Result<i64, ApiError> {
    value.as_i64().ok_or_else(|| {
        ApiError::bad_request(format!(
            "{field} must be an integer from 0 to 20, got {value}"
        ))
    })
}

/// What an OpenAI request asks for. Chat: `logprobs: true` with `top_logprobs: 0..=20`
/// alternatives (`top_logprobs` without `logprobs: true` is a 400, as OpenAI answers).
/// Completions: `logprobs: 0..=20` alternatives.
pub fn openai_request(
    chat: bool,
    logprobs: Option<&Value>,
    top_logprobs: Option<&Value>,
) -> Result<Option<u32>, ApiError> {
    let logprobs = logprobs.filter(|v| !v.is_null());
    let top_logprobs = top_logprobs.filter(|v| !v.is_null());
    if !chat {
        if top_logprobs.is_some() {
            return Err(ApiError::bad_request(
                "top_logprobs is a chat field: completions take `logprobs: N` (0 to 20)",
            ));
        }
        return match logprobs {
            None => Ok(None),
            Some(v) => top_count("logprobs", integer("logprobs", v)?).map(Some),
        };
    }
    let asked = match logprobs {
        None | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "logprobs must be true or false on chat completions, got {other} (the number \
                 of alternatives goes in top_logprobs)"
            )))
        }
    };
    let top = match top_logprobs {
        None => 0,
        Some(v) => top_count("top_logprobs", integer("top_logprobs", v)?)?,
    };
    match (asked, top_logprobs.is_some()) {
        (true, _) => Ok(Some(top)),
        (false, true) => Err(ApiError::bad_request("top_logprobs needs logprobs: true")),
        (false, false) => Ok(None),
    }
}

fn token(t: &TokenLogprob) -> Value {
    json!({ "token": t.token, "logprob": t.logprob, "bytes": t.bytes })
}

/// One token as OpenAI chat and Ollama write it.
fn entry(t: &TokenLogprobs) -> Value {
    let mut value = token(&t.chosen);
    value["top_logprobs"] = t.top.iter().map(token).collect();
    value
}

/// OpenAI chat's `choices[].logprobs`.
pub fn openai_chat(tokens: &[TokenLogprobs]) -> Value {
    json!({ "content": tokens.iter().map(entry).collect::<Vec<_>>(), "refusal": null })
}

/// Ollama's `logprobs` (chat and generate).
pub fn ollama(tokens: &[TokenLogprobs]) -> Value {
    tokens.iter().map(entry).collect()
}

/// llama-server's `completion_probabilities` (its `n_probs` shape since late 2024).
pub fn llama_server(tokens: &[TokenLogprobs]) -> Value {
    let with_id = |t: &TokenLogprob| {
        let mut value = token(t);
        value["id"] = json!(t.id);
        value
    };
    tokens
        .iter()
        .map(|t| {
            let mut value = with_id(&t.chosen);
            value["top_logprobs"] = t.top.iter().map(with_id).collect();
            value
        })
        .collect()
}

/// OpenAI completions' `choices[].logprobs`. `offset`: characters of completion text before
/// these tokens (streamed chunks continue where the last one ended); advanced past them.
pub fn openai_completion(tokens: &[TokenLogprobs], offset: &mut usize) -> Value {
    let mut text_offset = Vec::with_capacity(tokens.len());
    for t in tokens {
        text_offset.push(*offset);
        *offset += t.chosen.token.chars().count();
    }
    let top: Vec<Value> = tokens
        .iter()
        .map(|t| {
            // A map by token text: two ids with the same text keep the likelier one.
            let mut map = Map::new();
            for alt in &t.top {
                map.entry(alt.token.clone()).or_insert(json!(alt.logprob));
            }
            Value::Object(map)
        })
        .collect();
    json!({
        "tokens": tokens.iter().map(|t| t.chosen.token.as_str()).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| t.chosen.logprob).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": text_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(id: u32, text: &str, logprob: f32) -> TokenLogprob {
        TokenLogprob {
            id,
            token: text.into(),
            bytes: text.as_bytes().to_vec(),
            logprob,
        }
    }

    #[test]
    fn completion_offsets_continue_and_tops_are_maps() {
        let tokens = vec![
            TokenLogprobs {
                chosen: tok(1, "hé", -0.5),
                top: vec![tok(1, "hé", -0.5), tok(2, "x", -1.0), tok(3, "x", -2.0)],
            },
            TokenLogprobs {
                chosen: tok(4, "!", -0.25),
                top: vec![],
            },
        ];
        let mut offset = 3;
        let value = openai_completion(&tokens, &mut offset);
        assert_eq!(value["text_offset"], json!([3, 5]));
        assert_eq!(offset, 6);
        assert_eq!(value["tokens"], json!(["hé", "!"]));
        assert_eq!(value["top_logprobs"][0], json!({"hé": -0.5, "x": -1.0}));
        let chat = openai_chat(&tokens);
        assert_eq!(chat["content"][0]["bytes"], json!([104, 195, 169]));
        assert_eq!(llama_server(&tokens)[0]["top_logprobs"][1]["id"], json!(2));
    }

    #[test]
    fn counts_over_twenty_name_the_field() {
        assert_eq!(top_count("n_probs", 20).ok(), Some(20));
        let err = top_count("top_logprobs", 21).unwrap_err();
        assert!(err.message.contains("top_logprobs") && err.message.contains("21"));
        assert!(top_count("logprobs", -1).is_err());
    }
}
