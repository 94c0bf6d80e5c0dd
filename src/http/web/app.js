'use strict';
// castmux operator page. Plain JavaScript, no libraries, no build step: the file is
// embedded in the castmux binary and served as it is.
//
// Every call goes to this server's own API with the API key in X-API-Key. The key is asked
// once and kept in sessionStorage (this tab only, gone when the tab closes); no cookie is
// set or read. Server data is put into the page as text nodes only.

const KEY_ITEM = 'castmux.api-key';
const POLL_MS = 2000;            // dashboard poll with a head-end
const POLL_NO_HEADEND_MS = 10000; // re-check of a server without one
const HISTORY_S = 600;           // bitrate history kept for the chart

// ---- small helpers ----------------------------------------------------------------

const $ = (id) => document.getElementById(id);

/** An element with attributes and children (strings become text nodes). */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

/** Unix seconds as `YYYY-MM-DD HH:MMZ` (seconds shown when not zero); the server reads it back. */
function fmtTime(t) {
  const n = Number(t);
  if (!Number.isFinite(n)) return '';
  const iso = new Date(n * 1000).toISOString(); // 2026-01-31T12:34:56.000Z
  const secs = iso.slice(17, 19);
  return iso.slice(0, 10) + ' ' + iso.slice(11, 16) + (secs === '00' ? '' : ':' + secs) + 'Z';
}

function fmtMbps(bps) {
  return typeof bps === 'number' ? (bps / 1e6).toFixed(2) : '-';
}

function fmtDuration(s) {
  s = Math.floor(s);
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
  return (d ? d + 'd ' : '') + (d || h ? h + 'h ' : '') + m + 'm';
}

function plural(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}

function flash(text, bad) {
  const f = $('flash');
  f.textContent = text;
  f.className = bad ? 'flash bad' : 'flash';
  f.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { f.hidden = true; }, bad ? 8000 : 3000);
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

// ---- the API ------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code);
    this.status = status;
    this.code = code;
  }
}

function key() {
  return sessionStorage.getItem(KEY_ITEM);
}

/**
 * Call the API. `body` is sent as JSON unless `type` says otherwise; answers JSON (or
 * text for `text/*` answers, null for 204). A 401 forgets the key and asks again.
 */
async function api(method, path, body, type) {
  const headers = { 'X-API-Key': key() || '' };
  const init = { method, headers, credentials: 'omit', cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = type || 'application/json';
    init.body = type ? body : JSON.stringify(body);
  }
  const res = await fetch(path, init);
  if (res.status === 204) return null;
  const ct = res.headers.get('Content-Type') || '';
  const data = ct.startsWith('application/json') ? await res.json() : await res.text();
  if (!res.ok) {
    const err = new ApiError(res.status, data && data.error ? data.error : String(res.status),
      data && data.message ? data.message : String(data));
    if (res.status === 401) {
      sessionStorage.removeItem(KEY_ITEM);
      showLogin('The server refused the key: ' + err.message);
    }
    throw err;
  }
  return data;
}

function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== '' && v !== null && v !== undefined) p.set(k, v);
  const s = p.toString();
  return s ? '?' + s : '';
}

/** Run an action, flashing its error (the server's code and message). */
async function attempt(what, fn) {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return undefined;
    flash(what + ' failed: ' + (e.code ? e.code + ': ' : '') + e.message, true);
    return undefined;
  }
}

// ---- login and views ----------------------------------------------------------------

const state = {
  view: null,
  headend: null,        // null unknown, true, false (404)
  packages: [],
  events: [],
  cards: { stack: [], after: null, next: null, list: [], editing: null },
  audit: { stack: [], before: null, next: null },
  history: new Map(),   // channel name -> [{t, inBps, outBps}]
  selected: null,
  pollTimer: null,
};

function showLogin(message) {
  for (const v of document.querySelectorAll('.view')) v.hidden = true;
  $('nav').hidden = true;
  $('logout').hidden = true;
  $('login').hidden = false;
  const e = $('login-error');
  e.textContent = message || '';
  e.hidden = !message;
  clearTimeout(state.pollTimer);
  state.pollTimer = null;
  $('key').focus();
}

