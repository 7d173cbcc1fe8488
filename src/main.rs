//! The `dataloy-gateway` binary: the command line is in `dataloy_gateway::cli`.

use std::process::ExitCode;

use clap::Parser;
use dataloy_gateway::cli::{self, Cli};

/// A request's buffers are allocated on an HTTP worker and many are freed on the relay's threads.
/// In a profile at full load glibc's allocator took 4.8 % of the gateway's CPU samples on the
/// HTTP workers, mimalloc 2.4 % (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    cli::run(Cli::parse()).await
}
