// The canary dashboard: polls the analyzer's read API every two seconds and
// posts the rollout actions. Plain JavaScript with no dependency and no build
// step, so the analyzer can embed it and serve it offline. Text from the API
// is only ever set with textContent, never parsed as HTML.
"use strict";

const POLL_INTERVAL_MS = 2000;
const SPAN_MS = 15 * 60 * 1000;
const TOKEN_KEY = "canary-dashboard-token";
const SVG_NS = "http://www.w3.org/2000/svg";

const state = {
  rollout: null, // the last GET /v1/rollout answer
  samples: [], // GET /v1/series samples, oldest first
  lastSampleAt: null,
  pendingAction: null,
  polling: false,
};

const $ = (id) => document.getElementById(id);

// ---- API -------------------------------------------------------------------

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function headers(extra) {
  const result = Object.assign({}, extra);
  if (token()) result.Authorization = "Bearer " + token();
  return result;
}

/// Fetches JSON, turning an error status into an Error carrying the API's
/// own message ({"error": "..."}).
async function api(method, path, body) {
  const init = { method, headers: headers(body === undefined ? {} : { "content-type": "application/json", "x-canary-actor": "dashboard" }), cache: "no-store" };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch (_) {
    json = null;
  }
  if (!response.ok) {
    const message = json && json.error ? json.error : text || response.statusText;
    throw new Error(response.status + " " + message);
  }
  return json;
}

// ---- formatting --------------------------------------------------------------

function percent(fraction, digits) {
  if (fraction === null || fraction === undefined || !isFinite(fraction)) return "–";
  const value = fraction * 100;
  const places = digits !== undefined ? digits : value !== 0 && Math.abs(value) < 1 ? 2 : 1;
  return value.toFixed(places) + "%";
}

function weightText(weightPercent) {
  if (weightPercent === null || weightPercent === undefined) return "–";
  return (Number.isInteger(weightPercent) ? weightPercent.toFixed(0) : weightPercent.toFixed(2)) + "%";
}

function ms(value) {
  if (value === null || value === undefined || !isFinite(value)) return "–";
  if (value >= 1000) return (value / 1000).toFixed(2) + " s";
  return (value >= 100 ? value.toFixed(0) : value.toFixed(1)) + " ms";
}

function rate(value) {
  if (value === null || value === undefined || !isFinite(value)) return "–";
  return value >= 100 ? value.toFixed(0) : value.toFixed(1);
}

function duration(milliseconds) {
  const seconds = Math.max(0, Math.round(milliseconds / 1000));
  if (seconds < 60) return seconds + " s";
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return minutes + " min" + (seconds % 60 ? " " + (seconds % 60) + " s" : "");
  const hours = Math.floor(minutes / 60);
  return hours + " h" + (minutes % 60 ? " " + (minutes % 60) + " min" : "");
}