async function login(ev) {
  ev.preventDefault();
  const k = $('key').value.trim();
  sessionStorage.setItem(KEY_ITEM, k);
  try {
    await api('GET', '/api/v1/packages');
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) showLogin('The server did not answer: ' + e.message);
    return;
  }
  $('key').value = '';
  start();
}

function start() {
  $('login').hidden = true;
  $('nav').hidden = false;
  $('logout').hidden = false;
  state.headend = null;
  poll();
  route();
}

const VIEWS = {
  dashboard: () => renderDashboard(),
  cards: () => loadCards(),
  packages: () => loadPackages(),
  keys: () => loadKeys(),
  audit: () => loadAudit(),
};

function route() {
  if (!key()) return showLogin();
  let name = location.hash.slice(1);
  if (!VIEWS[name]) name = state.headend === false ? 'cards' : 'dashboard';
  state.view = name;
  for (const v of document.querySelectorAll('.view')) v.hidden = v.id !== 'view-' + name;
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.view === name);
  VIEWS[name]();
}

// ---- dashboard ----------------------------------------------------------------------

/** Poll status and channels; a 404 means no head-end in this process (`castmux serve`). */
async function poll() {
  clearTimeout(state.pollTimer);
  if (!key()) return;
  let next = POLL_MS;
  try {
    const [status, channels] = await Promise.all([
      api('GET', '/api/v1/status'), api('GET', '/api/v1/channels')]);
    const first = state.headend !== true;
    state.headend = true;
    record(channels);
    state.status = status;
    state.channels = channels;
    state.pollError = null;
    if (first && state.view !== 'dashboard' && !location.hash) route();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return;
    if (e instanceof ApiError && e.status === 404) {
      const was = state.headend;
      state.headend = false;
      next = POLL_NO_HEADEND_MS;
      if (was !== false && state.view === 'dashboard' && !location.hash) route();
    } else {
      state.pollError = e.message;
    }
  }
  headendNav();
  if (state.view === 'dashboard') renderDashboard();
  state.pollTimer = setTimeout(poll, next);
}

function headendNav() {
  const a = document.querySelector('#nav a[data-view=dashboard]');
  a.classList.toggle('off', state.headend === false);
  a.textContent = state.headend === false ? 'Dashboard (no head-end)' : 'Dashboard';
  const s = state.status;
  if (state.pollError) $('system').textContent = 'status unavailable: ' + state.pollError;
  else if (state.headend && s) $('system').textContent = `castmux ${s.version} · up ${fmtDuration(s.uptime_s)} · ${s.on_air}/${s.channels} on air`;
  else $('system').textContent = '';
}

/** Keep each channel's input and output bitrate for the last HISTORY_S seconds. */
function record(channels) {
  const now = Date.now() / 1000;
  const seen = new Set();
  for (const c of channels) {
    seen.add(c.name);
    let h = state.history.get(c.name);
    if (!h) state.history.set(c.name, h = []);
    h.push({ t: now, inBps: c.input ? c.input.bitrate_bps : null, outBps: c.output ? c.output.bitrate_bps : null });
    while (h.length && h[0].t < now - HISTORY_S) h.shift();
  }
  for (const name of [...state.history.keys()]) if (!seen.has(name)) state.history.delete(name);
}

const STATE_TAG = { running: 'ok', restarting: 'warn', failed: 'bad', stopped: '', disabled: '' };

