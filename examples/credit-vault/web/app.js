// The credit-vault page: plain ES modules, no build step, the Switchboard SDK from /sdk/.
//
// URL parameters (all optional):
//   user       who you are; the token comes from the backend's dev endpoint /token?user=
//   token      a connection token instead (its `sub` is the user)
//   ws         the gateway's WebSocket URL (default: /config.json's, else ws://<host>:8000/ws)
//   backend    where /token and /config.json live (default: this page's origin)
//   attempts   maxReconnectAttempts (default 10): after that many failed reconnects in a
//              row the page shows "failed" and a Retry button
//
// Every channel carries typed messages {type, data, timestamp, id}; one handler per type
// (`handlers` below) renders them, whatever channel they came on:
//   vault:<me>      vault_update (collateral, debt, health), risk_alert
//   user:<me>       risk_alert (the same message as on the vault channel: shown once, by id)
//   market:<chain>  market_data, one channel per chain
//   system:status   system_status, heartbeat (every 2 s)
//   rpc vault.status, vault.adjust   served by the backend from a Redis stream
//
// `window.app` exposes what happened, for the tests (tests/apps/credit-vault.test.mjs).
import { Client } from '/sdk/index.js';

const query = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const backend = query.get('backend') ?? '';
const urlToken = query.get('token');
const user = urlToken ? claims(urlToken).sub : query.get('user') ?? 'alice';
const maxAttempts = Number(query.get('attempts') ?? 10);
const CHAINS = ['ethereum', 'arbitrum', 'base'];
const vaultChannel = `vault:${user}`;
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
  const response = await fetch(`${backend}/token?user=${encodeURIComponent(user)}`);
  if (!response.ok) throw new Error(`token endpoint: HTTP ${response.status}`);
  return response.text();
}

const client = new Client(await gatewayUrl(), {
  getToken,
  maxReconnectAttempts: maxAttempts,
  backoff: { baseMs: 200, maxMs: 2000 },
  // A deposit made offline waits in the outbox: up to 30 s, time offline included.
  timeoutMs: 30_000,
});

const app = (window.app = {
  client,
  user,
  maxAttempts,
  state: 'idle',
  indicator: 'connecting', // connected | reconnecting | failed | closed
  node: null, // the gateway node of the current connection (connect reply's `node`)
  nodes: [],
  attempt: 0, // reconnect attempts since the last successful connect
  failures: [], // reconnectFailed events: {attempts}
  everConnected: false,
  received: {}, // channel -> [{offset, epoch, id, type}], every message delivered
  anomalies: [], // publications out of sequence or repeated (never expected)
  subscribed: {}, // channel -> its subscribe results
  vault: null, // the newest vault_update (or vault.status) data
  markets: {}, // chain -> the newest market_data
  alerts: [], // risk alerts, newest first, each once (by message id)
  system: null,
  beats: 0,
  lastBeat: 0,
  unknown: [], // messages of a type nobody handles
  ops: [], // vault.adjust results
  pending: 0, // vault.adjust calls not answered yet (queued in the outbox while offline)
  errors: [], // refused actions: {action, code, message}
});

// ---- typed message router: one handler per `type` -------------------------------------

const handlers = {
  vault_update(data) {
    app.vault = data;
    renderVault(data);
  },
  risk_alert(data, msg) {
    if (app.alerts.some((a) => a.id === msg.id)) return; // on vault:<me> and user:<me>: once
    app.alerts.unshift({ id: msg.id, timestamp: msg.timestamp, ...data });
    renderAlerts();
  },
  market_data(data) {
    app.markets[data.chain] = data;
    renderMarket(data);
  },
  system_status(data) {
    app.system = data;
    const banner = $('system');
    banner.className = data.status;
    banner.dataset.status = data.status;
    banner.textContent = `System status: ${data.status}${data.message ? ` · ${data.message}` : ''}`;
  },
  heartbeat() {
    app.beats += 1;
    app.lastBeat = Date.now();
    renderBeat();
  },
};

function route(msg, channel) {
  const handler = msg && typeof msg === 'object' ? handlers[msg.type] : undefined;
  if (!handler) {
    app.unknown.push({ channel, msg });
    return;
  }
  handler(msg.data, msg, channel);
}

/** Records a publication's position; a gap or a repeat in one channel is an anomaly. */
function track(channel, p) {
  const list = (app.received[channel] ??= []);
  const last = list.at(-1);
  if (last && last.epoch === p.epoch && p.offset !== last.offset + 1) {
    app.anomalies.push({ channel, kind: p.offset <= last.offset ? 'duplicate' : 'gap', offset: p.offset, after: last.offset });
  }
  if (list.some((r) => r.id === p.data?.id)) app.anomalies.push({ channel, kind: 'duplicate id', id: p.data?.id });
  list.push({ offset: p.offset, epoch: p.epoch, id: p.data?.id, type: p.data?.type });
}

