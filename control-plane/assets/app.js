// Wegweiser technician dashboard. Plain DOM code: no framework, no markup strings, no eval,
// nothing loaded from elsewhere. Every piece of data comes from /v1 with the session cookie.
'use strict';

const SVG_NS = 'http://www.w3.org/2000/svg';
const ONLINE_WITHIN_SECS = 90;
const PAGE_SIZE = 25;

const state = {
  me: null,
  csrf: null,
  tenants: [],
  tenant: null,
  live: null,
  liveRetry: null,
  devices: new Map(), // id -> latest view (list rows and live events)
  list: { q: '', online: '', os: '', sort: 'hostname', order: 'asc', cursors: [], after: null },
  page: null, // the current view's live hooks
  renderSeq: 0,
};

// ---------------------------------------------------------------- DOM helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  applyAttrs(el, attrs);
  append(el, children);
  return el;
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  append(el, children);
  return el;
}

function applyAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = v;
    else if (k in el && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.appendChild(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
  }
}

function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- formatting

function ago(unix) {
  if (!unix) return 'never';
  const d = Math.max(0, Math.round(Date.now() / 1000 - unix));
  if (d < 5) return 'just now';
  if (d < 60) return d + ' s ago';
  if (d < 3600) return Math.round(d / 60) + ' min ago';
  if (d < 86400) return Math.round(d / 3600) + ' h ago';
  return Math.round(d / 86400) + ' d ago';
}

function when(unix) {
  if (!unix) return '–';
  return new Date(unix * 1000).toLocaleString();
}

function bytes(n) {
  if (n === undefined || n === null) return '–';
  const u = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + ' ' + u[i];
}

function pct(v) {
  return v === undefined || v === null ? '–' : v.toFixed(1) + ' %';
}

function isOnline(d) {
  return !!d.last_seen && Date.now() / 1000 - d.last_seen <= ONLINE_WITHIN_SECS;
}

function statusEl(d) {
  const cls = d.state === 'revoked' ? 'revoked' : d.online ? 'online' : 'offline';
  const label = d.state === 'revoked' ? 'Revoked' : d.online ? 'Online' : 'Offline';
  return h('span', { class: 'status ' + cls, 'data-status': cls, text: label });
}

