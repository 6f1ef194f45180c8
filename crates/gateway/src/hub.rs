//! The local channel index and fan-out.
//!
//! The hub knows which connections of *this node* are subscribed to which channel. The
//! broker hands it each channel event once; the hub wraps the event in a [`Delivery`]
//! whose frames are encoded lazily, at most once per wire format and [`Epoch`] variant,
//! and pushes the shared bytes into each subscriber's bounded [`Outbox`]. Pushing never
//! waits, so a slow subscriber cannot delay the others (its outbox closes it instead).
//!
//! A publication push leaves out its `epoch` when it equals the epoch the connection was
//! last told for the channel (docs/protocol.md §5.1.1): 27 of the 213–216 bytes of a
//! JSON frame around a 100-byte payload, for a value the client learnt at subscribe.
//! Each subscriber remembers that epoch (with the last offset it was sent) and picks the
//! frame variant; the variant with the epoch goes out only on the first publication of a
//! new epoch, e.g. after Redis lost the stream.
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
    Code, Encoding, ErrorBody,
};

use crate::{
    broker::{ChannelEvent, Control, EventSink, HistoryPage, Publication},
    config::MAX_SOCKETIO_NAMESPACES,
    metrics::Metrics,
    outbox::{backlog::Backlog, CloseRequest, Outbox, SessionCommand},
    sio_recovery::SioRooms,
    transport::{
        deflate::{compress_frame, Deflate},
        frame::{OpCode, WireFrame},
    },
    wire::{self, Wire},
};

/// Identifies a connection on this node.
pub type ConnId = u64;

/// Whether a publication frame carries its `epoch`. It does when the epoch differs from
/// the one the connection was last told for the channel (by a subscribe result, or an
/// earlier publication push); the client applies the epoch it knows to a publication
/// without one (docs/protocol.md §5.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epoch {
    /// The frame carries `epoch` (also the only variant of events without one).
    Carry,
    /// The frame leaves `epoch` out: the connection already knows it.
    Omit,
}

impl Epoch {
    /// [`Epoch::Omit`] when `epoch` equals `known`, the epoch the connection was last told.
    pub fn against(epoch: Option<&str>, known: &str) -> Epoch {
        if epoch == Some(known) {
            Epoch::Omit
        } else {
            Epoch::Carry
        }
    }
}

/// One channel event on its way to local subscribers, with its frames encoded on demand.
#[derive(Debug)]
pub struct Delivery {
    channel: Arc<str>,
    event: ChannelEvent,
    /// Per native encoding, the frame with the epoch and the frame without it.
    frames: [[OnceLock<Option<WireFrame>>; 2]; 2],
    /// The same, compressed for `permessage-deflate` connections (`None`: send the
    /// plain frame, too small or not shrinking).
    deflated: [[OnceLock<Option<WireFrame>>; 2]; 2],
    /// Per Socket.IO namespace, the event frame compressed likewise.
    deflated_socketio: [OnceLock<Option<WireFrame>>; MAX_SOCKETIO_NAMESPACES],
    /// Per Socket.IO namespace, the event frame (Socket.IO frames carry no epoch).
    socketio: [OnceLock<Option<WireFrame>>; MAX_SOCKETIO_NAMESPACES],
    received_at: Instant,
}

impl Delivery {
    /// Wraps an event of `channel` received now.
    pub fn new(channel: Arc<str>, event: ChannelEvent) -> Delivery {
        Delivery {
            channel,
            event,
            frames: Default::default(),
            deflated: Default::default(),
            deflated_socketio: Default::default(),
            socketio: Default::default(),
            received_at: Instant::now(),
        }
    }

    /// The frame for `wire`, with or without the epoch, encoded on first use and
    /// shared afterwards. An event without an epoch (join, leave, ephemeral publication)
    /// has one frame per encoding whatever `epoch` says, and so does every Socket.IO
    /// frame. A publication always has a frame (see [`publication_frame`]); `None` only
    /// for a join or leave event that cannot be represented in that format (logged once).
    pub fn frame(&self, wire: Wire, epoch: Epoch) -> Option<&WireFrame> {
        let epoch = if self.stream_position().is_some() { epoch } else { Epoch::Carry };
        let cell = match wire {
            Wire::Native(encoding) => {
                let variant = match epoch {
                    Epoch::Carry => 0,
                    Epoch::Omit => 1,
                };
                &self.frames[encoding.index()][variant]
            }
            Wire::SocketIo(ns) => self.socketio.get(usize::from(ns.index))?,
        };
        cell.get_or_init(|| match self.encode(wire, epoch) {
            Ok(message) => Some(message),
            Err(error) => {
                tracing::error!(%error, channel = %self.channel, wire = wire.name(), "cannot encode channel event");
                None
            }
        })
        .as_ref()
    }

