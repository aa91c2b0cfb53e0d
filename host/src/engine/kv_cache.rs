//! KV cache options of a model (`cache_type_k`, `cache_type_v`, `flash_attn`, llama-server's
//! `--cache-type-k/-v` and `--flash-attn`): checked when the config is read, sent to the
//! backend as load options only when it declares the capability they belong to, and counted
//! in the memory estimate with the bytes the backend will really allocate: every one of its
//! `parallel` sequences has its own cells.
//!
//! `cache_ram_mib` (llama-server's `--cache-ram`) sizes the backend's host-RAM prompt cache:
//! KV states of prompts pushed out of the sequence slots. It is not model memory (it fills
//! only as conversations outgrow the slots, and the backend keeps it under the cap), so the
//! memory estimate leaves it out. Unset, a backend declaring the capability gets
//! [`default_cache_ram_mib`]; 0 turns it off.

use llmlocal_plugin_api::{
    abi_stable::std_types::{RString, RVec},
    capability,
    request::load_option,
    ExtValue, Extension,
};
use std::path::Path;

/// The options as a config entry or the command line gives them; `None` = backend default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvCacheOptions {
    /// `f16` (default), `q8_0`, `q4_0`, ... ([`load_option::CACHE_TYPES`]).
    pub cache_type_k: Option<String>,
    pub cache_type_v: Option<String>,
    /// `on`, `off` or `auto` (default: the backend decides).
    pub flash_attn: Option<String>,
    /// MiB of host RAM for the backend's prompt cache; 0 = off; `None` = the default.
    pub cache_ram_mib: Option<u64>,
}

/// The prompt cache's size when nothing sets one: 1/8 of the machine's memory, at most 2 GiB.
/// llama-server takes 8 GiB whatever the machine; a local tool shares a laptop with
/// everything else, and 2 GiB already holds several long chats of a 7B model (about 0.5 MiB
/// a token in f16: 4000 tokens).
pub fn default_cache_ram_mib(total_memory: u64) -> u64 {
    ((total_memory / 8) >> 20).min(2048)
}

impl KvCacheOptions {
    /// Each option set here wins over `fallback`'s.
    pub fn or(&self, fallback: &KvCacheOptions) -> KvCacheOptions {
        KvCacheOptions {
            cache_type_k: self.cache_type_k.clone().or(fallback.cache_type_k.clone()),
            cache_type_v: self.cache_type_v.clone().or(fallback.cache_type_v.clone()),
            flash_attn: self.flash_attn.clone().or(fallback.flash_attn.clone()),
            cache_ram_mib: self.cache_ram_mib.or(fallback.cache_ram_mib),
        }
    }

    /// Checks the values, so a typo fails when the config is read, not at the first request.
    pub fn check(&self) -> Result<(), String> {
        for (name, value) in [
            ("cache_type_k", &self.cache_type_k),
            ("cache_type_v", &self.cache_type_v),
        ] {
            if let Some(value) = value {
                if load_option::cache_type_bytes(value).is_none() {
                    let names: Vec<&str> = load_option::CACHE_TYPES.iter().map(|t| t.0).collect();
                    return Err(format!(
                        "{name} `{value}` is not a KV cache type; use one of {}",
                        names.join(", ")
                    ));
                }
            }
        }
        if let Some(value) = &self.flash_attn {
            if !["on", "off", "auto"].contains(&value.to_ascii_lowercase().as_str()) {
                return Err(format!("flash_attn `{value}` must be on, off or auto"));
            }
        }
        Ok(())
    }

    /// The load options for a backend with `capabilities`; `Err` names the first option set
    /// here that the backend cannot take (as `(option, capability)`). A backend with the
    /// RAM prompt cache gets `cache_ram_mib`, or `default_cache_ram_mib` when it is unset; one
    /// without it may be asked for 0 (off) only.
    pub fn extensions(
        &self,
        has: impl Fn(&str) -> bool,
        default_cache_ram_mib: u64,
    ) -> Result<RVec<Extension>, (&'static str, &'static str)> {
        let options = [
            (
                "cache_type_k",
                load_option::CACHE_TYPE_K,
                capability::KV_CACHE_TYPES,
                &self.cache_type_k,
            ),
            (
                "cache_type_v",
                load_option::CACHE_TYPE_V,
                capability::KV_CACHE_TYPES,
                &self.cache_type_v,
            ),
            (
                "flash_attn",
                load_option::FLASH_ATTN,
                capability::FLASH_ATTENTION,
                &self.flash_attn,
            ),
        ];
        let mut extensions = RVec::new();
        for (name, key, needs, value) in options {
            let Some(value) = value else { continue };
            if !has(needs) {
                return Err((name, needs));
            }
            extensions.push(Extension {
                key: RString::from(key),
                value: ExtValue::Text(RString::from(value.to_ascii_lowercase())),
            });
        }
        let cache_ram = capability::HOST_RAM_PROMPT_CACHE;
        match (self.cache_ram_mib, has(cache_ram)) {
            (Some(mib), false) if mib > 0 => return Err(("cache_ram_mib", cache_ram)),
            (_, false) => {}
            (mib, true) => extensions.push(Extension {
                key: RString::from(load_option::CACHE_RAM_MIB),
                value: ExtValue::Int(
                    i64::try_from(mib.unwrap_or(default_cache_ram_mib)).unwrap_or(i64::MAX),
                ),
            }),
        }
        Ok(extensions)
    }

