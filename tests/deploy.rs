//! The files in `deploy/` (a Kubernetes Indexed Job, a Slurm array, their verify steps) use
//! the real command line: every flag given to `batchflow`, or to one of its subcommands, in any
//! of them (commands and comments alike) appears in that command's `--help`, so the files
//! cannot drift from the CLI. The Job's shard count is checked to agree with itself. The Grafana
//! dashboard queries only series that `/metrics` exposes (the families of
//! `tests/fixtures/metrics-families.txt`, which the exposition and a live run are checked
//! against), grouped by labels those series have, through its data source variable.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::{batchflow, metric_families};

/// Every file under `deploy/`.
fn deploy_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).expect("list deploy/") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                walk(&path, files);
            } else {
                files.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy"),
        &mut files,
    );
    files.sort();
    files
}

/// `batchflow [SUBCOMMAND] --help`.
fn help(subcommand: Option<&str>) -> String {
    let output = batchflow()
        .args(subcommand)
        .arg("--help")
        .output()
        .expect("the binary runs");
    assert!(output.status.success(), "--help of {subcommand:?}");
    String::from_utf8(output.stdout).expect("UTF-8 help")
}

/// The flags a help text lists: `--long` and `-s` at the start of an option line.
fn listed_flags(help: &str) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    for line in help.lines().map(str::trim_start) {
        if !line.starts_with('-') {
            continue;
        }
        for word in line.split(|c: char| c.is_whitespace() || c == ',') {
            let flag: String = word
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if flag.starts_with('-') && flag.len() > 1 {
                flags.insert(flag);
            } else if !word.is_empty() && !word.starts_with('-') {
                break;
            }
        }
    }
    flags
}

/// The subcommands `batchflow --help` lists.
fn subcommands(help: &str) -> BTreeSet<String> {
    help.lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter(|line| line.starts_with("  ") && !line.starts_with("   "))
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// One use of the binary in a deploy file.
#[derive(Debug)]
struct Invocation {
    file: String,
    subcommand: Option<String>,
    flags: Vec<String>,
}

/// A word without the quotes, backticks and punctuation around it in a script or a document.
fn bare(word: &str) -> &str {
    word.trim_matches(|c: char| matches!(c, '"' | '\'' | '`' | '(' | ')' | ';' | ','))
}

/// Every `batchflow …` in `text`, a shell line continued by `\` read as one line; a command
/// ends at the end of its line, a shell operator, or a closing backtick.
fn invocations(file: &str, text: &str, subcommands: &BTreeSet<String>) -> Vec<Invocation> {
    let joined = text.replace("\\\n", " ");
    let mut found = Vec::new();
    for line in joined.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        for (at, word) in words.iter().enumerate() {
            if bare(word) != "batchflow" || word.ends_with('`') {
                continue;
            }
            let mut rest = words[at + 1..].iter().copied().peekable();
            let subcommand = rest
                .peek()
                .map(|next| bare(next).to_owned())
                .filter(|next| subcommands.contains(next));
            if subcommand.is_some() {
                rest.next();
            }
            let mut flags = Vec::new();
            for word in rest {
                if matches!(word, ";" | "|" | "||" | "&&" | "#" | ")") {
                    break;
                }
                let flag = bare(word).split('=').next().unwrap_or_default();
                let is_flag = flag.starts_with('-') && flag.len() > 1 && flag != "--";
                if is_flag
                    && flag
                        .chars()
                        .nth(1)
                        .is_some_and(|c| c == '-' || c.is_ascii_alphabetic())
                {
                    flags.push(flag.to_owned());
                }
                if word.ends_with('`') || word.ends_with(';') {
                    break;
                }
            }
            found.push(Invocation {
                file: file.to_owned(),
                subcommand,
                flags,
            });
        }
    }
    found
}

#[test]
fn every_flag_in_the_deploy_files_is_one_the_binary_has() {
    let main_help = help(None);
    let subcommands = subcommands(&main_help);
    assert!(subcommands.contains("verify"), "{subcommands:?}");
    let mut known: BTreeMap<Option<String>, BTreeSet<String>> = BTreeMap::new();
    let mut all = Vec::new();
    for path in deploy_files() {
        let text = fs::read_to_string(&path).expect("a text file");
        let name = path
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap_or(&path)
            .display()
            .to_string();
        all.extend(invocations(&name, &text, &subcommands));
    }
    let mut unknown = Vec::new();
    for invocation in &all {
        let flags = known
            .entry(invocation.subcommand.clone())
            .or_insert_with(|| listed_flags(&help(invocation.subcommand.as_deref())));
        for flag in &invocation.flags {
            if !flags.contains(flag) {
                let command = match &invocation.subcommand {
                    Some(subcommand) => format!("batchflow {subcommand}"),
                    None => "batchflow".to_owned(),
                };
                unknown.push(format!("{}: {command} {flag}", invocation.file));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "flags --help does not list: {unknown:#?}"
    );
    // The files are read at all: each kind runs shards and then verify.
    for kind in ["deploy/kubernetes/", "deploy/slurm/"] {
        let of_kind = |subcommand: Option<&str>, flag: &str| {
            all.iter().any(|invocation| {
                invocation.file.starts_with(kind)
                    && invocation.subcommand.as_deref() == subcommand
                    && invocation.flags.iter().any(|found| found == flag)
            })
        };
        assert!(
            of_kind(None, "--shard") && of_kind(None, "--resume"),
            "{kind}: {all:#?}"
        );
        assert!(of_kind(Some("verify"), "--input"), "{kind}: {all:#?}");
    }
}

/// The value of the first `key: value` line of `text`.
fn yaml_value<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|line| line.trim().strip_prefix(key)?.strip_prefix(':'))
        .map(|value| value.trim().trim_matches('"'))
        .unwrap_or_else(|| panic!("no {key} in the Job"))
}

