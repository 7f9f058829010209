//! The e-commerce store functions (Restate's e-commerce example in the StateFun model): carts
//! that reserve product units, a checkout flow (profile, shipment, payment, email, purchase
//! history, sold notices), and a delayed restock of a product's last unit, behind one HTTP
//! endpoint. See `docs/apps/ecommerce.md` for the HTTP shapes.
//!
//! Where the original awaits an RPC, a function sends a request message, keeps the waiting
//! step in its state, and continues when the answer arrives.
//!
//! Layout:
//! - `messages`: function types, message types and the order-events egress.
//! - `cart`: `ecommerce/ShoppingCart`, per cart: owner, status, reserved units, waiting callers.
//! - `product`: `ecommerce/Product`, per product: available, reserved and sold units, price.
//! - `restock`: `ecommerce/InventoryRestock`, per product: the supplier stub.
//! - `profile`: `ecommerce/UserProfile`, per user: the purchase history.
//! - `checkout`: `ecommerce/CheckoutFlow`, per cart: one checkout's steps, with the shipment
//!   and email stubs and the order events.
//! - `payment`: `ecommerce/Payment`, per `<user id>.<cart id>`: the idempotent payment stub.

pub mod cart;
pub mod checkout;
pub mod messages;
pub mod payment;
pub mod product;
pub mod profile;
pub mod restock;
#[cfg(test)]
mod testing;

use std::sync::Arc;
use std::time::Duration;

use keyflow_sdk::{Context, Error, Message, StatefulFunctions};

use messages::{ErrorReply, ERROR, NAMESPACE};

/// Settings of the function service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// How long after the last unit of a product sold its restock of one unit arrives.
    pub restock_delay: Duration,
    /// The Kafka topic order events are written to (through the `ecommerce/order-events`
    /// egress).
    pub order_events_topic: String,
}

/// The original's 15 seconds.
pub const DEFAULT_RESTOCK_DELAY: Duration = Duration::from_secs(15);
pub const DEFAULT_ORDER_EVENTS_TOPIC: &str = "order-events";

impl Default for Config {
    fn default() -> Self {
        Config {
            restock_delay: DEFAULT_RESTOCK_DELAY,
            order_events_topic: DEFAULT_ORDER_EVENTS_TOPIC.into(),
        }
    }
}

/// Every function of the application, ready to serve.
pub fn functions(config: Config) -> StatefulFunctions {
    let config = Arc::new(config);
    let (for_product, for_checkout) = (config.clone(), config);
    StatefulFunctions::new()
        .with(cart::spec(), cart::handle)
        .with(product::spec(), move |ctx, msg| {
            product::handle(&for_product, ctx, msg)
        })
        .with(restock::spec(), restock::handle)
        .with(profile::spec(), profile::handle)
        .with(checkout::spec(), move |ctx, msg| {
            checkout::handle(&for_checkout, ctx, msg)
        })
        .with(payment::spec(), payment::handle)
}

/// A request a function cannot take. From outside (the HTTP ingress) the caller hears why as
/// an `ecommerce/Error`; without a caller it is logged and dropped. Failing instead would make
/// the runtime retry the same bad message until its call timeout. From one of our own
/// functions it is a bug, and an error (answering would bounce between the two).
pub(crate) fn reject(ctx: &mut Context, reason: String) -> Result<(), Error> {
    match ctx.caller() {
        Some(caller) if caller.namespace == NAMESPACE => Err(Error::custom(reason)),
        Some(_) => {
            tracing::warn!(address = %ctx.self_address(), "rejected: {reason}");
            ctx.reply(Message::of(&ERROR, &ErrorReply { error: reason })?)
        }
        None => {
            tracing::warn!(address = %ctx.self_address(), "dropped: {reason}");
            Ok(())
        }
    }
}

/// The message `msg` does not belong to `function`.
pub(crate) fn unknown(ctx: &mut Context, msg: &Message, expected: &[&str]) -> Result<(), Error> {
    let function = ctx.self_address().function_type();
    reject(
        ctx,
        format!(
            "{function} does not handle `{}` messages; send {}",
            msg.typename(),
            expected.join(", ")
        ),
    )
}

/// Whether the current message came from function type `ty` (and, with `id`, that address).
pub(crate) fn from(ctx: &Context, ty: &keyflow_sdk::TypeName, id: Option<&str>) -> bool {
    ctx.caller().is_some_and(|c| {
        ty.matches(c)
            && match id {
                Some(id) => c.id == id,
                None => true,
            }
    })
}