function renderDashboard() {
  $('no-headend').hidden = state.headend !== false;
  $('headend').hidden = state.headend !== true;
  if (state.headend !== true) return;
  const s = state.status || {};
  const chans = state.channels || [];
  $('summary').replaceChildren(
    el('div', {}, el('b', {}, `${s.on_air ?? '-'} / ${s.channels ?? chans.length}`), 'channels on air'),
    el('div', {}, el('b', {}, fmtMbps(chans.reduce((a, c) => a + ((c.output && c.output.bitrate_bps) || 0), 0))), 'Mbit/s out, total'),
    el('div', {}, el('b', {}, s.uptime_s !== undefined ? fmtDuration(s.uptime_s) : '-'), 'up'),
    el('div', {}, el('b', {}, s.version || '-'), 'version'),
    el('div', {}, el('b', {}, `${s.reloads ?? 0} / ${s.reloads_refused ?? 0}`), 'reloads / refused'));
  if (!chans.some((c) => c.name === state.selected)) state.selected = chans.length ? chans[0].name : null;
  fill($('channels').tBodies[0], chans.map((c) => {
    // one age per CA system; null while a CA system has had no ECM yet
    const ecm = (c.ecm_age_s || []).map((a) => (typeof a === 'number' ? a.toFixed(1) + ' s' : 'none yet')).join(', ') || '-';
    const links = (c.ecmg_links || []).map((l) =>
      el('span', { class: 'tag ' + (l.up ? 'ok' : 'bad'), title: l.addr + (l.active ? ' (active ' + l.active + ')' : '') },
        l.active || l.addr));
    const tr = el('tr', { 'data-channel': c.name, class: c.name === state.selected ? 'sel' : '' },
      el('td', {}, c.name),
      el('td', {}, el('span', Object.assign({ class: 'tag ' + (STATE_TAG[c.state] || '') }, c.last_error ? { title: c.last_error } : {}), c.state)),
      el('td', {}, el('span', { class: 'tag ' + (c.on_air ? 'ok' : 'bad') }, c.on_air ? 'on air' : 'off air')),
      el('td', { class: 'wrap' }, c.input ? c.input.url : '-'),
      el('td', { class: 'num' }, fmtMbps(c.input && c.input.bitrate_bps)),
      el('td', { class: 'num' }, fmtMbps(c.output && c.output.bitrate_bps)),
      el('td', { class: 'num' }, typeof c.scrambled_ratio === 'number' ? (c.scrambled_ratio * 100).toFixed(1) + ' %' : '-'),
      el('td', { class: 'num' }, ecm),
      el('td', {}, ...links),
      el('td', { class: 'num' }, c.input ? c.input.cc_errors : '-'),
      el('td', { class: 'num' }, c.restarts),
      el('td', { class: 'actions' },
        channelButton(c.name, 'restart', 'Restart'),
        c.state === 'disabled'
          ? channelButton(c.name, 'enable', 'Enable')
          : channelButton(c.name, 'disable', 'Disable')));
    tr.addEventListener('click', () => { state.selected = c.name; renderDashboard(); });
    return tr;
  }));
  drawChart();
}

/** A button that sends an operator's command for channel `name` (restart, enable, disable). */
function channelButton(name, command, label) {
  const b = el('button', { type: 'button', class: 'small', 'data-command': command }, label);
  b.addEventListener('click', async (ev) => {
    ev.stopPropagation();
    if (command !== 'enable' && !confirm(`${label} channel ${name}?`)) return;
    const done = await attempt(label, () =>
      api('POST', `/api/v1/channels/${encodeURIComponent(name)}/${command}`));
    if (done !== undefined) flash(`${label}: ${name} (asked)`);
    poll();
  });
  return b;
}

/** Ask the head-end to read its file again. */
async function reloadConfig() {
  if (!confirm('Reload the head-end file? Changed channels restart; the others are not touched.')) return;
  const done = await attempt('Reload', () => api('POST', '/api/v1/reload'));
  if (done !== undefined) flash('Reload asked: see the log, or the reload counters below');
  poll();
}

/** Line chart of the selected channel's input and output bitrate, an SVG drawn by hand. */
function drawChart() {
  const chart = $('chart');
  const name = state.selected;
  $('chart-name').textContent = name || '-';
  $('chart-span').textContent = String(HISTORY_S / 60);
  const W = Math.max(200, Math.round(chart.clientWidth || 800)), H = 200;
  const padL = 48, padR = 8, padT = 8, padB = 20;
  chart.setAttribute('viewBox', `0 0 ${W} ${H}`);
  const h = (name && state.history.get(name)) || [];
  const now = h.length ? h[h.length - 1].t : Date.now() / 1000;
  const max = Math.max(1e6, ...h.flatMap((p) => [p.inBps || 0, p.outBps || 0])) * 1.1;
  const x = (t) => padL + (W - padL - padR) * (1 - (now - t) / HISTORY_S);
  const y = (v) => padT + (H - padT - padB) * (1 - v / max);
  const parts = [];
  for (let i = 0; i <= 4; i++) {
    const v = (max / 4) * i;
    parts.push(svg('line', { class: 'grid-line', x1: padL, x2: W - padR, y1: y(v), y2: y(v) }));
    const label = svg('text', { class: 'axis', x: padL - 4, y: y(v) + 4, 'text-anchor': 'end' });
    label.textContent = (v / 1e6).toFixed(1);
    parts.push(label);
  }
  for (let m = 0; m <= HISTORY_S / 60; m += 2) {
    const label = svg('text', { class: 'axis', x: x(now - m * 60), y: H - 4, 'text-anchor': m ? 'middle' : 'end' });
    label.textContent = m ? `-${m} min` : 'now';
    parts.push(label);
  }
  for (const [cls, field] of [['in', 'inBps'], ['out', 'outBps']]) {
    const pts = h.filter((p) => typeof p[field] === 'number').map((p) => `${x(p.t).toFixed(1)},${y(p[field]).toFixed(1)}`);
    if (pts.length) parts.push(svg('polyline', { class: cls, points: pts.join(' ') }));
  }
  chart.replaceChildren(...parts);
}

