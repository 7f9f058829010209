//! The SDK's runtime stand-in ([`keyflow_sdk::testing::TestRuntime`]) serving this crate's
//! functions.

pub use keyflow_sdk::testing::TestRuntime as Harness;
use keyflow_sdk::Address;

use crate::Config;

pub fn harness() -> Harness {
    harness_with(Config::default())
}

pub fn harness_with(config: Config) -> Harness {
    Harness::new(crate::functions(config))
}

/// The `n`th HTTP ingress caller.
pub fn http(n: u32) -> Address {
    Address::new("keyflow.ingress", "http", format!("w1~m{n}"))
}
