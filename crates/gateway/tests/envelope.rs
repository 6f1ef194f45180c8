//! The publication envelope as a client reads it off the socket (protocol §5.1.1): `epoch`
//! only when it is not the one the connection was last told for the channel, the other
//! fields in their fixed order, in both encodings. Frames are read as raw WebSocket
//! messages, not through the protocol crate's types, so a field the types would tolerate
//! (or fill in) still shows.

#![allow(missing_docs, clippy::unwrap_used)]

mod fixture;

use fixture::{config, Client, TestServer, WAIT};
use futures_util::StreamExt;
use serde_json::{json, Value};
use switchboard_protocol::{codec, Encoding};
use tokio_tungstenite::tungstenite::Message;

/// The fields of a publication push, in the order the server writes them.
const ORDER: [&str; 8] = ["push", "channel", "offset", "epoch", "event", "data", "ts", "from"];

/// One publication push of `channel` as raw bytes and as a value, skipping join/leave
/// pushes (the `open` namespace has them). The fixture client must have nothing queued.
async fn raw_publication(client: &mut Client, channel: &str) -> (Vec<u8>, Value) {
    assert!(client.queued().is_empty(), "frames already taken off the socket: {:?}", client.queued());
    loop {
        let message = tokio::time::timeout(WAIT, client.ws.next()).await.expect("a frame in time");
        let bytes = match message.expect("open").expect("no error") {
            Message::Text(text) => {
                assert_eq!(client.encoding, Encoding::Json);
                text.as_bytes().to_vec()
            }
            Message::Binary(bytes) => {
                assert_eq!(client.encoding, Encoding::MsgPack);
                bytes.to_vec()
            }
            _ => continue,
        };
        let value: Value = codec::decode(client.encoding, &bytes).unwrap();
        if value["push"] == "publication" && value["channel"] == channel {
            return (bytes, value);
        }
        assert!(["join", "leave"].contains(&value["push"].as_str().unwrap_or_default()), "{value}");
    }
}

/// The keys of `frame` (a publication push) in the order they appear in its bytes.
fn keys_in_order(raw: &[u8], frame: &Value, encoding: Encoding) -> Vec<String> {
    let mut found: Vec<(usize, String)> = ORDER
        .iter()
        .filter(|key| frame.get(**key).is_some())
        .map(|key| {
            let needle = match encoding {
                Encoding::Json => format!("\"{key}\":").into_bytes(),
                // A MessagePack fixstr: 0xa0 | length, then the bytes.
                Encoding::MsgPack => [&[0xa0 | key.len() as u8][..], key.as_bytes()].concat(),
            };
            let at = raw.windows(needle.len()).position(|w| w == needle.as_slice()).unwrap();
            (at, (*key).to_string())
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, key)| key).collect()
}

fn offset_and_epoch(frame: &Value) -> (Value, Option<Value>) {
    (frame["offset"].clone(), frame.get("epoch").cloned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publication_frames_carry_only_what_the_client_does_not_know() {
    let server = TestServer::start(config()).await;
    let mut publisher = server.connect("writer", Encoding::Json).await;
    for (encoding, channel) in [(Encoding::Json, "open:env-json"), (Encoding::MsgPack, "open:env-msgpack")] {
        let mut reader = server.connect("reader", encoding).await;
        let subscribed = reader.ok("subscribe", json!({"channel": channel})).await;
        let epoch = subscribed["epoch"].clone();

        // Live: the subscribe reply told the epoch.
        for n in 1..=2 {
            publisher.ok("publish", json!({"channel": channel, "event": "msg", "data": {"n": n}})).await;
            let (raw, frame) = raw_publication(&mut reader, channel).await;
            assert_eq!(offset_and_epoch(&frame), (json!(n), None), "{encoding:?}: {frame}");
            assert_eq!(
                keys_in_order(&raw, &frame, encoding),
                ["push", "channel", "offset", "event", "data", "ts", "from"],
                "{encoding:?}: field order"
            );
            assert_eq!(frame["from"]["user"], "writer");
        }
        // Ephemeral: neither offset nor epoch.
        publisher.ok("publish", json!({"channel": channel, "data": "typing", "ephemeral": true})).await;
        let (raw, frame) = raw_publication(&mut reader, channel).await;
        assert_eq!(keys_in_order(&raw, &frame, encoding), ["push", "channel", "data", "ts", "from"]);

        // Recovered publications follow a reply in their epoch, and so do the live ones
        // after them.
        reader.ok("unsubscribe", json!({"channel": channel})).await;
        for n in 3..=4 {
            publisher.ok("publish", json!({"channel": channel, "data": {"n": n}})).await;
        }
        let recover = json!({"channel": channel, "recover": {"offset": 2, "epoch": epoch}});
        let resubscribed = reader.ok("subscribe", recover).await;
        assert_eq!((&resubscribed["recovered"], &resubscribed["missed"]), (&json!(true), &json!(2)));
        assert_eq!(resubscribed["epoch"], epoch);
        for n in 3..=4 {
            let (_, frame) = raw_publication(&mut reader, channel).await;
            assert_eq!(offset_and_epoch(&frame), (json!(n), None), "{encoding:?}: recovered {frame}");
        }
        publisher.ok("publish", json!({"channel": channel, "data": {"n": 5}})).await;
        let (_, frame) = raw_publication(&mut reader, channel).await;
        assert_eq!(offset_and_epoch(&frame), (json!(5), None), "{encoding:?}: live after recovery");

        // A history reply: the result's epoch applies to its publications.
        let since = json!({"channel": channel, "since": {"offset": 3, "epoch": epoch}});
        let history = reader.ok("history", since).await;
        assert_eq!(history["epoch"], epoch);
        let publications = history["publications"].as_array().unwrap();
        let offsets: Vec<_> = publications.iter().map(offset_and_epoch).collect();
        assert_eq!(offsets, [(json!(4), None), (json!(5), None)], "{encoding:?}: {history}");
    }
    server.shutdown().await;
}

/// The personal channel: the connect reply's `subscriptions` tell the epoch, so offline
/// delivery and live notifications leave it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_reply_tells_the_personal_channel_epoch() {
    let server = TestServer::start(config()).await;
    server.backend_publish("user:dana", "notification", json!({"n": 1})).await;
    let mut device = server.open(Encoding::MsgPack).await;
    let connected = device.ok("connect", json!({"token": fixture::token("dana")})).await;
    assert_eq!(connected["subscriptions"][0]["missed"], 1, "{connected}");
    let (_, pending) = raw_publication(&mut device, "user:dana").await;
    assert_eq!(offset_and_epoch(&pending), (json!(1), None), "{pending}");
    server.backend_publish("user:dana", "notification", json!({"n": 2})).await;
    let (raw, live) = raw_publication(&mut device, "user:dana").await;
    assert_eq!(offset_and_epoch(&live), (json!(2), None), "{live}");
    assert_eq!(
        keys_in_order(&raw, &live, Encoding::MsgPack),
        ["push", "channel", "offset", "event", "data", "ts"]
    );
    server.shutdown().await;
}
