// The model-router status page: draws the figures the server embedded in the page at once, then
// polls the admin API's JSON and redraws, without reloading.
// Every string from the API reaches the page as a text node or an attribute value, never as
// markup, so a request path or a decision reason cannot inject anything.
"use strict";

(() => {
  const POLL_MS = 2500;
  const TIMEOUT_MS = 4000;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const QUANTILES = ["p50", "p95", "p99"];

  const state = { paused: false, timer: null, inFlight: false, lastOk: null, openDiffs: new Set(), filter: "" };

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
  const fmtPerS = (v) => (isNum(v) ? `${Number(v.toPrecision(3))}/s` : "—");
  // Series quantiles come from buckets whose first one is "1 ms or less".
  const fmtLat = (v) => (isNum(v) && v <= 0.001 ? "≤1 ms" : fmtMs(v));
  const fmtNum = (v) => (isNum(v) ? String(Number(v.toPrecision(4))) : "—");

  function fmtAgo(epochSeconds) {
    if (!isNum(epochSeconds)) return "—";
    const s = Math.round(Date.now() / 1000 - epochSeconds);
    const rel = s >= 0 ? `${s < 120 ? `${s} s` : `${Math.round(s / 60)} min`} ago` : `in ${-s < 120 ? `${-s} s` : `${Math.round(-s / 60)} min`}`;
    return `${fmtTime(epochSeconds)} (${rel})`;
  }

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

  function recovered(at) {
    state.lastOk = isNum(at) ? at : Date.now() / 1000;
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
    keepPlace(() => document.getElementById("routes").replaceChildren(...(cards.length ? cards : [h("p", { class: "muted" }, "No routes configured.")])));
    document.getElementById("route-index").replaceChildren(...routes.map((route) => h("li", null,
      h("a", { href: `#route-${route.name}`, testid: `index-${route.name}` }, route.name))));
    applyFilter();
    document.getElementById("alerts").replaceChildren(alertList(alerts));
    document.getElementById("backends").replaceChildren(backendTable(status.backends || {}));
  }

  // Redrawing replaces every card, and cards change height: keep the card at the top of the
  // window where it was, so an operator reading route 42 of 50 is not moved elsewhere.
  function keepPlace(redraw) {
    const anchor = [...document.querySelectorAll("#routes article[data-route]")].find((c) => c.getBoundingClientRect().bottom > 0);
    const name = anchor ? anchor.dataset.route : null;
    const top = anchor ? anchor.getBoundingClientRect().top : 0;
    redraw();
    const again = name === null ? null : [...document.querySelectorAll("#routes article[data-route]")].find((c) => c.dataset.route === name);
    if (again && window.scrollY > 0) window.scrollBy(0, again.getBoundingClientRect().top - top);
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
    const stale = route.stale;
    const card = h("article", { class: "card", id, testid: id, "aria-labelledby": `${id}-title`, "data-route": route.name },
      h("header", { class: "card-head" },
        h("h2", { id: `${id}-title` }, route.name),
        h("span", { class: "badges" },
          stale ? h("span", { class: "badge stale-badge", testid: `${id}-stale`, "data-value": stale.since ?? "",
            title: "the rollout is final: these figures no longer change" }, `stale since ${fmtTime(stale.since)}`) : null,
          rollout ? h("span", { class: `badge phase-${rollout.phase}`, testid: `${id}-phase` }, phaseLabel(rollout.phase))
            : h("span", { class: "badge", testid: `${id}-phase` }, "no rollout"))),
      backendsLine(route, id),
      splitBar(route, id),
      requestsTable(route, id),
      seriesSection(route, id));
    if (rollout) card.append(rolloutSection(rollout, detail.rollout, id, stale));
    if (route.shadow) card.append(...shadowSections(route, detail, id, stale));
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

  function rolloutSection(rollout, info, id, stale) {
    const w = rollout.window || {};
    const last = rollout.last_decision;
    const p = w.primary || {};
    const c = w.candidate || {};
    return section("Rollout",
      stepTimeline(rollout, id),
      // The one step convention (router.control.steps): "step 2 of 4 (10%)"; step_index stays 0-based.
      h("p", null, num(`${id}-step`, rollout.step_index, rollout.step_label || `step ${fmtInt(rollout.step_index + 1)}`),
        ", candidate at ", num(`${id}-rollout-percent`, rollout.candidate_percent, fmtPercent(rollout.candidate_percent)),
        rollout.approval_required ? (rollout.approved ? " · approved" : " · needs approval") : "",
        rollout.primary_only ? " · primary only" : ""),
      gatesBlock(rollout.progress, id),
      h("p", { class: stale ? "muted stale-figures" : "muted", testid: `${id}-window` }, "this step's window: ",
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

  function shadowSections(route, detail, id, stale) {
    const report = detail.shadow;
    if (!report) return [section("Shadow", h("p", { class: "muted" }, "shadow report unavailable"))];
    const when = h("p", { class: stale ? "muted stale-figures" : "muted" }, "last comparison ",
      num(`${id}-last-compared`, report.last_compared_at, report.last_compared_at ? fmtAgo(report.last_compared_at) : "never"),
      stale ? ` · ${phaseLabel(stale.reason)}: these figures no longer change` : null);
    const a = report.agreement || {};
    const dropped = Object.values(report.dropped || {}).reduce((x, y) => x + y, 0);
    const conf = isNum(a.confidence) ? `${Math.round(a.confidence * 100)}%` : "95%";
    const label = report.label_agreement;
    return [
      section("Agreement with the shadow", when,
        h("p", { class: "big" }, num(`${id}-agreement`, a.rate, fmtRate(a.rate)),
          h("span", { class: "ci" }, ` ${conf} CI `, num(`${id}-agreement-low`, a.low, fmtRate(a.low)), " – ",
            num(`${id}-agreement-high`, a.high, fmtRate(a.high)))),
        h("p", { class: "muted" },
          num(`${id}-compared`, report.compared, fmtInt(report.compared)), " compared, ",
          num(`${id}-mirrored`, report.mirrored, fmtInt(report.mirrored)), " mirrored to ", h("code", null, route.shadow), ", ",
          num(`${id}-dropped`, dropped, fmtInt(dropped)), " dropped",
          label ? ["; labels agree ", num(`${id}-label-agreement`, label.rate, fmtRate(label.rate))] : null,
          (report.noise_fields || []).length ? `; noise fields: ${report.noise_fields.join(", ")}` : null),
        notCompared(report, id)),
      section("Latency: live vs shadow", latencyChart(report.latency_seconds || {}, id), latencyTable(report.latency_seconds || {}, id)),
      section("Error rates", errorTable(report.errors || {}, id)),
      ...(report.llm ? llmSections(report.llm, id) : []),
      section("Recent disagreements", diffList(route.name, detail.diffs, id)),
    ];
  }

  // Why mirrored pairs were not compared (an unreadable body, a compressed one beyond the cap, ...):
  // without it a comparison that silently stopped looks like a quiet shadow.
  function notCompared(report, id) {
    const reasons = [...Object.entries(report.extraction_error_reasons || {}),
      ...Object.entries(report.not_compared || {})].filter(([, n]) => n > 0);
    if (!reasons.length) return null;
    return h("p", { class: "muted", testid: `${id}-not-compared` }, "not compared: ",
      reasons.map(([reason, n], i) => [i ? ", " : "", h("code", null, reason), " ",
        num(`${id}-not-compared-${reason}`, n, `×${fmtInt(n)}`)]));
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
        h("p", { class: "muted" }, "mean output tokens: live ", num(`${id}-tokens-live`, tokens.live, fmtTokens(tokens.live)),
          ", shadow ", num(`${id}-tokens-shadow`, tokens.shadow, fmtTokens(tokens.shadow)))),
      section("Judge",
        h("p", { class: "big" }, num(`${id}-judge-win-rate`, j.win_rate, fmtRate(j.win_rate)),
          h("span", { class: "ci" }, " 95% CI ", num(`${id}-judge-low`, j.low, fmtRate(j.low)), " – ",
            num(`${id}-judge-high`, j.high, fmtRate(j.high)))),
        h("p", { class: "muted" }, `candidate wins ${fmtInt(j.win || 0)}, ties ${fmtInt(j.tie || 0)}, loses ${fmtInt(j.loss || 0)}`,
          failures.length ? `; not judged: ${failures.join(", ")}` : null)),
    ];
  }

  function fmtTokens(x) {
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
      h("td", null, num(`backend-${name}-${i}-busy`, e.busy, fmtInt(e.busy)), " busy / ",
        num(`backend-${name}-${i}-idle`, e.idle, fmtInt(e.idle)), " idle"),
      h("td", null, e.mirror ? [num(`backend-${name}-${i}-mirror-busy`, e.mirror.busy, fmtInt(e.mirror.busy)), " busy / ",
        num(`backend-${name}-${i}-mirror-idle`, e.mirror.idle, fmtInt(e.mirror.idle)), " idle"] : h("span", { class: "muted" }, "—")),
      h("td", null, String(e.consecutive_failures)))));
    return h("div", { class: "scroll" }, h("table", { class: "grid" },
      h("thead", null, h("tr", null, ["backend", "endpoint", "state", "live connections", "mirror connections", "failures in a row"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", null, rows)));
  }

  // ---- the last 15 minutes -------------------------------------------------------------------

  const SERIES = [["rate", "requests/s", fmtPerS], ["error_rate", "error rate", fmtRate],
    ["p50", "p50 latency", fmtLat], ["p99", "p99 latency", fmtLat]];

  function backendRole(route, name) {
    return name === route.primary ? "primary" : name === route.candidate ? "candidate" : "other";
  }

  function seriesSection(route, id) {
    const s = route.series;
    const names = s ? Object.keys(s.backends || {}) : [];
    if (!names.length) {
      return section("Last 15 minutes", h("p", { class: "muted", testid: `${id}-series-empty` }, "no requests in the last 15 minutes"));
    }
    const lines = Object.fromEntries(names.map((name) => [name, dense(s, s.backends[name].points || [])]));
    const charts = SERIES.map(([key, title, fmt]) => sparkChart(lines, names, route, key, title, fmt, id));
    return section("Last 15 minutes",
      h("div", { class: "sparks", testid: `${id}-series` }, charts),
      seriesLegend(s, names, route, id),
      h("p", { class: "muted note" }, `${s.bucket_s} s buckets; the last one is still filling. Latency quantiles are bucket estimates.`));
  }

  // The server sends only buckets that had requests, as [index, requests, errors, p50, p99].
  function dense(s, points) {
    const rate = new Array(s.slots).fill(0);
    const none = () => new Array(s.slots).fill(null);
    const out = { rate, error_rate: none(), p50: none(), p99: none() };
    for (const [i, n, errors, p50, p99] of points) {
      rate[i] = n / s.bucket_s;
      out.error_rate[i] = errors / n;
      out.p50[i] = p50;
      out.p99[i] = p99;
    }
    return out;
  }

  // One small line chart: a line per backend, gaps where a bucket had no requests.
  function sparkChart(lines, names, route, key, title, fmt, id) {
    const W = 180;
    const H = 48;
    const top = 12;
    const values = names.flatMap((n) => lines[n][key]).filter(isNum);
    const max = Math.max(...values, key === "error_rate" ? 0.01 : 1e-9);
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H + top + 10}`, class: "spark", role: "img",
      "aria-label": `${title} per backend over the last 15 minutes`, testid: `${id}-chart-${key}` },
    svg("title", null, `${title}, last 15 minutes`),
    svg("text", { x: 0, y: 9, class: "axis" }, `${title} · max ${fmt(max)}`),
    svg("line", { x1: 0, y1: top + H, x2: W, y2: top + H, class: "base" }),
    svg("text", { x: 0, y: top + H + 9, class: "axis" }, "−15 min"),
    svg("text", { x: W, y: top + H + 9, class: "axis end" }, "now"));
    for (const name of names) {
      const points = lines[name][key];
      const step = W / Math.max(1, points.length - 1);
      let d = "";
      let pen = false;
      points.forEach((v, i) => {
        if (!isNum(v)) {
          pen = false;
          return;
        }
        const x = (i * step).toFixed(1);
        const y = (top + H - (v / max) * H).toFixed(1);
        d += `${pen ? "L" : "M"}${x} ${y}`;
        pen = true;
      });
      const role = backendRole(route, name);
      chart.append(svg("path", { d: d || "M0 0", class: `line ${role}`, "data-backend": name,
        "data-points": points.filter(isNum).length }));
      // The latest value as a dot: a bucket alone draws no segment.
      const last = points.map((v, i) => [v, i]).filter(([v]) => isNum(v)).pop();
      if (last) {
        chart.append(svg("circle", { cx: (last[1] * step).toFixed(1), cy: (top + H - (last[0] / max) * H).toFixed(1), r: 2,
          class: `dot ${role}` }));
      }
    }
    return h("figure", { class: "spark-wrap" }, chart);
  }

  function seriesLegend(s, names, route, id) {
    const rows = names.map((name) => {
      const b = s.backends[name];
      const last = b.latest || {};
      const t = b.total || {};
      const p = `${id}-series-${name}`;
      return h("tr", null,
        h("th", { scope: "row" }, h("i", { class: `key ${backendRole(route, name)}`, "aria-hidden": "true" }), h("code", null, name)),
        h("td", null, num(`${p}-requests`, t.requests, fmtInt(t.requests))),
        h("td", null, num(`${p}-error-rate`, t.error_rate, fmtRate(t.error_rate))),
        h("td", null, num(`${p}-rate`, last.rate, fmtPerS(last.rate))),
        h("td", null, num(`${p}-p50`, last.p50, fmtLat(last.p50))),
        h("td", null, num(`${p}-p99`, last.p99, fmtLat(last.p99))),
        h("td", null, h("time", { class: "muted" }, fmtTime(last.time))));
    });
    return h("table", { class: "grid compact" },
      h("thead", null, h("tr", null, ["backend", "requests (15 min)", "error rate (15 min)", "rate", "p50", "p99", "latest bucket"]
        .map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", null, rows));
  }

  // ---- gate progress -------------------------------------------------------------------------

  const WAITING = {
    operator: "paused: waits for an operator to resume, restart or roll back",
    approval: "waits for an operator's approval; a failing gate still acts",
    evidence: "no configured gate applies to this step yet",
    interval: "every gate passes: advances when the interval has elapsed",
    samples: "collecting evidence: advances when every gate passes",
  };

  function gatesBlock(progress, id) {
    if (!progress) return null;
    if (progress.final) return h("p", { class: "muted", testid: `${id}-gates-final` }, "final: no more decisions");
    const t = progress.timing || {};
    const rows = (progress.gates || []).map((g) => gateRow(g, `${id}-gate-${g.gate}`));
    return h("div", { class: "gates", testid: `${id}-gates` },
      h("table", { class: "grid gate-table" },
        h("thead", null, h("tr", null, ["gate", "verdict", "samples", "estimate and interval vs threshold", "evidence"]
          .map((x) => h("th", { scope: "col" }, x)))),
        h("tbody", null, rows.length ? rows : h("tr", null, h("td", { colspan: 5, class: "muted" }, "no gate applies")))),
      h("p", { class: "muted" }, h("span", { testid: `${id}-waiting-for` }, WAITING[progress.waiting_for] || progress.waiting_for || ""),
        "; earliest advance ", num(`${id}-earliest-advance`, t.earliest_advance_at, fmtAgo(t.earliest_advance_at)),
        ", deadline ", num(`${id}-deadline`, t.deadline_at, fmtAgo(t.deadline_at)), ` (then ${t.on_timeout || "pause"})`));
  }

  function gateRow(g, p) {
    const samples = h("td", null,
      h("progress", { max: g.min_samples, value: Math.min(g.n, g.min_samples), "aria-label": "samples against min_samples" }), " ",
      num(`${p}-n`, g.n, fmtInt(g.n)), " / ", num(`${p}-min-samples`, g.min_samples, fmtInt(g.min_samples)),
      expectation(g, p));
    const interval = h("td", null, intervalBar(g),
      h("span", { class: "num-line" }, num(`${p}-estimate`, g.estimate, fmtNum(g.estimate)), " in [",
        num(`${p}-low`, g.low, fmtNum(g.low)), ", ", num(`${p}-high`, g.high, fmtNum(g.high)), "] vs ",
        num(`${p}-threshold`, g.threshold, fmtNum(g.threshold)), g.better === "higher" ? " (min)" : " (max)"));
    const evidence = g.sprt
      ? h("td", null, sprtBar(g.sprt), h("span", { class: "num-line" }, "log LR ", num(`${p}-llr`, g.sprt.llr, fmtNum(g.sprt.llr)),
        ` between ${fmtNum(g.sprt.fail_at)} (fail) and ${fmtNum(g.sprt.pass_at)} (pass)`))
      : h("td", null, h("span", { class: "num-line" }, "to pass ", num(`${p}-to-pass`, g.to_pass, fmtNum(g.to_pass)),
        ", to fail ", num(`${p}-to-fail`, g.to_fail, fmtNum(g.to_fail))));
    return h("tr", { testid: p },
      h("th", { scope: "row" }, phaseLabel(g.gate)),
      h("td", { class: g.verdict === "fail" ? "bad" : g.verdict === "pass" ? "ok" : "" }, h("span", { testid: `${p}-verdict` }, g.verdict)),
      samples, interval, evidence);
  }

  // The expected further samples before a verdict, when the router can estimate them.
  function expectation(g, p) {
    if (g.verdict_in_sight === false) return h("span", { class: "muted", testid: `${p}-expected-samples` }, " · no verdict in sight");
    if (!isNum(g.expected_samples)) return null;
    return h("span", { class: "muted" }, " · about ", num(`${p}-expected-samples`, g.expected_samples, fmtInt(Math.ceil(g.expected_samples))),
      " more", isNum(g.expected_seconds) ? ` (~${Math.ceil(g.expected_seconds)} s)` : "");
  }

  // The interval [low, high] on a line with the threshold marked; an open side runs to the edge.
  function intervalBar(g) {
    const W = 140;
    const known = [g.low, g.high, g.threshold, g.estimate].filter(isNum);
    let lo = Math.min(...known);
    let hi = Math.max(...known);
    const pad = (hi - lo) * 0.1 || Math.abs(hi) * 0.1 || 0.01;
    lo -= pad;
    hi += pad;
    const x = (v) => ((v - lo) / (hi - lo)) * W;
    const a = isNum(g.low) ? x(g.low) : 0;
    const b = isNum(g.high) ? x(g.high) : W;
    const bar = svg("svg", { viewBox: `0 0 ${W} 14`, class: "ibar", "aria-hidden": "true" },
      svg("line", { x1: 0, y1: 7, x2: W, y2: 7, class: "base" }),
      svg("rect", { x: a.toFixed(1), y: 3, width: Math.max(1, b - a).toFixed(1), height: 8, rx: 2, class: `interval ${g.verdict}` }),
      svg("line", { x1: x(g.threshold).toFixed(1), y1: 0, x2: x(g.threshold).toFixed(1), y2: 14, class: "threshold" }));
    if (isNum(g.estimate)) bar.append(svg("circle", { cx: x(g.estimate).toFixed(1), cy: 7, r: 2.5, class: "estimate" }));
    return bar;
  }

  // The SPRT's log-likelihood ratio between its fail bound (left) and pass bound (right).
  function sprtBar(sprt) {
    const W = 140;
    const span = sprt.pass_at - sprt.fail_at;
    const at = Math.min(1, Math.max(0, (sprt.llr - sprt.fail_at) / span)) * W;
    const zero = (-sprt.fail_at / span) * W;
    return svg("svg", { viewBox: `0 0 ${W} 14`, class: "ibar", "aria-hidden": "true" },
      svg("rect", { x: 0, y: 3, width: W, height: 8, rx: 2, class: "track" }),
      svg("line", { x1: zero.toFixed(1), y1: 1, x2: zero.toFixed(1), y2: 13, class: "base" }),
      svg("circle", { cx: at.toFixed(1), cy: 7, r: 4, class: "estimate" }));
  }

  // ---- start ---------------------------------------------------------------------------------

  // The server embeds the current figures in the page: draw them now, poll from then on.
  function renderInitial() {
    const el = document.getElementById("initial-state");
    if (!el) return false;
    try {
      const initial = JSON.parse(el.textContent);
      render(initial.status, initial.details, initial.alerts);
      recovered(initial.status.time);
      return true;
    } catch (err) {
      failed(err);
      return false;
    }
  }

  function applyFilter() {
    const needle = state.filter.trim().toLowerCase();
    for (const card of document.querySelectorAll("#routes article[data-route]")) {
      card.hidden = needle !== "" && !card.dataset.route.toLowerCase().includes(needle);
    }
    for (const link of document.querySelectorAll("#route-index a")) {
      link.parentElement.hidden = needle !== "" && !link.textContent.toLowerCase().includes(needle);
    }
  }

  function start() {
    const filter = document.getElementById("filter");
    filter.addEventListener("input", () => {
      state.filter = filter.value;
      applyFilter();
    });
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
    if (renderInitial()) schedule();
    else poll();
  }

  start();
})();
