//! The engine's own settings (the process), separate from module.yaml (the application).
//! Every setting has a flag and an environment variable; the defaults suit one worker on a
//! laptop and are documented on each field (`keyflow run --help` prints them).

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::kafka::{Connection, PropertyError};

#[derive(Debug, Clone, Args)]
pub struct EngineConfig {
    /// A YAML file of settings: keys are these flags' names (`commit-interval: 20ms`).
    /// Precedence: flags, then environment variables, then this file, then the defaults.
    #[arg(long, env = "KEYFLOW_CONFIG")]
    pub config: Option<PathBuf>,

    /// The application's module file (StateFun 3.x module.yaml).
    #[arg(long, env = "KEYFLOW_MODULE", default_value = "module.yaml")]
    pub module: PathBuf,

    /// Cluster name: prefixes the internal topics and transactional ids. Workers with the same
    /// name share the partitions.
    #[arg(long, env = "KEYFLOW_CLUSTER", default_value = "keyflow")]
    pub cluster: String,

    /// Number of partitions, fixed when the cluster is created. Without it, a worker takes the
    /// count of the cluster's existing `<cluster>-messages` topic, and a new cluster gets
    /// [`DEFAULT_PARTITIONS`].
    #[arg(long, env = "KEYFLOW_PARTITIONS")]
    pub partitions: Option<NonZeroU32>,

    /// How this worker expects the cluster to read its ingress topics. `true` (or the bare
    /// flag): directly, each co-partitioned ingress topic (exactly `--partitions` partitions,
    /// keyed by function id with Kafka's default partitioner) read by the partition of the
    /// same number, in its own epoch's transaction (one transaction per input instead of
    /// two); other ingress topics are routed. `false`: routed, every ingress record written
    /// to `<cluster>-messages` by a router first. The mode is the cluster's, recorded in
    /// `<cluster>-meta` by its first worker (direct for a new cluster unless this says
    /// `false`, routed for a cluster created before the mode was recorded). Not given: follow
    /// the record. Given and different from the record: the worker refuses to start (switch a
    /// stopped cluster with `keyflow ingress-mode`).
    #[arg(long, env = "KEYFLOW_DIRECT_INGRESS", action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub direct_ingress: Option<bool>,

    /// This worker's id, unique in the cluster; names its data folder. Default: the host name
    /// (two workers on one host need distinct ids).
    #[arg(long, env = "KEYFLOW_WORKER_ID")]
    pub worker_id: Option<String>,

    /// Folder for local state checkpoints (sled); each worker uses `<data-dir>/<worker-id>`.
    #[arg(long, env = "KEYFLOW_DATA_DIR", default_value = ".data")]
    pub data_dir: PathBuf,

    /// Kafka bootstrap servers for the internal topics. Default: the first ingress's
    /// `address` in module.yaml, else 127.0.0.1:9092.
    #[arg(long, env = "KEYFLOW_BOOTSTRAP")]
    pub bootstrap: Option<String>,

    #[command(flatten)]
    pub kafka: KafkaProperties,

    /// Longest time an epoch takes input before it commits (e.g. `50ms`, `1s`). An idle
    /// partition commits at once.
    #[arg(long, env = "KEYFLOW_COMMIT_INTERVAL", default_value = "50ms", value_parser = parse_duration)]
    pub commit_interval: Duration,

    /// An epoch whose input goes idle before its window ends commits at once (the lowest
    /// latency for a trickle of records) only while the partition's previous epoch took
    /// fewer input records than this; a busier partition keeps taking input until the window
    /// closes, so that its commits stay large (0: always wait for the window). See
    /// docs/design.md, "Epoch sizing".
    #[arg(long, env = "KEYFLOW_EARLY_CLOSE_BELOW", default_value = "8")]
    pub early_close_below: usize,

    /// Most input records one epoch takes before it commits.
    #[arg(long, env = "KEYFLOW_MAX_EPOCH_RECORDS", default_value = "5000")]
    pub max_epoch_records: usize,

    /// How long a closing epoch waits for slow invocations (a function that is down and being
    /// retried, a slow call) before it commits without them. Their messages are kept in the
    /// partition's state (the address's inbox) until they complete, so other addresses go on.
    #[arg(long, env = "KEYFLOW_PARK_AFTER", default_value = "500ms", value_parser = parse_duration)]
    pub park_after: Duration,

