//! `ecommerce/ShoppingCart`, keyed by cart id: the cart's owner, its status and the units it
//! holds reserved, and the callers waiting for an answer.
//!
//! AddProduct asks the product for one unit (`ecommerce/Reserve`) and keeps the caller in
//! `pending`; the product's answer completes the step (the unit joins the cart, or the caller
//! hears why not). RemoveProduct gives one unit back at once. Checkout hands the cart's lines
//! to `ecommerce/CheckoutFlow/<cart id>` and waits (status `CHECKING_OUT`) for its
//! `ecommerce/CheckoutResult`: success closes the cart (`CHECKED_OUT`, a later Checkout
//! answers the same result); failure gives every reserved unit back and reopens an empty
//! cart. While a checkout runs or after it, no unit enters the cart: a reservation that
//! arrives then is given back at once.

use std::collections::{BTreeMap, VecDeque};

use keyflow_sdk::{Context, Error, FunctionSpec, Message, Type, ValueSpec};
use serde::{Deserialize, Serialize};

use crate::messages::{
    Caller, Checkout, CheckoutResult, ErrorReply, ItemResult, Line, Release, Reserve,
    StartCheckout, ADD_PRODUCT, CHECKOUT, CHECKOUT_FLOW, CHECKOUT_RESULT, ERROR, ITEM_RESULT,
    PRODUCT, RELEASE, REMOVE_PRODUCT, RESERVE, RESERVE_RESULT, SHOPPING_CART, START_CHECKOUT,
};
use crate::{from, reject, unknown};

pub const CART: ValueSpec<Cart> = ValueSpec::new("cart", Type::json("ecommerce/Cart"));
pub const PENDING: ValueSpec<Pending> =
    ValueSpec::new("pending", Type::json("ecommerce/PendingAdds"));

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    #[default]
    Open,
    CheckingOut,
    CheckedOut,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cart {
    pub status: Status,
    /// Set by the first AddProduct.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Product id to the units reserved for this cart.
    pub items: BTreeMap<String, Item>,
    /// Who waits for the running checkout's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkout_caller: Option<Caller>,
    /// The successful checkout's answer, repeated to a later Checkout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<CheckoutResult>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Item {
    pub quantity: u32,
    pub price_cents: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// Per product id, who waits for each Reserve still unanswered, oldest first (a product
    /// answers one cart's requests in order). `None`: a request without a caller.
    pub adds: BTreeMap<String, VecDeque<Option<Caller>>>,
}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(SHOPPING_CART)
        .with_state(&CART)
        .with_state(&PENDING)
}

