//! End to end with the official clients: the `openai` and `ollama` Python packages against a
//! `llmlocal serve` child process, streaming and not, through the real llama.cpp and candle
//! plugins, on the fixture model and on stories260K; embeddings through both clients, and
//! llama.cpp and candle agreeing on stories260K's (cosine > 0.99).
//!
//! Needs python3; the packages are pip-installed when missing (the test fails with pip's
//! reason if that fails). Needs the real plugins built (`cargo xtask build-plugins`).

mod server_support;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

const API_KEY: &str = "e2e-key";

/// The client script: for each model, the same greedy question through both clients, both
/// streaming and not; everything must agree, and match the expectation when one is given.
const CLIENT_SCRIPT: &str = r#"
import json, os, sys
import openai, ollama

base = os.environ["BASE_URL"]
key = os.environ["API_KEY"]
models = json.loads(os.environ["MODELS"])
oa = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=120)
ol = ollama.Client(host=base, headers={"Authorization": "Bearer " + key}, timeout=120)
msgs = [{"role": "user", "content": "Say something."}]
report = {}

def check(cond, what):
    if not cond:
        raise SystemExit("FAIL: " + what)

for m in models:
    name = m["name"]
    r = oa.chat.completions.create(model=name, messages=msgs, temperature=0, max_tokens=40)
    chat = r.choices[0].message.content
    check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, name + ": usage adds up")
    check(r.usage.completion_tokens >= 1, name + ": generated something")
    check(r.choices[0].finish_reason in ("stop", "length"), name + ": finish reason")
    parts, finish = [], None
    for chunk in oa.chat.completions.create(model=name, messages=msgs, temperature=0, max_tokens=40, stream=True):
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    check("".join(parts) == chat, name + ": openai chat stream %r == non-stream %r" % ("".join(parts), chat))
    check(finish == r.choices[0].finish_reason, name + ": same finish reason streamed")

    c = oa.completions.create(model=name, prompt=m["prompt"], temperature=0, max_tokens=40)
    text = c.choices[0].text
    streamed = "".join(x.choices[0].text for x in oa.completions.create(model=name, prompt=m["prompt"], temperature=0, max_tokens=40, stream=True) if x.choices)
    check(streamed == text, name + ": openai completion stream %r == non-stream %r" % (streamed, text))
    ids = [1, 5, 7]
    t = oa.completions.create(model=name, prompt=ids, temperature=0, max_tokens=5)
    check(t.usage.prompt_tokens == len(ids), name + ": token-id prompt counted as given: %r" % t.usage)
    timings = t.to_dict().get("timings") or {}
    check(timings.get("prompt_n", 0) + timings.get("cache_n", 0) == len(ids), name + ": timings reach the client: %r" % timings)

    opts = {"temperature": 0, "num_predict": 40}
    g = ol.generate(model=name, prompt=m["prompt"], raw=True, options=opts)
    check(g["response"] == text, name + ": ollama generate %r == openai completion %r" % (g["response"], text))
    gs = "".join(p["response"] for p in ol.generate(model=name, prompt=m["prompt"], raw=True, options=opts, stream=True))
    check(gs == text, name + ": ollama generate stream %r" % gs)
    oc = ol.chat(model=name, messages=msgs, options=opts)
    check(oc["message"]["content"] == chat, name + ": ollama chat %r == openai chat %r" % (oc["message"]["content"], chat))
    ocs = "".join(p["message"]["content"] for p in ol.chat(model=name, messages=msgs, options=opts, stream=True))
    check(ocs == chat, name + ": ollama chat stream %r" % ocs)
    check(oc["eval_count"] >= 1 and oc["done"], name + ": ollama final fields")

    # Structured output: the schema's JSON through both dialects, the same greedy answer.
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}
    rf = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    so = oa.chat.completions.create(model=name, messages=msgs, temperature=0, max_tokens=60, response_format=rf)
    answer = json.loads(so.choices[0].message.content)
    check(set(answer) == {"ok"} and isinstance(answer["ok"], bool), name + ": openai structured output %r" % answer)
    check(so.choices[0].finish_reason == "stop", name + ": structured output ends by itself")
    oj = ol.chat(model=name, messages=msgs, options=opts, format=schema)
    check(json.loads(oj["message"]["content"]) == answer, name + ": ollama format %r == openai %r" % (oj["message"]["content"], answer))
    if m.get("expect_chat") is not None:
        check(chat == m["expect_chat"], name + ": chat %r != designed %r" % (chat, m["expect_chat"]))
    if m.get("expect_completion") is not None:
        check(text == m["expect_completion"], name + ": completion %r != designed %r" % (text, m["expect_completion"]))

    # Embeddings: the openai client asks for base64 and decodes it; ollama gets floats.
    texts = ["Once upon a time", "The end"]
    e = oa.embeddings.create(model=name, input=texts)
    vec = e.data[0].embedding
    check(len(e.data) == 2 and len(vec) > 0 and len(e.data[1].embedding) == len(vec), name + ": openai embeddings shape")
    check(abs(sum(x * x for x in vec) ** 0.5 - 1) < 1e-3, name + ": openai embedding is unit norm")
    check(e.usage.prompt_tokens >= 2, name + ": embedding usage %r" % e.usage)
    oe = ol.embed(model=name, input=texts)
    check(len(oe["embeddings"]) == 2, name + ": ollama embed count")
    check(max(abs(a - b) for a, b in zip(oe["embeddings"][0], vec)) < 1e-5, name + ": ollama embed == openai embeddings")
    report[name] = {"chat": chat, "completion": text, "embedding": vec}