    /// Most messages one address may hold waiting (its request in flight plus its queue,
    /// parked or not). A message arriving for an address at this bound is dead-lettered
    /// (`inbox-full`) instead of queued, so a hot id behind a down endpoint cannot grow
    /// without bound while the other addresses of its partition go on.
    #[arg(long, env = "KEYFLOW_MAX_INBOX_MESSAGES", default_value = "100000")]
    pub max_inbox_messages: NonZeroUsize,

    /// Most bytes (encoded envelopes) one address may hold waiting; past it, as
    /// `--max-inbox-messages`: the arriving message is dead-lettered (`inbox-full`).
    /// Default 64 MiB.
    #[arg(long, env = "KEYFLOW_MAX_INBOX_BYTES", default_value = "67108864")]
    pub max_inbox_bytes: NonZeroUsize,

    /// Most bytes (encoded envelopes) a partition holds waiting in memory over all its
    /// addresses. Past it the partition takes no input at all until responses drain it
    /// (back-pressure). Default 256 MiB.
    #[arg(
        long,
        env = "KEYFLOW_MAX_PARTITION_QUEUED_BYTES",
        default_value = "268435456"
    )]
    pub max_partition_queued_bytes: NonZeroUsize,

    /// Bearer token the HTTP ingress requires (`Authorization: Bearer <token>`); without
    /// it every request is served. Prefer the environment variable over the flag (the flag
    /// shows in process listings).
    #[arg(long, env = "KEYFLOW_INGRESS_TOKEN", hide_env_values = true)]
    pub ingress_token: Option<String>,

    /// Bearer token the admin server requires, except for `/health` and `/ready` (probes).
    #[arg(long, env = "KEYFLOW_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// PEM certificate chain: with `--tls-key`, the HTTP ingress and the admin server speak
    /// HTTPS only (rustls).
    #[arg(long, env = "KEYFLOW_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for `--tls-cert`.
    #[arg(long, env = "KEYFLOW_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Admin HTTP address: /health, /ready, /metrics.
    #[arg(long, env = "KEYFLOW_ADMIN_ADDR", default_value = "127.0.0.1:8090")]
    pub admin_addr: SocketAddr,

    /// HTTP ingress address: `POST /<namespace>/<type>/<id>` delivers a message (with
    /// `?reply=true`, waits for the function's reply), `GET /replies/<message-id>`,
    /// `GET /state/<namespace>/<type>/<id>`. Default `127.0.0.1:8081`, taken only if free (a
    /// busy default port is logged and the worker runs without HTTP ingress); an address given
    /// here must be free. `off` disables the HTTP ingress.
    #[arg(long, env = "KEYFLOW_INGRESS_ADDR", value_parser = parse_ingress_addr)]
    pub ingress_addr: Option<IngressAddr>,

    /// Where the playground ports of module.yaml listen (`io.statefun.playground.v1/ingress`
    /// and `/egress`, each on its `port`): an IP address, `0.0.0.0` by default as in the
    /// playground image, or `off` to serve neither on this worker (its functions still write
    /// playground egress records). With several workers on one machine, give the ports to one.
    #[arg(long, env = "KEYFLOW_PLAYGROUND_BIND", default_value = "0.0.0.0", value_parser = parse_playground_bind)]
    pub playground_bind: PlaygroundBind,

    /// How long a request-reply HTTP request waits for the function's reply before it answers
    /// 504 with the message id (the reply can be fetched later at `/replies/<message-id>`).
    #[arg(long, env = "KEYFLOW_REPLY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub reply_timeout: Duration,

    /// How long replies to HTTP requests stay in `<cluster>-replies` (its `retention.ms`, set
    /// when the engine creates the topic): a 504's `replyUrl` finds a late reply, on any
    /// worker and after restarts, for about this long. For an outcome kept reliably, send an
    /// `Idempotency-Key` (kept `--idempotency-retention`).
    #[arg(long, env = "KEYFLOW_REPLY_RETENTION", default_value = "24h", value_parser = parse_duration)]
    pub reply_retention: Duration,

    /// Largest HTTP ingress request body, in bytes (larger: 413). Default: what fits in a
    /// message envelope on `<cluster>-messages` (its max.message.bytes less record framing
    /// and 4 KiB for the envelope's other fields; 1,043,980 with Kafka's defaults). A larger
    /// value is lowered to that at startup, with a warning.
    #[arg(long, env = "KEYFLOW_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,

    /// Replication factor of the topics the engine creates (-1: the broker's default).
    #[arg(long, env = "KEYFLOW_REPLICATION_FACTOR", default_value = "-1")]
    pub replication_factor: i32,

    /// Partitions of ingress and egress topics the engine creates when they are missing.
    /// Default 1, except for ingress topics of a cluster that reads them directly: those get
    /// the cluster's partition count, so that they are co-partitioned with it.
    #[arg(long, env = "KEYFLOW_TOPIC_PARTITIONS")]
    pub topic_partitions: Option<NonZeroU32>,

    /// Consumer-group session timeout: how long a silent worker keeps its partitions.
    /// 6 s is the broker's smallest allowed value (`group.min.session.timeout.ms`): failover
    /// after a crash takes about this long plus a restore.
    #[arg(long, env = "KEYFLOW_SESSION_TIMEOUT", default_value = "6s", value_parser = parse_duration)]
    pub session_timeout: Duration,

    /// Static group membership (`group.instance.id` = cluster + worker id): a worker that
    /// restarts with the same id gets its partitions back at once, without a rebalance. The
    /// price: a worker that stops for good keeps its partitions until the session timeout.
    #[arg(long, env = "KEYFLOW_STATIC_MEMBERSHIP", default_value = "true", action = clap::ArgAction::Set)]
    pub static_membership: bool,

    /// Standby replicas of each partition: a worker keeps a standby of a partition it does not
    /// own when it ranks among the partition's first N other members (rendezvous hashing), by
    /// tailing the partition's changelog into its local store, so that taking the partition
    /// over replays only the tail. 0: none (docs/design.md, "Standby replicas").
    #[arg(long, env = "KEYFLOW_STANDBY_REPLICAS", default_value = "0")]
    pub standby_replicas: u32,

    /// `transaction.timeout.ms` of the worker's transactions (one per commit round, so they
    /// last milliseconds): also how long a worker that died for good can hold the partitions
    /// it was writing to before the broker aborts its transaction (a worker restarted with
    /// the same id aborts it at once). A module's exactly-once egress `transactionTimeout`
    /// shorter than this lowers it.
    #[arg(long, env = "KEYFLOW_TRANSACTION_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub transaction_timeout: Duration,

    /// How long the outcome of a message with an idempotency key is kept for repeats.
    #[arg(long, env = "KEYFLOW_IDEMPOTENCY_RETENTION", default_value = "24h", value_parser = parse_duration)]
    pub idempotency_retention: Duration,

    /// How often expired state is swept from the store (it is never served before that).
    #[arg(long, env = "KEYFLOW_EXPIRY_SWEEP", default_value = "10s", value_parser = parse_duration)]
    pub expiry_sweep: Duration,
}

