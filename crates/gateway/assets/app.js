// adflow dashboard. Every number comes from the gateway's own RPCs through
// POST /api/<gRPC method path> (JSON in and out), with the key of this tab.
// Everything shown is set with textContent: titles, families, agent text are never HTML.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const PAGE = 50;
  const WINDOWS = [
    ['WINDOW_LAST_HOUR', 'last hour', 3600e3],
    ['WINDOW_LAST_DAY', 'last 24 hours', 86400e3],
    ['WINDOW_LAST_WEEK', 'last 7 days', 7 * 86400e3],
  ];
  const S = {
    key: sessionStorage.getItem('adflow-key') || '',
    role: null,
    view: null,
    pollMs: 3000,
    timer: null,
    top: { page: 0 },
    camp: { page: 0 },
    ads: { tokens: [''], page: 0 },
    audit: { tokens: [''], page: 0 },
    adStats: null,
    adDetail: null,
    history: [],
    cmd: null,
  };

  // ---- talking to the gateway ----
  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function headers() {
    const h = { 'content-type': 'application/json' };
    if (S.key) h.authorization = 'Bearer ' + S.key;
    return h;
  }

  async function answer(r) {
    let body = null;
    try {
      body = await r.json();
    } catch (_) {
      body = { code: 'UNKNOWN', message: r.statusText };
    }
    if (!r.ok) throw new ApiError(r.status, body.code, body.message);
    return body;
  }

  async function rpc(method, body) {
    return answer(await fetch('/api/' + method, {
      method: 'POST', headers: headers(), body: JSON.stringify(body || {}),
    }));
  }

  async function get(path) {
    const h = headers();
    delete h['content-type'];
    return answer(await fetch(path, { headers: h }));
  }

  // ---- building the page (text only) ----
  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  // rows: array; cells(row) -> array of strings or [string, 'num'] pairs.
  function fill(table, rows, cells, onClick) {
    const tb = table.tBodies[0];
    const trs = rows.map((r) => {
      const tr = document.createElement('tr');
      for (const c of cells(r)) {
        const [text, cls] = Array.isArray(c) ? c : [c, ''];
        tr.append(el('td', text, cls));
      }
      if (onClick) tr.addEventListener('click', () => onClick(r, tr));
      return tr;
    });
    if (trs.length === 0) {
      const td = el('td', 'nothing here', 'muted');
      td.colSpan = table.tHead.rows[0] ? table.tHead.rows[0].cells.length : 1;
      const tr = document.createElement('tr');
      tr.append(td);
      trs.push(tr);
    }
    tb.replaceChildren(...trs);
  }

  function setValue(id, raw, text) {
    const e = $(id);
    e.textContent = text === undefined ? String(raw) : text;
    e.dataset.value = String(raw);
  }

  const n = (x) => (typeof x === 'number' ? x : Number(x) || 0);
  const int = (x) => Math.round(n(x)).toLocaleString('en-US');
  const pct = (x) => (n(x) * 100).toFixed(2) + '%';
  const usd = (x) => '$' + n(x).toFixed(2);
  const num = (x, d) => n(x).toFixed(d);
  const when = (ms) => (n(ms) > 0 ? new Date(n(ms)).toLocaleString() : '–');
  function dur(ms) {
    let s = Math.round(n(ms) / 1000);
    if (s < 60) return s + ' s';
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    s %= 60;
    return h ? `${h} h ${m} min` : `${m} min ${s} s`;
  }
  const enumName = (v, prefix) => String(v || '').replace(prefix, '').toLowerCase().replace(/_/g, ' ');

  function showError(e) {
    const p = $('error');
    if (!e) {
      p.hidden = true;
      return;
    }
    p.hidden = false;
    p.textContent = e instanceof ApiError ? `${e.code}: ${e.message}` : String(e.message || e);
  }

  // ---- views ----
  async function refreshIngest() {
    const v = await get('/api/ingest');
    const last = v.points[v.points.length - 1] || {};
    setValue('in-accepted', n(last.accepted_per_s), num(last.accepted_per_s, 1));
    setValue('in-duplicates', n(last.duplicates_per_s), num(last.duplicates_per_s, 1));
    setValue('in-rejected', n(last.rejected_per_s), num(last.rejected_per_s, 1));
    setValue('in-commit-avg', last.commit_avg_ms ?? '', last.commit_avg_ms == null ? '–' : num(last.commit_avg_ms, 2) + ' ms');
    setValue('in-commit-p99', last.commit_p99_ms ?? '', last.commit_p99_ms == null ? '–' : '≤ ' + num(last.commit_p99_ms, 2) + ' ms');
    setValue('in-total-accepted', v.totals.accepted, int(v.totals.accepted));
    setValue('in-total-duplicates', v.totals.duplicates, int(v.totals.duplicates));
    setValue('in-queued', v.queued_events, int(v.queued_events));
    const pts = (f) => v.points.map((p) => [p.at_ms, f(p)]);
    Charts.line($('in-rate-chart'), [
      { name: 'accepted', points: pts((p) => p.accepted_per_s) },
      { name: 'duplicates', points: pts((p) => p.duplicates_per_s) },
      { name: 'rejected', points: pts((p) => p.rejected_per_s) },
    ]);
    Charts.line($('in-latency-chart'), [
      { name: 'mean', points: pts((p) => (p.commit_avg_ms == null ? NaN : p.commit_avg_ms)) },
      { name: 'p99 (bucket bound)', points: pts((p) => (p.commit_p99_ms == null ? NaN : p.commit_p99_ms)) },
    ]);
    $('in-rate-chart').dataset.max = String(Math.max(0, ...v.points.map((p) => p.accepted_per_s)));
    const recent = {};
    for (const p of v.points) {
      for (const [k, c] of Object.entries(p.rejected_by_reason)) recent[k] = (recent[k] || 0) + c;
    }
    const reasons = Object.keys(v.rejected_by_reason).sort();
    fill($('in-rejects'), reasons, (r) => [r.replace(/_/g, ' '), [int(recent[r] || 0), 'num'],
      [int(v.rejected_by_reason[r]), 'num']]);
  }

  const period = (w) => ({ window: w });
  const statsCells = (s) => {
    const c = s.counts || {};
    return [[int(c.impressions), 'num'], [int(c.clicks), 'num'], [int(c.conversions), 'num'],
      [pct(s.ctr), 'num'], [pct(s.conversion_rate), 'num'], [usd(s.revenue_usd), 'num']];
  };

  function pager(prefix, page, hasNext) {
    $(prefix + '-page').textContent = `page ${page + 1}`;
    $(prefix + '-prev').disabled = page === 0;
    $(prefix + '-next').disabled = !hasNext;
  }

  async function refreshAds() {
    const top = S.top;
    const want = (top.page + 1) * PAGE;
    const limit = Math.min(1000, want + 1);
    const r = await rpc('adflow.v1.Analytics/TopAds', {
      metric: $('top-metric').value, limit, period: period($('top-window').value),
      min_denominator: Math.max(0, Math.floor(n($('top-min').value))),
    });
    const rows = r.ads.slice(top.page * PAGE, want);
    fill($('top-table'), rows, (s) => [[int(top.page * PAGE + rows.indexOf(s) + 1), 'num'], s.id,
      ...statsCells(s).slice(0, 5), statsCells(s)[5], [int(s.last_hour_events), 'num'], [int(s.last_day_events), 'num']],
    (s) => openAdStats(s.id));
    pager('top', top.page, r.ads.length > want);
    const camp = S.camp;
    const cwant = (camp.page + 1) * PAGE;
    const c = await rpc('adflow.v1.Analytics/EventsByCampaign', {
      period: period($('camp-window').value), campaign_id: $('camp-filter').value.trim(),
      limit: Math.min(10000, cwant + 1),
    });
    fill($('camp-table'), c.campaigns.slice(camp.page * PAGE, cwant),
      (s) => [s.id, [int((s.counts || {}).total), 'num'], ...statsCells(s)]);
    pager('camp', camp.page, c.campaigns.length > cwant);
  }

  async function openAdStats(id) {
    S.adStats = id;
    $('ad-stats').hidden = false;
    $('ad-stats-id').textContent = id;
    await loadAdStats();
  }

  // One GetAdStats per window, and twelve slices of the chosen one for the series chart.
  async function loadAdStats() {
    const id = S.adStats;
    const per = await Promise.all(WINDOWS.map(([w]) =>
      rpc('adflow.v1.Analytics/GetAdStats', { ad_id: id, period: period(w) })));
    fill($('ad-stats-windows'), per.map((p, i) => [WINDOWS[i][1], p.stats]),
      ([label, s]) => [label, ...statsCells(s)]);
    const bars = (f) => per.map((p, i) => ({ label: WINDOWS[i][1], value: f(p.stats) }));
    Charts.bars($('ad-chart-ctr'), bars((s) => n(s.ctr) * 100), { yFormat: (v) => v.toFixed(2) + '%' });
    Charts.bars($('ad-chart-cvr'), bars((s) => n(s.conversion_rate) * 100), { yFormat: (v) => v.toFixed(2) + '%', color: 1 });
    Charts.bars($('ad-chart-revenue'), bars((s) => n(s.revenue_usd)), { yFormat: (v) => '$' + v.toFixed(2), color: 3 });
    const span = WINDOWS.find((w) => w[0] === $('ad-series-window').value)[2];
    const end = per[0].range ? n(per[0].range.to_ms) : Date.now();
    const step = span / 12;
    const slices = await Promise.all(Array.from({ length: 12 }, (_, i) => {
      const from = Math.round(end - span + i * step);
      return rpc('adflow.v1.Analytics/GetAdStats', {
        ad_id: id, period: { range: { from_ms: from, to_ms: Math.round(from + step) } },
      }).then((r) => [from + step, r.stats.counts || {}]);
    }));
    const fmt = span > 86400e3 ? (x) => new Date(x).toLocaleDateString() : undefined;
    Charts.line($('ad-chart-series'), ['impressions', 'clicks', 'conversions'].map((k) => ({
      name: k, points: slices.map(([t, c]) => [t, n(c[k])]),
    })), { xFormat: fmt });
  }

  async function refreshQueue() {
    const a = S.ads;
    const [stats, workers, ads, dead] = await Promise.all([
      rpc('adflow.v1.QueueControl/GetStats', {}),
      rpc('adflow.v1.QueueControl/ListWorkers', {}),
      rpc('adflow.v1.AdService/ListAds', {
        status: $('ads-status').value, game_family: $('ads-family').value.trim(),
        priority: n($('ads-priority').value), page_size: PAGE, page_token: a.tokens[a.page],
      }),
      rpc('adflow.v1.QueueControl/ListDeadLetters', { limit: 20 }),
    ]);
    for (const f of ['total_queued', 'in_flight', 'dead_letters', 'completed_last_minute', 'completed_total', 'workers']) {
      setValue('q-' + f, n(stats[f]), int(stats[f]));
    }
    setValue('q-oldest_wait_ms', n(stats.oldest_wait_ms), dur(stats.oldest_wait_ms));
    setValue('q-average_wait_ms', n(stats.average_wait_ms), dur(stats.average_wait_ms));
    setValue('q-processing_rate_per_s', n(stats.processing_rate_per_s), num(stats.processing_rate_per_s, 2));
    const parts = [...stats.partitions].sort((x, y) => n(y.priority) - n(x.priority));
    Charts.bars($('q-depth-chart'), parts.map((p) => ({ label: 'P' + p.priority + (p.paused ? ' (paused)' : ''), value: n(p.queued) })),
      { yFormat: (v) => int(v) });
    fill($('q-partitions'), parts, (p) => ['P' + p.priority, [int(p.queued), 'num'], p.paused ? 'PAUSED' : 'serving',
      [dur(p.oldest_wait_ms), 'num']]);
    for (const tr of $('q-partitions').tBodies[0].rows) {
      if (tr.cells[2] && tr.cells[2].textContent === 'PAUSED') tr.cells[2].className = 'paused';
    }
    S.history.push([Date.now(), n(stats.total_queued), n(stats.in_flight)]);
    if (S.history.length > 300) S.history.shift();
    Charts.line($('q-history-chart'), [
      { name: 'queued', points: S.history.map((h) => [h[0], h[1]]) },
      { name: 'in flight', points: S.history.map((h) => [h[0], h[2]]) },
    ], { yFormat: (v) => int(v) });
    fill($('q-workers-table'), workers.workers, (w) => [w.worker_id, w.partitions.length ? w.partitions.join(', ') : 'all',
      [int(w.credits), 'num'], [int(w.in_flight), 'num'], [int(w.processed), 'num'], when(w.last_seen_ms), w.peer]);
    fill($('q-ads'), ads.ads, (ad) => [ad.id, (ad.spec || {}).title, (ad.spec || {}).game_family, [ad.priority, 'num'],
      enumName(ad.status, 'AD_STATUS_'), [dur(ad.wait_ms), 'num'], [n(ad.queue_position) ? int(ad.queue_position) : '–', 'num']],
    (ad) => showAd(ad.id));
    a.next = ads.next_page_token;
    pager('ads', a.page, !!a.next);
    $('dead-total').textContent = `(${int(dead.total)})`;
    fill($('q-dead'), dead.dead_letters, (d) => [d.id, d.title, [d.priority, 'num'], [d.attempts, 'num'], d.last_error,
      when(d.dead_at_ms)], (d) => showAd(d.id));
    if (S.adDetail) await loadAd().catch(forgetAd);
  }

  // An ad that cannot be read (a mistyped id) is not asked for again on every poll.
  function forgetAd(e) {
    S.adDetail = null;
    $('ad-detail').hidden = true;
    throw e;
  }

  async function showAd(id) {
    S.adDetail = id;
    $('ad-id').value = id;
    await loadAd().catch(forgetAd);
  }

  async function loadAd() {
    const ad = await rpc('adflow.v1.AdService/GetAd', { id: S.adDetail });
    const s = ad.spec || {};
    $('ad-detail').hidden = false;
    $('ad-title').textContent = s.title || '(untitled)';
    const fields = [
      ['id', ad.id], ['status', enumName(ad.status, 'AD_STATUS_')], ['priority', ad.priority],
      ['game family', s.game_family], ['genre', s.genre], ['description', s.description],
      ['audience', (s.target_audience || []).join(', ')], ['visual elements', (s.visual_elements || []).join(', ')],
      ['call to action', s.call_to_action], ['duration', (s.duration_seconds || 0) + ' s'],
      ['created', when(ad.created_at_ms)], ['queued', when(ad.enqueued_at_ms)], ['started', when(ad.started_at_ms)],
      ['finished', when(ad.finished_at_ms)], ['waited', dur(ad.wait_ms)], ['position', ad.queue_position || '–'],
      ['expected completion', when(ad.estimated_completion_ms)], ['attempts', ad.attempts], ['last error', ad.last_error || '–'],
    ];
    $('ad-fields').replaceChildren(...fields.flatMap(([k, v]) => [el('dt', k), el('dd', v)]));
    const an = ad.analysis;
    if (!an || !an.analyzed_at_ms) {
      $('ad-analysis-summary').textContent = 'not analysed yet';
      fill($('ad-components'), [], () => []);
      $('ad-flags').replaceChildren();
      return;
    }
    let summary = `score ${an.score}/100, ${enumName(an.verdict, 'VERDICT_')}, by ${an.worker_id} at ${when(an.analyzed_at_ms)} (${an.analyzer_version})`;
    if (an.near_duplicate_of) summary += `; near duplicate of ${an.near_duplicate_of} (${num(an.similarity, 2)})`;
    const perf = an.performance;
    if (perf && n(perf.impressions)) summary += `; ${int(perf.impressions)} impressions, CTR ${pct(perf.ctr)}`;
    $('ad-analysis-summary').textContent = summary;
    fill($('ad-components'), an.components, (c) => [c.name, [c.score, 'num'], [num(c.weight, 2), 'num'], c.reasons.join('; ')]);
    $('ad-flags').replaceChildren(...an.flags.map((f) => el('li', `policy flag: "${f.term}" in ${f.field}`)));
  }

  async function refreshConsole() {
    const a = S.audit;
    const r = await rpc('adflow.v1.AgentService/ListCommands', { page_size: 25, page_token: a.tokens[a.page] });
    fill($('audit'), r.commands, (c) => [when(c.at_ms), c.caller, c.text, c.understood_as,
      enumName(c.outcome, 'OUTCOME_') + (c.dry_run ? ' (preview)' : ''), c.reason || (c.result || {}).message || '']);
    a.next = r.next_page_token;
    pager('audit', a.page, !!a.next);
  }

  function showCommand(r) {
    $('cmd-result').hidden = false;
    $('cmd-understood').textContent = r.understood_as;
    $('cmd-by').textContent = `(${enumName(r.interpreted_by, 'INTERPRETER_')})`;
    $('cmd-outcome').textContent = enumName(r.outcome, 'OUTCOME_');
    $('cmd-outcome').dataset.value = r.outcome;
    $('cmd-reason').textContent = r.confirmation_reason || '';
    const res = r.result || {};
    $('cmd-message').textContent = res.message || '';
    const t = $('cmd-rows');
    const head = document.createElement('tr');
    for (const c of res.columns || []) head.append(el('th', c));
    t.tHead.replaceChildren(head);
    t.tBodies[0].replaceChildren(...(res.rows || []).map((row) => {
      const tr = document.createElement('tr');
      for (const c of row.cells) tr.append(el('td', c));
      return tr;
    }));
    const confirm = $('cmd-confirm');
    confirm.hidden = r.outcome !== 'OUTCOME_DRY_RUN';
    confirm.textContent = r.confirmation_token
      ? `Confirm and run (token valid until ${new Date(n(r.confirmation_expires_at_ms)).toLocaleTimeString()})`
      : 'Run it';
  }

  async function command(body) {
    $('cmd-confirm').disabled = true;
    try {
      const r = await rpc('adflow.v1.AgentService/Execute', body);
      S.cmd = { text: body.text, token: r.confirmation_token };
      showCommand(r);
      showError(null);
    } catch (e) {
      $('cmd-result').hidden = false;
      $('cmd-understood').textContent = '';
      $('cmd-by').textContent = '';
      $('cmd-outcome').textContent = 'refused';
      $('cmd-outcome').dataset.value = e.code || 'ERROR';
      $('cmd-reason').textContent = e.message;
      $('cmd-message').textContent = '';
      $('cmd-rows').tHead.replaceChildren();
      $('cmd-rows').tBodies[0].replaceChildren();
      $('cmd-confirm').hidden = true;
    } finally {
      $('cmd-confirm').disabled = false;
    }
    await refreshConsole().catch(showError);
  }

  const VIEWS = {
    ingest: { refresh: refreshIngest, operator: false },
    ads: { refresh: refreshAds, operator: false },
    queue: { refresh: refreshQueue, operator: true },
    console: { refresh: refreshConsole, operator: true },
  };

  // ---- polling: the open view only, one round at a time, not while hidden ----
  async function refresh() {
    if (!S.view || document.hidden) return;
    try {
      await VIEWS[S.view].refresh();
      showError(null);
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return askKey(e.message);
      showError(e);
    }
  }

  function schedule() {
    clearTimeout(S.timer);
    S.timer = setTimeout(async () => {
      await refresh();
      schedule();
    }, S.pollMs);
  }

  function show(view) {
    const allowed = Object.keys(VIEWS).filter((v) => !VIEWS[v].operator || S.role === 'operator');
    if (!allowed.includes(view)) view = 'ingest';
    S.view = view;
    for (const v of Object.keys(VIEWS)) $('view-' + v).hidden = v !== view;
    for (const a of document.querySelectorAll('.tab')) a.classList.toggle('active', a.dataset.view === view);
    refresh().then(schedule);
  }

  function askKey(message) {
    S.role = null;
    S.view = null;
    clearTimeout(S.timer);
    $('nav').hidden = true;
    for (const v of Object.keys(VIEWS)) $('view-' + v).hidden = true;
    $('login').hidden = false;
    $('login-error').textContent = message || '';
    $('who').textContent = '';
    $('forget').hidden = true;
  }

  async function begin() {
    let s;
    try {
      s = await get('/api/session');
    } catch (e) {
      if (e instanceof ApiError && (e.status === 401 || e.status === 403 || e.status === 429)) {
        S.key = '';
        sessionStorage.removeItem('adflow-key');
        return askKey(e.message);
      }
      return showError(e);
    }
    S.pollMs = n(s.poll_ms) || 3000;
    if (!s.role) return askKey('');
    S.role = s.role;
    $('login').hidden = true;
    $('nav').hidden = false;
    for (const a of document.querySelectorAll('.tab.operator')) a.hidden = s.role !== 'operator';
    $('who').textContent = s.auth_enabled ? `${s.name} (${s.role})` : 'access control off';
    $('forget').hidden = !s.auth_enabled;
    show((location.hash || '#ingest').slice(1));
  }

  // ---- wiring ----
  function setup() {
    for (const sel of document.querySelectorAll('.window-select')) {
      for (const [v, label] of WINDOWS) {
        const o = el('option', label);
        o.value = v;
        sel.append(o);
      }
    }
    window.addEventListener('hashchange', () => S.role && show(location.hash.slice(1)));
    document.addEventListener('visibilitychange', () => !document.hidden && refresh());
    $('login-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      S.key = $('key').value.trim();
      sessionStorage.setItem('adflow-key', S.key);
      $('key').value = '';
      begin();
    });
    $('forget').addEventListener('click', () => {
      S.key = '';
      sessionStorage.removeItem('adflow-key');
      begin();
    });
    const again = () => refresh();
    const reset = (p) => () => {
      S[p].page = 0;
      if (S[p].tokens) S[p].tokens = [''];
      again();
    };
    for (const id of ['top-metric', 'top-window', 'top-min']) $(id).addEventListener('change', reset('top'));
    for (const id of ['camp-window', 'camp-filter']) $(id).addEventListener('change', reset('camp'));
    for (const id of ['ads-status', 'ads-family', 'ads-priority']) $(id).addEventListener('change', reset('ads'));
    for (const p of ['top', 'camp']) {
      $(p + '-prev').addEventListener('click', () => { S[p].page = Math.max(0, S[p].page - 1); again(); });
      $(p + '-next').addEventListener('click', () => { S[p].page += 1; again(); });
    }
    for (const p of ['ads', 'audit']) {
      $(p + '-prev').addEventListener('click', () => { S[p].page = Math.max(0, S[p].page - 1); again(); });
      $(p + '-next').addEventListener('click', () => {
        if (!S[p].next) return;
        S[p].tokens[S[p].page + 1] = S[p].next;
        S[p].page += 1;
        again();
      });
    }
    const adStats = () => S.adStats && loadAdStats().catch(showError);
    $('ad-series-window').addEventListener('change', adStats);
    $('ad-stats-refresh').addEventListener('click', adStats);
    $('ad-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const id = $('ad-id').value.trim();
      if (id) showAd(id).then(() => showError(null), showError);
    });
    $('cmd-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const text = $('cmd-text').value.trim();
      if (text) command({ text, dry_run: true });
    });
    $('cmd-confirm').addEventListener('click', () => {
      if (!S.cmd) return;
      const { text, token } = S.cmd;
      command(token ? { text, confirmation_token: token } : { text, dry_run: false });
    });
    begin();
  }

  setup();
})();
