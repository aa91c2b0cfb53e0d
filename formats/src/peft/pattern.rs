//! `rank_pattern` / `alpha_pattern`: per-module overrides of `r` and `lora_alpha`.
//!
//! PEFT picks, for a module path, the FIRST key (in file order) for which
//! `re.match(rf"(.*\.)?({key})$", module)` succeeds. Keys here are module names: `.` matches
//! any character as in the regex, a leading `^` anchors the key at the start of the path;
//! other regex syntax is refused when the config is read, so a lookup never silently misses.

use serde_json::Value;

use super::config::bad_type;
use super::PeftError;

/// Per-module overrides in file order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Patterns<T>(Vec<(String, T)>);

impl<T: Copy> Patterns<T> {
    /// The value of the first key that matches `module`, as PEFT picks it.
    pub fn lookup(&self, module: &str) -> Option<T> {
        self.0
            .iter()
            .find(|(key, _)| matches(key, module))
            .map(|(_, v)| *v)
    }
}

impl<T> Patterns<T> {
    /// The keys and values, in file order.
    pub fn entries(&self) -> &[(String, T)] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<T> FromIterator<(String, T)> for Patterns<T> {
    fn from_iter<I: IntoIterator<Item = (String, T)>>(iter: I) -> Self {
        Patterns(iter.into_iter().collect())
    }
}

/// Checks the keys and converts the values of one pattern table.
pub(super) fn read<T>(
    table: &'static str,
    entries: &[(String, Value)],
    value: fn(&str, &Value) -> Result<T, PeftError>,
) -> Result<Patterns<T>, PeftError> {
    entries
        .iter()
        .map(|(key, v)| {
            let name = key.strip_prefix('^').unwrap_or(key);
            if name.chars().any(is_regex_syntax) {
                return Err(PeftError::RegexPattern {
                    table,
                    key: key.clone(),
                });
            }
            if name.is_empty() {
                let empty = Value::from(key.as_str());
                return Err(bad_type(table, "keyed by module names", &empty));
            }
            Ok((key.clone(), value(&format!("{table}.{key}"), v)?))
        })
        .collect()
}

/// Regex syntax other than `.` and a leading `^` (stripped before), which [`matches`] handles.
fn is_regex_syntax(c: char) -> bool {
    matches!(
        c,
        '\\' | '^' | '$' | '*' | '+' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|'
    )
}

/// `re.match(rf"(.*\.)?({key})$", module)` for a key of literal characters, `.` and an
/// optional leading `^`.
fn matches(key: &str, module: &str) -> bool {
    let (anchored, key) = match key.strip_prefix('^') {
        Some(rest) => (true, rest),
        None => (false, key),
    };
    let key: Vec<char> = key.chars().collect();
    let module: Vec<char> = module.chars().collect();
    let Some(start) = module.len().checked_sub(key.len()) else {
        return false;
    };
    let tail_matches = key
        .iter()
        .zip(&module[start..])
        .all(|(k, m)| *k == '.' || k == m);
    // The part before the key is empty or ends with a dot; `^` allows only the empty one.
    let prefix_ok = start == 0 || (!anchored && module[start - 1] == '.');
    tail_matches && prefix_ok
}
