//! Reading header pairs back into an envelope: the gateway's own
//! `osmosis-*` fields by name, every other header kept in order. Both
//! envelopes decode through it, so they agree on what a malformed value is.

use crate::headers::is_reserved;
use crate::request_id::ParseRequestIdError;

/// Headers that do not form a valid request or reply envelope.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("required header {0} is missing")]
    Missing(&'static str),
    #[error("header {0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("header {0} is not a number")]
    NotANumber(&'static str),
    #[error("header {0} has an unknown value")]
    UnknownValue(&'static str),
    #[error(transparent)]
    RequestId(#[from] ParseRequestIdError),
}

/// A record's headers, split into the gateway's own and everything else.
pub(crate) struct HeaderFields<'a> {
    /// Reserved headers (and `traceparent`), in record order.
    own: Vec<(&'a str, &'a [u8])>,
    /// Every other header, in record order: forwarded client headers or a
    /// worker's response headers.
    pub other: Vec<(String, Vec<u8>)>,
}

impl<'a> HeaderFields<'a> {
    /// Splits `pairs`; `own_names` are the non-reserved names the envelope
    /// reads itself (e.g. `traceparent`).
    pub fn split(
        pairs: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
        own_names: &[&str],
    ) -> Self {
        let mut own = Vec::new();
        let mut other = Vec::new();
        for (name, value) in pairs {
            let value = value.unwrap_or_default();
            if is_reserved(name) || own_names.contains(&name) {
                own.push((name, value));
            } else {
                other.push((name.to_owned(), value.to_vec()));
            }
        }
        Self { own, other }
    }

    /// The raw value of `name`; the last one when a record repeats it.
    pub fn bytes(&self, name: &str) -> Option<&'a [u8]> {
        self.own
            .iter()
            .rev()
            .find(|(own, _)| *own == name)
            .map(|(_, value)| *value)
    }

    /// The value of `name` as text.
    pub fn text(&self, name: &'static str) -> Result<Option<&'a str>, DecodeError> {
        self.bytes(name)
            .map(|value| std::str::from_utf8(value).map_err(|_| DecodeError::NotUtf8(name)))
            .transpose()
    }

    /// The value of `name` as text, which must be there.
    pub fn required_text(&self, name: &'static str) -> Result<&'a str, DecodeError> {
        self.text(name)?.ok_or(DecodeError::Missing(name))
    }

    /// The value of `name` as a decimal number.
    pub fn number<T: std::str::FromStr>(
        &self,
        name: &'static str,
    ) -> Result<Option<T>, DecodeError> {
        self.bytes(name)
            .map(|value| {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|text| text.parse().ok())
                    .ok_or(DecodeError::NotANumber(name))
            })
            .transpose()
    }
}
