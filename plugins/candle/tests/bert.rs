//! BERT embedding models in the candle plugin (`llmlocal_fixtures::family_bert`): the
//! sentence-transformers folder and the GGUF files (F32, F16, Q8_0) embed like the fixture's
//! independent f32 forward, the GGUF WordPiece vocabulary tokenizes like tokenizer.json, the
//! model's pooling comes from its files, generation is a clear `Unsupported`, and BERT
//! variants candle does not compute are `UnsupportedArchitecture`.

mod common;

use candle_core::quantized::gguf_file::Value as GgufValue;
use common::{copy_dir, edit_config, load, load_paths, rewrite_gguf};
use llmlocal_fixtures::family_bert::{self, cosine, id, BertPaths, CLS_ID, SEP_ID};
use llmlocal_fixtures::GgufFormat;
use llmlocal_plugin_api::{EmbedRequest, ErrorKind, GenerateRequest, Model};
use std::path::Path;

fn paths() -> BertPaths {
    family_bert::ensure_bert(&llmlocal_fixtures::default_dir()).expect("bert fixtures")
}

/// `[CLS] words [SEP]` ids of the fixture vocabulary.
fn sentence(words: &[&str]) -> Vec<u32> {
    std::iter::once(CLS_ID)
        .chain(words.iter().map(|w| id(w)))
        .chain(std::iter::once(SEP_ID))
        .collect()
}

fn embed(model: &dyn Model, inputs: Vec<Vec<u32>>, pooling: &str) -> Vec<Vec<f32>> {
    let mut request = EmbedRequest::new(inputs);
    request.normalize = true;
    request.pooling = pooling.into();
    model.embed(request).expect("embeds")
}

/// The smallest cosine between the model's vectors (its own pooling) and the reference's.
fn min_cosine_with_reference(model: &dyn Model) -> f32 {
    let weights = family_bert::weights();
    let inputs = vec![
        sentence(&["the", "cat", "sat", "on", "the", "mat"]),
        sentence(&["hello", "world"]),
        sentence(&["rust", "model", "##s", "embed", "local", "##ing"]),
    ];
    let vectors = embed(model, inputs.clone(), "");
    inputs
        .iter()
        .zip(&vectors)
        .map(|(ids, v)| cosine(&family_bert::embed(&weights, ids), v))
        .fold(f32::INFINITY, f32::min)
}

#[test]
fn every_form_embeds_like_the_reference_forward() {
    let paths = paths();
    for (label, path, allowed) in [
        ("HF F32", paths.hf.clone(), 0.99999),
        ("GGUF F32", paths.gguf(GgufFormat::F32), 0.99999),
        ("GGUF F16", paths.gguf(GgufFormat::F16), 0.9999),
        ("GGUF Q8_0", paths.gguf(GgufFormat::Q8_0), 0.999),
    ] {
        let model = load(&path);
        let meta = model.metadata();
        assert_eq!(meta.architecture.as_str(), "bert", "{label}");
        assert_eq!(meta.pooling.as_str(), "mean", "{label}");
        assert_eq!(meta.embedding_length, 64, "{label}");
        let min = min_cosine_with_reference(model.as_ref());
        eprintln!("{label}: min cosine with the reference {min}");
        assert!(
            min > allowed,
            "{label}: min cosine {min} (allowed {allowed})"
        );
    }
}

#[test]
fn the_gguf_wordpiece_vocabulary_tokenizes_like_tokenizer_json() {
    let paths = paths();
    let hf = load(&paths.hf);
    let gguf = load(&paths.gguf(GgufFormat::F32));
    for text in [
        "The cat sat on the mat.",
        "Hello, WORLD! rust models embedding",
        "zebra's qi, unknown ☃ words",
    ] {
        let want = hf.tokenize(text, true, false).expect("tokenizer.json");
        let got = gguf.tokenize(text, true, false).expect("GGUF WordPiece");
        assert_eq!(got, want, "{text}");
    }
    // `[CLS] ... [SEP]` framing and `##` continuations.
    let ids = gguf.tokenize("the cats", true, false).expect("tokenizes");
    assert_eq!(ids, [CLS_ID, id("the"), id("cat"), id("##s"), SEP_ID]);
    let bare = gguf.tokenize("the cats", false, false).expect("tokenizes");
    assert_eq!(bare, [id("the"), id("cat"), id("##s")]);
}