pub fn handle(ctx: &mut Context, msg: Message) -> Result<(), Error> {
    let cart_id = ctx.self_address().id.clone();
    let mut cart = ctx.storage().get(&CART)?.unwrap_or_default();
    let mut pending = ctx.storage().get(&PENDING)?.unwrap_or_default();
    let (cart0, pending0) = (cart.clone(), pending.clone());

    if msg.is(&ADD_PRODUCT) {
        let add = match msg.get(&ADD_PRODUCT) {
            Ok(add) if !add.product_id.is_empty() && !add.user_id.is_empty() => add,
            Ok(_) => {
                return reject(
                    ctx,
                    "AddProduct needs a non-empty `userId` and `productId`".into(),
                )
            }
            Err(e) => return reject(ctx, e.to_string()),
        };
        let refused = match (&cart.user_id, cart.status) {
            (Some(owner), _) if *owner != add.user_id => {
                Some(format!("cart {cart_id} belongs to another user"))
            }
            (_, Status::Open) => None,
            (_, status) => Some(closed(status)),
        };
        if let Some(reason) = refused {
            let in_cart = in_cart(&cart, &add.product_id);
            answer_item(ctx, &add.product_id, false, Some(reason), in_cart)?;
        } else {
            cart.user_id = Some(add.user_id);
            ctx.send(
                PRODUCT.address(&add.product_id),
                Message::of(
                    &RESERVE,
                    &Reserve {
                        cart_id: cart_id.clone(),
                    },
                )?,
            );
            let caller = ctx.caller().map(Caller::from);
            pending
                .adds
                .entry(add.product_id)
                .or_default()
                .push_back(caller);
        }
    } else if msg.is(&RESERVE_RESULT) {
        let product_id = match ctx.caller() {
            Some(c) if PRODUCT.matches(c) => c.id.clone(),
            _ => return reject(ctx, format!("a ReserveResult must come from {PRODUCT}")),
        };
        let result = msg.get(&RESERVE_RESULT)?;
        let caller = match pending.adds.get_mut(&product_id) {
            Some(queue) => {
                let caller = queue.pop_front().flatten();
                if queue.is_empty() {
                    pending.adds.remove(&product_id);
                }
                caller
            }
            None => {
                tracing::warn!(cart = %cart_id, product = %product_id, "reservation answer without a pending AddProduct");
                None
            }
        };
        let (done, reason) = if !result.reserved {
            (false, Some("out of stock".to_owned()))
        } else if cart.status != Status::Open {
            ctx.send(
                PRODUCT.address(&product_id),
                Message::of(&RELEASE, &Release { quantity: 1 })?,
            );
            (false, Some(closed(cart.status)))
        } else {
            let item = cart.items.entry(product_id.clone()).or_insert(Item {
                quantity: 0,
                price_cents: result.price_cents,
            });
            item.quantity += 1;
            item.price_cents = result.price_cents;
            (true, None)
        };
        if let Some(caller) = caller {
            let in_cart = in_cart(&cart, &product_id);
            ctx.send(
                caller.address(),
                item_result(&product_id, done, reason, in_cart)?,
            );
        }
    } else if msg.is(&REMOVE_PRODUCT) {
        let product_id = match msg.get(&REMOVE_PRODUCT) {
            Ok(r) if !r.product_id.is_empty() => r.product_id,
            Ok(_) => return reject(ctx, "RemoveProduct needs a non-empty `productId`".into()),
            Err(e) => return reject(ctx, e.to_string()),
        };
        let reason = if cart.status != Status::Open {
            Some(closed(cart.status))
        } else if let Some(item) = cart.items.get_mut(&product_id) {
            item.quantity -= 1;
            if item.quantity == 0 {
                cart.items.remove(&product_id);
            }
            ctx.send(
                PRODUCT.address(&product_id),
                Message::of(&RELEASE, &Release { quantity: 1 })?,
            );
            None
        } else {
            Some(format!("{product_id} is not in the cart"))
        };
        let in_cart = in_cart(&cart, &product_id);
        answer_item(ctx, &product_id, reason.is_none(), reason, in_cart)?;
    } else if msg.is(&CHECKOUT) {
        // An empty body is a checkout without failure injection.
        let checkout = if msg.typed_value().value.is_empty() {
            Checkout::default()
        } else {
            match msg.get(&CHECKOUT) {
                Ok(c) => c,
                Err(e) => return reject(ctx, e.to_string()),
            }
        };
        match cart.status {
            Status::CheckedOut => {
                let result = cart.result.clone().unwrap_or_else(|| {
                    CheckoutResult::failed(format!("cart {cart_id} is checked out"))
                });
                answer(ctx, Message::of(&CHECKOUT_RESULT, &result)?)?;
            }
            Status::CheckingOut => {
                answer(
                    ctx,
                    Message::of(
                        &ERROR,
                        &ErrorReply {
                            error: format!("a checkout of cart {cart_id} is in progress"),
                        },
                    )?,
                )?;
            }
            Status::Open if cart.items.is_empty() => {
                answer(
                    ctx,
                    Message::of(
                        &CHECKOUT_RESULT,
                        &CheckoutResult::failed("the cart is empty"),
                    )?,
                )?;
            }
            Status::Open => {
                let user_id = cart.user_id.clone().unwrap_or_default();
                let lines = cart
                    .items
                    .iter()
                    .map(|(product_id, item)| Line {
                        product_id: product_id.clone(),
                        quantity: item.quantity,
                        price_cents: item.price_cents,
                    })
                    .collect();
                ctx.send(
                    CHECKOUT_FLOW.address(&cart_id),
                    Message::of(
                        &START_CHECKOUT,
                        &StartCheckout {
                            user_id,
                            lines,
                            fail: checkout.fail,
                        },
                    )?,
                );
                cart.status = Status::CheckingOut;
                cart.checkout_caller = ctx.caller().map(Caller::from);
            }
        }
    } else if msg.is(&CHECKOUT_RESULT) {
        if !from(ctx, &CHECKOUT_FLOW, Some(&cart_id)) {
            return reject(
                ctx,
                format!("a CheckoutResult must come from {CHECKOUT_FLOW}/{cart_id}"),
            );
        }
        let result = msg.get(&CHECKOUT_RESULT)?;
        if cart.status != Status::CheckingOut {
            tracing::warn!(cart = %cart_id, status = ?cart.status, "checkout result without a running checkout ignored");
        } else {
            if result.success {
                cart.status = Status::CheckedOut;
                cart.result = Some(result.clone());
            } else {
                for (product_id, item) in std::mem::take(&mut cart.items) {
                    ctx.send(
                        PRODUCT.address(&product_id),
                        Message::of(
                            &RELEASE,
                            &Release {
                                quantity: item.quantity,
                            },
                        )?,
                    );
                }
                cart.status = Status::Open;
            }
            if let Some(caller) = cart.checkout_caller.take() {
                ctx.send(caller.address(), Message::of(&CHECKOUT_RESULT, &result)?);
            }
        }
    } else {
        return unknown(
            ctx,
            &msg,
            &[
                ADD_PRODUCT.typename(),
                REMOVE_PRODUCT.typename(),
                CHECKOUT.typename(),
            ],
        );
    }

    if cart != cart0 {
        ctx.storage().set(&CART, &cart)?;
    }
    if pending != pending0 {
        if pending.adds.is_empty() {
            ctx.storage().clear(&PENDING)?;
        } else {
            ctx.storage().set(&PENDING, &pending)?;
        }
    }
    Ok(())
}

