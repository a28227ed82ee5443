//! Structured output: the subset of JSON Schema that maps onto typed Parquet columns, and the
//! check of a reply against it.
//!
//! A pipeline's output schema is an object whose properties are strings (or string enums),
//! integers, numbers, booleans or arrays of strings. The schema is sent to the server as is
//! (Ollama `format`, OpenAI `response_format`); each property becomes a results column.

use serde_json::{Map, Value};

/// The column type of one output property (or of a passthrough column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    String,
    /// A string restricted to these values.
    Enum(Vec<String>),
    Integer,
    Number,
    Boolean,
    StringList,
}

impl ColumnType {
    /// Whether `value` fits this type (JSON Schema's rules: an integer is also a number).
    pub fn accepts(&self, value: &Value) -> bool {
        match (self, value) {
            (ColumnType::String, Value::String(_)) => true,
            (ColumnType::Enum(allowed), Value::String(text)) => {
                allowed.iter().any(|choice| choice == text)
            }
            (ColumnType::Integer, Value::Number(number)) => number.is_i64() || number.is_u64(),
            (ColumnType::Number, Value::Number(_)) => true,
            (ColumnType::Boolean, Value::Bool(_)) => true,
            (ColumnType::StringList, Value::Array(items)) => items.iter().all(Value::is_string),
            _ => false,
        }
    }

    fn describe(&self) -> String {
        match self {
            ColumnType::String => "a string".into(),
            ColumnType::Enum(allowed) => format!("one of {}", allowed.join(", ")),
            ColumnType::Integer => "an integer".into(),
            ColumnType::Number => "a number".into(),
            ColumnType::Boolean => "a boolean".into(),
            ColumnType::StringList => "an array of strings".into(),
        }
    }
}

/// One property of the output schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputField {
    pub name: String,
    pub kind: ColumnType,
    pub required: bool,
}

/// An output schema batchflow can map to columns.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputSchema {
    /// The schema as written, sent to the server.
    pub json: Value,
    pub fields: Vec<OutputField>,
}

impl OutputSchema {
    /// Reads a JSON schema, listing every property that cannot become a column.
    pub fn from_json(json: Value) -> Result<OutputSchema, Vec<String>> {
        let mut problems = Vec::new();
        if json.get("type").and_then(Value::as_str) != Some("object") {
            problems.push("the output schema must have \"type\": \"object\"".to_owned());
        }
        let Some(properties) = json.get("properties").and_then(Value::as_object) else {
            problems
                .push("the output schema needs \"properties\" (the columns to fill)".to_owned());
            return Err(problems);
        };
        let required: Vec<&str> = json
            .get("required")
            .and_then(Value::as_array)
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for name in &required {
            if !properties.contains_key(*name) {
                problems.push(format!(
                    "\"required\" names {name:?}, which is not a property"
                ));
            }
        }
        let mut fields = Vec::new();
        for (name, property) in properties {
            match column_type(property) {
                Ok(kind) => fields.push(OutputField {
                    name: name.clone(),
                    kind,
                    required: required.contains(&name.as_str()),
                }),
                Err(why) => problems.push(format!("output field {name:?}: {why}")),
            }
        }
        if problems.is_empty() {
            Ok(OutputSchema { json, fields })
        } else {
            Err(problems)
        }
    }