function clock(unixMs) {
  return new Date(unixMs).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function number(value) {
  if (value === null || value === undefined || !isFinite(value)) return "–";
  if (value >= 1e6) return value.toExponential(1);
  return value >= 100 ? value.toFixed(0) : value.toPrecision(3);
}

const PHASE_WORDS = {
  Progressing: "Progressing",
  Paused: "Paused",
  AwaitingApproval: "Awaiting approval",
  Promoted: "Promoted",
  RolledBack: "Rolled back",
  Failed: "Failed",
};

// ---- rendering: rollout ----------------------------------------------------------

function isTerminal(phase) {
  return phase === "Promoted" || phase === "RolledBack" || phase === "Failed";
}

/// "Next: increase to 25% in 30 min", from the current step and the next
/// weight.
function nextStepText(rollout) {
  const phase = rollout.phase;
  const next = rollout.next_weight_percent;
  const target = next !== null && next !== undefined ? "increase to " + weightText(next) : "promote to 100%";
  if (isTerminal(phase)) {
    const ended = rollout.ended_at_unix_ms ? " at " + clock(rollout.ended_at_unix_ms) : "";
    return "Done: " + PHASE_WORDS[phase].toLowerCase() + ended + ", canary at " + weightText(rollout.weight_percent);
  }
  if (rollout.gradual_rollback) {
    return "Rolling back gradually: 0% at " + clock(rollout.gradual_rollback.ends_at_unix_ms);
  }
  if (rollout.strategy === "manual") return "Manual rollout: the weight changes only when an operator sets it";
  if (phase === "Paused") return "Paused: resume to " + target;
  if (phase === "AwaitingApproval") return "Next: " + target + " after approval";
  const step = rollout.step;
  if (!step) return "Next: " + target;
  if (step.kind === "preChecks") {
    return "Next: switch to 100% once canary hosts are healthy" + (step.until_approved ? " and approved" : "");
  }
  if (step.kind === "pause" && step.until_approved) return "Next: " + target + " after approval";
  if (step.kind === "pause" && step.duration_ms !== null) {
    const remaining = step.duration_ms - rollout.step_elapsed_ms;
    if (remaining > 0) return "Next: " + target + " in " + duration(remaining);
    return "Next: " + target + " once the analysis passes";
  }
  return "Next: " + target;
}

function renderSteps(rollout) {
  const steps = $("steps");
  const count = rollout ? Math.max(rollout.step_count, 1) : 0;
  while (steps.childElementCount > count) steps.lastElementChild.remove();
  while (steps.childElementCount < count) {
    const segment = document.createElement("div");
    segment.className = "step";
    steps.appendChild(segment);
  }
  if (!rollout) {
    $("step-label").textContent = "–";
    return;
  }
  const failed = rollout.phase === "RolledBack" || rollout.phase === "Failed";
  const held = rollout.phase === "Paused" || rollout.phase === "AwaitingApproval";
  Array.from(steps.children).forEach((segment, index) => {
    const done = rollout.phase === "Promoted" || index < rollout.step_index;
    const current = !done && index === rollout.step_index;
    segment.className = "step" + (done ? " done" : "") + (current ? (failed ? " failed" : " current") : "") + (current && held ? " held" : "");
  });
  const shown = Math.min(rollout.step_index + 1, rollout.step_count);
  const step = rollout.step;
  let what = "";
  if (step && step.kind === "pause") what = step.until_approved ? ": pause until approved" : ": pause " + duration(step.duration_ms || 0);
  if (step && step.kind === "setWeight") what = ": set weight " + weightText(step.weight_percent);
  if (step && step.kind === "preChecks") what = ": pre-checks";
  $("step-label").textContent = rollout.step_count ? "Step " + shown + " of " + rollout.step_count + what : "No steps";
}

function renderActions(rollout, canaryPercent) {
  const phase = rollout ? rollout.phase : null;
  const active = rollout && !isTerminal(phase);
  const step = rollout && rollout.step;
  const enabled = {
    promote: active,
    pause: active && phase !== "Paused",
    resume: phase === "Paused",
    approve: active && (phase === "AwaitingApproval" || Boolean(step && step.until_approved)),
    // A rollback also works without an active rollout: it sets the canary
    // weight to 0.
    rollback: active || canaryPercent > 0,
  };
  for (const button of document.querySelectorAll("#actions button")) {
    button.disabled = state.pendingAction !== null || !enabled[button.dataset.action];
  }
}

function renderRollout(view) {
  const rollout = view.rollout;
  const canaryPercent = view.canary_weight_percent;
  if (rollout) {
    $("rollout-name").textContent = rollout.name;
    $("rollout-versions").textContent =
      "canary " + rollout.canary_version + (rollout.stable_version ? " vs stable " + rollout.stable_version : "") +
      " · " + rollout.strategy + " strategy · started " + clock(rollout.started_at_unix_ms);
    $("phase").textContent = PHASE_WORDS[rollout.phase] || rollout.phase;
    $("phase").className = "phase phase-" + rollout.phase;
    $("next-step").textContent = nextStepText(rollout);
    $("status").textContent = rollout.status;
  } else {
    $("rollout-name").textContent = "Canary rollout";
    $("rollout-versions").textContent = "No rollout has been started";
    $("phase").textContent = "No rollout";
    $("phase").className = "phase phase-none";
    $("next-step").textContent = "Start one with POST /v1/rollouts";
    $("status").textContent = "";
  }
  $("weight").textContent = weightText(canaryPercent);
  renderSteps(rollout);
  renderActions(rollout, canaryPercent);
  renderVersions(view);
  renderConvergence(view);
  renderDecisions(rollout);
}

function renderVersions(view) {
  const proxies = view.data_plane.live_proxies;
  const weights = { stable: 100 - view.canary_weight_percent, canary: view.canary_weight_percent };
  const windows = { stable: view.versions.stable.window, canary: view.versions.canary.window };
  const all = windows.stable.requests + windows.canary.requests;
  const names = { stable: "stable", canary: "canary" };
  if (view.rollout) {
    names.canary = "canary " + view.rollout.canary_version;
    if (view.rollout.stable_version) names.stable = "stable " + view.rollout.stable_version;
  }
  for (const version of ["stable", "canary"]) {
    const row = document.querySelector('#versions-body tr[data-version="' + version + '"]');
    const window = windows[version];
    row.querySelector(".name").textContent = names[version];
    // Every live proxy routes to a version while its weight is above 0.
    row.querySelector(".proxies").textContent = weights[version] > 0 ? String(proxies) : "0";
    row.querySelector(".share").textContent = all > 0 ? percent(window.requests / all) : "–";
    row.querySelector(".share").title = "weight " + weightText(weights[version]);
    row.querySelector(".rps").textContent = rate(window.requests_per_second);
    const errors = row.querySelector(".errors");
    errors.textContent = percent(window.error_ratio);
    errors.classList.toggle("bad", window.error_ratio !== null && window.error_ratio >= 0.01);
    row.querySelector(".p95").textContent = ms(window.p95_ms);
  }
}

function renderConvergence(view) {
  const plane = view.data_plane;
  const element = $("convergence");
  if (plane.live_workers === 0) {
    element.textContent = "No live workers reporting";
    element.className = "convergence pending";
    element.title = "";
  } else {
    element.textContent =
      plane.converged_workers + " of " + plane.live_workers + " workers on weights v" + view.weights_version +
      (plane.converged ? " ✓" : " (propagating)");
    element.className = "convergence " + (plane.converged ? "ok" : "pending");
    // The rollout document names the first lagging workers (oldest weights
    // first); GET /v1/workers lists them all.
    element.title = plane.lagging.length === 0 ? "" :
      plane.lagging_total + " lagging, e.g. " +
      plane.lagging.slice(0, 5).map((worker) => worker.proxy_id + " on v" + worker.applied_weights_version).join(", ") +
      (plane.lagging_total > 5 ? ", …" : "");
  }
  const hosts = view.rollout && view.rollout.canary_hosts;
  $("hosts").textContent = hosts ? "Canary hosts: " + hosts.healthy + " of " + hosts.total + " healthy" : "";
}

/// One line of the evidence a decision rests on, e.g. "canary error rate
/// 4.8% vs stable 0.1%, e-value 412 ≥ 100".
function evidenceText(assessment) {
  if (!assessment || !assessment.evidence) return "";
  const evidence = assessment.evidence;
  const parts = [];
  if (evidence.canary && evidence.stable) {
    parts.push("canary error rate " + percent(evidence.canary.error_rate) + " vs stable " + percent(evidence.stable.error_rate));
  }
  const test = evidence.error_test;
  if (test) {
    const crossed = test.e_value >= test.threshold;
    parts.push("e-value " + number(test.e_value) + (crossed ? " ≥ " : " < ") + number(test.threshold));
  }
  if (evidence.canary && evidence.canary.p95_ms !== null && evidence.stable && evidence.stable.p95_ms !== null) {
    parts.push("p95 " + ms(evidence.canary.p95_ms) + " vs " + ms(evidence.stable.p95_ms));
  }
  if (evidence.canary) parts.push(evidence.canary.requests + " canary requests");
  return parts.join(", ");
}

/// The "Evidence: …" line under a decision, or null when it has none.
function evidenceElement(decision, tagName) {
  const evidence = evidenceText(decision.evidence);
  if (!evidence) return null;
  const detail = document.createElement(tagName);
  detail.className = "evidence";
  detail.textContent = "Evidence: " + evidence;
  return detail;
}

function renderLatestDecision(rollout) {
  const element = $("latest-decision");
  const decision = rollout && rollout.decisions.length ? rollout.decisions[rollout.decisions.length - 1] : null;
  element.replaceChildren();
  if (!decision) {
    element.textContent = "–";
    return;
  }
  element.append(clock(decision.at_unix_ms) + " · " + decision.action.replace(/_/g, " ") + " by " + decision.actor + ": " + decision.reason);
  const detail = evidenceElement(decision, "span");
  if (detail) element.appendChild(detail);
}

function renderDecisions(rollout) {
  renderLatestDecision(rollout);
  const list = $("decisions");
  const decisions = rollout ? rollout.decisions.slice().reverse() : [];
  $("decisions-count").textContent = rollout ? "(" + rollout.decisions_total + ")" : "";
  const key = decisions.map((decision) => decision.at_unix_ms + decision.action).join("|");
  if (list.dataset.key === key) return;
  list.dataset.key = key;
  list.replaceChildren();
  for (const decision of decisions) {
    const item = document.createElement("li");
    const line = document.createElement("div");
    const when = document.createElement("span");
    when.className = "when";
    when.textContent = clock(decision.at_unix_ms);
    const action = document.createElement("span");
    action.className = "action " + decision.action;
    action.textContent = decision.action.replace(/_/g, " ");
    const actor = document.createElement("span");
    actor.className = "actor";
    actor.textContent = "by " + decision.actor + " · " + weightText(decision.weight_percent) + " · ";
    const reason = document.createElement("span");
    reason.className = "reason";
    reason.textContent = decision.reason;
    line.append(when, action, actor, reason);
    item.appendChild(line);
    const detail = evidenceElement(decision, "div");
    if (detail) item.appendChild(detail);
    list.appendChild(item);
  }
  if (!decisions.length) {
    const item = document.createElement("li");
    item.className = "muted";
    item.textContent = "No decisions yet";
    list.appendChild(item);
  }
}

// ---- rendering: charts -----------------------------------------------------------

const CHARTS = [
  { id: "chart-weight", pick: (version) => version.weight_percent, format: weightText, fixedMax: 100 },
  { id: "chart-rps", pick: (version) => version.requests_per_second, format: rate },
  { id: "chart-errors", pick: (version) => version.error_ratio, format: (value) => percent(value) },
  { id: "chart-p95", pick: (version) => version.p95_ms, format: ms },
];

function svg(name, attributes) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  return element;
}

