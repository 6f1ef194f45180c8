// The portfolio page: plain ES modules, no build step, the Switchboard SDK from /sdk/.
//
// URL parameters (all optional):
//   user     who you are; the token comes from the backend's dev endpoint /token?user=
//   token    a connection token instead (its `sub` is the user)
//   ws       the gateway's WebSocket URL (default: /config.json's, else ws://<host>:8000/ws)
//   backend  where /token and /config.json live (default: this page's origin)
//
// The page names topics, never channels: rpc portfolio.subscribe_topic {topic} makes the
// backend attach the right channel for this user (portfolio:<me>, kyc:<me>, governance:all)
// server-side (POST /api/v1/users/subscribe); the gateway's `subscribe` push (protocol
// §5.5) arrives and the SDK announces it with the client's `subscribed` event.
//
// Server-side subscriptions last one connection. After a reconnect (`connected` again) the
// page asks for each topic that is on again, with `since`: the position of the last
// publication it has; the backend attaches with `recover`, and the missed publications
// follow the push, in order, with no gap and no duplicate.
//
// `window.app` exposes what happened, for the tests (tests/apps/portfolio.test.mjs).
import { Client } from '/sdk/index.js';

const query = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const backend = query.get('backend') ?? '';
const urlToken = query.get('token');
const user = urlToken ? claims(urlToken).sub : query.get('user') ?? 'alice';
const TOPICS = ['portfolio', 'kyc', 'governance'];
const channelOf = (topic) => (topic === 'governance' ? 'governance:all' : `${topic}:${user}`);
const topicOf = Object.fromEntries(TOPICS.map((t) => [channelOf(t), t]));

function claims(token) {
  try {
    return JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
  } catch {
    return {};
  }
}

async function gatewayUrl() {
  if (query.get('ws')) return query.get('ws');
  try {
    const config = await (await fetch(`${backend}/config.json`)).json();
    if (config.gateway) return config.gateway;
  } catch {
    // no backend config: the default below
  }
  return `ws://${location.hostname || '127.0.0.1'}:8000/ws`;
}

async function getToken() {
  if (urlToken) return urlToken;
  const response = await fetch(`${backend}/token?user=${encodeURIComponent(user)}`);
  if (!response.ok) throw new Error(`token endpoint: HTTP ${response.status}`);
  return response.text();
}

const client = new Client(await gatewayUrl(), { getToken });

const app = (window.app = {
  client,
  user,
  state: 'idle',
  node: null, // the gateway node of the current connection (connect reply's `node`)
  nodes: [],
  topics: Object.fromEntries(TOPICS.map((t) => [t, false])), // what the user turned on
  attached: [], // every server-side subscribe of a topic channel: {topic, channel, offset, epoch, recovered, missed, resubscribed, on}
  detached: [], // {topic, channel, reason}
  positions: {}, // channel → {offset, epoch} of the last publication received
  valuations: [], // every `valuation` shown: {offset, epoch, seq, total}
  anomalies: [], // publications out of sequence (never expected)
  kyc: [], // every KYC status received: {offset, status}
  proposals: [], // governance proposals received: {offset, id, title}
  foreign: [], // publications of channels that are not this user's (never expected)
  errors: [], // refused actions: {action, code, message}
  direct: [], // direct subscribe attempts: {channel, ok, code, message}
});

// ---- connection indicator -------------------------------------------------------------

client.on('state', ({ state, code }) => {
  app.state = state;
  $('conn').className = `pill ${state}`;
  $('conn-state').textContent = state + (state === 'disconnected' && code ? ` (${code})` : '');
  if (state !== 'connected') $('conn-node').textContent = '';
});
let connections = 0;
let recoveries = {}; // topic → what its re-attach after the last reconnect recovered
client.on('connected', (info) => {
  connections += 1;
  app.node = info.node;
  app.nodes.push(info.node);
  $('conn-node').textContent = ` · ${info.node}`;
  recoveries = {};
  if (connections > 1) {
    // A new connection: the server-side subscriptions of the last one are over. Ask for
    // every topic that is on again, from the last position we have.
    const on = TOPICS.filter((t) => app.topics[t]);
    notice(`Reconnected to ${info.node}: re-attaching ${on.length ? on.join(', ') : 'nothing'}…`);
    for (const topic of on) void attach(topic, app.positions[channelOf(topic)]);
  }
});
$('me').textContent = user;
$('portfolio-channel').textContent = channelOf('portfolio');
$('kyc-channel').textContent = channelOf('kyc');

// ---- topics: attached and detached by the backend -----------------------------------------

async function attach(topic, since) {
  try {
    const result = await client.rpc('portfolio.subscribe_topic', since ? { topic, since } : { topic });
    if (result.kyc && !app.kyc.length) renderKyc(result.kyc);
    return result;
  } catch (error) {
    showError(`Subscribe to ${topic}`, error);
    return undefined;
  }
}

client.on('subscribed', (sub) => {
  const topic = topicOf[sub.channel];
  if (!topic) return; // the personal channel
  sub.on('subscribed', (event) => {
    app.attached.push({ topic, channel: sub.channel, offset: event.offset, epoch: event.epoch, recovered: event.recovered, missed: event.missed ?? 0, again: app.attached.some((a) => a.topic === topic), serverSide: sub.serverSide });
    if (!app.positions[sub.channel] || app.positions[sub.channel].epoch !== event.epoch) {
      app.positions[sub.channel] = { offset: event.offset - (event.missed ?? 0), epoch: event.epoch };
    }
    if (connections > 1 && app.attached.filter((a) => a.topic === topic).length > 1) {
      recoveries[topic] = event.recovered === false ? `${topic} could not be recovered (showing the newest)` : `${topic} recovered ${event.missed ?? 0} missed`;
      notice(`Reconnected to ${app.node}: ${TOPICS.filter((t) => recoveries[t]).map((t) => recoveries[t]).join(', ')}.`);
    }
    renderToggle(topic);
  });
  sub.on('publication', (p) => onPublication(topic, sub.channel, p));
  sub.on('unsubscribed', ({ reason }) => {
    app.detached.push({ topic, channel: sub.channel, reason });
    renderToggle(topic);
  });
});

