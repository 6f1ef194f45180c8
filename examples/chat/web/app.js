// The chat page: plain ES modules, no build step, the Switchboard SDK from /sdk/.
//
// URL parameters (all optional):
//   conversation  the conversation to open (default: the most recent one)
//   user          who you are; the token comes from the backend's dev endpoint /token?user=
//   token         a connection token instead (its `sub` is the user)
//   ws            the gateway's WebSocket URL (default: /config.json's, else ws://<host>:8000/ws)
//   backend       where /token and /config.json live (default: this page's origin)
//
// What is live, and through what:
//   conversation:<id>  `message` (published by this page; the backend's publish hook stores
//                      and stamps it before the broadcast), `typing` (ephemeral), `read`
//                      and `members` (the backend); subscribing runs the subscribe hook,
//                      which lets members only in and answers the recent messages
//   user:<me>          `unread`, `presence`, `conversation` (the backend): versioned
//                      states, applied when newer than what the page has
//   rpc chat.*         get_state, get_conversation, history, mark_read
//
// `window.app` exposes what happened, for the tests (tests/apps/chat.test.mjs).
import { Client } from '/sdk/index.js';

const query = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const backend = query.get('backend') ?? '';
const urlToken = query.get('token');
const user = urlToken ? claims(urlToken).sub : query.get('user') ?? 'alice';
const personalChannel = `user:${user}`;
const MAX_LENGTH = 2000; // the backend's limit, shown by the counter; the backend decides
const TYPING_EVERY_MS = 2000; // while typing, say so at most this often
const TYPING_IDLE_MS = 3000; // no keystroke for this long: stopped typing
const TYPING_SHOWN_MS = 6000; // someone's indicator goes away after this long without news

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

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const randomId = () => Array.from(crypto.getRandomValues(new Uint8Array(12)), (b) => b.toString(16).padStart(2, '0')).join('');

const client = new Client(await gatewayUrl(), { getToken });

const app = (window.app = {
  client,
  user,
  state: 'idle',
  node: null, // the gateway node of the current connection (connect reply's `node`)
  nodes: [], // every node connected to, in order
  disconnects: [],
  stateLog: [], // {state, code, reason, at}: the connection's history
  loaded: false, // the conversation list is loaded
  snapshots: 0, // chat.get_state answers applied
  personal: [], // the personal channel's subscribe results
  ackedOffset: null,
  conversations: [], // the list as shown: {id, title, unread, online}
  unread: {}, // conversation -> unread count (the backend's)
  presence: {}, // contact -> online
  presenceLog: [], // every change of a contact's online state shown: {user, online, v}
  current: null, // the open conversation
  subscribed: [], // the open conversation's subscribe results
  sessions: [], // runs of contiguous publications: {channel, from, offsets[]} (a new one when not recovered)
  messages: [], // the open conversation's messages on screen: {id, seq, from, text}
  pending: [], // texts sent, not yet back from the backend
  reads: {}, // the open conversation's read positions
  seen: null, // {id, by[]}: the "Seen" line
  typing: [], // names shown as typing
  typingReceived: [], // ephemeral typing publications received: {user, typing, offset}
  typingSent: 0,
  sendErrors: [],
  convError: null, // why the open conversation was refused: {code, message}
});

// ---- connection indicator ----------------------------------------------------------

client.on('state', ({ state, code, reason }) => {
  app.state = state;
  app.stateLog.push({ state, code, reason, at: Date.now() });
  $('conn').className = state;
  $('conn-state').textContent = state + (state === 'disconnected' && code ? ` (${code})` : '');
  if (state !== 'connected') $('conn-node').textContent = '';
  renderMessages();
});
client.on('connected', (info) => {
  app.node = info.node;
  app.nodes.push(info.node);
  $('conn-node').textContent = ` · ${info.node}`;
  void flushAck();
});
client.on('disconnected', (event) => app.disconnects.push(event));
$('me').textContent = user;

// ---- the user's state: conversations, unread counts, presence ------------------------
//
// Each is a versioned state (`v`): the page keeps the newest it has seen, from the
// chat.get_state snapshot or from the personal channel, in whatever order they come.

