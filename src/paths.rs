//! The files a run reads and writes, checked against each other before anything is opened for
//! writing: no output may be an input (the input file, the pipeline file) or another output,
//! every output must be a regular file or not exist yet, and its folder must exist and be
//! writable.
//!
//! Paths are compared by identity, not by spelling: an existing file by its device and inode
//! after following links (so a symlink or a hard link to the input is the input), one that
//! does not exist yet by its canonical path (its folder canonicalised, links followed). The
//! checks only read metadata: a FIFO is never opened, so nothing here can block.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Links followed before a path is taken for a loop.
const MOST_LINKS: usize = 40;

/// A path and the knob that named it (`--output`, `sink.parquet`, …), for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPath {
    pub knob: String,
    pub path: PathBuf,
}

impl NamedPath {
    pub fn new(knob: impl Into<String>, path: impl Into<PathBuf>) -> NamedPath {
        NamedPath {
            knob: knob.into(),
            path: path.into(),
        }
    }
}

/// How the user named each knob of a run that messages mention: flags on the command line,
/// keys in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Knobs {
    pub input: String,
    pub pipeline: String,
    pub output: String,
    pub stats: String,
    pub errors: String,
    pub jsonl: String,
    pub api_key_env: String,
    pub model: String,
    pub no_preflight: String,
    pub backend: String,
}

impl Knobs {
    pub fn flags() -> Knobs {
        Knobs {
            input: "INPUT".into(),
            pipeline: "the pipeline file".into(),
            output: "--output".into(),
            stats: "--stats".into(),
            errors: "--errors".into(),
            jsonl: "sink.jsonl".into(),
            api_key_env: "--api-key-env".into(),
            model: "--model".into(),
            no_preflight: "--no-preflight".into(),
            backend: "--backend URL".into(),
        }
    }

    /// A pipeline file's keys.
    pub fn pipeline() -> Knobs {
        Knobs {
            input: "source.path".into(),
            pipeline: "the pipeline file".into(),
            output: "sink.parquet".into(),
            stats: "sink.stats".into(),
            errors: "sink.errors".into(),
            jsonl: "sink.jsonl".into(),
            api_key_env: "backend.api_key_env".into(),
            model: "request.model".into(),
            no_preflight: "backend.preflight = false".into(),
            backend: "backend.url".into(),
        }
    }
}

/// What an output may be besides a regular file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Only a regular file (or none yet): results, stats and error files, which are
    /// rewritten, renamed beside or fsynced.
    RegularFile,
    /// Also a FIFO or a character device (`/dev/null`): a stream that is only appended to.
    Stream,
    /// Only a directory (or none yet): a results dataset, which no other file of the run may
    /// lie in.
    Directory,
}

/// An output to check: its path, what it may be, and the files written beside it (named by
/// the suffix added to the file name of its target, such as `.checkpoint`).
#[derive(Debug, Clone)]
pub struct OutputPath {
    pub named: NamedPath,
    pub accept: Accept,
    pub side_files: Vec<(&'static str, &'static str)>,
}

impl OutputPath {
    pub fn new(named: NamedPath, accept: Accept) -> OutputPath {
        OutputPath {
            named,
            accept,
            side_files: Vec::new(),
        }
    }

    /// Also checks `target + suffix`, described as `what` (“its staging file”).
    pub fn with_side_file(mut self, what: &'static str, suffix: &'static str) -> OutputPath {
        self.side_files.push((what, suffix));
        self
    }
}

/// Added to a file's name for the sibling [`replace_with_json`] writes before the rename.
pub const REPLACING_SUFFIX: &str = ".tmp";

/// Rewrites `path` with `value` as JSON so that a reader never sees half of it: a sibling
/// (`REPLACING_SUFFIX`) is written, then renamed over it. For figures rewritten every second
/// or two (the stats file, the live-status file), not synced: the next write follows soon.
pub fn replace_with_json(path: &Path, value: &impl serde::Serialize) -> io::Result<()> {
    let temporary = with_suffix(path, REPLACING_SUFFIX);
    let json = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    fs::write(&temporary, json)?;
    fs::rename(&temporary, path)
}

