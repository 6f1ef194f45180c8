//! Socket.IO connection state recovery (docs/socketio.md, "Connection state recovery").
//!
//! socket.io-client keeps one offset: the last string argument of the last event it got.
//! A connection is in several rooms, each with its own stream position, so every
//! publication event a recovering connection gets carries the connection's position in
//! **all** of its rooms: `<slot>:<offset>` pairs joined with `.` (`0:15.2:7`), slots
//! indexing the connection's room list. Frames reach the client in order, so the last
//! offset it saw is exactly where it is in every room. The room list (channel, epoch,
//! position at join) is stored under the session's `pid` (`sb:sio:<pid>`) whenever it
//! changes, with the recovery window as TTL, so that any node can resume the rooms.
//!
//! The vector is advanced and the frame queued under one lock, so the order of vectors
//! is the order of frames even when the hub and the session queue at once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};
use switchboard_protocol::StreamPosition;

use crate::transport::frame::{OpCode, WireFrame};

/// One room of a recoverable connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Room {
    /// The channel.
    #[serde(rename = "c")]
    pub channel: String,
    /// Its epoch when joined.
    #[serde(rename = "e")]
    pub epoch: String,
    /// Its position when joined (where to resume if the client got nothing since).
    #[serde(rename = "j")]
    pub join: u64,
    /// Whether the connection is still in it.
    #[serde(rename = "a")]
    pub active: bool,
    /// The last offset queued to the connection (not stored).
    #[serde(skip)]
    last: u64,
}

/// What is stored under a session's `pid`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// The user the session belongs to: only that user may recover it.
    pub user: String,
    /// The rooms, by slot.
    pub rooms: Vec<Room>,
}

impl Record {
    /// Where to resume each active room, given the client's `offset` vector: its offset
    /// there, or the position at join for a room it got nothing of since. `None` when
    /// the vector is malformed or names a slot the record does not have.
    pub fn positions(&self, offset: &str) -> Option<Vec<(String, StreamPosition)>> {
        let vector = parse_vector(offset)?;
        if vector.keys().any(|slot| *slot >= self.rooms.len()) {
            return None;
        }
        Some(
            self.rooms
                .iter()
                .enumerate()
                .filter(|(_, room)| room.active)
                .map(|(slot, room)| {
                    let offset = vector.get(&slot).copied().unwrap_or(room.join);
                    (room.channel.clone(), StreamPosition { offset, epoch: room.epoch.clone() })
                })
                .collect(),
        )
    }
}

/// `0:15.2:7` as slot → offset.
fn parse_vector(text: &str) -> Option<HashMap<usize, u64>> {
    if text.is_empty() {
        return Some(HashMap::new());
    }
    text.split('.')
        .map(|pair| {
            let (slot, offset) = pair.split_once(':')?;
            Some((slot.parse().ok()?, offset.parse().ok()?))
        })
        .collect()
}

/// The rooms of one recoverable connection, shared by its session and the hub.
#[derive(Debug, Default)]
pub struct SioRooms {
    rooms: Mutex<Vec<Room>>,
}

impl SioRooms {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Room>> {
        self.rooms.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The slot of `channel`, added (inactive until [`SioRooms::joined`]) if new.
    pub fn slot(&self, channel: &str) -> usize {
        let mut rooms = self.lock();
        if let Some(slot) = rooms.iter().position(|room| room.channel == channel) {
            return slot;
        }
        rooms.push(Room {
            channel: channel.to_string(),
            epoch: String::new(),
            join: 0,
            active: false,
            last: 0,
        });
        rooms.len() - 1
    }

    /// The connection joined `channel` at `epoch`/`offset` (before any of its
    /// publications is queued).
    pub fn joined(&self, channel: &str, epoch: &str, offset: u64) {
        let slot = self.slot(channel);
        let mut rooms = self.lock();
        let room = &mut rooms[slot];
        (room.epoch, room.join, room.last, room.active) = (epoch.to_string(), offset, offset, true);
    }

    /// The connection left `channel`.
    pub fn left(&self, channel: &str) {
        if let Some(room) = self.lock().iter_mut().find(|room| room.channel == channel) {
            room.active = false;
        }
    }

