//! An over-long job is slow, not stuck: while one handler runs far beyond
//! the stall bounds with a backlog behind it, the worker stays healthy
//! (`/healthz` 200, saying which partition is slow; the slow gauge at 1)
//! and the local autoscaler reports the partition slow and never scales
//! the backlogged group to zero — which it did when a partition without
//! progress for the bound counted as stuck and its lag was dropped.

use std::time::Duration;

use osmosis_e2e::eventually;
use osmosis_e2e::kafka;
use osmosis_e2e::process::{Gateway, Service, binary, metric_sample};
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn a_long_job_keeps_the_worker_healthy_but_slow_and_its_group_above_zero() {
    let channel = kafka::create_topic("longjob", 1).await;
    let replies = kafka::unique_name("longjob.replies");
    let gateway = Gateway::for_channel(
        &channel,
        &replies,
        &["method: POST, path: /job, mode: request"],
    );
    let slow = binary("examples/slow");
    let autoscaler = Service::spawn(
        "osmosis-autoscaler",
        &[
            "local",
            "--brokers",
            kafka::bootstrap(),
            "--topic",
            &channel,
            "--min-replicas",
            "0",
            "--max-replicas",
            "1",
            "--lag-per-replica",
            "1",
            "--poll-interval-ms",
            "500",
            "--idle-seconds",
            "1",
            "--scale-down-stabilization-seconds",
            "0",
            "--stuck-after-seconds",
            "2",
            "--",
            slow.to_str().unwrap(),
            "--brokers",
            kafka::bootstrap(),
            "--channel",
            &channel,
            "--work-ms",
            "12000",
            "--slow-after-ms",
            "2000",
            "--log-format",
            "json",
        ],
        &[],
    );

    // Two jobs: while the first runs, the second is the backlog.
    let http = reqwest::Client::new();
    let mut locations = Vec::new();
    for job in ["first", "second"] {
        let response = http
            .post(gateway.url("/job"))
            .header("prefer", "respond-async")
            .body(job)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        locations.push(response.headers()["location"].to_str().unwrap().to_owned());
    }

    let started = autoscaler.wait_for_log("worker started", Duration::from_secs(60));
    let worker_ops = started["metrics"].as_str().unwrap().to_owned();
    let health = eventually(
        Duration::from_secs(30),
        "the worker's /healthz to report the slow partition",
        || async {
            let response = reqwest::get(format!("http://{worker_ops}/healthz"))
                .await
                .ok()?;
            let status = response.status();
            let body = response.text().await.ok()?;
            body.contains("slow").then_some((status, body))
        },
    )
    .await;
    assert_eq!(health.0, StatusCode::OK, "slow is healthy: {}", health.1);
    assert!(health.1.contains("partition 0 slow"), "{}", health.1);
    let stalled = metric_sample(
        &format!("http://{worker_ops}/metrics"),
        "osmosis_worker_partitions_stalled{state=\"slow\"}",
    )
    .await;
    assert_eq!(stalled, Some(1.0));
    autoscaler.wait_for_log_where(
        "partitions without progress changed",
        Duration::from_secs(30),
        |line| line["slow"].as_str() == Some("[0]"),
    );

    // The first job's reply: by then the partition made no progress for
    // far longer than the stuck bound plus the idle time, with a backlog.
    let first = eventually(Duration::from_secs(60), "the first job's reply", || async {
        let response = http.get(gateway.url(&locations[0])).send().await.ok()?;
        (response.status() == StatusCode::OK).then_some(response)
    })
    .await;
    let body: Value = first.json().await.unwrap();
    assert_eq!(body["bytes"], 5);
    let to_zero: Vec<Value> = autoscaler
        .log_text()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["message"] == "scaling" && line["to"] == 0)
        .collect();
    assert!(
        to_zero.is_empty(),
        "scaled to zero with a backlog: {to_zero:?}"
    );
    assert!(
        !autoscaler.log_text().contains("\"stuck\":\"[0]\""),
        "a held partition is never reported stuck"
    );
    let second = eventually(
        Duration::from_secs(60),
        "the second job's reply",
        || async {
            let response = http.get(gateway.url(&locations[1])).send().await.ok()?;
            (response.status() == StatusCode::OK).then_some(response)
        },
    )
    .await;
    let body: Value = second.json().await.unwrap();
    assert_eq!(body["bytes"], 6);
}
