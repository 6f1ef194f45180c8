// Compiled (not run) by `npm test`: the published declarations must serve an application
// written in TypeScript, with `ws` injected on Node and the browser's own WebSocket.
import WebSocket from 'ws';
import { Client, SwitchboardError, type Publication, type SubscribedEvent } from '../../dist/index.js';
import { msgpack } from '../../dist/msgpack.js';

interface Chat {
  text: string;
}

const client = new Client('ws://localhost:8000/ws', {
  getToken: async () => 'jwt',
  WebSocket,
  encoding: msgpack,
  outbox: { limit: 3, whenFull: 'drop-oldest' },
});
new Client('ws://localhost:8000/ws', { token: 'jwt', WebSocket: globalThis.WebSocket });

client.on('disconnected', ({ code, reason, reconnect }) => console.log(code, reason, reconnect));
client.on('subscribed', (sub) => sub.on('publication', (p) => p.data));
const room = client.subscribe<Chat>('chat:lobby', { since: { offset: 1, epoch: 'e' } });
room.on('publication', (p: Publication<Chat>) => p.data.text.toUpperCase());
room.on('subscribed', (e: SubscribedEvent) => e.recovered === false);

export async function app(): Promise<boolean> {
  for await (const event of room) {
    if (event.type === 'publication') return event.publication.data.text.length > 0;
  }
  const vote = await client.rpc<{ ok: boolean }>('cast_vote', { proposal: 7 }, { idempotencyKey: 'vote-7' });
  const history = await client.history<Chat>('chat:lobby', { limit: 2 });
  try {
    await client.publish('chat:lobby', { text: history.publications[0].data.text });
  } catch (error) {
    if (error instanceof SwitchboardError && error.kind === 'outbox_full') return false;
  }
  return vote.ok;
}
