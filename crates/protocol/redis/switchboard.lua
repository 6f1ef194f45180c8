#!lua name=switchboard
-- Switchboard's Redis Functions library (Redis >= 7). Loaded by every gateway node at
-- start and after every reconnect (FUNCTION LOAD REPLACE), and by the publisher crate.
-- docs/redis.md is the contract; keep the two in step. The library version below is
-- returned by sb_version so callers can tell which contract a server speaks.
--
-- Every key of one channel carries the channel name as a hash tag, {<channel>}, so that
-- all of them live in one slot of a Redis Cluster.

local VERSION = '1'

-- A new epoch: server time in microseconds, hex. Unique per stream reset because resets
-- of one stream are serialized by Redis.
local function new_epoch()
  local t = redis.call('TIME')
  return string.format('%x%05x', tonumber(t[1]), tonumber(t[2]))
end

-- Live channels are sharded pub/sub on a Redis Cluster (SPUBLISH: a publication travels
-- only inside the shard that owns the channel's slot, which its hash tag shares with the
-- channel's keys) and classic pub/sub elsewhere (PUBLISH, the contract services that
-- publish ephemeral publications rely on). Found out on first use, since a library
-- cannot call Redis while it loads; a server changes mode only by restarting, which
-- loads the library again.
-- A caller whose ACL refuses CLUSTER MYID cannot tell: its call publishes classically
-- and nothing is remembered, so it cannot decide for every later caller.
local live_command = nil

local function publish_live(channel, message)
  local command = live_command
  if not command then
    local reply = redis.pcall('CLUSTER', 'MYID')
    local refused = type(reply) == 'table' and reply['err']
    command = refused and 'PUBLISH' or 'SPUBLISH'
    if not refused or not string.find(refused, 'NOPERM', 1, true) then
      live_command = command
    end
  end
  return redis.call(command, channel, message)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The stream's epoch, creating the stream metadata (and dropping any orphaned stream
-- entries, whose offsets would clash) when it does not exist. New metadata expires after
-- <meta ttl ms> unless a publication extends it.
local function ensure_epoch(stream, meta, meta_ttl)
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    epoch = new_epoch()
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'epoch', epoch, 'offset', 0)
    redis.call('PEXPIRE', meta, meta_ttl)
  end
  return epoch
end

-- A whole number in [min, 2^53), or nil. tonumber rather than a pattern match: on
-- sb_publish's path the pattern cost ~0.4 us of Redis CPU per argument.
local function whole(value, min)
  local n = tonumber(value)
  if n and n >= min and n < 9007199254740992 and n == math.floor(n) then
    return n
  end
  return nil
end

-- Deepest nesting a body may have: 100 levels of `data` (the protocol crate's
-- MAX_NESTING_CEILING) inside the body object, or a `from` client info whose `info` is
-- nested 100 levels. Gateways parse every stored body with a fixed limit of 128 levels,
-- so a body accepted here can always be delivered in every wire format and read back.
local MAX_BODY_DEPTH = 103

local function check_body(body)
  local previous = cjson.decode_max_depth()
  cjson.decode_max_depth(MAX_BODY_DEPTH)
  local ok, decoded = pcall(cjson.decode, body)
  cjson.decode_max_depth(previous)
  if not ok or type(decoded) ~= 'table' or decoded['data'] == nil then
    return false
  end
  local event = decoded['event']
  if event ~= nil and event ~= cjson.null and type(event) ~= 'string' then
    return false
  end
  return true
end

