//! ModelSpec parsing, cache location, quant picking and retry backoff (no network).

use std::path::PathBuf;
use std::time::Duration;

use llmlocal::api::ModelFormat;
use llmlocal::models::quant::{self, QuantCandidate};
use llmlocal::models::{
    backoff_delay, cache_dir_from, normalize_etag, FileSelector, ModelError, ModelSource, ModelSpec,
};

fn hf(spec: &ModelSpec) -> (&str, &str, &FileSelector) {
    match &spec.source {
        ModelSource::HuggingFace(h) => (&h.repo, &h.revision, &h.selector),
        ModelSource::Local(p) => panic!("expected a Hugging Face source, got local {p:?}"),
    }
}

#[test]
fn parses_plain_repo() {
    let s = ModelSpec::parse("TheOrg/some-model.v2").unwrap();
    assert_eq!(
        hf(&s),
        ("TheOrg/some-model.v2", "main", &FileSelector::Auto)
    );
    assert_eq!(s.format, None);
    assert_eq!(s.name, "TheOrg/some-model.v2");
}

#[test]
fn parses_quant_tag_and_revision() {
    let s = ModelSpec::parse("org/repo:Q8_0").unwrap();
    assert_eq!(
        hf(&s),
        ("org/repo", "main", &FileSelector::Quant("Q8_0".into()))
    );
    assert_eq!(s.format, Some(ModelFormat::Gguf));

    let s = ModelSpec::parse("org/repo@v1.2").unwrap();
    assert_eq!(hf(&s), ("org/repo", "v1.2", &FileSelector::Auto));

    let s = ModelSpec::parse("org/repo@0123abcd:q4_k_m").unwrap();
    assert_eq!(
        hf(&s),
        (
            "org/repo",
            "0123abcd",
            &FileSelector::Quant("q4_k_m".into())
        )
    );

    let s = ModelSpec::parse("org/repo:model.Q4_K_M.gguf").unwrap();
    assert_eq!(
        hf(&s),
        (
            "org/repo",
            "main",
            &FileSelector::File("model.Q4_K_M.gguf".into())
        )
    );
}

#[test]
fn parses_hf_urls() {
    let s = ModelSpec::parse("hf://org/repo/sub/dir/file.gguf").unwrap();
    assert_eq!(
        hf(&s),
        (
            "org/repo",
            "main",
            &FileSelector::File("sub/dir/file.gguf".into())
        )
    );
    assert_eq!(s.format, Some(ModelFormat::Gguf));

    let s = ModelSpec::parse("hf://org/repo@refs/pr/1").unwrap();
    // The revision stops at the next `/`: refs with slashes need `org/repo@refs/pr/1` form.
    assert_eq!(hf(&s).0, "org/repo");

    let s = ModelSpec::parse("hf://org/repo@dev/model.safetensors").unwrap();
    assert_eq!(
        hf(&s),
        (
            "org/repo",
            "dev",
            &FileSelector::File("model.safetensors".into())
        )
    );
    assert_eq!(s.format, Some(ModelFormat::Safetensors));

    let s = ModelSpec::parse("hf://org/repo").unwrap();
    assert_eq!(hf(&s), ("org/repo", "main", &FileSelector::Auto));
}

#[test]
fn parses_local_paths() {
    let s = ModelSpec::parse("./path/model.gguf").unwrap();
    assert_eq!(
        s.source,
        ModelSource::Local(PathBuf::from("./path/model.gguf"))
    );
    assert_eq!(s.format, Some(ModelFormat::Gguf));

    let dir = tempfile::tempdir().unwrap();
    let spec = ModelSpec::parse(dir.path().to_str().unwrap()).unwrap();
    assert_eq!(spec.source, ModelSource::Local(dir.path().to_path_buf()));
    assert_eq!(
        spec.format,
        Some(ModelFormat::Safetensors),
        "a folder is a safetensors model"
    );

    let s = ModelSpec::parse("file:///models/x.gguf").unwrap();
    assert_eq!(
        s.source,
        ModelSource::Local(PathBuf::from("/models/x.gguf"))
    );
}

