//! LoRA adapters on stories260K: a small GGUF LoRA written here (random A/B on the output
//! projection) changes the greedy output; scale 0 and "no adapters" give the base output;
//! generations may switch adapter sets.

mod adapter_files;
mod common;

use adapter_files::write_lora;
use common::*;
use llmlocal_plugin_api::{
    abi_stable::std_types::{ROption, RString, RVec},
    AdapterRequest, ErrorKind, GenerateRequest, Step,
};
use std::path::Path;

fn adapter(path: &Path, scale: f32) -> AdapterRequest {
    AdapterRequest {
        path: RString::from(path.to_string_lossy().as_ref()),
        scale,
    }
}

fn with_adapters(path: &Path, adapters: Vec<AdapterRequest>) -> llmlocal_plugin_api::LoadRequest {
    let mut req = request(path);
    req.adapters = RVec::from(adapters);
    req
}

#[test]
fn a_lora_changes_the_output_and_scale_zero_does_not() {
    let Some(path) = stories() else { return };
    let dir = tempfile::tempdir().unwrap();
    let lora = dir.path().join("lora.gguf");
    write_lora(&lora);

    let base = load(request(&path));
    let prompt = prompt(base.as_ref(), "Once upon a time");
    let base_out = generate(base.as_ref(), GenerateRequest::greedy(prompt.clone(), 24));

    let tuned = load(with_adapters(&path, vec![adapter(&lora, 1.0)]));
    let tuned_out = generate(tuned.as_ref(), GenerateRequest::greedy(prompt.clone(), 24));
    assert_ne!(tuned_out.ids, base_out.ids, "the adapter had no effect");

    let zero = load(with_adapters(&path, vec![adapter(&lora, 0.0)]));
    let zero_out = generate(zero.as_ref(), GenerateRequest::greedy(prompt, 24));
    assert_eq!(zero_out, base_out);
}

#[test]
fn generations_switch_among_the_loaded_adapters() {
    let Some(path) = stories() else { return };
    let dir = tempfile::tempdir().unwrap();
    let lora = dir.path().join("lora.gguf");
    write_lora(&lora);
    let base = load(request(&path));
    let prompt = prompt(base.as_ref(), "Once upon a time");
    let base_out = generate(base.as_ref(), GenerateRequest::greedy(prompt.clone(), 24));
    drop(base);

    let mut req = with_adapters(&path, vec![adapter(&lora, 1.0)]);
    req.parallel = 4;
    let model = load(req);
    let tuned_out = generate(model.as_ref(), GenerateRequest::greedy(prompt.clone(), 24));
    let with = |adapters: Vec<AdapterRequest>| {
        let mut r = GenerateRequest::greedy(prompt.clone(), 24);
        r.adapters = ROption::RSome(RVec::from(adapters));
        r
    };
    // No adapters for this generation: the base model's output.
    assert_eq!(generate(model.as_ref(), with(vec![])), base_out);
    // The load set named explicitly, and the default again.
    assert_eq!(
        generate(model.as_ref(), with(vec![adapter(&lora, 1.0)])),
        tuned_out
    );
    // Interleaved groups: started together, each gets its own adapters (the decode thread
    // runs the groups one after the other).
    let mut gens = [
        model.generate(with(vec![])).unwrap(),
        model
            .generate(GenerateRequest::greedy(prompt.clone(), 24))
            .unwrap(),
        model.generate(with(vec![])).unwrap(),
        model.generate(with(vec![adapter(&lora, 0.0)])).unwrap(),
    ];
    let outs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = gens
            .iter_mut()
            .map(|g| s.spawn(move || drain(g.as_mut())))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(outs[0], base_out);
    assert_eq!(outs[1], tuned_out);
    assert_eq!(outs[2], base_out);
    assert_eq!(outs[3], base_out);
    assert!(matches!(gens[0].next().unwrap(), Step::Finished(_)));
}

#[test]
fn a_missing_adapter_file_is_refused_when_the_generation_starts() {
    let Some(path) = stories() else { return };
    let model = load(request(&path));
    let mut r = GenerateRequest::greedy(vec![1, 400], 4);
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("other.gguf");
    r.adapters = ROption::RSome(RVec::from(vec![adapter(&missing, 1.0)]));
    match model.generate(r) {
        Ok(_) => panic!("should be refused"),
        Err(err) => assert_kind(&err, ErrorKind::NotFound),
    }
}
