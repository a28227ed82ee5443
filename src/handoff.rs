//! The records a later stage of a pipeline gets from an earlier stage's results: which rows
//! are handed on (the successful ones), which columns are read for them, and what each record
//! holds (its custom_id, the columns the earlier stage carried, its output fields under their
//! own names and under `stage.field`, and its reply's text as `stage.content`).
//!
//! The run hands these records on (`engine::stages`), `verify` rebuilds them to know which
//! rows a later stage owes, and `plan` to count those its probe's answers would give: one
//! [`Handoff`], so that all apply the `where` filter to the same records. Reading the files,
//! and filtering, are the callers'.

use arrow_array::RecordBatch;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ArrowReaderBuilder;
use serde_json::{Map, Value};

/// The projection of a results file onto `wanted`, by root field: a carried column's name may
/// hold a dot (`screen.fit`), which a projection by column path would take for a nesting.
pub fn projection<T>(builder: &ArrowReaderBuilder<T>, wanted: &[String]) -> ProjectionMask {
    let roots: Vec<usize> = builder
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, field)| wanted.iter().any(|name| name == field.name()))
        .map(|(index, _)| index)
        .collect();
    ProjectionMask::roots(builder.parquet_schema(), roots)
}

/// A batch's rows as JSON objects, nulls written out (a template reads a null column as
/// empty, a missing one as an error).
pub fn records(batch: &RecordBatch) -> Result<Vec<Map<String, Value>>, arrow_schema::ArrowError> {
    let mut buffer = Vec::new();
    {
        let mut writer = arrow_json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow_json::writer::LineDelimited>(&mut buffer);
        writer.write(batch)?;
        writer.finish()?;
    }
    let mut rows = Vec::with_capacity(batch.num_rows());
    for line in buffer.split(|byte| *byte == b'\n') {
        if line.is_empty() {
            continue;
        }
        let row: Map<String, Value> = serde_json::from_slice(line)
            .map_err(|error| arrow_schema::ArrowError::JsonError(error.to_string()))?;
        rows.push(row);
    }
    Ok(rows)
}

/// What a stage hands on to the stages that read it: its name (which prefixes its fields in
/// the records), the columns its results carry, and its output fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handoff {
    pub stage: String,
    pub carried: Vec<String>,
    pub output_fields: Vec<String>,
}

impl Handoff {
    /// The results columns a record is made from: the key, the status that says whether the
    /// row is handed on, the reply's text, and what the stage carried and produced.
    pub fn columns_read(&self) -> Vec<String> {
        let mut names = vec!["custom_id".to_owned(), "status".into(), "content".into()];
        names.extend(self.carried.iter().cloned());
        names.extend(self.output_fields.iter().cloned());
        names
    }

    /// The record a later stage gets from a row of this stage, or `None` for a row that is no
    /// success.
    pub fn handed_on(&self, mut row: Map<String, Value>) -> Option<Map<String, Value>> {
        if row.get("status").and_then(Value::as_str) != Some("ok") {
            return None;
        }
        let stage = &self.stage;
        let mut record = Map::new();
        record.insert("custom_id".into(), row.remove("custom_id")?);
        for name in &self.carried {
            record.insert(name.clone(), row.remove(name).unwrap_or(Value::Null));
        }
        for field in &self.output_fields {
            let value = row.remove(field).unwrap_or(Value::Null);
            record.insert(format!("{stage}.{field}"), value.clone());
            record.insert(field.clone(), value);
        }
        record.insert(
            format!("{stage}.content"),
            row.remove("content").unwrap_or(Value::Null),
        );
        Some(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_successful_row_is_handed_on_with_its_fields_twice_and_a_failed_one_is_not() {
        let row = |status: &str| {
            json!({"custom_id": "c1", "status": status, "content": "{}", "name": "Ada",
                   "fit": "strong", "score": 8})
            .as_object()
            .cloned()
            .expect("an object")
        };
        let screen = Handoff {
            stage: "screen".into(),
            carried: vec!["name".into()],
            output_fields: vec!["fit".into(), "score".into()],
        };
        let record = screen.handed_on(row("ok")).expect("handed on");
        assert_eq!(
            Value::Object(record),
            json!({"custom_id": "c1", "name": "Ada", "fit": "strong", "screen.fit": "strong",
                   "score": 8, "screen.score": 8, "screen.content": "{}"})
        );
        assert!(screen.handed_on(row("error")).is_none());
    }
}
