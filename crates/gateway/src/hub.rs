//! The local channel index and fan-out.
//!
//! The hub knows which connections of *this node* are subscribed to which channel. The
//! broker hands it each channel event once; the hub wraps the event in a [`Delivery`]
//! whose frames are encoded lazily, at most once per wire format, and pushes the shared
//! bytes into each subscriber's bounded [`Outbox`]. Pushing never waits, so a slow
//! subscriber cannot delay the others (its outbox closes it instead).
//!
//! A new subscription starts *buffering*: events are kept aside while the session reads
//! history, then [`Hub::go_live`] replays the buffer after the position the session has
//! already sent and switches to live delivery. That is what makes recovery gap-free and
//! duplicate-free.
//!
//! The hub must not await while holding a shard of its map, and must not call the broker.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
    time::Instant,
};

use dashmap::DashMap;
use switchboard_protocol::{
    codec::{self, CodecError},
    push::{self, ChannelClient, Push},
    reply::HistoryResult,
    Code, Encoding, ErrorBody, Reply,
};

use crate::{
    broker::{ChannelEvent, Control, EventSink, HistoryPage, Publication},
    metrics::Metrics,
    outbox::{CloseRequest, Outbox, SessionCommand},
    transport::frame::{OpCode, WireFrame},
};

/// Identifies a connection on this node.
pub type ConnId = u64;

/// One channel event on its way to local subscribers, with its frames encoded on demand.
#[derive(Debug)]
pub struct Delivery {
    channel: Arc<str>,
    event: ChannelEvent,
    frames: [OnceLock<Option<WireFrame>>; 2],
    received_at: Instant,
}

impl Delivery {
    /// Wraps an event of `channel` received now.
    pub fn new(channel: Arc<str>, event: ChannelEvent) -> Delivery {
        Delivery { channel, event, frames: [OnceLock::new(), OnceLock::new()], received_at: Instant::now() }
    }

    /// The frame for `encoding`, encoded on first use and shared afterwards. A publication
    /// always has a frame (see [`publication_frame`]); `None` only for a join or leave
    /// event that cannot be represented in that encoding (logged once).
    pub fn frame(&self, encoding: Encoding) -> Option<&WireFrame> {
        self.frames[encoding.index()]
            .get_or_init(|| match self.encode(encoding) {
                Ok(message) => Some(message),
                Err(error) => {
                    tracing::error!(%error, channel = %self.channel, encoding = encoding.name(), "cannot encode channel event");
                    None
                }
            })
            .as_ref()
    }

    fn encode(&self, encoding: Encoding) -> Result<WireFrame, CodecError> {
        match &self.event {
            ChannelEvent::Publication(publication) => publication_frame(publication, encoding),
            ChannelEvent::Control(_) => {
                Err(CodecError::Json(serde::ser::Error::custom("control events are not sent")))
            }
            ChannelEvent::Join(client) | ChannelEvent::Leave(client) => {
                let body = ChannelClient { channel: self.channel.to_string(), client: client.clone() };
                let push: Push<()> = match self.event {
                    ChannelEvent::Join(_) => Push::Join(body),
                    _ => Push::Leave(body),
                };
                Ok(to_frame(encoding, &codec::encode(encoding, &push)?))
            }
        }
    }

    /// The stream position of a publication event, with its shared epoch.
    fn stream_position(&self) -> Option<(&Arc<str>, u64)> {
        match &self.event {
            ChannelEvent::Publication(Publication { epoch: Some(epoch), offset: Some(offset), .. }) => {
                Some((epoch, *offset))
            }
            _ => None,
        }
    }
}

