//! The SDK's runtime stand-in ([`keyflow_sdk::testing::TestRuntime`]) serving this crate's
//! functions.

pub use keyflow_sdk::testing::TestRuntime as Harness;

pub fn harness() -> Harness {
    Harness::new(crate::functions())
}