const convMeta = new Map(); // id -> {id, title, direct, members}
const unread = new Map(); // id -> {unread, last, last_seq, read_seq, v}
const previews = new Map(); // id -> the newest message known (unread state or the open conversation)
const presence = new Map(); // user -> {online, v, at}
const names = new Map([[user, user]]);

function mergeUnread(id, state) {
  const known = unread.get(id);
  if (!known || state.v > known.v) unread.set(id, { unread: state.unread, last: state.last, last_seq: state.last_seq, read_seq: state.read_seq, v: state.v });
  if (state.last) notePreview(id, state.last);
}

function notePreview(id, message) {
  const known = previews.get(id);
  if (!known || message.seq > known.seq) previews.set(id, message);
}

function mergePresence(who, state) {
  const known = presence.get(who);
  if (!known || state.v > known.v) {
    presence.set(who, { online: state.online, v: state.v, at: state.at });
    if (known?.online !== state.online) app.presenceLog.push({ user: who, online: state.online, v: state.v });
  }
  if (state.name) names.set(who, state.name);
}

function setMeta(summary) {
  const { id, title, direct, members } = summary;
  convMeta.set(id, { id, title, direct, members });
  for (const m of members) names.set(m.id, m.name);
}

let loadId = 0;
async function loadState() {
  const id = ++loadId;
  for (;;) {
    try {
      const state = await client.rpc('chat.get_state');
      if (id !== loadId) return;
      app.snapshots += 1;
      names.set(user, state.me.name);
      $('me').textContent = state.me.name;
      for (const summary of state.conversations) {
        setMeta(summary);
        mergeUnread(summary.id, summary);
      }
      for (const [who, p] of Object.entries(state.presence)) mergePresence(who, p);
      app.loaded = true;
      renderList();
      renderHead();
      if (!open) openConversation(query.get('conversation') ?? state.conversations[0]?.id);
      return;
    } catch (error) {
      if (id !== loadId) return;
      notice(`Could not load your conversations (${error.message}); retrying…`);
      await sleep(1000);
    }
  }
}

let personalSub = null;
client.on('subscribed', (sub) => {
  if (sub.channel !== personalChannel) return;
  personalSub = sub;
  sub.on('subscribed', (event) => {
    app.personal.push(event);
    // A page load (offline delivery from the acknowledged position follows, applied like
    // live updates), or a reconnect whose missed updates cannot be replayed: load the state.
    if (!event.resubscribed || event.recovered === false || event.reset) void loadState();
  });
  sub.on('publication', (p) => {
    applyPersonal(p);
    scheduleAck();
  });
});

function applyPersonal(p) {
  const data = p.data ?? {};
  if (p.event === 'unread') {
    mergeUnread(data.conversation, data);
  } else if (p.event === 'presence') {
    mergePresence(data.user, data);
  } else if (p.event === 'conversation') {
    setMeta(data.conversation);
    mergeUnread(data.conversation.id, data.conversation);
    for (const [who, state] of Object.entries(data.presence ?? {})) mergePresence(who, state);
  } else {
    return;
  }
  renderList();
  renderHead();
}

// The personal channel only carries states the page also loads at start: acknowledge what
// was processed, so that the next page load is not sent everything again (protocol §3.1).
let ackTimer;
let acked = null;
function scheduleAck() {
  clearTimeout(ackTimer);
  ackTimer = setTimeout(flushAck, 300);
}

async function flushAck() {
  const position = personalSub?.position;
  if (!position || client.state !== 'connected') return; // sent after the next connect
  if (acked && acked.epoch === position.epoch && acked.offset >= position.offset) return;
  try {
    await client.ack(personalChannel, position);
    acked = { ...position };
    app.ackedOffset = position.offset;
  } catch {
    // lost the connection meanwhile: `connected` sends it again
  }
}

// ---- the open conversation --------------------------------------------------------

let open = null; // {id, channel, sub, messages: Map(id -> message), reads, pending: Map(cid -> ...), typers, more, failed}

