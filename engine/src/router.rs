//! Ingress routers: one per owned partition of an ingress topic. A router reads records,
//! turns each into one message per target function of its topic (id = the record key as
//! UTF-8, argument = the value untouched under the topic's `valueType`, no caller), produces
//! them to `<cluster>-messages` at the target's partition, and commits the ingress offset in
//! the same transaction (`transactional.id = <cluster>-ingress-<topic>-<partition>`).
//!
//! A record with no key, or a key that is not UTF-8, cannot name a function, and a record
//! whose envelope would not fit `<cluster>-messages` cannot be routed: it goes to the
//! dead-letter topic with the reason (its value cut to fit, `limits.rs`), and routing goes on.
//! So does a record whose routed messages Kafka keeps refusing (`record-refused`), found by
//! the partitions' safety net (`partition::isolation`): after such a failure the router's
//! epochs take one record each.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyflow_protocol::{Message as _, TypedValue};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use tokio_util::sync::CancellationToken;

use crate::context::Shared;
use crate::dead_letter::DeadLetterKind;
use crate::internal::Envelope;
use crate::kafka::{self, ErrorClass};
use crate::module::{IngressTopic, KafkaIngress, OffsetReset, StartupPosition};
use crate::partition::isolation::{Net, Taken};
use crate::partition::EpochError;
use crate::partitioner::partition_for;
use crate::routing::Routed;
use crate::supervisor::{supervise, PartitionTask};
use crate::trace;
use crate::txn::Participant;

/// Routes ingress topic `topic` partition `p` until `stop` fires, reopening after failures.
/// `ingress`: the first ingress in module.yaml naming `topic` (`None`: the callbacks topic).
pub async fn run(
    shared: Arc<Shared>,
    ingress: Option<usize>,
    topic: String,
    p: i32,
    stop: CancellationToken,
) {
    let net = Arc::new(Mutex::new(Net::default()));
    supervise(&shared, &topic, p, &stop, || {
        Router::open(shared.clone(), ingress, &topic, p, net.clone())
    })
    .await;
    let _ = shared
        .metrics
        .consumer_lag
        .remove_label_values(&[&topic, &p.to_string()]);
}

struct Router {
    shared: Arc<Shared>,
    topic: String,
    /// The topic's route in module.yaml; `None` for the callbacks topic.
    route: Option<Arc<IngressTopic>>,
    p: i32,
    /// `<cluster>-messages` and `<cluster>-deadletters`, and this topic's counters: made once.
    messages: String,
    dead_letters: String,
    records_routed: prometheus::IntCounter,
    bytes_routed: prometheus::IntCounter,
    /// This router's place in the worker's transaction: its open epoch.
    epoch: Participant,
    /// The next ingress offset, committed with every epoch.
    position: i64,
    /// This ingress partition's records, from the worker's reader (`reader.rs`).
    input: crate::reader::Input,
    first_offset: Option<i64>,
    last_offset: Option<i64>,
    records: usize,
    /// The safety net for refused records, kept across reopens by [`run`].
    net: Arc<Mutex<Net>>,
}

impl Router {
    async fn open(
        shared: Arc<Shared>,
        ingress: Option<usize>,
        topic: &str,
        p: i32,
        net: Arc<Mutex<Net>>,
    ) -> Result<Self, EpochError> {
        let opening = shared.opening.acquire().await.expect("never closed");
        let callbacks = callbacks_ingress(&shared);
        let spec: &KafkaIngress = match ingress {
            Some(i) => &shared.module.ingresses[i],
            None => &callbacks,
        };
        let route = ingress.map(|_| crate::routing::route_of(&shared, topic));
        let reader = crate::routing::reader_for(&shared, spec)?;
        let lag = shared
            .metrics
            .consumer_lag
            .with_label_values(&[topic, &p.to_string()]);
        let (position, committed) =
            crate::routing::start_position(&shared, spec, &reader, topic, p).await?;
        let age = shared
            .metrics
            .input_age_seconds
            .with_label_values(&["ingress"]);
        let input = reader.open(topic, p, position, Some(lag), Some(age));
        drop(opening);
        let mut epoch = Participant::new(shared.txn.clone(), (topic.to_string(), p));
        if !committed {
            // The group's first position is committed at once: a restart resumes from it
            // instead of resolving `latest` again and skipping what arrived meanwhile.
            epoch.commit(vec![(topic.to_string(), p, position)]).await?;
        }
        tracing::info!(topic, partition = p, position, "ingress router started");
        let metrics = &shared.metrics;
        Ok(Router {
            messages: shared.cfg.topic_messages(),
            dead_letters: shared.cfg.topic_dead_letters(),
            records_routed: metrics.ingress_records.with_label_values(&[topic]),
            bytes_routed: metrics.ingress_bytes.with_label_values(&[topic]),
            shared,
            topic: topic.to_string(),
            route,
            p,
            epoch,
            position,
            input,
            first_offset: None,
            last_offset: None,
            records: 0,
            net,
        })
    }