function barEl(v) {
  const fill = h('div', { class: 'fill' + (v >= 85 ? ' hot' : '') });
  fill.style.width = Math.max(0, Math.min(100, v || 0)) + '%';
  return h('div', { class: 'bar' }, h('div', { class: 'track' }, fill), h('span', { class: 'num', text: pct(v) }));
}

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// `background`: a request the page makes on its own (a refresh), which does not keep the
// session from ending when nobody is using it.
async function api(method, path, body, background) {
  const opts = { method, headers: { accept: 'application/json' }, credentials: 'same-origin' };
  if (background) opts.headers['x-wegweiser-background'] = '1';
  if (body !== undefined) {
    opts.headers['content-type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  if (method !== 'GET' && state.csrf) opts.headers['x-csrf-token'] = state.csrf;
  const r = await fetch(path, opts);
  let data = null;
  try { data = await r.json(); } catch (_) { data = null; }
  if (r.status === 401 && path !== '/v1/auth/login') {
    showLogin('Your session ended; sign in again.');
    throw new ApiError(401, 'unauthenticated', 'not signed in');
  }
  if (!r.ok) {
    throw new ApiError(r.status, data && data.code, (data && data.message) || r.statusText);
  }
  return data;
}

const tpath = (rest) => '/v1/tenants/' + encodeURIComponent(state.tenant) + rest;

// ---------------------------------------------------------------- session

function showLogin(message) {
  stopLive();
  leavePage();
  $('login-password').value = '';
  state.me = null;
  state.csrf = null;
  $('shell').hidden = true;
  $('login').hidden = false;
  const err = $('login-error');
  err.hidden = !message;
  err.textContent = message || '';
  $('login-user').focus();
}

async function login(ev) {
  ev.preventDefault();
  const btn = $('login-submit');
  btn.disabled = true;
  try {
    const r = await api('POST', '/v1/auth/login', { user: $('login-user').value, password: $('login-password').value });
    state.csrf = r.csrf_token;
    $('login-password').value = '';
    await start();
  } catch (e) {
    const err = $('login-error');
    err.hidden = false;
    err.textContent = e.status === 401 ? 'Wrong user name or password.' : e.message;
  } finally {
    btn.disabled = false;
  }
}

async function logout() {
  try { await api('POST', '/v1/auth/logout'); } catch (_) { /* gone anyway */ }
  leavePage();
  clear($('main'));
  $('login-user').value = '';
  showLogin();
}

async function start() {
  let me;
  try {
    me = await fetch('/v1/auth/me', { credentials: 'same-origin' });
  } catch (_) {
    showLogin('The control plane cannot be reached.');
    return;
  }
  if (!me.ok) { showLogin(); return; }
  state.me = await me.json();
  state.csrf = state.me.csrf_token || state.csrf;
  const tenants = await api('GET', '/v1/tenants?limit=500');
  state.tenants = tenants.items;
  const saved = localStorage.getItem('wg.tenant');
  state.tenant = (state.tenants.find((t) => t.id === saved) || state.tenants[0] || {}).id || null;
  const sel = clear($('tenant'));
  for (const t of state.tenants) sel.appendChild(h('option', { value: t.id, text: t.name || t.id }));
  if (state.tenant) sel.value = state.tenant;
  sel.hidden = state.tenants.length < 2;
  $('me').textContent = state.me.user;
  $('login').hidden = true;
  $('shell').hidden = false;
  startLive();
  if (!location.hash || location.hash === '#/') location.hash = '#/overview';
  else render();
}

// ---------------------------------------------------------------- live updates

function startLive() {
  stopLive();
  if (!state.tenant) return;
  const es = new EventSource(tpath('/live'));
  state.live = es;
  es.addEventListener('open', () => $('live-state').classList.add('on'));
  es.addEventListener('error', () => {
    $('live-state').classList.remove('on');
    // The browser retries by itself; a closed stream (ended session, too many tabs) is retried
    // here after a pause.
    if (es.readyState === EventSource.CLOSED && state.me) {
      state.liveRetry = setTimeout(async () => {
        try {
          const r = await fetch('/v1/auth/me', {
            credentials: 'same-origin', headers: { 'x-wegweiser-background': '1' },
          });
          if (r.status === 401) { showLogin('Your session ended; sign in again.'); return; }
        } catch (_) { /* unreachable: try the stream again */ }
        if (state.me) startLive();
      }, 5000);
    }
  });
  es.addEventListener('device', (m) => {
    let e;
    try { e = JSON.parse(m.data); } catch (_) { return; }
    const old = state.devices.get(e.device) || {};
    const d = Object.assign({}, old, e);
    state.devices.set(e.device, d);
    if (state.page && state.page.onDevice) state.page.onDevice(d, e);
  });
  es.addEventListener('resync', () => {
    if (state.page && state.page.onResync) state.page.onResync();
  });
}

function stopLive() {
  if (state.liveRetry) clearTimeout(state.liveRetry);
  if (state.live) state.live.close();
  state.live = null;
  $('live-state').classList.remove('on');
}

// ---------------------------------------------------------------- router

function leavePage() {
  if (state.page && state.page.onLeave) state.page.onLeave();
  state.page = null;
}

function route() {
  const hash = location.hash.replace(/^#\/?/, '');
  const [view, ...rest] = hash.split('/');
  return { view: view || 'overview', arg: rest.map(decodeURIComponent).join('/') };
}

async function render() {
  if (!state.me) return;
  // Renders overlap (a hash change while a view still loads): only the latest one shows.
  const seq = ++state.renderSeq;
  const { view, arg } = route();
  for (const a of document.querySelectorAll('#nav a')) {
    a.classList.toggle('active', a.dataset.view === view || (view === 'device' && a.dataset.view === 'devices'));
  }
  leavePage();
  const main = clear($('main'));
  if (!state.tenant) {
    main.appendChild(h('div', { class: 'panel empty', text: 'You are not bound to any tenant. Ask an administrator for access.' }));
    return;
  }
  const box = h('div', { class: 'view' });
  let page = null;
  try {
    if (view === 'devices') page = await renderDevices(box);
    else if (view === 'device') page = await renderDevice(box, arg);
    else if (view === 'audit') page = await renderAudit(box);
    else page = await renderOverview(box);
  } catch (e) {
    if (e.status === 401) return;
    clear(box).appendChild(h('div', { class: 'panel error', text: e.status === 404 ? 'Not found.' : 'Could not load this page: ' + e.message }));
  }
  if (seq !== state.renderSeq) {
    if (page && page.onLeave) page.onLeave();
    return;
  }
  main.appendChild(box);
  state.page = page || null;
  // Charts are drawn to the size they get once shown.
  if (page && page.onResize) page.onResize();
}

// ---------------------------------------------------------------- overview

async function renderOverview(main) {
  const sum = await api('GET', tpath('/summary'));
  const tenant = state.tenants.find((t) => t.id === state.tenant);
  const stat = (label, value, cls, id) => h('div', { class: 'panel stat ' + (cls || '') },
    h('div', { class: 'label', text: label }), h('div', { class: 'value', id, text: String(value) }));
  const os = h('ul', { class: 'list' }, sum.os.length
    ? sum.os.map((o) => h('li', {}, h('span', { text: o.os }), h('span', { class: 'muted', text: o.count + (o.count === 1 ? ' device' : ' devices') })))
    : h('li', { class: 'muted', text: 'No devices yet.' }));
  const alerts = h('ul', { class: 'list', id: 'alerts' }, sum.alerts.length
    ? sum.alerts.map((e) => h('li', {},
      h('span', { class: 'when', text: ago(e.t) }),
      h('span', { class: 'tag sec', text: e.event }),
      h('a', { href: '#/device/' + encodeURIComponent(e.device), class: 'mono', text: e.device }),
      h('span', { class: 'muted', text: (e.detail && (e.detail.reason || e.detail.detail)) || '' })))
    : h('li', { class: 'muted', text: 'No security events in the last 24 hours.' }));
  main.append(
    h('div', { class: 'page-head' }, h('div', {}, h('h1', { text: (tenant && tenant.name) || state.tenant }), h('div', { class: 'muted', text: 'Tenant overview' }))),
    h('div', { class: 'grid grid-4' },
      stat('Online', sum.online, 'ok', 'stat-online'),
      stat('Offline', sum.offline, 'off', 'stat-offline'),
      stat('Devices', sum.devices, '', 'stat-devices'),
      stat('Enrolled, last 7 days', sum.enrolled_7d, '', 'stat-enrolled')),
    h('div', { class: 'grid grid-2', id: 'overview-lists' },
      h('div', { class: 'panel' }, h('h2', { text: 'Recent security alerts' }), alerts),
      h('div', { class: 'panel' }, h('h2', { text: 'Operating systems' }), os)),
  );
  main.lastChild.classList.add('spaced');
  let timer = null;
  return {
    onDevice: () => {
      // Counts change with presence: refresh, at most every 10 seconds.
      if (timer) return;
      timer = setTimeout(async () => {
        timer = null;
        if (!state.me || route().view !== 'overview') return;
        try {
          const n = await api('GET', tpath('/summary'), undefined, true);
          $('stat-online').textContent = n.online;
          $('stat-offline').textContent = n.offline;
          $('stat-devices').textContent = n.devices;
        } catch (_) { /* next change tries again */ }
      }, 10000);
    },
  };
}

// ---------------------------------------------------------------- device list

function listQuery() {
  const l = state.list;
  const p = new URLSearchParams({ limit: String(PAGE_SIZE), sort: l.sort, order: l.order });
  if (l.q) p.set('q', l.q);
  if (l.online) p.set('online', l.online);
  if (l.os) p.set('os', l.os);
  if (l.after) p.set('after', l.after);
  return p.toString();
}

async function renderDevices(main) {
  const l = state.list;
  const search = h('input', { type: 'search', id: 'search', placeholder: 'Search host name or id', value: l.q, 'aria-label': 'Search' });
  const select = (id, label, value, options) => {
    const el = h('select', { id, 'aria-label': label }, options.map(([v, t]) => h('option', { value: v, text: t })));
    el.value = value;
    return el;
  };
  const online = select('filter-online', 'Status', l.online, [['', 'All states'], ['true', 'Online'], ['false', 'Offline']]);
  const os = select('filter-os', 'OS', l.os, [['', 'All systems'], ['linux', 'Linux'], ['windows', 'Windows'], ['macos', 'macOS']]);
  const sort = select('sort', 'Sort', l.sort + ':' + l.order, [
    ['hostname:asc', 'Host name'], ['last_seen:desc', 'Last seen'], ['cpu:desc', 'CPU, highest first'],
    ['mem:desc', 'Memory, highest first'], ['id:asc', 'Device id']]);
  const body = h('tbody', { id: 'device-rows' });
  const prev = h('button', { id: 'prev', text: 'Previous' });
  const next = h('button', { id: 'next', text: 'Next' });
  const count = h('span', { class: 'muted', id: 'page-info' });
  main.append(
    h('div', { class: 'page-head' }, h('div', {}, h('h1', { text: 'Devices' }), h('div', { class: 'muted', text: 'Live status of the devices you may see' }))),
    h('div', { class: 'panel' },
      h('div', { class: 'toolbar' }, search, online, os, sort),
      h('div', { class: 'table-wrap' }, h('table', { id: 'devices' },
        h('thead', {}, h('tr', {},
          h('th', { text: 'Status' }), h('th', { text: 'Host' }), h('th', { class: 'hide-sm', text: 'OS' }),
          h('th', { text: 'CPU' }), h('th', { class: 'hide-sm', text: 'Memory' }), h('th', { class: 'hide-sm', text: 'Last seen' }),
          h('th', { class: 'hide-sm', text: 'Organization / group' }))),
        body)),
      h('div', { class: 'pager' }, count, prev, next)));

  let current = null;
  const load = async (background) => {
    const page = await api('GET', tpath('/devices?' + listQuery()), undefined, background);
    current = page;
    clear(body);
    if (!page.items.length) {
      body.appendChild(h('tr', {}, h('td', { colspan: 7, class: 'empty', text: 'No devices match.' })));
    }
    for (const d of page.items) {
      state.devices.set(d.id, Object.assign(state.devices.get(d.id) || {}, d));
      body.appendChild(deviceRow(d));
    }
    prev.disabled = l.cursors.length === 0;
    next.disabled = !page.next;
    count.textContent = 'Page ' + (l.cursors.length + 1);
  };
  let debounce = null;
  const reset = () => { l.cursors = []; l.after = null; load().catch(showListError); };
  const showListError = (e) => {
    clear(body).appendChild(h('tr', {}, h('td', { colspan: 7, class: 'empty error', text: e.message })));
  };
  search.addEventListener('input', () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => { l.q = search.value.trim(); reset(); }, 250);
  });
  online.addEventListener('change', () => { l.online = online.value; reset(); });
  os.addEventListener('change', () => { l.os = os.value; reset(); });
  sort.addEventListener('change', () => { [l.sort, l.order] = sort.value.split(':'); reset(); });
  next.addEventListener('click', () => {
    if (!current || !current.next) return;
    l.cursors.push(l.after);
    l.after = current.next;
    load().catch(showListError);
  });
  prev.addEventListener('click', () => {
    if (!l.cursors.length) return;
    l.after = l.cursors.pop();
    load().catch(showListError);
  });
  await load();
  return {
    onDevice: (d) => {
      const row = body.querySelector('tr[data-device="' + CSS.escape(d.device) + '"]');
      if (row) row.replaceWith(deviceRow(d));
    },
    onResync: () => load(true).catch(showListError),
  };
}

function deviceRow(d) {
  const id = d.id || d.device;
  const full = Object.assign({}, state.devices.get(id) || {}, d, { id });
  const place = [full.organization, full.group].filter(Boolean).join(' / ') || '–';
  return h('tr', { 'data-device': id },
    h('td', {}, statusEl(full)),
    h('td', { class: 'wrap' }, h('a', { href: '#/device/' + encodeURIComponent(id), text: full.hostname || id }),
      h('div', { class: 'muted mono hide-sm', text: id })),
    h('td', { class: 'hide-sm', text: [full.os, full.os_version].filter(Boolean).join(' ') }),
    h('td', {}, barEl(full.cpu)),
    h('td', { class: 'hide-sm' }, barEl(full.mem)),
    h('td', { class: 'hide-sm', 'data-seen': full.last_seen || '', text: ago(full.last_seen) }),
    h('td', { class: 'hide-sm wrap', text: place }));
}

// ---------------------------------------------------------------- device page

const CHARTS = [
  { key: 'cpu', title: 'CPU', unit: '%', series: [['cpu', 'CPU']], max: 100 },
  { key: 'mem', title: 'Memory', unit: '%', series: [['mem', 'Memory']], max: 100 },
  { key: 'disk', title: 'Disk used', unit: '%', series: [['disk', 'Disk']], max: 100 },
  { key: 'net', title: 'Network', unit: 'B/s', series: [['rx', 'Received'], ['tx', 'Sent']], max: null },
];

async function renderDevice(main, id) {
  const detail = await api('GET', tpath('/devices/' + encodeURIComponent(id) + '/detail'));
  const d = detail.device;
  state.devices.set(d.id, Object.assign(state.devices.get(d.id) || {}, d));
  const inv = detail.inventory || {};
  const hb = detail.heartbeat || {};
  const status = h('span', { id: 'device-status' }, statusEl(d));
  const seen = h('span', { id: 'device-seen', class: 'muted', text: 'last seen ' + ago(d.last_seen) });

  const facts = (rows) => h('dl', { class: 'facts' }, rows.filter((r) => r[1] !== undefined && r[1] !== '').map(([k, v]) => [h('dt', { text: k }), h('dd', { text: String(v) })]));
  const disks = (inv.disks || []).map((x) => h('li', {}, h('span', { class: 'mono', text: x.mount }), h('span', { class: 'muted', text: bytes(x.total - x.free) + ' of ' + bytes(x.total) + ' used' })));
  const nics = (inv.interfaces || []).filter((i) => (i.addresses || []).length).map((i) => h('li', {}, h('span', { class: 'mono', text: i.name }), h('span', { class: 'muted', text: i.addresses.join(', ') })));

  const rangeSeg = h('div', { class: 'seg', id: 'range' },
    h('button', { 'data-range': '1h', class: 'on', text: 'Last hour' }),
    h('button', { 'data-range': '24h', text: 'Last day' }));
  const chartBox = h('div', { class: 'grid grid-2', id: 'charts' });
  const events = h('ul', { class: 'list', id: 'events' });

  const parts = [
    h('div', { class: 'page-head' },
      h('div', {}, h('h1', { id: 'device-name', text: d.hostname || d.id }), h('div', { class: 'muted mono', text: d.id })),
      h('div', { class: 'toolbar' }, status, seen)),
    h('div', { class: 'grid grid-2' },
      h('div', { class: 'panel' }, h('h2', { text: 'Device' }), facts([
        ['OS', [d.os, d.os_version].filter(Boolean).join(' ')], ['Kernel', inv.kernel], ['Architecture', inv.arch],
        ['CPU', inv.cpu_model ? inv.cpu_model + ' (' + inv.cpu_cores + ' cores)' : inv.cpu_cores],
        ['Memory', inv.memory_total ? bytes(inv.memory_total) : undefined],
        ['Organization', d.organization || '–'], ['Group', d.group || '–'],
        ['Enrolled', when(d.enrolled_at)], ['Booted', inv.boot_time ? when(inv.boot_time) : undefined],
        ['Agent', hb.agent_version || inv.agent_version], ['State', d.state]])),
      h('div', { class: 'panel' }, h('h2', { text: 'Storage and network' }),
        h('ul', { class: 'list' }, disks.length ? disks : h('li', { class: 'muted', text: 'No inventory yet.' }), nics))),
    h('div', { class: 'page-head spaced' }, h('h2', { text: 'Performance' }), rangeSeg),
    chartBox,
  ];
  let command = null;
  if ((detail.can || []).includes('command')) command = commandPanel(d);
  parts.push(h('div', { class: 'grid grid-2 spaced' },
    h('div', { class: 'panel' }, h('h2', { text: 'Recent events' }), events),
    command || h('div', { class: 'panel muted', id: 'command-denied', text: 'Your role does not allow commands on this device.' })));
  main.append(...parts);

  let range = '1h';
  let history = { points: [], events: [], step: 10 };
  const charts = {};
  const drawAll = () => {
    for (const c of CHARTS) drawChart(charts[c.key], c, history.points, range);
  };
  for (const c of CHARTS) {
    const now = h('span', { class: 'now' });
    const svg = s('svg', { class: 'chart', id: 'chart-' + c.key, viewBox: '0 0 400 140', preserveAspectRatio: 'none', role: 'img', 'aria-label': c.title });
    charts[c.key] = { svg, now };
    chartBox.appendChild(h('div', { class: 'panel' },
      h('div', { class: 'chart-head' }, h('h2', { text: c.title }), now),
      svg,
      c.series.length > 1 ? h('div', { class: 'legend' }, c.series.map(([, name], i) => h('span', { class: 'k' + i, text: name }))) : null));
  }
  const loadHistory = async (background) => {
    history = await api('GET', tpath('/devices/' + encodeURIComponent(id) + '/history?kind=metrics&range=' + range),
      undefined, background);
    drawAll();
    clear(events);
    if (!history.events.length) events.appendChild(h('li', { class: 'muted', text: 'No events in this range.' }));
    for (const e of history.events) {
      events.appendChild(h('li', {},
        h('span', { class: 'when', text: when(e.t) }),
        h('span', { class: 'tag' + (e.security ? ' sec' : ''), text: e.event }),
        h('span', { class: 'muted', text: eventText(e.detail) })));
    }
  };
  rangeSeg.addEventListener('click', (ev) => {
    const b = ev.target.closest('button');
    if (!b) return;
    range = b.dataset.range;
    for (const x of rangeSeg.children) x.classList.toggle('on', x === b);
    loadHistory().catch(() => {});
  });
  await loadHistory();

  // Disk and network come with the history: reload it every minute.
  const refresh = setInterval(() => loadHistory(true).catch(() => {}), 60000);
  return {
    onLeave: () => clearInterval(refresh),
    onResize: drawAll,
    onDevice: (dv, e) => {
      if (dv.device !== d.id) return;
      clear(status).appendChild(statusEl(Object.assign({ state: d.state }, dv)));
      seen.textContent = 'last seen ' + ago(dv.last_seen);
      if (e.cpu === undefined || e.cpu === null) return;
      // A live point for CPU and memory; the other series come with the next history load.
      const t = Math.floor(Date.now() / 1000);
      const pts = history.points;
      const last = pts[pts.length - 1];
      if (last && t - last.t < history.step) {
        Object.assign(last, { cpu: e.cpu, mem: e.mem });
      } else {
        pts.push(Object.assign({}, last || { disk: 0, rx: 0, tx: 0 }, { t, cpu: e.cpu, mem: e.mem, live: true }));
      }
      const from = t - (range === '1h' ? 3600 : 86400);
      while (pts.length && pts[0].t < from) pts.shift();
      drawAll();
    },
  };
}

function eventText(e) {
  if (!e) return '';
  return e.detail || e.reason || e.message || e.agent_version || (e.dropped !== undefined ? e.dropped + ' dropped' : '') || '';
}

function drawChart(c, spec, points, range) {
  const svg = c.svg;
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  // One unit per CSS pixel: lines, dots and labels keep their shape at any width.
  const W = Math.max(200, Math.round(svg.getBoundingClientRect().width) || 400);
  const H = 140, top = 8, bottom = 18, left = 0;
  svg.setAttribute('viewBox', '0 0 ' + W + ' ' + H);
  const now = Math.floor(Date.now() / 1000);
  const span = range === '1h' ? 3600 : 86400;
  const from = now - span;
  let max = spec.max;
  if (!max) {
    max = 1;
    for (const p of points) for (const [k] of spec.series) max = Math.max(max, p[k] || 0);
    max *= 1.15;
  }
  const x = (t) => left + ((t - from) / span) * (W - left);
  const y = (v) => top + (1 - Math.min(v, max) / max) * (H - top - bottom);
  for (const f of [0, 0.5, 1]) {
    svg.appendChild(s('line', { class: 'grid-line', x1: 0, x2: W, y1: y(max * f), y2: y(max * f) }));
  }
  svg.appendChild(s('text', { class: 'axis', x: 2, y: H - 4 }, range === '1h' ? '−60 min' : '−24 h'));
  svg.appendChild(s('text', { class: 'axis', x: W - 2, y: H - 4, 'text-anchor': 'end' }, 'now'));
  spec.series.forEach(([k], i) => {
    const pts = points.filter((p) => p.t >= from && p[k] !== undefined && p[k] !== null);
    if (!pts.length) return;
    const coords = pts.map((p) => x(p.t).toFixed(1) + ',' + y(p[k]).toFixed(1));
    if (pts.length === 1) coords.push((x(pts[0].t) + 2).toFixed(1) + ',' + y(pts[0][k]).toFixed(1));
    if (i === 0) {
      svg.appendChild(s('polygon', {
        class: 'area s0',
        points: coords.join(' ') + ' ' + x(pts[pts.length - 1].t).toFixed(1) + ',' + y(0) + ' ' + x(pts[0].t).toFixed(1) + ',' + y(0),
      }));
    }
    svg.appendChild(s('polyline', { class: 'line s' + i, points: coords.join(' '), 'vector-effect': 'non-scaling-stroke' }));
    const lastPt = pts[pts.length - 1];
    svg.appendChild(s('circle', { class: 'dot s' + i, cx: x(lastPt.t).toFixed(1), cy: y(lastPt[k]).toFixed(1), r: 2.5, 'vector-effect': 'non-scaling-stroke' }));
  });
  svg.setAttribute('data-points', String(points.filter((p) => p.t >= from).length));
  const last = points[points.length - 1];
  c.now.textContent = !last ? 'no data' : spec.unit === '%'
    ? pct(last[spec.series[0][0]])
    : spec.series.map(([k]) => bytes(last[k]) + '/s').join(' · ');
  if (!points.length) {
    svg.appendChild(s('text', { class: 'axis', x: W / 2, y: H / 2, 'text-anchor': 'middle' }, 'No metrics in this range'));
  }
}

function commandPanel(d) {
  const kind = h('select', { id: 'command-kind', 'aria-label': 'Command' },
    h('option', { value: 'ping', text: 'Ping' }),
    h('option', { value: 'processes', text: 'List processes' }),
    h('option', { value: 'collect:inventory', text: 'Collect inventory' }),
    h('option', { value: 'collect:metrics', text: 'Collect metrics' }));
  const send = h('button', { type: 'submit', class: 'primary', id: 'command-send', text: 'Send' });
  const result = h('div', { class: 'result', id: 'command-result', 'aria-live': 'polite' });
  const form = h('form', { id: 'command-form' }, kind, send);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const [k, what] = kind.value.split(':');
    const args = k === 'collect' ? { what } : k === 'processes' ? { limit: 20 } : {};
    send.disabled = true;
    clear(result).appendChild(h('span', { class: 'muted', text: 'Waiting for the device…' }));
    try {
      const r = await api('POST', tpath('/commands'), { device: d.id, kind: k, args, timeout_secs: 15 });
      const o = r.devices[0] || {};
      const ok = o.status === 'ok';
      clear(result).append(
        h('div', {},
          h('span', { class: 'tag ' + (ok ? 'ok' : 'bad'), id: 'command-status', text: o.status || 'no answer' }),
          ' ',
          h('span', { class: 'muted', text: o.latency_us ? (o.latency_us / 1000).toFixed(1) + ' ms' : '' })),
        h('pre', { id: 'command-output', text: JSON.stringify(o.result ? (o.result.output !== undefined ? o.result.output : o.result) : o, null, 2) }));
    } catch (e) {
      clear(result).appendChild(h('p', { class: 'error', text: e.message }));
    } finally {
      send.disabled = false;
    }
  });
  return h('div', { class: 'panel command', id: 'command' }, h('h2', { text: 'Send a command' }), form, result);
}

