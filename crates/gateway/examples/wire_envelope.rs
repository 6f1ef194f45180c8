//! Measures the publication envelope (issue 12): the bytes of a `publication` push around
//! a 100-byte payload, in JSON and MessagePack, with and without `from`, as the gateway
//! encodes it (`hub::encode_publication`, the function every live, recovered and history
//! frame goes through). "with epoch" is the frame every push was before issue 12 and the
//! first publication of a new epoch is now; "without" is every other publication.
//!
//! Run: `cargo run -p switchboard-gateway --example wire_envelope`. docs/BENCHMARKS.md
//! ("Wire envelope") quotes its output.

use std::sync::Arc;

use anyhow::Context;
use switchboard_gateway::{
    broker::Publication,
    hub::{encode_publication, Epoch},
};
use switchboard_protocol::{ClientInfo, Encoding};

/// A bench-style payload (`lean::payload`: a microsecond stamp and padding) of exactly 100
/// bytes of compact JSON.
fn payload() -> anyhow::Result<Box<serde_json::value::RawValue>> {
    let padding = "x".repeat(71);
    let text = format!(r#"{{"p":"{padding}","t":1767225600123456}}"#);
    anyhow::ensure!(text.len() == 100, "payload is {} bytes", text.len());
    Ok(serde_json::value::RawValue::from_string(text)?)
}

fn publication(offset: u64, from: bool) -> anyhow::Result<Publication> {
    Ok(Publication {
        channel: Arc::from("bench:fanout"),
        offset: Some(offset),
        epoch: Some(Arc::from("51be0f3a9d2c7e84")),
        event: None,
        data: payload()?,
        ts: 1_767_225_600_123,
        // A client publisher as the gateway names it: `<node id>-<connection number>`.
        from: from.then(|| ClientInfo { client: "9f3c2a71-1042".into(), user: "p0".into(), info: None }),
    })
}

fn size(offset: u64, from: bool, encoding: Encoding, epoch: Epoch) -> anyhow::Result<usize> {
    let frame = encode_publication(&publication(offset, from)?, encoding.into(), epoch).context("encode")?;
    Ok(frame.into_payload().len())
}

fn main() -> anyhow::Result<()> {
    println!("publication push, 100-byte payload, channel `bench:fanout`, no `event`; offsets 10 / 99 999");
    println!("| encoding | from | with epoch (before) | without epoch (after) | saved |");
    println!("|---|---|---:|---:|---:|");
    for encoding in Encoding::ALL {
        for from in [false, true] {
            let range = |epoch| -> anyhow::Result<(usize, usize)> {
                Ok((size(10, from, encoding, epoch)?, size(99_999, from, encoding, epoch)?))
            };
            let (before, after) = (range(Epoch::Carry)?, range(Epoch::Omit)?);
            println!(
                "| {} | {} | {}–{} | {}–{} | {} |",
                encoding.name(),
                if from { "yes" } else { "no" },
                before.0,
                before.1,
                after.0,
                after.1,
                before.0 - after.0
            );
        }
    }
    let sample = encode_publication(&publication(1234, true)?, Encoding::Json.into(), Epoch::Omit)?;
    println!(
        "\nJSON, without epoch, offset 1234, with from:\n{}",
        String::from_utf8_lossy(&sample.into_payload())
    );
    Ok(())
}
