// A Socket.IO 4.8 cluster node for benchmarks: the classic Redis adapter between nodes,
// HS256 tokens checked at connect (as Switchboard does), and the two events the bench's
// Socket.IO mode uses (crates/bench/src/socketio.rs):
//   subscribe(room, ack)                 -> socket.join(room); ack({channel: room})
//   publish({channel, data, event}, ack) -> io.to(channel).emit(event ?? "message", data); ack({})
//
//   PORT=18101 REDIS_URL=redis://127.0.0.1:16379 SECRET=bench-secret node server.mjs
import { createHmac, timingSafeEqual } from 'node:crypto';
import { createServer } from 'node:http';

import { createAdapter } from '@socket.io/redis-adapter';
import { createClient } from 'redis';
import { Server } from 'socket.io';

const port = Number(process.env.PORT ?? 18101);
const secret = process.env.SECRET ?? 'bench-secret';
const redisUrl = process.env.REDIS_URL;

function verify(token) {
  const [header, claims, signature] = String(token ?? '').split('.');
  if (!signature) return null;
  const expected = createHmac('sha256', secret).update(`${header}.${claims}`).digest();
  const given = Buffer.from(signature, 'base64url');
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return null;
  const parsed = JSON.parse(Buffer.from(claims, 'base64url').toString());
  return parsed.exp && parsed.exp * 1000 < Date.now() ? null : parsed;
}

const http = createServer();
const io = new Server(http, { transports: ['websocket', 'polling'], serveClient: false });
if (redisUrl) {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  io.adapter(createAdapter(pub, sub));
}
io.use((socket, next) => {
  const claims = verify(socket.handshake.auth?.token);
  if (!claims) return next(new Error('invalid token'));
  socket.data.user = claims.sub;
  next();
});
io.on('connection', (socket) => {
  socket.on('subscribe', (room, ack) => {
    socket.join(String(room));
    ack?.({ channel: room });
  });
  socket.on('publish', (message, ack) => {
    io.to(String(message?.channel)).emit(message?.event ?? 'message', message?.data);
    ack?.({});
  });
});
http.listen(port, '127.0.0.1', () => console.log(`ready on ${port}`));
