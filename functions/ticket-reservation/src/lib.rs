//! The ticket-reservation functions: `ticketing/UserSession` (per user) and
//! `ticketing/TicketDb` (per ticket) behind one HTTP endpoint. See
//! `docs/apps/ticket-reservation.md` for the HTTP shapes.
//!
//! Layout:
//! - `messages`: function types and message types.
//! - `ticket_db`: one ticket's status (available, reserved by a user, sold to a user).
//! - `session`: one user's cart, the reservations it waits for, expiry and checkout.

pub mod messages;
pub mod session;
#[cfg(test)]
mod testing;
pub mod ticket_db;

use std::time::Duration;

use keyflow_sdk::StatefulFunctions;

/// Settings of the function service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// How long a reservation lasts when the AddTicket does not say (`reservationMs`).
    pub reservation: Duration,
}

/// The original's 15 minutes.
pub const DEFAULT_RESERVATION: Duration = Duration::from_secs(15 * 60);

impl Default for Config {
    fn default() -> Self {
        Config {
            reservation: DEFAULT_RESERVATION,
        }
    }
}

/// Both functions of the application, ready to serve.
pub fn functions(config: Config) -> StatefulFunctions {
    StatefulFunctions::new()
        .with(ticket_db::spec(), ticket_db::handle)
        .with(session::spec(), move |ctx, msg| {
            session::handle(&config, ctx, msg)
        })
}
