//! The root module every plugin library exports.

use crate::{error::PluginError, ffi::BackendBox, log::BackendConfig, manifest::Manifest};
use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings,
    sabi_types::VersionStrings,
    std_types::{RResult, RStr},
    StableAbi,
};

/// The root module, a prefix type. Frozen for all of 2.x, like the trait objects: abi_stable
/// refuses a library whose root module has fewer fields than the host's.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = BackendModuleRef)))]
#[sabi(missing_field(option))]
pub struct BackendModule {
    /// [`crate::PLUGIN_API_VERSION`] as compiled into the plugin. Plain data, so the host
    /// checks it before calling any plugin function.
    pub api_version: RStr<'static>,
    /// Who the plugin is, which devices it can use now, what it can do.
    pub manifest: extern "C" fn() -> RResult<Manifest, PluginError>,
    /// Makes the backend. Called once per process by the host.
    #[sabi(last_prefix_field)]
    pub new_backend: extern "C" fn(config: BackendConfig) -> RResult<BackendBox, PluginError>,
}

impl RootModule for BackendModuleRef {
    declare_root_module_statics! {BackendModuleRef}
    const BASE_NAME: &'static str = "llmlocal_backend";
    const NAME: &'static str = "llmlocal backend";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
