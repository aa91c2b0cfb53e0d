//! Broken plugins are refused, each with its own reason, while good ones in the same
//! directory load; a plugin that panics mid-generation leaves the host running.

mod common;

use llmlocal::plugins::{
    ErrorKind, GenerateRequest, LoadRequest, PluginEntry, PluginError, PluginRegistry,
    PluginStatus, Step,
};

const BROKEN: [&str; 6] = [
    "bad-major",
    "duplicate-name",
    "newer-minor",
    "panicking-ctor",
    "panicking-generation",
    "no-root-symbol",
];

/// One directory with scripted, every broken variant and a text file named like a plugin.
fn load_everything() -> (tempfile::TempDir, PluginRegistry) {
    let dir = common::plugin_dir(&["scripted"]);
    common::copy_plugins(dir.path(), &BROKEN);
    std::fs::write(
        dir.path().join(common::library_of("text")),
        "I am a text file, not a shared library\n",
    )
    .expect("write");
    let registry = PluginRegistry::load(&[dir.path().to_path_buf()]);
    (dir, registry)
}

fn entry<'a>(registry: &'a PluginRegistry, crate_dir: &str) -> &'a PluginEntry {
    let file = common::library_of(crate_dir);
    registry
        .entries()
        .iter()
        .find(|e| e.path.file_name().and_then(|n| n.to_str()) == Some(file.as_str()))
        .unwrap_or_else(|| panic!("{file} was not tried: {:?}", registry.entries()))
}

fn reason<'a>(registry: &'a PluginRegistry, crate_dir: &str) -> &'a str {
    match &entry(registry, crate_dir).status {
        PluginStatus::Refused { reason } => reason,
        PluginStatus::Loaded => panic!("{crate_dir} loaded but must be refused"),
    }
}

fn assert_contains(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "expected {part:?} in: {text}");
    }
}

#[test]
fn every_broken_plugin_is_refused_with_its_reason_and_the_good_ones_load() {
    let (dir, registry) = load_everything();
    assert_eq!(registry.entries().len(), 8, "{:?}", registry.entries());
    assert_eq!(entry(&registry, "scripted").status, PluginStatus::Loaded);
    assert_eq!(
        entry(&registry, "panicking-generation").status,
        PluginStatus::Loaded
    );
    assert_eq!(
        registry.backend_names(),
        ["panicking-generation", "scripted"]
    );

    assert_contains(
        reason(&registry, "bad-major"),
        &[
            "built for plugin API 3.0.0",
            "supports 2.x",
            "rebuild the plugin",
            "upgrade llmlocal",
        ],
    );
    assert_contains(
        reason(&registry, "newer-minor"),
        &[
            "built for plugin API 2.99.0",
            "newer than",
            "upgrade llmlocal",
        ],
    );
    assert_contains(
        reason(&registry, "panicking-ctor"),
        &["constructor failed", "panicked", "deliberate test panic"],
    );
    assert_contains(
        reason(&registry, "no-root-symbol"),
        &[
            "not an llmlocal backend plugin",
            "exports no llmlocal root module",
        ],
    );
    assert_contains(reason(&registry, "text"), &["not a loadable library"]);
    let scripted_path = dir.path().join(common::library_of("scripted"));
    assert_contains(
        reason(&registry, "duplicate-name"),
        &[
            "backend name `scripted` is already provided by",
            &scripted_path.display().to_string(),
        ],
    );
}

#[test]
fn version_refusals_happen_before_any_plugin_function_runs() {
    let (_dir, registry) = load_everything();
    // The manifest is read only after the version check passed.
    assert!(entry(&registry, "bad-major").manifest.is_none());
    assert!(entry(&registry, "newer-minor").manifest.is_none());
    assert!(entry(&registry, "no-root-symbol").manifest.is_none());
    // These got as far as their manifest.
    let ctor = entry(&registry, "panicking-ctor")
        .manifest
        .as_ref()
        .expect("manifest read");
    assert_eq!(ctor.name.as_str(), "panicking-ctor");
    let dup = entry(&registry, "duplicate-name")
        .manifest
        .as_ref()
        .expect("manifest read");
    assert_eq!(dup.name.as_str(), "scripted");
}

#[test]
fn asking_for_a_refused_backend_says_why() {
    let (_dir, registry) = load_everything();
    match registry.backend("panicking-ctor") {
        Err(err @ PluginError::BackendRefused { .. }) => assert_contains(
            &err.to_string(),
            &["panicking-ctor", "refused", "constructor failed"],
        ),
        other => panic!("expected BackendRefused, got {other:?}"),
    }
    match registry.backend("nonesuch") {
        Err(err @ PluginError::NoSuchBackend { .. }) => assert_contains(
            &err.to_string(),
            &["nonesuch", "scripted", "llmlocal plugins"],
        ),
        other => panic!("expected NoSuchBackend, got {other:?}"),
    }
}

