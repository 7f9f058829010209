//! `com.example/user-shopping-cart`, keyed by user id.
//!
//! Adding an item is a request to the item's stock whose answer arrives later as a message,
//! so the cart keeps its outstanding requests in state (`pending`). Commands take effect in
//! arrival order: a ClearCart or Checkout that arrives while stock answers are outstanding
//! is deferred until the last of them arrives, since those answers belong to items added
//! before it; any command arriving after a deferred one queues behind it. AddToCarts need
//! not wait for each other: their answers only add to the basket.

use std::collections::{BTreeMap, VecDeque};

use keyflow_sdk::{Context, Error, FunctionSpec, KafkaRecord, Message, Type, ValueSpec};
use serde::{Deserialize, Serialize};

use crate::messages::{
    Availability, CartEvent, ItemAvailability, Receipt, RequestItem, RestockItem, ADD_TO_CART,
    CART_EVENTS, CART_EVENTS_TOPIC, CHECKOUT, CLEAR_CART, ITEM_AVAILABILITY, RECEIPTS,
    RECEIPTS_TOPIC, REQUEST_ITEM, RESTOCK_ITEM, STOCK, USER_SHOPPING_CART,
};

const BASKET: ValueSpec<Basket> = ValueSpec::new("basket", Type::json("com.example/Basket"));
const PENDING: ValueSpec<Pending> =
    ValueSpec::new("pending", Type::json("com.example/PendingRequests"));

/// Item id to units; sorted so that receipts list items deterministically.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Basket {
    basket: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Pending {
    /// Stock answers still to come, per item id.
    awaiting: BTreeMap<String, u32>,
    /// Commands that must wait for those answers, in arrival order.
    deferred: VecDeque<Command>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all_fields = "camelCase")]
enum Command {
    AddToCart { item_id: String, quantity: u32 },
    ClearCart,
    Checkout,
}

impl Command {
    fn parse(msg: &Message) -> Result<Self, Error> {
        if msg.is(&ADD_TO_CART) {
            let add = msg.get(&ADD_TO_CART)?;
            if add.quantity == 0 {
                return Err(Error::custom(format!(
                    "AddToCart of 0 units of `{}`: the quantity must be positive",
                    add.item_id
                )));
            }
            Ok(Command::AddToCart {
                item_id: add.item_id,
                quantity: add.quantity,
            })
        } else if msg.is(&CLEAR_CART) {
            msg.get(&CLEAR_CART).map(|_| Command::ClearCart)
        } else if msg.is(&CHECKOUT) {
            msg.get(&CHECKOUT).map(|_| Command::Checkout)
        } else {
            Err(Error::custom(format!(
                "{USER_SHOPPING_CART} does not handle `{}` messages",
                msg.typename()
            )))
        }
    }
}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(USER_SHOPPING_CART)
        .with_state(&BASKET)
        .with_state(&PENDING)
}

pub fn handle(ctx: &mut Context, msg: Message) -> Result<(), Error> {
    let loaded = Cart {
        user_id: ctx.self_address().id.clone(),
        basket: ctx.storage().get(&BASKET)?.unwrap_or_default(),
        pending: ctx.storage().get(&PENDING)?.unwrap_or_default(),
    };
    let mut cart = loaded.clone();
    if msg.is(&ITEM_AVAILABILITY) {
        let item_id = match ctx.caller() {
            Some(caller) if STOCK.matches(caller) => caller.id.clone(),
            _ => {
                return Err(Error::custom(format!(
                    "an ItemAvailability must come from {STOCK}"
                )))
            }
        };
        cart.on_availability(ctx, item_id, msg.get(&ITEM_AVAILABILITY)?)?;
    } else {
        cart.submit(ctx, Command::parse(&msg)?)?;
    }
    cart.save(ctx, &loaded)
}

#[derive(Debug, Clone)]
struct Cart {
    user_id: String,
    basket: Basket,
    pending: Pending,
}

impl Cart {
    fn submit(&mut self, ctx: &mut Context, command: Command) -> Result<(), Error> {
        if !self.pending.deferred.is_empty() || self.must_wait(&command) {
            self.pending.deferred.push_back(command);
            Ok(())
        } else {
            self.run(ctx, command)
        }
    }

    fn must_wait(&self, command: &Command) -> bool {
        !self.pending.awaiting.is_empty() && !matches!(command, Command::AddToCart { .. })
    }

