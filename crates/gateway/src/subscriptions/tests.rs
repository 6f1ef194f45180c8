//! The lifecycle on the memory broker: recovery, buffering during the read, presence,
//! join/leave events, leaving what was never joined, and a failed join leaving nothing.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use serde_json::{json, Value};
use switchboard_protocol::{ClientInfo, Encoding, StreamPosition};

use super::{Member, Resume, Subscriptions};
use crate::{
    broker::{
        memory::MemoryBroker, Broker, BrokerError, Control, HistoryPage, JoinRequest, Joined, NewPublication,
        PresenceStats, Since,
    },
    channel::{ChannelRules, Namespace, StreamOptions},
    config::NamespaceConfig,
    hub::Hub,
    metrics::Metrics,
    outbox::{outbox, ConnControl, Outbox, OutboxReceiver},
};

/// `room:*`: presence, join/leave, 3 retained; `quiet:*`: neither; `user:*` as configured
/// by default (offline delivery).
fn rules() -> ChannelRules {
    let mut namespaces = NamespaceConfig::defaults();
    namespaces.push(NamespaceConfig {
        name: "room".into(),
        presence: true,
        join_leave: true,
        history_size: 3,
        ..NamespaceConfig::default()
    });
    namespaces.push(NamespaceConfig {
        name: "quiet".into(),
        presence: false,
        join_leave: false,
        history_size: 10,
        ..NamespaceConfig::default()
    });
    ChannelRules::new(&namespaces, 64)
}

struct Setup {
    hub: Arc<Hub>,
    memory: Arc<MemoryBroker>,
    rules: ChannelRules,
}

impl Setup {
    fn new() -> Setup {
        let hub = Arc::new(Hub::new(
            Arc::new(Metrics::new()),
            64,
            Arc::new(crate::outbox::backlog::Backlog::new(1 << 20)),
        ));
        let memory = Arc::new(MemoryBroker::new(hub.clone(), Duration::from_secs(60)));
        Setup { hub, memory, rules: rules() }
    }

    fn lifecycle(&self) -> Subscriptions {
        Subscriptions::new(self.hub.clone(), self.memory.clone())
    }

    fn namespace(&self, channel: &str) -> Arc<Namespace> {
        self.rules.resolve(channel).expect("namespace").clone()
    }

    async fn publish(&self, channel: &str, n: u64) -> StreamPosition {
        let stream = self.namespace(channel).stream;
        self.memory.publish(channel, new_publication(n), stream).await.expect("publish").expect("position")
    }
}

fn new_publication(n: u64) -> NewPublication {
    NewPublication {
        event: None,
        data: serde_json::value::to_raw_value(&n).expect("raw"),
        from: None,
        ephemeral: false,
        idempotency_key: None,
    }
}

/// One test connection: its outbox and what it was sent.
struct Conn {
    id: u64,
    outbox: Outbox,
    rx: OutboxReceiver,
    client: ClientInfo,
}

impl Conn {
    fn new(id: u64, user: &str) -> Conn {
        let (outbox, rx) = outbox(64, 1 << 20, Arc::new(ConnControl::default()));
        Conn {
            id,
            outbox,
            rx,
            client: ClientInfo { client: format!("n-{id}"), user: user.into(), info: None },
        }
    }

    fn member(&self) -> Member<'_> {
        Member {
            conn: self.id,
            outbox: &self.outbox,
            wire: Encoding::Json.into(),
            recovery: None,
            client: &self.client,
        }
    }

    /// Every frame queued so far, as JSON.
    fn sent(&mut self) -> Vec<Value> {
        let mut frames = Vec::new();
        while let Some(frame) = self.rx.try_recv() {
            frames.push(serde_json::from_slice(frame.frame.payload()).expect("json"));
        }
        frames
    }

    /// The offsets of the publications queued so far.
    fn offsets(&mut self) -> Vec<u64> {
        self.sent()
            .iter()
            .filter(|f| f["push"] == "publication")
            .filter_map(|f| f["offset"].as_u64())
            .collect()
    }
}

fn offsets(publications: &[crate::broker::Publication]) -> Vec<u64> {
    publications.iter().filter_map(|p| p.offset).collect()
}

