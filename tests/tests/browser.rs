//! The demo's browser page in a real headless Chromium, served by the real
//! gateway: it subscribes to a channel with `EventSource`, publishes into
//! it with `fetch`, and follows a request's events to its reply — and the
//! test reads what the page shows.

use std::time::Duration;

use osmosis_e2e::browser::Browser;
use osmosis_e2e::kafka;
use osmosis_e2e::process::{Gateway, Worker};

const SHOWN_WITHIN: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_subscribes_publishes_and_follows_a_request() {
    let events = kafka::create_topic("browser.events", 1).await;
    let work = kafka::create_topic("browser.work", 1).await;
    let replies = kafka::unique_name("browser.replies");
    let ui = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/ui");
    let gateway = Gateway::start_with(
        &format!(
            "listen: 127.0.0.1:0\n\
             kafka: {{ brokers: \"{brokers}\" }}\n\
             static_files: {{ path: /ui, dir: \"{ui}\" }}\n\
             channels: {{ {events}: {{ subscribable: true }}, {work}: {{}} }}\n\
             replies: {{ topic: {replies} }}\n\
             routes:\n\
             \x20 - {{ method: POST, path: /events, channel: {events} }}\n\
             \x20 - {{ method: POST, path: /work, channel: {work}, mode: request, timeout_ms: 100 }}\n",
            brokers = kafka::bootstrap(),
        ),
        &["--create-topics"],
    );
    let _worker = Worker::start(
        "examples/slow",
        kafka::bootstrap(),
        &work,
        &["--work-ms", "300", "--progress-steps", "2", "--echo"],
    );
    let page = gateway.url(&format!(
        "/ui/index.html?auto&channel={events}&publish=/events&work=/work"
    ));
    let mut browser = Browser::open(&page).await;

    browser
        .wait_text("channel-state", SHOWN_WITHIN, |text| text == "live")
        .await;
    let published = browser
        .wait_text("published", SHOWN_WITHIN, |text| !text.is_empty())
        .await;
    assert!(
        published.starts_with("202 "),
        "the publish answer: {published}"
    );
    let records = browser
        .wait_text("records", SHOWN_WITHIN, |text| {
            text.contains("hello from the page")
        })
        .await;
    assert_eq!(
        records.lines().count(),
        1,
        "the one record, once: {records}"
    );

    let request = browser
        .wait_text("request-events", SHOWN_WITHIN, |text| {
            text.contains("reply:")
        })
        .await;
    let names: Vec<&str> = request
        .lines()
        .filter_map(|line| line.split(':').next())
        .collect();
    assert_eq!(
        names,
        ["accepted", "progress", "progress", "reply"],
        "the request's events in order: {request}"
    );
    assert!(
        request.contains("a job from the page"),
        "the reply echoes the job: {request}"
    );
    let id = browser
        .wait_text("request-id", SHOWN_WITHIN, |text| text != "–")
        .await;
    assert!(
        request.contains(&id),
        "the accepted event names the request: {request}"
    );
}
