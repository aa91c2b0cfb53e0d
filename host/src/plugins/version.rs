//! The plugin API version rule: same major, and the plugin's minor must not be newer than
//! the host's (a plugin built against a newer minor may call into things this host lacks).
//! Before 1.0 every minor is its own major, as in Cargo.

use semver::Version;

/// A plugin's API version that this host refuses. Each message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("its plugin API version `{version}` is not a semver version: rebuild it against llmlocal-plugin-api {host}")]
    Unparsable { version: String, host: String },
    #[error(
        "built for plugin API {plugin} but this llmlocal supports {supported}: \
         rebuild the plugin against llmlocal-plugin-api {supported} or {remedy}"
    )]
    Incompatible {
        plugin: Version,
        supported: String,
        remedy: &'static str,
    },
    #[error(
        "built for plugin API {plugin}, newer than this llmlocal's {host}: upgrade llmlocal, \
         or rebuild the plugin against llmlocal-plugin-api {host}"
    )]
    NewerMinor { plugin: Version, host: Version },
}

/// Checks a plugin's API version against the host's.
pub fn check(plugin: &str, host: &str) -> Result<(), VersionError> {
    let parse = |v: &str| Version::parse(v.trim());
    let unparsable = |version: &str| VersionError::Unparsable {
        version: version.to_string(),
        host: host.to_string(),
    };
    let host_v = parse(host).map_err(|_| unparsable(host))?;
    let plugin_v = parse(plugin).map_err(|_| unparsable(plugin))?;
    let same_line = if host_v.major == 0 {
        plugin_v.major == 0 && plugin_v.minor == host_v.minor
    } else {
        plugin_v.major == host_v.major
    };
    if !same_line {
        return Err(VersionError::Incompatible {
            supported: supported(&host_v),
            remedy: if plugin_v > host_v {
                "upgrade llmlocal"
            } else {
                "use an older llmlocal"
            },
            plugin: plugin_v,
        });
    }
    if plugin_v.minor > host_v.minor {
        return Err(VersionError::NewerMinor {
            plugin: plugin_v,
            host: host_v,
        });
    }
    Ok(())
}

/// The versions a host accepts, as users write them: `1.x`, or `0.3.x` before 1.0.
fn supported(host: &Version) -> String {
    if host.major == 0 {
        format!("0.{}.x", host.minor)
    } else {
        format!("{}.x", host.major)
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn same_major_and_older_or_equal_minor_is_accepted() {
        assert_eq!(check("1.0.0", "1.0.0"), Ok(()));
        assert_eq!(check("1.0.7", "1.0.0"), Ok(()));
        assert_eq!(check("1.0.0", "1.3.0"), Ok(()));
        assert_eq!(check("1.3.2", "1.3.0"), Ok(()));
    }

    #[test]
    fn newer_minor_is_refused_with_advice() {
        let err = check("1.1.0", "1.0.0").unwrap_err().to_string();
        assert!(
            err.contains("1.1.0") && err.contains("upgrade llmlocal"),
            "{err}"
        );
        assert!(check("1.99.0", "1.0.0").is_err());
    }

    #[test]
    fn other_major_is_refused_with_advice() {
        let err = check("2.0.0", "1.0.0").unwrap_err().to_string();
        assert!(
            err.contains("built for plugin API 2.0.0")
                && err.contains("supports 1.x")
                && err.contains("rebuild the plugin against llmlocal-plugin-api 1.x"),
            "{err}"
        );
        let older = check("0.9.0", "1.0.0").unwrap_err().to_string();
        assert!(older.contains("0.9.0") && older.contains("1.x"), "{older}");
        assert!(check("1.0.0", "2.0.0").is_err());
    }

    #[test]
    fn before_one_point_oh_minor_is_the_compatibility_line() {
        assert_eq!(check("0.3.1", "0.3.0"), Ok(()));
        assert!(check("0.2.0", "0.3.0").is_err());
        assert!(check("0.4.0", "0.3.0").is_err());
    }

    #[test]
    fn garbage_is_refused() {
        let err = check("one", "1.0.0").unwrap_err().to_string();
        assert!(err.contains("`one`"), "{err}");
        assert!(check("", "1.0.0").is_err());
    }
}
