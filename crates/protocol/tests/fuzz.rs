//! Property tests of everything that parses untrusted bytes in this crate: the command
//! decoder in both encodings, the server-frame decoder, the channel grammar and the
//! payload depth measure. Run on the stable toolchain with a bounded number of cases, so
//! CI runs them on every change: no input may panic, and every command the decoder
//! accepts must round-trip through both wire formats unchanged.

#![allow(missing_docs, clippy::unwrap_used)]

use proptest::prelude::*;
use serde_json::{json, Value};
use switchboard_protocol::{
    channel,
    codec::{decode_command, decode_server_frame, encode, METHODS},
    payload::json_depth,
    redis, Encoding,
};

/// Any JSON value, nested up to 6 levels, with finite numbers.
fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (-1.0e12f64..1.0e12).prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Frames shaped like commands, with plausible and implausible fields mixed.
fn command_like() -> impl Strategy<Value = Value> {
    let params = prop_oneof![
        any_value(),
        (".{0,20}", any_value(), any::<bool>()).prop_map(|(channel, data, ephemeral)| {
            json!({"channel": channel, "data": data, "ephemeral": ephemeral, "event": "e"})
        }),
        (".{0,20}", any::<u64>(), ".{0,8}").prop_map(|(channel, offset, epoch)| {
            json!({"channel": channel, "recover": {"offset": offset, "epoch": epoch}, "limit": offset % 5000})
        }),
    ];
    let methods: Vec<&str> = METHODS.iter().copied().chain(["fly", ""]).collect();
    (any_value(), prop::sample::select(methods), params).prop_map(|(id, method, params)| {
        let id = if id.is_u64() || id.is_null() { id } else { json!(7) };
        json!({"id": id, "method": method, "params": params})
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        for encoding in Encoding::ALL {
            let _ = decode_command(encoding, &bytes);
            let _ = decode_server_frame(encoding, &bytes);
        }
    }

    #[test]
    fn accepted_commands_round_trip_through_both_formats(frame in command_like()) {
        for encoding in Encoding::ALL {
            let bytes = encode(encoding, &frame).unwrap();
            if let Ok(command) = decode_command(encoding, &bytes) {
                for other in Encoding::ALL {
                    let again = encode(other, &command).unwrap();
                    prop_assert_eq!(&decode_command(other, &again).unwrap(), &command);
                }
            }
        }
    }

    #[test]
    fn any_value_round_trips_as_publication_data(data in any_value()) {
        let frame = json!({"id": 1, "method": "publish", "params": {"channel": "c", "data": data}});
        for encoding in Encoding::ALL {
            let bytes = encode(encoding, &frame).unwrap();
            let command = decode_command(encoding, &bytes).unwrap();
            let switchboard_protocol::CommandBody::Publish(params) = command.body else {
                panic!("not a publish");
            };
            prop_assert_eq!(&params.data, &data);
        }
    }

    #[test]
    fn depth_is_measured_like_the_tree(data in any_value()) {
        fn depth(value: &Value) -> usize {
            match value {
                Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
                Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
                _ => 0,
            }
        }
        prop_assert_eq!(json_depth(&data.to_string()), depth(&data));
    }

    #[test]
    fn channel_grammar_holds_for_any_name(name in prop_oneof![".{0,40}", "[a-z]{1,8}:[a-zA-Z0-9_.@=,/-]{0,30}"]) {
        if let Ok(namespace) = channel::namespace_of(&name, channel::DEFAULT_MAX_LENGTH) {
            prop_assert!(name.starts_with(namespace));
            prop_assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || channel::ALLOWED_PUNCTUATION.contains(c)));
            // Accepted names are safe inside Redis key hash tags.
            let live = redis::live(&name);
            prop_assert_eq!(redis::channel_of_live(&live), Some(name.as_str()));
        }
    }
}
