"use strict";
// Opens with the last 15 minutes of chart points from /stats?history=1, then polls /stats every
// second for the newest point. The frontends compute the points (rates and percentiles over the
// last 10 s of their once-a-second samples); every frontend samples the whole service, so
// whichever one nginx picks answers alike. A point no newer than the last one charted (another
// frontend sampled a moment earlier) is skipped.

const POLL_MS = 1000;
// A longer silence (a hidden tab, the service unreachable) is filled from the history again.
const REFILL_AFTER_S = 5;
const GIB = 1024 ** 3;

const charts = {
  throughput: chart("throughput", [["total", "in + out"], ["input", "input"], ["output", "output"]]),
  requests: chart("requests", [["ended", "ended"], ["failed", "failed"], ["aborted", "aborted"]]),
  load: chart("load", [["running", "running"], ["waiting", "waiting"], ["in_flight", "in flight"]]),
  ttft: chart("ttft", [["p50", "p50"], ["p90", "p90"], ["p99", "p99"]]),
  tpot: chart("tpot", [["p50", "p50"], ["p90", "p90"], ["p99", "p99"]]),
  kv: null, // one series per engine, made once the engines are known
  gpuUtilization: null, // one series per GPU, likewise
  gpuMemory: null,
};
let lastTime = 0;

function chart(name, series, options) {
  const figure = document.querySelector(`[data-chart="${name}"]`);
  return new LineChart(figure, series.map(([key, label]) => ({ key, label })), options);
}

function setText(id, text) {
  document.getElementById(id).textContent = text;
}

function sum(...values) {
  return values.some((value) => value === null) ? null : values.reduce((total, value) => total + value, 0);
}

function percent(ratio) {
  return ratio === null || ratio === undefined ? null : ratio * 100;
}

// Charts whose series depend on the service: one KV cache line per engine, one line per GPU.
function makeServiceCharts(stats) {
  if (!charts.kv) {
    const several = stats.engines.length > 1;
    const series = stats.engines.map((engine, index) => [
      `engine${index}`, several ? engineName(engine, stats.engines) : "in use",
    ]);
    charts.kv = chart("kv", series, { max: 100 });
  }
  const none = stats.gpus.length === 0;
  for (const name of ["gpu-utilization", "gpu-memory"]) {
    const figure = document.querySelector(`[data-chart="${name}"]`);
    figure.classList.toggle("empty", none);
    figure.querySelector(".no-gpu").hidden = !none;
  }
  if (!none && !charts.gpuUtilization) {
    const series = stats.gpus.map((gpu) => [`gpu${gpu.index}`, `GPU ${gpu.index}`]);
    const totalGib = Math.max(...stats.gpus.map((gpu) => gpu.memory_total_bytes)) / GIB;
    charts.gpuUtilization = chart("gpu-utilization", series, { max: 100 });
    charts.gpuMemory = chart("gpu-memory", series, { max: Math.ceil(totalGib) });
  }
}

// Each chart's values for one point, in its series' order.
function chartValues(point) {
  return {
    throughput: [sum(point.tokens_in, point.tokens_out), point.tokens_in, point.tokens_out],
    requests: [point.ended, point.failed, point.aborted],
    load: [point.running, point.waiting, point.in_flight],
    ttft: point.ttft_ms,
    tpot: point.tpot_ms,
    kv: point.kv_cache_usage.map(percent),
    gpuUtilization: point.gpu_utilization.map(percent),
    gpuMemory: point.gpu_memory_used_bytes.map((bytes) => bytes / GIB),
  };
}

function addPoint(point) {
  const values = chartValues(point);
  for (const [name, entry] of Object.entries(charts)) {
    if (entry) entry.add(point.time, values[name]);
  }
  lastTime = point.time;
}

function drawAll() {
  Object.values(charts).forEach((entry) => entry && entry.draw());
}

function showTiles(stats) {
  const point = stats.point;
  if (point) {
    const kv = point.kv_cache_usage.filter((ratio) => ratio !== null);
    setText("tile-tokens", formatNumber(sum(point.tokens_in, point.tokens_out)));
    setText("tile-requests", formatNumber(point.ended));
    setText("tile-running", `${formatNumber(point.running)} / ${formatNumber(point.waiting)}`);
    setText("tile-kv", kv.length ? `${formatNumber(Math.max(...kv) * 100)} %` : "–");
    setText("tile-ttft", point.ttft_ms[0] === null ? "–" : `${formatNumber(point.ttft_ms[0])} ms`);
    setText("tile-tpot", point.tpot_ms[0] === null ? "–" : `${formatNumber(point.tpot_ms[0])} ms`);
  }
  const { requests } = stats;
  setText("tile-in-flight", `${requests.in_flight} / ${requests.queued}`);
  setText("tile-outcomes", `${requests.finished} / ${requests.aborted} / ${requests.failed}`);
}

