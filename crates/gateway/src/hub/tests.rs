//! Unit tests of the hub: frames per wire and epoch, dedupe, buffering, compression.

use super::*;
use crate::outbox::{outbox, ConnControl};

fn publication(epoch: &Arc<str>, offset: u64) -> ChannelEvent {
    ChannelEvent::Publication(Publication {
        channel: Arc::from("c"),
        offset: Some(offset),
        epoch: Some(epoch.clone()),
        event: None,
        data: serde_json::value::to_raw_value(&offset).expect("raw"),
        ts: 0,
        from: None,
    })
}

/// A payload that cannot be re-encoded (nested past serde_json's limit, which every
/// input path now refuses) still reaches a MessagePack subscriber as its offset, with
/// `data: null` and an error, instead of vanishing.
#[test]
fn an_unencodable_publication_arrives_as_a_placeholder() {
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let publication = Publication {
        channel: Arc::from("c"),
        offset: Some(7),
        epoch: Some(Arc::from("e")),
        event: Some("tally".into()),
        data: serde_json::value::RawValue::from_string(deep).expect("raw"),
        ts: 1,
        from: None,
    };
    let json = publication_frame(&publication, Encoding::Json.into(), Epoch::Carry).expect("json");
    assert!(json.payload().len() > 400, "JSON carries the payload verbatim");
    let packed =
        publication_frame(&publication, Encoding::MsgPack.into(), Epoch::Carry).expect("placeholder");
    let push: Push<serde_json::Value> = codec::decode(Encoding::MsgPack, packed.payload()).expect("decode");
    let Push::Publication(wire) = push else { panic!("not a publication: {push:?}") };
    assert_eq!(
        (wire.offset, wire.epoch.as_deref(), wire.event.as_deref(), &wire.data),
        (Some(7), Some("e"), Some("tally"), &serde_json::Value::Null)
    );
    assert_eq!(wire.error.map(|e| e.code), Some(Code::Internal));
    let page =
        HistoryPage { epoch: Arc::from("e"), top: 7, publications: vec![publication], truncated: false };
    let reply = history_reply(3, &page, false, Encoding::MsgPack.into()).expect("history").expect("a frame");
    let reply: serde_json::Value = codec::decode(Encoding::MsgPack, reply.payload()).expect("decode");
    let first = &reply["result"]["publications"][0];
    assert_eq!(first["offset"], 7);
    assert_eq!(first.get("epoch"), None, "the result's epoch applies");
    assert_eq!(first["data"], serde_json::Value::Null);
    assert_eq!(first["error"]["code"], 100);
}

/// With Redis, a live copy of a publication the subscriber already got from history
/// can reach the hub after the subscription went live: it must not be sent twice.
#[test]
fn late_live_copies_of_recovered_publications_are_dropped() {
    let hub = Hub::new(Arc::new(Metrics::new()), 16, Arc::new(Backlog::new(1 << 20)));
    let (outbox, mut rx) = outbox(16, 1 << 20, Arc::new(ConnControl::default()));
    let epoch: Arc<str> = Arc::from("e1");
    assert!(hub.subscribe("c", 1, outbox, Encoding::Json.into()));
    hub.deliver("c", publication(&epoch, 4));
    hub.go_live("c", 1, Some(("e1", 5)));
    hub.deliver("c", publication(&epoch, 5));
    hub.deliver("c", publication(&epoch, 6));
    hub.deliver("c", publication(&epoch, 6));
    let mut sent = Vec::new();
    while let Some(frame) = rx.try_recv() {
        sent.push(frame.frame.payload().to_vec());
    }
    assert_eq!(sent.len(), 1, "only offset 6, once");
    assert!(String::from_utf8_lossy(&sent[0]).contains("\"offset\":6"));
    // A new epoch (stream reset) starts over.
    hub.deliver("c", publication(&Arc::from("e2"), 1));
    assert!(rx.try_recv().is_some());
}

