//! The mock's structured output: which JSON schema a request asks its answer to follow (Ollama
//! `format`, OpenAI `response_format`), and a value that follows it.
//!
//! The value is drawn from a seed (the prompt's hash), so the same request always gets the same
//! answer. It covers what servers are asked for in practice: objects with every property,
//! strings (with `format`, lengths), numbers and integers within their bounds, booleans, `null`,
//! arrays within their item counts, `enum` and `const`, `$ref` into the schema's own `$defs` or
//! `definitions`, and `anyOf`/`oneOf`/`allOf` (the first branch). It does not try to satisfy
//! `pattern`, `multipleOf` or `not`. Checking replies against the pipeline's own output schema
//! is [`crate::schema`]'s job, not this module's.

use std::hash::{DefaultHasher, Hash, Hasher};

use serde_json::{Map, Value, json};

/// From this depth on, objects get only their required properties and arrays only their
/// least count of items, so that a recursive schema ends.
const SHALLOW_DEPTH: usize = 4;

/// How deep a value nests before the generator gives up on a schema that requires its own
/// recursion (the value there is `null`).
const MAX_DEPTH: usize = 12;

/// The most items or characters one value gets, whatever the schema's least count asks: the
/// mock's memory is not the request's to size.
const MAX_COUNT: usize = 10_000;

/// The schema a request asks its answer to follow, if any: Ollama `format` (a JSON schema, or
/// `"json"`), or OpenAI `response_format` (`json_schema` with its schema, or `json_object`).
/// Plain JSON mode is an object with no properties.
pub fn requested_format(request: &Value) -> Option<Value> {
    match request.get("format") {
        Some(Value::String(kind)) if kind == "json" => return Some(json!({"type": "object"})),
        Some(schema @ Value::Object(_)) => return Some(schema.clone()),
        _ => {}
    }
    let format = request.get("response_format")?;
    match format.get("type").and_then(Value::as_str) {
        Some("json_object") => Some(json!({"type": "object"})),
        Some("json_schema") => format.pointer("/json_schema/schema").cloned(),
        _ => None,
    }
}

/// An answer that follows `schema`, as JSON text, the same for the same `prompt`. An object
/// schema with no properties (JSON mode) gets one `reply` property holding `fallback`.
pub fn structured_text(schema: &Value, prompt: &str, fallback: &str) -> String {
    let mut generator = Generator {
        root: schema,
        seed: seed_of(prompt),
        draws: 0,
    };
    let mut value = generator.value(schema, "value", 0);
    if let Value::Object(fields) = &mut value {
        if fields.is_empty() && schema.get("properties").is_none() {
            fields.insert("reply".into(), Value::String(fallback.to_owned()));
        }
    }
    value.to_string()
}

fn seed_of(prompt: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    prompt.hash(&mut hasher);
    hasher.finish()
}

/// Walks a schema, drawing values from a seeded sequence.
struct Generator<'a> {
    /// The whole schema, which `$ref`s point into.
    root: &'a Value,
    seed: u64,
    draws: u64,
}

