// tillit dashboard: renders /dashboard/api/state, then follows /dashboard/api/events
// (server-sent `state` events) and re-renders in place. Read-only; no framework, no build step.
// Every value from the wire goes into the DOM through textContent (never innerHTML): audit
// targets, names and errors are data, not markup.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);
  let current = null; // the last state rendered
  let source = null; // the EventSource
  let idPrefix = null; // `spiffe://<trust domain>/`, left out of displayed ids (the header names it)

  // === DOM helpers ===

  function el(tag, opts, ...children) {
    const e = document.createElement(tag);
    if (opts) {
      if (opts.cls) e.className = opts.cls;
      if (opts.text !== undefined && opts.text !== null) e.textContent = String(opts.text);
      if (opts.title) e.title = opts.title;
      if (opts.data) for (const [k, v] of Object.entries(opts.data)) e.dataset[k] = String(v);
    }
    for (const c of children) if (c) e.appendChild(c);
    return e;
  }

  function td(text, cls, title) {
    return el('td', { text: text === undefined || text === null || text === '' ? '–' : text, cls, title });
  }

  function setText(id, text) {
    const e = $(id);
    if (e) e.textContent = text === undefined || text === null ? '–' : String(text);
  }

  // Replace a table's rows, unless they are the same as shown (no churn under the user's
  // pointer or selection when an event changes something else).
  const shown = new Map();
  function fill(tbodyId, rows, emptyId) {
    const body = $(tbodyId);
    const markup = rows.map((r) => r.outerHTML).join('');
    if (shown.get(tbodyId) !== markup) {
      body.replaceChildren(...rows);
      shown.set(tbodyId, markup);
    }
    if (emptyId) {
      // An empty table shows its sentence instead of bare headers.
      $(emptyId).classList.toggle('hidden', rows.length > 0);
      (body.closest('.scroll') || body.closest('table')).classList.toggle('hidden', rows.length === 0);
    }
  }

  // === time ===

  function parseTime(s) {
    const t = Date.parse(s);
    return Number.isNaN(t) ? null : t;
  }

  function span(secs) {
    const s = Math.abs(Math.round(secs));
    if (s >= 365 * 86400) return Math.floor(s / (365 * 86400)) + 'y ' + (Math.floor(s / 86400) % 365) + 'd';
    if (s < 60) return s + 's';
    if (s < 3600) return Math.floor(s / 60) + 'm';
    if (s < 86400) return Math.floor(s / 3600) + 'h ' + (Math.floor(s / 60) % 60) + 'm';
    return Math.floor(s / 86400) + 'd ' + (Math.floor(s / 3600) % 24) + 'h';
  }

  // "in 3h 10m" / "5m ago", relative to the state's own clock (generated_at).
  function relative(iso, now) {
    const t = parseTime(iso);
    if (t === null || now === null) return iso || '–';
    const d = (t - now) / 1000;
    return d >= 0 ? 'in ' + span(d) : span(d) + ' ago';
  }

  function shortTime(iso) {
    const t = parseTime(iso);
    if (t === null) return iso || '–';
    const d = new Date(t);
    const pad = (n) => String(n).padStart(2, '0');
    return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' + pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
  }

  function timeCell(iso, now, cls) {
    if (!iso) return td(null, cls);
    return td(relative(iso, now), 'time ' + (cls || ''), shortTime(iso) + ' (' + iso + ')');
  }

  function shortFingerprint(fp) {
    if (!fp) return '–';
    const [alg, hex] = fp.includes(':') ? fp.split(':', 2) : ['', fp];
    return (alg ? alg + ':' : '') + hex.slice(0, 16) + '…';
  }

  // An id without this estate's `spiffe://<trust domain>/` (the full id is the cell's title).
  function shortId(id) {
    return idPrefix && typeof id === 'string' && id.startsWith(idPrefix) ? id.slice(idPrefix.length) : id;
  }

  function idCell(id, cls, title) {
    return td(shortId(id), 'mono wrap ' + (cls || ''), title || id);
  }

  function shortKid(kid) {
    return kid && kid.length > 16 ? kid.slice(0, 12) + '…' : kid;
  }

  function stateBadge(state) {
    return el('span', { cls: 'badge state-' + state, text: state });
  }

  // === header and overview ===

  function renderHeader(s) {
    setText('trust-domain', s.trust_domain);
    setText('admin-name', s.admin.name || s.admin.id);
    $('admin-name').title = s.admin.id;
    setText('admin-role', s.admin.role);
    $('admin-role').dataset.role = s.admin.role;
    const tenants = s.admin.tenants || [];
    setText('admin-tenants', tenants.length ? 'tenants: ' + tenants.join(', ') : 'all tenants');
    $('admin-tenants').dataset.tenants = tenants.join(',');
    setText('generated-at', shortTime(s.generated_at));
  }

  function renderOverview(s, now) {
    const o = s.overview;
    const c = o.identities;
    setText('count-total', c.total);
    setText('count-active', c.active);
    setText('count-expired', c.expired);
    setText('count-revoked', c.revoked);
    const kinds = Object.entries(c.by_kind || {});
    setText('by-kind-line', kinds.map(([k, n]) => n + ' ' + k).join(' · ') || 'none yet');
    const max = Math.max(1, ...kinds.map(([, n]) => n));
    fill('by-kind', kinds.map(([k, n]) => {
      const bar = el('meter', { cls: 'bar' });
      bar.min = 0;
      bar.max = max;
      bar.value = n;
      return el('li', { data: { kind: k } }, el('span', { cls: 'kind', text: k }), bar, el('span', { cls: 'n', text: n }));
    }));
    fill('next-expiries', (o.next_expiries || []).map((x) =>
      el('tr', { data: { id: x.id } },
        idCell(x.id),
        td(shortTime(x.expires_at), null, x.expires_at),
        td(x.in_secs >= 0 ? 'in ' + span(x.in_secs) : 'expired', 'num' + (x.in_secs < 3600 ? ' soon' : '')))), 'next-expiries-empty');

    const ca = o.ca;
    setText('ca-fingerprint', shortFingerprint(ca.fingerprint));
    $('ca-fingerprint').title = ca.fingerprint || '';
    setText('ca-expires', ca.expires_at ? shortTime(ca.expires_at) + ' (' + relative(ca.expires_at, now) + ')' : '–');
    const ro = $('ca-rollout');
    if (ca.rollout) {
      const pending = ca.rollout.sites_pending || [];
      ro.dataset.phase = pending.length ? 'distributing' : 'switching';
      ro.textContent = pending.length
        ? 'distributing ' + shortFingerprint(ca.rollout.next) + ' (event ' + ca.rollout.event_seq + '): waiting for ' + pending.join(', ')
        : 'every site has ' + shortFingerprint(ca.rollout.next) + '; issuance switches';
    } else {
      const overlap = (ca.cas || []).some((x) => x.state !== 'current' && x.state !== 'retired');
      ro.dataset.phase = overlap ? 'overlap' : 'none';
      ro.textContent = overlap ? 'overlap: a previous CA still verifies' : 'none under way';
    }
    fill('cas', (ca.cas || []).map((x) =>
      el('tr', { data: { ca: x.fingerprint, state: x.state } },
        td(shortFingerprint(x.fingerprint), 'mono', x.fingerprint),
        el('td', null, stateBadge(x.state)),
        timeCell(x.expires_at, now),
        timeCell(x.retire_at, now))));
    fill('signing-keys', (o.signing_keys || []).map((k) =>
      el('tr', { data: { kid: k.kid, state: k.state } },
        td(shortKid(k.kid), 'mono', k.kid),
        el('td', null, stateBadge(k.state)),
        timeCell(k.created_at, now),
        timeCell(k.retire_at, now))));
  }

  // === identities (filtered) ===

  const FILTERS = ['tenant', 'project', 'env', 'state'];

  // Refill a filter's options from the data, keeping what the user chose (even if it vanished).
  function syncOptions(select, values) {
    const chosen = select.value;
    const want = [...new Set(values.filter((v) => v !== null && v !== undefined && v !== ''))].sort();
    if (chosen && !want.includes(chosen)) want.push(chosen);
    const have = [...select.options].slice(1).map((o) => o.value);
    if (have.join('\u0000') !== want.join('\u0000')) {
      const option = (value, label) => {
        const o = el('option', { text: label });
        o.value = value;
        return o;
      };
      select.replaceChildren(option('', 'all'), ...want.map((v) => option(v, v)));
      select.value = chosen;
    }
  }

  function renderIdentities(s, now) {
    const all = s.identities || [];
    for (const f of FILTERS) syncOptions($('filter-' + f), all.map((r) => r[f]));
    const want = Object.fromEntries(FILTERS.map((f) => [f, $('filter-' + f).value]));
    const q = $('filter-text').value.trim().toLowerCase();
    const rows = all
      .filter((r) => FILTERS.every((f) => !want[f] || r[f] === want[f]))
      .filter((r) => !q || [r.id, r.name, r.user_public_key, r.service].some((v) => v && String(v).toLowerCase().includes(q)))
      .sort((a, b) => (a.state === b.state ? a.id.localeCompare(b.id) : a.state === 'active' ? -1 : b.state === 'active' ? 1 : a.state.localeCompare(b.state)));
    fill('identities-body', rows.map((r) =>
      el('tr', { data: { id: r.id, state: r.state, tenant: r.tenant || '' } },
        idCell(r.id, 'id', r.id + '\nkey ' + r.user_public_key),
        td(r.kind),
        td(r.tenant),
        td(r.project),
        td(r.env),
        el('td', null, stateBadge(r.state)),
        timeCell(r.expires_at, now, 'expires'),
        timeCell(r.last_renewal, now, 'renewed'))), 'identities-empty');
    setText('identities-shown', rows.length === all.length ? all.length + ' identities' : rows.length + ' of ' + all.length + ' shown');
  }

  // === sites, refusals, audit ===

  function renderSites(s, now) {
    const confined = (s.admin.tenants || []).length > 0;
    const sites = s.sites || [];
    fill('sites-body', sites.map((x) => {
      const lagCls = 'num lag' + (x.lag_events > 0 ? ' behind' : '');
      const cert = x.cert_from_current_ca
        ? el('span', { cls: 'badge state-active', text: 'current CA' })
        : el('span', { cls: 'badge state-expired', text: x.cert_expires_at ? 'previous CA' : 'unknown' });
      const failures = td(x.failures, 'num failures' + (x.failures > 0 ? ' bad' : ''), x.last_error || null);
      return el('tr', { data: { site: x.name, lag: x.lag_events } },
        td(x.name, 'name'),
        td(x.listen, 'mono listen'),
        td(x.agents, 'num agents'),
        td(x.last_applied_seq, 'num applied'),
        td(x.lag_events, lagCls),
        x.last_ack_at ? timeCell(x.last_ack_at, now, 'last-ack') : td('never', 'last-ack muted'),
        failures,
        el('td', { cls: 'cert', title: x.cert_expires_at ? 'expires ' + x.cert_expires_at : null }, cert));
    }), 'sites-empty');
    $('sites-empty').textContent = confined ? 'Sites are estate-wide: an admin confined to tenants does not see them.' : 'No site yet (tillit site add).';
    $('sites').dataset.confined = String(confined);
  }

  function recordRows(tbodyId, emptyId, records, now) {
    fill(tbodyId, (records || []).map((r) =>
      el('tr', { data: { seq: r.seq, outcome: r.outcome } },
        td(r.seq, 'num'),
        timeCell(r.time, now),
        idCell(r.actor, 'actor'),
        td(r.action, 'action'),
        idCell(r.target, 'target'),
        el('td', null, el('span', { cls: 'badge ' + (String(r.outcome).startsWith('denied') ? 'state-revoked' : 'state-active'), text: r.outcome })))), emptyId);
  }

  function render(s) {
    current = s;
    idPrefix = 'spiffe://' + s.trust_domain + '/';
    const now = parseTime(s.generated_at);
    renderHeader(s);
    renderOverview(s, now);
    renderIdentities(s, now);
    renderSites(s, now);
    recordRows('refusals-body', 'refusals-empty', s.refusals, now);
    recordRows('auth-failures-body', 'auth-failures-empty', s.auth_failures, now);
    recordRows('audit-body', 'audit-empty', s.audit, now);
    const app = $('app');
    app.dataset.ready = 'true';
    app.dataset.generatedAt = s.generated_at;
    app.dataset.renders = String(Number(app.dataset.renders || 0) + 1);
  }

  // === live ===

  function live(state, label) {
    const l = $('live');
    l.dataset.state = state;
    setText('live-label', label);
    if (state === 'live') {
      const t = new Date();
      const pad = (n) => String(n).padStart(2, '0');
      setText('live-time', 'updated ' + pad(t.getHours()) + ':' + pad(t.getMinutes()) + ':' + pad(t.getSeconds()));
      l.dataset.updated = t.toISOString();
    }
  }

  function banner(text) {
    const b = $('banner');
    b.textContent = text || '';
    b.classList.toggle('hidden', !text);
  }

  function ended(why) {
    if (source) source.close();
    source = null;
    live('ended', 'session ended');
    setText('live-time', '');
    banner(why + ' Run `tillit dashboard --identity ADMIN` for a new URL.');
  }

  // Fetch the state once: true when rendered, false when the session is gone.
  async function load() {
    let r;
    try {
      r = await fetch('/dashboard/api/state', { credentials: 'same-origin', cache: 'no-store' });
    } catch (e) {
      return null;
    }
    if (r.status === 401 || r.status === 403) {
      ended((await r.text()).trim() || 'This session ended.');
      return false;
    }
    if (!r.ok) return null;
    render(await r.json());
    return true;
  }

  function follow() {
    source = new EventSource('/dashboard/api/events');
    source.addEventListener('open', () => {
      banner('');
      live('live', 'live');
    });
    source.addEventListener('state', (ev) => {
      try {
        render(JSON.parse(ev.data));
        live('live', 'live');
      } catch (e) {
        live('stale', 'bad update');
      }
    });
    // The server closes the stream after a minute and EventSource reconnects by itself; a
    // session that ended answers 401, which EventSource does not explain: ask once to tell.
    source.addEventListener('error', async () => {
      live('reconnecting', 'reconnecting');
      const ok = await load();
      if (ok === false) return;
      if (source && source.readyState === EventSource.CLOSED) {
        source = null;
        setTimeout(follow, 3000);
      }
    });
  }

  function wire() {
    for (const f of FILTERS) $('filter-' + f).addEventListener('change', () => current && render(current));
    $('filter-text').addEventListener('input', () => current && render(current));
    $('filters').addEventListener('submit', (ev) => ev.preventDefault());
    $('filter-clear').addEventListener('click', () => {
      for (const f of FILTERS) $('filter-' + f).value = '';
      $('filter-text').value = '';
      if (current) render(current);
    });
  }

  async function start() {
    wire();
    const ok = await load();
    if (ok === false) return;
    follow();
  }

  start();
})();
