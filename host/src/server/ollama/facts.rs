//! What a model's files say, read without loading it: bytes on disk, date, digest, format,
//! and the metadata Ollama shows (`details`, `model_info`, `template`). GGUF files are read
//! through the GGUF header reader, Hugging Face folders through config.json, the
//! safetensors headers and tokenizer_config.json. Facts are cached per file version (path,
//! length, mtime), so a listing neither re-reads headers nor re-hashes files.

use crate::{
    engine::{template::read_tokenizer_config, Engine, ModelEntry},
    models::{ModelSource, ModelSpec},
};
use llmlocal_formats::gguf::{self, GgmlType, GgufHeader, MetaArray, MetaValue};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::{
    collections::HashMap,
    io::Read,
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock},
    time::SystemTime,
};

/// Files up to this size get a real sha256 digest (hashed once, then cached); a larger one
/// gets a digest of its path, length and mtime, so a listing never hashes gigabytes.
const HASH_LIMIT: u64 = 512 * 1024 * 1024;

/// GGUF arrays up to this many items are shown in `model_info`; longer ones (the
/// vocabulary, merges) are `null`, as Ollama shows them without `verbose`.
const ARRAY_LIMIT: usize = 64;

/// A safetensors header larger than this is not read (the format's own readers cap it so).
const SAFETENSORS_HEADER_LIMIT: u64 = 100 * 1024 * 1024;

/// Where a model's files are.
#[derive(Debug, Clone)]
pub struct Located {
    /// The `.gguf` file or the model folder.
    pub main: PathBuf,
    /// Every file of the model.
    pub files: Vec<PathBuf>,
    /// The sha256 the Hugging Face cache names the main file's blob by, when it is one.
    pub blob_digest: Option<String>,
}

/// What the files say.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// `gguf`, `safetensors`, or empty when not known.
    pub format: &'static str,
    pub size: u64,
    pub modified: Option<SystemTime>,
    /// 64 hex digits.
    pub digest: String,
    /// `general.architecture` / config.json's `model_type`.
    pub family: String,
    pub parameter_count: u64,
    /// `F16`, `Q8_0`, `Q4_K_M`, ... (empty when not known).
    pub quantization: String,
    /// GGUF-style keys (`general.architecture`, `<arch>.context_length`, ...).
    pub model_info: Map<String, Value>,
    /// The chat template stored with the model.
    pub template: Option<String>,
}

/// The model's files on this machine, if they are here (a local path, or a Hugging Face
/// model that is cached); `None` for a model that would need a download.
pub fn locate(engine: &Engine, entry: &ModelEntry) -> Option<Located> {
    let spec = ModelSpec::parse(&entry.spec).ok()?;
    match &spec.source {
        ModelSource::Local(path) if path.exists() => Some(locate_path(path)),
        ModelSource::Local(_) => None,
        ModelSource::HuggingFace(_) => {
            let resolved = engine.model_manager()?.cached(&spec)?;
            let blob_digest = blob_digest(&resolved.path);
            Some(Located {
                main: resolved.path,
                files: resolved.files,
                blob_digest,
            })
        }
    }
}

/// The files at `path` (a loaded model's file or folder).
pub fn locate_path(path: &Path) -> Located {
    Located {
        main: path.to_path_buf(),
        files: files_of(path),
        blob_digest: blob_digest(path),
    }
}

