//! A credit vault's loan-to-value crossed a threshold: alert everyone watching the vault
//! and, with high priority, its owner on all their devices (even if offline now).
//!
//! `SWITCHBOARD_REDIS_URL=redis://127.0.0.1:6379 cargo run -p switchboard-publisher --example vault_alert`

use serde_json::json;
use switchboard_publisher::{Outgoing, PublishOptions, Publisher};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("SWITCHBOARD_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let publisher = Publisher::connect(&url).await?;
    let (vault, owner, ltv, threshold) = (12, "u42", 0.82, 0.80);
    let alert =
        json!({"vault": vault, "ltv": ltv, "threshold": threshold, "action": "add collateral or repay"});
    // The check that produced this alert runs every block: key it by vault and threshold
    // crossing so a re-run does not alert twice.
    let key = format!("vault-{vault}-ltv-{threshold}");
    let items = vec![
        Outgoing {
            channel: format!("vault:{vault}"),
            data: alert.clone(),
            options: PublishOptions::event("risk_alert").idempotent(format!("{key}-watchers")),
        },
        Outgoing {
            channel: format!("user:{owner}"),
            data: json!({"priority": "urgent", "alert": alert}),
            options: PublishOptions::event("risk_alert").idempotent(format!("{key}-owner")),
        },
    ];
    for result in publisher.publish_batch(items).await? {
        match result {
            Ok(published) => println!("{}: offset {:?}", published.channel, published.offset),
            Err(error) => eprintln!("failed: {error}"),
        }
    }
    Ok(())
}
