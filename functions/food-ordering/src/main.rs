//! Serves the food-ordering functions (`food/order`, `food/payment`, `food/delivery-manager`,
//! `food/driver-delivery-matcher`, `food/driver`) over HTTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use food_ordering_functions::restaurant::HttpRestaurant;
use food_ordering_functions::{functions, Config, DEFAULT_EVENTS_TOPIC, DEFAULT_RESTAURANT_URL};

/// Serves the food-ordering functions to a StateFun-compatible runtime.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on for the runtime's requests.
    #[arg(long, env = "FOOD_LISTEN", default_value = "0.0.0.0:1111")]
    listen: SocketAddr,
    /// The restaurant point-of-sale (the `food-restaurant` stub) the orders go to.
    #[arg(long, env = "FOOD_RESTAURANT_URL", default_value = DEFAULT_RESTAURANT_URL)]
    restaurant_url: String,
    /// The Kafka topic of order status events (written through the egress `food/order-events`).
    #[arg(long, env = "FOOD_EVENTS_TOPIC", default_value = DEFAULT_EVENTS_TOPIC)]
    events_topic: String,
    /// How long an order in preparation waits for the restaurant's callback before asking
    /// again (milliseconds).
    #[arg(long, env = "FOOD_PREPARATION_TIMEOUT_MS", default_value_t = 60_000)]
    preparation_timeout_ms: u64,
    /// The payment stub declines orders whose totalCost is above this.
    #[arg(long, env = "FOOD_PAYMENT_LIMIT", default_value_t = 1000.0)]
    payment_limit: f64,
    /// A driver's assumed speed for ETAs (metres per second).
    #[arg(long, env = "FOOD_ETA_SPEED_MPS", default_value_t = 8.0)]
    eta_speed_mps: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    keyflow_sdk::init_logging("info");
    let args = Args::parse();
    let config = Config {
        events_topic: args.events_topic,
        restaurant: Arc::new(HttpRestaurant::new(args.restaurant_url)),
        restaurant_retry: Duration::from_secs(1),
        preparation_timeout: Duration::from_millis(args.preparation_timeout_ms),
        payment_limit: args.payment_limit,
        eta_speed_mps: args.eta_speed_mps,
        ..Config::default()
    };
    tracing::info!(?config, "food-ordering functions");
    keyflow_sdk::serve_until_signal(args.listen, functions(config))
        .await
        .context("serving the functions failed")
}