    /// The MiB a backend declaring the RAM prompt cache is given (for the load log).
    pub fn cache_ram_or(&self, default_cache_ram_mib: u64) -> u64 {
        self.cache_ram_mib.unwrap_or(default_cache_ram_mib)
    }

    /// Bytes per value of K plus V (f16 for whatever is not set).
    fn bytes_per_value_pair(&self) -> f64 {
        let bytes = |t: &Option<String>| {
            t.as_deref()
                .and_then(load_option::cache_type_bytes)
                .unwrap_or(2.0)
        };
        bytes(&self.cache_type_k) + bytes(&self.cache_type_v)
    }

    /// The KV cache of `cells` cells (context length x parallel sequences) of a GGUF model,
    /// from its header's geometry; `None` when the file is not a GGUF with the keys needed.
    pub fn gguf_bytes(&self, path: &Path, cells: u64) -> Option<u64> {
        let geometry = KvGeometry::of_gguf(path)?;
        let values = geometry.layers as f64 * cells as f64 * geometry.channels as f64;
        Some((values * self.bytes_per_value_pair() / 2.0) as u64)
    }

    /// How much larger than f16 K and V the configured types are (0.53 for q8_0/q8_0).
    pub fn ratio_to_f16(&self) -> f64 {
        self.bytes_per_value_pair() / 4.0
    }
}

/// What the KV cache's size depends on: layers and K+V channels per cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KvGeometry {
    layers: u64,
    /// K channels + V channels of one cell in one layer.
    channels: u64,
}

