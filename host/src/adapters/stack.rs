//! Stacking several GGUF LoRA adapters into one, exactly, for backends that activate one
//! adapter at a time (llama.cpp through llama-cpp-2).
//!
//! llama.cpp adds `c * B·A` per target tensor, with `c = scale * alpha / r` (`r` = the
//! tensor's rank; `c = scale` when the file's alpha is 0). Adapters i with scales s_i on one
//! tensor sum to one LoRA by concatenating ranks:
//!
//! - `A' = [c_1 A_1; c_2 A_2; ...]` (rows; `A_i` is `[r_i, in]`),
//! - `B' = [B_1 | B_2 | ...]` (columns; `B_i` is `[out, r_i]`),
//! - rank `R = Σ r_i`, so `B'·A' = Σ c_i B_i A_i`.
//!
//! The file gets `alpha = R` and is applied with scale 1.0, so llama.cpp's factor is 1. A
//! tensor only some adapters target gets just their ranks; where tensors end up with
//! different ranks, `R_t / alpha` is folded into that tensor's `A'` (one alpha per file).
//!
//! Results are cached under `<cache>/<sha256>.gguf`, keyed by the sha256 of every input
//! file, the scales and [`STACKER_VERSION`], like PEFT conversions ([`super::convert`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::convert::{hex, write_atomic};
use super::error::{format_err, io_err, Result};
use super::gguf::{self, F32Tensor, MetaValue};
use super::peft::Matrix;

/// Bumped whenever the stacker's output changes (invalidates the cache).
pub const STACKER_VERSION: u32 = 1;

/// One GGUF LoRA file read into memory.
#[derive(Debug, Clone)]
pub struct LoraFile {
    pub architecture: String,
    /// `adapter.lora.alpha` (0 when absent: llama.cpp then applies the scale alone).
    pub alpha: f32,
    /// Target tensor name (`blk.0.attn_q.weight`) -> (A `[r, in]`, B `[out, r]`).
    pub pairs: BTreeMap<String, (Matrix, Matrix)>,
}

impl LoraFile {
    /// Reads a GGUF LoRA adapter (F32, F16 or BF16 tensors).
    pub fn read(path: &Path) -> Result<LoraFile> {
        let (info, tensors) = gguf::read_f32(path)?;
        let mut halves: BTreeMap<String, (Option<Matrix>, Option<Matrix>)> = BTreeMap::new();
        for tensor in tensors {
            let (target, is_a) = split_name(&tensor.name).ok_or_else(|| {
                format_err(path, format!("`{}` is not a LoRA tensor", tensor.name))
            })?;
            let matrix = to_matrix(path, tensor)?;
            let slot = halves.entry(target).or_default();
            if is_a {
                slot.0 = Some(matrix);
            } else {
                slot.1 = Some(matrix);
            }
        }
        let mut pairs = BTreeMap::new();
        for (target, (a, b)) in halves {
            let (Some(a), Some(b)) = (a, b) else {
                return Err(format_err(
                    path,
                    format!("`{target}` lacks lora_a or lora_b"),
                ));
            };
            if a.rows != b.cols || a.rows == 0 {
                return Err(format_err(
                    path,
                    format!(
                        "`{target}`: lora_a is [{}, {}] and lora_b [{}, {}]; their ranks differ",
                        a.rows, a.cols, b.rows, b.cols
                    ),
                ));
            }
            pairs.insert(target, (a, b));
        }
        Ok(LoraFile {
            architecture: info
                .str("general.architecture")
                .unwrap_or_default()
                .to_string(),
            alpha: info.f32("adapter.lora.alpha").unwrap_or(0.0),
            pairs,
        })
    }
}

/// `blk.0.attn_q.weight.lora_a` -> (`blk.0.attn_q.weight`, true).
fn split_name(name: &str) -> Option<(String, bool)> {
    if name.ends_with("token_embd.weight.lora_a") || name.ends_with("token_embd.weight.lora_b") {
        // llama.cpp stores embedding LoRAs flipped; they are not stacked here.
        return None;
    }
    if let Some(target) = name.strip_suffix(".lora_a") {
        return Some((target.to_string(), true));
    }
    name.strip_suffix(".lora_b")
        .map(|target| (target.to_string(), false))
}

