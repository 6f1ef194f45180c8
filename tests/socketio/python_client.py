"""python-socketio against the gateways (tests/socketio/socketio.test.mjs runs it).

Connects through the load balancer (polling first, then the upgrade, python-socketio's
default), subscribes to a room with an ack, says "ready" on stdout, collects `tick`
events until COUNT arrived, calls a backend rpc, and prints one JSON line of results.
"""

import json
import os
import sys
import threading

import socketio

url, token, room, count = os.environ["SB_URL"], os.environ["SB_TOKEN"], os.environ["SB_ROOM"], int(os.environ["SB_COUNT"])
done = threading.Event()
ticks = []

sio = socketio.Client(reconnection=False)


@sio.on("tick")
def on_tick(data):
    ticks.append(data)
    if len(ticks) >= count:
        done.set()


sio.connect(url, auth={"token": token}, wait_timeout=10)
subscribed = sio.call("subscribe", room, timeout=10)
print("ready", flush=True)
if not done.wait(30):
    print(json.dumps({"error": "ticks missing", "ticks": ticks}), flush=True)
    sys.exit(1)
answer = sio.call("dao.echo", {"from": "python"}, timeout=10)
print(json.dumps({"sid": sio.sid, "transport": sio.transport(), "subscribed": subscribed, "ticks": ticks, "answer": answer}), flush=True)
sio.disconnect()
