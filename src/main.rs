//! The `batchflow` binary: parse flags, set up logging and the runtime, dispatch to the engine
//! or the mock server, and map the outcome to an exit code. Everything else is in the library.

#![allow(
    clippy::print_stdout,
    reason = "the binary writes its data (results, reports) to standard output"
)]

use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
mod flags;

use batchflow::config::{JsonlTarget, Pipeline};
use batchflow::engine::{self, JsonlStream, RunConfig, RunReport};
use batchflow::error::{Error, ExitStatus};
use batchflow::mock::{MockConfig, MockServer};
use batchflow::options::{Console, RunOptions, Workers};
use batchflow::progress;
use batchflow::shutdown::Shutdown;
use batchflow::sink::results::ExtraColumns;
use batchflow::source::Input;
use clap::Parser;
use flags::{
    Cli, Command, DemoArgs, LogArgs, MockArgs, PipelineRunArgs, RunArgs, ServeArgs, StatusArgs,
    TuneArgs, ValidateArgs, VerifyArgs,
};

/// A results file's row group is built in buffers of megabytes that are freed at each
/// checkpoint. glibc soon serves blocks that size from its heap (its mmap threshold rises with
/// each freed block), where the freed space stays resident: a million-row run then held
/// 56 MiB instead of 42 MiB. A fixed threshold keeps such blocks mapped on their own and
/// unmapped when freed.
fn return_large_blocks_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of glibc's allocator, and no other thread exists
    // yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
    }
}

fn main() -> ExitCode {
    return_large_blocks_to_the_system();
    let cli = Cli::parse();
    init_logging(cli.log);
    // One thread runs the stage and every connection, so a request's future and its socket
    // never wake each other across threads: on the multi-threaded runtime those hand-offs cost
    // about a third of the client's CPU (BENCHMARKS.md). Input and output have threads of their
    // own, and one thread serves tens of thousands of requests a second.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("batchflow: cannot start the async runtime: {error}");
            return ExitCode::from(ExitStatus::Error.code());
        }
    };
    let shutdown = Shutdown::new();
    // A batch listens for SIGINT/SIGTERM from its first instant, so that a signal during
    // start-up (a blocked open, a silent backend) ends it as interrupted. The other commands
    // keep the default handling.
    if matches!(
        cli.command,
        None | Some(Command::Run(_)) | Some(Command::Demo(_)) | Some(Command::Serve(_))
    ) {
        let _runtime = runtime.enter();
        shutdown.listen_for_signals();
    }
    // Spawned, so that a bug's panic ends as an error message and exit status 2.
    let outcome = runtime.block_on(async {
        tokio::spawn(dispatch(cli, shutdown))
            .await
            .unwrap_or_else(|error| Err(anyhow::anyhow!("the run failed: {error}")))
    });
    let status = match outcome {
        Ok(status) => status,
        Err(error) => {
            eprintln!("batchflow: {error:#}");
            ExitStatus::Error
        }
    };
    // Threads still blocked on input (an interactive stdin) must not hold the exit.
    runtime.shutdown_background();
    ExitCode::from(status.code())
}