function follow(sub) {
  const { channel } = sub;
  sub.on('subscribed', (event) => {
    (app.subscribed[channel] ??= []).push(event);
    if (event.resubscribed && event.recovered === false) {
      // The position could not be served: refetch what the channel carries.
      notice(`Reconnected: some updates of ${channel} could not be recovered; showing the newest.`);
      if (channel === vaultChannel) void loadStatus();
    }
  });
  sub.on('publication', (p) => {
    track(channel, p);
    route(p.data, channel);
  });
  sub.on('unsubscribed', ({ reason }) => notice(`${channel}: live updates stopped (${reason})`));
}

follow(client.subscribe(vaultChannel));
for (const chain of CHAINS) follow(client.subscribe(`market:${chain}`));
follow(client.subscribe('system:status'));
// The personal channel: the gateway subscribes every connection to its own.
client.on('subscribed', (sub) => {
  if (sub.channel === personalChannel && !app.subscribed[personalChannel]) {
    app.subscribed[personalChannel] = [];
    follow(sub);
  }
});

// ---- connection indicator -------------------------------------------------------------

client.on('state', ({ state }) => {
  app.state = state;
  if (state === 'connecting' && app.everConnected) app.attempt += 1;
  if (state === 'connected') {
    app.attempt = 0;
    app.indicator = 'connected';
  } else if (state === 'closed') {
    app.indicator = app.indicator === 'failed' ? 'failed' : 'closed';
  } else if (app.everConnected) {
    if (app.indicator === 'connected') notice(''); // a "Reconnected to …" of the last loss
    app.indicator = 'reconnecting';
  }
  renderConnection();
});
client.on('connected', (info) => {
  app.node = info.node;
  app.nodes.push(info.node);
  if (app.everConnected) notice(`Reconnected to ${info.node}.`);
  app.everConnected = true;
  renderConnection();
  if (!app.vault) void loadStatus();
});
client.on('reconnectFailed', ({ attempts }) => {
  app.failures.push({ attempts });
  app.indicator = 'failed';
  renderConnection();
});

function renderConnection() {
  const conn = $('conn');
  conn.className = `pill ${app.indicator}`;
  conn.dataset.indicator = app.indicator;
  const text = {
    connected: 'connected',
    connecting: 'connecting…',
    reconnecting: `reconnecting (attempt ${Math.max(app.attempt, 1)}/${maxAttempts})`,
    failed: 'failed',
    closed: 'closed',
  }[app.indicator];
  $('conn-state').textContent = text;
  $('conn-node').textContent = app.indicator === 'connected' && app.node ? ` · ${app.node}` : '';
  const offline = app.indicator === 'reconnecting' || app.indicator === 'failed' || app.indicator === 'closed';
  $('offline').hidden = !offline;
  $('retry-btn').hidden = app.indicator !== 'failed' && app.indicator !== 'closed';
  $('offline-text').textContent = app.indicator === 'failed'
    ? `Could not reconnect after ${app.failures.at(-1)?.attempts ?? maxAttempts} attempts.`
    : app.indicator === 'closed'
      ? 'Disconnected.'
      : `Connection lost: reconnecting (attempt ${Math.max(app.attempt, 1)} of ${maxAttempts}). Deposits and withdrawals are queued and sent on reconnect.`;
}

$('retry-btn').addEventListener('click', () => {
  app.indicator = 'reconnecting';
  app.attempt = 0;
  renderConnection();
  client.connect().catch((error) => notice(`Retry failed: ${error.message}`));
});

function renderBeat() {
  const age = app.lastBeat ? (Date.now() - app.lastBeat) / 1000 : null;
  $('beat').textContent = age === null ? '♥ –' : `♥ ${age < 1 ? 'now' : `${age.toFixed(0)} s ago`}`;
  $('beat').classList.toggle('fresh', age !== null && age < 5);
}
setInterval(renderBeat, 1000);

// ---- rendering ------------------------------------------------------------------------

const usd = (n) => n.toLocaleString('en', { style: 'currency', currency: 'USD', maximumFractionDigits: 0 });

