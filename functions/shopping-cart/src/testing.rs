//! The SDK's runtime stand-in ([`keyflow_sdk::testing::TestRuntime`]) serving this crate's
//! functions, and helpers the tests share.

use keyflow_sdk::protocol::builtin;
use keyflow_sdk::protocol::reqreply::from_function::InvocationResponse;
pub use keyflow_sdk::testing::TestRuntime as Harness;
use keyflow_sdk::TypedValue;

pub fn harness() -> Harness {
    Harness::new(crate::functions())
}

pub fn int(value: i32) -> TypedValue {
    builtin::encode_int(value)
}

/// The egress records of a response as (egress id, topic, key, value as text).
pub fn kafka_records(response: &InvocationResponse) -> Vec<(String, String, String, String)> {
    keyflow_sdk::testing::kafka_records(response)
        .into_iter()
        .map(|r| (r.egress, r.topic, r.key, r.value))
        .collect()
}
