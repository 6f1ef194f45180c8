#!/usr/bin/env python3
"""The chat backend: Switchboard's hooks and RPC methods through Redis streams, online
state from the lifecycle stream, publications with `FCALL sb_publish`. It talks to
Switchboard only through Redis (docs/redis.md §4, §11, §12). Three threads:

  hooks      stream `sb:rpc:{chat-hooks}`: `sb.subscribe` (members only, answers the
             conversation's state) and `sb.publish` (stores and stamps each message, or
             refuses it, before the gateway broadcasts it)
  rpc        stream `sb:rpc:{chat}`: chat.get_state, chat.get_conversation, chat.history,
             chat.mark_read, chat.create_conversation, chat.add_member
  lifecycle  `sb:{lifecycle}:events`, group `chat-online`: who is connected (one process
             of the backend only; --lifecycle-consumer '' leaves it out)

and, for development, an HTTP server:

  GET /token?user=<id>          a connection token for that user (signed with JWT_SECRET);
                                never expose this outside your laptop (DEV_TOKENS=0: off)
  GET /api/conversations/<id>   the backend's state of a conversation (messages, reads)
  GET /api/online               every user's connections and published online state
  GET /config.json              {gateway}: the WebSocket URL pages connect to
  GET /, /app.js, /sdk/...      the page (../web) and the SDK (clients/js/dist)

    python3 backend/server.py --redis-url redis://127.0.0.1:6379 --port 3000

Prints `ready http://<host>:<port>` on stdout once it serves; logs go to stderr. SIGTERM
or Ctrl-C stops it after the requests in hand.
"""

import argparse
import base64
import hashlib
import hmac
import json
import mimetypes
import os
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

import redis

from chat import USERS, Chat
from switchboard import LifecycleConsumer, Publisher, RpcError, StreamWorker

HERE = os.path.dirname(os.path.abspath(__file__))


def log(message):
    print(f"chat-backend: {message}", file=sys.stderr, flush=True)


