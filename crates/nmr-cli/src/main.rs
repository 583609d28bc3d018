//! `nmr`: the Network Module Registrar, WSK and KMCL channels end to end, shown as it
//! happens.
//!
//! * `nmr demo` (the default): the WSK provider, an echo server and a load client attach
//!   through the registrar, a KMCL channel pair carries transactions, and everything unloads
//!   in an instructive order, printed as a timeline with a summary.
//! * `nmr inspect --at MOMENT`: the demo, printing the registrar's snapshot at that moment.
//! * `nmr bench`: the benchmark scenarios, quickly, with ratios to their baselines.

#![forbid(unsafe_code)]

mod bench;
mod demo;
mod render;
mod timeline;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::process::ExitCode;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

/// The Windows Network Module Registrar, WSK and VMBus KMCL channels in user mode, end to end.
#[derive(Parser, Debug)]
#[command(name = "nmr", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Options of `demo` when no command is given.
    #[command(flatten)]
    demo: demo::DemoArgs,
    /// Colours: auto (on a terminal), always, never.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    color: ColorChoice,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the whole system end to end and show the lifecycle as it happens (default).
    Demo(demo::DemoArgs),
    /// Run the demo and print the registrar's snapshot at a chosen moment.
    Inspect {
        /// The moment.
        #[arg(long, value_enum, default_value_t = demo::Moment::Detaching)]
        at: demo::Moment,
        /// Seconds of traffic.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
    },
    /// Run the benchmark scenarios quickly and print the table with ratios to baselines.
    Bench(bench::BenchArgs),
    /// Serve KMCL echo channels on a Unix socket, like `kmcl-echo` (the demo's
    /// `--cross-process` peer).
    #[command(hide = true)]
    KmclEcho {
        /// The socket path.
        path: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // --help and --version print and succeed; usage errors print a clear line.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let color = match cli.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
        }
    };
    match cli.command {
        Some(Cmd::Bench(args)) => bench::run(&args),
        Some(Cmd::KmclEcho { path }) => {
            kmcl::echo::run(&path, |_| {})
                .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", path.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Cmd::Demo(args)) => run_demo(&args, color),
        Some(Cmd::Inspect { at, seconds }) => {
            let args = demo::DemoArgs {
                inspect: Some(at),
                seconds,
                quiet: true,
                ..demo::DemoArgs::default()
            };
            run_demo(&args, color)
        }
        None => run_demo(&cli.demo, color),
    }
}

fn run_demo(args: &demo::DemoArgs, color: bool) -> Result<ExitCode> {
    let recorder = timeline::Recorder::new();
    let filter = Targets::new()
        .with_target("nmr::lifecycle", LevelFilter::DEBUG)
        .with_target("nmr::demo", LevelFilter::INFO);
    // RUST_LOG=... adds a log to stderr, for digging deeper.
    let log = std::env::var("RUST_LOG").ok().map(|spec| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(tracing_subscriber::EnvFilter::new(spec))
    });
    // Global: callbacks run on I/O, dispatcher and worker threads too.
    tracing_subscriber::registry()
        .with(recorder.clone().with_filter(filter))
        .with(log)
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the event recorder: {e}"))?;
    let summary = demo::run(args, &recorder)?;
    demo::report(args, &summary, &recorder, color)?;
    let problems = summary.problems();
    if problems.is_empty() {
        println!(
            "all checks passed: every binding cleaned up, every wait returned, echoed bytes = sent bytes"
        );
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &problems {
            eprintln!("check failed: {p}");
        }
        Ok(ExitCode::FAILURE)
    }
}