-- FCALL sb_publish 2|3 <stream key> <meta key> [<idempotency key>]
--       <live channel> <body JSON> <history size> <history ttl ms> <meta ttl ms>
--       [<idempotency ttl ms>] [checked|hold|checked+hold]
-- Assigns the next offset, appends to the stream (trimmed to <history size>), keeps the
-- keys alive and publishes {"o":offset,"e":epoch,"t":ts,"b":body} on <live channel>, all
-- in one atomic step. Returns {offset, epoch, duplicate(0|1)}. With an idempotency key
-- that was already used within its TTL, nothing is published and the first result is
-- returned. `checked` (the 7th argument) skips the body check, for callers that built the
-- body with a JSON serializer (gateways, the publisher crate): decoding it here is a
-- sixth of the function's cost.
--
-- Cost: every redis.call is ~1.5-2.5 us of Redis CPU, so the common path makes five
-- (HMGET, TIME, HINCRBY, XADD, PUBLISH). TTLs are not refreshed on every publication:
-- the meta field `x` holds when the stream expires, and only when less than one history
-- TTL is left are both keys extended to 1.5 TTLs (so they always outlive the newest
-- entry by at least one TTL; readers hide entries older than the TTL anyway).
--
-- `hold` (replicated publishing, broker.ack_replicas > 0): the publication is stored but
-- neither published live nor shown to readers yet. The reply carries the live envelope
-- as a 4th item; the caller sends WAIT <replicas> <timeout> on the same connection and,
-- once enough replicas have it, sb_commit, which makes it visible and publishes it.
-- Readers see offsets up to the meta field `c` (committed), so nothing a failover to a
-- replica could roll back is ever delivered. An idempotent repeat of a held publication
-- that is not committed yet returns its envelope again (rebuilt from the stream), so a
-- retry after a failed WAIT commits it. A publish without `hold` removes `c`: mixing the
-- two on one channel gives up the guarantee, not delivery.
local function envelope_of(offset, epoch, ts, body)
  return '{"o":' .. offset .. ',"e":"' .. epoch .. '","t":' .. ts .. ',"b":' .. body .. '}'
end

local function held_envelope(stream, meta, offset, epoch)
  local state = redis.call('HMGET', meta, 'epoch', 'c')
  local committed = tonumber(state[2])
  if state[1] ~= epoch or not committed or committed >= offset then
    return nil
  end
  local found = redis.call('XRANGE', stream, offset .. '-0', offset .. '-0')
  if #found == 0 then
    return nil
  end
  local fields, ts, body = found[1][2], nil, nil
  for i = 1, #fields, 2 do
    if fields[i] == 't' then ts = fields[i + 1] elseif fields[i] == 'b' then body = fields[i + 1] end
  end
  return envelope_of(offset, epoch, ts, body)
end

local function publish(keys, args)
  local stream, meta, idem = keys[1], keys[2], keys[3]
  local live, body = args[1], args[2]
  local size, ttl, meta_ttl = whole(args[3], 0), whole(args[4], 1), whole(args[5], 1)
  local idem_ttl = whole(args[6] or '300000', 1)
  if not live or not body or not size or not ttl or not meta_ttl or not idem_ttl then
    return redis.error_reply('ERR sb_publish: expected <live channel> <body> <history size: integer >= 0> <history ttl ms: integer >= 1> <meta ttl ms: integer >= 1> [<idempotency ttl ms: integer >= 1>] [checked]')
  end
  local flags = args[7] or ''
  local hold = flags == 'hold' or flags == 'checked+hold'
  if idem then
    local seen = redis.call('GET', idem)
    if seen then
      local sep = string.find(seen, ':', 1, true)
      local offset, epoch = tonumber(string.sub(seen, 1, sep - 1)), string.sub(seen, sep + 1)
      local envelope = hold and held_envelope(stream, meta, offset, epoch)
      if envelope then
        return {offset, epoch, 1, envelope}
      end
      return {offset, epoch, 1}
    end
  end
  if flags ~= 'checked' and flags ~= 'checked+hold' and not check_body(body) then
    return redis.error_reply('ERR sb_publish: body must be a JSON object nested at most ' .. MAX_BODY_DEPTH .. ' levels, with a "data" field and an optional string "event"')
  end
  local keep = math.max(meta_ttl, ttl)
  local state = redis.call('HMGET', meta, 'epoch', 'x', 'c')
  local epoch, expires, committed = state[1], tonumber(state[2]) or 0, state[3]
  if not epoch then
    -- A new stream (or its metadata expired): any orphaned entries belong to the old
    -- epoch, whose offsets would clash.
    epoch = new_epoch()
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'epoch', epoch, 'offset', 0)
    expires = 0
    committed = nil
  end
  local offset = redis.call('HINCRBY', meta, 'offset', 1)
  if hold and not committed then
    redis.call('HSET', meta, 'c', offset - 1)
  elseif committed and not hold then
    redis.call('HDEL', meta, 'c')
  end
  local ts = now_ms()
  if size > 0 then
    redis.call('XADD', stream, 'MAXLEN', size, offset .. '-0', 't', ts, 'b', body)
  end
  if expires - ts < ttl then
    local stream_life = math.floor(ttl * 1.5)
    if size > 0 then
      redis.call('PEXPIRE', stream, stream_life)
    end
    redis.call('PEXPIRE', meta, math.floor(keep * 1.5))
    redis.call('HSET', meta, 'x', ts + stream_life)
  end
  local envelope = envelope_of(offset, epoch, ts, body)
  if idem then
    redis.call('SET', idem, offset .. ':' .. epoch, 'PX', idem_ttl)
  end
  if hold then
    return {offset, epoch, 0, envelope}
  end
  publish_live(live, envelope)
  return {offset, epoch, 0}