def options(argv=None):
    env = os.environ.get
    parser = argparse.ArgumentParser(description="Switchboard chat example backend")
    parser.add_argument("--redis-url", default=env("REDIS_URL", "redis://127.0.0.1:6379"))
    parser.add_argument("--host", default=env("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("PORT", "3000")))
    # The gateways' auth.hmac_secret (gateway.toml), to mint development tokens.
    parser.add_argument("--jwt-secret", default=env("JWT_SECRET", "chat-dev-secret"))
    # The `stream` of the routes in gateway.toml.
    parser.add_argument("--hooks-route", default=env("HOOKS_ROUTE", "chat-hooks"))
    parser.add_argument("--rpc-route", default=env("RPC_ROUTE", "chat"))
    parser.add_argument("--lifecycle-group", default=env("LIFECYCLE_GROUP", "chat-online"))
    # Stable across restarts: the lifecycle consumer finishes its own pending entries first.
    # Only one process may follow the lifecycle stream (order matters): give the others
    # --lifecycle-consumer '' (they then serve hooks and RPCs only).
    parser.add_argument("--lifecycle-consumer", default=env("LIFECYCLE_CONSUMER", "chat-backend"))
    # A user whose last connection ended is published offline only if none came back
    # within this (a reload, a failover to another node).
    parser.add_argument("--offline-grace-ms", type=int, default=int(env("OFFLINE_GRACE_MS", "5000")))
    # What /config.json tells pages (default: port 8000 of the page's host).
    parser.add_argument("--gateway-url", default=env("GATEWAY_URL", ""))
    parser.add_argument("--web", default=env("WEB_DIR", os.path.join(HERE, "../web")))
    parser.add_argument("--sdk", default=env("SDK_DIR", os.path.join(HERE, "../../../clients/js/dist")))
    opts = parser.parse_args(argv)
    opts.dev_tokens = env("DEV_TOKENS") != "0"
    return opts


def mint_token(secret, user, ttl_secs=3600, info=None):
    """An HS256 connection token (docs/protocol.md §9.2)."""
    def encode(value):
        raw = json.dumps(value, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    claims = {"sub": user, "exp": int(time.time()) + ttl_secs}
    if info is not None:
        claims["info"] = info
    unsigned = f"{encode({'typ': 'JWT', 'alg': 'HS256'})}.{encode(claims)}"
    signature = hmac.new(secret.encode(), unsigned.encode(), hashlib.sha256).digest()
    return f"{unsigned}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


class Answers:
    """Answers of `chat.*` calls by idempotency key, for 10 minutes: a resend (the SDK
    resends after a lost connection, with the same key) gets the first answer."""

    TTL_SECS = 600

    def __init__(self, client):
        self.redis = client

    def key(self, key, user, method):
        return f"app:chat:answers:{user}:{method}:{key}"

    def get(self, key, user, method):
        cached = self.redis.get(self.key(key, user, method))
        return json.loads(cached) if cached else None

    def put(self, key, user, method, answer):
        self.redis.set(self.key(key, user, method), json.dumps(answer), ex=self.TTL_SECS)


def gateway_only(hook):
    """A hook handler that refuses the calls a client made itself.

    A client can send `rpc` with the method `sb.publish`, and the gateway routes it here
    like the hook it calls itself (see README.md, "Limits"). The gateway's own hook calls
    carry no idempotency key, while the SDK puts one on every `rpc`: this stops calls made
    through the SDK, not a hand-written client that leaves the key out.
    """
    def handler(request):
        if request.get("idempotency_key"):
            raise RpcError(1403, "hooks are called by the gateway, not by clients")
        return hook(request)
    return handler


def http_handler(opts, chat):
    web_root = os.path.realpath(opts.web)
    sdk_root = os.path.realpath(opts.sdk)

    class Handler(BaseHTTPRequestHandler):
        server_version = "chat-backend"

        def log_message(self, format, *args):  # pylint: disable=redefined-builtin
            pass  # quiet: one line per request would drown the interesting logs

        def send(self, status, body, content_type="application/json"):
            payload = json.dumps(body).encode() if content_type == "application/json" else body
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("access-control-allow-origin", "*")
            self.send_header("cache-control", "no-store")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def serve_file(self, root, path):
            file = os.path.realpath(os.path.join(root, path))
            if file != root and not file.startswith(root + os.sep):
                return self.send(403, {"error": "forbidden"})
            try:
                with open(file, "rb") as f:
                    body = f.read()
            except OSError:
                return self.send(404, {"error": "not found"})
            content_type = mimetypes.guess_type(file)[0] or "application/octet-stream"
            if content_type in ("text/html", "text/javascript", "application/javascript"):
                content_type = ("text/javascript" if "javascript" in content_type else content_type) + "; charset=utf-8"
            return self.send(200, body, content_type)

        def do_GET(self):  # noqa: N802 (the name BaseHTTPRequestHandler calls)
            url = urlparse(self.path)
            path = unquote(url.path)
            try:
                if path == "/token":
                    if not opts.dev_tokens:
                        return self.send(404, {"error": "development tokens are off"})
                    user = parse_qs(url.query).get("user", [""])[0]
                    if not re.fullmatch(r"[A-Za-z0-9_.@=-]{1,64}", user):
                        return self.send(400, {"error": "user: 1-64 of A-Z a-z 0-9 _ . @ = -"})
                    token = mint_token(opts.jwt_secret, user, info={"name": USERS.get(user, user)})
                    return self.send(200, token.encode(), "text/plain")
                conversation = re.fullmatch(r"/api/conversations/([^/]+)", path)
                if conversation:
                    return self.send(200, chat.truth(conversation[1]))
                if path == "/api/online":
                    return self.send(200, chat.online())
                if path == "/config.json":
                    return self.send(200, {"gateway": opts.gateway_url or None})
                if path == "/healthz":
                    return self.send(200, {"ok": True})
                if path.startswith("/sdk/"):
                    return self.serve_file(sdk_root, path[5:])
                return self.serve_file(web_root, "index.html" if path == "/" else path[1:])
            except RpcError as error:
                return self.send(404 if error.code == 1404 else 400, {"error": error.message})
            except Exception as error:  # pylint: disable=broad-except
                log(f"GET {path}: {error!r}")
                return self.send(500, {"error": str(error)})

    return Handler


def main(argv=None):
    opts = options(argv)
    client = redis.Redis.from_url(opts.redis_url, decode_responses=True, health_check_interval=30)
    stop = threading.Event()
    chat = Chat(client, Publisher(client), log=log, offline_grace_ms=opts.offline_grace_ms)
    # Redis may still be starting (compose): wait for it rather than die.
    for attempt in range(60):
        try:
            chat.seed()
            break
        except redis.ConnectionError as error:
            if attempt == 59:
                raise
            log(f"redis not reachable yet ({error}); waiting")
            time.sleep(1)

    hooks = StreamWorker(client, opts.hooks_route, {
        "sb.subscribe": gateway_only(chat.hook_subscribe),
        "sb.publish": gateway_only(chat.hook_publish),
    }, log=log, stop=stop)
    rpc = StreamWorker(client, opts.rpc_route, {
        "chat.get_state": chat.get_state,
        "chat.get_conversation": chat.get_conversation,
        "chat.history": chat.history,
        "chat.mark_read": chat.mark_read,
        "chat.create_conversation": chat.create_conversation,
        "chat.add_member": chat.add_member,
    }, answers=Answers(client), log=log, stop=stop)
    lifecycle = LifecycleConsumer(client, chat.on_lifecycle, group=opts.lifecycle_group,
                                  consumer=opts.lifecycle_consumer, idle=chat.tick, log=log, stop=stop)

    server = ThreadingHTTPServer((opts.host, opts.port), http_handler(opts, chat))
    server.daemon_threads = True
    work = [("hooks", hooks.run), ("rpc", rpc.run), ("http", server.serve_forever)]
    if opts.lifecycle_consumer:
        work.append(("lifecycle", lifecycle.run))
    threads = [threading.Thread(target=target, name=name, daemon=True) for name, target in work]
    for thread in threads:
        thread.start()

    def on_signal(signum, _frame):
        log(f"signal {signum}: stopping after the requests in hand")
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    host, port = server.server_address[:2]
    print(f"ready http://{host}:{port}", flush=True)
    log(f"serving http://{host}:{port} (page at /?user=alice)")
    while not stop.wait(1):
        pass
    server.shutdown()
    for thread in threads:
        thread.join(timeout=3)  # blocking reads wake up within 2 s
    return 0


if __name__ == "__main__":
    sys.exit(main())
