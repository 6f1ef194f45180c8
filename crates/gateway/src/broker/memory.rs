//! The embedded in-process broker for single-node deployments.
//!
//! Each channel's stream (epoch, last offset, retained publications) sits behind its own
//! lock in a sharded map. Publishing assigns the offset, stores and delivers to the hub
//! while holding that channel's lock, which is what makes per-channel order and
//! history/live agreement hold; the lock is never held across an `.await`.
//!
//! Streams whose history has fully expired and that saw no publish for `idle_ttl` are
//! dropped by [`MemoryBroker::sweep`]; a later publish starts a new epoch, so a client
//! holding an old position gets `recovered: false` rather than a silent gap. A stream that
//! only reads created (a subscribe or history of a channel never published to) is dropped
//! after the much shorter `unpublished_ttl`: reading must not leave lasting state.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use dashmap::DashMap;
use switchboard_protocol::{ClientInfo, StreamPosition};

use super::{
    new_epoch, unix_millis, Broker, BrokerError, ChannelEvent, Control, EventSink, HistoryPage, JoinFrom,
    JoinRequest, Joined, NewPublication, PresenceStats, Publication, Since,
};
use crate::channel::StreamOptions;

/// The embedded broker.
pub struct MemoryBroker {
    streams: DashMap<Arc<str>, Arc<Mutex<Stream>>>,
    presence: DashMap<String, HashMap<String, ClientInfo>>,
    acks: DashMap<(String, String), StreamPosition>,
    idempotency: DashMap<(String, String), (StreamPosition, Instant)>,
    idempotency_ttl: Duration,
    /// Recoverable Socket.IO sessions: rooms (JSON) and expiry.
    socketio_sessions: DashMap<String, (String, Instant)>,
    sink: Arc<dyn EventSink>,
    idle_ttl: Duration,
    unpublished_ttl: Duration,
}

struct Stream {
    epoch: Arc<str>,
    top: u64,
    retained: VecDeque<(Instant, Publication)>,
    last_publish: Instant,
}

impl Stream {
    fn new() -> Stream {
        Stream { epoch: new_epoch(), top: 0, retained: VecDeque::new(), last_publish: Instant::now() }
    }

    fn trim(&mut self, options: StreamOptions, now: Instant) {
        while self.retained.len() > options.history_size {
            self.retained.pop_front();
        }
        while self.retained.front().is_some_and(|(at, _)| now.duration_since(*at) >= options.history_ttl) {
            self.retained.pop_front();
        }
    }
}

/// [`super::history_cost`] plus the publisher's client info, as the Redis body carries it.
fn publication_cost(publication: &Publication) -> usize {
    let from = publication.from.as_ref().map_or(0, |from| {
        from.client.len() + from.user.len() + from.info.as_ref().map_or(0, |info| info.to_string().len())
    });
    super::history_cost(&publication.channel, publication.data.get(), publication.event.as_deref()) + from
}