#[tokio::test]
async fn recovery_is_exact_when_everything_after_the_position_is_retained() {
    let setup = Setup::new();
    let first = setup.publish("room:r", 1).await;
    for n in 2..=3 {
        setup.publish("room:r", n).await;
    }
    let conn = Conn::new(1, "u1");
    let namespace = setup.namespace("room:r");
    let joining = setup
        .lifecycle()
        .join("room:r", &namespace, &conn.member(), Resume::Recover(first.clone()))
        .await
        .expect("join");
    assert_eq!(
        (joining.result.recovered, joining.result.missed, joining.result.offset),
        (Some(true), Some(2), 3)
    );
    assert_eq!(joining.result.epoch, first.epoch);
    assert_eq!(offsets(&joining.missed), [2, 3]);
    let live = setup.lifecycle().join("room:r", &namespace, &conn.member(), Resume::Live).await;
    assert!(live.is_err(), "a second join of the same connection is refused");
}

#[tokio::test]
async fn recovery_fails_for_another_epoch_a_trimmed_stream_or_a_position_ahead() {
    let setup = Setup::new();
    let first = setup.publish("room:t", 1).await;
    for n in 2..=5 {
        setup.publish("room:t", n).await;
    }
    let namespace = setup.namespace("room:t");
    let lifecycle = setup.lifecycle();
    let epoch = first.epoch.clone();
    for (id, position) in [
        (1, StreamPosition { offset: 1, epoch: "another".into() }),
        // Offsets 2 and 3 are trimmed (3 retained: 3, 4, 5).
        (2, StreamPosition { offset: 1, epoch: epoch.clone() }),
        (3, StreamPosition { offset: 9, epoch: epoch.clone() }),
    ] {
        let conn = Conn::new(id, "u1");
        let joining = lifecycle
            .join("room:t", &namespace, &conn.member(), Resume::Recover(position.clone()))
            .await
            .expect("join");
        assert_eq!(
            (joining.result.recovered, joining.result.missed, joining.result.offset),
            (Some(false), None, 5),
            "{position:?}"
        );
        assert!(joining.missed.is_empty(), "nothing is replayed for {position:?}");
    }
    // Exactly at the top: recovered, nothing missed.
    let conn = Conn::new(4, "u1");
    let at_top = StreamPosition { offset: 5, epoch };
    let joining = lifecycle.join("room:t", &namespace, &conn.member(), Resume::Recover(at_top)).await;
    let joining = joining.expect("join");
    assert_eq!((joining.result.recovered, joining.result.missed), (Some(true), Some(0)));
}

#[tokio::test]
async fn offline_delivery_replays_after_the_acknowledged_position() {
    let setup = Setup::new();
    let mut last = None;
    for n in 1..=4 {
        last = Some(setup.publish("user:u1", n).await);
    }
    let epoch = last.expect("published").epoch;
    let namespace = setup.namespace("user:u1");
    let conn = Conn::new(1, "u1");
    let lifecycle = setup.lifecycle();
    let joining = lifecycle.join("user:u1", &namespace, &conn.member(), Resume::Pending).await.expect("join");
    assert_eq!((joining.result.recovered, joining.result.missed), (Some(true), Some(4)), "no ack: all");
    lifecycle.leave("user:u1", &namespace, conn.id, &conn.client).await;

    let acked = StreamPosition { offset: 2, epoch: epoch.clone() };
    setup.memory.ack("user:u1", "u1", acked).await.expect("ack");
    let joining = lifecycle.join("user:u1", &namespace, &conn.member(), Resume::Pending).await.expect("join");
    assert_eq!((joining.result.recovered, joining.result.missed), (Some(true), Some(2)));
    assert_eq!(offsets(&joining.missed), [3, 4]);
    lifecycle.leave("user:u1", &namespace, conn.id, &conn.client).await;

    let foreign = StreamPosition { offset: 1, epoch: "gone".into() };
    setup.memory.ack("user:u1", "u1", foreign).await.expect("ack");
    let joining = lifecycle.join("user:u1", &namespace, &conn.member(), Resume::Pending).await.expect("join");
    assert_eq!(
        (joining.result.recovered, joining.result.missed),
        (Some(false), Some(4)),
        "an ack of another epoch: everything retained, not complete"
    );
}

/// The memory broker with its joins scripted, as Redis can behave.
struct Scripted {
    inner: Arc<MemoryBroker>,
    join: OnJoin,
}

/// What a [`Scripted`] broker does on `join`.
enum OnJoin {
    /// Publishes into the channel once before the join's read (that publication is both
    /// buffered by the hub and in the read) and once after it (only buffered), as live
    /// traffic can with Redis.
    PublishAround { stream: StreamOptions, next: Mutex<u64> },
    /// Fails, as Redis does while unreachable.
    Fail,
}

