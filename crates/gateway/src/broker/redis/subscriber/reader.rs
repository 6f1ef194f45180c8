//! The pub/sub reader: turns the node's pub/sub messages into ordered, gap-free,
//! duplicate-free channel events for the hub.
//!
//! One task reads every message in arrival order (per-channel order without a task per
//! message) and keeps, per channel, the last offset it delivered. A repeat is dropped; a
//! jump means the node missed live messages, and the missing publications are read from
//! the channel's stream.
//!
//! **Stream reads never run on this task.** A gap fill or a catch-up (after a reconnect or
//! a lag) is a *repair*: a separate task reads the stream, retrying with backoff for as
//! long as Redis is unreachable (a failed read must not leave a silent gap), and hands the
//! publications back. Meanwhile the channel's live messages are held, in order, in a
//! bounded per-channel buffer; every other channel keeps flowing. When the read comes back
//! the reader delivers it, then releases what it held, dropping what the read already
//! delivered: per-channel order is kept with no gap and no duplicate.
//!
//! The hold buffer is bounded per channel ([`HOLD_PER_CHANNEL`]) and across channels
//! ([`HOLD_TOTAL`]; held messages are small, a few MB at most). A channel that overflows
//! it drops what it held and any message arriving until its read completes, then catches
//! up from the stream (from its last delivered offset), holding again: stored
//! publications are all in the stream, so nothing is lost but ephemeral publications and
//! join/leave events of that window (counted, logged). Because reads no longer stall this
//! task, a resync's catch-ups cannot make the message buffer lag and trigger another
//! resync.
//!
//! **Baselines.** The stream position a join read right after the node subscribed a
//! channel (see the parent module) is kept as a *soft* position: where a catch-up starts
//! if the connection breaks before any publication arrived, and the lower bound of gap
//! detection. It is not a delivered offset, so publications at or below it are still
//! delivered (the hub drops them for subscribers that already have them): concurrent
//! joins of one channel read different positions, and the lowest is the one that counts.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::sync::{broadcast::error::RecvError, mpsc, Semaphore};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::super::{wire, RedisShared};
use crate::broker::{ChannelEvent, Publication};
use switchboard_protocol::redis as keys;

/// Live events held for one channel while its stream is read.
pub(super) const HOLD_PER_CHANNEL: usize = 1024;
/// Live events held across all channels.
pub(super) const HOLD_TOTAL: usize = 1 << 16;
/// Stream reads of repairs in flight at once (a resync starts one per channel).
const CONCURRENT_READS: usize = 32;
/// First and longest wait between retries of a failed stream read.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// What the interest task tells the reader.
pub(super) enum ReaderCommand {
    /// Catch these channels up from the stream (after a resync).
    CatchUp(Vec<String>),
    /// The node no longer subscribes these channels.
    Forget(Vec<String>),
    /// Positions joins read right after the node subscribed (see the module docs).
    Baseline(Vec<(String, Arc<str>, u64)>),
}

/// What the reader knows about one channel.
struct Channel {
    epoch: Arc<str>,
    /// The last offset delivered, or a join's baseline while `soft`.
    last: u64,
    soft: bool,
    repair: Option<Repair>,
}

/// A stream read in flight for one channel.
struct Repair {
    id: u64,
    cancel: CancellationToken,
    /// Live events that arrived meanwhile, in arrival order.
    held: VecDeque<ChannelEvent>,
    /// The hold buffer overflowed: arriving events are dropped until the read completes,
    /// and a catch-up follows it.
    overflowed: bool,
    /// Catch up once more before releasing `held` (a resync or a lag came in meanwhile).
    again: bool,
    /// For a gap fill, the live offset that showed the gap: what the stream no longer
    /// holds before it is given up (counted), so the fill cannot loop.
    trigger: Option<u64>,
}

/// A finished stream read.
struct Repaired {
    channel: Arc<str>,
    id: u64,
    read: StreamRead,
}

enum StreamRead {
    /// The stream is in the expected epoch: publications after the offset asked for.
    Same(Vec<Publication>),
    /// The stream was lost and restarted: its new epoch and everything it holds.
    Reset(Arc<str>, Vec<Publication>),
}