/// `path` with `suffix` added to its file name: a sibling in the same folder.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Why the run's files cannot be used. Every message names the knob and the path.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("{first} and {second} both name {path}: {}", clash_advice(.second_is_input))]
    Clash {
        first: String,
        second: String,
        path: PathBuf,
        second_is_input: bool,
    },

    #[error("{knob} {path} is {kind}, not a regular file")]
    NotRegular {
        knob: String,
        path: PathBuf,
        kind: FileKind,
    },

    #[error("{knob} {path}: its folder {folder} does not exist")]
    FolderMissing {
        knob: String,
        path: PathBuf,
        folder: PathBuf,
    },

    #[error("{knob} {path}: its folder {folder} is not writable ({cause})")]
    FolderNotWritable {
        knob: String,
        path: PathBuf,
        folder: PathBuf,
        cause: io::Error,
    },

    #[error("{knob} {path} is {}, not a directory (a dataset output ends in /)", .kind.map_or("a regular file".to_owned(), |kind| kind.to_string()))]
    NotDirectory {
        knob: String,
        path: PathBuf,
        kind: Option<FileKind>,
    },

    #[error("{inner} {path} lies inside the dataset directory of {dataset}, which holds only its part files: {}", clash_advice(.inner_is_input))]
    InsideDataset {
        dataset: String,
        inner: String,
        path: PathBuf,
        inner_is_input: bool,
    },

    #[error("{knob} {path} is not writable ({cause})")]
    FileNotWritable {
        knob: String,
        path: PathBuf,
        cause: io::Error,
    },

    #[error("{knob} {path}: {cause}")]
    Unusable {
        knob: String,
        path: PathBuf,
        cause: io::Error,
    },
}

fn clash_advice(second_is_input: &bool) -> &'static str {
    if *second_is_input {
        "writing one would destroy the other; name another output"
    } else {
        "each output needs a file of its own"
    }
}

/// What a path is when it is not a regular file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Directory,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
    Other,
}

impl fmt::Display for FileKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            FileKind::Directory => "a directory",
            FileKind::Fifo => "a FIFO (named pipe)",
            FileKind::Socket => "a socket",
            FileKind::CharDevice => "a character device",
            FileKind::BlockDevice => "a block device",
            FileKind::Other => "not a file",
        })
    }
}

/// Who a path is, as far as writing it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Identity {
    Inode {
        device: u64,
        inode: u64,
    },
    /// Not there yet: where it would be created.
    Planned(PathBuf),
}

/// A path with links followed: its identity, and the path to write to so that a link stays a
/// link (a rename onto the link would replace it).
#[derive(Debug, Clone)]
struct Resolved {
    identity: Identity,
    target: PathBuf,
    kind: Option<FileKind>,
}

/// Follows `path`'s links. A path that does not exist (or a link that dangles) is resolved to
/// where it would be created, which needs its folder to exist.
fn resolve(named: &NamedPath) -> Result<Resolved, PathError> {
    let unusable = |cause| PathError::Unusable {
        knob: named.knob.clone(),
        path: named.path.clone(),
        cause,
    };
    let mut target = named.path.clone();
    for _ in 0..MOST_LINKS {
        match fs::symlink_metadata(&target) {
            Ok(metadata) if metadata.file_type().is_symlink() => {
                let link = fs::read_link(&target).map_err(unusable)?;
                target = match target.parent() {
                    Some(folder) if link.is_relative() => folder.join(link),
                    _ => link,
                };
            }
            Ok(metadata) => {
                let target = fs::canonicalize(&target).map_err(unusable)?;
                return Ok(Resolved {
                    identity: Identity::Inode {
                        device: metadata.dev(),
                        inode: metadata.ino(),
                    },
                    target,
                    kind: file_kind(&metadata.file_type()),
                });
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let folder = match target.parent() {
                    Some(folder) if !folder.as_os_str().is_empty() => folder.to_owned(),
                    _ => PathBuf::from("."),
                };
                let Some(name) = target.file_name() else {
                    return Err(unusable(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "it names no file",
                    )));
                };
                let folder = fs::canonicalize(&folder).map_err(|error| {
                    if error.kind() == io::ErrorKind::NotFound {
                        PathError::FolderMissing {
                            knob: named.knob.clone(),
                            path: named.path.clone(),
                            folder: folder.clone(),
                        }
                    } else {
                        unusable(error)
                    }
                })?;
                let target = folder.join(name);
                return Ok(Resolved {
                    identity: Identity::Planned(target.clone()),
                    target,
                    kind: None,
                });
            }
            Err(error) => return Err(unusable(error)),
        }
    }
    Err(unusable(io::Error::new(
        io::ErrorKind::InvalidInput,
        "too many levels of symbolic links",
    )))
}