impl<'a> Generator<'a> {
    /// The next number of the sequence (SplitMix64: cheap, and well spread from any seed).
    fn draw(&mut self) -> u64 {
        self.draws += 1;
        let mut z = self
            .seed
            .wrapping_add(self.draws.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value for `schema`, named `name` (a property's name, for readable strings).
    fn value(&mut self, schema: &'a Value, name: &str, depth: usize) -> Value {
        let schema = self.resolve(schema);
        if depth > MAX_DEPTH {
            return Value::Null;
        }
        if let Some(constant) = schema.get("const") {
            return constant.clone();
        }
        if let Some(choices) = schema
            .get("enum")
            .and_then(Value::as_array)
            .filter(|choices| !choices.is_empty())
        {
            let pick = (self.draw() % choices.len() as u64) as usize;
            return choices[pick].clone();
        }
        for combinator in ["anyOf", "oneOf", "allOf"] {
            if let Some(first) = schema
                .get(combinator)
                .and_then(Value::as_array)
                .and_then(|branches| branches.first())
            {
                return self.value(first, name, depth + 1);
            }
        }
        match type_of(schema) {
            "object" => self.object(schema, depth),
            "array" => self.array(schema, name, depth),
            "integer" => self.integer(schema),
            "number" => self.number(schema),
            "boolean" => Value::Bool(self.draw().is_multiple_of(2)),
            "null" => Value::Null,
            _ => self.string(schema, name),
        }
    }

    /// Follows `$ref`s that point into the root schema (`#`, `#/$defs/…`, `#/definitions/…`);
    /// one that points elsewhere or nowhere leaves the schema as it is.
    fn resolve(&self, mut schema: &'a Value) -> &'a Value {
        for _ in 0..MAX_DEPTH {
            let Some(pointer) = schema
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|reference| reference.strip_prefix('#'))
            else {
                break;
            };
            match self.root.pointer(pointer) {
                Some(target) => schema = target,
                None => break,
            }
        }
        schema
    }

    fn object(&mut self, schema: &'a Value, depth: usize) -> Value {
        let mut object = Map::new();
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            for (name, property) in properties {
                if depth < SHALLOW_DEPTH || required.contains(&name.as_str()) {
                    object.insert(name.clone(), self.value(property, name, depth + 1));
                }
            }
        }
        // A required name with no property of its own still has to be there.
        for name in required {
            if !object.contains_key(name) {
                object.insert(name.to_owned(), Value::String(format!("mock {name}")));
            }
        }
        Value::Object(object)
    }

    fn array(&mut self, schema: &'a Value, name: &str, depth: usize) -> Value {
        let least = count_bound(schema, "minItems").unwrap_or(0);
        let most = count_bound(schema, "maxItems").unwrap_or(least.max(2));
        let count = if most > least && depth < SHALLOW_DEPTH {
            least.max(2).min(most)
        } else {
            least
        };
        // `items` as a list is the older spelling of `prefixItems`.
        let prefix = schema
            .get("prefixItems")
            .or(schema.get("items"))
            .and_then(Value::as_array);
        let items = schema.get("items").filter(|items| items.is_object());
        let values = (0..count)
            .map(|index| {
                let item_name = format!("{name} {}", index + 1);
                match prefix.and_then(|prefix| prefix.get(index)).or(items) {
                    Some(item) => self.value(item, &item_name, depth + 1),
                    None => Value::String(item_name),
                }
            })
            .collect();
        Value::Array(values)
    }

    /// An integer within the schema's bounds, 0 to 9 when it has none.
    fn integer(&mut self, schema: &Value) -> Value {
        let low = bound(schema, "minimum")
            .map(f64::ceil)
            .or(bound(schema, "exclusiveMinimum").map(|low| low.floor() + 1.0));
        let high = bound(schema, "maximum")
            .map(f64::floor)
            .or(bound(schema, "exclusiveMaximum").map(|high| high.ceil() - 1.0));
        let (low, high) = range(low, high, 0.0, 9.0);
        if high < low {
            return json!(low as i64);
        }
        let span = ((high - low) as u64).saturating_add(1);
        json!((low as i64).saturating_add((self.draw() % span) as i64))
    }

    /// A number strictly inside the schema's bounds (so that exclusive ones hold too), in
    /// (0, 1) when it has none.
    fn number(&mut self, schema: &Value) -> Value {
        let low = bound(schema, "minimum").or(bound(schema, "exclusiveMinimum"));
        let high = bound(schema, "maximum").or(bound(schema, "exclusiveMaximum"));
        let (low, high) = range(low, high, 0.0, 1.0);
        let fraction = (self.draw() % 999 + 1) as f64 / 1000.0;
        json!(low + (high - low).max(0.0) * fraction)
    }

    fn string(&mut self, schema: &Value, name: &str) -> Value {
        let draw = self.draw() % 1000;
        let text = match schema.get("format").and_then(Value::as_str) {
            Some("date-time") => format!("2026-01-{:02}T12:00:00Z", draw % 28 + 1),
            Some("date") => format!("2026-01-{:02}", draw % 28 + 1),
            Some("time") => format!("12:{:02}:00", draw % 60),
            Some("email") => format!("mock{draw}@example.com"),
            Some("uri" | "url") => format!("https://example.com/{draw}"),
            Some("uuid") => format!("00000000-0000-4000-8000-{draw:012}"),
            _ => format!("mock {name} {draw}"),
        };
        let least = count_bound(schema, "minLength").unwrap_or(0);
        let most = count_bound(schema, "maxLength");
        let mut text: String = match most {
            Some(most) => text.chars().take(most).collect(),
            None => text,
        };
        while text.chars().count() < least {
            text.push('x');
        }
        Value::String(text)
    }
}

/// The schema's `type`: the first one that is not `null` when it lists several; guessed from
/// the keywords when it has none.
fn type_of(schema: &Value) -> &str {
    match schema.get("type") {
        Some(Value::String(kind)) => kind,
        Some(Value::Array(kinds)) => {
            let mut names = kinds.iter().filter_map(Value::as_str);
            let first = names.clone().next().unwrap_or("string");
            names.find(|kind| *kind != "null").unwrap_or(first)
        }
        _ if schema.get("properties").is_some() || schema.get("required").is_some() => "object",
        _ if schema.get("items").is_some() || schema.get("prefixItems").is_some() => "array",
        _ => "string",
    }
}

fn bound(schema: &Value, keyword: &str) -> Option<f64> {
    schema.get(keyword).and_then(Value::as_f64)
}

/// A count keyword (`minItems`, `maxLength`, …), at most [`MAX_COUNT`].
fn count_bound(schema: &Value, keyword: &str) -> Option<usize> {
    bound(schema, keyword).map(|count| count.clamp(0.0, MAX_COUNT as f64) as usize)
}

/// The range a value is drawn from: the schema's bounds `low` and `high`, else `default_low`
/// and `default_high`, moved to fit the one bound the schema gives.
fn range(low: Option<f64>, high: Option<f64>, default_low: f64, default_high: f64) -> (f64, f64) {
    let width = default_high - default_low;
    match (low, high) {
        (Some(low), Some(high)) => (low, high),
        (Some(low), None) => (low, low + width),
        (None, Some(high)) => (high - width, high),
        (None, None) => (default_low, default_high),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(schema: &Value, prompt: &str) -> Value {
        serde_json::from_str(&structured_text(schema, prompt, "fallback")).expect("JSON text")
    }

    #[test]
    fn every_property_gets_a_value_of_its_type() {
        let schema = json!({
            "type": "object",
            "required": ["score", "fit"],
            "properties": {
                "score": {"type": "integer", "minimum": 1, "maximum": 10},
                "fit": {"type": "string", "enum": ["yes", "no"]},
                "confidence": {"type": "number", "minimum": 0.5, "maximum": 0.75},
                "remote": {"type": "boolean"},
                "skills": {"type": "array", "items": {"type": "string"}, "minItems": 3},
                "note": {"type": ["null", "string"], "maxLength": 4},
                "nothing": {"type": "null"},
                "kind": {"const": "candidate"},
                "when": {"type": "string", "format": "date"},
            },
        });
        for prompt in ["a", "b", "c", "d", "e"] {
            let value = answer(&schema, prompt);
            let score = value["score"].as_i64().expect("an integer score");
            assert!((1..=10).contains(&score), "{value}");
            assert!(["yes", "no"].contains(&value["fit"].as_str().expect("fit")));
            let confidence = value["confidence"].as_f64().expect("a number");
            assert!((0.5..=0.75).contains(&confidence), "{value}");
            assert!(value["remote"].is_boolean());
            let skills = value["skills"].as_array().expect("an array");
            assert!(skills.len() >= 3 && skills.iter().all(Value::is_string));
            assert!(value["note"].as_str().expect("a string").chars().count() <= 4);
            assert!(value["nothing"].is_null());
            assert_eq!(value["kind"], "candidate");
            let when = value["when"].as_str().expect("a date");
            assert!(when.len() == 10 && when.starts_with("2026-01-"), "{when}");
        }
    }

    #[test]
    fn nested_objects_refs_and_alternatives_are_followed() {
        let schema = json!({
            "type": "object",
            "properties": {
                "person": {"$ref": "#/$defs/person"},
                "tags": {"type": "array", "items": {"$ref": "#/definitions/tag"}, "maxItems": 1},
                "either": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
                "tree": {"$ref": "#"},
            },
            "required": ["person", "extra"],
            "$defs": {"person": {"type": "object", "properties": {"age": {"type": "integer"}}}},
            "definitions": {"tag": {"type": "object", "properties": {"label": {"type": "string"}}}},
        });
        let value = answer(&schema, "nested");
        assert!(value["person"]["age"].is_i64(), "{value}");
        let tags = value["tags"].as_array().expect("tags");
        assert_eq!(tags.len(), 1);
        assert!(tags[0]["label"].is_string(), "{value}");
        assert!(value["either"].is_i64(), "{value}");
        assert!(value["extra"].is_string(), "{value}");
        assert!(
            value["tree"]["tree"].is_object(),
            "a recursive schema nests: {value}"
        );
    }

    #[test]
    fn answers_are_the_same_for_the_same_prompt_and_vary_across_prompts() {
        let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
        assert_eq!(answer(&schema, "same"), answer(&schema, "same"));
        let distinct: std::collections::BTreeSet<String> = (0..50)
            .map(|index| answer(&schema, &format!("prompt {index}"))["n"].to_string())
            .collect();
        assert!(distinct.len() > 1, "{distinct:?}");
    }

    #[test]
    fn json_mode_gets_an_object_holding_the_plain_reply() {
        for request in [
            json!({"format": "json"}),
            json!({"response_format": {"type": "json_object"}}),
        ] {
            let schema = requested_format(&request).expect("JSON mode");
            assert_eq!(answer(&schema, "p"), json!({"reply": "fallback"}));
        }
    }

    #[test]
    fn the_requested_schema_is_found_in_either_dialect() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        let openai = json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}});
        assert_eq!(requested_format(&openai), Some(schema.clone()));
        assert_eq!(requested_format(&json!({"format": schema})), Some(schema));
        assert_eq!(
            requested_format(&json!({"response_format": {"type": "text"}})),
            None
        );
        assert_eq!(requested_format(&json!({"model": "m"})), None);
    }

    #[test]
    fn a_top_level_array_or_scalar_schema_is_answered_in_kind() {
        let list = answer(&json!({"type": "array", "items": {"type": "boolean"}}), "p");
        assert!(
            list.as_array()
                .is_some_and(|items| items.iter().all(Value::is_boolean))
        );
        assert!(answer(&json!({"type": "integer", "minimum": 5, "maximum": 5}), "p") == json!(5));
    }

    #[test]
    fn exclusive_bounds_are_kept_out() {
        for prompt in ["a", "b", "c", "d", "e", "f"] {
            let value = answer(
                &json!({"type": "object", "properties": {
                    "n": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                    "i": {"type": "integer", "exclusiveMinimum": 2.5, "exclusiveMaximum": 4},
                    "pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "boolean"}], "minItems": 2, "maxItems": 2},
                }}),
                prompt,
            );
            let n = value["n"].as_f64().expect("a number");
            assert!(n > 0.0 && n < 1.0, "{value}");
            assert_eq!(value["i"], 3, "{value}");
            assert!(
                value["pair"][0].is_i64() && value["pair"][1].is_boolean(),
                "{value}"
            );
        }
    }
}
