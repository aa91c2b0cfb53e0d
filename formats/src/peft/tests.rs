use serde_json::json;

use super::*;

const Q0: &str = "model.layers.0.self_attn.q_proj";
const Q1: &str = "model.layers.1.self_attn.q_proj";
const V0: &str = "model.layers.0.self_attn.v_proj";

/// A config as PEFT writes it, with `extra` merged over it.
fn parse_with(extra: serde_json::Value) -> Result<PeftConfig, PeftError> {
    let mut config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "stories260K",
        "r": 8,
        "lora_alpha": 16,
        "target_modules": ["q_proj", "v_proj"],
        "use_rslora": false,
        "use_dora": false,
        "fan_in_fan_out": false,
        "rank_pattern": {},
        "alpha_pattern": {},
        "modules_to_save": null,
    });
    for (k, v) in extra.as_object().expect("extra is an object") {
        config[k] = v.clone();
    }
    PeftConfig::parse(config.to_string().as_bytes())
}

fn parse_err(extra: serde_json::Value) -> String {
    match parse_with(extra) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn reads_a_plain_peft_config() {
    let c = parse_with(json!({})).unwrap();
    assert_eq!(c.rank, 8);
    assert_eq!(c.alpha, 16.0);
    assert_eq!(
        c.target_modules,
        Some(vec!["q_proj".into(), "v_proj".into()])
    );
    assert!(!c.use_rslora);
    assert!(c.rank_pattern.is_empty() && c.alpha_pattern.is_empty());
    assert_eq!(c.base_model.as_deref(), Some("stories260K"));
    assert_eq!(c.model_type, None);
    assert_eq!(c.rank_of(Q0), 8);
    assert_eq!(c.scaling(Q0), 2.0);
}

#[test]
fn rslora_scales_by_the_square_root_of_the_rank() {
    let c = parse_with(json!({"r": 16, "lora_alpha": 8, "use_rslora": true})).unwrap();
    assert_eq!(c.scaling(Q0), 2.0);
    let c = parse_with(json!({"r": 16, "lora_alpha": 8})).unwrap();
    assert_eq!(c.scaling(Q0), 0.5);
}

#[test]
fn rank_and_alpha_patterns_override_per_module() {
    let c = parse_with(json!({
        "rank_pattern": {"layers.0.self_attn.q_proj": 4},
        "alpha_pattern": {"v_proj": 2},
    }))
    .unwrap();
    assert_eq!((c.rank_of(Q0), c.alpha_of(Q0)), (4, 16.0));
    assert_eq!(c.scaling(Q0), 4.0);
    assert_eq!((c.rank_of(Q1), c.scaling(Q1)), (8, 2.0));
    assert_eq!((c.rank_of(V0), c.scaling(V0)), (8, 0.25));
    // rsLoRA uses the pattern's rank and alpha too.
    let c = parse_with(json!({"use_rslora": true, "rank_pattern": {"q_proj": 4}})).unwrap();
    assert_eq!(c.scaling(Q0), 8.0);
}

#[test]
fn a_pattern_key_matches_the_whole_path_or_a_dotted_suffix() {
    let c = parse_with(json!({"rank_pattern": {"q_proj": 4, Q1: 2}})).unwrap();
    assert_eq!(c.rank_of("q_proj"), 4);
    assert_eq!(c.rank_of("model.layers.0.self_attn.xq_proj"), 8);
    assert_eq!(c.rank_of("model.layers.0.self_attn.q_proj_2"), 8);
    // `^` anchors at the start of the path, as in PEFT's regex.
    let c = parse_with(json!({"rank_pattern": {"^layers.0.self_attn.q_proj": 4, "^model.layers.1.self_attn.q_proj": 2}})).unwrap();
    assert_eq!(c.rank_of(Q0), 8);
    assert_eq!(c.rank_of(Q1), 2);
    // `.` is the regex wildcard: `layers.1` does not match `layers.11`, `layers.1x` does.
    let c = parse_with(json!({"rank_pattern": {"layers.1.self_attn.q_proj": 2}})).unwrap();
    assert_eq!(c.rank_of("model.layers.11.self_attn.q_proj"), 8);
    assert_eq!(c.rank_of("model.layers-1.self_attn.q_proj"), 2);
}

#[test]
fn the_first_matching_key_in_file_order_wins_as_in_peft() {
    let general_first = br#"{"r": 8, "lora_alpha": 16,
        "rank_pattern": {"q_proj": 4, "model.layers.0.self_attn.q_proj": 2},
        "alpha_pattern": {"self_attn.q_proj": 1, "q_proj": 3}}"#;
    let c = PeftConfig::parse(general_first).unwrap();
    assert_eq!(c.rank_of(Q0), 4);
    assert_eq!(c.alpha_of(Q0), 1.0);
    let specific_first = br#"{"r": 8, "lora_alpha": 16,
        "rank_pattern": {"model.layers.0.self_attn.q_proj": 2, "q_proj": 4}}"#;
    let c = PeftConfig::parse(specific_first).unwrap();
    assert_eq!((c.rank_of(Q0), c.rank_of(Q1)), (2, 4));
    let keys: Vec<&str> = c
        .rank_pattern
        .entries()
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(keys, [Q0, "q_proj"]);
}

