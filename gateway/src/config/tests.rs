use std::path::Path;

use super::*;

const MINIMAL: &str = r#"
kafka: { brokers: "127.0.0.1:9092" }
channels: { orders: { partitions: 3 } }
routes:
  - { method: POST, path: "/orders/{id}", channel: orders, key: { path: id } }
"#;

fn error_of(yaml: &str) -> String {
    Config::from_yaml(yaml).unwrap_err().to_string()
}

#[test]
fn defaults_fill_what_the_file_leaves_out() {
    let config = Config::from_yaml(MINIMAL).unwrap();
    assert_eq!(config.listen, default_listen());
    let route = &config.routes[0];
    assert_eq!(route.mode, Mode::Publish);
    assert_eq!(route.max_body_bytes, 1024 * 1024);
    assert_eq!(route.label(), "POST /orders/{id}");
    assert_eq!(config.channels["orders"].partitions, 3);
    assert_eq!(config.kafka.produce_timeout(), Duration::from_secs(5));
}

#[test]
fn unknown_fields_are_rejected_with_their_name() {
    let yaml = format!("{MINIMAL}\nlisten_port: 80\n");
    assert!(
        error_of(&yaml).contains("listen_port"),
        "{}",
        error_of(&yaml)
    );
}

#[test]
fn a_route_to_an_undeclared_channel_names_the_field() {
    let yaml = MINIMAL.replace("channel: orders", "channel: nowhere");
    assert_eq!(
        error_of(&yaml),
        "routes[0].channel: channel \"nowhere\" is not declared under channels"
    );
}

#[test]
fn a_path_key_must_name_a_path_parameter() {
    let yaml = MINIMAL.replace("path: id }", "path: customer }");
    assert!(error_of(&yaml).starts_with("routes[0].key.path:"));
}

#[test]
fn reserved_headers_cannot_be_forwarded() {
    let yaml = MINIMAL.replace(
        "key: { path: id } }",
        "forward_headers: [Osmosis-Request-Id] }",
    );
    assert!(error_of(&yaml).starts_with("routes[0].forward_headers:"));
}

#[test]
fn durability_settings_cannot_be_overridden() {
    let yaml = MINIMAL.replace(
        "brokers: \"127.0.0.1:9092\"",
        "brokers: \"127.0.0.1:9092\", properties: { acks: \"1\" }",
    );
    assert!(error_of(&yaml).starts_with("kafka.properties.acks:"));
}

#[test]
fn old_ordinal_settings_still_load_with_a_deprecation_warning() {
    let yaml = format!("{MINIMAL}\nreplies: {{ partitions: 6, instance: 1, instances: 3 }}\n");
    let config = Config::from_yaml(&yaml).unwrap();
    let warnings = config.replies.deprecations();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("group membership"), "{}", warnings[0]);
    assert!(
        Config::from_yaml(MINIMAL)
            .unwrap()
            .replies
            .deprecations()
            .is_empty()
    );
}

#[test]
fn the_reply_topic_needs_a_partition_and_the_fleet_a_group() {
    let yaml = format!("{MINIMAL}\nreplies: {{ partitions: 0 }}\n");
    assert!(error_of(&yaml).starts_with("replies.partitions:"));
    let yaml = format!("{MINIMAL}\nreplies: {{ group: \"\" }}\n");
    assert!(error_of(&yaml).starts_with("replies.group:"));
}

#[test]
fn the_reply_topic_is_needed_only_by_request_routes() {
    let config = Config::from_yaml(MINIMAL).unwrap();
    assert!(!config.topics().contains_key("osmosis.replies"));
    let yaml = MINIMAL.replace("key: { path: id } }", "key: { path: id }, mode: request }");
    let config = Config::from_yaml(&yaml).unwrap();
    assert_eq!(config.topics()["osmosis.replies"].partitions, 1);
}

#[test]
fn gateway_paths_cannot_be_routed() {
    let yaml = MINIMAL
        .replace("/orders/{id}", "/metrics")
        .replace("key: { path: id }", "");
    assert!(error_of(&yaml).starts_with("routes[0].path:"));
}

#[test]
#[allow(clippy::result_large_err)] // figment's Jail dictates the closure's error type
fn environment_overrides_the_file() {
    figment::Jail::expect_with(|jail| {
        jail.create_file("gateway.yaml", MINIMAL)?;
        jail.set_env("OSMOSIS_LISTEN", "127.0.0.1:9999");
        jail.set_env("OSMOSIS_KAFKA__BROKERS", "k1:9092,k2:9092");
        jail.set_env("OSMOSIS_KAFKA__PROPERTIES__SECURITY_PROTOCOL", "SASL_SSL");
        jail.set_env("OSMOSIS_SOMETHING_ELSE", "not a setting");
        let config = Config::load(Some(Path::new("gateway.yaml"))).unwrap();
        assert_eq!(config.listen.port(), 9999);
        assert_eq!(config.kafka.brokers, "k1:9092,k2:9092");
        assert_eq!(config.kafka.properties["security.protocol"], "SASL_SSL");
        Ok(())
    });
}