/// Draws one chart as an SVG sized in the plot box's own pixels, so that
/// text and lines keep their proportions at any screen size; lines break
/// where a sample has no value.
function drawChart(chart, samples, now) {
  const figure = $(chart.id);
  const box = figure.querySelector(".plot");
  const width = Math.max(160, box.clientWidth);
  const height = Math.max(80, box.clientHeight);
  const rem = parseFloat(getComputedStyle(document.documentElement).fontSize) || 16;
  const left = Math.round(rem * 4.4);
  const right = Math.round(rem * 0.8);
  const top = Math.round(rem * 0.7);
  const bottom = Math.round(rem * 1.4);
  const plotWidth = width - left - right;
  const plotHeight = height - top - bottom;
  const image = svg("svg", { viewBox: "0 0 " + width + " " + height, role: "img", "aria-label": chart.id.replace("chart-", "") + " chart" });
  const values = [];
  for (const sample of samples) {
    for (const version of ["stable", "canary"]) {
      const value = chart.pick(sample[version]);
      if (value !== null && value !== undefined && isFinite(value)) values.push(value);
    }
  }
  const niceMax = (value) => {
    if (value <= 0) return 1;
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
    return 10 * power;
  };
  const max = chart.fixedMax || niceMax(values.length ? Math.max(...values) : 0);
  const x = (at) => left + plotWidth * (1 - (now - at) / SPAN_MS);
  const y = (value) => top + plotHeight * (1 - value / max);
  for (const fraction of [0, 0.5, 1]) {
    image.appendChild(svg("line", { class: "grid-line", x1: left, x2: width - right, y1: y(max * fraction), y2: y(max * fraction) }));
    const label = svg("text", { class: "axis-label", x: left - rem * 0.3, y: y(max * fraction), "text-anchor": "end", "dominant-baseline": "middle" });
    label.textContent = chart.format(max * fraction);
    image.appendChild(label);
  }
  for (const [minutesAgo, anchor] of [[15, "start"], [10, "middle"], [5, "middle"], [0, "end"]]) {
    const label = svg("text", { class: "axis-label", x: x(now - minutesAgo * 60000), y: height - rem * 0.35, "text-anchor": anchor });
    label.textContent = minutesAgo ? "−" + minutesAgo + " min" : "now";
    image.appendChild(label);
  }
  if (!values.length) {
    const empty = svg("text", { class: "empty", x: left + plotWidth / 2, y: top + plotHeight / 2, "text-anchor": "middle" });
    empty.textContent = samples.length ? "no requests yet" : "collecting samples…";
    image.appendChild(empty);
  }
  for (const version of ["stable", "canary"]) {
    let path = "";
    let pen = "M";
    let lastPoint = null;
    for (const sample of samples) {
      const value = chart.pick(sample[version]);
      if (value === null || value === undefined || !isFinite(value)) {
        pen = "M";
        continue;
      }
      lastPoint = [x(sample.at_unix_ms), y(Math.min(value, max))];
      path += pen + lastPoint[0].toFixed(1) + " " + lastPoint[1].toFixed(1) + " ";
      pen = "L";
    }
    if (path) image.appendChild(svg("path", { class: "line " + version, d: path }));
    // The newest point stands out, and shows before there is a line.
    if (lastPoint) image.appendChild(svg("circle", { class: "dot " + version, cx: lastPoint[0], cy: lastPoint[1], r: rem * 0.25 }));
  }
  box.replaceChildren(image);
  const last = samples.length ? samples[samples.length - 1] : null;
  figure.querySelector(".value").textContent = last
    ? chart.format(chart.pick(last.stable)) + " / " + chart.format(chart.pick(last.canary))
    : "";
}