listed = [x["model"] for x in ol.list()["models"]]
check(all(m["name"] in listed for m in models), "ollama list shows every model: %r" % listed)
running = [x["model"] for x in ol.ps()["models"]]
check(len(running) >= 1, "ollama ps shows loaded models")
show = ol.show(models[0]["name"])
check("{%" in (show.template or "") or "<|im_start|>" in (show.template or ""), "ollama show gives the chat template")
check(show.details.format in ("gguf", "safetensors") and show.details.family == show.modelinfo["general.architecture"], "ollama show details %r" % show.details)
check(show.modelinfo["general.parameter_count"] > 0 and show.details.parameter_size, "ollama show model_info %r" % show.modelinfo)
check(show.capabilities[0] == "completion" and "embedding" in show.capabilities, "ollama show capabilities %r" % show.capabilities)
sizes = {x["model"]: x["size"] for x in ol.list()["models"]}
check(all(sizes[m["name"]] > 0 for m in models), "ollama list: bytes on disk %r" % sizes)
check(all(x.size > 0 and x.size_vram == 0 and x.context_length > 0 for x in ol.ps()["models"]), "ollama ps: memory on the CPU")
# Copy and create: new names with defaults, through the client's own calls.
src = models[0]["name"]
ol.copy(src, "copied-model")
check("copied-model" in [x["model"] for x in ol.list()["models"]], "ollama copy lists the copy")
statuses = [p.status for p in ol.create(model="brief-model", from_=src, system="Be brief.", parameters={"num_predict": 3, "temperature": 0}, stream=True)]
check(statuses[-1] == "success", "ollama create: %r" % statuses)
g = ol.generate(model="brief-model", prompt=models[0]["prompt"], raw=True)
check(g["eval_count"] == 3 and g["done_reason"] == "length", "a created model's num_predict applies: %r" % g)
shown = ol.show("brief-model")
check("num_predict" in shown.parameters and shown.modelfile.startswith("FROM "), "ollama show of a created model: %r" % shown.parameters)
try:
    ol.create(model="quantized", from_=src, quantize="q4_K_M")
    check(False, "quantize is refused")
