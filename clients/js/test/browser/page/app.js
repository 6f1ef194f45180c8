// A tiny chat on the SDK as an application would write it; `window.app` exposes what
// happened, for the test to check.
import { Client } from '/dist/index.js';

const query = new URLSearchParams(location.search);
const channel = query.get('channel');
const backoffBase = Number(query.get('backoffBase') || 200);
const $ = (id) => document.getElementById(id);

const client = new Client(query.get('url'), {
  getToken: () => query.get('token'),
  backoff: { baseMs: backoffBase, maxMs: Math.max(backoffBase, 5000) },
});
const app = (window.app = { client, state: 'idle', states: [], messages: [], subscribed: [], disconnects: [], presence: [], refetched: [] });

$('me').textContent = query.get('user');
$('channel').textContent = channel;
client.on('state', ({ state }) => {
  app.state = state;
  app.states.push(state);
  $('state').textContent = state;
  $('state').className = state;
});
client.on('disconnected', (event) => app.disconnects.push(event));

function show(text, className, offset) {
  const item = document.createElement('li');
  if (className) item.className = className;
  if (offset !== undefined) item.innerHTML = `<span class="offset">#${offset}</span>`;
  item.append(text);
  $('messages').append(item);
  $('messages').scrollTop = $('messages').scrollHeight;
}

async function refreshPresence() {
  try {
    const { clients } = await client.presence(channel);
    app.presence = [...new Set(clients.map((c) => c.user))].sort();
    $('presence').replaceChildren(...app.presence.map((user) => Object.assign(document.createElement('li'), { textContent: user })));
  } catch {
    // disconnected meanwhile: the next subscribe refreshes it
  }
}

const room = client.subscribe(channel);
room.on('subscribed', async (event) => {
  app.subscribed.push(event);
  if (event.recovered === false) {
    // Missed publications cannot be replayed: refetch the state (here, the recent history).
    const { publications } = await client.history(channel, { limit: 20 });
    app.refetched.push(publications.length);
    show(`Reconnected: missed messages could not be recovered; reloaded ${publications.length} from history.`, 'notice');
  } else if (event.resubscribed) {
    show(`Reconnected: recovered ${event.missed ?? 0} missed message(s).`, 'notice');
  }
  refreshPresence();
});
room.on('publication', (p) => {
  app.messages.push({ offset: p.offset, epoch: p.epoch, data: p.data, user: p.from?.user });
  const who = Object.assign(document.createElement('span'), { className: 'user', textContent: p.from?.user ?? 'server' });
  const line = document.createElement('span');
  line.append(who, p.data.text);
  show(line, '', p.offset);
});
room.on('join', refreshPresence);
room.on('leave', refreshPresence);

$('send').addEventListener('submit', async (event) => {
  event.preventDefault();
  const text = $('text').value.trim();
  if (!text) return;
  $('text').value = '';
  await client.publish(channel, { text }, { event: 'msg' });
});

client.connect().catch((error) => show(`Stopped: ${error.message}`, 'notice'));
