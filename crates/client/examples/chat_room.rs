//! A chat room with typing indicators and read receipts: messages are stored (offsets,
//! history, recovery), typing indicators are ephemeral (never stored), read receipts are
//! small publications, and join/leave events keep an online list.
//!
//! `SWITCHBOARD_URL=ws://localhost:8000/ws SWITCHBOARD_TOKEN=... cargo run -p switchboard-client --example chat_room`

use std::collections::BTreeSet;

use serde_json::json;
use switchboard_client::{static_token, Client, ClientConfig, Event};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("SWITCHBOARD_URL").unwrap_or_else(|_| "ws://localhost:8000/ws".into());
    let token = std::env::var("SWITCHBOARD_TOKEN")?;
    let (client, personal) = Client::connect(ClientConfig::new(url, static_token(token)));
    // This app does not use its personal channel. Dropping the subscription lets the
    // client discard its events; holding it unread would fill its queue and stall the
    // connection.
    drop(personal);
    let mut room = client.subscribe("chat:lobby").await?;
    let present = client.presence("chat:lobby").await?;
    let mut online: BTreeSet<String> = present["clients"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["user"].as_str().map(String::from))
        .collect();
    client.publish("chat:lobby", Some("typing"), json!({"typing": true}), true).await?;
    client.publish("chat:lobby", Some("message"), json!({"text": "hello, room"}), false).await?;
    while let Some(event) = room.next().await {
        match event {
            Event::Join(who) => {
                online.insert(who.user);
                println!("online: {online:?}");
            }
            Event::Leave(who) => {
                online.remove(&who.user);
                println!("online: {online:?}");
            }
            Event::Publication(p) => match p.event.as_deref() {
                Some("typing") => println!("{} is typing…", p.from.map(|f| f.user).unwrap_or_default()),
                Some("message") => {
                    println!(
                        "{}: {}",
                        p.from.as_ref().map(|f| f.user.as_str()).unwrap_or("?"),
                        p.data["text"]
                    );
                    // A read receipt: who read up to which offset. Sent from its own task:
                    // awaiting the reply here would stop this loop from reading the room,
                    // and the reply waits behind the room's events.
                    let client = client.clone();
                    tokio::spawn(async move {
                        let receipt = json!({"offset": p.offset});
                        if let Err(error) = client.publish("chat:lobby", Some("read"), receipt, true).await {
                            eprintln!("read receipt not sent: {error}");
                        }
                    });
                }
                Some("read") => {
                    println!("{} read up to {}", p.from.map(|f| f.user).unwrap_or_default(), p.data["offset"])
                }
                _ => {}
            },
            _ => {}
        }
    }
    Ok(())
}
