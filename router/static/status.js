// The model-router status page: polls the admin API's JSON and redraws, without reloading.
// Every string from the API reaches the page as a text node or an attribute value, never as
// markup, so a request path or a decision reason cannot inject anything.
"use strict";

(() => {
  const POLL_MS = 2500;
  const TIMEOUT_MS = 4000;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const QUANTILES = ["p50", "p95", "p99"];

  const state = { paused: false, timer: null, inFlight: false, lastOk: null, openDiffs: new Set() };

  // ---- DOM helpers ---------------------------------------------------------------------------

  function setAttrs(el, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "testid") el.dataset.testid = value;
      else if (key === "class") el.setAttribute("class", value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
  }

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  function svg(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    setAttrs(el, attrs);
    for (const child of children) el.append(child instanceof Node ? child : String(child));
    return el;
  }

  // A figure the tests read: the shown text plus the raw value in data-value.
  function num(testid, value, text) {
    return h("span", { class: "num", testid, "data-value": value === null || value === undefined ? "" : value }, text);
  }

  // ---- formatting ----------------------------------------------------------------------------

  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const fmtInt = (v) => (isNum(v) ? String(v) : "—");
  const fmtPercent = (v) => (isNum(v) ? `${Number(v.toFixed(2))}%` : "—"); // 0..100
  const fmtRate = (v) => (isNum(v) ? `${(v * 100).toFixed(1)}%` : "—"); // 0..1
  const fmtRatio = (v) => (isNum(v) ? `×${v.toFixed(2)}` : "—");

  function fmtMs(seconds) {
    if (!isNum(seconds)) return "—";
    const ms = seconds * 1000;
    return `${ms.toFixed(ms < 10 ? 2 : ms < 100 ? 1 : 0)} ms`;
  }

  function fmtTime(epochSeconds) {
    if (!isNum(epochSeconds)) return "—";
    const d = new Date(epochSeconds * 1000);
    return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, "0")).join(":");
  }

  const phaseLabel = (phase) => String(phase).replace(/_/g, " ");

  // ---- fetching ------------------------------------------------------------------------------

  // {status, body}: body is null unless the answer was 2xx JSON. Throws if the fetch itself fails.
  async function getJSON(path) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
    try {
      const r = await fetch(path, { cache: "no-store", signal: controller.signal, headers: { Accept: "application/json" } });
      return { status: r.status, body: r.ok ? await r.json() : null };
    } finally {
      clearTimeout(timer);
    }
  }

  const optional = (path) => getJSON(path).catch(() => ({ status: 0, body: null }));

  async function routeDetails(route) {
    const base = `-/routes/${encodeURIComponent(route.name)}`;
    const none = Promise.resolve({ status: 0, body: null });
    const [shadow, diffs, rollout] = await Promise.all([
      route.shadow ? optional(`${base}/shadow`) : none,
      route.shadow ? optional(`${base}/diffs?limit=5`) : none,
      route.rollout ? optional(`${base}/rollout?tail=10`) : none,
    ]);
    return { shadow: shadow.body, diffs: diffs.body ? diffs.body.diffs : null, rollout: rollout.body };
  }

  async function poll() {
    state.timer = null;
    if (state.inFlight) return;
    state.inFlight = true;
    try {
      const status = await getJSON("-/status");
      if (status.body === null) throw new Error(`GET /-/status answered HTTP ${status.status}`);
      const routes = status.body.routes || [];
      const [details, alerts] = await Promise.all([Promise.all(routes.map(routeDetails)), optional("-/alerts")]);
      render(status.body, details, alerts);
      recovered();
    } catch (err) {
      failed(err);
    } finally {
      state.inFlight = false;
    }
    schedule();
  }

  function schedule() {
    if (!state.paused && state.timer === null) state.timer = setTimeout(poll, POLL_MS);
  }

  // ---- connection state ----------------------------------------------------------------------

  function recovered() {
    state.lastOk = Date.now() / 1000;
    const banner = document.getElementById("error");
    banner.hidden = true;
    banner.replaceChildren();
    document.body.classList.remove("stale");
    const updated = document.querySelector('[data-testid="last-updated"]');
    updated.textContent = fmtTime(state.lastOk);
    updated.setAttribute("datetime", new Date(state.lastOk * 1000).toISOString());
  }

  function failed(err) {
    const reason = err && err.name === "AbortError" ? `no answer within ${TIMEOUT_MS / 1000} s` : String(err && err.message ? err.message : err);
    const since = state.lastOk === null ? "No figures have been loaded yet." : `The figures below are from ${fmtTime(state.lastOk)}.`;
    const banner = document.getElementById("error");
    banner.replaceChildren(
      h("strong", null, "Cannot reach the router's admin API"), ` (${reason}). Retrying every ${POLL_MS / 1000} s. ${since}`);
    banner.hidden = false;
    document.body.classList.add("stale");
  }

  // ---- rendering -----------------------------------------------------------------------------

  function render(status, details, alerts) {
    document.querySelector('[data-testid="config-path"]').textContent = status.config || "—";
    renderProblems(status);
    const routes = status.routes || [];
    const cards = routes.map((route, i) => routeCard(route, details[i]));
    document.getElementById("routes").replaceChildren(...(cards.length ? cards : [h("p", { class: "muted" }, "No routes configured.")]));
    document.getElementById("alerts").replaceChildren(alertList(alerts));
    document.getElementById("backends").replaceChildren(backendTable(status.backends || {}));
  }

  function renderProblems(status) {
    const problems = [];
    if (status.reload && status.reload.last_ok === false) problems.push(`Last reload failed: ${status.reload.last_error}`);
    if (status.state_problem) problems.push(`State: ${status.state_problem}`);
    if (status.rollout_problem) problems.push(`Rollouts: ${status.rollout_problem}`);
    const el = document.getElementById("problems");
    el.replaceChildren(...problems.map((p) => h("p", null, p)));
    el.hidden = problems.length === 0;
  }

  function section(title, ...children) {
    return h("section", { class: "sub" }, h("h3", null, title), ...children);
  }

  function routeCard(route, detail) {
    const id = `route-${route.name}`;
    const rollout = route.rollout;
    const card = h("article", { class: "card", testid: id, "aria-labelledby": `${id}-title` },
      h("header", { class: "card-head" },
        h("h2", { id: `${id}-title` }, route.name),
        rollout ? h("span", { class: `badge phase-${rollout.phase}`, testid: `${id}-phase` }, phaseLabel(rollout.phase))
          : h("span", { class: "badge", testid: `${id}-phase` }, "no rollout")),
      backendsLine(route, id),
      splitBar(route, id),
      requestsTable(route, id));
    if (rollout) card.append(rolloutSection(rollout, detail.rollout, id));
    if (route.shadow) card.append(...shadowSections(route, detail, id));
    else card.append(h("p", { class: "muted" }, "No shadow configured: no agreement or latency comparison."));
    return card;
  }

  function backendsLine(route, id) {
    return h("dl", { class: "pairs" },
      h("div", null, h("dt", null, "primary"), h("dd", null, h("code", { class: "primary", testid: `${id}-primary` }, route.primary))),
      h("div", null, h("dt", null, "candidate"), h("dd", null, route.candidate
        ? h("code", { class: "candidate", testid: `${id}-candidate` }, route.candidate)
        : h("span", { class: "muted", testid: `${id}-candidate` }, "none"))),
      h("div", null, h("dt", null, "shadow"), h("dd", null, route.shadow ? h("code", { testid: `${id}-shadow` }, route.shadow)
        : h("span", { class: "muted", testid: `${id}-shadow` }, "none"))),
      route.sticky ? h("div", null, h("dt", null, "sticky"), h("dd", null, h("code", null, route.sticky))) : null);
  }

  function splitBar(route, id) {
    const cand = isNum(route.candidate_percent) ? route.candidate_percent : 0;
    const primarySeg = h("span", { class: "seg primary" });
    const candSeg = h("span", { class: "seg candidate" });
    // CSSOM writes are allowed under the page's CSP (style attributes in markup are not).
    primarySeg.style.width = `${100 - cand}%`;
    candSeg.style.width = `${cand}%`;
    const label = route.candidate ? `${route.primary} ${fmtPercent(100 - cand)}, ${route.candidate} ${fmtPercent(cand)}`
      : `${route.primary} 100%`;
    const note = [];
    if (isNum(route.yaml_candidate_percent) && route.yaml_candidate_percent !== cand) note.push(`YAML ${fmtPercent(route.yaml_candidate_percent)}`);
    if (route.runtime_split) note.push("set at run time");
    if (route.rollout) note.push("set by the rollout");
    return h("div", { class: "split-wrap" },
      h("div", { class: "split", role: "img", "aria-label": `Traffic split: ${label}` }, primarySeg, candSeg),
      h("p", { class: "split-legend" },
        h("span", null, h("i", { class: "key primary", "aria-hidden": "true" }), "primary ", fmtPercent(100 - cand)),
        h("span", null, h("i", { class: "key candidate", "aria-hidden": "true" }), "candidate ",
          num(`${id}-candidate-percent`, route.candidate_percent, fmtPercent(route.candidate_percent))),
        note.length ? h("span", { class: "muted" }, `(${note.join(", ")})`) : null));
  }

  function requestsTable(route, id) {
    const counts = route.requests_by_backend || {};
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    const names = Object.keys(counts).sort((a, b) => counts[b] - counts[a] || a.localeCompare(b));
    const rows = names.map((name) => h("tr", null,
      h("th", { scope: "row" }, h("code", null, name)),
      h("td", null, num(`${id}-requests-${name}`, counts[name], fmtInt(counts[name]))),
      h("td", null, total ? fmtRate(counts[name] / total) : "—")));
    return section("Requests by backend",
      h("table", { class: "grid" },
        h("thead", null, h("tr", null, h("th", { scope: "col" }, "backend"), h("th", { scope: "col" }, "requests"), h("th", { scope: "col" }, "share"))),
        h("tbody", null, rows.length ? rows : h("tr", null, h("td", { colspan: 3, class: "muted" }, "no requests yet"))),
        h("tfoot", null, h("tr", null, h("th", { scope: "row" }, "total"), h("td", null, num(`${id}-requests-total`, total, fmtInt(total))), h("td", null, "")))),
      route.sticky_key_missing ? h("p", { class: "muted" }, `${route.sticky_key_missing} requests had no sticky key`) : null);
  }

  function stepTimeline(rollout, id) {
    const steps = rollout.steps || [];
    const phase = rollout.phase;
    const items = steps.map((step, i) => {
      let cls = i < rollout.step_index ? "done" : i === rollout.step_index ? "current" : "todo";
      if (phase === "promoted") cls = "done";
      if (i === rollout.step_index && phase === "rolled_back") cls = "failed";
      if (i === rollout.step_index && phase === "paused") cls = "current paused";
      const label = i === 0 && step === 0 ? "shadow" : fmtPercent(step);
      return h("li", { class: `step ${cls}`, testid: `${id}-step-${i}`, "aria-current": cls.startsWith("current") ? "step" : null },
        h("span", { class: "dot", "aria-hidden": "true" }), h("span", { class: "step-label" }, label));
    });
    return h("ol", { class: "steps", "aria-label": "Rollout steps" }, items);
  }

  function rolloutSection(rollout, info, id) {
    const w = rollout.window || {};
    const last = rollout.last_decision;
    const p = w.primary || {};
    const c = w.candidate || {};
    return section("Rollout",
      stepTimeline(rollout, id),
      // Steps count from 0, as in the decision reasons and the log.
      h("p", null, "step ", num(`${id}-step`, rollout.step_index, fmtInt(rollout.step_index)), ` of 0–${(rollout.steps || []).length - 1}`,
        ", candidate at ", num(`${id}-rollout-percent`, rollout.candidate_percent, fmtPercent(rollout.candidate_percent)),
        rollout.approval_required ? (rollout.approved ? " · approved" : " · needs approval") : "",
        rollout.primary_only ? " · primary only" : ""),
      h("p", { class: "muted" }, "this step's window: ",
        num(`${id}-window-agreements`, w.agreements, fmtInt(w.agreements)), " of ",
        num(`${id}-window-comparisons`, w.comparisons, fmtInt(w.comparisons)), " compared agree; errors primary ",
        num(`${id}-window-errors-primary`, p.errors, fmtInt(p.errors)), `/${fmtInt(p.requests)}, candidate `,
        num(`${id}-window-errors-candidate`, c.errors, fmtInt(c.errors)), `/${fmtInt(c.requests)}`),
      last ? h("p", { class: "reason" }, h("span", { class: "muted" }, `last decision ${fmtTime(last.time)} (${last.action}): `),
        h("span", { testid: `${id}-decision-reason` }, last.reason)) : null,
      info && info.log ? decisionLog(info.log, id) : null);
  }

  // The log's tail, with runs of "hold" folded into one line: they repeat every interval.
  function decisionLog(log, id) {
    const folded = [];
    for (const entry of log) {
      const prev = folded[folded.length - 1];
      if (prev && entry.action === "hold" && prev.entry.action === "hold") {
        prev.entry = entry;
        prev.count += 1;
      } else folded.push({ entry, count: 1 });
    }
    const items = folded.reverse().map(({ entry, count }) => h("li", null,
      h("time", null, fmtTime(entry.time)), " ",
      h("strong", null, count > 1 ? `${entry.action} ×${count}` : entry.action), ` → ${phaseLabel(entry.phase)} at step ${entry.step}: `,
      h("span", { class: "muted" }, entry.reason)));
    return h("details", { class: "log" }, h("summary", null, `Decision log (last ${log.length})`),
      h("ol", { class: "events", testid: `${id}-decision-log`, reversed: true }, items));
  }

  function shadowSections(route, detail, id) {
    const report = detail.shadow;
    if (!report) return [section("Shadow", h("p", { class: "muted" }, "shadow report unavailable"))];
    const a = report.agreement || {};
    const dropped = Object.values(report.dropped || {}).reduce((x, y) => x + y, 0);
    const conf = isNum(a.confidence) ? `${Math.round(a.confidence * 100)}%` : "95%";
    const label = report.label_agreement;
    return [
      section("Agreement with the shadow",
        h("p", { class: "big" }, num(`${id}-agreement`, a.rate, fmtRate(a.rate)),
          h("span", { class: "ci" }, ` ${conf} CI `, num(`${id}-agreement-low`, a.low, fmtRate(a.low)), " – ",
            num(`${id}-agreement-high`, a.high, fmtRate(a.high)))),
        h("p", { class: "muted" },
          num(`${id}-compared`, report.compared, fmtInt(report.compared)), " compared, ",
          num(`${id}-mirrored`, report.mirrored, fmtInt(report.mirrored)), " mirrored to ", h("code", null, route.shadow), ", ",
          num(`${id}-dropped`, dropped, fmtInt(dropped)), " dropped",
          label ? ["; labels agree ", num(`${id}-label-agreement`, label.rate, fmtRate(label.rate))] : null,
          (report.noise_fields || []).length ? `; noise fields: ${report.noise_fields.join(", ")}` : null)),
      section("Latency: live vs shadow", latencyChart(report.latency_seconds || {}, id), latencyTable(report.latency_seconds || {}, id)),
      section("Error rates", errorTable(report.errors || {}, id)),
      ...(report.llm ? llmSections(report.llm, id) : []),
      section("Recent disagreements", diffList(route.name, detail.diffs, id)),
    ];
  }

  // LLM routes: time to first token and per output token, live against shadow over the same
  // requests, and the judge's verdicts for the candidate.
  function llmSections(llm, id) {
    const j = llm.judge || {};
    const tokens = llm.mean_output_tokens || {};
    const failures = Object.entries(j.failures || {}).map(([k, n]) => `${k}: ${n}`);
    return [
      section("Time to first token: live vs shadow", latencyTable(llm.ttft_seconds || {}, `${id}-ttft`)),
      section("Time per output token: live vs shadow", latencyTable(llm.tpot_seconds || {}, `${id}-tpot`),
        h("p", { class: "muted" }, "mean output tokens: live ", num(`${id}-tokens-live`, tokens.live, fmtNum(tokens.live)),
          ", shadow ", num(`${id}-tokens-shadow`, tokens.shadow, fmtNum(tokens.shadow)))),
      section("Judge",
        h("p", { class: "big" }, num(`${id}-judge-win-rate`, j.win_rate, fmtRate(j.win_rate)),
          h("span", { class: "ci" }, " 95% CI ", num(`${id}-judge-low`, j.low, fmtRate(j.low)), " – ",
            num(`${id}-judge-high`, j.high, fmtRate(j.high)))),
        h("p", { class: "muted" }, `candidate wins ${fmtInt(j.win || 0)}, ties ${fmtInt(j.tie || 0)}, loses ${fmtInt(j.loss || 0)}`,
          failures.length ? `; not judged: ${failures.join(", ")}` : null)),
    ];
  }

  function fmtNum(x) {
    return isNum(x) ? x.toFixed(1) : "—";
  }

  function latencyChart(lat, id) {
    const live = lat.live || {};
    const shadow = lat.shadow || {};
    const values = QUANTILES.flatMap((q) => [live[q], shadow[q]]).filter(isNum);
    const max = Math.max(...values, 1e-9);
    const left = 34;
    const width = 200;
    const row = 30;
    const chart = svg("svg", { viewBox: `0 0 320 ${QUANTILES.length * row + 4}`, class: "chart", role: "img",
      "aria-label": "Latency quantiles, live against shadow", testid: `${id}-latency-chart` },
      svg("title", null, "Latency quantiles, live against shadow"));
    QUANTILES.forEach((q, i) => {
      const y = i * row + 2;
      chart.append(svg("text", { x: 0, y: y + 17, class: "axis" }, q));
      [["live", live[q], 0], ["shadow", shadow[q], 13]].forEach(([side, v, dy]) => {
        const w = isNum(v) ? Math.max(1, (v / max) * width) : 0;
        chart.append(svg("rect", { x: left, y: y + dy, width: w.toFixed(1), height: 11, rx: 2, class: `bar ${side}` }));
        chart.append(svg("text", { x: left + w + 4, y: y + dy + 9, class: "value" }, fmtMs(v)));
      });
    });
    return h("figure", { class: "chart-wrap" }, chart,
      h("figcaption", null, h("span", null, h("i", { class: "key live", "aria-hidden": "true" }), "live"),
        h("span", null, h("i", { class: "key shadow", "aria-hidden": "true" }), "shadow")));
  }

  function latencyTable(lat, id) {
    const sides = [["live", lat.live || {}], ["shadow", lat.shadow || {}], ["ratio", lat.ratio || {}]];
    return h("table", { class: "grid compact" },
      h("thead", null, h("tr", null, h("th", { scope: "col" }, ""), QUANTILES.map((q) => h("th", { scope: "col" }, q)))),
      h("tbody", null, sides.map(([side, values]) => h("tr", null, h("th", { scope: "row" }, side === "ratio" ? "shadow ÷ live" : side),
        QUANTILES.map((q) => h("td", null, num(`${id}-latency-${side}-${q}`, values[q], side === "ratio" ? fmtRatio(values[q]) : fmtMs(values[q]))))))));
  }

  function errorTable(errors, id) {
    const rows = [["live", errors.live || {}], ["shadow", errors.shadow || {}]].map(([side, e]) => h("tr", null,
      h("th", { scope: "row" }, side),
      h("td", null, num(`${id}-errors-${side}`, e.rate, fmtRate(e.rate))),
      h("td", null, `${fmtInt(e.k)} of ${fmtInt(e.n)}`)));
    const kinds = Object.entries(errors.shadow_kinds || {}).map(([k, n]) => `${k}: ${n}`);
    return [h("table", { class: "grid compact" },
      h("thead", null, h("tr", null, h("th", { scope: "col" }, "side"), h("th", { scope: "col" }, "error rate"), h("th", { scope: "col" }, "errors"))),
      h("tbody", null, rows)),
    kinds.length ? h("p", { class: "muted" }, `shadow errors by kind: ${kinds.join(", ")}`) : null];
  }

  function diffList(routeName, diffs, id) {
    if (diffs === null) return h("p", { class: "muted" }, "unavailable");
    if (!diffs.length) return h("p", { class: "muted", testid: `${id}-diffs-empty` }, "none recorded");
    const items = diffs.map((d, i) => {
      const key = `${routeName}\n${d.request_id}`;
      const more = h("details", { open: state.openDiffs.has(key) }, h("summary", null, "both outputs"),
        h("p", { class: "muted" }, "live"), h("pre", null, d.live),
        h("p", { class: "muted" }, "shadow"), h("pre", null, d.shadow));
      more.addEventListener("toggle", () => (more.open ? state.openDiffs.add(key) : state.openDiffs.delete(key)));
      return h("li", { testid: `${id}-diff-${i}` },
        h("p", { class: "diff-head" }, h("time", { class: "muted" }, fmtTime(d.time)), " ",
          h("code", { class: "rid", testid: `${id}-diff-${i}-request-id`, title: "request id" }, d.request_id)),
        h("p", null, h("code", { class: "path", testid: `${id}-diff-${i}-path` }, `${d.method || ""} ${d.path}`.trim()),
          h("span", { class: "muted" }, " differs in "),
          (d.fields || []).map((f) => h("code", { class: "field", testid: `${id}-diff-${i}-field` }, f))),
        more);
    });
    return h("ol", { class: "diffs", testid: `${id}-diffs` }, items);
  }

  function alertList(res) {
    if (res.status === 404 || (res.body && !(res.body.alerts || []).length)) {
      return h("p", { class: "muted", testid: "alerts-empty" }, "no alerts");
    }
    if (!res.body) return h("p", { class: "muted" }, `alerts unavailable${res.status ? ` (HTTP ${res.status})` : ""}`);
    const alerts = [...res.body.alerts].sort((a, b) => (b.time || 0) - (a.time || 0)).slice(0, 20);
    return h("ul", { class: "alerts" }, alerts.map((a, i) => h("li", { testid: `alert-${i}`, class: `alert kind-${a.kind || "other"}` },
      h("time", null, fmtTime(a.time)), " ",
      h("strong", null, a.kind || "alert"), " ",
      a.route ? h("span", { class: "tag" }, `route ${a.route}`) : null,
      a.backend ? h("span", { class: "tag" }, `backend ${a.backend}`) : null,
      " ", h("span", null, a.message || ""))));
  }

  function backendTable(backends) {
    const rows = Object.entries(backends).flatMap(([name, endpoints]) => endpoints.map((e, i) => h("tr", null,
      h("th", { scope: "row" }, i === 0 ? h("code", null, name) : ""),
      h("td", null, h("code", null, e.url)),
      h("td", { class: e.healthy && e.available ? "ok" : "bad" }, e.healthy ? (e.available ? "healthy" : "unavailable") : "unhealthy"),
      h("td", null, `${e.busy} busy / ${e.idle} idle`),
      h("td", null, String(e.consecutive_failures)))));
    return h("div", { class: "scroll" }, h("table", { class: "grid" },
      h("thead", null, h("tr", null, ["backend", "endpoint", "state", "connections", "failures in a row"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", null, rows)));
  }

  // ---- start ---------------------------------------------------------------------------------

  function start() {
    const button = document.getElementById("pause");
    button.addEventListener("click", () => {
      state.paused = !state.paused;
      button.setAttribute("aria-pressed", String(state.paused));
      button.textContent = state.paused ? "Resume updates" : "Pause updates";
      if (state.paused && state.timer !== null) {
        clearTimeout(state.timer);
        state.timer = null;
      } else if (!state.paused && state.timer === null) poll();
    });
    poll();
  }

  start();
})();
