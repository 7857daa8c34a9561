//! Every component over SASL_SSL (SCRAM-SHA-512 over TLS, the broker's
//! certificate checked against the run's CA), configured with nothing but
//! the listener's address and the five client properties: the gateway
//! creates its topics, publishes a request-mode call and answers it with a
//! worker's reply; the local autoscaler measures the channel's backlog and
//! scales its workers. With a wrong password, each component stops at
//! start-up with an authentication error instead of waiting.

use std::time::Duration;

use osmosis_e2e::eventually;
use osmosis_e2e::kafka::unique_name;
use osmosis_e2e::process::{Gateway, Service, binary};
use osmosis_e2e::secure_kafka::SecureKafka;
use reqwest::StatusCode;
use serde_json::Value;

/// The gateway's configuration: the listener, its properties, one
/// request-mode route to `channel`.
fn gateway_config(kafka: &SecureKafka, channel: &str, replies: &str) -> String {
    let properties: String = kafka
        .properties()
        .into_iter()
        .map(|(name, value)| format!("    {name}: \"{value}\"\n"))
        .collect();
    format!(
        "listen: 127.0.0.1:0\n\
         kafka:\n  brokers: \"{}\"\n  properties:\n{properties}\
         channels: {{ {channel}: {{ partitions: 2 }} }}\n\
         replies: {{ topic: {replies}, partitions: 2 }}\n\
         routes:\n  - {{ method: POST, path: /work, channel: {channel}, mode: request, timeout_ms: 30000 }}\n",
        kafka.bootstrap
    )
}

#[tokio::test]
async fn the_gateway_a_worker_and_the_autoscaler_work_over_sasl_ssl() {
    let kafka = SecureKafka::from_env();
    let channel = unique_name("sasl.work");
    let replies = unique_name("sasl.replies");
    let gateway = Gateway::start_with(
        &gateway_config(&kafka, &channel, &replies),
        &["--create-topics"],
    );

    let slow = binary("examples/slow");
    let properties = kafka.property_args();
    let mut args: Vec<&str> = vec![
        "local",
        "--brokers",
        &kafka.bootstrap,
        "--topic",
        &channel,
        "--min-replicas",
        "1",
        "--max-replicas",
        "2",
        "--lag-per-replica",
        "5",
        "--poll-interval-ms",
        "500",
    ];
    args.extend(properties.iter().map(String::as_str));
    args.extend([
        "--",
        slow.to_str().unwrap(),
        "--brokers",
        &kafka.bootstrap,
        "--channel",
        &channel,
        "--work-ms",
        "100",
        "--log-format",
        "json",
    ]);
    args.extend(properties.iter().map(String::as_str));
    // The loop's measurements are debug lines: they show the lag it read.
    let autoscaler = Service::spawn(
        "osmosis-autoscaler",
        &args,
        &[("RUST_LOG", "info,osmosis_autoscaler=debug".to_owned())],
    );
    autoscaler.wait_for_log("partitions assigned", Duration::from_secs(60));

    // A request-mode call, answered by the worker's reply.
    let http = reqwest::Client::new();
    let response = http
        .post(gateway.url("/work"))
        .body("over tls")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["bytes"], 8, "{reply}");

    // A backlog: the autoscaler reads it and scales for it.
    let mut locations = Vec::new();
    for i in 0..40 {
        let response = http
            .post(gateway.url("/work"))
            .header("prefer", "respond-async")
            .body(format!("job {i:02}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        locations.push(response.headers()["location"].to_str().unwrap().to_owned());
    }
    autoscaler.wait_for_log_where("observed", Duration::from_secs(30), |line| {
        line["lag"].as_u64().is_some_and(|lag| lag > 0)
    });
    let up = autoscaler.wait_for_log_where("scaling", Duration::from_secs(30), |line| {
        line["to"].as_u64() > line["from"].as_u64()
    });
    assert!(up["reason"].as_str().unwrap().contains("lag"), "{up}");
    for location in &locations {
        eventually(Duration::from_secs(60), "every reply", || async {
            let response = http.get(gateway.url(location)).send().await.ok()?;
            (response.status() == StatusCode::OK).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn a_wrong_password_stops_every_component_at_start_up_with_an_authentication_error() {
    let wrong = format!("wrong-{}", uuid::Uuid::new_v4().simple());
    let kafka = SecureKafka::from_env().with_password(&wrong);
    let channel = unique_name("sasl.denied");
    let properties = kafka.property_args();
    let properties: Vec<&str> = properties.iter().map(String::as_str).collect();

    let gateway = Service::start(
        "osmosis-gateway",
        &gateway_config(&kafka, &channel, &unique_name("sasl.replies")),
        &["--create-topics"],
        &[],
    );
    let mut worker_args = vec!["--brokers", &kafka.bootstrap, "--channel", &channel];
    worker_args.extend(&properties);
    let worker = Service::spawn("examples/echo", &worker_args, &[]);
    let mut autoscaler_args = vec!["local", "--brokers", &kafka.bootstrap, "--topic", &channel];
    autoscaler_args.extend(&properties);
    autoscaler_args.extend(["--", "true"]);
    let autoscaler = Service::spawn("osmosis-autoscaler", &autoscaler_args, &[]);

    for mut component in [gateway, worker, autoscaler] {
        // Authentication fails within a second; the bound leaves room for a
        // loaded machine, and is far below any request's own timeout.
        let status = component.wait_exit(Duration::from_secs(30));
        let log = component.log_text();
        assert!(!status.success(), "{log}");
        assert!(log.contains("refused to authenticate the client"), "{log}");
        assert!(log.contains("SASL authentication error"), "{log}");
        assert!(!log.contains(&wrong), "a password in the log: {log}");
    }
}
