#!/usr/bin/env python3
# Used by docs/BENCHMARKS.md to put a replica "1 ms away" from its primary on one machine:
#   python3 crates/bench/peers/delay_proxy.py <listen port> <target port> <seconds>
# A TCP proxy that delays every chunk by DELAY seconds in each direction (order kept).
import asyncio, sys
LISTEN, TARGET, DELAY = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
async def pipe(reader, writer):
    queue = asyncio.Queue()
    async def pump():
        while True:
            item = await queue.get()
            if item is None:
                writer.close(); return
            due, data = item
            now = asyncio.get_running_loop().time()
            if due > now:
                await asyncio.sleep(due - now)
            writer.write(data); await writer.drain()
    task = asyncio.create_task(pump())
    while True:
        data = await reader.read(65536)
        if not data:
            await queue.put(None); break
        await queue.put((asyncio.get_running_loop().time() + DELAY, data))
    await task
async def handle(r, w):
    tr, tw = await asyncio.open_connection('127.0.0.1', TARGET)
    await asyncio.gather(pipe(r, tw), pipe(tr, w))
async def main():
    server = await asyncio.start_server(handle, '127.0.0.1', LISTEN)
    async with server: await server.serve_forever()
asyncio.run(main())
