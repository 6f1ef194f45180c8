// The validator dashboard page: plain ES modules, no build step, the Switchboard SDK from /sdk/.
//
// URL parameters (all optional):
//   user, role  who you are; the token comes from the backend's dev endpoint /token?user=&role=
//   token       a connection token instead (its `sub` is the user, `info.role` the role)
//   ws          the gateway's WebSocket URL (default: /config.json's, else ws://<host>:8000/ws)
//   backend     where /token and /config.json live (default: this page's origin)
//
// What is live, and through what:
//   validators:network  a `stats` event per block (heights, validation counts, consensus);
//                       presence_stats of it is the connected count, join/leave refresh it
//   user:<me>           `alert`s, once subscribed with validators.subscribe_alerts
//   rpc validators.status, .subscribe_alerts, .jail   posted by the gateway to the backend
//
// `window.app` exposes what happened, for the tests (tests/apps/validator-dashboard.test.mjs).
import { Client } from '/sdk/index.js';

const query = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const backend = query.get('backend') ?? '';
const urlToken = query.get('token');
const tokenClaims = urlToken ? claims(urlToken) : {};
const user = urlToken ? tokenClaims.sub : query.get('user') ?? 'alice';
const role = urlToken ? tokenClaims.info?.role ?? 'viewer' : query.get('role') ?? 'viewer';
const channel = 'validators:network';
const personalChannel = `user:${user}`;

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
  const response = await fetch(`${backend}/token?user=${encodeURIComponent(user)}&role=${encodeURIComponent(role)}`);
  if (!response.ok) throw new Error(`token endpoint: HTTP ${response.status}`);
  return response.text();
}

const client = new Client(await gatewayUrl(), { getToken });

const app = (window.app = {
  client,
  user,
  role,
  state: 'idle',
  node: null, // the gateway node of the current connection (connect reply's `node`)
  nodes: [],
  subscribed: [], // the network channel's subscribe results
  received: [], // every `stats` publication: {offset, epoch, height}
  anomalies: [], // publications out of sequence (never expected)
  stats: null, // the newest `stats`
  connected: null, // presence_stats clients of the network channel
  directory: null, // validators' names and stakes (from validators.status)
  statusAnswers: [],
  alertsOn: false,
  alerts: [], // newest first
  errors: [], // refused actions: {action, code, message}
});

// ---- connection indicator ----------------------------------------------------------

client.on('state', ({ state, code }) => {
  app.state = state;
  $('conn').className = `pill ${state}`;
  $('conn-state').textContent = state + (state === 'disconnected' && code ? ` (${code})` : '');
  if (state !== 'connected') $('conn-node').textContent = '';
});
client.on('connected', (info) => {
  app.node = info.node;
  app.nodes.push(info.node);
  $('conn-node').textContent = ` · ${info.node}`;
  if (!app.directory) void loadDirectory();
});
$('me').textContent = user;
$('role').textContent = role;

// ---- the network channel ---------------------------------------------------------------

const network = client.subscribe(channel);
network.on('subscribed', (event) => {
  app.subscribed.push(event);
  if (event.resubscribed) {
    // The SDK resubscribed with its last position: the blocks missed meanwhile follow, in order.
    notice(event.recovered === false
      ? `Reconnected${app.node ? ` to ${app.node}` : ''}: some blocks could not be recovered; showing the newest.`
      : `Reconnected${app.node ? ` to ${app.node}` : ''}: recovered ${event.missed ?? 0} missed block(s).`);
  }
  refreshConnected();
});
network.on('publication', (p) => {
  if (p.event !== 'stats') return;
  const last = app.received.at(-1);
  // Each block is one publication: offsets and heights both go up by one.
  if (last && last.epoch === p.epoch && (p.offset !== last.offset + 1 || p.data.height !== last.height + 1)) {
    app.anomalies.push({ kind: p.offset <= last.offset ? 'duplicate' : 'gap', offset: p.offset, after: last.offset, height: p.data.height });
  }
  app.received.push({ offset: p.offset, epoch: p.epoch, height: p.data.height });
  if (!app.stats || p.data.height > app.stats.height) render(p.data);
});
network.on('join', refreshConnected);
network.on('leave', refreshConnected);
network.on('unsubscribed', ({ reason }) => notice(`Live updates stopped: ${reason}`));

let connectedBusy = false;
let connectedAgain = false;
async function refreshConnected() {
  // One presence_stats call at a time; a join/leave during it asks again afterwards.
  if (connectedBusy) {
    connectedAgain = true;
    return;
  }
  connectedBusy = true;
  try {
    do {
      connectedAgain = false;
      try {
        const { clients } = await client.presenceStats(channel);
        app.connected = clients;
        $('connected').textContent = `${clients} connected`;
      } catch {
        // disconnected: the next subscribe refreshes it
      }
    } while (connectedAgain);
  } finally {
    connectedBusy = false;
  }
}

async function loadDirectory() {
  try {
    const status = await client.rpc('validators.status');
    app.directory = Object.fromEntries(status.validators.map((v) => [v.id, v]));
    $('jail-target').replaceChildren(...status.validators.map((v) => Object.assign(document.createElement('option'), { value: v.id, textContent: v.name })));
    if (app.stats) render(app.stats);
  } catch (error) {
    notice(`Could not load the validators (${error.message}).`);
  }
}