fn to_matrix(path: &Path, tensor: F32Tensor) -> Result<Matrix> {
    match tensor.shape.as_slice() {
        [rows, cols] if rows * cols == tensor.data.len() => Ok(Matrix {
            rows: *rows,
            cols: *cols,
            data: tensor.data,
        }),
        shape => Err(format_err(
            path,
            format!("`{}` has shape {shape:?}, not a matrix", tensor.name),
        )),
    }
}

/// llama.cpp's factor for one tensor of `file` at `scale` (`rank` = the tensor's rank).
fn factor(file: &LoraFile, scale: f32, rank: usize) -> f32 {
    if file.alpha == 0.0 {
        scale
    } else {
        scale * file.alpha / rank as f32
    }
}

/// The stacked tensors of `adapters` (each with its scale) and the alpha to write.
pub fn stack(adapters: &[(&LoraFile, f32)]) -> (Vec<F32Tensor>, f32) {
    let mut targets: BTreeMap<&str, Vec<(&Matrix, &Matrix, f32)>> = BTreeMap::new();
    for (file, scale) in adapters {
        for (target, (a, b)) in &file.pairs {
            let c = factor(file, *scale, a.rows);
            targets.entry(target).or_default().push((a, b, c));
        }
    }
    // alpha = the largest stacked rank: most tensors (all, when every adapter targets the
    // same tensors) then need no folding.
    let alpha = targets
        .values()
        .map(|parts| parts.iter().map(|(a, _, _)| a.rows).sum::<usize>())
        .max()
        .unwrap_or(1) as f32;
    let mut out = Vec::with_capacity(targets.len() * 2);
    for (target, parts) in targets {
        let (a, b) = concat(&parts, alpha);
        out.push(F32Tensor {
            name: format!("{target}.lora_a"),
            shape: vec![a.rows, a.cols],
            data: a.data,
        });
        out.push(F32Tensor {
            name: format!("{target}.lora_b"),
            shape: vec![b.rows, b.cols],
            data: b.data,
        });
    }
    (out, alpha)
}

/// A' (rows c_i A_i, times R/alpha) and B' (columns B_i) of one target tensor.
fn concat(parts: &[(&Matrix, &Matrix, f32)], alpha: f32) -> (Matrix, Matrix) {
    let rank: usize = parts.iter().map(|(a, _, _)| a.rows).sum();
    let fold = rank as f32 / alpha;
    let (cols, rows) = (parts[0].0.cols, parts[0].1.rows);
    let mut a_data = Vec::with_capacity(rank * cols);
    for (a, _, c) in parts {
        a_data.extend(a.data.iter().map(|x| x * c * fold));
    }
    let mut b_data = Vec::with_capacity(rows * rank);
    for row in 0..rows {
        for (_, b, _) in parts {
            b_data.extend_from_slice(&b.data[row * b.cols..(row + 1) * b.cols]);
        }
    }
    let a = Matrix {
        rows: rank,
        cols,
        data: a_data,
    };
    let b = Matrix {
        rows,
        cols: rank,
        data: b_data,
    };
    (a, b)
}

/// The GGUF LoRA bytes stacking the files at `paths` with their scales (apply at scale 1.0).
pub fn stack_files(paths: &[(PathBuf, f32)]) -> Result<Vec<u8>> {
    let files = paths
        .iter()
        .map(|(path, _)| LoraFile::read(path))
        .collect::<Result<Vec<_>>>()?;
    check_shapes(paths, &files)?;
    let scaled: Vec<(&LoraFile, f32)> =
        files.iter().zip(paths).map(|(f, (_, s))| (f, *s)).collect();
    let (tensors, alpha) = stack(&scaled);
    let meta = [
        (
            "general.architecture",
            MetaValue::Str(files[0].architecture.clone()),
        ),
        ("general.type", MetaValue::Str("adapter".into())),
        ("adapter.type", MetaValue::Str("lora".into())),
        ("adapter.lora.alpha", MetaValue::F32(alpha)),
    ];
    gguf::write_f32(&paths[0].0, &meta, &tensors)
}