#[test]
fn a_repeated_pattern_key_keeps_its_place_and_its_last_value() {
    let c = PeftConfig::parse(
        br#"{"r": 8, "lora_alpha": 16, "rank_pattern": {"q_proj": 4, "v_proj": 2, "q_proj": 6}}"#,
    )
    .unwrap();
    assert_eq!(
        c.rank_pattern.entries(),
        [("q_proj".to_string(), 6), ("v_proj".to_string(), 2)]
    );
}

#[test]
fn regex_pattern_keys_are_refused() {
    for key in [".*q_proj", "layers\\.0", "(q|v)_proj", "q_proj$", "a^b"] {
        let msg = parse_err(json!({"alpha_pattern": {key: 2}}));
        assert!(
            msg.contains("alpha_pattern key") && msg.contains(key),
            "{msg}"
        );
        assert!(msg.contains("regular expression"), "{msg}");
    }
    let msg = parse_err(json!({"rank_pattern": {"": 2}}));
    assert!(
        msg.contains("`rank_pattern` must be keyed by module names"),
        "{msg}"
    );
}

#[test]
fn null_options_count_as_absent() {
    let c = parse_with(json!({
        "rank_pattern": null, "alpha_pattern": null, "target_modules": null,
        "use_rslora": null, "use_dora": null, "peft_type": null,
        "base_model_name_or_path": null,
    }))
    .unwrap();
    assert!(c.rank_pattern.is_empty() && c.alpha_pattern.is_empty());
    assert_eq!(
        (c.target_modules, c.use_rslora, c.base_model),
        (None, false, None)
    );
}

#[test]
fn a_regex_target_modules_string_gives_no_list() {
    let c = parse_with(json!({"target_modules": ".*\\.(q|v)_proj"})).unwrap();
    assert_eq!(c.target_modules, None);
}

#[test]
fn model_type_or_base_model_type_names_the_architecture() {
    let c = parse_with(json!({"model_type": "qwen2", "base_model_type": "llama"})).unwrap();
    assert_eq!(c.model_type.as_deref(), Some("qwen2"));
    let c = parse_with(json!({"base_model_type": "llama"})).unwrap();
    assert_eq!(c.model_type.as_deref(), Some("llama"));
}

