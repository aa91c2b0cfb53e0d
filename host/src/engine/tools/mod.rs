//! Tool (function) calling, the same for every API dialect: the canonical types a request
//! carries ([`Tools`] on [`GenerationConfig::tools`], [`ToolCall`] on assistant
//! [`ChatMessage`](super::ChatMessage)s), their checks, and the grammar that forces a call.
//!
//! - [`prompt`] shapes messages and tools for the model's chat template (or, when the
//!   template knows nothing of tools, a generic Hermes-style instruction);
//! - [`parse`] turns the model's text back into calls (Hermes/Qwen, Llama 3.x, Mistral, bare
//!   JSON).
//!
//! With `tool_choice` `required` or a named function the output is constrained by a JSON
//! schema (`{"name": <const>, "arguments": <the function's parameters>}`), so the call is
//! always valid JSON that matches the function's schema. One call per turn is forced that
//! way (parallel calls stay possible in `auto` mode, where the model writes the format itself).

pub mod parse;
pub mod prompt;
pub mod stream;
pub mod tojson;

use super::request::{Constraint, GenerationConfig};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The most tools one request may define (each is rendered into the prompt).
pub const MAX_TOOLS: usize = 128;
/// The largest `parameters` schema of one tool, as JSON text.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;
/// The longest tool name (OpenAI's limit).
pub const MAX_NAME_LEN: usize = 64;

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: Option<String>,
    /// The arguments' JSON schema (an object schema); `{}`-like when the function takes none.
    pub parameters: Value,
}

impl ToolSpec {
    /// The OpenAI shape `{"type": "function", "function": {...}}`, which chat templates expect
    /// (transformers passes tools that way).
    pub fn openai_json(&self) -> Value {
        let mut function = json!({ "name": self.name, "parameters": self.parameters });
        if let Some(description) = &self.description {
            function["description"] = json!(description);
        }
        json!({ "type": "function", "function": function })
    }
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides (calls are parsed from its text when it writes one).
    #[default]
    Auto,
    /// No call: the tools are not shown to the model and its text is plain content.
    None,
    /// Some call, forced by a JSON-schema constraint.
    Required,
    /// A call of this function, forced by a JSON-schema constraint.
    Function(String),
}

/// The tools of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tools {
    pub specs: Vec<ToolSpec>,
    pub choice: ToolChoice,
    /// May the model answer with several calls at once (OpenAI's `parallel_tool_calls`,
    /// default true)? A forced call is always one call.
    pub parallel: bool,
}

impl Tools {
    /// The tools the model is shown and whose calls are parsed: none for `tool_choice: none`.
    pub fn active(&self) -> Option<&[ToolSpec]> {
        (!self.specs.is_empty() && self.choice != ToolChoice::None).then_some(&self.specs[..])
    }

    /// Is the call forced by a constraint?
    pub fn forced(&self) -> bool {
        matches!(self.choice, ToolChoice::Required | ToolChoice::Function(_))
    }
}

/// A call of a function, in a model's answer or an assistant message of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// `call_...` for calls the server parsed; whatever the client sent for history.
    pub id: String,
    pub name: String,
    /// The arguments as a JSON value (an object), never as a string.
    pub arguments: Value,
}

impl ToolCall {
    /// A call with a fresh `call_...` id.
    pub fn new(name: impl Into<String>, arguments: Value) -> Self {
        ToolCall {
            id: new_call_id(),
            name: name.into(),
            arguments,
        }
    }
}

/// `call_` and 24 random hex digits, as OpenAI's ids look.
pub fn new_call_id() -> String {
    format!("call_{:024x}", rand::random::<u128>() >> 32)
}