/// `permessage-deflate` subscribers share one compressed frame per publication (and
/// get small ones as they are); the others get the plain frame.
#[test]
fn large_publications_are_compressed_once_for_every_deflate_subscriber() {
    use crate::transport::{
        deflate::{inflate_message, Deflate},
        frame::RSV1,
    };
    let hub = Hub::new(Arc::new(Metrics::new()), 16, Arc::new(Backlog::new(1 << 20)));
    let deflate = Deflate { threshold: 200, level: 1 };
    let (first, mut first_rx) = crate::outbox::outbox_deflated(16, deflate);
    let (second, mut second_rx) = crate::outbox::outbox_deflated(16, deflate);
    let (plain, mut plain_rx) = outbox(16, 1 << 20, Arc::new(ConnControl::default()));
    for (conn, outbox) in [(1, first), (2, second), (3, plain)] {
        assert!(hub.subscribe("c", conn, outbox, Encoding::Json.into()));
        hub.go_live("c", conn, None);
    }
    let epoch: Arc<str> = Arc::from("e");
    let mut big = publication(&epoch, 1);
    if let ChannelEvent::Publication(publication) = &mut big {
        publication.data = serde_json::value::to_raw_value(&"vote ".repeat(100)).expect("raw");
    }
    hub.deliver("c", big);
    hub.deliver("c", publication(&epoch, 2));

    let (a, b, p) =
        (first_rx.try_recv().expect("a"), second_rx.try_recv().expect("b"), plain_rx.try_recv().expect("p"));
    assert_eq!(a.frame.bytes()[0] & RSV1, RSV1, "compressed");
    assert_eq!(a.frame.bytes().as_ptr(), b.frame.bytes().as_ptr(), "one compression, shared");
    assert_eq!(p.frame.bytes()[0] & RSV1, 0);
    assert!(a.frame.len() < p.frame.len() / 3);
    assert_eq!(inflate_message(a.frame.payload(), 1 << 16).expect("inflate"), p.frame.payload());
    let small = first_rx.try_recv().expect("small");
    assert_eq!(small.frame.bytes()[0] & RSV1, 0, "below the threshold");
    assert_eq!(small.frame.payload(), plain_rx.try_recv().expect("small").frame.payload());
}

/// A Socket.IO subscriber that negotiated `permessage-deflate` gets the namespace's
/// event frame compressed, and it inflates back to the plain one.
#[test]
fn socketio_events_are_compressed_too() {
    use crate::{
        transport::{
            deflate::{inflate_message, Deflate},
            frame::RSV1,
        },
        wire::SioNamespace,
    };
    let hub = Hub::new(Arc::new(Metrics::new()), 16, Arc::new(Backlog::new(1 << 20)));
    let wire = Wire::SocketIo(SioNamespace::ROOT);
    let (deflated, mut deflated_rx) =
        crate::outbox::outbox_deflated(16, Deflate { threshold: 200, level: 1 });
    let (plain, mut plain_rx) = outbox(16, 1 << 20, Arc::new(ConnControl::default()));
    for (conn, outbox) in [(1, deflated), (2, plain)] {
        assert!(hub.subscribe("c", conn, outbox, wire));
        hub.go_live("c", conn, None);
    }
    let mut big = publication(&Arc::from("e"), 1);
    if let ChannelEvent::Publication(publication) = &mut big {
        publication.data = serde_json::value::to_raw_value(&"tally ".repeat(100)).expect("raw");
    }
    hub.deliver("c", big);
    let (compressed, plain) =
        (deflated_rx.try_recv().expect("deflated"), plain_rx.try_recv().expect("plain"));
    assert_eq!(compressed.frame.bytes()[0] & RSV1, RSV1);
    assert!(plain.frame.payload().starts_with(b"42["), "a Socket.IO event");
    assert_eq!(inflate_message(compressed.frame.payload(), 1 << 16).expect("inflate"), plain.frame.payload());
}

/// Every frame queued in `rx`, decoded (JSON or MessagePack, by frame type).
fn sent(rx: &mut crate::outbox::OutboxReceiver) -> Vec<serde_json::Value> {
    let mut frames = Vec::new();
    while let Some(frame) = rx.try_recv() {
        let encoding = if frame.frame.is_binary() { Encoding::MsgPack } else { Encoding::Json };
        frames.push(codec::decode(encoding, frame.frame.payload()).expect("decode"));
    }
    frames
}

fn subscribed(
    hub: &Hub,
    conn: ConnId,
    encoding: Encoding,
    told: (&str, u64),
) -> crate::outbox::OutboxReceiver {
    let (outbox, rx) = outbox(16, 1 << 20, Arc::new(ConnControl::default()));
    assert!(hub.subscribe("c", conn, outbox, encoding.into()));
    hub.go_live("c", conn, Some(told));
    rx
}

