//! An elastic gateway fleet, end to end: gateways share the reply
//! partitions by Kafka group membership, so one can join, leave or die
//! under load without any client losing or mixing up its reply.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use osmosis_e2e::eventually;
use osmosis_e2e::kafka;
use osmosis_e2e::process::{Gateway, Worker};
use osmosis_e2e::sse::EventStream;
use reqwest::StatusCode;
use serde_json::Value;

/// One gateway of the fleet under test: its name in the outcomes and the
/// address clients use.
#[derive(Clone)]
struct Member {
    name: &'static str,
    base: String,
}

/// What one client call ended with.
#[derive(Debug)]
enum Outcome {
    /// 200 with a body.
    Replied { sent: String, got: String },
    /// 202: the reply is to be polled at its id.
    Accepted { sent: String, id: String },
    /// A streamed request: every event name and the `reply` event's body.
    Streamed {
        sent: String,
        events: Vec<String>,
        replies: Vec<String>,
    },
    /// An HTTP status the test asserts on (e.g. 503 while shutting down).
    Refused { status: u16 },
    /// No HTTP answer (connection refused or reset).
    Lost { error: String },
}

struct Fleet {
    channel: String,
    replies: String,
}

impl Fleet {
    fn yaml(&self) -> String {
        format!(
            "listen: 127.0.0.1:0\n\
             kafka: {{ brokers: \"{brokers}\" }}\n\
             channels: {{ {channel}: {{}} }}\n\
             replies: {{ topic: {replies} }}\n\
             routes:\n  - {{ method: POST, path: /work, channel: {channel}, mode: request, timeout_ms: 1500 }}\n",
            brokers = kafka::bootstrap(),
            channel = self.channel,
            replies = self.replies,
        )
    }

    /// Starts a gateway and waits until it owns a reply partition.
    async fn start(&self, name: &'static str) -> (Gateway, Member) {
        let gateway = Gateway::start(&self.yaml());
        let member = Member {
            name,
            base: gateway.url(""),
        };
        gateway.wait_ready().await;
        (gateway, member)
    }
}

