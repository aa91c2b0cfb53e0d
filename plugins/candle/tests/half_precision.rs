//! stories260K converted to f16 and bf16 safetensors: they load and give the f32 output.

mod common;

use candle_core::{DType, Device};
use common::{copy_dir, edit_config, greedy, load, stories};

fn convert(dst: &std::path::Path, src: &std::path::Path, dtype: DType, name: &str) {
    copy_dir(src, dst);
    let file = dst.join("model.safetensors");
    let weights = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let cast: std::collections::HashMap<String, candle_core::Tensor> = weights
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(dtype).unwrap()))
        .collect();
    candle_core::safetensors::save(&cast, &file).unwrap();
    edit_config(dst, |c| {
        c.insert("torch_dtype".into(), name.into());
    });
}

#[test]
fn f16_and_bf16_checkpoints_match_f32_greedy() {
    let Some(dir) = stories() else { return };
    let f32_model = load(&dir.join("hf"));
    let prompt = f32_model.tokenize("Once upon a time", true, false).unwrap();
    let (want, _, _) = greedy(f32_model.as_ref(), &prompt, 16);
    let f32_logits = f32_model.logits(&prompt).unwrap();
    for (dtype, name) in [(DType::F16, "float16"), (DType::BF16, "bfloat16")] {
        let tmp = tempfile::tempdir().unwrap();
        convert(tmp.path(), &dir.join("hf"), dtype, name);
        let model = load(tmp.path());
        // On the CPU the matrices stay half where the CPU has the half-weight kernel (2
        // bytes a weight, norms F32), else they are widened to f32 (4 bytes).
        let (size, params) = (
            model.metadata().size_bytes,
            model.metadata().parameter_count,
        );
        let per_weight = match llmlocal_backend_candle::cpu_f16::fast() {
            true => 2,
            false => 4,
        };
        assert!(
            size >= params * per_weight && size < params * per_weight + params / 10,
            "{name}: {size} bytes for {params} weights"
        );
        let (got, _, _) = greedy(model.as_ref(), &prompt, 16);
        let logits = model.logits(&prompt).unwrap();
        let max = f32_logits
            .iter()
            .zip(&logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!("{name}: max |logit - f32 logit| = {max}");
        assert_eq!(got, want, "{name} greedy differs from f32");
        assert!(max < 0.5, "{name}: logits differ by {max}");
    }
}
