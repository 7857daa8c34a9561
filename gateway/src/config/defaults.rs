//! The defaults of the configuration's plain settings, in one place: the
//! values the README's reference names. (Limits keep theirs beside them in
//! `limits`.)

use std::net::SocketAddr;

pub(super) fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
pub(super) fn default_shutdown_grace_ms() -> u64 {
    10_000
}
pub(super) fn default_produce_timeout_ms() -> u64 {
    5_000
}
pub(super) fn default_metadata_timeout_ms() -> u64 {
    2_000
}
pub(super) fn default_partitions() -> i32 {
    1
}
pub(super) fn default_replication_factor() -> i32 {
    1
}
pub(super) fn default_max_body_bytes() -> usize {
    1024 * 1024
}
pub(super) fn default_keep_alive_ms() -> u64 {
    15_000
}
pub(super) fn default_retry_ms() -> u64 {
    2_000
}
pub(super) fn default_max_connections() -> usize {
    10_000
}
pub(super) fn default_subscriber_buffer() -> usize {
    1_024
}
pub(super) fn default_request_stream_ms() -> u64 {
    600_000
}
pub(super) fn default_timeout_ms() -> u64 {
    10_000
}
pub(super) fn default_max_wait_ms() -> u64 {
    60_000
}
pub(super) fn default_replies_topic() -> String {
    "osmosis.replies".into()
}
pub(super) fn default_assignment_timeout_ms() -> u64 {
    30_000
}
pub(super) fn default_lookup_max_records() -> u64 {
    100_000
}
pub(super) fn default_cache_entries() -> u64 {
    10_000
}
pub(super) fn default_cache_bytes() -> u64 {
    64 * 1024 * 1024
}
pub(super) fn default_cache_ttl_secs() -> u64 {
    600
}
