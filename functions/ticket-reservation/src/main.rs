//! Serves the ticket-reservation functions (`ticketing/UserSession`, `ticketing/TicketDb`)
//! over HTTP.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use ticket_reservation_functions::{functions, Config};

/// Serves the ticket-reservation functions to a StateFun-compatible runtime.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on for the runtime's requests.
    #[arg(long, env = "TICKETING_LISTEN", default_value = "0.0.0.0:1109")]
    listen: SocketAddr,
    /// How long a reservation lasts when an AddTicket does not say (milliseconds).
    #[arg(long, env = "TICKETING_RESERVATION_MS", default_value_t = 15 * 60 * 1000)]
    reservation_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    keyflow_sdk::init_logging("info");
    let args = Args::parse();
    let config = Config {
        reservation: Duration::from_millis(args.reservation_ms),
    };
    tracing::info!(reservation = ?config.reservation, "ticket reservation functions");
    keyflow_sdk::serve_until_signal(args.listen, functions(config))
        .await
        .context("serving the functions failed")
}
