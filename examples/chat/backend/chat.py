"""The chat's rules and its store: users, conversations and their members, messages,
read positions and who is online. Everything lives in Redis under `app:chat:*` (the
gateways' keys are `sb:*`), so the backend can restart without losing anything, and the
writes that must be atomic are small Lua scripts, so several threads (hooks, RPCs, the
lifecycle consumer) can work at once.

What users see goes out through Switchboard:

  conversation:<id>   `message`   a client publication, stored and stamped by the publish
                                  hook (id, seq, ts) before the gateway broadcasts it
                      `typing`    a client's ephemeral publication: accepted, never stored
                      `read`      {user, seq}: a member read up to message `seq` (backend)
                      `members`   the member list changed (backend)
  user:<id>           `unread`    {conversation, unread, last, last_seq, read_seq, v}
                      `presence`  {user, online, v, at}: a contact came online or went offline
                      `conversation`  {conversation, presence}: you were added to one

Pages apply `unread` and `presence` only when their `v` is newer than what they show, so
the order in which a snapshot and these events arrive does not matter.
"""

import json
import re

from switchboard import RpcError, now_ms

USERS = {"alice": "Alice", "bob": "Bob", "carol": "Carol", "eve": "Eve"}
SEED = [
    {"id": "alice-bob", "title": None, "members": ["alice", "bob"]},
    {"id": "weekend-trip", "title": "Weekend trip", "members": ["alice", "bob", "carol"]},
    {"id": "carol-eve", "title": None, "members": ["carol", "eve"]},
]

MAX_LENGTH = 2000  # characters of a message
RECENT = 50  # messages a subscribe answers with
RECENT_BUDGET = 24_000  # ... and at most about this many bytes of them
UNREAD_SCAN = 1000  # unread counts stop at this
ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")

K = "app:chat"
K_USERS = f"{K}:users"  # hash id -> name
K_MESSAGE_ID = f"{K}:message_id"  # the messages' database ids
K_CONVERSATION_ID = f"{K}:conversation_id"
K_OFFLINE_DUE = f"{K}:offline_due"  # sorted set: user -> when to say they went offline


def k_conv(c):
    return f"{K}:conv:{c}"  # hash: title, direct, created_at, created_by


def k_members(c):
    return f"{K}:conv:{c}:members"  # set of user ids


def k_messages(c):
    return f"{K}:conv:{c}:messages"  # sorted set: message JSON, score = seq


def k_seq(c):
    return f"{K}:conv:{c}:seq"  # the conversation's last seq


def k_cids(c):
    return f"{K}:conv:{c}:cids"  # hash "<user>:<cid>" -> seq: a resent message is stored once


def k_reads(c):
    return f"{K}:conv:{c}:read"  # hash user -> seq read up to


def k_user_convs(u):
    return f"{K}:user:{u}:conversations"  # set of conversation ids


def k_online(u):
    return f"{K}:online:{u}"  # set of the user's connection ids (from the lifecycle stream)


def k_presence(u):
    return f"{K}:presence:{u}"  # hash: online (0/1, as published), v, at


def conversation_channel(c):
    return f"conversation:{c}"


# Stores a message once per (user, cid): seq and id come from counters, in the same atomic
# step that stores it, so messages are in seq order whoever stores them.
STORE_MESSAGE = """
-- KEYS: seq counter, messages, cids, message id counter
-- ARGV: "<user>:<cid>" (or ""), the message JSON after its opening brace
if ARGV[1] ~= '' then
  local seq = redis.call('HGET', KEYS[3], ARGV[1])
  if seq then
    local stored = redis.call('ZRANGEBYSCORE', KEYS[2], seq, seq)[1]
    if stored then return {0, stored} end
  end
end
local seq = redis.call('INCR', KEYS[1])
local id = redis.call('INCR', KEYS[4])
local message = '{"id":' .. id .. ',"seq":' .. seq .. ',' .. ARGV[2]
redis.call('ZADD', KEYS[2], seq, message)
if ARGV[1] ~= '' then redis.call('HSET', KEYS[3], ARGV[1], seq) end
return {1, message}
"""