end

-- FCALL sb_commit 2 <stream key> <meta key> <live channel> <epoch> <offset> <envelope>
-- The second half of a held publication (see sb_publish): once WAIT confirmed that
-- enough replicas hold it, moves the committed offset `c` up to <offset> (never down)
-- and publishes <envelope> on <live channel>. Returns 1, or 0 when the channel's epoch
-- is no longer <epoch> (its metadata expired or was lost meanwhile: nothing is
-- published, the publication belonged to the old epoch).
local function commit(keys, args)
  local meta, live, epoch, offset, envelope = keys[2], args[1], args[2], whole(args[3], 1), args[4]
  if not live or not epoch or not offset or not envelope then
    return redis.error_reply('ERR sb_commit: expected <live channel> <epoch> <offset: integer >= 1> <envelope>')
  end
  local state = redis.call('HMGET', meta, 'epoch', 'c')
  if state[1] ~= epoch then
    return 0
  end
  local committed = tonumber(state[2])
  if committed and committed < offset then
    redis.call('HSET', meta, 'c', offset)
  end
  publish_live(live, envelope)
  return 1
end

-- Reads a channel's stream for sb_history and sb_join: returns epoch, top, truncated
-- (true when <max bytes> cut the read short) and the entries as a flat list
-- {offset1, ts1, body1, ...}, oldest first. See sb_history for the meaning of the rest.
local function read_stream(stream, meta, mode, after, limit, ttl, meta_ttl, unpublished_ttl, max_bytes)
  local epoch = ensure_epoch(stream, meta, unpublished_ttl)
  local state = redis.call('HMGET', meta, 'offset', 'c')
  local top, committed = tonumber(state[1]), tonumber(state[2])
  if committed then
    -- Held publications above `c` are not visible yet (see sb_publish). A reader that
    -- already holds a higher offset got it from a commit that a failover's promoted
    -- replica did not receive: the entries up to it were replicated, so they count.
    local held = top
    top = committed
    if mode == 'after' and after > top and after <= held then
      top = after
    end
  end
  if top > 0 then
    -- Readers (subscribers) keep a published stream's metadata alive too, so an active
    -- channel keeps its epoch between publications.
    redis.call('PEXPIRE', meta, math.max(meta_ttl, ttl), 'GT')
  end
  local entries = {}
  if limit > 0 then
    if mode == 'after' then
      entries = redis.call('XRANGE', stream, '(' .. after .. '-0', top .. '-0', 'COUNT', limit)
    else
      local newest = redis.call('XREVRANGE', stream, top .. '-0', '-', 'COUNT', limit)
      for i = #newest, 1, -1 do
        entries[#entries + 1] = newest[i]
      end
    end
  end
  local oldest = now_ms() - ttl
  local out, truncated = {}, false
  local spent, count = 0, 0
  for _, entry in ipairs(entries) do
    local fields = entry[2]
    local ts, body
    for i = 1, #fields, 2 do
      if fields[i] == 't' then ts = tonumber(fields[i + 1]) elseif fields[i] == 'b' then body = fields[i + 1] end
    end
    if ts and ts >= oldest then
      spent = spent + 96 + #(body or '')
      if max_bytes and count > 0 and spent > max_bytes then
        truncated = true
        break
      end
      local id = entry[1]
      out[#out + 1] = tonumber(string.sub(id, 1, string.find(id, '-', 1, true) - 1))
      out[#out + 1] = ts
      out[#out + 1] = body
      count = count + 1
    end
  end
  return epoch, top, truncated, out
end

-- FCALL sb_history 2 <stream key> <meta key> <mode: latest|after> <offset> <limit> <history ttl ms> <meta ttl ms> [<unpublished ttl ms> <max bytes>]
-- Returns {epoch, top, offset1, ts1, body1, offset2, ...}, oldest first: the newest <limit>
-- entries (latest), or up to <limit> entries after <offset> (after). Entries older than
-- <history ttl ms> are not returned. Creates the stream metadata if missing, so that a
-- subscriber learns the epoch before the first publication; metadata that only a read
-- created expires after <unpublished ttl ms> (default: <meta ttl ms>), and reads extend
-- only the metadata of streams that were published to, so reading leaves no lasting
-- state. With <max bytes>, entries are returned only while their sizes (96 + the body's
-- length each) add up to at most <max bytes> (always at least one), and the reply is
-- {epoch, top, truncated (0|1), offset1, ts1, body1, ...}.
local function history(keys, args)
  local stream, meta = keys[1], keys[2]
  local mode, after, limit = args[1], whole(args[2], 0), whole(args[3], 0)
  local ttl, meta_ttl = whole(args[4], 1), whole(args[5], 1)
  local unpublished_ttl = whole(args[6] or args[5], 1)
  local max_bytes = args[7] and whole(args[7], 1)
  if (mode ~= 'after' and mode ~= 'latest') or not after or not limit or not ttl or not meta_ttl
      or not unpublished_ttl or (args[7] and not max_bytes) then
    return redis.error_reply('ERR sb_history: expected <latest|after> <offset> <limit> <history ttl ms> <meta ttl ms> [<unpublished ttl ms> <max bytes>] (whole numbers)')
  end
  local epoch, top, truncated, entries =
    read_stream(stream, meta, mode, after, limit, ttl, meta_ttl, unpublished_ttl, max_bytes)
  local out = {epoch, top}
  if max_bytes then
    out[3] = truncated and 1 or 0
  end
  for _, item in ipairs(entries) do
    out[#out + 1] = item
  end
  return out
end

local function presence_remove_one(hash, zset, users, client)
  local info = redis.call('HGET', hash, client)
  if not info then
    return nil
  end
  redis.call('HDEL', hash, client)
  redis.call('ZREM', zset, client)
  local ok, decoded = pcall(cjson.decode, info)
  local user = (ok and type(decoded) == 'table' and decoded['user']) or ''
  if redis.call('HINCRBY', users, user, -1) <= 0 then
    redis.call('HDEL', users, user)
  end
  return info
end

-- Expired entries are removed and returned so that exactly one caller emits their leave.
local function presence_expire(hash, zset, users)
  local expired = redis.call('ZRANGEBYSCORE', zset, '-inf', now_ms())
  local removed = {}
  for _, client in ipairs(expired) do
    local info = presence_remove_one(hash, zset, users, client)
    if info then
      removed[#removed + 1] = info
    end
  end
  return removed
end

local function presence_add_one(hash, zset, users, client, user, info, ttl)
  if redis.call('HSET', hash, client, info) == 1 then
    redis.call('HINCRBY', users, user, 1)
  end
  redis.call('ZADD', zset, now_ms() + ttl, client)
  for _, key in ipairs({hash, zset, users}) do
    redis.call('PEXPIRE', key, ttl * 2)
  end
end

-- FCALL sb_presence_add 3 <hash> <zset> <users> <client id> <user> <client info JSON> <ttl ms>
local function presence_add(keys, args)
  presence_add_one(keys[1], keys[2], keys[3], args[1], args[2], args[3], tonumber(args[4]))
  return 1
end

-- FCALL sb_presence_refresh 3 <hash> <zset> <users> <ttl ms> (<client id> <user> <client info JSON>)...
-- Extends the given entries, re-adding any that expired or were lost (a Redis restart).
local function presence_refresh(keys, args)
  local ttl = tonumber(args[1])
  local expiry = now_ms() + ttl
  for i = 2, #args - 2, 3 do
    if redis.call('HSET', keys[1], args[i], args[i + 2]) == 1 then
      redis.call('HINCRBY', keys[3], args[i + 1], 1)
    end
    redis.call('ZADD', keys[2], expiry, args[i])
  end
  for _, key in ipairs(keys) do
    redis.call('PEXPIRE', key, ttl * 2)
  end
  return 1
end

-- FCALL sb_presence_remove 3 <hash> <zset> <users> <client id>
local function presence_remove(keys, args)
  if presence_remove_one(keys[1], keys[2], keys[3], args[1]) then
    return 1
  end
  return 0
end

-- FCALL sb_presence_expire 3 <hash> <zset> <users>  -> {expired client info JSON...}
local function presence_expire_fn(keys, args)
  return presence_expire(keys[1], keys[2], keys[3])
end

-- FCALL sb_presence_list 3 <hash> <zset> <users> -> {expired..., '', present client info JSON...}
local function presence_list(keys, args)
  local out = presence_expire(keys[1], keys[2], keys[3])
  out[#out + 1] = ''
  for _, info in ipairs(redis.call('HVALS', keys[1])) do
    out[#out + 1] = info
  end
  return out
end

-- FCALL sb_presence_stats 3 <hash> <zset> <users> -> {clients, users, expired client info JSON...}
local function presence_stats(keys, args)
  local expired = presence_expire(keys[1], keys[2], keys[3])
  local out = {redis.call('HLEN', keys[1]), redis.call('HLEN', keys[3])}
  for _, info in ipairs(expired) do
    out[#out + 1] = info
  end
  return out
end

-- FCALL sb_ack 1 <acks> <user> <offset> <epoch> <ttl ms>
-- Moves the user's acknowledged position forward (never back within one epoch).
local function ack(keys, args)
  local current = redis.call('HGET', keys[1], args[1])
  if current then
    local sep = string.find(current, ':', 1, true)
    local offset, epoch = tonumber(string.sub(current, 1, sep - 1)), string.sub(current, sep + 1)
    if epoch == args[3] and offset >= tonumber(args[2]) then
      return 0
    end
  end
  redis.call('HSET', keys[1], args[1], args[2] .. ':' .. args[3])
  redis.call('PEXPIRE', keys[1], tonumber(args[4]))
  return 1
end

-- FCALL sb_join 6 <stream key> <meta key> <presence hash> <presence zset> <presence users> <acks>
--       <mode: latest|after|acked> <offset> <limit> <history ttl ms> <meta ttl ms> <unpublished ttl ms>
--       <presence ttl ms, 0: no presence> <client id> <user> <client info JSON> <live channel> <join envelope, '': none>
-- Everything a fresh subscription needs from Redis, in one atomic step (the gateway calls
-- it once per subscribe, after its pub/sub connection is subscribed to <live channel>):
-- reads the stream as sb_history does (latest: the newest <limit> entries; after: up to
-- <limit> entries after <offset>; acked: the newest <limit> entries and <user>'s
-- acknowledged position from <acks>), then, with a presence TTL, records the client as
-- sb_presence_add does, then publishes <join envelope> on <live channel>. Returns
-- {epoch, top, acked offset, acked epoch, offset1, ts1, body1, ...} (acked fields '' when
-- there is no acknowledged position or the mode is not acked).
local function join(keys, args)
  local mode, after, limit = args[1], whole(args[2], 0), whole(args[3], 0)
  local ttl, meta_ttl, unpublished_ttl = whole(args[4], 1), whole(args[5], 1), whole(args[6], 1)
  local presence_ttl = whole(args[7], 0)
  local client, user, info, live, envelope = args[8], args[9], args[10], args[11], args[12]
  if #keys ~= 6 or (mode ~= 'after' and mode ~= 'latest' and mode ~= 'acked') or not after or not limit
      or not ttl or not meta_ttl or not unpublished_ttl or not presence_ttl or not envelope then
    return redis.error_reply('ERR sb_join: expected 6 keys and <latest|after|acked> <offset> <limit> <history ttl ms> <meta ttl ms> <unpublished ttl ms> <presence ttl ms> <client id> <user> <client info> <live channel> <join envelope> (whole numbers)')
  end
  local acked_offset, acked_epoch = '', ''
  if mode == 'acked' then
    local current = redis.call('HGET', keys[6], user)
    if current then
      local sep = string.find(current, ':', 1, true)
      if sep then
        acked_offset, acked_epoch = string.sub(current, 1, sep - 1), string.sub(current, sep + 1)
      end
    end
    mode = 'latest'
  end
  local epoch, top, _, entries =
    read_stream(keys[1], keys[2], mode, after, limit, ttl, meta_ttl, unpublished_ttl, nil)
  if presence_ttl > 0 then
    presence_add_one(keys[3], keys[4], keys[5], client, user, info, presence_ttl)
  end
  if envelope ~= '' then
    publish_live(live, envelope)
  end
  local out = {epoch, top, acked_offset, acked_epoch}
  for _, item in ipairs(entries) do
    out[#out + 1] = item
  end
  return out
end

-- FCALL sb_leave 3 <presence hash> <presence zset> <presence users> <client id> <tracked: 1|0> <live channel> <leave envelope, '': none>
-- The counterpart of sb_join: with <tracked> 1, removes the client's presence entry; then
-- publishes <leave envelope> on <live channel> unless the entry was tracked and already
-- gone (an expired entry had its leave published by whoever expired it). Returns 1 when
-- the client was present (always 1 with <tracked> 0), 0 otherwise.
local function leave(keys, args)
  local client, tracked, live, envelope = args[1], args[2], args[3], args[4]
  if not client or (tracked ~= '1' and tracked ~= '0') or not live or not envelope then
    return redis.error_reply('ERR sb_leave: expected <client id> <tracked: 1|0> <live channel> <leave envelope>')
  end
  local present = 1
  if tracked == '1' and not presence_remove_one(keys[1], keys[2], keys[3], client) then
    present = 0
  end
  if present == 1 and envelope ~= '' then
    publish_live(live, envelope)
  end
  return present
end

-- RPC: a worker's answer to the request entry <entry> of the request stream KEYS[1],
-- read through consumer group ARGV[1]. Exactly one answer per request reaches the caller:
-- the first XACK wins (a second worker that claimed the same entry gets 'duplicate').
-- The entry is deleted once answered, so the stream holds only unanswered requests.
-- A reply after the request's deadline is dropped ('late'): the caller has already had
-- its timeout error. The reply travels to the caller's node as '<request id>\n<reply>'
-- on the entry's reply_to pub/sub channel; the node parses and checks <reply>.
-- Returns 'ok', 'duplicate', 'late' or 'gone' (the entry was trimmed before an answer).
local function rpc_reply(keys, args)
  local stream, group, entry, reply = keys[1], args[1], args[2], args[3]
  if not reply then
    return redis.error_reply('ERR usage: FCALL sb_rpc_reply 1 <stream> <group> <entry id> <reply json>')
  end
  if redis.call('XACK', stream, group, entry) == 0 then
    return 'duplicate'
  end
  local found = redis.call('XRANGE', stream, entry, entry)
  redis.call('XDEL', stream, entry)
  if #found == 0 then
    return 'gone'
  end
  local fields = found[1][2]
  local request, reply_to, deadline
  for i = 1, #fields, 2 do
    local name = fields[i]
    if name == 'id' then
      request = fields[i + 1]
    elseif name == 'reply_to' then
      reply_to = fields[i + 1]
    elseif name == 'deadline' then
      deadline = tonumber(fields[i + 1])
    end
  end
  if not request or not reply_to then
    return 'gone'
  end
  if deadline and now_ms() > deadline then
    return 'late'
  end
  redis.call('PUBLISH', reply_to, request .. '\n' .. reply)
  return 'ok'
end

-- Lifecycle stream (docs/redis.md "Lifecycle"). All keys share the hash tag
-- {lifecycle}: KEYS[1] the events stream, KEYS[2] the node's connections hash
-- (client -> user), KEYS[3] the node's alive key, KEYS[4] the set of nodes.

-- Registers a connection and records its connect event, unless the node is not alive
-- in this life (its alive key expired, so it may have been reaped, or holds another
-- life's value): then returns 0 and does nothing.
-- ARGV: max_len, node, client, user, info JSON ('' for none), resumed ('1' or ''), life.
local function lifecycle_connect(keys, args)
  local events, conns, alive, nodes = keys[1], keys[2], keys[3], keys[4]
  local max_len, node, client, user, info, resumed = args[1], args[2], args[3], args[4], args[5], args[6]
  if redis.call('GET', alive) ~= args[7] then
    return 0
  end
  if redis.call('HEXISTS', conns, client) == 1 then
    -- Already recorded (still registered after the node was away, or recorded by the
    -- beat while this call waited for it): one connect event per connection.
    return 1
  end
  redis.call('HSET', conns, client, user)
  redis.call('SADD', nodes, node)
  local fields = {'event', 'connect', 'client', client, 'user', user, 'node', node}
  if info ~= '' then
    table.insert(fields, 'info')
    table.insert(fields, info)
  end
  if resumed == '1' then
    table.insert(fields, 'resumed')
    table.insert(fields, '1')
  end
  redis.call('XADD', events, 'MAXLEN', '~', max_len, '*', unpack(fields))
  return 1
end

-- Records a disconnect, once: only while the connection is still registered.
-- ARGV: max_len, node, client, code, reason. Returns 1, or 0 when already recorded.
local function lifecycle_disconnect(keys, args)
  local events, conns = keys[1], keys[2]
  local max_len, node, client, code, reason = args[1], args[2], args[3], args[4], args[5]
  local user = redis.call('HGET', conns, client)
  if not user then
    return 0
  end
  redis.call('HDEL', conns, client)
  redis.call('XADD', events, 'MAXLEN', '~', max_len, '*', 'event', 'disconnect', 'client', client,
    'user', user, 'node', node, 'code', code, 'reason', reason)
  return 1
end

-- Heartbeat: keeps the node alive in this life for ttl ms. Returns 1 when it was not
-- (first beat of the life, or the key expired: the node may have been reaped and
-- registers its connections again). ARGV: node, ttl_ms, life.
local function lifecycle_beat(keys, args)
  local alive, nodes = keys[3], keys[4]
  local was = redis.call('SET', alive, args[3], 'PX', args[2], 'GET')
  redis.call('SADD', nodes, args[1])
  if was == args[3] then
    return 0
  end
  return 1
end

-- Records the disconnect of up to `batch` connections of a dead node (one whose alive
-- key expired; `force` = '1' skips that check, for a node reaping its own previous
-- life at start). Returns the number still registered, or -1 when the node is alive.
-- ARGV: max_len, dead node, batch, reaper node, force.
local function lifecycle_reap(keys, args)
  local events, conns, alive, nodes = keys[1], keys[2], keys[3], keys[4]
  local max_len, dead, batch, reaper, force = args[1], args[2], tonumber(args[3]), args[4], args[5]
  if force ~= '1' and redis.call('EXISTS', alive) == 1 then
    return -1
  end
  local scan = redis.call('HSCAN', conns, '0', 'COUNT', batch)
  local entries = scan[2]
  for i = 1, #entries, 2 do
    local client, user = entries[i], entries[i + 1]
    redis.call('HDEL', conns, client)
    redis.call('XADD', events, 'MAXLEN', '~', max_len, '*', 'event', 'disconnect', 'client', client,
      'user', user, 'node', dead, 'code', '1006', 'reason', 'node lost', 'reaped_by', reaper)
  end
  local left = redis.call('HLEN', conns)
  if left == 0 and (force == '1' or redis.call('EXISTS', alive) == 0) then
    redis.call('SREM', nodes, dead)
  end
  return left
end

local function version()
  return VERSION
end

redis.register_function('sb_publish', publish)
redis.register_function('sb_commit', commit)
redis.register_function('sb_history', history)
redis.register_function('sb_join', join)
redis.register_function('sb_leave', leave)
redis.register_function('sb_presence_add', presence_add)
redis.register_function('sb_presence_refresh', presence_refresh)
redis.register_function('sb_presence_remove', presence_remove)
redis.register_function('sb_presence_expire', presence_expire_fn)
redis.register_function('sb_presence_list', presence_list)
redis.register_function('sb_presence_stats', presence_stats)
redis.register_function('sb_ack', ack)
redis.register_function('sb_rpc_reply', rpc_reply)
redis.register_function('sb_lifecycle_connect', lifecycle_connect)
redis.register_function('sb_lifecycle_disconnect', lifecycle_disconnect)
redis.register_function('sb_lifecycle_beat', lifecycle_beat)
redis.register_function('sb_lifecycle_reap', lifecycle_reap)
redis.register_function{function_name = 'sb_version', callback = version, flags = {'no-writes'}}
