//! Serves the shopping-cart functions (see README.md) over HTTP.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use shopping_cart_functions::functions;

/// Serves the shopping-cart functions to a StateFun-compatible runtime.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on for the runtime's requests.
    #[arg(long, env = "FUNCTIONS_LISTEN", default_value = "0.0.0.0:1108")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    keyflow_sdk::init_logging("info");
    let args = Args::parse();
    keyflow_sdk::serve_until_signal(args.listen, functions())
        .await
        .context("serving the functions failed")
}