    /// Advances `slot` to `offset`, and hands `send` the event frame `base` with the
    /// connection's position vector appended as its last argument, under the lock.
    pub fn deliver<R>(
        &self,
        slot: usize,
        offset: u64,
        base: &WireFrame,
        send: impl FnOnce(WireFrame) -> R,
    ) -> R {
        let mut rooms = self.lock();
        if let Some(room) = rooms.get_mut(slot) {
            room.last = room.last.max(offset);
        }
        let mut vector = String::new();
        for (slot, room) in rooms.iter().enumerate().filter(|(_, room)| room.active) {
            if !vector.is_empty() {
                vector.push('.');
            }
            vector.push_str(&format!("{slot}:{}", room.last));
        }
        send(with_offset(base, &vector))
    }

    /// The record to store for `user`.
    pub fn record(&self, user: &str) -> Record {
        Record { user: user.to_string(), rooms: self.lock().clone() }
    }
}

/// `42[…]` → `42[…,"<offset>"]`.
fn with_offset(base: &WireFrame, offset: &str) -> WireFrame {
    let payload = base.payload();
    let mut text = Vec::with_capacity(payload.len() + offset.len() + 3);
    text.extend_from_slice(payload.strip_suffix(b"]").unwrap_or(payload));
    text.extend_from_slice(b",\"");
    text.extend_from_slice(offset.as_bytes());
    text.extend_from_slice(b"\"]");
    WireFrame::new(OpCode::Text, &text)
}

/// A connection's recovery state: its session id and rooms.
#[derive(Debug)]
pub struct Recovery {
    /// The session id the client sends back (`pid`).
    pub pid: String,
    /// Its rooms.
    pub rooms: Arc<SioRooms>,
    /// While a recovery runs, the native connect's reply is held back (the `40` goes out
    /// once every room is resumed) and only tells whether the personal channel recovered.
    pub hold_reply: bool,
    /// What the held reply said: every channel it joined recovered.
    pub held_recovered: Option<bool>,
    /// When the stored rooms' TTL is refreshed next.
    pub refresh_at: Option<tokio::time::Instant>,
}

impl Default for Recovery {
    fn default() -> Recovery {
        Recovery::new()
    }
}

impl Recovery {
    /// A new session.
    pub fn new() -> Recovery {
        Recovery::resuming(random_pid())
    }

    /// A session continuing `pid`.
    pub fn resuming(pid: String) -> Recovery {
        Recovery {
            pid,
            rooms: Arc::new(SioRooms::default()),
            hold_reply: false,
            held_recovered: None,
            refresh_at: None,
        }
    }
}

fn random_pid() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..16).map(|_| char::from_digit(rng.random_range(0..36), 36).unwrap_or('0')).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_carry_every_active_room() {
        let rooms = SioRooms::default();
        rooms.joined("#u", "e1", 4);
        rooms.joined("chat:a", "e2", 10);
        let slot = rooms.slot("chat:a");
        let base = WireFrame::new(OpCode::Text, br#"42["m",{"x":1}]"#);
        let frame = rooms.deliver(slot, 11, &base, |frame| frame);
        assert_eq!(frame.payload(), br#"42["m",{"x":1},"0:4.1:11"]"#);
        rooms.left("#u");
        let frame = rooms.deliver(slot, 12, &base, |frame| frame);
        assert_eq!(frame.payload(), br#"42["m",{"x":1},"1:12"]"#);
    }

    #[test]
    fn positions_resume_from_the_vector_or_the_join() {
        let rooms = SioRooms::default();
        rooms.joined("#u", "e1", 4);
        rooms.joined("chat:a", "e2", 10);
        rooms.joined("chat:gone", "e3", 1);
        rooms.left("chat:gone");
        let record = rooms.record("u");
        let positions = record.positions("1:12").expect("valid");
        assert_eq!(
            positions,
            vec![
                ("#u".to_string(), StreamPosition { offset: 4, epoch: "e1".into() }),
                ("chat:a".to_string(), StreamPosition { offset: 12, epoch: "e2".into() }),
            ]
        );
        assert!(record.positions("7:1").is_none(), "a slot the record does not have");
        assert!(record.positions("x").is_none());
        let json = serde_json::to_string(&record).expect("serializable");
        let stored: Record = serde_json::from_str(&json).expect("readable");
        assert_eq!(stored.rooms.len(), 3);
    }
}
