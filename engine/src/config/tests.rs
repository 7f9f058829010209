use super::*;

#[test]
fn an_unset_partition_count_is_the_existing_clusters_or_the_default() {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        cfg: EngineConfig,
    }
    let parse = |args: &[&str]| {
        let mut all = vec!["keyflow", "--module", "m.yaml"];
        all.extend(args);
        <Cli as clap::Parser>::try_parse_from(all).unwrap().cfg
    };
    let mut cfg = parse(&["--partitions", "16"]);
    assert_eq!(cfg.resolve_partitions(Some(8)), "--partitions");
    assert_eq!(cfg.partition_count(), 16, "the flag wins");
    let mut cfg = parse(&[]);
    cfg.resolve_partitions(Some(8));
    assert_eq!(cfg.partition_count(), 8, "the existing cluster's count");
    let mut cfg = parse(&[]);
    cfg.resolve_partitions(None);
    assert_eq!(cfg.partition_count(), DEFAULT_PARTITIONS as i32);
}

#[test]
fn config_file_settings_map_to_environment_variables() {
    let got = config_settings("commit-interval: 20ms\npartitions: 16\nstatic-membership: false\n")
        .unwrap();
    assert_eq!(
        got,
        vec![
            (
                "commit-interval".into(),
                "KEYFLOW_COMMIT_INTERVAL".into(),
                "20ms".into()
            ),
            (
                "partitions".into(),
                "KEYFLOW_PARTITIONS".into(),
                "16".into()
            ),
            (
                "static-membership".into(),
                "KEYFLOW_STATIC_MEMBERSHIP".into(),
                "false".into()
            ),
        ]
    );
    let err = config_settings("comit-interval: 20ms").unwrap_err();
    assert!(
        err.contains("unknown setting `comit-interval`") && err.contains("commit-interval"),
        "{err}"
    );
    assert!(config_settings("- a\n- b").unwrap_err().contains("mapping"));
}

#[test]
fn config_file_kafka_properties_are_a_mapping() {
    let got = config_settings(
        "kafka-properties:\n  security.protocol: SASL_SSL\n  sasl.mechanism: SCRAM-SHA-512\n  debug: broker,security\nkafka-properties-file: /etc/keyflow/kafka.properties\n",
    )
    .unwrap();
    assert_eq!(
        got,
        vec![
            (
                "kafka-properties".into(),
                "KEYFLOW_KAFKA_PROPERTIES".into(),
                "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\ndebug=broker,security"
                    .into()
            ),
            (
                "kafka-properties-file".into(),
                "KEYFLOW_KAFKA_PROPERTIES_FILE".into(),
                "/etc/keyflow/kafka.properties".into()
            ),
        ]
    );
    let props = KafkaProperties {
        kafka_properties: Some(got[0].2.clone()),
        kafka_property: vec![("security.protocol".into(), "SASL_PLAINTEXT".into())],
        kafka_properties_file: None,
    };
    let conn = props.connection("127.0.0.1:9092").unwrap();
    assert_eq!(conn.property("security.protocol"), Some("SASL_PLAINTEXT"));
    assert_eq!(conn.property("debug"), Some("broker,security"));
}

#[test]
fn ingress_addresses() {
    assert_eq!(parse_ingress_addr("off"), Ok(IngressAddr::Off));
    assert_eq!(
        parse_ingress_addr("127.0.0.1:8181"),
        Ok(IngressAddr::At("127.0.0.1:8181".parse().unwrap()))
    );
    assert!(parse_ingress_addr("localhost")
        .unwrap_err()
        .contains("not an address"));
}

#[test]
fn durations() {
    assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
    assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
    assert_eq!(parse_duration("1min"), Ok(Duration::from_secs(60)));
    assert_eq!(parse_duration("75"), Ok(Duration::from_millis(75)));
    assert!(parse_duration("fast")
        .unwrap_err()
        .contains("not a duration"));
    assert!(parse_duration("3weeks").unwrap_err().contains("unit"));
    for d in ["24h", "90min", "2s", "250ms", "0ms"] {
        assert_eq!(format_duration(parse_duration(d).unwrap()), d);
    }
}