    fn on_availability(
        &mut self,
        ctx: &mut Context,
        item_id: String,
        answer: ItemAvailability,
    ) -> Result<(), Error> {
        match self.pending.awaiting.get_mut(&item_id) {
            Some(outstanding) if *outstanding > 1 => *outstanding -= 1,
            Some(_) => {
                self.pending.awaiting.remove(&item_id);
            }
            // Units granted without a request (a duplicate answer) are still taken from the
            // stock, so they go to the basket rather than vanish.
            None => {
                tracing::warn!(user = %self.user_id, item = %item_id, "stock answer without a pending request")
            }
        }
        match answer.status {
            Availability::InStock => {
                let units = self.basket.basket.entry(item_id).or_default();
                *units = units.checked_add(answer.quantity).ok_or_else(|| {
                    Error::custom(format!(
                        "adding {} units overflows the basket",
                        answer.quantity
                    ))
                })?;
            }
            Availability::OutOfStock => {
                let event = CartEvent {
                    user_id: self.user_id.clone(),
                    item_id,
                    status: answer.status,
                    quantity: answer.quantity,
                };
                ctx.egress(
                    &CART_EVENTS,
                    KafkaRecord::new(CART_EVENTS_TOPIC)
                        .key(&self.user_id)
                        .json_value(&event)?,
                );
            }
        }
        while let Some(command) = self.pending.deferred.pop_front() {
            if self.must_wait(&command) {
                self.pending.deferred.push_front(command);
                break;
            }
            self.run(ctx, command)?;
        }
        Ok(())
    }

    fn run(&mut self, ctx: &mut Context, command: Command) -> Result<(), Error> {
        match command {
            Command::AddToCart { item_id, quantity } => {
                ctx.send(
                    STOCK.address(&item_id),
                    Message::of(&REQUEST_ITEM, &RequestItem { quantity })?,
                );
                *self.pending.awaiting.entry(item_id).or_default() += 1;
            }
            Command::ClearCart => {
                for (item_id, quantity) in std::mem::take(&mut self.basket.basket) {
                    let restock = Message::of(
                        &RESTOCK_ITEM,
                        &RestockItem {
                            item_id: item_id.clone(),
                            quantity,
                        },
                    )?;
                    ctx.send(STOCK.address(item_id), restock);
                }
            }
            Command::Checkout if self.basket.basket.is_empty() => {
                tracing::debug!(user = %self.user_id, "checkout of an empty basket");
            }
            Command::Checkout => {
                let details: Vec<String> = std::mem::take(&mut self.basket.basket)
                    .iter()
                    .map(|(item, units)| format!("{item}: {units}"))
                    .collect();
                let receipt = Receipt {
                    user_id: self.user_id.clone(),
                    details: details.join("\n"),
                };
                ctx.egress(
                    &RECEIPTS,
                    KafkaRecord::new(RECEIPTS_TOPIC)
                        .key(&self.user_id)
                        .json_value(&receipt)?,
                );
            }
        }
        Ok(())
    }