// ---- rendering ------------------------------------------------------------------------

function render(stats) {
  app.stats = stats;
  $('height').textContent = `#${stats.height}`;
  $('height').dataset.height = stats.height;
  $('height-sub').textContent = `at ${new Date(stats.at).toLocaleTimeString()}`;
  $('total-validations').textContent = stats.total_validations.toLocaleString('en');
  $('total-validations').dataset.value = stats.total_validations;
  $('signed').textContent = `${stats.signed} / ${stats.validators.length}`;
  $('final').textContent = stats.final ? '✔ final' : '✖ not final (below ⅔ of stake)';
  $('consensus-text').textContent = `${stats.consensus.toFixed(1)}%`;
  $('consensus-text').dataset.value = stats.consensus;
  $('gauge').style.setProperty('--p', stats.consensus);
  $('gauge').classList.toggle('below', !stats.final);
  $('validators').replaceChildren(...stats.validators.map((v) => {
    const known = app.directory?.[v.id];
    const row = document.createElement('tr');
    row.dataset.id = v.id;
    row.dataset.status = v.status;
    row.dataset.validations = v.validations;
    row.innerHTML = '<td class="name"></td><td class="num stake"></td><td><span class="status"></span></td><td class="num validations"></td><td class="num missed"></td><td class="num last"></td>';
    row.querySelector('.name').textContent = known?.name ?? v.id;
    row.querySelector('.stake').textContent = known ? `${known.stake}%` : '';
    row.querySelector('.status').textContent = v.status;
    row.querySelector('.status').classList.add(v.status);
    row.querySelector('.validations').textContent = v.validations;
    row.querySelector('.missed').textContent = v.missed;
    row.querySelector('.last').textContent = v.last_signed === null ? '–' : `#${v.last_signed}`;
    return row;
  }));
}

function notice(text) {
  $('notice').textContent = text;
}

function showError(action, error) {
  app.errors.push({ action, code: error.code, message: error.message, kind: error.kind });
  $('action-error').textContent = `${action} refused: ${error.message}${error.code ? ` (code ${error.code})` : ''}`;
  $('action-error').hidden = false;
}

/** Runs a button's rpc; a refusal is shown under the buttons. */
async function action(name, call) {
  $('action-error').hidden = true;
  try {
    return await call();
  } catch (error) {
    showError(name, error);
    return undefined;
  }
}

// ---- actions --------------------------------------------------------------------------

$('status-btn').addEventListener('click', () => action('Status', async () => {
  const s = await client.rpc('validators.status');
  app.statusAnswers.push(s);
  const down = s.validators.filter((v) => v.status === 'offline' || v.status === 'jailed').map((v) => `${v.name} (${v.status})`);
  const result = $('status-result');
  result.textContent = `Status at block #${s.height}: consensus ${s.consensus.toFixed(1)}% (${s.final ? 'final' : 'not final'}), ` +
    `${s.validators.length - down.length}/${s.validators.length} validators up${down.length ? `; down: ${down.join(', ')}` : ''}.`;
  result.dataset.height = s.height;
}));

$('alerts-btn').addEventListener('click', () => action('Alerts', async () => {
  const method = app.alertsOn ? 'validators.unsubscribe_alerts' : 'validators.subscribe_alerts';
  const { subscribed } = await client.rpc(method);
  app.alertsOn = subscribed;
  $('alerts-btn').textContent = subscribed ? 'Unsubscribe from alerts' : 'Subscribe to alerts';
  $('alerts-state').textContent = subscribed ? '(on)' : '(off)';
}));

$('jail-btn').addEventListener('click', () => action('Jail', async () => {
  const validator = $('jail-target').value;
  const { jailed_until: until } = await client.rpc('validators.jail', { validator, blocks: 6 });
  $('status-result').textContent = `${app.directory?.[validator]?.name ?? validator} jailed until block #${until}.`;
}));

// ---- alerts: the personal channel -------------------------------------------------------
//
// Every connection is subscribed to user:<me> by the gateway; the backend publishes there
// with POST /api/v1/users/publish. The SDK recovers it after a reconnect like any channel;
// alerts are kept by position, so one is never shown twice.

client.on('subscribed', (sub) => {
  if (sub.channel !== personalChannel) return;
  sub.on('publication', (p) => {
    if (p.event !== 'alert') return;
    const key = `${p.epoch}:${p.offset}`;
    if (app.alerts.some((a) => a.key === key)) return;
    app.alerts.unshift({ key, offset: p.offset, ...p.data });
    renderAlerts();
  });
});

function renderAlerts() {
  $('alerts-empty').hidden = app.alerts.length > 0;
  $('alerts').replaceChildren(...app.alerts.slice(0, 50).map((a) => {
    const item = document.createElement('li');
    item.className = a.severity;
    item.dataset.kind = a.kind;
    item.innerHTML = '<div class="message"></div><div class="when"></div>';
    item.querySelector('.message').textContent = a.message;
    item.querySelector('.when').textContent = `${a.severity} · block #${a.height} · ${new Date(a.at).toLocaleTimeString()}`;
    return item;
  }));
}

client.connect().catch((error) => notice(`Stopped: ${error.message}`));
