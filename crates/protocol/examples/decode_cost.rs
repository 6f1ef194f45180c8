//! Measures `codec::decode_command` on JSON commands of a few sizes (issue 12: commands
//! used to be parsed twice), next to a bare `serde_json::Value` parse of the same bytes.
//!
//! Run: `cargo run --release -p switchboard-protocol --example decode_cost`.
//! docs/BENCHMARKS.md ("JSON commands in one pass") quotes its output.

use std::time::Instant;

use switchboard_protocol::{codec::decode_command, Encoding};

/// Calls per measurement: a few hundred milliseconds for the largest frame.
const CALLS: u32 = 20_000;

/// Microseconds per call of `work`, averaged over [`CALLS`] calls.
fn micros(work: impl Fn()) -> f64 {
    let started = Instant::now();
    (0..CALLS).for_each(|_| work());
    started.elapsed().as_secs_f64() * 1e6 / f64::from(CALLS)
}

fn main() -> anyhow::Result<()> {
    let rows: Vec<String> = (0..60).map(|i| format!(r#"{{"s":"SYM{i}","q":{i}}}"#)).collect();
    let frames = [
        ("subscribe", r#"{"id":2,"method":"subscribe","params":{"channel":"chat:room-42"}}"#.to_string()),
        (
            "publish, 100-byte text",
            format!(
                r#"{{"id":3,"method":"publish","params":{{"channel":"chat:room-42","data":{{"text":"{}"}}}}}}"#,
                "x".repeat(88)
            ),
        ),
        (
            "publish, 60 objects",
            format!(
                r#"{{"id":3,"method":"publish","params":{{"channel":"chat:room-42","data":{{"rows":[{}]}}}}}}"#,
                rows.join(",")
            ),
        ),
    ];
    println!("| command | bytes | decode_command µs | serde_json::Value parse µs |");
    println!("|---|---:|---:|---:|");
    for (name, frame) in &frames {
        decode_command(Encoding::Json, frame.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
        let decode = micros(|| {
            std::hint::black_box(decode_command(Encoding::Json, frame.as_bytes()).ok());
        });
        let value = micros(|| {
            std::hint::black_box(serde_json::from_slice::<serde_json::Value>(frame.as_bytes()).ok());
        });
        println!("| {name} | {} | {decode:.2} | {value:.2} |", frame.len());
    }
    Ok(())
}
