//! The checks of a pipeline of stages: each stage checked as the pipeline it becomes, and what
//! each later stage reads (its template's and its filter's columns) looked up among what it
//! can have: the source's columns and the columns of the stages before it. A problem names
//! its stage. The dry run of a later stage, which has no rows to read yet, shapes a record
//! whose every column holds its own name.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{Map, Value};

use std::fmt::Write as _;

use super::{
    SourceColumns, check_backends, check_columns, describe_columns, extra_columns, source_columns,
};
use crate::config::stages::{KEY_COLUMN, StagePlan};
use crate::config::{self, Pipeline, PipelineFile};
use crate::error::Error;
use crate::handoff::Handoff;
use crate::options::RunOptions;
use crate::schema::ColumnType;
use crate::sink::results::ExtraColumns;

/// One stage checked: its plan, the pipeline it resolves to, and its results columns.
#[derive(Debug, Clone)]
pub struct CheckedStage {
    pub plan: StagePlan,
    pub pipeline: Pipeline,
    pub extras: ExtraColumns,
}

impl CheckedStage {
    /// How this stage's rows become the records of the stages that read it.
    pub fn handoff(&self) -> Handoff {
        Handoff {
            stage: self.plan.name.clone(),
            carried: self
                .extras
                .passthrough
                .iter()
                .map(|(name, _)| name.clone())
                .collect(),
            output_fields: self.plan.output_fields.clone(),
        }
    }
}

/// Checks a file's stages, or `None` for a file without `[[stage]]`. Every problem is listed.
pub fn check_stages(
    file: &PipelineFile,
    folder: &Path,
) -> Option<Result<Vec<CheckedStage>, Vec<String>>> {
    let plans = match config::stages::split(file)? {
        Ok(plans) => plans,
        Err(problems) => return Some(Err(problems)),
    };
    Some(check_plans(plans, folder))
}

