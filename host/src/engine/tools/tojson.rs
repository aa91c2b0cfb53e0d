//! `tojson` as transformers' chat templates see it (Python's `json.dumps`): `", "` and
//! `": "` separators, `indent=N` for pretty output, no HTML escaping (`<`, `>` stay as
//! they are). minijinja's own filter writes compact, HTML-escaped JSON, so a tool list or a
//! call in the prompt would differ from the text the model was trained on.

use minijinja::{value::Kwargs, Error, ErrorKind, Value};
use serde::Serialize;
use serde_json::ser::{Formatter, PrettyFormatter, Serializer};
use std::io;

/// The filter: `value | tojson` or `value | tojson(indent=4)`.
pub fn tojson(value: &Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = match indent {
        Some(indent) => Some(indent),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    // transformers' tojson takes these too; only their defaults are supported.
    let _: Option<Value> = kwargs.get("ensure_ascii")?;
    let _: Option<Value> = kwargs.get("separators")?;
    let _: Option<Value> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let indent = match indent.filter(|v| !v.is_none()) {
        None => None,
        Some(v) => Some(usize::try_from(v)?),
    };
    let mut out = Vec::new();
    let written = match indent {
        Some(n) => {
            let spaces = " ".repeat(n);
            let formatter = PrettyFormatter::with_indent(spaces.as_bytes());
            value.serialize(&mut Serializer::with_formatter(&mut out, formatter))
        }
        None => value.serialize(&mut Serializer::with_formatter(&mut out, PythonFormatter)),
    };
    written.map_err(|err| {
        Error::new(ErrorKind::InvalidOperation, "cannot serialize to JSON").with_source(err)
    })?;
    let text = String::from_utf8(out)
        .map_err(|_| Error::new(ErrorKind::InvalidOperation, "JSON is not UTF-8"))?;
    Ok(Value::from_safe_string(text))
}

/// One line with Python's default separators.
struct PythonFormatter;

impl Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, value: serde_json::Value) -> String {
        let mut env = minijinja::Environment::new();
        env.add_filter("tojson", tojson);
        env.render_str(source, minijinja::context! { v => value })
            .expect("renders")
    }

    #[test]
    fn writes_json_as_python_does() {
        let v = serde_json::json!({"a": [1, "<b>"], "c": {"d": null}});
        assert_eq!(
            render("{{ v | tojson }}", v.clone()),
            r#"{"a": [1, "<b>"], "c": {"d": null}}"#
        );
        assert_eq!(
            render("{{ v.c | tojson(indent=4) }}", v),
            "{\n    \"d\": null\n}"
        );
    }
}
