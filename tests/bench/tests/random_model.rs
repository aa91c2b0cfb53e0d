//! The random benchmark model writer produces a GGUF llama.cpp loads with the asked shape.

use llama_cpp_2::{
    llama_backend::LlamaBackend,
    model::{params::LlamaModelParams, LlamaModel},
};
use llmlocal_bench::random_gguf::{write, write_as, Shape, Storage};
use std::{path::PathBuf, sync::OnceLock};

/// llama.cpp's backend may be initialised once per process; the tests share it.
fn backend() -> &'static LlamaBackend {
    static BACKEND: OnceLock<LlamaBackend> = OnceLock::new();
    BACKEND.get_or_init(|| {
        llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
        LlamaBackend::init().unwrap()
    })
}

/// stories260K's GGUF (the tokenizer source): the copy that ships in the repository.
fn stories_tokenizer() -> Option<PathBuf> {
    let tokenizer =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/stories260K/stories260K.gguf");
    assert!(
        tokenizer.is_file(),
        "{} is part of the repository",
        tokenizer.display()
    );
    Some(tokenizer)
}

#[test]
fn a_small_random_model_loads_with_its_shape() {
    let Some(tokenizer) = stories_tokenizer() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("random.gguf");
    let shape = Shape {
        n_embd: 64,
        n_layer: 3,
        n_ff: 96,
        n_head: 4,
        n_head_kv: 2,
        context_length: 256,
        n_vocab: 0,
        tied_embeddings: false,
    };
    write(&path, &tokenizer, &shape).unwrap();
    let model = LlamaModel::load_from_file(backend(), &path, &LlamaModelParams::default()).unwrap();
    assert_eq!(model.n_layer(), 3);
    assert_eq!(model.n_embd(), 64);
    assert_eq!(model.n_head(), 4);
    assert_eq!(model.n_head_kv(), 2);
    assert_eq!(model.n_vocab(), 512);
    assert_eq!(model.n_ctx_train(), 256);
    assert_eq!(
        model.meta_val_str("general.name").unwrap(),
        "llmlocal-bench-random-llama"
    );
}

/// The F32 and Q8_0 files of one shape load in llama.cpp with that shape, the type llama.cpp
/// reports, and the sizes their storage implies (Q8_0: 34 bytes per 32 values).
#[test]
fn f32_and_q8_0_random_models_load_with_their_storage() {
    let Some(tokenizer) = stories_tokenizer() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let shape = Shape {
        n_embd: 128,
        n_layer: 2,
        n_ff: 256,
        n_head: 4,
        n_head_kv: 4,
        context_length: 256,
        n_vocab: 0,
        tied_embeddings: false,
    };
    let mut sizes = Vec::new();
    for (storage, file_type) in [(Storage::F32, "0"), (Storage::Q8_0, "7")] {
        let path = dir.path().join(format!("random-{}.gguf", storage.suffix()));
        write_as(&path, &tokenizer, &shape, storage).unwrap();
        let model =
            LlamaModel::load_from_file(backend(), &path, &LlamaModelParams::default()).unwrap();
        assert_eq!(model.n_layer(), 2);
        assert_eq!(model.n_embd(), 128);
        assert_eq!(model.n_vocab(), 512);
        assert_eq!(model.meta_val_str("general.file_type").unwrap(), file_type);
        sizes.push(model.size());
    }
    // Matrices: 2 x (128 x 512) + 2 layers x (4 x 128^2 + 3 x 128 x 256); norms 5 x 128 f32.
    let matrix_values: u64 = 2 * 128 * 512 + 2 * (4 * 128 * 128 + 3 * 128 * 256);
    let norms = 5 * 128 * 4;
    assert_eq!(sizes[0], matrix_values * 4 + norms);
    assert_eq!(sizes[1], matrix_values / 32 * 34 + norms);
}

/// A padded vocabulary (as the Llama-3.2-1B benchmark shape asks) loads with the asked
/// size, the real tokens keep their ids and text, and tied embeddings drop `output.weight`.
#[test]
fn padded_vocabulary_and_tied_embeddings_load() {
    let Some(tokenizer) = stories_tokenizer() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let shape = Shape {
        n_embd: 64,
        n_layer: 1,
        n_ff: 128,
        n_head: 4,
        n_head_kv: 1,
        context_length: 128,
        n_vocab: 1000,
        tied_embeddings: true,
    };
    let path = dir.path().join("padded.gguf");
    write_as(&path, &tokenizer, &shape, Storage::F32).unwrap();
    let model = LlamaModel::load_from_file(backend(), &path, &LlamaModelParams::default()).unwrap();
    assert_eq!(model.n_vocab(), 1000);
    let original =
        LlamaModel::load_from_file(backend(), &tokenizer, &LlamaModelParams::default()).unwrap();
    let text = "Once upon a time";
    let ids = |m: &LlamaModel| m.vocab().tokenize(text.as_bytes(), true, false);
    assert_eq!(ids(&model), ids(&original));
    // Matrices: one tied 64 x 1000 embedding + 1 layer x (2 x 64^2 + 2 x 64 x 16 + 3 x 64 x 128).
    let matrix_values: u64 = 64 * 1000 + (2 * 64 * 64 + 2 * 64 * 16 + 3 * 64 * 128);
    let norms = 3 * 64 * 4;
    assert_eq!(model.size(), matrix_values * 4 + norms);
}
