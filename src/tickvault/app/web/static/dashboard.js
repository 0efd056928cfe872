// tickvault dashboard: loads a moment from /api/view, then (live) follows /api/live (Server-Sent Events).
// The server aggregates and coalesces; this file only draws. No framework, no build step.
// The first moment comes with the page itself (the "boot" data block): no request in series before drawing.
"use strict";

(() => {
  const LWC = window.LightweightCharts;
  const $ = (id) => document.getElementById(id);
  const TAPE_ROWS = 50;
  const SIGNAL_ROWS = 12;

  const state = {
    symbols: [], timeframes: [], symbol: null, tf: "1m", mode: "live", at: null,
    decimals: 2, tickSize: 0.01, bars: [], markers: new Map(), signals: [], tape: [], last: null,
    source: null, loading: 0, reloadAt: 0, serverDown: false, health: null, updates: 0, boot: null,
  };

  // -- formatting: en-US grouping like the terminal monitor; every digit that matters, never cut --
  const fmtCache = new Map();
  function fmt(value, decimals) {
    if (value === null || value === undefined || Number.isNaN(value)) return "-";
    let f = fmtCache.get(decimals);
    if (!f) {
      f = new Intl.NumberFormat("en-US", { minimumFractionDigits: decimals, maximumFractionDigits: decimals });
      fmtCache.set(decimals, f);
    }
    return f.format(value);
  }
  const price = (v) => fmt(v, state.decimals);
  const int = (v) => fmt(v, 0);
  function feature(v) {
    if (v === null || v === undefined) return "-";
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v)) return int(v);
    const abs = Math.abs(v);
    if (abs >= 1000) return fmt(v, 2);
    if (abs === 0) return "0";
    const digits = Math.min(8, Math.max(2, 4 - Math.floor(Math.log10(abs))));
    return v.toFixed(digits);
  }
  function bytes(n) {
    if (n === null || n === undefined) return "-";
    return n >= 2 ** 30 ? `${fmt(n / 2 ** 30, 2)} GiB` : `${fmt(n / 2 ** 20, 1)} MiB`;
  }
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

  // -- chart ------------------------------------------------------------------------------------
  const chart = LWC.createChart($("chart"), {
    autoSize: true,
    layout: {
      background: { type: "solid", color: "#11151d" }, textColor: "#aab3c2",
      fontFamily: getComputedStyle(document.body).getPropertyValue("--mono"), attributionLogo: true,
    },
    grid: { vertLines: { color: "#1a2030" }, horzLines: { color: "#1a2030" } },
    rightPriceScale: { borderColor: "#263041" },
    timeScale: { borderColor: "#263041", timeVisible: true, secondsVisible: false, rightOffset: 4 },
    crosshair: { mode: LWC.CrosshairMode.Normal },
    localization: { locale: "en-US", priceFormatter: (p) => price(p) },
  });
  const candles = chart.addSeries(LWC.CandlestickSeries, {
    upColor: "#26a69a", downColor: "#ef5350", borderVisible: false,
    wickUpColor: "#26a69a", wickDownColor: "#ef5350",
  });
  candles.priceScale().applyOptions({ scaleMargins: { top: 0.08, bottom: 0.26 } });
  const volume = chart.addSeries(LWC.HistogramSeries, {
    priceFormat: { type: "volume" }, priceScaleId: "volume", lastValueVisible: false, priceLineVisible: false,
  });
  volume.priceScale().applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
  const markerLayer = LWC.createSeriesMarkers(candles, []);

  const volumeBar = (b) => ({ time: b.time, value: b.volume, color: b.close >= b.open ? "#26a69a55" : "#ef535055" });
  const candleBar = (b) => ({ time: b.time, open: b.open, high: b.high, low: b.low, close: b.close });

  function setBars(bars) {
    state.bars = bars.slice();
    candles.setData(bars.map(candleBar));
    volume.setData(bars.map(volumeBar));
    showLegend(bars[bars.length - 1]);
  }
  function updateBar(bar) {
    const n = state.bars.length;
    const last = n ? state.bars[n - 1] : null;
    if (last && bar.time < last.time) return; // older than the chart's last bar: the history has it
    if (last && bar.time === last.time) state.bars[n - 1] = bar;
    else state.bars.push(bar);
    candles.update(candleBar(bar));
    volume.update(volumeBar(bar));
  }
  // one marker per bar and action (a model may signal every second): the count, the newest confidence
  function setMarkers() {
    const list = [...state.markers.values()].sort((a, b) => a.time - b.time || a.ms - b.ms);
    markerLayer.setMarkers(list.map((m) => ({
      time: m.time, position: m.action === "BUY" ? "belowBar" : "aboveBar",
      color: m.action === "BUY" ? "#26a69a" : "#ef5350", shape: m.action === "BUY" ? "arrowUp" : "arrowDown",
      id: `${m.action}:${m.ms}`, // the legend tells the count and confidence of the bar under the cursor
    })));
  }
  function addMarkers(markers, reset) {
    if (reset) state.markers.clear();
    for (const m of markers || []) {
      const key = `${m.time}:${m.action}`;
      const had = state.markers.get(key);
      if (had && m.ms > had.ms) state.markers.set(key, { ...m, count: had.count + m.count });
      else if (!had) state.markers.set(key, { ...m });
    }
    setMarkers();
  }
  function addSignals(signals, reset) {
    const fresh = (signals || []).slice().reverse(); // newest first
    state.signals = (reset ? fresh : fresh.concat(state.signals)).slice(0, SIGNAL_ROWS);
    renderSignals(state.signals);
  }
  function showLegend(bar) {
    if (!bar) { $("legend").textContent = ""; return; }
    const signals = ["BUY", "SELL"].map((a) => state.markers.get(`${bar.time}:${a}`)).filter(Boolean)
      .map((m) => `${m.action} ×${m.count} (last ${m.confidence.toFixed(2)})`).join("  ");
    $("legend").textContent =
      `O ${price(bar.open)}  H ${price(bar.high)}  L ${price(bar.low)}  C ${price(bar.close)}  ` +
      `vol ${int(bar.volume)}  trades ${int(bar.trades)}${signals ? `  ${signals}` : ""}`;
  }
  chart.subscribeCrosshairMove((param) => {
    if (!param || param.time === undefined) { showLegend(state.bars[state.bars.length - 1]); return; }
    const bar = state.bars.find((b) => b.time === param.time);
    if (bar) showLegend(bar);
  });

  // -- panels -----------------------------------------------------------------------------------
  function renderQuote(last, atText) {
    $("quote-symbol").textContent = state.symbol || "-";
    const el = $("quote-price");
    if (!last) { el.textContent = "-"; $("quote-time").textContent = ""; $("quote-side").textContent = ""; return; }
    const before = state.last ? state.last.price : null;
    el.textContent = price(last.price);
    el.classList.toggle("up", before !== null && last.price > before);
    el.classList.toggle("down", before !== null && last.price < before);
    $("quote-side").textContent = `${int(last.quantity)} @ ${last.aggressor}`;
    const first = state.bars.length ? state.bars[0] : null;
    $("quote-meta").textContent = first ? `${state.tf} bars: ${int(state.bars.length)}` : "";
    $("quote-time").textContent = `last trade ${atText || last.time} B3`;
    el.dataset.tradeId = String(last.id);
    state.last = last;
  }

  function renderTape(fresh) {
    const rows = state.tape.map((t, i) => {
      const cls = `${t.aggressor}${i < fresh && fresh <= 5 ? " fresh" : ""}`;
      return `<tr class="${cls}" data-trade-id="${t.id}"><td>${esc(t.time)}</td><td class="price">${price(t.price)}</td>` +
        `<td>${int(t.quantity)}</td><td class="side">${esc(t.aggressor)}</td><td>${t.buyer}</td>` +
        `<td>${t.seller}</td><td>${t.id}</td></tr>`;
    });
    $("tape").innerHTML = rows.join("");
  }
  function applyTape(trades, reset) {
    if (!trades) return;
    state.tape = reset ? trades.slice(0, TAPE_ROWS) : trades.concat(state.tape).slice(0, TAPE_ROWS);
    renderTape(reset ? 0 : Math.min(trades.length, TAPE_ROWS));
  }

  function renderBook(book) {
    const panel = $("book-panel");
    if (!book) { panel.hidden = true; return; }
    panel.hidden = false;
    $("book-at").textContent = book.at || "";
    const depth = Math.max(1, ...book.bids.map((l) => l[1]), ...book.asks.map((l) => l[1]));
    const rows = [];
    for (let i = 0; i < Math.max(book.bids.length, book.asks.length); i++) {
      const b = book.bids[i];
      const a = book.asks[i];
      const bw = b ? `${(100 * b[1] / depth).toFixed(1)}%` : "0%";
      const aw = a ? `${(100 * a[1] / depth).toFixed(1)}%` : "0%";
      rows.push(`<tr><td>${b ? int(b[2]) : ""}</td><td class="bidq" style="--w:${bw}">${b ? int(b[1]) : ""}</td>` +
        `<td class="bid">${b ? price(b[0]) : ""}</td><td class="ask">${a ? price(a[0]) : ""}</td>` +
        `<td class="askq" style="--w:${aw}">${a ? int(a[1]) : ""}</td><td>${a ? int(a[2]) : ""}</td></tr>`);
    }
    $("ladder").innerHTML = rows.join("");
  }

  function renderFeatures(f) {
    const dl = $("features");
    if (!f) { dl.innerHTML = '<dt class="empty">no features</dt>'; $("features-at").textContent = ""; return; }
    $("features-at").textContent = f.at.slice(11);
    dl.innerHTML = Object.entries(f.values)
      .map(([k, v]) => `<div><dt>${esc(k)}</dt><dd>${esc(feature(v))}</dd></div>`).join("");
  }

  function renderPrediction(p) {
    const box = $("prediction");
    if (!p) { box.innerHTML = '<p class="empty">no prediction</p>'; $("prediction-at").textContent = ""; return; }
    $("prediction-at").textContent = `${p.model} ${p.at.slice(11)}`;
    const order = ["DOWN", "FLAT", "UP"];
    const labels = Object.keys(p.probabilities).sort((a, b) => order.indexOf(a) - order.indexOf(b));
    box.innerHTML = labels.map((k) => {
      const v = p.probabilities[k];
      return `<div class="row ${esc(k)}"><span>${esc(k)}</span><div class="track"><div class="fill" style="width:${(v * 100).toFixed(1)}%"></div></div>` +
        `<span class="p">${(v * 100).toFixed(1)}%</span></div>`;
    }).join("");
  }

  function renderSignals(list) {
    $("signals").innerHTML = list.map((m) =>
      `<li data-ms="${m.ms}"><span class="${m.action}">${m.action}</span><span>${esc(m.at.slice(11))}</span>` +
      `<span>conf ${m.confidence.toFixed(2)}</span></li>`).join("") || '<li class="empty">none yet</li>';
  }

  function renderHealth(h) {
    state.health = h;
    if (state.mode === "live" && !state.serverDown) setStatus(h.status);
    $("health-at").textContent = `checked ${h.checked_at} B3`;
    $("where").textContent = h.where ? `data: ${h.where}` : "";
    const reasons = $("health-reasons");
    reasons.classList.toggle("disconnected", h.status === "DISCONNECTED");
    if (h.status === "DISCONNECTED") {
      reasons.textContent = `Valkey unreachable: ${h.error || "?"} — retrying every second; data shown is not current`;
      showProblem(`DISCONNECTED from Valkey (${h.where}): retrying every second`);
      return;
    }
    showProblem(state.serverDown ? "DISCONNECTED from the dashboard server: retrying" : null);
    reasons.textContent = h.reasons.length ? h.reasons.join(" · ") : "";
    const c = h.counters;
    const rate = (v) => (v === null || v === undefined ? "-" : fmt(v, 0));
    const why = Object.entries(h.rejected_by_reason || {}).map(([k, v]) => `${k} ${int(v)}`).join(", ");
    const rows = [
      ["ticks/s in", rate(h.ticks_in_per_s)], ["ticks/s stored", rate(h.ticks_stored_per_s)],
      ["bus→store lag", h.lag_ms === null || h.lag_ms === undefined ? "-" : `${int(h.lag_ms)} ms`],
      ["stored", int(c.stored)], ["gaps", int(c.gaps)], ["recovered", int(c.recovered)],
      ["unrecovered", int(c.unrecovered), c.unrecovered > 0],
      ["rejected", why ? `${int(c.rejected)} (${why})` : int(c.rejected), c.rejected > 0],
      ["buffered / spilled", `${int(c.buffered)} / ${int(c.spilled)}`, c.spilled > 0],
      ["Valkey memory", bytes(h.memory_bytes)],
    ];
    $("health").innerHTML = rows.map(([k, v, bad]) => `<dt>${k}</dt><dd${bad ? ' class="bad"' : ""}>${esc(v)}</dd>`).join("");
    $("components").innerHTML = h.components.map((x) => {
      const age = x.age_s === null ? "?" : `${x.age_s.toFixed(1)} s ago`;
      return `<li class="${x.age_s !== null && x.age_s > 3.5 ? "stale" : ""}">${esc(x.name)} <span>${age}</span></li>`;
    }).join("") || '<li class="stale">no component reports health</li>';
  }

  function setStatus(text) {
    const el = $("status");
    el.textContent = text;
    el.dataset.status = text;
  }
  function showProblem(text) {
    const el = $("problem-banner");
    el.hidden = !text;
    el.textContent = text || "";
  }

  // -- loading a moment, following live ---------------------------------------------------------
  async function getJSON(path, params) {
    const url = `${path}?${new URLSearchParams(params)}`;
    const res = await fetch(url, { cache: "no-store", credentials: "same-origin" });
    const body = await res.json();
    if (!res.ok) throw new Error(body.error || res.statusText);
    return body;
  }

  function closeStream() {
    if (state.source) { state.source.close(); state.source = null; }
  }

  async function load() {
    closeStream();
    const ticket = ++state.loading;
    const params = { symbol: state.symbol, tf: state.tf };
    if (state.mode === "past") params.local = state.at;
    let view = takeBoot();
    try {
      if (!view) view = await getJSON("/api/view", params);
    } catch (err) {
      if (ticket !== state.loading) return;
      showProblem(`could not load ${state.symbol}: ${err.message}`);
      if (state.mode === "live") setTimeout(() => { if (ticket === state.loading) load(); }, 1000);
      return;
    }
    if (ticket !== state.loading) return; // the user moved on meanwhile
    showProblem(null);
    state.decimals = view.decimals;
    state.tickSize = view.tick_size;
    candles.applyOptions({ priceFormat: { type: "price", precision: view.decimals, minMove: view.tick_size } });
    setBars(view.bars);
    addMarkers(view.markers, true);
    addSignals(view.signals, true);
    $("quote-name").textContent = view.instrument || "";
    state.last = null;
    renderQuote(view.last);
    applyTape(view.tape, true);
    renderBook(view.book);
    renderFeatures(view.features);
    renderPrediction(view.prediction);
    if (view.offset) $("offset").textContent = `UTC${view.offset}`;
    if (view.at && !$("travel-at").value) $("travel-at").value = view.at.replace(" ", "T");
    chart.timeScale().scrollToRealTime();
    document.body.dataset.loaded = `${view.symbol}:${view.tf}:${view.live ? "live" : "past"}`;
    if (state.mode === "past") {
      setStatus("PAST");
      $("past-at").textContent = `${view.at || state.at} (B3, UTC${view.offset || ""})`;
      $("past-banner").hidden = false;
      return;
    }
    $("past-banner").hidden = true;
    if (state.health) setStatus(state.health.status);
    follow(view.at_ms || 0, ticket);
  }

  // the view the page came with, once, if it is the one asked for now
  function takeBoot() {
    const view = state.boot && state.boot.view;
    state.boot = null;
    return view && state.mode === "live" && view.symbol === state.symbol && view.tf === state.tf ? view : null;
  }

  function follow(sinceMs, ticket) {
    const params = new URLSearchParams({ symbol: state.symbol, tf: state.tf, since_ms: String(sinceMs) });
    const source = new EventSource(`/api/live?${params}`);
    state.source = source;
    source.onmessage = (event) => {
      if (ticket !== state.loading) return;
      if (state.serverDown) { state.serverDown = false; showProblem(null); }
      apply(JSON.parse(event.data));
    };
    source.onerror = () => {
      if (ticket !== state.loading) return;
      // the dashboard server itself is gone: say so, and load afresh once it answers again
      state.serverDown = true;
      setStatus("DISCONNECTED");
      showProblem("DISCONNECTED from the dashboard server: retrying");
      closeStream();
      setTimeout(() => { if (ticket === state.loading) load(); }, 1000);
    };
  }

  function apply(u) {
    if (u.symbol !== state.symbol || u.tf !== state.tf) return;
    state.updates += 1;
    document.body.dataset.updates = String(state.updates);
    if (u.reload && Date.now() - state.reloadAt > 1000) { state.reloadAt = Date.now(); load(); return; }
    if (u.bars) { for (const bar of u.bars) updateBar(bar); showLegend(state.bars[state.bars.length - 1]); }
    if (u.markers) { addMarkers(u.markers, false); addSignals(u.markers, false); }
    if (u.tape) applyTape(u.tape, !!u.tape_reset);
    if (u.last) renderQuote(u.last);
    if ("book" in u) renderBook(u.book);
    if ("features" in u) renderFeatures(u.features);
    if ("prediction" in u) renderPrediction(u.prediction);
    if (u.health) renderHealth(u.health);
  }

  // -- controls ---------------------------------------------------------------------------------
  function pressed(container, value) {
    for (const b of container.querySelectorAll("button")) b.setAttribute("aria-pressed", String(b.dataset.value === value));
  }
  function buttons(container, values, onPick) {
    container.innerHTML = values.map((v) => `<button type="button" data-value="${esc(v)}" data-testid="pick-${esc(v)}">${esc(v)}</button>`).join("");
    container.addEventListener("click", (e) => {
      const b = e.target.closest("button");
      if (b) onPick(b.dataset.value);
    });
  }
  function goLive() {
    state.mode = "live";
    state.at = null;
    $("live-button").dataset.active = "true";
    $("past-banner").hidden = true;
    setStatus(state.health ? state.health.status : "STARTING");
    load();
  }
  $("travel").addEventListener("submit", (e) => {
    e.preventDefault();
    const value = $("travel-at").value;
    if (!value) return;
    state.mode = "past";
    state.at = value;
    $("live-button").dataset.active = "false";
    load();
  });
  $("live-button").addEventListener("click", goLive);
  $("back-live").addEventListener("click", goLive);

  // the page's first view, which the server sends after this script (the document is still loading)
  function bootData() {
    return new Promise((resolve) => {
      const read = () => {
        const block = $("boot");
        resolve(block ? JSON.parse(block.textContent) : null);
      };
      if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", read, { once: true });
      else read();
    });
  }

  async function start() {
    state.boot = await bootData();
    const meta = state.boot && state.boot.meta ? state.boot.meta : await getJSON("/api/meta", {});
    state.symbols = meta.symbols;
    state.timeframes = meta.timeframes;
    $("version").textContent = `tickvault ${meta.version}`;
    const wanted = new URLSearchParams(location.search);
    state.symbol = meta.symbols.includes(wanted.get("symbol")) ? wanted.get("symbol") : meta.symbols[0];
    if (meta.timeframes.includes(wanted.get("tf"))) state.tf = wanted.get("tf");
    buttons($("symbols"), meta.symbols, (s) => { state.symbol = s; pressed($("symbols"), s); load(); });
    buttons($("timeframes"), meta.timeframes, (tf) => { state.tf = tf; pressed($("timeframes"), tf); load(); });
    pressed($("symbols"), state.symbol);
    pressed($("timeframes"), state.tf);
    load();
  }

  // for tests and the curious: what the chart holds
  window.tickvault = {
    state,
    chartBars: () => candles.data(),
    chartMarkers: () => markerLayer.markers(),
    markers: () => [...state.markers.values()],
  };
  start().catch((err) => showProblem(`dashboard failed to start: ${err.message}`));
})();
