//! Workers stopped under load. Requests keep arriving (request mode,
//! answered 202 + Location at once) while one of two workers is stopped:
//! - SIGTERM: it drains; every acknowledged request gets its reply, and
//!   Kafka holds exactly one `final` reply record per request;
//! - SIGKILL: nothing drains; every acknowledged request still gets a reply
//!   (the other worker, or a replacement, takes the partitions over from
//!   the last commit). The reply *record* may be written twice (at least
//!   once: a reply acknowledged but its offset not yet committed); what is
//!   asserted is at least one `final` record per request, and that the
//!   client reading the request sees one final answer, with the body it
//!   sent.
//!
//! Either way each request is in the channel exactly once, and the
//! gateway's `/healthz` and `/readyz` answer within 1 s throughout.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use osmosis_e2e::eventually;
use osmosis_e2e::kafka;
use osmosis_e2e::load::{self, Probes};
use osmosis_e2e::process::{Gateway, Worker, binary};
use reqwest::StatusCode;

/// Requests sent per test.
const LOAD: usize = 120;

struct Setup {
    gateway: Gateway,
    replies: String,
    channel: String,
}

async fn setup(prefix: &str) -> Setup {
    let channel = kafka::create_topic(prefix, 4).await;
    let replies = kafka::unique_name(&format!("{prefix}.replies"));
    let gateway = Gateway::for_channel(
        &channel,
        &replies,
        &["method: POST, path: /echo, mode: request, key: { header: x-key }"],
    );
    Setup {
        gateway,
        replies,
        channel,
    }
}

fn worker(channel: &str) -> Worker {
    let slow = binary("examples/slow");
    Worker::start(
        slow.to_str().unwrap(),
        kafka::bootstrap(),
        channel,
        &[
            "--work-ms",
            "20",
            "--echo",
            "--kafka-property",
            "session.timeout.ms=6000",
        ],
    )
}

/// Sends [`LOAD`] requests, counting them in `sent`; returns each request's
/// Location with the body it carried.
async fn send_load(gateway_url: String, sent: Arc<AtomicUsize>) -> Vec<(String, String)> {
    let http = reqwest::Client::new();
    let mut accepted = Vec::with_capacity(LOAD);
    for i in 0..LOAD {
        let body = format!("request {i:04}");
        let response = http
            .post(format!("{gateway_url}/echo"))
            .header("prefer", "respond-async")
            .header("x-key", format!("k{}", i % 16))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        accepted.push((location, body));
        sent.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    accepted
}

/// The load under way, with the gateway's probes.
struct Load {
    sending: tokio::task::JoinHandle<Vec<(String, String)>>,
    probes: Probes,
}

/// Starts the load (and the probes) and returns once `at` requests are
/// acknowledged.
async fn load_until(setup: &Setup, at: usize) -> Load {
    let probes = Probes::start(setup.gateway.url(""));
    let sent = Arc::new(AtomicUsize::new(0));
    let sending = tokio::spawn(send_load(setup.gateway.url(""), Arc::clone(&sent)));
    eventually(Duration::from_secs(60), "part of the load sent", || async {
        (sent.load(Ordering::SeqCst) >= at).then_some(())
    })
    .await;
    Load { sending, probes }
}

impl Load {
    /// Waits for the rest of the load and each client's answer, stops the
    /// probes (each answered within 1 s), and checks that every request is
    /// in the channel exactly once; returns the request ids.
    async fn finish(self, setup: &Setup) -> Vec<String> {
        let accepted = self.sending.await.unwrap();
        let ids = every_client_gets_its_answer(setup, &accepted).await;
        self.probes.assert_always_answered().await;
        let records = kafka::read_records(&setup.channel, LOAD, Duration::from_secs(30));
        load::assert_each_once(&records, &ids);
        ids
    }
}

/// Every acknowledged request, read as a client does, answers 200 with the
/// body it carried; returns the request ids.
async fn every_client_gets_its_answer(setup: &Setup, accepted: &[(String, String)]) -> Vec<String> {
    let http = reqwest::Client::new();
    let mut ids = Vec::with_capacity(accepted.len());
    for (location, body) in accepted {
        let response = eventually(Duration::from_secs(120), "every reply", || async {
            let response = http.get(setup.gateway.url(location)).send().await.ok()?;
            (response.status() == StatusCode::OK).then_some(response)
        })
        .await;
        assert_eq!(&response.text().await.unwrap(), body, "{location}");
        ids.push(location.rsplit('/').next().unwrap().to_owned());
    }
    ids
}

fn finals_of(setup: &Setup, ids: &[String]) -> HashMap<String, usize> {
    let finals = kafka::final_replies(kafka::bootstrap(), &setup.replies);
    for id in ids {
        assert!(finals.contains_key(id), "no final reply record for {id}");
    }
    assert_eq!(
        finals.len(),
        ids.len(),
        "final replies for unknown requests"
    );
    finals
}

// Two runtime threads: while the test waits for a worker (blocking), the
// load and the probes go on on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_with_sigterm_under_load_drains_and_every_request_gets_exactly_one_reply()
{
    let setup = setup("signals.term").await;
    let mut first = worker(&setup.channel);
    first.wait_assigned();
    let second = worker(&setup.channel);
    let load = load_until(&setup, LOAD / 3).await;
    first.service.signal(Signal::SIGTERM);
    let drained = tokio::task::block_in_place(|| first.service.wait_exit(Duration::from_secs(60)));
    assert!(drained.success());
    let ids = load.finish(&setup).await;
    let finals = finals_of(&setup, &ids);
    let doubled: Vec<_> = finals.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        doubled.is_empty(),
        "a drain writes each reply once: {doubled:?}"
    );
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_under_load_loses_no_request() {
    let setup = setup("signals.kill").await;
    let first = worker(&setup.channel);
    first.wait_assigned();
    let _second = worker(&setup.channel);
    let load = load_until(&setup, LOAD / 3).await;
    first.service.signal(Signal::SIGKILL);
    // A replacement joins, as a Deployment would start one.
    let _replacement = tokio::task::block_in_place(|| worker(&setup.channel));
    let ids = load.finish(&setup).await;
    let finals = finals_of(&setup, &ids);
    let doubled = finals.values().filter(|n| **n > 1).count();
    eprintln!(
        "SIGKILL: {doubled} of {} replies written more than once",
        ids.len()
    );
}
