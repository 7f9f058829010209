//! The shopping-cart functions: `com.example/stock` and
//! `com.example/user-shopping-cart` behind one HTTP endpoint (see README.md).
//!
//! Layout:
//! - `messages`: function types, message types, egress ids and topics.
//! - `stock`: the stock of one item.
//! - `cart`: one user's cart, its pending stock requests and deferred commands.

pub mod cart;
pub mod messages;
pub mod stock;
#[cfg(test)]
mod testing;

use keyflow_sdk::StatefulFunctions;

/// Both functions of the application, ready to serve.
pub fn functions() -> StatefulFunctions {
    StatefulFunctions::new()
        .with(stock::spec(), stock::handle)
        .with(cart::spec(), cart::handle)
}
