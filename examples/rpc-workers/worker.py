#!/usr/bin/env python3
"""A Switchboard RPC worker with redis-py: answers clients' `rpc` calls of one stream route.

The contract is docs/redis.md §11: the gateway adds each call to the stream
`sb:rpc:{<route>}`, workers read it through a consumer group and answer each entry with
one `FCALL sb_rpc_reply`, which acknowledges the entry and routes the answer to the
caller's node. Nothing here listens on a port.

This worker handles one request at a time to stay easy to read; run several processes
(each gets its own consumer name) to serve more. A worker that dies holding a request
leaves it pending, and another worker (of any language) claims it with XAUTOCLAIM.

    python3 worker.py --redis-url redis://127.0.0.1:6379 --route votes

Prints `ready <consumer>` on stdout once it reads; logs go to stderr. SIGTERM or
Ctrl-C stops it after the request in hand is answered (exit status 0).
"""

import argparse
import json
import os
import signal
import socket
import sys
import time

import redis

# Answers read per XREADGROUP / XAUTOCLAIM call. They are handled one after the other,
# so keep it small: entries read but not yet handled wait in this worker's hands.
BATCH = 10


def log(message):
    print(f"worker.py: {message}", file=sys.stderr, flush=True)


def now_ms():
    return int(time.time() * 1000)