/// Every file is for the same architecture, and a tensor two files target has the same
/// in/out sizes in both (each was checked against the base model; this guards the math).
fn check_shapes(paths: &[(PathBuf, f32)], files: &[LoraFile]) -> Result<()> {
    let Some(first) = files.first() else {
        return Err(format_err(PathBuf::new(), "no adapters to stack"));
    };
    let mut sizes: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for ((path, _), file) in paths.iter().zip(files) {
        if file.architecture != first.architecture {
            return Err(format_err(
                path,
                format!(
                    "is for `{}` but the first adapter is for `{}`; stacked adapters must share a base model",
                    file.architecture, first.architecture
                ),
            ));
        }
        for (target, (a, b)) in &file.pairs {
            let size = (a.cols, b.rows);
            if *sizes.entry(target).or_insert(size) != size {
                return Err(format_err(
                    path,
                    format!("`{target}` does not have the size the other adapters give it"),
                ));
            }
        }
    }
    Ok(())
}

/// The cache key of stacking `paths` with their scales.
pub fn cache_key(paths: &[(PathBuf, f32)]) -> Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(format!("llmlocal-lora-stacker {STACKER_VERSION}\n"));
    for (path, scale) in paths {
        let mut file_hash = Sha256::new();
        let mut f = std::fs::File::open(path).map_err(io_err(path))?;
        std::io::copy(&mut f, &mut file_hash).map_err(io_err(path))?;
        hasher.update(file_hash.finalize());
        hasher.update(scale.to_bits().to_le_bytes());
    }
    Ok(hex(&hasher.finalize()))
}

