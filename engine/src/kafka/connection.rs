//! Where the Kafka cluster is and how to reach it: the bootstrap servers plus the user's
//! client properties (security settings above all), given to every client the engine and the
//! CLI create, and the check at start that they work.
//!
//! Invariants: a [`Connection`] holds only properties librdkafka knows, none of the
//! [`RESERVED`] ones the engine sets itself (so nothing a user gives can weaken a transaction
//! or a read_committed read), and no `bootstrap.servers` (that is `--bootstrap`).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientConfig;

/// Properties the engine sets on its clients itself, with what controls them instead.
/// A user property naming one is refused rather than silently overridden.
pub const RESERVED: &[(&str, &str)] = &[
    ("bootstrap.servers", "use --bootstrap"),
    ("metadata.broker.list", "use --bootstrap"),
    ("group.id", "the groups are named after --cluster"),
    (
        "group.instance.id",
        "it comes from --worker-id with --static-membership",
    ),
    ("group.protocol", "the workers' group is a classic one"),
    (
        "partition.assignment.strategy",
        "the workers' group assigns cooperative-sticky",
    ),
    ("session.timeout.ms", "use --session-timeout"),
    (
        "transactional.id",
        "it comes from --cluster and --worker-id",
    ),
    ("transaction.timeout.ms", "use --transaction-timeout"),
    ("enable.idempotence", "exactly-once needs it on"),
    ("isolation.level", "exactly-once needs read_committed"),
    ("enable.auto.commit", "offsets commit with each transaction"),
    (
        "enable.auto.offset.store",
        "offsets commit with each transaction",
    ),
    (
        "auto.offset.reset",
        "use module.yaml's `autoOffsetResetPosition`",
    ),
    (
        "enable.partition.eof",
        "the engine's readers need their own setting",
    ),
    ("message.timeout.ms", "it follows --transaction-timeout"),
    (
        "message.max.bytes",
        "it follows the topics' max.message.bytes",
    ),
    (
        "statistics.interval.ms",
        "the lag gauges need their own setting",
    ),
];

/// Property names whose values must agree across every client of one engine: they say which
/// listener is used and as whom (module.yaml may repeat them, but not differ).
pub fn is_security_property(key: &str) -> bool {
    key == "security.protocol" || key.starts_with("sasl.") || key.starts_with("ssl.")
}

/// Why user client properties were refused.
#[derive(Debug, thiserror::Error)]
pub enum PropertyError {
    #[error("{origin}: `{line}` is not `key=value`")]
    Syntax { origin: String, line: String },
    #[error("{origin}: Kafka property `{key}` is set by the engine, not by users ({instead})")]
    Reserved {
        origin: String,
        key: String,
        instead: &'static str,
    },
    #[error("Kafka client properties: {0}")]
    Refused(String),
    #[error("reading the Kafka properties file {path}: {err}")]
    File { path: String, err: std::io::Error },
}

/// The bootstrap servers and the user's client properties, shared by every client.
#[derive(Clone, PartialEq, Eq)]
pub struct Connection {
    bootstrap: String,
    properties: Arc<[(String, String)]>,
}

impl Connection {
    /// `bootstrap` with no further properties (a PLAINTEXT listener).
    pub fn plain(bootstrap: impl Into<String>) -> Connection {
        Connection {
            bootstrap: bootstrap.into(),
            properties: Arc::new([]),
        }
    }

