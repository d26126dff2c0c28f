//! Distributed tracing: the W3C trace context (`traceparent`) that follows an application
//! across processes.
//!
//! Every delivery runs inside a [`TraceContext`] (see `consumer::process`): the delivery's
//! `traceparent` header when it has a valid one, otherwise one derived from the message — for
//! an application-ish body (`application_id`) or a UUID `message_id` the trace id is the
//! application's 16 bytes ([`TraceContext::for_application`]), so every process arrives at the
//! same trace for an application even when no header reached it; anything else gets a random
//! trace. While the handler runs, [`current`] answers that context; the outbox stamps a child of
//! it on every message it writes (hand-offs, events, retries, dead-letter copies) and the HTTP
//! clients send one to the MVD and the SMS gateway ([`propagate`]).
//!
//! Only ids travel: a trace context never carries personal data.

use std::fmt;
use std::future::Future;

use rand::RngCore;
use uuid::Uuid;

/// The header name, in AMQP headers and HTTP requests.
pub const TRACEPARENT: &str = "traceparent";

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// A W3C trace context (version `00`): which trace, which span is the parent, and whether the
/// trace is sampled.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// The trace (16 bytes, never all zero).
    pub trace_id: [u8; 16],
    /// The parent span (8 bytes, never all zero).
    pub span_id: [u8; 8],
    /// The `sampled` flag.
    pub sampled: bool,
}

impl TraceContext {
    /// Reads a `traceparent` value: strictly `00-<32 hex>-<16 hex>-<2 hex>`, lower-case hex,
    /// version `00` only, neither id all zeros. Anything else is `None`.
    pub fn parse(traceparent: &str) -> Option<Self> {
        let bytes = traceparent.as_bytes();
        if bytes.len() != 55 || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        if &traceparent[..2] != "00" {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        let mut flags = [0u8; 1];
        decode_lower_hex(&traceparent[3..35], &mut trace_id)?;
        decode_lower_hex(&traceparent[36..52], &mut span_id)?;
        decode_lower_hex(&traceparent[53..55], &mut flags)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            sampled: flags[0] & 0x01 == 0x01,
        })
    }

    /// The `traceparent` value: `00-<trace id>-<span id>-<01 or 00>`.
    pub fn to_header(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            u8::from(self.sampled)
        )
    }

    /// The same trace with a new random span id (what we send on to the next hop).
    pub fn child(&self) -> Self {
        Self {
            span_id: random_span_id(),
            ..*self
        }
    }

    /// The trace of an application: trace id = the application id's 16 bytes, a random span id,
    /// sampled. (The nil UUID, which is not a valid trace id, gets a random trace.)
    pub fn for_application(application_id: Uuid) -> Self {
        if application_id.is_nil() {
            return Self::random();
        }
        Self {
            trace_id: *application_id.as_bytes(),
            span_id: random_span_id(),
            sampled: true,
        }
    }

    /// A new trace: random trace id and span id, sampled.
    pub fn random() -> Self {
        let mut trace_id = [0u8; 16];
        while trace_id == [0; 16] {
            rand::rng().fill_bytes(&mut trace_id);
        }
        Self {
            trace_id,
            span_id: random_span_id(),
            sampled: true,
        }
    }

    /// The trace id as 32 lower-case hex digits (log field `trace_id`).
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceContext({})", self.to_header())
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_header())
    }
}

fn random_span_id() -> [u8; 8] {
    let mut span_id = [0u8; 8];
    while span_id == [0; 8] {
        rand::rng().fill_bytes(&mut span_id);
    }
    span_id
}

/// Decodes lower-case hex only (`hex::decode` also takes upper case, which W3C forbids).
fn decode_lower_hex(text: &str, out: &mut [u8]) -> Option<()> {
    if !text
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    hex::decode_to_slice(text, out).ok()
}

/// The context of the delivery being handled on this task, if any.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(|context| *context).ok()
}

/// Runs `future` with `context` as the [`current`] one.
pub async fn scope<F: Future>(context: TraceContext, future: F) -> F::Output {
    CURRENT.scope(context, future).await
}