/// librdkafka properties for every Kafka client (security settings above all): docs/security.md.
/// Later sources win: the file, then the list, then each `--kafka-property`.
#[derive(Debug, Clone, Default, Args)]
pub struct KafkaProperties {
    /// A librdkafka property for every Kafka client, as KEY=VALUE (repeatable), e.g.
    /// `security.protocol=SASL_SSL`. Settings the engine controls (isolation.level,
    /// transactional.id, enable.idempotence, group.id, ...) are refused.
    #[arg(long = "kafka-property", value_name = "KEY=VALUE", value_parser = parse_kafka_property)]
    pub kafka_property: Vec<(String, String)>,

    /// Several properties in one value: KEY=VALUE entries separated by newlines, or by commas
    /// (a comma starts a new entry only when `key=` follows it, so `debug=broker,security`
    /// stays one entry). In the --config file: a mapping of keys to values.
    #[arg(
        long,
        env = "KEYFLOW_KAFKA_PROPERTIES",
        value_name = "LIST",
        hide_env_values = true
    )]
    pub kafka_properties: Option<String>,

    /// A Java .properties file of client properties (`key=value` lines, `#` comments), like
    /// the `--command-config` file of Kafka's own tools (librdkafka's names).
    #[arg(long, env = "KEYFLOW_KAFKA_PROPERTIES_FILE", value_name = "PATH")]
    pub kafka_properties_file: Option<PathBuf>,
}

fn parse_kafka_property(s: &str) -> Result<(String, String), String> {
    crate::kafka::parse_property(s).map_err(|s| format!("`{s}` is not KEY=VALUE"))
}

