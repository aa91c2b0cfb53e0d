//! Shared by the adapter tests: the fixture model, its LoRA and the LoRA's GGUF conversion.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use llmlocal::adapters::{convert, BaseModel};
use llmlocal_fixtures::FixturePaths;

/// The fixtures, with `tiny-llama-lora.gguf` written by the converter under test.
pub fn fixtures() -> &'static FixturePaths {
    static PATHS: OnceLock<FixturePaths> = OnceLock::new();
    PATHS.get_or_init(|| {
        let paths = llmlocal_fixtures::ensure_default().expect("fixtures");
        let base = BaseModel::from_path(&paths.hf_dir).expect("base config");
        convert::convert_to(&paths.lora_dir, &base, &paths.lora_gguf)
            .expect("convert fixture LoRA");
        paths
    })
}

pub fn base_hf() -> BaseModel {
    BaseModel::from_path(&fixtures().hf_dir).expect("base")
}

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}
