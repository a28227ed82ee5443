//! A finished batch's output and error files: the ok rows and the error rows of its results
//! dataset as OpenAI Batch output lines, both written from the dataset (not from a stream of
//! the run), so that a batch resumed after a crash lists each custom_id exactly once and the
//! files agree with the counts. The error file is rebuilt even though the engine writes one
//! as it runs (`--errors`): a run cut by a kill, whose batch is then closed without running
//! again (a cancelled one), leaves lines there for rows its last checkpoint lacks. Both become
//! stored Files through the store ([`result_files`]). Every line has OpenAI's shape
//! ([`OutputLine`]); a cancelled batch's error file also holds a `batch_cancelled` line for
//! each request it never sent, so that its counts add up to its total (`cancelled.rs`).

mod cancelled;

pub use cancelled::Unsent;

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::Int32Type;
use arrow_array::{Array, StringArray};
use serde_json::value::RawValue;

use super::store::{Store, StoreError};
use super::wire::{LineError, LineResponse, OutputLine, RequestCounts};
use crate::backend::http::random_id;
use crate::sink::checkpoint::{self, ResultsError};
use crate::sink::{dataset, results};
use crate::stats::StatsSnapshot;

/// Why a batch's result files could not be made.
#[derive(Debug, thiserror::Error)]
pub enum FinalizeError {
    #[error(transparent)]
    Results(#[from] ResultsError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Rows of a results dataset, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowCounts {
    pub ok: u64,
    pub errors: u64,
}

impl RowCounts {
    /// Raises `counts`' completed and failed to these rows plus what a run has written since;
    /// never lowers them: a run resumed after a kill sends again what its last checkpoint
    /// lacked, and its counts start below what was shown before.
    pub fn add_run(&self, run: &StatsSnapshot, counts: &mut RequestCounts) {
        counts.completed = counts.completed.max(self.ok + run.succeeded);
        counts.failed = counts.failed.max(self.errors + run.failed + run.invalid);
    }
}

/// Which rows of a results dataset a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    Ok,
    Errors,
}

/// Writes the ok rows of the dataset `results` to `output` (synced); the rows counted, of both
/// kinds. A dataset that was never created holds nothing.
pub fn write_output(results: &Path, output: &Path) -> Result<RowCounts, ResultsError> {
    write_lines(results, output, Rows::Ok)
}

/// Writes the error rows of the dataset `results` to `path` (synced); the error rows counted.
/// Written here rather than by the engine's error-file writer so that both files have the
/// one line shape of [`OutputLine`].
pub fn write_errors(results: &Path, path: &Path) -> Result<RowCounts, ResultsError> {
    write_lines(results, path, Rows::Errors)
}

fn write_lines(results: &Path, path: &Path, rows: Rows) -> Result<RowCounts, ResultsError> {
    let failed = |cause: io::Error| ResultsError::Io {
        path: path.to_owned(),
        cause,
    };
    let mut writer = BufWriter::new(File::create(path).map_err(failed)?);
    let mut counts = RowCounts::default();
    if results.is_dir() {
        for part in dataset::parquet_files(results)? {
            if checkpoint::holds_nothing(&part)? {
                continue;
            }
            write_part(&part, rows, &mut writer, &mut counts).map_err(|error| match error {
                PartError::Results(error) => error,
                PartError::Write(cause) => failed(cause),
            })?;
        }
    }
    let file = writer
        .into_inner()
        .map_err(|error| failed(error.into_error()))?;
    file.sync_all().map_err(failed)?;
    Ok(counts)
}

/// Counts the rows of a dataset without writing anything (for live counts after a resume).
pub fn count_rows(results: &Path) -> Result<RowCounts, ResultsError> {
    let mut counts = RowCounts::default();
    if !results.is_dir() {
        return Ok(counts);
    }
    for part in dataset::parquet_files(results)? {
        if checkpoint::holds_nothing(&part)? {
            continue;
        }
        let existing = checkpoint::inspect(&part)?;
        let statuses = checkpoint::count_statuses(&part, &existing)?;
        counts.ok += statuses.ok;
        counts.errors += statuses.error;
    }
    Ok(counts)
}

