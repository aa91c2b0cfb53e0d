//! GGUF llama files held dense (`DenseLlama`, the half-precision GPU path),
//! forced on the CPU and compared with the quantized_llama path on the same file.

mod common;

use candle_core::quantized::gguf_file::{self, Content};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, DeviceLocation};
use common::{greedy, max_diff, rewrite_gguf_as, stories};
use llmlocal_backend_candle::cpu_q8;
use llmlocal_backend_candle::gguf::{self, Loaded};
use llmlocal_backend_candle::gguf_dense::{self, Layout};
use llmlocal_backend_candle::net::Net;
use llmlocal_plugin_api::{ErrorKind, Model};
use std::path::{Path, PathBuf};

fn fixture_f32() -> PathBuf {
    llmlocal_fixtures::ensure_default()
        .expect("writing the fixture models")
        .gguf_f32
}

/// Loads `path` on the CPU in `layout` (`None`: the automatic choice); says whether the
/// network came out dense.
fn load_as(path: &Path, layout: Option<Layout>) -> (Box<dyn Model>, bool) {
    let loaded = gguf::load_as(path, &Device::Cpu, 0, layout)
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
    let dense = is_dense(&loaded);
    (common::cpu_model(loaded), dense)
}

fn is_dense(loaded: &Loaded) -> bool {
    matches!(loaded.net, Net::Dense(_))
}

fn half_copy(src: &Path, dir: &Path, dtype: GgmlDType) -> PathBuf {
    let dst = dir.join(format!("half-{dtype:?}.gguf"));
    rewrite_gguf_as(src, &dst, Some(dtype), |_| {}, Vec::new());
    dst
}

/// The prompt (tokens) whose greedy continuation runs longest: the fixture's "!" chain is
/// 93 tokens before EOS, stories260K writes on past 64.
fn prompt(model: &dyn Model, path: &Path) -> Vec<u32> {
    let text = if path.to_string_lossy().contains("stories") {
        "Once upon a time"
    } else {
        "!"
    };
    model.tokenize(text, true, true).unwrap()
}

/// Dense vs quantized on one file: greedy tokens (and how many) and the largest logit
/// difference over the prompt and over the prompt plus the whole continuation.
fn compare(path: &Path, dense: Layout, tokens: u32) -> (Vec<u32>, Vec<u32>, f32) {
    let (reference, ref_dense) = load_as(path, Some(Layout::Quantized));
    let (model, got_dense) = load_as(path, Some(dense));
    assert!(
        !ref_dense,
        "{}: the quantized layout loads quantized",
        path.display()
    );
    assert!(got_dense, "{}: {dense:?} loads dense", path.display());
    let prompt = prompt(reference.as_ref(), path);
    let (want, _, _) = greedy(reference.as_ref(), &prompt, tokens);
    let (got, _, _) = greedy(model.as_ref(), &prompt, tokens);
    let mut all = prompt.clone();
    all.extend(&want);
    let diff = [&prompt, &all]
        .iter()
        .map(|t| max_diff(&reference.logits(t).unwrap(), &model.logits(t).unwrap()))
        .fold(0.0, f32::max);
    (want, got, diff)
}

#[test]
fn dense_f32_equals_the_quantized_path() {
    let mut files = vec![fixture_f32()];
    files.extend(stories().map(|d| d.join("stories260K.gguf")));
    for path in files {
        let (want, got, diff) = compare(&path, Layout::Dense(DType::F32), 64);
        eprintln!("{}: dense F32 max |logit diff| {diff}", path.display());
        assert!(
            want.len() >= 32,
            "{}: only {} tokens",
            path.display(),
            want.len()
        );
        assert_eq!(got, want, "{}: greedy tokens", path.display());
        assert!(diff < 1e-4, "{}: logits differ by {diff}", path.display());
    }
}

/// Q8_0 files held as blocks (cpu_q8) against quantized_llama on the same file: both
/// quantize the activations to Q8_0 blocks and take int8 dot products, so only the order of
/// float additions differs (and, through it, a rare activation rounded to the other
/// neighbour). The weights take the file's bytes.
#[test]
fn dense_q8_0_equals_the_quantized_path() {
    // (stories260K has no Q8_0 form: its 172-wide FFN is not whole blocks of 32.)
    let path = llmlocal_fixtures::ensure_default().unwrap().gguf_q8_0;
    let (want, got, diff) = compare(&path, Layout::DenseQ8, 64);
    eprintln!("dense Q8_0 max |logit diff| {diff}");
    assert!(want.len() >= 32, "only {} tokens", want.len());
    assert_eq!(got, want, "greedy tokens");
    assert!(diff < 1e-3, "logits differ by {diff}");
    let content = Content::read(&mut std::fs::File::open(&path).unwrap()).unwrap();
    let file_bytes: usize = content
        .tensor_infos
        .values()
        .map(|i| i.shape.elem_count() / i.ggml_dtype.block_size() * i.ggml_dtype.type_size())
        .sum();
    let (model, _) = load_as(&path, Some(Layout::DenseQ8));
    assert_eq!(model.metadata().size_bytes, file_bytes as u64);
}

