"""The two Switchboard contracts this backend uses, all plain Redis (redis-py >= 4.3),
copied from examples/chat/backend/switchboard.py:

- publishing: one `FCALL sb_publish` per publication (docs/redis.md §4.8), with the
  retention the gateways declare in `sb:namespaces`;
- answering the pages' `rpc` calls of a stream route: a consumer group on
  `sb:rpc:{<route>}` and one `FCALL sb_rpc_reply` per request (docs/redis.md §11).

Nothing here talks to a gateway directly or listens on a port.
"""

import json
import os
import socket
import threading
import time

import redis

HERE = os.path.dirname(os.path.abspath(__file__))
# The gateways load the Functions library themselves; this copy is only used when Redis
# lost it (restarted without persistence) before any gateway reloaded it.
LIBRARY = os.path.join(HERE, "../../../crates/protocol/redis/switchboard.lua")

# Entries read per XREADGROUP / XAUTOCLAIM call. They are handled one after the other.
BATCH = 10


def now_ms():
    return int(time.time() * 1000)


def default_consumer():
    return f"{socket.gethostname()}-{os.getpid()}"


class RpcError(Exception):
    """An application error: the client gets this code (1000..2999) and message."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


class Publisher:
    """`FCALL sb_publish` (docs/redis.md §4.8). Thread-safe: redis-py's client is."""

    def __init__(self, client, idempotency_ttl_ms=300_000):
        self.redis = client
        self.idempotency_ttl_ms = idempotency_ttl_ms  # broker.idempotency_ttl_secs * 1000
        self._retention = {}  # namespace -> the gateways' retention

    def retention(self, channel):
        namespace = channel.split(":", 1)[0] if ":" in channel else ""
        if namespace not in self._retention:
            declared = self.redis.hget("sb:namespaces", namespace)
            if declared is None:
                raise LookupError(f"no gateway declares namespace {namespace!r} (is a gateway running on this Redis?)")
            self._retention[namespace] = json.loads(declared)
        return self._retention[namespace]

    def publish(self, channel, data, event=None, idempotency_key=None):
        """Publishes to a Switchboard channel; returns (offset, epoch, duplicate).

        Give every logical event an idempotency key and reuse it when retrying: a
        publication whose reply was lost is then not published twice.
        """
        ret = self.retention(channel)
        body = {"data": data}
        if event is not None:
            body["event"] = event
        keys = [f"sb:{{{channel}}}:stream", f"sb:{{{channel}}}:meta"]
        args = [
            f"sb:{{{channel}}}:live",
            json.dumps(body, separators=(",", ":"), allow_nan=False),
            ret["history_size"],
            max(ret["history_ttl_ms"], 1),
            max(ret["meta_ttl_ms"], 1),
        ]
        if idempotency_key is not None:
            keys.append(f"sb:{{{channel}}}:idem:{idempotency_key}")
            args.append(self.idempotency_ttl_ms)
        try:
            offset, epoch, duplicate = self.redis.fcall("sb_publish", len(keys), *keys, *args)
        except redis.ResponseError as error:
            if "Function not found" not in str(error):
                raise
            with open(LIBRARY) as library:
                self.redis.function_load(library.read(), replace=True)
            offset, epoch, duplicate = self.redis.fcall("sb_publish", len(keys), *keys, *args)
        return int(offset), epoch, bool(duplicate)


class Request(dict):
    """A request entry's fields (`data` and `info` decoded), plus work to do after the answer."""

    def __init__(self, fields):
        super().__init__(fields)
        self.setdefault("user", "")
        for field in ("data", "info"):
            try:
                self[field] = json.loads(self.get(field) or "null")
            except ValueError:
                self[field] = None  # malformed JSON: the handler sees None
        self.deferred = []

    def after(self, work):
        """Runs `work()` once the answer is sent (side effects the caller need not wait for)."""
        self.deferred.append(work)


