//! Serves the holiday trip saga's functions (`holiday/trips`, `holiday/flights`,
//! `holiday/cars`, `holiday/payments`) over HTTP.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;

/// Serves the holiday trip saga's functions to a StateFun-compatible runtime.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on for the runtime's requests.
    #[arg(long, env = "SAGA_LISTEN", default_value = "0.0.0.0:1112")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    keyflow_sdk::init_logging("info");
    let args = Args::parse();
    tracing::info!(listen = %args.listen, "holiday saga functions");
    keyflow_sdk::serve_until_signal(args.listen, holiday_saga_functions::functions())
        .await
        .context("serving the functions failed")
}