impl KafkaProperties {
    /// The connection every client of this process uses: `bootstrap` with these properties,
    /// checked (reserved and unknown keys refused) but not yet tried against the cluster.
    pub fn connection(&self, bootstrap: &str) -> Result<Connection, PropertyError> {
        let mut all = Vec::new();
        if let Some(path) = &self.kafka_properties_file {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|err| PropertyError::File {
                path: shown.clone(),
                err,
            })?;
            all.extend(crate::kafka::parse_properties_file(&shown, &text)?);
        }
        if let Some(list) = &self.kafka_properties {
            all.extend(crate::kafka::parse_properties_list(
                "--kafka-properties (KEYFLOW_KAFKA_PROPERTIES)",
                list,
            )?);
        }
        for (k, v) in &self.kafka_property {
            all.push(("--kafka-property".to_string(), k.clone(), v.clone()));
        }
        Connection::new(bootstrap, all)
    }
}

/// Where the HTTP ingress listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngressAddr {
    Off,
    At(SocketAddr),
}

/// Where the playground ports listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaygroundBind {
    Off,
    At(std::net::IpAddr),
}

fn parse_playground_bind(s: &str) -> Result<PlaygroundBind, String> {
    if s.trim() == "off" {
        return Ok(PlaygroundBind::Off);
    }
    s.trim()
        .parse()
        .map(PlaygroundBind::At)
        .map_err(|_| format!("`{s}` is not an IP address like 0.0.0.0 or 127.0.0.1 (or `off`)"))
}

/// The HTTP ingress's address when `--ingress-addr` is not given.
pub const DEFAULT_INGRESS_ADDR: &str = "127.0.0.1:8081";

fn parse_ingress_addr(s: &str) -> Result<IngressAddr, String> {
    if s.trim() == "off" {
        return Ok(IngressAddr::Off);
    }
    s.trim()
        .parse()
        .map(IngressAddr::At)
        .map_err(|_| format!("`{s}` is not an address like 127.0.0.1:8081 (or `off`)"))
}

/// The partitions of a new cluster when `--partitions` is not given: how many workers it can
/// grow to without `keyflow rescale` (docs/benchmarks.md, "Partitions: 8, 64, 256").
pub const DEFAULT_PARTITIONS: u32 = 64;

impl EngineConfig {
    pub fn worker_id(&self) -> String {
        self.worker_id.clone().unwrap_or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "worker".to_string())
        })
    }

    pub fn topic_messages(&self) -> String {
        format!("{}-messages", self.cluster)
    }

    pub fn topic_state(&self) -> String {
        format!("{}-state", self.cluster)
    }

    /// The consumer group of the cluster's workers: it assigns the partitions, and every input
    /// position is committed in it with the worker's transaction (KIP-447 fencing).
    pub fn members_group(&self) -> String {
        format!("{}-members", self.cluster)
    }

    /// Records keyed by a callback token: each delivers its value like `POST /callbacks/<token>`.
    pub fn topic_callbacks(&self) -> String {
        format!("{}-callbacks", self.cluster)
    }

    pub fn topic_dead_letters(&self) -> String {
        format!("{}-deadletters", self.cluster)
    }

    /// Replies to HTTP ingress requests (1 partition, read by every worker).
    /// The Kafka topic keeping the records of playground egress topic `topic`.
    pub fn topic_playground(&self, topic: &str) -> String {
        crate::module::PlaygroundEgress::kafka_topic(&self.cluster, topic)
    }

    pub fn topic_replies(&self) -> String {
        format!("{}-replies", self.cluster)
    }

    /// Partitions of the egress topics (and of the ingress topics of a routed cluster) the
    /// engine creates: `--topic-partitions`, 1 by default.
    pub fn topic_partitions(&self) -> i32 {
        self.topic_partitions.map_or(1, |n| n.get() as i32)
    }

    /// Partitions of an ingress topic the engine creates: `--topic-partitions` when given,
    /// else the cluster's partition count when the cluster reads its ingress directly (the
    /// topic is then co-partitioned by construction), else 1.
    pub fn ingress_topic_partitions(&self, direct: bool) -> i32 {
        match self.topic_partitions {
            Some(n) => n.get() as i32,
            None if direct => self.partition_count(),
            None => 1,
        }
    }

    /// The record of the cluster's ingress mode (`ingress_mode`): one partition, kept forever.
    pub fn topic_meta(&self) -> String {
        crate::ingress_mode::topic(&self.cluster)
    }

    /// The cluster's partitions: `--partitions`, or what [`EngineConfig::resolve_partitions`]
    /// found.
    pub fn partition_count(&self) -> i32 {
        self.partitions
            .expect("the partition count is resolved when the worker starts")
            .get() as i32
    }

    /// Without `--partitions`: the partition count of the cluster's `<cluster>-messages` topic
    /// when it exists (`existing`), else [`DEFAULT_PARTITIONS`]. Returns where it came from.
    pub fn resolve_partitions(&mut self, existing: Option<i32>) -> &'static str {
        if self.partitions.is_some() {
            return "--partitions";
        }
        let (n, from) = match existing.and_then(|n| NonZeroU32::new(n.max(0) as u32)) {
            Some(n) => (n, "the cluster's existing topics"),
            None => (
                NonZeroU32::new(DEFAULT_PARTITIONS).expect("not zero"),
                "the default for a new cluster",
            ),
        };
        self.partitions = Some(n);
        from
    }
}