/// Clients spread over the live members, each sending request after
/// request with a body of its own, until stopped.
struct Load {
    members: Arc<Mutex<Vec<Member>>>,
    outcomes: Arc<Mutex<Vec<(&'static str, Outcome)>>>,
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(members: Vec<Member>, plain_clients: usize, streaming_clients: usize) -> Self {
        let mut load = Self {
            members: Arc::new(Mutex::new(members)),
            outcomes: Arc::default(),
            stop: Arc::default(),
            clients: Vec::new(),
        };
        let turn = Arc::new(AtomicUsize::new(0));
        for client in 0..plain_clients + streaming_clients {
            let streaming = client >= plain_clients;
            let (members, outcomes, stop, turn) = (
                Arc::clone(&load.members),
                Arc::clone(&load.outcomes),
                Arc::clone(&load.stop),
                Arc::clone(&turn),
            );
            load.clients.push(tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .unwrap();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let member = {
                        let members = members.lock().unwrap();
                        members[turn.fetch_add(1, Ordering::Relaxed) % members.len()].clone()
                    };
                    let sent = format!("client {client} request {n}");
                    n += 1;
                    let outcome = if streaming {
                        stream_one(&http, &members, &member, sent).await
                    } else {
                        call_one(&http, &member, sent, n % 4 == 0).await
                    };
                    outcomes.lock().unwrap().push((member.name, outcome));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
        load
    }

    /// Takes `name` out of the clients' rotation (as a Service does with a
    /// terminating pod's endpoint).
    fn remove(&self, name: &str) {
        self.members.lock().unwrap().retain(|m| m.name != name);
    }

    fn add(&self, member: Member) {
        self.members.lock().unwrap().push(member);
    }

    async fn stop(self) -> Vec<(&'static str, Outcome)> {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.await.expect("a client task panicked");
        }
        std::mem::take(&mut *self.outcomes.lock().unwrap())
    }
}

/// A plain request; with `respond_async`, answered 202 at once and polled
/// for later.
async fn call_one(
    http: &reqwest::Client,
    member: &Member,
    sent: String,
    respond_async: bool,
) -> Outcome {
    let mut request = http
        .post(format!("{}/work", member.base))
        .body(sent.clone());
    if respond_async {
        request = request.header("prefer", "respond-async");
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => {
            return Outcome::Lost {
                error: error.to_string(),
            };
        }
    };
    let status = response.status();
    let text = match response.text().await {
        Ok(text) => text,
        Err(error) => {
            return Outcome::Lost {
                error: error.to_string(),
            };
        }
    };
    match status {
        StatusCode::OK => Outcome::Replied { sent, got: text },
        StatusCode::ACCEPTED => {
            let body: Value = serde_json::from_str(&text).expect("a 202 body is JSON");
            Outcome::Accepted {
                sent,
                id: body["id"].as_str().expect("a 202 names the id").to_owned(),
            }
        }
        other => Outcome::Refused {
            status: other.as_u16(),
        },
    }
}

/// A streamed request, resumed on another member with `Last-Event-ID`
/// when its gateway shuts down (a `shutdown` event) or dies (a broken
/// connection), as an `EventSource` client does.
async fn stream_one(
    http: &reqwest::Client,
    members: &Mutex<Vec<Member>>,
    member: &Member,
    sent: String,
) -> Outcome {
    let sending = http
        .post(format!("{}/work", member.base))
        .header("accept", "text/event-stream")
        .body(sent.clone())
        .send()
        .await;
    let mut response = match sending {
        Ok(response) if response.status() == StatusCode::OK => response,
        Ok(response) => {
            return Outcome::Refused {
                status: response.status().as_u16(),
            };
        }
        Err(error) => {
            return Outcome::Lost {
                error: error.to_string(),
            };
        }
    };
    let (mut events, mut replies) = (Vec::new(), Vec::new());
    let (mut request_id, mut last_event_id) = (None::<String>, None::<String>);
    let mut on = member.name;
    for _resume in 0..5 {
        let mut stream = EventStream::from_response(response);
        let broken = loop {
            match stream.try_next(Duration::from_secs(30)).await {
                Ok(Some(event)) => {
                    if !event.id.is_empty() {
                        last_event_id = Some(event.id.clone());
                    }
                    let data: Value = serde_json::from_str(&event.data).unwrap_or_default();
                    match event.event.as_str() {
                        "accepted" => request_id = data["id"].as_str().map(str::to_owned),
                        "reply" => {
                            replies.push(data["body"].as_str().unwrap_or_default().to_owned())
                        }
                        _ => {}
                    }
                    let ended = event.event == "reply";
                    events.push(format!("{}@{on}", event.event));
                    if ended {
                        return Outcome::Streamed {
                            sent,
                            events,
                            replies,
                        };
                    }
                }
                Ok(None) => break events.last().is_some_and(|e| e.starts_with("shutdown")),
                Err(_) => break true,
            }
        };
        let (Some(id), true) = (&request_id, broken) else {
            break;
        };
        // Resume where the stream stopped, on a member still in rotation.
        let next = members
            .lock()
            .unwrap()
            .iter()
            .find(|m| m.name != on)
            .cloned();
        let Some(next) = next else { break };
        on = next.name;
        let mut resume = http
            .get(format!("{}/v1/requests/{id}", next.base))
            .header("accept", "text/event-stream");
        if let Some(last) = &last_event_id {
            resume = resume.header("last-event-id", last);
        }
        response = match resume.send().await {
            Ok(response) if response.status() == StatusCode::OK => response,
            _ => break,
        };
    }
    match request_id {
        Some(_) => Outcome::Streamed {
            sent,
            events,
            replies,
        },
        None => Outcome::Lost {
            error: format!("the stream broke before it was accepted: {events:?}"),
        },
    }
}

/// Three gateways under continuous request-mode load (plain and streamed);
/// a fourth joins, one is stopped with SIGTERM, one is killed. Every 200 is
/// the client's own body, every 202 is answered when polled on a surviving
/// instance, every stream gets exactly one reply — its own — and only the
/// killed instance's own clients lose their connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_grows_shrinks_and_loses_a_member_without_losing_a_reply() {
    let fleet = Fleet {
        channel: kafka::create_topic("fleet.requests", 3).await,
        replies: kafka::create_topic("fleet.replies", 6).await,
    };
    // Replies take a moment, so that requests are waiting whenever the
    // membership changes, and some outlast the route's timeout (202).
    let worker = Worker::start(
        "examples/slow",
        kafka::bootstrap(),
        &fleet.channel,
        &["--work-ms", "40", "--echo"],
    );
    worker.wait_assigned();
    let (first, a) = fleet.start("first").await;
    let (second, b) = fleet.start("second").await;
    let (third, c) = fleet.start("third").await;

    let load = Load::start(vec![a.clone(), b, c], 6, 2);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (fourth, d) = fleet.start("fourth").await;
    load.add(d.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;

    load.remove("second");
    let mut second = second;
    second.service.signal(Signal::SIGTERM);
    let status = tokio::task::spawn_blocking(move || {
        let status = second.service.wait_exit(Duration::from_secs(30));
        (status, second)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "the terminated gateway exits cleanly");
    tokio::time::sleep(Duration::from_secs(2)).await;

    third.service.signal(Signal::SIGKILL);
    load.remove("third");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcomes = load.stop().await;

    let survivors = [a, d];
    let mut by_member: HashMap<&str, HashMap<&str, usize>> = HashMap::new();
    let mut pending = Vec::new();
    for (member, outcome) in &outcomes {
        let kind = match outcome {
            Outcome::Replied { sent, got } => {
                assert_eq!(
                    got, sent,
                    "a 200 from {member} carries the client's own body"
                );
                "replied"
            }
            Outcome::Accepted { sent, id } => {
                pending.push((sent.clone(), id.clone()));
                "accepted"
            }
            Outcome::Streamed {
                sent,
                events,
                replies,
            } => {
                assert_eq!(
                    replies,
                    &vec![sent.clone()],
                    "a stream from {member} gets exactly its own reply once: {events:?}"
                );
                "streamed"
            }
            Outcome::Refused { status } => {
                assert!(
                    *member == "second" && *status == 503,
                    "{member} refused a call with {status}"
                );
                "refused"
            }
            Outcome::Lost { error } => {
                assert_eq!(
                    *member, "third",
                    "a connection to {member} was lost: {error}"
                );
                "lost"
            }
        };
        *by_member
            .entry(member)
            .or_default()
            .entry(kind)
            .or_default() += 1;
    }
    eprintln!("outcomes by gateway: {by_member:?}");
    let logs: Vec<String> = [&first, &status.1, &third, &fourth]
        .iter()
        .map(|g| g.service.log_text())
        .collect();
    let count = |what: &str| {
        logs.iter()
            .map(|log| log.matches(what).count())
            .sum::<usize>()
    };
    eprintln!(
        "rebalances: {}; partitions followed on after being given away, for requests waiting there: {}",
        count("reply partitions rebalanced"),
        count("following a reply partition given away"),
    );
    for member in ["first", "second", "third", "fourth"] {
        let answered = by_member.get(member).map_or(0, |kinds| {
            kinds.get("replied").copied().unwrap_or(0) + kinds.get("streamed").copied().unwrap_or(0)
        });
        assert!(answered > 0, "{member} answered no request: {by_member:?}");
    }

    assert!(!pending.is_empty(), "some requests were answered 202");
    // Every 202 is answered by polling a surviving instance, also those the
    // killed one accepted.
    let http = reqwest::Client::new();
    for (i, (sent, id)) in pending.iter().enumerate() {
        let survivor = &survivors[i % survivors.len()];
        let url = format!("{}/v1/requests/{id}", survivor.base);
        let got = eventually(
            Duration::from_secs(60),
            "the reply of an accepted request",
            || {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    let response = http.get(&url).send().await.ok()?;
                    if response.status() != StatusCode::OK {
                        return None;
                    }
                    response.text().await.ok()
                }
            },
        )
        .await;
        assert_eq!(&got, sent, "the polled reply of {id} is its own");
    }
    drop((first, fourth, worker));
}

/// A reply topic with fewer partitions than gateways: the gateway left
/// without one says so, is not ready, answers its request route with 503 +
/// Retry-After, and still publishes; once a partition frees up (the other
/// gateway stops), it takes it and serves request mode.
#[tokio::test]
async fn a_gateway_without_a_reply_partition_says_so_and_takes_one_when_freed() {
    let channel = kafka::create_topic("fleet.one.requests", 1).await;
    let replies = kafka::create_topic("fleet.one.replies", 1).await;
    let yaml = format!(
        "listen: 127.0.0.1:0\n\
         kafka: {{ brokers: \"{brokers}\" }}\n\
         channels: {{ {channel}: {{}} }}\n\
         replies: {{ topic: {replies}, assignment_timeout_ms: 3000 }}\n\
         routes:\n  \
         - {{ method: POST, path: /work, channel: {channel}, mode: request, timeout_ms: 10000 }}\n  \
         - {{ method: POST, path: /note, channel: {channel} }}\n",
        brokers = kafka::bootstrap(),
    );
    let worker = Worker::start("examples/echo", kafka::bootstrap(), &channel, &[]);
    worker.wait_assigned();
    let owner = Gateway::start(&yaml);
    let spare = Gateway::start(&yaml);
    spare.service.wait_for_log(
        "this gateway owns no reply partition",
        Duration::from_secs(30),
    );

    let http = reqwest::Client::new();
    let ready = http.get(spare.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let refused = http
        .post(spare.url("/work"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    let problem: Value = refused.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("owns no reply partition"),
        "{problem}"
    );
    let published = http
        .post(spare.url("/note"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(
        published.status(),
        StatusCode::ACCEPTED,
        "publish routes work"
    );
    let replied = http
        .post(owner.url("/work"))
        .body("to the owner")
        .send()
        .await
        .unwrap();
    assert_eq!(replied.text().await.unwrap(), "to the owner");

    let mut owner = owner;
    owner.service.signal(Signal::SIGTERM);
    owner.service.wait_exit(Duration::from_secs(30));
    let got = eventually(
        Duration::from_secs(30),
        "the spare gateway to serve",
        || {
            let (http, url) = (http.clone(), spare.url("/work"));
            async move {
                let response = http.post(url).body("to the spare").send().await.ok()?;
                if response.status() != StatusCode::OK {
                    return None;
                }
                response.text().await.ok()
            }
        },
    )
    .await;
    assert_eq!(got, "to the spare");
    let ready = http.get(spare.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
}
