//! The built cdylib through the real FFI boundary (abi_stable), as the host loads it.

mod common;

use llmlocal_plugin_api::{
    abi_stable::{
        library::lib_header_from_path,
        std_types::{RSlice, RStr},
    },
    log::BackendConfig,
    BackendModuleRef, ErrorKind, GenerateRequest, LoadRequest, Step,
};
use std::path::PathBuf;

/// `libllmlocal_backend_candle.so` next to this test binary (cargo builds it with the tests).
fn library() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let name = format!(
        "{}llmlocal_backend_candle{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let deps = exe.parent()?;
    [deps.join(&name), deps.parent()?.join(&name)]
        .into_iter()
        .find(|p| p.is_file())
}

#[test]
fn plugin_library_loads_and_generates_over_ffi() {
    let Some(dir) = common::stories() else { return };
    let Some(lib) = library() else {
        eprintln!("SKIP: the cdylib was not found next to the test binary");
        return;
    };
    let module = lib_header_from_path(&lib)
        .and_then(|h| h.init_root_module::<BackendModuleRef>())
        .expect("root module");
    assert_eq!(
        module.api_version().as_str(),
        llmlocal_plugin_api::PLUGIN_API_VERSION
    );
    let manifest = (module.manifest())().into_result().unwrap();
    assert_eq!(manifest.name.as_str(), "candle");
    let backend = (module.new_backend())(BackendConfig::default())
        .into_result()
        .unwrap();

    let missing = backend
        .load(LoadRequest::new("/nonexistent.gguf"))
        .into_result();
    assert_eq!(missing.err().map(|e| e.kind), Some(ErrorKind::NotFound));

    let path = dir.join("stories260K.gguf");
    let model = backend
        .load(LoadRequest::new(path.to_string_lossy()))
        .into_result()
        .unwrap();
    let prompt = model
        .tokenize(RStr::from_str("Once upon a time"), true, false)
        .into_result()
        .unwrap();
    let mut generation = model
        .generate(GenerateRequest::greedy(prompt.to_vec(), 16))
        .into_result()
        .unwrap();
    let mut ids = Vec::new();
    while let Step::Token(t) = generation.next().into_result().unwrap() {
        ids.push(t.id);
    }
    let direct = common::load(&path);
    let (want, _, _) = common::greedy(direct.as_ref(), &prompt, 16);
    assert_eq!(ids, want, "the FFI path gives the direct result");
    let logits = model
        .logits(RSlice::from_slice(&prompt))
        .into_result()
        .unwrap();
    assert_eq!(logits.len(), 512);
}
