//! "The limit": what the engine's two external costs allow on their own, measured in the same
//! run as the engine so that its figures can be read as ratios.
//!
//! - [`copy`]: a plain transactional consume-produce copy loop (read_committed in, one record
//!   out per record in, offsets sent to the transaction, commit every 50 ms or 5,000 records:
//!   the engine's defaults). One engine hop is at least this.
//! - [`http`]: the function HTTP round trip alone: a realistic `ToFunction` batch of one
//!   AddToCart invocation POSTed to the shopping-cart functions by N concurrent clients.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use keyflow_protocol::{from_function, to_function, Address, FromFunction, Message as _};
use keyflow_protocol::{ToFunction, TypedValue};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

use crate::kafka::{self, Producer};

const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// Parameters of the copy loop.
pub struct CopyConfig<'a> {
    pub bootstrap: &'a str,
    pub run: &'a str,
    pub records: usize,
    pub partitions: i32,
    pub window: Duration,
    pub max_records: usize,
}

/// The topics the copy loop creates (deleted by `keyflow-bench cleanup`).
pub fn copy_topics(run: &str) -> [String; 2] {
    [format!("limit-src-{run}"), format!("limit-dst-{run}")]
}

/// Fills a source topic with `records` AddToCart-like records, then copies it to a second
/// topic in transactions; returns the figures as JSON.
pub fn copy(c: &CopyConfig<'_>) -> anyhow::Result<Value> {
    let [src, dst] = copy_topics(c.run);
    kafka::ensure_topics_with(c.bootstrap, &[&src, &dst], c.partitions)?;
    let fill_start = Instant::now();
    let mut filler = Producer::new(c.bootstrap, 5)?;
    for i in 0..c.records {
        let user = format!("{}-u{:04}", c.run, i % 1000);
        let value = json!({"userId": user, "itemId": format!("{}-item{:03}", c.run, i % 100), "quantity": 1 + i % 5});
        filler.send(&src, &user, &value.to_string())?;
    }
    filler.flush()?;
    let fill_seconds = fill_start.elapsed().as_secs_f64();
    drop(filler);

    let consumer: BaseConsumer = kafka::config(c.bootstrap)
        .set("group.id", format!("{}-limit-copy", c.run))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()
        .context("creating the copy loop's consumer")?;
    let md = consumer
        .fetch_metadata(Some(&src), Duration::from_secs(10))
        .context("source topic metadata")?;
    let mut tpl = TopicPartitionList::new();
    for p in md.topics().first().map(|t| t.partitions()).unwrap_or(&[]) {
        tpl.add_partition_offset(&src, p.id(), Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let producer: ThreadedProducer<DefaultProducerContext> = kafka::config(c.bootstrap)
        .set("transactional.id", format!("{}-limit-copy", c.run))
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .context("creating the copy loop's transactional producer")?;
    producer.init_transactions(TXN_TIMEOUT)?;
    let group = consumer
        .group_metadata()
        .ok_or_else(|| anyhow!("the copy consumer has no group metadata"))?;

    let mut copied = 0usize;
    let mut commits = 0usize;
    let mut commit_secs = Vec::new();
    let mut first: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while copied < c.records {
        if Instant::now() > deadline {
            bail!("copy loop: only {copied}/{} records after 600 s", c.records);
        }
        producer.begin_transaction()?;
        let txn_start = Instant::now();
        let mut next: HashMap<i32, i64> = HashMap::new();
        let mut in_txn = 0usize;
        while in_txn < c.max_records && copied + in_txn < c.records {
            let left = c.window.saturating_sub(txn_start.elapsed());
            if in_txn > 0 && left.is_zero() {
                break;
            }
            let Some(m) = consumer.poll(if in_txn > 0 {
                left
            } else {
                Duration::from_millis(100)
            }) else {
                continue;
            };
            let m = m.context("copy loop: consuming")?;
            first.get_or_insert_with(Instant::now);
            let mut rec = BaseRecord::to(&dst)
                .key(m.key().unwrap_or_default())
                .payload(m.payload().unwrap_or_default());
            loop {
                match producer.send(rec) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        rec = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((e, _)) => bail!("copy loop: producing: {e}"),
                }
            }
            next.insert(m.partition(), m.offset() + 1);
            in_txn += 1;
        }
        let commit_start = Instant::now();
        if !next.is_empty() {
            let mut offs = TopicPartitionList::new();
            for (p, o) in &next {
                offs.add_partition_offset(&src, *p, Offset::Offset(*o))?;
            }
            producer.send_offsets_to_transaction(&offs, &group, TXN_TIMEOUT)?;
        }
        // As the engine does (engine/src/txn/transact.rs): commit_transaction flushes first,
        // and that flush waits for the producer's 100 ms poll loop unless every delivery
        // report has been served already; polled every 50 us.
        let wait_until = Instant::now() + TXN_TIMEOUT;
        while producer.in_flight_count() > 0 && Instant::now() < wait_until {
            std::thread::sleep(Duration::from_micros(50));
        }
        producer.commit_transaction(TXN_TIMEOUT)?;
        if in_txn > 0 {
            commits += 1;
            commit_secs.push(commit_start.elapsed().as_secs_f64());
        }
        copied += in_txn;
    }
    let seconds = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    commit_secs.sort_by(f64::total_cmp);
    Ok(json!({
        "records": copied,
        "partitions": c.partitions,
        "window_ms": c.window.as_secs_f64() * 1e3,
        "max_records_per_transaction": c.max_records,
        "fill_seconds": fill_seconds,
        "seconds": seconds,
        "records_per_s": if seconds > 0.0 { copied as f64 / seconds } else { 0.0 },
        "transactions": commits,
        "records_per_transaction": copied as f64 / commits.max(1) as f64,
        "commit_ms": {
            "mean": 1e3 * commit_secs.iter().sum::<f64>() / commit_secs.len().max(1) as f64,
            "p50": crate::percentile(&commit_secs, 0.5).map(|s| s * 1e3),
            "p99": crate::percentile(&commit_secs, 0.99).map(|s| s * 1e3),
        },
    }))
}

/// One AddToCart invocation of the cart function, with the cart's two states (a basket of
/// three items, no pending requests), as the engine sends it.
pub fn add_to_cart_request(user: &str, item: &str) -> Vec<u8> {
    let basket = json!({"basket": {"item-a": 2, "item-b": 1, "item-c": 4}}).to_string();
    let add = json!({"userId": user, "itemId": item, "quantity": 3}).to_string();
    let req = ToFunction {
        request: Some(to_function::Request::Invocation(
            to_function::InvocationBatchRequest {
                target: Some(Address::new("com.example", "user-shopping-cart", user)),
                state: vec![
                    to_function::PersistedValue {
                        state_name: "basket".into(),
                        state_value: Some(TypedValue::of(
                            "com.example/Basket",
                            basket.into_bytes(),
                        )),
                    },
                    to_function::PersistedValue {
                        state_name: "pending".into(),
                        state_value: Some(TypedValue {
                            typename: "com.example/PendingRequests".into(),
                            has_value: false,
                            value: Default::default(),
                        }),
                    },
                ],
                invocations: vec![to_function::Invocation {
                    caller: None,
                    argument: Some(TypedValue::of("com.example/AddToCart", add.into_bytes())),
                }],
            },
        )),
    };
    req.encode_to_vec()
}

/// Checks that an answer is an invocation result with one outgoing message (RequestItem).
fn check_answer(body: &[u8]) -> anyhow::Result<()> {
    let f = FromFunction::decode(body).context("decoding FromFunction")?;
    match f.response {
        Some(from_function::Response::InvocationResult(r)) if r.outgoing_messages.len() == 1 => {
            Ok(())
        }
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// A keep-alive HTTP/1.1 connection that POSTs protobuf bodies.
struct Conn {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
    host: String,
}

impl Conn {
    fn open(host: &str) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(host).with_context(|| format!("connecting to {host}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn {
            reader: BufReader::new(stream.try_clone()?),
            stream,
            host: host.to_string(),
        })
    }

    fn post(&mut self, path: &str, body: &[u8]) -> anyhow::Result<Vec<u8>> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        let mut msg = head.into_bytes();
        msg.extend_from_slice(body);
        self.stream.write_all(&msg)?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut len = None;
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("connection closed in the headers");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = Some(v.trim().parse::<usize>()?);
                }
            }
        }
        let len = len.ok_or_else(|| anyhow!("no Content-Length in the answer"))?;
        let mut out = vec![0u8; len];
        self.reader.read_exact(&mut out)?;
        if status != "200" {
            bail!("HTTP {status}: {}", String::from_utf8_lossy(&out));
        }
        Ok(out)
    }
}

