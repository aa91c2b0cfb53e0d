//! The stable-ABI contract between the llmlocal host and its backend plugins.
//!
//! A backend plugin is a `cdylib` that turns tokens into tokens. Its author implements three
//! plain Rust traits — [`Backend`], [`Model`], [`Generation`] — and exports them with
//! [`export_backend!`]. The macro wraps every call in a panic guard and converts the objects
//! into the FFI-safe `#[sabi_trait]` objects in [`ffi`], which are what crosses the boundary.
//!
//! The host loads the library with abi_stable (layout check), then checks
//! [`PLUGIN_API_VERSION`] with semver: same major, and the plugin's minor must not be newer
//! than the host's. Everything crossing the boundary is `#[repr(C)]` + `StableAbi`.

pub mod error;
pub mod extension;
pub mod ffi;
pub mod log;
pub mod manifest;
pub mod metadata;
pub mod module;
pub mod request;
pub mod step;
pub mod utf8;

mod author;
mod guard;

pub use author::{Backend, Generation, Model};
pub use error::{ErrorKind, PluginError};
pub use extension::{reject_unknown, ExtValue, Extension};
pub use manifest::{capability, format, Capabilities, Manifest, ModelFormat};
pub use metadata::{model_info, ModelMetadata};
pub use module::{BackendModule, BackendModuleRef, BackendModule_Prefix};
pub use request::{
    pooling, AdapterRequest, Constraint, ConstraintKind, EmbedRequest, GenerateRequest,
    LoadRequest, LogitBias, Sampling, MAX_TOP_LOGPROBS,
};
pub use step::{
    FinishReason, Finished, GenerationStats, StatsClock, Step, Token, TokenLogprobs, TopLogprob,
};
pub use utf8::Utf8Decoder;

/// Re-exported so `export_backend!` expands the same way in every plugin crate.
pub use abi_stable;

/// The version of this contract, compiled into every plugin as the root module's
/// `api_version` field and checked by the host before any backend code runs.
pub const PLUGIN_API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What every plugin library is named after: `libllmlocal_backend_<name>.so` (Linux),
/// `libllmlocal_backend_<name>.dylib` (macOS), `llmlocal_backend_<name>.dll` (Windows).
pub const LIBRARY_PREFIX: &str = "llmlocal_backend_";

#[doc(hidden)]
pub mod __private {
    pub use crate::guard::{export_manifest, export_new_backend};
}

/// Exports a backend from a plugin `cdylib`: writes the root module with panic-guarded
/// `manifest` and `new_backend` functions. The plugin crate must also depend on
/// `abi_stable` (the root-module attribute expands to `::abi_stable` paths).
///
/// ```ignore
/// llmlocal_plugin_api::export_backend! {
///     manifest: my_manifest,          // fn() -> Manifest
///     backend: MyBackend::new,        // fn() -> Result<MyBackend, PluginError>
/// }
/// ```
#[macro_export]
macro_rules! export_backend {
    (manifest: $manifest:expr, backend: $backend:expr $(,)?) => {
        $crate::__export_backend_with_api_version!($crate::PLUGIN_API_VERSION, $manifest, $backend);
    };
}

/// [`export_backend!`] with an explicit API version. Only for the host's tests, which need
/// plugins that claim versions they were not built with.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_backend_with_api_version {
    ($api:expr, $manifest:expr, $backend:expr) => {
        #[$crate::abi_stable::export_root_module]
        pub fn __llmlocal_backend_root_module() -> $crate::BackendModuleRef {
            use $crate::abi_stable::prefix_type::PrefixTypeTrait as _;
            extern "C" fn __llmlocal_manifest() -> $crate::abi_stable::std_types::RResult<
                $crate::Manifest,
                $crate::PluginError,
            > {
                $crate::__private::export_manifest($api, $manifest)
            }
            extern "C" fn __llmlocal_new_backend(
                config: $crate::log::BackendConfig,
            ) -> $crate::abi_stable::std_types::RResult<
                $crate::ffi::BackendBox,
                $crate::PluginError,
            > {
                $crate::__private::export_new_backend(config, $manifest, $backend)
            }
            $crate::BackendModule {
                api_version: $crate::abi_stable::std_types::RStr::from_str($api),
                manifest: __llmlocal_manifest,
                new_backend: __llmlocal_new_backend,
            }
            .leak_into_prefix()
        }
    };
}
