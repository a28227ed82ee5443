//! Pipelines of stages: a file's `[[stage]]` tables checked and split into one-request
//! pipeline files, each of which resolves, runs and resumes as any pipeline does. The first
//! stage reads the file's `[source]`; a later one reads the rows of an earlier stage that pass
//! its `where` filter, as records keyed by their custom_id.
//!
//! A record handed to a later stage holds the earlier stage's columns twice, as `reason` and
//! as `screen.reason` (`screen.content` is the reply's text), beside the columns that stage
//! carried. Each stage carries, as passthrough columns, what the stages after it read from
//! the source or from stages before it: a template can name `{{bio}}` three stages on without
//! anyone listing it. What is available where is checked against the source's columns in
//! `validate`; here, only what needs no I/O.

use std::collections::BTreeSet;
use std::path::Path;

use super::{PipelineFile, RequestSection, SourceFormat, SourceSection};
use crate::filter::Filter;
use crate::source::template::Template;

/// The column every stage's rows are keyed by, and a later stage's records too.
pub const KEY_COLUMN: &str = "custom_id";

/// One stage, ready to be resolved as a pipeline of its own.
#[derive(Debug, Clone)]
pub struct StagePlan {
    pub name: String,
    /// The stage whose rows this one reads (its index in the plan), and which of them.
    pub from: Option<(usize, Option<Filter>)>,
    /// The stage as a one-request pipeline file: `[source]` is the file's for the first stage
    /// and, for a later one, stands for the earlier stage's rows (its path is never read).
    pub file: PipelineFile,
    /// The columns its rows add that later stages can read: its output fields, unprefixed.
    pub output_fields: Vec<String>,
}

impl StagePlan {
    /// What a later stage finds in a record made from this stage's row, beside what it
    /// carried: each output field under its own name and under `stage.field`, and the reply's
    /// text as `stage.content`.
    pub fn produced(&self) -> Vec<String> {
        let mut names = self.output_fields.clone();
        names.extend(
            self.output_fields
                .iter()
                .map(|field| format!("{}.{field}", self.name)),
        );
        names.push(format!("{}.content", self.name));
        names
    }

    /// The columns of the earlier stage's rows or the source that this stage reads: its
    /// template's and its filter's.
    pub fn reads(&self) -> Vec<String> {
        self.reads_by_key()
            .into_iter()
            .flat_map(|(_, names)| names)
            .collect()
    }

