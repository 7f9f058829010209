//! Serves the functions over HTTP (work in progress).

use std::net::SocketAddr;

fn main() -> anyhow::Result<()> {
    let listen: SocketAddr = "0.0.0.0:1110".parse()?;
    let _ = listen;
    let _ = ecommerce_functions::functions();
    Ok(())
}
