//! KV cache options from the load request (contract 2.1's `cache-type-k`, `cache-type-v`
//! and `flash-attn` extensions), and what they cost in bytes (sizes from the contract's
//! `load_option::CACHE_TYPES`, which the host's memory estimate uses too).

use llama_cpp_2::context::params::KvCacheType;
use llmlocal_plugin_api::{request::load_option, ExtValue, Extension, PluginError};

/// llama.cpp's type for each name of the contract's cache types.
fn ggml_type(name: &str) -> Option<KvCacheType> {
    Some(match name {
        "f32" => KvCacheType::F32,
        "f16" => KvCacheType::F16,
        "bf16" => KvCacheType::BF16,
        "q8_0" => KvCacheType::Q8_0,
        "q4_0" => KvCacheType::Q4_0,
        "q4_1" => KvCacheType::Q4_1,
        "iq4_nl" => KvCacheType::IQ4_NL,
        "q5_0" => KvCacheType::Q5_0,
        "q5_1" => KvCacheType::Q5_1,
        _ => return None,
    })
}

/// Values per block of every quantized cache type llama.cpp takes (q8_0, q4_0, ...).
const QUANT_BLOCK: u64 = 32;

/// Flash attention: llama.cpp's policy (`auto` lets it decide per device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlashAttn {
    Auto,
    On,
    Off,
}

impl FlashAttn {
    pub fn policy(self) -> llama_cpp_sys_2::llama_flash_attn_type {
        match self {
            FlashAttn::Auto => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO,
            FlashAttn::On => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED,
            FlashAttn::Off => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED,
        }
    }
}

/// One cache's element type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheType {
    pub name: &'static str,
    pub ggml: KvCacheType,
    pub bytes_per_value: f64,
}

impl CacheType {
    pub const F16: CacheType = CacheType {
        name: "f16",
        ggml: KvCacheType::F16,
        bytes_per_value: 2.0,
    };

    fn parse(key: &str, text: &str) -> Result<Self, PluginError> {
        load_option::CACHE_TYPES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(text.trim()))
            .and_then(|&(name, bytes_per_value)| {
                Some(CacheType {
                    name,
                    ggml: ggml_type(name)?,
                    bytes_per_value,
                })
            })
            .ok_or_else(|| {
                let names: Vec<&str> = load_option::CACHE_TYPES.iter().map(|t| t.0).collect();
                PluginError::invalid_request(format!(
                    "{key} `{text}` is not a KV cache type llama.cpp takes; use one of {}",
                    names.join(", ")
                ))
            })
    }
}

/// The KV cache settings a context is created with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KvOptions {
    pub type_k: CacheType,
    pub type_v: CacheType,
    pub flash_attn: FlashAttn,
}

impl Default for KvOptions {
    fn default() -> Self {
        KvOptions {
            type_k: CacheType::F16,
            type_v: CacheType::F16,
            flash_attn: FlashAttn::Auto,
        }
    }
}

impl KvOptions {
    /// Reads the request's extensions (the export glue has already refused unknown keys).
    pub fn from_extensions(extensions: &[Extension]) -> Result<Self, PluginError> {
        let mut options = KvOptions::default();
        for extension in extensions {
            let key = extension.key.as_str();
            if key == load_option::CACHE_RAM_MIB {
                continue; // the RAM cache's, see `crate::ram_cache::cap_from_extensions`
            }
            let ExtValue::Text(text) = &extension.value else {
                return Err(PluginError::invalid_request(format!(
                    "{key} must be text, got {:?}",
                    extension.value
                )));
            };
            match key {
                load_option::CACHE_TYPE_K => options.type_k = CacheType::parse(key, text)?,
                load_option::CACHE_TYPE_V => options.type_v = CacheType::parse(key, text)?,
                load_option::FLASH_ATTN => options.flash_attn = flash_attn(text)?,
                other => {
                    return Err(PluginError::invalid_request(format!(
                        "this backend does not support the load option `{other}`"
                    )))
                }
            }
        }
        // llama.cpp stores a quantized V cache only through its flash-attention kernels
        // (context creation fails otherwise); say so before it does.
        if options.flash_attn == FlashAttn::Off && options.type_v.bytes_per_value < 2.0 {
            return Err(PluginError::invalid_request(format!(
                "a quantized V cache ({}) needs flash attention: set flash-attn on or auto, or \
                 cache-type-v f16",
                options.type_v.name
            )));
        }
        Ok(options)
    }