#[test]
fn dense_half_is_close_to_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let mut files = vec![fixture_f32()];
    files.extend(stories().map(|d| d.join("stories260K.gguf")));
    for src in files {
        let (f32_model, _) = load_as(&src, Some(Layout::Quantized));
        let prompt = prompt(f32_model.as_ref(), &src);
        let (want, _, _) = greedy(f32_model.as_ref(), &prompt, 32);
        let f32_logits = f32_model.logits(&prompt).unwrap();
        // Measured on the CPU: fixture 0.007 (F16) / 0.05 (BF16), stories260K 0.02 / 0.16;
        // the greedy check is what says the rounding does not change the model's choices.
        let cases = [
            (GgmlDType::F16, DType::F16, 0.1),
            (GgmlDType::BF16, DType::BF16, 0.5),
        ];
        for (ggml, dtype, tolerance) in cases {
            let path = half_copy(&src, tmp.path(), ggml);
            let label = format!("{} as {dtype:?}", src.display());
            let (model, dense) = load_as(&path, Some(Layout::Dense(dtype)));
            assert!(dense, "{label}: loads dense");
            let m = model.metadata();
            // Two bytes a matrix weight; the norms (a few per cent here) are F32.
            assert!(
                m.size_bytes >= m.parameter_count * 2
                    && m.size_bytes < m.parameter_count * 2 + m.parameter_count / 10,
                "{label}: {} bytes for {} weights",
                m.size_bytes,
                m.parameter_count
            );
            let (got, _, _) = greedy(model.as_ref(), &prompt, 32);
            let diff = max_diff(&f32_logits, &model.logits(&prompt).unwrap());
            eprintln!(
                "{label}: max |logit - f32 logit| {diff}, tokens {}",
                got.len()
            );
            assert!(want.len() >= 16, "{label}: only {} tokens", want.len());
            assert_eq!(got, want, "{label}: greedy tokens");
            assert!(diff < tolerance, "{label}: logits differ by {diff}");
        }
    }
}

/// A real llama.cpp-converted F16 file (random weights, so only the logits are compared):
/// read dense in F32 it is the quantized path exactly, in F16 close to it. Its logits span
/// only ~0.5 and barely depend on attention, so it checks reading a converter's F16 tensors
/// and norms; the trained models above are what prove the q/k permutation.
#[test]
fn converter_written_f16_file_reads_dense() {
    let Some(path) = llmlocal_fixtures::shared::model(
        "random-fallback/llama-2-tiny-random/llama-2-tiny-random.gguf",
    ) else {
        return;
    };
    let content = Content::read(&mut std::fs::File::open(&path).unwrap()).unwrap();
    assert_eq!(gguf_dense::matrix_dtype(&content), Some(GgmlDType::F16));
    let (reference, _) = load_as(&path, Some(Layout::Quantized));
    let tokens = reference
        .tokenize("Once upon a time, in a land far away", true, false)
        .unwrap();
    let want = reference.logits(&tokens).unwrap();
    for (dtype, tolerance) in [(DType::F32, 1e-5), (DType::F16, 1e-3)] {
        let (model, dense) = load_as(&path, Some(Layout::Dense(dtype)));
        assert!(dense);
        let diff = max_diff(&want, &model.logits(&tokens).unwrap());
        eprintln!("tiny-random dense {dtype:?}: max |logit diff| {diff}");
        assert!(diff < tolerance, "{dtype:?}: logits differ by {diff}");
    }
}