function openConversation(id) {
  if (!id || open?.id === id) return;
  const previous = open;
  if (previous) stopTyping();
  const conv = (open = {
    id,
    channel: `conversation:${id}`,
    messages: new Map(),
    reads: {},
    pending: new Map(),
    typers: new Map(),
    more: false,
    failed: null,
    session: null,
    freshId: null,
  });
  // After `open` moved on: the old subscription's events no longer reach the screen.
  if (previous) void previous.sub.unsubscribe().catch(() => {});
  app.current = id;
  app.convError = null;
  app.typing = [];
  const params = new URLSearchParams(location.search);
  params.set('conversation', id);
  history.replaceState(null, '', `?${params}`);
  $('conv-error').hidden = true;
  $('send-error').hidden = true;
  $('input').disabled = false;
  $('send').disabled = false;
  renderList();
  renderHead();
  renderMessages();
  renderTyping();

  // The subscribe hook decides: members get the recent messages as the reply's `data`.
  const sub = (conv.sub = client.subscribe(conv.channel));
  sub.on('subscribed', (event) => {
    if (open !== conv) return;
    app.subscribed.push({
      channel: conv.channel, epoch: event.epoch, offset: event.offset, recovered: event.recovered,
      missed: event.missed, resubscribed: event.resubscribed, reset: event.reset === true, data: event.data !== undefined,
    });
    // Publications continue from the last one delivered only after a recovered resubscribe.
    if (!conv.session || event.recovered !== true) {
      conv.session = { channel: conv.channel, epoch: event.epoch, from: event.offset, offsets: [] };
      app.sessions.push(conv.session);
    }
    if (event.data) applySnapshot(conv, event.data);
    if (!event.resubscribed || event.recovered === false || event.reset) {
      // What was published between the hook's answer and the subscription, or all that
      // could not be recovered: the channel's history (messages are merged by id).
      void catchUp(conv, event.data === undefined);
    }
    if (event.resubscribed) {
      notice(event.recovered
        ? `Reconnected${app.node ? ` to ${app.node}` : ''}: recovered ${event.missed ?? 0} missed update(s).`
        : `Reconnected${app.node ? ` to ${app.node}` : ''}: reloaded the conversation.`);
    }
    renderAll();
    void markRead();
  });
  sub.on('publication', (p) => onPublication(conv, p));
  sub.on('error', (error) => {
    if (open !== conv) return;
    // Refused: by the subscribe hook (not a member, no such conversation), or the policy.
    conv.failed = error;
    app.convError = { code: error.code, message: error.message };
    $('conv-error').textContent = `You cannot open this conversation: ${error.message}${error.code ? ` (code ${error.code})` : ''}`;
    $('conv-error').hidden = false;
    $('input').disabled = true;
    $('send').disabled = true;
    renderHead();
    renderMessages();
  });
  sub.on('unsubscribed', ({ reason }) => {
    if (open === conv && !conv.failed) notice(`Live updates stopped: ${reason}`);
  });
}

function applySnapshot(conv, snapshot) {
  setMeta(snapshot.conversation);
  mergeUnread(conv.id, snapshot.conversation);
  for (const m of snapshot.messages) addMessage(conv, m);
  for (const [who, seq] of Object.entries(snapshot.reads ?? {})) noteRead(conv, who, seq);
  if (conv.messages.size <= snapshot.messages.length) conv.more = snapshot.more;
}

async function catchUp(conv, needSnapshot) {
  try {
    if (needSnapshot) {
      const snapshot = await client.rpc('chat.get_conversation', { conversation: conv.id });
      if (open !== conv) return;
      applySnapshot(conv, snapshot);
    }
    const { publications } = await client.history(conv.channel, { limit: 100 });
    if (open !== conv) return;
    for (const p of publications) {
      if (p.event === 'message') addMessage(conv, p.data);
      else if (p.event === 'read') noteRead(conv, p.data.user, p.data.seq);
    }
    renderAll();
    void markRead();
  } catch {
    // disconnected meanwhile: the next subscribe catches up again
  }
}

function onPublication(conv, p) {
  if (open !== conv) return;
  if (p.offset === undefined) {
    // Ephemeral: delivered live only, never stored.
    if (p.event === 'typing') onTyping(conv, p);
    return;
  }
  conv.session?.offsets.push(p.offset);
  const data = p.data ?? {};
  if (p.event === 'message') {
    if (addMessage(conv, data)) conv.freshId = data.id;
    conv.typers.delete(data.from);
    renderTyping();
    void markRead();
  } else if (p.event === 'read') {
    noteRead(conv, data.user, data.seq);
  } else if (p.event === 'members') {
    const meta = convMeta.get(conv.id);
    if (meta) setMeta({ ...meta, members: data.members });
  }
  renderAll();
}

