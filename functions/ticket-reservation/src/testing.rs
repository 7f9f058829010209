//! The SDK's runtime stand-in ([`keyflow_sdk::testing::TestRuntime`]) serving this crate's
//! functions.

pub use keyflow_sdk::testing::TestRuntime as Harness;

use crate::Config;

pub fn harness() -> Harness {
    harness_with(Config::default())
}

pub fn harness_with(config: Config) -> Harness {
    Harness::new(crate::functions(config))
}
