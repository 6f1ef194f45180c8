//! What a scenario measures, and how it is reported: a human table and one JSON line.

use std::collections::BTreeSet;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Delivery counts and latency of one reader (merged across readers).
#[derive(Clone, Default)]
pub struct Deliveries {
    /// End-to-end latencies (publish to receive, microseconds) not yet in `latency`.
    pending: Vec<u32>,
    /// The latencies folded so far; created on the first fold.
    latency: Option<Histogram<u64>>,
    /// Publications received.
    pub received: u64,
    /// Offsets not received (so far).
    pub missing: u64,
    /// Offsets received more than once.
    pub duplicates: u64,
    /// Offsets received out of order: ahead of a gap, or late into one.
    pub out_of_order: u64,
    /// Offsets skipped over by a later one, which may still arrive late.
    skipped: BTreeSet<u64>,
}

/// Gaps larger than this are counted as missing without remembering each offset.
const MAX_TRACKED_GAP: u64 = 100_000;

/// Latencies a reader keeps in a plain list before folding them into its histogram. A
/// histogram (1 µs to 60 s at three significant digits) is 17 000 counters, 136 KiB: with
/// one per reader, each delivery touched a cold line of one of a thousand of them, which
/// profiled at 4 % of the load generator's CPU at 50 publications/s. A reader of a
/// typical run (a few thousand deliveries) never folds before the run ends.
const PENDING_LATENCIES: usize = 16 * 1024;

/// The histogram every latency goes into.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| unreachable!("valid bounds"))
}

/// Adds `micros` to `histogram` (values beyond its 60 s bound are not recorded).
fn add_all(histogram: &mut Histogram<u64>, micros: &[u32]) {
    for value in micros {
        let _ = histogram.record(u64::from(*value));
    }
}

impl Deliveries {
    /// Records one publication's offset against the last one seen in its channel.
    pub fn record(&mut self, last: &mut u64, offset: u64, sent_micros: u64, now_micros: u64) {
        self.received += 1;
        // Saturating: clocks are one machine's, but never panic on a skew.
        let micros = now_micros.saturating_sub(sent_micros).max(1);
        self.pending.push(u32::try_from(micros).unwrap_or(u32::MAX));
        if self.pending.len() >= PENDING_LATENCIES {
            add_all(self.latency.get_or_insert_with(new_histogram), &self.pending);
            self.pending.clear();
        }
        if offset == *last + 1 {
            *last = offset;
        } else if offset <= *last {
            // Late into a gap is a reordering, not a duplicate; anything else was seen.
            if self.skipped.remove(&offset) {
                self.missing -= 1;
                self.out_of_order += 1;
            } else {
                self.duplicates += 1;
            }
        } else {
            self.out_of_order += 1;
            let gap = offset - *last - 1;
            self.missing += gap;
            if gap <= MAX_TRACKED_GAP {
                self.skipped.extend(*last + 1..offset);
            }
            *last = offset;
        }
    }

    /// Adds another reader's counts.
    pub fn merge(&mut self, other: &Deliveries) {
        let latency = self.latency.get_or_insert_with(new_histogram);
        if let Some(histogram) = &other.latency {
            let _ = latency.add(histogram);
        }
        add_all(latency, &other.pending);
        self.received += other.received;
        self.missing += other.missing;
        self.duplicates += other.duplicates;
        self.out_of_order += other.out_of_order;
    }

    /// Latency percentiles in milliseconds.
    pub fn latency_json(&self) -> Value {
        let mut latency = self.latency.clone().unwrap_or_else(new_histogram);
        add_all(&mut latency, &self.pending);
        let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
        json!({"p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99), "max_ms": latency.max() as f64 / 1000.0})
    }
}

/// CPU seconds (user + system) used so far by process `pid`, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Resident memory of process `pid` in bytes, from `/proc/<pid>/status`.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Total CPU seconds of `pids`.
pub fn total_cpu(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|pid| cpu_seconds(*pid)).sum()
}

/// Gateway CPU seconds per million deliveries, to three decimals (0 without deliveries):
/// the figure that transfers between machines better than a rate.
pub fn cpu_per_million(cpu_seconds: f64, deliveries: u64) -> f64 {
    if deliveries == 0 {
        return 0.0;
    }
    (cpu_seconds * 1e9 / deliveries as f64).round() / 1000.0
}

/// Prints a two-column table (nested objects flattened to `outer.inner` rows) and the
/// final JSON line.
pub fn report(scenario: &str, result: &Value) {
    println!("scenario: {scenario}");
    for (key, value) in table_rows("", result) {
        println!("  {key:<36} {value}");
    }
    let mut line = result.clone();
    line["scenario"] = Value::String(scenario.into());
    println!("{line}");
}

/// One `(key, value)` row per leaf of `value`, keys joined with dots.
fn table_rows(prefix: &str, value: &Value) -> Vec<(String, String)> {
    match value.as_object() {
        Some(object) => object
            .iter()
            .flat_map(|(key, inner)| {
                let key = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                table_rows(&key, inner)
            })
            .collect(),
        None => vec![(prefix.to_string(), value.to_string())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_rows_flatten_nested_objects() {
        let rows = table_rows("", &serde_json::json!({"a": 1, "latency": {"p50_ms": 2.5, "max_ms": 9}}));
        let keys: Vec<&str> = rows.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(keys, ["a", "latency.max_ms", "latency.p50_ms"]);
        assert_eq!(rows[2].1, "2.5");
    }

    #[test]
    fn cpu_per_million_rounds_and_guards_zero() {
        assert_eq!(cpu_per_million(1.5, 2_000_000), 0.75);
        assert_eq!(cpu_per_million(1.0, 0), 0.0);
    }

    #[test]
    fn a_reordering_is_counted_once_as_such_not_as_loss_and_duplicate() {
        let mut deliveries = Deliveries::default();
        let mut last = 0;
        for offset in [1, 3, 2, 4, 4, 6] {
            deliveries.record(&mut last, offset, 0, 1);
        }
        assert_eq!(deliveries.received, 6);
        assert_eq!(deliveries.out_of_order, 3, "3 ahead of 2, 2 late, 6 ahead of 5");
        assert_eq!(deliveries.duplicates, 1, "the second 4");
        assert_eq!(deliveries.missing, 1, "5 never came");
    }

    #[test]
    fn latencies_survive_folding_and_merging() {
        let mut reader = Deliveries::default();
        let mut last = 0;
        // More than one fold's worth: 1 ms each, then one slow delivery of 50 ms.
        let count = PENDING_LATENCIES as u64 + 10;
        for offset in 1..=count {
            reader.record(&mut last, offset, 0, 1_000);
        }
        reader.record(&mut last, count + 1, 0, 50_000);
        assert!(reader.latency.is_some(), "the first fold happened");
        let mut total = Deliveries::default();
        total.merge(&reader);
        total.merge(&Deliveries::default());
        let latency = total.latency_json();
        assert_eq!(total.received, count + 1);
        assert_eq!(latency["p50_ms"], 1.0);
        assert_eq!(latency["max_ms"], 50.015, "50 ms at three significant digits");
    }
}
