//! Tracing: the W3C trace context a message carries, and OpenTelemetry spans for routing, each
//! invocation and each epoch commit, exported over OTLP (http/protobuf) when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set.
//!
//! A [`TraceContext`] (`traceparent` and `tracestate`, W3C Trace Context) comes in with an
//! HTTP ingress request's headers or a Kafka ingress record's headers, travels in the
//! envelope's `traceparent` / `tracestate` fields from function to function (delayed
//! messages too), goes to a function as the `traceparent` header of its invocation, and out
//! as a `traceparent` header on egress records.
//!
//! Invariants: with no exporter configured ([`init`] found no endpoint), no span is ever made:
//! each would-be span costs one check of a `OnceLock`, and a context that came in is passed on
//! unchanged (nothing new is minted). With an exporter, each span becomes the parent of what
//! follows it, and a routing span with no incoming context starts a new trace.

use std::sync::OnceLock;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Link, Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use keyflow_protocol::Address;

use crate::internal::Envelope;

/// The header (HTTP and Kafka) and the envelope field of the W3C trace parent.
pub const TRACEPARENT: &str = "traceparent";
/// The header of the W3C trace state (vendor data that goes with the parent).
pub const TRACESTATE: &str = "tracestate";

/// The longest `tracestate` carried on (W3C: at least 512 characters should be).
const MAX_TRACESTATE: usize = 512;

/// A W3C trace context as carried in headers and envelopes; empty fields when there is none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: String,
}

impl TraceContext {
    /// The context named by `traceparent` / `tracestate` headers (`get` looks a header up,
    /// case-insensitively). A malformed `traceparent` counts as none.
    pub fn from_headers<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Self {
        match get(TRACEPARENT).map(str::trim) {
            Some(tp) if is_valid_traceparent(tp) => {
                // Longer than the W3C's 512 characters: dropped rather than carried in every
                // envelope of the trace (the spec allows it).
                let state = get(TRACESTATE).unwrap_or_default().trim();
                TraceContext {
                    traceparent: tp.to_string(),
                    tracestate: if state.len() <= MAX_TRACESTATE {
                        state.to_string()
                    } else {
                        String::new()
                    },
                }
            }
            _ => TraceContext::default(),
        }
    }

    /// The context an envelope carries.
    pub fn of(env: &Envelope) -> Self {
        TraceContext {
            traceparent: env.traceparent.clone(),
            tracestate: env.tracestate.clone(),
        }
    }

    /// The context of a batch: its first message's that has one.
    pub fn of_batch(batch: &[Envelope]) -> Self {
        batch
            .iter()
            .find(|e| !e.traceparent.is_empty())
            .map(Self::of)
            .unwrap_or_default()
    }

    /// Writes this context into `env`.
    pub fn stamp(&self, env: &mut Envelope) {
        env.traceparent.clone_from(&self.traceparent);
        env.tracestate.clone_from(&self.tracestate);
    }

    pub fn is_empty(&self) -> bool {
        self.traceparent.is_empty()
    }

    /// The headers to send it with (none when empty; no `tracestate` when it is empty).
    pub fn headers(&self) -> Vec<(&'static str, &str)> {
        let mut out = Vec::new();
        if !self.traceparent.is_empty() {
            out.push((TRACEPARENT, self.traceparent.as_str()));
            if !self.tracestate.is_empty() {
                out.push((TRACESTATE, self.tracestate.as_str()));
            }
        }
        out
    }

    fn parent(&self) -> Context {
        if self.is_empty() {
            return Context::new();
        }
        TraceContextPropagator::new().extract(self)
    }

    fn of_span(cx: &Context) -> Self {
        let mut out = TraceContext::default();
        TraceContextPropagator::new().inject_context(cx, &mut out);
        out
    }
}

impl Extractor for TraceContext {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => Some(self.traceparent.as_str()),
            TRACESTATE => Some(self.tracestate.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

impl Injector for TraceContext {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.traceparent = value,
            TRACESTATE => self.tracestate = value,
            _ => {}
        }
    }
}

