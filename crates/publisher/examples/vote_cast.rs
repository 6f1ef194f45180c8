//! A DAO vote was cast: publish the new tallies and quorum progress to everyone watching
//! the proposal (`dao:proposal-<id>`), as a typed domain event.
//!
//! `SWITCHBOARD_REDIS_URL=redis://127.0.0.1:6379 cargo run -p switchboard-publisher --example vote_cast`
//! (needs a gateway that declares a `dao` namespace; see docs/operations.md).

use serde::Serialize;
use switchboard_publisher::{DomainEvent, Publisher};

#[derive(Serialize)]
struct VoteTally {
    proposal: u64,
    yes: u64,
    no: u64,
    abstain: u64,
    quorum: u64,
    /// Votes cast over quorum, 0.0 to 1.0 (and beyond).
    quorum_progress: f64,
    /// The vote that changed the tally, so clients can animate it.
    last_vote_id: String,
}

impl DomainEvent for VoteTally {
    const EVENT: &'static str = "tally";

    fn channel(&self) -> String {
        format!("dao:proposal-{}", self.proposal)
    }

    /// One vote updates the tally once, even if the service retries after a timeout.
    fn idempotency_key(&self) -> Option<String> {
        Some(format!("vote-{}", self.last_vote_id))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("SWITCHBOARD_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let publisher = Publisher::connect(&url).await?;
    let (yes, no, abstain, quorum) = (1_204, 311, 40, 2_000);
    let tally = VoteTally {
        proposal: 42,
        yes,
        no,
        abstain,
        quorum,
        quorum_progress: (yes + no + abstain) as f64 / quorum as f64,
        last_vote_id: "0x9f3c".into(),
    };
    let published = publisher.publish_event(&tally).await?;
    println!("tally published at offset {:?} (epoch {:?})", published.offset, published.epoch);
    Ok(())
}