impl KvGeometry {
    /// llama.cpp's own keys: `<arch>.block_count`, `.embedding_length`,
    /// `.attention.head_count(_kv)`, `.attention.key_length` / `.value_length`.
    fn of_gguf(path: &Path) -> Option<Self> {
        let header = llmlocal_formats::gguf::read_file_header(path).ok()?;
        let arch = header.architecture()?.to_string();
        let get = |key: &str| header.get_u64(&format!("{arch}.{key}"));
        let layers = get("block_count")?;
        let embd = get("embedding_length")?;
        let heads = get("attention.head_count").filter(|&h| h > 0)?;
        let heads_kv = get("attention.head_count_kv").unwrap_or(heads);
        let key = get("attention.key_length").unwrap_or(embd / heads);
        let value = get("attention.value_length").unwrap_or(embd / heads);
        Some(KvGeometry {
            layers,
            channels: heads_kv * (key + value),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(k: Option<&str>, v: Option<&str>, fa: Option<&str>) -> KvCacheOptions {
        KvCacheOptions {
            cache_type_k: k.map(String::from),
            cache_type_v: v.map(String::from),
            flash_attn: fa.map(String::from),
            cache_ram_mib: None,
        }
    }

    #[test]
    fn checks_values() {
        assert!(options(Some("q8_0"), Some("Q4_0"), Some("auto"))
            .check()
            .is_ok());
        let err = options(Some("q3"), None, None)
            .check()
            .expect_err("bad type");
        assert!(
            err.contains("cache_type_k `q3`") && err.contains("q8_0"),
            "{err}"
        );
        let err = options(None, None, Some("yes"))
            .check()
            .expect_err("bad fa");
        assert!(err.contains("flash_attn"), "{err}");
    }

    #[test]
    fn extensions_need_the_capability() {
        let set = options(Some("q8_0"), None, Some("on"));
        let all = set
            .extensions(|c| c != capability::HOST_RAM_PROMPT_CACHE, 9)
            .expect("declared");
        let keys: Vec<&str> = all.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, [load_option::CACHE_TYPE_K, load_option::FLASH_ATTN]);
        assert_eq!(
            set.extensions(|c| c == capability::FLASH_ATTENTION, 9),
            Err(("cache_type_k", capability::KV_CACHE_TYPES))
        );
        assert!(KvCacheOptions::default()
            .extensions(|_| false, 9)
            .expect("nothing asked")
            .is_empty());
    }

    #[test]
    fn the_ram_cache_size_goes_to_backends_that_have_one() {
        let cache_ram = |ext: &RVec<Extension>| {
            ext.iter()
                .find(|e| e.key.as_str() == load_option::CACHE_RAM_MIB)
                .map(|e| e.value.clone())
        };
        let has_it = |c: &str| c == capability::HOST_RAM_PROMPT_CACHE;
        let unset = KvCacheOptions::default();
        let set = |mib| KvCacheOptions {
            cache_ram_mib: Some(mib),
            ..KvCacheOptions::default()
        };
        // Unset: the default, and only to a backend that has the cache.
        let ext = unset.extensions(has_it, 9).expect("default");
        assert_eq!(cache_ram(&ext), Some(ExtValue::Int(9)));
        assert!(unset.extensions(|_| false, 9).expect("nothing").is_empty());
        let ext = set(100).extensions(has_it, 9).expect("set");
        assert_eq!(cache_ram(&ext), Some(ExtValue::Int(100)));
        // Asked of a backend without it: an error naming the option, unless it asks for off.
        assert_eq!(
            set(100).extensions(|_| false, 9),
            Err(("cache_ram_mib", capability::HOST_RAM_PROMPT_CACHE))
        );
        assert!(set(0).extensions(|_| false, 9).expect("off").is_empty());
        let ext = set(0).extensions(has_it, 9).expect("off");
        assert_eq!(cache_ram(&ext), Some(ExtValue::Int(0)));
    }

    #[test]
    fn the_default_ram_cache_is_an_eighth_of_memory_up_to_2_gib() {
        assert_eq!(default_cache_ram_mib(8 << 30), 1024);
        assert_eq!(default_cache_ram_mib(64 << 30), 2048);
        assert_eq!(default_cache_ram_mib(0), 0);
    }

    #[test]
    fn model_entry_wins_over_engine_default() {
        let entry = options(Some("q4_0"), None, None);
        let engine = KvCacheOptions {
            cache_ram_mib: Some(7),
            ..options(Some("q8_0"), Some("q8_0"), Some("on"))
        };
        assert_eq!(
            entry.or(&engine),
            KvCacheOptions {
                cache_ram_mib: Some(7),
                ..options(Some("q4_0"), Some("q8_0"), Some("on"))
            }
        );
    }

    /// A GGUF header with llama geometry: 4 layers, 256 wide, 8 heads, 2 KV heads.
    fn llama_header(dir: &Path) -> std::path::PathBuf {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(0u64.to_le_bytes());
        bytes.extend(5u64.to_le_bytes());
        let mut kv = |key: &str, kind: u32, value: &[u8]| {
            bytes.extend((key.len() as u64).to_le_bytes());
            bytes.extend(key.as_bytes());
            bytes.extend(kind.to_le_bytes());
            bytes.extend(value);
        };
        let mut name = 5u64.to_le_bytes().to_vec();
        name.extend(b"llama");
        kv("general.architecture", 8, &name);
        kv("llama.block_count", 4, &4u32.to_le_bytes());
        kv("llama.embedding_length", 4, &256u32.to_le_bytes());
        kv("llama.attention.head_count", 4, &8u32.to_le_bytes());
        kv("llama.attention.head_count_kv", 4, &2u32.to_le_bytes());
        let path = dir.join("m.gguf");
        std::fs::write(&path, bytes).expect("write");
        path
    }

    #[test]
    fn gguf_kv_bytes_follow_llama_cpp_formula() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = llama_header(dir.path());
        // llama.cpp: 2 (K, V) x n_layer x cells x n_embd_k_gqa x 2 bytes, with
        // n_embd_k_gqa = head_dim (256 / 8) x n_head_kv (2) = 64.
        let cells = 1000 * 4;
        let f16 = 2 * 4 * cells * 64 * 2;
        assert_eq!(
            KvCacheOptions::default().gguf_bytes(&path, cells),
            Some(f16)
        );
        let q8 = options(Some("q8_0"), Some("q8_0"), None);
        assert_eq!(q8.gguf_bytes(&path, cells), Some(f16 / 2 * 34 / 32));
        assert_eq!(
            KvCacheOptions::default().gguf_bytes(&dir.path().join("none.gguf"), cells),
            None
        );
    }

    #[test]
    fn the_load_estimate_counts_every_parallel_sequence() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = llama_header(dir.path());
        let q8 = options(Some("q8_0"), Some("q8_0"), None);
        let plan = |parallel, kv_cache| crate::engine::memory::LoadPlan {
            context_length: 1000,
            parallel,
            kv_cache,
        };
        let estimate = |p, o| crate::engine::memory::estimate_load_bytes(&path, plan(p, o));
        let one_sequence = 2 * 4 * 1000 * 64 * 2;
        let default = KvCacheOptions::default();
        assert_eq!(
            estimate(4, &default) - estimate(1, &default),
            3 * one_sequence
        );
        assert_eq!(
            estimate(4, &q8) - estimate(1, &q8),
            3 * one_sequence / 2 * 34 / 32
        );
    }
}
