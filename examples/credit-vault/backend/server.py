#!/usr/bin/env python3
"""The credit-vault backend: vaults, their health, risk alerts and market data, published
as typed messages `{type, data, timestamp, id}` with `FCALL sb_publish`, and the pages'
`vault.*` calls served from the Redis stream `sb:rpc:{credit-vault}`. It talks to
Switchboard only through Redis (docs/redis.md §4.8, §11). Three threads:

  ticker   every TICK_MS: `market_data` on market:<chain> (one channel per chain), then
           `vault_update` on vault:<owner> for every vault (its health moves with the price
           of its chain), a `risk_alert` on vault:<owner> and user:<owner> when a vault's
           health falls below ALERT_BELOW, and a `heartbeat` on system:status every 2 s
  rpc      stream `sb:rpc:{credit-vault}`: vault.status, vault.adjust (deposit / withdraw;
           a withdraw that would leave the vault below SAFE_MIN is refused with 1409)
  http     for development and the tests:
             GET  /token?user=<id>   a connection token (signed with JWT_SECRET; DEV_TOKENS=0: off)
             GET  /api/state         vaults, prices, applied operations, last publications
             POST /api/system        {"status", "message"}: publishes a `system_status`
             GET  /config.json       {gateway}: the WebSocket URL pages connect to
             GET  /, /app.js, /sdk/  the page (../web) and the SDK (clients/js/dist)

    python3 backend/server.py --redis-url redis://127.0.0.1:6379 --port 3000

Prints `ready http://<host>:<port>` on stdout once it serves; logs go to stderr.
"""

import argparse
import base64
import hashlib
import hmac
import json
import math
import mimetypes
import os
import re
import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

import redis

from switchboard import Publisher, RpcError, StreamWorker

HERE = os.path.dirname(os.path.abspath(__file__))

LIQUIDATION_LTV = 0.8  # health = collateral × price × 0.8 / debt
ALERT_BELOW = 1.5  # a risk_alert when health falls below this
REARM_ABOVE = 1.55  # ... and again only after it went back above this
SAFE_MIN = 1.2  # a withdraw may not leave the vault below this
CHAINS = {"ethereum": 3000.0, "arbitrum": 2990.0, "base": 3005.0}  # ETH price per chain, USD
USERS = {"alice": "Alice", "bob": "Bob"}


def log(message):
    print(f"credit-vault-backend: {message}", file=sys.stderr, flush=True)


def now_ms():
    return int(time.time() * 1000)


def message(kind, data):
    """The typed message every channel carries."""
    return {"type": kind, "data": data, "timestamp": now_ms(), "id": uuid.uuid4().hex}


