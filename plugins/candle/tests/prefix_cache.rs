//! Prompt-prefix reuse (capability `prefix-cache`) on stories260K, through each kind of
//! cache the plugin keeps (src/prefix.rs): the GGUF on the CPU (`quantized_llama`, a
//! concatenating cache reused whole or from checkpoints) and our dense llama (a cache cut
//! at any length), which runs the HF folder and the GGUF held dense. Every cached run gives the tokens of the same request with `cache_prompt: false`.

mod common;

use candle_core::{DType, Device, Tensor};
use common::stories;
use llmlocal_backend_candle::gguf::{self, Loaded};
use llmlocal_backend_candle::gguf_dense::Layout;
use llmlocal_backend_candle::net::Net;
use llmlocal_backend_candle::CandleBackend;
use llmlocal_plugin_api::{
    abi_stable::std_types::{ROption, RString},
    model_info, AdapterRequest, Backend, GenerateRequest, LoadRequest, Model, Sampling, Step,
};
use std::collections::HashMap;
use std::path::Path;

/// Long enough for checkpoints at 8, 16, 32 and 64 on stories260K's 512-token vocabulary.
const TEXT: &str = "Once upon a time, there was a little girl named Lily. She loved to play \
                    outside in the park with her big red ball and her friend Tom. One day, \
                    they saw a big dog in the park. The dog wanted to play with the ball too, \
                    so Lily threw it far away and the dog ran after it.";
const NEW_TOKENS: u32 = 12;

/// Which cache a test model keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    HfLlama,
    GgufQuantized,
    GgufDense,
}

const KINDS: [Kind; 3] = [Kind::HfLlama, Kind::GgufQuantized, Kind::GgufDense];

impl Kind {
    /// A cache written in place and cut anywhere: the plugin's dense llama, which runs GGUF
    /// half/full-precision files and plain llama safetensors folders on the CPU. The other
    /// kind (candle-transformers' quantized llama) keeps snapshots at checkpoints.
    fn in_place(self) -> bool {
        matches!(self, Kind::GgufDense | Kind::HfLlama)
    }
}

fn load_kind(dir: &Path, kind: Kind) -> Box<dyn Model> {
    match kind {
        Kind::HfLlama => common::load(&dir.join("hf")),
        Kind::GgufQuantized => gguf_model(dir, Layout::Quantized, false),
        Kind::GgufDense => gguf_model(dir, Layout::Dense(DType::F32), true),
    }
}

/// stories260K.gguf on the CPU in `layout`, checked to take the path the test means.
fn gguf_model(dir: &Path, layout: Layout, dense: bool) -> Box<dyn Model> {
    let path = dir.join("stories260K.gguf");
    let loaded: Loaded = gguf::load_as(&path, &Device::Cpu, 0, Some(layout))
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
    assert_eq!(matches!(loaded.net, Net::Dense(_)), dense, "{layout:?}");
    common::cpu_model(loaded)
}

/// The longest checkpoint position (8, 16, 32, ...) within `n` positions.
fn checkpoint_within(n: usize) -> usize {
    assert!(n >= 16);
    1 << n.ilog2()
}

/// The tokens and cached prompt tokens of one whole generation.
#[derive(Debug)]
struct Run {
    ids: Vec<u32>,
    cached: u32,
}

fn run(model: &dyn Model, request: GenerateRequest) -> Run {
    let mut generation = model.generate(request).expect("generation starts");
    let mut ids = Vec::new();
    while let Step::Token(t) = generation.next().expect("generation step") {
        ids.push(t.id);
    }
    let stats = generation.stats();
    assert!(stats.cached_prompt_tokens <= stats.prompt_tokens);
    Run {
        ids,
        cached: stats.cached_prompt_tokens,
    }
}

fn greedy(prompt: &[u32], cache: bool) -> GenerateRequest {
    let mut request = GenerateRequest::greedy(prompt.to_vec(), NEW_TOKENS);
    request.ignore_eos = true;
    request.cache_prompt = cache;
    request
}

fn seeded(prompt: &[u32], cache: bool) -> GenerateRequest {
    let mut request = greedy(prompt, cache);
    request.sampling = Sampling {
        temperature: 0.9,
        top_k: 0,
        seed: ROption::RSome(7),
        ..Sampling::GREEDY
    };
    request
}

fn text_prompt(model: &dyn Model) -> Vec<u32> {
    let prompt = model.tokenize(TEXT, true, false).expect("tokenize");
    assert!((80..128).contains(&prompt.len()), "{} tokens", prompt.len());
    prompt
}