/// `None` for a regular file.
fn file_kind(file_type: &fs::FileType) -> Option<FileKind> {
    if file_type.is_file() {
        None
    } else if file_type.is_dir() {
        Some(FileKind::Directory)
    } else if file_type.is_fifo() {
        Some(FileKind::Fifo)
    } else if file_type.is_socket() {
        Some(FileKind::Socket)
    } else if file_type.is_char_device() {
        Some(FileKind::CharDevice)
    } else if file_type.is_block_device() {
        Some(FileKind::BlockDevice)
    } else {
        Some(FileKind::Other)
    }
}

/// The run's files, checked: each output's path to write to (links followed, so that a
/// rewrite replaces the link's target and keeps the link), in the order given.
#[derive(Debug, Clone, Default)]
pub struct CheckedPaths {
    pub targets: Vec<PathBuf>,
}

/// Standard input and output, when they are files: standard input read as the input is one
/// more input, and standard output written with results one more output (appending results to
/// the input being read would never end).
#[derive(Debug, Clone, Default)]
pub struct Streams {
    pub stdin: Option<fs::Metadata>,
    pub stdout: Option<fs::Metadata>,
}

fn inode(metadata: &fs::Metadata) -> Identity {
    Identity::Inode {
        device: metadata.dev(),
        inode: metadata.ino(),
    }
}

/// Checks `outputs` against `inputs`, `streams` and each other, and each output on its own (see
/// the module comment).
pub fn check(
    inputs: &[NamedPath],
    streams: &Streams,
    outputs: &[OutputPath],
) -> Result<CheckedPaths, PathError> {
    let mut seen: Vec<(Identity, String, bool)> = Vec::new();
    // Where each file lies, to find those inside a dataset directory.
    let mut placed: Vec<(PathBuf, &NamedPath, bool)> = Vec::new();
    for input in inputs {
        // An input that cannot be looked at is the input reader's to report.
        if let Ok(resolved) = resolve(input) {
            seen.push((resolved.identity, input.knob.clone(), true));
            placed.push((resolved.target, input, true));
        }
    }
    if let Some(metadata) = streams.stdin.as_ref().filter(|metadata| metadata.is_file()) {
        seen.push((inode(metadata), "standard input".into(), true));
    }
    if let Some(metadata) = streams
        .stdout
        .as_ref()
        .filter(|metadata| metadata.is_file())
    {
        let identity = inode(metadata);
        if let Some((_, knob, _)) = seen.iter().find(|(seen, ..)| *seen == identity) {
            return Err(PathError::Clash {
                first: "standard output".into(),
                second: knob.clone(),
                path: path_of(inputs, knob),
                second_is_input: true,
            });
        }
        seen.push((identity, "standard output".into(), false));
    }
    let mut targets = Vec::with_capacity(outputs.len());
    for output in outputs {
        let resolved = check_one(&output.named, output.accept, &mut seen)?;
        for (what, suffix) in &output.side_files {
            let side = NamedPath::new(
                format!("{} ({what})", output.named.knob),
                with_suffix(&resolved.target, suffix),
            );
            check_one(&side, Accept::RegularFile, &mut seen)?;
        }
        placed.push((resolved.target.clone(), &output.named, false));
        targets.push(resolved.target);
    }
    for (dataset, output) in targets.iter().zip(outputs) {
        if output.accept != Accept::Directory {
            continue;
        }
        let inside = placed
            .iter()
            .find(|(path, _, _)| path != dataset && path.starts_with(dataset));
        if let Some((_, named, is_input)) = inside {
            return Err(PathError::InsideDataset {
                dataset: output.named.knob.clone(),
                inner: named.knob.clone(),
                path: named.path.clone(),
                inner_is_input: *is_input,
            });
        }
    }
    Ok(CheckedPaths { targets })
}

