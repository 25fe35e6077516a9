// The driftloop view: reads api/overview (this plugin's app) and acts through Airflow's REST API
// with the signed-in user's own session cookie, so Airflow decides what the user's role may do.
// Everything from the server is put in the page as text (textContent), never as markup.
"use strict";

const API_ROOT = document.body.dataset.apiRoot || "";
const SVG = "http://www.w3.org/2000/svg";
// Airflow frames the view in a sandbox without popups or top navigation: links then open in the frame
const FRAMED = window.self !== window.top;
const NEW_TAB = FRAMED ? {} : { target: "_blank", rel: "noopener" };
let current = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

function fmt(value, digits = 3) {
  if (value === null || value === undefined) return "—";
  return typeof value === "number" ? String(Number(value.toFixed(digits))) : String(value);
}

function badge(text, kind) {
  return el("span", { class: `badge ${kind || text}`, text });
}

function kv(pairs) {
  const dl = el("dl", { class: "kv" });
  for (const [key, value] of pairs) {
    if (value === null || value === undefined || value === "") continue;
    dl.append(el("dt", { text: key }), el("dd", {}, value));
  }
  return dl;
}

function fill(id, ...nodes) {
  const body = document.querySelector(`#${id} .body`);
  body.replaceChildren(...nodes);
}

function runLink(version) {
  if (!version.run_id) return null;
  if (version.run_url) return el("a", { href: version.run_url, ...NEW_TAB, text: version.run_id });
  return el("code", { title: "local MLflow store: no UI to link to", text: version.run_id });
}

function renderVersion(id, version) {
  if (!version) {
    fill(id, el("p", { class: "muted", text: id === "champion" ? "no champion yet" : "no challenger" }));
    return;
  }
  const lineage = Object.entries(version.lineage || {});
  fill(
    id,
    el("div", {}, el("span", { class: "version", "data-testid": `${id}-version`, text: `v${version.version}` }), " ",
      version.status ? badge(version.status, "") : null),
    kv([
      ["MLflow run", runLink(version)],
      ["registered", when(version.created_at)],
      ...lineage.map(([k, v]) => [k, v]),
    ]),
  );
}

function renderRollout(r) {
  if (!r) {
    fill("rollout", el("p", { class: "muted", text: "no rollout yet" }));
    return;
  }
  const ladder = el("div", { class: "ladder" });
  r.steps.forEach((weight, i) => {
    const state = r.phase === "promoted" || i < r.step ? "done" : i === r.step && r.active && r.phase !== "started" ? "current" : "";
    ladder.append(el("span", { class: state, text: `${weight}%` }));
  });
  // widths through the CSSOM: the page's CSP allows no inline style attributes
  const stable = el("div", { class: "stable", text: `stable v${r.stable_version ?? "?"} ${r.stable_weight}%` });
  const canary = el("div", { class: "canary", text: `canary v${r.version} ${r.canary_weight}%` });
  stable.style.width = `${r.stable_weight}%`;
  canary.style.width = `${r.canary_weight}%`;
  const weights = el("div", { class: "weights", "data-testid": "weights" }, stable, canary);
  const analysis = r.last_analysis;
  const analysisNode = analysis
    ? el("div", {},
        badge(analysis.outcome || "?", analysis.outcome), " ",
        `step ${analysis.step + 1}, window ${analysis.window ?? "?"} at ${when(analysis.at)}`,
        analysis.reasons && analysis.reasons.length ? el("div", { class: "muted", text: analysis.reasons.join("; ") }) : null,
        kv(Object.entries(analysis.metrics || {}).map(([k, v]) => [k, fmt(v)])))
    : el("span", { class: "muted", text: "no analysis yet" });
  const rows = r.transitions.slice().reverse().map((t) =>
    el("tr", {}, el("td", { text: when(t.at) }), el("td", {}, badge(t.phase)), el("td", { text: `${t.weight}%` }),
      el("td", { text: t.actor }), el("td", { text: t.reason || "" })));
  fill(
    "rollout",
    el("div", {},
      badge(r.phase), " ",
      el("strong", { "data-testid": "rollout-step", text: `step ${Math.min(r.step + 1, r.steps.length)} of ${r.steps.length}` }),
      ` · canary v${r.version} against stable v${r.stable_version ?? "?"}`,
      r.pending_command ? el("span", { class: "muted", text: ` · ${r.pending_command.replace("_", " ")}` }) : null),
    ladder,
    weights,
    el("h3", { class: "small", text: "Last analysis" }),
    analysisNode,
    el("details", {}, el("summary", { text: `Transitions of ${r.rollout_id}` }),
      el("table", {}, el("thead", {}, el("tr", {}, ...["at", "phase", "canary", "actor", "reason"].map((h) => el("th", { text: h })))),
        el("tbody", {}, ...rows))),
  );
}