/// Encodes a publication push in `encoding`. The payload is raw JSON, copied verbatim into
/// JSON frames; MessagePack needs it as a value, parsed once here.
///
/// # Errors
/// [`CodecError`] when the payload cannot be represented in `encoding`.
pub fn encode_publication(publication: &Publication, encoding: Encoding) -> Result<WireFrame, CodecError> {
    let bytes = match encoding {
        Encoding::Json => {
            let push: Push<&serde_json::value::RawValue> =
                Push::Publication(wire_publication(publication, &*publication.data));
            codec::encode(encoding, &push)?
        }
        Encoding::MsgPack => {
            let data: serde_json::Value = serde_json::from_str(publication.data.get())?;
            codec::encode(encoding, &Push::Publication(wire_publication(publication, data)))?
        }
    };
    Ok(to_frame(encoding, &bytes))
}

/// The frame of a publication for `encoding`. When the payload cannot be represented in
/// that encoding (every input path refuses such payloads, so this is a last resort), the
/// subscriber still gets the publication's offset, with `data: null` and an `error`, so it
/// never sees an unexplained gap (docs/protocol.md, "Undeliverable publications").
///
/// # Errors
/// Only if even that placeholder cannot be encoded.
pub fn publication_frame(publication: &Publication, encoding: Encoding) -> Result<WireFrame, CodecError> {
    encode_publication(publication, encoding).or_else(|error| {
        tracing::error!(%error, channel = %publication.channel, offset = ?publication.offset, encoding = encoding.name(), "publication cannot be encoded: sending a placeholder");
        let placeholder = undeliverable(publication, encoding, &error);
        Ok(to_frame(encoding, &codec::encode(encoding, &Push::Publication(placeholder))?))
    })
}

/// The placeholder of a publication whose payload cannot be encoded in `encoding`.
fn undeliverable(
    publication: &Publication,
    encoding: Encoding,
    error: &CodecError,
) -> push::Publication<serde_json::Value> {
    let mut wire = wire_publication(publication, serde_json::Value::Null);
    let message = format!("the payload cannot be encoded as {}: {error}", encoding.name());
    wire.error = Some(ErrorBody::new(Code::Internal, message));
    wire
}

/// A history reply (`id`, the page) in `encoding`, publications with their payloads as
/// stored; a payload that cannot be encoded becomes a placeholder as in
/// [`publication_frame`].
///
/// # Errors
/// [`CodecError`] when the reply cannot be encoded.
pub fn history_reply(
    id: u64,
    page: &HistoryPage,
    more: bool,
    encoding: Encoding,
) -> Result<WireFrame, CodecError> {
    fn reply<P: serde::Serialize>(
        id: u64,
        page: &HistoryPage,
        more: bool,
        publications: Vec<P>,
        encoding: Encoding,
    ) -> Result<WireFrame, CodecError> {
        let result = HistoryResult { epoch: page.epoch.to_string(), offset: page.top, publications, more };
        Ok(to_frame(encoding, &codec::encode(encoding, &Reply { id, result: Some(result), error: None })?))
    }
    match encoding {
        // JSON frames carry the stored JSON text as it is: nothing to parse.
        Encoding::Json => {
            let publications = page.publications.iter().map(|p| wire_publication(p, &*p.data)).collect();
            reply(id, page, more, publications, encoding)
        }
        Encoding::MsgPack => {
            let publications = page
                .publications
                .iter()
                .map(|p| match serde_json::from_str(p.data.get()) {
                    Ok(data) => wire_publication(p, data),
                    Err(error) => undeliverable(p, encoding, &CodecError::Json(error)),
                })
                .collect();
            reply(id, page, more, publications, encoding)
        }
    }
}

/// The wire form of a publication with `data` as given.
pub fn wire_publication<D>(publication: &Publication, data: D) -> push::Publication<D> {
    push::Publication {
        channel: publication.channel.to_string(),
        offset: publication.offset,
        epoch: publication.epoch.as_deref().map(str::to_string),
        event: publication.event.clone(),
        data,
        ts: publication.ts,
        from: publication.from.clone(),
        error: None,
    }
}

