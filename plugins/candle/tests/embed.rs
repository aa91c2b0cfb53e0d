//! Embeddings of the candle plugin on the fixture model's three forms: the same weights as a
//! safetensors folder, an F32 GGUF and a Q8_0 GGUF (dequantized for embeddings) give the
//! same direction.

mod common;

use common::load;
use llmlocal_plugin_api::{EmbedRequest, Model};

fn embed(model: &dyn Model, text: &str) -> Vec<f32> {
    let ids = model.tokenize(text, true, false).expect("tokenizes");
    let mut request = EmbedRequest::new(vec![ids]);
    request.normalize = true;
    model.embed(request).expect("embeds").remove(0)
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn the_three_forms_of_the_fixture_agree() {
    let paths = llmlocal_fixtures::ensure_default().expect("fixtures are written");
    let text = "Once upon a time";
    let hf = embed(load(&paths.hf_dir).as_ref(), text);
    let f32_gguf = embed(load(&paths.gguf_f32).as_ref(), text);
    let q8 = embed(load(&paths.gguf_q8_0).as_ref(), text);
    assert_eq!(hf.len(), 64);
    // Unit vectors: the dot product is the cosine.
    assert!(dot(&hf, &f32_gguf) > 0.9999, "{}", dot(&hf, &f32_gguf));
    assert!(dot(&f32_gguf, &q8) > 0.99, "{}", dot(&f32_gguf, &q8));
}
