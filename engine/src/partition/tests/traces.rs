//! Trace context: what a function's response causes (messages, delayed messages, egress
//! records) continues its invocation's trace; what answers an HTTP caller does not need one.

use super::*;
use crate::now_ms;
use crate::trace::TraceContext;

const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const INVOCATION: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01";

fn traced(id: &str, text: &str, traceparent: &str) -> Envelope {
    Envelope {
        traceparent: traceparent.into(),
        tracestate: "vendor=1".into(),
        ..msg(id, text)
    }
}

/// Answers `addr(id)`'s invocation with `answer` as if its span had the context `INVOCATION`.
fn answer_in_span(h: &mut Harness, id: &str, answer: FromFunction) {
    let inv = h.invocation_of(id);
    let mut response = inv.respond(Ok(answer), Duration::ZERO);
    response.trace = TraceContext {
        traceparent: INVOCATION.into(),
        tracestate: "vendor=1".into(),
    };
    h.core.on_response(response).unwrap();
    h.drain();
}

#[test]
fn messages_delayed_messages_and_egress_continue_the_invocations_trace() {
    let mut h = Harness::new();
    h.deliver(traced("a", "go", INCOMING));
    answer_in_span(
        &mut h,
        "a",
        result(InvocationResponse {
            outgoing_messages: vec![send(addr("b"), text("now"))],
            delayed_invocations: vec![send_after(0, addr("c"), text("later"), "")],
            outgoing_egresses: vec![egress(EGRESS_NS, EGRESS_TYPE, "out", "k", "v")],
            ..Default::default()
        }),
    );
    let out = h.take_outputs();
    let sent = messages(&out);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].2.traceparent, INVOCATION);
    assert_eq!(sent[0].2.tracestate, "vendor=1");
    let egress = egresses(&out);
    assert_eq!(egress.len(), 1);
    assert_eq!(egress[0].trace.traceparent, INVOCATION);

    // The delayed message keeps the context while it waits (it is stored with its envelope).
    h.commit();
    h.restore();
    h.fire(now_ms() + 1);
    let out = h.take_outputs();
    let fired = messages(&out);
    assert_eq!(fired.len(), 1, "{out:?}");
    assert_eq!(fired[0].2.traceparent, INVOCATION);
}

#[test]
fn an_untraced_invocation_sends_untraced_messages() {
    let mut h = Harness::new();
    h.deliver(msg("a", "go"));
    h.answer_next(|_| sending(vec![send(addr("b"), text("now"))]));
    let out = h.take_outputs();
    assert!(messages(&out)[0].2.traceparent.is_empty());
}

#[test]
fn a_batch_is_invoked_in_its_first_traced_messages_context() {
    let batch = [
        msg("a", "1"),
        traced("a", "2", INCOMING),
        traced("a", "3", INVOCATION),
    ];
    let ctx = TraceContext::of_batch(&batch);
    assert_eq!(ctx.traceparent, INCOMING);
    assert_eq!(
        TraceContext::of_batch(&[msg("a", "1")]),
        TraceContext::default()
    );
}
