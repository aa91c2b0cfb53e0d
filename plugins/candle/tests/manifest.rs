//! The manifest the host reads before loading anything.

use llmlocal_plugin_api::{capability, format, PLUGIN_API_VERSION};

#[test]
fn manifest_names_candle_and_its_formats() {
    let m = llmlocal_backend_candle::manifest();
    assert_eq!(m.name.as_str(), "candle");
    assert_eq!(m.api_version.as_str(), PLUGIN_API_VERSION);
    assert!(m.reads(format::SAFETENSORS));
    assert!(m.reads(format::GGUF));
    assert!(m.capabilities.has(capability::LORA));
    assert!(!m.capabilities.has(capability::LORA_PER_GENERATION));
    // GBNF is not implemented in candle: not declared, so the host refuses such requests.
    assert!(!m.capabilities.has(capability::GRAMMAR));
    assert!(m.capabilities.has(capability::JSON_SCHEMA));
    assert!(m.capabilities.parallel_generations > 1);
    assert!(m.devices.iter().any(|d| d.as_str() == "cpu"));
    // A default build lists no GPU: those need the cuda/metal features and a device.
    if !cfg!(any(feature = "cuda", feature = "metal")) {
        assert_eq!(m.devices.len(), 1, "{:?}", m.devices);
    }
}