/// Checks one output against everything `seen` so far, then adds it there.
fn check_one(
    named: &NamedPath,
    accept: Accept,
    seen: &mut Vec<(Identity, String, bool)>,
) -> Result<Resolved, PathError> {
    let resolved = resolve(named)?;
    if let Some((_, knob, is_input)) = seen
        .iter()
        .find(|(identity, ..)| *identity == resolved.identity)
    {
        return Err(PathError::Clash {
            first: named.knob.clone(),
            second: knob.clone(),
            path: named.path.clone(),
            second_is_input: *is_input,
        });
    }
    check_kind(named, accept, &resolved)?;
    check_writable(named, &resolved)?;
    seen.push((resolved.identity.clone(), named.knob.clone(), false));
    Ok(resolved)
}

fn path_of(paths: &[NamedPath], knob: &str) -> PathBuf {
    paths
        .iter()
        .find(|named| named.knob == knob)
        .map(|named| named.path.clone())
        .unwrap_or_default()
}

fn check_kind(named: &NamedPath, accept: Accept, resolved: &Resolved) -> Result<(), PathError> {
    let is_new = matches!(resolved.identity, Identity::Planned(_));
    if accept == Accept::Directory {
        return match resolved.kind {
            Some(FileKind::Directory) => Ok(()),
            _ if is_new => Ok(()),
            kind => Err(PathError::NotDirectory {
                knob: named.knob.clone(),
                path: named.path.clone(),
                kind,
            }),
        };
    }
    let Some(kind) = resolved.kind else {
        return Ok(());
    };
    let streamable = matches!(kind, FileKind::Fifo | FileKind::CharDevice);
    if accept == Accept::Stream && streamable {
        return Ok(());
    }
    Err(PathError::NotRegular {
        knob: named.knob.clone(),
        path: named.path.clone(),
        kind,
    })
}

/// An existing file must be writable; a new one needs a writable folder. Every output writes
/// temporary files beside itself, so the folder must be writable in both cases.
fn check_writable(named: &NamedPath, resolved: &Resolved) -> Result<(), PathError> {
    if resolved.kind == Some(FileKind::Directory) {
        // A dataset directory: its parts are created in it.
        return access_for_writing(&resolved.target).map_err(|cause| {
            PathError::FolderNotWritable {
                knob: named.knob.clone(),
                path: named.path.clone(),
                folder: resolved.target.clone(),
                cause,
            }
        });
    }
    if resolved.kind.is_some() {
        return Ok(());
    }
    if matches!(resolved.identity, Identity::Inode { .. }) {
        access_for_writing(&resolved.target).map_err(|cause| PathError::FileNotWritable {
            knob: named.knob.clone(),
            path: named.path.clone(),
            cause,
        })?;
    }
    let folder = resolved
        .target
        .parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_owned);
    access_for_writing(&folder).map_err(|cause| PathError::FolderNotWritable {
        knob: named.knob.clone(),
        path: named.path.clone(),
        folder,
        cause,
    })
}

