//! llmlocal backend plugin on [candle](https://github.com/huggingface/candle).
//!
//! Reads Hugging Face safetensors folders (llama, mistral, qwen2, qwen3, phi3; f32/f16/bf16)
//! and GGUF llama, qwen3 and phi3 files ([`gguf_arch`] for the latter two), with the tokenizer from tokenizer.json or, for a GGUF without one, built
//! from the GGUF vocabulary. PEFT LoRA adapters are merged into safetensors weights at load.
//! BERT embedding models (`bert` folders and GGUF files) load as encoders that embed only
//! ([`bert`], [`bert_gguf`]).
//!
//! GGUF files take one of two paths ([`gguf_dense::choose`]): block-quantized (k-quants,
//! Q8_0 off x86 CPUs with AVX2, ...) files, and F32 files on a GPU, run through candle's
//! `quantized_llama`. F32/F16/BF16 files on the CPU, Q8_0 files on x86 CPUs (matrices kept
//! as blocks, [`cpu_q8`]), and F16/BF16 files on CUDA/Metal, are held dense instead
//! ([`gguf_dense`]): tensors read as stored (on the CPU F16/BF16 matrices stay half and are
//! widened in registers by [`cpu_f16`], F32 activations; their own dtype on a GPU), q/k
//! moved back from llama.cpp's interleaved RoPE layout, run by our own
//! [`dense_llama`] (preallocated KV cache, fused q/k/v and gate/up matmuls; on a GPU half the
//! bytes of the F32 path and few kernel launches per token, with the fused kernels of
//! `kernels/decode.cu` for a generated token). Safetensors llamas on the CPU run on it too
//! ([`hf::dense`]). Files that path cannot hold exactly (rope scaling keys, extra
//! tensors, mixed-dtype matrices) stay on `quantized_llama`, except files with llama3
//! `rope_freqs` factors, which `quantized_llama` would ignore: they always run dense (F32 on
//! the CPU or when block-quantized), or are refused (`UnsupportedArchitecture`).
//!
//! # Threads and concurrency
//!
//! The plugin starts no threads of its own. Each [`llmlocal_plugin_api::Generation`] owns
//! its KV cache (candle's model structs are cheap `Arc`-backed clones, see [`net`]) and
//! computes only inside `next()`, on the thread the host pulls it from; several
//! generations of one model therefore run at once on the host's threads, sharing the
//! read-only weights. Dropping a generation frees its cache; nothing keeps running. A
//! generation that ends normally hands its cache to the model's prompt cache ([`prefix`]).
//! candle's CPU kernels parallelise each op over rayon's global pool (`RAYON_NUM_THREADS`)
//! and quantized matmuls over its barrier pool (`CANDLE_NUM_THREADS`, else
//! `RAYON_NUM_THREADS`); the dense llama's one-token matmuls use the barrier pool too
//! ([`linear`]). Both pools are process-wide, so `LoadRequest::threads` is not used.
//!
//! # Devices and features
//!
//! The default build is CPU only. The `cuda`, `metal`, `mkl` and `accelerate` features pass
//! through to candle; `cuda:N` / `metal` are listed in the manifest only when compiled in
//! and a device really opens. On the CPU every model computes in f32 (f16/bf16 checkpoints
//! are widened at load, or, on the dense llama, in registers: [`cpu_f16`]); on a GPU in the checkpoint's dtype (for GGUF: F16/BF16 files, see
//! above; quantized files keep their blocks).

pub mod backend;
pub mod bert;
pub mod bert_gguf;
pub mod constraint;
pub mod cpu_act;
pub mod cpu_f16;
pub mod cpu_gemm;
pub(crate) mod cpu_lanes;
pub(crate) mod cpu_pool;
pub mod cpu_q8;
#[cfg(feature = "cuda")]
pub mod decode_kernels;
pub mod dense_llama;
pub mod device;
pub mod embed;
pub mod error;
pub mod files;
pub mod gemma3;
pub mod gemma3_load;
pub mod generation;
pub mod gguf;
pub mod gguf_arch;
pub mod gguf_dense;
pub mod gguf_meta;
pub mod hf;
pub mod linear;
pub mod lora;
pub mod model;
pub mod net;
pub mod prefix;
pub mod sampling;
pub mod tokenizer;

pub use backend::CandleBackend;

use llmlocal_plugin_api::{abi_stable::std_types::RString, capability, format, Manifest};

/// Generations one model runs at once (each on its caller's thread, with its own cache).
pub const PARALLEL_GENERATIONS: u32 = 4;

/// The plugin's manifest: name `candle`, the devices usable now, formats and capabilities.
pub fn manifest() -> Manifest {
    let mut manifest = Manifest::new(
        "candle",
        env!("CARGO_PKG_VERSION"),
        "candle (Hugging Face) backend: safetensors llama/mistral/qwen2 and GGUF llama",
    );
    manifest.devices = device::available().into_iter().map(RString::from).collect();
    manifest.add_format(format::SAFETENSORS);
    manifest.add_format(format::GGUF);
    // Not (yet) GBNF grammars: the host refuses those requests for candle by name.
    for name in [
        capability::LORA,
        capability::LOGIT_BIAS,
        capability::FULL_SAMPLING,
        capability::LOGPROBS,
        capability::JSON_SCHEMA,
        capability::EMBEDDINGS,
        capability::PREFIX_CACHE,
    ] {
        manifest.capabilities.insert(name);
    }
    manifest.capabilities.parallel_generations = PARALLEL_GENERATIONS;
    manifest
}

llmlocal_plugin_api::export_backend! {
    manifest: manifest,
    backend: CandleBackend::new,
}
