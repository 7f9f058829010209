//! The holiday trip saga application's functions (trips, flights, car rentals, payments). (work in progress)

pub fn functions() -> keyflow_sdk::StatefulFunctions {
    keyflow_sdk::StatefulFunctions::new()
}