/// `clients` threads POST one-invocation AddToCart batches for `secs` seconds.
pub fn http(url: &str, clients: usize, secs: f64) -> anyhow::Result<Value> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("--url must be http://host:port[/path]"))?;
    let (host, base) = rest.split_once('/').unwrap_or((rest, ""));
    let base = base.trim_end_matches('/');
    let path = if base.is_empty() {
        "/com.example/user-shopping-cart".to_string()
    } else {
        format!("/{base}/com.example/user-shopping-cart")
    };
    // Check the answer once before measuring.
    Conn::open(host)?
        .post(&path, &add_to_cart_request("limit-u0", "limit-item0"))
        .and_then(|b| check_answer(&b))
        .context("the functions' answer to a probe request")?;
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let handles: Vec<_> = (0..clients.max(1))
        .map(|c| {
            let host = host.to_string();
            let path = path.clone();
            let stop = stop.clone();
            std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
                let mut conn = Conn::open(&host)?;
                let mut lat = Vec::new();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let body = add_to_cart_request(
                        &format!("limit-u{c}-{}", i % 1000),
                        &format!("limit-item{}", i % 100),
                    );
                    let t = Instant::now();
                    let answer = conn.post(&path, &body)?;
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                    if i.is_multiple_of(100) {
                        check_answer(&answer)?;
                    }
                    i += 1;
                }
                Ok(lat)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(
            h.join()
                .map_err(|_| anyhow!("an HTTP client thread panicked"))??,
        );
    }
    let seconds = start.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    Ok(json!({
        "url": format!("http://{host}{path}"),
        "clients": clients,
        "invocations_per_request": 1,
        "requests": lat.len(),
        "seconds": seconds,
        "requests_per_s": lat.len() as f64 / seconds,
        "ms": {
            "p50": crate::percentile(&lat, 0.5),
            "p99": crate::percentile(&lat, 0.99),
            "mean": lat.iter().sum::<f64>() / lat.len().max(1) as f64,
            "max": lat.last(),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_roundtrips() {
        let b = add_to_cart_request("u", "i");
        let t = ToFunction::decode(b.as_slice()).unwrap();
        let Some(to_function::Request::Invocation(inv)) = t.request else {
            panic!("no invocation")
        };
        assert_eq!(inv.state.len(), 2);
        assert_eq!(inv.invocations.len(), 1);
    }
}
