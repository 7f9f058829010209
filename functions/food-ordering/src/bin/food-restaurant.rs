//! The restaurants' point-of-sale stub: takes `POST /prepare`, cooks for a while, then calls
//! the order back through the engine's `/callbacks/<token>`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use food_ordering_functions::restaurant_stub::{serve, StubConfig};

/// The food-ordering application's restaurant stub.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on for `/prepare`.
    #[arg(long, env = "FOOD_RESTAURANT_LISTEN", default_value = "127.0.0.1:1150")]
    listen: SocketAddr,
    /// The engine workers' HTTP ingress addresses, comma-separated (callbacks go there).
    #[arg(
        long,
        env = "FOOD_ENGINE_INGRESS",
        default_value = "127.0.0.1:8180,127.0.0.1:8181",
        value_delimiter = ','
    )]
    engine_ingress: Vec<String>,
    /// How long the kitchen takes per order (milliseconds).
    #[arg(long, env = "FOOD_PREPARATION_MS", default_value_t = 2000)]
    preparation_ms: u64,
    /// How long to keep trying a callback the engine does not take (seconds).
    #[arg(long, env = "FOOD_CALLBACK_DEADLINE_S", default_value_t = 600)]
    callback_deadline_s: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    keyflow_sdk::init_logging("info");
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let config = StubConfig {
        engine_ingress: args.engine_ingress,
        preparation: Duration::from_millis(args.preparation_ms),
        callback_deadline: Duration::from_secs(args.callback_deadline_s),
    };
    serve(listener, config, keyflow_sdk::shutdown_signal())
        .await
        .context("serving the restaurant stub failed")
}