# Moves a user's read position forward (never back, never past the last message).
ADVANCE_READ = """
-- KEYS: reads, seq counter; ARGV: user, seq
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local want = math.min(tonumber(ARGV[2]), last)
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if want > old then
  redis.call('HSET', KEYS[1], ARGV[1], want)
  return {1, want, last}
end
return {0, old, last}
"""

# One consistent reading of a user's unread state in a conversation.
UNREAD_STATE = """
-- KEYS: seq counter, reads, messages; ARGV: user, scan limit
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local read = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local count = 0
local newer = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. read, '+inf', 'LIMIT', 0, tonumber(ARGV[2]))
for _, message in ipairs(newer) do
  if cjson.decode(message)['from'] ~= ARGV[1] then count = count + 1 end
end
local newest = redis.call('ZRANGE', KEYS[3], -1, -1)[1] or ''
return {last, read, count, newest}
"""


def conversation_of(channel):
    """`conversation:<id>` -> id; anything else is not ours."""
    if not isinstance(channel, str) or not channel.startswith("conversation:"):
        raise RpcError(1400, f"not a conversation channel: {channel!r}")
    return channel.split(":", 1)[1]


class Chat:
    def __init__(self, client, publisher, log=print, offline_grace_ms=5000):
        self.redis = client
        self.publisher = publisher
        self.log = log
        self.offline_grace_ms = offline_grace_ms
        self.store_message = client.register_script(STORE_MESSAGE)
        self.advance_read = client.register_script(ADVANCE_READ)
        self.unread_script = client.register_script(UNREAD_STATE)

    # ---- seed and lookups ----------------------------------------------------------

    def seed(self):
        """The demo's users and conversations, created once (kept across restarts)."""
        self.redis.hset(K_USERS, mapping=USERS)
        for conv in SEED:
            if not self.redis.exists(k_conv(conv["id"])):
                self.create(conv["id"], conv["title"], conv["members"], by="seed")

    def name(self, user):
        return self.redis.hget(K_USERS, user) or user

    def exists(self, c):
        return isinstance(c, str) and ID.match(c) is not None and self.redis.exists(k_conv(c)) == 1

    def require_member(self, c, user):
        if not self.exists(c):
            raise RpcError(1404, f"no conversation {c!r}")
        if not self.redis.sismember(k_members(c), user):
            raise RpcError(1403, f"{user or 'an anonymous user'} is not a member of this conversation")

    def members(self, c):
        return sorted(self.redis.smembers(k_members(c)))

    def contacts(self, user):
        """Everyone who shares a conversation with `user`: who is told when they come and go."""
        convs = self.redis.smembers(k_user_convs(user))
        if not convs:
            return set()
        return self.redis.sunion([k_members(c) for c in convs]) - {user}

    def unread_state(self, c, user):
        last, read, count, newest = self.unread_script(
            keys=[k_seq(c), k_reads(c), k_messages(c)], args=[user, UNREAD_SCAN])
        last, read = int(last), int(read)
        return {
            "conversation": c,
            "unread": int(count),
            "last": json.loads(newest) if newest else None,
            "last_seq": last,
            "read_seq": read,
            # Both counters only grow, so their sum orders the states: the page keeps the
            # state with the highest `v`, whatever order events and snapshots arrive in.
            "v": last + read,
        }

    def summary(self, c, user):
        meta = self.redis.hgetall(k_conv(c))
        members = self.members(c)
        direct = meta.get("direct") == "1"
        title = meta.get("title") or ""
        if direct or not title:
            others = [self.name(m) for m in members if m != user]
            title = title or (" & ".join(others) if others else "Just you")
        summary = {
            "id": c,
            "title": title,
            "direct": direct,
            "members": [{"id": m, "name": self.name(m)} for m in members],
            **self.unread_state(c, user),
        }
        del summary["conversation"]  # it is `id` here
        return summary

    def presence(self, user):
        state = self.redis.hgetall(k_presence(user))
        return {"online": state.get("online") == "1", "v": int(state.get("v", 0)), "at": int(state.get("at", 0))}

    def recent(self, c, before=None, limit=RECENT):
        """The newest `limit` messages (before seq `before`), oldest first, and whether older exist."""
        top = "+inf" if before is None else f"({int(before)}"
        raw = self.redis.zrevrangebyscore(k_messages(c), top, "-inf", start=0, num=limit + 1)
        more = len(raw) > limit
        messages, size = [], 0
        for item in raw[:limit]:
            size += len(item)
            if messages and size > RECENT_BUDGET:
                more = True
                break
            messages.append(json.loads(item))
        messages.reverse()
        return messages, more

    def snapshot(self, c, user):
        """What a page needs to show a conversation: the subscribe hook's initial data."""
        messages, more = self.recent(c)
        reads = {u: int(seq) for u, seq in self.redis.hgetall(k_reads(c)).items()}
        return {"conversation": self.summary(c, user), "messages": messages, "more": more, "reads": reads}

    # ---- hooks (the gateway asks; docs/operations.md "Hooks") -----------------------

    def hook_subscribe(self, request):
        """`sb.subscribe`: members only; the answer carries the conversation's state."""
        c = conversation_of((request["data"] or {}).get("channel"))
        self.require_member(c, request["user"])
        return {"data": self.snapshot(c, request["user"])}

    def hook_publish(self, request):
        """`sb.publish`: stores a message (and stamps it) before the gateway broadcasts it."""
        hook = request["data"] or {}
        c = conversation_of(hook.get("channel"))
        user = request["user"]
        self.require_member(c, user)
        event, data = hook.get("event"), hook.get("data")
        if event == "typing":
            if not isinstance(data, dict) or not isinstance(data.get("typing"), bool):
                raise RpcError(1400, "typing: data must be {\"typing\": true|false}")
            return None  # accepted as is: live only, nothing stored (the page sends it ephemeral)
        if event != "message":
            raise RpcError(1400, f"unknown event {event!r}: publish `message` or `typing`")
        text = data.get("text") if isinstance(data, dict) else None
        if not isinstance(text, str):
            raise RpcError(1400, "a message needs `text`")
        text = text.strip()
        if not text:
            raise RpcError(1400, "message is empty")
        if len(text) > MAX_LENGTH:
            raise RpcError(1413, f"message too long: {len(text)} characters, at most {MAX_LENGTH}")
        cid = data.get("cid")
        if not (isinstance(cid, str) and 0 < len(cid) <= 64):
            cid = None
        message = self.store(c, user, text, cid)
        # After the answer (the gateway broadcasts the message meanwhile): the others'
        # unread counts, and the sender's other devices' previews.
        request.after(lambda: self.notify_unread(c, self.members(c)))
        return {"data": message}

    def store(self, c, user, text, cid):
        rest = json.dumps({
            "conversation": c, "from": user, "name": self.name(user), "text": text,
            "ts": now_ms(), "cid": cid,
        }, separators=(",", ":"))[1:]
        new, message = self.store_message(
            keys=[k_seq(c), k_messages(c), k_cids(c), K_MESSAGE_ID],
            args=[f"{user}:{cid}" if cid else "", rest])
        message = json.loads(message)
        if not int(new):
            self.log(f"{user} resent message {cid} of {c}: stored once, as #{message['id']}")
        return message

    # ---- RPC methods (route `chat.`) -----------------------------------------------

    def get_state(self, request):
        """`chat.get_state`: the conversation list with unread counts, and contacts' presence."""
        user = request["user"]
        convs = [self.summary(c, user) for c in self.redis.smembers(k_user_convs(user))]
        convs.sort(key=lambda s: (-(s["last"]["ts"] if s["last"] else 0), s["title"]))
        return {
            "me": {"id": user, "name": self.name(user)},
            "conversations": convs,
            "presence": {u: self.presence(u) for u in sorted(self.contacts(user))},
        }

    def get_conversation(self, request):
        """`chat.get_conversation {conversation}`: what the subscribe hook answers."""
        c = (request["data"] or {}).get("conversation")
        self.require_member(c, request["user"])
        return self.snapshot(c, request["user"])

    def history(self, request):
        """`chat.history {conversation, before, limit?}`: older messages."""
        data = request["data"] or {}
        c = data.get("conversation")
        self.require_member(c, request["user"])
        before = data.get("before")
        if not isinstance(before, int) or before < 1:
            raise RpcError(1400, "before: the seq of the oldest message shown")
        limit = data.get("limit", RECENT)
        limit = min(max(limit if isinstance(limit, int) else RECENT, 1), 100)
        messages, more = self.recent(c, before=before, limit=limit)
        return {"messages": messages, "more": more}

    def mark_read(self, request):
        """`chat.mark_read {conversation, seq}`: read receipts and the reader's unread count."""
        data = request["data"] or {}
        c, seq, user = data.get("conversation"), data.get("seq"), request["user"]
        self.require_member(c, user)
        if not isinstance(seq, int) or seq < 0:
            raise RpcError(1400, "seq: the seq of the newest message read")
        moved, read, last = (int(x) for x in self.advance_read(keys=[k_reads(c), k_seq(c)], args=[user, seq]))
        if moved:
            def tell():
                # Into the conversation (kept in its history, so a page that reconnects
                # recovers it), then to every device of the reader.
                self.publisher.publish(conversation_channel(c), {
                    "user": user, "name": self.name(user), "seq": read, "at": now_ms(),
                }, event="read", idempotency_key=f"read-{user}-{read}")
                self.notify_unread(c, [user])
            request.after(tell)
        return {"read_seq": read, "last_seq": last}

    def create_conversation(self, request):
        """`chat.create_conversation {members, title?}`: the caller and `members`."""
        data = request["data"] or {}
        user = request["user"]
        if user not in USERS:
            raise RpcError(1403, f"{user or 'an anonymous user'} cannot create conversations")
        wanted = data.get("members")
        if not isinstance(wanted, list) or not all(isinstance(m, str) for m in wanted):
            raise RpcError(1400, "members: a list of user ids")
        members = sorted({user, *wanted})
        unknown = [m for m in members if m not in USERS]
        if unknown:
            raise RpcError(1404, f"no user {unknown[0]!r}")
        if len(members) < 2:
            raise RpcError(1400, "a conversation needs someone else")
        title = data.get("title")
        title = title.strip()[:80] if isinstance(title, str) and title.strip() else None
        if title is None and len(members) == 2:
            c = "-".join(members)  # one direct conversation per pair
            if self.exists(c):
                return self.summary(c, user)
        else:
            c = f"g{self.redis.incr(K_CONVERSATION_ID)}"
        self.create(c, title, members, by=user)
        request.after(lambda: self.tell_added(c, members))
        return self.summary(c, user)

    def add_member(self, request):
        """`chat.add_member {conversation, user}`: any member may add someone to a group."""
        data = request["data"] or {}
        c, new, user = data.get("conversation"), data.get("user"), request["user"]
        self.require_member(c, user)
        if self.redis.hget(k_conv(c), "direct") == "1":
            raise RpcError(1400, "a direct conversation has two members: create a group instead")
        if new not in USERS:
            raise RpcError(1404, f"no user {new!r}")
        if self.redis.sadd(k_members(c), new):
            self.redis.sadd(k_user_convs(new), c)

            def tell():
                members = self.members(c)
                self.publisher.publish(conversation_channel(c), {
                    "members": [{"id": m, "name": self.name(m)} for m in members], "added": new, "by": user,
                }, event="members", idempotency_key=f"members-{c}-{new}-{len(members)}")
                self.tell_added(c, [new])
            request.after(tell)
        return self.summary(c, user)

    def create(self, c, title, members, by):
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(k_conv(c), mapping={
            "title": title or "", "direct": "1" if title is None and len(members) == 2 else "0",
            "created_at": now_ms(), "created_by": by,
        })
        pipe.sadd(k_members(c), *members)
        for m in members:
            pipe.sadd(k_user_convs(m), c)
        pipe.execute()

    def tell_added(self, c, users):
        """Tells new members of their conversation (and its members' presence), and the
        other members of the newcomers' presence: they may be new contacts."""
        members = self.members(c)
        for u in users:
            self.publisher.publish(f"user:{u}", {
                "conversation": self.summary(c, u),
                "presence": {m: self.presence(m) for m in members if m != u},
            }, event="conversation", idempotency_key=f"conversation-{c}-{u}")
            self.share_presence(u, [m for m in members if m != u])

    def share_presence(self, user, contacts):
        state = self.presence(user)
        if state["v"] == 0:
            return  # never connected: offline, which is what pages assume
        event = {"user": user, "name": self.name(user), **state}
        for contact in contacts:
            # The key is per channel: a contact told of this version before gets it once.
            self.publisher.publish(f"user:{contact}", event, event="presence", idempotency_key=f"presence-{user}-{state['v']}")

    def notify_unread(self, c, users):
        """An `unread` update to each user's personal channel (every device of theirs)."""
        for u in users:
            state = self.unread_state(c, u)
            self.publisher.publish(f"user:{u}", state, event="unread", idempotency_key=f"unread-{c}-{state['v']}")

    # ---- online state (the lifecycle stream) ----------------------------------------

    def on_lifecycle(self, fields):
        """A lifecycle entry: keeps each user's set of connections, publishes transitions.

        Online is published at once; offline only when no connection came back within
        `offline_grace_ms` (see `tick`): a page that reloads, or moves to another node
        because its node died, is back within moments, and its contacts should not see
        it blink. Idempotent (at-least-once delivery): adding or removing a connection
        twice changes nothing, a deadline already set is kept, and a transition already
        published is not published again.
        """
        event, user, client = fields.get("event"), fields.get("user") or "", fields.get("client")
        if event not in ("connect", "disconnect") or not user or not client:
            return  # anonymous connections and subscribe events: nothing to track
        pipe = self.redis.pipeline(transaction=True)
        if event == "connect":
            pipe.sadd(k_online(user), client)
        else:
            pipe.srem(k_online(user), client)
        pipe.scard(k_online(user))
        connections = pipe.execute()[-1]
        if connections > 0:
            self.redis.zrem(K_OFFLINE_DUE, user)
            self.sync_presence(user, True)
        elif self.presence(user)["online"]:
            self.redis.zadd(K_OFFLINE_DUE, {user: now_ms() + self.offline_grace_ms}, nx=True)

    def tick(self):
        """Publishes the offline transitions whose grace period is over (lifecycle thread)."""
        for user, due in self.redis.zrangebyscore(K_OFFLINE_DUE, "-inf", now_ms(), withscores=True):
            if self.redis.scard(k_online(user)) == 0:
                self.sync_presence(user, False, at=int(due) - self.offline_grace_ms)
            self.redis.zrem(K_OFFLINE_DUE, user)

    def sync_presence(self, user, online, at=None):
        state = self.presence(user)
        if state["online"] == online:
            return  # no change, or already published
        v, at = state["v"] + 1, at or now_ms()
        event = {"user": user, "name": self.name(user), "online": online, "v": v, "at": at}
        # Publish first, commit after: if a publish fails, the entry is handled again with
        # the same `v`, and the idempotency keys keep contacts from getting it twice.
        for contact in sorted(self.contacts(user)):
            self.publisher.publish(f"user:{contact}", event, event="presence", idempotency_key=f"presence-{user}-{v}")
        self.redis.hset(k_presence(user), mapping={"online": "1" if online else "0", "v": v, "at": at})
        self.log(f"{user} is {'online' if online else 'offline'} (v{v})")

    # ---- the backend's truth, for the dev HTTP endpoints and the tests --------------

    def truth(self, c):
        if not self.exists(c):
            raise RpcError(1404, f"no conversation {c!r}")
        messages = [json.loads(m) for m in self.redis.zrange(k_messages(c), 0, -1)]
        return {
            "id": c,
            "members": self.members(c),
            "messages": messages,
            "reads": {u: int(seq) for u, seq in self.redis.hgetall(k_reads(c)).items()},
            "last_seq": int(self.redis.get(k_seq(c)) or 0),
        }

    def online(self):
        return {u: {"connections": sorted(self.redis.smembers(k_online(u))), **self.presence(u)} for u in USERS}
