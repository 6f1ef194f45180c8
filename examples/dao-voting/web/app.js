// The DAO voting page: plain ES modules, no build step, the Switchboard SDK from /sdk/.
//
// URL parameters (all optional):
//   proposal  the proposal to show (default 1)
//   user      who you are; the token comes from the backend's dev endpoint /token?user=
//   token     a connection token instead (its `sub` is the user)
//   ws        the gateway's WebSocket URL (default: /config.json's, else ws://<host>:8000/ws)
//   backend   where /token and /config.json live (default: this page's origin)
//
// What is live, and through what:
//   dao:proposal-<id>  `tally` after every vote, `quorum_reached` once (backend publishes);
//                      presence_stats of it is the viewer count, join/leave refresh it
//   user:<me>          `notification`s; read state is the `ack`ed position (protocol §4.10)
//   rpc dao.cast_vote, dao.get_proposal   answered by the backend through a Redis stream
//
// `window.app` exposes what happened, for the tests (tests/apps/dao-voting.test.mjs).
import { Client } from '/sdk/index.js';

const query = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const proposalId = query.get('proposal') ?? '1';
const backend = query.get('backend') ?? '';
const urlToken = query.get('token');
const user = urlToken ? claims(urlToken).sub : query.get('user') ?? 'alice';
const channel = `dao:proposal-${proposalId}`;
const personalChannel = `user:${user}`;
const MAX_SHOWN = 20; // recent votes on screen

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
  proposal: proposalId,
  state: 'idle',
  node: null, // the gateway node of the current connection (connect reply's `node`)
  nodes: [], // every node connected to, in order
  disconnects: [],
  subscribed: [], // the proposal channel's subscribe results
  received: [], // every publication of the proposal channel: {offset, epoch, event, seq}
  anomalies: [], // publications out of sequence (never expected)
  quorumEvents: [], // quorum_reached publications received (live or recovered)
  snapshots: 0, // proposal states loaded from the backend
  loaded: false,
  viewers: null,
  votes: [], // every vote, in order
  tally: null,
  quorumReached: false,
  myVote: null,
  voteErrors: [],
  notifications: [], // newest first: {key, offset, epoch, read, ...data}
  unread: 0,
  ackedOffset: null,
  personal: [], // the personal channel's subscribe results
});

// ---- connection indicator ----------------------------------------------------------

client.on('state', ({ state, code }) => {
  app.state = state;
  $('conn').className = state;
  $('conn-state').textContent = state + (state === 'disconnected' && code ? ` (${code})` : '');
  if (state !== 'connected') $('conn-node').textContent = '';
});
client.on('connected', (info) => {
  app.node = info.node;
  app.nodes.push(info.node);
  $('conn-node').textContent = ` · ${info.node}`;
  flushAck();
});
client.on('disconnected', (event) => app.disconnects.push(event));
$('me').textContent = user;

// ---- the proposal: snapshot from the backend, then the channel's publications ------

let view = null; // {proposal, tally, votes, seq, position, quorumReachedAt}
let loading = false;
let buffered = [];
let loadId = 0;

const proposalSub = client.subscribe(channel);
proposalSub.on('subscribed', (event) => {
  app.subscribed.push(event);
  if (!view || event.recovered === false || event.reset) {
    // First subscribe, or missed publications cannot be replayed (history trimmed, the
    // stream was reset): load the state again from the backend.
    if (view) notice(`Reconnected${app.node ? ` to ${app.node}` : ''}: updates could not be recovered; reloaded the proposal.`);
    void reload();
  } else if (event.resubscribed) {
    notice(`Reconnected${app.node ? ` to ${app.node}` : ''}: recovered ${event.missed ?? 0} missed update(s).`);
  }
  refreshViewers();
});
proposalSub.on('publication', (p) => {
  app.received.push({ offset: p.offset, epoch: p.epoch, event: p.event, seq: p.data?.seq });
  if (loading || !view) buffered.push(p);
  else applyPublication(p, false);
});
proposalSub.on('join', refreshViewers);
proposalSub.on('leave', refreshViewers);
proposalSub.on('unsubscribed', ({ reason }) => notice(`Live updates stopped: ${reason}`));

