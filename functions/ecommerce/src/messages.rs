//! The application's vocabulary: function types, message types (JSON under `ecommerce/*`) and
//! the order-events egress.
//!
//! From outside (HTTP ingress, request-reply):
//! - to `ecommerce/ShoppingCart/<cart id>`: [`ADD_PRODUCT`] and [`REMOVE_PRODUCT`], answered
//!   with an [`ItemResult`]; [`CHECKOUT`], answered with a [`CheckoutResult`].
//! - to `ecommerce/Product/<product id>`: [`SET_PRODUCT`] (seeding), [`RESTOCK`] and
//!   [`GET_PRODUCT`], answered with a [`ProductInfo`].
//! - to `ecommerce/UserProfile/<user id>`: [`GET_PROFILE`], answered with a [`Profile`].
//!
//! Between the functions: [`RESERVE`] / [`RESERVE_RESULT`], [`RELEASE`], [`NOTIFY_SOLD`],
//! the delayed [`ORDER_PRODUCT`] to the restock, [`START_CHECKOUT`] / [`CHECKOUT_RESULT`],
//! [`GET_PROFILE`] / [`PROFILE`], [`PAY`] / [`PAYMENT_RESULT`] and [`APPEND_PURCHASE`].

use keyflow_sdk::{Type, TypeName};
use serde::{Deserialize, Serialize};

pub const NAMESPACE: &str = "ecommerce";

pub const SHOPPING_CART: TypeName = TypeName::new(NAMESPACE, "ShoppingCart");
pub const PRODUCT: TypeName = TypeName::new(NAMESPACE, "Product");
pub const USER_PROFILE: TypeName = TypeName::new(NAMESPACE, "UserProfile");
pub const CHECKOUT_FLOW: TypeName = TypeName::new(NAMESPACE, "CheckoutFlow");
pub const PAYMENT: TypeName = TypeName::new(NAMESPACE, "Payment");
pub const INVENTORY_RESTOCK: TypeName = TypeName::new(NAMESPACE, "InventoryRestock");

/// The Kafka egress (module.yaml) that order events go to.
pub const ORDER_EVENTS: TypeName = TypeName::new(NAMESPACE, "order-events");

pub const ADD_PRODUCT: Type<AddProduct> = Type::json("ecommerce/AddProduct");
pub const REMOVE_PRODUCT: Type<RemoveProduct> = Type::json("ecommerce/RemoveProduct");
pub const ITEM_RESULT: Type<ItemResult> = Type::json("ecommerce/ItemResult");
pub const CHECKOUT: Type<Checkout> = Type::json("ecommerce/Checkout");
pub const CHECKOUT_RESULT: Type<CheckoutResult> = Type::json("ecommerce/CheckoutResult");

pub const SET_PRODUCT: Type<SetProduct> = Type::json("ecommerce/SetProduct");
pub const RESTOCK: Type<Restock> = Type::json("ecommerce/Restock");
/// GetProduct carries nothing; its body is not read.
pub const GET_PRODUCT: &str = "ecommerce/GetProduct";
pub const PRODUCT_INFO: Type<ProductInfo> = Type::json("ecommerce/ProductInfo");

/// GetProfile carries nothing; its body is not read.
pub const GET_PROFILE: &str = "ecommerce/GetProfile";
pub const PROFILE: Type<Profile> = Type::json("ecommerce/Profile");

pub const RESERVE: Type<Reserve> = Type::json("ecommerce/Reserve");
pub const RESERVE_RESULT: Type<ReserveResult> = Type::json("ecommerce/ReserveResult");
pub const RELEASE: Type<Release> = Type::json("ecommerce/Release");
pub const NOTIFY_SOLD: Type<NotifySold> = Type::json("ecommerce/NotifySold");
pub const ORDER_PRODUCT: Type<OrderProduct> = Type::json("ecommerce/OrderProduct");
pub const START_CHECKOUT: Type<StartCheckout> = Type::json("ecommerce/StartCheckout");
pub const PAY: Type<Pay> = Type::json("ecommerce/Pay");
pub const PAYMENT_RESULT: Type<PaymentResult> = Type::json("ecommerce/PaymentResult");
pub const APPEND_PURCHASE: Type<Purchase> = Type::json("ecommerce/AppendPurchase");

/// The answer to an HTTP caller whose request a function cannot take: `{"error":"…"}`.
pub const ERROR: Type<ErrorReply> = Type::json("ecommerce/Error");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddProduct {
    /// The cart's owner; the first AddProduct of a cart sets it, later ones must match.
    pub user_id: String,
    pub product_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoveProduct {
    pub product_id: String,
}

/// The answer to AddProduct (`done`: one unit is now reserved in the cart) and RemoveProduct
/// (`done`: one unit left the cart and is available again).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemResult {
    pub product_id: String,
    pub done: bool,
    /// Why not, when `done` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Units of the product in the cart after the request.
    pub in_cart: u32,
}

/// Which stub should fail, to try the failure paths (the `fail` field of a Checkout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailAt {
    Shipment,
    Payment,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkout {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail: Option<FailAt>,
}

/// The outcome of a checkout: to the cart from the checkout flow, and to the HTTP caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckoutResult {
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_cents: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl CheckoutResult {
    pub fn failed(reason: impl Into<String>) -> Self {
        CheckoutResult {
            success: false,
            tracking_number: None,
            total_cents: None,
            reason: Some(reason.into()),
        }
    }
}

/// Seeding: the product's available quantity and price (units already reserved or sold are
/// kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetProduct {
    pub quantity: u32,
    pub price_cents: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Restock {
    pub quantity: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductInfo {
    pub product_id: String,
    /// Units available to reserve.
    pub quantity: u32,
    /// Units in carts, not sold yet.
    pub reserved: u32,
    pub sold: u32,
    pub price_cents: u64,
    /// A restock of the last unit is on its way.
    pub restock_pending: bool,
}

/// A cart asking for one unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reserve {
    pub cart_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReserveResult {
    pub reserved: bool,
    /// The price the unit was reserved at.
    pub price_cents: u64,
}

/// Units a cart gives back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub quantity: u32,
}

/// Reserved units that were paid for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotifySold {
    pub quantity: u32,
}

/// The product to its restock: order `quantity` units from the supplier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderProduct {
    pub quantity: u32,
}

/// Units of one product in a cart, at the price they were reserved at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Line {
    pub product_id: String,
    pub quantity: u32,
    pub price_cents: u64,
}

/// The cart to its checkout flow (same id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartCheckout {
    pub user_id: String,
    pub lines: Vec<Line>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail: Option<FailAt>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub user_id: String,
    pub purchases: Vec<Purchase>,
}

/// One order in a user's purchase history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Purchase {
    pub cart_id: String,
    pub lines: Vec<Line>,
    pub total_cents: u64,
    pub tracking_number: String,
}

/// The checkout flow to the payment keyed `<user id>.<cart id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pay {
    pub amount_cents: u64,
    /// Decline this payment (failure injection).
    #[serde(default)]
    pub decline: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentResult {
    pub paid: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

/// An order event on the egress topic, keyed by cart id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderEvent {
    /// `CHECKOUT_SUCCEEDED` or `CHECKOUT_FAILED`.
    pub event: String,
    pub cart_id: String,
    pub user_id: String,
    pub lines: Vec<Line>,
    pub total_cents: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

pub const CHECKOUT_SUCCEEDED: &str = "CHECKOUT_SUCCEEDED";
pub const CHECKOUT_FAILED: &str = "CHECKOUT_FAILED";

/// An address kept in state (who to answer later).
pub use keyflow_sdk::SavedAddress as Caller;
