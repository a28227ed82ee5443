//! The README as a front door that works: every shell command of README.md's fenced `sh`,
//! `bash` and `console` blocks runs, in the README's order and verbatim, in one temp dir
//! through the real binary (found as `batchflow` on `PATH`), against the in-process mock
//! (`OLLAMA_HOST`); each must exit 0 and print what the README shows it printing. The README
//! stays short, and the links of README.md, CONTRIBUTING.md and docs/*.md lead somewhere.

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use batchflow::mock::MockConfig;

use crate::support::{Mock, python_path, wait_until};

/// README commands this test does not run, each with why.
const NOT_RUN: &[(&str, &str)] = &[
    (
        "cargo build --release",
        "minutes of building; the test runs the binary cargo already built",
    ),
    (".ci/run", "runs this very test suite"),
];

/// The models the README names, so that its commands run against the mock as written.
const MODELS: &[&str] = &["qwen2.5:7b", "llama3.2:latest", "nomic-embed-text:latest"];

/// One command of the README with the output it shows (a `console` block's lines after it).
#[derive(Debug)]
struct Step {
    command: String,
    shown_output: Vec<String>,
    line: usize,
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The commands of the shell blocks, a heredoc and its body as one command.
fn steps(markdown: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut lines = markdown.lines().enumerate();
    let mut block: Option<String> = None;
    while let Some((index, line)) = lines.next() {
        if let Some(fence) = line.trim_start().strip_prefix("```") {
            block = match block {
                Some(_) => None,
                None => Some(fence.trim().to_owned()),
            };
            continue;
        }
        let Some(language) = block.as_deref() else {
            continue;
        };
        let command = match language {
            "sh" | "bash" => line.trim(),
            "console" => match line.strip_prefix("$ ") {
                Some(command) => command.trim(),
                None => {
                    if let Some(step) = steps.last_mut() {
                        step.shown_output.push(line.to_owned());
                    }
                    continue;
                }
            },
            _ => continue,
        };
        if command.is_empty() || command.starts_with('#') {
            continue;
        }
        let mut command = command.to_owned();
        if let Some(start) = command.find("<<'") {
            let marker = command[start + 3..].trim_end_matches('\'').to_owned();
            for (_, body) in lines.by_ref() {
                command.push('\n');
                command.push_str(body);
                if body == marker {
                    break;
                }
            }
        }
        steps.push(Step {
            command,
            shown_output: Vec::new(),
            line: index + 1,
        });
    }
    steps
}

/// Whether `output` has a line holding the shown line's fragments (split at `…`) in order.
fn shows(output: &str, shown: &str) -> bool {
    let fragments: Vec<&str> = shown
        .split('…')
        .map(str::trim)
        .filter(|fragment| !fragment.is_empty())
        .collect();
    fragments.is_empty()
        || output.lines().any(|line| {
            let mut rest = line;
            fragments.iter().all(|fragment| match rest.find(fragment) {
                Some(at) => {
                    rest = &rest[at + fragment.len()..];
                    true
                }
                None => false,
            })
        })
}

/// A folder for `PATH`: `batchflow` is the binary under test, and `duckdb -c SQL` runs the SQL
/// through the duckdb Python package of the tests' venv (tests/requirements.txt), since the
/// duckdb CLI is not a package the CI image can install.
fn bin_dir(dir: &Path) -> PathBuf {
    let bin = dir.join(".bin");
    std::fs::create_dir(&bin).expect("a bin folder");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_batchflow"), bin.join("batchflow"))
        .expect("a link to the binary");
    let duckdb = bin.join("duckdb");
    let script = format!(
        "#!/bin/sh\n[ \"$1\" = -c ] || {{ echo 'this duckdb takes -c SQL only' >&2; exit 2; }}\nexec '{}' -c 'import sys, duckdb; duckdb.sql(sys.argv[1]).show()' \"$2\"\n",
        python_path().display()
    );
    std::fs::write(&duckdb, script).expect("the duckdb script");
    let mut permissions = std::fs::metadata(&duckdb).expect("written").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&duckdb, permissions).expect("executable");
    bin
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("a folder");
    for entry in std::fs::read_dir(from).expect("readable") {
        let entry = entry.expect("an entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copied");
        }
    }
}

/// The `127.0.0.1:PORT` a background command serves on.
fn served_address(command: &str) -> String {
    command
        .split_whitespace()
        .find(|word| word.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("a background command names its address: {command}"))
        .to_owned()
}