class RpcError(Exception):
    """An application error: the client gets this code (1000..2999) and message."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------------------
# The demo methods. A handler gets the request (the entry's fields, `data` decoded) and
# returns the result (any JSON value) or raises RpcError.


def votes_cast(request, options):
    data = request["data"] or {}
    return {"accepted": True, "proposal": data.get("proposal"), "by": request["user"], "worker": "python"}


def votes_fail(request, options):
    raise RpcError(1403, "not a member")


def votes_hold(request, options):
    # Simulates slow work, so a test can kill the worker while it holds a request.
    # --hold-max-ms caps it: a worker that claims the request can then answer at once.
    data = request["data"] or {}
    hold_ms = int(data.get("ms", 0))
    if options.hold_max_ms is not None:
        hold_ms = min(hold_ms, options.hold_max_ms)
    time.sleep(max(hold_ms, 0) / 1000)
    return votes_cast(request, options)


METHODS = {
    "votes.cast": votes_cast,
    "votes.fail": votes_fail,
    "votes.hold": votes_hold,
}


# ---------------------------------------------------------------------------------------


class Worker:
    def __init__(self, client, options):
        self.redis = client
        self.options = options
        self.stream = f"sb:rpc:{{{options.route}}}"
        self.group = options.group
        self.consumer = options.consumer
        self.stopping = False
        # XAUTOCLAIM walks the pending entries in pages; keep our place between rounds.
        self.claim_cursor = "0-0"
        self.last_claim = 0.0

    def ensure_group(self):
        # From `0`, not `$`: requests added before any worker existed are served too.
        try:
            self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as error:
            if not str(error).startswith("BUSYGROUP"):
                raise

    def run(self):
        self.ensure_group()
        print(f"ready {self.consumer}", flush=True)
        log(f"{self.consumer} serving {self.stream} in group {self.group}")
        need_group = False
        while not self.stopping:
            try:
                if need_group:
                    self.ensure_group()
                    need_group = False
                for entry_id, fields in self.next_entries():
                    # Entries we read are ours: answer them even when asked to stop, or
                    # they would wait for another worker's claim. (An error mid-batch
                    # leaves the rest pending: a claim round, ours or another's, gets them.)
                    self.handle(entry_id, fields)
            except redis.ResponseError as error:
                if str(error).startswith("NOGROUP"):
                    # The stream or group is gone (e.g. Redis was wiped): recreate it.
                    log("consumer group missing; creating it again")
                    need_group = True
                else:
                    log(f"redis refused a command: {error}")
                    time.sleep(0.5)
            except redis.ConnectionError as error:
                # redis-py reconnects on the next command; don't spin meanwhile.
                log(f"redis unreachable: {error}; retrying")
                time.sleep(0.5)
        log("stopped")

    def next_entries(self):
        """Requests of dead workers when a claim round is due, else new requests."""
        claim_every = self.options.claim_after_ms / 1000
        if time.monotonic() - self.last_claim >= claim_every:
            self.last_claim = time.monotonic()
            claimed = self.claim()
            if claimed:
                return claimed
        # Block at most the claim interval, so claims stay on time and a stop request is
        # noticed within that (a signal does not interrupt a blocking read).
        block_ms = max(min(self.options.claim_after_ms, 2000), 100)
        reply = self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=BATCH, block=block_ms
        )
        # [[stream, [(entry id, {field: value}), ...]]], or empty when the block timed out.
        return [entry for _stream, entries in reply or [] for entry in entries]

    def claim(self):
        # Takes entries pending (read but unanswered) for longer than claim-after ms: their
        # worker died or hangs. Reply: [next cursor, entries, (Redis 7) deleted ids].
        reply = self.redis.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            min_idle_time=self.options.claim_after_ms,
            start_id=self.claim_cursor,
            count=BATCH,
        )
        self.claim_cursor = reply[0]
        # Pending entries trimmed from the stream are only listed as deleted ids: nobody
        # waits for them any more. (The filter drops placeholders some versions return.)
        entries = [(entry_id, fields) for entry_id, fields in reply[1] if fields]
        if entries:
            log(f"claimed {len(entries)} request(s) of another worker")
        return entries

    def handle(self, entry_id, fields):
        request = dict(fields)
        try:
            request["data"] = json.loads(request.get("data") or "null")
        except ValueError:
            request["data"] = None
        request.setdefault("user", "")
        deadline = int(request.get("deadline", 0) or 0)

        if deadline and deadline < now_ms():
            # The caller already got `118 timeout`. Answer anyway, without doing the
            # work: the answer (dropped as `late`) is what deletes the entry.
            answer = {"error": {"code": 1000, "message": "expired before a worker took it"}}
            log(f"{request.get('method')} {request.get('id')} expired; not handling it")
        else:
            answer = self.call(request)

        outcome = self.redis.fcall(
            "sb_rpc_reply", 1, self.stream, self.group, entry_id, json.dumps(answer)
        )
        # 'ok' reached the caller; 'duplicate' means another worker answered first,
        # 'late' that the deadline passed, 'gone' that the entry was trimmed.
        log(f"{request.get('method')} {request.get('id')} -> {outcome}")

    def call(self, request):
        handler = METHODS.get(request.get("method"))
        if handler is None:
            return {"error": {"code": 1404, "message": f"unknown method {request.get('method')}"}}
        try:
            return {"result": handler(request, self.options)}
        except RpcError as error:
            return {"error": {"code": error.code, "message": error.message}}
        except Exception as error:  # A bug in a handler must not kill the worker.
            log(f"{request.get('method')} failed: {error!r}")
            return {"error": {"code": 1500, "message": "internal error"}}


def parse_options(argv):
    env = os.environ.get
    parser = argparse.ArgumentParser(description="Switchboard RPC worker (redis-py)")
    parser.add_argument("--redis-url", default=env("REDIS_URL", "redis://127.0.0.1:6379"))
    parser.add_argument(
        "--route", default=env("RPC_ROUTE", "votes"), help="the route's `stream` setting"
    )
    parser.add_argument("--group", default=env("RPC_GROUP", "workers"))
    parser.add_argument(
        "--consumer",
        default=env("RPC_CONSUMER", f"{socket.gethostname()}-{os.getpid()}"),
        help="unique per worker process (default host-pid)",
    )
    parser.add_argument(
        "--claim-after-ms",
        type=int,
        default=int(env("CLAIM_AFTER_MS", "5000")),
        help="claim requests pending this long: above the slowest handling, below the route timeout",
    )
    parser.add_argument(
        "--hold-max-ms",
        type=int,
        default=int(env("HOLD_MAX_MS")) if env("HOLD_MAX_MS") else None,
        help="cap on votes.hold's sleep (default: none)",
    )
    options = parser.parse_args(argv)
    options.claim_after_ms = max(options.claim_after_ms, 1)
    return options


def main(argv=None):
    options = parse_options(argv)
    client = redis.Redis.from_url(options.redis_url, decode_responses=True)
    worker = Worker(client, options)

    def stop(signum, _frame):
        log(f"signal {signum}: stopping after the request in hand")
        worker.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