class StreamWorker:
    """Serves one stream route (docs/redis.md §11.1), one request at a time, in order.

    `handlers` maps a method name to `handler(request) -> result`; a handler raises
    RpcError for an application error. `answers`, when given, caches answers of calls
    with an idempotency key (`(key, user, method) -> get/put`), so that a resend gets the
    first answer instead of being carried out twice.
    """

    def __init__(self, client, route, handlers, *, group="workers", consumer=None,
                 claim_after_ms=3000, answers=None, log=print, stop=None):
        self.redis = client
        self.stream = f"sb:rpc:{{{route}}}"
        self.handlers = handlers
        self.group = group
        self.consumer = consumer or default_consumer()
        self.claim_after_ms = max(claim_after_ms, 1)
        self.answers = answers
        self.log = log
        self.stop = stop or threading.Event()
        self.claim_cursor = "0-0"
        self.last_claim = 0.0

    def ensure_group(self):
        # From `0`: requests added before the backend started are served too.
        try:
            self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as error:
            if not str(error).startswith("BUSYGROUP"):
                raise

    def run(self):
        need_group = True
        self.log(f"serving {self.stream} as {self.consumer} in group {self.group}")
        while not self.stop.is_set():
            try:
                if need_group:
                    self.ensure_group()
                    need_group = False
                for entry_id, fields in self.next_entries():
                    # Entries read are ours: answer them even when asked to stop.
                    self.handle(entry_id, fields)
            except redis.ResponseError as error:
                if str(error).startswith("NOGROUP"):
                    self.log(f"{self.stream}: consumer group missing (Redis wiped?); creating it again")
                    need_group = True
                else:
                    self.log(f"{self.stream}: redis refused a command: {error}")
                    self.stop.wait(0.5)
            except (redis.ConnectionError, redis.TimeoutError) as error:
                self.log(f"{self.stream}: redis unreachable ({error}); retrying")
                self.stop.wait(0.5)
        self.log(f"{self.stream}: stopped")

    def next_entries(self):
        """Requests of dead workers when a claim round is due, else new requests."""
        if time.monotonic() - self.last_claim >= self.claim_after_ms / 1000:
            self.last_claim = time.monotonic()
            reply = self.redis.xautoclaim(self.stream, self.group, self.consumer,
                                          min_idle_time=self.claim_after_ms,
                                          start_id=self.claim_cursor, count=BATCH)
            self.claim_cursor = reply[0]
            claimed = [(entry_id, fields) for entry_id, fields in reply[1] if fields]
            if claimed:
                self.log(f"{self.stream}: claimed {len(claimed)} request(s) of a dead worker")
                return claimed
        block_ms = max(min(self.claim_after_ms, 2000), 100)
        reply = self.redis.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=BATCH, block=block_ms)
        return [entry for _stream, entries in reply or [] for entry in entries]

    def handle(self, entry_id, fields):
        request = Request(fields)
        method = request.get("method")
        deadline = int(request.get("deadline", 0) or 0)
        if deadline and deadline < now_ms():
            # The caller already got `118 timeout`: answer (it comes back `late`) to delete
            # the entry, without acting on it.
            answer = {"error": {"code": 1504, "message": "expired before the backend took it"}}
        else:
            answer = self.call(request)
        outcome = self.redis.fcall("sb_rpc_reply", 1, self.stream, self.group, entry_id,
                                   json.dumps(answer, separators=(",", ":")))
        if outcome != "ok":
            self.log(f"{method} {request.get('id')}: reply {outcome}")
        for work in request.deferred:
            try:
                work()
            except Exception as error:  # a side effect failing is logged, never the answer
                self.log(f"{method}: after the answer: {error!r}")

    def call(self, request):
        method = request.get("method")
        handler = self.handlers.get(method)
        if handler is None:
            return {"error": {"code": 1404, "message": f"unknown method {method}"}}
        key = request.get("idempotency_key")
        cache = self.answers if key else None
        if cache is not None:
            cached = cache.get(key, request["user"], method)
            if cached is not None:
                return cached
        try:
            answer = {"result": handler(request)}
        except RpcError as error:
            answer = {"error": {"code": error.code, "message": error.message}}
        except Exception as error:  # a bug in a handler must not kill the worker
            self.log(f"{method} failed: {error!r}")
            request.deferred.clear()
            return {"error": {"code": 1500, "message": "internal error, try again"}}
        if cache is not None:
            cache.put(key, request["user"], method, answer)
        return answer