// What an engine is called: its rank, after its model's name when the service serves several models.
function engineName(engine, engines) {
  const several = new Set(engines.map((each) => each.model)).size > 1;
  return several ? `${engine.model} engine ${engine.rank}` : `engine ${engine.rank}`;
}

// One badge per engine: starting, up, down or restarting.
function showEngines(engines) {
  const badges = document.getElementById("engines");
  badges.replaceChildren(...engines.map((engine) => {
    const badge = document.createElement("span");
    badge.className = `pill ${engine.state}`;
    badge.dataset.model = engine.model;
    badge.dataset.rank = String(engine.rank);
    badge.dataset.state = engine.state;
    badge.textContent = engines.length > 1 ? `${engineName(engine, engines)} ${engine.state}` : `engine ${engine.state}`;
    const program = engine.program ? `supervisord: ${engine.program}` : "no supervisord program";
    badge.title = `${program}${engine.engine_id ? `, engine id ${engine.engine_id}` : ""}`;
    return badge;
  }));
}

function formatCount(value) {
  return Math.round(value).toLocaleString("en-US");
}

// "used / quota", or what was used alone when the tenant has no such quota.
function against(used, quota) {
  return quota ? `${formatCount(used)} / ${formatCount(quota)}` : formatCount(used);
}

// One row per tenant, its cells in the header's order.
function showTenants(tenants) {
  document.querySelector("#tenants tbody").replaceChildren(...tenants.map((tenant) => {
    const row = document.createElement("tr");
    row.dataset.tenant = tenant.name;
    const { minute, quota } = tenant;
    const cells = [
      tenant.name,
      against(minute.requests, quota.requests_per_minute),
      against(minute.tokens, quota.tokens_per_minute),
      `${formatCount(minute.prompt_tokens)} / ${formatCount(minute.cached_tokens)} / ${formatCount(minute.output_tokens)}`,
      formatCount(tenant.requests),
      formatCount(tenant.rate_limited),
      formatCount(tenant.timeouts),
      formatCount(tenant.in_flight),
      tenant.ttft_p50_ms === null ? "–" : `${formatNumber(tenant.ttft_p50_ms)} ms`,
    ];
    row.replaceChildren(...cells.map((text) => {
      const cell = document.createElement("td");
      cell.textContent = text;
      return cell;
    }));
    return row;
  }));
}

function show(stats) {
  showEngines(stats.engines);
  showTenants(stats.tenants);
  setText("model", stats.model || "");
  setText("updated", `updated ${new Date(stats.time * 1000).toLocaleTimeString()}`);
  showTiles(stats);
}

function showUnreachable() {
  const badge = document.createElement("span");
  badge.className = "pill down";
  badge.textContent = "service unreachable";
  document.getElementById("engines").replaceChildren(badge);
}

async function fetchStats(withHistory) {
  const response = await fetch(withHistory ? "/stats?history=1" : "/stats", { cache: "no-store" });
  if (!response.ok) throw new Error(`/stats answered ${response.status}`);
  return response.json();
}

async function fill() {
  const stats = await fetchStats(true);
  makeServiceCharts(stats);
  Object.values(charts).forEach((entry) => entry && entry.clear());
  stats.history.forEach(addPoint);
  drawAll();
  show(stats);
}

async function poll() {
  try {
    if (!lastTime) {
      await fill();
      return;
    }
    const stats = await fetchStats(false);
    const point = stats.point;
    if (point && point.time - lastTime > REFILL_AFTER_S) {
      await fill();
      return;
    }
    if (point && point.time > lastTime) {
      addPoint(point);
      drawAll();
    }
    show(stats);
  } catch (error) {
    showUnreachable();
  }
}

async function pollForever() {
  await poll();
  setTimeout(pollForever, POLL_MS);
}

function showRange(button) {
  chartWindowS = Number(button.dataset.range);
  document.querySelectorAll("#ranges button").forEach((other) => other.classList.toggle("active", other === button));
  drawAll();
}

for (const button of document.querySelectorAll("#ranges button")) {
  button.addEventListener("click", () => showRange(button));
}
pollForever();
window.addEventListener("resize", drawAll);