#[test]
fn the_indexed_job_runs_as_many_shards_as_it_has_completions() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/job.yaml");
    let job = fs::read_to_string(path).expect("the Job manifest");
    assert_eq!(yaml_value(&job, "completionMode"), "Indexed");
    let completions = yaml_value(&job, "completions");
    assert_eq!(yaml_value(&job, "parallelism"), completions);
    let shards = job
        .split("- name: SHARDS")
        .nth(1)
        .map(|rest| yaml_value(rest, "value"))
        .expect("a SHARDS variable");
    assert_eq!(shards, completions);
    assert!(job.contains("--shard \"${JOB_COMPLETION_INDEX}/${SHARDS}\""));
    assert!(
        job.contains("--output /results/dataset/"),
        "a dataset directory"
    );
}

/// The series `/metrics` exposes, with their label names: a family's own name, a histogram's
/// `_bucket` (with `le`), `_sum` and `_count`.
fn exposed_series() -> BTreeMap<String, BTreeSet<String>> {
    let mut series = BTreeMap::new();
    for line in metric_families() {
        let mut words = line.split(' ');
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            panic!("NAME TYPE LABELS: {line}");
        };
        let labels: BTreeSet<String> = words
            .next()
            .into_iter()
            .flat_map(|labels| labels.split(','))
            .map(str::to_owned)
            .collect();
        if kind == "histogram" {
            let plain: BTreeSet<String> = labels.iter().filter(|l| *l != "le").cloned().collect();
            series.insert(format!("{name}_bucket"), labels);
            series.insert(format!("{name}_sum"), plain.clone());
            series.insert(format!("{name}_count"), plain);
        } else {
            series.insert(name.to_owned(), labels);
        }
    }
    series
}

/// Every `batchflow_…` name in a query.
fn metric_names(expr: &str) -> Vec<&str> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("batchflow_") {
        let starts_a_word = !rest[..at].ends_with(is_name);
        let tail = &rest[at..];
        let end = tail.find(|c: char| !is_name(c)).unwrap_or(tail.len());
        if starts_a_word {
            names.push(&tail[..end]);
        }
        rest = &tail[end..];
    }
    names
}

/// The label names of every `by (…)` in a query.
fn grouped_by(expr: &str) -> Vec<&str> {
    expr.split("by (")
        .skip(1)
        .filter_map(|after| after.split_once(')'))
        .flat_map(|(labels, _)| labels.split(','))
        .map(str::trim)
        .collect()
}

/// Every panel, those inside rows included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, found: &mut Vec<&'a Value>) {
        for panel in panels.as_array().into_iter().flatten() {
            found.push(panel);
            walk(&panel["panels"], found);
        }
    }
    let mut found = Vec::new();
    walk(&dashboard["panels"], &mut found);
    found
}

#[test]
fn the_grafana_dashboard_queries_only_series_metrics_exposes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/batchflow.json");
    let dashboard: Value =
        serde_json::from_str(&fs::read_to_string(path).expect("the dashboard")).expect("JSON");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("template variables");
    assert!(
        variables
            .iter()
            .any(|variable| variable["name"] == "datasource"
                && variable["type"] == "datasource"
                && variable["query"] == "prometheus"),
        "a Prometheus data source variable: {variables:#?}"
    );
    let series = exposed_series();
    let mut queries = Vec::new();
    for panel in panels(&dashboard) {
        let targets = panel["targets"].as_array().into_iter().flatten();
        for target in targets {
            let expr = target["expr"].as_str().expect("a PromQL expr");
            assert_eq!(
                target["datasource"]["uid"], "${datasource}",
                "{}: the data source variable",
                panel["title"]
            );
            queries.push((panel["title"].to_string(), expr));
        }
    }
    let instance = variables
        .iter()
        .find(|variable| variable["name"] == "instance")
        .and_then(|variable| variable["definition"].as_str())
        .expect("an instance variable");
    queries.push(("the instance variable".into(), instance));
    let mut used = BTreeSet::new();
    let mut problems = Vec::new();
    for (title, expr) in &queries {
        let names = metric_names(expr);
        if names.is_empty() {
            problems.push(format!("{title}: no batchflow_ series in {expr}"));
        }
        for name in &names {
            if !series.contains_key(*name) {
                problems.push(format!("{title}: {name} is not exposed"));
            }
        }
        for label in grouped_by(expr) {
            let has = |name: &&str| {
                series
                    .get(*name)
                    .is_some_and(|labels| labels.contains(label))
            };
            if label != "instance" && !names.iter().any(has) {
                problems.push(format!(
                    "{title}: no series of {names:?} has the label {label}"
                ));
            }
        }
        used.extend(names);
    }
    assert!(problems.is_empty(), "{problems:#?}");
    // The dashboard is read at all: the run's, the backends', the GPUs' and the server's.
    for name in [
        "batchflow_requests_total",
        "batchflow_request_duration_seconds_bucket",
        "batchflow_errors_total",
        "batchflow_retries_total",
        "batchflow_worker_limit",
        "batchflow_backend_up",
        "batchflow_gpu_memory_used_bytes",
        "batchflow_model_vram_bytes",
        "batchflow_serve_batches",
    ] {
        assert!(used.contains(name), "{name} is charted: {used:?}");
    }
}
