//! Write Apache Flink StateFun 3.x remote functions in Rust, served to keyflow or to StateFun.
//!
//! A function is a type (`namespace/name`), the state it declares and a handler that gets a
//! [`Context`] and one [`Message`]. The runtime sends batches of messages for one address over
//! HTTP; the SDK decodes a batch, runs the handler once per message in order, and answers with
//! the state changes, messages, delayed messages and egress records the handler produced.
//!
//! ```
//! use keyflow_sdk::{Context, Error, FunctionSpec, Message, StatefulFunctions, Type, TypeName, ValueSpec};
//!
//! const GREETER: TypeName = TypeName::new("com.example", "greeter");
//! const SEEN: ValueSpec<i32> = ValueSpec::new("seen", Type::int());
//!
//! fn greet(ctx: &mut Context, msg: Message) -> Result<(), Error> {
//!     let name = msg.as_string()?;
//!     let seen = ctx.storage().get(&SEEN)?.unwrap_or(0) + 1;
//!     ctx.storage().set(&SEEN, &seen)?;
//!     ctx.reply(Message::string(format!("hello {name}, visit #{seen}")))
//! }
//!
//! let functions = StatefulFunctions::new().with(FunctionSpec::new(GREETER).with_state(&SEEN), greet);
//! # let _ = functions;
//! ```
//!
//! # Layout
//! - [`types`]: [`Type`], how a Rust value is encoded as a typed value (built-ins and JSON),
//!   and [`TypeName`], the `namespace/name` of function types and egresses.
//! - [`message`]: [`Message`], the argument a function receives and the value it sends.
//! - [`state`]: [`ValueSpec`] and [`Expiration`] declare state; [`Storage`] holds one
//!   address's state cells during a batch and knows which ones changed.
//! - [`address`]: [`SavedAddress`], an address (a caller to answer later) kept in JSON state.
//! - [`context`]: [`Context`], what a handler can do: read its address and caller, send,
//!   send later, cancel, emit to egresses, and reach its storage.
//! - [`egress`]: [`KafkaRecord`], the value of a message to a Kafka egress.
//! - [`functions`]: [`FunctionSpec`] and [`StatefulFunctions`], the registry, and
//!   [`StatefulFunctions::handle`], the transport-free request handler.
//! - [`server`]: [`serve`], the HTTP endpoint the runtime calls, and [`serve_until_signal`],
//!   the whole `main` of a function service.
//! - [`testing`]: [`testing::TestRuntime`], a runtime stand-in for unit tests of function logic.
//! - [`error`]: [`Error`] (raised by handlers and the SDK's typed accessors) and
//!   [`HandleError`] (why a whole request failed, with its HTTP status).

pub mod address;
pub mod context;
pub mod egress;
pub mod error;
pub mod functions;
pub mod message;
pub mod server;
pub mod state;
pub mod testing;
pub mod types;

pub use address::SavedAddress;
pub use context::Context;
pub use egress::KafkaRecord;
pub use error::{Error, HandleError};
pub use functions::{FunctionSpec, StatefulFunctions};
pub use keyflow_protocol as protocol;
pub use keyflow_protocol::{Address, TypedValue};
pub use message::Message;
pub use server::{init_logging, serve, serve_until_signal, shutdown_signal};
pub use state::{Expiration, Storage, ValueSpec};
pub use types::{Type, TypeName};
