//! [`SavedAddress`]: an address a function keeps in its JSON state, typically its caller, to
//! answer later (after other functions have answered it).

use keyflow_protocol::Address;
use serde::{Deserialize, Serialize};

/// An [`Address`] as JSON: `{"namespace":…,"type":…,"id":…}`.
///
/// ```
/// use keyflow_sdk::{Address, SavedAddress};
///
/// let caller = Address::new("keyflow.ingress", "http", "w1~7");
/// let saved = SavedAddress::from(&caller);
/// let json = serde_json::to_string(&saved).unwrap();
/// assert_eq!(json, r#"{"namespace":"keyflow.ingress","type":"http","id":"w1~7"}"#);
/// assert_eq!(saved.address(), caller);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SavedAddress {
    pub namespace: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
}

impl From<&Address> for SavedAddress {
    fn from(a: &Address) -> Self {
        SavedAddress {
            namespace: a.namespace.clone(),
            kind: a.r#type.clone(),
            id: a.id.clone(),
        }
    }
}

impl SavedAddress {
    /// The address again, to send to.
    pub fn address(&self) -> Address {
        Address::new(&self.namespace, &self.kind, &self.id)
    }
}