/// Reading a part failed, or writing the file it goes to.
enum PartError {
    Results(ResultsError),
    Write(io::Error),
}

impl From<ResultsError> for PartError {
    fn from(error: ResultsError) -> PartError {
        PartError::Results(error)
    }
}

/// Writes the lines of `rows` in one part, counting the rows it reads.
fn write_part(
    part: &Path,
    rows: Rows,
    writer: &mut impl Write,
    counts: &mut RowCounts,
) -> Result<(), PartError> {
    let existing = checkpoint::inspect(part)?;
    let has_raw = existing
        .schema(part)?
        .field_with_name(results::RAW_RESPONSE)
        .is_ok();
    let mut columns = vec!["custom_id", "status_code", "error_code", "error_message"];
    if has_raw {
        columns.push(results::RAW_RESPONSE);
    }
    // The error file passes over row groups without an error row: the ok rows' raw responses
    // are most of a part.
    let groups = (rows == Rows::Errors).then(|| existing.groups_with_errors());
    let unreadable = |cause: String| ResultsError::Io {
        path: part.to_owned(),
        cause: io::Error::other(cause),
    };
    let mut line = Vec::with_capacity(1024);
    for batch in existing.reader_of_groups(part, &columns, groups)? {
        let batch = batch.map_err(|error| unreadable(error.to_string()))?;
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| unreadable(format!("no {name} column")))
        };
        let ids = column("custom_id")?.as_string::<i32>();
        let codes = column("error_code")?.as_string::<i32>();
        let messages = column("error_message")?.as_string::<i32>();
        let statuses = column("status_code")?.as_primitive::<Int32Type>();
        let raw = batch
            .column_by_name(results::RAW_RESPONSE)
            .map(|column| column.as_string::<i32>());
        for row in 0..batch.num_rows() {
            let failed = codes.is_valid(row);
            if failed {
                counts.errors += 1;
            } else {
                counts.ok += 1;
            }
            if failed != (rows == Rows::Errors) {
                continue;
            }
            let status = statuses
                .is_valid(row)
                .then(|| u16::try_from(statuses.value(row)).ok())
                .flatten()
                // An ok row always had an answer; only an old dataset lacks its status.
                .or((!failed).then_some(200));
            let body = status.map(|status| body_object(raw.and_then(|raw| text(raw, row)), status));
            let output = OutputLine {
                id: format!("batch_req_{}", random_id()),
                custom_id: text(ids, row),
                response: status
                    .zip(body.as_deref())
                    .map(|(status_code, body)| LineResponse {
                        status_code,
                        request_id: request_id(body),
                        body,
                    }),
                error: failed.then(|| LineError {
                    code: codes.value(row),
                    message: text(messages, row).unwrap_or_default(),
                }),
            };
            line.clear();
            serde_json::to_writer(&mut line, &output)
                .map_err(|error| unreadable(error.to_string()))?;
            line.push(b'\n');
            writer.write_all(&line).map_err(PartError::Write)?;
        }
    }
    Ok(())
}

fn text(array: &StringArray, row: usize) -> Option<&str> {
    array.is_valid(row).then(|| array.value(row))
}

