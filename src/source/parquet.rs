//! Parquet input: requests stored as rows with `custom_id`, `method`, `url` and `body` columns,
//! where `body` is either JSON text or a struct (its nested columns become a JSON object).
//!
//! Opening reads the footer and checks the columns, so a wrong file fails before anything else
//! starts. Reading goes one record batch at a time, projected to those four columns, so memory
//! does not grow with the file. Each row is encoded as a JSON object (a null field is left out,
//! as if missing) and handed to the same [`RequestParser`] as a JSONL line, with its 1-based row
//! number as its position. Counting, the resume filter and sending belong to [`super`].
//!
//! Binary columns (`BINARY` without a UTF-8 annotation, as pandas and Spark write bytes) are
//! read as UTF-8 text, at the top level and inside structs: Arrow's JSON encoder would write
//! their bytes as hex, and an id `b"id-0"` would come back as `"69642d30"`. A value that is
//! not UTF-8 makes its row invalid, naming the row and the column.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{
    Array, ArrayRef, LargeStringArray, RecordBatch, StringArray, StringViewArray, StructArray,
    new_empty_array,
};
use arrow_json::writer::{EncoderOptions, make_encoder};
use arrow_schema::{DataType, Field, FieldRef, Fields};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use serde_json::Value;

use super::SourceError;
use super::request::{Position, RequestParser};
use crate::item::{ErrorCode, InvalidLine, SourceItem};

/// The columns a request is made of; any others in the file are not read.
pub const REQUIRED_COLUMNS: [&str; 4] = ["custom_id", "method", "url", "body"];

/// Rows decoded at a time: large enough to amortise decoding, small enough that a batch of
/// long prompts stays a few megabytes.
const BATCH_ROWS: usize = 1024;

/// Every Parquet file starts (and ends) with these bytes.
const MAGIC: &[u8; 4] = b"PAR1";

/// Whether `file` holds Parquet: by a `.parquet` name, or by the magic bytes at its start. Only
/// a regular file is sniffed, because reading a pipe (`<(zcat requests.jsonl.gz)`) cannot be
/// undone; `file` is left at its start.
pub fn is_parquet(path: &Path, file: &mut File) -> io::Result<bool> {
    let named = path
        .extension()
        .is_some_and(|extension| extension.eq_ignore_ascii_case("parquet"));
    if named || !file.metadata()?.is_file() {
        return Ok(named);
    }
    let mut start = Vec::with_capacity(MAGIC.len());
    file.by_ref()
        .take(MAGIC.len() as u64)
        .read_to_end(&mut start)?;
    io::Seek::rewind(file)?;
    Ok(start == MAGIC)
}

/// A Parquet input whose footer and columns have been checked, not yet read.
pub struct ParquetRows {
    path: PathBuf,
    batches: ParquetRecordBatchReader,
    /// The current batch's rows as JSON objects, back to back; `ends[i]` is where row `i` ends.
    encoded: Vec<u8>,
    ends: Vec<usize>,
    /// Index into `ends` of the next row to hand out.
    next: usize,
    /// The current batch's rows with a binary value that is not UTF-8: the row's index and the
    /// column's name, by index.
    not_text: Vec<(usize, String)>,
    /// Rows handed out so far: the last one's 1-based row number.
    rows: u64,
    /// Rows in the file, from its footer.
    total_rows: u64,
}

impl ParquetRows {
    /// Reads the footer, checks that the request columns are there and can become JSON, and
    /// decodes the first batch.
    pub fn open(path: &Path, file: File) -> Result<ParquetRows, SourceError> {
        ParquetRows::open_columns(path, file, &REQUIRED_COLUMNS)
    }