    /// [`StagePlan::reads`] by the key that names them, `prompt` or `where`, for messages.
    pub fn reads_by_key(&self) -> [(&'static str, Vec<String>); 2] {
        let prompt = self
            .file
            .request
            .prompt
            .as_deref()
            .and_then(|prompt| Template::parse(prompt).ok())
            .map(|template| template.columns().map(str::to_owned).collect())
            .unwrap_or_default();
        let filter = match &self.from {
            Some((_, Some(filter))) => filter.columns().into_iter().map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        [("prompt", prompt), ("where", filter)]
    }
}

/// What a later stage reads, as its results' fingerprint records it and `status` shows it:
/// `screen`, or `screen where fit != 'weak'`.
pub fn upstream(from: &str, filter: Option<&Filter>) -> String {
    match filter {
        Some(filter) => format!("{from} where {}", filter.text()),
        None => from.to_owned(),
    }
}

/// Whether a folder path names a dataset per stage (`results/`) rather than a file per stage.
fn names_datasets(sink: &str) -> bool {
    sink.ends_with('/')
}

/// Where a stage's results go, under the folder the file's `sink.parquet` names.
pub fn stage_results(folder: &str, stage: &str) -> String {
    if names_datasets(folder) {
        format!("{folder}{stage}/")
    } else {
        format!("{}/{stage}.parquet", folder.trim_end_matches('/'))
    }
}

/// A side file of one stage (`--stats`, `--errors`): the stage's name before the extension,
/// `stats.json` becoming `stats.screen.json`.
pub fn stage_side_file(path: &Path, stage: &str) -> std::path::PathBuf {
    let stem = path
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(extension) => format!("{stem}.{stage}.{}", extension.to_string_lossy()),
        None => format!("{stem}.{stage}"),
    };
    path.with_file_name(name)
}

/// Splits a file with `[[stage]]` tables into its stages, or `None` for a file without any.
/// Every problem found is listed, each naming its stage.
pub fn split(file: &PipelineFile) -> Option<Result<Vec<StagePlan>, Vec<String>>> {
    if file.stages.is_empty() {
        return None;
    }
    let mut problems = Vec::new();
    if file.request.is_written() {
        problems.push(
            "[request] and [[stage]] cannot both be given: put the request in the first stage"
                .into(),
        );
    }
    if file.source.format == SourceFormat::Requests {
        problems.push(
            "source.format: stages read records (format = \"records\"), not request lines".into(),
        );
    }
    let folder = match file.sink.parquet.as_deref() {
        None => {
            problems.push("sink.parquet is required with stages: the folder that holds each stage's results (each stage reads the rows an earlier one checkpointed there)".into());
            String::new()
        }
        Some(path) if path.to_ascii_lowercase().ends_with(".parquet") => {
            problems.push(format!("sink.parquet: {path:?} names a file; with stages it names the folder of each stage's results (for example \"results\", giving results/<stage>.parquet)"));
            String::new()
        }
        Some(path) => path.to_owned(),
    };
    if file.sink.jsonl.is_some() {
        problems.push("sink.jsonl: stages write Parquet results (one file per stage under sink.parquet); read them with DuckDB or export them from there".into());
    }
    let mut plans: Vec<StagePlan> = Vec::new();
    for (index, stage) in file.stages.iter().enumerate() {
        let name = stage.name.as_str();
        let label = format!("stage {name:?}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            problems.push(format!(
                "stage {}: name {name:?} must be letters, digits, _ or - (it names the stage's results file)",
                index + 1
            ));
        } else if plans.iter().any(|plan| plan.name == name) {
            problems.push(format!("{label}: two stages have this name"));
        }
        let from = match (index, stage.from.as_deref()) {
            (0, None) => None,
            (0, Some(from)) => {
                problems.push(format!(
                    "{label}: from = {from:?}, but the first stage reads [source]"
                ));
                None
            }
            (_, None) => {
                problems.push(format!(
                    "{label}: from is required (the earlier stage whose rows it reads)"
                ));
                None
            }
            (_, Some(from)) => match plans.iter().position(|plan| plan.name == from) {
                Some(position) => Some(position),
                None => {
                    problems.push(format!(
                        "{label}: from = {from:?} is not an earlier stage (stages: {})",
                        plans
                            .iter()
                            .map(|plan| plan.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    None
                }
            },
        };
        let filter = match (&stage.filter, index) {
            (None, _) => None,
            (Some(_), 0) => {
                problems.push(format!(
                    "{label}: where filters an earlier stage's rows; the first stage reads every record"
                ));
                None
            }
            (Some(text), _) => match Filter::parse(text) {
                Ok(filter) => Some(filter),
                Err(error) => {
                    problems.push(format!("{label}: where: {error}"));
                    None
                }
            },
        };
        let request: RequestSection = stage.request();
        let output_fields = request
            .output
            .as_ref()
            .and_then(|output| output.schema.get("properties"))
            .and_then(|properties| properties.as_object())
            .map(|properties| properties.keys().cloned().collect())
            .unwrap_or_default();
        let source = match index {
            0 => file.source.clone(),
            _ => SourceSection {
                path: "-".into(),
                format: SourceFormat::Records,
                id_column: Some(KEY_COLUMN.into()),
                passthrough: Vec::new(),
            },
        };
        let mut sink = file.sink.clone();
        sink.parquet = Some(stage_results(&folder, name));
        sink.stats = file.sink.stats.as_deref().map(|path| {
            stage_side_file(Path::new(path), name)
                .to_string_lossy()
                .into_owned()
        });
        sink.errors = file.sink.errors.as_deref().map(|path| {
            stage_side_file(Path::new(path), name)
                .to_string_lossy()
                .into_owned()
        });
        plans.push(StagePlan {
            name: name.to_owned(),
            from: from.map(|position| (position, filter)),
            file: PipelineFile {
                source,
                request,
                backend: file.backend.clone(),
                sink,
                stages: Vec::new(),
            },
            output_fields,
        });
    }
    if !problems.is_empty() {
        return Some(Err(problems));
    }
    carry_columns(&mut plans, &file.source.passthrough);
    Some(Ok(plans))
}

/// Sets each stage's passthrough columns: the source's own list, and whatever the stages after
/// it read that it does not make itself. Stages come after those they read, so one pass from
/// the last stage back settles every stage.
fn carry_columns(plans: &mut [StagePlan], listed: &[String]) {
    let mut carried: Vec<BTreeSet<String>> = vec![BTreeSet::new(); plans.len()];
    for index in (0..plans.len()).rev() {
        let plan = &plans[index];
        if let Some((from, _)) = plan.from {
            let produced: BTreeSet<String> = plans[from].produced().into_iter().collect();
            let needed: Vec<String> = plan
                .reads()
                .into_iter()
                .chain(carried[index].iter().cloned())
                .filter(|name| name != KEY_COLUMN && !produced.contains(name))
                .collect();
            carried[from].extend(needed);
        }
    }
    for (plan, carried) in plans.iter_mut().zip(carried) {
        let mut passthrough = listed.to_vec();
        passthrough.extend(carried.into_iter().filter(|name| !listed.contains(name)));
        plan.file.source.passthrough = passthrough;
    }
}