#[test]
fn malformed_json_is_reported_as_such() {
    let e = PeftConfig::parse(b"{\"r\": 8,").unwrap_err();
    assert!(matches!(e, PeftError::Json(_)));
    assert!(e.to_string().starts_with("not valid JSON"), "{e}");
    let e = PeftConfig::parse(b"[1, 2]").unwrap_err();
    assert!(
        e.to_string().starts_with("not a PEFT adapter config"),
        "{e}"
    );
    let e =
        PeftConfig::parse(br#"{"r": 8, "lora_alpha": 8, "rank_pattern": "q_proj"}"#).unwrap_err();
    assert!(
        e.to_string()
            .contains("an object mapping module names to numbers"),
        "{e}"
    );
    assert!(!e.is_unsupported_feature());
}

#[test]
fn missing_rank_or_alpha_is_named() {
    let e = PeftConfig::parse(br#"{"lora_alpha": 16}"#).unwrap_err();
    assert_eq!(e.to_string(), "the key `r` is missing");
    let e = PeftConfig::parse(br#"{"r": 8}"#).unwrap_err();
    assert_eq!(e.to_string(), "the key `lora_alpha` is missing");
    assert!(!e.is_unsupported_feature());
}

#[test]
fn values_of_the_wrong_type_are_named_with_what_was_expected() {
    let cases = [
        (
            json!({"r": "8"}),
            "`r` must be a positive integer, but it is \"8\"",
        ),
        (
            json!({"r": 8.5}),
            "`r` must be a positive integer, but it is 8.5",
        ),
        (
            json!({"r": -1}),
            "`r` must be a positive integer, but it is -1",
        ),
        (json!({"lora_alpha": "16"}), "`lora_alpha` must be a number"),
        (
            json!({"use_rslora": "yes"}),
            "`use_rslora` must be true or false",
        ),
        (
            json!({"target_modules": 3}),
            "`target_modules` must be a list of module names or a regex string",
        ),
        (
            json!({"target_modules": ["q_proj", 1]}),
            "`target_modules` must be a list of module names",
        ),
        (
            json!({"rank_pattern": {"q_proj": 0}}),
            "`rank_pattern.q_proj` must be a positive integer, but it is 0",
        ),
        (
            json!({"rank_pattern": {"q_proj": "4"}}),
            "`rank_pattern.q_proj` must be a positive integer",
        ),
        (
            json!({"alpha_pattern": {"q_proj": [1]}}),
            "`alpha_pattern.q_proj` must be a number, but it is [1]",
        ),
        (json!({"peft_type": 1}), "`peft_type` must be a string"),
    ];
    for (extra, want) in cases {
        let msg = parse_err(extra.clone());
        assert!(msg.starts_with(want), "{extra}: {msg}");
    }
    let long = "x".repeat(100);
    let msg = parse_err(json!({"r": long}));
    assert!(msg.ends_with("...") && msg.len() < 100, "{msg}");
}

#[test]
fn unsupported_options_are_refused() {
    let cases = [
        (json!({"r": 0}), "rank r is 0"),
        (json!({"peft_type": "IA3"}), "peft_type `IA3` is not LORA"),
        (
            json!({"use_dora": true}),
            "DoRA adapters (use_dora) are not supported",
        ),
        (json!({"fan_in_fan_out": true}), "fan_in_fan_out adapters"),
    ];
    for (extra, want) in cases {
        let e = parse_with(extra.clone()).unwrap_err();
        assert!(e.to_string().starts_with(want), "{extra}: {e}");
        assert!(e.is_unsupported_feature(), "{e}");
    }
}

#[test]
fn tensor_names_split_into_module_and_half() {
    let split = |k| split_tensor_name(k).unwrap();
    assert_eq!(
        split("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"),
        (Q0, LoraHalf::A)
    );
    assert_eq!(
        split("base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight"),
        (Q0, LoraHalf::B)
    );
    assert_eq!(
        split("model.layers.0.self_attn.v_proj.lora_B.weight"),
        (V0, LoraHalf::B)
    );
    for key in [
        "base_model.model.model.embed_tokens.lora_embedding_A",
        "base_model.model.lm_head.weight",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector",
    ] {
        let e = split_tensor_name(key).unwrap_err();
        assert!(
            e.to_string().contains(key) && e.is_unsupported_feature(),
            "{e}"
        );
    }
}

#[test]
fn a_pattern_table_with_many_keys_parses_in_linear_time() {
    // 200,000 keys (2.6 MB): each key was searched for among all before it, 2 * 10^10
    // comparisons (minutes); with an index it takes well under a second.
    let n = 200_000;
    let keys: Vec<String> = (0..n).map(|i| format!("\"m{i}\":1")).collect();
    let text = format!(
        r#"{{"r": 8, "lora_alpha": 8, "rank_pattern": {{{}, "m7": 3}}}}"#,
        keys.join(",")
    );
    let started = std::time::Instant::now();
    let c = PeftConfig::parse(text.as_bytes()).unwrap();
    let elapsed = started.elapsed();
    assert_eq!(c.rank_pattern.entries().len(), n);
    // A repeated key keeps its first place and takes its last value.
    assert_eq!(c.rank_pattern.entries()[7], ("m7".to_string(), 3));
    assert!(elapsed.as_secs() < 20, "parsing took {elapsed:?}");
}