    /// Like [`ParquetRows::open`], reading `columns` (a pipeline's record columns) instead of
    /// the request columns.
    pub fn open_columns(
        path: &Path,
        file: File,
        columns: &[&str],
    ) -> Result<ParquetRows, SourceError> {
        let unreadable = |reason: String| SourceError::ParquetInput {
            path: path.to_owned(),
            reason,
        };
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|error| unreadable(error.to_string()))?;
        let total_rows = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
        let fields = builder.schema().fields();
        let missing: Vec<&str> = columns
            .iter()
            .copied()
            .filter(|name| fields.find(name).is_none())
            .collect();
        if !missing.is_empty() {
            let found: Vec<&str> = fields.iter().map(|field| field.name().as_str()).collect();
            return Err(SourceError::ParquetColumns {
                path: path.to_owned(),
                missing: missing.join(", "),
                found: if found.is_empty() {
                    "none".into()
                } else {
                    found.join(", ")
                },
            });
        }
        let mut roots = Vec::with_capacity(columns.len());
        for (index, field) in fields.iter().enumerate() {
            if columns.contains(&field.name().as_str()) {
                check_encodable(path, field)?;
                roots.push(index);
            }
        }
        // The Arrow schema's top-level fields are the Parquet schema's roots, in the same order.
        let projection = ProjectionMask::roots(builder.parquet_schema(), roots);
        let batches = builder
            .with_projection(projection)
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(|error| unreadable(error.to_string()))?;
        let mut rows = ParquetRows {
            path: path.to_owned(),
            batches,
            encoded: Vec::new(),
            ends: Vec::new(),
            next: 0,
            not_text: Vec::new(),
            rows: 0,
            total_rows,
        };
        // Decoding the first batch now makes a compression codec this build lacks, or damage
        // at the start of the data, an open error: before the backend is checked and before a
        // results file is created.
        if let Some(batch) = rows.batches.next() {
            rows.encode(batch.map_err(|error| unreadable(error.to_string()))?)?;
        }
        Ok(rows)
    }

    /// Rows in the file, as its footer says.
    pub fn total_rows(&self) -> u64 {
        self.total_rows
    }

    /// The next row as a request or an invalid item, or `None` after the last row.
    pub fn next_item(
        &mut self,
        parser: &mut RequestParser,
    ) -> Result<Option<SourceItem>, SourceError> {
        while self.next == self.ends.len() {
            let Some(batch) = self.batches.next() else {
                return Ok(None);
            };
            let batch = batch.map_err(|error| SourceError::ReadInput {
                name: self.path.display().to_string(),
                line: self.rows,
                cause: io::Error::other(error),
            })?;
            self.encode(batch)?;
        }
        let start = match self.next {
            0 => 0,
            next => self.ends[next - 1],
        };
        let row = &self.encoded[start..self.ends[self.next]];
        let not_text = self
            .not_text
            .binary_search_by_key(&self.next, |(index, _)| *index)
            .ok()
            .map(|found| self.not_text[found].1.as_str());
        self.next += 1;
        self.rows += 1;
        let position = Position::Row(self.rows);
        Ok(Some(match serde_json::from_slice::<Value>(row) {
            Ok(value) => match not_text {
                None => parser.parse_value(position, value),
                Some(column) => SourceItem::Invalid(InvalidLine {
                    line: self.rows,
                    custom_id: value
                        .get("custom_id")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    code: ErrorCode::InvalidJson,
                    message: format!(
                        "{position}: its {column} column holds bytes that are not UTF-8 text"
                    ),
                }),
            },
            // Arrow's JSON encoder is meant to write valid JSON for every type it accepts;
            // should one value still not parse, it costs its row, not the run.
            Err(error) => SourceItem::Invalid(InvalidLine {
                line: self.rows,
                custom_id: None,
                code: ErrorCode::InvalidJson,
                message: format!("{position}: cannot be read as JSON ({error})"),
            }),
        }))
    }

    fn encode(&mut self, batch: RecordBatch) -> Result<(), SourceError> {
        self.encoded.clear();
        self.ends.clear();
        self.next = 0;
        self.not_text.clear();
        let (fields, columns) = binary_as_text(
            batch.schema().fields(),
            batch.columns(),
            "",
            &mut self.not_text,
        );
        // A row is named once, by its first column that is not text.
        self.not_text.sort_by_key(|(index, _)| *index);
        self.not_text.dedup_by_key(|(index, _)| *index);
        let rows = StructArray::try_new_with_length(fields, columns, None, batch.num_rows())
            .map_err(|error| SourceError::ReadInput {
                name: self.path.display().to_string(),
                line: self.rows,
                cause: io::Error::other(error),
            })?;
        let field: FieldRef = Arc::new(Field::new("row", rows.data_type().clone(), false));
        let options = EncoderOptions::default();
        let mut encoder =
            make_encoder(&field, &rows, &options).map_err(|error| SourceError::ReadInput {
                name: self.path.display().to_string(),
                line: self.rows,
                cause: io::Error::other(error),
            })?;
        for index in 0..rows.len() {
            encoder.encode(index, &mut self.encoded);
            self.ends.push(self.encoded.len());
        }
        Ok(())
    }
}