function renderVault(v) {
  $('vault-id').textContent = v.vault;
  $('vault-id').dataset.vault = v.vault;
  $('vault-chain').textContent = `on ${v.chain}`;
  $('health').textContent = v.health.toFixed(2);
  $('health').dataset.health = v.health;
  $('collateral').textContent = `${v.collateral} ETH`;
  $('collateral').dataset.value = v.collateral;
  $('collateral-usd').textContent = usd(v.collateral_usd);
  $('debt').textContent = usd(v.debt);
  $('thresholds').textContent = `${v.alert_below.toFixed(2)} · ${v.safe_min.toFixed(2)}`;
  // The gauge: health 0..3 over the full circle.
  $('gauge').style.setProperty('--p', Math.min(100, (v.health / 3) * 100));
  $('gauge').className = v.health < v.safe_min ? 'critical' : v.health < v.alert_below ? 'warning' : '';
}

function renderMarket(m) {
  let tile = document.querySelector(`.ticker[data-chain="${m.chain}"]`);
  if (!tile) {
    tile = document.createElement('div');
    tile.className = 'ticker';
    tile.dataset.chain = m.chain;
    tile.innerHTML = '<div class="chain"></div><div class="price"></div><div class="sub gas"></div>';
    tile.querySelector('.chain').textContent = m.chain;
    $('markets').append(tile);
    [...$('markets').children].sort((a, b) => CHAINS.indexOf(a.dataset.chain) - CHAINS.indexOf(b.dataset.chain)).forEach((t) => $('markets').append(t));
  }
  tile.dataset.price = m.price;
  tile.dataset.block = m.block;
  tile.querySelector('.price').textContent = `ETH ${m.price.toFixed(2)}`;
  tile.querySelector('.gas').textContent = `gas ${m.gas_gwei} gwei · tick #${m.block}`;
}

function renderAlerts() {
  $('alerts-empty').hidden = app.alerts.length > 0;
  $('alerts').replaceChildren(...app.alerts.map((a) => {
    const li = document.createElement('li');
    li.className = a.level;
    li.dataset.id = a.id;
    li.dataset.level = a.level;
    li.innerHTML = '<div class="message"></div><div class="when"></div>';
    li.querySelector('.message').textContent = a.message;
    li.querySelector('.when').textContent = `${a.level} · ${new Date(a.timestamp).toLocaleTimeString()}`;
    return li;
  }));
}

function notice(text) {
  $('notice').textContent = text;
}

async function loadStatus() {
  try {
    const status = await client.rpc('vault.status');
    if (!app.vault) handlers.vault_update(status.vault);
    if (!app.markets[status.market.chain]) handlers.market_data(status.market);
    if (!app.system) handlers.system_status(status.system);
    return status;
  } catch (error) {
    notice(`Could not load your vault (${error.message}).`);
    return undefined;
  }
}

// ---- actions: vault.adjust through the outbox -----------------------------------------

function renderPending() {
  $('pending').textContent = app.pending === 0 ? ''
    : app.state === 'connected' ? `${app.pending} sending…` : `${app.pending} queued (offline)`;
  $('pending').dataset.pending = app.pending;
}
client.on('state', renderPending);

async function adjust(action) {
  const amount = Number($('amount').value);
  $('action-error').hidden = true;
  $('result').textContent = '';
  app.pending += 1;
  renderPending();
  try {
    // Offline, the SDK keeps the call in its outbox and sends it after the reconnect,
    // with this idempotency key: the backend applies it once even if it is sent twice.
    const result = await client.rpc('vault.adjust', { action, amount }, { idempotencyKey: crypto.randomUUID() });
    app.ops.push({ action, amount, ...result });
    $('result').textContent = `${action === 'deposit' ? 'Deposited' : 'Withdrew'} ${amount} ETH (operation #${result.op}): health ${result.vault.health.toFixed(2)}.`;
  } catch (error) {
    app.errors.push({ action, code: error.code, message: error.message, kind: error.kind });
    $('action-error').textContent = `${action === 'deposit' ? 'Deposit' : 'Withdraw'} refused: ${error.message}${error.code ? ` (code ${error.code})` : ''}`;
    $('action-error').hidden = false;
  } finally {
    app.pending -= 1;
    renderPending();
  }
}

$('deposit-btn').addEventListener('click', () => adjust('deposit'));
$('withdraw-btn').addEventListener('click', () => adjust('withdraw'));
$('status-btn').addEventListener('click', async () => {
  const status = await loadStatus();
  if (status) {
    handlers.vault_update(status.vault);
    $('result').textContent = `Vault ${status.vault.vault}: health ${status.vault.health.toFixed(2)} at ETH ${status.market.price.toFixed(2)} on ${status.vault.chain}.`;
  }
});
$('me').textContent = user;

renderConnection();
client.connect().catch((error) => notice(`Could not connect: ${error.message}`));