    /// `bootstrap` with `properties` (later entries win over earlier ones with the same key),
    /// each from the origin named beside it. Refuses reserved keys, and keys or values
    /// librdkafka refuses (with its own message).
    pub fn new(
        bootstrap: impl Into<String>,
        properties: Vec<(String, String, String)>,
    ) -> Result<Connection, PropertyError> {
        let mut kept: Vec<(String, String)> = Vec::new();
        for (origin, key, value) in properties {
            if let Some((_, instead)) = RESERVED.iter().find(|(k, _)| *k == key) {
                return Err(PropertyError::Reserved {
                    origin,
                    key,
                    instead,
                });
            }
            kept.retain(|(k, _)| *k != key);
            kept.push((key, value));
        }
        let conn = Connection {
            bootstrap: bootstrap.into(),
            properties: kept.into(),
        };
        conn.config()
            .create_native_config()
            .map_err(|e| PropertyError::Refused(librdkafka_message(&e)))?;
        Ok(conn)
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The user's properties, in the order they apply.
    pub fn properties(&self) -> &[(String, String)] {
        &self.properties
    }

    /// The value of user property `key`, if set.
    pub fn property(&self, key: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The listener as a person would name it: `127.0.0.1:9094 (SASL_SSL, SCRAM-SHA-512 as
    /// user alice)`.
    pub fn describe(&self) -> String {
        let protocol = self.property("security.protocol").unwrap_or("PLAINTEXT");
        let sasl = protocol.to_ascii_uppercase().starts_with("SASL");
        let mut s = format!("{} ({protocol}", self.bootstrap);
        if sasl {
            let mechanism = self
                .property("sasl.mechanisms")
                .or(self.property("sasl.mechanism"))
                .unwrap_or("GSSAPI");
            s.push_str(&format!(", {mechanism}"));
            if let Some(user) = self.property("sasl.username") {
                s.push_str(&format!(" as user {user}"));
            }
        }
        s.push(')');
        s
    }

    /// Settings every client of the engine shares: the engine's defaults, then the user's.
    pub fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap)
            .set("socket.nagle.disable", "true")
            // Only 127.0.0.1 brokers in tests: fail over to a restarted broker quickly.
            .set("reconnect.backoff.max.ms", "1000")
            .set("log_level", "4");
        for (k, v) in self.properties.iter() {
            c.set(k, v);
        }
        c
    }
}

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.bootstrap)
    }
}

/// Passwords stay out of debug output.
impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<(&str, &str)> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let secret = k.contains("password") || k.contains("secret") || k.ends_with(".pem");
                (k.as_str(), if secret { "***" } else { v.as_str() })
            })
            .collect();
        f.debug_struct("Connection")
            .field("bootstrap", &self.bootstrap)
            .field("properties", &shown)
            .finish()
    }
}

/// librdkafka's own words for a refused setting (`No such configuration property: "x"`).
fn librdkafka_message(e: &KafkaError) -> String {
    match e {
        KafkaError::ClientConfig(_, desc, _, _) => desc.clone(),
        other => other.to_string(),
    }
}

/// The `key=value` pairs of a Java `.properties` text (`#` and `!` comments, `=`, `:` or a
/// space between key and value, `\` continuing a line), each with `origin:line` for errors.
pub fn parse_properties_file(
    origin: &str,
    text: &str,
) -> Result<Vec<(String, String, String)>, PropertyError> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        let mut logical = line.trim_start().to_string();
        if logical.is_empty() || logical.starts_with('#') || logical.starts_with('!') {
            continue;
        }
        while ends_in_continuation(&logical) {
            logical.pop();
            match lines.next() {
                Some((_, next)) => logical.push_str(next.trim_start()),
                None => break,
            }
        }
        let at = format!("{origin} line {}", i + 1);
        let (key, value) = split_java_property(&logical).ok_or_else(|| PropertyError::Syntax {
            origin: at.clone(),
            line: logical.clone(),
        })?;
        out.push((at, key, value));
    }
    Ok(out)
}

fn ends_in_continuation(line: &str) -> bool {
    line.chars().rev().take_while(|c| *c == '\\').count() % 2 == 1
}

/// Splits at the first unescaped `=`, `:` or whitespace, unescaping both sides.
fn split_java_property(line: &str) -> Option<(String, String)> {
    let mut key = String::new();
    let mut chars = line.chars();
    let mut sep_seen = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => key.push(unescape(chars.next()?)),
            '=' | ':' => {
                sep_seen = true;
                break;
            }
            c if c.is_whitespace() => break,
            c => key.push(c),
        }
    }
    let mut rest = chars.as_str().trim_start();
    if !sep_seen {
        if let Some(r) = rest.strip_prefix(['=', ':']) {
            rest = r.trim_start();
        }
    }
    let mut value = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => value.push(unescape(chars.next()?)),
            c => value.push(c),
        }
    }
    (!key.is_empty()).then_some((key, value))
}