#[test]
fn half_files_run_dense_in_their_dtype_on_a_gpu_and_with_half_weights_on_the_cpu() {
    let cuda = DeviceLocation::Cuda { gpu_id: 0 };
    let metal = DeviceLocation::Metal { gpu_id: 0 };
    let cpu = DeviceLocation::Cpu;
    // Q8_0 runs dense (as blocks) where cpu_q8 has a SIMD kernel.
    let q8_cpu = match cpu_q8::accelerated() {
        true => Layout::DenseQ8,
        false => Layout::Quantized,
    };
    // Half matrices stay half on a CPU with the half-weight kernel, else widen to F32.
    let (cpu_f16, cpu_bf16) = match llmlocal_backend_candle::cpu_f16::fast() {
        true => (DType::F16, DType::BF16),
        false => (DType::F32, DType::F32),
    };
    let cases = [
        (Some(GgmlDType::F16), &cuda, Layout::Dense(DType::F16)),
        (Some(GgmlDType::BF16), &cuda, Layout::Dense(DType::BF16)),
        (Some(GgmlDType::F16), &metal, Layout::Dense(DType::F16)),
        (Some(GgmlDType::Q8_0), &cuda, Layout::Quantized),
        (Some(GgmlDType::Q4K), &cuda, Layout::Quantized),
        (Some(GgmlDType::F32), &cuda, Layout::Quantized),
        (None, &cuda, Layout::Quantized),
        (Some(GgmlDType::F16), &cpu, Layout::Dense(cpu_f16)),
        (Some(GgmlDType::BF16), &cpu, Layout::Dense(cpu_bf16)),
        (Some(GgmlDType::F32), &cpu, Layout::Dense(DType::F32)),
        (Some(GgmlDType::Q8_0), &cpu, q8_cpu),
        (Some(GgmlDType::Q4K), &cpu, Layout::Quantized),
        (None, &cpu, Layout::Quantized),
    ];
    for (dtype, device, want) in cases {
        assert_eq!(
            gguf_dense::choose(dtype, device),
            want,
            "{dtype:?} on {device:?}"
        );
    }
}

#[test]
fn matrix_dtype_reads_the_file() {
    let fixtures = llmlocal_fixtures::ensure_default().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let f16 = half_copy(&fixtures.gguf_f32, tmp.path(), GgmlDType::F16);
    for (path, want) in [
        (&fixtures.gguf_f32, GgmlDType::F32),
        (&fixtures.gguf_q8_0, GgmlDType::Q8_0),
        (&f16, GgmlDType::F16),
    ] {
        let content = Content::read(&mut std::fs::File::open(path).unwrap()).unwrap();
        assert_eq!(
            gguf_dense::matrix_dtype(&content),
            Some(want),
            "{}",
            path.display()
        );
    }
    // On the CPU the automatic choice runs F32 and F16 files dense (in F32), Q8_0 dense as
    // blocks where cpu_q8 has a SIMD kernel.
    for (path, dense) in [
        (&f16, true),
        (&fixtures.gguf_f32, true),
        (&fixtures.gguf_q8_0, cpu_q8::accelerated()),
    ] {
        let loaded = gguf::load_as(path, &Device::Cpu, 0, None).unwrap();
        assert_eq!(is_dense(&loaded), dense, "{}", path.display());
    }
}

/// Why the dense path cannot hold a fixture-shaped file.
fn obstacle(path: &Path) -> Option<String> {
    use llmlocal_fixtures::spec;
    let content = Content::read(&mut std::fs::File::open(path).unwrap()).unwrap();
    let dims = gguf::Dims {
        heads: spec::NUM_HEADS,
        kv_heads: spec::NUM_KV_HEADS,
        layers: spec::NUM_LAYERS,
        hidden: spec::HIDDEN_SIZE,
        experts: 0,
    };
    gguf_dense::obstacle(&content, &dims)
}

/// What the dense llama cannot compute (rope scaling, extra tensors, block-quantized
/// weights) falls back to quantized_llama even when dense is asked for.
#[test]
fn unrepresentable_files_fall_back_to_the_quantized_path() {
    let fixtures = llmlocal_fixtures::ensure_default().unwrap();
    let src = &fixtures.gguf_f32;
    let tmp = tempfile::tempdir().unwrap();
    let scaled = tmp.path().join("scaled.gguf");
    rewrite_gguf_as(
        src,
        &scaled,
        Some(GgmlDType::F16),
        |md| {
            md.push((
                "llama.rope.scaling.type".into(),
                gguf_file::Value::String("linear".into()),
            ));
            md.push((
                "llama.rope.scaling.factor".into(),
                gguf_file::Value::F32(2.0),
            ));
        },
        Vec::new(),
    );
    let freqs = tmp.path().join("freqs.gguf");
    let ones = candle_core::Tensor::ones(8, DType::F32, &Device::Cpu).unwrap();
    rewrite_gguf_as(
        src,
        &freqs,
        Some(GgmlDType::F16),
        |_| {},
        vec![(
            "rope_freqs.weight".into(),
            QTensor::quantize(&ones, GgmlDType::F32).unwrap(),
        )],
    );
    let plain = half_copy(src, tmp.path(), GgmlDType::F16);
    assert_eq!(obstacle(&plain), None, "a plain F16 file has no obstacle");
    // llama3 rope factors have a place in the dense llama (it applies them).
    assert_eq!(obstacle(&freqs), None, "rope_freqs.weight is representable");
    for (path, reason) in [
        (&scaled, "rope scaling"),
        (&fixtures.gguf_q8_0, "block-quantized"),
    ] {
        let why = obstacle(path).unwrap_or_default();
        assert!(why.contains(reason), "{reason}: obstacle says {why:?}");
        let loaded = gguf::load_as(path, &Device::Cpu, 0, Some(Layout::Dense(DType::F16)))
            .unwrap_or_else(|e| panic!("{reason}: {e}"));
        assert!(!is_dense(&loaded), "{reason}: stays quantized");
        // And it still runs.
        let model = common::cpu_model(loaded);
        let tokens = model.tokenize("Hello world", true, true).unwrap();
        assert_eq!(
            model.logits(&tokens).unwrap().len(),
            llmlocal_fixtures::spec::VOCAB_SIZE
        );
    }
}