except ollama.ResponseError as e:
    check(e.status_code == 400 and "quantize" in str(e.error), "quantize refusal: %r" % e.error)
for name in ("copied-model", "brief-model"):
    ol.generate(model=name, keep_alive=0)
    ol.delete(name)
listed = [x["model"] for x in ol.list()["models"]]
check(src in listed and "copied-model" not in listed and "brief-model" not in listed, "ollama delete of a copy removes only the copy: %r" % listed)
pull_path = os.environ.get("PULL_PATH")
if pull_path:
    made = ol.create(model="from-path", from_=pull_path)
    check(made.status == "success", "ollama create FROM a GGUF path: %r" % made)
    g = ol.generate(model="from-path", prompt="uvw", raw=True, options={"temperature": 0, "num_predict": 10})
    check(g["response"] == models[0].get("expect_completion", g["response"]), "the created model answers: %r" % g["response"])
    ol.generate(model="from-path", keep_alive=0)
    ol.delete("from-path")
    statuses = [p.status for p in ol.pull(pull_path, stream=True)]
    check(statuses[-1] == "success", "ollama pull: %r" % statuses)
    g = ol.generate(model=pull_path, prompt="uvw", raw=True, options={"temperature": 0, "num_predict": 10})
    check(g["response"] == models[0].get("expect_completion", g["response"]), "the pulled model answers: %r" % g["response"])
    # A loaded model is not deleted (409): unload it first, as `ollama stop` does.
    ol.generate(model=pull_path, keep_alive=0)
    ol.delete(pull_path)
    check(pull_path not in [x["model"] for x in ol.list()["models"]], "ollama delete forgets the model")
ids = [x.id for x in oa.models.list().data]
check(all(m["name"] in ids for m in models), "openai models.list shows every model")
try:
    openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).models.list()
    check(False, "a wrong key is refused")
except openai.AuthenticationError:
    pass
print(json.dumps(report))
"#;

/// Installs the clients if needed; panics with pip's output when that fails.
fn ensure_python_clients() {
    let has = |code: &str| {
        Command::new("python3")
            .args(["-c", code])
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(
        has("import sys"),
        "python3 is needed for the client end-to-end tests"
    );
    if has("import openai, ollama") {
        return;
    }
    let out = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "openai", "ollama"])
        .output()
        .expect("run pip");
    assert!(
        out.status.success() && has("import openai, ollama"),
        "FAIL: cannot pip-install the openai and ollama packages: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn shared_models() -> Option<PathBuf> {
    llmlocal_fixtures::shared::stories260k()?;
    llmlocal_fixtures::shared::model("")
}

/// A `llmlocal serve` child, killed on drop.
struct Served {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves `models` (`[models.NAME]` TOML bodies) with the real plugins.
fn serve(models: &[(&str, &Path, &str)]) -> Served {
    let dir = tempfile::tempdir().expect("temp dir");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).expect("plugin dir");
    for name in ["llama_cpp", "candle"] {
        let from = server_support::plugin_library(name);
        std::fs::copy(&from, plugins.join(from.file_name().expect("file name")))
            .expect("copy plugin");
    }
    let mut config = String::from("[engine]\nkeep_alive_secs = 0\n");
    for (name, path, backend) in models {
        config.push_str(&format!(
            "[models.{name}]\npath = {:?}\nbackend = {backend:?}\n",
            path.to_string_lossy()
        ));
    }
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, config).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_llmlocal"))
        .args(["serve", "--bind", "127.0.0.1:0", "--api-key", API_KEY])
        // The client script pulls a local file by path.
        .arg("--allow-any-model")
        .arg("--config")
        .arg(&config_path)
        .arg("--plugin-dir")
        .arg(&plugins)
        .env("LLMLOCAL_PLUGIN_PATH", "")
        .env("HF_HOME", dir.path().join("hf"))
        // Created and copied names go to the data dir: the test's own.
        .env("XDG_DATA_HOME", dir.path().join("data"))
        .env("HF_HUB_OFFLINE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start llmlocal serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the address line");
    let base = line
        .trim()
        .strip_prefix("llmlocal listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Served {
        child,
        base,
        _dir: dir,
    }
}

