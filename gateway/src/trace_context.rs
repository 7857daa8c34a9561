//! W3C Trace Context: the gateway continues a client's trace with a span
//! of its own (a new parent id), or starts a trace when the client sent
//! none, so a request is one trace from the client through Kafka to the
//! worker.

use http::HeaderValue;

/// Continues the client's W3C trace with a new span id for the gateway's
/// hop, or starts a new trace when the client sent none (or an invalid one).
pub fn continue_trace(incoming: Option<&HeaderValue>) -> String {
    let span_id = hex(&rand::random::<[u8; 8]>());
    if let Some((trace_id, flags)) = incoming
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent)
    {
        return format!("00-{trace_id}-{span_id}-{flags}");
    }
    let trace_id = hex(&rand::random::<[u8; 16]>());
    format!("00-{trace_id}-{span_id}-01")
}

/// `(trace id, flags)` of a valid version-00 `traceparent`.
fn parse_traceparent(value: &str) -> Option<(&str, &str)> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let is_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let all_zero = |s: &str| s.bytes().all(|b| b == b'0');
    (parts.next().is_none()
        && version == "00"
        && is_hex(trace_id, 32)
        && !all_zero(trace_id)
        && is_hex(parent_id, 16)
        && !all_zero(parent_id)
        && is_hex(flags, 2))
    .then_some((trace_id, flags))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_keeps_its_trace_id_and_flags() {
        let incoming =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        let outgoing = continue_trace(Some(&incoming));
        assert!(outgoing.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(outgoing.ends_with("-00"));
        assert_ne!(&outgoing[36..52], "00f067aa0ba902b7");
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        for bad in [
            "garbage",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            let outgoing = continue_trace(Some(&HeaderValue::from_static(bad)));
            assert!(parse_traceparent(&outgoing).is_some(), "{outgoing}");
            assert!(
                !outgoing.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
                "{bad}"
            );
        }
    }
}
