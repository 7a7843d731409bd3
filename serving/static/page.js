// The coverage page: fetches /v1/coverage and draws it; no external assets, refreshes itself.
"use strict";
(function () {
  const STATES = [
    ["c", "complete", "#2e9e4f"], ["i", "incomplete", "#f2c14e"], ["g", "confirmed source gap", "#7b61ff"],
    ["m", "missing", "#d7263d"], ["s", "stale today", "#f78154"], ["x", "invalid (unreadable)", "#4a1942"],
    [".", "not tracked", "#e6e8ee"],
  ];
  const COLOR = Object.fromEntries(STATES.map(([c, , col]) => [c, col]));
  const NAME = Object.fromEntries(STATES.map(([c, n]) => [c, n]));
  const params = new URLSearchParams(location.search);
  const REFRESH_S = Math.max(2, Number(params.get("refresh")) || 30);
  const DAYS = Math.min(3660, Math.max(1, Number(params.get("days")) || 365));
  const ROW_H = 12;
  const $ = (id) => document.getElementById(id);
  const canvas = $("heatmap");
  const state = { data: null, cellW: 3 };

  const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  const ui = (path) => state.data && state.data.ui_url ? state.data.ui_url + path : null;
  const link = (href, text) => href ? `<a href="${esc(href)}" target="_blank" rel="noopener">${esc(text)}</a>` : esc(text);
  const age = (m) => m == null ? "-" : m < 120 ? `${m} min` : m < 2880 ? `${(m / 60).toFixed(1)} h` : `${(m / 1440).toFixed(1)} d`;
  const dayOf = (i) => { const d = new Date(state.data.first_day + "T00:00:00Z"); d.setUTCDate(d.getUTCDate() + i); return d.toISOString().slice(0, 10); };
  const partitionsLink = (symbol, day) => ui(`/assets/raw_ohlcv?view=partitions` + (day ? `&partition=${encodeURIComponent(day + "|" + symbol)}` : ""));

  $("legend").innerHTML = STATES.map(([, n, col]) => `<li><i style="background:${col}"></i>${esc(n)}</li>`).join("")
    + `<li><i style="background:#2e9e4f;box-shadow:inset 0 0 0 3px #fff"></i>run in flight</li>`;
  $("refresh-note").textContent = `refreshes every ${REFRESH_S} s`;

  function draw() {
    const d = state.data, n = d.symbols.length, days = d.days;
    const avail = Math.max(300, $("heatmap-wrap").clientWidth - $("labels").offsetWidth - 8);
    const cellW = state.cellW = Math.max(2, Math.min(16, Math.floor(avail / days)));
    const dpr = window.devicePixelRatio || 1;
    canvas.width = days * cellW * dpr; canvas.height = Math.max(1, n) * ROW_H * dpr;
    canvas.style.width = days * cellW + "px"; canvas.style.height = Math.max(1, n) * ROW_H + "px";
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, days * cellW, n * ROW_H);
    const gap = cellW > 3 ? 1 : 0;
    d.symbols.forEach((row, r) => {
      const cells = row.cells, y = r * ROW_H;
      // One fillRect per run of equal cells: 100 symbols x 365 days is a few hundred rectangles when healthy.
      let i = 0;
      while (i < days) {
        const code = cells[i].toLowerCase();
        let j = i + 1;
        while (j < days && cells[j].toLowerCase() === code) j++;
        ctx.fillStyle = COLOR[code] || "#999";
        if (gap) { for (let k = i; k < j; k++) ctx.fillRect(k * cellW, y, cellW - gap, ROW_H - 1); }
        else ctx.fillRect(i * cellW, y, (j - i) * cellW, ROW_H - 1);
        i = j;
      }
      for (let k = 0; k < days; k++) {
        if (cells[k] !== cells[k].toLowerCase()) {  // a run in flight covers this day
          ctx.fillStyle = "#fff";
          const s = Math.max(1, Math.floor(Math.min(cellW, ROW_H) / 3));
          ctx.fillRect(k * cellW + Math.floor((cellW - s) / 2), y + Math.floor((ROW_H - s) / 2), s, s);
        }
      }
    });
    $("labels").innerHTML = d.symbols.map((row) =>
      `<div title="${esc(row.symbol)}">${link(partitionsLink(row.symbol), row.symbol)}</div>`).join("");
    const axis = [];
    for (let i = 0; i < days; i++) {
      const day = dayOf(i);
      if (day.endsWith("-01") || i === 0) axis.push(`<span style="left:${i * cellW}px">${day.slice(0, 7)}</span>`);
    }
    $("days-axis").innerHTML = days * cellW > 600 ? axis.join("") : `<span style="left:0">${esc(d.first_day)} … ${esc(d.last_day)}</span>`;
  }

  function cellAt(ev) {
    const rect = canvas.getBoundingClientRect();
    const i = Math.floor((ev.clientX - rect.left) / state.cellW), r = Math.floor((ev.clientY - rect.top) / ROW_H);
    const row = state.data && state.data.symbols[r];
    return row && i >= 0 && i < state.data.days ? {row, i, code: row.cells[i]} : null;
  }
  canvas.addEventListener("mousemove", (ev) => {
    const c = cellAt(ev), tip = $("tooltip");
    if (!c) { tip.hidden = true; return; }
    const flight = c.code !== c.code.toLowerCase() ? " · run in flight" : "";
    tip.textContent = `${c.row.symbol} ${dayOf(c.i)}: ${NAME[c.code.toLowerCase()]}${flight}`;
    tip.style.left = ev.clientX + 12 + "px"; tip.style.top = ev.clientY + 12 + "px"; tip.hidden = false;
  });
  canvas.addEventListener("mouseleave", () => { $("tooltip").hidden = true; });
  canvas.addEventListener("click", (ev) => {
    const c = cellAt(ev), href = c && partitionsLink(c.row.symbol, dayOf(c.i));
    if (href) window.open(href, "_blank", "noopener");
  });

  function tables() {
    const d = state.data;
    $("updated").textContent = `as of ${d.generated_at} (updated ${new Date().toISOString().slice(11, 19)} UTC)`;
    $("window").textContent = `${d.first_day} … ${d.last_day} (${d.days} days)`;
    $("audit").textContent = `raw candles: ${d.audit}`;
    const home = ui("/");
    $("ui-link").hidden = !home; if (home) $("ui-link").href = home;
    $("dagster-note").hidden = d.dagster.available; $("dagster-note").textContent = d.dagster.reason || "";
    $("runs").tBodies[0].innerHTML = d.runs_in_flight.length ? d.runs_in_flight.map((r) => `<tr>
      <td>${link(ui(`/runs/${r.run_id}`), r.run_id.slice(0, 8))}</td><td>${esc(r.partitions || "-")}</td><td>${esc(r.status)}</td>
      <td>${r.planned ? `<progress max="${r.planned}" value="${r.materialized}"></progress> ${r.materialized}/${r.planned} (${r.progress_pct}%)` : "waiting to start"}</td>
      <td>${esc(r.started)}</td><td>${esc(r.launched_by || "-")}</td></tr>`).join("") : `<tr><td colspan="6">none</td></tr>`;
    $("symbols").tBodies[0].innerHTML = d.symbols.map((r) => {
      const open = r.gaps.filter((g) => !g.confirmed_at_source);
      const gaps = open.length ? `<details><summary>${r.open_gaps} (${r.open_gap_minutes} min)</summary><ul>${open.slice(0, 50).map((g) =>
        `<li>${esc(g.start)} → ${esc(g.end)} (${g.minutes} min${g.kind !== "gap" ? ", " + esc(g.kind) : ""})</li>`).join("")}${open.length > 50 ? `<li>… ${open.length - 50} more</li>` : ""}</ul></details>` : "0";
      const run = r.last_run ? link(ui(`/runs/${r.last_run.run_id}`), `${r.last_run.status} ${r.last_run.at}`) : "-";
      return `<tr data-symbol="${esc(r.symbol)}"><td>${link(partitionsLink(r.symbol), r.symbol)}</td>
        <td><span class="tier tier-${esc(r.freshness)}">${esc(r.freshness)}</span></td><td>${esc(r.last_candle || "-")}</td>
        <td>${age(r.age_minutes)}</td><td>${r.completeness_pct.toFixed(3)}% (${r.days_covered}/${r.days_expected} days)</td>
        <td>${gaps}</td><td>${r.confirmed_gaps} (${r.confirmed_gap_minutes} min)</td><td>${run}</td></tr>`;
    }).join("") || `<tr><td colspan="8">no symbols tracked; add one with: lakehouse symbols add BTC/USDT</td></tr>`;
  }

  async function refresh() {
    try {
      const t0 = performance.now();
      const res = await fetch(`/v1/coverage?days=${DAYS}`, {cache: "no-cache"});
      const body = await res.json();
      if (!res.ok) throw new Error(body.error || res.statusText);
      const t1 = performance.now();
      state.data = body; draw(); tables();
      window.lakehouseCoverage.timings = {fetch_ms: t1 - t0, render_ms: performance.now() - t1};
      window.lakehouseCoverage.renders += 1;
      $("error").hidden = true;
    } catch (e) {
      $("error").textContent = `could not refresh: ${e.message}; retrying in ${REFRESH_S} s`; $("error").hidden = false;
    }
  }

  // For tests and scripts: where a cell is drawn and which colour each state has.
  window.lakehouseCoverage = {
    renders: 0, timings: null, colors: Object.fromEntries(STATES.map(([c, n, col]) => [n, col])),
    cell(symbol, day) {
      const d = state.data, r = d.symbols.findIndex((s) => s.symbol === symbol);
      const i = Math.round((Date.parse(day + "T00:00:00Z") - Date.parse(d.first_day + "T00:00:00Z")) / 86400000);
      return r < 0 || i < 0 || i >= d.days ? null : {x: i * state.cellW, y: r * ROW_H, w: state.cellW, h: ROW_H, code: d.symbols[r].cells[i]};
    },
  };
  window.addEventListener("resize", () => state.data && draw());
  refresh();
  setInterval(refresh, REFRESH_S * 1000);
})();
