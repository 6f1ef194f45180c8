//! Replicated publishing (docs/redis.md §4.11) from the publisher: with `ack_replicas` in
//! the declared retention, a publication is committed (visible, published live) only
//! once a replica acknowledged it; otherwise the publish fails as retryable and the
//! publication stays held until a retry with its key commits it.

#![allow(clippy::unwrap_used, missing_docs)]

use switchboard_publisher::{Outgoing, PublishError, PublishOptions, Publisher};
use switchboard_testkit::{Persistence, RedisServer};

/// The tests start several Redis processes each; the machine has two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn committed(redis: &RedisServer, channel: &str) -> String {
    redis.cli(&["HGET", &format!("sb:{{{channel}}}:meta"), "c"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_are_committed_once_a_replica_has_them() {
    let _serial = SERIAL.lock().await;
    let primary = RedisServer::start(Persistence::None);
    let replica = RedisServer::start_replica_of(&primary);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while primary.replicas() < 1 {
        assert!(std::time::Instant::now() < deadline, "the replica did not synchronize");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let retention = r#"{"history_size":100,"history_ttl_ms":300000,"meta_ttl_ms":86400000,"ack_replicas":1,"ack_timeout_ms":2000}"#;
    primary.cli(&["HSET", "sb:namespaces", "dao", retention]);
    let publisher = Publisher::connect(&primary.url()).await.unwrap();

    let first = publisher.publish("dao:p1", &1, &PublishOptions::default()).await.unwrap();
    assert_eq!(first.offset, Some(1));
    assert_eq!(committed(&primary, "dao:p1"), "1");

    replica.pause();
    let options = PublishOptions::default().idempotent("k2");
    let error = publisher.publish("dao:p1", &2, &options).await.unwrap_err();
    assert!(matches!(error, PublishError::NotReplicated { acknowledged: 0, wanted: 1 }), "{error}");
    assert!(error.is_retryable());
    assert_eq!(committed(&primary, "dao:p1"), "1", "held, not committed");
    assert_eq!(primary.cli(&["XLEN", "sb:{dao:p1}:stream"]), "2", "stored");
    replica.resume();
    let retried = publisher.publish("dao:p1", &2, &options).await.unwrap();
    assert_eq!((retried.offset, retried.duplicate), (Some(2), true), "the retry commits the held one");
    assert_eq!(committed(&primary, "dao:p1"), "2");

    // A batch holds every publication and waits once.
    let items = (0..5)
        .map(|n| Outgoing {
            channel: format!("dao:b{n}"),
            data: n.into(),
            options: PublishOptions::default(),
        })
        .collect();
    for (n, result) in publisher.publish_batch(items).await.unwrap().into_iter().enumerate() {
        assert_eq!(result.unwrap().offset, Some(1));
        assert_eq!(committed(&primary, &format!("dao:b{n}")), "1");
    }
}

/// Through Sentinel: the publisher follows a failover to the promoted replica, and
/// retrying each refused publish with its key leaves every publication stored once, in
/// order, committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_follows_a_sentinel_failover() {
    let _serial = SERIAL.lock().await;
    use switchboard_testkit::sentinel::{Sentinel, SERVICE};
    let mut primary = RedisServer::start(Persistence::None);
    let replicas = [RedisServer::start_replica_of(&primary), RedisServer::start_replica_of(&primary)];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    wait("replicas synchronized", &|| primary.replicas() == 2);
    let sentinels: Vec<Sentinel> = (0..3).map(|_| Sentinel::start(&primary, 2)).collect();
    wait("sentinels ready", &|| sentinels.iter().all(|s| s.ready_for_failover(2, 2)));
    let retention = r#"{"history_size":1000,"history_ttl_ms":300000,"meta_ttl_ms":86400000,"ack_replicas":1,"ack_timeout_ms":2000}"#;
    primary.cli(&["HSET", "sb:namespaces", "dao", retention]);
    wait("the declaration reached the replicas", &|| {
        replicas.iter().all(|r| r.cli(&["HGET", "sb:namespaces", "dao"]) == retention)
    });
    let url = format!(
        "redis-sentinel://127.0.0.1:{}?sentinelServiceName={SERVICE}&node=127.0.0.1:{}&node=127.0.0.1:{}",
        sentinels[0].port(),
        sentinels[1].port(),
        sentinels[2].port()
    );
    let publisher = Publisher::connect(&url).await.unwrap();
    let total = 60u64;
    let mut refused = 0;
    for n in 1..=total {
        if n == 20 {
            primary.kill();
        }
        let options = PublishOptions::default().idempotent(format!("n{n}"));
        loop {
            match publisher.publish("dao:failover", &n, &options).await {
                Ok(published) => {
                    assert_eq!(published.offset, Some(n), "one offset per publication, in order");
                    break;
                }
                Err(error) => {
                    assert!(error.is_retryable(), "{error}");
                    refused += 1;
                    assert!(refused < 600, "refused for over a minute: {error}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
    let promoted = sentinels[0].primary_port().unwrap();
    let promoted = replicas.iter().find(|r| r.port() == promoted).expect("a replica was promoted");
    assert_eq!(committed(promoted, "dao:failover"), total.to_string());
    let entries = promoted.cli(&["XRANGE", "sb:{dao:failover}:stream", "-", "+"]);
    let ids: Vec<&str> = entries.lines().filter(|line| line.ends_with("-0")).collect();
    let expected: Vec<String> = (1..=total).map(|n| format!("{n}-0")).collect();
    assert_eq!(ids, expected, "each publication stored once, in order");
    eprintln!("{total} publications, {refused} attempts refused during the failover");
}
