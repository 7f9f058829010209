use super::*;

fn rec(mode: Mode, generation: u64, by: &str, offset: i64) -> Recorded {
    Recorded {
        proposal: Proposal {
            mode,
            generation,
            by: by.to_string(),
            reason: "test".to_string(),
        },
        offset,
        at_ms: Some(0),
    }
}

#[test]
fn a_record_reads_back_as_written_and_other_keys_are_skipped() {
    let p = Proposal {
        mode: Mode::Direct,
        generation: 1,
        by: "w1".into(),
        reason: "new cluster".into(),
    };
    let value = serde_json::to_vec(&p).unwrap();
    assert_eq!(
        std::str::from_utf8(&value).unwrap(),
        r#"{"mode":"direct","generation":1,"by":"w1","reason":"new cluster"}"#
    );
    assert_eq!(parse(Some(KEY.as_bytes()), Some(&value)), Ok(Some(p)));
    assert_eq!(parse(Some(b"something-else"), Some(b"??")), Ok(None));
    assert_eq!(parse(None, Some(&value)), Ok(None));
}

#[test]
fn a_record_of_an_unknown_mode_or_shape_is_an_error_not_skipped() {
    // A newer version's mode must stop this one, never be passed over for an older record.
    let hybrid = br#"{"mode":"hybrid","generation":2,"by":"w1","reason":"r"}"#;
    assert!(parse(Some(KEY.as_bytes()), Some(hybrid)).is_err());
    assert!(parse(Some(KEY.as_bytes()), Some(b"direct")).is_err());
    assert!(parse(Some(KEY.as_bytes()), None).is_err());
    // Fields added later are ignored.
    let more = br#"{"mode":"routed","generation":3,"by":"w","reason":"r","note":"x"}"#;
    assert_eq!(
        parse(Some(KEY.as_bytes()), Some(more))
            .unwrap()
            .unwrap()
            .mode,
        Mode::Routed
    );
}

#[test]
fn the_first_record_of_the_highest_generation_wins() {
    assert_eq!(effective(&[]), None);
    // Two workers proposing at once: the first written wins, whatever the second says.
    let racing = [rec(Mode::Direct, 1, "w1", 0), rec(Mode::Routed, 1, "w2", 1)];
    assert_eq!(effective(&racing).unwrap().proposal.by, "w1");
    // Read out of order, still by offset.
    let shuffled = [racing[1].clone(), racing[0].clone()];
    assert_eq!(effective(&shuffled).unwrap().proposal.by, "w1");
    // A switch writes the next generation: it wins over everything before it, and a second
    // switch of the same generation written after it loses.
    let switched = [
        rec(Mode::Direct, 1, "w1", 0),
        rec(Mode::Routed, 1, "w2", 1),
        rec(Mode::Routed, 2, "tool-a", 2),
        rec(Mode::Direct, 2, "tool-b", 3),
    ];
    let e = effective(&switched).unwrap();
    assert_eq!((e.mode(), e.proposal.by.as_str()), (Mode::Routed, "tool-a"));
}

#[test]
fn a_cluster_without_a_record_gets_the_flag_direct_by_default_and_routed_when_older() {
    assert_eq!(proposal_for(None, false).0, Mode::Direct);
    assert_eq!(proposal_for(None, false).1, "new cluster");
    assert_eq!(proposal_for(Some(Mode::Routed), false).0, Mode::Routed);
    assert_eq!(proposal_for(Some(Mode::Direct), false).0, Mode::Direct);
    for flag in [None, Some(Mode::Direct), Some(Mode::Routed)] {
        assert_eq!(
            proposal_for(flag, true),
            (Mode::Routed, LEGACY_REASON.to_string())
        );
    }
}