function renderCharts() {
  const now = state.samples.length ? Math.max(Date.now(), state.samples[state.samples.length - 1].at_unix_ms) : Date.now();
  state.samples = state.samples.filter((sample) => sample.at_unix_ms >= now - SPAN_MS);
  for (const chart of CHARTS) drawChart(chart, state.samples, now);
}

// ---- polling ---------------------------------------------------------------------

function setConnection(text, isError) {
  const element = $("connection");
  element.textContent = text;
  element.classList.toggle("error", Boolean(isError));
}

async function poll() {
  if (state.polling) return;
  state.polling = true;
  try {
    const query = state.lastSampleAt === null ? "" : "?after_unix_ms=" + state.lastSampleAt;
    const [view, series] = await Promise.all([api("GET", "/v1/rollout"), api("GET", "/v1/series" + query)]);
    state.rollout = view;
    for (const sample of series.samples) state.samples.push(sample);
    if (series.samples.length) state.lastSampleAt = series.samples[series.samples.length - 1].at_unix_ms;
    renderRollout(view);
    renderCharts();
    setConnection("Updated " + clock(Date.now()), false);
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  } catch (error) {
    setConnection("Cannot read the API: " + error.message, true);
  } finally {
    state.polling = false;
  }
}

// ---- actions ---------------------------------------------------------------------