/// `columns` (of `fields`, named under `parent`) with every binary column, at the top level or
/// in a struct, turned into text of the same offset width. A value that is not UTF-8 becomes
/// null, and its row index and column name go into `not_text`.
fn binary_as_text(
    fields: &Fields,
    columns: &[ArrayRef],
    parent: &str,
    not_text: &mut Vec<(usize, String)>,
) -> (Fields, Vec<ArrayRef>) {
    let mut new_fields = Vec::with_capacity(fields.len());
    let mut new_columns = Vec::with_capacity(columns.len());
    for (field, column) in fields.iter().zip(columns) {
        let name = match parent {
            "" => field.name().clone(),
            parent => format!("{parent}.{}", field.name()),
        };
        let mut text = |values: &mut dyn Iterator<Item = Option<&[u8]>>| -> Vec<Option<String>> {
            values
                .enumerate()
                .map(|(index, value)| {
                    let value = value?;
                    match std::str::from_utf8(value) {
                        Ok(text) => Some(text.to_owned()),
                        Err(_) => {
                            not_text.push((index, name.clone()));
                            None
                        }
                    }
                })
                .collect()
        };
        let converted: Option<(DataType, ArrayRef)> = match column.data_type() {
            DataType::Binary => {
                let values = text(&mut column.as_binary::<i32>().iter());
                Some((DataType::Utf8, Arc::new(StringArray::from(values))))
            }
            DataType::LargeBinary => {
                let values = text(&mut column.as_binary::<i64>().iter());
                Some((
                    DataType::LargeUtf8,
                    Arc::new(LargeStringArray::from(values)),
                ))
            }
            DataType::BinaryView => {
                let values = text(&mut column.as_binary_view().iter());
                Some((DataType::Utf8View, Arc::new(StringViewArray::from(values))))
            }
            DataType::Struct(_) => {
                let inner = column.as_struct();
                let (inner_fields, inner_columns) =
                    binary_as_text(inner.fields(), inner.columns(), &name, not_text);
                // The struct's own nulls stay; its children only change type.
                StructArray::try_new_with_length(
                    inner_fields.clone(),
                    inner_columns,
                    inner.nulls().cloned(),
                    inner.len(),
                )
                .ok()
                .map(|array| {
                    let array: ArrayRef = Arc::new(array);
                    (DataType::Struct(inner_fields), array)
                })
            }
            _ => None,
        };
        match converted {
            Some((data_type, array)) => {
                // Nullable: a value that is not text is left out, as a null is.
                let field = field.as_ref().clone().with_data_type(data_type);
                new_fields.push(Arc::new(field.with_nullable(true)));
                new_columns.push(array);
            }
            None => {
                new_fields.push(Arc::clone(field));
                new_columns.push(Arc::clone(column));
            }
        }
    }
    (Fields::from(new_fields), new_columns)
}

