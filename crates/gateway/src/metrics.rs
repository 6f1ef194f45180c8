//! Prometheus metrics of one node.
//!
//! All metrics live in one registry owned by [`Metrics`], which `/metrics` renders in the
//! text exposition format. Hot paths touch only atomics (counters, gauges); per-batch
//! values are added once per batch by the writer rather than once per frame.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric of the gateway. Names are prefixed `switchboard_`.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections.
    pub connections: IntGauge,
    /// Connections accepted since start.
    pub connections_total: IntCounter,
    /// Channel subscriptions of local connections.
    pub subscriptions: IntGauge,
    /// Channels with at least one local subscriber.
    pub channels: IntGauge,
    /// Frames received from clients.
    pub messages_in: IntCounter,
    /// Bytes received from clients.
    pub bytes_in: IntCounter,
    /// Frames written to clients.
    pub messages_out: IntCounter,
    /// Bytes written to clients.
    pub bytes_out: IntCounter,
    /// Writes to client sockets that took at least one whole frame: `messages_out` over
    /// this is how many frames each system call carried (coalescing).
    pub socket_writes: IntCounter,
    /// Publications accepted by this node's publish paths.
    pub publications: IntCounter,
    /// Frames handed to local subscriber queues by the hub.
    pub deliveries: IntCounter,
    /// Seconds from this node receiving a publication to writing it to a socket.
    pub publish_to_write: Histogram,
    /// Connections closed because their queue overflowed.
    pub slow_consumers: IntCounter,
    /// Publishes that waited for the node's fan-out backlog to drain.
    pub publish_backpressure: IntCounter,
    /// Failed token verifications by reason.
    pub auth_failures: IntCounterVec,
    /// Commands answered with an error, by code.
    pub command_errors: IntCounterVec,
    /// Connections closed by the server, by code.
    pub disconnects: IntCounterVec,
    /// 1 when the broker is ready (Redis: connected and the pub/sub probe comes back).
    pub broker_ready: IntGauge,
    /// Redis pub/sub channels this node is subscribed to (one per channel with local
    /// subscribers, plus the probe).
    pub broker_live_subscriptions: IntGauge,
    /// Offset gaps in live traffic filled from the stream.
    pub broker_gap_fills: IntCounter,
    /// Live publications dropped because they were already delivered.
    pub broker_duplicates: IntCounter,
    /// Resubscribe-and-catch-up runs after the pub/sub connection came back.
    pub broker_resyncs: IntCounter,
    /// Times the pub/sub probe did not come back and the subscriber was reconnected.
    pub broker_probe_failures: IntCounter,
    /// `rpc` calls sent to a backend, by route.
    pub rpc_requests: IntCounterVec,
    /// `rpc` calls that failed, by route and kind (`timeout`, `unavailable`, `backend`,
    /// `bad_reply`).
    pub rpc_errors: IntCounterVec,
    /// Seconds from sending an `rpc` to its backend to having its answer, by route.
    pub rpc_duration: HistogramVec,
    /// `rpc` calls waiting for their backend, by route.
    pub rpc_pending: IntGaugeVec,
    /// RPC replies that arrived after their caller stopped waiting (dropped).
    pub rpc_late_replies: IntCounter,
    /// Lifecycle: disconnects waiting to be written (Redis unreachable).
    pub lifecycle_pending_disconnects: IntGauge,
    /// Lifecycle: disconnects dropped because too many were waiting.
    pub lifecycle_dropped_disconnects: IntCounter,
    /// Lifecycle: disconnects this node recorded for dead nodes' connections.
    pub lifecycle_reaped: IntCounter,
    /// Lifecycle: connections recorded again after this node had been reaped.
    pub lifecycle_resumed: IntCounter,
    /// Live messages or stream entries that could not be decoded.
    pub broker_invalid_messages: IntCounter,
    /// Gap-fill or catch-up reads of a stream that failed and were retried.
    pub broker_stream_read_retries: IntCounter,
    /// Redis Cluster: channels subscribed again (and caught up) because their slot moved.
    pub broker_slot_moves: IntCounter,
    /// Replicated publishing: publications that fewer than `broker.ack_replicas` replicas
    /// acknowledged in time (the publish failed with 115; the publication stays held).
    pub broker_replica_wait_failures: IntCounter,
    /// Channels whose live messages overflowed the hold buffer during a stream read (the
    /// held messages were dropped and the channel caught up from the stream instead).
    pub broker_hold_overflows: IntCounter,
    /// Embedded broker: channel streams held in memory, counted at each sweep (every 10 s).
    pub memory_streams: IntGauge,
    /// Tasks alive in the node's async runtime (sampled when `/metrics` is read): a number
    /// that grows without bound means a leak.
    pub runtime_tasks: IntGauge,
    /// TCP connections accepted that have not (yet) become WebSockets.
    pub pending_handshakes: IntGauge,
    /// TCP connections dropped before completing an HTTP request, by reason
    /// (`limit`: over `limits.max_pending_handshakes`; `timeout`: headers too slow).
    pub handshakes_dropped: IntCounterVec,
    /// Nodes in the cluster registry.
    pub cluster_nodes: IntGauge,
    /// Connections per node, from the cluster registry.
    pub cluster_node_connections: IntGaugeVec,
    /// Open connections by protocol: `json`, `msgpack` (native) or `socketio`.
    pub protocol_connections: IntGaugeVec,
    /// Socket.IO polling requests and upgrades forwarded to the node holding the session.
    pub socketio_forwarded: IntCounter,
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    ///
    /// # Panics
    /// Never in practice: names are static and unique (checked by a test).
    #[allow(clippy::expect_used)]
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(format!("switchboard_{name}"), help).expect("valid gauge");
            registry.register(Box::new(g.clone())).expect("unique gauge");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(format!("switchboard_{name}"), help).expect("valid counter");
            registry.register(Box::new(c.clone())).expect("unique counter");
            c
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c =
                IntCounterVec::new(Opts::new(format!("switchboard_{name}"), help), &[label]).expect("valid");
            registry.register(Box::new(c.clone())).expect("unique counter vec");
            c
        };
        let publish_to_write = Histogram::with_opts(
            HistogramOpts::new(
                "switchboard_publish_to_write_seconds",
                "Time from this node receiving a publication to writing it to a client socket",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
        )
        .expect("valid histogram");
        registry.register(Box::new(publish_to_write.clone())).expect("unique histogram");
        let rpc_duration = HistogramVec::new(
            HistogramOpts::new("switchboard_rpc_duration_seconds", "Time for a backend to answer an rpc")
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
            &["route"],
        )
        .expect("valid histogram");
        registry.register(Box::new(rpc_duration.clone())).expect("unique histogram");
        let rpc_errors = IntCounterVec::new(
            Opts::new("switchboard_rpc_errors_total", "rpc calls that failed, by route and kind"),
            &["route", "kind"],
        )
        .expect("valid");
        registry.register(Box::new(rpc_errors.clone())).expect("unique counter vec");
        let rpc_pending = IntGaugeVec::new(
            Opts::new("switchboard_rpc_pending", "rpc calls waiting for a backend"),
            &["route"],
        )
        .expect("valid");
        registry.register(Box::new(rpc_pending.clone())).expect("unique gauge vec");
        Metrics {
            connections: gauge("connections", "Open WebSocket connections"),
            connections_total: counter("connections_total", "WebSocket connections accepted"),
            subscriptions: gauge("subscriptions", "Channel subscriptions of local connections"),
            channels: gauge("channels", "Channels with at least one local subscriber"),
            messages_in: counter("messages_in_total", "Frames received from clients"),
            bytes_in: counter("bytes_in_total", "Bytes received from clients"),
            messages_out: counter("messages_out_total", "Frames written to clients"),
            bytes_out: counter("bytes_out_total", "Bytes written to clients"),
            socket_writes: counter(
                "socket_writes_total",
                "Writes to client sockets that completed at least one frame (frames per write = messages_out_total / this)",
            ),
            publications: counter("publications_total", "Publications accepted by this node"),
            deliveries: counter("deliveries_total", "Frames queued to local subscribers by the hub"),
            publish_to_write,
            slow_consumers: counter(
                "slow_consumer_disconnects_total",
                "Connections closed as slow consumers",
            ),
            publish_backpressure: counter(
                "publish_backpressure_total",
                "Publishes that waited for the fan-out backlog to drain",
            ),
            auth_failures: counter_vec("auth_failures_total", "Failed token verifications", "reason"),
            command_errors: counter_vec("command_errors_total", "Commands answered with an error", "code"),
            disconnects: counter_vec("disconnects_total", "Connections closed by the server", "code"),
            broker_ready: gauge("broker_ready", "1 when the broker is ready"),
            broker_live_subscriptions: gauge(
                "broker_live_subscriptions",
                "Redis pub/sub channels this node subscribes to",
            ),
            broker_gap_fills: counter(
                "broker_gap_fills_total",
                "Offset gaps in live traffic filled from the stream",
            ),
            broker_duplicates: counter(
                "broker_duplicates_total",
                "Live publications dropped as already delivered",
            ),
            broker_resyncs: counter(
                "broker_resyncs_total",
                "Resubscribe and catch-up runs after a pub/sub reconnect",
            ),
            broker_probe_failures: counter(
                "broker_probe_failures_total",
                "Pub/sub probes that did not come back",
            ),
            rpc_requests: counter_vec("rpc_requests_total", "rpc calls sent to a backend", "route"),
            rpc_errors,
            rpc_duration,
            rpc_pending,
            rpc_late_replies: counter(
                "rpc_late_replies_total",
                "RPC replies that arrived after the caller stopped waiting",
            ),
            lifecycle_pending_disconnects: gauge(
                "lifecycle_pending_disconnects",
                "Lifecycle disconnects waiting to be written",
            ),
            lifecycle_dropped_disconnects: counter(
                "lifecycle_dropped_disconnects_total",
                "Lifecycle disconnects dropped because too many were waiting",
            ),
            lifecycle_reaped: counter(
                "lifecycle_reaped_total",
                "Lifecycle disconnects recorded for dead nodes' connections",
            ),
            lifecycle_resumed: counter(
                "lifecycle_resumed_total",
                "Connections recorded again after this node had been reaped",
            ),
            broker_invalid_messages: counter(
                "broker_invalid_messages_total",
                "Undecodable live messages or stream entries",
            ),
            broker_stream_read_retries: counter(
                "broker_stream_read_retries_total",
                "Gap-fill or catch-up stream reads that failed and were retried",
            ),
            broker_slot_moves: counter(
                "broker_slot_moves_total",
                "Channels subscribed again because their Redis Cluster slot moved",
            ),
            broker_replica_wait_failures: counter(
                "broker_replica_wait_failures_total",
                "Publications not acknowledged by broker.ack_replicas replicas in time",
            ),
            broker_hold_overflows: counter(
                "broker_hold_overflows_total",
                "Channels whose held live messages overflowed during a stream read",
            ),
            memory_streams: gauge("memory_streams", "Embedded broker: channel streams held in memory"),
            runtime_tasks: gauge("runtime_tasks", "Tasks alive in the node's async runtime"),
            pending_handshakes: gauge(
                "pending_handshakes",
                "TCP connections accepted that have not become WebSockets",
            ),
            handshakes_dropped: counter_vec(
                "handshakes_dropped_total",
                "TCP connections dropped before completing an HTTP request",
                "reason",
            ),
            cluster_nodes: gauge("cluster_nodes", "Nodes in the cluster registry"),
            cluster_node_connections: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "switchboard_cluster_node_connections",
                        "Connections per node, from the cluster registry",
                    ),
                    &["node"],
                )
                .expect("valid");
                registry.register(Box::new(g.clone())).expect("unique gauge vec");
                g
            },
            socketio_forwarded: counter(
                "socketio_forwarded_total",
                "Socket.IO polling requests and upgrades forwarded to the node holding the session",
            ),
            protocol_connections: {
                let g = IntGaugeVec::new(
                    Opts::new("switchboard_protocol_connections", "Open connections by protocol"),
                    &["protocol"],
                )
                .expect("valid");
                registry.register(Box::new(g.clone())).expect("unique gauge vec");
                g
            },
            registry,
        }
    }

    /// The registry, for components that add their own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.runtime_tasks.set(runtime.metrics().num_alive_tasks() as i64);
        }
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "cannot render metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_every_family() {
        let metrics = super::Metrics::new();
        metrics.auth_failures.with_label_values(&["expired"]).inc();
        let text = metrics.render();
        assert!(text.contains("switchboard_connections "));
        assert!(text.contains("switchboard_auth_failures_total{reason=\"expired\"} 1"));
    }
}
