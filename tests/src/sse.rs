//! Reading Server-Sent Events with a real SSE parser (`eventsource-stream`).

use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};

type Events = Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>;

/// An open event stream.
pub struct EventStream {
    events: Events,
    pub version: reqwest::Version,
}

impl EventStream {
    /// Sends `request` with `Accept: text/event-stream`; panics unless the
    /// answer is a 200 event stream.
    pub async fn open(request: reqwest::RequestBuilder) -> Self {
        let response = request
            .header("accept", "text/event-stream")
            .send()
            .await
            .expect("sending the stream request");
        assert_eq!(response.status(), reqwest::StatusCode::OK, "{:?}", response);
        Self::from_response(response)
    }

    /// The stream of a 200 `text/event-stream` response.
    pub fn from_response(response: reqwest::Response) -> Self {
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let version = response.version();
        let events = response
            .bytes_stream()
            .eventsource()
            .map(|item| item.map_err(|e| e.to_string()));
        Self {
            events: Box::pin(events),
            version,
        }
    }

    /// The next event, `None` when the stream ended, or why it broke (a
    /// connection reset); panics after `timeout`.
    pub async fn try_next(&mut self, timeout: Duration) -> Result<Option<Event>, String> {
        match tokio::time::timeout(timeout, self.events.next()).await {
            Ok(next) => next.transpose(),
            Err(_) => panic!("no event within {timeout:?}"),
        }
    }

    /// The next event, `None` when the stream ended; panics after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Event> {
        match tokio::time::timeout(timeout, self.events.next()).await {
            Ok(Some(Ok(event))) => Some(event),
            Ok(Some(Err(error))) => panic!("reading the event stream: {error}"),
            Ok(None) => None,
            Err(_) => panic!("no event within {timeout:?}"),
        }
    }

    /// The next event, which must exist and be called `name`.
    pub async fn expect(&mut self, name: &str) -> Event {
        let event = self
            .next(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("the stream ended before a {name:?} event"));
        assert_eq!(event.event, name, "unexpected event {event:?}");
        event
    }

    /// Events until the stream ends (within `timeout` each).
    pub async fn rest(&mut self, timeout: Duration) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some(event) = self.next(timeout).await {
            events.push(event);
        }
        events
    }
}
