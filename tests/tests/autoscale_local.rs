//! The autoscaler's local target, end to end: a burst through the gateway
//! scales real worker processes up, every request gets its reply, and after
//! the burst the pool scales down by draining workers, losing nothing; and
//! no worker outlives the autoscaler.

use std::collections::HashSet;
use std::time::Duration;

use nix::sys::signal::Signal;
use osmosis_e2e::eventually;
use osmosis_e2e::kafka;
use osmosis_e2e::process::{Gateway, Service, binary};
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn a_burst_scales_local_workers_up_and_idle_scales_them_down() {
    const BURST: usize = 80;
    let channel = kafka::create_topic("autoscale.local", 4).await;
    let replies = kafka::unique_name("autoscale.replies");
    let gateway = Gateway::for_channel(
        &channel,
        &replies,
        &["method: POST, path: /work, mode: request"],
    );
    let slow = binary("examples/slow");
    let slow = slow.to_str().unwrap();
    let autoscaler = Service::spawn(
        "osmosis-autoscaler",
        &[
            "local",
            "--brokers",
            kafka::bootstrap(),
            "--topic",
            &channel,
            "--min-replicas",
            "1",
            "--max-replicas",
            "4",
            "--lag-per-replica",
            "5",
            "--poll-interval-ms",
            "500",
            "--idle-seconds",
            "2",
            "--scale-down-stabilization-seconds",
            "2",
            "--",
            slow,
            "--brokers",
            kafka::bootstrap(),
            "--channel",
            &channel,
            "--work-ms",
            "150",
            "--log-format",
            "json",
            "--kafka-property",
            "session.timeout.ms=6000",
        ],
        &[],
    );
    autoscaler.wait_for_log("partitions assigned", Duration::from_secs(60));

    let http = reqwest::Client::new();
    let mut locations = Vec::new();
    for i in 0..BURST {
        let response = http
            .post(gateway.url("/work"))
            .header("prefer", "respond-async")
            .body(format!("job {i:03}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        locations.push(response.headers()["location"].to_str().unwrap().to_owned());
    }

    let up = autoscaler.wait_for_log_where("scaling", Duration::from_secs(30), |line| {
        line["to"].as_u64() > line["from"].as_u64()
    });
    assert!(up["reason"].as_str().unwrap().contains("lag"), "{up}");
    assert!(up["to"].as_u64().unwrap() > 1);

    let mut bodies = HashSet::new();
    for location in &locations {
        let reply = eventually(Duration::from_secs(120), "every reply", || async {
            let response = http.get(gateway.url(location)).send().await.ok()?;
            (response.status() == StatusCode::OK).then_some(response)
        })
        .await;
        let body: Value = reply.json().await.unwrap();
        assert_eq!(body["bytes"], 7);
        bodies.insert(location.clone());
    }
    assert_eq!(bodies.len(), BURST);

    let down = autoscaler.wait_for_log_where("scaling", Duration::from_secs(60), |line| {
        line["to"].as_u64() < line["from"].as_u64()
    });
    assert!(
        down["to"].as_u64().unwrap() >= 1,
        "never below --min-replicas"
    );
    autoscaler.wait_for_log_where("worker exited", Duration::from_secs(60), |line| {
        line["status"].as_str() == Some("exit status: 0")
    });

    // Workers never outlive the autoscaler, even one killed outright.
    let workers: Vec<u32> = autoscaler
        .log_text()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["message"] == "started worker")
        .filter_map(|line| line["pid"].as_u64().map(|pid| pid as u32))
        .collect();
    assert!(!workers.is_empty(), "{}", autoscaler.log_text());
    autoscaler.signal(Signal::SIGKILL);
    eventually(
        Duration::from_secs(60),
        "every worker gone with its autoscaler",
        || async { workers.iter().all(|pid| !running(*pid)).then_some(()) },
    )
    .await;
}

/// Whether process `pid` runs (a zombie waiting for its reaper does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the parenthesised command name.
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}