    async fn route_record(&mut self, m: rdkafka::message::OwnedMessage) -> Result<(), KafkaError> {
        let refusal = self
            .net
            .lock()
            .expect("net")
            .refusal(0, m.offset())
            .cloned();
        if let Some(r) = refusal {
            let origin = self.take(&m);
            let reason = crate::routing::refused_reason(&r.reason);
            let value = if r.bare { None } else { m.payload() };
            return self
                .dead_letter_value(&m, value, &origin, DeadLetterKind::RecordRefused, &reason)
                .await;
        }
        let Some(route) = self.route.clone() else {
            return self.route_callback(m).await;
        };
        let origin = self.take(&m);
        let limit = self.shared.limits.messages;
        match crate::routing::route(&route, &m, self.p, &origin, limit, &self.messages) {
            Routed::Refused { kind, reason } => self.dead_letter(&m, &origin, kind, &reason).await,
            Routed::Messages { id, envelopes } => {
                let partitions = self.shared.cfg.partition_count();
                for env in envelopes {
                    self.epoch.send(
                        &self.messages,
                        Some(partition_for(&id, partitions)),
                        Some(id.as_bytes()),
                        Some(env.encode_to_vec()),
                        None,
                    );
                }
                Ok(())
            }
        }
    }

    async fn dead_letter(
        &mut self,
        m: &rdkafka::message::OwnedMessage,
        origin: &str,
        kind: DeadLetterKind,
        reason: &str,
    ) -> Result<(), KafkaError> {
        self.dead_letter_value(m, m.payload(), origin, kind, reason)
            .await
    }

    /// [`Router::dead_letter`] with `value` in place of the record's own.
    async fn dead_letter_value(
        &mut self,
        m: &rdkafka::message::OwnedMessage,
        value: Option<&[u8]>,
        origin: &str,
        kind: DeadLetterKind,
        reason: &str,
    ) -> Result<(), KafkaError> {
        let typename = self
            .route
            .as_ref()
            .map(|r| r.value_type.to_string())
            .unwrap_or_default();
        let (key, value, headers) =
            crate::routing::dead_letter(&self.shared, &typename, m, value, origin, kind, reason);
        self.epoch.send(
            &self.dead_letters,
            None,
            key.as_deref(),
            value,
            Some(headers),
        );
        Ok(())
    }

    /// Counts a record into the epoch (its offset is committed with it); returns its origin.
    fn take(&mut self, m: &rdkafka::message::OwnedMessage) -> String {
        self.first_offset.get_or_insert(m.offset());
        self.last_offset = Some(m.offset());
        self.position = m.offset() + 1;
        self.records += 1;
        self.records_routed.inc();
        self.bytes_routed
            .inc_by(m.payload().map_or(0, <[u8]>::len) as u64);
        format!("{}/{}/{}", self.topic, self.p, m.offset())
    }