function driftChart(points, width) {
  // drawn at the card's pixel width, so text and dots keep their size on any screen
  const W = Math.max(480, Math.round(width)), H = 240, L = 44, R = 12, T = 12, B = 34;
  const chart = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "drift history", "data-testid": "drift-chart" });
  const times = points.map((p) => new Date(p.window_end).getTime());
  const t0 = Math.min(...times), t1 = Math.max(...times);
  const yMax = Math.max(1, ...points.map((p) => p.share ?? 0), ...points.map((p) => p.threshold ?? 0));
  const x = (t) => (t1 === t0 ? L + (W - L - R) / 2 : L + ((t - t0) / (t1 - t0)) * (W - L - R));
  const y = (v) => T + (1 - v / yMax) * (H - T - B);
  chart.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
  chart.append(svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
  for (const v of [0, yMax / 2, yMax]) {
    chart.append(svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, fmt(v, 2)));
  }
  chart.append(svg("text", { x: L, y: H - 10 }, when(points[0].window_end).slice(0, 16)));
  chart.append(svg("text", { x: W - R, y: H - 10, "text-anchor": "end" }, when(points[points.length - 1].window_end).slice(0, 16)));
  const threshold = points[points.length - 1].threshold;
  if (threshold !== null && threshold !== undefined) {
    chart.append(svg("line", { class: "threshold", x1: L, y1: y(threshold), x2: W - R, y2: y(threshold) }));
    chart.append(svg("text", { x: W - R, y: y(threshold) - 4, "text-anchor": "end" }, `threshold ${fmt(threshold, 2)}`));
  }
  const withShare = points.filter((p) => p.share !== null && p.share !== undefined);
  if (withShare.length > 1) {
    chart.append(svg("polyline", { class: "line", points: withShare.map((p) => `${x(new Date(p.window_end).getTime())},${y(p.share)}`).join(" ") }));
  }
  const withScore = points.filter((p) => p.score_value !== null && p.score_value !== undefined);
  if (withScore.length > 1) {
    chart.append(svg("polyline", { class: "score", points: withScore.map((p) => `${x(new Date(p.window_end).getTime())},${y(Math.min(p.score_value, yMax))}`).join(" ") }));
  }
  for (const p of points) {
    const kind = p.drifted === true ? "drifted" : p.drifted === false ? "clean" : "none";
    const dot = svg("circle", { class: `point ${kind}`, cx: x(new Date(p.window_end).getTime()), cy: y(p.share ?? 0), r: 4, "data-testid": "drift-point" });
    dot.append(svg("title", {}, `${when(p.window_end)} · v${p.model_version} · share ${fmt(p.share)} · ${p.status}` +
      (p.drifted_features.length ? ` · drifted: ${p.drifted_features.join(", ")}` : "")));
    chart.append(dot);
  }
  return chart;
}