/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>` with non-zero ids (version 00; a
/// later version's longer form is cut to these fields, as the W3C spec asks).
fn is_valid_traceparent(tp: &str) -> bool {
    let mut parts = tp.splitn(4, '-');
    let (Some(version), Some(trace), Some(span), Some(flags)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let flags = if version == "00" {
        flags
    } else {
        flags.get(..2).unwrap_or_default()
    };
    hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(span, 16)
        && span.bytes().any(|b| b != b'0')
        && hex(flags, 2)
}

/// The exporter's provider, set once by [`init`] when an endpoint is configured.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Why tracing could not start (the environment names an exporter keyflow cannot make).
#[derive(Debug, thiserror::Error)]
pub enum TraceInitError {
    #[error("OTEL_EXPORTER_OTLP_PROTOCOL=`{0}`: keyflow exports traces over OTLP http/protobuf only; set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf (or unset it) and point OTEL_EXPORTER_OTLP_ENDPOINT at the collector's OTLP/HTTP port (usually 4318)")]
    Protocol(String),
    #[error("the OTLP trace exporter could not be made from OTEL_EXPORTER_OTLP_* ({0})")]
    Exporter(String),
}

/// Starts exporting spans when `OTEL_EXPORTER_OTLP_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (and `OTEL_SDK_DISABLED` is not `true`); the
/// exporter reads the other standard `OTEL_*` variables (service name, headers, timeout,
/// batching). `Ok(false)`: tracing is off. Call it once, in a Tokio runtime's thread or not.
pub fn init() -> Result<bool, TraceInitError> {
    let set = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let endpoint = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or(set("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let disabled = set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if endpoint.is_none() || disabled || PROVIDER.get().is_some() {
        return Ok(PROVIDER.get().is_some());
    }
    let protocol = set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or(set("OTEL_EXPORTER_OTLP_PROTOCOL"));
    if let Some(p) = protocol.filter(|p| p != "http/protobuf") {
        return Err(TraceInitError::Protocol(p));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| TraceInitError::Exporter(e.to_string()))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if set("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("keyflow");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("keyflow");
    let _ = TRACER.set(tracer);
    let _ = PROVIDER.set(provider);
    tracing::info!(
        endpoint = endpoint.unwrap_or_default(),
        "exporting traces over OTLP http/protobuf"
    );
    Ok(true)
}

/// Exports the spans still buffered and stops the exporter (at the end of the process).
pub fn shutdown() {
    if let Some(p) = PROVIDER.get() {
        if let Err(e) = p.shutdown() {
            tracing::warn!("flushing the last spans to the OTLP endpoint failed: {e}");
        }
    }
}

/// Whether spans are being made (an exporter is configured).
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// One span, ended when dropped; a no-op when tracing is off.
pub struct Span {
    inner: Option<opentelemetry_sdk::trace::Span>,
    /// What follows this span continues: the span's own context, or (tracing off) the
    /// context it was given.
    context: TraceContext,
}

impl Span {
    /// A span that records nothing and passes no context on.
    pub fn none() -> Span {
        Span {
            inner: None,
            context: TraceContext::default(),
        }
    }

    fn start(
        name: String,
        kind: SpanKind,
        parent: TraceContext,
        links: Vec<Link>,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Span {
        let Some(tracer) = TRACER.get() else {
            return Span {
                inner: None,
                context: parent,
            };
        };
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes())
            .with_links(links)
            .start_with_context(tracer, &parent.parent());
        let context = TraceContext::of_span(
            &Context::new().with_remote_span_context(span.span_context().clone()),
        );
        Span {
            inner: Some(span),
            context,
        }
    }

    /// The context to pass on to what this span causes.
    pub fn context(&self) -> &TraceContext {
        &self.context
    }

    /// Sets an attribute (nothing when tracing is off).
    pub fn set(&mut self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(s) = &mut self.inner {
            s.set_attribute(KeyValue::new(key, value));
        }
    }

    /// Marks the span failed, with why.
    pub fn fail(&mut self, why: impl std::fmt::Display) {
        if let Some(s) = &mut self.inner {
            s.set_status(Status::error(why.to_string()));
        }
    }
}

/// The span of an ingress record routed from Kafka: `route <topic>`, a child of the record's
/// `traceparent` header or the root of a new trace.
pub fn routing_record(
    headers: Option<&impl rdkafka::message::Headers>,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Span {
    let parent = headers.map_or_else(TraceContext::default, |hs| {
        TraceContext::from_headers(|name| {
            hs.iter()
                .find(|h| h.key.eq_ignore_ascii_case(name))
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
        })
    });
    if !enabled() {
        return Span::start(String::new(), SpanKind::Consumer, parent, vec![], Vec::new);
    }
    Span::start(
        format!("route {topic}"),
        SpanKind::Consumer,
        parent,
        vec![],
        || {
            vec![
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.operation.type", "process"),
                KeyValue::new("messaging.destination.name", topic.to_string()),
                KeyValue::new("messaging.destination.partition.id", partition.to_string()),
                KeyValue::new("messaging.kafka.offset", offset),
            ]
        },
    )
}

/// The span of a message taken by the HTTP ingress (`ingress` names which: `http`,
/// `playground`): `ingress <namespace>/<type>`, a child of the request's `traceparent` header
/// or the root of a new trace. It lasts as long as the request (a reply is waited for in it).
pub fn routing_request(headers: &axum::http::HeaderMap, ingress: &str, target: &Address) -> Span {
    let parent = TraceContext::from_headers(|name| headers.get(name).and_then(|v| v.to_str().ok()));
    if !enabled() {
        return Span::start(String::new(), SpanKind::Server, parent, vec![], Vec::new);
    }
    Span::start(
        format!("ingress {}/{}", target.namespace, target.r#type),
        SpanKind::Server,
        parent,
        vec![],
        || {
            vec![
                KeyValue::new("keyflow.ingress", ingress.to_string()),
                KeyValue::new("keyflow.function.type", target.function_type()),
                KeyValue::new("keyflow.function.id", target.id.clone()),
            ]
        },
    )
}

/// The span of one invocation of a function: `invoke <namespace>/<type>`, a child of the
/// batch's first traced message (the others' contexts are links). Its `keyflow.attempts` is
/// set by the invoker.
pub fn invocation(target: &Address, batch: &[Envelope], partition: i32) -> Span {
    let parent = TraceContext::of_batch(batch);
    if !enabled() {
        return Span::start(String::new(), SpanKind::Client, parent, vec![], Vec::new);
    }
    let links = batch
        .iter()
        .filter(|e| !e.traceparent.is_empty() && e.traceparent != parent.traceparent)
        .map(|e| TraceContext::of(e).parent().span().span_context().clone())
        .filter(|c| c.is_valid())
        .map(Link::with_context)
        .collect();
    let function_type = target.function_type();
    Span::start(
        format!("invoke {function_type}"),
        SpanKind::Client,
        parent,
        links,
        || {
            vec![
                KeyValue::new("keyflow.function.type", function_type),
                KeyValue::new("keyflow.function.id", target.id.clone()),
                KeyValue::new("keyflow.batch.size", batch.len() as i64),
                KeyValue::new("keyflow.partition", i64::from(partition)),
            ]
        },
    )
}

/// The span of one epoch's commit of a partition of `topic` (the messages topic, or an ingress
/// topic's router): `epoch commit`, the root of a trace of its own (an epoch holds the work
/// of many traces).
pub fn epoch_commit(topic: &str, partition: i32, records: usize) -> Span {
    if !enabled() {
        return Span::start(
            String::new(),
            SpanKind::Internal,
            TraceContext::default(),
            vec![],
            Vec::new,
        );
    }
    Span::start(
        "epoch commit".to_string(),
        SpanKind::Internal,
        TraceContext::default(),
        vec![],
        || {
            vec![
                KeyValue::new("messaging.destination.name", topic.to_string()),
                KeyValue::new("keyflow.partition", i64::from(partition)),
                KeyValue::new("keyflow.epoch.records", records as i64),
            ]
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_taken_and_a_malformed_one_is_not() {
        let ctx = |tp: &'static str| {
            TraceContext::from_headers(|h| match h {
                TRACEPARENT => Some(tp),
                TRACESTATE => Some("congo=t61rcWkgMzE"),
                _ => None,
            })
        };
        assert_eq!(
            ctx(TP),
            TraceContext {
                traceparent: TP.into(),
                tracestate: "congo=t61rcWkgMzE".into()
            }
        );
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert_eq!(ctx(bad), TraceContext::default(), "{bad}");
        }
        let long = "k=".to_string() + &"v".repeat(MAX_TRACESTATE);
        let c = TraceContext::from_headers(|h| match h {
            TRACEPARENT => Some(TP),
            TRACESTATE => Some(long.as_str()),
            _ => None,
        });
        assert_eq!((c.traceparent.as_str(), c.tracestate.as_str()), (TP, ""));
        // A later version may append fields; its first four are read.
        assert!(!ctx("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz").is_empty());
    }

    #[test]
    fn without_an_exporter_a_span_passes_its_context_on_unchanged() {
        assert!(!enabled());
        let env = Envelope {
            traceparent: TP.into(),
            ..Default::default()
        };
        let target = Address::new("shop", "cart", "u1");
        let mut span = invocation(&target, &[Envelope::default(), env], 3);
        span.set("keyflow.attempts", 2i64);
        assert_eq!(span.context().traceparent, TP);
        assert!(epoch_commit("m", 0, 1).context().is_empty());
    }

    #[test]
    fn headers_carry_the_state_only_with_a_parent() {
        let mut c = TraceContext {
            traceparent: TP.into(),
            tracestate: "a=1".into(),
        };
        assert_eq!(c.headers(), vec![(TRACEPARENT, TP), (TRACESTATE, "a=1")]);
        c.tracestate.clear();
        assert_eq!(c.headers(), vec![(TRACEPARENT, TP)]);
        assert!(TraceContext::default().headers().is_empty());
    }

    #[test]
    fn a_span_context_round_trips_through_the_propagator() {
        let c = TraceContext {
            traceparent: TP.into(),
            tracestate: "a=1".into(),
        };
        let back = TraceContext::of_span(&c.parent());
        assert_eq!(back, c);
    }
}
