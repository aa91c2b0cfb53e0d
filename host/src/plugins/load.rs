//! Opening one plugin library on its own and checking it, in order: the library opens, it
//! exports our root module, abi_stable's version and layout checks pass, our API version rule
//! passes, the manifest reads. Constructing the backend is a separate last step, so the
//! registry can refuse a duplicate name without running the plugin's constructor.

use super::{error::Refusal, log_sink, version};
use abi_stable::library::{lib_header_from_path, LibHeader, LibraryError};
use llmlocal_plugin_api::{ffi::BackendBox, BackendModuleRef, Manifest, PLUGIN_API_VERSION};
use std::path::Path;

/// A library that passed every check up to its manifest.
pub(crate) struct Candidate {
    module: BackendModuleRef,
    pub manifest: Manifest,
}

/// Opens `path` and checks it. Once its root module is found the library stays loaded for the
/// life of the process, even when refused later (unloading Rust libraries is a hazard:
/// thread-locals, leaked statics); abi_stable closes only libraries without our root module.
pub(crate) fn open(path: &Path) -> Result<Candidate, Refusal> {
    // `lib_header_from_path`, not `RootModule::load_from_file`: the latter caches one module
    // per root-module type per process, so a second plugin would silently return the first.
    let header = lib_header_from_path(path).map_err(refusal_from_library_error)?;
    check_header_version(header)?;
    let module = header
        .init_root_module::<BackendModuleRef>()
        .map_err(refusal_from_library_error)?;
    // Plain data: read before any plugin function is called.
    version::check(module.api_version().as_str(), PLUGIN_API_VERSION)?;
    let manifest = (module.manifest())()
        .into_result()
        .map_err(Refusal::Manifest)?;
    check_manifest(&manifest)?;
    super::crash::register(manifest.name.as_str(), path);
    Ok(Candidate { module, manifest })
}

impl Candidate {
    /// Runs the plugin's constructor (panics inside it come back as errors from the glue).
    pub fn construct(&self) -> Result<BackendBox, Refusal> {
        (self.module.new_backend())(log_sink::backend_config())
            .into_result()
            .map_err(Refusal::Constructor)
    }
}

/// The plugin-api version compiled into the library's root-module constants. Checked before
/// abi_stable's own checks so that a plugin for another major gets our advice rather than a
/// layout dump.
fn check_header_version(header: &LibHeader) -> Result<(), Refusal> {
    let built_with = header.version_strings().version.as_str();
    Ok(version::check(built_with, PLUGIN_API_VERSION)?)
}

fn check_manifest(manifest: &Manifest) -> Result<(), Refusal> {
    let name = manifest.name.as_str();
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(Refusal::InvalidManifest(format!(
            "backend name `{name}` must be non-empty ASCII letters, digits, `-`, `_` or `.`"
        )))
    }
}

fn refusal_from_library_error(err: LibraryError) -> Refusal {
    match err {
        LibraryError::OpenError { err, .. } => Refusal::NotALibrary(err.to_string()),
        LibraryError::GetSymbolError { .. } => Refusal::NoRootModule,
        LibraryError::InvalidAbiHeader(_) | LibraryError::InvalidCAbi { .. } => {
            Refusal::AbiHeader {
                detail: one_line(&err.to_string()),
            }
        }
        LibraryError::AbiInstability(detail) => Refusal::Layout {
            detail: one_line(&detail.to_string()),
        },
        LibraryError::RootModule { err, .. } => Refusal::RootModule(one_line(&err.to_string())),
        other => Refusal::Layout {
            detail: one_line(&other.to_string()),
        },
    }
}

/// abi_stable's messages span many lines; a refusal reason is one line.
fn one_line(text: &str) -> String {
    const MAX: usize = 400;
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.len() <= MAX {
        return joined;
    }
    let cut = (0..=MAX)
        .rev()
        .find(|&i| joined.is_char_boundary(i))
        .unwrap_or(0);
    format!("{}…", &joined[..cut])
}