// ---- cards ----------------------------------------------------------------------------

async function loadCatalog() {
  const [packages, events] = await Promise.all([api('GET', '/api/v1/packages'), api('GET', '/api/v1/events')]);
  state.packages = packages;
  state.events = events;
  const sel = $('card-package');
  const keep = sel.value;
  sel.replaceChildren(el('option', { value: '' }, 'any package'),
    ...packages.map((p) => el('option', { value: p.name }, p.name)));
  sel.value = keep;
}

function cardFilter() {
  const q = $('card-q').value.trim();
  const st = $('card-state').value;
  const pk = $('card-package').value;
  // the API takes one filter; the CLI's syntax combines none either
  if (q) return { q };
  if (st) return { state: st };
  if (pk) return { package: pk };
  return {};
}

async function loadCards() {
  await attempt('Loading cards', async () => {
    if (!state.packages.length) await loadCatalog();
    const c = state.cards;
    const page = await api('GET', '/api/v1/cards' + qs({ ...cardFilter(), limit: $('card-limit').value, after: c.after }));
    c.list = page.cards;
    c.next = page.next_after;
    fill($('cards').tBodies[0], page.cards.map(cardRow));
    if (!page.cards.length) fill($('cards').tBodies[0], [el('tr', {}, el('td', { colspan: 10, class: 'muted' }, 'no cards'))]);
    $('cards-page').textContent = `page ${c.stack.length + 1}, ${plural(page.cards.length, 'card', 'cards')}`;
    $('cards-prev').disabled = $('cards-first').disabled = !c.stack.length;
    $('cards-next').disabled = !c.next;
  });
}

function cardRow(c) {
  const on = c.state === 'enabled';
  return el('tr', { 'data-serial': c.serial_no },
    el('td', {}, c.serial_no),
    el('td', { class: 'wrap' }, c.name),
    el('td', { class: 'wrap' }, c.info),
    el('td', { class: 'wrap' }, c.packages.join(', ')),
    el('td', { class: 'wrap' }, c.events.map(eventName).join(', ')),
    el('td', {}, c.pair),
    el('td', {}, fmtTime(c.start)),
    el('td', {}, fmtTime(c.finish)),
    el('td', {}, el('span', { class: 'tag ' + (on ? 'ok' : 'bad') }, c.state)),
    el('td', {}, el('button', { type: 'button', class: 'link', onclick: () => openEdit(c) }, 'Edit'),
      el('button', { type: 'button', class: 'link', onclick: () => toggleCard(c) }, on ? 'Disable' : 'Enable')));
}

/** A card's event grant (bit and window) by the event's name, when the store still has it. */
function eventName(g) {
  const e = state.events.find((e) => e.bit === g.bit && e.start === g.start && e.end === g.end);
  return e ? e.name : `bit ${g.bit} ${fmtTime(g.start)} – ${fmtTime(g.end)}`;
}

/**
 * Check boxes for the packages (named ones, plus `bitN` bits of `chosen` without a package);
 * each box carries its bit.
 */