/// A file, or the files of a folder (one level; symlinks followed).
fn files_of(path: &Path) -> Vec<PathBuf> {
    if !path.is_dir() {
        return vec![path.to_path_buf()];
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// The cache keeps a file as a symlink to `blobs/<sha256>`: that name is its digest.
fn blob_digest(path: &Path) -> Option<String> {
    let target = std::fs::read_link(path).ok()?;
    let name = target.file_name()?.to_str()?;
    (name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())).then(|| name.to_string())
}

/// The facts of `located`, from the cache when its main file has not changed. Blocking
/// (reads headers, may hash): call from a blocking thread.
pub fn read(located: &Located) -> Facts {
    type Key = (PathBuf, u64, Option<SystemTime>);
    static CACHE: OnceLock<Mutex<HashMap<Key, Facts>>> = OnceLock::new();
    let (size, modified) = disk_usage(&located.files);
    let key = (located.main.clone(), size, modified);
    let cache = CACHE.get_or_init(Default::default);
    if let Some(found) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return found.clone();
    }
    let mut facts = if located.main.is_dir() {
        folder_facts(&located.main)
    } else {
        gguf_facts(&located.main)
    };
    facts.size = size;
    facts.modified = modified;
    facts.digest = located
        .blob_digest
        .clone()
        .unwrap_or_else(|| file_digest(&located.main, &located.files));
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    cache.insert(key, facts.clone());
    facts
}

/// Total bytes of the files and the newest mtime among them.
fn disk_usage(files: &[PathBuf]) -> (u64, Option<SystemTime>) {
    files.iter().filter_map(|f| std::fs::metadata(f).ok()).fold(
        (0, None),
        |(size, newest), meta| {
            let modified = meta.modified().ok();
            (size + meta.len(), newest.max(modified))
        },
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a file up to [`HASH_LIMIT`]; else (and for folders) of the files' names,
/// lengths and mtimes, which changes whenever the files do.
fn file_digest(main: &Path, files: &[PathBuf]) -> String {
    let small = std::fs::metadata(main).is_ok_and(|m| m.is_file() && m.len() <= HASH_LIMIT);
    if small {
        if let Some(digest) = hash_file(main) {
            return digest;
        }
    }
    let mut hasher = Sha256::new();
    for file in files {
        let meta = std::fs::metadata(file).ok();
        let mtime = meta
            .as_ref()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let len = meta.map(|m| m.len()).unwrap_or(0);
        hasher.update(format!("{}\n{len}\n{mtime}\n", file.display()).as_bytes());
    }
    hex(&hasher.finalize())
}

fn hash_file(path: &Path) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).ok()?;
    Some(hex(&hasher.finalize()))
}

/// A GGUF file: its header's metadata, tensor count and types. An unreadable header gives
/// only the format (the listing still shows the file).
fn gguf_facts(path: &Path) -> Facts {
    let mut facts = Facts {
        format: "gguf",
        ..Facts::default()
    };
    let header = match gguf::read_file_header(path) {
        Ok(header) => header,
        Err(err) => {
            tracing::warn!("cannot read the GGUF header of {}: {err}", path.display());
            return facts;
        }
    };
    facts.family = header.architecture().unwrap_or_default().to_string();
    facts.parameter_count = header
        .tensors
        .iter()
        .filter_map(|t| t.element_count())
        .sum();
    facts.quantization = quantization(&header);
    facts.template = header
        .get_str("tokenizer.chat_template")
        .map(str::to_string);
    facts.model_info = gguf_model_info(&header, facts.parameter_count);
    facts
}

/// Ollama's `model_info`: every metadata key with its value (long arrays `null`), plus
/// `general.parameter_count` counted from the tensors when the file does not say it.
fn gguf_model_info(header: &GgufHeader, parameters: u64) -> Map<String, Value> {
    let mut info: Map<String, Value> = header
        .metadata
        .iter()
        .map(|(key, value)| (key.clone(), meta_json(value)))
        .collect();
    info.entry("general.parameter_count")
        .or_insert_with(|| json!(parameters));
    info
}

fn meta_json(value: &MetaValue) -> Value {
    match value {
        MetaValue::Str(s) => json!(s),
        MetaValue::Bool(b) => json!(b),
        MetaValue::F32(_) | MetaValue::F64(_) => json!(value.as_f32().map(f64::from)),
        MetaValue::Array(array) if array.len() <= ARRAY_LIMIT => array_json(array),
        MetaValue::Array(_) => Value::Null,
        other => other
            .as_i64()
            .map(|n| json!(n))
            .or_else(|| other.as_u64().map(|n| json!(n)))
            .unwrap_or(Value::Null),
    }
}