    /// llama.cpp stores a quantized cache row per head in blocks of 32 values, so the head
    /// size must be a multiple of 32 (it refuses the context otherwise, without saying why).
    pub fn check_head_size(&self, head_size: u64) -> Result<(), PluginError> {
        for (name, cache) in [("cache-type-k", self.type_k), ("cache-type-v", self.type_v)] {
            let quantized = cache.bytes_per_value < 2.0;
            if quantized && !head_size.is_multiple_of(QUANT_BLOCK) {
                return Err(PluginError::invalid_request(format!(
                    "{name} {} stores values in blocks of {QUANT_BLOCK}, which does not divide \
                     this model's attention head size {head_size}; use f16, bf16 or f32",
                    cache.name
                )));
            }
        }
        Ok(())
    }

    /// Bytes of K and V for `cells` cells of `n_layer` layers with `n_embd_kv` channels.
    pub fn bytes(&self, n_layer: u64, cells: u64, n_embd_kv: u64) -> u64 {
        let values = n_layer.saturating_mul(cells).saturating_mul(n_embd_kv) as f64;
        (values * (self.type_k.bytes_per_value + self.type_v.bytes_per_value)) as u64
    }
}

fn flash_attn(text: &str) -> Result<FlashAttn, PluginError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "auto" => Ok(FlashAttn::Auto),
        "on" | "true" | "1" => Ok(FlashAttn::On),
        "off" | "false" | "0" => Ok(FlashAttn::Off),
        _ => Err(PluginError::invalid_request(format!(
            "flash-attn `{text}` must be on, off or auto"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi_stable::std_types::RString;

    fn text(key: &str, value: &str) -> Extension {
        Extension {
            key: RString::from(key),
            value: ExtValue::Text(RString::from(value)),
        }
    }

    #[test]
    fn reads_types_and_policy() {
        let options = KvOptions::from_extensions(&[
            text(load_option::CACHE_TYPE_K, "q8_0"),
            text(load_option::CACHE_TYPE_V, "Q4_0"),
            text(load_option::FLASH_ATTN, "on"),
        ])
        .expect("valid");
        assert_eq!(options.type_k.ggml, KvCacheType::Q8_0);
        assert_eq!(options.type_v.ggml, KvCacheType::Q4_0);
        assert_eq!(options.flash_attn, FlashAttn::On);
        assert_eq!(KvOptions::from_extensions(&[]), Ok(KvOptions::default()));
    }

    #[test]
    fn refuses_unknown_types_and_quantized_v_without_flash_attention() {
        let err = KvOptions::from_extensions(&[text(load_option::CACHE_TYPE_K, "q3")])
            .expect_err("unknown type");
        assert!(
            err.message.contains("q3") && err.message.contains("q8_0"),
            "{err:?}"
        );
        let err = KvOptions::from_extensions(&[
            text(load_option::CACHE_TYPE_V, "q8_0"),
            text(load_option::FLASH_ATTN, "off"),
        ])
        .expect_err("quantized V without FA");
        assert!(err.message.contains("flash attention"), "{err:?}");
    }

    #[test]
    fn bytes_follow_the_block_sizes() {
        // 2 layers x 64 cells x 32 channels = 4096 values each for K and V.
        let f16 = KvOptions::default();
        assert_eq!(f16.bytes(2, 64, 32), 4096 * 4);
        let q8 = KvOptions {
            type_k: CacheType::parse("k", "q8_0").expect("q8_0"),
            type_v: CacheType::parse("v", "q8_0").expect("q8_0"),
            flash_attn: FlashAttn::On,
        };
        assert_eq!(q8.bytes(2, 64, 32), 4096 * 34 / 32 * 2);
        assert!(q8.check_head_size(64).is_ok());
        let err = q8
            .check_head_size(8)
            .expect_err("8 is not a multiple of 32");
        assert!(err.message.contains("head size 8"), "{err:?}");
        assert!(KvOptions::default().check_head_size(8).is_ok());
    }
}