function packageChecks(box, chosen) {
  const items = state.packages.map((p) => ({ name: p.name, bit: p.bit, label: `${p.name} (bit ${p.bit})` }));
  for (const n of chosen) {
    const m = /^bit(\d+)$/.exec(n);
    if (m && !state.packages.some((p) => p.name === n)) {
      items.push({ name: n, bit: Number(m[1]), label: `bit ${m[1]} (no package)` });
    }
  }
  box.replaceChildren(...items.map((it) => el('label', {},
    el('input', Object.assign({ type: 'checkbox', value: it.name, 'data-bit': it.bit },
      chosen.includes(it.name) ? { checked: '' } : {})),
    ' ' + it.label)));
}

/** The checked boxes: names, bits, and whether every one is a named package. */
function checkedPackages(box) {
  const boxes = [...box.querySelectorAll('input:checked')];
  const named = new Set(state.packages.map((p) => p.name));
  return {
    names: boxes.map((i) => i.value),
    bits: boxes.map((i) => Number(i.dataset.bit)),
    allNamed: boxes.every((i) => named.has(i.value)),
  };
}

/** Access criteria as `0x` + hex (bit 0 the lowest), which the API reads like TVCAS digits. */
function accessHex(bits) {
  let mask = 0n;
  for (const b of bits) mask |= 1n << BigInt(b);
  return '0x' + mask.toString(16);
}

function openEdit(c) {
  state.cards.editing = c;
  $('card-add').hidden = true;
  $('card-edit').hidden = false;
  $('edit-serial').textContent = c.serial_no;
  $('edit-state').textContent = c.state;
  $('edit-state').className = 'tag ' + (c.state === 'enabled' ? 'ok' : 'bad');
  $('edit-name').value = c.name;
  $('edit-info').value = c.info;
  $('edit-start').value = fmtTime(c.start);
  $('edit-finish').value = fmtTime(c.finish);
  $('edit-pair').value = c.pair;
  $('edit-toggle').textContent = c.state === 'enabled' ? 'Disable' : 'Enable';
  packageChecks($('edit-packages'), c.packages);
  $('edit-event').replaceChildren(...state.events.map((e) => el('option', { value: e.name }, `${e.name} (${fmtTime(e.start)} – ${fmtTime(e.end)})`)));
  $('edit-grant').disabled = !state.events.length;
  $('edit-events').textContent = c.events.length ? 'granted: ' + c.events.map(eventName).join(', ') : '';
  $('card-edit').scrollIntoView({ block: 'nearest' });
}

async function saveEdit(ev) {
  ev.preventDefault();
  const c = state.cards.editing;
  if (!c) return;
  // only what was changed, so an untouched field (a start with seconds, say) stays as it is
  const body = {};
  if ($('edit-name').value !== c.name) body.name = $('edit-name').value;
  if ($('edit-info').value !== c.info) body.info = $('edit-info').value;
  if ($('edit-start').value !== fmtTime(c.start)) body.start = $('edit-start').value.trim();
  if ($('edit-finish').value !== fmtTime(c.finish)) body.finish = $('edit-finish').value.trim();
  if ($('edit-pair').value !== c.pair) body.pair = $('edit-pair').value;
  const pk = checkedPackages($('edit-packages'));
  if (pk.names.slice().sort().join() !== c.packages.slice().sort().join()) {
    // by name when every box is a package; a bit without a package goes as criteria
    if (pk.allNamed) body.packages = pk.names;
    else body.access_criteria = accessHex(pk.bits);
  }
  if (!Object.keys(body).length) return flash('Nothing changed.');
  const card = await attempt('Saving card ' + c.serial_no, () => api('PATCH', '/api/v1/cards/' + c.serial_no, body));
  if (card) {
    flash('Card ' + card.serial_no + ' saved.');
    openEdit(card);
    loadCards();
  }
}

async function toggleCard(c) {
  const action = c.state === 'enabled' ? 'disable' : 'enable';
  const card = await attempt(action + ' card ' + c.serial_no, () => api('POST', `/api/v1/cards/${c.serial_no}/${action}`));
  if (card) {
    flash('Card ' + card.serial_no + ' ' + card.state + '.');
    if (state.cards.editing && state.cards.editing.serial_no === card.serial_no) openEdit(card);
    loadCards();
  }
}

