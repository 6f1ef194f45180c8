//! Measures `permessage-deflate` (issue 12): for portfolio-like JSON publications of a few
//! sizes, the frame as the gateway encodes it (`hub::encode_publication`), compressed the
//! way the hub does once per publication (`transport::deflate::compress_frame`), and
//! inflated the way a client message is (`inflate_message`): bytes on the wire and CPU
//! per call, on this thread.
//!
//! Run: `cargo run --release -p switchboard-gateway --example deflate_cost`.
//! docs/BENCHMARKS.md ("permessage-deflate") quotes its output.

use std::{sync::Arc, time::Instant};

use anyhow::Context;
use switchboard_gateway::{
    broker::Publication,
    hub::{encode_publication, Epoch},
    transport::deflate::{compress_frame, inflate_message, Deflate},
};
use switchboard_protocol::Encoding;

/// A holdings snapshot of `rows` positions, as a portfolio service would publish it.
fn publication(rows: usize) -> anyhow::Result<Publication> {
    let holdings: Vec<serde_json::Value> = (0..rows)
        .map(|i| {
            serde_json::json!({
                "symbol": format!("SYM{}", i % 50),
                "qty": i * 7,
                "price": 100.25 + i as f64,
                "change": -(i as f64 % 9.0) / 10.0,
            })
        })
        .collect();
    let data = serde_json::value::to_raw_value(&serde_json::json!({ "holdings": holdings }))?;
    Ok(Publication {
        channel: Arc::from("portfolio:alice"),
        offset: Some(1234),
        epoch: Some(Arc::from("8f1c2a")),
        event: None,
        data,
        ts: 1_767_225_600_123,
        from: None,
    })
}

/// Microseconds per call of `work`, over enough calls to take about 200 ms.
fn per_call(mut work: impl FnMut()) -> f64 {
    let started = Instant::now();
    let mut calls = 0u32;
    while started.elapsed().as_millis() < 200 {
        work();
        calls += 1;
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(calls)
}

fn main() -> anyhow::Result<()> {
    println!("| payload | frame bytes | level | compressed bytes | compress µs (once per publication) | inflate µs |");
    println!("|---|---:|---:|---:|---:|---:|");
    for rows in [12, 48, 480] {
        let frame = encode_publication(&publication(rows)?, Encoding::Json.into(), Epoch::Omit)?;
        for level in [1, 6] {
            let deflate = Deflate { threshold: 0, level };
            let compressed = compress_frame(&frame, deflate).context("does not shrink")?;
            let inflated = inflate_message(compressed.payload(), 1 << 20)?;
            anyhow::ensure!(inflated == frame.payload(), "round trip");
            let compress = per_call(|| {
                std::hint::black_box(compress_frame(&frame, deflate));
            });
            let inflate = per_call(|| {
                std::hint::black_box(inflate_message(compressed.payload(), 1 << 20).ok());
            });
            println!(
                "| {rows} holdings | {} | {level} | {} ({:.0} %) | {compress:.1} | {inflate:.1} |",
                frame.len(),
                compressed.len(),
                100.0 * compressed.len() as f64 / frame.len() as f64
            );
        }
    }
    Ok(())
}
