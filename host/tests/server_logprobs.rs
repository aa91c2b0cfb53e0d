//! Per-token logprobs over HTTP in every dialect: OpenAI chat (`logprobs`/`top_logprobs`)
//! and completions (`logprobs: N`), Ollama (`logprobs`/`top_logprobs`), llama-server
//! (`n_probs`), streamed and not.
//!
//! The numbers are checked against an independent reference: stories260K's logits taken
//! straight from the llama.cpp plugin (`Model::logits`, another code path than generation)
//! and put through a log-softmax here, within 1e-3. Alignment with stop sequences runs on
//! the `wrong-logprobs` test backend (scripted bytes, one token per character, a logprob on
//! every token): the tokens reported must spell exactly the text sent, never the stop.

mod server_support;

use llmlocal::{engine::Engine, plugins::LoadRequest, server::ServerSettings};
use serde_json::{json, Value};
use server_support::{
    llama_cpp_settings, parse_ndjson, parse_sse, post, registry, scripted_settings, TestServer,
};
use std::path::{Path, PathBuf};

fn stories_gguf() -> Option<PathBuf> {
    llmlocal_fixtures::shared::model("stories260K/stories260K.gguf")
}

async fn ok(server: &TestServer, path: &str, body: Value) -> String {
    let (status, text) = post(server, path, body).await;
    assert_eq!(status, 200, "{path}: {text}");
    text
}

async fn ok_json(server: &TestServer, path: &str, body: Value) -> Value {
    serde_json::from_str(&ok(server, path, body).await).expect("JSON answer")
}

fn f(value: &Value) -> f64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("not a number: {value}"))
}

/// log-softmax in f64, the reference.
fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits.iter().map(|&l| l as f64 - max - sum.ln()).collect()
}