    /// [`Delivery::frame`] for a connection that negotiated `permessage-deflate`: a
    /// publication's frame compressed once and shared, when `deflate` says it is worth it;
    /// the plain frame otherwise (and for every other event).
    pub fn frame_deflated(&self, wire: Wire, epoch: Epoch, deflate: Deflate) -> Option<&WireFrame> {
        let plain = self.frame(wire, epoch)?;
        if !matches!(self.event, ChannelEvent::Publication(_))
            || plain.payload().len() < deflate.threshold as usize
        {
            return Some(plain);
        }
        let cell = match wire {
            Wire::Native(encoding) => {
                let epoch = if self.stream_position().is_some() { epoch } else { Epoch::Carry };
                let variant = match epoch {
                    Epoch::Carry => 0,
                    Epoch::Omit => 1,
                };
                &self.deflated[encoding.index()][variant]
            }
            Wire::SocketIo(ns) => match self.deflated_socketio.get(usize::from(ns.index)) {
                Some(cell) => cell,
                None => return Some(plain),
            },
        };
        cell.get_or_init(|| compress_frame(plain, deflate)).as_ref().or(Some(plain))
    }

    fn encode(&self, wire: Wire, epoch: Epoch) -> Result<WireFrame, CodecError> {
        match &self.event {
            ChannelEvent::Publication(publication) => publication_frame(publication, wire, epoch),
            ChannelEvent::Control(_) => {
                Err(CodecError::Json(serde::ser::Error::custom("control events are not sent")))
            }
            ChannelEvent::Join(client) | ChannelEvent::Leave(client) => {
                let body = ChannelClient { channel: self.channel.to_string(), client: client.clone() };
                let push: Push<()> = match self.event {
                    ChannelEvent::Join(_) => Push::Join(body),
                    _ => Push::Leave(body),
                };
                wire.push(&push)
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

/// Encodes a publication push in `encoding`, with or without its epoch. The payload is
/// raw JSON, copied verbatim into JSON frames; MessagePack needs it as a value, parsed
/// once here.
///
/// # Errors
/// [`CodecError`] when the payload cannot be represented in `encoding`.
pub fn encode_publication(
    publication: &Publication,
    wire: Wire,
    epoch: Epoch,
) -> Result<WireFrame, CodecError> {
    let encoding = match wire {
        Wire::Native(encoding) => encoding,
        Wire::SocketIo(_) => {
            let push = Push::Publication(wire_publication(publication, &*publication.data, epoch));
            return wire.push(&push);
        }
    };
    let bytes = match encoding {
        Encoding::Json => {
            let push: Push<&serde_json::value::RawValue> =
                Push::Publication(wire_publication(publication, &*publication.data, epoch));
            codec::encode(encoding, &push)?
        }
        Encoding::MsgPack => {
            let data: serde_json::Value = serde_json::from_str(publication.data.get())?;
            codec::encode(encoding, &Push::Publication(wire_publication(publication, data, epoch)))?
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
pub fn publication_frame(
    publication: &Publication,
    wire: Wire,
    epoch: Epoch,
) -> Result<WireFrame, CodecError> {
    encode_publication(publication, wire, epoch).or_else(|error| {
        tracing::error!(%error, channel = %publication.channel, offset = ?publication.offset, wire = wire.name(), "publication cannot be encoded: sending a placeholder");
        match wire {
            Wire::Native(encoding) => {
                let placeholder = undeliverable(publication, encoding, epoch, &error);
                Ok(to_frame(encoding, &codec::encode(encoding, &Push::Publication(placeholder))?))
            }
            // Socket.IO has no offsets to keep contiguous: an `sb:error` event says what
            // was not delivered (e.g. a publication whose event name is reserved).
            Wire::SocketIo(_) => {
                let message = format!(
                    "publication {} of channel `{}` cannot be sent as a Socket.IO event: {error}",
                    publication.offset.map_or_else(|| "-".to_string(), |o| o.to_string()),
                    publication.channel
                );
                wire.error(wire::NO_ACK, &ErrorBody::new(Code::Internal, message))
            }
        }
    })
}

/// The placeholder of a publication whose payload cannot be encoded in `encoding`.
fn undeliverable(
    publication: &Publication,
    encoding: Encoding,
    epoch: Epoch,
    error: &CodecError,
) -> push::Publication<serde_json::Value> {
    let mut wire = wire_publication(publication, serde_json::Value::Null, epoch);
    let message = format!("the payload cannot be encoded as {}: {error}", encoding.name());
    wire.error = Some(ErrorBody::new(Code::Internal, message));
    wire
}

/// A history reply (`id`, the page) in `encoding`, publications with their payloads as
/// stored; a payload that cannot be encoded becomes a placeholder as in
/// [`publication_frame`]. Publications leave out their epoch, which is the result's
/// (a page is read from one stream; one that is not would carry its own).
///
/// # Errors
/// [`CodecError`] when the reply cannot be encoded.
pub fn history_reply(
    id: u64,
    page: &HistoryPage,
    more: bool,
    wire: Wire,
) -> Result<Option<WireFrame>, CodecError> {
    fn reply<P: serde::Serialize>(
        id: u64,
        page: &HistoryPage,
        more: bool,
        publications: Vec<P>,
        wire: Wire,
    ) -> Result<Option<WireFrame>, CodecError> {
        let result = HistoryResult { epoch: page.epoch.to_string(), offset: page.top, publications, more };
        wire.reply(id, &result)
    }
    match wire {
        // JSON frames carry the stored JSON text as it is: nothing to parse.
        Wire::Native(Encoding::Json) | Wire::SocketIo(_) => {
            let publications = page
                .publications
                .iter()
                .map(|p| wire_publication(p, &*p.data, Epoch::against(p.epoch.as_deref(), &page.epoch)))
                .collect();
            reply(id, page, more, publications, wire)
        }
        Wire::Native(encoding @ Encoding::MsgPack) => {
            let publications = page
                .publications
                .iter()
                .map(|p| {
                    let epoch = Epoch::against(p.epoch.as_deref(), &page.epoch);
                    match serde_json::from_str(p.data.get()) {
                        Ok(data) => wire_publication(p, data, epoch),
                        Err(error) => undeliverable(p, encoding, epoch, &CodecError::Json(error)),
                    }
                })
                .collect();
            reply(id, page, more, publications, wire)
        }
    }
}

/// The wire form of a publication with `data` as given, with or without its epoch.
pub fn wire_publication<D>(publication: &Publication, data: D, epoch: Epoch) -> push::Publication<D> {
    push::Publication {
        channel: publication.channel.to_string(),
        offset: publication.offset,
        epoch: match epoch {
            Epoch::Carry => publication.epoch.as_deref().map(str::to_string),
            Epoch::Omit => None,
        },
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
    wire: Wire,
    /// A recoverable Socket.IO connection's rooms and this channel's slot in them: its
    /// publication events carry the connection's position vector.
    recovery: Option<(Arc<SioRooms>, usize)>,
    state: State,
    /// The last position this subscriber was sent. Publications at or before it are
    /// dropped: with Redis, a live message can reach the hub after the subscriber
    /// already got the same publication from history. Its epoch is also the one the
    /// connection was last told for the channel, which decides whether a publication
    /// frame needs its `epoch`.
    last: Option<(Arc<str>, u64)>,
}

impl Subscriber {
    /// Queues `delivery` unless this subscriber already has it; returns whether a frame
    /// was queued.
    fn push(&mut self, delivery: &Delivery) -> bool {
        let epoch = match delivery.stream_position() {
            None => Epoch::Carry,
            Some((epoch, offset)) => match &mut self.last {
                // Same stream: only the offset moves (no allocation on the hot path), and
                // the client already knows the epoch.
                Some((told, last)) if Arc::ptr_eq(told, epoch) || **told == **epoch => {
                    if offset <= *last {
                        return false;
                    }
                    // Adopt the stream's own `Arc`: the next delivery compares pointers,
                    // not strings (the told epoch was copied from a history read).
                    if !Arc::ptr_eq(told, epoch) {
                        *told = epoch.clone();
                    }
                    *last = offset;
                    Epoch::Omit
                }
                // A new stream (or none told yet): this frame tells the client.
                _ => {
                    self.last = Some((epoch.clone(), offset));
                    Epoch::Carry
                }
            },
        };
        // A recoverable Socket.IO connection's frames are rewritten per connection (its
        // position vector): they go plain.
        let frame = match self.outbox.deflate() {
            Some(deflate) if self.recovery.is_none() => delivery.frame_deflated(self.wire, epoch, deflate),
            _ => delivery.frame(self.wire, epoch),
        };
        if let Some(frame) = frame {
            if let (Some((rooms, slot)), Some((_, offset))) = (&self.recovery, delivery.stream_position()) {
                return rooms.deliver(*slot, offset, frame, |frame| {
                    self.outbox.push(frame, Some(delivery.received_at))
                });
            }
            return self.outbox.push(frame.clone(), Some(delivery.received_at));
        }
        if delivery.stream_position().is_some() && epoch == Epoch::Carry {
            // Not even a placeholder could be encoded, so the client was not told the new
            // epoch: the next publication must carry it.
            self.last = None;
        }
        false
    }
}

/// The node's channel index.
pub struct Hub {
    channels: DashMap<Arc<str>, HashMap<ConnId, Subscriber>>,
    metrics: Arc<Metrics>,
    max_buffered: usize,
    backlog: Arc<Backlog>,
}

impl Hub {
    /// An empty hub. A subscription that buffers more than `max_buffered` events while
    /// recovering is closed as a slow consumer.
    pub fn new(metrics: Arc<Metrics>, max_buffered: usize, backlog: Arc<Backlog>) -> Hub {
        Hub { channels: DashMap::new(), metrics, max_buffered, backlog }
    }

    /// Adds a buffering subscription. Returns `false` if `conn` is already subscribed.
    pub fn subscribe(&self, channel: &str, conn: ConnId, outbox: Outbox, wire: Wire) -> bool {
        self.subscribe_recoverable(channel, conn, outbox, wire, None)
    }

    /// [`Hub::subscribe`] for a connection whose publication events carry its position in
    /// every room (Socket.IO connection state recovery): its rooms and this channel's slot.
    pub fn subscribe_recoverable(
        &self,
        channel: &str,
        conn: ConnId,
        outbox: Outbox,
        wire: Wire,
        recovery: Option<(Arc<SioRooms>, usize)>,
    ) -> bool {
        let mut entry = self.channels.entry(Arc::from(channel)).or_insert_with(|| {
            self.metrics.channels.inc();
            HashMap::new()
        });
        if entry.contains_key(&conn) {
            return false;
        }
        entry.insert(
            conn,
            Subscriber { outbox, wire, recovery, state: State::Buffering(Vec::new()), last: None },
        );
        self.metrics.subscriptions.inc();
        true
    }

    /// Replays what was buffered since [`Hub::subscribe`], skipping publications at or
    /// before `delivered` (the last position the session already sent, as epoch and
    /// offset), then switches the subscription to live delivery. `delivered`'s epoch is
    /// also the one the session told the client (its reply, or the last recovered
    /// publication that carried one): publications in it leave their epoch out.
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
        self.backlog.add(buffered.len());
        let queued = buffered.iter().filter(|delivery| subscriber.push(delivery)).count();
        self.backlog.remove(buffered.len() - queued);
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
                Control::Subscribe { channel, recover } => {
                    connection.command(SessionCommand::Subscribe {
                        channel: channel.clone(),
                        recover: recover.clone(),
                    });
                }
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
        // Counted before queuing (see `outbox::backlog`), what was not queued given back.
        self.backlog.add(subscribers.len());
        let mut queued = 0;
        for subscriber in subscribers.values_mut() {
            match &mut subscriber.state {
                State::Live => queued += usize::from(subscriber.push(&delivery)),
                State::Buffering(buffer) if buffer.len() < max_buffered => buffer.push(delivery.clone()),
                State::Buffering(_) => subscriber.outbox.close_as_slow_consumer(),
            }
        }
        self.backlog.remove(subscribers.len() - queued);
        self.metrics.deliveries.inc_by(subscribers.len() as u64);
    }
}

#[cfg(test)]
mod tests;
