//! Consensus percentage updates for a governance dashboard: one payload broadcast to the
//! proposal channel and the DAO's overview channel in one pipelined round trip.
//!
//! `SWITCHBOARD_REDIS_URL=redis://127.0.0.1:6379 cargo run -p switchboard-publisher --example consensus`

use serde_json::json;
use switchboard_publisher::{PublishOptions, Publisher};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("SWITCHBOARD_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let publisher = Publisher::connect(&url).await?;
    let update = json!({"proposal": 42, "consensus": 0.672, "threshold": 0.66, "reached": true});
    let results = publisher
        .broadcast(&["dao:proposal-42", "dao:overview"], &update, &PublishOptions::event("consensus"))
        .await?;
    for result in results {
        match result {
            Ok(published) => println!("{}: offset {:?}", published.channel, published.offset),
            Err(error) => eprintln!("failed: {error}"),
        }
    }
    Ok(())
}