async function deleteCard() {
  const c = state.cards.editing;
  if (!c || !confirm(`Delete card ${c.serial_no} (${c.name || 'no name'})? Its key is gone for good.`)) return;
  const ok = await attempt('Deleting card ' + c.serial_no, () => api('DELETE', '/api/v1/cards/' + c.serial_no));
  if (ok !== undefined) {
    flash('Card ' + c.serial_no + ' deleted.');
    $('card-edit').hidden = true;
    state.cards.editing = null;
    loadCards();
  }
}

async function grantEvent() {
  const c = state.cards.editing;
  const name = $('edit-event').value;
  if (!c || !name) return;
  const card = await attempt('Granting ' + name, () =>
    api('POST', `/api/v1/events/${encodeURIComponent(name)}/grants`, { serial_no: c.serial_no }));
  if (card) {
    flash(`Event ${name} granted to card ${card.serial_no}.`);
    openEdit(card);
    loadCards();
  }
}

function openAdd() {
  $('card-edit').hidden = true;
  $('card-add').hidden = false;
  packageChecks($('add-packages'), []);
  $('add-count').focus();
}

async function addCards(ev) {
  ev.preventDefault();
  const body = { count: Number($('add-count').value || 1) };
  const text = { serial_no: 'add-serial', name: 'add-name', info: 'add-info', start: 'add-start', finish: 'add-finish' };
  for (const [field, id] of Object.entries(text)) {
    const v = $(id).value.trim();
    if (v) body[field] = v;
  }
  if ($('add-days').value) body.days = Number($('add-days').value);
  const pk = checkedPackages($('add-packages'));
  if (pk.names.length) body.packages = pk.names;
  const added = await attempt('Adding cards', () => api('POST', '/api/v1/cards', body));
  if (added) {
    const runs = added.runs.map(([a, b]) => (a === b ? a : a + '..' + b)).join(', ');
    flash(`Added ${plural(added.count, 'card', 'cards')}: ${runs}`);
    $('card-add').hidden = true;
    loadCards();
  }
}

