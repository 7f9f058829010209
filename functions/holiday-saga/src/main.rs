//! Serves the functions over HTTP (work in progress).

use std::net::SocketAddr;

fn main() -> anyhow::Result<()> {
    let listen: SocketAddr = "0.0.0.0:1112".parse()?;
    let _ = listen;
    let _ = holiday_saga_functions::functions();
    Ok(())
}