/// `request(prompt, cache)` with the cache gives what it gives without, and reports `cached`.
fn same_as_uncached(
    model: &dyn Model,
    request: fn(&[u32], bool) -> GenerateRequest,
    prompt: &[u32],
    what: &str,
) -> Run {
    let reference = run(model, request(prompt, false));
    assert_eq!(reference.cached, 0, "{what}: cache_prompt false reused");
    let got = run(model, request(prompt, true));
    assert_eq!(
        got.ids, reference.ids,
        "{what}: other tokens with the cache"
    );
    got
}

#[test]
fn the_same_prompt_again_reuses_it_greedy_and_seeded() {
    let Some(dir) = stories() else { return };
    for kind in KINDS {
        let model = load_kind(&dir, kind);
        let p = text_prompt(model.as_ref());
        for request in [greedy as fn(&[u32], bool) -> GenerateRequest, seeded] {
            let first = run(model.as_ref(), request(&p, true));
            let again = same_as_uncached(model.as_ref(), request, &p, "P again");
            assert_eq!(again.ids, first.ids, "{kind:?}");
            assert_eq!(
                again.cached as usize,
                p.len() - 1,
                "{kind:?}: all but the last"
            );
        }
    }
}

#[test]
fn a_chat_next_turn_reuses_the_whole_first_turn() {
    let Some(dir) = stories() else { return };
    for kind in KINDS {
        let model = load_kind(&dir, kind);
        let p = text_prompt(model.as_ref());
        let first = run(model.as_ref(), greedy(&p, true));
        let turn2 = [&p[..], &first.ids, &p[1..9]].concat();
        let got = same_as_uncached(model.as_ref(), greedy, &turn2, "turn 2");
        // The last generated token never went through the network (max_tokens ended it).
        let kept = p.len() + first.ids.len() - 1;
        assert_eq!(got.cached as usize, kept, "{kind:?}");
    }
}

#[test]
fn a_shorter_prompt_and_an_edit_in_the_middle_reuse_what_they_share() {
    let Some(dir) = stories() else { return };
    for kind in KINDS {
        let model = load_kind(&dir, kind);
        let p = text_prompt(model.as_ref());
        run(model.as_ref(), greedy(&p, true));
        let short = &p[..p.len() * 2 / 3];
        let got = same_as_uncached(model.as_ref(), greedy, short, "a prefix of P");
        let want = if kind.in_place() {
            short.len() - 1
        } else {
            checkpoint_within(short.len() - 1)
        };
        assert_eq!(got.cached as usize, want, "{kind:?}: shorter prompt");

        run(model.as_ref(), greedy(&p, true));
        let at = 70;
        let mut edited = p.clone();
        edited[at] = if p[at] == 300 { 301 } else { 300 };
        let got = same_as_uncached(model.as_ref(), greedy, &edited, "P edited");
        let want = if kind.in_place() { at as u32 } else { 64 };
        assert_eq!(got.cached, want, "{kind:?}: edit at {at}");
    }
}

#[test]
fn interleaved_conversations_and_two_continuations_of_one_cache() {
    let Some(dir) = stories() else { return };
    for kind in KINDS {
        let model = load_kind(&dir, kind);
        let a = text_prompt(model.as_ref());
        let b = model
            .tokenize(
                "Tom had a little cat. The cat liked milk and naps.",
                true,
                false,
            )
            .expect("tokenize");
        let a1 = run(model.as_ref(), greedy(&a, true));
        let b1 = run(model.as_ref(), greedy(&b, true));
        let a2 = [&a[..], &a1.ids, &b[1..5]].concat();
        let b2 = [&b[..], &b1.ids, &a[1..5]].concat();
        let got = same_as_uncached(model.as_ref(), greedy, &a2, "A turn 2");
        assert!(got.cached as usize >= a.len(), "{kind:?}: A {}", got.cached);
        let got = same_as_uncached(model.as_ref(), greedy, &b2, "B turn 2");
        assert!(got.cached as usize >= b.len(), "{kind:?}: B {}", got.cached);
        // Two continuations of one kept cache, stepped in turns: a cache written in place
        // under a shared copy would mix their positions.
        let kept = [&a[..], &run(model.as_ref(), greedy(&a, true)).ids[..11]].concat();
        let x = [&kept[..], &[300, 301, 302]].concat();
        let y = [&kept[..], &[400, 401, 402, 403]].concat();
        let want = [&x, &y].map(|p| run(model.as_ref(), greedy(p, false)).ids);
        let mut gens = [&x, &y].map(|p| model.generate(greedy(p, true)).expect("starts"));
        let mut got = [Vec::new(), Vec::new()];
        for _ in 0..NEW_TOKENS {
            for (generation, ids) in gens.iter_mut().zip(&mut got) {
                if let Ok(Step::Token(t)) = generation.next() {
                    ids.push(t.id);
                }
            }
        }
        assert_eq!(got, want, "{kind:?}: interleaved continuations");
        let cached = gens.map(|g| g.stats().cached_prompt_tokens);
        assert_eq!(cached[0] as usize, kept.len(), "{kind:?}");
        // The dense llama's cache went to x: y starts from a checkpoint-free empty cache.
        assert!(
            kind.in_place() || cached[1] as usize == kept.len(),
            "{kind:?}"
        );
    }
}

