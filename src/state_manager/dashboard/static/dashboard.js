/*
 * The analytics dashboard of state-manager: KPIs and charts from /v1/analytics/*, and the live feed of the
 * tenant's events from the WebSocket /v1/ws. Plain JavaScript, no dependencies, no build step.
 *
 * The API key (and the tenant ID for service and admin keys) is kept in sessionStorage only: it lives as long
 * as the browser tab and is sent to this origin only. Everything from the server is put into the page as
 * text (textContent, attributes), never as HTML.
 *
 * For tests and tools, the page says what it shows in data attributes: `body[data-analytics]` is
 * loading|loaded|error, each KPI tile has `data-kpi` and `data-value`, each bar and point of a chart has
 * `data-series`, `data-period` and `data-value`, each feed item `data-seq` and `data-type`, and the connection
 * indicator `data-state` (connecting|live|disconnected).
 */
(function () {
  'use strict';

  var STORAGE_KEY = 'state-manager.dashboard.session';
  var SVG_NS = 'http://www.w3.org/2000/svg';
  var FEED_MAX = 100; // items kept in the live feed
  var FEED_HISTORY = 50; // events replayed into the feed when it first connects
  var REFRESH_MS = 60000; // analytics are read again this often while the tab is visible
  var BACKOFF_MIN_MS = 1000;
  var BACKOFF_MAX_MS = 30000;
  var RANGES = { '24h': 24 * 3600e3, '7d': 7 * 24 * 3600e3, '30d': 30 * 24 * 3600e3 };
  var RANGE_GRANULARITY = { '24h': 'hour', '7d': 'day', '30d': 'day' };
  var WEEKDAYS = ['Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat', 'Sun'];
  // Close codes of /v1/ws after which connecting again with the same key cannot help.
  var FATAL_CLOSE = { 4400: 'bad parameters', 4401: 'the key was refused', 4403: 'the key may not act for this tenant' };

  var state = {
    session: null, // {key, tenant, tenantName}
    timezone: null, // the analytics' time zone (the tenant's, unless asked otherwise)
    loadSerial: 0,
    refreshTimer: null,
    feed: { ws: null, lastSeq: null, attempts: 0, timer: null, types: '', seen: {} }
  };

  function $(id) {
    return document.getElementById(id);
  }

  // --- Formatting ------------------------------------------------------------------------------------------

  var numberFormats = {};
  function formatNumber(value, digits) {
    if (value === null || value === undefined || !isFinite(value)) return '—';
    var key = String(digits === undefined ? 2 : digits);
    if (!numberFormats[key]) {
      numberFormats[key] = new Intl.NumberFormat(undefined, { maximumFractionDigits: Number(key) });
    }
    return numberFormats[key].format(value);
  }

  function formatCount(value) {
    return formatNumber(value, 0);
  }

  /** Seconds as "45s", "1m 30s", "2h 5m", "3d 4h", "2m": the two largest units, a zero second one left out. */
  function formatDuration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return '—';
    var total = Math.round(seconds);
    if (total < 0) total = 0;
    if (total < 60) return total + 's';
    var units = [
      ['d', 86400],
      ['h', 3600],
      ['m', 60],
      ['s', 1]
    ];
    var parts = [];
    for (var i = 0; i < units.length && parts.length < 2; i++) {
      var amount = Math.floor(total / units[i][1]);
      if (amount > 0 || parts.length > 0) {
        parts.push(amount + units[i][0]);
        total -= amount * units[i][1];
      }
    }
    if (parts.length === 2 && parts[1].charAt(0) === '0') parts.pop();
    return parts.join(' ');
  }

  /** A rate 0..1 as a percentage: "95.3%". */
  function formatRate(rate) {
    if (rate === null || rate === undefined || !isFinite(rate)) return '—';
    return formatNumber(rate * 100, 1) + '%';
  }

  var FORMATS = { count: formatCount, number: function (v) { return formatNumber(v, 2); }, duration: formatDuration, rate: formatRate };

  function dateFormat(options) {
    try {
      return new Intl.DateTimeFormat(undefined, Object.assign({ timeZone: state.timezone || undefined }, options));
    } catch (e) {
      return new Intl.DateTimeFormat(undefined, Object.assign({ timeZone: 'UTC' }, options));
    }
  }

  /** [short axis label, full label] of a period start, in the analytics' time zone. */
  function periodLabels(iso, granularity, spansDays) {
    var date = new Date(iso);
    if (isNaN(date.getTime())) return [iso, iso];
    var full = dateFormat({ weekday: 'short', day: 'numeric', month: 'short', year: 'numeric' }).format(date);
    if (granularity === 'hour') {
      var time = dateFormat({ hour: '2-digit', minute: '2-digit', hourCycle: 'h23' }).format(date);
      var day = dateFormat({ day: 'numeric', month: 'short' }).format(date);
      return [spansDays ? day + ' ' + time : time, full + ', ' + time];
    }
    if (granularity === 'week') {
      var start = dateFormat({ day: 'numeric', month: 'short' }).format(date);
      return [start, 'Week of ' + full];
    }
    return [dateFormat({ weekday: 'short', day: 'numeric' }).format(date), full];
  }

  // --- Session ---------------------------------------------------------------------------------------------

  function loadSession() {
    try {
      var saved = JSON.parse(window.sessionStorage.getItem(STORAGE_KEY) || 'null');
      if (saved && typeof saved.key === 'string' && saved.key) return saved;
    } catch (e) {
      /* nothing saved, or not readable */
    }
    return null;
  }

  function saveSession(session) {
    window.sessionStorage.setItem(STORAGE_KEY, JSON.stringify({ key: session.key, tenant: session.tenant }));
  }

  function clearSession() {
    window.sessionStorage.removeItem(STORAGE_KEY);
  }

  // --- HTTP --------------------------------------------------------------------------------------------------

  function ApiError(status, message) {
    this.status = status;
    this.message = message;
  }

  function headersFor(session) {
    var headers = { Authorization: 'Bearer ' + session.key, Accept: 'application/json' };
    if (session.tenant) headers['X-Tenant-ID'] = session.tenant;
    return headers;
  }

  function apiGet(path, params, session) {
    var query = new URLSearchParams();
    Object.keys(params || {}).forEach(function (name) {
      var value = params[name];
      if (value !== null && value !== undefined && value !== '') query.set(name, value);
    });
    var url = path + (query.toString() ? '?' + query.toString() : '');
    return fetch(url, { headers: headersFor(session || state.session), cache: 'no-store', credentials: 'omit' }).then(
      function (response) {
        if (response.ok) return response.json();
        return response.text().then(function (text) {
          var message = response.status + ' ' + response.statusText;
          try {
            var problem = JSON.parse(text);
            message = problem.detail || problem.title || message;
          } catch (e) {
            /* not JSON */
          }
          throw new ApiError(response.status, message);
        });
      },
      function () {
        throw new ApiError(0, 'the server cannot be reached');
      }
    );
  }

  // --- Sign-in -----------------------------------------------------------------------------------------------

  function showSignedIn(signedIn) {
    $('sign-in').hidden = signedIn;
    $('dashboard').hidden = !signedIn;
    $('session').hidden = !signedIn;
  }

  function signIn(session, fromForm) {
    var button = $('sign-in-button');
    button.disabled = true;
    $('sign-in-error').textContent = '';
    return apiGet('/v1/tenant', {}, session)
      .then(function (tenant) {
        session.tenantName = tenant.name;
        session.tenant = session.tenant || '';
        state.session = session;
        saveSession(session);
        $('tenant-label').textContent = tenant.name + ' (' + tenant.id + ')';
        showSignedIn(true);
        $('api-key').value = '';
        loadAnalytics();
        startFeed();
        scheduleRefresh();
      })
      .catch(function (error) {
        clearSession();
        showSignedIn(false);
        var why = error.status === 401 ? 'The key was refused.' : error.status === 403 ? 'This key may not act for that tenant.' : error.status === 404 ? 'No such tenant.' : 'Sign-in failed: ' + error.message;
        if (fromForm || error.status !== 401) $('sign-in-error').textContent = why;
      })
      .then(function () {
        button.disabled = false;
      });
  }

  function signOut(message) {
    stopFeed();
    window.clearTimeout(state.refreshTimer);
    state.session = null;
    clearSession();
    showSignedIn(false);
    setConnection('disconnected');
    $('feed').textContent = '';
    $('feed-empty').hidden = false;
    state.feed.seen = {};
    $('sign-in-error').textContent = message || '';
    $('api-key').focus();
  }

  // --- Analytics -------------------------------------------------------------------------------------------

  function currentQuery() {
    var range = $('range').value;
    var to = new Date();
    var from = new Date(to.getTime() - (RANGES[range] || RANGES['7d']));
    return {
      from: from.toISOString(),
      to: to.toISOString(),
      granularity: $('granularity').value,
      business_number: $('business-number').value.trim(),
      agent: $('agent').value.trim()
    };
  }

  function settled(promise) {
    return promise.then(
      function (value) {
        return { ok: true, value: value };
      },
      function (error) {
        return { ok: false, error: error };
      }
    );
  }

  function loadAnalytics() {
    if (!state.session) return;
    var serial = ++state.loadSerial;
    var query = currentQuery();
    document.body.dataset.analytics = 'loading';
    $('status-line').textContent = 'Loading…';
    $('load-error').textContent = '';
    var parts = ['conversations', 'messages', 'customers', 'agents'];
    Promise.all(
      parts.map(function (part) {
        return settled(apiGet('/v1/analytics/' + part, query));
      })
    ).then(function (results) {
      if (serial !== state.loadSerial || !state.session) return; // a newer load, or signed out
      var data = {};
      var errors = [];
      results.forEach(function (result, i) {
        if (result.ok) data[parts[i]] = result.value;
        else errors.push(result.error);
      });
      if (errors.some(function (e) { return e.status === 401; })) {
        signOut('The key was refused (revoked?). Sign in again.');
        return;
      }
      var first = data.conversations || data.messages || data.customers || data.agents;
      state.timezone = (first && first.timezone) || null;
      render(data, query);
      if (errors.length) {
        var unique = {};
        errors.forEach(function (e) {
          unique[e.status === 404 ? 'Analytics are not available on this server (404).' : e.message] = true;
        });
        $('load-error').textContent = Object.keys(unique).join(' ');
      }
      document.body.dataset.analytics = errors.length === parts.length ? 'error' : 'loaded';
      $('status-line').textContent = statusLine(data, query);
    });
  }

  function scheduleRefresh() {
    window.clearTimeout(state.refreshTimer);
    state.refreshTimer = window.setTimeout(function () {
      if (state.session && document.visibilityState !== 'hidden') loadAnalytics();
      if (state.session) scheduleRefresh();
    }, REFRESH_MS);
  }

  function statusLine(data, query) {
    var first = data.conversations || data.messages || data.customers || data.agents;
    if (!first) return '';
    var parts = ['Updated ' + new Date().toLocaleTimeString(), 'time zone ' + (first.timezone || 'UTC'), 'by ' + query.granularity];
    var filters = [];
    if (query.business_number) filters.push('business number ' + query.business_number);
    if (query.agent) filters.push('agent ' + query.agent);
    if (filters.length) parts.push(filters.join(', '));
    var behind = 0;
    var rebuilding = false;
    Object.keys(data).forEach(function (name) {
      var freshness = data[name] && data[name].freshness;
      if (freshness && !freshness.complete) behind = Math.max(behind, freshness.events_behind || 0);
      if (freshness && freshness.rebuilding) rebuilding = true;
    });
    if (rebuilding) parts.push('the figures are being rebuilt: they may be incomplete');
    else if (behind) parts.push('still counting ' + formatCount(behind) + ' recent changes');
    return parts.join(' · ');
  }

  function get(object, path) {
    var value = object;
    for (var i = 0; i < path.length; i++) {
      if (value === null || value === undefined) return null;
      value = value[path[i]];
    }
    return value === undefined ? null : value;
  }

  var KPIS = [
    { id: 'conversations.started', label: 'Conversations started', from: ['conversations', 'totals', 'started'], format: 'count' },
    { id: 'conversations.closed', label: 'Closed', from: ['conversations', 'totals', 'closed'], format: 'count' },
    { id: 'conversations.expired', label: 'Expired', from: ['conversations', 'totals', 'expired'], format: 'count' },
    { id: 'conversations.unanswered', label: 'Unanswered', from: ['conversations', 'totals', 'unanswered'], format: 'count' },
    { id: 'now.open', label: 'Open now', from: ['conversations', 'now', 'open'], format: 'count' },
    { id: 'now.waiting', label: 'Waiting now', from: ['conversations', 'now', 'waiting'], format: 'count' },
    { id: 'conversations.first_response_avg_seconds', label: 'Avg first response', from: ['conversations', 'totals', 'first_response_avg_seconds'], format: 'duration' },
    { id: 'conversations.reply_avg_seconds', label: 'Avg reply time', from: ['conversations', 'totals', 'reply_avg_seconds'], format: 'duration' },
    { id: 'conversations.resolution_avg_seconds', label: 'Avg resolution', from: ['conversations', 'totals', 'resolution_avg_seconds'], format: 'duration' },
    { id: 'conversations.duration_avg_seconds', label: 'Avg duration', from: ['conversations', 'totals', 'duration_avg_seconds'], format: 'duration' },
    { id: 'conversations.messages_per_conversation', label: 'Messages per conversation', from: ['conversations', 'totals', 'messages_per_conversation'], format: 'number' },
    { id: 'conversations.reopened', label: 'Reopened', from: ['conversations', 'totals', 'reopened'], format: 'count' },
    { id: 'conversations.windows_lapsed', label: 'Reply windows lapsed', from: ['conversations', 'totals', 'windows_lapsed'], format: 'count' },
    { id: 'messages.inbound', label: 'Messages in', from: ['messages', 'totals', 'inbound'], format: 'count' },
    { id: 'messages.outbound', label: 'Messages out', from: ['messages', 'totals', 'outbound'], format: 'count' },
    { id: 'messages.delivered_rate', label: 'Delivered', from: ['messages', 'totals', 'delivered_rate'], format: 'rate' },
    { id: 'messages.read_rate', label: 'Read', from: ['messages', 'totals', 'read_rate'], format: 'rate' },
    { id: 'messages.failed_rate', label: 'Failed', from: ['messages', 'totals', 'failed_rate'], format: 'rate' },
    { id: 'messages.deliver_avg_seconds', label: 'Avg time to deliver', from: ['messages', 'totals', 'deliver_avg_seconds'], format: 'duration' },
    { id: 'messages.read_avg_seconds', label: 'Avg time to read', from: ['messages', 'totals', 'read_avg_seconds'], format: 'duration' },
    { id: 'customers.customers', label: 'Customers', from: ['customers', 'totals', 'customers'], format: 'count' },
    { id: 'customers.new', label: 'New customers', from: ['customers', 'totals', 'new'], format: 'count' },
    { id: 'customers.returning', label: 'Returning customers', from: ['customers', 'totals', 'returning'], format: 'count' }
  ];

  function render(data, query) {
    renderKpis(data);
    var spansDays = query.granularity === 'hour' && $('range').value !== '24h';
    var conversations = data.conversations && data.conversations.series;
    var messages = data.messages && data.messages.series;
    var granularity = (data.conversations && data.conversations.granularity) || query.granularity;
    barChart($('chart-started'), periodCategories(conversations, granularity, spansDays), [
      { key: 'started', label: 'Started' },
      { key: 'closed', label: 'Closed' }
    ], 'count', conversations);
    barChart($('chart-messages'), periodCategories(messages, granularity, spansDays), [
      { key: 'inbound', label: 'Inbound' },
      { key: 'outbound', label: 'Outbound' }
    ], 'count', messages);
    lineChart($('chart-response'), periodCategories(conversations, granularity, spansDays), [
      { key: 'first_response_avg_seconds', label: 'First response' },
      { key: 'reply_avg_seconds', label: 'Reply' }
    ], 'duration', conversations);
    lineChart($('chart-rates'), periodCategories(messages, granularity, spansDays), [
      { key: 'delivered_rate', label: 'Delivered' },
      { key: 'read_rate', label: 'Read' },
      { key: 'failed_rate', label: 'Failed' }
    ], 'rate', messages, 1);
    var customers = data.customers || {};
    var hours = customers.busiest_hours;
    barChart($('chart-hours'), hours ? hours.map(function (h) {
      var label = (h.hour < 10 ? '0' : '') + h.hour;
      return { key: String(h.hour), label: label, title: label + ':00–' + label + ':59' };
    }) : null, [{ key: 'inbound', label: 'Inbound' }], 'count', hours);
    var weekdays = customers.busiest_weekdays;
    barChart($('chart-weekdays'), weekdays ? weekdays.map(function (d) {
      return { key: String(d.weekday), label: WEEKDAYS[d.weekday] || String(d.weekday), title: WEEKDAYS[d.weekday] || String(d.weekday) };
    }) : null, [{ key: 'inbound', label: 'Inbound' }], 'count', weekdays);
    renderAgents(data.agents);
    renderFailures(data.messages);
    renderChannels(data.customers);
  }

  function renderKpis(data) {
    var container = $('kpis');
    container.textContent = '';
    KPIS.forEach(function (kpi) {
      var value = get(data, kpi.from);
      var tile = document.createElement('dl');
      tile.className = 'kpi';
      tile.dataset.kpi = kpi.id;
      tile.dataset.value = value === null ? '' : String(value);
      var term = document.createElement('dt');
      term.textContent = kpi.label;
      var detail = document.createElement('dd');
      detail.textContent = FORMATS[kpi.format](value);
      tile.appendChild(term);
      tile.appendChild(detail);
      container.appendChild(tile);
    });
  }

  function periodCategories(series, granularity, spansDays) {
    if (!series) return null;
    return series.map(function (point) {
      var labels = periodLabels(point.period, granularity, spansDays);
      return { key: point.period, label: labels[0], title: labels[1] };
    });
  }

  function cell(row, text, className) {
    var td = document.createElement('td');
    td.textContent = text;
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function emptyRow(tbody, columns, text) {
    var row = document.createElement('tr');
    var td = cell(row, text, 'empty');
    td.colSpan = columns;
    tbody.appendChild(row);
  }

  function renderAgents(report) {
    var tbody = $('agents-table').querySelector('tbody');
    tbody.textContent = '';
    var agents = (report && report.agents) || [];
    if (!report) return emptyRow(tbody, 7, 'Not available.');
    if (!agents.length) return emptyRow(tbody, 7, 'No agent activity in this range.');
    agents.forEach(function (agent) {
      var row = document.createElement('tr');
      row.dataset.agent = agent.agent;
      var name = cell(row, agent.agent);
      name.className = 'agent';
      cell(row, formatCount(agent.conversations_handled), 'num').dataset.value = agent.conversations_handled;
      cell(row, formatCount(agent.messages_sent), 'num').dataset.value = agent.messages_sent;
      cell(row, formatDuration(agent.first_response_avg_seconds), 'num');
      cell(row, formatDuration(agent.reply_avg_seconds), 'num');
      cell(row, formatDuration(agent.handle_avg_seconds), 'num');
      cell(row, formatNumber(agent.concurrent_avg, 1) + ' / ' + formatCount(agent.concurrent_peak), 'num');
      tbody.appendChild(row);
    });
  }

  function renderFailures(report) {
    var tbody = $('failures-table').querySelector('tbody');
    tbody.textContent = '';
    if (!report) return emptyRow(tbody, 2, 'Not available.');
    var codes = report.failure_codes || [];
    if (!codes.length) return emptyRow(tbody, 2, 'No failed messages.');
    codes.forEach(function (failure) {
      var row = document.createElement('tr');
      row.dataset.code = failure.code;
      cell(row, failure.code === null || failure.code === undefined ? 'unknown' : String(failure.code));
      cell(row, formatCount(failure.count), 'num').dataset.value = failure.count;
      tbody.appendChild(row);
    });
  }

  function renderChannels(report) {
    var tbody = $('channels-table').querySelector('tbody');
    tbody.textContent = '';
    if (!report) return emptyRow(tbody, 3, 'Not available.');
    var channels = report.channels || [];
    if (!channels.length) return emptyRow(tbody, 3, 'No customers in this range.');
    channels.forEach(function (channel) {
      var row = document.createElement('tr');
      row.dataset.channel = channel.channel;
      cell(row, channel.channel);
      cell(row, formatCount(channel.customers), 'num');
      cell(row, formatCount(channel.conversations), 'num');
      tbody.appendChild(row);
    });
  }

  // --- Charts (inline SVG) -------------------------------------------------------------------------------------

  var CHART = { width: 640, height: 230, left: 54, right: 12, top: 12, bottom: 30 };

  function svg(name, attributes, parent) {
    var element = document.createElementNS(SVG_NS, name);
    Object.keys(attributes || {}).forEach(function (attribute) {
      element.setAttribute(attribute, attributes[attribute]);
    });
    if (parent) parent.appendChild(element);
    return element;
  }

  /** A round upper bound for the y axis, whose quarters (the grid lines) are round too. */
  function niceMax(value, format) {
    if (format === 'rate') return 1;
    if (format === 'duration') {
      var steps = [4, 8, 20, 40, 60, 120, 240, 600, 1200, 2400, 3600, 7200, 14400, 28800, 57600, 86400, 172800, 345600, 604800];
      for (var i = 0; i < steps.length; i++) if (value <= steps[i]) return steps[i];
      return Math.ceil(value / 604800) * 604800;
    }
    if (!(value > 0)) return 4;
    var quarter = value / 4;
    var magnitude = Math.pow(10, Math.floor(Math.log10(quarter)));
    var multiples = [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10];
    for (var k = 0; k < 3; k++, magnitude *= 10) {
      for (var j = 0; j < multiples.length; j++) {
        var step = multiples[j] * magnitude;
        if (format === 'count' && (step < 1 || Math.abs(step - Math.round(step)) > 1e-9)) continue;
        if (step * 4 >= value) return step * 4;
      }
    }
    return value;
  }

  function valuesOf(rows, key) {
    return (rows || []).map(function (row) {
      var value = row ? row[key] : null;
      return typeof value === 'number' && isFinite(value) ? value : null;
    });
  }

  /** The frame both chart kinds share: the svg, the axes, the y grid and the x labels; null if no data. */
  function chartFrame(container, categories, series, format, rows, fixedMax, kind) {
    container.textContent = '';
    if (!categories || !rows) {
      var missing = document.createElement('p');
      missing.className = 'empty';
      missing.textContent = 'Not available.';
      container.appendChild(missing);
      return null;
    }
    if (!categories.length) {
      var empty = document.createElement('p');
      empty.className = 'empty';
      empty.textContent = 'No data in this range.';
      container.appendChild(empty);
      return null;
    }
    var values = series.map(function (s) {
      return valuesOf(rows, s.key);
    });
    var any = values.some(function (list) {
      return list.some(function (v) {
        return v !== null;
      });
    });
    if (!any) {
      var nothing = document.createElement('p');
      nothing.className = 'empty';
      nothing.textContent = 'No data in this range.';
      container.appendChild(nothing);
      return null;
    }
    var highest = 0;
    values.forEach(function (list) {
      list.forEach(function (v) {
        if (v !== null && v > highest) highest = v;
      });
    });
    var max = fixedMax || niceMax(highest, format);
    var c = CHART;
    var plotWidth = c.width - c.left - c.right;
    var plotHeight = c.height - c.top - c.bottom;
    var heading = container.closest('section').querySelector('h2');
    var summary = (heading ? heading.textContent : 'Chart') + ': ' + categories.length + ' periods, highest ' + FORMATS[format](highest);
    var root = svg('svg', {
      viewBox: '0 0 ' + c.width + ' ' + c.height,
      role: 'img',
      'aria-label': summary,
      'data-kind': kind,
      preserveAspectRatio: 'xMidYMid meet'
    });
    svg('title', {}, root).textContent = summary;
    var ticks = 4;
    for (var t = 0; t <= ticks; t++) {
      var y = c.top + plotHeight - (plotHeight * t) / ticks;
      svg('line', { x1: c.left, x2: c.width - c.right, y1: y, y2: y, class: t === 0 ? 'axis' : 'grid-line' }, root);
      var tick = svg('text', { x: c.left - 6, y: y + 4, 'text-anchor': 'end' }, root);
      tick.textContent = FORMATS[format]((max * t) / ticks);
    }
    var slot = plotWidth / categories.length;
    var every = Math.max(1, Math.ceil(categories.length / Math.floor(plotWidth / 56)));
    categories.forEach(function (category, i) {
      if (i % every !== 0) return;
      var label = svg('text', { x: c.left + slot * (i + 0.5), y: c.height - c.bottom + 16, 'text-anchor': 'middle' }, root);
      label.textContent = category.label;
    });
    container.appendChild(root);
    if (series.length > 1) {
      var legend = document.createElement('ul');
      legend.className = 'legend ' + (kind === 'bar' ? 'bars' : 'lines');
      series.forEach(function (s, index) {
        var item = document.createElement('li');
        item.className = 'series-' + index;
        item.textContent = s.label;
        legend.appendChild(item);
      });
      container.appendChild(legend);
    }
    return {
      root: root,
      values: values,
      slot: slot,
      y: function (value) {
        return c.top + plotHeight - (plotHeight * Math.min(value, max)) / max;
      },
      x: function (index) {
        return c.left + slot * (index + 0.5);
      },
      base: c.top + plotHeight
    };
  }

  function tooltip(element, series, category, value, format) {
    element.setAttribute('data-series', series.key);
    element.setAttribute('data-period', category.key);
    element.setAttribute('data-value', value === null ? '' : String(value));
    svg('title', {}, element).textContent = series.label + ' · ' + category.title + ': ' + FORMATS[format](value);
  }

  /** Grouped bars: one group per category, one bar per series. */
  function barChart(container, categories, series, format, rows) {
    var frame = chartFrame(container, categories, series, format, rows, null, 'bar');
    if (!frame) return;
    var groupWidth = frame.slot * 0.78;
    var barWidth = groupWidth / series.length;
    categories.forEach(function (category, i) {
      series.forEach(function (s, k) {
        var value = frame.values[k][i];
        if (value === null) return;
        var top = frame.y(value);
        var bar = svg('rect', {
          x: (frame.x(i) - groupWidth / 2 + barWidth * k).toFixed(2),
          y: top.toFixed(2),
          width: Math.max(1, barWidth - 1).toFixed(2),
          height: Math.max(value > 0 ? 1 : 0, frame.base - top).toFixed(2),
          class: 'bar series-' + k
        }, frame.root);
        tooltip(bar, s, category, value, format);
      });
    });
  }

  /** Lines with a point per value; a missing value (null: nothing to average) breaks the line. */
  function lineChart(container, categories, series, format, rows, fixedMax) {
    var frame = chartFrame(container, categories, series, format, rows, fixedMax, 'line');
    if (!frame) return;
    series.forEach(function (s, k) {
      var path = '';
      var pen = 'M';
      categories.forEach(function (category, i) {
        var value = frame.values[k][i];
        if (value === null) {
          pen = 'M';
          return;
        }
        path += pen + frame.x(i).toFixed(2) + ' ' + frame.y(value).toFixed(2) + ' ';
        pen = 'L';
      });
      if (path) svg('path', { d: path.trim(), class: 'line series-' + k }, frame.root);
      categories.forEach(function (category, i) {
        var value = frame.values[k][i];
        if (value === null) return;
        var point = svg('circle', { cx: frame.x(i).toFixed(2), cy: frame.y(value).toFixed(2), r: 3.5, class: 'point series-' + k }, frame.root);
        tooltip(point, s, category, value, format);
      });
    });
  }

  // --- Live feed ---------------------------------------------------------------------------------------------

  function setConnection(connection, detail) {
    var indicator = $('connection');
    indicator.dataset.state = connection;
    $('connection-text').textContent = connection + (detail ? ' (' + detail + ')' : '');
  }

  function startFeed() {
    var feed = state.feed;
    feed.types = $('feed-types').value;
    feed.attempts = 0;
    setConnection('connecting');
    // Start with the latest events: ask for the tenant's last event number, replay a few before it.
    apiGet('/v1/events', { limit: 1 })
      .then(function (page) {
        feed.lastSeq = Math.max(0, (page.head || 0) - FEED_HISTORY);
      })
      .catch(function () {
        feed.lastSeq = null; // live only
      })
      .then(function () {
        if (state.session) connect();
      });
  }

  function stopFeed() {
    var feed = state.feed;
    window.clearTimeout(feed.timer);
    feed.timer = null;
    if (feed.ws) {
      var ws = feed.ws;
      feed.ws = null; // its close handler sees it is no longer the current one
      ws.close(1000, 'signed out');
    }
  }

  function connect() {
    var feed = state.feed;
    var session = state.session;
    if (!session) return;
    var params = new URLSearchParams({ api_key: session.key });
    if (session.tenant) params.set('tenant', session.tenant);
    if (feed.lastSeq !== null) params.set('after', String(feed.lastSeq));
    if (feed.types) params.set('types', feed.types);
    var scheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
    setConnection('connecting');
    var ws = new WebSocket(scheme + '//' + window.location.host + '/v1/ws?' + params.toString());
    feed.ws = ws;
    ws.onmessage = function (message) {
      if (feed.ws !== ws) return;
      var frame;
      try {
        frame = JSON.parse(message.data);
      } catch (e) {
        return;
      }
      if (frame.kind === 'events') {
        addEvents(frame.events || []);
      } else if (frame.kind === 'live') {
        feed.attempts = 0;
        advance(frame.seq);
        setConnection('live');
      } else if (frame.kind === 'heartbeat') {
        advance(frame.seq);
      }
    };
    ws.onclose = function (event) {
      if (feed.ws !== ws) return; // replaced or stopped on purpose
      feed.ws = null;
      if (FATAL_CLOSE[event.code]) {
        setConnection('disconnected', FATAL_CLOSE[event.code]);
        if (event.code === 4401) signOut('The key was refused. Sign in again.');
        return;
      }
      if (event.code === 4410) feed.lastSeq = null; // what we missed was removed by retention: go on live
      var delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * Math.pow(2, feed.attempts));
      delay = Math.round(delay * (0.75 + Math.random() * 0.5));
      feed.attempts += 1;
      setConnection('disconnected', 'retrying in ' + Math.ceil(delay / 1000) + ' s');
      feed.timer = window.setTimeout(function () {
        feed.timer = null;
        connect();
      }, delay);
    };
  }

  function advance(seq) {
    if (typeof seq === 'number' && (state.feed.lastSeq === null || seq > state.feed.lastSeq)) state.feed.lastSeq = seq;
  }

  function summaryOf(event) {
    var p = event.payload || {};
    switch (event.type) {
      case 'conversation.created':
        return 'opened ' + (p.state || '') + (p.business_number_id ? ' on ' + p.business_number_id : '');
      case 'conversation.state_changed':
        return (p.from || '?') + ' → ' + (p.to || '?') + (p.reason ? ' (' + p.reason + ')' : '');
      case 'conversation.correlated':
        return 'Genesys ' + (p.genesys_conversation_id || '');
      case 'message.recorded':
        return [p.direction, p.type, p.sender_type ? 'from ' + p.sender_type : ''].filter(Boolean).join(' ');
      case 'message.status_changed':
        var failure = p.failure && (p.failure.code || p.failure.title);
        return (p.from || '—') + ' → ' + (p.to || '?') + (failure ? ' (' + failure + ')' : '');
      case 'participant.joined':
      case 'participant.left':
        return [p.role, p.participant_ref].filter(Boolean).join(' ');
      case 'context.changed':
        return p.scope ? p.scope + ' context' : '';
      default:
        return '';
    }
  }

  function timeOf(iso) {
    var date = new Date(iso);
    if (isNaN(date.getTime())) return iso || '';
    var today = new Date().toDateString() === date.toDateString();
    return today ? date.toLocaleTimeString() : date.toLocaleString();
  }

  function addEvents(events) {
    var list = $('feed');
    var feed = state.feed;
    events.forEach(function (event) {
      advance(event.seq);
      if (feed.seen[event.seq]) return;
      feed.seen[event.seq] = true;
      var item = document.createElement('li');
      item.className = 'fresh';
      item.dataset.seq = String(event.seq);
      item.dataset.type = event.type;
      if (event.conversation_id) item.dataset.conversationId = event.conversation_id;
      var seq = document.createElement('span');
      seq.className = 'seq';
      seq.textContent = '#' + event.seq;
      var type = document.createElement('span');
      type.className = 'type';
      type.textContent = event.type;
      var time = document.createElement('time');
      time.className = 'time';
      time.dateTime = event.occurred_at || '';
      time.title = event.occurred_at || '';
      time.textContent = timeOf(event.occurred_at);
      var detail = document.createElement('span');
      detail.className = 'detail';
      var summary = summaryOf(event);
      if (summary) detail.appendChild(document.createTextNode(summary + ' '));
      if (event.conversation_id) {
        var conversation = document.createElement('code');
        conversation.className = 'conversation';
        conversation.title = 'conversation ' + event.conversation_id;
        conversation.textContent = event.conversation_id;
        detail.appendChild(conversation);
      }
      item.appendChild(seq);
      item.appendChild(type);
      item.appendChild(time);
      item.appendChild(detail);
      list.insertBefore(item, list.firstChild); // newest first
    });
    while (list.children.length > FEED_MAX) {
      var oldest = list.lastElementChild;
      delete feed.seen[oldest.dataset.seq];
      list.removeChild(oldest);
    }
    $('feed-empty').hidden = list.children.length > 0;
  }

  // --- Wiring ------------------------------------------------------------------------------------------------

  function init() {
    $('sign-in-form').addEventListener('submit', function (event) {
      event.preventDefault();
      var key = $('api-key').value.trim();
      if (!key) return;
      signIn({ key: key, tenant: $('tenant-id').value.trim() }, true);
    });
    $('sign-out').addEventListener('click', function () {
      signOut('');
    });
    $('controls-form').addEventListener('submit', function (event) {
      event.preventDefault();
      loadAnalytics();
    });
    $('range').addEventListener('change', function () {
      $('granularity').value = RANGE_GRANULARITY[$('range').value] || 'day';
      loadAnalytics();
    });
    $('granularity').addEventListener('change', loadAnalytics);
    $('feed-types').addEventListener('change', function () {
      stopFeed();
      $('feed').textContent = '';
      state.feed.seen = {};
      $('feed-empty').hidden = false;
      startFeed();
    });
    $('feed-clear').addEventListener('click', function () {
      $('feed').textContent = '';
      state.feed.seen = {};
      $('feed-empty').hidden = false;
    });
    document.addEventListener('visibilitychange', function () {
      // Back to a tab left for a while: read the analytics again at once, and connect if the feed gave up.
      if (document.visibilityState === 'visible' && state.session) {
        loadAnalytics();
        scheduleRefresh();
      }
    });
    var saved = loadSession();
    if (saved) {
      $('tenant-id').value = saved.tenant || '';
      signIn(saved, false);
    } else {
      showSignedIn(false);
      $('api-key').focus();
    }
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
