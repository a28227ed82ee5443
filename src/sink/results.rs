//! The results table: its Arrow schema (one typed row per input line) and the builder that
//! turns outcomes into Arrow record batches. What each column means is documented in the
//! README; the names here are that contract.
//!
//! Reply fields are read from Ollama's native shapes and from OpenAI's, whichever is present.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use arrow_array::builder::{
    BooleanBuilder, Float32Builder, Float64Builder, Int32Builder, Int64Builder, ListBuilder,
    StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};

use serde_json::{Map, Value};

use crate::item::{Outcome, ReplyBody};
use crate::reply::ReplyFields;
use crate::schema::{ColumnType, OutputField};

/// The column holding the raw response, dropped by `--no-raw`.
pub const RAW_RESPONSE: &str = "raw_response";

/// Columns a pipeline adds: passthrough columns from the source, then one per output field.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExtraColumns {
    pub passthrough: Vec<(String, ColumnType)>,
    pub output: Vec<OutputField>,
}

impl ExtraColumns {
    fn fields(&self) -> impl Iterator<Item = (&str, &ColumnType)> {
        self.passthrough
            .iter()
            .map(|(name, kind)| (name.as_str(), kind))
            .chain(
                self.output
                    .iter()
                    .map(|field| (field.name.as_str(), &field.kind)),
            )
    }
}

/// Names of the columns every results file has, which pipeline columns must not reuse.
pub fn fixed_column_names() -> Vec<String> {
    schema(true, &ExtraColumns::default())
        .fields()
        .iter()
        .map(|field| field.name().clone())
        .collect()
}

fn arrow_type(kind: &ColumnType) -> DataType {
    match kind {
        ColumnType::String | ColumnType::Enum(_) => DataType::Utf8,
        ColumnType::Integer => DataType::Int64,
        ColumnType::Number => DataType::Float64,
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::StringList => {
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
        }
    }
}

/// One pipeline column being built.
enum ColumnBuilder {
    Text(StringBuilder),
    Integer(Int64Builder),
    Number(Float64Builder),
    Boolean(BooleanBuilder),
    TextList(ListBuilder<StringBuilder>),
}

impl ColumnBuilder {
    fn new(kind: &ColumnType) -> ColumnBuilder {
        match kind {
            ColumnType::String | ColumnType::Enum(_) => ColumnBuilder::Text(StringBuilder::new()),
            ColumnType::Integer => ColumnBuilder::Integer(Int64Builder::new()),
            ColumnType::Number => ColumnBuilder::Number(Float64Builder::new()),
            ColumnType::Boolean => ColumnBuilder::Boolean(BooleanBuilder::new()),
            ColumnType::StringList => {
                ColumnBuilder::TextList(ListBuilder::new(StringBuilder::new()))
            }
        }
    }

    /// Appends `value`, or null when it is missing or of another type (a text column takes
    /// any non-null value, as JSON text when it is not a string).
    fn append(&mut self, value: Option<&Value>) {
        let value = value.filter(|value| !value.is_null());
        match self {
            ColumnBuilder::Text(builder) => match value {
                Some(Value::String(text)) => builder.append_value(text),
                Some(other) => builder.append_value(other.to_string()),
                None => builder.append_null(),
            },
            ColumnBuilder::Integer(builder) => builder.append_option(value.and_then(Value::as_i64)),
            ColumnBuilder::Number(builder) => builder.append_option(value.and_then(Value::as_f64)),
            ColumnBuilder::Boolean(builder) => {
                builder.append_option(value.and_then(Value::as_bool))
            }
            ColumnBuilder::TextList(builder) => match value.and_then(Value::as_array) {
                Some(items) => {
                    for item in items {
                        builder.values().append_option(item.as_str());
                    }
                    builder.append(true);
                }
                None => builder.append(false),
            },
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Text(builder) => Arc::new(builder.finish()),
            ColumnBuilder::Integer(builder) => Arc::new(builder.finish()),
            ColumnBuilder::Number(builder) => Arc::new(builder.finish()),
            ColumnBuilder::Boolean(builder) => Arc::new(builder.finish()),
            ColumnBuilder::TextList(builder) => Arc::new(builder.finish()),
        }
    }
}

