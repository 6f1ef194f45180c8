//! The benchmark scenarios; each returns its result as JSON.

pub mod connect;
pub mod failover;
pub mod fanout;
pub mod floor;
pub mod idle;
pub mod redis_publish;
pub mod redis_shards;
pub mod rooms;
pub mod rpc;
pub mod soak;
