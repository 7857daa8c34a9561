//! `GET /v1/channels/{name}`: a live subscription to a subscribable
//! channel as Server-Sent Events, optionally filtered by key, resumed with
//! `Last-Event-ID` or started `from=earliest|latest|<time>`.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use http::HeaderMap;
use osmosis_protocol::clock::unix_ms;

use super::cors;
use super::state::AppState;
use crate::auth::BrowserToken;
use crate::auth::policy;
use crate::config::Config;
use crate::problem::Problem;
use crate::sse::{self, ChannelStream, RecordFormat, StreamKind};
use crate::subscriptions::{Positions, StartAt, SubscriptionError};

pub(super) fn routes(config: &Config) -> Router<Arc<AppState>> {
    let subscribe = get(subscribe_channel);
    let subscribe = match cors::for_channels(&config.channels) {
        Some(cors) => subscribe.options(cors::preflight).layer(cors),
        None => subscribe,
    };
    Router::new().route("/v1/channels/{name}", subscribe)
}

/// Query of `GET /v1/channels/{name}`.
#[derive(serde::Deserialize)]
struct SubscribeQuery {
    /// `earliest`, `latest` (default) or an RFC 3339 time.
    from: Option<String>,
    /// Only records with exactly this key.
    key: Option<String>,
    /// `value` (default) or `json` (partition, offset, key, timestamp, value).
    format: Option<String>,
    /// A browser's token, where the channel allows it (`EventSource`
    /// cannot set `Authorization`).
    access_token: Option<String>,
}

/// `GET /v1/channels/{name}`: a live subscription as Server-Sent Events.
async fn subscribe_channel(
    State(state): State<Arc<AppState>>,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<SubscribeQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    // Rejections answer problem+json like every other client error.
    let (Path(name), Query(query)) = (name?, query?);
    let (subscriptions, access) = match (&state.subscriptions, state.subscribable.get(&name)) {
        (Some(subscriptions), Some(access)) => (subscriptions, access),
        _ => {
            return Err(Problem::NotFound(format!(
                "/v1/channels/{name} (not a subscribable channel)"
            )));
        }
    };
    let browser = access.browser_token.then_some(BrowserToken {
        query: query.access_token.as_deref(),
    });
    let caller = state
        .authorize(&format!("channel {name}"), &headers, access, browser)
        .await?;
    let key = policy::subscription_key(access, caller.as_deref(), query.key)?;
    let resume = sse::last_event_id(&headers)
        .map(|last| {
            last.parse::<Positions>()
                .map_err(|error| Problem::BadRequest(format!("Last-Event-ID: {error}")))
        })
        .transpose()?;
    let from = start_at(query.from.as_deref())?;
    let format = record_format(query.format.as_deref())?;
    let open = state.streams.open(StreamKind::Channel, state.retry_after)?;
    let unavailable = |error: SubscriptionError| Problem::Unavailable {
        reason: error.to_string(),
        retry_after: state.retry_after,
    };
    let feed = subscriptions.feed(&name).await.map_err(unavailable)?;
    let live = feed.subscribe();
    // A resume names only partitions the channel has: a made-up one would
    // be read from Kafka on every event.
    if let Some(partition) = resume
        .iter()
        .flat_map(Positions::iter)
        .map(|(partition, _)| partition)
        .find(|partition| live.snapshot.get(*partition).is_none())
    {
        return Err(Problem::BadRequest(format!(
            "Last-Event-ID names partition {partition}, which channel {name} does not have"
        )));
    }
    let start = match resume {
        Some(positions) => Some(positions),
        None => subscriptions
            .start_positions(&name, from)
            .await
            .map_err(unavailable)?,
    };
    let catch_up = match start.clone() {
        Some(start) => Some(
            subscriptions
                .catch_up(&name, start, live.snapshot.clone())
                .await
                .map_err(unavailable)?,
        ),
        None => None,
    };
    Ok(sse::channel_stream(
        &state.streams,
        ChannelStream {
            open,
            live,
            catch_up,
            start,
            key: key.map(Bytes::from),
            format,
        },
    ))
}

/// `from=earliest|latest|<RFC 3339 time>`; latest when absent.
fn start_at(from: Option<&str>) -> Result<StartAt, Problem> {
    match from {
        None | Some("latest") => Ok(StartAt::Latest),
        Some("earliest") => Ok(StartAt::Earliest),
        Some(time) => {
            let at = humantime::parse_rfc3339_weak(time).map_err(|_| {
                Problem::BadRequest(format!(
                    "from={time:?}: expected earliest, latest or an RFC 3339 time"
                ))
            })?;
            Ok(StartAt::Time(unix_ms(at) as i64))
        }
    }
}

/// `format=value|json`; value when absent.
fn record_format(format: Option<&str>) -> Result<RecordFormat, Problem> {
    match format {
        None | Some("value") => Ok(RecordFormat::Value),
        Some("json") => Ok(RecordFormat::Json),
        Some(other) => Err(Problem::BadRequest(format!(
            "format={other:?}: expected value or json"
        ))),
    }
}