/// Fails at open time for a column type the JSON encoder rejects (a union, a map with non-string
/// keys), rather than on the first batch after requests have started.
fn check_encodable(path: &Path, field: &FieldRef) -> Result<(), SourceError> {
    let empty = new_empty_array(field.data_type());
    let options = EncoderOptions::default();
    make_encoder(field, &empty, &options)
        .map(drop)
        .map_err(|error| SourceError::ParquetColumnType {
            path: path.to_owned(),
            column: field.name().clone(),
            reason: format!("its type {} is not supported ({error})", field.data_type()),
        })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use arrow_array::builder::{Int32Builder, MapBuilder, StringBuilder};
    use arrow_array::{BinaryArray, Float64Array, LargeBinaryArray};
    use parquet::arrow::ArrowWriter;

    use super::*;

    fn strings(values: &[Option<&str>]) -> ArrayRef {
        Arc::new(StringArray::from(values.to_vec()))
    }

    fn write(dir: &Path, name: &str, columns: Vec<(&str, ArrayRef)>) -> PathBuf {
        let batch = RecordBatch::try_from_iter(columns).expect("columns of equal length");
        let path = dir.join(name);
        let file = File::create(&path).expect("create the test file");
        let mut writer = ArrowWriter::try_new(file, batch.schema(), None).expect("a writer");
        writer.write(&batch).expect("write the batch");
        writer.close().expect("close the writer");
        path
    }

    fn read_all(path: &Path) -> Vec<SourceItem> {
        let file = File::open(path).expect("open the test file");
        let mut rows = ParquetRows::open(path, file).expect("a valid Parquet input");
        let mut parser = RequestParser::new(None).with_text_bodies();
        let mut items = Vec::new();
        while let Some(item) = rows.next_item(&mut parser).expect("reading a local file") {
            items.push(item);
        }
        items
    }

    fn request_body(item: &SourceItem) -> Value {
        match item {
            SourceItem::Request(request) => {
                serde_json::from_slice(&request.body).expect("a request body is JSON")
            }
            SourceItem::Invalid(invalid) => panic!("expected a request, got {invalid:?}"),
        }
    }

    #[test]
    fn string_and_struct_bodies_become_the_same_request() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let text = write(
            dir.path(),
            "text.parquet",
            vec![
                ("custom_id", strings(&[Some("a")])),
                ("method", strings(&[Some("POST")])),
                ("url", strings(&[Some("/api/generate")])),
                (
                    "body",
                    strings(&[Some(
                        r#"{"model":"llama3.2","prompt":"hi","options":{"temperature":0.5}}"#,
                    )]),
                ),
            ],
        );
        let options = StructArray::from(vec![(
            Arc::new(Field::new("temperature", DataType::Float64, true)),
            Arc::new(Float64Array::from(vec![Some(0.5)])) as ArrayRef,
        )]);
        let body = StructArray::from(vec![
            (
                Arc::new(Field::new("model", DataType::Utf8, true)),
                strings(&[Some("llama3.2")]),
            ),
            (
                Arc::new(Field::new("prompt", DataType::Utf8, true)),
                strings(&[Some("hi")]),
            ),
            (
                Arc::new(Field::new("options", options.data_type().clone(), true)),
                Arc::new(options) as ArrayRef,
            ),
        ]);
        let structured = write(
            dir.path(),
            "struct.parquet",
            vec![
                ("url", strings(&[Some("/api/generate")])),
                ("body", Arc::new(body)),
                ("custom_id", strings(&[Some("a")])),
                ("extra", strings(&[Some("not read")])),
                ("method", strings(&[Some("POST")])),
            ],
        );
        let expected = serde_json::json!({
            "model": "llama3.2", "prompt": "hi", "options": {"temperature": 0.5}, "stream": false,
        });
        for path in [text, structured] {
            let items = read_all(&path);
            assert_eq!(items.len(), 1, "{}", path.display());
            assert_eq!(request_body(&items[0]), expected, "{}", path.display());
            let SourceItem::Request(request) = &items[0] else {
                unreachable!("request_body checked the kind");
            };
            assert_eq!(
                (
                    request.line,
                    request.custom_id.as_str(),
                    request.url.as_str()
                ),
                (1, "a", "/api/generate")
            );
            assert_eq!(request.model.as_deref(), Some("llama3.2"));
        }
    }

    #[test]
    fn null_fields_count_as_missing_and_messages_name_the_row() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let body = r#"{"model":"m","prompt":"p"}"#;
        let path = write(
            dir.path(),
            "rows.parquet",
            vec![
                ("custom_id", strings(&[Some("a"), None, Some("c")])),
                ("method", strings(&[Some("POST"); 3])),
                ("url", strings(&[Some("/api/generate"); 3])),
                (
                    "body",
                    strings(&[Some(body), Some(body), Some("{not json")]),
                ),
            ],
        );
        let items = read_all(&path);
        assert_eq!(items.len(), 3);
        assert!(matches!(&items[0], SourceItem::Request(request) if request.line == 1));
        let SourceItem::Invalid(missing_id) = &items[1] else {
            panic!("row 2 has no custom_id: {:?}", items[1]);
        };
        assert_eq!(missing_id.line, 2);
        assert_eq!(missing_id.code, ErrorCode::InvalidRequest);
        assert_eq!(missing_id.message, "row 2: missing custom_id");
        let SourceItem::Invalid(bad_body) = &items[2] else {
            panic!("row 3's body is not JSON: {:?}", items[2]);
        };
        assert_eq!(bad_body.code, ErrorCode::InvalidJson);
        assert_eq!(bad_body.custom_id.as_deref(), Some("c"));
        assert!(
            bad_body
                .message
                .starts_with("row 3: body is text but not valid JSON"),
            "{}",
            bad_body.message
        );
    }

    #[test]
    fn binary_columns_are_read_as_text_and_bytes_that_are_not_utf8_cost_their_row() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let bytes = |values: &[&[u8]]| -> ArrayRef {
            Arc::new(BinaryArray::from_iter_values(values.iter().copied()))
        };
        let body: &[u8] = br#"{"model":"m","prompt":"p"}"#;
        let path = write(
            dir.path(),
            "binary.parquet",
            vec![
                ("custom_id", bytes(&[b"id-0", b"id-\xff", b"id-2"])),
                ("method", strings(&[Some("POST"); 3])),
                ("url", strings(&[Some("/api/generate"); 3])),
                (
                    "body",
                    Arc::new(LargeBinaryArray::from_iter_values([
                        body,
                        body,
                        b"{\"m\xc3",
                    ])),
                ),
            ],
        );
        let items = read_all(&path);
        let SourceItem::Request(first) = &items[0] else {
            panic!("row 1 is text: {:?}", items[0]);
        };
        assert_eq!(first.custom_id, "id-0");
        assert_eq!(request_body(&items[0])["prompt"], "p");
        let invalid = |item: &SourceItem| match item {
            SourceItem::Invalid(invalid) => invalid.clone(),
            SourceItem::Request(request) => panic!("not UTF-8, yet a request: {request:?}"),
        };
        let bad_id = invalid(&items[1]);
        assert_eq!((bad_id.line, bad_id.custom_id), (2, None));
        assert_eq!(
            bad_id.message,
            "row 2: its custom_id column holds bytes that are not UTF-8 text"
        );
        let bad_body = invalid(&items[2]);
        assert_eq!(bad_body.custom_id.as_deref(), Some("id-2"));
        assert_eq!(
            bad_body.message,
            "row 3: its body column holds bytes that are not UTF-8 text"
        );
    }

    #[test]
    fn binary_fields_of_a_struct_body_are_read_as_text() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let prompt: ArrayRef = Arc::new(BinaryArray::from_iter_values([b"hello".as_slice()]));
        let model = strings(&[Some("m")]);
        let body = StructArray::from(vec![
            (Arc::new(Field::new("model", DataType::Utf8, true)), model),
            (
                Arc::new(Field::new("prompt", DataType::Binary, true)),
                prompt,
            ),
        ]);
        let path = write(
            dir.path(),
            "struct.parquet",
            vec![
                ("custom_id", strings(&[Some("a")])),
                ("method", strings(&[Some("POST")])),
                ("url", strings(&[Some("/api/generate")])),
                ("body", Arc::new(body)),
            ],
        );
        let items = read_all(&path);
        assert_eq!(request_body(&items[0])["prompt"], "hello");
    }

    #[test]
    fn rows_are_numbered_across_batches() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let count = BATCH_ROWS * 2 + 7;
        let ids: Vec<String> = (0..count).map(|index| format!("id-{index}")).collect();
        let column = |value: &str| -> ArrayRef { Arc::new(StringArray::from(vec![value; count])) };
        let path = write(
            dir.path(),
            "many.parquet",
            vec![
                ("custom_id", Arc::new(StringArray::from(ids.clone()))),
                ("method", column("POST")),
                ("url", column("/api/generate")),
                ("body", column(r#"{"model":"m","prompt":"p"}"#)),
            ],
        );
        let items = read_all(&path);
        assert_eq!(items.len(), count);
        for (index, item) in items.iter().enumerate() {
            let SourceItem::Request(request) = item else {
                panic!("row {} is valid: {item:?}", index + 1);
            };
            assert_eq!(request.line, index as u64 + 1);
            assert_eq!(request.custom_id, ids[index]);
        }
    }

    #[test]
    fn missing_columns_fail_at_open_naming_them_and_the_file() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = write(
            dir.path(),
            "partial.parquet",
            vec![
                ("custom_id", strings(&[Some("a")])),
                ("body", strings(&[Some("{}")])),
            ],
        );
        let file = File::open(&path).expect("open the test file");
        let error = ParquetRows::open(&path, file)
            .err()
            .expect("columns are missing");
        assert!(
            matches!(&error, SourceError::ParquetColumns { missing, found, .. }
                if missing == "method, url" && found == "custom_id, body"),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
    }

    #[test]
    fn a_file_that_is_not_parquet_fails_at_open() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("fake.parquet");
        std::fs::write(&path, "{\"custom_id\":\"a\"}\n").expect("write the test file");
        let file = File::open(&path).expect("open the test file");
        let error = ParquetRows::open(&path, file).err().expect("not Parquet");
        assert!(
            matches!(error, SourceError::ParquetInput { .. }),
            "{error:?}"
        );
        assert!(
            error.to_string().contains(&path.display().to_string()),
            "{error}"
        );
    }

    #[test]
    fn damaged_data_at_the_start_fails_at_open() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = write(
            dir.path(),
            "damaged.parquet",
            vec![
                ("custom_id", strings(&[Some("a")])),
                ("method", strings(&[Some("POST")])),
                ("url", strings(&[Some("/api/generate")])),
                ("body", strings(&[Some("{}")])),
            ],
        );
        let mut bytes = std::fs::read(&path).expect("read the test file");
        // The first page header follows the leading magic; the footer stays intact.
        bytes[MAGIC.len()..MAGIC.len() + 16].fill(0xFF);
        std::fs::write(&path, bytes).expect("write the test file");
        let file = File::open(&path).expect("open the test file");
        let error = ParquetRows::open(&path, file)
            .err()
            .expect("the first page is damaged");
        assert!(
            matches!(error, SourceError::ParquetInput { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn parquet_is_told_by_name_or_by_magic_bytes() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let check = |path: &Path| {
            let mut file = File::open(path).expect("open the test file");
            let parquet = is_parquet(path, &mut file).expect("a local file");
            let mut start = Vec::new();
            file.read_to_end(&mut start).expect("a local file");
            (parquet, start.starts_with(MAGIC))
        };
        let sniffed = write(
            dir.path(),
            "requests.data",
            vec![("custom_id", strings(&[Some("a")]))],
        );
        assert_eq!(
            check(&sniffed),
            (true, true),
            "and the file is left at its start"
        );
        let named = dir.path().join("Requests.PARQUET");
        std::fs::write(&named, "").expect("write the test file");
        assert_eq!(check(&named), (true, false));
        let jsonl = dir.path().join("requests.jsonl");
        std::fs::write(&jsonl, "{}\n").expect("write the test file");
        assert_eq!(check(&jsonl), (false, false));
    }

    #[test]
    fn a_column_type_that_cannot_become_json_fails_at_open() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut body = MapBuilder::new(None, Int32Builder::new(), StringBuilder::new());
        body.keys().append_value(1);
        body.values().append_value("one");
        body.append(true).expect("keys and values are balanced");
        let path = write(
            dir.path(),
            "map.parquet",
            vec![
                ("custom_id", strings(&[Some("a")])),
                ("method", strings(&[Some("POST")])),
                ("url", strings(&[Some("/api/generate")])),
                ("body", Arc::new(body.finish())),
            ],
        );
        let file = File::open(&path).expect("open the test file");
        let error = ParquetRows::open(&path, file)
            .err()
            .expect("integer map keys have no JSON form");
        assert!(
            matches!(&error, SourceError::ParquetColumnType { column, .. } if column == "body"),
            "{error:?}"
        );
    }
}