/// Protocol §5.1.1: after the subscribe reply told the epoch, publications leave it out;
/// the first publication of a new epoch carries it, and the ones after it do not.
#[test]
fn publications_carry_the_epoch_only_when_it_changes() {
    let hub = Hub::new(Arc::new(Metrics::new()), 16, Arc::new(Backlog::new(1 << 20)));
    let mut rx = subscribed(&hub, 1, Encoding::Json, ("e1", 0));
    let (e1, e2): (Arc<str>, Arc<str>) = (Arc::from("e1"), Arc::from("e2"));
    hub.deliver("c", publication(&e1, 1));
    hub.deliver("c", publication(&e1, 2));
    hub.deliver("c", publication(&e2, 1));
    hub.deliver("c", publication(&e2, 2));
    let epochs: Vec<_> =
        sent(&mut rx).iter().map(|f| (f["offset"].clone(), f.get("epoch").cloned())).collect();
    assert_eq!(
        epochs,
        [(1.into(), None), (2.into(), None), (1.into(), Some("e2".into())), (2.into(), None),]
    );
}

/// One delivery serves subscribers who know different epochs: each gets the variant
/// it needs, in its encoding, and every variant is encoded once and shared.
#[test]
fn subscribers_who_know_different_epochs_each_get_their_variant() {
    let hub = Hub::new(Arc::new(Metrics::new()), 16, Arc::new(Backlog::new(1 << 20)));
    let mut knows = subscribed(&hub, 1, Encoding::Json, ("e2", 0));
    let mut also_knows = subscribed(&hub, 2, Encoding::Json, ("e2", 0));
    let mut stale = subscribed(&hub, 3, Encoding::Json, ("e1", 9));
    let mut packed = subscribed(&hub, 4, Encoding::MsgPack, ("e2", 0));
    let mut packed_stale = subscribed(&hub, 5, Encoding::MsgPack, ("e1", 9));
    hub.deliver("c", publication(&Arc::from("e2"), 1));
    let raw = |rx: &mut crate::outbox::OutboxReceiver| rx.try_recv().expect("a frame").frame.into_payload();
    let (a, b, c) = (raw(&mut knows), raw(&mut also_knows), raw(&mut stale));
    assert_eq!(a.as_ptr(), b.as_ptr(), "one encoding shared by both");
    assert!(!String::from_utf8_lossy(&a).contains("\"epoch\""), "{a:?}");
    let c: serde_json::Value = serde_json::from_slice(&c).expect("json");
    assert_eq!((c["offset"].clone(), c["epoch"].clone()), (1.into(), "e2".into()));
    assert_eq!(sent(&mut packed)[0].get("epoch"), None);
    assert_eq!(sent(&mut packed_stale)[0]["epoch"], "e2");
    // Once told, the stale subscriber is like the others.
    hub.deliver("c", publication(&Arc::from("e2"), 2));
    for rx in [&mut knows, &mut also_knows, &mut stale, &mut packed, &mut packed_stale] {
        assert_eq!(sent(rx)[0].get("epoch"), None);
    }
}

/// Encoded at most once per encoding and variant; events without an epoch (join,
/// leave, ephemeral publications) have one frame per encoding.
#[test]
fn a_delivery_encodes_each_variant_once() {
    let delivery = Delivery::new(Arc::from("c"), publication(&Arc::from("e"), 1));
    let frame = |epoch| delivery.frame(Encoding::Json.into(), epoch).expect("frame").clone().into_payload();
    assert_eq!(frame(Epoch::Omit).as_ptr(), frame(Epoch::Omit).as_ptr());
    assert_ne!(frame(Epoch::Omit), frame(Epoch::Carry));
    assert_eq!(frame(Epoch::Carry).len() - frame(Epoch::Omit).len(), r#","epoch":"e""#.len());
    let ChannelEvent::Publication(mut ephemeral) = publication(&Arc::from("e"), 1) else { unreachable!() };
    (ephemeral.offset, ephemeral.epoch) = (None, None);
    let delivery = Delivery::new(Arc::from("c"), ChannelEvent::Publication(ephemeral));
    let frame =
        |epoch| delivery.frame(Encoding::MsgPack.into(), epoch).expect("frame").clone().into_payload();
    assert_eq!(frame(Epoch::Omit).as_ptr(), frame(Epoch::Carry).as_ptr());
}
