//! Reply and push ordering on one connection (protocol §2.4, §4.2, §4.3, §5.6): replies
//! in command order, no event of a channel before its subscribe reply, recovered
//! publications right after the reply and before the connection's own `join`, and no
//! event of a channel after the unsubscribe reply or the operator's `unsubscribe` push.
//! Publishers run concurrently so that the races these rules exclude get a chance to
//! happen; the fixture keeps every frame in one arrival-ordered queue to see them.

#![allow(clippy::unwrap_used, missing_docs)]

mod fixture;

use fixture::{
    cluster::{start_nodes, SERIAL},
    config, frame_channel, push_channel, read_until_offset, BackgroundPublisher, Client, TestServer,
};
use serde_json::{json, Value};
use switchboard_protocol::{codec::ServerFrame, push::Push, Encoding};
use switchboard_testkit::{Persistence, RedisServer};

fn busy_config() -> switchboard_gateway::config::Config {
    let mut config = config();
    config.namespaces.iter_mut().find(|ns| ns.name == "open").unwrap().history_size = 1000;
    config.limits.commands_per_second = 1_000_000;
    config.limits.command_burst = 1_000_000;
    config
}

/// Opens a connection and connects as `user`; returns it with its client id.
async fn connect_with_id(url: &str, user: &str) -> (Client, String) {
    let request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    let mut client = Client::open(request, Encoding::Json).await;
    let connected = client.ok("connect", json!({"token": fixture::token(user)})).await;
    let id = connected["client"].as_str().unwrap().to_string();
    (client, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_are_answered_in_order_and_pushes_follow_their_subscribe() {
    let server = TestServer::start(busy_config()).await;
    let mut client = server.open(Encoding::Json).await;
    let channels = ["open:p1", "open:p2", "open:p3"];
    // Everything sent at once, without waiting for a reply.
    let mut ids = vec![client.send("connect", json!({"token": fixture::token("piper")})).await];
    for channel in channels {
        ids.push(client.send("subscribe", json!({"channel": channel})).await);
        ids.push(client.send("publish", json!({"channel": channel, "data": {"n": 1}})).await);
    }
    ids.push(client.send("history", json!({"channel": "open:p1", "limit": 10})).await);
    ids.push(client.send("no_such_method", Value::Null).await);
    ids.push(client.send("unsubscribe", json!({"channel": "open:p2"})).await);
    ids.push(client.send("ping", Value::Null).await);
    let frames = client.frames_through_reply(*ids.last().unwrap()).await;

    let replies: Vec<u64> = frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Reply(reply) => Some(reply.id),
            ServerFrame::Push(_) => None,
        })
        .collect();
    assert_eq!(replies, ids, "one reply per command, in command order");
    for (i, channel) in channels.iter().enumerate() {
        let subscribe_id = ids[1 + 2 * i];
        let reply_at =
            frames.iter().position(|f| matches!(f, ServerFrame::Reply(r) if r.id == subscribe_id)).unwrap();
        let first_event = frames.iter().position(|f| frame_channel(f) == Some(channel));
        assert!(
            first_event.is_some_and(|at| at > reply_at),
            "{channel}: an event before the subscribe reply, or none at all: {frames:?}"
        );
    }
    server.shutdown().await;
}