/** Adds a stored message once (by its database id); returns whether it was new. */
function addMessage(conv, m) {
  if (!m || typeof m.id !== 'number') return false;
  if (m.cid) conv.pending.delete(m.cid);
  if (conv.messages.has(m.id)) return false;
  conv.messages.set(m.id, m);
  names.set(m.from, m.name);
  notePreview(conv.id, m);
  return true;
}

function noteRead(conv, who, seq) {
  if (typeof seq === 'number' && seq > (conv.reads[who] ?? 0)) conv.reads[who] = seq;
}

$('load-earlier').addEventListener('click', async () => {
  const conv = open;
  const oldest = Math.min(...[...conv.messages.values()].map((m) => m.seq));
  try {
    const { messages, more } = await client.rpc('chat.history', { conversation: conv.id, before: oldest });
    if (open !== conv) return;
    for (const m of messages) addMessage(conv, m);
    conv.more = more;
    renderMessages(false);
  } catch (error) {
    notice(`Could not load earlier messages: ${error.message}`);
  }
});

// ---- read receipts -------------------------------------------------------------------

let marking = false;
async function markRead() {
  const conv = open;
  if (!conv || conv.failed || marking || document.visibilityState === 'hidden') return;
  const newest = Math.max(0, ...[...conv.messages.values()].filter((m) => m.from !== user).map((m) => m.seq));
  const mine = Math.max(conv.reads[user] ?? 0, unread.get(conv.id)?.read_seq ?? 0);
  if (newest <= mine) return;
  marking = true;
  try {
    const { read_seq: read } = await client.rpc('chat.mark_read', { conversation: conv.id, seq: newest });
    noteRead(conv, user, read);
  } catch {
    // not connected, or refused: tried again with the next message or visibility change
  } finally {
    marking = false;
  }
  if (open === conv) {
    renderAll();
    void markRead(); // newer messages may have arrived meanwhile
  }
}
document.addEventListener('visibilitychange', () => void markRead());

// ---- typing indicator (ephemeral publications) -------------------------------------

let typingSentAt = 0;
let saidTyping = false;
let idleTimer;

function sendTyping(typing) {
  const conv = open;
  if (!conv || conv.failed || client.state !== 'connected') return;
  typingSentAt = typing ? Date.now() : 0;
  saidTyping = typing;
  // Ephemeral: live only, no offset, never in history; not worth queueing while offline.
  client.publish(conv.channel, { typing }, { event: 'typing', ephemeral: true })
    .then(() => (app.typingSent += 1))
    .catch(() => {});
}

function stopTyping() {
  clearTimeout(idleTimer);
  if (saidTyping) sendTyping(false);
}

function onTyping(conv, p) {
  const who = p.from?.user;
  if (!who || who === user) return; // mine (from another tab, too)
  const typing = p.data?.typing === true;
  app.typingReceived.push({ user: who, typing, offset: p.offset ?? null });
  if (typing) conv.typers.set(who, { name: p.from.info?.name ?? names.get(who) ?? who, until: Date.now() + TYPING_SHOWN_MS });
  else conv.typers.delete(who);
  renderTyping();
}

function renderTyping() {
  const conv = open;
  const now = Date.now();
  const shown = [];
  for (const [who, t] of conv?.typers ?? []) {
    if (t.until > now) shown.push(t.name);
    else conv.typers.delete(who);
  }
  app.typing = shown;
  $('typing').textContent = shown.length === 0 ? ''
    : shown.length === 1 ? `${shown[0]} is typing…`
      : `${shown.slice(0, -1).join(', ')} and ${shown.at(-1)} are typing…`;
}
setInterval(renderTyping, 1000);

// ---- sending ---------------------------------------------------------------------