class Vaults:
    def __init__(self, publisher, tick_ms):
        self.publisher = publisher
        self.tick_ms = tick_ms
        self.lock = threading.RLock()
        self.tick = 0
        self.vaults = {
            "alice": {"id": "A", "owner": "alice", "chain": "ethereum", "collateral": 10.0, "debt": 12000.0, "alerting": False},
            "bob": {"id": "B", "owner": "bob", "chain": "arbitrum", "collateral": 8.0, "debt": 6000.0, "alerting": False},
        }
        self.prices = {chain: {"chain": chain, "price": price, "gas_gwei": 20.0, "block": 0} for chain, price in CHAINS.items()}
        self.ops = []  # every applied vault.adjust
        self.requests = {}  # idempotency key -> times the backend received it
        self.answers = {}  # idempotency key -> the first answer (a resend gets it again)
        self.published = {}  # channel -> {offset, epoch, id, type} of the newest publication
        self.publish_errors = 0
        self.alerts_sent = {}
        self.system = {"status": "operational", "message": "All systems operational"}
        self.started = time.time()

    # ---- publishing ---------------------------------------------------------------------

    def publish(self, channel, kind, data):
        msg = message(kind, data)
        try:
            # The message id is the idempotency key: a retry never publishes twice.
            offset, epoch, _dup = self.publisher.publish(channel, msg, event=kind, idempotency_key=msg["id"])
        except (redis.RedisError, LookupError) as error:
            self.publish_errors += 1
            log(f"publish {kind} to {channel} failed: {error}")
            return None
        self.published[channel] = {"offset": offset, "epoch": epoch, "id": msg["id"], "type": kind}
        return msg

    def snapshot(self, vault):
        price = self.prices[vault["chain"]]["price"]
        value = vault["collateral"] * price
        health = value * LIQUIDATION_LTV / vault["debt"] if vault["debt"] else math.inf
        return {
            "vault": vault["id"], "owner": vault["owner"], "chain": vault["chain"],
            "collateral": round(vault["collateral"], 6), "collateral_usd": round(value, 2),
            "debt": round(vault["debt"], 2), "price": price, "health": round(health, 4),
            "alert_below": ALERT_BELOW, "safe_min": SAFE_MIN,
        }

    def publish_vault(self, vault, reason):
        snap = self.snapshot(vault)
        self.publish(f"vault:{vault['owner']}", "vault_update", {**snap, "reason": reason})
        health = snap["health"]
        if health < ALERT_BELOW and not vault["alerting"]:
            vault["alerting"] = True
            alert = message("risk_alert", {
                "vault": vault["id"], "owner": vault["owner"], "level": "critical" if health < SAFE_MIN else "warning",
                "health": health, "threshold": ALERT_BELOW,
                "message": f"Vault {vault['id']} health {health:.2f} is below {ALERT_BELOW:.2f}",
            })
            # The same message (same id) on the vault's channel and the owner's personal one.
            for channel in (f"vault:{vault['owner']}", f"user:{vault['owner']}"):
                try:
                    offset, epoch, _ = self.publisher.publish(channel, alert, event="risk_alert", idempotency_key=alert["id"])
                    self.published[channel] = {"offset": offset, "epoch": epoch, "id": alert["id"], "type": "risk_alert"}
                except (redis.RedisError, LookupError) as error:
                    self.publish_errors += 1
                    log(f"risk_alert to {channel} failed: {error}")
            self.alerts_sent[vault["owner"]] = self.alerts_sent.get(vault["owner"], 0) + 1
        elif health >= REARM_ABOVE:
            vault["alerting"] = False

    def publish_system(self):
        self.publish("system:status", "system_status", {**self.system, "uptime_s": int(time.time() - self.started)})

    def run_ticker(self, stop):
        self.publish_system()
        beat_every = max(1, round(2000 / self.tick_ms))
        while not stop.wait(self.tick_ms / 1000):
            with self.lock:
                self.tick += 1
                for i, (chain, base) in enumerate(CHAINS.items()):
                    p = self.prices[chain]
                    # A bounded, smooth walk (±1 %): health moves, but never across a threshold by itself.
                    p["price"] = round(base * (1 + 0.01 * math.sin(self.tick / 9 + i)), 2)
                    p["gas_gwei"] = round(20 + 8 * math.sin(self.tick / 5 + 2 * i), 1)
                    p["block"] = self.tick
                    self.publish(f"market:{chain}", "market_data", dict(p))
                for vault in self.vaults.values():
                    self.publish_vault(vault, "price")
                if self.tick % beat_every == 0:
                    self.publish("system:status", "heartbeat", {"seq": self.tick // beat_every})

    # ---- rpc ----------------------------------------------------------------------------

    def vault_of(self, request):
        vault = self.vaults.get(request["user"])
        if vault is None:
            raise RpcError(1404, f"no vault for user {request['user'] or '(anonymous)'}")
        return vault

    def status(self, request):
        with self.lock:
            vault = self.vault_of(request)
            return {"vault": self.snapshot(vault), "market": dict(self.prices[vault["chain"]]), "system": self.system}

    def adjust(self, request):
        data = request["data"] if isinstance(request["data"], dict) else {}
        action, amount = data.get("action"), data.get("amount")
        key = request.get("idempotency_key") or None
        with self.lock:
            if key:
                self.requests[key] = self.requests.get(key, 0) + 1
                if key in self.answers:
                    return self.answers[key]  # a resend: answered, not applied again
            vault = self.vault_of(request)
            if action not in ("deposit", "withdraw"):
                raise RpcError(1400, "action: deposit or withdraw")
            if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 < amount <= 1_000_000:
                raise RpcError(1400, "amount: a number of ETH above 0")
            collateral = vault["collateral"] + (amount if action == "deposit" else -amount)
            if collateral < 0:
                raise RpcError(1409, f"the vault holds only {vault['collateral']:g} ETH")
            health = collateral * self.prices[vault["chain"]]["price"] * LIQUIDATION_LTV / vault["debt"]
            if action == "withdraw" and health < SAFE_MIN:
                raise RpcError(1409, f"health would be {health:.2f}, below the safe minimum {SAFE_MIN:.2f}")
            vault["collateral"] = collateral
            op = {"seq": len(self.ops) + 1, "key": key, "user": request["user"], "vault": vault["id"],
                  "action": action, "amount": amount, "at": now_ms()}
            self.ops.append(op)
            self.publish_vault(vault, action)
            result = {"vault": self.snapshot(vault), "op": op["seq"]}
            if key:
                self.answers[key] = result
            log(f"{request['user']}: {action} {amount:g} ETH (op {op['seq']}, key {key})")
            return result

    def state(self):
        with self.lock:
            return {
                "vaults": {owner: self.snapshot(v) for owner, v in self.vaults.items()},
                "prices": self.prices, "ops": self.ops, "requests": self.requests,
                "published": self.published, "publish_errors": self.publish_errors,
                "alerts_sent": self.alerts_sent, "system": self.system, "tick": self.tick,
            }


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


def http_handler(opts, vaults):
    web_root = os.path.realpath(opts.web)
    sdk_root = os.path.realpath(opts.sdk)

    class Handler(BaseHTTPRequestHandler):
        server_version = "credit-vault-backend"

        def log_message(self, format, *args):  # pylint: disable=redefined-builtin
            pass

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
            if "javascript" in content_type:
                content_type = "text/javascript; charset=utf-8"
            elif content_type == "text/html":
                content_type += "; charset=utf-8"
            return self.send(200, body, content_type)

        def do_GET(self):  # noqa: N802
            url = urlparse(self.path)
            path = unquote(url.path)
            if path == "/token":
                if not opts.dev_tokens:
                    return self.send(404, {"error": "development tokens are off"})
                user = parse_qs(url.query).get("user", [""])[0]
                if not re.fullmatch(r"[A-Za-z0-9_.@=-]{1,64}", user):
                    return self.send(400, {"error": "user: 1-64 of A-Z a-z 0-9 _ . @ = -"})
                return self.send(200, mint_token(opts.jwt_secret, user, info={"name": USERS.get(user, user)}).encode(), "text/plain")
            if path == "/api/state":
                return self.send(200, vaults.state())
            if path == "/config.json":
                return self.send(200, {"gateway": opts.gateway_url or None})
            if path == "/healthz":
                return self.send(200, {"ok": True})
            if path.startswith("/sdk/"):
                return self.serve_file(sdk_root, path[5:])
            return self.serve_file(web_root, "index.html" if path == "/" else path[1:])

        def do_POST(self):  # noqa: N802
            if urlparse(self.path).path != "/api/system":
                return self.send(404, {"error": "not found"})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
                status = str(body["status"])
            except (ValueError, KeyError, TypeError):
                return self.send(400, {"error": "body: {\"status\", \"message\"}"})
            with vaults.lock:
                vaults.system = {"status": status, "message": str(body.get("message", ""))}
                vaults.publish_system()
            return self.send(200, vaults.system)

    return Handler


def main(argv=None):
    env = os.environ.get
    parser = argparse.ArgumentParser(description="Switchboard credit-vault example backend")
    parser.add_argument("--redis-url", default=env("REDIS_URL", "redis://127.0.0.1:6379"))
    parser.add_argument("--host", default=env("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("PORT", "3000")))
    parser.add_argument("--jwt-secret", default=env("JWT_SECRET", "credit-vault-dev-secret"))
    parser.add_argument("--rpc-route", default=env("RPC_ROUTE", "credit-vault"))
    parser.add_argument("--tick-ms", type=int, default=int(env("TICK_MS", "500")))
    parser.add_argument("--gateway-url", default=env("GATEWAY_URL", ""))
    parser.add_argument("--web", default=env("WEB_DIR", os.path.join(HERE, "../web")))
    parser.add_argument("--sdk", default=env("SDK_DIR", os.path.join(HERE, "../../../clients/js/dist")))
    opts = parser.parse_args(argv)
    opts.dev_tokens = env("DEV_TOKENS") != "0"

    client = redis.Redis.from_url(opts.redis_url, decode_responses=True, health_check_interval=30)
    for attempt in range(60):  # Redis (and a gateway declaring the namespaces) may still be starting
        try:
            if client.hget("sb:namespaces", "vault") is not None:
                break
            log("no gateway has declared its namespaces in Redis yet; waiting")
        except redis.ConnectionError as error:
            log(f"redis not reachable yet ({error}); waiting")
        if attempt == 59:
            log("giving up: start a gateway with examples/credit-vault/gateway.toml on this Redis")
            return 1
        time.sleep(1)

    stop = threading.Event()
    vaults = Vaults(Publisher(client), opts.tick_ms)
    rpc = StreamWorker(client, opts.rpc_route, {"vault.status": vaults.status, "vault.adjust": vaults.adjust}, log=log, stop=stop)
    server = ThreadingHTTPServer((opts.host, opts.port), http_handler(opts, vaults))
    server.daemon_threads = True
    threads = [threading.Thread(target=target, name=name, daemon=True)
               for name, target in (("rpc", rpc.run), ("ticker", lambda: vaults.run_ticker(stop)), ("http", server.serve_forever))]
    for thread in threads:
        thread.start()

    def on_signal(signum, _frame):
        log(f"signal {signum}: stopping")
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
        thread.join(timeout=3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
