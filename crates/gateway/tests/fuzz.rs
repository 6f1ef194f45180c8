//! Property tests of the gateway's parsers of untrusted input: JWTs (header, claims and
//! signature segments) and the Redis live-message and stream-body decoder, which reads
//! what any service may write into Redis. No input may panic; what the Redis decoder
//! accepts must be a well-formed event.

#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;

use base64::Engine;
use proptest::prelude::*;
use switchboard_gateway::{
    auth::Verifier,
    broker::{redis::wire, ChannelEvent},
    config::AuthConfig,
};

fn verifier() -> Verifier {
    let config = AuthConfig { hmac_secret: Some("fuzz-secret".into()), ..AuthConfig::default() };
    Verifier::from_config(&config).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_token_string_is_refused_without_panicking(token in ".{0,200}") {
        prop_assert!(verifier().verify_connection(&token).is_err());
    }

    #[test]
    fn forged_segments_are_refused_without_panicking(
        header in prop_oneof![
            Just(r#"{"alg":"none","typ":"JWT"}"#.to_string()),
            Just(r#"{"alg":"HS256"}"#.to_string()),
            Just(r#"{"alg":"RS256","typ":"JWT"}"#.to_string()),
            ".{0,40}",
        ],
        claims in prop_oneof![Just(r#"{"sub":"u","exp":99999999999}"#.to_string()), ".{0,60}"],
        signature in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        let token = format!("{}.{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()), b64(&signature));
        prop_assert!(verifier().verify_connection(&token).is_err());
    }

    #[test]
    fn redis_messages_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let channel: Arc<str> = Arc::from("c");
        let _ = wire::decode_live(&channel, &bytes);
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = wire::publication(&channel, None, 0, text);
        }
    }

    #[test]
    fn well_formed_envelopes_decode_to_their_publication(
        offset in 1u64..1_000_000,
        epoch in "[0-9a-f]{1,16}",
        event in prop::option::of("[a-z_]{1,10}"),
        data in prop_oneof![Just("1".to_string()), Just(r#"{"a":[1,"x"]}"#.to_string()), "\"[a-z ]{0,20}\""],
    ) {
        let channel: Arc<str> = Arc::from("c");
        let raw = serde_json::value::RawValue::from_string(data.clone()).unwrap();
        let body = wire::body(event.as_deref(), &raw, None).unwrap();
        let envelope = format!(r#"{{"o":{offset},"e":"{epoch}","t":5,"b":{body}}}"#);
        match wire::decode_live(&channel, envelope.as_bytes()).unwrap() {
            ChannelEvent::Publication(p) => {
                prop_assert_eq!(p.offset, Some(offset));
                prop_assert_eq!(p.epoch.as_deref(), Some(epoch.as_str()));
                prop_assert_eq!(p.event, event);
                prop_assert_eq!(p.data.get(), data.as_str());
            }
            other => prop_assert!(false, "not a publication: {:?}", other),
        }
    }
}