/// Checks the request's tools; `Err` names the field. Called for every dialect by the engine.
pub fn check(config: &GenerationConfig) -> Result<(), String> {
    let Some(tools) = &config.tools else {
        return Ok(());
    };
    if tools.specs.len() > MAX_TOOLS {
        return Err(format!(
            "tools: at most {MAX_TOOLS} tools are allowed in one request, got {}",
            tools.specs.len()
        ));
    }
    for (index, spec) in tools.specs.iter().enumerate() {
        check_spec(index, spec)?;
        if tools.specs[..index].iter().any(|s| s.name == spec.name) {
            return Err(format!(
                "tools[{index}].function.name: `{}` is defined twice",
                spec.name
            ));
        }
    }
    check_choice(tools)?;
    if tools.active().is_some() && config.constraint.is_some() {
        return Err("`tools` cannot be combined with an output constraint \
                    (`response_format`, `format`, `grammar` or `json_schema`): give one of them"
            .into());
    }
    // Calls are parsed from the whole answer after it ends, so per-token logprobs would
    // describe text the client never sees as text.
    if tools.active().is_some() && config.logprobs.is_some() {
        return Err("`logprobs` cannot be combined with `tools` yet: leave one of them out".into());
    }
    Ok(())
}

fn check_spec(index: usize, spec: &ToolSpec) -> Result<(), String> {
    let field = |name: &str| format!("tools[{index}].function.{name}");
    let name_ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.';
    if spec.name.is_empty() || spec.name.len() > MAX_NAME_LEN || !spec.name.chars().all(name_ok) {
        return Err(format!(
            "{}: {:?} is not a valid function name (1 to {MAX_NAME_LEN} letters, digits, \
             `_`, `-` or `.`)",
            field("name"),
            spec.name
        ));
    }
    let size = spec.parameters.to_string().len();
    if size > MAX_SCHEMA_BYTES {
        return Err(format!(
            "{}: the schema has {size} bytes; at most {MAX_SCHEMA_BYTES} are allowed",
            field("parameters")
        ));
    }
    check_schema(&spec.parameters).map_err(|why| format!("{}: {why}", field("parameters")))
}

/// A function's `parameters`: a valid JSON schema (by its meta-schema) for an object.
fn check_schema(schema: &Value) -> Result<(), String> {
    let Value::Object(map) = schema else {
        return Err("must be a JSON schema object".into());
    };
    if let Some(kind) = map.get("type").filter(|t| t.as_str() != Some("object")) {
        return Err(format!(
            "the arguments are a JSON object, so `type` must be \"object\", got {kind}"
        ));
    }
    match jsonschema::meta::try_validate(schema) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(format!("not a valid JSON schema: {err}")),
        Err(err) => Err(format!("not a valid JSON schema: {err}")),
    }
}

fn check_choice(tools: &Tools) -> Result<(), String> {
    match &tools.choice {
        ToolChoice::Auto | ToolChoice::None => Ok(()),
        _ if tools.specs.is_empty() => {
            Err("tool_choice: a forced tool call needs `tools` to define the functions".into())
        }
        ToolChoice::Function(name) if !tools.specs.iter().any(|s| &s.name == name) => Err(format!(
            "tool_choice: no function named `{name}` is defined in `tools`"
        )),
        _ => Ok(()),
    }
}

/// The constraint that forces one call when `tool_choice` is `required` or a named
/// function: the config's constraint is set (the caller checked there was none).
pub fn force_call(config: &mut GenerationConfig) {
    let Some(tools) = config.tools.as_ref().filter(|t| t.forced()) else {
        return;
    };
    let allowed: Vec<Value> = tools
        .specs
        .iter()
        .filter(|s| match &tools.choice {
            ToolChoice::Function(name) => &s.name == name,
            _ => true,
        })
        .map(call_schema)
        .collect();
    let schema = match <[Value; 1]>::try_from(allowed) {
        Ok([one]) => one,
        Err(many) => json!({ "anyOf": many }),
    };
    config.constraint = Some(Constraint::JsonSchema(schema.to_string()));
}