#[test]
fn an_explicit_flag_must_agree_with_the_record_and_no_flag_follows_it() {
    let routed = rec(Mode::Routed, 1, "w7", 0);
    assert!(check_flag("shop", None, &routed).is_ok());
    assert!(check_flag("shop", Some(Mode::Routed), &routed).is_ok());
    let err = check_flag("shop", Some(Mode::Direct), &routed)
        .unwrap_err()
        .to_string();
    for part in [
        "cluster `shop` reads its ingress topics routed",
        "`shop-meta` by `w7` at 1970-01-01T00:00:00.000Z",
        "--direct-ingress true",
        "keyflow ingress-mode --cluster shop direct",
    ] {
        assert!(err.contains(part), "{part:?} not in {err}");
    }
}

#[test]
fn modes_parse_from_the_command_line() {
    assert_eq!("direct".parse::<Mode>(), Ok(Mode::Direct));
    assert_eq!("routed".parse::<Mode>(), Ok(Mode::Routed));
    assert!("true".parse::<Mode>().unwrap_err().contains("direct"));
    assert_eq!(rfc3339(1_796_000_000_123), "2026-11-30T00:53:20.123Z");
}

/// Two workers of a new cluster propose at once with different flags: both follow the
/// first record written, so exactly one of them runs (the other refuses), in the first
/// record's mode, and a third worker without a flag follows that record too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_proposals_resolve_to_the_first_record_written() {
    let kafka = crate::kafka::Connection::plain(crate::kafka::test_bootstrap());
    for round in 0..3 {
        let cluster = format!("moderace-{:08x}-{round}", rand::random::<u32>());
        crate::kafka::ensure_topics(&kafka, &[topic_spec(&cluster)], 1)
            .await
            .unwrap();
        let new = Before::default();
        let (a, b) = tokio::join!(
            decide(&kafka, &cluster, "wa", Some(Mode::Direct), new),
            decide(&kafka, &cluster, "wb", Some(Mode::Routed), new),
        );
        let records = read(&kafka, &cluster).await.unwrap();
        let first = &records[0];
        assert_eq!(effective(&records), Some(first));
        let (won, lost) = match first.mode() {
            Mode::Direct => (a, b),
            Mode::Routed => (b, a),
        };
        assert_eq!(won.unwrap(), *first);
        assert!(
            matches!(lost, Err(ModeError::Disagrees { recorded, .. }) if recorded == first.mode())
        );
        let third = decide(&kafka, &cluster, "wc", None, new).await.unwrap();
        assert_eq!(third, *first);
        assert!(records.len() <= 2, "{records:?}");
    }
}

/// `<cluster>-meta` and `<cluster>-messages` both exist without a record: a cluster that has
/// run (a record in its messages topic) is an older version's being upgraded right now, so
/// routed; one that has not is a new cluster being created right now, so direct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_record_the_clusters_history_tells_an_upgrade_from_a_new_cluster() {
    let kafka = crate::kafka::Connection::plain(crate::kafka::test_bootstrap());
    let both = Before {
        messages: true,
        meta: true,
    };
    for has_run in [false, true] {
        let cluster = format!("modehist-{:08x}", rand::random::<u32>());
        let messages = TopicSpec {
            name: format!("{cluster}-messages"),
            partitions: 2,
            compacted: false,
            exact_partitions: true,
            retention: None,
            config: &[],
        };
        crate::kafka::ensure_topics(&kafka, &[topic_spec(&cluster), messages.clone()], 1)
            .await
            .unwrap();
        if has_run {
            let producer = crate::kafka::plain_producer(&kafka, Duration::from_secs(10)).unwrap();
            let delivery =
                crate::kafka::send(&producer, &messages.name, Some(1), None, Some(b"m"), None)
                    .await
                    .unwrap();
            delivery.await.unwrap().unwrap();
        }
        let decided = decide(&kafka, &cluster, "w1", None, both).await.unwrap();
        let want = if has_run { Mode::Routed } else { Mode::Direct };
        assert_eq!(decided.mode(), want, "has run: {has_run}: {decided:?}");
    }
}
