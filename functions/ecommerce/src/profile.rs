//! `ecommerce/UserProfile`, keyed by user id: the user's purchase history. A user who never
//! bought has an empty profile (no state); there is no sign-up.

use keyflow_sdk::{Context, Error, FunctionSpec, Message, Type, ValueSpec};
use serde::{Deserialize, Serialize};

use crate::messages::{
    Profile, Purchase, APPEND_PURCHASE, CHECKOUT_FLOW, GET_PROFILE, PROFILE, USER_PROFILE,
};
use crate::{from, reject, unknown};

pub const HISTORY: ValueSpec<History> =
    ValueSpec::new("history", Type::json("ecommerce/PurchaseHistory"));

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub purchases: Vec<Purchase>,
}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(USER_PROFILE).with_state(&HISTORY)
}

pub fn handle(ctx: &mut Context, msg: Message) -> Result<(), Error> {
    let user_id = ctx.self_address().id.clone();
    let mut history = ctx.storage().get(&HISTORY)?.unwrap_or_default();
    if msg.typename() == GET_PROFILE {
        if ctx.caller().is_none() {
            return reject(
                ctx,
                "GetProfile needs a caller to answer (use ?reply=true)".into(),
            );
        }
        ctx.reply(Message::of(
            &PROFILE,
            &Profile {
                user_id,
                purchases: history.purchases,
            },
        )?)
    } else if msg.is(&APPEND_PURCHASE) {
        if !from(ctx, &CHECKOUT_FLOW, None) {
            return reject(
                ctx,
                format!("an AppendPurchase must come from {CHECKOUT_FLOW}"),
            );
        }
        let purchase = msg.get(&APPEND_PURCHASE)?;
        // One checkout appends once; a repeat (same cart, same tracking number) is not a new
        // purchase.
        if !history.purchases.contains(&purchase) {
            history.purchases.push(purchase);
            ctx.storage().set(&HISTORY, &history)?;
        }
        Ok(())
    } else {
        unknown(ctx, &msg, &[GET_PROFILE])
    }
}