/// `{"name": <const>, "arguments": <parameters>}`, nothing else.
fn call_schema(spec: &ToolSpec) -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": { "const": spec.name },
            "arguments": spec.parameters,
        },
        "required": ["name", "arguments"],
        "additionalProperties": false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, parameters: Value) -> ToolSpec {
        ToolSpec {
            name: name.into(),
            description: Some("d".into()),
            parameters,
        }
    }

    fn weather() -> ToolSpec {
        spec(
            "get_weather",
            json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
        )
    }

    fn config(specs: Vec<ToolSpec>, choice: ToolChoice) -> GenerationConfig {
        GenerationConfig {
            tools: Some(Tools {
                specs,
                choice,
                parallel: true,
            }),
            ..GenerationConfig::default()
        }
    }

    #[test]
    fn good_tools_pass() {
        assert_eq!(check(&config(vec![weather()], ToolChoice::Auto)), Ok(()));
        assert_eq!(
            check(&config(
                vec![weather(), spec("noop", json!({}))],
                ToolChoice::Required
            )),
            Ok(())
        );
    }

    #[test]
    fn each_bad_tool_is_refused_naming_its_field() {
        let cases = [
            (
                vec![spec("", json!({}))],
                ToolChoice::Auto,
                "tools[0].function.name",
            ),
            (
                vec![spec("a b", json!({}))],
                ToolChoice::Auto,
                "tools[0].function.name",
            ),
            (
                vec![weather(), weather()],
                ToolChoice::Auto,
                "tools[1].function.name",
            ),
            (
                vec![spec("f", json!("x"))],
                ToolChoice::Auto,
                "tools[0].function.parameters",
            ),
            (
                vec![spec("f", json!({"type": "string"}))],
                ToolChoice::Auto,
                "parameters",
            ),
            (
                vec![spec(
                    "f",
                    json!({"type": "object", "properties": {"a": {"type": 5}}}),
                )],
                ToolChoice::Auto,
                "not a valid JSON schema",
            ),
            (
                vec![weather()],
                ToolChoice::Function("nope".into()),
                "tool_choice",
            ),
            (vec![], ToolChoice::Required, "tool_choice"),
            (
                vec![weather(); MAX_TOOLS + 1],
                ToolChoice::Auto,
                "at most 128",
            ),
        ];
        for (specs, choice, expected) in cases {
            let err = check(&config(specs, choice)).expect_err(expected);
            assert!(err.contains(expected), "{err} lacks {expected}");
        }
        let huge = json!({"type": "object", "description": "x".repeat(MAX_SCHEMA_BYTES)});
        let err = check(&config(vec![spec("f", huge)], ToolChoice::Auto)).expect_err("size");
        assert!(err.contains("parameters") && err.contains("bytes"), "{err}");
    }

    #[test]
    fn tools_and_a_constraint_are_refused_naming_both() {
        let mut with = config(vec![weather()], ToolChoice::Auto);
        with.constraint = Some(Constraint::JsonSchema("{}".into()));
        let err = check(&with).expect_err("both");
        assert!(
            err.contains("tools") && err.contains("response_format"),
            "{err}"
        );
        // `tool_choice: none` shows no tools, so a constraint is fine.
        if let Some(tools) = with.tools.as_mut() {
            tools.choice = ToolChoice::None;
        }
        assert_eq!(check(&with), Ok(()));
    }

    #[test]
    fn a_forced_call_is_a_schema_over_the_allowed_functions() {
        let mut named = config(
            vec![weather(), spec("noop", json!({}))],
            ToolChoice::Function("get_weather".into()),
        );
        force_call(&mut named);
        let Some(Constraint::JsonSchema(text)) = &named.constraint else {
            panic!("no constraint: {:?}", named.constraint);
        };
        let schema: Value = serde_json::from_str(text).expect("JSON");
        assert_eq!(schema["properties"]["name"]["const"], "get_weather");
        assert_eq!(schema["properties"]["arguments"], weather().parameters);
        let validator = jsonschema::validator_for(&schema).expect("compiles");
        assert!(validator.is_valid(&json!({"name": "get_weather", "arguments": {"city": "Paris"}})));
        assert!(!validator.is_valid(&json!({"name": "noop", "arguments": {}})));
        assert!(!validator.is_valid(&json!({"name": "get_weather", "arguments": {}})));

        let mut any = config(
            vec![weather(), spec("noop", json!({}))],
            ToolChoice::Required,
        );
        force_call(&mut any);
        let Some(Constraint::JsonSchema(text)) = &any.constraint else {
            panic!("no constraint");
        };
        let schema: Value = serde_json::from_str(text).expect("JSON");
        assert_eq!(schema["anyOf"].as_array().map(Vec::len), Some(2));

        let mut auto = config(vec![weather()], ToolChoice::Auto);
        force_call(&mut auto);
        assert_eq!(auto.constraint, None);
    }
}
