//! W3C Trace Context across the stream: an input record's `traceparent` (and `tracestate`)
//! header travels to its output record, so a trace follows a record through the service.
//! Dead letters carry every input header already. Kafka header names are case-sensitive;
//! the W3C binding for Kafka uses the lower-case names.

use rdkafka::message::{Header, Headers, Message, OwnedHeaders};

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Whether `value` is a well-formed version-00 `traceparent`: `00-` 32 hex (not all zero)
/// `-` 16 hex (not all zero) `-` 2 hex. Anything else is not copied, as the spec asks of a
/// header that does not parse.
pub fn valid_traceparent(value: &[u8]) -> bool {
    let hex = |s: &[u8]| {
        s.iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    let nonzero = |s: &[u8]| s.iter().any(|b| *b != b'0');
    value.len() == 55
        && &value[..3] == b"00-"
        && value[35] == b'-'
        && value[52] == b'-'
        && hex(&value[3..35])
        && nonzero(&value[3..35])
        && hex(&value[36..52])
        && nonzero(&value[36..52])
        && hex(&value[53..55])
}

/// The trace headers an output record takes from its input, or `None` when it has none.
pub fn trace_headers(input: &impl Message) -> Option<OwnedHeaders> {
    let headers = input.headers()?;
    let mut parent = None;
    let mut state = None;
    for h in headers.iter() {
        match h.key {
            TRACEPARENT => parent = h.value.filter(|v| valid_traceparent(v)),
            TRACESTATE => state = h.value,
            _ => {}
        }
    }
    let parent = parent?;
    let mut out = OwnedHeaders::new_with_capacity(2).insert(Header {
        key: TRACEPARENT,
        value: Some(parent),
    });
    if let Some(state) = state {
        out = out.insert(Header {
            key: TRACESTATE,
            value: Some(state),
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_syntax() {
        assert!(valid_traceparent(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"
        ));
    }
}