// ---------------------------------------------------------------- audit

async function renderAudit(main) {
  main.appendChild(h('div', { class: 'page-head' }, h('div', {}, h('h1', { text: 'Audit' }), h('div', { class: 'muted', text: 'Who did what, newest first' }))));
  const panel = h('div', { class: 'panel', id: 'audit' });
  main.appendChild(panel);
  let page;
  try {
    page = await api('GET', tpath('/audit?limit=50'));
  } catch (e) {
    if (e.status === 404) {
      panel.appendChild(h('div', { class: 'empty', id: 'audit-unavailable', text: 'Audit not available.' }));
      return;
    }
    if (e.status === 403) {
      panel.appendChild(h('div', { class: 'empty', text: 'Your role does not allow reading the audit log.' }));
      return;
    }
    throw e;
  }
  const items = page.items || [];
  if (!items.length) {
    panel.appendChild(h('div', { class: 'empty', text: 'No entries.' }));
    return;
  }
  const pick = (o, ...keys) => { for (const k of keys) if (o[k] !== undefined && o[k] !== null) return o[k]; return undefined; };
  panel.appendChild(h('div', { class: 'table-wrap' }, h('table', {},
    h('thead', {}, h('tr', {}, h('th', { text: 'Time' }), h('th', { text: 'Actor' }), h('th', { text: 'Action' }),
      h('th', { class: 'hide-sm', text: 'Object' }), h('th', { text: 'Outcome' }))),
    h('tbody', {}, items.map((a) => {
      const t = pick(a, 'ts', 'at', 'time');
      return h('tr', {},
        h('td', { text: typeof t === 'number' ? when(t) : String(t || '–') }),
        h('td', { class: 'wrap', text: String(pick(a, 'actor', 'user') || '–') }),
        h('td', { text: String(pick(a, 'kind', 'action', 'event') || '–') }),
        h('td', { class: 'hide-sm wrap mono', text: String(pick(a, 'device', 'target', 'object', 'tenant') || '') }),
        h('td', { text: String(pick(a, 'outcome', 'result') || '') }));
    })))));
}

// ---------------------------------------------------------------- start

document.addEventListener('DOMContentLoaded', () => {
  $('login-form').addEventListener('submit', login);
  $('logout').addEventListener('click', logout);
  $('tenant').addEventListener('change', (ev) => {
    state.tenant = ev.target.value;
    localStorage.setItem('wg.tenant', state.tenant);
    state.list.cursors = [];
    state.list.after = null;
    startLive();
    render();
  });
  window.addEventListener('hashchange', render);
  let resizing = null;
  window.addEventListener('resize', () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => { if (state.page && state.page.onResize) state.page.onResize(); }, 150);
  });
  // Relative times stay current.
  setInterval(() => {
    for (const td of document.querySelectorAll('td[data-seen]')) {
      const v = Number(td.dataset.seen);
      td.textContent = ago(v || null);
    }
  }, 15000);
  start();
});
