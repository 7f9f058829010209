//! `ticketing/TicketDb`, keyed by ticket id: whether the ticket is available, reserved by a
//! user or sold to one. All accesses to one ticket run one at a time (the id is the key), so
//! two users asking for one seat are answered in some order: the first gets it.

use keyflow_sdk::{Context, Error, FunctionSpec, Message, Type, ValueSpec};
use serde::{Deserialize, Serialize};

use crate::messages::{ReserveResult, MARK_SOLD, RESERVE, RESERVE_RESULT, TICKET_DB, UNRESERVE};

/// No state means available.
pub const TICKET: ValueSpec<Ticket> = ValueSpec::new("ticket", Type::json("ticketing/Ticket"));

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Available,
    Reserved,
    Sold,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ticket {
    pub status: Status,
    /// Who reserved or bought it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

impl Ticket {
    fn held_by(&self, status: Status, user: &str) -> bool {
        self.status == status && self.user_id.as_deref() == Some(user)
    }
}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(TICKET_DB).with_state(&TICKET)
}

pub fn handle(ctx: &mut Context, msg: Message) -> Result<(), Error> {
    let ticket_id = ctx.self_address().id.clone();
    let ticket = ctx.storage().get(&TICKET)?.unwrap_or(Ticket {
        status: Status::Available,
        user_id: None,
    });
    if msg.is(&RESERVE) {
        let user = msg.get(&RESERVE)?.user_id;
        let reserved = ticket.status == Status::Available;
        if reserved {
            ctx.storage().set(
                &TICKET,
                &Ticket {
                    status: Status::Reserved,
                    user_id: Some(user),
                },
            )?;
        }
        ctx.reply(Message::of(&RESERVE_RESULT, &ReserveResult { reserved })?)
    } else if msg.is(&UNRESERVE) {
        let user = msg.get(&UNRESERVE)?.user_id;
        if ticket.held_by(Status::Reserved, &user) {
            ctx.storage().clear(&TICKET)
        } else {
            // Sold meanwhile, or a late expiry of an older reservation: nothing changes.
            tracing::debug!(ticket = %ticket_id, %user, ?ticket, "unreserve ignored");
            Ok(())
        }
    } else if msg.is(&MARK_SOLD) {
        let user = msg.get(&MARK_SOLD)?.user_id;
        if ticket.held_by(Status::Reserved, &user) || ticket.status == Status::Available {
            ctx.storage().set(
                &TICKET,
                &Ticket {
                    status: Status::Sold,
                    user_id: Some(user),
                },
            )
        } else {
            // Sold to this user already (a repeat), or held by someone else: a session only
            // sells what it reserved, so this cannot come from a correct session.
            if !ticket.held_by(Status::Sold, &user) {
                tracing::warn!(ticket = %ticket_id, %user, ?ticket, "sale of a ticket held by another user ignored");
            }
            Ok(())
        }
    } else {
        crate::session::reject(
            ctx,
            format!("{TICKET_DB} does not handle `{}` messages", msg.typename()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{MarkSold, Reserve, Unreserve, USER_SESSION};
    use crate::testing::{harness, Harness};

    fn reserve(h: &mut Harness, ticket: &str, user: &str) -> bool {
        let r = h.call(
            &TICKET_DB.address(ticket),
            Some(&USER_SESSION.address(user)),
            Message::of(
                &RESERVE,
                &Reserve {
                    user_id: user.into(),
                },
            )
            .unwrap(),
        );
        assert_eq!(r.outgoing_messages.len(), 1);
        assert_eq!(
            r.outgoing_messages[0].target,
            Some(USER_SESSION.address(user))
        );
        Message::from(r.outgoing_messages[0].argument.clone().unwrap())
            .get(&RESERVE_RESULT)
            .unwrap()
            .reserved
    }

    fn state(h: &Harness, ticket: &str) -> Option<Ticket> {
        h.json_state(&TICKET_DB.address(ticket), "ticket")
    }

    #[test]
    fn the_first_reservation_wins_and_later_ones_are_refused() {
        let mut h = harness();
        assert!(reserve(&mut h, "A1", "ann"));
        assert!(!reserve(&mut h, "A1", "bob"));
        assert!(!reserve(&mut h, "A1", "ann"));
        assert_eq!(
            state(&h, "A1"),
            Some(Ticket {
                status: Status::Reserved,
                user_id: Some("ann".into())
            })
        );
    }

    #[test]
    fn unreserve_frees_only_the_holders_reservation() {
        let mut h = harness();
        let a1 = TICKET_DB.address("A1");
        assert!(reserve(&mut h, "A1", "ann"));
        let unreserve = |user: &str| {
            Message::of(
                &UNRESERVE,
                &Unreserve {
                    user_id: user.into(),
                },
            )
            .unwrap()
        };
        h.call(&a1, None, unreserve("bob"));
        assert_eq!(state(&h, "A1").unwrap().status, Status::Reserved);
        h.call(&a1, None, unreserve("ann"));
        assert_eq!(state(&h, "A1"), None);
        assert!(reserve(&mut h, "A1", "bob"));
    }

    #[test]
    fn a_sold_ticket_stays_sold() {
        let mut h = harness();
        let a1 = TICKET_DB.address("A1");
        assert!(reserve(&mut h, "A1", "ann"));
        let sold = Message::of(
            &MARK_SOLD,
            &MarkSold {
                user_id: "ann".into(),
            },
        )
        .unwrap();
        h.call(&a1, None, sold.clone());
        h.call(
            &a1,
            None,
            Message::of(
                &UNRESERVE,
                &Unreserve {
                    user_id: "ann".into(),
                },
            )
            .unwrap(),
        );
        h.call(&a1, None, sold);
        let sold_to_ann = Ticket {
            status: Status::Sold,
            user_id: Some("ann".into()),
        };
        assert_eq!(state(&h, "A1"), Some(sold_to_ann.clone()));
        assert!(!reserve(&mut h, "A1", "bob"));
        assert_eq!(state(&h, "A1"), Some(sold_to_ann));
    }

    #[test]
    fn unknown_messages_are_refused() {
        let mut h = harness();
        let a1 = TICKET_DB.address("A1");
        let http = keyflow_sdk::Address::new("keyflow.ingress", "http", "w1~m1");
        let r = h.call(&a1, Some(&http), Message::int(1));
        assert_eq!(r.outgoing_messages[0].target.as_ref(), Some(&http));
        let answer = Message::from(r.outgoing_messages[0].argument.clone().unwrap());
        let error = answer.get(&crate::messages::ERROR).unwrap().error;
        assert!(error.contains("does not handle"), "{error}");
        assert!(r.state_mutations.is_empty());
        // From a session it is a bug: an error, not an answer that would bounce back.
        let err = h
            .try_call(&a1, Some(&USER_SESSION.address("ann")), Message::int(1))
            .unwrap_err();
        assert!(err.contains("does not handle"), "{err}");
    }
}