#[test]
fn every_command_of_the_readme_runs_against_the_mock_as_written() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mock = Mock::start(MockConfig {
        slots: 8,
        latency: Duration::ZERO,
        models: MODELS.iter().map(|model| (*model).to_owned()).collect(),
        ..MockConfig::default()
    });
    // The README's commands run from a checkout: the folders they name are copied.
    for folder in ["pipelines", "examples", "results"] {
        copy_tree(&repo().join(folder), &dir.path().join(folder));
    }
    let path = format!(
        "{}:{}",
        bin_dir(dir.path()).display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let shell = |command: &str| {
        let mut shell = Command::new("bash");
        shell
            .args(["-c", command])
            .current_dir(dir.path())
            .env("PATH", &path)
            .env("OLLAMA_HOST", mock.url())
            .stdin(Stdio::null());
        shell
    };

    let steps = steps(&read(&repo().join("README.md")));
    assert!(steps.len() >= 10, "the README's commands: {steps:#?}");
    let mut skipped = BTreeSet::new();
    let mut background: Vec<Child> = Vec::new();
    for step in &steps {
        let command = step.command.as_str();
        if NOT_RUN.iter().any(|(skip, _)| *skip == command) {
            skipped.insert(command);
            continue;
        }
        if let Some(command) = command.strip_suffix('&') {
            // `exec`, so that the child stopped at the end is the server itself.
            let mut child = shell(&format!("exec {command}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("bash starts");
            let address = served_address(command);
            wait_until(
                &format!("README line {}: {address} serves", step.line),
                || {
                    let exited = child.try_wait().expect("the child's status");
                    assert!(
                        exited.is_none(),
                        "README line {}: `{command}` ended: {exited:?}",
                        step.line
                    );
                    TcpStream::connect(&address).is_ok()
                },
            );
            background.push(child);
            continue;
        }
        let output = shell(command).output().expect("bash runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let mut problems = Vec::new();
        if !output.status.success() {
            problems.push(format!("exit {:?}", output.status.code()));
        }
        for shown in &step.shown_output {
            if !shows(&stdout, shown) {
                problems.push(format!("no output line like {shown:?}"));
            }
        }
        if problems.is_empty() {
            continue;
        }
        let report = format!(
            "README line {}: `{command}`: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            step.line,
            problems.join("; ")
        );
        panic!("{report}");
    }
    for mut child in background {
        child
            .kill()
            .expect("the background command is ours to stop");
        child.wait().expect("it ends");
    }
    let listed: BTreeSet<&str> = NOT_RUN.iter().map(|(command, _)| *command).collect();
    assert_eq!(
        skipped, listed,
        "every command not run is still in the README"
    );
}

/// The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as `-`.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut anchors = BTreeSet::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        let Some(heading) = line.strip_prefix('#') else {
            continue;
        };
        if in_code {
            continue;
        }
        let heading = heading.trim_start_matches('#').trim();
        let slug: String = heading
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        anchors.insert(slug);
    }
    anchors
}

/// The targets of a page's `](…)` links, outside code blocks.
fn links(markdown: &str) -> Vec<String> {
    let mut in_code = false;
    let mut targets = Vec::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            targets.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    targets
}

#[test]
fn the_readme_is_short_and_every_relative_link_of_the_docs_leads_to_a_file_and_heading() {
    let readme = read(&repo().join("README.md"));
    let length = readme.chars().count();
    assert!(length < 15_000, "README.md has {length} characters");

    let mut pages = vec![repo().join("README.md"), repo().join("CONTRIBUTING.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .map(|entry| entry.expect("an entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    assert!(docs.len() >= 7, "the docs pages: {docs:?}");
    pages.extend(docs);

    let mut broken = Vec::new();
    for page in &pages {
        let text = read(page);
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = match target.split_once('#') {
                Some((file, anchor)) => (file, Some(anchor)),
                None => (target.as_str(), None),
            };
            let linked = if file.is_empty() {
                page.clone()
            } else {
                page.parent().expect("a folder").join(file)
            };
            if !linked.exists() {
                broken.push(format!("{}: {target}: no such file", page.display()));
                continue;
            }
            if let Some(anchor) = anchor {
                if !anchors(&read(&linked)).contains(anchor) {
                    broken.push(format!("{}: {target}: no such heading", page.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}
