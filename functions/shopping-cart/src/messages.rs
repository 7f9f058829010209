//! The application's vocabulary: function types, message types (JSON under `com.example/*`,
//! the field names of the original example) and the egresses with their Kafka topics.

use keyflow_sdk::{Type, TypeName};
use serde::{Deserialize, Serialize};

pub const STOCK: TypeName = TypeName::new("com.example", "stock");
pub const USER_SHOPPING_CART: TypeName = TypeName::new("com.example", "user-shopping-cart");

/// Exactly-once egress for receipts; records go to [`RECEIPTS_TOPIC`] keyed by user id.
pub const RECEIPTS: TypeName = TypeName::new("com.example", "receipts");
pub const RECEIPTS_TOPIC: &str = "receipts";

/// Egress for what a user must hear about besides receipts (an item that was out of stock);
/// records go to [`CART_EVENTS_TOPIC`] keyed by user id.
pub const CART_EVENTS: TypeName = TypeName::new("com.example", "cart-events");
pub const CART_EVENTS_TOPIC: &str = "cart-events";

pub const ADD_TO_CART: Type<AddToCart> = Type::json("com.example/AddToCart");
pub const CLEAR_CART: Type<ClearCart> = Type::json("com.example/ClearCart");
pub const CHECKOUT: Type<Checkout> = Type::json("com.example/Checkout");
pub const RESTOCK_ITEM: Type<RestockItem> = Type::json("com.example/RestockItem");
pub const REQUEST_ITEM: Type<RequestItem> = Type::json("com.example/RequestItem");
pub const ITEM_AVAILABILITY: Type<ItemAvailability> = Type::json("com.example/ItemAvailability");

// The user and item ids in the bodies repeat the Kafka record key, which already chose the
// target address; the functions go by their address, so a body that disagrees cannot put
// an item into another user's cart.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddToCart {
    pub user_id: String,
    pub item_id: String,
    pub quantity: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClearCart {
    pub user_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkout {
    pub user_id: String,
}

/// Adds stock: from the `restock-items` topic, and from a cart that returns its items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestockItem {
    pub item_id: String,
    pub quantity: u32,
}

/// A cart asking the stock to hand over `quantity` units; answered by [`ItemAvailability`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestItem {
    pub quantity: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemAvailability {
    pub status: Availability,
    pub quantity: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Availability {
    /// The units were taken from the stock and belong to the cart now.
    InStock,
    /// Not enough units; the stock is unchanged.
    OutOfStock,
}

/// The value of a record on [`RECEIPTS_TOPIC`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Receipt {
    pub user_id: String,
    /// One `item: quantity` line per item, sorted by item id.
    pub details: String,
}

/// The value of a record on [`CART_EVENTS_TOPIC`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CartEvent {
    pub user_id: String,
    pub item_id: String,
    pub status: Availability,
    pub quantity: u32,
}