/// Frames encoded bytes as the WebSocket message type of `encoding`: text for JSON (the
/// codec's JSON output is UTF-8 by construction), binary for MessagePack.
pub fn to_frame(encoding: Encoding, bytes: &[u8]) -> WireFrame {
    let opcode = match encoding {
        Encoding::Json => OpCode::Text,
        Encoding::MsgPack => OpCode::Binary,
    };
    WireFrame::new(opcode, bytes)
}

enum State {
    Live,
    Buffering(Vec<Arc<Delivery>>),
}

struct Subscriber {
    outbox: Outbox,
    encoding: Encoding,
    state: State,
    /// The last position this subscriber was sent. Publications at or before it are
    /// dropped: with Redis, a live message can reach the hub after the subscriber
    /// already got the same publication from history.
    last: Option<(Arc<str>, u64)>,
}

impl Subscriber {
    fn push(&mut self, delivery: &Delivery) {
        if let Some((epoch, offset)) = delivery.stream_position() {
            match &mut self.last {
                // Same stream: only the offset moves (no allocation on the hot path).
                Some((last_epoch, last)) if Arc::ptr_eq(last_epoch, epoch) || **last_epoch == **epoch => {
                    if offset <= *last {
                        return;
                    }
                    *last = offset;
                }
                _ => self.last = Some((epoch.clone(), offset)),
            }
        }
        if let Some(frame) = delivery.frame(self.encoding) {
            self.outbox.push(frame.clone(), Some(delivery.received_at));
        }
    }
}

/// The node's channel index.
pub struct Hub {
    channels: DashMap<Arc<str>, HashMap<ConnId, Subscriber>>,
    metrics: Arc<Metrics>,
    max_buffered: usize,
}

impl Hub {
    /// An empty hub. A subscription that buffers more than `max_buffered` events while
    /// recovering is closed as a slow consumer.
    pub fn new(metrics: Arc<Metrics>, max_buffered: usize) -> Hub {
        Hub { channels: DashMap::new(), metrics, max_buffered }
    }

    /// Adds a buffering subscription. Returns `false` if `conn` is already subscribed.
    pub fn subscribe(&self, channel: &str, conn: ConnId, outbox: Outbox, encoding: Encoding) -> bool {
        let mut entry = self.channels.entry(Arc::from(channel)).or_insert_with(|| {
            self.metrics.channels.inc();
            HashMap::new()
        });
        if entry.contains_key(&conn) {
            return false;
        }
        entry.insert(conn, Subscriber { outbox, encoding, state: State::Buffering(Vec::new()), last: None });
        self.metrics.subscriptions.inc();
        true
    }

    /// Replays what was buffered since [`Hub::subscribe`], skipping publications at or
    /// before `delivered` (the last position the session already sent, as epoch and
    /// offset), then switches the subscription to live delivery.
    pub fn go_live(&self, channel: &str, conn: ConnId, delivered: Option<(&str, u64)>) {
        let Some(mut subscribers) = self.channels.get_mut(channel) else {
            return;
        };
        let Some(subscriber) = subscribers.get_mut(&conn) else {
            return;
        };
        let State::Buffering(buffered) = std::mem::replace(&mut subscriber.state, State::Live) else {
            return;
        };
        subscriber.last = delivered.map(|(epoch, offset)| (Arc::from(epoch), offset));
        for delivery in buffered {
            subscriber.push(&delivery);
        }
    }

    /// Removes a subscription. Returns `true` when it existed.
    pub fn unsubscribe(&self, channel: &str, conn: ConnId) -> bool {
        let dashmap::Entry::Occupied(mut entry) = self.channels.entry(Arc::from(channel)) else {
            return false;
        };
        let removed = entry.get_mut().remove(&conn).is_some();
        if removed {
            self.metrics.subscriptions.dec();
        }
        if entry.get().is_empty() {
            entry.remove();
            self.metrics.channels.dec();
        }
        removed
    }