#[test]
fn pooling_comes_from_the_request_or_the_files() {
    let paths = paths();
    let model = load(&paths.hf);
    let input = sentence(&["the", "sky", "is", "blue"]);
    let mean = embed(model.as_ref(), vec![input.clone()], "").remove(0);
    let cls = embed(model.as_ref(), vec![input.clone()], "cls").remove(0);
    assert!(cosine(&mean, &cls) < 0.999, "cls differs from mean");
    let every = embed(model.as_ref(), vec![input.clone()], "none").remove(0);
    assert_eq!(every.len(), input.len() * 64);
    assert!(
        (cosine(&every[..64], &cls) - 1.0).abs() < 1e-5,
        "none holds cls first"
    );

    // A sentence-transformers Pooling module asking for the CLS token makes it the default.
    let dir = tempfile::tempdir().expect("temp dir");
    copy_dir(&paths.hf, dir.path());
    let pooling = dir.path().join("1_Pooling");
    std::fs::create_dir_all(&pooling).expect("pooling dir");
    let config = r#"{"word_embedding_dimension": 64, "pooling_mode_cls_token": true,
                     "pooling_mode_mean_tokens": false}"#;
    std::fs::write(pooling.join("config.json"), config).expect("pooling config");
    let st = load(dir.path());
    assert_eq!(st.metadata().pooling.as_str(), "cls");
    let own = embed(st.as_ref(), vec![input], "").remove(0);
    assert!((cosine(&own, &cls) - 1.0).abs() < 1e-6);

    // GGUF `bert.pooling_type` 2 = cls.
    let gguf = dir.path().join("cls.gguf");
    rewrite_gguf(&paths.gguf(GgufFormat::F32), &gguf, |md| {
        set(md, "bert.pooling_type", GgufValue::U32(2))
    });
    assert_eq!(load(&gguf).metadata().pooling.as_str(), "cls");
}

fn set(md: &mut [(String, GgufValue)], key: &str, value: GgufValue) {
    let entry = md.iter_mut().find(|(k, _)| k == key).expect("key present");
    entry.1 = value;
}

#[test]
fn an_encoder_refuses_generation_and_logits_clearly() {
    let model = load(&paths().gguf(GgufFormat::F32));
    let prompt = sentence(&["the", "cat"]);
    let e = model
        .generate(GenerateRequest::greedy(prompt.clone(), 4))
        .err()
        .expect("generation is refused");
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(e.message.contains("embeddings only"), "{}", e.message);
    let e = model.logits(&prompt).expect_err("logits are refused");
    assert_eq!(e.kind, ErrorKind::Unsupported);
}

#[test]
fn inputs_past_the_position_table_are_refused() {
    let model = load(&paths().hf);
    // The fixture has 64 position embeddings: that is the context, whatever the load asks.
    assert_eq!(model.metadata().context_length, 64);
    let long = vec![id("the"); 65];
    let e = model
        .embed(EmbedRequest::new(vec![long]))
        .expect_err("65 tokens");
    assert_eq!(e.kind, ErrorKind::InvalidRequest);
    assert!(e.message.contains("64"), "{}", e.message);
}

/// The error kind of loading `path`.
fn refusal(path: &Path) -> (ErrorKind, String) {
    let e = load_paths(&[path]).err().expect("the load is refused");
    (e.kind, e.message.to_string())
}

#[test]
fn bert_variants_candle_does_not_compute_are_unsupported_architectures() {
    let paths = paths();
    let dir = tempfile::tempdir().expect("temp dir");
    let folder = |name: &str, edit: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
        let d = dir.path().join(name);
        copy_dir(&paths.hf, &d);
        edit_config(&d, edit);
        d
    };
    let cases = [
        (
            folder("alibi", &|c| {
                c.insert("position_embedding_type".into(), "alibi".into());
            }),
            "alibi",
        ),
        (
            folder("jina", &|c| {
                c.insert("architectures".into(), serde_json::json!(["JinaBertModel"]));
            }),
            "JinaBertModel",
        ),
        (
            folder("roberta", &|c| {
                c.insert("model_type".into(), "roberta".into());
            }),
            "roberta",
        ),
        (
            folder("silu", &|c| {
                c.insert("hidden_act".into(), "silu".into());
            }),
            "silu",
        ),
    ];
    for (path, names) in cases {
        let (kind, message) = refusal(&path);
        assert_eq!(kind, ErrorKind::UnsupportedArchitecture, "{message}");
        assert!(message.contains(names), "{message}");
    }
    // A Dense module after pooling would change the vector.
    let dense = folder("dense", &|_| {});
    let modules = r#"[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                      {"idx": 1, "name": "1", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]"#;
    std::fs::write(dense.join("modules.json"), modules).expect("modules.json");
    let (kind, message) = refusal(&dense);
    assert_eq!(kind, ErrorKind::UnsupportedArchitecture, "{message}");
    assert!(message.contains("Dense"), "{message}");

    // GGUF: another architecture name, a reranker's pooling.
    let nomic = dir.path().join("nomic.gguf");
    rewrite_gguf(&paths.gguf(GgufFormat::F32), &nomic, |md| {
        set(
            md,
            "general.architecture",
            GgufValue::String("nomic-bert".into()),
        )
    });
    let (kind, message) = refusal(&nomic);
    assert_eq!(kind, ErrorKind::UnsupportedArchitecture, "{message}");
    assert!(message.contains("nomic-bert"), "{message}");
    let rank = dir.path().join("rank.gguf");
    rewrite_gguf(&paths.gguf(GgufFormat::F32), &rank, |md| {
        set(md, "bert.pooling_type", GgufValue::U32(4))
    });
    let (kind, message) = refusal(&rank);
    assert_eq!(kind, ErrorKind::UnsupportedArchitecture, "{message}");
    assert!(message.contains("rank"), "{message}");
}