/// Asks the kernel whether this process may write `path` (a read-only mount included), without
/// opening it.
fn access_for_writing(path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let text = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the path holds a NUL byte"))?;
    // SAFETY: `text` is a valid NUL-terminated string that outlives the call; access reads it
    // and nothing else.
    if unsafe { libc::access(text.as_ptr(), libc::W_OK) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(knob: &str, path: &Path) -> OutputPath {
        OutputPath::new(NamedPath::new(knob, path), Accept::RegularFile)
    }

    #[test]
    fn a_link_or_a_hard_link_to_the_input_is_the_input() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let input = dir.path().join("in.parquet");
        fs::write(&input, b"data").expect("write");
        let soft = dir.path().join("soft.parquet");
        let hard = dir.path().join("hard.parquet");
        std::os::unix::fs::symlink(&input, &soft).expect("symlink");
        fs::hard_link(&input, &hard).expect("hard link");
        let inputs = [NamedPath::new("INPUT", &input)];
        for path in [&input, &soft, &hard] {
            let error = check(&inputs, &Streams::default(), &[output("--output", path)])
                .expect_err("a clash");
            assert!(
                matches!(&error, PathError::Clash { first, second, .. } if first == "--output" && second == "INPUT"),
                "{error}"
            );
        }
        let spelled = dir.path().join(".").join("in.parquet");
        assert!(
            check(
                &inputs,
                &Streams::default(),
                &[output("--output", &spelled)]
            )
            .is_err()
        );
    }

    #[test]
    fn two_new_outputs_with_one_path_clash_and_links_resolve_to_their_target() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let results = dir.path().join("results.parquet");
        let error = check(
            &[],
            &Streams::default(),
            &[
                output("--output", &results),
                output("--stats", &dir.path().join("sub/../results.parquet")),
            ],
        );
        // `sub` does not exist, so its `..` cannot be followed: the folder is missing.
        assert!(matches!(error, Err(PathError::FolderMissing { .. })));
        let error = check(
            &[],
            &Streams::default(),
            &[
                output("--output", &results),
                output("--stats", &dir.path().join("./results.parquet")),
            ],
        )
        .expect_err("a clash");
        assert!(
            error.to_string().contains("--stats and --output"),
            "{error}"
        );

        let real = dir.path().join("real.parquet");
        fs::write(&real, b"x").expect("write");
        let link = dir.path().join("link.parquet");
        std::os::unix::fs::symlink("real.parquet", &link).expect("symlink");
        let checked = check(&[], &Streams::default(), &[output("--output", &link)]).expect("fine");
        assert_eq!(
            checked.targets,
            vec![fs::canonicalize(&real).expect("canonical")]
        );
    }

    #[test]
    fn directories_and_fifos_are_refused_without_being_opened() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let error = check(&[], &Streams::default(), &[output("--stats", dir.path())])
            .expect_err("a directory");
        assert!(
            matches!(
                error,
                PathError::NotRegular {
                    kind: FileKind::Directory,
                    ..
                }
            ),
            "{error}"
        );
        let fifo = dir.path().join("fifo");
        let text = std::ffi::CString::new(fifo.to_str().expect("UTF-8")).expect("no NUL");
        // SAFETY: a valid path string; mkfifo only creates the node.
        assert_eq!(unsafe { libc::mkfifo(text.as_ptr(), 0o600) }, 0);
        let error =
            check(&[], &Streams::default(), &[output("--errors", &fifo)]).expect_err("a FIFO");
        assert!(error.to_string().contains("FIFO"), "{error}");
        let stream = OutputPath::new(NamedPath::new("sink.jsonl", &fifo), Accept::Stream);
        assert!(check(&[], &Streams::default(), &[stream]).is_ok());
    }

    #[test]
    fn a_side_file_that_is_the_input_clashes() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let input = dir.path().join("results.parquet.tmp");
        fs::write(&input, b"lines").expect("write");
        let results = output("--output", &dir.path().join("results.parquet"))
            .with_side_file("its staging file", ".tmp");
        let error = check(
            &[NamedPath::new("INPUT", &input)],
            &Streams::default(),
            &[results],
        )
        .expect_err("the staging file would overwrite the input");
        assert!(
            error
                .to_string()
                .contains("--output (its staging file) and INPUT"),
            "{error}"
        );
    }

    #[test]
    fn a_missing_folder_is_named() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("missing/results.parquet");
        let error =
            check(&[], &Streams::default(), &[output("--output", &path)]).expect_err("missing");
        assert!(error.to_string().contains("does not exist"), "{error}");
    }
}
