//! The SDK's errors: [`Error`] is what a handler or a typed accessor fails with;
//! [`HandleError`] is why a whole request failed, and maps to the HTTP status the runtime sees.

use keyflow_protocol::Address;

/// A failure inside a function invocation. Returning it from a handler fails the whole batch
/// (HTTP 500), so the runtime retries it or sets it aside; none of its effects are applied.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("expected a value of type `{expected}`, got `{found}`")]
    TypeMismatch { expected: String, found: String },

    #[error("cannot decode a `{typename}` value: {reason}")]
    Decode { typename: String, reason: String },

    #[error("cannot encode a `{typename}` value: {reason}")]
    Encode { typename: String, reason: String },

    #[error(
        "state `{name}` is not declared by this function; add it with `FunctionSpec::with_state`"
    )]
    UndeclaredState { name: String },

    #[error("state `{name}` is declared with type `{declared}` but accessed as `{requested}`")]
    StateSpecMismatch {
        name: String,
        declared: String,
        requested: String,
    },

    #[error(
        "state `{name}` holds a `{found}` value but is declared as `{declared}`; \
         the runtime registered this state with another type, which cannot change later: \
         rename the state or migrate it"
    )]
    StoredStateType {
        name: String,
        declared: String,
        found: String,
    },

    #[error("this message came from an ingress, so there is no caller to reply to")]
    NoCaller,

    #[error("a cancellation token must not be empty")]
    EmptyCancellationToken,

    #[error("{0}")]
    Custom(String),
}

impl Error {
    /// An error raised by function code, carrying `message` as its text.
    pub fn custom(message: impl std::fmt::Display) -> Self {
        Error::Custom(message.to_string())
    }
}

/// Why a request got no `FromFunction` answer.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error("the request body is not a protobuf `ToFunction`: {0}")]
    Malformed(#[from] prost::DecodeError),

    #[error("the request carries no invocation batch (or no target address)")]
    NoInvocation,

    #[error("no function of type `{function_type}` is served here; served types: {served}")]
    UnknownFunction {
        function_type: String,
        served: String,
    },

    #[error("function {address} failed: {source}")]
    // Boxed: `Error` is large and this variant is rare.
    Function {
        address: Address,
        source: Box<Error>,
    },

    #[error("function {address} panicked: {message}")]
    Panicked { address: Address, message: String },
}

impl HandleError {
    /// The HTTP status that tells the runtime what kind of failure this is.
    pub fn http_status(&self) -> u16 {
        match self {
            HandleError::Malformed(_) | HandleError::NoInvocation => 400,
            HandleError::UnknownFunction { .. } => 404,
            HandleError::Function { .. } | HandleError::Panicked { .. } => 500,
        }
    }
}
