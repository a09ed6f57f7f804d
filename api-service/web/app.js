// Ferric's fleet web view: a hand-written script without dependencies.
//
// Every text that comes from the API goes into the page through textContent (never
// innerHTML), so nothing a node's name, owner or error holds is ever parsed as markup.
// Actions call the REST API (/v1/...) with the user's own credentials; the REST API's policy
// decides. /ui/api/session only says which buttons to show.
(() => {
  'use strict';

  const ROW_H = 34; // px, as --row in app.css
  const PAGE = 500; // rows per request
  const OVERSCAN = 10; // rows rendered above and below the visible ones
  const PREFETCH = 300; // fetch the next page when the view is this many rows from the end
  const TOKEN_KEY = 'ferric.token';

  const body = document.body;
  const $ = (id) => document.getElementById(id);

  // ---- small helpers -----------------------------------------------------------------

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  function fmtBytes(n) {
    if (n === null || n === undefined || !isFinite(n)) return '?';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    let v = Number(n);
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
    return (i === 0 ? String(Math.round(v)) : v.toFixed(1)) + ' ' + units[i];
  }

  function fmtDuration(s) {
    if (!isFinite(s) || s < 0) return '?';
    s = Math.round(s);
    if (s < 60) return s + 's';
    const m = Math.floor(s / 60);
    if (m < 60) return m + 'm ' + String(s % 60).padStart(2, '0') + 's';
    return Math.floor(m / 60) + 'h ' + String(m % 60).padStart(2, '0') + 'm';
  }

  function fmtTime(ts) {
    if (!ts) return '—';
    const d = new Date(ts);
    return isNaN(d.getTime()) ? String(ts) : d.toLocaleString();
  }

  const FAILED = new Set(['inspect failed', 'clean failed', 'deploy failed', 'adopt failed',
    'rescue failed', 'unrescue failed', 'service failed', 'error']);
  const DEPLOYING = new Set(['deploying', 'wait call-back', 'deploy hold']);
  const STABLE = new Set(['enroll', 'manageable', 'available', 'active', 'rescue']);

  function stateClass(s) {
    if (s === 'active') return 's-active';
    if (FAILED.has(s)) return 's-failed';
    if (s && !STABLE.has(s)) return 's-busy';
    return '';
  }

  // "50% · 12.0 MiB / 24.0 MiB · 3.1 MiB/s · ETA 4s · downloading": the numbers first, so a
  // narrow column cuts the phase, not the ETA.
  function progressText(p) {
    const parts = [];
    const written = p.bytes_written || 0;
    if (p.total_bytes) {
      parts.push(Math.floor((100 * Math.min(written, p.total_bytes)) / p.total_bytes) + '%');
      parts.push(fmtBytes(written) + ' / ' + fmtBytes(p.total_bytes));
    } else {
      parts.push(fmtBytes(written));
    }
    if (p.rate_bytes_per_sec) parts.push(fmtBytes(p.rate_bytes_per_sec) + '/s');
    if (p.rate_bytes_per_sec && p.total_bytes && p.total_bytes > written) {
      parts.push('ETA ' + fmtDuration((p.total_bytes - written) / p.rate_bytes_per_sec));
    }
    if (p.phase) parts.push(p.phase);
    return parts.join(' · ');
  }

  function setBar(bar, p) {
    if (p.total_bytes) {
      bar.max = p.total_bytes;
      bar.value = Math.min(p.bytes_written || 0, p.total_bytes);
    } else {
      bar.removeAttribute('value'); // indeterminate
    }
  }

  // ---- HTTP ----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function headers(extra) {
    const h = { Accept: 'application/json' };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) h['X-Auth-Token'] = token;
    return Object.assign(h, extra || {});
  }

  // The message of Ironic's error body, {"error_message": "{\"faultstring\": …}"}.
  async function errorMessage(resp) {
    let text = '';
    try { text = await resp.text(); } catch (_) { /* no body */ }
    try {
      const outer = JSON.parse(text);
      let inner = outer.error_message;
      if (typeof inner === 'string') {
        try { inner = JSON.parse(inner); } catch (_) { return inner; }
      }
      if (inner && inner.faultstring) return String(inner.faultstring);
    } catch (_) { /* not JSON */ }
    return text.trim() || resp.statusText || 'request failed';
  }

  async function call(method, path, payload) {
    const extra = path.startsWith('/v1') ? { 'X-OpenStack-Ironic-API-Version': 'latest' } : {};
    const opts = { method, headers: headers(extra), credentials: 'same-origin', cache: 'no-store' };
    if (payload !== undefined) {
      opts.body = JSON.stringify(payload);
      opts.headers['Content-Type'] = 'application/json';
    }
    const resp = await fetch(path, opts);
    if (!resp.ok) {
      const msg = await errorMessage(resp);
      if (resp.status === 401) needSignIn(msg);
      throw new ApiError(resp.status, msg + ' (HTTP ' + resp.status + ')');
    }
    const text = await resp.text();
    return text ? JSON.parse(text) : null;
  }

  // ---- signing in ------------------------------------------------------------------------

  function needSignIn(msg) {
    const auth = body.dataset.auth;
    const box = $('signin');
    $('who').textContent = 'not signed in';
    if (auth === 'keystone') {
      $('signin-message').textContent = sessionStorage.getItem(TOKEN_KEY)
        ? 'The API refused the token: ' + msg
        : 'The API needs credentials: give a token, or open this page through the proxy that signs you in.';
      box.hidden = false;
    } else if (auth === 'http_basic') {
      $('signin-message').textContent = 'The API refused the credentials. Reload the page to sign in again.';
      $('signin-form').hidden = true;
      box.hidden = false;
    }
  }

  $('signin-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const t = $('signin-token').value.trim();
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    else sessionStorage.removeItem(TOKEN_KEY);
    location.reload();
  });

  function setLive(state) {
    const live = $('live');
    live.dataset.state = state;
    live.textContent = state === 'live' ? 'live' : state === 'connecting' ? 'reconnecting…' : 'offline';
  }

  // ---- live events: Server-Sent Events read with fetch, so they carry the same headers ----

  function connectEvents(handlers) {
    let backoff = 1000;
    let connectedOnce = false;

    function dispatch(block) {
      let event = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (!line || line.startsWith(':')) continue;
        const c = line.indexOf(':');
        const field = c < 0 ? line : line.slice(0, c);
        let v = c < 0 ? '' : line.slice(c + 1);
        if (v.startsWith(' ')) v = v.slice(1);
        if (field === 'event') event = v;
        else if (field === 'data') data.push(v);
      }
      if (event === 'ready') {
        backoff = 1000;
        setLive('live');
        const again = connectedOnce;
        connectedOnce = true;
        if (handlers.ready) handlers.ready(again);
        return;
      }
      if (!data.length || !handlers[event]) return;
      let obj;
      try { obj = JSON.parse(data.join('\n')); } catch (_) { return; }
      handlers[event](obj);
    }

    async function run() {
      for (;;) {
        setLive(connectedOnce ? 'connecting' : 'off');
        try {
          const resp = await fetch('/ui/api/events', {
            headers: headers({ Accept: 'text/event-stream' }),
            credentials: 'same-origin',
            cache: 'no-store',
          });
          if (resp.status === 401) {
            needSignIn(await errorMessage(resp));
            setLive('off');
            return; // signing in reloads the page
          }
          if (!resp.ok || !resp.body) throw new Error('HTTP ' + resp.status);
          const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
          let buf = '';
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buf += value.replace(/\r/g, '');
            let at;
            while ((at = buf.indexOf('\n\n')) >= 0) {
              const block = buf.slice(0, at);
              buf = buf.slice(at + 2);
              dispatch(block);
            }
          }
        } catch (_) {
          // The network dropped or the server restarted: try again.
        }
        setLive('connecting');
        await sleep(backoff);
        backoff = Math.min(backoff * 2, 15000);
      }
    }
    run();
  }

  // ---- the fleet -----------------------------------------------------------------------

  const fleet = {
    rows: [], // compact node rows, in list order
    index: new Map(), // uuid -> position in rows
    next: null, // marker of the next page
    complete: false, // the last page is loaded
    loading: false,
    generation: 0, // bumped when the filters change; stale answers are dropped
    retryAt: 0, // after a failed page, not before this time
    params: new URLSearchParams(),
    pool: [], // the row elements, reused while scrolling
    frame: 0,
    countDirty: false, // the summary line needs counting again
    pending: 0, // changes to nodes outside the list
  };

  function filtersFromForm() {
    const p = new URLSearchParams();
    for (const [k, v] of new FormData($('filters'))) {
      const s = String(v).trim();
      if (s) p.set(k, s);
    }
    return p;
  }

  function filtered() {
    return [...fleet.params.keys()].length > 0;
  }

  function schedule() {
    if (!fleet.frame) fleet.frame = requestAnimationFrame(renderFleet);
  }

  function updateCount() {
    const count = $('count');
    const n = fleet.rows.length;
    count.dataset.count = String(n);
    count.dataset.complete = String(fleet.complete);
    if (fleet.complete) count.textContent = n.toLocaleString() + (n === 1 ? ' node' : ' nodes');
    else if (n === 0) count.textContent = 'Loading…';
    else count.textContent = n.toLocaleString() + ' nodes loaded, more as you scroll';
    let deploying = 0;
    for (const r of fleet.rows) if (DEPLOYING.has(r.provision_state)) deploying += 1;
    $('deploying').textContent = deploying ? deploying + ' deploying' : '';
    const pending = $('pending');
    pending.hidden = fleet.pending === 0;
    pending.textContent = fleet.pending + (fleet.pending === 1 ? ' node' : ' nodes') +
      ' changed outside this list — refresh';
  }

  function listError(msg) {
    const e = $('list-error');
    e.hidden = !msg;
    e.textContent = msg || '';
  }

  async function loadPage() {
    if (fleet.loading || fleet.complete || Date.now() < fleet.retryAt) return;
    fleet.loading = true;
    const gen = fleet.generation;
    const q = new URLSearchParams(fleet.params);
    q.set('limit', String(PAGE));
    if (fleet.next) q.set('marker', fleet.next);
    try {
      const page = await call('GET', '/ui/api/nodes?' + q.toString());
      if (gen !== fleet.generation) return;
      for (const n of page.nodes) {
        if (fleet.index.has(n.uuid)) continue;
        n.v = 0;
        fleet.index.set(n.uuid, fleet.rows.length);
        fleet.rows.push(n);
      }
      fleet.next = page.next_marker;
      fleet.complete = !page.next_marker;
      listError('');
    } catch (e) {
      if (gen !== fleet.generation) return;
      listError('Loading nodes failed: ' + e.message);
      if (e.status === 401) {
        fleet.retryAt = Infinity; // signing in reloads the page
      } else {
        fleet.retryAt = Date.now() + 5000;
        setTimeout(schedule, 5100);
      }
    } finally {
      if (gen === fleet.generation) {
        fleet.loading = false;
        updateCount();
        schedule();
      }
    }
  }

  function resetList() {
    fleet.generation += 1;
    fleet.rows = [];
    fleet.index = new Map();
    fleet.next = null;
    fleet.complete = false;
    fleet.loading = false;
    fleet.retryAt = 0;
    fleet.pending = 0;
    $('viewport').scrollTop = 0;
    updateCount();
    schedule();
  }

  // After the live stream was interrupted: read the loaded rows again (changes may have been
  // missed), keeping their places.
  async function refreshLoaded() {
    const gen = fleet.generation;
    let marker = null;
    let seen = 0;
    while (seen < fleet.rows.length) {
      const q = new URLSearchParams(fleet.params);
      q.set('limit', '1000');
      if (marker) q.set('marker', marker);
      let page;
      try { page = await call('GET', '/ui/api/nodes?' + q.toString()); } catch (_) { return; }
      if (gen !== fleet.generation) return;
      for (const n of page.nodes) {
        const i = fleet.index.get(n.uuid);
        if (i !== undefined) {
          n.v = (fleet.rows[i].v || 0) + 1;
          fleet.rows[i] = n;
        }
      }
      seen += page.nodes.length;
      marker = page.next_marker;
      if (!marker) break;
    }
    updateCount();
    schedule();
  }

  function makeRow() {
    const row = el('div', 'row');
    row.setAttribute('role', 'row');
    const cells = [];
    for (let i = 0; i < 6; i += 1) {
      const c = el('span');
      c.setAttribute('role', 'cell');
      row.appendChild(c);
      cells.push(c);
    }
    const link = el('a', 'node-link');
    cells[0].appendChild(link);
    const prog = el('div', 'prog');
    const bar = el('progress', 'bar');
    const ptext = el('span', 'prog-text');
    prog.append(bar, ptext);
    cells[5].appendChild(prog);
    return { el: row, cells, link, bar, ptext, key: '' };
  }

  function fillRow(r, n) {
    const key = n.uuid + '#' + n.v;
    if (r.key === key) return;
    r.key = key;
    r.el.classList.remove('loading');
    r.el.dataset.uuid = n.uuid;
    r.el.dataset.state = n.provision_state;
    r.el.classList.toggle('failed', FAILED.has(n.provision_state));
    r.link.textContent = n.name || n.uuid;
    r.link.title = n.uuid;
    r.link.href = '/ui/nodes/' + encodeURIComponent(n.uuid);

    const st = r.cells[1];
    clear(st);
    const s = el('span', 'state ' + stateClass(n.provision_state), n.provision_state);
    s.dataset.field = 'provision_state';
    st.appendChild(s);
    if (n.target_provision_state) st.appendChild(el('span', 'target', ' → ' + n.target_provision_state));
    if (n.maintenance) {
      const b = el('span', 'badge maint', 'maint');
      b.title = n.maintenance_reason || 'in maintenance';
      st.appendChild(b);
    }
    if (n.last_error) {
      const b = el('span', 'badge err', 'error');
      b.title = n.last_error;
      st.appendChild(b);
    }
    st.title = n.last_error || '';

    const pw = r.cells[2];
    const power = n.power_state ? n.power_state.replace(/^power /, '') : '—';
    pw.textContent = n.target_power_state ? power + ' → ' + n.target_power_state.replace(/^power /, '') : power;
    pw.className = n.power_state === 'power on' ? 'power-on' : 'power-off';
    r.cells[3].textContent = n.owner || '—';
    r.cells[3].title = n.lessee ? 'leased to ' + n.lessee : '';
    r.cells[4].textContent = n.conductor_group || '—';

    const p = n.progress;
    if (p && DEPLOYING.has(n.provision_state)) {
      r.bar.hidden = false;
      setBar(r.bar, p);
      r.ptext.textContent = progressText(p);
    } else {
      r.bar.hidden = true;
      r.ptext.textContent = DEPLOYING.has(n.provision_state) ? 'waiting for the agent…' : '';
    }
  }

  function fillLoading(r) {
    if (r.key === 'loading') return;
    r.key = 'loading';
    delete r.el.dataset.uuid;
    r.el.classList.add('loading');
    r.el.classList.remove('failed');
    r.link.textContent = fleet.loading ? 'loading…' : '';
    r.link.removeAttribute('href');
    for (let i = 1; i < r.cells.length; i += 1) {
      if (i === 5) { r.bar.hidden = true; r.ptext.textContent = ''; } else clear(r.cells[i]);
    }
  }

  function renderFleet() {
    fleet.frame = 0;
    if (fleet.countDirty) {
      fleet.countDirty = false;
      updateCount();
    }
    const vp = $('viewport');
    const total = fleet.rows.length + (fleet.complete ? 0 : 1);
    $('spacer').style.height = total * ROW_H + 'px';
    const first = Math.max(0, Math.floor(vp.scrollTop / ROW_H) - OVERSCAN);
    const last = Math.min(total, Math.ceil((vp.scrollTop + vp.clientHeight) / ROW_H) + OVERSCAN);
    const rowsEl = $('rows');
    while (fleet.pool.length < last - first) {
      const r = makeRow();
      fleet.pool.push(r);
      rowsEl.appendChild(r.el);
    }
    for (let i = 0; i < fleet.pool.length; i += 1) {
      const r = fleet.pool[i];
      const at = first + i;
      if (at >= last) {
        r.el.hidden = true;
        continue;
      }
      r.el.hidden = false;
      r.el.style.transform = 'translateY(' + at * ROW_H + 'px)';
      if (at < fleet.rows.length) fillRow(r, fleet.rows[at]);
      else { r.key = ''; fillLoading(r); }
    }
    if (!fleet.complete && last >= fleet.rows.length - PREFETCH) loadPage();
  }

  function onState(ev) {
    const i = fleet.index.get(ev.uuid);
    if (i === undefined) {
      // A node this list does not hold: newly enrolled, or (with filters) one that may now
      // match them. Offer a refresh rather than reorder the list under the user.
      if (fleet.complete && !filtered()) {
        fleet.pending += 1;
        updateCount();
      }
      return;
    }
    const n = fleet.rows[i];
    if (ev.provision_state) n.provision_state = ev.provision_state;
    n.target_provision_state = ev.target_provision_state;
    if (ev.power_state) n.power_state = ev.power_state;
    n.last_error = ev.last_error;
    if (!DEPLOYING.has(n.provision_state)) n.progress = null;
    n.v += 1;
    fleet.countDirty = true; // counted once per frame, however many events arrive
    schedule();
  }

  function onProgress(ev) {
    const i = fleet.index.get(ev.uuid);
    if (i === undefined) return;
    const n = fleet.rows[i];
    n.progress = ev;
    n.v += 1;
    schedule();
  }

  function fleetView() {
    fleet.params = filtersFromForm();
    $('filters').addEventListener('submit', (e) => {
      e.preventDefault();
      fleet.params = filtersFromForm();
      const qs = fleet.params.toString();
      history.replaceState(null, '', '/ui' + (qs ? '?' + qs : ''));
      resetList();
    });
    $('pending').addEventListener('click', resetList);
    $('viewport').addEventListener('scroll', schedule, { passive: true });
    window.addEventListener('resize', schedule);
    call('GET', '/ui/api/session')
      .then((s) => { $('who').textContent = s.who; })
      .catch(() => { /* needSignIn has said it */ });
    resetList();
    connectEvents({
      ready: (again) => { if (again) refreshLoaded(); },
      state: onState,
      progress: onProgress,
    });
  }

  // ---- one node --------------------------------------------------------------------------

  const ACTION_LABELS = {
    manage: 'Manage',
    provide: 'Provide',
    deploy: 'Deploy',
    undeploy: 'Undeploy',
    power_on: 'Power on',
    power_off: 'Power off',
    maintenance_on: 'Maintenance on',
    maintenance_off: 'Maintenance off',
  };
  // Asked twice: the second click within a few seconds does it.
  const CONFIRM = new Set(['undeploy', 'power_off']);

  const view = { node: null, session: null, refreshTimer: 0, busy: false, inventoryLoaded: false };

  function fact(dl, name, value, field) {
    dl.appendChild(el('dt', null, name));
    const dd = el('dd', null, value === null || value === undefined || value === '' ? '—' : value);
    if (field) dd.dataset.field = field;
    dl.appendChild(dd);
  }

  function renderFacts(n) {
    const dl = $('facts');
    clear(dl);
    fact(dl, 'UUID', n.uuid);
    fact(dl, 'Name', n.name);
    fact(dl, 'Provision state', n.provision_state + (n.target_provision_state ? ' → ' + n.target_provision_state : ''), 'provision_state');
    fact(dl, 'Power', (n.power_state || '—') + (n.target_power_state ? ' → ' + n.target_power_state : ''), 'power_state');
    fact(dl, 'Maintenance', n.maintenance ? 'yes' + (n.maintenance_reason ? ': ' + n.maintenance_reason : '') : 'no', 'maintenance');
    if (n.protected) fact(dl, 'Protected', 'yes' + (n.protected_reason ? ': ' + n.protected_reason : ''), 'protected');
    fact(dl, 'Owner', n.owner);
    fact(dl, 'Lessee', n.lessee);
    fact(dl, 'Conductor group', n.conductor_group);
    fact(dl, 'Conductor', n.conductor);
    fact(dl, 'Driver', n.driver);
    fact(dl, 'Resource class', n.resource_class);
    fact(dl, 'Instance', n.instance_uuid);
    fact(dl, 'Image', n.instance_info && n.instance_info.image_source);
    fact(dl, 'Locked by', n.reservation);
    fact(dl, 'Provision updated', fmtTime(n.provision_updated_at));
    fact(dl, 'Updated', fmtTime(n.updated_at));
  }

  function renderProgress(p, state) {
    const box = $('node-progress');
    clear(box);
    if (!p || !DEPLOYING.has(state)) {
      box.appendChild(el('span', 'muted', DEPLOYING.has(state) ? 'Waiting for the agent…' : 'No image is being written.'));
      return;
    }
    const bar = el('progress', 'bar');
    bar.id = 'node-bar';
    setBar(bar, p);
    box.appendChild(bar);
    box.appendChild(el('div', 'prog-text', progressText(p)));
    if (p.step) {
      const idx = p.step_count ? ' (' + ((p.step_index || 0) + 1) + ' of ' + p.step_count + ')' : '';
      box.appendChild(el('div', 'muted', 'Step ' + p.step + idx));
    }
  }

  function stepName(s) {
    if (!s || typeof s !== 'object') return String(s);
    const name = (s.interface ? s.interface + '.' : '') + (s.step || '?');
    return s.priority !== undefined ? name + ' (priority ' + s.priority + ')' : name;
  }

  function renderSteps(n) {
    const box = $('steps');
    clear(box);
    const dii = n.driver_internal_info || {};
    let any = false;
    for (const [label, current, list, index] of [
      ['Deploy', n.deploy_step, dii.deploy_steps, dii.deploy_step_index],
      ['Clean', n.clean_step, dii.clean_steps, dii.clean_step_index],
      ['Service', n.service_step, dii.service_steps, dii.service_step_index],
    ]) {
      const hasCurrent = current && typeof current === 'object' && Object.keys(current).length > 0;
      const hasList = Array.isArray(list) && list.length > 0;
      if (!hasCurrent && !hasList) continue;
      any = true;
      box.appendChild(el('h3', null, label + ' steps'));
      if (hasCurrent) box.appendChild(el('p', null, 'Current: ' + stepName(current)));
      if (hasList) {
        const ol = el('ol', 'steps');
        list.forEach((s, i) => {
          const cls = typeof index === 'number' ? (i < index ? 'done' : i === index ? 'current' : '') : '';
          ol.appendChild(el('li', cls, stepName(s)));
        });
        box.appendChild(ol);
      }
    }
    if (!any) {
      const note = dii.content ? String(dii.content) : 'No steps recorded.';
      box.appendChild(el('span', 'muted', note));
    }
  }

  function renderLastError(n) {
    const pre = $('last-error');
    clear(pre);
    if (n.last_error) pre.textContent = n.last_error;
    else pre.appendChild(el('span', 'muted', 'None.'));
  }

  async function loadHistory(uuid) {
    const tbody = $('history').tBodies[0];
    let items;
    try {
      items = (await call('GET', '/v1/nodes/' + encodeURIComponent(uuid) + '/history?detail=true')).history || [];
    } catch (e) {
      clear(tbody);
      const tr = el('tr');
      const td = el('td', 'muted', e.status === 403 ? 'Your role may not read this node\'s history.' : 'History unavailable: ' + e.message);
      td.colSpan = 5;
      tr.appendChild(td);
      tbody.appendChild(tr);
      return;
    }
    clear(tbody);
    items.sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
    for (const h of items) {
      const tr = el('tr');
      tr.appendChild(el('td', null, fmtTime(h.created_at)));
      tr.appendChild(el('td', 'sev-' + (h.severity || ''), h.severity));
      tr.appendChild(el('td', null, h.event));
      tr.appendChild(el('td', null, (h.state || '') + (h.target_provision_state ? ' → ' + h.target_provision_state : '')));
      tr.appendChild(el('td', null, h.duration_seconds !== null && h.duration_seconds !== undefined ? fmtDuration(h.duration_seconds) : ''));
      tbody.appendChild(tr);
    }
    if (!items.length) {
      const tr = el('tr');
      const td = el('td', 'muted', 'No history yet.');
      td.colSpan = 5;
      tr.appendChild(td);
      tbody.appendChild(tr);
    }
  }

  function invTable(rows) {
    const t = el('table', 'inv');
    for (const [k, v] of rows) {
      const tr = el('tr');
      tr.append(el('th', null, k), el('td', null, v));
      t.appendChild(tr);
    }
    return t;
  }

  async function loadInventory(uuid) {
    const box = $('inventory');
    let data;
    try {
      data = await call('GET', '/v1/nodes/' + encodeURIComponent(uuid) + '/inventory');
    } catch (e) {
      clear(box);
      box.appendChild(el('span', 'muted', e.status === 404 ? 'No inspection data.' : e.status === 403 ? 'Your role may not read the inventory.' : 'Inventory unavailable: ' + e.message));
      return;
    }
    view.inventoryLoaded = true;
    clear(box);
    const inv = (data && data.inventory) || {};
    const cpu = inv.cpu || {};
    const mem = inv.memory || {};
    const sys = inv.system_vendor || {};
    box.appendChild(invTable([
      ['Vendor', [sys.manufacturer, sys.product_name].filter(Boolean).join(' ') || '—'],
      ['Serial', sys.serial_number || '—'],
      ['CPU', cpu.model_name ? cpu.model_name + ' × ' + (cpu.count || '?') : String(cpu.count || '—')],
      ['Architecture', cpu.architecture || '—'],
      ['Memory', mem.physical_mb ? fmtBytes(mem.physical_mb * 1024 * 1024) : mem.total ? fmtBytes(mem.total) : '—'],
      ['Boot mode', (inv.boot && inv.boot.current_boot_mode) || '—'],
    ]));
    if (Array.isArray(inv.disks) && inv.disks.length) {
      box.appendChild(el('h3', null, 'Disks'));
      box.appendChild(invTable(inv.disks.map((d) => [d.name || '?', fmtBytes(d.size) + (d.model ? ' · ' + d.model : '') + (d.rotational ? ' · rotational' : '')])));
    }
    if (Array.isArray(inv.interfaces) && inv.interfaces.length) {
      box.appendChild(el('h3', null, 'Interfaces'));
      box.appendChild(invTable(inv.interfaces.map((i) => [i.name || '?', [i.mac_address, i.ipv4_address].filter(Boolean).join(' · ')])));
    }
    const details = el('details');
    details.appendChild(el('summary', null, 'Raw inventory'));
    details.appendChild(el('pre', null, JSON.stringify(data, null, 2)));
    box.appendChild(details);
  }

  function actionStatus(msg) {
    const s = $('action-status');
    s.hidden = !msg;
    s.textContent = msg || '';
  }

  function actionError(msg) {
    const e = $('action-error');
    e.hidden = !msg;
    e.textContent = msg || '';
  }

  // The image fields of a deploy: image_source plus either Glance's os_hash pair
  // ("sha256:<hex>") or the legacy image_checksum (a bare digest, or a checksum file's URL).
  function deployPatch(n, url, checksum) {
    const info = n.instance_info || {};
    const ops = [{ op: 'add', path: '/instance_info/image_source', value: url }];
    const m = /^(md5|sha256|sha512):([0-9a-fA-F]+)$/.exec(checksum);
    if (m) {
      ops.push({ op: 'add', path: '/instance_info/image_os_hash_algo', value: m[1] });
      ops.push({ op: 'add', path: '/instance_info/image_os_hash_value', value: m[2].toLowerCase() });
      if ('image_checksum' in info) ops.push({ op: 'remove', path: '/instance_info/image_checksum' });
    } else {
      ops.push({ op: 'add', path: '/instance_info/image_checksum', value: checksum });
      for (const k of ['image_os_hash_algo', 'image_os_hash_value']) {
        if (k in info) ops.push({ op: 'remove', path: '/instance_info/' + k });
      }
    }
    return ops;
  }

  async function runAction(name, form) {
    const n = view.node;
    if (!n || view.busy) return;
    const id = encodeURIComponent(n.uuid);
    const label = ACTION_LABELS[name] || name;
    view.busy = true;
    actionError('');
    actionStatus(label + '…');
    for (const b of document.querySelectorAll('#actions button')) b.disabled = true;
    try {
      switch (name) {
        case 'manage':
        case 'provide':
          await call('PUT', '/v1/nodes/' + id + '/states/provision', { target: name });
          break;
        case 'undeploy':
          await call('PUT', '/v1/nodes/' + id + '/states/provision', { target: 'deleted' });
          break;
        case 'deploy': {
          const url = form.elements.image_url.value.trim();
          const checksum = form.elements.checksum.value.trim();
          if (!url || !checksum) throw new Error('an image URL and its checksum are required');
          await call('PATCH', '/v1/nodes/' + id, deployPatch(n, url, checksum));
          await call('PUT', '/v1/nodes/' + id + '/states/provision', { target: 'active' });
          break;
        }
        case 'power_on':
          await call('PUT', '/v1/nodes/' + id + '/states/power', { target: 'power on' });
          break;
        case 'power_off':
          await call('PUT', '/v1/nodes/' + id + '/states/power', { target: 'power off' });
          break;
        case 'maintenance_on':
          await call('PUT', '/v1/nodes/' + id + '/maintenance', { reason: 'set from the web view' });
          break;
        case 'maintenance_off':
          await call('DELETE', '/v1/nodes/' + id + '/maintenance');
          break;
        default:
          throw new Error('unknown action ' + name);
      }
      actionStatus(label + ': accepted.');
    } catch (e) {
      actionStatus('');
      actionError(label + ' failed: ' + e.message);
    } finally {
      view.busy = false;
      await refreshNode();
    }
  }

  function renderActions() {
    const box = $('actions');
    clear(box);
    const acts = (view.session && view.session.node && view.session.node.actions) || {};
    const allowed = Object.keys(ACTION_LABELS).filter((a) => acts[a] && acts[a].allowed);
    if (!allowed.length) {
      box.appendChild(el('span', 'muted', 'Your role may not act on this node.'));
      return;
    }
    if (view.node && view.node.maintenance) {
      box.appendChild(el('p', 'hint', 'In maintenance: the API refuses provisioning actions until maintenance is off.'));
    }
    for (const name of allowed) {
      if (name === 'deploy') continue;
      const b = el('button', CONFIRM.has(name) ? 'danger' : '', ACTION_LABELS[name]);
      b.type = 'button';
      b.dataset.action = name;
      b.disabled = !acts[name].valid || view.busy;
      let armed = 0;
      b.addEventListener('click', () => {
        if (CONFIRM.has(name) && !armed) {
          b.textContent = 'Confirm: ' + ACTION_LABELS[name].toLowerCase();
          b.classList.add('confirm');
          armed = setTimeout(() => {
            armed = 0;
            b.textContent = ACTION_LABELS[name];
            b.classList.remove('confirm');
          }, 4000);
          return;
        }
        clearTimeout(armed);
        runAction(name);
      });
      box.appendChild(b);
    }
    if (allowed.includes('deploy')) {
      const f = el('form', 'deploy-form');
      f.id = 'deploy-form';
      f.dataset.action = 'deploy';
      const url = el('input');
      url.name = 'image_url';
      url.type = 'url';
      url.required = true;
      url.placeholder = 'Image URL (http://…/disk.img)';
      url.setAttribute('aria-label', 'Image URL');
      url.spellcheck = false;
      const sum = el('input');
      sum.name = 'checksum';
      sum.required = true;
      sum.placeholder = 'Checksum (sha256:<hex>, a digest, or a checksum file URL)';
      sum.setAttribute('aria-label', 'Checksum');
      sum.spellcheck = false;
      const go = el('button', 'primary', 'Deploy');
      go.type = 'submit';
      go.dataset.action = 'deploy';
      go.disabled = !acts.deploy.valid || view.busy;
      const prev = view.node && view.node.instance_info;
      if (prev && typeof prev.image_source === 'string') url.value = prev.image_source;
      f.append(url, sum, go);
      f.addEventListener('submit', (e) => {
        e.preventDefault();
        runAction('deploy', f);
      });
      box.appendChild(f);
    }
  }

  function renderNode(n) {
    view.node = n;
    document.title = (n.name || n.uuid) + ' · Ferric';
    $('node-title').textContent = n.name || n.uuid;
    const st = $('node-state');
    st.textContent = n.provision_state + (n.target_provision_state ? ' → ' + n.target_provision_state : '');
    st.className = 'state ' + stateClass(n.provision_state);
    st.dataset.state = n.provision_state;
    renderFacts(n);
    renderLastError(n);
    renderSteps(n);
    const dii = n.driver_internal_info || {};
    renderProgress(dii.deploy_progress, n.provision_state);
  }

  async function refreshNode() {
    const ident = (view.node && view.node.uuid) || body.dataset.node;
    const q = encodeURIComponent(ident);
    let n;
    let s;
    try {
      [n, s] = await Promise.all([
        call('GET', '/v1/nodes/' + q),
        call('GET', '/ui/api/session?node=' + q),
      ]);
    } catch (e) {
      const err = $('node-error');
      err.hidden = false;
      err.textContent = 'Loading the node failed: ' + e.message;
      return false;
    }
    $('node-error').hidden = true;
    view.session = s;
    $('who').textContent = s.who;
    // A refresh keeps what the user typed into the deploy form, and the focus.
    const form = $('deploy-form');
    const typed = form ? { url: form.elements.image_url.value, sum: form.elements.checksum.value } : null;
    const focused = form && form.contains(document.activeElement) ? document.activeElement.name : null;
    renderNode(n);
    renderActions();
    const again = $('deploy-form');
    if (again && typed) {
      again.elements.image_url.value = typed.url;
      again.elements.checksum.value = typed.sum;
      if (focused && again.elements[focused]) again.elements[focused].focus();
    }
    loadHistory(n.uuid);
    if (!view.inventoryLoaded) loadInventory(n.uuid);
    return true;
  }

  function refreshSoon(reloadInventory) {
    if (reloadInventory) view.inventoryLoaded = false;
    clearTimeout(view.refreshTimer);
    view.refreshTimer = setTimeout(refreshNode, 250);
  }

  async function nodeView() {
    const ok = await refreshNode();
    if (!ok && !view.node) return;
    connectEvents({
      ready: (again) => { if (again) refreshSoon(true); },
      state: (ev) => {
        if (!view.node || ev.uuid !== view.node.uuid) return;
        const st = $('node-state');
        st.textContent = ev.provision_state + (ev.target_provision_state ? ' → ' + ev.target_provision_state : '');
        st.className = 'state ' + stateClass(ev.provision_state);
        st.dataset.state = ev.provision_state;
        if (!DEPLOYING.has(ev.provision_state)) renderProgress(null, ev.provision_state);
        const inspected = /^inspect/.test(ev.previous_provision_state || '');
        refreshSoon(inspected);
      },
      progress: (ev) => {
        if (!view.node || ev.uuid !== view.node.uuid) return;
        renderProgress(ev, 'deploying');
      },
    });
  }

  if (body.dataset.page === 'node') nodeView();
  else fleetView();
})();