#[test]
fn min_insync_replicas_cannot_exceed_the_replicas() {
    let yaml = MINIMAL.replace(
        "orders: { partitions: 3 }",
        "orders: { partitions: 3, replication_factor: 3, min_insync_replicas: 4 }",
    );
    assert!(error_of(&yaml).starts_with("channels.orders.min_insync_replicas:"));
    let yaml = format!("{MINIMAL}\nreplies: {{ replication_factor: 1, min_insync_replicas: 2 }}\n");
    assert!(error_of(&yaml).starts_with("replies.min_insync_replicas:"));
    let yaml = MINIMAL.replace(
        "orders: { partitions: 3 }",
        "orders: { partitions: 3, replication_factor: 3, min_insync_replicas: 2 }",
    );
    assert_eq!(
        Config::from_yaml(&yaml).unwrap().channels["orders"].min_insync_replicas,
        Some(2)
    );
}

const WITH_AUTH: &str = r#"
kafka: { brokers: "127.0.0.1:9092" }
auth:
  jwt: { jwks_file: keys.json, issuers: [idp], audiences: [osmosis] }
channels: { orders: { subscribable: true, access: { key_claim: tenant } } }
routes:
  - { method: POST, path: /orders, channel: orders, access: { scopes: [orders:write] } }
  - { method: POST, path: /ping, channel: orders, access: { public: true } }
"#;

#[test]
fn access_policies_load_with_an_auth_section() {
    let config = Config::from_yaml(WITH_AUTH).unwrap();
    assert_eq!(config.routes[0].access.scopes, vec!["orders:write"]);
    assert!(!config.routes[0].access.public, "private unless said");
    assert!(config.routes[1].access.public);
    let jwt = config.auth.unwrap().jwt.unwrap();
    assert_eq!(jwt.algorithms, vec!["RS256", "ES256"]);
    assert_eq!(jwt.leeway_secs, 30);
}

#[test]
fn a_policy_without_an_auth_section_is_refused() {
    let yaml = WITH_AUTH.replace(
        "auth:\n  jwt: { jwks_file: keys.json, issuers: [idp], audiences: [osmosis] }\n",
        "",
    );
    assert!(
        error_of(&yaml).contains("no auth section"),
        "{}",
        error_of(&yaml)
    );
}

#[test]
fn trust_settings_that_cannot_work_name_their_field() {
    for (from, to, expected) in [
        ("audiences: [osmosis]", "audiences: []", "audiences"),
        (
            "jwks_file: keys.json",
            "jwks_file: keys.json, jwks_url: http://x",
            "exactly one",
        ),
        (
            "issuers: [idp]",
            "issuers: [idp], algorithms: [XS999]",
            "not a JWS algorithm",
        ),
        (
            "access: { public: true }",
            "access: { key_claim: tenant }",
            "channel subscriptions only",
        ),
        (
            "access: { key_claim: tenant }",
            "access: { key_claim: tenant }, cors: { origins: [\"*\"], credentials: true }",
            "credentials",
        ),
        (
            "access: { key_claim: tenant }",
            "access: { key_claim: tenant }, cors: { origins: [\"https://app.example.com/\"] }",
            "not an origin",
        ),
    ] {
        let yaml = WITH_AUTH.replace(from, to);
        assert!(
            error_of(&yaml).contains(expected),
            "{to}: {}",
            error_of(&yaml)
        );
    }
}

#[test]
fn the_demo_configuration_loads() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/demo.yaml");
    let config = Config::load(Some(&demo)).unwrap();
    assert!(config.auth.is_some());
    let protected: Vec<_> = config
        .routes
        .iter()
        .filter(|route| !route.access.public)
        .map(RouteConfig::label)
        .collect();
    assert_eq!(protected, vec!["demo-orders"]);
}

#[test]
fn trusted_proxies_are_networks_or_addresses_and_a_bad_one_is_named() {
    let yaml = format!(
        "{MINIMAL}limits: {{ trusted_proxies: [10.0.0.0/8, 192.0.2.7, \"2001:db8::/32\"], client_address_header: forwarded }}\n"
    );
    let config = Config::from_yaml(&yaml).unwrap();
    let networks = config.limits.trusted_proxy_networks().unwrap();
    assert_eq!(
        networks.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]
    );
    assert_eq!(
        config.limits.client_address_header,
        ClientAddressHeader::Forwarded
    );
    let yaml = format!("{MINIMAL}limits: {{ trusted_proxies: [10.0.0.0/8, lb.internal] }}\n");
    assert!(
        error_of(&yaml).starts_with("limits.trusted_proxies[1]:"),
        "{}",
        error_of(&yaml)
    );
}