/// A half file cut short fails the dense load with a format error naming the tensor.
#[test]
fn truncated_half_file_is_a_format_error() {
    let fixtures = llmlocal_fixtures::ensure_default().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = half_copy(&fixtures.gguf_f32, tmp.path(), GgmlDType::F16);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    let err = match gguf::load_as(&path, &Device::Cpu, 0, Some(Layout::Dense(DType::F16))) {
        Ok(_) => panic!("a truncated file loaded"),
        Err(e) => e,
    };
    assert_eq!(err.kind, ErrorKind::UnsupportedFormat, "{}", err.message);
    assert!(err.message.contains("runs past the end"), "{}", err.message);
}

/// The dense KV cache starts at 256 positions and doubles: a sequence of 400 tokens fed one
/// at a time (growth with a full cache) and in chunks of 96 (growth in the middle of a
/// chunk, masks at an offset) gives the quantized path's logits at every step.
#[test]
fn dense_cache_growth_and_chunked_prompts_match_the_quantized_path() {
    let Some(dir) = stories() else { return };
    let path = dir.join("stories260K.gguf");
    let reference = gguf::load_as(&path, &Device::Cpu, 0, Some(Layout::Quantized)).unwrap();
    let dense = gguf::load_as(&path, &Device::Cpu, 0, Some(Layout::Dense(DType::F32))).unwrap();
    assert!(is_dense(&dense));
    let vocab = reference.info.vocab_size as u32;
    assert!(
        dense.info.context_length >= 400,
        "context {}",
        dense.info.context_length
    );
    // Any ids will do: the logits are compared, not the text.
    let tokens: Vec<u32> = (0..400u32)
        .map(|i| 1 + (i * 37 + i / 7) % (vocab - 1))
        .collect();
    let mut want = reference.net.session(&Device::Cpu).unwrap();
    let mut one_by_one = dense.net.session(&Device::Cpu).unwrap();
    let mut worst = 0f32;
    for (pos, token) in tokens.iter().enumerate() {
        let a = want.forward(&[*token], pos, &Device::Cpu).unwrap();
        let b = one_by_one.forward(&[*token], pos, &Device::Cpu).unwrap();
        worst = worst.max(max_diff(&a, &b));
    }
    eprintln!("400 single steps: max |logit diff| {worst}");
    assert!(worst < 1e-4, "single steps: logits differ by {worst}");

    let mut want = reference.net.session(&Device::Cpu).unwrap();
    let mut chunked = dense.net.session(&Device::Cpu).unwrap();
    let mut worst = 0f32;
    for (i, chunk) in tokens.chunks(96).enumerate() {
        let a = want.forward(chunk, i * 96, &Device::Cpu).unwrap();
        let b = chunked.forward(chunk, i * 96, &Device::Cpu).unwrap();
        worst = worst.max(max_diff(&a, &b));
    }
    eprintln!("chunks of 96: max |logit diff| {worst}");
    assert!(worst < 1e-4, "chunks: logits differ by {worst}");
}

#[test]
fn dense_sessions_refuse_gaps_and_overflow() {
    let Some(dir) = stories() else { return };
    let path = dir.join("stories260K.gguf");
    let dense = gguf::load_as(&path, &Device::Cpu, 32, Some(Layout::Dense(DType::F32))).unwrap();
    let mut session = dense.net.session(&Device::Cpu).unwrap();
    let gap = session.forward(&[1, 2], 3, &Device::Cpu).unwrap_err();
    assert!(gap.message.contains("position 3"), "{}", gap.message);
    session.forward(&[1; 30], 0, &Device::Cpu).unwrap();
    let full = session.forward(&[1; 3], 30, &Device::Cpu).unwrap_err();
    assert!(full.message.contains("context of 32"), "{}", full.message);
    // A refused step leaves the session usable.
    session.forward(&[1, 2], 30, &Device::Cpu).unwrap();
}