/// The properties every top list has: sorted, <= 0, its probabilities sum to <= 1, and a
/// greedy token is the top one.
fn check_entry(entry: &Value, greedy: bool) {
    let chosen = f(&entry["logprob"]);
    assert!(chosen <= 0.0, "a logprob is <= 0: {entry}");
    let tops: Vec<f64> = entry["top_logprobs"]
        .as_array()
        .expect("top_logprobs")
        .iter()
        .map(|t| f(&t["logprob"]))
        .collect();
    assert!(tops.windows(2).all(|w| w[0] >= w[1]), "sorted: {tops:?}");
    assert!(tops.iter().all(|&t| t <= 0.0), "{tops:?}");
    let mass: f64 = tops.iter().map(|t| t.exp()).sum();
    assert!(mass <= 1.0 + 1e-4, "probabilities sum to {mass}");
    if greedy {
        assert!((chosen - tops[0]).abs() < 1e-6, "greedy = the max: {entry}");
        assert_eq!(entry["token"], entry["top_logprobs"][0]["token"], "{entry}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stories260k_logprobs_match_the_plugins_own_logits_in_every_dialect() {
    let Some(path) = stories_gguf() else { return };
    let settings = llama_cpp_settings("story", &path);
    let registry = registry(&["llama_cpp"]);
    let engine = Engine::new(settings, registry.clone(), None);
    let server = TestServer::start(engine, ServerSettings::default()).await;
    let prompt = "Once upon a time, there was a little";

    // llama-server: ids and numbers for the first token.
    let native = ok_json(
        &server,
        "/completion",
        json!({"prompt": prompt, "n_predict": 4, "temperature": 0, "n_probs": 5,
               "cache_prompt": false}),
    )
    .await;
    let probs = native["completion_probabilities"]
        .as_array()
        .expect("completion_probabilities");
    assert_eq!(probs.len(), 4, "{native}");
    probs.iter().for_each(|e| check_entry(e, true));

    // The reference: the prompt's logits from the plugin, log-softmaxed here.
    let tokens = ok_json(
        &server,
        "/tokenize",
        json!({"content": prompt, "add_special": true}),
    )
    .await;
    let ids: Vec<u32> = tokens["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|v| v.as_u64().expect("id") as u32)
        .collect();
    let backend = registry.backend("llama-cpp").expect("llama-cpp");
    let model = backend
        .load_model(LoadRequest {
            context_length: 256,
            ..LoadRequest::new(path.to_string_lossy())
        })
        .expect("load");
    let reference = log_softmax(&model.logits(&ids).expect("logits"));
    let first = &probs[0];
    let id = first["id"].as_u64().expect("id") as usize;
    assert!(
        (f(&first["logprob"]) - reference[id]).abs() < 1e-3,
        "{first}"
    );
    for alt in first["top_logprobs"].as_array().expect("tops") {
        let alt_id = alt["id"].as_u64().expect("id") as usize;
        assert!(
            (f(&alt["logprob"]) - reference[alt_id]).abs() < 1e-3,
            "{alt} vs {}",
            reference[alt_id]
        );
    }
    let mut best: Vec<usize> = (0..reference.len()).collect();
    best.sort_by(|&a, &b| reference[b].total_cmp(&reference[a]));
    let top_ids: Vec<usize> = first["top_logprobs"]
        .as_array()
        .expect("tops")
        .iter()
        .map(|t| t["id"].as_u64().expect("id") as usize)
        .collect();
    assert_eq!(top_ids, best[..5], "the 5 most likely tokens");

    // OpenAI completions, the same prompt and numbers.
    let completion = ok_json(
        &server,
        "/v1/completions",
        json!({"model": "story", "prompt": prompt, "max_tokens": 4, "temperature": 0,
               "logprobs": 5}),
    )
    .await;
    let lp = &completion["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().map(Vec::len), Some(4), "{lp}");
    assert!(
        (f(&lp["token_logprobs"][0]) - reference[id]).abs() < 1e-3,
        "{lp}"
    );
    let text = completion["choices"][0]["text"].as_str().expect("text");
    let joined: String = lp["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_str().expect("token"))
        .collect();
    assert_eq!(joined, text, "the tokens spell the text");
    assert_eq!(lp["text_offset"][0], 0);
    assert_eq!(lp["top_logprobs"][0].as_object().map(|m| m.len()), Some(5));

    // OpenAI chat, streamed and not: the same entries both ways.
    let chat = json!({"model": "story", "messages": [{"role": "user", "content": prompt}],
                      "max_tokens": 6, "temperature": 0, "logprobs": true, "top_logprobs": 3});
    let whole = ok_json(&server, "/v1/chat/completions", chat.clone()).await;
    let content = whole["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("logprobs.content")
        .clone();
    assert!(!content.is_empty(), "{whole}");
    content.iter().for_each(|e| {
        check_entry(e, true);
        assert_eq!(e["top_logprobs"].as_array().map(Vec::len), Some(3));
    });
    let mut streamed_body = chat;
    streamed_body["stream"] = json!(true);
    let (events, done) = parse_sse(&ok(&server, "/v1/chat/completions", streamed_body).await);
    assert!(done);
    let streamed: Vec<Value> = events
        .iter()
        .filter_map(|e| e["choices"][0]["logprobs"]["content"].as_array())
        .flatten()
        .cloned()
        .collect();
    same_entries(&streamed, &content);

    // Ollama, non-streamed and streamed.
    let ollama = json!({"model": "story", "prompt": prompt, "raw": true, "stream": false,
                        "logprobs": true, "top_logprobs": 2,
                        "options": {"temperature": 0, "num_predict": 4}});
    let answer = ok_json(&server, "/api/generate", ollama.clone()).await;
    let entries = answer["logprobs"].as_array().expect("logprobs").clone();
    assert_eq!(entries.len(), 4, "{answer}");
    entries.iter().for_each(|e| check_entry(e, true));
    assert!((f(&entries[0]["logprob"]) - reference[id]).abs() < 1e-3);
    let mut ollama_stream = ollama;
    ollama_stream["stream"] = json!(true);
    let lines = parse_ndjson(&ok(&server, "/api/generate", ollama_stream).await);
    let streamed: Vec<Value> = lines
        .iter()
        .filter_map(|l| l["logprobs"].as_array())
        .flatten()
        .cloned()
        .collect();
    same_entries(&streamed, &entries);
}

/// The same tokens with the same numbers, up to float noise (a second request may reuse the
/// first one's prompt cache, which changes the last bits of the logits).
fn same_entries(got: &[Value], want: &[Value]) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g["token"], w["token"]);
        assert!(
            (f(&g["logprob"]) - f(&w["logprob"])).abs() < 1e-4,
            "{g} vs {w}"
        );
        let tokens = |e: &Value| -> Vec<Value> {
            e["top_logprobs"]
                .as_array()
                .expect("tops")
                .iter()
                .map(|t| t["token"].clone())
                .collect()
        };
        assert_eq!(tokens(g), tokens(w));
    }
}

/// A server on the `wrong-logprobs` backend (logprobs on every scripted byte token) as `lp`,
/// and plain `scripted` (no `logprobs` capability) as `plain`.
async fn scripted_server(dir: &Path, script: &str) -> TestServer {
    let mut settings = scripted_settings(dir, &[("lp", script), ("plain", script)]);
    for (model, backend) in [("lp", "wrong-logprobs"), ("plain", "scripted")] {
        if let Some(entry) = settings.models.get_mut(model) {
            entry.backend = Some(backend.into());
        }
    }
    let engine = Engine::new(settings, registry(&["scripted", "wrong_logprobs"]), None);
    TestServer::start(engine, ServerSettings::default()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_held_back_by_a_stop_sequence_are_never_reported() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = scripted_server(dir.path(), "Hello, ENDING world").await;
    let body = json!({"model": "lp", "prompt": "x", "temperature": 0, "logprobs": 0,
                      "stop": ["END"], "max_tokens": 40});
    let whole = ok_json(&server, "/v1/completions", body.clone()).await;
    let choice = &whole["choices"][0];
    assert_eq!(choice["text"], "Hello, ");
    let tokens: Vec<&str> = choice["logprobs"]["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_str().expect("token"))
        .collect();
    assert_eq!(tokens.concat(), "Hello, ", "{choice}");
    assert_eq!(
        choice["logprobs"]["text_offset"],
        json!([0, 1, 2, 3, 4, 5, 6])
    );

    // Streamed: each chunk's tokens spell that chunk's text, and the stop never shows.
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let (events, _) = parse_sse(&ok(&server, "/v1/completions", streamed).await);
    let mut text = String::new();
    let mut spelled = String::new();
    for event in &events {
        let choice = &event["choices"][0];
        text.push_str(choice["text"].as_str().unwrap_or_default());
        for token in choice["logprobs"]["tokens"]
            .as_array()
            .into_iter()
            .flatten()
        {
            spelled.push_str(token.as_str().expect("token"));
        }
    }
    assert_eq!((text.as_str(), spelled.as_str()), ("Hello, ", "Hello, "));

    // A false start ("EN" then "I"...) is let out with its tokens.
    let held = ok_json(
        &server,
        "/v1/chat/completions",
        json!({"model": "lp", "messages": [{"role": "user", "content": "x"}],
               "temperature": 0, "logprobs": true, "stop": ["ENDS"], "max_tokens": 40}),
    )
    .await;
    let content = held["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    let spelled: String = held["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("content")
        .iter()
        .map(|e| e["token"].as_str().expect("token"))
        .collect();
    assert_eq!(spelled, content);
    assert!(content.contains("ENDING"), "{content}");
}

#[tokio::test(flavor = "multi_thread")]
async fn too_many_alternatives_and_missing_capability_are_400s_naming_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = scripted_server(dir.path(), "abc").await;
    let chat = |extra: Value| {
        let mut body = json!({"model": "lp", "messages": [{"role": "user", "content": "x"}]});
        if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
            b.extend(e);
        }
        body
    };
    let cases = [
        (
            "/v1/chat/completions",
            chat(json!({"logprobs": true, "top_logprobs": 21})),
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"top_logprobs": 2})),
            "logprobs: true",
        ),
        (
            "/v1/completions",
            json!({"model": "lp", "prompt": "x", "logprobs": 21}),
            "logprobs",
        ),
        (
            "/completion",
            json!({"model": "lp", "prompt": "x", "n_probs": 21}),
            "n_probs",
        ),
        (
            "/api/generate",
            json!({"model": "lp", "prompt": "x", "logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "plain", "messages": [{"role": "user", "content": "x"}],
                   "logprobs": true}),
            "`logprobs`",
        ),
        (
            "/api/chat",
            json!({"model": "plain", "messages": [{"role": "user", "content": "x"}],
                   "logprobs": true}),
            "`logprobs`",
        ),
    ];
    for (path, body, needle) in cases {
        let (status, text) = post(&server, path, body.clone()).await;
        assert_eq!(status, 400, "{path} {body}: {text}");
        assert!(text.contains(needle), "{path}: {text} should name {needle}");
    }
    // Exactly 20 is fine.
    ok(
        &server,
        "/v1/chat/completions",
        chat(json!({"logprobs": true, "top_logprobs": 20})),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ollama_chat_reports_logprobs_per_chunk_and_the_first_openai_delta_has_null_content() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = scripted_server(dir.path(), "Hi!").await;
    let body = json!({"model": "lp", "messages": [{"role": "user", "content": "x"}],
                      "logprobs": true, "options": {"temperature": 0}});
    let lines = parse_ndjson(&ok(&server, "/api/chat", body).await);
    let spelled: String = lines
        .iter()
        .filter_map(|l| l["logprobs"].as_array())
        .flatten()
        .map(|e| e["token"].as_str().expect("token").to_string())
        .collect();
    let text: String = lines
        .iter()
        .filter_map(|l| l["message"]["content"].as_str())
        .collect();
    assert_eq!(spelled, text);
    assert_eq!(text, "Hi!");
    let first_bytes = &lines[0]["logprobs"][0]["bytes"];
    assert_eq!(first_bytes, &json!([72]), "{}", lines[0]);

    let (events, _) = parse_sse(
        &ok(
            &server,
            "/v1/chat/completions",
            json!({"model": "plain", "messages": [{"role": "user", "content": "x"}],
                   "stream": true}),
        )
        .await,
    );
    assert_eq!(
        events[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": null})
    );
}

/// The official `openai` Python client reads the logprobs (chat, streamed chat, completions)
/// and the first streamed delta with `content: null`.
const OPENAI_SCRIPT: &str = r#"
import os, sys, math, openai
oa = openai.OpenAI(base_url=os.environ["BASE_URL"] + "/v1", api_key="none", max_retries=0)
msgs = [{"role": "user", "content": "Once upon a time"}]
def check(cond, what):
    if not cond:
        raise SystemExit("FAIL: " + what)
r = oa.chat.completions.create(model="story", messages=msgs, temperature=0, max_tokens=5, logprobs=True, top_logprobs=3)
content = r.choices[0].logprobs.content
check(len(content) >= 1, "chat logprobs: %r" % r)
check("".join(t.token for t in content) == r.choices[0].message.content, "tokens spell the text")
for t in content:
    check(t.logprob <= 0 and len(t.top_logprobs) == 3, "entry %r" % t)
    check(abs(t.top_logprobs[0].logprob - t.logprob) < 1e-6, "greedy is the top %r" % t)
    check(bytes(t.bytes).decode("utf-8") == t.token, "bytes %r" % t)
    check(sum(math.exp(x.logprob) for x in t.top_logprobs) <= 1.0001, "mass %r" % t)
chunks = list(oa.chat.completions.create(model="story", messages=msgs, temperature=0, max_tokens=5, logprobs=True, top_logprobs=3, stream=True))
first = chunks[0].choices[0].delta
check(first.role == "assistant" and first.content is None, "first delta %r" % first)
streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
check([t.token for t in streamed] == [t.token for t in content], "streamed tokens %r" % streamed)
c = oa.completions.create(model="story", prompt="Once upon a time", temperature=0, max_tokens=5, logprobs=2)
lp = c.choices[0].logprobs
check(len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset), "completion logprobs %r" % lp)
check("".join(lp.tokens) == c.choices[0].text, "completion tokens spell the text")
check(all(len(d) <= 2 for d in lp.top_logprobs), "top maps %r" % lp.top_logprobs)
print("ok")
"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_official_openai_client_reads_logprobs() {
    let Some(path) = stories_gguf() else { return };
    let importable = std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    if !importable {
        eprintln!("SKIP: python3 with the openai package is needed (server_python installs it)");
        return;
    }
    let engine = Engine::new(
        llama_cpp_settings("story", &path),
        registry(&["llama_cpp"]),
        None,
    );
    let server = TestServer::start(engine, ServerSettings::default()).await;
    let base = server.url("");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", OPENAI_SCRIPT])
            .env("BASE_URL", base)
            .output()
            .expect("run python3")
    })
    .await
    .expect("python thread");
    assert!(
        out.status.success(),
        "client script failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
