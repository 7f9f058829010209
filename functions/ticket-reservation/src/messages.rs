//! The application's vocabulary: function types and message types (JSON under
//! `ticketing/*`).
//!
//! From outside (HTTP ingress, to `ticketing/UserSession/<user id>`):
//! - `ticketing/AddTicket` `{"ticketId":"Rolling-stones-A22"}` (optionally
//!   `"reservationMs":2000`), answered with a [`RESULT`]: `true` when the ticket is now
//!   reserved for the user, `false` when it was reserved (by anyone, this user included) or sold.
//! - `ticketing/Checkout` (any body, `{}` is fine), answered with a [`RESULT`]: `true` when the
//!   cart held tickets, which are now sold, `false` for an empty cart.
//!
//! Between the functions: [`RESERVE`] / [`RESERVE_RESULT`], [`UNRESERVE`], [`MARK_SOLD`] and
//! the session's own delayed [`EXPIRE`].

use keyflow_sdk::{Type, TypeName};
use serde::{Deserialize, Serialize};

pub const USER_SESSION: TypeName = TypeName::new("ticketing", "UserSession");
pub const TICKET_DB: TypeName = TypeName::new("ticketing", "TicketDb");

pub const ADD_TICKET: Type<AddTicket> = Type::json("ticketing/AddTicket");
/// Checkout carries nothing; its body is not read.
pub const CHECKOUT_TYPENAME: &str = "ticketing/Checkout";
/// The answer to the HTTP caller: the JSON `true` or `false`.
pub const RESULT: Type<bool> = Type::json("ticketing/Result");

/// The answer to an HTTP caller whose request the session cannot take (a bad body, an
/// unknown Content-Type): `{"error":"…"}`.
pub const ERROR: Type<ErrorReply> = Type::json("ticketing/Error");

pub const RESERVE: Type<Reserve> = Type::json("ticketing/Reserve");
pub const RESERVE_RESULT: Type<ReserveResult> = Type::json("ticketing/ReserveResult");
pub const UNRESERVE: Type<Unreserve> = Type::json("ticketing/Unreserve");
pub const MARK_SOLD: Type<MarkSold> = Type::json("ticketing/MarkSold");
pub const EXPIRE: Type<Expire> = Type::json("ticketing/Expire");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddTicket {
    pub ticket_id: String,
    /// How long the reservation lasts; the service's default (15 minutes, or
    /// `TICKETING_RESERVATION_MS`) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

/// A session asking the ticket to be reserved for `user_id`; answered by [`ReserveResult`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reserve {
    pub user_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReserveResult {
    pub reserved: bool,
}

/// The reservation of `user_id` expired: the ticket is available again unless sold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Unreserve {
    pub user_id: String,
}

/// `user_id` paid: the ticket is sold to them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MarkSold {
    pub user_id: String,
}

/// A session's timer for one reservation; it counts only while the cart still holds the
/// ticket under the same `token`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Expire {
    pub ticket_id: String,
    pub token: String,
}
