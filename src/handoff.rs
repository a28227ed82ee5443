//! The records a later stage of a pipeline gets from an earlier stage's results: which rows
//! are handed on (the successful ones), which columns are read for them, and what each record
//! holds (its custom_id, the columns the earlier stage carried, its output fields under their
//! own names and under `stage.field`, and its reply's text as `stage.content`).
//!
//! The run hands these records on (`engine::stages`), and `verify` rebuilds them to know which
//! rows a later stage owes: one definition, so that both apply the `where` filter to the same
//! records. Reading the files, and filtering, are the callers'.

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

/// The results columns a record is made from: the key, the status that says whether the row
/// is handed on, the reply's text, and what the stage carried and produced.
pub fn columns_read(passthrough: &[String], output_fields: &[String]) -> Vec<String> {
    let mut names = vec!["custom_id".to_owned(), "status".into(), "content".into()];
    names.extend(passthrough.iter().cloned());
    names.extend(output_fields.iter().cloned());
    names
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

/// The record a later stage gets from a row of stage `stage` (which carried `passthrough` and
/// produced `output_fields`), or `None` for a row that is no success.
pub fn handed_on(
    stage: &str,
    passthrough: &[String],
    output_fields: &[String],
    mut row: Map<String, Value>,
) -> Option<Map<String, Value>> {
    if row.get("status").and_then(Value::as_str) != Some("ok") {
        return None;
    }
    let mut record = Map::new();
    record.insert("custom_id".into(), row.remove("custom_id")?);
    for name in passthrough {
        record.insert(name.clone(), row.remove(name).unwrap_or(Value::Null));
    }
    for field in output_fields {
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
        let passthrough = ["name".to_owned()];
        let fields = ["fit".to_owned(), "score".to_owned()];
        let record = handed_on("screen", &passthrough, &fields, row("ok")).expect("handed on");
        assert_eq!(
            Value::Object(record),
            json!({"custom_id": "c1", "name": "Ada", "fit": "strong", "screen.fit": "strong",
                   "score": 8, "screen.score": 8, "screen.content": "{}"})
        );
        assert!(handed_on("screen", &passthrough, &fields, row("error")).is_none());
    }
}