/// Loads the `--config` file named in `args` (or `KEYFLOW_CONFIG`), before the flags are
/// parsed: each setting becomes the default of its environment variable unless that variable
/// is set already, which gives the documented precedence.
pub fn apply_config_file(args: &[String]) -> Result<(), String> {
    let named = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| {
            args.iter()
                .find_map(|a| a.strip_prefix("--config=").map(str::to_string))
        })
        .or_else(|| std::env::var("KEYFLOW_CONFIG").ok());
    let Some(path) = named else { return Ok(()) };
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("reading config file {path}: {e}"))?;
    for (key, env, value) in
        config_settings(&text).map_err(|e| format!("config file {path}: {e}"))?
    {
        if std::env::var_os(&env).is_none() {
            tracing::debug!(key, env, "setting from the config file");
            std::env::set_var(env, value);
        }
    }
    Ok(())
}

/// (key, environment variable, value) for every entry of a config file.
fn config_settings(text: &str) -> Result<Vec<(String, String, String)>, String> {
    let cmd = <EngineConfig as clap::Args>::augment_args(clap::Command::new("run"));
    let known: Vec<(String, String)> = cmd
        .get_arguments()
        .filter_map(|a| {
            Some((
                a.get_long()?.to_string(),
                a.get_env()?.to_string_lossy().into_owned(),
            ))
        })
        .filter(|(long, _)| long != "config")
        .collect();
    let map: std::collections::BTreeMap<String, serde_norway::Value> =
        match serde_norway::from_str(text) {
            Ok(m) => m,
            Err(e) => return Err(format!("not a YAML mapping of settings: {e}")),
        };
    let mut out = Vec::new();
    for (key, value) in map {
        let Some((_, env)) = known.iter().find(|(long, _)| *long == key) else {
            let names: Vec<&str> = known.iter().map(|(l, _)| l.as_str()).collect();
            return Err(format!(
                "unknown setting `{key}`; known settings: {}",
                names.join(", ")
            ));
        };
        let value = match value {
            // The one setting that is a mapping: as KEYFLOW_KAFKA_PROPERTIES, one per line.
            serde_norway::Value::Mapping(m) if key == "kafka-properties" => {
                let mut lines = Vec::new();
                for (k, v) in m {
                    match (scalar(&k), scalar(&v)) {
                        (Some(k), Some(v)) => lines.push(format!("{k}={v}")),
                        _ => {
                            return Err(format!(
                                "`kafka-properties` must map property names to strings, numbers or booleans, not {k:?}: {v:?}"
                            ))
                        }
                    }
                }
                lines.join("\n")
            }
            serde_norway::Value::String(s) => s,
            serde_norway::Value::Number(n) => n.to_string(),
            serde_norway::Value::Bool(b) => b.to_string(),
            other => {
                return Err(format!(
                    "setting `{key}` must be a string, number or boolean, not {other:?}"
                ))
            }
        };
        out.push((key, env.clone(), value));
    }
    Ok(out)
}

fn scalar(v: &serde_norway::Value) -> Option<String> {
    match v {
        serde_norway::Value::String(s) => Some(s.clone()),
        serde_norway::Value::Number(n) => Some(n.to_string()),
        serde_norway::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Parses `250ms`, `2s`, `1min`, `1h` or a bare number of milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (examples: 250ms, 2s, 1min)"))?;
    let ms = match unit.trim() {
        "" | "ms" => n,
        "s" => n * 1_000,
        "min" | "m" => n * 60_000,
        "h" => n * 3_600_000,
        other => {
            return Err(format!(
                "`{other}` is not a duration unit in `{s}`; use ms, s, min or h"
            ))
        }
    };
    Ok(Duration::from_millis(ms))
}

/// A duration as `parse_duration` reads it, in the largest unit that divides it (`24h`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0ms".to_string(),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}min", ms / 60_000),
        _ if ms.is_multiple_of(1_000) => format!("{}s", ms / 1_000),
        _ => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests;
