//! keyflow: a Kafka-driven stateful-functions engine, wire-compatible with Apache Flink
//! Stateful Functions 3.x remote functions, exactly-once end to end.
//!
//! # Layout
//! The data path, in the order a record travels (one line per module):
//! - [`module`]: module.yaml (the application: endpoints, ingresses, egresses).
//! - [`config`]: the engine's own settings (the process).
//! - [`worker`]: one engine process: topics, group membership, a task per owned partition.
//! - [`ingress_mode`]: the cluster's ingress mode (direct or routed), recorded in
//!   `<cluster>-meta` once for all its workers; `keyflow ingress-mode` switches it.
//! - [`context`]: what a worker's tasks share (settings, module, clients, owned partitions).
//! - [`supervisor`]: a partition task's life: open, run, reopen after a failure.
//! - [`router`]: Kafka ingress routers: ingress topics to `<cluster>-messages`, transactionally.
//! - [`partition`]: a partition of `<cluster>-messages`: the Kafka task and the pure core
//!   (admission, requests, effects, parking, timers, idempotency keys), one transaction per
//!   epoch.
//! - [`invoker`]: HTTP calls to function endpoints: StateFun's transport settings and retry
//!   policy.
//! - [`store`]: a partition's state: sled checkpoint + the epoch's overlay.
//! - [`restore`]: catching a checkpoint up with the changelog.
//! - [`standby`]: standby replicas: where they live (rendezvous hashing over the group's
//!   members) and the changelog each one tails into its local store.
//! - [`partitioner`]: address id to partition (Kafka's murmur2).
//! - [`rescale`]: `keyflow rescale`: a stopped cluster's state and positions copied into a
//!   new cluster with another partition count, exactly once.
//! - [`kafka`]: client settings (the user's security properties included), transactional
//!   producers, topics.
//! - [`limits`]: how large a record each topic takes (checked before anything is produced).
//! - [`dead_letter`]: why a record was dead-lettered (`DeadLetterKind`).
//! - [`replay`]: which dead letters can be replayed, and the record that replays one.
//! - [`envelope`]: the engine's addressing inside envelopes (HTTP callers, callbacks, reads).
//! - [`introspect`]: an address's state and pending delayed messages as JSON (pure).
//! - [`metrics`]: Prometheus metrics.
//! - [`trace`]: W3C trace context carried with messages; OpenTelemetry spans (routing,
//!   invocations, epoch commits) exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//! - [`admin`]: the admin HTTP server (health, readiness, metrics, status).
//! - [`http`]: HTTP ingress: messages, request-reply, committed state over HTTP; TLS and tokens;
//!   the StateFun playground's ingress and egress ports.
//! - [`playground`]: the playground egress's records, followed in Kafka and taken one by one.
//!
//! # Invariants
//! Each partition has exactly one task (the owner's), and nothing else touches its state.
//! Everything an epoch does reaches Kafka in one transaction; the local checkpoint moves only
//! after that transaction commits. See `shared/DESIGN.md` for the full argument.

// The layout above links the crate's own modules, most of them pub(crate): the docs are read
// with `cargo doc --document-private-items`.
#![allow(rustdoc::private_intra_doc_links)]

pub(crate) mod admin;
pub mod config;
pub(crate) mod context;
pub(crate) mod dead_letter;
pub(crate) mod envelope;
pub(crate) mod http;
pub mod ingress_mode;
pub(crate) mod introspect;
pub(crate) mod invoker;
pub mod kafka;
pub(crate) mod limits;
pub(crate) mod metrics;
pub mod module;
pub(crate) mod offsets;
pub(crate) mod partition;
pub mod partitioner;
pub(crate) mod playground;
pub(crate) mod reader;
pub mod replay;
pub mod rescale;
pub(crate) mod restore;
pub(crate) mod router;
pub(crate) mod routing;
pub(crate) mod standby;
pub(crate) mod store;
pub(crate) mod supervisor;
pub mod trace;
pub(crate) mod txn;
pub mod worker;

/// The engine's own protobuf records (envelopes, stored state, delayed messages).
pub(crate) mod internal {
    include!(concat!(env!("OUT_DIR"), "/keyflow.internal.rs"));
}

/// The changelog's record format, for tools that write a cluster's state without running it
/// (benchmarks).
pub mod changelog {
    /// The changelog record of an address's state (`a` + address, an `AddressState`) holding
    /// `values` as (name, typename, bytes), none expiring: for tools that write a changelog
    /// without running functions (`keyflow-bench restore-fill`).
    pub fn address_state_record(
        addr: &keyflow_protocol::Address,
        values: &[(&str, &str, &[u8])],
    ) -> (Vec<u8>, Vec<u8>) {
        let state = crate::internal::AddressState {
            values: values
                .iter()
                .map(|(name, typename, bytes)| {
                    let value = crate::internal::StoredValue {
                        value: Some(keyflow_protocol::TypedValue {
                            typename: typename.to_string(),
                            has_value: true,
                            value: bytes.to_vec().into(),
                        }),
                        expires_at_ms: 0,
                    };
                    (name.to_string(), value)
                })
                .collect(),
        };
        (
            crate::store::address_key(addr),
            prost::Message::encode_to_vec(&state),
        )
    }
}

/// Wall-clock milliseconds since the Unix epoch (delayed messages and state expiry are
/// wall-clock based so that they survive restarts and moves between workers).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A fresh unique message id (random, 128 bits, hex).
pub fn new_message_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
