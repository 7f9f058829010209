//! The food-ordering application's functions (order workflow, delivery manager, driver twins), its restaurant stub and driver simulator. (work in progress)

pub fn functions() -> keyflow_sdk::StatefulFunctions {
    keyflow_sdk::StatefulFunctions::new()
}
