//! Committed state over HTTP: `GET /state/<namespace>/<type>/<id>`, `GET /timers/..` and
//! `GET /state/<namespace>/<type>` (ids). A worker reads its own store for the partitions it
//! owns and forwards other reads through the partition to the owner's processor.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use keyflow_protocol::Address;

use super::messages::{send_and_wait, timeout_of};
use super::{error, json, Ingress, Rejection};
use crate::context::{PartitionPhase, Shared};
use crate::envelope::{ReadKind, READ_ANSWER};
use crate::internal::Envelope;
use crate::introspect::{state_json, timers_json};
use crate::now_ms;
use crate::partitioner::partition_for;
use crate::store::PartitionStore;

/// How long a local read waits for the checkpoint of an epoch being committed (longer: the
/// partition is failing and reopening; the read answers from the store as it is).
const CHECKPOINT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The partition of `addr` when this worker owns it and has restored it; else the answer.
fn owned_partition(shared: &Shared, addr: &Address) -> Result<i32, Rejection> {
    let p = partition_for(&addr.id, shared.cfg.partition_count());
    let topic = shared.cfg.topic_messages();
    let phase = shared
        .partitions()
        .into_iter()
        .find(|(t, q, _)| *t == topic && *q == p)
        .map(|(_, _, phase)| phase);
    match phase {
        None => Err(Box::new(error(
            StatusCode::MISDIRECTED_REQUEST,
            format!("partition {p} is owned by another worker"),
        ))),
        Some(PartitionPhase::Restoring) => Err(Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("partition {p} is being restored; retry shortly"),
        ))),
        Some(PartitionPhase::Running) => Ok(p),
    }
}

/// `GET /state/<namespace>/<type>/<id>`: the committed state, from this worker's store when it
/// owns the address, else through the owner's processor.
pub(super) async fn get_state(
    State(ing): State<Arc<Ingress>>,
    Path((namespace, ftype, id)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    read(
        &ing,
        Address::new(namespace, ftype, id),
        ReadKind::State,
        &query,
    )
    .await
}

/// `GET /timers/<namespace>/<type>/<id>`: the delayed messages this address sent that are
/// still pending (they live in the sender's partition).
pub(super) async fn get_timers(
    State(ing): State<Arc<Ingress>>,
    Path((namespace, ftype, id)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    read(
        &ing,
        Address::new(namespace, ftype, id),
        ReadKind::Timers,
        &query,
    )
    .await
}

async fn read(
    ing: &Ingress,
    addr: Address,
    what: ReadKind,
    query: &HashMap<String, String>,
) -> Response {
    let shared = &ing.shared;
    let local = match owned_partition(shared, &addr) {
        Ok(p) => Some(p),
        Err(r) if r.status() == StatusCode::MISDIRECTED_REQUEST => None,
        Err(r) => return *r,
    };
    let Some(p) = local else {
        // Another worker owns it: ask its processor, through the partition like a message.
        let timeout = match timeout_of(ing, query) {
            Ok(t) => t,
            Err(r) => return *r,
        };
        let env = Envelope {
            target: Some(addr),
            introspect: what.as_str().to_string(),
            ..Default::default()
        };
        return match send_and_wait(ing, env, None, true, timeout).await {
            Ok((_, Some(reply))) if reply.typename == READ_ANSWER => {
                ([(header::CONTENT_TYPE, "application/json")], reply.value).into_response()
            }
            Ok(_) => error(
                StatusCode::BAD_GATEWAY,
                "the owning worker answered something else",
            ),
            Err(r) => *r,
        };
    };
    // Read your writes: an epoch being committed now may hold what the client just saw a
    // reply of; its checkpoint follows the commit.
    shared.checkpoints.wait(p, CHECKPOINT_WAIT).await;
    let store = match PartitionStore::open(&shared.db, p) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let body = match what {
        ReadKind::State => store
            .address_state(&addr)
            .map(|st| state_json(&addr, p, st, now_ms())),
        ReadKind::Timers => store.all_delayed().map(|d| timers_json(&addr, p, d)),
    };
    match body {
        Ok(b) => json(StatusCode::OK, b),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /state/<namespace>/<type>?prefix=..&limit=..`: ids of that type with state, from the
/// partitions this worker owns (listed in the answer; ask every worker for all of them).
pub(super) async fn list_ids(
    State(ing): State<Arc<Ingress>>,
    Path((namespace, ftype)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let shared = &ing.shared;
    let prefix = query.get("prefix").cloned().unwrap_or_default();
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => 1000,
        Some(Ok(n)) if n > 0 => n.min(100_000),
        Some(_) => return error(StatusCode::BAD_REQUEST, "limit must be a positive number"),
    };
    let topic = shared.cfg.topic_messages();
    let mut partitions: Vec<i32> = shared
        .partitions()
        .into_iter()
        .filter(|(t, _, ph)| *t == topic && *ph == PartitionPhase::Running)
        .map(|(_, p, _)| p)
        .collect();
    partitions.sort();
    let mut ids = Vec::new();
    for p in &partitions {
        shared.checkpoints.wait(*p, CHECKPOINT_WAIT).await;
        let store = match PartitionStore::open(&shared.db, *p) {
            Ok(s) => s,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        for kv in store.scan_addresses() {
            let Ok((key, _)) = kv else { continue };
            if let Some(a) = crate::store::parse_address_key(&key) {
                if a.namespace == namespace && a.r#type == ftype && a.id.starts_with(&prefix) {
                    ids.push(a.id);
                }
            }
        }
    }
    ids.sort();
    let truncated = ids.len() > limit;
    ids.truncate(limit);
    json(
        StatusCode::OK,
        serde_json::json!({ "ids": ids, "truncated": truncated, "partitions": partitions }),
    )
}