#[test]
fn a_panicking_generation_is_an_internal_error_and_the_host_goes_on() {
    let (dir, registry) = load_everything();
    let model_path = common::write_script(dir.path(), "m.txt", "abcdef");
    let request = LoadRequest::new(model_path.to_string_lossy());
    let panicky = registry
        .backend("panicking-generation")
        .expect("loaded")
        .load_model(request.clone())
        .expect("load");
    let mut generation = panicky
        .generate(GenerateRequest::greedy(vec![256], 100))
        .expect("start");
    for expected in [b'a', b'b'] {
        match generation.next().expect("tokens 1 and 2 are fine") {
            Step::Token(token) => assert_eq!(token.id, u32::from(expected)),
            other => panic!("expected a token, got {other:?}"),
        }
    }
    let err = generation.next().expect_err("the 3rd token panics");
    assert_eq!(err.kind(), ErrorKind::Internal);
    assert_contains(
        &err.to_string(),
        &["panicking-generation", "panicked", "next", "token 3"],
    );
    // The poisoned generation keeps failing instead of running plugin code again.
    assert_eq!(
        generation.next().expect_err("still failed").kind(),
        ErrorKind::Internal
    );
    drop(generation);

    // The process is alive and the good plugin still works.
    let scripted = registry
        .backend("scripted")
        .expect("loaded")
        .load_model(request)
        .expect("load");
    let mut generation = scripted
        .generate(GenerateRequest::greedy(vec![256], 100))
        .expect("start");
    let mut text = String::new();
    while let Step::Token(token) = generation.next().expect("next") {
        text.push_str(&token.text);
    }
    assert_eq!(text, "abcdef");
}

#[test]
fn two_plugin_libraries_are_two_distinct_backends() {
    // abi_stable's RootModule::load_from_file would hand the first module back for the second
    // library; each library must answer with its own manifest and its own code.
    let dir = common::plugin_dir(&["scripted", "panicking-generation"]);
    let registry = PluginRegistry::load(&[dir.path().to_path_buf()]);
    let scripted = registry.backend("scripted").expect("loaded");
    let panicky = registry.backend("panicking-generation").expect("loaded");
    assert_eq!(scripted.manifest.name.as_str(), "scripted");
    assert_eq!(panicky.manifest.name.as_str(), "panicking-generation");
    assert_ne!(scripted.manifest.description, panicky.manifest.description);
    assert_ne!(scripted.path, panicky.path);

    let model_path = common::write_script(dir.path(), "m.txt", "abcdef");
    let run = |backend: &llmlocal::plugins::LoadedBackend| {
        let model = backend
            .load_model(LoadRequest::new(model_path.to_string_lossy()))
            .expect("load");
        let mut generation = model
            .generate(GenerateRequest::greedy(vec![256], 4))
            .expect("start");
        (0..4)
            .map(|_| generation.next().map(|_| ()).map_err(|e| e.kind()))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(scripted), vec![Ok(()); 4]);
    assert_eq!(
        run(panicky),
        vec![
            Ok(()),
            Ok(()),
            Err(ErrorKind::Internal),
            Err(ErrorKind::Internal)
        ]
    );
}

#[test]
fn the_same_backend_in_two_directories_loads_once() {
    let first = common::plugin_dir(&["scripted"]);
    let second = common::plugin_dir(&["scripted"]);
    let registry = PluginRegistry::load(&[first.path().to_path_buf(), second.path().to_path_buf()]);
    assert_eq!(registry.backend_names(), ["scripted"]);
    let loaded_from = &registry.backend("scripted").expect("loaded").path;
    assert!(
        loaded_from.starts_with(first.path()),
        "{}",
        loaded_from.display()
    );
    let refused = &registry.entries()[1];
    assert!(refused.path.starts_with(second.path()));
    assert!(
        matches!(&refused.status, PluginStatus::Refused { reason } if reason.contains("already provided by"))
    );
}

#[test]
fn the_library_named_after_a_backend_wins_a_name_clash() {
    // duplicate-name comes first in every order here, yet the library named after the backend
    // keeps the name.
    let early = common::plugin_dir(&["duplicate-name"]);
    let late = common::plugin_dir(&["scripted"]);
    let registry = PluginRegistry::load(&[early.path().to_path_buf(), late.path().to_path_buf()]);
    let scripted = registry.backend("scripted").expect("loaded");
    assert!(
        scripted.path.starts_with(late.path()),
        "{}",
        scripted.path.display()
    );
    assert_eq!(registry.entries()[0].path.parent(), Some(early.path()));
    assert_contains(
        reason(&registry, "duplicate-name"),
        &["already provided by", &scripted.path.display().to_string()],
    );
}

#[test]
fn an_empty_registry_explains_what_to_do() {
    let empty = tempfile::tempdir().expect("temp dir");
    let registry = PluginRegistry::load(&[empty.path().to_path_buf()]);
    assert!(registry.entries().is_empty());
    let err = registry
        .choose(Some("scripted"), None, None)
        .expect_err("nothing loaded");
    assert!(matches!(err, PluginError::NoBackends), "{err:?}");
    assert_contains(&err.to_string(), &["--plugin-dir", "llmlocal plugins"]);
}
