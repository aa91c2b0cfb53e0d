//! Embeddings of the llama-cpp plugin on stories260K (a llama: no pooling of its own, so
//! mean unless asked).

mod common;

use common::*;
use llmlocal_plugin_api::{EmbedRequest, ErrorKind, Model};

fn embed(
    model: &dyn Model,
    inputs: Vec<Vec<u32>>,
    pooling: &str,
    normalize: bool,
) -> Vec<Vec<f32>> {
    let mut r = EmbedRequest::new(inputs);
    r.pooling = pooling.into();
    r.normalize = normalize;
    model.embed(r).expect("embeds")
}

#[test]
fn every_pooling_gives_the_documented_shape() {
    let Some(path) = stories() else { return };
    let model = load(request(&path));
    let ids = model.tokenize("Once upon a time", true, false).unwrap();
    for pooling in ["", "mean", "cls", "last"] {
        let v = embed(model.as_ref(), vec![ids.clone()], pooling, false);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].len(), 64, "pooling {pooling:?}");
    }
    let v = embed(model.as_ref(), vec![ids.clone()], "none", false);
    assert_eq!(v[0].len(), 64 * ids.len());
    // Mean pooling is the mean of the per-token vectors.
    let mean = embed(model.as_ref(), vec![ids.clone()], "mean", false);
    for d in 0..64 {
        let avg: f32 = v[0].chunks(64).map(|t| t[d]).sum::<f32>() / ids.len() as f32;
        assert!(
            (avg - mean[0][d]).abs() < 1e-4,
            "dim {d}: {avg} vs {}",
            mean[0][d]
        );
    }
    // Last pooling is the last token's vector.
    let last = embed(model.as_ref(), vec![ids.clone()], "last", false);
    let tail = &v[0][64 * (ids.len() - 1)..];
    assert!(last[0].iter().zip(tail).all(|(a, b)| (a - b).abs() < 1e-5));
}

#[test]
fn inputs_longer_than_the_context_are_refused_by_name() {
    let Some(path) = stories() else { return };
    let mut req = request(&path);
    req.context_length = 16;
    let model = load(req);
    let err = model
        .embed(EmbedRequest::new(vec![vec![5; 17]]))
        .expect_err("too long");
    assert_kind(&err, ErrorKind::InvalidRequest);
    assert!(err.message.contains("16"), "{err}");
    // Exactly the context is fine: no room for generated tokens is needed.
    assert_eq!(
        model
            .embed(EmbedRequest::new(vec![vec![5; 16]]))
            .unwrap()
            .len(),
        1
    );
}

/// Three inputs of different lengths: one vector each, in order.
#[test]
fn three_inputs_of_different_lengths() {
    let Some(path) = stories() else { return };
    let mut req = request(&path);
    req.parallel = 4;
    let model = load(req);
    let inputs: Vec<Vec<u32>> = [
        "Once upon a time",
        "The cat sat on the mat.",
        "A little girl went to the park with her mom and saw a big red ball",
    ]
    .iter()
    .map(|t| model.tokenize(t, true, false).unwrap())
    .collect();
    let v = embed(model.as_ref(), inputs.clone(), "", false);
    assert_eq!(v.len(), 3);
    for (i, input) in inputs.into_iter().enumerate() {
        assert_eq!(embed(model.as_ref(), vec![input], "", false)[0], v[i]);
    }
}

/// On a Q8_0 model llama.cpp's matmul kernels change with the rows of a decode (at ~64):
/// an input must still give the same vector in a large batch as alone.
#[test]
fn a_quantized_model_gives_the_same_vector_in_a_large_batch() {
    let path = llmlocal_fixtures::ensure_default()
        .expect("fixtures are written")
        .gguf_q8_0;
    let model = load(request(&path));
    let a: Vec<u32> = model.tokenize("Once upon a time", true, false).unwrap();
    let alone = embed(model.as_ref(), vec![a.clone()], "", false);
    let batch = embed(model.as_ref(), vec![a; 8], "", false);
    assert!(batch.iter().all(|v| *v == alone[0]));
}