impl Scripted {
    async fn publish_next(&self, channel: &str) {
        let OnJoin::PublishAround { stream, next } = &self.join else { return };
        let n = {
            let mut next = next.lock().expect("lock");
            *next += 1;
            *next
        };
        self.inner.publish(channel, new_publication(n), *stream).await.expect("publish");
    }
}

#[async_trait]
impl Broker for Scripted {
    async fn join(&self, channel: &str, request: JoinRequest) -> Result<Joined, BrokerError> {
        if matches!(self.join, OnJoin::Fail) {
            return Err(BrokerError::Unavailable("down".into()));
        }
        self.publish_next(channel).await;
        let joined = self.inner.join(channel, request).await;
        self.publish_next(channel).await;
        joined
    }
    async fn leave(&self, c: &str, client: &ClientInfo, p: bool, l: bool) -> Result<bool, BrokerError> {
        self.inner.leave(c, client, p, l).await
    }
    async fn publish(
        &self,
        channel: &str,
        publication: NewPublication,
        stream: StreamOptions,
    ) -> Result<Option<StreamPosition>, BrokerError> {
        self.inner.publish(channel, publication, stream).await
    }
    async fn history(
        &self,
        channel: &str,
        since: Since,
        limit: usize,
        max_bytes: usize,
        stream: StreamOptions,
    ) -> Result<HistoryPage, BrokerError> {
        self.inner.history(channel, since, limit, max_bytes, stream).await
    }
    async fn presence(&self, channel: &str) -> Result<Vec<ClientInfo>, BrokerError> {
        self.inner.presence(channel).await
    }
    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, BrokerError> {
        self.inner.presence_stats(channel).await
    }
    async fn ack(&self, channel: &str, user: &str, position: StreamPosition) -> Result<(), BrokerError> {
        self.inner.ack(channel, user, position).await
    }
    async fn control(&self, user: &str, control: Control) -> Result<bool, BrokerError> {
        self.inner.control(user, control).await
    }
    async fn active_channels(&self) -> Result<Vec<String>, BrokerError> {
        self.inner.active_channels().await
    }
    async fn nodes(&self) -> Result<Vec<Value>, BrokerError> {
        self.inner.nodes().await
    }
    async fn store_socketio_session(
        &self,
        pid: &str,
        record: &str,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        self.inner.store_socketio_session(pid, record, ttl).await
    }
    async fn load_socketio_session(&self, pid: &str) -> Result<Option<String>, BrokerError> {
        self.inner.load_socketio_session(pid).await
    }
    async fn delete_socketio_session(&self, pid: &str) -> Result<(), BrokerError> {
        self.inner.delete_socketio_session(pid).await
    }
    async fn rpc(
        &self,
        stream: &str,
        group: &str,
        entry: crate::broker::RpcEntry,
        timeout: std::time::Duration,
    ) -> Result<Option<String>, BrokerError> {
        self.inner.rpc(stream, group, entry, timeout).await
    }
    fn is_ready(&self) -> bool {
        !matches!(self.join, OnJoin::Fail)
    }
}

#[tokio::test]
async fn publications_during_the_read_are_delivered_once_in_order() {
    let setup = Setup::new();
    let first = setup.publish("quiet:b", 1).await;
    let stream = setup.namespace("quiet:b").stream;
    let join = OnJoin::PublishAround { stream, next: Mutex::new(1) };
    let broker = Arc::new(Scripted { inner: setup.memory.clone(), join });
    let lifecycle = Subscriptions::new(setup.hub.clone(), broker);
    let mut conn = Conn::new(1, "u1");
    let namespace = setup.namespace("quiet:b");
    let joining =
        lifecycle.join("quiet:b", &namespace, &conn.member(), Resume::Recover(first)).await.expect("join");
    // Offset 2 was published before the read, offset 3 after it.
    assert_eq!((joining.result.recovered, joining.result.offset), (Some(true), 2));
    assert_eq!(offsets(&joining.missed), [2]);
    assert!(conn.sent().is_empty(), "nothing is delivered before going live");
    lifecycle.go_live(&joining, conn.id, &joining.result.epoch);
    assert_eq!(conn.offsets(), [3], "the buffered copy of 2 is dropped; 3 follows");
    setup.publish("quiet:b", 4).await;
    assert_eq!(conn.offsets(), [4]);
}

