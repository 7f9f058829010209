//! `ecommerce/Product`, keyed by product id: units available, reserved by carts and sold, and
//! the price. All messages to one product run one at a time (the id is the key), so a unit is
//! reserved by one cart only and the available count never goes below zero, however many
//! carts ask at once.
//!
//! Invariant: `quantity + reserved + sold` changes only by seeding and restocks. When the last
//! unit sells (nothing available, nothing reserved), one restock is ordered: a delayed
//! `ecommerce/OrderProduct` to `ecommerce/InventoryRestock/<id>`, at most one pending.

use keyflow_sdk::{Context, Error, FunctionSpec, Message, Type, ValueSpec};
use serde::{Deserialize, Serialize};

use crate::messages::{
    OrderProduct, ProductInfo, ReserveResult, CHECKOUT_FLOW, GET_PRODUCT, INVENTORY_RESTOCK,
    NAMESPACE, NOTIFY_SOLD, ORDER_PRODUCT, PRODUCT, PRODUCT_INFO, RELEASE, RESERVE, RESERVE_RESULT,
    RESTOCK, SET_PRODUCT, SHOPPING_CART,
};
use crate::{from, reject, unknown, Config};

/// No state means a product nobody seeded: nothing to reserve.
pub const STOCK: ValueSpec<Stock> = ValueSpec::new("stock", Type::json("ecommerce/Stock"));

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stock {
    /// Units available to reserve.
    pub quantity: u32,
    /// Units held by carts.
    pub reserved: u32,
    pub sold: u32,
    pub price_cents: u64,
    /// A restock is ordered and has not arrived yet.
    pub restock_pending: bool,
}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(PRODUCT).with_state(&STOCK)
}

pub fn handle(config: &Config, ctx: &mut Context, msg: Message) -> Result<(), Error> {
    let product_id = ctx.self_address().id.clone();
    let mut stock = ctx.storage().get(&STOCK)?.unwrap_or_default();
    let before = stock.clone();

    if msg.is(&RESERVE) {
        if !from(ctx, &SHOPPING_CART, None) {
            return reject(ctx, format!("a Reserve must come from {SHOPPING_CART}"));
        }
        let cart = msg.get(&RESERVE)?.cart_id;
        let reserved = stock.quantity > 0;
        if reserved {
            stock.quantity -= 1;
            stock.reserved += 1;
        }
        tracing::debug!(product = %product_id, %cart, reserved, "reserve");
        ctx.reply(Message::of(
            &RESERVE_RESULT,
            &ReserveResult {
                reserved,
                price_cents: stock.price_cents,
            },
        )?)?;
    } else if msg.is(&RELEASE) {
        if !from(ctx, &SHOPPING_CART, None) {
            return reject(ctx, format!("a Release must come from {SHOPPING_CART}"));
        }
        let n = held(&stock, msg.get(&RELEASE)?.quantity, &product_id);
        stock.reserved -= n;
        stock.quantity += n;
    } else if msg.is(&NOTIFY_SOLD) {
        if !from(ctx, &CHECKOUT_FLOW, None) {
            return reject(ctx, format!("a NotifySold must come from {CHECKOUT_FLOW}"));
        }
        let n = held(&stock, msg.get(&NOTIFY_SOLD)?.quantity, &product_id);
        stock.reserved -= n;
        stock.sold += n;
        if n > 0 && stock.quantity == 0 && stock.reserved == 0 && !stock.restock_pending {
            tracing::info!(product = %product_id, delay = ?config.restock_delay, "last unit sold: restock ordered");
            ctx.send_after(
                config.restock_delay,
                INVENTORY_RESTOCK.address(&product_id),
                Message::of(&ORDER_PRODUCT, &OrderProduct { quantity: 1 })?,
            );
            stock.restock_pending = true;
        }
    } else if msg.is(&RESTOCK) {
        let quantity = match msg.get(&RESTOCK) {
            Ok(r) => r.quantity,
            Err(e) => return reject(ctx, e.to_string()),
        };
        stock.quantity = stock.quantity.saturating_add(quantity);
        if from(ctx, &INVENTORY_RESTOCK, Some(&product_id)) {
            stock.restock_pending = false;
            tracing::info!(product = %product_id, quantity, "restocked");
        } else {
            answer(ctx, &product_id, &stock)?;
        }
    } else if msg.is(&SET_PRODUCT) {
        let set = match msg.get(&SET_PRODUCT) {
            Ok(set) => set,
            Err(e) => return reject(ctx, e.to_string()),
        };
        stock.quantity = set.quantity;
        stock.price_cents = set.price_cents;
        answer(ctx, &product_id, &stock)?;
    } else if msg.typename() == GET_PRODUCT {
        answer(ctx, &product_id, &stock)?;
    } else {
        return unknown(
            ctx,
            &msg,
            &[SET_PRODUCT.typename(), RESTOCK.typename(), GET_PRODUCT],
        );
    }

    if stock != before {
        ctx.storage().set(&STOCK, &stock)?;
    }
    Ok(())
}

/// How many of `n` units given back or sold the carts really hold (a correct cart never
/// gives back more than it reserved; the count must not go negative if one did).
fn held(stock: &Stock, n: u32, product_id: &str) -> u32 {
    if n > stock.reserved {
        tracing::warn!(product = %product_id, n, reserved = stock.reserved, "more units given back than reserved");
    }
    n.min(stock.reserved)
}

