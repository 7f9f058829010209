//! Every metric the engine exports, in one place: names, help texts and labels. The admin
//! server renders [`Metrics::registry`] at `/metrics` in Prometheus text format.
//!
//! Counters whose labels take a fixed set of values are exported at 0 from the start, so a
//! dashboard or an alert sees 0 rather than no data: `dead_letters_total{reason}` for every
//! [`DeadLetterKind`](crate::dead_letter::DeadLetterKind) (here), and
//! `invocation_retries_total{function_type, reason}` for every
//! [`RetryReason`](crate::invoker::RetryReason) of every function type the module names (by
//! the invoker, which knows the module; a type of a namespace endpoint when first called).

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

pub struct Metrics {
    pub registry: Registry,
    /// Ingress records routed, by topic.
    pub ingress_records: IntCounterVec,
    /// Bytes of ingress record values routed, by topic.
    pub ingress_bytes: IntCounterVec,
    /// Direct ingress records whose function id is on another partition (`--direct-ingress`).
    pub ingress_rerouted: IntCounterVec,
    /// Records of an input the worker can read and has not read yet, by topic and partition
    /// (from librdkafka's statistics every few seconds: `kafka::lag::lag_of`).
    pub consumer_lag: IntGaugeVec,
    /// Requests to functions retried after a transient failure, by function type and reason
    /// (`invoker::RetryReason`, a fixed set).
    pub invocation_retries: IntCounterVec,
    /// Messages delivered to functions, by function type.
    pub invocations: IntCounterVec,
    /// Messages per HTTP request, by function type.
    pub batch_size: HistogramVec,
    /// HTTP round trip of one batch, by function type.
    pub invocation_seconds: HistogramVec,
    /// Records sent to the dead-letter topic, by reason kind.
    pub dead_letters: IntCounterVec,
    /// Records written to egress topics, by topic.
    pub egress_records: IntCounterVec,
    /// Time to commit one epoch's transaction.
    pub epoch_commit_seconds: Histogram,
    /// Input records per epoch.
    pub epoch_records: Histogram,
    /// Epochs committed together in one of the worker's transactions (group commit).
    pub worker_txn_epochs: Histogram,
    /// Input records taken by committed epochs, by partition of `<cluster>-messages`.
    pub partition_records: IntCounterVec,
    /// Committed epochs, by partition.
    pub partition_epochs: IntCounterVec,
    /// Seconds spent committing epochs, by partition (with `partition_epochs`: mean latency).
    pub partition_commit_seconds: prometheus::CounterVec,
    /// Epochs aborted and replayed, by partition.
    pub epoch_failures: IntCounterVec,
    /// Delayed messages waiting, by partition.
    pub delayed_pending: IntGaugeVec,
    /// Messages parked in inboxes (committed with the last epoch), by partition.
    pub parked_messages: IntGaugeVec,
    /// Addresses with committed state, by partition.
    pub state_entries: IntGaugeVec,
    /// Bytes of committed address state (keys and values in the store), by partition.
    pub state_bytes: IntGaugeVec,
    /// Seconds the last restore of a partition took.
    pub restore_seconds: prometheus::GaugeVec,
    /// Partitions (of `<cluster>-messages`) this worker processes.
    pub partitions_owned: IntGauge,
    /// Partitions this worker keeps a standby of (`--standby-replicas`).
    pub standby_partitions: IntGauge,
    /// Changelog records a standby has not applied yet, by partition.
    pub standby_lag: IntGaugeVec,
    /// OS threads of the worker process, read at each scrape.
    pub worker_threads: IntGauge,
    /// Age of an input record (now - its Kafka timestamp) when a task takes it, by input:
    /// `ingress` (routers) or `messages` (processors: the sender's commit, read_committed
    /// visibility and the wait for the task, together).
    pub input_age_seconds: HistogramVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("keyflow".into()), None).expect("valid prefix");
        let latency = exponential_buckets(0.0005, 2.0, 16).expect("valid buckets");
        let m = Metrics {
            ingress_records: IntCounterVec::new(
                Opts::new(
                    "ingress_records_total",
                    "Ingress records routed to functions",
                ),
                &["topic"],
            )
            .unwrap(),
            partition_records: IntCounterVec::new(
                Opts::new(
                    "partition_records_total",
                    "Input records taken by committed epochs",
                ),
                &["partition"],
            )
            .unwrap(),
            partition_epochs: IntCounterVec::new(
                Opts::new("partition_epochs_total", "Committed epochs"),
                &["partition"],
            )
            .unwrap(),
            partition_commit_seconds: prometheus::CounterVec::new(
                Opts::new(
                    "partition_commit_seconds_total",
                    "Seconds spent committing epochs",
                ),
                &["partition"],
            )
            .unwrap(),
            ingress_rerouted: IntCounterVec::new(
                Opts::new(
                    "ingress_rerouted_total",
                    "Records of a directly read ingress topic whose key hashes to another partition (not co-partitioned), written on to it",
                ),
                &["topic"],
            )
            .unwrap(),
            ingress_bytes: IntCounterVec::new(
                Opts::new(
                    "ingress_bytes_total",
                    "Bytes of ingress record values routed",
                ),
                &["topic"],
            )
            .unwrap(),
            consumer_lag: IntGaugeVec::new(
                Opts::new(
                    "consumer_lag",
                    "Records not yet read by a partition task, by input topic and partition",
                ),
                &["topic", "partition"],
            )
            .unwrap(),
            invocation_retries: IntCounterVec::new(
                Opts::new(
                    "invocation_retries_total",
                    "Requests to functions retried after a transient failure",
                ),
                &["function_type", "reason"],
            )
            .unwrap(),
            invocations: IntCounterVec::new(
                Opts::new("invocations_total", "Messages delivered to functions"),
                &["function_type"],
            )
            .unwrap(),
            batch_size: HistogramVec::new(
                HistogramOpts::new(
                    "invocation_batch_size",
                    "Messages per request to a function",
                )
                .buckets(exponential_buckets(1.0, 2.0, 11).unwrap()),
                &["function_type"],
            )
            .unwrap(),
            invocation_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "invocation_duration_seconds",
                    "Round trip of one request to a function, retries included",
                )
                .buckets(latency.clone()),
                &["function_type"],
            )
            .unwrap(),
            dead_letters: IntCounterVec::new(
                Opts::new(
                    "dead_letters_total",
                    "Records sent to the dead-letter topic",
                ),
                &["reason"],
            )
            .unwrap(),
            egress_records: IntCounterVec::new(
                Opts::new("egress_records_total", "Records written to egress topics"),
                &["topic"],
            )
            .unwrap(),
            epoch_commit_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "epoch_commit_seconds",
                    "Time to commit one epoch's Kafka transaction",
                )
                .buckets(latency.clone()),
            )
            .unwrap(),
            epoch_records: Histogram::with_opts(
                HistogramOpts::new("epoch_records", "Input records per epoch")
                    .buckets(exponential_buckets(1.0, 2.0, 14).unwrap()),
            )
            .unwrap(),
            worker_txn_epochs: Histogram::with_opts(
                HistogramOpts::new(
                    "worker_txn_epochs",
                    "Epochs (of processors and ingress routers) committed in one transaction of the worker",
                )
                .buckets(exponential_buckets(1.0, 2.0, 10).unwrap()),
            )
            .unwrap(),
            epoch_failures: IntCounterVec::new(
                Opts::new("epoch_failures_total", "Epochs aborted and replayed"),
                &["partition"],
            )
            .unwrap(),
            delayed_pending: IntGaugeVec::new(
                Opts::new(
                    "delayed_messages_pending",
                    "Delayed messages waiting to fire",
                ),
                &["partition"],
            )
            .unwrap(),
            parked_messages: IntGaugeVec::new(
                Opts::new(
                    "parked_messages",
                    "Messages parked in the inboxes of addresses whose request outlived an epoch",
                ),
                &["partition"],
            )
            .unwrap(),
            state_entries: IntGaugeVec::new(
                Opts::new(
                    "state_entries",
                    "Addresses with committed state in a partition",
                ),
                &["partition"],
            )
            .unwrap(),
            state_bytes: IntGaugeVec::new(
                Opts::new(
                    "state_bytes",
                    "Bytes of committed address state (store keys and values) in a partition",
                ),
                &["partition"],
            )
            .unwrap(),
            restore_seconds: prometheus::GaugeVec::new(
                Opts::new(
                    "restore_seconds",
                    "Duration of the last restore of a partition",
                ),
                &["partition"],
            )
            .unwrap(),
            partitions_owned: IntGauge::new("partitions_owned", "Partitions this worker processes")
                .unwrap(),
            standby_partitions: IntGauge::new(
                "standby_partitions",
                "Partitions this worker keeps a standby replica of",
            )
            .unwrap(),
            standby_lag: IntGaugeVec::new(
                Opts::new(
                    "standby_lag_records",
                    "Changelog records of a partition its standby replica has not applied yet",
                ),
                &["partition"],
            )
            .unwrap(),
            input_age_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "input_age_seconds",
                    "Age of an input record (now minus its Kafka timestamp) when a task takes it",
                )
                .buckets(latency.clone()),
                &["input"],
            )
            .unwrap(),
            worker_threads: IntGauge::new(
                "worker_threads",
                "OS threads of this worker process (bounded: not one per partition)",
            )
            .unwrap(),
            registry,
        };
        let r = &m.registry;
        r.register(Box::new(m.ingress_records.clone())).unwrap();
        r.register(Box::new(m.ingress_bytes.clone())).unwrap();
        r.register(Box::new(m.ingress_rerouted.clone())).unwrap();
        r.register(Box::new(m.partition_records.clone())).unwrap();
        r.register(Box::new(m.partition_epochs.clone())).unwrap();
        r.register(Box::new(m.partition_commit_seconds.clone()))
            .unwrap();
        r.register(Box::new(m.consumer_lag.clone())).unwrap();
        r.register(Box::new(m.invocation_retries.clone())).unwrap();
        r.register(Box::new(m.invocations.clone())).unwrap();
        r.register(Box::new(m.batch_size.clone())).unwrap();
        r.register(Box::new(m.invocation_seconds.clone())).unwrap();
        r.register(Box::new(m.dead_letters.clone())).unwrap();
        r.register(Box::new(m.egress_records.clone())).unwrap();
        r.register(Box::new(m.epoch_commit_seconds.clone()))
            .unwrap();
        r.register(Box::new(m.epoch_records.clone())).unwrap();
        r.register(Box::new(m.worker_txn_epochs.clone())).unwrap();
        r.register(Box::new(m.epoch_failures.clone())).unwrap();
        r.register(Box::new(m.delayed_pending.clone())).unwrap();
        r.register(Box::new(m.parked_messages.clone())).unwrap();
        r.register(Box::new(m.state_entries.clone())).unwrap();
        r.register(Box::new(m.state_bytes.clone())).unwrap();
        r.register(Box::new(m.restore_seconds.clone())).unwrap();
        r.register(Box::new(m.partitions_owned.clone())).unwrap();
        r.register(Box::new(m.standby_partitions.clone())).unwrap();
        r.register(Box::new(m.standby_lag.clone())).unwrap();
        r.register(Box::new(m.worker_threads.clone())).unwrap();
        r.register(Box::new(m.input_age_seconds.clone())).unwrap();
        // Every reason kind is known: exported at 0 from the start, so a dashboard or an alert
        // sees 0 rather than no data.
        for kind in crate::dead_letter::DeadLetterKind::ALL {
            m.dead_letters.with_label_values(&[kind.as_str()]);
        }
        m
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        if let Some(n) = process_threads() {
            self.worker_threads.set(n);
        }
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut out)
            .expect("text encoding never fails");
        out
    }
}

/// The `Threads:` line of /proc/self/status (Linux; `None` elsewhere).
pub fn process_threads() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

impl Metrics {
    /// Sets a partition's state gauges.
    pub fn set_state_size(&self, partition: i32, size: crate::store::StateSize) {
        let p = partition.to_string();
        self.state_entries
            .with_label_values(&[&p])
            .set(size.entries as i64);
        self.state_bytes
            .with_label_values(&[&p])
            .set(size.bytes as i64);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dead_letter_kind_is_exported_at_zero_from_the_start() {
        let text = Metrics::new().render();
        for kind in crate::dead_letter::DeadLetterKind::ALL {
            let line = format!("keyflow_dead_letters_total{{reason=\"{kind}\"}} 0");
            assert!(text.contains(&line), "missing `{line}` in:\n{text}");
        }
    }
}
