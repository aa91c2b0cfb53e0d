//! The subset of Ollama's Modelfile that `/api/create`'s legacy `modelfile` field takes:
//! `FROM`, `PARAMETER`, `SYSTEM`, `TEMPLATE`, `ADAPTER`, `LICENSE` and `#` comments; any
//! other instruction is an error naming it. Values may be `"""` multi-line `"""` strings.

use serde_json::{Map, Value};

/// The most instructions one Modelfile may hold.
const MAX_INSTRUCTIONS: usize = 256;

/// What a Modelfile says, in `/api/create`'s own fields.
#[derive(Debug, Default, PartialEq)]
pub struct Modelfile {
    pub from: Option<String>,
    pub parameters: Map<String, Value>,
    pub system: Option<String>,
    pub template: Option<String>,
    pub adapters: Vec<String>,
    pub license: Option<String>,
}

/// Parses `text`; `Err` says which line is wrong and why.
pub fn parse(text: &str) -> Result<Modelfile, String> {
    let mut file = Modelfile::default();
    let mut lines = text.lines().enumerate();
    let mut count = 0;
    while let Some((index, line)) = lines.next() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        count += 1;
        if count > MAX_INSTRUCTIONS {
            return Err(format!(
                "a Modelfile may hold at most {MAX_INSTRUCTIONS} instructions"
            ));
        }
        let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let value =
            read_value(rest.trim(), &mut lines).map_err(|e| format!("line {}: {e}", index + 1))?;
        let at = |e: String| format!("line {}: {e}", index + 1);
        match word.to_ascii_uppercase().as_str() {
            "FROM" => file.from = Some(value),
            "SYSTEM" => file.system = Some(value),
            "TEMPLATE" => file.template = Some(value),
            "LICENSE" => file.license = Some(value),
            "ADAPTER" => file.adapters.push(value),
            "PARAMETER" => parameter(&mut file.parameters, &value).map_err(at)?,
            _ => {
                return Err(at(format!(
                    "the Modelfile instruction `{word}` is not supported (FROM, PARAMETER, \
                     SYSTEM, TEMPLATE, ADAPTER and LICENSE are)"
                )))
            }
        }
        if file_value_empty(word, &file) {
            return Err(at(format!("`{word}` needs a value")));
        }
    }
    Ok(file)
}

fn file_value_empty(word: &str, file: &Modelfile) -> bool {
    match word.to_ascii_uppercase().as_str() {
        "FROM" => file.from.as_deref() == Some(""),
        "ADAPTER" => file.adapters.last().is_some_and(String::is_empty),
        _ => false,
    }
}

/// A value: the rest of the line, or a `"""` string that may span lines.
fn read_value<'a>(
    rest: &str,
    lines: &mut impl Iterator<Item = (usize, &'a str)>,
) -> Result<String, String> {
    let Some(open) = rest.strip_prefix("\"\"\"") else {
        return Ok(unquote(rest).to_string());
    };
    if let Some(end) = open.find("\"\"\"") {
        return Ok(open[..end].to_string());
    }
    let mut value = open.to_string();
    for (_, line) in lines {
        value.push('\n');
        if let Some(end) = line.find("\"\"\"") {
            value.push_str(&line[..end]);
            return Ok(value.trim_start_matches('\n').to_string());
        }
        value.push_str(line);
    }
    Err("a \"\"\" string is not closed".to_string())
}

fn unquote(text: &str) -> &str {
    text.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text)
}

/// `PARAMETER name value`: numbers and booleans as JSON numbers and booleans; `stop`
/// repeats into a list.
fn parameter(parameters: &mut Map<String, Value>, text: &str) -> Result<(), String> {
    let (name, raw) = text
        .split_once(char::is_whitespace)
        .ok_or_else(|| format!("PARAMETER `{text}` needs a name and a value"))?;
    let raw = unquote(raw.trim());
    if name == "stop" {
        let list = parameters
            .entry("stop")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(items) = list {
            items.push(Value::String(raw.to_string()));
        }
        return Ok(());
    }
    let value = if let Ok(n) = raw.parse::<i64>() {
        Value::from(n)
    } else if let Ok(x) = raw.parse::<f64>() {
        Value::from(x)
    } else if let Ok(b) = raw.parse::<bool>() {
        Value::from(b)
    } else {
        Value::String(raw.to_string())
    };
    parameters.insert(name.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_subset_parses() {
        let text = "# a comment\nFROM /models/m.gguf\nPARAMETER temperature 0.2\nPARAMETER num_predict 12\n\
                    PARAMETER stop \"<|end|>\"\nPARAMETER stop END\nSYSTEM \"\"\"Be\nbrief.\"\"\"\nADAPTER /a.gguf\n";
        let file = parse(text).expect("parses");
        assert_eq!(file.from.as_deref(), Some("/models/m.gguf"));
        assert_eq!(
            Value::Object(file.parameters),
            json!({"temperature": 0.2, "num_predict": 12, "stop": ["<|end|>", "END"]})
        );
        assert_eq!(file.system.as_deref(), Some("Be\nbrief."));
        assert_eq!(file.adapters, vec!["/a.gguf"]);
    }

    #[test]
    fn other_instructions_and_open_strings_are_named() {
        let err = parse("FROM x\nMESSAGE user hi\n").expect_err("not supported");
        assert!(err.contains("line 2") && err.contains("`MESSAGE`"), "{err}");
        let err = parse("SYSTEM \"\"\"never closed\n").expect_err("open string");
        assert!(err.contains("not closed"), "{err}");
        let err = parse("PARAMETER temperature\n").expect_err("no value");
        assert!(err.contains("needs a name and a value"), "{err}");
    }
}
