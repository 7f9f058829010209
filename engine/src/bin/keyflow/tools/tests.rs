//! Unit tests of tools.rs: reading `keyflow produce`'s `key: value` lines.

use super::*;

fn rec(key: &str, value: &str) -> Record {
    Record {
        key: Some(key.into()),
        value: value.into(),
    }
}

#[test]
fn a_line_splits_at_the_first_colon() {
    let line = r#"1: {"userId":"1","itemId":"socks","quantity":3}"#;
    assert_eq!(
        parse_line(line, 1),
        Ok(Some(rec(
            "1",
            r#"{"userId":"1","itemId":"socks","quantity":3}"#
        )))
    );
}

#[test]
fn the_space_after_the_colon_is_optional() {
    assert_eq!(parse_line("socks:50", 1), Ok(Some(rec("socks", "50"))));
    assert_eq!(parse_line("socks: 50", 1), Ok(Some(rec("socks", "50"))));
    // Only one space is separator; the rest belongs to the value.
    assert_eq!(parse_line("k:  v", 1), Ok(Some(rec("k", " v"))));
}

#[test]
fn later_colons_belong_to_the_value() {
    assert_eq!(parse_line("k: a:b: c", 1), Ok(Some(rec("k", "a:b: c"))));
    assert_eq!(parse_line("k:", 1), Ok(Some(rec("k", ""))));
}

#[test]
fn blank_lines_are_skipped_and_crlf_is_tolerated() {
    assert_eq!(parse_line("", 1), Ok(None));
    assert_eq!(parse_line("   \t", 1), Ok(None));
    assert_eq!(parse_line("k: v\r", 1), Ok(Some(rec("k", "v"))));
}

#[test]
fn a_line_without_a_colon_names_its_line_number() {
    let err = parse_lines("a: 1\n\nno separator here\n", false).unwrap_err();
    assert_eq!(err, LineError::NoSeparator { line: 3 });
    assert!(err.to_string().starts_with("line 3: no `:`"), "{err}");
}

#[test]
fn an_empty_key_is_an_error() {
    assert_eq!(parse_line(": v", 7), Err(LineError::EmptyKey { line: 7 }));
}

#[test]
fn whole_input_in_order() {
    let text = "socks: {\"itemId\":\"socks\",\"quantity\":50}\n\n1: {\"userId\":\"1\"}\r\n";
    assert_eq!(
        parse_lines(text, false),
        Ok(vec![
            rec("socks", r#"{"itemId":"socks","quantity":50}"#),
            rec("1", r#"{"userId":"1"}"#)
        ])
    );
}

#[test]
fn null_key_takes_whole_lines_as_values() {
    assert_eq!(
        parse_lines("a: b\n\nplain\n", true).unwrap(),
        vec![
            Record {
                key: None,
                value: "a: b".into()
            },
            Record {
                key: None,
                value: "plain".into()
            }
        ]
    );
}
