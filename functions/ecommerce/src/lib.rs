//! The e-commerce store application's functions (carts, products, user profiles, checkout). (work in progress)

pub fn functions() -> keyflow_sdk::StatefulFunctions {
    keyflow_sdk::StatefulFunctions::new()
}