    /// A record of `<cluster>-callbacks`: key = a callback token, value = the message, typename
    /// from a `content-type: application/vnd.<namespace>/<name>` header (default
    /// `keyflow.callbacks/value`). The target's processor takes it only once.
    async fn route_callback(
        &mut self,
        m: rdkafka::message::OwnedMessage,
    ) -> Result<(), KafkaError> {
        let origin = self.take(&m);
        let token = m
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .unwrap_or_default()
            .to_string();
        let Some(target) = keyflow_protocol::callback::address_of(&token) else {
            let reason = "the record key is not a callback token";
            return self
                .dead_letter(&m, &origin, DeadLetterKind::CallbackUnknown, reason)
                .await;
        };
        let content_type = m.headers().and_then(|hs| {
            use rdkafka::message::Headers;
            hs.iter()
                .find(|h| h.key.eq_ignore_ascii_case("content-type"))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        });
        let typename = match content_type {
            Some(ct) => match crate::envelope::typename_of(Some(&ct)) {
                Ok(t) => t,
                Err(reason) => {
                    return self
                        .dead_letter(&m, &origin, DeadLetterKind::CallbackContentType, &reason)
                        .await
                }
            },
            None => "keyflow.callbacks/value".to_string(),
        };
        let id = target.id.clone();
        let span = trace::routing_record(m.headers(), &self.topic, self.p, m.offset());
        let mut env = Envelope {
            target: Some(target),
            argument: Some(TypedValue::of(
                typename,
                m.payload()
                    .map(bytes::Bytes::copy_from_slice)
                    .unwrap_or_default(),
            )),
            message_id: origin.clone(),
            origin,
            callback_token: token,
            ..Default::default()
        };
        span.context().stamp(&mut env);
        let partition = partition_for(&id, self.shared.cfg.partition_count());
        let payload = env.encode_to_vec();
        let limit = self.shared.limits.messages;
        if let Some(reason) =
            crate::routing::too_large(&m, id.len() + payload.len(), limit, &self.messages)
        {
            return self
                .dead_letter(&m, &env.origin, DeadLetterKind::TooLarge, &reason)
                .await;
        }
        self.epoch.send(
            &self.messages,
            Some(partition),
            Some(id.as_bytes()),
            Some(payload),
            None,
        );
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), EpochError> {
        let _span = trace::epoch_commit(&self.topic, self.p, self.records);
        let started = Instant::now();
        let input = vec![(self.topic.clone(), self.p, self.position)];
        self.epoch.commit(input).await?;
        self.shared
            .metrics
            .epoch_commit_seconds
            .observe(started.elapsed().as_secs_f64());
        self.net.lock().expect("net").committed(self.taken());
        self.first_offset = None;
        self.last_offset = None;
        self.records = 0;
        Ok(())
    }

    /// What this epoch took of its input.
    fn taken(&self) -> Taken {
        Taken {
            records: self.records,
            ranges: self
                .first_offset
                .zip(self.last_offset)
                .map(|r| (0, r))
                .into_iter()
                .collect(),
            ..Taken::default()
        }
    }
}

impl PartitionTask for Router {
    type Error = EpochError;

    async fn run(&mut self, stop: &CancellationToken) -> Result<(), EpochError> {
        loop {
            let first = tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                m = self.input.recv() => m?,
            };
            let isolating = self.net.lock().expect("net").isolating();
            self.epoch.begin(isolating);
            self.route_record(first).await?;
            let window = tokio::time::Instant::now() + self.shared.cfg.commit_interval;
            let max_records = self
                .net
                .lock()
                .expect("net")
                .max_records(self.shared.cfg.max_epoch_records, true);
            while self.records < max_records && !stop.is_cancelled() {
                // Take what is ready; wait for more only while the window is open and the
                // previous wait found something (an idle topic commits at once).
                let next = match self.input.try_recv() {
                    Some(m) => Some(m),
                    None => tokio::select! {
                        m = self.input.recv() => Some(m),
                        _ = tokio::time::sleep_until(window) => None,
                        _ = tokio::time::sleep(Duration::from_millis(1)) => None,
                    },
                };
                match next {
                    Some(m) => {
                        let m = m?;
                        self.route_record(m).await?;
                    }
                    None => break,
                }
            }
            self.commit().await?;
        }
    }

    async fn abort(&mut self, err: &EpochError) -> ErrorClass {
        let mut reason = format!("{err} (routing to {})", self.messages);
        // The epoch's records were not sent (or its transaction failed, and these are its
        // records' delivery reports).
        let deliveries = self.epoch.abandon();
        let mut class = err.class();
        if class == ErrorClass::Transient {
            let within = Duration::from_secs(2);
            if let Some((topic, e)) = kafka::first_refused(deliveries, within).await {
                class = ErrorClass::Record;
                reason = format!("Kafka refused a record to `{topic}`: {e}");
            }
        }
        self.net
            .lock()
            .expect("net")
            .failed(class, self.taken(), &reason);
        class
    }
}

/// The built-in ingress of `<cluster>-callbacks`, as if module.yaml declared it: offsets in
/// group `<cluster>-callbacks`, from the beginning.
fn callbacks_ingress(shared: &Shared) -> KafkaIngress {
    KafkaIngress {
        id: crate::module::TypeName::new("keyflow.callbacks", "kafka"),
        address: shared.kafka.bootstrap().to_string(),
        consumer_group_id: shared.cfg.topic_callbacks(),
        topics: Vec::new(),
        startup_position: StartupPosition::Earliest,
        auto_offset_reset: OffsetReset::Earliest,
        properties: Vec::new(),
    }
}