async function reload() {
  const id = ++loadId;
  loading = true;
  for (;;) {
    try {
      const snapshot = await client.rpc('dao.get_proposal', { proposal: proposalId });
      if (id !== loadId) return;
      applySnapshot(snapshot);
      break;
    } catch (error) {
      if (id !== loadId) return;
      if (error.code === 1404) {
        $('title').textContent = `No proposal ${proposalId}`;
        loading = false;
        return;
      }
      notice(`Could not load the proposal (${error.message}); retrying…`);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
  loading = false;
  // Publications that arrived while loading: those the snapshot already holds are skipped.
  const pending = buffered;
  buffered = [];
  for (const p of pending) applyPublication(p, true);
}

function applySnapshot(s) {
  app.snapshots += 1;
  view = {
    proposal: s.proposal,
    tally: s.tally,
    votes: [...s.votes],
    seq: s.tally.seq,
    position: s.position,
    quorumReachedAt: s.quorum_reached_at,
  };
  app.myVote = s.my_vote;
  renderProposal(s.proposals ?? []);
  renderTally();
  renderVotes();
  renderMyVote();
  app.loaded = true;
}

function applyPublication(p, wasBuffered) {
  const inSnapshot = view.position && p.epoch === view.position.epoch && p.offset <= view.position.offset;
  if (p.event === 'tally') {
    const seq = p.data.seq;
    if (seq <= view.seq) {
      // Already in the snapshot. Anything else would be a publication delivered twice.
      if (!inSnapshot && !wasBuffered) app.anomalies.push({ kind: 'duplicate', offset: p.offset, seq });
      return;
    }
    if (seq !== view.seq + 1) {
      app.anomalies.push({ kind: 'gap', offset: p.offset, seq, expected: view.seq + 1 });
      notice('An update was missing; reloading the proposal.');
      void reload();
      return;
    }
    const { vote, ...tally } = p.data;
    view.votes.push(vote);
    view.seq = seq;
    view.tally = tally;
    view.position = { offset: p.offset, epoch: p.epoch };
    renderTally();
    renderVotes(seq);
  } else if (p.event === 'quorum_reached') {
    if (!inSnapshot) app.quorumEvents.push(p.data);
    if (view.quorumReachedAt === null) notice(`Quorum reached with ${p.data.total_power} votes cast.`);
    view.quorumReachedAt = p.data.at;
    view.position = { offset: p.offset, epoch: p.epoch };
    renderTally();
  }
}

let viewersBusy = false;
let viewersAgain = false;
async function refreshViewers() {
  // One presence_stats call at a time; a join/leave during it asks again afterwards.
  if (viewersBusy) {
    viewersAgain = true;
    return;
  }
  viewersBusy = true;
  try {
    do {
      viewersAgain = false;
      try {
        const { clients } = await client.presenceStats(channel);
        app.viewers = clients;
        $('viewers').textContent = `${clients} watching`;
      } catch {
        // disconnected: the next subscribe refreshes it
      }
    } while (viewersAgain);
  } finally {
    viewersBusy = false;
  }
}

// ---- rendering ------------------------------------------------------------------------

function renderProposal(proposals) {
  const p = view.proposal;
  document.title = `${p.title} · DAO voting`;
  $('title').textContent = p.title;
  $('description').textContent = p.description;
  $('creator').textContent = `Proposal #${p.id} by ${p.creator_name}`;
  const nav = $('proposals');
  nav.replaceChildren(...proposals.map(({ id, title }) => {
    const params = new URLSearchParams(location.search);
    params.set('proposal', id);
    return Object.assign(document.createElement('a'), {
      href: `?${params}`, textContent: `#${id}`, title, className: id === proposalId ? 'current' : '',
    });
  }));
}

function renderTally() {
  const t = view.tally;
  app.tally = t;
  app.quorumReached = view.quorumReachedAt !== null;
  app.votes = view.votes;
  for (const choice of ['for', 'against', 'abstain']) {
    const { votes, power } = t[choice];
    const share = t.total_power > 0 ? power / t.total_power : 0;
    const text = $(`${choice}-text`);
    text.textContent = `${power} votes · ${votes} voter${votes === 1 ? '' : 's'} · ${Math.round(share * 100)}%`;
    text.dataset.power = power;
    text.dataset.voters = votes;
    $(`${choice}-bar`).style.width = `${share * 100}%`;
  }
  $('quorum-text').textContent = `${t.total_power} / ${t.quorum} (${Math.round(t.quorum_progress * 100)}%)`;
  $('quorum-text').dataset.power = t.total_power;
  $('quorum-bar').style.width = `${t.quorum_progress * 100}%`;
  $('quorum').classList.toggle('reached', app.quorumReached);
  $('quorum-banner').hidden = !app.quorumReached;
  if (app.quorumReached) $('quorum-banner').textContent = `✔ Quorum reached: ${t.total_power} of ${t.quorum} votes needed`;
  $('votes-count').textContent = `${t.seq} vote${t.seq === 1 ? '' : 's'}`;
}

function renderVotes(freshSeq) {
  const shown = view.votes.slice(-MAX_SHOWN).reverse();
  $('votes').replaceChildren(...shown.map((v) => {
    const item = document.createElement('li');
    item.dataset.seq = v.seq;
    item.dataset.user = v.user;
    item.dataset.choice = v.choice;
    item.dataset.power = v.power;
    if (v.seq === freshSeq) item.className = 'fresh';
    const when = new Date(v.at).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
    item.innerHTML = '<span class="seq"></span><span><b class="who"></b> <span class="choice"></span><br><span class="when"></span></span><span class="power"></span>';
    item.querySelector('.seq').textContent = `#${v.seq}`;
    item.querySelector('.who').textContent = v.name ?? v.user;
    item.querySelector('.choice').textContent = v.choice;
    item.querySelector('.choice').classList.add(v.choice);
    item.querySelector('.when').textContent = when;
    item.querySelector('.power').textContent = `${v.power} votes`;
    return item;
  }));
  const hidden = view.votes.length - shown.length;
  $('votes-more').textContent = hidden > 0 ? `and ${hidden} earlier vote${hidden === 1 ? '' : 's'}` : view.votes.length ? '' : 'No votes yet.';
}

function renderMyVote() {
  const v = app.myVote;
  $('my-vote').textContent = v ? `You voted ${v.choice.toUpperCase()} with ${v.power} votes.` : `Signed in as ${user}.`;
}

function notice(text) {
  $('notice').textContent = text;
}

// ---- voting ---------------------------------------------------------------------------

const buttons = [...document.querySelectorAll('.votebar button')];
for (const button of buttons) button.addEventListener('click', () => vote(button.dataset.choice));

async function vote(choice) {
  buttons.forEach((b) => (b.disabled = true));
  $('vote-error').hidden = true;
  $('vote-status').hidden = true;
  try {
    // The backend checks membership, voting power and one vote per user; the gateway
    // tells it who the user is. A resend after a lost connection carries the same
    // idempotency key, so it cannot count twice.
    const result = await client.rpc('dao.cast_vote', { proposal: proposalId, choice });
    app.myVote = result.vote;
    renderMyVote();
    $('vote-status').textContent = `Vote #${result.vote.seq} recorded: ${choice.toUpperCase()} with ${result.vote.power} votes.`;
    $('vote-status').hidden = false;
  } catch (error) {
    app.voteErrors.push({ code: error.code, message: error.message, kind: error.kind });
    $('vote-error').textContent = `Vote refused: ${error.message}${error.code ? ` (code ${error.code})` : ''}`;
    $('vote-error').hidden = false;
  } finally {
    buttons.forEach((b) => (b.disabled = false));
  }
}

// ---- notifications: the personal channel --------------------------------------------
//
// Read state is the acknowledged position of user:<me>, stored by the gateway per user.
// A connect without `recover` (a page load) delivers only what follows it (protocol
// §3.1), so the pushes after the connect reply are exactly the unread notifications,
// and everything up to `offset - missed` was read: those come from `history`, shown as
// read. While the page stays open the SDK reconnects with `recover` (its own position),
// which ignores acknowledgements, so nothing already shown comes again.

let personal = null;
let readUpTo = null; // {epoch, offset}: everything up to it is read
let pendingAck = null;

client.on('subscribed', (sub) => {
  if (sub.channel !== personalChannel) return;
  personal = sub;
  sub.on('subscribed', (event) => {
    app.personal.push(event);
    if (event.resubscribed) {
      // Reconnected with `recover`: what was missed follows, unless it cannot be (history
      // trimmed, the stream reset): then take what history still holds.
      if (event.recovered === false) void loadReadNotifications();
      return;
    }
    readUpTo = { epoch: event.epoch, offset: event.offset - (event.missed ?? 0) };
    if (event.recovered === false) notice('Some older unread notifications expired before you came back.');
    void loadReadNotifications();
  });
  sub.on('publication', (p) => {
    if (p.event !== 'notification') return;
    const read = readUpTo !== null && p.epoch === readUpTo.epoch && p.offset <= readUpTo.offset;
    if (addNotification(p, read) && !read && p.data.priority === 'high') browserNotification(p.data);
  });
});

async function loadReadNotifications() {
  try {
    const { publications } = await client.history(personalChannel, { limit: 20 });
    for (const p of publications) {
      if (p.event !== 'notification') continue;
      // Before the acknowledged position (or from an older epoch): read.
      const read = p.epoch !== readUpTo.epoch || p.offset <= readUpTo.offset;
      addNotification(p, read);
    }
  } catch {
    // not connected: the unread ones are shown anyway
  }
}

/** Adds a notification once (by position); returns whether it was new. */
function addNotification(p, read) {
  const key = `${p.epoch}:${p.offset}`;
  if (app.notifications.some((n) => n.key === key)) return false;
  app.notifications.push({ key, offset: p.offset, epoch: p.epoch, read, ...p.data });
  app.notifications.sort((a, b) => (b.at ?? 0) - (a.at ?? 0) || b.offset - a.offset);
  renderNotifications();
  return true;
}

function renderNotifications() {
  app.unread = app.notifications.filter((n) => !n.read).length;
  $('unread').textContent = String(app.unread);
  $('unread').hidden = app.unread === 0;
  $('notif-empty').hidden = app.notifications.length > 0;
  $('notif-list').replaceChildren(...app.notifications.map((n) => {
    const item = document.createElement('li');
    item.className = `notif ${n.read ? 'read' : 'unread'} ${n.priority}`;
    item.dataset.offset = n.offset;
    item.innerHTML = '<span class="prio"></span><div class="title"></div><div class="message"></div>';
    item.querySelector('.prio').textContent = n.priority;
    item.querySelector('.title').textContent = n.title;
    item.querySelector('.message').textContent = n.message;
    return item;
  }));
}

function browserNotification(data) {
  if (typeof Notification === 'undefined' || Notification.permission !== 'granted') return;
  try {
    new Notification(data.title, { body: data.message });
  } catch {
    // some browsers only allow them from a service worker
  }
}

$('bell').addEventListener('click', () => {
  $('panel').hidden = !$('panel').hidden;
});
$('mark-read').addEventListener('click', markAllRead);

function markAllRead() {
  if (!personal?.position) return;
  for (const n of app.notifications) n.read = true;
  renderNotifications();
  // Everything delivered so far is shown, so the subscription's position is what was read.
  readUpTo = { ...personal.position };
  pendingAck = { ...personal.position };
  void flushAck();
}

async function flushAck() {
  const position = pendingAck;
  if (!position || client.state !== 'connected') return; // sent after the next connect
  try {
    await client.ack(personalChannel, position);
    if (pendingAck === position) pendingAck = null;
    app.ackedOffset = position.offset;
  } catch {
    // lost the connection meanwhile: `connected` sends it again
  }
}

client.connect().catch((error) => notice(`Stopped: ${error.message}`));
