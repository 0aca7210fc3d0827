// Starling chat: the web client. MQTT 5 over WebSocket with MQTT.js
// (vendor/mqtt.min.js, bundled from Debian's node-mqtt by
// scripts/build-chat-bundle). Topics (docs/chat.md, deploy/chat/acl.toml):
//   chat/rooms/<room>/<sender>       room messages, QoS 1
//   chat/typing/<room>/<sender>      typing indicator, QoS 0
//   chat/presence/<user>             "online" retained, will "offline" retained
//   chat/roomlist/<room>             a room exists (retained)
//   chat/inbox/<recipient>/<sender>  direct messages, QoS 1
// Payload of a message: {"id": "...", "text": "...", "ts": <ms since epoch>}.
'use strict';
(function () {
  const $ = (s) => document.querySelector(s);
  const params = new URLSearchParams(location.search);
  const secure = location.protocol === 'https:';
  // The WebSocket listener of the node (or load balancer) that served this
  // page: same host, the port and path the node's config.json names (8083,
  // or 8084 for https; /mqtt). ?ws=URL or ?wsport=N override.
  let WS_URL = params.get('ws') || wsUrl({});
  function wsUrl(c) {
    const port = params.get('wsport') || (secure ? c.wss_port || 8084 : c.ws_port || 8083);
    return `${secure ? 'wss' : 'ws'}://${location.hostname || 'localhost'}:${port}${c.ws_path || '/mqtt'}`;
  }
  const settings = params.get('ws') ? Promise.resolve() :
    fetch('config.json').then((r) => (r.ok ? r.json() : {})).then((c) => { WS_URL = wsUrl(c); }, () => {})
      .then(() => { $('#login-server').textContent = WS_URL; });
  const SESSION_EXPIRY = 7 * 24 * 3600; // seconds a signed-out user's DMs wait
  const HISTORY = 200;                  // messages kept per conversation
  const NAME = /^[A-Za-z0-9_.@-]{1,64}$/;
  const ROOM = /^[A-Za-z0-9_-]{1,40}$/;
  const BACKOFF_MIN = 1000, BACKOFF_MAX = 15000;
  const TYPING_EVERY = 2000, TYPING_SHOWN = 4000;

  let S = null; // the signed-in state, see signIn()

  $('#login-server').textContent = WS_URL;

  // ---- storage: joined rooms and recent history per user, in this browser
  function load(user) {
    try {
      const v = JSON.parse(localStorage.getItem('starling-chat:' + user));
      if (v && Array.isArray(v.joined) && v.convs) return v;
    } catch (_) { /* fall through */ }
    return { joined: ['general'], convs: {}, active: 'room:general' };
  }
  function save() {
    if (!S) return;
    const convs = {};
    for (const [k, c] of S.convs) convs[k] = { messages: c.messages.slice(-HISTORY), unread: c.unread };
    localStorage.setItem('starling-chat:' + S.user,
      JSON.stringify({ joined: [...S.joined], convs, active: S.active }));
  }

  function conv(key) {
    let c = S.convs.get(key);
    if (!c) { c = { messages: [], unread: 0 }; S.convs.set(key, c); }
    return c;
  }
  const newId = () => Date.now().toString(36) + '-' + Math.random().toString(36).slice(2, 10);

  // ---- sign in
  $('#login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const user = $('#login-user').value.trim();
    if (!NAME.test(user)) return loginError('User names are letters, digits, and . _ @ - (at most 64).');
    const password = $('#login-pass').value;
    settings.then(() => signIn(user, password));
  });

  function loginError(text) {
    const el = $('#login-error');
    el.textContent = text;
    el.hidden = !text;
  }

  function signIn(user, password) {
    loginError('');
    $('#login-btn').disabled = true;
    const stored = load(user);
    S = {
      user, client: null, backoff: BACKOFF_MIN, timer: null, stopped: false, everConnected: false,
      joined: new Set(stored.joined), convs: new Map(), active: stored.active,
      rooms: new Set(['general', ...stored.joined]), presence: new Map(), typing: new Map(),
      seen: new Set(), lastTyping: 0, pendingOps: 0,
    };
    for (const [k, c] of Object.entries(stored.convs)) {
      S.convs.set(k, { messages: c.messages || [], unread: c.unread || 0 });
      for (const m of c.messages || []) S.seen.add(m.id);
    }
    const client = mqtt.connect(WS_URL, {
      protocolVersion: 5,
      clientId: 'chat-web-' + user,
      username: user,
      password,
      clean: false,
      properties: { sessionExpiryInterval: SESSION_EXPIRY },
      will: { topic: `chat/presence/${user}`, payload: 'offline', qos: 1, retain: true },
      keepalive: 20,
      connectTimeout: 10000,
      reconnectPeriod: 0, // our own back-off, see scheduleReconnect()
      resubscribe: true,
    });
    S.client = client;
    setConn('connecting');
    client.on('connect', onConnect);
    client.on('message', onMessage);
    client.on('error', onError);
    client.on('disconnect', onDisconnect);
    client.on('close', onClose);
  }

  function onConnect(connack) {
    const first = !S.everConnected;
    S.everConnected = true;
    S.backoff = BACKOFF_MIN;
    setConn('online');
    if (first) {
      $('#login').hidden = true;
      $('#app').hidden = false;
      $('#login-btn').disabled = false;
      $('#me').textContent = S.user;
      render();
    }
    const filters = {
      'chat/presence/+': { qos: 1 },
      'chat/roomlist/+': { qos: 1 },
      [`chat/inbox/${S.user}/+`]: { qos: 1 },
    };
    for (const r of S.joined) {
      filters[`chat/rooms/${r}/+`] = { qos: 1 };
      filters[`chat/typing/${r}/+`] = { qos: 0 };
    }
    // A session the broker kept has the subscriptions already (and MQTT.js
    // resubscribes by itself when it did not, after a reconnect); on a new
    // page load subscribe once, which also brings the retained roster.
    if (first || !connack.sessionPresent) {
      S.client.subscribe(filters, settled((err) => err && system('subscribe failed: ' + err.message)));
    }
    S.client.publish(`chat/presence/${S.user}`, 'online', { qos: 1, retain: true });
  }

  function onError(err) {
    // A refused CONNECT: 0x86 bad user name or password, 0x87 not authorized.
    if (err && (err.code === 134 || err.code === 135 || err.code === 4 || err.code === 5)) {
      const text = err.code === 134 || err.code === 4 ? 'Wrong user name or password.' : 'Not authorized to sign in.';
      stop();
      showLogin(text);
    }
  }

  function onDisconnect(packet) {
    if (packet && packet.reasonCode === 0x8e) {
      stop();
      setConn('offline', 'signed in from another window; reload to use it here');
    }
  }

  function onClose() {
    if (!S || S.stopped) return;
    if (!S.everConnected && S.backoff === BACKOFF_MIN && !S.timer) {
      // The first attempt failed without an answer: keep trying, but say so.
      loginError('Cannot reach ' + WS_URL + ' — retrying…');
    }
    scheduleReconnect();
  }

  function scheduleReconnect() {
    if (S.timer || S.stopped) return;
    const wait = Math.round(S.backoff * (0.8 + Math.random() * 0.4));
    S.backoff = Math.min(S.backoff * 2, BACKOFF_MAX);
    const until = Date.now() + wait;
    const tick = () => {
      const left = Math.max(0, Math.ceil((until - Date.now()) / 1000));
      setConn(S.everConnected ? 'reconnecting' : 'connecting', left ? `retrying in ${left} s` : 'retrying');
    };
    tick();
    const countdown = setInterval(tick, 500);
    S.timer = setTimeout(() => {
      clearInterval(countdown);
      S.timer = null;
      if (S.stopped) return;
      setConn(S.everConnected ? 'reconnecting' : 'connecting');
      // Keep the stores: they hold the QoS 1 messages not yet acknowledged
      // (sent before the loss, or typed since), which go out again first.
      S.client.reconnect({ incomingStore: S.client.incomingStore, outgoingStore: S.client.outgoingStore });
    }, wait);
  }

  function stop() {
    S.stopped = true;
    if (S.timer) { clearTimeout(S.timer); S.timer = null; }
    S.client.end(true);
  }

  function showLogin(text) {
    $('#app').hidden = true;
    $('#login').hidden = false;
    $('#login-btn').disabled = false;
    loginError(text || '');
  }

  $('#logout-btn').addEventListener('click', () => {
    const c = S.client;
    save();
    S.stopped = true;
    if (S.timer) clearTimeout(S.timer);
    // Say goodbye ourselves (a normal DISCONNECT sends no will); the
    // session stays, so direct messages wait for the next sign-in.
    if (c.connected) {
      c.publish(`chat/presence/${S.user}`, 'offline', { qos: 1, retain: true }, () => c.end());
    } else {
      c.end(true);
    }
    S = null;
    $('#messages').replaceChildren();
    showLogin('');
  });

  // SUBSCRIBEs and UNSUBSCRIBEs not yet acknowledged, shown as
  // #conn-state[data-pending] (a SUBACK means the room is in force
  // everywhere in the cluster).
  function settled(cb) {
    const s = S;
    s.pendingOps += 1;
    $('#conn-state').dataset.pending = String(s.pendingOps);
    return (...args) => {
      s.pendingOps -= 1;
      if (s === S) $('#conn-state').dataset.pending = String(s.pendingOps);
      if (cb) cb(...args);
    };
  }

  function setConn(state, detail) {
    const el = $('#conn-state');
    el.dataset.state = state;
    el.textContent = detail ? `${state} — ${detail}` : state;
  }

  // ---- incoming
  function onMessage(topic, payload, packet) {
    const p = topic.split('/');
    const text = payload.toString();
    if (p[1] === 'presence' && p.length === 3) {
      if (text) S.presence.set(p[2], text === 'online' ? 'online' : 'offline'); else S.presence.delete(p[2]);
      renderRoster();
    } else if (p[1] === 'roomlist' && p.length === 3) {
      if (ROOM.test(p[2]) && text) { S.rooms.add(p[2]); renderRooms(); }
    } else if (p[1] === 'typing' && p.length === 4) {
      if (p[3] === S.user) return;
      let t = S.typing.get(p[2]);
      if (!t) { t = new Map(); S.typing.set(p[2], t); }
      if (text === '1') t.set(p[3], Date.now() + TYPING_SHOWN); else t.delete(p[3]);
      renderTyping();
    } else if (p[1] === 'rooms' && p.length === 4) {
      receive('room:' + p[2], p[3], text, packet);
    } else if (p[1] === 'inbox' && p.length === 4 && p[2] === S.user) {
      receive('dm:' + p[3], p[3], text, packet);
    }
  }

  function receive(key, from, text, packet) {
    let m;
    try { m = JSON.parse(text); } catch (_) { m = null; }
    if (!m || typeof m.text !== 'string') m = { id: null, text, ts: Date.now() };
    // A QoS 1 message may come twice (after a failover, with DUP): the id
    // shows each message once. Messages without an id (other clients) use
    // their content and time.
    const id = typeof m.id === 'string' && m.id ? m.id : `${from}|${m.ts}|${m.text}`;
    if (S.seen.has(id)) return;
    S.seen.add(id);
    const own = from === S.user;
    const c = conv(key);
    c.messages.push({ id, from, text: m.text, ts: Number(m.ts) || Date.now(), own, status: own ? 'acknowledged' : null });
    if (c.messages.length > HISTORY) c.messages.splice(0, c.messages.length - HISTORY);
    if (key.startsWith('room:')) {
      const t = S.typing.get(key.slice(5));
      if (t && t.delete(from)) renderTyping();
    }
    if (key !== S.active || document.hidden) c.unread += 1;
    if (key === S.active) renderMessages(); else renderSidebar();
    save();
  }

  // ---- outgoing
  $('#composer-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const input = $('#composer');
    const text = input.value.trim();
    if (!text || !S) return;
    input.value = '';
    send(text);
  });

  $('#composer').addEventListener('input', () => {
    if (!S || !S.active.startsWith('room:') || !S.client.connected) return;
    const now = Date.now();
    if (now - S.lastTyping < TYPING_EVERY) return;
    S.lastTyping = now;
    S.client.publish(`chat/typing/${S.active.slice(5)}/${S.user}`, '1', { qos: 0 });
  });

  function send(text) {
    const key = S.active;
    const [kind, name] = [key.slice(0, key.indexOf(':')), key.slice(key.indexOf(':') + 1)];
    const topic = kind === 'room' ? `chat/rooms/${name}/${S.user}` : `chat/inbox/${name}/${S.user}`;
    const m = { id: newId(), text, ts: Date.now() };
    const entry = { id: m.id, from: S.user, text, ts: m.ts, own: true, status: S.client.connected ? 'sent' : 'queued' };
    S.seen.add(m.id);
    conv(key).messages.push(entry);
    renderMessages();
    save();
    if (kind === 'room') {
      S.lastTyping = 0;
      S.client.publish(`chat/typing/${name}/${S.user}`, '0', { qos: 0 });
    }
    // MQTT.js keeps a QoS 1 message until its PUBACK, across reconnects;
    // the callback runs on the PUBACK.
    S.client.publish(topic, JSON.stringify(m), { qos: 1 }, (err) => {
      if (!S) return;
      entry.status = err ? 'failed' : 'acknowledged';
      const el = document.querySelector(`#messages li[data-id="${CSS.escape(entry.id)}"] .status`);
      if (el) { el.dataset.status = entry.status; el.textContent = statusText(entry.status); }
      save();
    });
  }

  // Announces a new room to everyone (retained, so later users see it too).
  function publishRoom(room) {
    S.client.publish(`chat/roomlist/${room}`, JSON.stringify({ by: S.user, ts: Date.now() }), { qos: 1, retain: true });
  }

  // ---- rooms and conversations
  $('#room-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const name = $('#room-name').value.trim();
    if (!ROOM.test(name)) return;
    $('#room-name').value = '';
    joinRoom(name);
  });

  function joinRoom(room) {
    const known = S.rooms.has(room);
    S.rooms.add(room);
    if (!S.joined.has(room)) {
      S.joined.add(room);
      S.client.subscribe({ [`chat/rooms/${room}/+`]: { qos: 1 }, [`chat/typing/${room}/+`]: { qos: 0 } }, settled());
      if (!known) publishRoom(room);
    }
    open('room:' + room);
  }

  $('#leave-btn').addEventListener('click', () => {
    if (!S.active.startsWith('room:')) return;
    const room = S.active.slice(5);
    S.joined.delete(room);
    S.client.unsubscribe([`chat/rooms/${room}/+`, `chat/typing/${room}/+`], settled());
    open(S.joined.size ? 'room:' + [...S.joined][0] : 'room:general');
  });

  function open(key) {
    if (key.startsWith('room:') && !S.joined.has(key.slice(5))) return joinRoom(key.slice(5));
    S.active = key;
    conv(key).unread = 0;
    save();
    render();
    $('#composer').focus();
  }

  document.addEventListener('visibilitychange', () => {
    if (S && !document.hidden && S.convs.get(S.active)) { S.convs.get(S.active).unread = 0; renderSidebar(); }
  });

  // ---- rendering (text only through textContent)
  function render() { renderSidebar(); renderMessages(); }

  function renderSidebar() { renderRooms(); renderDms(); renderRoster(); }

  function item(label, key, unread, attrs) {
    const li = document.createElement('li');
    const name = document.createElement('span');
    name.textContent = label;
    li.append(name);
    const badge = document.createElement('span');
    badge.className = 'unread';
    badge.textContent = unread ? String(unread) : '';
    li.append(badge);
    if (key === S.active) li.classList.add('active');
    for (const [k, v] of Object.entries(attrs)) li.dataset[k] = v;
    li.addEventListener('click', () => open(key));
    return li;
  }

  function renderRooms() {
    const ul = $('#rooms');
    const rooms = [...new Set([...S.joined, ...S.rooms])].sort();
    ul.replaceChildren(...rooms.map((r) => {
      const c = S.convs.get('room:' + r);
      const li = item('# ' + r, 'room:' + r, c ? c.unread : 0, { room: r, joined: S.joined.has(r) ? 'yes' : 'no' });
      if (!S.joined.has(r)) li.style.opacity = '.6';
      return li;
    }));
  }

  function renderDms() {
    const peers = [...S.convs.keys()].filter((k) => k.startsWith('dm:')).map((k) => k.slice(3)).sort();
    $('#dms').replaceChildren(...peers.map((p) => item('@ ' + p, 'dm:' + p, S.convs.get('dm:' + p).unread, { peer: p })));
  }

  function renderRoster() {
    const users = [...S.presence.keys()].sort((a, b) =>
      (S.presence.get(a) === 'online' ? 0 : 1) - (S.presence.get(b) === 'online' ? 0 : 1) || a.localeCompare(b));
    $('#roster').replaceChildren(...users.map((u) => {
      const li = item(u === S.user ? u + ' (you)' : u, 'dm:' + u, 0, { user: u, status: S.presence.get(u) });
      li.title = S.presence.get(u);
      return li;
    }));
  }

  function statusText(s) {
    return { queued: '⏳ queued', sent: '… sent', acknowledged: '✓ acknowledged', failed: '✗ not sent' }[s] || '';
  }

  function renderMessages() {
    const key = S.active;
    const c = conv(key);
    c.unread = 0;
    const isRoom = key.startsWith('room:');
    $('#conversation-title').textContent = (isRoom ? '# ' : '@ ') + key.slice(key.indexOf(':') + 1);
    $('#leave-btn').hidden = !isRoom;
    const ol = $('#messages');
    ol.replaceChildren(...c.messages.map((m) => {
      const li = document.createElement('li');
      li.className = 'msg' + (m.own ? ' own' : '');
      li.dataset.id = m.id;
      li.dataset.from = m.from;
      const meta = document.createElement('div');
      meta.className = 'meta';
      meta.textContent = `${m.from} · ${new Date(m.ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })}`;
      if (m.own) {
        const st = document.createElement('span');
        st.className = 'status';
        st.dataset.status = m.status;
        st.textContent = statusText(m.status);
        meta.append(st);
      }
      const text = document.createElement('div');
      text.className = 'text';
      text.textContent = m.text;
      li.append(meta, text);
      return li;
    }));
    ol.scrollTop = ol.scrollHeight;
    renderSidebar();
    renderTyping();
  }

  function renderTyping() {
    const el = $('#typing');
    if (!S || !S.active.startsWith('room:')) { el.textContent = ''; return; }
    const t = S.typing.get(S.active.slice(5));
    const now = Date.now();
    const who = t ? [...t].filter(([, until]) => until > now).map(([u]) => u) : [];
    el.textContent = who.length ? `${who.join(', ')} ${who.length > 1 ? 'are' : 'is'} typing…` : '';
  }
  setInterval(() => S && renderTyping(), 1000);

  function system(text) {
    if (!S) return;
    conv(S.active).messages.push({ id: newId(), from: 'system', text, ts: Date.now(), own: false, status: null });
    renderMessages();
  }
})();
