//! A prioritised notification to one user, who may be offline: it goes to the personal
//! channel `user:<id>`, reaches every connected device at once, and devices that connect
//! later receive it (within the personal namespace's retention) until they `ack` it.
//!
//! `SWITCHBOARD_REDIS_URL=redis://127.0.0.1:6379 cargo run -p switchboard-publisher --example notification`

use serde_json::json;
use switchboard_publisher::{PublishOptions, Publisher};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("SWITCHBOARD_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let publisher = Publisher::connect(&url).await?;
    // The notification was saved by the service first; its id makes retries safe.
    let notification_id = "ntf-8812";
    let options = PublishOptions::event("notification").idempotent(notification_id);
    let payload = json!({
        "id": notification_id,
        "priority": "high",
        "title": "KYC approved",
        "body": "Your identity check is complete. You can now trade.",
        "link": "/portfolio",
    });
    let published = loop {
        match publisher.publish_to_user("u42", &payload, &options).await {
            Ok(published) => break published,
            // A dropped connection may or may not have published: the same key makes the
            // retry deliver it at most once.
            Err(error) if error.is_retryable() => {
                eprintln!("retrying: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(error) => return Err(error.into()),
        }
    };
    println!("notification at offset {:?}, duplicate: {}", published.offset, published.duplicate);
    Ok(())
}