/// Subscribes, reads, unsubscribes, `rounds` times on `sub_url` while a publisher on
/// `pub_url` publishes to `channel` without pause; every other subscribe recovers from
/// the last publication seen. Checks, each round: no event of the channel between the
/// previous unsubscribe reply and this subscribe reply; then exactly `missed` recovered
/// publications, contiguous, before the connection's own `join`; then contiguous live
/// publications. At the end, nothing of the channel after the last unsubscribe reply.
async fn subscribe_and_unsubscribe_while_publishing(
    sub_url: &str,
    pub_url: &str,
    channel: &str,
    rounds: usize,
) {
    let (mut witness, _) = connect_with_id(sub_url, "witness").await;
    witness.ok("subscribe", json!({"channel": channel})).await;
    let publisher = BackgroundPublisher::start(pub_url, "publisher", channel).await;
    let (mut client, own_id) = connect_with_id(sub_url, "subscriber").await;
    let mut position: Option<(u64, String)> = None;
    for round in 0..rounds {
        let recover = position.clone().filter(|_| round % 2 == 1);
        let mut params = json!({"channel": channel});
        if let Some((offset, epoch)) = &recover {
            // Publications missed while unsubscribed, so that recovery has work to do.
            read_until_offset(&mut witness, channel, offset + 2).await;
            params["recover"] = json!({"offset": offset, "epoch": epoch});
        }
        let id = client.send("subscribe", params).await;
        let mut frames = client.frames_through_reply(id).await;
        let ServerFrame::Reply(reply) = frames.pop().unwrap() else { unreachable!() };
        let before: Vec<_> = frames.iter().filter(|f| frame_channel(f) == Some(channel)).collect();
        assert!(
            before.is_empty(),
            "round {round}: events of {channel} before the subscribe reply: {before:?}"
        );
        let result = reply.result.unwrap_or_else(|| panic!("round {round}: {:?}", reply.error));
        let offset = result["offset"].as_u64().unwrap();
        let epoch = result["epoch"].as_str().unwrap().to_string();
        let (mut next, missed) = match &recover {
            Some((from, _)) => {
                assert_eq!(result["recovered"], true, "round {round}: {result}");
                let missed = result["missed"].as_u64().unwrap();
                assert_eq!(missed, offset - from, "round {round}: {result}");
                assert!(missed >= 2, "round {round}: {result}");
                (from + 1, missed)
            }
            None => (offset + 1, 0),
        };
        // Read until the own join and a few live publications arrived.
        let (mut publications, mut joined_after) = (0u64, None);
        while joined_after.is_none() || next <= offset + 3 {
            let push = client.push().await;
            if push_channel(&push) != Some(channel) {
                continue;
            }
            match push {
                Push::Publication(p) => {
                    assert_eq!(p.offset, Some(next), "round {round}: gap, duplicate or disorder");
                    assert_eq!(p.epoch, None, "round {round}: the reply told the epoch");
                    next += 1;
                    publications += 1;
                }
                Push::Join(join) if join.client.client == own_id => joined_after = Some(publications),
                Push::Join(_) | Push::Leave(_) => {}
                other => panic!("round {round}: unexpected {other:?}"),
            }
        }
        assert!(
            joined_after.unwrap() >= missed,
            "round {round}: own join after {joined_after:?} publications, before the {missed} recovered ones"
        );
        // Events of the channel may still arrive before the unsubscribe reply.
        let (pushes, reply) = client.call_ordered("unsubscribe", json!({"channel": channel})).await;
        assert!(reply.error.is_none(), "round {round}: {:?}", reply.error);
        for push in pushes.iter().filter(|p| push_channel(p) == Some(channel)) {
            if let Push::Publication(p) = push {
                assert_eq!(p.offset, Some(next), "round {round}: gap before the unsubscribe reply");
                next += 1;
            }
        }
        position = Some((next - 1, epoch));
    }
    // After the last unsubscribe reply: the witness on the same node receives everything
    // published, then a round trip shows nothing of the channel reached the client.
    let (_, last) = publisher.stop().await;
    read_until_offset(&mut witness, channel, last).await;
    let (pushes, _) = client.call_ordered("ping", Value::Null).await;
    let after: Vec<_> = pushes.iter().filter(|p| push_channel(p) == Some(channel)).collect();
    assert!(after.is_empty(), "events of {channel} after the unsubscribe reply: {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_and_unsubscribe_replies_bound_a_channel_events_on_one_node() {
    let server = TestServer::start(busy_config()).await;
    subscribe_and_unsubscribe_while_publishing(&server.url(), &server.url(), "open:order", 12).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_and_unsubscribe_replies_bound_a_channel_events_across_nodes() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let nodes = start_nodes(&redis, 2);
    subscribe_and_unsubscribe_while_publishing(&nodes[0].ws_url(), &nodes[1].ws_url(), "chat:order", 8).await;
}

/// Protocol §5.6: after an operator's `unsubscribe` push, no event of the channel arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_of_a_channel_follows_the_operator_unsubscribe_push() {
    const KEY: &str = "ordering-key";
    let mut config = busy_config();
    config.api.keys = vec![KEY.into()];
    let server = TestServer::start(config).await;
    let mut witness = server.connect("witness", Encoding::Json).await;
    witness.ok("subscribe", json!({"channel": "open:op"})).await;
    let mut client = server.connect("target", Encoding::Json).await;
    client.ok("subscribe", json!({"channel": "open:op"})).await;
    let publisher = BackgroundPublisher::start(&server.url(), "publisher", "open:op").await;
    // Live traffic reaches the client before the operator acts.
    loop {
        if let Push::Publication(p) = client.push().await {
            if p.channel == "open:op" {
                break;
            }
        }
    }
    let addr = server.addr;
    let (status, body) = tokio::task::spawn_blocking(move || {
        let body = json!({"user": "target", "channel": "open:op", "reason": "revoked"}).to_string();
        switchboard_testkit::http(
            addr,
            "POST",
            "/api/v1/users/unsubscribe",
            &[("X-API-Key", KEY)],
            Some(body.as_bytes()),
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 202, "{body}");
    loop {
        match client.push().await {
            Push::Unsubscribe(unsubscribed) => {
                assert_eq!(
                    (unsubscribed.channel.as_str(), unsubscribed.reason.as_str()),
                    ("open:op", "revoked")
                );
                break;
            }
            Push::Publication(_) | Push::Join(_) | Push::Leave(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let (_, last) = publisher.stop().await;
    read_until_offset(&mut witness, "open:op", last).await;
    let (pushes, _) = client.call_ordered("ping", Value::Null).await;
    let after: Vec<_> = pushes.iter().filter(|p| push_channel(p) == Some("open:op")).collect();
    assert!(after.is_empty(), "events of open:op after the unsubscribe push: {after:?}");
    server.shutdown().await;
}