#[test]
fn builder_sets_backend_and_context() {
    let s = ModelSpec::parse("org/repo")
        .unwrap()
        .with_backend("llama-cpp")
        .with_context_length(2048);
    assert_eq!(s.backend.as_deref(), Some("llama-cpp"));
    assert_eq!(s.context_length, Some(2048));
}

#[test]
fn bad_specs_are_clear_errors() {
    let cases = [
        ("", "empty spec"),
        ("org/repo:", "empty quantization"),
        ("org/repo@", "empty revision"),
        ("a/b/c", "hf://a/b/c"),
        ("org/re po", "only letters"),
        ("org/bad--name", "`--`"),
        ("model.gguf", "./model.gguf"),
        ("hf://org", "hf://org/repo"),
        ("org/repo:Q4 K", "not a quantization tag"),
        ("hf://org/repo/../x.gguf", "bad file path"),
        ("-org/repo", "start or end"),
    ];
    for (input, hint) in cases {
        match ModelSpec::parse(input) {
            Err(e @ ModelError::InvalidSpec { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(hint),
                    "message for {input:?} should mention {hint:?}: {msg}"
                );
                assert!(
                    msg.contains(&format!("`{input}`")),
                    "message names the input: {msg}"
                );
            }
            other => panic!("{input:?} should be an invalid spec, got {other:?}"),
        }
    }
}

#[test]
fn cache_dir_follows_huggingface_hub_precedence() {
    let home = Some(PathBuf::from("/home/u"));
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    assert_eq!(
        cache_dir_from(
            env(&[("HF_HUB_CACHE", "/c"), ("HF_HOME", "/h")]),
            home.clone()
        ),
        Some(PathBuf::from("/c"))
    );
    assert_eq!(
        cache_dir_from(env(&[("HF_HOME", "/h")]), home.clone()),
        Some(PathBuf::from("/h/hub"))
    );
    assert_eq!(
        cache_dir_from(env(&[("XDG_CACHE_HOME", "/x")]), home.clone()),
        Some(PathBuf::from("/x/huggingface/hub"))
    );
    assert_eq!(
        cache_dir_from(env(&[("HF_HOME", "")]), home.clone()),
        Some(PathBuf::from("/home/u/.cache/huggingface/hub"))
    );
    assert_eq!(cache_dir_from(env(&[]), None), None);
}

#[test]
fn quant_tags_are_found_in_file_names() {
    assert_eq!(
        quant::quant_of("Llama-3-8B-Instruct.Q4_K_M.gguf").as_deref(),
        Some("Q4_K_M")
    );
    assert_eq!(quant::quant_of("model-q8_0.gguf").as_deref(), Some("Q8_0"));
    assert_eq!(
        quant::quant_of("sub/model-IQ4_XS.gguf").as_deref(),
        Some("IQ4_XS")
    );
    assert_eq!(quant::quant_of("model-f16.gguf").as_deref(), Some("F16"));
    assert_eq!(quant::quant_of("model-BF16.gguf").as_deref(), Some("BF16"));
    assert_eq!(quant::quant_of("stories260K.gguf"), None);
    // Q4_K is a prefix of Q4_K_M: the longest tag wins.
    assert_eq!(quant::quant_of("x-Q4_K_S.gguf").as_deref(), Some("Q4_K_S"));
}

fn cand(quant: Option<&str>, file: &str, size: u64) -> QuantCandidate {
    QuantCandidate {
        quant: quant.map(String::from),
        files: vec![file.into()],
        size,
    }
}