    /// Number of local subscribers of `channel`.
    pub fn subscriber_count(&self, channel: &str) -> usize {
        self.channels.get(channel).map_or(0, |s| s.len())
    }

    /// Channels with at least one local subscriber.
    pub fn channel_names(&self) -> Vec<String> {
        self.channels.iter().map(|e| e.key().to_string()).collect()
    }
}

impl Hub {
    /// Applies an operator command to every local subscriber of a personal channel.
    fn apply(&self, channel: &str, control: &Control) {
        let Some(subscribers) = self.channels.get(channel) else { return };
        for subscriber in subscribers.values() {
            let connection = subscriber.outbox.control();
            match control {
                Control::Disconnect { reason } => connection.close(CloseRequest {
                    code: Code::ForceDisconnect,
                    reason: reason.clone(),
                    reconnect_after_ms: None,
                    flush_queue: true,
                }),
                Control::Unsubscribe { channel, reason } => {
                    connection.command(SessionCommand::Unsubscribe {
                        channel: channel.clone(),
                        reason: reason.clone(),
                    });
                }
            }
        }
    }
}

impl EventSink for Hub {
    fn has_subscribers(&self, channel: &str) -> bool {
        self.subscriber_count(channel) > 0
    }

    fn channel_names(&self) -> Vec<String> {
        Hub::channel_names(self)
    }

    fn deliver(&self, channel: &str, event: ChannelEvent) {
        if let ChannelEvent::Control(control) = &event {
            return self.apply(channel, control);
        }
        let Some(mut subscribers) = self.channels.get_mut(channel) else { return };
        let delivery = Arc::new(Delivery::new(subscribers.key().clone(), event));
        let max_buffered = self.max_buffered;
        for subscriber in subscribers.values_mut() {
            match &mut subscriber.state {
                State::Live => subscriber.push(&delivery),
                State::Buffering(buffer) if buffer.len() < max_buffered => buffer.push(delivery.clone()),
                State::Buffering(_) => subscriber.outbox.close_as_slow_consumer(),
            }
        }
        self.metrics.deliveries.inc_by(subscribers.len() as u64);
    }
}

#[cfg(test)]
mod tests {
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
        let json = publication_frame(&publication, Encoding::Json).expect("json");
        assert!(json.payload().len() > 400, "JSON carries the payload verbatim");
        let packed = publication_frame(&publication, Encoding::MsgPack).expect("placeholder");
        let push: Push<serde_json::Value> =
            codec::decode(Encoding::MsgPack, packed.payload()).expect("decode");
        let Push::Publication(wire) = push else { panic!("not a publication: {push:?}") };
        assert_eq!(
            (wire.offset, wire.event.as_deref(), &wire.data),
            (Some(7), Some("tally"), &serde_json::Value::Null)
        );
        assert_eq!(wire.error.map(|e| e.code), Some(Code::Internal));
        let page =
            HistoryPage { epoch: Arc::from("e"), top: 7, publications: vec![publication], truncated: false };
        let reply = history_reply(3, &page, false, Encoding::MsgPack).expect("history");
        let reply: serde_json::Value = codec::decode(Encoding::MsgPack, reply.payload()).expect("decode");
        let first = &reply["result"]["publications"][0];
        assert_eq!(first["offset"], 7);
        assert_eq!(first["data"], serde_json::Value::Null);
        assert_eq!(first["error"]["code"], 100);
    }

    /// With Redis, a live copy of a publication the subscriber already got from history
    /// can reach the hub after the subscription went live: it must not be sent twice.
    #[test]
    fn late_live_copies_of_recovered_publications_are_dropped() {
        let hub = Hub::new(Arc::new(Metrics::new()), 16);
        let (outbox, mut rx) = outbox(16, 1 << 20, Arc::new(ConnControl::default()));
        let epoch: Arc<str> = Arc::from("e1");
        assert!(hub.subscribe("c", 1, outbox, Encoding::Json));
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
}
