//! PEFT -> GGUF LoRA, as llama.cpp's `convert_lora_to_gguf.py` does it, so one adapter file
//! serves both backends.
//!
//! - Names: `model.layers.N.self_attn.q_proj` -> `blk.N.attn_q.weight.lora_a` / `.lora_b`
//!   (see [`Module`]).
//! - Orientation: lora_a keeps PEFT's `[r, in]` and lora_b `[out, r]` (row-major), i.e. ggml
//!   `ne = [in, r]` and `[r, out]`: llama.cpp checks `model.ne[0] == a.ne[0]`,
//!   `model.ne[1] == b.ne[1]`, `a.ne[1] == b.ne[0]` (llama-adapter.cpp).
//! - q/k: for llama the base converter permutes q/k rows into the interleaved RoPE layout;
//!   since W + B·A must be permuted the same way, the rows of lora_B are permuted (A is not).
//! - Scale: llama.cpp applies `scale * alpha / r` with one `adapter.lora.alpha` and each
//!   tensor's own rank. Per-module alpha/rank patterns and rsLoRA (alpha / sqrt(r)) are folded
//!   into lora_B so the product is exactly PEFT's.
//!
//! Results are cached under `<cache>/<sha256>.gguf`, keyed by the sha256 of the adapter's two
//! files, the base dimensions that matter (architecture, head counts) and [`CONVERTER_VERSION`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use super::base::{permutes_qk, BaseModel, Module};
use super::compat;
use super::error::{format_err, io_err, Result};
use super::gguf::{self, F32Tensor, MetaValue};
use super::peft::{PeftAdapter, PeftPair, CONFIG_FILE, WEIGHTS_FILE};

/// Bumped whenever the output of the converter changes (invalidates the cache).
pub const CONVERTER_VERSION: u32 = 1;

/// The GGUF LoRA bytes for `adapter` on `base` (checked for compatibility first).
pub fn peft_to_gguf(adapter: &PeftAdapter, base: &BaseModel) -> Result<Vec<u8>> {
    compat::check_peft(adapter, base)?;
    let alpha = adapter.config.alpha;
    let mut tensors = Vec::with_capacity(adapter.pairs.len() * 2);
    for pair in &adapter.pairs {
        let (layer, module) = Module::parse_hf(&pair.module).ok_or_else(|| {
            format_err(
                &adapter.dir,
                format!("`{}` cannot be converted", pair.module),
            )
        })?;
        let name = module.gguf_name(layer);
        let b = lora_b(adapter, pair, module, base, alpha);
        tensors.push(F32Tensor {
            name: format!("{name}.lora_a"),
            shape: vec![pair.a.rows, pair.a.cols],
            data: pair.a.data.clone(),
        });
        tensors.push(F32Tensor {
            name: format!("{name}.lora_b"),
            shape: vec![pair.b.rows, pair.b.cols],
            data: b,
        });
    }
    // No general.name: the bytes depend on the adapter's content only, not on its folder name.
    let meta = [
        (
            "general.architecture",
            MetaValue::Str(base.architecture.clone()),
        ),
        ("general.type", MetaValue::Str("adapter".into())),
        ("adapter.type", MetaValue::Str("lora".into())),
        ("adapter.lora.alpha", MetaValue::F32(alpha as f32)),
    ];
    gguf::write_f32(&adapter.dir, &meta, &tensors)
}

/// lora_B with PEFT's factor folded in relative to llama.cpp's `alpha / r`, q/k rows permuted.
fn lora_b(
    adapter: &PeftAdapter,
    pair: &PeftPair,
    module: Module,
    base: &BaseModel,
    alpha: f64,
) -> Vec<f32> {
    let llama_cpp_factor = alpha / pair.a.rows as f64;
    let fold = adapter.factor(&pair.module) / llama_cpp_factor;
    let mut b = pair.b.data.clone();
    if (fold - 1.0).abs() > f64::EPSILON {
        b.iter_mut()
            .for_each(|x| *x = (f64::from(*x) * fold) as f32);
    }
    if permutes_qk(&base.architecture) {
        match module {
            Module::Q => permute_rows(&b, base.num_heads, pair.b.cols),
            Module::K => permute_rows(&b, base.num_kv_heads, pair.b.cols),
            _ => b,
        }
    } else {
        b
    }
}

/// llama.cpp's q/k permutation (HF rotate_half -> interleaved pairs): within each head of
/// `head_dim` rows, row `a * head_dim/2 + i` (a in {0, 1}) moves to row `2 * i + a`.
pub fn permute_rows(w: &[f32], n_head: usize, cols: usize) -> Vec<f32> {
    let rows = w.len() / cols.max(1);
    let head_dim = rows / n_head.max(1);
    let half = head_dim / 2;
    let mut out = w.to_vec();
    for head in 0..n_head {
        for a in 0..2 {
            for i in 0..half {
                let src = head * head_dim + a * half + i;
                let dst = head * head_dim + 2 * i + a;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// The cache key of converting `peft_dir` for `base`.
pub fn cache_key(peft_dir: &Path, base: &BaseModel) -> Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(format!("llmlocal-lora-converter {CONVERTER_VERSION}\n"));
    for file in [CONFIG_FILE, WEIGHTS_FILE] {
        let path = peft_dir.join(file);
        let mut f = std::fs::File::open(&path).map_err(io_err(&path))?;
        std::io::copy(&mut f, &mut hasher).map_err(io_err(&path))?;
    }
    hasher.update(format!(
        "{} {} {} {}\n",
        base.architecture, base.num_heads, base.num_kv_heads, base.head_dim
    ));
    Ok(hex(&hasher.finalize()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Converts `peft_dir` into `out` (written to a temporary file, then renamed).
pub fn convert_to(peft_dir: &Path, base: &BaseModel, out: &Path) -> Result<()> {
    let adapter = PeftAdapter::open(peft_dir)?;
    let bytes = peft_to_gguf(&adapter, base)?;
    write_atomic(out, &bytes)
}

/// The GGUF conversion of `peft_dir` for `base`, from `cache_dir` when converted before.
pub fn convert_cached(peft_dir: &Path, base: &BaseModel, cache_dir: &Path) -> Result<PathBuf> {
    let out = cache_dir.join(format!("{}.gguf", cache_key(peft_dir, base)?));
    if out.is_file() {
        tracing::debug!(path = %out.display(), "converted adapter found in the cache");
        return Ok(out);
    }
    tracing::info!(adapter = %peft_dir.display(), out = %out.display(), "converting PEFT adapter to GGUF");
    convert_to(peft_dir, base, &out)?;
    Ok(out)
}

/// A unique temporary name next to `path` (same folder, so the final rename is atomic).
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}-{n}.part", std::process::id()))
}

/// Writes `bytes` to a temporary file next to `path`, then renames it into place; a failed
/// write leaves nothing behind.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tmp = temp_path(path);
    let result = std::fs::write(&tmp, bytes)
        .map_err(io_err(&tmp))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io_err(path)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_rows_matches_llama_cpp_on_one_head() {
        // one head of 4 rows, 2 cols: HF rows [0 1 | 2 3] -> GGUF [0 2 1 3]
        let w = [0.0, 0.1, 1.0, 1.1, 2.0, 2.1, 3.0, 3.1];
        assert_eq!(
            permute_rows(&w, 1, 2),
            vec![0.0, 0.1, 2.0, 2.1, 1.0, 1.1, 3.0, 3.1]
        );
    }
}