fn lock(stream: &Mutex<Stream>) -> std::sync::MutexGuard<'_, Stream> {
    stream.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MemoryBroker {
    /// A broker delivering into `sink`. Streams idle (no publish, no retained history) for
    /// `idle_ttl` are forgotten by [`MemoryBroker::sweep`].
    pub fn new(sink: Arc<dyn EventSink>, idle_ttl: Duration) -> MemoryBroker {
        MemoryBroker {
            streams: DashMap::new(),
            presence: DashMap::new(),
            acks: DashMap::new(),
            idempotency: DashMap::new(),
            idempotency_ttl: Duration::from_secs(300),
            socketio_sessions: DashMap::new(),
            sink,
            idle_ttl,
            unpublished_ttl: idle_ttl,
        }
    }

    /// Sets how long a stream that was read but never published to is kept.
    #[must_use]
    pub fn with_unpublished_ttl(mut self, ttl: Duration) -> MemoryBroker {
        self.unpublished_ttl = ttl;
        self
    }

    fn stream(&self, channel: &str) -> Arc<Mutex<Stream>> {
        if let Some(stream) = self.streams.get(channel) {
            return stream.clone();
        }
        self.streams.entry(Arc::from(channel)).or_insert_with(|| Arc::new(Mutex::new(Stream::new()))).clone()
    }

    /// Sets how long idempotency keys are remembered.
    #[must_use]
    pub fn with_idempotency_ttl(mut self, ttl: Duration) -> MemoryBroker {
        self.idempotency_ttl = ttl;
        self
    }

    /// Drops expired publications and forgets idle streams; returns how many streams remain.
    pub fn sweep(&self, retention: impl Fn(&str) -> Option<StreamOptions>) -> usize {
        let now = Instant::now();
        self.idempotency.retain(|_, (_, at)| now.duration_since(*at) < self.idempotency_ttl);
        let before = self.streams.len();
        self.streams.retain(|channel, stream| {
            let mut stream = lock(stream);
            if let Some(options) = retention(channel) {
                stream.trim(options, now);
            }
            let ttl = if stream.top == 0 { self.unpublished_ttl } else { self.idle_ttl };
            !(stream.retained.is_empty() && now.duration_since(stream.last_publish) >= ttl)
        });
        let after = self.streams.len();
        if after < before / 2 {
            // Give the table's memory back after a burst of short-lived streams.
            self.streams.shrink_to_fit();
        }
        after
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn join(&self, channel: &str, request: JoinRequest) -> Result<Joined, BrokerError> {
        // No interest to register: every event of this process reaches the hub, which
        // keeps only subscribed channels.
        let acked = match &request.from {
            JoinFrom::Acked(user) => self.acks.get(&(channel.to_string(), user.clone())).map(|p| p.clone()),
            JoinFrom::Now | JoinFrom::After(_) => None,
        };
        let page = {
            let stream = self.stream(channel);
            let mut stream = lock(&stream);
            stream.trim(request.stream, Instant::now());
            let retained = stream.retained.iter().map(|(_, p)| p);
            let publications = match &request.from {
                JoinFrom::Now => Vec::new(),
                JoinFrom::After(position) if *position.epoch == *stream.epoch => retained
                    .filter(|p| p.offset.is_some_and(|o| o > position.offset))
                    .take(request.limit)
                    .cloned()
                    .collect(),
                JoinFrom::After(_) => Vec::new(),
                JoinFrom::Acked(_) => {
                    let skip = stream.retained.len().saturating_sub(request.limit);
                    retained.skip(skip).cloned().collect()
                }
            };
            HistoryPage { epoch: stream.epoch.clone(), top: stream.top, publications, truncated: false }
        };
        if let Some(client) = request.presence {
            self.presence.entry(channel.to_string()).or_default().insert(client.client.clone(), client);
        }
        if let Some(client) = request.join_event {
            self.sink.deliver(channel, ChannelEvent::Join(client));
        }
        Ok(Joined { page, acked })
    }

    async fn leave(
        &self,
        channel: &str,
        client: &ClientInfo,
        presence: bool,
        leave_event: bool,
    ) -> Result<bool, BrokerError> {
        let mut present = true;
        if presence {
            present = false;
            if let dashmap::Entry::Occupied(mut entry) = self.presence.entry(channel.to_string()) {
                present = entry.get_mut().remove(&client.client).is_some();
                if entry.get().is_empty() {
                    entry.remove();
                }
            }
        }
        let emitted = leave_event && present;
        if emitted {
            self.sink.deliver(channel, ChannelEvent::Leave(client.clone()));
        }
        Ok(emitted)
    }

    async fn publish(
        &self,
        channel: &str,
        publication: NewPublication,
        options: StreamOptions,
    ) -> Result<Option<StreamPosition>, BrokerError> {
        let channel_name: Arc<str> = Arc::from(channel);
        let mut event = Publication {
            channel: channel_name,
            offset: None,
            epoch: None,
            event: publication.event,
            data: publication.data,
            ts: unix_millis(),
            from: publication.from,
        };
        if publication.ephemeral {
            self.sink.deliver(channel, ChannelEvent::Publication(event));
            return Ok(None);
        }
        let stream = self.stream(channel);
        let mut stream = lock(&stream);
        let now = Instant::now();
        let idempotency = publication.idempotency_key.map(|key| (channel.to_string(), key));
        if let Some(key) = &idempotency {
            if let Some(seen) =
                self.idempotency.get(key).filter(|e| now.duration_since(e.1) < self.idempotency_ttl)
            {
                return Ok(Some(seen.0.clone()));
            }
        }
        stream.top += 1;
        stream.last_publish = now;
        event.offset = Some(stream.top);
        event.epoch = Some(stream.epoch.clone());
        let position = StreamPosition { offset: stream.top, epoch: stream.epoch.to_string() };
        if let Some(key) = idempotency {
            self.idempotency.insert(key, (position.clone(), now));
        }
        if options.history_size > 0 {
            stream.retained.push_back((now, event.clone()));
        }
        stream.trim(options, now);
        // Delivered under the stream lock: the next publish of this channel waits, so
        // subscribers see offsets in order.
        self.sink.deliver(channel, ChannelEvent::Publication(event));
        Ok(Some(position))
    }

    async fn history(
        &self,
        channel: &str,
        since: Since,
        limit: usize,
        max_bytes: usize,
        options: StreamOptions,
    ) -> Result<HistoryPage, BrokerError> {
        let stream = self.stream(channel);
        let mut stream = lock(&stream);
        stream.trim(options, Instant::now());
        let window: Vec<&Publication> = match &since {
            Since::Latest => {
                let skip = stream.retained.len().saturating_sub(limit);
                stream.retained.iter().skip(skip).map(|(_, p)| p).collect()
            }
            Since::After(position) => {
                let first_retained = stream.retained.front().and_then(|(_, p)| p.offset);
                let continuous = position.offset == stream.top
                    || first_retained.is_some_and(|first| first <= position.offset + 1);
                if *position.epoch != *stream.epoch || position.offset > stream.top || !continuous {
                    return Err(BrokerError::PositionLost {
                        offset: position.offset,
                        epoch: position.epoch.clone(),
                    });
                }
                stream
                    .retained
                    .iter()
                    .map(|(_, p)| p)
                    .filter(|p| p.offset.is_some_and(|o| o > position.offset))
                    .take(limit)
                    .collect()
            }
        };
        let mut spent = 0usize;
        let fitting = window
            .iter()
            .take_while(|p| {
                spent = spent.saturating_add(publication_cost(p));
                spent <= max_bytes
            })
            .count()
            .max(1)
            .min(window.len());
        let truncated = fitting < window.len();
        let publications = window.into_iter().take(fitting).cloned().collect();
        Ok(HistoryPage { epoch: stream.epoch.clone(), top: stream.top, publications, truncated })
    }

    async fn presence(&self, channel: &str) -> Result<Vec<ClientInfo>, BrokerError> {
        Ok(self.presence.get(channel).map(|m| m.values().cloned().collect()).unwrap_or_default())
    }

    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, BrokerError> {
        Ok(self
            .presence
            .get(channel)
            .map(|m| {
                let users: std::collections::HashSet<&str> = m.values().map(|c| c.user.as_str()).collect();
                PresenceStats { clients: m.len() as u64, users: users.len() as u64 }
            })
            .unwrap_or_default())
    }

    async fn ack(&self, channel: &str, user: &str, position: StreamPosition) -> Result<(), BrokerError> {
        let mut entry = self.acks.entry((channel.to_string(), user.to_string())).or_insert(position.clone());
        if entry.epoch != position.epoch || entry.offset < position.offset {
            *entry = position;
        }
        Ok(())
    }

    async fn control(&self, user: &str, control: Control) -> Result<bool, BrokerError> {
        let channel = switchboard_protocol::channel::personal(user);
        let present = self.sink.has_subscribers(&channel);
        self.sink.deliver(&channel, ChannelEvent::Control(control));
        Ok(present)
    }

    async fn active_channels(&self) -> Result<Vec<String>, BrokerError> {
        Ok(self.sink.channel_names())
    }

    async fn rpc(
        &self,
        _stream: &str,
        _group: &str,
        _entry: super::RpcEntry,
        _timeout: std::time::Duration,
    ) -> Result<Option<String>, BrokerError> {
        Err(BrokerError::Unavailable("stream RPC routes need the Redis broker".into()))
    }

    async fn store_socketio_session(
        &self,
        pid: &str,
        record: &str,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        let now = Instant::now();
        // Expired sessions go as new ones come: the map stays bounded by the live ones.
        self.socketio_sessions.retain(|_, (_, expires)| *expires > now);
        self.socketio_sessions.insert(pid.to_string(), (record.to_string(), now + ttl));
        Ok(())
    }

    async fn load_socketio_session(&self, pid: &str) -> Result<Option<String>, BrokerError> {
        let now = Instant::now();
        Ok(self.socketio_sessions.get(pid).filter(|entry| entry.1 > now).map(|entry| entry.0.clone()))
    }

    async fn delete_socketio_session(&self, pid: &str) -> Result<(), BrokerError> {
        self.socketio_sessions.remove(pid);
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<serde_json::Value>, BrokerError> {
        Ok(Vec::new())
    }

    fn is_ready(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, ChannelEvent)>>);

    impl EventSink for Recorder {
        fn deliver(&self, channel: &str, event: ChannelEvent) {
            self.0.lock().expect("lock").push((channel.to_string(), event));
        }

        fn has_subscribers(&self, _channel: &str) -> bool {
            true
        }

        fn channel_names(&self) -> Vec<String> {
            Vec::new()
        }
    }

    fn options(size: usize) -> StreamOptions {
        StreamOptions { history_size: size, history_ttl: Duration::from_secs(60) }
    }

    fn new_pub(n: u32) -> NewPublication {
        NewPublication {
            event: None,
            data: serde_json::value::to_raw_value(&n).expect("raw"),
            from: None,
            ephemeral: false,
            idempotency_key: None,
        }
    }

    #[tokio::test]
    async fn offsets_are_contiguous_and_history_is_trimmed() {
        let sink = Arc::new(Recorder::default());
        let broker = MemoryBroker::new(sink.clone(), Duration::from_secs(60));
        let mut epoch = String::new();
        for n in 1..=5 {
            let pos = broker.publish("c", new_pub(n), options(3)).await.expect("publish").expect("pos");
            assert_eq!(pos.offset, u64::from(n));
            epoch = pos.epoch;
        }
        assert_eq!(sink.0.lock().expect("lock").len(), 5);
        let page = broker.history("c", Since::Latest, 10, usize::MAX, options(3)).await.expect("history");
        let offsets: Vec<_> = page.publications.iter().filter_map(|p| p.offset).collect();
        assert_eq!(offsets, vec![3, 4, 5]);
        let after = Since::After(StreamPosition { offset: 3, epoch: epoch.clone() });
        let page = broker.history("c", after, 10, usize::MAX, options(3)).await.expect("recoverable");
        assert_eq!(page.publications.len(), 2);
        let trimmed = Since::After(StreamPosition { offset: 1, epoch: epoch.clone() });
        assert!(matches!(
            broker.history("c", trimmed, 10, usize::MAX, options(3)).await,
            Err(BrokerError::PositionLost { .. })
        ));
        let other_epoch = Since::After(StreamPosition { offset: 5, epoch: "x".into() });
        assert!(broker.history("c", other_epoch, 10, usize::MAX, options(3)).await.is_err());
    }

    #[tokio::test]
    async fn ephemeral_is_delivered_but_not_stored() {
        let sink = Arc::new(Recorder::default());
        let broker = MemoryBroker::new(sink.clone(), Duration::from_secs(60));
        let mut publication = new_pub(1);
        publication.ephemeral = true;
        assert_eq!(broker.publish("c", publication, options(3)).await.expect("publish"), None);
        assert_eq!(sink.0.lock().expect("lock").len(), 1);
        let page = broker.history("c", Since::Latest, 10, usize::MAX, options(3)).await.expect("history");
        assert!(page.publications.is_empty());
        assert_eq!(page.top, 0);
    }

    #[tokio::test]
    async fn streams_only_read_are_forgotten_sooner() {
        let sink = Arc::new(Recorder::default());
        let broker = MemoryBroker::new(sink, Duration::from_secs(3600)).with_unpublished_ttl(Duration::ZERO);
        broker.publish("published", new_pub(1), options(0)).await.expect("publish");
        for n in 0..100 {
            broker
                .history(&format!("read{n}"), Since::Latest, 0, usize::MAX, options(3))
                .await
                .expect("read");
        }
        assert_eq!(broker.sweep(|_| Some(options(3))), 1, "only the published stream stays");
    }

    #[tokio::test]
    async fn history_stops_at_its_byte_budget() {
        let sink = Arc::new(Recorder::default());
        let broker = MemoryBroker::new(sink, Duration::from_secs(60));
        for n in 1..=10 {
            broker.publish("c", new_pub(n), options(10)).await.expect("publish");
        }
        let one = super::super::history_cost("c", "10", None);
        let page = broker.history("c", Since::Latest, 5, 3 * one, options(10)).await.expect("history");
        let offsets: Vec<_> = page.publications.iter().filter_map(|p| p.offset).collect();
        assert_eq!(offsets, vec![6, 7, 8], "the oldest of the newest five that fit");
        assert!(page.truncated);
        let page = broker.history("c", Since::Latest, 5, 1, options(10)).await.expect("history");
        assert_eq!(page.publications.len(), 1, "always at least one");
        let page = broker.history("c", Since::Latest, 5, usize::MAX, options(10)).await.expect("history");
        assert!(!page.truncated);
    }

    #[tokio::test]
    async fn idle_streams_are_swept_and_get_a_new_epoch() {
        let sink = Arc::new(Recorder::default());
        let broker = MemoryBroker::new(sink, Duration::ZERO);
        let first = broker.publish("c", new_pub(1), options(0)).await.expect("publish").expect("pos");
        assert_eq!(broker.sweep(|_| Some(options(0))), 0);
        let second = broker.publish("c", new_pub(2), options(0)).await.expect("publish").expect("pos");
        assert_ne!(first.epoch, second.epoch);
        assert_eq!(second.offset, 1);
    }

    #[tokio::test]
    async fn presence_counts_unique_users() {
        let broker = MemoryBroker::new(Arc::new(Recorder::default()), Duration::from_secs(60));
        for (client, user) in [("a", "u1"), ("b", "u1"), ("c", "u2")] {
            let info = ClientInfo { client: client.into(), user: user.into(), info: None };
            let request = JoinRequest {
                from: JoinFrom::Now,
                limit: 0,
                presence: Some(info),
                join_event: None,
                stream: options(0),
            };
            broker.join("room", request).await.expect("join");
        }
        assert_eq!(
            broker.presence_stats("room").await.expect("stats"),
            PresenceStats { clients: 3, users: 2 }
        );
        let a = ClientInfo { client: "a".into(), user: "u1".into(), info: None };
        assert!(!broker.leave("room", &a, true, false).await.expect("leave"), "no leave event asked for");
        assert_eq!(broker.presence("room").await.expect("list").len(), 2);
    }
}