/// The `traceparent` to send on a call or a message made now: a child of [`current`].
pub fn outgoing() -> Option<String> {
    current().map(|context| context.child().to_header())
}

/// Adds `traceparent` (a child of [`current`]) to an HTTP request, when there is a context.
pub fn propagate(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match outgoing() {
        Some(traceparent) => request.header(TRACEPARENT, traceparent),
        None => request,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parse_accepts_valid_values_and_reads_the_sampled_flag() {
        let cases: [(&str, bool); 4] = [
            (VALID, true),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                false,
            ),
            // Unknown flag bits are kept out of the way; only bit 0 means sampled.
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03",
                true,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-fe",
                false,
            ),
        ];
        for (value, sampled) in cases {
            let context = TraceContext::parse(value).unwrap_or_else(|| panic!("{value}"));
            assert_eq!(
                context.trace_id_hex(),
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "{value}"
            );
            assert_eq!(hex::encode(context.span_id), "00f067aa0ba902b7", "{value}");
            assert_eq!(context.sampled, sampled, "{value}");
        }
    }

    #[test]
    fn parse_refuses_everything_else() {
        let cases: [(&str, &str); 16] = [
            ("", "empty"),
            ("garbage", "not a traceparent"),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "version 01",
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "version ff",
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "upper-case trace id",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
                "upper-case span id",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
                "upper-case flags",
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "zero trace id",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "zero span id",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
                "short trace id",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
                "short span id",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                "trailing data for version 00",
            ),
            (
                " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "leading space",
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
                "wrong separators",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
                "not hex",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-+1",
                "sign in flags",
            ),
        ];
        for (value, why) in cases {
            assert_eq!(TraceContext::parse(value), None, "{why}: {value:?}");
        }
    }

    #[test]
    fn to_header_round_trips_through_parse() {
        for value in [
            VALID,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        ] {
            assert_eq!(TraceContext::parse(value).unwrap().to_header(), value);
        }
        for _ in 0..50 {
            let context = TraceContext::random();
            assert_eq!(
                TraceContext::parse(&context.to_header()),
                Some(context),
                "{context}"
            );
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_the_flag_with_a_new_span() {
        for parent in [
            TraceContext::parse(VALID).unwrap(),
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap(),
        ] {
            let child = parent.child();
            assert_eq!(child.trace_id, parent.trace_id);
            assert_eq!(child.sampled, parent.sampled);
            assert_ne!(child.span_id, parent.span_id);
            assert_ne!(child.span_id, [0; 8]);
            assert_ne!(child.child().span_id, child.span_id);
        }
    }

    #[test]
    fn an_application_always_maps_to_the_same_trace() {
        let id = Uuid::parse_str("4bf92f35-77b3-4da6-a3ce-929d0e0e4736").unwrap();
        let one = TraceContext::for_application(id);
        let two = TraceContext::for_application(id);
        assert_eq!(one.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(one.trace_id, two.trace_id);
        assert_ne!(one.span_id, two.span_id, "span ids are random");
        assert!(one.sampled);
        assert_eq!(TraceContext::parse(&one.to_header()), Some(one));
        let nil = TraceContext::for_application(Uuid::nil());
        assert_ne!(nil.trace_id, [0; 16], "the nil id gets a random trace");
    }

    #[tokio::test]
    async fn the_current_context_is_scoped_to_the_task() {
        assert_eq!(current(), None);
        assert_eq!(outgoing(), None);
        let context = TraceContext::parse(VALID).unwrap();
        let seen = scope(context, async {
            tokio::task::yield_now().await;
            (current(), outgoing())
        })
        .await;
        assert_eq!(seen.0, Some(context));
        let sent = TraceContext::parse(&seen.1.unwrap()).unwrap();
        assert_eq!(sent.trace_id, context.trace_id);
        assert_ne!(sent.span_id, context.span_id);
        assert_eq!(current(), None, "nothing leaks out of the scope");
    }
}