/// The results schema: the fixed columns, a pipeline's extra columns, and the raw response
/// unless it is dropped.
pub fn schema(keep_raw: bool, extras: &ExtraColumns) -> SchemaRef {
    let text = |name: &str| Field::new(name, DataType::Utf8, true);
    let int64 = |name: &str| Field::new(name, DataType::Int64, true);
    let float64 = |name: &str| Field::new(name, DataType::Float64, true);
    let mut fields = vec![
        text("custom_id"),
        Field::new("status", DataType::Utf8, false),
        Field::new("status_code", DataType::Int32, true),
        text("model"),
        text("content"),
        Field::new(
            "embedding",
            DataType::List(Arc::new(Field::new("item", DataType::Float32, true))),
            true,
        ),
        text("done_reason"),
        int64("prompt_tokens"),
        int64("completion_tokens"),
        float64("total_duration_ms"),
        float64("load_duration_ms"),
        float64("prompt_eval_duration_ms"),
        float64("eval_duration_ms"),
        Field::new("latency_ms", DataType::Float64, false),
        Field::new("attempts", DataType::Int32, false),
        text("error_code"),
        text("error_message"),
        Field::new("request_line", DataType::Int64, false),
        Field::new(
            "finished_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ];
    fields.extend(
        extras
            .fields()
            .map(|(name, kind)| Field::new(name, arrow_type(kind), true)),
    );
    if keep_raw {
        fields.push(text(RAW_RESPONSE));
    }
    Arc::new(Schema::new(fields))
}

/// Accumulates rows column by column until a row group is cut.
pub struct RowBuilder {
    schema: SchemaRef,
    keep_raw: bool,
    passthrough: Vec<ColumnBuilder>,
    /// Output field names, with their builders.
    output: Vec<(String, ColumnBuilder)>,
    rows: usize,
    /// About how many bytes the buffered rows hold (see [`RowBuilder::buffered_bytes`]).
    buffered_bytes: usize,
    custom_id: StringBuilder,
    status: StringBuilder,
    status_code: Int32Builder,
    model: StringBuilder,
    content: StringBuilder,
    embedding: ListBuilder<Float32Builder>,
    done_reason: StringBuilder,
    prompt_tokens: Int64Builder,
    completion_tokens: Int64Builder,
    total_duration_ms: Float64Builder,
    load_duration_ms: Float64Builder,
    prompt_eval_duration_ms: Float64Builder,
    eval_duration_ms: Float64Builder,
    latency_ms: Float64Builder,
    attempts: Int32Builder,
    error_code: StringBuilder,
    error_message: StringBuilder,
    request_line: Int64Builder,
    finished_at: TimestampMicrosecondBuilder,
    raw_response: StringBuilder,
}

fn nanos_to_ms(nanos: Option<u64>) -> Option<f64> {
    nanos.map(|nanos| nanos as f64 / 1e6)
}

impl RowBuilder {
    /// A builder for `schema`, which must be [`schema`]`(keep_raw, extras)` for some
    /// `keep_raw`.
    pub fn new(schema: SchemaRef, extras: &ExtraColumns) -> RowBuilder {
        let keep_raw = schema.field_with_name(RAW_RESPONSE).is_ok();
        let utc: Arc<str> = "UTC".into();
        RowBuilder {
            schema,
            keep_raw,
            passthrough: extras
                .passthrough
                .iter()
                .map(|(_, kind)| ColumnBuilder::new(kind))
                .collect(),
            output: extras
                .output
                .iter()
                .map(|field| (field.name.clone(), ColumnBuilder::new(&field.kind)))
                .collect(),
            rows: 0,
            buffered_bytes: 0,
            custom_id: StringBuilder::new(),
            status: StringBuilder::new(),
            status_code: Int32Builder::new(),
            model: StringBuilder::new(),
            content: StringBuilder::new(),
            embedding: ListBuilder::new(Float32Builder::new()),
            done_reason: StringBuilder::new(),
            prompt_tokens: Int64Builder::new(),
            completion_tokens: Int64Builder::new(),
            total_duration_ms: Float64Builder::new(),
            load_duration_ms: Float64Builder::new(),
            prompt_eval_duration_ms: Float64Builder::new(),
            eval_duration_ms: Float64Builder::new(),
            latency_ms: Float64Builder::new(),
            attempts: Int32Builder::new(),
            error_code: StringBuilder::new(),
            error_message: StringBuilder::new(),
            request_line: Int64Builder::new(),
            finished_at: TimestampMicrosecondBuilder::new().with_timezone(utc),
            raw_response: StringBuilder::new(),
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// About how much memory the buffered rows take: the texts that can be long (content,
    /// raw response, error message), embeddings, and a fixed share per row for the rest.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    /// Adds the row for `outcome`; `fields` is [`ReplyFields::of`] it.
    pub fn push(&mut self, outcome: &Outcome, fields: &ReplyFields) {
        self.custom_id.append_option(outcome.custom_id.as_deref());
        self.status
            .append_value(if outcome.is_ok() { "ok" } else { "error" });
        self.status_code
            .append_option(outcome.reply.as_ref().map(|reply| i32::from(reply.status)));
        self.model
            .append_option(outcome.model.as_deref().or(fields.model.as_deref()));
        /// The narrow columns of one row, with the builders' offsets and validity.
        const ROW_BYTES: usize = 160;
        let content = fields.content();
        self.buffered_bytes += ROW_BYTES + content.map_or(0, str::len);
        self.content.append_option(content);
        match fields.embedding() {
            Some(values) => {
                self.buffered_bytes += std::mem::size_of_val(values);
                self.embedding.values().append_slice(values);
                self.embedding.append(true);
            }
            None => self.embedding.append(false),
        }
        self.done_reason.append_option(fields.done_reason());
        let tokens =
            |count: Option<u64>| count.map(|count| i64::try_from(count).unwrap_or(i64::MAX));
        self.prompt_tokens
            .append_option(tokens(fields.prompt_tokens()));
        self.completion_tokens
            .append_option(tokens(fields.completion_tokens()));
        self.total_duration_ms
            .append_option(nanos_to_ms(fields.total_duration));
        self.load_duration_ms
            .append_option(nanos_to_ms(fields.load_duration));
        self.prompt_eval_duration_ms
            .append_option(nanos_to_ms(fields.prompt_eval_duration));
        self.eval_duration_ms
            .append_option(nanos_to_ms(fields.eval_duration));
        self.latency_ms
            .append_value(outcome.latency.as_secs_f64() * 1e3);
        self.attempts
            .append_value(i32::try_from(outcome.attempts).unwrap_or(i32::MAX));
        self.error_code
            .append_option(outcome.error.as_ref().map(|error| error.code.as_str()));
        let error_message = outcome.error.as_ref().map(|error| error.message.as_str());
        self.buffered_bytes += error_message.map_or(0, str::len);
        self.error_message.append_option(error_message);
        self.request_line
            .append_value(i64::try_from(outcome.line).unwrap_or(i64::MAX));
        let finished_micros = outcome
            .finished_at
            .duration_since(UNIX_EPOCH)
            .map(|since| i64::try_from(since.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        self.finished_at.append_value(finished_micros);
        for (index, builder) in self.passthrough.iter_mut().enumerate() {
            builder.append(outcome.passthrough.get(index));
        }
        if !self.output.is_empty() {
            let structured: Option<Map<String, Value>> = fields
                .content()
                .filter(|_| outcome.is_ok())
                .and_then(|text| serde_json::from_str(text.trim()).ok());
            for (name, builder) in self.output.iter_mut() {
                builder.append(
                    structured
                        .as_ref()
                        .and_then(|object| object.get(name.as_str())),
                );
            }
        }
        if self.keep_raw {
            let raw = outcome.reply.as_ref().map(|reply| match &reply.body {
                ReplyBody::Json(json) => json.get(),
                ReplyBody::Text(text) => text.as_str(),
            });
            self.buffered_bytes += raw.map_or(0, str::len);
            self.raw_response.append_option(raw);
        }
        self.rows += 1;
    }

    /// The rows so far as one batch; the builder starts empty again.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.custom_id.finish()),
            Arc::new(self.status.finish()),
            Arc::new(self.status_code.finish()),
            Arc::new(self.model.finish()),
            Arc::new(self.content.finish()),
            Arc::new(self.embedding.finish()),
            Arc::new(self.done_reason.finish()),
            Arc::new(self.prompt_tokens.finish()),
            Arc::new(self.completion_tokens.finish()),
            Arc::new(self.total_duration_ms.finish()),
            Arc::new(self.load_duration_ms.finish()),
            Arc::new(self.prompt_eval_duration_ms.finish()),
            Arc::new(self.eval_duration_ms.finish()),
            Arc::new(self.latency_ms.finish()),
            Arc::new(self.attempts.finish()),
            Arc::new(self.error_code.finish()),
            Arc::new(self.error_message.finish()),
            Arc::new(self.request_line.finish()),
            Arc::new(self.finished_at.finish()),
        ];
        columns.extend(self.passthrough.iter_mut().map(ColumnBuilder::finish));
        columns.extend(self.output.iter_mut().map(|(_, builder)| builder.finish()));
        if self.keep_raw {
            columns.push(Arc::new(self.raw_response.finish()));
        }
        self.rows = 0;
        self.buffered_bytes = 0;
        RecordBatch::try_new(Arc::clone(&self.schema), columns)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float32Type, Int64Type};

    use super::*;
    use crate::item::{ErrorCode, HttpReply, OutcomeError};

    fn outcome(body: &str, error: Option<OutcomeError>) -> Outcome {
        Outcome {
            line: 4,
            custom_id: Some("id-4".into()),
            model: Some("llama3.2".into()),
            reply: Some(HttpReply {
                status: if error.is_some() { 500 } else { 200 },
                request_id: "req".into(),
                body: ReplyBody::Json(serde_json::from_str(body).expect("json")),
            }),
            error,
            attempts: 2,
            latency: Duration::from_millis(1500),
            finished_at: SystemTime::now(),
            passthrough: Vec::new(),
        }
    }

    fn push(builder: &mut RowBuilder, outcome: &Outcome) {
        builder.push(outcome, &ReplyFields::of(outcome));
    }

    #[test]
    fn ollama_and_openai_replies_fill_the_same_columns() {
        let mut builder = RowBuilder::new(
            schema(true, &ExtraColumns::default()),
            &ExtraColumns::default(),
        );
        push(
            &mut builder,
            &outcome(
                r#"{"message":{"content":"native"},"done_reason":"stop","prompt_eval_count":3,"eval_count":5,"total_duration":2000000}"#,
                None,
            ),
        );
        push(
            &mut builder,
            &outcome(
                r#"{"choices":[{"message":{"content":"openai"},"finish_reason":"length"}],"usage":{"prompt_tokens":7,"completion_tokens":9}}"#,
                None,
            ),
        );
        push(
            &mut builder,
            &outcome(r#"{"embeddings":[[0.5,0.25]]}"#, None),
        );
        push(
            &mut builder,
            &outcome(
                r#"{"error":"boom"}"#,
                Some(OutcomeError {
                    code: ErrorCode::ServerError,
                    message: "HTTP 500: boom".into(),
                }),
            ),
        );
        let batch = builder.finish().expect("batch");
        assert_eq!(batch.num_rows(), 4);
        let column = |name: &str| batch.column_by_name(name).expect(name).clone();
        let content = column("content");
        let content = content.as_string::<i32>();
        assert_eq!(content.value(0), "native");
        assert_eq!(content.value(1), "openai");
        assert!(content.is_null(2));
        let completion = column("completion_tokens");
        assert_eq!(completion.as_primitive::<Int64Type>().value(1), 9);
        let embedding = column("embedding");
        let embedding = embedding.as_list::<i32>().value(2);
        assert_eq!(
            embedding.as_primitive::<Float32Type>().values().to_vec(),
            vec![0.5, 0.25]
        );
        let status = column("status");
        assert_eq!(status.as_string::<i32>().value(3), "error");
        assert_eq!(
            column("error_code").as_string::<i32>().value(3),
            "server_error"
        );
        assert_eq!(
            column("raw_response").as_string::<i32>().value(3),
            r#"{"error":"boom"}"#
        );
        assert_eq!(builder.rows(), 0);
    }
}
