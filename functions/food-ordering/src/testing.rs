//! The SDK's runtime stand-in ([`keyflow_sdk::testing::TestRuntime`]) serving this crate's
//! functions, with a fake restaurant that records its calls.

use std::sync::{Arc, Mutex};

pub use keyflow_sdk::testing::TestRuntime as Harness;

use crate::restaurant::{PrepareRequest, Restaurant};
use crate::Config;

/// A restaurant that takes every order (or refuses while `down`) and remembers the requests.
#[derive(Debug, Default)]
pub struct FakeRestaurant {
    pub requests: Mutex<Vec<PrepareRequest>>,
    pub down: std::sync::atomic::AtomicBool,
}

impl Restaurant for FakeRestaurant {
    fn prepare(&self, request: &PrepareRequest) -> Result<(), String> {
        if self.down.load(std::sync::atomic::Ordering::Relaxed) {
            return Err("the restaurant is closed".into());
        }
        self.requests.lock().unwrap().push(request.clone());
        Ok(())
    }
}

pub fn harness() -> (Harness, Arc<FakeRestaurant>) {
    let restaurant = Arc::new(FakeRestaurant::default());
    let config = Config {
        restaurant: restaurant.clone(),
        ..Config::default()
    };
    (Harness::new(crate::functions(config)), restaurant)
}
