//! `ticketing/UserSession`, keyed by user id: the user's cart and the reservations it waits
//! for.
//!
//! AddTicket asks the ticket's `TicketDb` to reserve it and keeps the waiting HTTP caller in
//! state (`pending`); the TicketDb's answer completes the step: a reserved ticket goes into
//! the cart with an expiry timer (a cancellable delayed message to this session), and the
//! caller hears `true` or `false`. An expiry counts only while the cart still holds the ticket
//! under the same timer token; it then drops the ticket and frees it in the TicketDb. Checkout
//! pays (stub), cancels the timers, marks every ticket sold, mails the tickets (stub),
//! empties the cart and answers `true`; an empty cart answers `false`.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use keyflow_sdk::{Context, Error, FunctionSpec, Message, Type, ValueSpec};
use serde::{Deserialize, Serialize};

use crate::messages::{
    ErrorReply, Expire, MarkSold, Reserve, Unreserve, ADD_TICKET, CHECKOUT_TYPENAME, ERROR, EXPIRE,
    MARK_SOLD, RESERVE, RESERVE_RESULT, RESULT, TICKET_DB, UNRESERVE, USER_SESSION,
};
use crate::Config;

pub const CART: ValueSpec<Cart> = ValueSpec::new("cart", Type::json("ticketing/Cart"));
pub const PENDING: ValueSpec<Pending> = ValueSpec::new("pending", Type::json("ticketing/Pending"));

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cart {
    /// Ticket id to the cancellation token of its expiry timer.
    pub tickets: BTreeMap<String, String>,
    /// Numbers the timer tokens, so that each pending timer has its own.
    pub next_timer: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pending {
    /// Per ticket id, the AddTickets waiting for the TicketDb's answer, oldest first (the
    /// TicketDb answers one session's requests in order).
    pub adds: BTreeMap<String, VecDeque<PendingAdd>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingAdd {
    /// Who to answer; `None` for a message that expects no answer.
    pub caller: Option<Caller>,
    pub reservation_ms: u64,
}

pub use keyflow_sdk::SavedAddress as Caller;

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(USER_SESSION)
        .with_state(&CART)
        .with_state(&PENDING)
}

pub fn handle(config: &Config, ctx: &mut Context, msg: Message) -> Result<(), Error> {
    let user = ctx.self_address().id.clone();
    let mut cart = ctx.storage().get(&CART)?.unwrap_or_default();
    let mut pending = ctx.storage().get(&PENDING)?.unwrap_or_default();
    let (cart0, pending0) = (cart.clone(), pending.clone());

    if msg.is(&ADD_TICKET) {
        let add = match msg.get(&ADD_TICKET) {
            Ok(add) if !add.ticket_id.is_empty() => add,
            Ok(_) => return reject(ctx, "AddTicket needs a non-empty `ticketId`".into()),
            Err(e) => return reject(ctx, e.to_string()),
        };
        let reservation_ms = add
            .reservation_ms
            .unwrap_or_else(|| u64::try_from(config.reservation.as_millis()).unwrap_or(u64::MAX));
        ctx.send(
            TICKET_DB.address(&add.ticket_id),
            Message::of(
                &RESERVE,
                &Reserve {
                    user_id: user.clone(),
                },
            )?,
        );
        pending
            .adds
            .entry(add.ticket_id)
            .or_default()
            .push_back(PendingAdd {
                caller: ctx.caller().map(Caller::from),
                reservation_ms,
            });
    } else if msg.is(&RESERVE_RESULT) {
        let ticket_id = match ctx.caller() {
            Some(caller) if TICKET_DB.matches(caller) => caller.id.clone(),
            _ => return reject(ctx, format!("a ReserveResult must come from {TICKET_DB}")),
        };
        let reserved = msg.get(&RESERVE_RESULT)?.reserved;
        let step = match pending.adds.get_mut(&ticket_id) {
            Some(queue) => {
                let step = queue.pop_front();
                if queue.is_empty() {
                    pending.adds.remove(&ticket_id);
                }
                step
            }
            None => None,
        };
        let step = step.unwrap_or_else(|| {
            tracing::warn!(%user, ticket = %ticket_id, "reservation answer without a pending AddTicket");
            PendingAdd {
                caller: None,
                reservation_ms: u64::try_from(config.reservation.as_millis()).unwrap_or(u64::MAX),
            }
        });
        if reserved {
            cart.next_timer += 1;
            let token = format!("reservation/{user}/{ticket_id}/{}", cart.next_timer);
            let me = ctx.self_address().clone();
            ctx.send_after_cancellable(
                Duration::from_millis(step.reservation_ms),
                me,
                Message::of(
                    &EXPIRE,
                    &Expire {
                        ticket_id: ticket_id.clone(),
                        token: token.clone(),
                    },
                )?,
                token.clone(),
            )?;
            cart.tickets.insert(ticket_id, token);
        }
        if let Some(caller) = step.caller {
            ctx.send(caller.address(), Message::of(&RESULT, &reserved)?);
        }
    } else if msg.is(&EXPIRE) {
        let expire = msg.get(&EXPIRE)?;
        if cart.tickets.get(&expire.ticket_id) == Some(&expire.token) {
            cart.tickets.remove(&expire.ticket_id);
            ctx.send(
                TICKET_DB.address(&expire.ticket_id),
                Message::of(
                    &UNRESERVE,
                    &Unreserve {
                        user_id: user.clone(),
                    },
                )?,
            );
        }
        // Otherwise the ticket was checked out (or expired and reserved again): nothing.
    } else if msg.typename() == CHECKOUT_TYPENAME {
        let bought = !cart.tickets.is_empty();
        if bought {
            let tickets = std::mem::take(&mut cart.tickets);
            pay(&user, tickets.len());
            for (ticket_id, token) in &tickets {
                ctx.cancel_delayed(token.clone())?;
                ctx.send(
                    TICKET_DB.address(ticket_id),
                    Message::of(
                        &MARK_SOLD,
                        &MarkSold {
                            user_id: user.clone(),
                        },
                    )?,
                );
            }
            email(&user, tickets.keys());
        }
        if ctx.caller().is_some() {
            ctx.reply(Message::of(&RESULT, &bought)?)?;
        }
    } else {
        return reject(
            ctx,
            format!(
                "{USER_SESSION} does not handle `{}` messages; send {} or {CHECKOUT_TYPENAME}",
                msg.typename(),
                ADD_TICKET.typename()
            ),
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

/// A request from outside (the HTTP ingress) that a function cannot take: the caller hears
/// why as a `ticketing/Error`; without a caller it is logged and dropped. Failing instead
/// would make the runtime retry the same bad message until its call timeout. From one of
/// our own functions it is a bug, and an error (answering would bounce between the two).
pub(crate) fn reject(ctx: &mut Context, reason: String) -> Result<(), Error> {
    match ctx.caller() {
        Some(caller) if caller.namespace == USER_SESSION.namespace() => Err(Error::custom(reason)),
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

/// The payment stub: always succeeds.
fn pay(user: &str, tickets: usize) {
    tracing::info!(%user, tickets, "payment accepted (stub)");
}

/// The email stub: logs what it would send.
fn email<'a>(user: &str, tickets: impl Iterator<Item = &'a String>) {
    let list: Vec<&str> = tickets.map(String::as_str).collect();
    tracing::info!(%user, tickets = ?list, "tickets mailed (stub)");
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyflow_sdk::Address;

    use crate::messages::AddTicket;
    use crate::testing::{harness, harness_with, Harness};
    use crate::ticket_db::{Status, Ticket, TICKET};

    fn http(n: u32) -> Address {
        Address::new("keyflow.ingress", "http", format!("w1~m{n}"))
    }

    fn add(ticket: &str, reservation_ms: Option<u64>) -> Message {
        Message::of(
            &ADD_TICKET,
            &AddTicket {
                ticket_id: ticket.into(),
                reservation_ms,
            },
        )
        .unwrap()
    }

    fn checkout() -> Message {
        Message::from(TypedValue::of(CHECKOUT_TYPENAME, b"{}".to_vec()))
    }

    use keyflow_sdk::TypedValue;

    /// Sends `msg` to `user`'s session as HTTP caller `n`; the one answer it got.
    fn ask(h: &mut Harness, user: &str, n: u32, msg: Message) -> bool {
        let out = h
            .run(&USER_SESSION.address(user), Some(&http(n)), msg)
            .outside;
        assert_eq!(out.len(), 1, "one answer expected: {out:?}");
        assert_eq!(out[0].0, http(n));
        out[0].1.get(&RESULT).unwrap()
    }

    fn ticket(h: &Harness, id: &str) -> Option<Ticket> {
        h.json_state(&TICKET_DB.address(id), TICKET.name())
    }

    fn cart(h: &Harness, user: &str) -> Cart {
        h.json_state(&USER_SESSION.address(user), CART.name())
            .unwrap_or_default()
    }

    fn only_timer(h: &Harness) -> String {
        assert_eq!(h.timers.len(), 1, "{:?}", h.timers);
        h.timers[0].token.clone()
    }

    #[test]
    fn the_seed_add_then_add_again_then_checkout() {
        let mut h = harness();
        assert!(ask(&mut h, "user_1", 1, add("Rolling-stones-A22", None)));
        assert_eq!(h.timers[0].delay, crate::DEFAULT_RESERVATION);
        assert!(!ask(&mut h, "user_1", 2, add("Rolling-stones-A22", None)));
        assert!(ask(&mut h, "user_1", 3, checkout()));
        assert_eq!(
            ticket(&h, "Rolling-stones-A22"),
            Some(Ticket {
                status: Status::Sold,
                user_id: Some("user_1".into())
            })
        );
        assert!(cart(&h, "user_1").tickets.is_empty());
        assert!(h.timers.is_empty(), "checkout cancels the expiry");
        // Nothing waits any more.
        assert_eq!(
            h.json_state::<Pending>(&USER_SESSION.address("user_1"), PENDING.name()),
            None
        );
    }

    #[test]
    fn checkout_of_an_empty_cart_answers_false() {
        let mut h = harness();
        assert!(!ask(&mut h, "user_1", 1, checkout()));
        assert!(ask(&mut h, "user_1", 2, add("A1", None)));
        assert!(ask(&mut h, "user_1", 3, checkout()));
        assert!(!ask(&mut h, "user_1", 4, checkout()));
    }

    #[test]
    fn another_user_cannot_take_a_reserved_or_sold_ticket() {
        let mut h = harness();
        assert!(ask(&mut h, "ann", 1, add("A1", None)));
        assert!(!ask(&mut h, "bob", 2, add("A1", None)));
        assert!(ask(&mut h, "ann", 3, checkout()));
        assert!(!ask(&mut h, "bob", 4, add("A1", None)));
        assert!(!ask(&mut h, "bob", 5, checkout()));
    }

    #[test]
    fn an_unsold_reservation_expires_and_the_ticket_is_free_again() {
        let mut h = harness_with(Config {
            reservation: Duration::from_secs(2),
        });
        assert!(ask(&mut h, "ann", 1, add("A1", None)));
        assert_eq!(h.timers[0].delay, Duration::from_secs(2));
        let token = only_timer(&h);
        assert!(h.fire(&token).outside.is_empty());
        assert!(cart(&h, "ann").tickets.is_empty());
        assert_eq!(ticket(&h, "A1"), None, "available again");
        assert!(ask(&mut h, "bob", 2, add("A1", None)));
        assert!(!ask(&mut h, "ann", 3, checkout()));
    }

    #[test]
    fn the_request_can_set_the_reservation_time() {
        let mut h = harness();
        assert!(ask(&mut h, "ann", 1, add("A1", Some(1500))));
        assert_eq!(h.timers[0].delay, Duration::from_millis(1500));
    }

    #[test]
    fn an_expiry_after_checkout_changes_nothing() {
        let mut h = harness();
        assert!(ask(&mut h, "ann", 1, add("A1", Some(1000))));
        let token = only_timer(&h);
        let stale = h.timers[0].clone();
        assert!(ask(&mut h, "ann", 2, checkout()));
        // The runtime cancelled it; deliver it anyway, as if it had fired just before.
        let out = h.run(&stale.to, Some(&stale.from), stale.message).outside;
        assert!(out.is_empty());
        assert_eq!(ticket(&h, "A1").unwrap().status, Status::Sold);
        assert!(!h.timers.iter().any(|t| t.token == token));
    }

    #[test]
    fn an_old_timer_does_not_expire_a_new_reservation_of_the_same_ticket() {
        let mut h = harness();
        assert!(ask(&mut h, "ann", 1, add("A1", Some(1000))));
        let first = h.timers[0].clone();
        h.fire(&first.token);
        assert!(ask(&mut h, "ann", 2, add("A1", Some(1000))));
        let second = only_timer(&h);
        assert_ne!(first.token, second);
        // The first timer once more (a duplicate delivery): the new reservation stays.
        h.run(&first.to, Some(&first.from), first.message);
        assert_eq!(ticket(&h, "A1").unwrap().status, Status::Reserved);
        assert!(cart(&h, "ann").tickets.contains_key("A1"));
        assert!(ask(&mut h, "ann", 3, checkout()));
    }

    #[test]
    fn two_users_racing_for_one_seat_get_one_true_and_one_false() {
        let mut h = harness();
        let (ann, bob) = (USER_SESSION.address("ann"), USER_SESSION.address("bob"));
        // Both AddTickets reach their sessions before either TicketDb answer arrives.
        let r1 = h.call(&ann, Some(&http(1)), add("A1", None));
        let r2 = h.call(&bob, Some(&http(2)), add("A1", None));
        let mut answers = Vec::new();
        for (from, r) in [(&bob, r2), (&ann, r1)] {
            let out = &r.outgoing_messages[0];
            let msg = Message::from(out.argument.clone().unwrap());
            for (to, reply) in h.run(out.target.as_ref().unwrap(), Some(from), msg).outside {
                answers.push((to.id, reply.get(&RESULT).unwrap()));
            }
        }
        answers.sort();
        assert_eq!(
            answers,
            [("w1~m1".to_string(), false), ("w1~m2".to_string(), true)]
        );
        assert_eq!(ticket(&h, "A1").unwrap().user_id.as_deref(), Some("bob"));
    }

    #[test]
    fn bad_requests_are_answered_with_an_error_and_change_nothing() {
        let mut h = harness();
        let ann = USER_SESSION.address("ann");
        let bad = [
            (add("", None), "non-empty `ticketId`"),
            (
                Message::from(TypedValue::of(ADD_TICKET.typename(), b"{}".to_vec())),
                "cannot decode",
            ),
            (Message::int(1), "does not handle `io.statefun.types/int`"),
        ];
        for (msg, want) in bad {
            let out = h.run(&ann, Some(&http(1)), msg.clone()).outside;
            assert_eq!(out.len(), 1, "{out:?}");
            let error = out[0].1.get(&ERROR).unwrap().error;
            assert!(error.contains(want), "{error}");
            // From no caller: dropped, not failed (a failure would be retried).
            let r = h.call(&ann, None, msg);
            assert!(r.outgoing_messages.is_empty() && r.state_mutations.is_empty());
        }
        assert!(cart(&h, "ann").tickets.is_empty());
        assert!(h.timers.is_empty());
    }

    #[test]
    fn a_reserve_result_from_anyone_but_the_ticket_db_is_refused() {
        let mut h = harness();
        let forged = Message::of(
            &RESERVE_RESULT,
            &crate::messages::ReserveResult { reserved: true },
        )
        .unwrap();
        let out = h
            .run(&USER_SESSION.address("ann"), Some(&http(1)), forged)
            .outside;
        let error = out[0].1.get(&ERROR).unwrap().error;
        assert!(error.contains("must come from"), "{error}");
        assert!(cart(&h, "ann").tickets.is_empty());
    }
}