fn unescape(c: char) -> char {
    match c {
        't' => '\t',
        'n' => '\n',
        'r' => '\r',
        'f' => '\x0c',
        other => other,
    }
}

/// The pairs of a `k=v,k=v` list (`--kafka-properties`, `KEYFLOW_KAFKA_PROPERTIES`): entries
/// are separated by newlines, or by a comma followed by `key=` (so `debug=broker,security`
/// keeps its comma).
pub fn parse_properties_list(
    origin: &str,
    text: &str,
) -> Result<Vec<(String, String, String)>, PropertyError> {
    let mut entries: Vec<String> = Vec::new();
    for line in text.lines() {
        let mut first = true;
        for part in line.split(',') {
            let starts_entry = part
                .split_once('=')
                .is_some_and(|(k, _)| is_key(k.trim()) && !k.trim().is_empty());
            match entries.last_mut() {
                Some(last) if !first && !starts_entry => {
                    last.push(',');
                    last.push_str(part);
                }
                _ => entries.push(part.to_string()),
            }
            first = false;
        }
    }
    entries
        .into_iter()
        .filter(|e| !e.trim().is_empty())
        .map(|e| parse_property(&e).map(|(k, v)| (origin.to_string(), k, v)))
        .map(|r| {
            r.map_err(|line| PropertyError::Syntax {
                origin: origin.to_string(),
                line,
            })
        })
        .collect()
}

fn is_key(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `key=value` (the value may contain `=`); Err gives the text back.
pub fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(s.to_string()),
    }
}

/// Why the cluster could not be used at start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("Kafka at {listener} refused this client: {reason} (check the credentials and the mechanism in --kafka-property / --kafka-properties-file; `keyflow run --help` shows them)")]
    Refused { listener: String, reason: String },
    #[error("cannot reach Kafka at {listener} within {}s{last} (is the broker running? scripts/kafka.sh start; does that listener speak {protocol}?)", timeout.as_secs())]
    Unreachable {
        listener: String,
        protocol: String,
        timeout: Duration,
        last: String,
    },
    #[error("creating a Kafka client: {0}")]
    Client(#[from] KafkaError),
}

/// Asks the cluster for its metadata, within `timeout`: Ok once it answers; an authentication
/// or TLS failure ends the wait at once (librdkafka would otherwise retry it forever).
pub fn check(conn: &Connection, timeout: Duration) -> Result<(), ConnectError> {
    let watch = Watch::default();
    let mut config = conn.config();
    config.set(
        "socket.connection.setup.timeout.ms",
        timeout.as_millis().max(1000).to_string(),
    );
    let client: BaseConsumer<Watch> = config.create_with_context(watch.clone())?;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let step = left.min(Duration::from_millis(250));
        let answered = client.fetch_metadata(None, step);
        // Errors reach the context only while the client is polled.
        while let Some(polled) = client.poll(Duration::ZERO) {
            if let Err(e) = polled {
                watch.error(e, "");
            }
        }
        if let Some(reason) = watch.refused() {
            return Err(ConnectError::Refused {
                listener: conn.describe(),
                reason,
            });
        }
        if answered.is_ok() {
            return Ok(());
        }
        if left.is_zero() {
            let last = match watch.last() {
                Some(m) => format!("; last client message: {m}"),
                None => String::new(),
            };
            return Err(ConnectError::Unreachable {
                listener: conn.describe(),
                protocol: conn
                    .property("security.protocol")
                    .unwrap_or("PLAINTEXT")
                    .to_string(),
                timeout,
                last,
            });
        }
    }
}