pub(super) struct Reader {
    shared: Arc<RedisShared>,
    channels: HashMap<Arc<str>, Channel>,
    held_total: usize,
    next_repair: u64,
    repaired_tx: mpsc::Sender<Repaired>,
    repaired_rx: mpsc::Receiver<Repaired>,
    reads: Arc<Semaphore>,
    /// Cancels every repair task when the reader stops.
    stop: CancellationToken,
    _stop_guard: DropGuard,
    probe_channel: String,
    probe_seen_ms: Arc<AtomicU64>,
    started: Instant,
}

impl Reader {
    pub(super) fn new(
        shared: Arc<RedisShared>,
        probe_channel: String,
        probe_seen_ms: Arc<AtomicU64>,
        started: Instant,
    ) -> Reader {
        let (repaired_tx, repaired_rx) = mpsc::channel(256);
        let stop = CancellationToken::new();
        Reader {
            shared,
            channels: HashMap::new(),
            held_total: 0,
            next_repair: 0,
            repaired_tx,
            repaired_rx,
            reads: Arc::new(Semaphore::new(CONCURRENT_READS)),
            _stop_guard: stop.clone().drop_guard(),
            stop,
            probe_channel,
            probe_seen_ms,
            started,
        }
    }

    pub(super) async fn run(
        mut self,
        mut messages: tokio::sync::broadcast::Receiver<fred::types::Message>,
        mut commands: mpsc::Receiver<ReaderCommand>,
    ) {
        loop {
            tokio::select! {
                message = messages.recv() => match message {
                    Ok(message) => self.on_message(&message),
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "pub/sub reader lagged: catching every channel up");
                        let channels: Vec<Arc<str>> = self.channels.keys().cloned().collect();
                        for channel in channels {
                            self.catch_up(&channel);
                        }
                    }
                    Err(RecvError::Closed) => return,
                },
                Some(repaired) = self.repaired_rx.recv() => self.on_repaired(repaired),
                command = commands.recv() => match command {
                    Some(ReaderCommand::CatchUp(channels)) => {
                        for channel in channels {
                            self.catch_up(&Arc::from(channel));
                        }
                    }
                    Some(ReaderCommand::Baseline(baselines)) => {
                        for (channel, epoch, top) in baselines {
                            self.baseline(channel, epoch, top);
                        }
                    }
                    Some(ReaderCommand::Forget(channels)) => {
                        for channel in channels {
                            self.forget(&channel);
                        }
                    }
                    None => return,
                },
            }
        }
    }

    fn on_message(&mut self, message: &fred::types::Message) {
        if *message.channel == *self.probe_channel {
            self.probe_seen_ms.store(self.started.elapsed().as_millis().max(1) as u64, Ordering::Release);
            return;
        }
        if message.channel.starts_with("sb:rpc:reply:") {
            if let Some(payload) = message.value.as_bytes() {
                self.shared.complete_rpc(payload);
            }
            return;
        }
        let Some(channel) = keys::channel_of_live(&message.channel) else { return };
        // The name is shared with the channel's state: no allocation per message.
        let channel: Arc<str> = match self.channels.get_key_value(channel) {
            Some((known, _)) => known.clone(),
            None => Arc::from(channel),
        };
        let Some(payload) = message.value.as_bytes() else {
            self.shared.metrics.broker_invalid_messages.inc();
            return;
        };
        match wire::decode_live(&channel, payload) {
            Ok(event) => self.on_event(channel, event),
            Err(error) => {
                self.shared.metrics.broker_invalid_messages.inc();
                tracing::warn!(%error, %channel, "dropping an undecodable live message");
            }
        }
    }

    /// Delivers a live event, or holds it while the channel's stream is being read.
    fn on_event(&mut self, channel: Arc<str>, event: ChannelEvent) {
        if matches!(event, ChannelEvent::Control(_)) {
            // Operator commands are not part of the channel's stream: never held.
            return self.shared.sink.deliver(&channel, event);
        }
        if let Some(state) = self.channels.get_mut(&channel) {
            if let Some(repair) = &mut state.repair {
                if repair.overflowed {
                    return;
                }
                if repair.held.len() < HOLD_PER_CHANNEL && self.held_total < HOLD_TOTAL {
                    repair.held.push_back(event);
                    self.held_total += 1;
                    return;
                }
                self.held_total -= repair.held.len();
                repair.held.clear();
                repair.overflowed = true;
                self.shared.metrics.broker_hold_overflows.inc();
                tracing::warn!(%channel, "live messages overflowed while reading the stream: catching up instead");
                return;
            }
        }
        match event {
            ChannelEvent::Publication(publication) => self.on_publication(channel, publication),
            event => self.shared.sink.deliver(&channel, event),
        }
    }

    /// Delivers a publication in offset order: a repeat is dropped, a jump starts a gap
    /// fill (holding this publication until it is done).
    fn on_publication(&mut self, channel: Arc<str>, mut publication: Publication) {
        let (Some(offset), Some(epoch)) = (publication.offset, publication.epoch.clone()) else {
            // Ephemeral: no position to keep.
            return self.shared.sink.deliver(&channel, ChannelEvent::Publication(publication));
        };
        if let Some(state) = self.channels.get_mut(&channel) {
            if *state.epoch == *epoch {
                // One shared epoch per channel: the hub compares epochs by pointer first.
                publication.epoch = Some(state.epoch.clone());
                if offset <= state.last && !state.soft {
                    self.shared.metrics.broker_duplicates.inc();
                    return;
                }
                if offset > state.last + 1 {
                    self.shared.metrics.broker_gap_fills.inc();
                    let from = state.last;
                    let epoch = state.epoch.clone();
                    let mut repair = self.start_repair(&channel, epoch, from, Some(offset));
                    repair.held.push_back(ChannelEvent::Publication(publication));
                    self.held_total += 1;
                    if let Some(state) = self.channels.get_mut(&channel) {
                        state.repair = Some(repair);
                    }
                    return;
                }
                (state.last, state.soft) = (offset, false);
                return self.shared.sink.deliver(&channel, ChannelEvent::Publication(publication));
            }
        }
        self.channels.insert(channel.clone(), Channel { epoch, last: offset, soft: false, repair: None });
        self.shared.sink.deliver(&channel, ChannelEvent::Publication(publication));
    }

    /// Catches `channel` up from its last offset, unless the reader knows no position for
    /// it (nothing to catch up from).
    fn catch_up(&mut self, channel: &Arc<str>) {
        let Some(state) = self.channels.get_mut(channel) else { return };
        if let Some(repair) = &mut state.repair {
            repair.again = true;
            return;
        }
        let (epoch, last) = (state.epoch.clone(), state.last);
        let repair = self.start_repair(channel, epoch, last, None);
        if let Some(state) = self.channels.get_mut(channel) {
            state.repair = Some(repair);
        }
    }

    fn baseline(&mut self, channel: String, epoch: Arc<str>, top: u64) {
        match self.channels.get_mut(channel.as_str()) {
            None => {
                self.channels
                    .insert(Arc::from(channel), Channel { epoch, last: top, soft: true, repair: None });
            }
            Some(state) if state.soft && state.repair.is_none() => {
                if *state.epoch == *epoch {
                    state.last = state.last.min(top);
                } else {
                    (state.epoch, state.last) = (epoch, top);
                }
            }
            Some(_) => {}
        }
    }

    fn forget(&mut self, channel: &str) {
        if let Some(Channel { repair: Some(repair), .. }) = self.channels.remove(channel) {
            repair.cancel.cancel();
            self.held_total -= repair.held.len();
        }
    }

    /// Spawns the stream read of a repair of `channel` after `from` (in `epoch`).
    fn start_repair(
        &mut self,
        channel: &Arc<str>,
        epoch: Arc<str>,
        from: u64,
        trigger: Option<u64>,
    ) -> Repair {
        self.next_repair += 1;
        let id = self.next_repair;
        let cancel = self.stop.child_token();
        let (shared, reads, done) = (self.shared.clone(), self.reads.clone(), self.repaired_tx.clone());
        let (task_channel, task_cancel) = (channel.clone(), cancel.clone());
        tokio::spawn(async move {
            if let Some(read) =
                read_with_retry(&shared, &reads, &task_channel, &epoch, from, &task_cancel).await
            {
                // The reader is gone only when the node stops.
                let _ = done.send(Repaired { channel: task_channel, id, read }).await;
            }
        });
        Repair { id, cancel, held: VecDeque::new(), overflowed: false, again: false, trigger }
    }

    /// Delivers a finished read, then releases (or keeps holding, when another catch-up
    /// is due) the events held meanwhile.
    fn on_repaired(&mut self, repaired: Repaired) {
        let Repaired { channel, id, read } = repaired;
        let Some(state) = self.channels.get_mut(&channel) else { return };
        if state.repair.as_ref().is_none_or(|repair| repair.id != id) {
            return;
        }
        let Some(mut repair) = state.repair.take() else { return };
        let sink = &self.shared.sink;
        match read {
            StreamRead::Same(publications) => {
                for publication in publications {
                    let Some(offset) = publication.offset else { continue };
                    if repair.trigger.is_some_and(|trigger| offset >= trigger) {
                        // A gap fill stops before the live publication that showed the
                        // gap: that one is held, and delivered next.
                        break;
                    }
                    if offset > state.last || state.soft {
                        (state.last, state.soft) = (offset, false);
                        sink.deliver(&channel, ChannelEvent::Publication(publication));
                    }
                }
                if let Some(trigger) = repair.trigger.filter(|t| *t > state.last + 1) {
                    tracing::warn!(%channel, from = state.last, to = trigger - 1, "publications no longer in the stream: skipping them");
                    (state.last, state.soft) = (trigger - 1, false);
                }
            }
            StreamRead::Reset(epoch, publications) => {
                tracing::warn!(%channel, old = %state.epoch, new = %epoch, "stream epoch changed");
                (state.epoch, state.last, state.soft) = (epoch, 0, false);
                for publication in publications {
                    if let Some(offset) = publication.offset {
                        state.last = offset;
                    }
                    sink.deliver(&channel, ChannelEvent::Publication(publication));
                }
                // Held publications of the lost stream would take subscribers back to it.
                let before = repair.held.len();
                let epoch = state.epoch.clone();
                repair.held.retain(|event| match event {
                    ChannelEvent::Publication(p) => p.epoch.as_ref().is_none_or(|e| **e == *epoch),
                    _ => true,
                });
                self.held_total -= before - repair.held.len();
            }
        }
        if repair.overflowed || repair.again {
            let (epoch, last) = (state.epoch.clone(), state.last);
            let mut next = self.start_repair(&channel, epoch, last, None);
            next.held = std::mem::take(&mut repair.held);
            if let Some(state) = self.channels.get_mut(&channel) {
                state.repair = Some(next);
            }
            return;
        }
        self.held_total -= repair.held.len();
        for event in repair.held {
            self.on_event(channel.clone(), event);
        }
    }
}