const input = $('input');
input.addEventListener('input', () => {
  renderCounter();
  if (input.value.trim()) {
    if (Date.now() - typingSentAt > TYPING_EVERY_MS) sendTyping(true);
    clearTimeout(idleTimer);
    idleTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
  } else {
    stopTyping();
  }
});
input.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    void send();
  }
});
$('composer').addEventListener('submit', (event) => {
  event.preventDefault();
  void send();
});

async function send() {
  const conv = open;
  const text = input.value;
  if (!conv || conv.failed || text === '') return;
  stopTyping();
  $('send-error').hidden = true;
  // The backend is the judge of what a message may be (it answers the publish hook):
  // the page sends what was typed and shows its verdict.
  const cid = randomId();
  conv.pending.set(cid, { cid, text });
  input.value = '';
  renderCounter();
  renderMessages();
  // While disconnected this waits in the SDK's outbox; a resend after a lost connection
  // carries the same idempotency key (the gateway publishes it once) and the same cid
  // (the backend stores it once). So does our own retry after a temporary failure (the
  // hook timed out, Redis was unreachable), which may have stored the message already.
  for (let attempt = 1; ; attempt++) {
    try {
      await client.publish(conv.channel, { text, cid }, { event: 'message', idempotencyKey: cid });
      return;
    } catch (error) {
      if ((error.temporary || error.kind === 'timeout') && attempt < 4 && open === conv) {
        await sleep(500 * attempt);
        continue;
      }
      conv.pending.delete(cid);
      app.sendErrors.push({ code: error.code, message: error.message, kind: error.kind });
      if (open === conv) {
        $('send-error').textContent = `Not sent: ${error.message}${error.code ? ` (code ${error.code})` : ''}`;
        $('send-error').hidden = false;
        if (input.value === '') {
          input.value = text;
          renderCounter();
        }
      }
      renderMessages();
      return;
    }
  }
}

function renderCounter() {
  const length = [...input.value.trim()].length;
  $('counter').textContent = length > MAX_LENGTH * 0.8 ? `${length} / ${MAX_LENGTH}` : '';
  $('counter').classList.toggle('over', length > MAX_LENGTH);
}

// ---- rendering ------------------------------------------------------------------

const nameOf = (who) => (who === user ? 'You' : names.get(who) ?? who);
const timeOf = (ms) => new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
const othersIn = (meta) => (meta?.members ?? []).filter((m) => m.id !== user);
const isOnline = (who) => presence.get(who)?.online === true;

function renderAll() {
  renderList();
  renderHead();
  renderMessages();
}

function renderList() {
  const items = [...convMeta.values()].sort((a, b) => (previews.get(b.id)?.ts ?? 0) - (previews.get(a.id)?.ts ?? 0) || a.title.localeCompare(b.title));
  const visible = document.visibilityState !== 'hidden';
  app.unread = Object.fromEntries([...unread].map(([id, s]) => [id, s.unread]));
  app.presence = Object.fromEntries([...presence].map(([who, p]) => [who, p.online]));
  app.conversations = [];
  $('conversations').replaceChildren(...items.map((meta) => {
    const others = othersIn(meta);
    const online = others.some((m) => isOnline(m.id));
    const count = unread.get(meta.id)?.unread ?? 0;
    // The open conversation is being read: its count goes to 0 as soon as mark_read lands.
    const badge = count > 0 && !(meta.id === open?.id && !open.failed && visible) ? count : 0;
    app.conversations.push({ id: meta.id, title: meta.title, unread: badge, online });
    const item = document.createElement('li');
    item.className = `conv${meta.id === open?.id ? ' current' : ''}${badge ? ' has-unread' : ''}`;
    item.dataset.id = meta.id;
    item.dataset.online = String(online);
    item.innerHTML = '<span class="presence"></span><div><div class="title"></div><div class="preview"></div></div><span class="badge"></span>';
    const dot = item.querySelector('.presence');
    dot.classList.toggle('online', online);
    dot.title = others.map((m) => `${m.name}: ${isOnline(m.id) ? 'online' : 'offline'}`).join(', ');
    item.querySelector('.title').textContent = meta.title;
    const last = previews.get(meta.id);
    item.querySelector('.preview').textContent = last ? `${nameOf(last.from)}: ${last.text}` : 'No messages yet';
    const badgeEl = item.querySelector('.badge');
    badgeEl.textContent = String(badge);
    badgeEl.hidden = badge === 0;
    item.addEventListener('click', () => openConversation(meta.id));
    return item;
  }));
  $('empty-list').hidden = items.length > 0 || !app.loaded;
  if (app.loaded && items.length === 0) $('empty-list').textContent = 'No conversations yet.';
}