fn array_json(array: &MetaArray) -> Value {
    match array {
        MetaArray::U8(v) => json!(v),
        MetaArray::I8(v) => json!(v),
        MetaArray::U16(v) => json!(v),
        MetaArray::I16(v) => json!(v),
        MetaArray::U32(v) => json!(v),
        MetaArray::I32(v) => json!(v),
        MetaArray::F32(v) => json!(v),
        MetaArray::Bool(v) => json!(v),
        MetaArray::Str(v) => json!(v),
        MetaArray::U64(v) => json!(v),
        MetaArray::I64(v) => json!(v),
        MetaArray::F64(v) => json!(v),
    }
}

/// The file type llama.cpp's quantizer wrote (`general.file_type`), else the type of most
/// weight bytes among the matrices.
fn quantization(header: &GgufHeader) -> String {
    if let Some(name) = header.get_u64("general.file_type").and_then(file_type_name) {
        return name.to_string();
    }
    let mut bytes: HashMap<GgmlType, u64> = HashMap::new();
    for tensor in header.tensors.iter().filter(|t| t.dims.len() >= 2) {
        *bytes.entry(tensor.ggml_type).or_default() += tensor.byte_size().unwrap_or(0);
    }
    bytes
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(kind, _)| kind.to_string())
        .unwrap_or_default()
}

/// llama.cpp's `llama_ftype` names, as Ollama shows them.
fn file_type_name(code: u64) -> Option<&'static str> {
    Some(match code {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        _ => return None,
    })
}