function renderDrift(points) {
  if (!points.length) {
    fill("drift", el("p", { class: "muted", text: "no monitored windows yet" }));
    return;
  }
  const recent = points.slice(-8).reverse().map((p) => {
    let report = el("span", { class: "muted", text: "—" });
    if (p.report_path) {
      report = el("a", { href: `reports/${p.report_path.split("/").map(encodeURIComponent).join("/")}`, ...NEW_TAB, text: "Evidently report" });
    } else if (p.report_uri) {
      report = el("code", { text: p.report_uri });
    }
    return el("tr", {},
      el("td", { text: when(p.window_end) }), el("td", { text: `v${p.model_version}` }),
      el("td", {}, badge(p.drifted === true ? "drift" : p.drifted === false ? "ok" : p.status, p.drifted === true ? "bad" : p.drifted === false ? "ok" : "")),
      el("td", { text: fmt(p.share) }), el("td", { text: p.score_value === null ? "—" : `${p.score_method} ${fmt(p.score_value)}` }),
      el("td", { text: p.drifted_features.join(", ") || "—" }), el("td", { text: String(p.rows) }), el("td", {}, report));
  });
  fill(
    "drift",
    driftChart(points, document.querySelector("#drift .body").clientWidth),
    el("p", { class: "muted small", text: `${points.length} windows · solid: share of drifted features (red dot: drift) · dashed: drift of the model's scores` }),
    el("table", {}, el("thead", {}, el("tr", {}, ...["window end", "version", "verdict", "share", "score drift", "drifted features", "rows", "report"].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...recent)),
  );
}

function renderFeedback(f) {
  if (!f.available) {
    fill("feedback", el("p", { class: "muted", "data-testid": "feedback-empty", text: f.note || "no feedback yet" }));
    return;
  }
  const counts = el("div", { class: "counts" });
  for (const [kind, n] of Object.entries(f.counts)) {
    counts.append(el("div", { "data-testid": `feedback-${kind}` }, el("strong", { text: fmt(n) }), kind.replaceAll("_", " ")));
  }
  fill("feedback", counts, el("p", { class: "muted small", text: `since ${when(f.since)}` }));
}

function renderAliases(moves) {
  if (!moves.length) {
    fill("aliases", el("p", { class: "muted", text: "no alias moves recorded" }));
    return;
  }
  const rows = moves.map((m) => el("tr", {},
    el("td", { text: when(m.moved_at) }), el("td", {}, badge(m.alias, "")),
    el("td", { text: m.version ? `v${m.version}` : "removed" }), el("td", { text: m.previous_version ? `v${m.previous_version}` : "—" }),
    el("td", { text: m.actor }), el("td", { text: m.reason })));
  fill("aliases", el("table", {},
    el("thead", {}, el("tr", {}, ...["moved", "alias", "to", "from", "by", "why"].map((h) => el("th", { text: h })))),
    el("tbody", {}, ...rows)));
}

function setButtons(data) {
  const can = data.user.can;
  const challenger = data.versions.challenger;
  const rollout = data.rollout;
  for (const button of document.querySelectorAll("button[data-action]")) {
    const action = button.dataset.action;
    let why = null;
    if (!can[action]) why = `your role cannot trigger ${data.dags[action]}`;
    else if (action === "review" && !challenger) why = "no challenger to review";
    else if (action === "control" && !(rollout && rollout.active)) why = "no rollout under way";
    button.disabled = why !== null;
    button.title = why || `trigger ${data.dags[action]}`;
  }
}

function notice(message, isError) {
  const node = document.getElementById("notice");
  node.replaceChildren(...(Array.isArray(message) ? message : [message]));
  node.classList.toggle("error", Boolean(isError));
  node.hidden = false;
}

async function load() {
  const response = await fetch("api/overview", { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (response.status === 401 || response.status === 403) {
    window.location.reload(); // the page itself sends a signed-out user to the login page
    return;
  }
  if (!response.ok) throw new Error(`overview: HTTP ${response.status}`);
  const data = await response.json();
  current = data;
  document.getElementById("model").textContent = data.model;
  document.getElementById("user").textContent = data.user.name;
  document.getElementById("updated").textContent = `updated ${when(data.generated_at)}`;
  const problems = document.getElementById("problems");
  problems.textContent = data.problems.length ? `Could not read: ${data.problems.join(" · ")}` : "";
  problems.hidden = !data.problems.length;
  renderVersion("champion", data.versions.champion);
  renderVersion("challenger", data.versions.challenger);
  renderRollout(data.rollout);
  renderDrift(data.drift);
  renderFeedback(data.feedback);
  renderAliases(data.alias_history);
  setButtons(data);
  document.body.dataset.loaded = "true";
}

// POST /api/v2/dags/{dag}/dagRuns as the signed-in user (the session cookie goes along)
async function trigger(dagId, conf) {
  const response = await fetch(`${API_ROOT}/api/v2/dags/${encodeURIComponent(dagId)}/dagRuns`, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify({ logical_date: null, conf }),
  });
  let body = null;
  try { body = await response.json(); } catch (_) { /* empty or not JSON */ }
  return { status: response.status, body };
}

function confFor(button, reason) {
  const action = button.dataset.action;
  if (action === "retrain") return { reason };
  if (action === "review") return { version: current.versions.challenger.version, decision: button.dataset.decision, reason };
  return { action: button.dataset.control, reason };
}

async function act(button) {
  const action = button.dataset.action;
  const input = document.getElementById(`${action}-reason`);
  const reason = input.value.trim();
  if (reason.length < 3) {
    notice("Give a reason of at least 3 characters: it is recorded with the run.", true);
    input.focus();
    return;
  }
  const dagId = current.dags[action];
  button.disabled = true;
  try {
    const { status, body } = await trigger(dagId, confFor(button, reason));
    if (status === 200 || status === 201) {
      const href = `${API_ROOT}/dags/${encodeURIComponent(dagId)}/runs/${encodeURIComponent(body.dag_run_id)}`;
      notice([`${dagId} run created: `, el("a", { href, ...NEW_TAB, "data-testid": "run-link", text: body.dag_run_id })]);
      input.value = "";
    } else if (status === 403) {
      notice(`Airflow refused: your role may not trigger ${dagId} (HTTP 403).`, true);
    } else {
      const detail = body && body.detail ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)) : "";
      notice(`Airflow refused ${dagId} (HTTP ${status}) ${detail}`, true);
    }
  } catch (error) {
    notice(`Could not reach Airflow: ${error}`, true);
  } finally {
    setButtons(current);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button[data-action]")) {
    button.disabled = true; // until the user's permissions are known
    button.addEventListener("click", () => act(button));
  }
  document.getElementById("refresh").addEventListener("click", () => load().catch((e) => notice(String(e), true)));
  load().catch((error) => notice(`Could not load the overview: ${error}`, true));
  setInterval(() => load().catch(() => {}), 30000);
});