#[test]
fn cache_prompt_false_and_cancelled_generations_keep_nothing() {
    let Some(dir) = stories() else { return };
    for kind in KINDS {
        let model = load_kind(&dir, kind);
        let p = text_prompt(model.as_ref());
        run(model.as_ref(), greedy(&p, false));
        assert_eq!(run(model.as_ref(), greedy(&p, true)).cached, 0, "{kind:?}");

        let model = load_kind(&dir, kind);
        let mut generation = model.generate(greedy(&p, true)).expect("starts");
        assert!(matches!(generation.next(), Ok(Step::Token(_))));
        drop(generation);
        assert_eq!(run(model.as_ref(), greedy(&p, true)).cached, 0, "{kind:?}");
    }
}

/// A LoRA adapter for stories260K's q_proj (PEFT safetensors), non-trivial values.
fn write_adapter(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let values = |n: usize, seed: usize| -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 2654435761 + seed * 97) % 1000) as f32 / 1000.0 - 0.5) * 0.8)
            .collect()
    };
    let mut tensors = HashMap::new();
    for layer in 0..5 {
        let key = format!("base_model.model.model.layers.{layer}.self_attn.q_proj");
        let a = Tensor::from_vec(values(2 * 64, layer), (2, 64), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(values(64 * 2, layer + 7), (64, 2), &Device::Cpu).unwrap();
        tensors.insert(format!("{key}.lora_A.weight"), a);
        tensors.insert(format!("{key}.lora_B.weight"), b);
    }
    candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors")).unwrap();
    let config = serde_json::json!({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 2,
                                    "lora_alpha": 8, "target_modules": ["q_proj"],
                                    "fan_in_fan_out": false, "bias": "none"});
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
}

#[test]
fn a_cache_is_never_shared_between_adapter_sets() {
    let Some(dir) = stories() else { return };
    let tmp = tempfile::tempdir().unwrap();
    write_adapter(tmp.path());
    let backend = CandleBackend::new().unwrap();
    let load = |adapter: bool| {
        let mut request = LoadRequest::new(dir.join("hf").to_string_lossy());
        request.device = RString::from("cpu");
        if adapter {
            request.adapters = vec![AdapterRequest {
                path: RString::from(tmp.path().to_string_lossy().as_ref()),
                scale: 1.0,
            }]
            .into();
        }
        backend.load(request).expect("load")
    };
    let (base, lora) = (load(false), load(true));
    let p = text_prompt(base.as_ref());
    let base_ids = run(base.as_ref(), greedy(&p, true)).ids;
    let reference = run(lora.as_ref(), greedy(&p, false));
    assert_ne!(reference.ids, base_ids, "the adapter had no effect");
    let got = run(lora.as_ref(), greedy(&p, true));
    assert_eq!((got.ids, got.cached), (reference.ids.clone(), 0));
    // Reuse within the adapter set's own load gives its own tokens.
    let again = same_as_uncached(lora.as_ref(), greedy, &p, "adapter P again");
    assert!(again.cached > 0);
}

/// The model's `prompt-cache-bytes` fact now (panics when the plugin does not report it).
fn prompt_cache_bytes(model: &dyn Model) -> u64 {
    model_info::prompt_cache_bytes(&model.metadata().extensions).unwrap_or_else(|| {
        panic!(
            "the plugin does not report {}",
            model_info::PROMPT_CACHE_BYTES
        )
    })
}

#[test]
fn the_metadata_reports_the_bytes_the_kept_caches_hold_now() {
    let Some(dir) = stories() else { return };
    for kind in [Kind::HfLlama, Kind::GgufQuantized] {
        let model = load_kind(&dir, kind);
        assert_eq!(
            prompt_cache_bytes(model.as_ref()),
            0,
            "{kind:?}: fresh load"
        );
        let p = text_prompt(model.as_ref());
        run(model.as_ref(), greedy(&p, false));
        assert_eq!(
            prompt_cache_bytes(model.as_ref()),
            0,
            "{kind:?}: cache_prompt false keeps nothing"
        );
        run(model.as_ref(), greedy(&p, true));
        let kept = prompt_cache_bytes(model.as_ref());
        // At least the prompt's positions, each at least one K and one V value per layer.
        assert!(
            kept >= 2 * p.len() as u64,
            "{kind:?}: {kept} bytes after one generation"
        );
        assert!(
            kept <= 1 << 30,
            "{kind:?}: {kept} bytes exceed the 1 GiB cap"
        );
    }
}
