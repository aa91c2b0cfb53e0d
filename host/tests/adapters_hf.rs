//! Adapters from Hugging Face repositories, through the model manager's download layer
//! (loopback mock of the hub).

mod adapters_common;
#[path = "support/hf_mock.rs"]
mod hf_mock;

use bytes::Bytes;
use hf_mock::{Content, MockHub};
use llmlocal::adapters::{AdapterConfig, AdapterFormat, AdapterManager, AdapterSpec};
use llmlocal::models::ModelManager;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn file(path: &std::path::Path) -> Content {
    Content::Bytes(Bytes::from(std::fs::read(path).expect("fixture file")))
}

#[tokio::test]
async fn hf_peft_repo_and_gguf_file_resolve_for_both_backends() {
    let p = adapters_common::fixtures();
    let hub = MockHub::start().await;
    hub.add_repo(
        "acme/tiny-lora",
        COMMIT,
        vec![
            (
                "adapter_config.json",
                file(&p.lora_dir.join("adapter_config.json")),
                false,
            ),
            (
                "adapter_model.safetensors",
                file(&p.lora_dir.join("adapter_model.safetensors")),
                true,
            ),
        ],
    );
    hub.add_repo(
        "acme/tiny-lora-gguf",
        COMMIT,
        vec![("lora.gguf", file(&p.lora_gguf), true)],
    );
    let dir = tempfile::tempdir().expect("tmp");
    let models = hub.manager_config(&dir.path().join("hub"));
    let manager = AdapterManager::new(AdapterConfig::new(dir.path().join("adapters")))
        .expect("manager")
        .with_model_manager(ModelManager::new(models).expect("models"));
    let base = adapters_common::base_hf();

    let spec = AdapterSpec::parse("hf:acme/tiny-lora:0.5").expect("spec");
    let peft = manager
        .resolve(&spec, &base, &[AdapterFormat::Peft])
        .await
        .expect("peft");
    assert_eq!(peft.format, AdapterFormat::Peft);
    assert!(peft.path.join("adapter_model.safetensors").is_file());
    assert_eq!(peft.request().scale, 0.5);
    let gguf = manager
        .resolve(&spec, &base, &[AdapterFormat::Gguf])
        .await
        .expect("converted");
    assert_eq!(
        std::fs::read(&gguf.path).expect("read"),
        std::fs::read(&p.lora_gguf).expect("read")
    );

    let spec = AdapterSpec::parse("hf:acme/tiny-lora-gguf/lora.gguf").expect("spec");
    let file = manager
        .resolve(&spec, &base, &[AdapterFormat::Gguf])
        .await
        .expect("gguf file");
    assert_eq!(file.format, AdapterFormat::Gguf);
    assert!(file.path.ends_with("lora.gguf"), "{}", file.path.display());
}