function onPublication(topic, channel, p) {
  const last = app.positions[channel];
  if (last && last.epoch === p.epoch && p.offset <= last.offset) {
    app.anomalies.push({ kind: 'duplicate', channel, offset: p.offset, after: last.offset });
    return; // shown already
  }
  if (last && last.epoch === p.epoch && p.offset !== last.offset + 1) {
    app.anomalies.push({ kind: 'gap', channel, offset: p.offset, after: last.offset });
  }
  app.positions[channel] = { offset: p.offset, epoch: p.epoch };
  if (p.data?.user !== undefined && p.data.user !== user) app.foreign.push({ channel, user: p.data.user });
  if (topic === 'portfolio' && p.event === 'valuation') {
    app.valuations.push({ offset: p.offset, epoch: p.epoch, seq: p.data.seq, total: p.data.total });
    renderPortfolio(p.data);
  } else if (topic === 'kyc' && p.event === 'kyc') {
    app.kyc.push({ offset: p.offset, status: p.data.status });
    renderKyc(p.data.status, p.data.at);
  } else if (topic === 'governance' && p.event === 'proposal') {
    app.proposals.push({ offset: p.offset, id: p.data.id, title: p.data.title });
    renderProposals();
  }
}

function isAttached(topic) {
  const sub = client.subscription(channelOf(topic));
  return Boolean(sub && sub.state !== 'unsubscribed');
}

function renderToggle(topic) {
  const button = $(`toggle-${topic}`);
  const attached = isAttached(topic);
  button.textContent = app.topics[topic] ? 'Unsubscribe' : 'Subscribe';
  button.classList.toggle('on', app.topics[topic]);
  button.dataset.attached = String(attached);
  if (topic === 'portfolio' && !app.topics.portfolio) $('total-sub').textContent = 'not subscribed';
}

for (const topic of TOPICS) {
  $(`toggle-${topic}`).addEventListener('click', async () => {
    $(`toggle-${topic}`).disabled = true;
    try {
      if (app.topics[topic]) {
        try {
          await client.rpc('portfolio.unsubscribe_topic', { topic });
          app.topics[topic] = false;
        } catch (error) {
          showError(`Unsubscribe from ${topic}`, error);
        }
      } else if (await attach(topic, app.positions[channelOf(topic)])) {
        app.topics[topic] = true;
      }
    } finally {
      $(`toggle-${topic}`).disabled = false;
      renderToggle(topic);
    }
  });
}

// ---- the policy check: subscribing to a channel directly ----------------------------------

$('direct-btn').addEventListener('click', async () => {
  const channel = $('direct-channel').value.trim();
  const sub = client.subscribe(channel);
  try {
    await sub.ready;
    app.direct.push({ channel, ok: true });
    $('direct-result').textContent = `Subscribed to ${channel}.`;
    sub.unsubscribe();
  } catch (error) {
    app.direct.push({ channel, ok: false, code: error.code, message: error.message });
    $('direct-result').textContent = `${channel}: refused.`;
    showError(`Subscribe to ${channel}`, error);
  }
});

// ---- rendering ---------------------------------------------------------------------------

const money = (x) => `$${x.toLocaleString('en', { minimumFractionDigits: 2, maximumFractionDigits: 2 })}`;

function renderPortfolio(v) {
  $('total').textContent = money(v.total);
  $('total').dataset.value = v.total;
  $('total-sub').textContent = `update #${v.seq} at ${new Date(v.at).toLocaleTimeString()}`;
  $('positions').replaceChildren(...v.positions.map((p) => {
    const row = document.createElement('tr');
    row.dataset.symbol = p.symbol;
    row.innerHTML = '<td class="name"></td><td class="symbol"></td><td class="num units"></td><td class="num price"></td><td class="num value"></td>';
    row.querySelector('.name').textContent = p.name;
    row.querySelector('.symbol').textContent = p.symbol;
    row.querySelector('.units').textContent = p.units.toLocaleString('en');
    row.querySelector('.price').textContent = money(p.price);
    row.querySelector('.value').textContent = money(p.value);
    return row;
  }));
}

function renderKyc(status, at) {
  $('kyc-badge').textContent = status;
  $('kyc-badge').className = `badge ${status}`;
  $('kyc-badge').dataset.status = status;
  $('kyc-sub').textContent = at ? `since ${new Date(at).toLocaleTimeString()}` : '';
}

function renderProposals() {
  $('proposals-empty').hidden = app.proposals.length > 0;
  $('proposals').replaceChildren(...app.proposals.slice(-20).reverse().map((p) => {
    const item = document.createElement('li');
    item.dataset.id = p.id;
    item.textContent = p.title;
    return item;
  }));
}

function notice(text) {
  $('notice').textContent = text;
}

function showError(action, error) {
  app.errors.push({ action, code: error.code, message: error.message });
  const item = document.createElement('li');
  item.textContent = `${action} refused: ${error.message}${error.code ? ` (code ${error.code})` : ''}`;
  $('errors').prepend(item);
  $('errors-empty').hidden = true;
}

client.connect().catch((error) => notice(`Stopped: ${error.message}`));