/// The stacked GGUF LoRA of `paths` with their scales, from `cache_dir` when stacked before.
pub fn stack_cached(paths: &[(PathBuf, f32)], cache_dir: &Path) -> Result<PathBuf> {
    let out = cache_dir.join(format!("{}.gguf", cache_key(paths)?));
    if out.is_file() {
        tracing::debug!(path = %out.display(), "stacked adapter found in the cache");
        return Ok(out);
    }
    tracing::info!(adapters = paths.len(), out = %out.display(), "stacking LoRA adapters into one");
    write_atomic(&out, &stack_files(paths)?)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: usize, cols: usize, seed: u32) -> Matrix {
        let data = (0..rows * cols)
            .map(|i| ((i as u32 * 7 + seed * 13) % 11) as f32 / 5.0 - 1.0)
            .collect();
        Matrix { rows, cols, data }
    }

    fn product(b: &Matrix, a: &Matrix) -> Vec<f32> {
        let mut out = vec![0.0; b.rows * a.cols];
        for i in 0..b.rows {
            for j in 0..a.cols {
                out[i * a.cols + j] = (0..b.cols)
                    .map(|k| b.data[i * b.cols + k] * a.data[k * a.cols + j])
                    .sum();
            }
        }
        out
    }

    fn lora(alpha: f32, pairs: &[(&str, Matrix, Matrix)]) -> LoraFile {
        LoraFile {
            architecture: "llama".into(),
            alpha,
            pairs: pairs
                .iter()
                .map(|(n, a, b)| (n.to_string(), (a.clone(), b.clone())))
                .collect(),
        }
    }

    /// What llama.cpp applies for `target`: factor(alpha, R) · B'·A'.
    fn applied(tensors: &[F32Tensor], alpha: f32, target: &str) -> Vec<f32> {
        let find = |suffix: &str| {
            let t = tensors
                .iter()
                .find(|t| t.name == format!("{target}.{suffix}"))
                .expect("tensor");
            Matrix {
                rows: t.shape[0],
                cols: t.shape[1],
                data: t.data.clone(),
            }
        };
        let (a, b) = (find("lora_a"), find("lora_b"));
        let scale = alpha / a.rows as f32;
        product(&b, &a).into_iter().map(|x| x * scale).collect()
    }

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
    }

    #[test]
    fn stacked_delta_is_the_scaled_sum_of_the_parts() {
        // Ranks 2 and 3, alphas 4 and 1.5, on a [5 x 3] weight; the second file also
        // targets a tensor the first does not.
        let (a1, b1) = (matrix(2, 3, 1), matrix(5, 2, 2));
        let (a2, b2) = (matrix(3, 3, 3), matrix(5, 3, 4));
        let (a3, b3) = (matrix(1, 4, 5), matrix(2, 1, 6));
        let one = lora(4.0, &[("blk.0.attn_q.weight", a1.clone(), b1.clone())]);
        let two = lora(
            1.5,
            &[
                ("blk.0.attn_q.weight", a2.clone(), b2.clone()),
                ("blk.1.ffn_up.weight", a3.clone(), b3.clone()),
            ],
        );
        let (s1, s2) = (0.5, 0.7);
        let (tensors, alpha) = stack(&[(&one, s1), (&two, s2)]);
        let (c1, c2) = (s1 * 4.0 / 2.0, s2 * 1.5 / 3.0);
        let want: Vec<f32> = product(&b1, &a1)
            .iter()
            .zip(product(&b2, &a2))
            .map(|(x, y)| c1 * x + c2 * y)
            .collect();
        assert_close(&applied(&tensors, alpha, "blk.0.attn_q.weight"), &want);
        assert_eq!(alpha, 5.0, "alpha = the stacked rank");
        // Only the second adapter targets blk.1: its rank-1 part alone, folded to the alpha.
        let c3 = s2 * 1.5 / 1.0;
        let want3: Vec<f32> = product(&b3, &a3).iter().map(|x| c3 * x).collect();
        assert_close(&applied(&tensors, alpha, "blk.1.ffn_up.weight"), &want3);
    }

    #[test]
    fn an_alpha_of_zero_means_the_scale_alone_as_in_llama_cpp() {
        let (a, b) = (matrix(2, 3, 1), matrix(4, 2, 2));
        let file = lora(0.0, &[("output.weight", a.clone(), b.clone())]);
        let (tensors, alpha) = stack(&[(&file, 0.5), (&file, 0.25)]);
        let want: Vec<f32> = product(&b, &a).iter().map(|x| 0.75 * x).collect();
        assert_close(&applied(&tensors, alpha, "output.weight"), &want);
    }

    #[test]
    fn stacked_files_round_trip_through_gguf_and_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, seed: u32| {
            let (a, b) = (matrix(2, 3, seed), matrix(4, 2, seed + 1));
            let bytes = gguf::write_f32(
                Path::new(name),
                &[
                    ("general.architecture", MetaValue::Str("llama".into())),
                    ("general.type", MetaValue::Str("adapter".into())),
                    ("adapter.type", MetaValue::Str("lora".into())),
                    ("adapter.lora.alpha", MetaValue::F32(2.0)),
                ],
                &[
                    F32Tensor {
                        name: "blk.0.attn_v.weight.lora_a".into(),
                        shape: vec![2, 3],
                        data: a.data,
                    },
                    F32Tensor {
                        name: "blk.0.attn_v.weight.lora_b".into(),
                        shape: vec![4, 2],
                        data: b.data,
                    },
                ],
            )
            .unwrap();
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let inputs = vec![(write("x.gguf", 1), 0.5), (write("y.gguf", 5), 0.7)];
        let cache = dir.path().join("stacked");
        let out = stack_cached(&inputs, &cache).unwrap();
        let again = stack_cached(&inputs, &cache).unwrap();
        assert_eq!(out, again);
        let other_scales = vec![(inputs[0].0.clone(), 0.5), (inputs[1].0.clone(), 0.8)];
        assert_ne!(stack_cached(&other_scales, &cache).unwrap(), out);
        let read = LoraFile::read(&out).unwrap();
        assert_eq!(read.alpha, 4.0);
        let (a, b) = &read.pairs["blk.0.attn_v.weight"];
        assert_eq!((a.rows, a.cols, b.rows, b.cols), (4, 3, 4, 4));
    }
}
