//! Serves the functions over HTTP (work in progress).

use std::net::SocketAddr;

fn main() -> anyhow::Result<()> {
    let listen: SocketAddr = "0.0.0.0:1111".parse()?;
    let _ = listen;
    let _ = food_ordering_functions::functions();
    Ok(())
}
