//! `com.example/stock`, keyed by item id: how many units of the item are left.
//!
//! Restocks add units; a cart's `RequestItem` takes units only when enough are left and is
//! always answered, so the cart never waits forever.

use keyflow_sdk::{Context, Error, FunctionSpec, Message, Type, ValueSpec};

use crate::messages::{
    Availability, ItemAvailability, ITEM_AVAILABILITY, REQUEST_ITEM, RESTOCK_ITEM, STOCK,
};

const UNITS: ValueSpec<i32> = ValueSpec::new("stock", Type::int());

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(STOCK).with_state(&UNITS)
}

pub fn handle(ctx: &mut Context, msg: Message) -> Result<(), Error> {
    let units = ctx.storage().get(&UNITS)?.unwrap_or(0);
    if msg.is(&RESTOCK_ITEM) {
        let restock = msg.get(&RESTOCK_ITEM)?;
        let total = i32::try_from(restock.quantity)
            .ok()
            .and_then(|q| units.checked_add(q))
            .ok_or_else(|| {
                Error::custom(format!(
                    "restocking {} units onto {units} overflows the stock",
                    restock.quantity
                ))
            })?;
        ctx.storage().set(&UNITS, &total)
    } else if msg.is(&REQUEST_ITEM) {
        let quantity = msg.get(&REQUEST_ITEM)?.quantity;
        let left = i32::try_from(quantity)
            .ok()
            .and_then(|q| units.checked_sub(q))
            .filter(|left| *left >= 0);
        let status = match left {
            Some(left) => {
                ctx.storage().set(&UNITS, &left)?;
                Availability::InStock
            }
            None => Availability::OutOfStock,
        };
        ctx.reply(Message::of(
            &ITEM_AVAILABILITY,
            &ItemAvailability { status, quantity },
        )?)
    } else {
        Err(Error::custom(format!(
            "{STOCK} does not handle `{}` messages",
            msg.typename()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{RequestItem, RestockItem, USER_SHOPPING_CART};
    use crate::testing::{harness, int};

    fn restock(quantity: u32) -> Message {
        Message::of(
            &RESTOCK_ITEM,
            &RestockItem {
                item_id: "socks".into(),
                quantity,
            },
        )
        .unwrap()
    }

    fn request(quantity: u32) -> Message {
        Message::of(&REQUEST_ITEM, &RequestItem { quantity }).unwrap()
    }

    #[test]
    fn a_request_within_stock_is_in_stock_and_decrements() {
        let mut h = harness();
        let socks = STOCK.address("socks");
        let cart = USER_SHOPPING_CART.address("1");
        h.call(&socks, None, restock(50));
        let r = h.call(&socks, Some(&cart), request(3));
        assert_eq!(r.outgoing_messages.len(), 1);
        assert_eq!(r.outgoing_messages[0].target.as_ref(), Some(&cart));
        let answer = Message::from(r.outgoing_messages[0].argument.clone().unwrap());
        assert_eq!(
            answer.get(&ITEM_AVAILABILITY).unwrap(),
            ItemAvailability {
                status: Availability::InStock,
                quantity: 3
            }
        );
        assert_eq!(h.state(&socks, "stock"), Some(int(47)));
    }

    #[test]
    fn a_request_beyond_stock_is_out_of_stock_and_changes_nothing() {
        let mut h = harness();
        let socks = STOCK.address("socks");
        h.call(&socks, None, restock(2));
        let r = h.call(&socks, Some(&USER_SHOPPING_CART.address("1")), request(3));
        assert!(r.state_mutations.is_empty());
        let answer = Message::from(r.outgoing_messages[0].argument.clone().unwrap());
        assert_eq!(
            answer.get(&ITEM_AVAILABILITY).unwrap().status,
            Availability::OutOfStock
        );
        assert_eq!(h.state(&socks, "stock"), Some(int(2)));
    }

    #[test]
    fn restocks_add_up_and_refuse_to_overflow() {
        let mut h = harness();
        let socks = STOCK.address("socks");
        h.call(&socks, None, restock(5));
        h.call(&socks, None, restock(7));
        assert_eq!(h.state(&socks, "stock"), Some(int(12)));
        let err = h.try_call(&socks, None, restock(u32::MAX)).unwrap_err();
        assert!(err.contains("overflows the stock"), "{err}");
    }

    #[test]
    fn unknown_messages_are_errors() {
        let err = harness()
            .try_call(&STOCK.address("socks"), None, Message::int(1))
            .unwrap_err();
        assert!(
            err.contains("does not handle `io.statefun.types/int`"),
            "{err}"
        );
    }
}
