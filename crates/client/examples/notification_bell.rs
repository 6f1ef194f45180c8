//! A notification bell with an unread count: notifications arrive on the personal channel
//! (including those sent while offline, delivered at connect), and reading them
//! acknowledges the position so other devices do not show them again.
//!
//! `SWITCHBOARD_URL=ws://localhost:8000/ws SWITCHBOARD_TOKEN=... cargo run -p switchboard-client --example notification_bell`

use switchboard_client::{static_token, Client, ClientConfig, Event, StreamPosition};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("SWITCHBOARD_URL").unwrap_or_else(|_| "ws://localhost:8000/ws".into());
    let token = std::env::var("SWITCHBOARD_TOKEN")?;
    let (client, mut personal) = Client::connect(ClientConfig::new(url, static_token(token)));
    let mut unread = 0u32;
    while let Some(event) = personal.next().await {
        if let Event::Publication(notification) = event {
            unread += 1;
            println!("[{unread} unread] {}", notification.data["title"]);
            // The user opened the bell: everything up to here is read on every device.
            if unread >= 3 {
                if let (Some(offset), Some(epoch)) = (notification.offset, notification.epoch.clone()) {
                    client.ack(&notification.channel, &StreamPosition { offset, epoch }).await?;
                    unread = 0;
                    println!("marked as read");
                }
            }
        }
    }
    Ok(())
}