fn init_logging(log: LogArgs) {
    let level = if log.quiet {
        tracing::Level::WARN
    } else if log.verbose {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    tracing_subscriber::fmt()
        .with_writer(progress::stderr_writer)
        .with_ansi(io::stderr().is_terminal())
        .with_target(false)
        .with_max_level(level)
        .init();
}

async fn dispatch(cli: Cli, shutdown: Shutdown) -> anyhow::Result<ExitStatus> {
    match cli.command {
        None => run_batch(cli.run, cli.log, shutdown).await,
        Some(Command::MockServer(args)) => serve_mock(args).await,
        Some(Command::Demo(args)) => demo(args, cli.log, shutdown).await,
        Some(Command::Status(args)) => status(args).await,
        Some(Command::Run(args)) => run_pipeline(args, cli.log, shutdown).await,
        Some(Command::Validate(args)) => validate(args).await,
        Some(Command::Tune(args)) => tune(args, cli.log).await,
        Some(Command::Verify(args)) => verify(args, cli.log).await,
        Some(Command::Serve(args)) => serve(args, shutdown).await,
    }
}

/// Serves the Batch API until a signal stops it (then the running batch drains and stays
/// resumable).
async fn serve(args: ServeArgs, shutdown: Shutdown) -> anyhow::Result<ExitStatus> {
    let served = match &args.file {
        Some(file) => match batchflow::validate::load_served(file, &args.set, env)? {
            Ok(served) => Some(served),
            Err(problems) => return Ok(report_problems(file, &args.set, &problems)),
        },
        None => None,
    };
    let mut run = args.run_options(served.as_ref());
    // Kept alive for as long as the server runs.
    let _mock = if args.mock || served.as_ref().is_some_and(|served| served.backend.mock) {
        let mock = start_mock(Some(run.workers)).await?;
        run.backends = vec![mock.url()];
        Some(mock)
    } else {
        None
    };
    let options = args.options(served.as_ref(), run, env)?;
    shutdown.set_grace(options.run.grace);
    batchflow::serve::serve(options, shutdown).await?;
    Ok(ExitStatus::Success)
}

/// Starts the built-in mock with as many slots as the run has workers per backend (with
/// `--workers auto`, as many as the default).
async fn start_mock(workers: Option<Workers>) -> anyhow::Result<MockServer> {
    let default = RunOptions::default().workers;
    let config = MockConfig {
        slots: workers.unwrap_or(default).count_or(default.count_or(1)) as usize,
        latency_spread: 0.5,
        ..MockConfig::default()
    };
    let mock = MockServer::start(config).await?;
    tracing::info!("Built-in mock server listening on {}.", mock.url());
    Ok(mock)
}

fn console(log: LogArgs) -> Console {
    Console {
        quiet: log.quiet,
        stderr_is_terminal: io::stderr().is_terminal(),
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

async fn run_batch(args: RunArgs, log: LogArgs, shutdown: Shutdown) -> anyhow::Result<ExitStatus> {
    let stdout = args.output.is_none() || args.jsonl;
    run_options(args.options(), args.mock, stdout, log, shutdown).await
}

/// Resolves `options` (against the built-in mock when `mock`) and runs them, with JSONL on
/// standard output when `stdout`.
async fn run_options(
    options: RunOptions,
    mock: bool,
    stdout: bool,
    log: LogArgs,
    shutdown: Shutdown,
) -> anyhow::Result<ExitStatus> {
    let mock = match mock {
        true => Some(start_mock(Some(options.workers)).await?),
        false => None,
    };
    let config = options.resolve(console(log), mock.as_ref().map(MockServer::url), env)?;
    let jsonl = if stdout { Some(stdout_stream()?) } else { None };
    execute(config, jsonl, log, shutdown).await
}

/// Runs a resolved configuration (signals stop it through `shutdown`), then reports how it
/// went.
async fn execute(
    config: RunConfig,
    jsonl: Option<JsonlStream>,
    log: LogArgs,
    shutdown: Shutdown,
) -> anyhow::Result<ExitStatus> {
    shutdown.set_grace(config.grace);
    let report = match engine::run(config, jsonl, shutdown.clone()).await {
        Ok(report) => report,
        Err(Error::Interrupted) => {
            eprintln!(
                "batchflow: interrupted before the first request was sent; nothing was sent."
            );
            return Ok(ExitStatus::Interrupted);
        }
        Err(error) => return Err(error.into()),
    };
    if !log.quiet {
        eprint!("{}", progress::summary(&report.stats, &report.backend_url));
    }
    log_resume_notes(&report);
    if let Some(fatal) = &report.fatal {
        eprintln!("batchflow: {fatal}");
    }
    let status = report.exit_status();
    if let Some(metrics) = report.metrics {
        shutdown.run_ended();
        metrics.close(shutdown.stopping()).await;
    }
    Ok(status)
}

/// Prints each problem of a pipeline file on its own line, naming the `--set` that caused it
/// rather than the file where one did; the exit status for it.
fn report_problems(file: &Path, sets: &[String], problems: &[String]) -> ExitStatus {
    for problem in problems {
        match batchflow::config::blamed_set(problem, sets) {
            Some(set) => eprintln!("batchflow: --set {set}: {problem}"),
            None => eprintln!("batchflow: {}: {problem}", file.display()),
        }
    }
    ExitStatus::Error
}

/// A pipeline file resolved into a run, with the built-in mock it asked for (kept alive by
/// the caller for the run's length).
struct PipelineRun {
    config: RunConfig,
    pipeline: Pipeline,
    extras: ExtraColumns,
    _mock: Option<MockServer>,
}

/// Loads and checks `file` with `sets`, lays `flags` over its options and resolves them;
/// problems with the file are printed and come back as the exit status. When the file or
/// `mock` asks for the built-in mock, `mock_workers` sizes it, or says not to start it.
async fn pipeline_run(
    file: &Path,
    sets: &[String],
    mock: bool,
    mock_workers: impl FnOnce(&Pipeline) -> Option<Option<Workers>>,
    flags: impl FnOnce(&mut RunOptions),
    log: LogArgs,
) -> anyhow::Result<Result<PipelineRun, ExitStatus>> {
    let (pipeline, extras) = match batchflow::validate::load_checked(file, sets, env)? {
        Ok(checked) => checked,
        Err(problems) => return Ok(Err(report_problems(file, sets, &problems))),
    };
    let workers = (mock || pipeline.backend.mock)
        .then(|| mock_workers(&pipeline))
        .flatten();
    let mock = match workers {
        Some(workers) => Some(start_mock(workers).await?),
        None => None,
    };
    let mut options = RunOptions::default();
    pipeline.apply(&mut options);
    options.extras = extras.clone();
    options.pipeline_file = Some(file.to_owned());
    flags(&mut options);
    let config = options.resolve(console(log), mock.as_ref().map(MockServer::url), env)?;
    Ok(Ok(PipelineRun {
        config,
        pipeline,
        extras,
        _mock: mock,
    }))
}

async fn run_pipeline(
    args: PipelineRunArgs,
    log: LogArgs,
    shutdown: Shutdown,
) -> anyhow::Result<ExitStatus> {
    let flags = |options: &mut RunOptions| args.lay_over(options);
    let mock_workers = |pipeline: &Pipeline| (!args.dry_run).then_some(pipeline.workers);
    let run = pipeline_run(&args.file, &args.set, args.mock, mock_workers, flags, log).await?;
    let PipelineRun {
        config,
        pipeline,
        extras,
        _mock,
    } = match run {
        Ok(run) => run,
        Err(status) => return Ok(status),
    };
    if args.dry_run {
        let rendered = tokio::select! {
            _ = shutdown.stopping() => return Ok(ExitStatus::Interrupted),
            rendered = batchflow::validate::dry_run(config, &extras) => rendered?,
        };
        print!("{rendered}");
        return Ok(ExitStatus::Success);
    }
    // A JSONL file is the engine's to check and open, like every other output.
    let jsonl = match &pipeline.jsonl {
        Some(JsonlTarget::Stdout) => Some(stdout_stream()?),
        Some(JsonlTarget::File(_)) | None => None,
    };
    execute(config, jsonl, log, shutdown).await
}

async fn tune(args: TuneArgs, log: LogArgs) -> anyhow::Result<ExitStatus> {
    let pipeline_file = args.run.input.clone().filter(|path| {
        path.extension()
            .is_some_and(|extension| extension.eq_ignore_ascii_case("toml"))
    });
    // Kept alive for the whole measurement.
    let mut _mock = None;
    let config = match pipeline_file {
        // The pipeline's own settings, as `run FILE [--mock]` would take them.
        Some(file) => {
            match pipeline_run(&file, &[], args.run.mock, |_| Some(None), |_| {}, log).await? {
                Ok(run) => {
                    _mock = run._mock;
                    run.config
                }
                Err(status) => return Ok(status),
            }
        }
        None => {
            if args.run.mock {
                _mock = Some(start_mock(Some(args.run.workers)).await?);
            }
            let url = _mock.as_ref().map(MockServer::url);
            args.run.options().resolve(console(log), url, env)?
        }
    };
    let sample_requests = args.sample.max(1);
    let sample = batchflow::tune::sample(&config.input, sample_requests)?;
    let report = batchflow::tune::tune(&config, sample, sample_requests, args.max_workers).await?;
    print!("{}", report.render());
    Ok(ExitStatus::Success)
}

async fn validate(args: ValidateArgs) -> anyhow::Result<ExitStatus> {
    match batchflow::validate::validate(&args.file, &args.set, args.offline, env).await? {
        Ok(summary) => {
            print!("{summary}");
            Ok(ExitStatus::Success)
        }
        Err(problems) => Ok(report_problems(&args.file, &args.set, &problems)),
    }
}

fn log_resume_notes(report: &RunReport) {
    if report.kept_rows > 0 || report.skipped_lines > 0 {
        tracing::info!(
            "Resumed: {} rows kept from earlier runs ({} failed, {} invalid), {} input lines skipped as done.",
            report.kept_rows,
            report.kept_failed,
            report.kept_invalid,
            report.skipped_lines
        );
    }
    if let Some(unknown) = report.unknown_kept.filter(|unknown| *unknown > 0) {
        tracing::warn!(
            "Rows for custom_ids (or lines) not in this input: {unknown}; was the results file resumed with a different input."
        );
    }
    match (&report.output, report.interrupted, report.fatal.is_some()) {
        (Some(path), _, true) => tracing::warn!(
            "Stopped early; {} keeps every row up to its last checkpoint. To continue, run the same command with --resume.",
            path.display()
        ),
        (Some(path), true, false) => tracing::warn!(
            "Stopped early; {} is closed and readable. To continue, run the same command with --resume.",
            path.display()
        ),
        (None, true, _) => tracing::warn!(
            "Stopped early: {} results were written; requests without a result line were not finished.",
            report.stats.done
        ),
        _ => {}
    }
}

async fn status(args: StatusArgs) -> anyhow::Result<ExitStatus> {
    // File reads, and object storage's blocking client, which needs a thread of its own.
    let path = args.path.clone();
    let status = tokio::task::spawn_blocking(move || batchflow::status::find(&path)).await??;
    print!("{}", status.render(&args.path));
    Ok(match status.is_damaged() {
        true => ExitStatus::Error,
        false => ExitStatus::Success,
    })
}

/// `verify`: problems as JSON lines on standard output, the summary on standard error.
async fn verify(args: VerifyArgs, log: LogArgs) -> anyhow::Result<ExitStatus> {
    let mut options = RunOptions::default();
    let is_pipeline = args
        .input
        .extension()
        .is_some_and(|extension| extension.eq_ignore_ascii_case("toml"));
    if is_pipeline {
        match batchflow::validate::load_checked(&args.input, &[], env)? {
            Ok((pipeline, _)) => pipeline.apply(&mut options),
            Err(problems) => return Ok(report_problems(&args.input, &[], &problems)),
        }
    } else {
        options.input = Input::from_arg(Some(args.input));
    }
    options.model = args.model.or(options.model);
    options.max_line_bytes = args.max_line_bytes;
    // Blocking file reads and a few seconds of CPU: off the runtime's one thread.
    let verified = tokio::task::spawn_blocking(move || {
        let mut out = io::BufWriter::new(io::stdout().lock());
        let summary = batchflow::verify::verify(&args.results, &options, |problem| {
            writeln!(out, "{}", problem.to_json())
        });
        summary.and_then(|summary| {
            out.flush()
                .map(|()| summary)
                .map_err(batchflow::verify::VerifyError::Report)
        })
    })
    .await?;
    let summary = match verified {
        Ok(summary) => summary,
        // A reader that stopped early (`| head`) was being shown problems.
        Err(batchflow::verify::VerifyError::Report(error))
            if error.kind() == io::ErrorKind::BrokenPipe =>
        {
            return Ok(ExitStatus::SomeFailed);
        }
        Err(error) => return Err(error.into()),
    };
    if !summary.is_clean() || !log.quiet {
        eprintln!("batchflow verify: {}", summary.render());
    }
    // A file that cannot be read is not a gap to fill by running again but a loss to look at.
    Ok(match (summary.damaged, summary.is_clean()) {
        (1.., _) => ExitStatus::Error,
        (0, true) => ExitStatus::Success,
        (0, false) => ExitStatus::SomeFailed,
    })
}

async fn serve_mock(args: MockArgs) -> anyhow::Result<ExitStatus> {
    let mock = MockServer::start(args.config()).await?;
    println!("{}", mock.url());
    tracing::info!(
        "Mock Ollama server listening on {}; stop it with Ctrl-C.",
        mock.url()
    );
    tokio::select! {
        _ = mock.serve_forever() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(ExitStatus::Success)
}

async fn demo(args: DemoArgs, log: LogArgs, shutdown: Shutdown) -> anyhow::Result<ExitStatus> {
    let options = RunOptions {
        input: Input::Text(batchflow::DEMO_BATCH.into()),
        workers: Workers::Fixed(args.workers),
        ordered: args.ordered,
        ..RunOptions::default()
    };
    run_options(options, true, true, log, shutdown).await
}

/// Standard output for JSONL results, with its file's metadata when it is one (so the engine
/// can refuse `batchflow in.jsonl >> in.jsonl`).
fn stdout_stream() -> anyhow::Result<JsonlStream> {
    let file = stdout_file().context("cannot use standard output")?;
    let metadata = stdout_metadata();
    Ok(JsonlStream {
        writer: Box::new(file),
        file: metadata,
    })
}

#[cfg(unix)]
fn stdout_metadata() -> Option<std::fs::Metadata> {
    use std::os::fd::AsFd;
    let handle = io::stdout().as_fd().try_clone_to_owned().ok()?;
    File::from(handle).metadata().ok()
}

#[cfg(not(unix))]
fn stdout_metadata() -> Option<std::fs::Metadata> {
    None
}

/// Standard output as a plain file: `io::Stdout` flushes at every newline, which would cost a
/// system call per result line; the JSONL sink does its own buffering.
#[cfg(unix)]
fn stdout_file() -> io::Result<File> {
    use std::os::fd::AsFd;
    Ok(File::from(io::stdout().as_fd().try_clone_to_owned()?))
}

#[cfg(not(unix))]
fn stdout_file() -> io::Result<io::Stdout> {
    Ok(io::stdout())
}
