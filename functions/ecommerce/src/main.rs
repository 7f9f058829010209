//! Serves the e-commerce store functions (`ecommerce/*`) over HTTP.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use ecommerce_functions::{functions, Config, DEFAULT_ORDER_EVENTS_TOPIC};

/// Serves the e-commerce store functions to a StateFun-compatible runtime.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on for the runtime's requests.
    #[arg(long, env = "ECOMMERCE_LISTEN", default_value = "0.0.0.0:1110")]
    listen: SocketAddr,
    /// How long after a product's last unit sold one unit is restocked (milliseconds).
    #[arg(long, env = "ECOMMERCE_RESTOCK_DELAY_MS", default_value_t = 15_000)]
    restock_delay_ms: u64,
    /// The Kafka topic order events go to (through the egress `ecommerce/order-events`).
    #[arg(long, env = "ECOMMERCE_ORDER_EVENTS_TOPIC", default_value = DEFAULT_ORDER_EVENTS_TOPIC)]
    order_events_topic: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    keyflow_sdk::init_logging("info");
    let args = Args::parse();
    let config = Config {
        restock_delay: Duration::from_millis(args.restock_delay_ms),
        order_events_topic: args.order_events_topic,
    };
    tracing::info!(restock_delay = ?config.restock_delay, topic = %config.order_events_topic, "e-commerce store functions");
    keyflow_sdk::serve_until_signal(args.listen, functions(config))
        .await
        .context("serving the functions failed")
}
