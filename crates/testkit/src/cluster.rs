//! A Redis Cluster of `redis-server` processes on free ports, made with
//! `redis-cli --cluster create`, for the gateways' sharded mode: slot lookups, a slot
//! migration done the way `redis-cli --cluster reshard` does it, and failovers.
//!
//! Nodes time out after [`NODE_TIMEOUT_MS`], so a killed primary's replica takes over
//! within a few seconds.

use std::time::{Duration, Instant};

use crate::{free_cluster_port, redis_cli, RedisServer, STARTUP};

/// `cluster-node-timeout` of the test clusters, in milliseconds.
pub const NODE_TIMEOUT_MS: u64 = 2000;

/// A running cluster.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// Replicas per primary at start.
    replicas: usize,
}

impl RedisCluster {
    /// Starts `primaries` primaries with `replicas` replicas each and waits until every
    /// node reports `cluster_state:ok` and knows all the others.
    ///
    /// # Panics
    /// When the cluster cannot be created in time.
    pub fn start(primaries: usize, replicas: usize) -> RedisCluster {
        let args = || {
            ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
                .into_iter()
                .map(String::from)
                .chain(["--cluster-node-timeout".to_string(), NODE_TIMEOUT_MS.to_string()])
                .collect::<Vec<_>>()
        };
        let nodes: Vec<RedisServer> = (0..primaries * (1 + replicas))
            .map(|_| RedisServer::start_with(free_cluster_port(), args()))
            .collect();
        let mut create = vec!["--cluster".to_string(), "create".to_string()];
        create.extend(nodes.iter().map(|node| format!("127.0.0.1:{}", node.port())));
        create.extend(["--cluster-replicas".to_string(), replicas.to_string(), "--cluster-yes".to_string()]);
        let create: Vec<&str> = create.iter().map(String::as_str).collect();
        redis_cli(nodes[0].port(), &create);
        let cluster = RedisCluster { nodes, replicas: primaries * replicas };
        cluster.wait_until("the cluster is up", |cluster| cluster.is_ok(cluster.nodes.len()));
        cluster
    }

    /// Waits until `done` holds, at most [`STARTUP`] (plus the node timeout).
    ///
    /// # Panics
    /// When it does not.
    pub fn wait_until(&self, what: &str, done: impl Fn(&RedisCluster) -> bool) {
        let deadline = Instant::now() + STARTUP + Duration::from_millis(NODE_TIMEOUT_MS * 3);
        while !done(self) {
            assert!(Instant::now() < deadline, "{what}: not within the deadline");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether every running node says `cluster_state:ok`, knows `known` nodes and sees
    /// every replica attached to its primary.
    fn is_ok(&self, known: usize) -> bool {
        self.nodes.iter().filter(|node| node.pid().is_some()).all(|node| {
            let nodes = node.cli(&["CLUSTER", "NODES"]);
            let replicas = nodes.lines().filter(|line| line.contains("slave")).count();
            node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok")
                && nodes.lines().count() >= known
                && replicas >= self.replicas
        })
    }

    /// `redis-cluster://127.0.0.1:<port>?node=127.0.0.1:<port>…`, every node listed.
    pub fn url(&self) -> String {
        let mut ports = self.nodes.iter().map(RedisServer::port);
        let first = ports.next().unwrap_or_default();
        let rest: Vec<String> = ports.map(|port| format!("node=127.0.0.1:{port}")).collect();
        format!("redis-cluster://127.0.0.1:{first}?{}", rest.join("&"))
    }

    /// The nodes, in start order.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// A node, mutably (to kill it).
    pub fn node_mut(&mut self, index: usize) -> &mut RedisServer {
        &mut self.nodes[index]
    }

    /// A running node to ask about the cluster.
    fn any(&self) -> &RedisServer {
        self.nodes.iter().find(|node| node.pid().is_some()).unwrap_or(&self.nodes[0])
    }

    /// The hash slot of `key`.
    pub fn slot(&self, key: &str) -> u16 {
        self.any().cli(&["CLUSTER", "KEYSLOT", key]).parse().unwrap_or_default()
    }

    /// The node id (`CLUSTER MYID`) of node `index`.
    pub fn id(&self, index: usize) -> String {
        self.nodes[index].cli(&["CLUSTER", "MYID"])
    }

    /// The index of the primary that owns `slot`, as the node asked sees it.
    pub fn owner(&self, slot: u16) -> Option<usize> {
        let port = self.slot_owner_port(slot)?;
        self.nodes.iter().position(|node| node.port() == port)
    }

    fn slot_owner_port(&self, slot: u16) -> Option<u16> {
        // CLUSTER SHARDS would be nicer; CLUSTER NODES exists on every 7.x.
        let nodes = self.any().cli(&["CLUSTER", "NODES"]);
        nodes.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let is_primary = fields.get(2).is_some_and(|flags| flags.contains("master"));
            let owns = fields.iter().skip(8).any(|range| {
                let (start, end) = range.split_once('-').unwrap_or((range, range));
                matches!((start.parse::<u16>(), end.parse::<u16>()), (Ok(s), Ok(e)) if (s..=e).contains(&slot))
            });
            let port = fields.get(1)?.split('@').next()?.rsplit(':').next()?.parse().ok()?;
            (is_primary && owns).then_some(port)
        })
    }

    /// Indexes of the current primaries.
    pub fn primaries(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].pid().is_some())
            .filter(|i| self.nodes[*i].cli(&["ROLE"]).lines().next() == Some("master"))
            .collect()
    }

    /// Indexes of the replicas of primary `index`.
    pub fn replicas_of(&self, index: usize) -> Vec<usize> {
        let id = self.id(index);
        let nodes = self.any().cli(&["CLUSTER", "NODES"]);
        nodes
            .lines()
            .filter(|line| line.split_whitespace().nth(3) == Some(id.as_str()))
            .filter_map(|line| {
                line.split_whitespace().nth(1)?.split('@').next()?.rsplit(':').next()?.parse().ok()
            })
            .filter_map(|port: u16| self.nodes.iter().position(|node| node.port() == port))
            .collect()
    }

    /// Moves `slot`, with its keys, to primary `to`, as `redis-cli --cluster reshard` does:
    /// the target imports, the source migrates, the keys move in batches (`MIGRATE`), and
    /// every primary is told the new owner.
    ///
    /// # Panics
    /// When a step fails.
    pub fn migrate_slot(&self, slot: u16, to: usize) {
        let from = self.owner(slot).unwrap_or_else(|| panic!("slot {slot} has no owner"));
        if from == to {
            return;
        }
        let (slot_text, from_id, to_id) = (slot.to_string(), self.id(from), self.id(to));
        self.nodes[to].cli(&["CLUSTER", "SETSLOT", &slot_text, "IMPORTING", &from_id]);
        self.nodes[from].cli(&["CLUSTER", "SETSLOT", &slot_text, "MIGRATING", &to_id]);
        let target_port = self.nodes[to].port().to_string();
        loop {
            let keys = self.nodes[from].cli(&["CLUSTER", "GETKEYSINSLOT", &slot_text, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|key| !key.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut migrate = vec!["MIGRATE", "127.0.0.1", &target_port, "", "0", "5000", "KEYS"];
            migrate.extend(keys);
            self.nodes[from].cli(&migrate);
        }
        for index in self.primaries() {
            self.nodes[index].cli(&["CLUSTER", "SETSLOT", &slot_text, "NODE", &to_id]);
        }
    }
}