/// Runs the client script; returns its JSON report.
fn run_clients(
    served: &Served,
    models: serde_json::Value,
    pull: Option<&Path>,
) -> serde_json::Value {
    let mut command = Command::new("python3");
    if let Some(path) = pull {
        command.env("PULL_PATH", path);
    }
    let out = command
        .args(["-c", CLIENT_SCRIPT])
        .env("BASE_URL", &served.base)
        .env("API_KEY", API_KEY)
        .env("MODELS", models.to_string())
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("report JSON")
}

/// SIGTERM: the server shuts down gracefully and exits with success.
fn stop_gracefully(mut served: Served) {
    let pid = served.child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    for _ in 0..100 {
        if let Some(status) = served.child.try_wait().expect("wait") {
            assert!(status.success(), "serve exited with {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("serve did not stop within 10 s of SIGTERM");
}

#[test]
fn official_clients_on_the_fixture_model_through_both_backends() {
    ensure_python_clients();
    let fixtures = llmlocal_fixtures::ensure_default().expect("fixture models");
    // Designed greedy behaviour: the last prompt token decides the continuation. A chat
    // prompt ends with "assistant\n"; the completion prompt ends with 'w'.
    let expect = |last: u8| llmlocal_fixtures::spec::expected_text(&[u32::from(last)], 64);
    let served = serve(&[
        ("fx-llama", &fixtures.gguf_f32, "llama-cpp"),
        ("fx-llama-q8", &fixtures.gguf_q8_0, "llama-cpp"),
        ("fx-candle", &fixtures.hf_dir, "candle"),
        ("fx-candle-gguf", &fixtures.gguf_f32, "candle"),
    ]);
    let models: Vec<serde_json::Value> = ["fx-llama", "fx-llama-q8", "fx-candle", "fx-candle-gguf"]
        .iter()
        .map(|name| {
            serde_json::json!({
                "name": name,
                "prompt": "uvw",
                "expect_chat": expect(b'\n'),
                "expect_completion": expect(b'w'),
            })
        })
        .collect();
    let report = run_clients(
        &served,
        serde_json::Value::Array(models),
        Some(&fixtures.gguf_q8_0),
    );
    assert_eq!(report["fx-llama"]["completion"], "xyz{|}~");
    stop_gracefully(served);
}

#[test]
fn official_clients_on_stories260k_through_both_backends() {
    ensure_python_clients();
    let Some(shared) = shared_models() else {
        return;
    };
    let stories = shared.join("stories260K");
    let served = serve(&[
        (
            "stories-llama",
            &stories.join("stories260K.gguf"),
            "llama-cpp",
        ),
        ("stories-candle", &stories.join("hf"), "candle"),
    ]);
    let models = serde_json::json!([
        {"name": "stories-llama", "prompt": "Once upon a time"},
        {"name": "stories-candle", "prompt": "Once upon a time"},
    ]);
    let report = run_clients(&served, models, None);
    // Same weights, two backends, greedy: the same story.
    assert_eq!(
        report["stories-llama"]["completion"], report["stories-candle"]["completion"],
        "{report}"
    );
    // And the same embedding, up to the engines' rounding (both unit norm: cosine = dot).
    let vector = |name: &str| -> Vec<f64> {
        let list = report[name]["embedding"].as_array().expect("embedding");
        list.iter().map(|x| x.as_f64().expect("number")).collect()
    };
    let (a, b) = (vector("stories-llama"), vector("stories-candle"));
    let cosine: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    assert!(
        cosine > 0.99,
        "llama.cpp and candle embeddings: cosine {cosine}"
    );
    stop_gracefully(served);
}