function renderHead() {
  const conv = open;
  const meta = conv && convMeta.get(conv.id);
  $('conv-title').textContent = meta?.title ?? conv?.id ?? '…';
  document.title = `${meta?.title ?? 'Chat'} · Switchboard chat`;
  if (!meta || conv.failed) {
    $('members').replaceChildren();
    return;
  }
  $('members').replaceChildren(...meta.members.map((m) => {
    const span = document.createElement('span');
    span.className = 'member';
    span.dataset.user = m.id;
    const me = m.id === user;
    const online = me ? client.state === 'connected' : isOnline(m.id);
    span.dataset.online = String(online);
    span.innerHTML = '<span class="presence"></span><b class="name"></b><span class="status"></span>';
    span.querySelector('.presence').classList.toggle('online', online);
    span.querySelector('.name').textContent = me ? `${m.name} (you)` : m.name;
    const at = presence.get(m.id)?.at;
    span.querySelector('.status').textContent = me ? '' : online ? 'online' : at ? `last seen ${timeOf(at)}` : 'offline';
    return span;
  }));
}

function renderMessages(stickToBottom = true) {
  const conv = open;
  const scroller = $('scroller');
  const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
  const list = conv ? [...conv.messages.values()].sort((a, b) => a.seq - b.seq) : [];
  const pending = conv ? [...conv.pending.values()] : [];
  app.messages = list.map(({ id, seq, from, text }) => ({ id, seq, from, text }));
  app.pending = pending.map((p) => p.text);
  app.reads = { ...(conv?.reads ?? {}) };

  // "Seen": under my newest message that another member has read up to.
  const others = othersIn(conv && convMeta.get(conv.id));
  let seen = null;
  for (let i = list.length - 1; i >= 0 && !seen; i--) {
    if (list[i].from !== user) continue;
    const by = others.filter((o) => (conv.reads[o.id] ?? 0) >= list[i].seq);
    if (by.length) seen = { id: list[i].id, by: by.map((o) => o.name) };
  }
  app.seen = seen;

  const items = list.map((m) => {
    const item = document.createElement('li');
    item.className = `msg${m.from === user ? ' mine' : ''}${m.id === conv.freshId ? ' fresh' : ''}`;
    item.dataset.id = m.id;
    item.dataset.seq = m.seq;
    item.dataset.from = m.from;
    item.innerHTML = '<div class="meta"><b class="who"></b> · <span class="when"></span> · <span class="msgid"></span></div><div class="bubble"></div>';
    item.querySelector('.who').textContent = nameOf(m.from);
    item.querySelector('.when').textContent = timeOf(m.ts);
    item.querySelector('.msgid').textContent = `#${m.id}`;
    item.querySelector('.bubble').textContent = m.text;
    if (seen?.id === m.id) {
      const line = document.createElement('div');
      line.className = 'seen';
      line.textContent = others.length === 1 ? `Seen by ${seen.by[0]}` : `Seen by ${seen.by.join(', ')}`;
      item.append(line);
    }
    return item;
  });
  for (const p of pending) {
    const item = document.createElement('li');
    item.className = 'msg mine pending';
    item.dataset.cid = p.cid;
    item.innerHTML = '<div class="meta"></div><div class="bubble"></div>';
    item.querySelector('.meta').textContent = client.state === 'connected' ? 'sending…' : 'waiting for the connection…';
    item.querySelector('.bubble').textContent = p.text;
    items.push(item);
  }
  $('messages').replaceChildren(...items);
  $('no-messages').hidden = items.length > 0 || !conv || !!conv.failed || !conv.sub || conv.sub.state !== 'subscribed';
  $('load-earlier').hidden = !conv?.more || !!conv.failed;
  if (stickToBottom && atBottom) scroller.scrollTop = scroller.scrollHeight;
}

function notice(text) {
  $('notice').textContent = text;
}

client.connect().catch((error) => notice(`Stopped: ${error.message}`));