fn closed(status: Status) -> String {
    match status {
        Status::CheckingOut => "the cart is being checked out".into(),
        _ => "the cart is checked out".into(),
    }
}

fn in_cart(cart: &Cart, product_id: &str) -> u32 {
    cart.items.get(product_id).map_or(0, |i| i.quantity)
}

fn item_result(
    product_id: &str,
    done: bool,
    reason: Option<String>,
    in_cart: u32,
) -> Result<Message, Error> {
    Message::of(
        &ITEM_RESULT,
        &ItemResult {
            product_id: product_id.to_owned(),
            done,
            reason,
            in_cart,
        },
    )
}

fn answer_item(
    ctx: &mut Context,
    product_id: &str,
    done: bool,
    reason: Option<String>,
    in_cart: u32,
) -> Result<(), Error> {
    answer(ctx, item_result(product_id, done, reason, in_cart)?)
}

/// Answers the caller, if the request came with one.
fn answer(ctx: &mut Context, message: Message) -> Result<(), Error> {
    if ctx.caller().is_some() {
        ctx.reply(message)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use keyflow_sdk::testing::EgressRecord;
    use keyflow_sdk::{Address, TypedValue};

    use super::*;
    use crate::messages::{
        AddProduct, FailAt, OrderEvent, ProductInfo, Profile, RemoveProduct, SetProduct,
        CHECKOUT_FAILED, CHECKOUT_SUCCEEDED, GET_PROFILE, PAYMENT, PRODUCT_INFO, PROFILE,
        SET_PRODUCT, USER_PROFILE,
    };
    use crate::payment::{Charge, CHARGE};
    use crate::product::{Stock, STOCK};
    use crate::testing::{harness, harness_with, http, Harness};
    use crate::Config;

    /// Sends `msg` to `to` as HTTP caller `n`, runs everything that follows; the one answer
    /// and the egress records.
    fn ask(h: &mut Harness, to: &Address, n: u32, msg: Message) -> (Message, Vec<EgressRecord>) {
        let run = h.run(to, Some(&http(n)), msg);
        assert_eq!(
            run.outside.len(),
            1,
            "one answer expected: {:?}",
            run.outside
        );
        assert_eq!(run.outside[0].0, http(n));
        (run.outside[0].1.clone(), run.kafka_records())
    }

    fn seed(h: &mut Harness, product: &str, quantity: u32, price_cents: u64) {
        let (answer, _) = ask(
            h,
            &PRODUCT.address(product),
            0,
            Message::of(
                &SET_PRODUCT,
                &SetProduct {
                    quantity,
                    price_cents,
                },
            )
            .unwrap(),
        );
        let info: ProductInfo = answer.get(&PRODUCT_INFO).unwrap();
        assert_eq!(info.quantity, quantity);
    }

    fn add_msg(user: &str, product: &str) -> Message {
        Message::of(
            &ADD_PRODUCT,
            &AddProduct {
                user_id: user.into(),
                product_id: product.into(),
            },
        )
        .unwrap()
    }

    fn add(h: &mut Harness, cart: &str, user: &str, product: &str) -> ItemResult {
        let (answer, _) = ask(h, &SHOPPING_CART.address(cart), 1, add_msg(user, product));
        answer.get(&ITEM_RESULT).unwrap()
    }

    fn remove(h: &mut Harness, cart: &str, product: &str) -> ItemResult {
        let msg = Message::of(
            &REMOVE_PRODUCT,
            &RemoveProduct {
                product_id: product.into(),
            },
        )
        .unwrap();
        let (answer, _) = ask(h, &SHOPPING_CART.address(cart), 2, msg);
        answer.get(&ITEM_RESULT).unwrap()
    }

    fn checkout_msg(fail: Option<FailAt>) -> Message {
        Message::of(&CHECKOUT, &Checkout { fail }).unwrap()
    }

    fn checkout(
        h: &mut Harness,
        cart: &str,
        fail: Option<FailAt>,
    ) -> (CheckoutResult, Vec<OrderEvent>) {
        let (answer, records) = ask(h, &SHOPPING_CART.address(cart), 3, checkout_msg(fail));
        let events = records
            .iter()
            .map(|r| {
                assert_eq!(r.egress, "ecommerce/order-events");
                assert_eq!(r.topic, "order-events");
                assert_eq!(r.key, cart);
                serde_json::from_str(&r.value).unwrap()
            })
            .collect();
        (answer.get(&CHECKOUT_RESULT).unwrap(), events)
    }

    fn stock(h: &Harness, product: &str) -> Stock {
        h.json_state(&PRODUCT.address(product), STOCK.name())
            .unwrap_or_default()
    }

    fn cart(h: &Harness, id: &str) -> Cart {
        h.json_state(&SHOPPING_CART.address(id), CART.name())
            .unwrap_or_default()
    }

    fn profile(h: &mut Harness, user: &str) -> Profile {
        let (answer, _) = ask(
            h,
            &USER_PROFILE.address(user),
            4,
            Message::from(TypedValue::of(GET_PROFILE, b"".to_vec())),
        );
        answer.get(&PROFILE).unwrap()
    }

    #[test]
    fn a_checkout_answers_a_tracking_number_and_writes_one_order_event() {
        let mut h = harness();
        seed(&mut h, "shirt", 2, 1999);
        seed(&mut h, "cap", 5, 500);
        assert!(add(&mut h, "c1", "ann", "shirt").done);
        let r = add(&mut h, "c1", "ann", "shirt");
        assert!(r.done && r.in_cart == 2, "{r:?}");
        assert!(add(&mut h, "c1", "ann", "cap").done);
        let (result, events) = checkout(&mut h, "c1", None);
        assert!(result.success, "{result:?}");
        let tracking = result.tracking_number.clone().unwrap();
        assert!(tracking.starts_with("TRK-"), "{tracking}");
        assert_eq!(result.total_cents, Some(2 * 1999 + 500));
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event, CHECKOUT_SUCCEEDED);
        assert_eq!(events[0].tracking_number.as_ref(), Some(&tracking));
        assert_eq!(events[0].user_id, "ann");
        // Sold, not reserved any more; the shirt's last unit sold: a restock is on its way.
        let shirt = stock(&h, "shirt");
        assert_eq!((shirt.quantity, shirt.reserved, shirt.sold), (0, 0, 2));
        let cap = stock(&h, "cap");
        assert_eq!((cap.quantity, cap.reserved, cap.sold), (4, 0, 1));
        assert_eq!(h.timers.len(), 1);
        assert_eq!(h.timers[0].delay, crate::DEFAULT_RESTOCK_DELAY);
        // Purchase history and the one charge under `ann.c1`.
        let p = profile(&mut h, "ann");
        assert_eq!(p.purchases.len(), 1);
        assert_eq!(p.purchases[0].tracking_number, tracking);
        let charge: Charge = h
            .json_state(&PAYMENT.address("ann.c1"), CHARGE.name())
            .unwrap();
        assert_eq!(charge.amount_cents, 2 * 1999 + 500);
        // A repeated checkout answers the same, with no second event, charge or sale.
        let (again, events) = checkout(&mut h, "c1", None);
        assert_eq!(again, result);
        assert!(events.is_empty());
        assert_eq!(stock(&h, "cap").sold, 1);
        assert_eq!(cart(&h, "c1").status, Status::CheckedOut);
        // A closed cart takes nothing more.
        let r = add(&mut h, "c1", "ann", "cap");
        assert!(!r.done && r.reason.as_deref() == Some("the cart is checked out"));
        assert_eq!(stock(&h, "cap").quantity, 4);
    }

    #[test]
    fn add_fails_at_zero_and_remove_gives_the_unit_back() {
        let mut h = harness();
        seed(&mut h, "lamp", 1, 100);
        assert!(add(&mut h, "c1", "ann", "lamp").done);
        let r = add(&mut h, "c2", "bob", "lamp");
        assert!(!r.done, "{r:?}");
        assert_eq!(r.reason.as_deref(), Some("out of stock"));
        assert_eq!(r.in_cart, 0);
        let r = remove(&mut h, "c1", "lamp");
        assert!(r.done && r.in_cart == 0, "{r:?}");
        assert!(!remove(&mut h, "c1", "lamp").done, "nothing left to remove");
        assert_eq!(stock(&h, "lamp").quantity, 1);
        assert!(add(&mut h, "c2", "bob", "lamp").done);
        // An empty cart's checkout starts nothing.
        let (result, events) = checkout(&mut h, "c1", None);
        assert_eq!(result.reason.as_deref(), Some("the cart is empty"));
        assert!(events.is_empty());
    }

    fn failed_checkout_releases_everything(fail: FailAt, reason: &str) {
        let mut h = harness();
        seed(&mut h, "a", 3, 100);
        seed(&mut h, "b", 1, 300);
        assert!(add(&mut h, "c1", "ann", "a").done);
        assert!(add(&mut h, "c1", "ann", "a").done);
        assert!(add(&mut h, "c1", "ann", "b").done);
        assert_eq!(stock(&h, "b").quantity, 0);
        let (result, events) = checkout(&mut h, "c1", Some(fail));
        assert!(!result.success);
        assert_eq!(result.reason.as_deref(), Some(reason));
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event, CHECKOUT_FAILED);
        assert_eq!(events[0].reason.as_deref(), Some(reason));
        for (p, q) in [("a", 3), ("b", 1)] {
            let s = stock(&h, p);
            assert_eq!((s.quantity, s.reserved, s.sold), (q, 0, 0), "{p}");
        }
        let c = cart(&h, "c1");
        assert_eq!(c.status, Status::Open);
        assert!(c.items.is_empty());
        assert!(profile(&mut h, "ann").purchases.is_empty());
        assert_eq!(
            h.json_state::<Charge>(&PAYMENT.address("ann.c1"), CHARGE.name()),
            None,
            "nothing charged"
        );
        assert!(h.timers.is_empty());
        // The cart can be filled and checked out again.
        assert!(add(&mut h, "c1", "ann", "b").done);
        let (result, events) = checkout(&mut h, "c1", None);
        assert!(result.success, "{result:?}");
        assert_eq!(events.len(), 1);
        assert_eq!(result.total_cents, Some(300));
    }

    #[test]
    fn a_payment_failure_releases_every_reservation() {
        failed_checkout_releases_everything(FailAt::Payment, "payment declined");
    }

    #[test]
    fn a_shipment_failure_releases_every_reservation() {
        failed_checkout_releases_everything(FailAt::Shipment, "shipment could not be prepared");
    }

    #[test]
    fn the_restock_of_the_last_unit_arrives_after_the_configured_delay() {
        let mut h = harness_with(Config {
            restock_delay: Duration::from_secs(2),
            ..Config::default()
        });
        seed(&mut h, "vase", 1, 4000);
        assert!(add(&mut h, "c1", "ann", "vase").done);
        assert!(checkout(&mut h, "c1", None).0.success);
        assert!(!add(&mut h, "c2", "bob", "vase").done);
        assert_eq!(h.timers.len(), 1);
        assert_eq!(h.timers[0].delay, Duration::from_secs(2));
        h.fire_all(10);
        assert_eq!(stock(&h, "vase").quantity, 1);
        assert!(add(&mut h, "c2", "bob", "vase").done);
    }

    #[test]
    fn a_reservation_that_arrives_during_a_checkout_is_given_back() {
        let mut h = harness();
        seed(&mut h, "a", 5, 100);
        let c1 = SHOPPING_CART.address("c1");
        assert!(add(&mut h, "c1", "ann", "a").done);
        // An AddProduct reaches the cart, its Reserve is still on the way...
        let r = h.call(&c1, Some(&http(7)), add_msg("ann", "a"));
        let reserve = Message::from(r.outgoing_messages[0].argument.clone().unwrap());
        // ...while the checkout runs to the end.
        let (result, _) = checkout(&mut h, "c1", None);
        assert_eq!(result.total_cents, Some(100), "only the unit in the cart");
        let out = h.run(&PRODUCT.address("a"), Some(&c1), reserve).outside;
        let answer: ItemResult = out[0].1.get(&ITEM_RESULT).unwrap();
        assert_eq!(out[0].0, http(7));
        assert!(!answer.done);
        let s = stock(&h, "a");
        assert_eq!((s.quantity, s.reserved, s.sold), (4, 0, 1));
        // And a checkout already running refuses a second one.
        assert!(add(&mut h, "c2", "bob", "a").done);
        let c2 = SHOPPING_CART.address("c2");
        h.call(&c2, Some(&http(8)), checkout_msg(None));
        let (answer, _) = ask(&mut h, &c2, 9, checkout_msg(None));
        let error = answer.get(&ERROR).unwrap().error;
        assert!(error.contains("in progress"), "{error}");
    }

    #[test]
    fn bad_requests_are_answered_with_an_error_and_change_nothing() {
        let mut h = harness();
        seed(&mut h, "a", 5, 100);
        assert!(add(&mut h, "c1", "ann", "a").done);
        let r = add(&mut h, "c1", "bob", "a");
        assert!(!r.done && r.reason.unwrap().contains("another user"));
        let c1 = SHOPPING_CART.address("c1");
        let forged = Message::of(&CHECKOUT_RESULT, &CheckoutResult::failed("forged")).unwrap();
        let bad = [
            (add_msg("", "a"), "non-empty"),
            (
                Message::from(TypedValue::of(
                    CHECKOUT.typename(),
                    b"{\"fail\":1}".to_vec(),
                )),
                "cannot decode",
            ),
            (Message::int(1), "does not handle `io.statefun.types/int`"),
            (forged, "must come from"),
        ];
        for (msg, want) in bad {
            let (answer, _) = ask(&mut h, &c1, 1, msg.clone());
            let error = answer.get(&ERROR).unwrap().error;
            assert!(error.contains(want), "{error}");
            // From no caller: dropped, not failed (a failure would be retried).
            let r = h.call(&c1, None, msg);
            assert!(r.outgoing_messages.is_empty() && r.state_mutations.is_empty());
        }
        assert_eq!(cart(&h, "c1").items["a"].quantity, 1);
        assert_eq!(stock(&h, "a").quantity, 4);
    }
}