/// A response body as a JSON object, as OpenAI's lines always have it: the body received
/// when it is one (a reply, or the backend's own error object), else an error object that
/// carries the text received, so that a client parsing `response.body` never meets a bare
/// string.
fn body_object(raw: Option<&str>, status: u16) -> Box<RawValue> {
    if let Some(json) = raw
        .filter(|raw| raw.trim_start().starts_with('{'))
        .and_then(|raw| RawValue::from_string(raw.to_owned()).ok())
    {
        return json;
    }
    let message = match raw {
        Some(text) if !text.trim().is_empty() => text.to_owned(),
        Some(_) => format!("The backend answered HTTP {status} with an empty body."),
        // A dataset written without raw responses (`keep_raw = false`).
        None => format!("The backend answered HTTP {status}; its body was not kept."),
    };
    let object = serde_json::json!({
        "error": {"message": message, "type": "backend_error", "param": null, "code": null}
    });
    serde_json::value::to_raw_value(&object).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

/// The backend's id for the response (`chatcmpl-…`) when its body has one, else a new
/// `req_…`: OpenAI's lines always carry one, and clients key logs on it.
fn request_id(body: &RawValue) -> String {
    #[derive(serde::Deserialize)]
    struct WithId {
        id: Option<serde_json::Value>,
    }
    serde_json::from_str::<WithId>(body.get())
        .ok()
        .and_then(|with| with.id)
        .and_then(|id| id.as_str().filter(|id| !id.is_empty()).map(str::to_owned))
        .unwrap_or_else(|| format!("req_{}", random_id()))
}

/// The batch's output file (its ok rows) and error file as stored Files, `None` where a file
/// would be empty; and the rows counted.
pub fn result_files(
    store: &Store,
    id: &str,
    unsent: Option<Unsent>,
) -> Result<(Option<String>, Option<String>, RowCounts), FinalizeError> {
    let dir = store.batch_dir(id)?;
    let ids = store.result_file_ids(id)?;
    let output = dir.join("output.jsonl");
    let mut counts = write_output(&dir.join("results"), &output)?;
    let output_id = if store.file(&ids.output)?.is_some() {
        Some(ids.output)
    } else if counts.ok > 0 {
        let name = format!("{id}_output.jsonl");
        Some(
            store
                .adopt_file(&ids.output, &output, &name, "batch_output")?
                .id,
        )
    } else {
        None
    };
    let errors = dir.join("errors.jsonl");
    write_errors(&dir.join("results"), &errors)?;
    // A cancelled or expired batch accounts for every request: those it never sent are
    // failed too, so that completed + failed is the total, as OpenAI's batches report.
    if let Some(why) = unsent {
        let input = store
            .batch(id)?
            .and_then(|batch| store.content_path(&batch.input_file_id));
        if let Some(input) = input {
            counts.errors += cancelled::write_unsent(&input, &dir.join("results"), &errors, why)?;
        }
    }
    let error_bytes = std::fs::metadata(&errors).map_or(0, |metadata| metadata.len());
    let errors_id = if store.file(&ids.error)?.is_some() {
        Some(ids.error)
    } else if error_bytes > 0 {
        let name = format!("{id}_error.jsonl");
        Some(
            store
                .adopt_file(&ids.error, &errors, &name, "batch_output")?
                .id,
        )
    } else {
        None
    };
    // What was not adopted (an empty file, or one made again after a crash) is not kept.
    for leftover in [output, errors] {
        if leftover.exists() {
            std::fs::remove_file(&leftover).map_err(|cause| StoreError::Io {
                path: leftover.clone(),
                cause,
            })?;
        }
    }
    Ok((output_id, errors_id, counts))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use serde_json::{Value, json};

    use super::*;
    use crate::item::{ErrorCode, HttpReply, Outcome, OutcomeError, ReplyBody};
    use crate::reply::ReplyFields;
    use crate::sink::results::{ExtraColumns, RowBuilder};

    /// An outcome for `custom_id`: answered `reply` (status, body), failed with `error`.
    fn outcome(custom_id: &str, reply: Option<(u16, &str)>, error: Option<ErrorCode>) -> Outcome {
        Outcome {
            line: 1,
            custom_id: Some(custom_id.to_owned()),
            model: None,
            reply: reply.map(|(status, body)| HttpReply {
                status,
                request_id: String::new(),
                body: match RawValue::from_string(body.to_owned()) {
                    Ok(json) => ReplyBody::Json(json),
                    Err(_) => ReplyBody::Text(body.to_owned()),
                },
            }),
            error: error.map(|code| OutcomeError {
                code,
                message: "failed".into(),
            }),
            attempts: 1,
            latency: Duration::ZERO,
            finished_at: SystemTime::now(),
            passthrough: Vec::new(),
        }
    }

    /// A results dataset of one part: `ok` rows that succeeded, then `failed` that did not.
    fn dataset(results: &Path, ok: u64, failed: u64) {
        let outcomes: Vec<Outcome> = (0..ok + failed)
            .map(|line| {
                let error = (line >= ok).then_some(ErrorCode::InternalError);
                outcome(&format!("req-{line}"), None, error)
            })
            .collect();
        write_dataset(results, &outcomes, false);
    }

    /// A results dataset of one part holding `outcomes`, with their raw responses if `raw`.
    fn write_dataset(results: &Path, outcomes: &[Outcome], raw: bool) {
        let extras = ExtraColumns::default();
        let mut rows = RowBuilder::new(results::schema(raw, &extras), &extras);
        for outcome in outcomes {
            rows.push(outcome, &ReplyFields::default());
        }
        let batch = rows.finish().expect("rows");
        std::fs::create_dir_all(results).expect("a results folder");
        let file = File::create(results.join("part-0.parquet")).expect("a part");
        // As the engine's checkpoint writer sets it: no page index after the row groups.
        let properties = parquet::file::properties::WriterProperties::builder()
            .set_statistics_enabled(parquet::file::properties::EnabledStatistics::Chunk)
            .set_offset_index_disabled(true)
            .build();
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(properties))
                .expect("a writer");
        writer.write(&batch).expect("written");
        writer.close().expect("closed");
    }

    #[test]
    fn the_error_file_holds_the_error_rows_whatever_the_run_left_there() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::open(dir.path()).expect("opens");
        let id = store
            .new_id(crate::serve::store::BATCH_PREFIX)
            .expect("an id");
        let batch_dir = store.batch_dir(&id).expect("its folder");
        dataset(&batch_dir.join("results"), 3, 2);
        // A killed run's error file: a line for a row its last checkpoint lacks.
        let errors = batch_dir.join("errors.jsonl");
        std::fs::write(&errors, "{\"custom_id\": \"lost\"}\n").expect("written");
        let (output, error_file, counts) = result_files(&store, &id, None).expect("finalized");
        assert_eq!(counts, RowCounts { ok: 3, errors: 2 });
        assert!(output.is_some());
        let error_file = error_file.expect("an error file");
        let path = store.content_path(&error_file).expect("stored");
        let text = std::fs::read_to_string(path).expect("readable");
        let ids: Vec<String> = text
            .lines()
            .map(|line| {
                let line: Value = serde_json::from_str(line).expect("a JSON line");
                line["custom_id"].as_str().unwrap_or_default().to_owned()
            })
            .collect();
        assert_eq!(ids, ["req-3", "req-4"], "{text}");

        // Finalizing again after a crash makes no second pair of files.
        let again = result_files(&store, &id, None).expect("finalized");
        assert_eq!((again.0, again.1), (output, Some(error_file)));
        let listed = store
            .files(None, crate::serve::wire::Order::Desc, None, 10)
            .expect("listed")
            .expect("no cursor to miss");
        assert_eq!(listed.data.len(), 2);
        assert!(!errors.exists());
    }

    #[test]
    fn a_batch_broken_mid_run_keeps_what_ran_and_fails_each_line_it_never_sent() {
        use crate::serve::store::{StoredBatch, StoredFile};
        use crate::serve::wire::{Batch, BatchStatus, FileObject, RequestCounts};
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::open(dir.path()).expect("opens");
        let (input, staged) = store.staging().expect("staged");
        let lines: String = (0..5)
            .map(|line| format!("{{\"custom_id\": \"req-{line}\"}}\n"))
            .collect();
        std::fs::write(&staged, lines).expect("written");
        let file = FileObject {
            id: input.clone(),
            object: "file".into(),
            bytes: 0,
            created_at: 0,
            filename: "in.jsonl".into(),
            purpose: "batch".into(),
            status: "processed".into(),
        };
        let order = store.next_order();
        store
            .commit_file(&StoredFile { file, order })
            .expect("stored");
        let id = store
            .new_id(crate::serve::store::BATCH_PREFIX)
            .expect("an id");
        let batch: Batch = serde_json::from_value(json!({
            "id": id, "object": "batch", "endpoint": "/v1/chat/completions", "errors": null,
            "input_file_id": input, "completion_window": "24h", "status": "in_progress",
            "output_file_id": null, "error_file_id": null, "created_at": 0,
            "in_progress_at": null, "expires_at": null, "finalizing_at": null,
            "completed_at": null, "failed_at": null, "expired_at": null, "cancelling_at": null,
            "cancelled_at": null, "request_counts": RequestCounts::default(), "metadata": null,
        }))
        .expect("a batch");
        assert_eq!(batch.status, BatchStatus::InProgress);
        let order = store.next_order();
        assert!(
            store
                .create_batch(&StoredBatch { batch, order })
                .expect("stored")
        );
        dataset(
            &store.batch_dir(&id).expect("its folder").join("results"),
            2,
            1,
        );

        let (output, error_file, counts) =
            result_files(&store, &id, Some(Unsent::Failed)).expect("finalized");
        assert_eq!(counts, RowCounts { ok: 2, errors: 3 });
        assert!(output.is_some());
        let path = store
            .content_path(&error_file.expect("an error file"))
            .expect("stored");
        let text = std::fs::read_to_string(path).expect("readable");
        let codes: Vec<(String, String)> = text
            .lines()
            .map(|line| {
                let line: Value = serde_json::from_str(line).expect("a JSON line");
                let custom_id = line["custom_id"].as_str().unwrap_or_default().to_owned();
                let code = line["error"]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                (custom_id, code)
            })
            .collect();
        assert_eq!(codes[0].0, "req-2");
        assert_eq!(
            codes[1..],
            [
                ("req-3".to_owned(), "batch_failed".to_owned()),
                ("req-4".to_owned(), "batch_failed".to_owned())
            ],
            "{text}"
        );
    }

    #[test]
    fn every_line_has_openai_shape_whatever_the_backend_answered() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let results = dir.path().join("results");
        let reply = r#"{"id":"chatcmpl-7","object":"chat.completion","choices":[]}"#;
        let outcomes = [
            outcome("ok", Some((200, reply)), None),
            outcome("ok-no-id", Some((200, r#"{"message":{}}"#)), None),
            outcome(
                "refused",
                Some((400, r#"{"error":"bad request"}"#)),
                Some(ErrorCode::ClientError),
            ),
            outcome("gateway", Some((502, "")), Some(ErrorCode::ServerError)),
            outcome(
                "html",
                Some((503, "<html>busy</html>")),
                Some(ErrorCode::ServerError),
            ),
            outcome("unreached", None, Some(ErrorCode::RequestTimeout)),
        ];
        write_dataset(&results, &outcomes, true);
        let read = |path: &Path| -> Vec<Value> {
            let text = std::fs::read_to_string(path).expect("written");
            text.lines()
                .map(|line| serde_json::from_str(line).expect("a JSON line"))
                .collect()
        };
        let (output, errors) = (dir.path().join("output"), dir.path().join("errors"));
        let counts = write_output(&results, &output).expect("written");
        assert_eq!(counts, RowCounts { ok: 2, errors: 4 });
        assert_eq!(write_errors(&results, &errors).expect("written").errors, 4);
        let (output, errors) = (read(&output), read(&errors));
        let mut line_ids: Vec<&str> = output
            .iter()
            .chain(&errors)
            .filter_map(|line| line["id"].as_str())
            .collect();
        assert!(line_ids.iter().all(|id| id.starts_with("batch_req_")));
        line_ids.sort_unstable();
        line_ids.dedup();
        assert_eq!(line_ids.len(), 6, "each line its own id");
        assert_eq!(output[0]["response"]["request_id"], "chatcmpl-7");
        assert_eq!(output[0]["response"]["body"]["object"], "chat.completion");
        let made_up = output[1]["response"]["request_id"].as_str().expect("an id");
        assert!(
            made_up.starts_with("req_") && made_up.len() > 4,
            "{made_up}"
        );
        assert!(output.iter().all(|line| line["error"].is_null()));
        for line in &errors {
            assert!(
                line["error"]["code"].is_string() && line["error"]["message"].is_string(),
                "{line}"
            );
            let response = &line["response"];
            if line["custom_id"] == "unreached" {
                assert!(response.is_null(), "{line}");
                continue;
            }
            assert!(response["body"].is_object(), "{line}");
            assert!(
                response["request_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("req_")),
                "{line}"
            );
        }
        assert_eq!(
            errors[0]["response"]["body"],
            json!({"error": "bad request"})
        );
        assert_eq!(errors[0]["response"]["status_code"], 400);
        let message = |line: &Value| {
            line["response"]["body"]["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        assert!(message(&errors[1]).contains("502"), "{}", errors[1]);
        assert_eq!(message(&errors[2]), "<html>busy</html>");
    }
}