    /// Parses a reply's text as JSON and checks it against the schema: an object, required
    /// fields present, every known field of its type.
    pub fn check(&self, text: &str) -> Result<Map<String, Value>, String> {
        let value: Value = serde_json::from_str(text.trim())
            .map_err(|error| format!("the reply is not JSON ({error})"))?;
        let Value::Object(object) = value else {
            return Err("the reply is not a JSON object".into());
        };
        for field in &self.fields {
            match object.get(&field.name) {
                None | Some(Value::Null) if field.required => {
                    return Err(format!(
                        "the reply lacks the required field {:?}",
                        field.name
                    ));
                }
                None | Some(Value::Null) => {}
                Some(value) if !field.kind.accepts(value) => {
                    return Err(format!(
                        "field {:?} should be {}, found {value}",
                        field.name,
                        field.kind.describe()
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(object)
    }
}

fn column_type(property: &Value) -> Result<ColumnType, String> {
    let kind = property.get("type").and_then(Value::as_str);
    if let Some(choices) = property.get("enum") {
        let choices: Option<Vec<String>> = choices
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|item| item.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or(None);
        return match (kind, choices) {
            (None | Some("string"), Some(choices)) if !choices.is_empty() => {
                Ok(ColumnType::Enum(choices))
            }
            _ => Err("an enum must be a non-empty list of strings".into()),
        };
    }
    match kind {
        Some("string") => Ok(ColumnType::String),
        Some("integer") => Ok(ColumnType::Integer),
        Some("number") => Ok(ColumnType::Number),
        Some("boolean") => Ok(ColumnType::Boolean),
        Some("array") => match property.pointer("/items/type").and_then(Value::as_str) {
            Some("string") => Ok(ColumnType::StringList),
            _ => Err(
                "only arrays of strings can become a column (\"items\": {\"type\": \"string\"})"
                    .into(),
            ),
        },
        Some(other) => Err(format!(
            "type {other:?} cannot become a column (use string, integer, number, boolean, an enum of strings or an array of strings)"
        )),
        None => Err("it has no \"type\"".into()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn screening() -> OutputSchema {
        OutputSchema::from_json(json!({
            "type": "object",
            "properties": {
                "score": {"type": "integer"},
                "reason": {"type": "string"},
                "fit": {"type": "string", "enum": ["yes", "no"]},
                "skills": {"type": "array", "items": {"type": "string"}},
                "confidence": {"type": "number"},
                "remote": {"type": "boolean"}
            },
            "required": ["score", "fit"]
        }))
        .expect("a mappable schema")
    }

    #[test]
    fn every_supported_type_maps_to_a_column() {
        let schema = screening();
        let kinds: Vec<(&str, &ColumnType)> = schema
            .fields
            .iter()
            .map(|f| (f.name.as_str(), &f.kind))
            .collect();
        assert!(kinds.contains(&("skills", &ColumnType::StringList)));
        assert!(kinds.contains(&("fit", &ColumnType::Enum(vec!["yes".into(), "no".into()]))));
        assert!(
            schema
                .fields
                .iter()
                .any(|f| f.name == "score" && f.required)
        );
    }

    #[test]
    fn unmappable_schemas_list_every_problem() {
        let problems = OutputSchema::from_json(json!({
            "type": "object",
            "properties": {
                "nested": {"type": "object"},
                "numbers": {"type": "array", "items": {"type": "integer"}},
                "ok": {"type": "string"}
            },
            "required": ["missing"]
        }))
        .expect_err("not mappable");
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("\"nested\"")));
        assert!(problems.iter().any(|p| p.contains("\"numbers\"")));
        assert!(problems.iter().any(|p| p.contains("\"missing\"")));
    }

    #[test]
    fn replies_are_checked_against_the_schema() {
        let schema = screening();
        let good = r#"{"score": 7, "fit": "yes", "skills": ["rust"], "confidence": 0.5}"#;
        assert_eq!(schema.check(good).expect("valid")["score"], 7);
        for (reply, why) in [
            ("not json", "not JSON"),
            ("[1]", "not a JSON object"),
            (r#"{"fit": "yes"}"#, "required field \"score\""),
            (r#"{"score": 1.5, "fit": "yes"}"#, "should be an integer"),
            (r#"{"score": 1, "fit": "maybe"}"#, "one of yes, no"),
            (
                r#"{"score": 1, "fit": "no", "skills": [1]}"#,
                "array of strings",
            ),
        ] {
            let error = schema.check(reply).expect_err(reply);
            assert!(error.contains(why), "{reply}: {error}");
        }
    }
}