async function exportCsv() {
  const text = await attempt('Export', () => api('GET', '/api/v1/cards.csv' + qs(cardFilter())));
  if (text === undefined) return;
  const url = URL.createObjectURL(new Blob([text], { type: 'text/csv' }));
  const a = el('a', { href: url, download: 'cards.csv' });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function importCsv() {
  const input = $('csv-file');
  const file = input.files[0];
  input.value = '';
  if (!file) return;
  const text = await file.text();
  const sum = await attempt('Import of ' + file.name, () =>
    api('POST', '/api/v1/cards.csv' + qs({ name: file.name }), text, 'text/csv'));
  if (sum) {
    flash(`Imported ${plural(sum.imported, 'card', 'cards')} from ${file.name}: ${sum.inserted} new, ${sum.updated} updated.`);
    loadCards();
  }
}

// ---- packages, events, keys, audit ---------------------------------------------------

async function loadPackages() {
  await attempt('Loading packages', async () => {
    const [packages, events] = await Promise.all([
      api('GET', '/api/v1/packages?count_cards=true'), api('GET', '/api/v1/events')]);
    state.packages = packages;
    state.events = events;
    fill($('packages').tBodies[0], packages.map((p) => el('tr', {},
      el('td', {}, p.name), el('td', { class: 'num' }, p.bit), el('td', { class: 'num' }, p.cards),
      el('td', {}, fmtTime(p.created_at)))));
    fill($('events').tBodies[0], events.map((e) => el('tr', {},
      el('td', {}, e.name), el('td', { class: 'num' }, e.bit), el('td', {}, fmtTime(e.start)), el('td', {}, fmtTime(e.end)))));
  });
}

async function addPackage(ev) {
  ev.preventDefault();
  const body = { name: $('package-name').value.trim() };
  if ($('package-bit').value !== '') body.bit = Number($('package-bit').value);
  const p = await attempt('Adding package', () => api('POST', '/api/v1/packages', body));
  if (p) {
    flash(`Package ${p.name} added on bit ${p.bit}.`);
    $('package-name').value = $('package-bit').value = '';
    loadPackages();
  }
}

async function addEvent(ev) {
  ev.preventDefault();
  const body = { name: $('event-name').value.trim(), start: $('event-start').value.trim(), end: $('event-end').value.trim() };
  if ($('event-bit').value !== '') body.bit = Number($('event-bit').value);
  const e = await attempt('Adding event', () => api('POST', '/api/v1/events', body));
  if (e) {
    flash(`Event ${e.name} added on bit ${e.bit}.`);
    for (const id of ['event-name', 'event-start', 'event-end', 'event-bit']) $(id).value = '';
    loadPackages();
  }
}

async function loadKeys() {
  await attempt('Loading key status', async () => {
    const keys = await api('GET', '/api/v1/keys');
    fill($('keys').tBodies[0], keys.map((k) => el('tr', {},
      el('td', { class: 'num' }, k.bit), el('td', { class: 'wrap' }, k.names.join(', ')),
      el('td', { class: 'num' }, k.current_version), el('td', {}, fmtTime(k.current_since)),
      el('td', { class: 'num' }, k.next_version), el('td', {}, fmtTime(k.next_created)))));
  });
}

async function loadAudit() {
  await attempt('Loading the audit log', async () => {
    const a = state.audit;
    const page = await api('GET', '/api/v1/audit' + qs({
      action: $('audit-action').value.trim(), subject: $('audit-subject').value.trim(),
      since: $('audit-since').value.trim(), until: $('audit-until').value.trim(),
      limit: $('audit-limit').value, before: a.before,
    }));
    a.next = page.next_before;
    fill($('audit').tBodies[0], page.entries.map((e) => el('tr', {},
      el('td', { class: 'num' }, e.id), el('td', {}, fmtTime(e.at)), el('td', {}, e.action),
      el('td', {}, e.subject), el('td', { class: 'wrap' }, e.detail))));
    if (!page.entries.length) fill($('audit').tBodies[0], [el('tr', {}, el('td', { colspan: 5, class: 'muted' }, 'no entries'))]);
    $('audit-page').textContent = `page ${a.stack.length + 1}, ${plural(page.entries.length, 'entry', 'entries')}`;
    $('audit-prev').disabled = $('audit-first').disabled = !a.stack.length;
    $('audit-next').disabled = !a.next;
  });
}

/** Paging by key: a stack of the previous pages' starts. */
function pager(p, cursor, load) {
  return {
    first() { p.stack = []; p[cursor] = null; load(); },
    prev() { p[cursor] = p.stack.pop() ?? null; load(); },
    next() { if (p.next === null || p.next === undefined) return; p.stack.push(p[cursor]); p[cursor] = p.next; load(); },
  };
}

// ---- wiring -----------------------------------------------------------------------------

document.addEventListener('DOMContentLoaded', () => {
  $('login-form').addEventListener('submit', login);
  $('reload-config').addEventListener('click', reloadConfig);
  $('logout').addEventListener('click', () => { sessionStorage.removeItem(KEY_ITEM); showLogin(); });
  window.addEventListener('hashchange', route);

  const cards = pager(state.cards, 'after', loadCards);
  $('card-search').addEventListener('submit', (ev) => { ev.preventDefault(); cards.first(); });
  $('cards-first').addEventListener('click', cards.first);
  $('cards-prev').addEventListener('click', cards.prev);
  $('cards-next').addEventListener('click', cards.next);
  $('card-edit').addEventListener('submit', saveEdit);
  $('edit-toggle').addEventListener('click', () => state.cards.editing && toggleCard(state.cards.editing));
  $('edit-delete').addEventListener('click', deleteCard);
  $('edit-grant').addEventListener('click', grantEvent);
  $('edit-close').addEventListener('click', () => { $('card-edit').hidden = true; state.cards.editing = null; });
  $('card-add-open').addEventListener('click', openAdd);
  $('card-add').addEventListener('submit', addCards);
  $('add-close').addEventListener('click', () => { $('card-add').hidden = true; });
  $('csv-export').addEventListener('click', exportCsv);
  $('csv-file').addEventListener('change', importCsv);

  $('package-add').addEventListener('submit', addPackage);
  $('event-add').addEventListener('submit', addEvent);

  const audit = pager(state.audit, 'before', loadAudit);
  $('audit-search').addEventListener('submit', (ev) => { ev.preventDefault(); audit.first(); });
  $('audit-first').addEventListener('click', audit.first);
  $('audit-prev').addEventListener('click', audit.prev);
  $('audit-next').addEventListener('click', audit.next);

  if (key()) start(); else showLogin();
});