/// Remembers the client's errors: the last one, and the first that means "refused".
#[derive(Clone, Default)]
struct Watch {
    last: Arc<Mutex<Option<String>>>,
    refused: Arc<Mutex<Option<String>>>,
}

impl Watch {
    fn refused(&self) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn last(&self) -> Option<String> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Errors that retrying cannot fix: wrong credentials, a mechanism the listener does not
/// offer, a certificate that does not verify.
fn is_refusal(error: &KafkaError, reason: &str) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SSL)
    ) || reason.contains("SASL authentication error")
        || reason.contains("SSL handshake failed")
        || reason.contains("Unsupported SASL mechanism")
}

impl ClientContext for Watch {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", "{error}: {reason}");
        let text = match reason {
            "" => error.to_string(),
            r => r.to_string(),
        };
        if is_refusal(&error, reason) {
            let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
            refused.get_or_insert_with(|| text.clone());
        }
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(text);
    }
}

impl ConsumerContext for Watch {}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: Vec<(String, String, String)>) -> Vec<(String, String)> {
        v.into_iter().map(|(_, k, v)| (k, v)).collect()
    }

    #[test]
    fn properties_files_read_as_java_does() {
        let text = "# security\n! also a comment\n\nsecurity.protocol=SASL_SSL\n  sasl.mechanism : SCRAM-SHA-512\nsasl.username alice\nsasl.password=p\\=w\\\\d\nssl.ca.location=/etc/a\\\n    b.pem\n";
        let got = pairs(parse_properties_file("f", text).unwrap());
        assert_eq!(
            got,
            [
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("sasl.username", "alice"),
                ("sasl.password", "p=w\\d"),
                ("ssl.ca.location", "/etc/ab.pem"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        let origins: Vec<String> = parse_properties_file("f", text)
            .unwrap()
            .into_iter()
            .map(|(o, _, _)| o)
            .collect();
        assert_eq!(origins[0], "f line 4");
    }

    #[test]
    fn lists_split_at_commas_that_start_a_property() {
        let got = pairs(
            parse_properties_list(
                "env",
                "security.protocol=SSL,debug=broker,security\nssl.ca.location=/a,b",
            )
            .unwrap(),
        );
        assert_eq!(
            got,
            [
                ("security.protocol", "SSL"),
                ("debug", "broker,security"),
                ("ssl.ca.location", "/a,b"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert!(matches!(
            parse_properties_list("env", "novalue"),
            Err(PropertyError::Syntax { .. })
        ));
    }

    fn conn(props: &[(&str, &str)]) -> Result<Connection, PropertyError> {
        Connection::new(
            "127.0.0.1:9092",
            props
                .iter()
                .map(|(k, v)| ("--kafka-property".to_string(), k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn engine_settings_are_refused_with_what_controls_them() {
        let err = conn(&[("isolation.level", "read_uncommitted")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`isolation.level` is set by the engine")
                && err.contains("--kafka-property"),
            "{err}"
        );
        let err = conn(&[("transactional.id", "x")]).unwrap_err().to_string();
        assert!(err.contains("--worker-id"), "{err}");
        let err = conn(&[("session.timeout.ms", "30000")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("use --session-timeout"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_in_librdkafkas_words() {
        let err = conn(&[("sasl.mechanismz", "PLAIN")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("No such configuration property"), "{err}");
        assert!(err.contains("sasl.mechanismz"), "{err}");
        let err = conn(&[("security.protocol", "SASL_TLS")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("security.protocol"), "{err}");
    }

    #[test]
    fn later_properties_win_and_reach_every_client() {
        let c = conn(&[
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanism", "SCRAM-SHA-256"),
            ("sasl.username", "alice"),
            ("sasl.password", "secret"),
            ("security.protocol", "SASL_SSL"),
        ])
        .unwrap();
        assert_eq!(c.property("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.config().get("sasl.username"), Some("alice"));
        assert_eq!(
            c.describe(),
            "127.0.0.1:9092 (SASL_SSL, SCRAM-SHA-256 as user alice)"
        );
        assert!(!format!("{c:?}").contains("secret"));
    }
}