#[tokio::test]
async fn presence_and_join_leave_events_follow_the_namespace() {
    let setup = Setup::new();
    let lifecycle = setup.lifecycle();
    let namespace = setup.namespace("room:p");
    let mut a = Conn::new(1, "ua");
    let mut b = Conn::new(2, "ub");
    let joining = lifecycle.join("room:p", &namespace, &a.member(), Resume::Live).await.expect("join a");
    lifecycle.go_live(&joining, a.id, &joining.result.epoch);
    assert_eq!(
        a.sent(),
        [json!({"push": "join", "channel": "room:p", "client": {"client": "n-1", "user": "ua"}})]
    );
    let joining = lifecycle.join("room:p", &namespace, &b.member(), Resume::Live).await.expect("join b");
    lifecycle.go_live(&joining, b.id, &joining.result.epoch);
    let join_b = json!({"push": "join", "channel": "room:p", "client": {"client": "n-2", "user": "ub"}});
    assert_eq!(a.sent(), std::slice::from_ref(&join_b));
    assert_eq!(b.sent(), [join_b], "its own join, buffered during the join and replayed");
    let present = |clients: Vec<ClientInfo>| {
        let mut ids: Vec<String> = clients.into_iter().map(|c| c.client).collect();
        ids.sort();
        ids
    };
    assert_eq!(present(setup.memory.presence("room:p").await.expect("presence")), ["n-1", "n-2"]);

    assert!(lifecycle.leave("room:p", &namespace, b.id, &b.client).await);
    assert_eq!(
        a.sent(),
        [json!({"push": "leave", "channel": "room:p", "client": {"client": "n-2", "user": "ub"}})]
    );
    assert!(b.sent().is_empty(), "a leaving connection gets no leave of its own");
    assert_eq!(present(setup.memory.presence("room:p").await.expect("presence")), ["n-1"]);

    // A namespace without presence and join/leave: neither.
    let quiet = setup.namespace("quiet:p");
    let joining = lifecycle.join("quiet:p", &quiet, &b.member(), Resume::Live).await.expect("join quiet");
    lifecycle.go_live(&joining, b.id, &joining.result.epoch);
    let mut c = Conn::new(3, "uc");
    let joining = lifecycle.join("quiet:p", &quiet, &c.member(), Resume::Live).await.expect("join quiet");
    lifecycle.go_live(&joining, c.id, &joining.result.epoch);
    assert!(lifecycle.leave("quiet:p", &quiet, c.id, &c.client).await);
    assert!(b.sent().is_empty() && c.sent().is_empty(), "no join or leave events in quiet:*");
    assert!(setup.memory.presence("quiet:p").await.expect("presence").is_empty());
}

#[tokio::test]
async fn leaving_a_channel_never_joined_does_nothing() {
    let setup = Setup::new();
    let lifecycle = setup.lifecycle();
    let namespace = setup.namespace("room:n");
    let mut a = Conn::new(1, "ua");
    let joining = lifecycle.join("room:n", &namespace, &a.member(), Resume::Live).await.expect("join");
    lifecycle.go_live(&joining, a.id, &joining.result.epoch);
    a.sent();
    let stranger = Conn::new(2, "ub");
    assert!(!lifecycle.leave("room:n", &namespace, stranger.id, &stranger.client).await);
    assert!(a.sent().is_empty(), "no leave event for a connection that never joined");
    assert_eq!(setup.memory.presence("room:n").await.expect("presence").len(), 1);
    assert_eq!(setup.hub.subscriber_count("room:n"), 1);
}

#[tokio::test]
async fn a_failed_join_leaves_nothing_registered() {
    let setup = Setup::new();
    let broker = Scripted { inner: setup.memory.clone(), join: OnJoin::Fail };
    let lifecycle = Subscriptions::new(setup.hub.clone(), Arc::new(broker));
    let conn = Conn::new(1, "u1");
    let namespace = setup.namespace("room:f");
    let error = lifecycle.join("room:f", &namespace, &conn.member(), Resume::Live).await.expect_err("fails");
    assert_eq!(error.code(), switchboard_protocol::Code::Unavailable);
    assert_eq!(setup.hub.subscriber_count("room:f"), 0);
    // The same connection can try again.
    let retry = setup.lifecycle().join("room:f", &namespace, &conn.member(), Resume::Live).await;
    assert!(retry.is_ok());
}