/// The product's numbers to a caller from outside (none to our own functions).
fn answer(ctx: &mut Context, product_id: &str, stock: &Stock) -> Result<(), Error> {
    match ctx.caller() {
        Some(c) if c.namespace != NAMESPACE => ctx.reply(Message::of(
            &PRODUCT_INFO,
            &ProductInfo {
                product_id: product_id.to_owned(),
                quantity: stock.quantity,
                reserved: stock.reserved,
                sold: stock.sold,
                price_cents: stock.price_cents,
                restock_pending: stock.restock_pending,
            },
        )?),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::messages::{NotifySold, Release, Reserve, Restock, SetProduct};
    use crate::testing::{harness, harness_with, http, Harness};
    use keyflow_sdk::TypedValue;

    fn seed(h: &mut Harness, product: &str, quantity: u32) -> ProductInfo {
        let out = h
            .run(
                &PRODUCT.address(product),
                Some(&http(0)),
                Message::of(
                    &SET_PRODUCT,
                    &SetProduct {
                        quantity,
                        price_cents: 250,
                    },
                )
                .unwrap(),
            )
            .outside;
        out[0].1.get(&PRODUCT_INFO).unwrap()
    }

    fn reserve(h: &mut Harness, product: &str, cart: &str) -> bool {
        let r = h.call(
            &PRODUCT.address(product),
            Some(&SHOPPING_CART.address(cart)),
            Message::of(
                &RESERVE,
                &Reserve {
                    cart_id: cart.into(),
                },
            )
            .unwrap(),
        );
        let answer = Message::from(r.outgoing_messages[0].argument.clone().unwrap());
        answer.get(&RESERVE_RESULT).unwrap().reserved
    }

    fn sold(h: &mut Harness, product: &str, n: u32) {
        h.call(
            &PRODUCT.address(product),
            Some(&CHECKOUT_FLOW.address("c")),
            Message::of(&NOTIFY_SOLD, &NotifySold { quantity: n }).unwrap(),
        );
    }

    fn stock(h: &Harness, product: &str) -> Stock {
        h.json_state(&PRODUCT.address(product), STOCK.name())
            .unwrap_or_default()
    }

    #[test]
    fn reserving_stops_at_zero_and_release_gives_back() {
        let mut h = harness();
        assert_eq!(seed(&mut h, "p", 2).quantity, 2);
        assert!(reserve(&mut h, "p", "c1"));
        assert!(reserve(&mut h, "p", "c2"));
        assert!(!reserve(&mut h, "p", "c3"));
        assert_eq!(stock(&h, "p").quantity, 0);
        assert_eq!(stock(&h, "p").reserved, 2);
        h.call(
            &PRODUCT.address("p"),
            Some(&SHOPPING_CART.address("c1")),
            Message::of(&RELEASE, &Release { quantity: 1 }).unwrap(),
        );
        assert_eq!((stock(&h, "p").quantity, stock(&h, "p").reserved), (1, 1));
        assert!(reserve(&mut h, "p", "c3"));
        // An unknown product has nothing to reserve.
        assert!(!reserve(&mut h, "nothing", "c1"));
    }

    #[test]
    fn the_last_unit_sold_orders_one_restock_after_the_delay() {
        let mut h = harness_with(Config {
            restock_delay: Duration::from_secs(2),
            ..Config::default()
        });
        seed(&mut h, "p", 2);
        assert!(reserve(&mut h, "p", "c1"));
        assert!(reserve(&mut h, "p", "c2"));
        sold(&mut h, "p", 1);
        assert!(h.timers.is_empty(), "c2 still holds a unit");
        sold(&mut h, "p", 1);
        assert_eq!(h.timers.len(), 1);
        assert_eq!(h.timers[0].delay, Duration::from_secs(2));
        assert_eq!(h.timers[0].to, INVENTORY_RESTOCK.address("p"));
        assert!(stock(&h, "p").restock_pending);
        // A repeated notice orders nothing more.
        sold(&mut h, "p", 1);
        assert_eq!(h.timers.len(), 1);
        h.fire_all(10);
        let s = stock(&h, "p");
        assert_eq!(
            (s.quantity, s.reserved, s.sold, s.restock_pending),
            (1, 0, 2, false)
        );
        assert!(reserve(&mut h, "p", "c3"));
    }

    #[test]
    fn outside_callers_can_seed_restock_and_read_but_not_reserve() {
        let mut h = harness();
        seed(&mut h, "p", 1);
        let out = h
            .run(
                &PRODUCT.address("p"),
                Some(&http(1)),
                Message::of(&RESTOCK, &Restock { quantity: 4 }).unwrap(),
            )
            .outside;
        assert_eq!(out[0].1.get(&PRODUCT_INFO).unwrap().quantity, 5);
        let out = h
            .run(
                &PRODUCT.address("p"),
                Some(&http(2)),
                Message::from(TypedValue::of(GET_PRODUCT, b"".to_vec())),
            )
            .outside;
        let info = out[0].1.get(&PRODUCT_INFO).unwrap();
        assert_eq!((info.quantity, info.price_cents), (5, 250));
        let reserve = Message::of(
            &RESERVE,
            &Reserve {
                cart_id: "c".into(),
            },
        )
        .unwrap();
        let out = h
            .run(&PRODUCT.address("p"), Some(&http(3)), reserve)
            .outside;
        let error = out[0].1.get(&crate::messages::ERROR).unwrap().error;
        assert!(error.contains("must come from"), "{error}");
        assert_eq!(stock(&h, "p").quantity, 5);
    }
}
