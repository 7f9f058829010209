//! Simulated drivers' mobile apps: start working, follow the job the driver's twin holds, and
//! publish locations to Kafka.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use food_ordering_functions::geo::DEMO_REGION;
use food_ordering_functions::simulator::{run, SimConfig};

/// The food-ordering application's driver simulator.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The engine workers' HTTP ingress addresses, comma-separated.
    #[arg(
        long,
        env = "FOOD_ENGINE_INGRESS",
        default_value = "127.0.0.1:8180,127.0.0.1:8181",
        value_delimiter = ','
    )]
    engine_ingress: Vec<String>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KEYFLOW_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// The topic of driver location updates.
    #[arg(long, env = "FOOD_DRIVER_TOPIC", default_value = "driver-updates")]
    topic: String,
    /// The driver ids, comma-separated.
    #[arg(
        long,
        env = "FOOD_DRIVERS",
        default_value = "driver-1,driver-2,driver-3",
        value_delimiter = ','
    )]
    drivers: Vec<String>,
    /// The region the drivers work in.
    #[arg(long, env = "FOOD_REGION", default_value = DEMO_REGION)]
    region: String,
    /// Driving speed, metres per second (fast by default, so that a demo takes seconds).
    #[arg(long, env = "FOOD_DRIVER_SPEED_MPS", default_value_t = 500.0)]
    speed_mps: f64,
    /// How often drivers move and report (milliseconds).
    #[arg(long, env = "FOOD_DRIVER_TICK_MS", default_value_t = 500)]
    tick_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    keyflow_sdk::init_logging("info,librdkafka=warn,rdkafka=warn");
    let args = Args::parse();
    let config = SimConfig {
        engine_ingress: args.engine_ingress,
        bootstrap: args.bootstrap,
        topic: args.topic,
        drivers: args.drivers,
        region: args.region,
        speed_mps: args.speed_mps,
        tick: Duration::from_millis(args.tick_ms),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let sim = {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || run(&config, &stop))
    };
    keyflow_sdk::shutdown_signal().await;
    stop.store(true, Ordering::Relaxed);
    sim.await
        .context("the simulator panicked")?
        .context("the simulator failed")
}