fn check_plans(mut plans: Vec<StagePlan>, folder: &Path) -> Result<Vec<CheckedStage>, Vec<String>> {
    let mut pipelines = resolve_all(&plans, folder)?;
    let source = source_columns(&pipelines[0]).map_err(|problem| vec![problem])?;
    let mut problems = Vec::new();
    for index in 1..plans.len() {
        problems.extend(unknown_reads(&plans, index, source.as_ref()));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    if let Some(source) = &source {
        carry_everything(&mut plans, source);
        pipelines = resolve_all(&plans, folder)?;
        problems.extend(
            check_columns(&pipelines[0], source)
                .into_iter()
                .map(|problem| format!("stage {:?}: {problem}", plans[0].name)),
        );
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut checked: Vec<CheckedStage> = Vec::with_capacity(plans.len());
    for (plan, pipeline) in plans.into_iter().zip(pipelines) {
        let extras = match plan.from {
            None => extra_columns(&pipeline, source.as_ref()),
            Some((from, _)) => {
                let columns = stage_columns(&checked[from]);
                extra_columns(&pipeline, Some(&columns))
            }
        };
        checked.push(CheckedStage {
            plan,
            pipeline,
            extras,
        });
    }
    Ok(checked)
}

fn resolve_all(plans: &[StagePlan], folder: &Path) -> Result<Vec<Pipeline>, Vec<String>> {
    let mut problems = Vec::new();
    let mut pipelines = Vec::with_capacity(plans.len());
    for plan in plans {
        match config::resolve(&plan.file, folder) {
            Ok(pipeline) => pipelines.push(pipeline),
            Err(found) => problems.extend(
                found
                    .into_iter()
                    .map(|problem| format!("stage {:?}: {problem}", plan.name)),
            ),
        }
    }
    match problems.is_empty() {
        true => Ok(pipelines),
        false => Err(problems),
    }
}

/// A stage that others read carries every column of the records it reads (those a results
/// table can hold beside its own), not only those the stages after it name today: then what
/// a stage's rows hold depends on it and the stages before it alone, and a later stage can
/// change, naming other columns, without the rows of those before it being made again.
fn carry_everything(plans: &mut [StagePlan], source: &SourceColumns) {
    let fixed = crate::sink::results::fixed_column_names();
    let read: Vec<bool> = (0..plans.len())
        .map(|index| {
            plans
                .iter()
                .any(|plan| plan.from.as_ref().is_some_and(|(from, _)| *from == index))
        })
        .collect();
    for index in 0..plans.len() {
        if !read[index] {
            continue;
        }
        let mut columns: Vec<String> = match &plans[index].from {
            None => source.types.keys().cloned().collect(),
            Some((from, _)) => {
                let upstream = &plans[*from];
                let mut columns = upstream.file.source.passthrough.clone();
                columns.extend(upstream.produced());
                columns
            }
        };
        columns.sort();
        let plan = &mut plans[index];
        columns.retain(|name| {
            name != KEY_COLUMN
                && !fixed.contains(name)
                && !plan.output_fields.contains(name)
                && !plan.file.source.passthrough.contains(name)
        });
        plan.file.source.passthrough.extend(columns);
    }
}

/// The columns of the records a stage hands on, with their types: its custom_id, what it
/// carried, and its output fields under both names, and its reply's text.
fn stage_columns(stage: &CheckedStage) -> SourceColumns {
    let mut types = std::collections::HashMap::new();
    types.insert(KEY_COLUMN.to_owned(), ColumnType::String);
    for (name, kind) in &stage.extras.passthrough {
        types.insert(name.clone(), kind.clone());
    }
    for field in &stage.extras.output {
        types.insert(field.name.clone(), field.kind.clone());
        types.insert(
            format!("{}.{}", stage.plan.name, field.name),
            field.kind.clone(),
        );
    }
    types.insert(format!("{}.content", stage.plan.name), ColumnType::String);
    SourceColumns {
        types,
        origin: format!("the rows of stage {:?}", stage.plan.name),
    }
}

/// The columns a later stage reads that neither the source nor a stage before it has.
fn unknown_reads(plans: &[StagePlan], index: usize, source: Option<&SourceColumns>) -> Vec<String> {
    let plan = &plans[index];
    let mut available: BTreeSet<String> = BTreeSet::new();
    available.insert(KEY_COLUMN.to_owned());
    let mut stage_names = Vec::new();
    let mut ancestor = plan.from.as_ref().map(|(from, _)| *from);
    while let Some(at) = ancestor {
        available.extend(plans[at].produced());
        stage_names.push(format!("stage {:?}", plans[at].name));
        ancestor = plans[at].from.as_ref().map(|(from, _)| *from);
    }
    // Without the source's columns (stdin), what is not made by a stage is taken on trust.
    let Some(source) = source else {
        return Vec::new();
    };
    available.extend(source.types.keys().cloned());
    let from_stages = stage_names.join(" or ");
    let mut problems = Vec::new();
    for (key, columns) in plan.reads_by_key() {
        for column in columns {
            if !available.contains(&column) {
                problems.push(format!(
                    "stage {:?}: {key}: column {column:?} is in neither {} nor {from_stages} (they have: {})",
                    plan.name,
                    source.origin,
                    available.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    problems
}

/// `batchflow validate` of a pipeline of stages: each stage's checks, and its backend and
/// model unless `offline`; a summary of the stages and their columns when valid.
pub async fn validate_stages(
    file: &Path,
    checked: Result<Vec<CheckedStage>, Vec<String>>,
    offline: bool,
    flags: impl Fn(&mut RunOptions),
    env: impl Fn(&str) -> Option<String> + Copy,
) -> Result<Result<String, Vec<String>>, Error> {
    let checked = match checked {
        Ok(checked) => checked,
        Err(problems) => return Ok(Err(problems)),
    };
    if !offline && !checked.iter().any(|stage| stage.pipeline.backend.mock) {
        let mut problems = Vec::new();
        for stage in &checked {
            let mut options = RunOptions::default();
            stage.pipeline.apply(&mut options);
            options.extras = stage.extras.clone();
            flags(&mut options);
            problems.extend(
                check_backends(options, env)
                    .await
                    .into_iter()
                    .map(|problem| format!("stage {:?}: {problem}", stage.plan.name)),
            );
        }
        if !problems.is_empty() {
            return Ok(Err(problems));
        }
    }
    let source = checked
        .first()
        .and_then(|stage| stage.pipeline.input.as_ref())
        .map_or("stdin".to_owned(), |path| path.display().to_string());
    let mut summary = format!(
        "{} is valid: {} stages over {source}\n",
        file.display(),
        checked.len()
    );
    for stage in &checked {
        let reads = match &stage.plan.from {
            None => source.clone(),
            Some((from, filter)) => format!(
                "the rows of {}",
                crate::config::stages::upstream(&checked[*from].plan.name, filter.as_ref())
            ),
        };
        let results = stage
            .pipeline
            .parquet
            .as_ref()
            .map_or(String::new(), |path| path.display().to_string());
        let _ = writeln!(summary, "Stage {}: {reads} -> {results}", stage.plan.name);
        let added = describe_columns(&stage.extras);
        if !added.is_empty() {
            let _ = writeln!(summary, "{added}");
        }
    }
    Ok(Ok(summary))
}

/// A record standing for a row a later stage will read, each column holding its own name in
/// angle brackets: what a dry run shapes, since no row exists before the run.
pub fn placeholder_record(stage: &CheckedStage, from: &CheckedStage) -> Map<String, Value> {
    let columns = stage_columns(from);
    let mut names: Vec<&String> = columns.types.keys().collect();
    names.sort();
    names
        .into_iter()
        .map(|name| (name.clone(), Value::String(format!("<{name}>"))))
        .filter(|(name, _)| {
            name == KEY_COLUMN
                || stage.pipeline.shape.as_ref().is_some_and(|shape| {
                    shape.required_columns().contains(&name.as_str())
                        || shape.passthrough.contains(name)
                })
        })
        .collect()
}
