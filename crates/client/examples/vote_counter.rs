//! A live vote counter: show a DAO proposal's tallies and quorum progress as votes land,
//! refetching the full state whenever updates could not be recovered after a reconnect.
//!
//! `SWITCHBOARD_URL=ws://localhost:8000/ws SWITCHBOARD_TOKEN=$(switchboard token --dev --user u42) \
//!  cargo run -p switchboard-client --example vote_counter`

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
    let mut proposal = client.subscribe("dao:proposal-42").await?;
    while let Some(event) = proposal.next().await {
        match event {
            Event::Subscribed { recovered: Some(false), .. } => {
                // Updates were missed for good: load the tallies from the application's API.
                println!("(reconnected without recovery: refetching the proposal)");
            }
            Event::Publication(tally) if tally.event.as_deref() == Some("tally") => {
                let progress = tally.data["quorum_progress"].as_f64().unwrap_or(0.0);
                println!(
                    "yes {} / no {}  quorum {:.0}%",
                    tally.data["yes"],
                    tally.data["no"],
                    progress * 100.0
                );
            }
            _ => {}
        }
    }
    Ok(())
}