    /// Writes the cells that changed; an empty cell is cleared rather than stored.
    fn save(&self, ctx: &mut Context, loaded: &Cart) -> Result<(), Error> {
        if self.basket != loaded.basket {
            if self.basket.basket.is_empty() {
                ctx.storage().clear(&BASKET)?;
            } else {
                ctx.storage().set(&BASKET, &self.basket)?;
            }
        }
        if self.pending != loaded.pending {
            if self.pending == Pending::default() {
                ctx.storage().clear(&PENDING)?;
            } else {
                ctx.storage().set(&PENDING, &self.pending)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use keyflow_sdk::protocol::reqreply::from_function::InvocationResponse;
    use keyflow_sdk::{Address, TypedValue};

    use super::*;
    use crate::messages::{AddToCart, Checkout, ClearCart};
    use crate::testing::{harness, int, kafka_records, Harness};

    fn user() -> Address {
        USER_SHOPPING_CART.address("1")
    }

    fn add(item_id: &str, quantity: u32) -> Message {
        let add = AddToCart {
            user_id: "1".into(),
            item_id: item_id.into(),
            quantity,
        };
        Message::of(&ADD_TO_CART, &add).unwrap()
    }

    fn checkout() -> Message {
        Message::of(
            &CHECKOUT,
            &Checkout {
                user_id: "1".into(),
            },
        )
        .unwrap()
    }

    fn clear() -> Message {
        Message::of(
            &CLEAR_CART,
            &ClearCart {
                user_id: "1".into(),
            },
        )
        .unwrap()
    }

    fn answer(
        h: &mut Harness,
        item_id: &str,
        status: Availability,
        quantity: u32,
    ) -> InvocationResponse {
        let msg = Message::of(&ITEM_AVAILABILITY, &ItemAvailability { status, quantity }).unwrap();
        h.call(&user(), Some(&STOCK.address(item_id)), msg)
    }

    fn json_state(h: &Harness, name: &str) -> Option<String> {
        h.state(&user(), name)
            .map(|v| String::from_utf8(v.value.to_vec()).unwrap())
    }

    /// (target id, message) of every outgoing message.
    fn sent(response: &InvocationResponse) -> Vec<(String, Message)> {
        response
            .outgoing_messages
            .iter()
            .map(|m| {
                (
                    m.target.as_ref().unwrap().id.clone(),
                    Message::from(m.argument.clone().unwrap()),
                )
            })
            .collect()
    }

    fn receipt(details: &str) -> (String, String, String, String) {
        let value = format!(
            r#"{{"userId":"1","details":{}}}"#,
            serde_json::to_string(details).unwrap()
        );
        (
            "com.example/receipts".into(),
            "receipts".into(),
            "1".into(),
            value,
        )
    }

    #[test]
    fn the_seed_scenario_emits_one_receipt_and_leaves_47_socks() {
        let mut h = harness();
        let socks = STOCK.address("socks");
        h.run(
            &socks,
            None,
            Message::of(
                &RESTOCK_ITEM,
                &RestockItem {
                    item_id: "socks".into(),
                    quantity: 50,
                },
            )
            .unwrap(),
        );
        h.run(&user(), None, add("socks", 3));
        let responses = h.run(&user(), None, checkout()).responses;
        let records: Vec<_> = responses.iter().flat_map(kafka_records).collect();
        assert_eq!(records, [receipt("socks: 3")]);
        assert_eq!(records[0].3, r#"{"userId":"1","details":"socks: 3"}"#);
        assert_eq!(h.state(&socks, "stock"), Some(int(47)));
        assert_eq!(h.state(&user(), "basket"), None);
    }

    #[test]
    fn add_to_cart_asks_the_stock_and_remembers_the_request() {
        let mut h = harness();
        let r = h.call(&user(), None, add("socks", 3));
        let sent = sent(&r);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, "socks");
        assert_eq!(
            sent[0].1.get(&REQUEST_ITEM).unwrap(),
            RequestItem { quantity: 3 }
        );
        assert_eq!(
            json_state(&h, "pending").as_deref(),
            Some(r#"{"awaiting":{"socks":1},"deferred":[]}"#)
        );
        assert_eq!(h.state(&user(), "basket"), None);
    }

    #[test]
    fn an_in_stock_answer_fills_the_basket_and_settles_the_request() {
        let mut h = harness();
        h.call(&user(), None, add("socks", 3));
        h.call(&user(), None, add("socks", 2));
        answer(&mut h, "socks", Availability::InStock, 3);
        assert_eq!(
            json_state(&h, "pending").as_deref(),
            Some(r#"{"awaiting":{"socks":1},"deferred":[]}"#)
        );
        let r = answer(&mut h, "socks", Availability::InStock, 2);
        assert!(r.outgoing_egresses.is_empty());
        assert_eq!(
            json_state(&h, "basket").as_deref(),
            Some(r#"{"basket":{"socks":5}}"#)
        );
        assert_eq!(h.state(&user(), "pending"), None);
    }

    #[test]
    fn an_out_of_stock_answer_reaches_the_user_as_a_cart_event() {
        let mut h = harness();
        h.call(&user(), None, add("socks", 3));
        let r = answer(&mut h, "socks", Availability::OutOfStock, 3);
        let event = r#"{"userId":"1","itemId":"socks","status":"OUTOFSTOCK","quantity":3}"#;
        assert_eq!(
            kafka_records(&r),
            [(
                "com.example/cart-events".into(),
                "cart-events".into(),
                "1".into(),
                event.into()
            )]
        );
        assert_eq!(h.state(&user(), "basket"), None);
        assert_eq!(h.state(&user(), "pending"), None);
    }

    #[test]
    fn checkout_emits_one_receipt_sorted_by_item_and_a_second_checkout_nothing() {
        let mut h = harness();
        h.call(&user(), None, add("socks", 3));
        h.call(&user(), None, add("hat", 1));
        answer(&mut h, "socks", Availability::InStock, 3);
        answer(&mut h, "hat", Availability::InStock, 1);
        let r = h.call(&user(), None, checkout());
        assert_eq!(kafka_records(&r), [receipt("hat: 1\nsocks: 3")]);
        assert_eq!(h.state(&user(), "basket"), None);
        let r = h.call(&user(), None, checkout());
        assert!(
            r.outgoing_egresses.is_empty() && r.state_mutations.is_empty(),
            "{r:?}"
        );
    }

    #[test]
    fn checkout_of_an_empty_basket_emits_nothing() {
        let r = harness().call(&user(), None, checkout());
        assert_eq!(r, InvocationResponse::default());
    }

    #[test]
    fn checkout_while_answers_are_pending_waits_for_the_last_one() {
        let mut h = harness();
        h.call(&user(), None, add("socks", 3));
        h.call(&user(), None, add("hat", 1));
        let r = h.call(&user(), None, checkout());
        assert!(r.outgoing_egresses.is_empty());
        let r = answer(&mut h, "socks", Availability::InStock, 3);
        assert!(r.outgoing_egresses.is_empty());
        let r = answer(&mut h, "hat", Availability::OutOfStock, 1);
        let records = kafka_records(&r);
        assert_eq!(records.len(), 2, "{records:?}");
        assert_eq!(records[0].0, "com.example/cart-events");
        assert_eq!(records[1], receipt("socks: 3"));
        assert_eq!(h.state(&user(), "basket"), None);
        assert_eq!(h.state(&user(), "pending"), None);
    }

    #[test]
    fn commands_after_a_deferred_checkout_wait_behind_it() {
        let mut h = harness();
        h.call(&user(), None, add("socks", 3));
        h.call(&user(), None, checkout());
        let r = h.call(&user(), None, add("hat", 1));
        assert!(
            r.outgoing_messages.is_empty(),
            "the hat must not be requested before the checkout"
        );
        let r = answer(&mut h, "socks", Availability::InStock, 3);
        assert_eq!(kafka_records(&r), [receipt("socks: 3")]);
        let sent = sent(&r);
        assert_eq!(sent.len(), 1);
        assert_eq!(
            (
                sent[0].0.as_str(),
                sent[0].1.get(&REQUEST_ITEM).unwrap().quantity
            ),
            ("hat", 1)
        );
        answer(&mut h, "hat", Availability::InStock, 1);
        assert_eq!(
            json_state(&h, "basket").as_deref(),
            Some(r#"{"basket":{"hat":1}}"#)
        );
    }

    #[test]
    fn clear_cart_while_answers_are_pending_returns_the_late_items_too() {
        let mut h = harness();
        h.call(&user(), None, add("socks", 3));
        let r = h.call(&user(), None, clear());
        assert!(r.outgoing_messages.is_empty());
        let r = answer(&mut h, "socks", Availability::InStock, 3);
        let returned: Vec<_> = sent(&r)
            .into_iter()
            .map(|(to, m)| (to, m.get(&RESTOCK_ITEM).unwrap()))
            .collect();
        assert_eq!(
            returned,
            [(
                "socks".to_owned(),
                RestockItem {
                    item_id: "socks".into(),
                    quantity: 3
                }
            )]
        );
        assert_eq!(h.state(&user(), "basket"), None);
        assert_eq!(h.state(&user(), "pending"), None);
    }

    #[test]
    fn clear_cart_returns_every_item_to_the_stock() {
        let mut h = harness();
        for (item, units) in [("socks", 10), ("hat", 4)] {
            let restock = RestockItem {
                item_id: item.into(),
                quantity: units,
            };
            h.run(
                &STOCK.address(item),
                None,
                Message::of(&RESTOCK_ITEM, &restock).unwrap(),
            );
            h.run(&user(), None, add(item, 2));
        }
        assert_eq!(h.state(&STOCK.address("socks"), "stock"), Some(int(8)));

        let r = h.call(&user(), None, clear());
        let returned: Vec<_> = sent(&r)
            .into_iter()
            .map(|(to, m)| (to, m.get(&RESTOCK_ITEM).unwrap()))
            .collect();
        assert_eq!(
            returned,
            [
                (
                    "hat".to_owned(),
                    RestockItem {
                        item_id: "hat".into(),
                        quantity: 2
                    }
                ),
                (
                    "socks".to_owned(),
                    RestockItem {
                        item_id: "socks".into(),
                        quantity: 2
                    }
                ),
            ]
        );
        assert_eq!(h.state(&user(), "basket"), None);

        for (to, restock) in returned {
            h.call(
                &STOCK.address(to),
                Some(&user()),
                Message::of(&RESTOCK_ITEM, &restock).unwrap(),
            );
        }
        assert_eq!(h.state(&STOCK.address("socks"), "stock"), Some(int(10)));
        assert_eq!(h.state(&STOCK.address("hat"), "stock"), Some(int(4)));
        assert!(kafka_records(&h.call(&user(), None, checkout())).is_empty());
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        let mut h = harness();
        let err = h.try_call(&user(), None, add("socks", 0)).unwrap_err();
        assert!(err.contains("quantity must be positive"), "{err}");
        let forged = Message::of(
            &ITEM_AVAILABILITY,
            &ItemAvailability {
                status: Availability::InStock,
                quantity: 9,
            },
        );
        let err = h
            .try_call(
                &user(),
                Some(&USER_SHOPPING_CART.address("2")),
                forged.unwrap(),
            )
            .unwrap_err();
        assert!(err.contains("must come from com.example/stock"), "{err}");
        let err = h
            .try_call(
                &user(),
                None,
                Message::from(TypedValue::of("com.example/Nope", "{}")),
            )
            .unwrap_err();
        assert!(err.contains("does not handle `com.example/Nope`"), "{err}");
    }
}
