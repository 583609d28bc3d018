//! `nmr bench`: the benchmark scenarios, quickly.

use anyhow::Result;
use clap::Args;
use std::process::ExitCode;

/// Options of `nmr bench`.
#[derive(Args, Debug, Clone)]
pub(crate) struct BenchArgs {
    /// Measurement time per scenario, in milliseconds.
    #[arg(long, default_value_t = 300)]
    pub(crate) millis: u64,
}

pub(crate) fn run(_args: &BenchArgs) -> Result<ExitCode> {
    anyhow::bail!("not yet")
}