const ACTION_WORDS = {
  promote: "Promote the canary to the next step now, skipping the rest of the current one?",
  pause: "Pause the rollout? The weights stay where they are; the analysis keeps running.",
  resume: "Resume the rollout from where it was paused?",
  approve: "Approve the rollout so that it can move on?",
  rollback: "Roll back? The canary's weight goes to 0% on every proxy at once.",
};

function askConfirmation(action) {
  state.pendingAction = action;
  $("confirm-title").textContent = action === "rollback" ? "Roll back the canary" : action[0].toUpperCase() + action.slice(1) + " the rollout";
  $("confirm-text").textContent = ACTION_WORDS[action];
  $("confirm-reason").value = "";
  $("confirm-ok").textContent = action === "rollback" ? "Roll back" : action[0].toUpperCase() + action.slice(1);
  $("confirm").hidden = false;
  $("confirm-cancel").focus();
}

function closeConfirmation() {
  $("confirm").hidden = true;
  state.pendingAction = null;
  if (state.rollout) renderActions(state.rollout.rollout, state.rollout.canary_weight_percent);
}

async function confirmAction() {
  const action = state.pendingAction;
  if (!action) return;
  const reason = $("confirm-reason").value.trim();
  $("confirm").hidden = true;
  const result = $("action-result");
  result.className = "action-result";
  result.textContent = action + "…";
  try {
    await api("POST", "/v1/rollout/" + action, reason ? { reason } : {});
    result.textContent = action + ": done";
    result.className = "action-result ok";
  } catch (error) {
    result.textContent = action + " refused: " + error.message;
    result.className = "action-result error";
  } finally {
    state.pendingAction = null;
  }
  await poll();
}

// ---- start -----------------------------------------------------------------------

function start() {
  $("token-input").value = token();
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token-input").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
    poll();
  });
  for (const button of document.querySelectorAll("#actions button")) {
    button.addEventListener("click", () => askConfirmation(button.dataset.action));
  }
  $("confirm-cancel").addEventListener("click", closeConfirmation);
  $("confirm-ok").addEventListener("click", confirmAction);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !$("confirm").hidden) closeConfirmation();
  });
  // Charts are drawn in pixels: redraw them when the window changes size.
  window.addEventListener("resize", renderCharts);
  poll();
  setInterval(poll, POLL_INTERVAL_MS);
}

start();