/// Reads `channel`'s stream after `from`, retrying with backoff until it succeeds or the
/// repair is cancelled (the channel was forgotten, or the node stops). A stream found in
/// another epoch than `epoch` was reset: it is then read from its start.
async fn read_with_retry(
    shared: &RedisShared,
    reads: &Semaphore,
    channel: &str,
    epoch: &Arc<str>,
    from: u64,
    cancel: &CancellationToken,
) -> Option<StreamRead> {
    let mut delay = RETRY_FIRST;
    let mut failures = 0u64;
    loop {
        let attempt = async {
            let _permit = reads.acquire().await;
            let (stream_epoch, publications) = shared.read_after(channel, from).await?;
            if stream_epoch == *epoch {
                return Ok(StreamRead::Same(publications));
            }
            let (stream_epoch, publications) = shared.read_after(channel, 0).await?;
            Ok::<_, crate::broker::BrokerError>(StreamRead::Reset(stream_epoch, publications))
        };
        let error = tokio::select! {
            () = cancel.cancelled() => return None,
            result = attempt => match result {
                Ok(read) => {
                    if failures > 0 {
                        tracing::info!(%channel, failures, "stream read succeeded after retrying");
                    }
                    return Some(read);
                }
                Err(error) => error,
            },
        };
        failures += 1;
        shared.metrics.broker_stream_read_retries.inc();
        // Loud at first, then now and then: Redis may stay away for a while.
        if failures == 1 || failures.is_multiple_of(30) {
            tracing::warn!(%error, %channel, failures, "cannot read the stream: retrying");
        }
        tokio::select! {
            () = cancel.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(RETRY_MAX);
    }
}