#[test]
fn pick_takes_the_best_quant_that_fits() {
    const GB: u64 = 1 << 30;
    let cands = vec![
        cand(Some("Q4_K_M"), "m-Q4_K_M.gguf", 4 * GB),
        cand(Some("Q8_0"), "m-Q8_0.gguf", 8 * GB),
        cand(Some("F16"), "m-F16.gguf", 16 * GB),
        cand(Some("Q6_K"), "m-Q6_K.gguf", 6 * GB),
    ];
    let ctx = 4096;
    let need = |size: u64| size + quant::kv_allowance(size, ctx);
    // Plenty of memory: Q8_0 beats F16 (quality/speed trade-off of the preference list).
    let p = quant::pick(&cands, Some(64 * GB), ctx).unwrap();
    assert_eq!(p.quant.as_deref(), Some("Q8_0"));
    // Just below what Q8_0 needs: Q6_K.
    let p = quant::pick(&cands, Some(need(8 * GB) - 1), ctx).unwrap();
    assert_eq!(p.quant.as_deref(), Some("Q6_K"));
    assert_eq!(p.needed, need(6 * GB));
    // Only Q4_K_M fits.
    let p = quant::pick(&cands, Some(need(4 * GB)), ctx).unwrap();
    assert_eq!(p.quant.as_deref(), Some("Q4_K_M"));
    // Nothing fits: the error names the smallest file.
    let e = quant::pick(&cands, Some(GB), ctx).unwrap_err();
    assert!(e.contains("m-Q4_K_M.gguf"), "{e}");
    // Unknown memory: the best preferred quant.
    assert_eq!(
        quant::pick(&cands, None, ctx).unwrap().quant.as_deref(),
        Some("Q8_0")
    );
}

#[test]
fn pick_falls_back_to_the_largest_other_gguf() {
    let cands = vec![
        cand(None, "stories260K.gguf", 1_000_000),
        cand(Some("F32"), "x-f32.gguf", 2_000_000),
    ];
    let p = quant::pick(&cands, Some(1 << 30), 512).unwrap();
    assert_eq!(p.files, vec!["x-f32.gguf".to_string()]);
}

#[test]
fn split_ggufs_are_grouped() {
    use llmlocal::models::quant::candidates;
    let siblings: Vec<llmlocal::models::Sibling> = [
        ("big-Q8_0-00002-of-00002.gguf", 5u64),
        ("big-Q8_0-00001-of-00002.gguf", 7),
        ("small-Q4_0.gguf", 3),
        ("mmproj-model-f16.gguf", 1),
        ("README.md", 1),
    ]
    .iter()
    .map(|(n, s)| serde_json::from_value(serde_json::json!({"rfilename": n, "size": s})).unwrap())
    .collect();
    let c = candidates(&siblings);
    assert_eq!(c.len(), 2, "{c:?}");
    let big = c
        .iter()
        .find(|c| c.quant.as_deref() == Some("Q8_0"))
        .unwrap();
    assert_eq!(
        big.files,
        vec![
            "big-Q8_0-00001-of-00002.gguf",
            "big-Q8_0-00002-of-00002.gguf"
        ]
    );
    assert_eq!(big.size, 12);
}

#[test]
fn backoff_grows_exponentially_with_jitter_and_a_cap() {
    let base = Duration::from_millis(100);
    for attempt in 1..=4u32 {
        let nominal = base * 2u32.pow(attempt - 1);
        for _ in 0..20 {
            let d = backoff_delay(base, attempt);
            assert!(
                d >= nominal.mul_f64(0.5) && d < nominal.mul_f64(1.5),
                "attempt {attempt}: {d:?}"
            );
        }
    }
    assert!(backoff_delay(base, 40) < Duration::from_secs(45));
    let samples: std::collections::HashSet<_> = (0..20).map(|_| backoff_delay(base, 3)).collect();
    assert!(samples.len() > 1, "jitter varies the delay");
}

#[test]
fn etags_are_normalised() {
    assert_eq!(normalize_etag("W/\"abc\""), "abc");
    assert_eq!(normalize_etag("\"0123\""), "0123");
}