/// A Hugging Face folder: config.json under GGUF-style names, parameters counted from the
/// safetensors headers, the template from tokenizer_config.json.
fn folder_facts(dir: &Path) -> Facts {
    let config: Value = std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(Value::Null);
    let family = config["model_type"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (parameter_count, dtype) = safetensors_parameters(dir);
    let quantization = config["torch_dtype"]
        .as_str()
        .or(config["dtype"].as_str())
        .map(str::to_string)
        .or(dtype)
        .map(|d| dtype_name(&d))
        .unwrap_or_default();
    Facts {
        format: "safetensors",
        model_info: config_model_info(&config, &family, parameter_count),
        family,
        parameter_count,
        quantization,
        template: read_tokenizer_config(dir).chat_template,
        ..Facts::default()
    }
}

/// config.json's fields under the names a GGUF conversion would give them.
fn config_model_info(config: &Value, arch: &str, parameters: u64) -> Map<String, Value> {
    let mut info = Map::new();
    info.insert("general.architecture".into(), json!(arch));
    info.insert("general.parameter_count".into(), json!(parameters));
    let fields = [
        ("max_position_embeddings", "context_length"),
        ("hidden_size", "embedding_length"),
        ("num_hidden_layers", "block_count"),
        ("intermediate_size", "feed_forward_length"),
        ("num_attention_heads", "attention.head_count"),
        ("num_key_value_heads", "attention.head_count_kv"),
        ("rms_norm_eps", "attention.layer_norm_rms_epsilon"),
        ("rope_theta", "rope.freq_base"),
        ("vocab_size", "vocab_size"),
    ];
    for (from, to) in fields {
        if let Some(value) = config.get(from).filter(|v| v.is_number()) {
            info.insert(format!("{arch}.{to}"), value.clone());
        }
    }
    info
}

/// torch's dtype names as Ollama's quantization levels.
fn dtype_name(dtype: &str) -> String {
    match dtype.to_ascii_lowercase().as_str() {
        "float16" | "f16" => "F16".into(),
        "bfloat16" | "bf16" => "BF16".into(),
        "float32" | "f32" => "F32".into(),
        other => other.to_ascii_uppercase(),
    }
}

/// Parameters in every `*.safetensors` of the folder (element counts from the headers) and
/// the dtype of the first tensor.
fn safetensors_parameters(dir: &Path) -> (u64, Option<String>) {
    let mut total = 0u64;
    let mut dtype = None;
    let weights = files_of(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"));
    for path in weights {
        let Some(header) = safetensors_header(&path) else {
            continue;
        };
        for (name, tensor) in header.iter().filter(|(k, _)| *k != "__metadata__") {
            let count = tensor["shape"]
                .as_array()
                .map(|dims| dims.iter().filter_map(Value::as_u64).product::<u64>())
                .unwrap_or(0);
            total = total.saturating_add(count);
            if dtype.is_none() && !name.is_empty() {
                dtype = tensor["dtype"].as_str().map(str::to_string);
            }
        }
    }
    (total, dtype)
}

/// The JSON header of a safetensors file (8-byte little-endian length, then the JSON).
fn safetensors_header(path: &Path) -> Option<Map<String, Value>> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    if len > SAFETENSORS_HEADER_LIMIT {
        return None;
    }
    let mut text = Vec::new();
    file.take(len).read_to_end(&mut text).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Ollama's `parameter_size`: `260K`, `15.19M`, `7B`, `1.2B` (its `format.HumanNumber`).
pub fn parameter_size(count: u64) -> String {
    const THOUSAND: f64 = 1e3;
    const MILLION: f64 = 1e6;
    const BILLION: f64 = 1e9;
    let n = count as f64;
    let whole = |x: f64| x == x.floor();
    if n >= BILLION {
        let b = n / BILLION;
        return if whole(b) {
            format!("{b:.0}B")
        } else {
            format!("{b:.1}B")
        };
    }
    if n >= MILLION {
        let m = n / MILLION;
        return if whole(m) {
            format!("{m:.0}M")
        } else {
            format!("{m:.2}M")
        };
    }
    if n >= THOUSAND {
        return format!("{:.0}K", n / THOUSAND);
    }
    count.to_string()
}

/// Ollama's `details` object.
pub fn details(facts: &Facts) -> Value {
    let family = &facts.family;
    json!({
        "parent_model": "",
        "format": facts.format,
        "family": family,
        "families": if family.is_empty() { Value::Null } else { json!([family]) },
        "parameter_size": if facts.parameter_count > 0 { parameter_size(facts.parameter_count) } else { String::new() },
        "quantization_level": facts.quantization,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_sizes_read_as_ollama_writes_them() {
        assert_eq!(parameter_size(999), "999");
        assert_eq!(parameter_size(260_000), "260K");
        assert_eq!(parameter_size(292_000), "292K");
        assert_eq!(parameter_size(15_190_000), "15.19M");
        assert_eq!(parameter_size(7_000_000_000), "7B");
        assert_eq!(parameter_size(1_235_814_400), "1.2B");
    }

    #[test]
    fn file_types_and_dtypes_have_ollama_names() {
        assert_eq!(file_type_name(7), Some("Q8_0"));
        assert_eq!(file_type_name(15), Some("Q4_K_M"));
        assert_eq!(file_type_name(1000), None);
        assert_eq!(dtype_name("bfloat16"), "BF16");
        assert_eq!(dtype_name("F32"), "F32");
    }

    #[test]
    fn a_folder_maps_config_json_to_gguf_names() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = json!({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 5,
            "max_position_embeddings": 512, "torch_dtype": "float32"});
        std::fs::write(dir.path().join("config.json"), config.to_string()).expect("write");
        // A safetensors file with two tensors: 4x8 and 8 values.
        let header = json!({"a": {"dtype": "F32", "shape": [4, 8], "data_offsets": [0, 128]},
            "b": {"dtype": "F32", "shape": [8], "data_offsets": [128, 160]}})
        .to_string();
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        bytes.extend(vec![0u8; 160]);
        std::fs::write(dir.path().join("model.safetensors"), bytes).expect("write");
        let facts = folder_facts(dir.path());
        assert_eq!(facts.parameter_count, 40);
        assert_eq!(facts.quantization, "F32");
        assert_eq!(facts.model_info["llama.embedding_length"], 64);
        assert_eq!(facts.model_info["llama.block_count"], 5);
        assert_eq!(facts.model_info["llama.context_length"], 512);
        assert_eq!(facts.model_info["general.architecture"], "llama");
    }
}
