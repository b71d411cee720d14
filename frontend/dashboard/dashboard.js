"use strict";
// Polls /stats every second. /stats holds totals and cumulative histogram buckets only (each poll
// may reach another frontend, and every frontend reports the whole service), so rates come from
// the difference between two polls and percentiles from the bucket counts of the last 10 seconds.

const POLL_MS = 1000;
const PERCENTILE_WINDOW_S = 10;
// Requests end a few at a time: over one second their rate would jump between 0 and a burst.
const REQUEST_RATE_WINDOW_S = 5;
const HISTORY_S = 70;
const GIB = 1024 ** 3;

const snapshots = [];
const charts = {
  throughput: chart("throughput", [["total", "in + out"], ["input", "input"], ["output", "output"]]),
  requests: chart("requests", [["ended", "ended"], ["failed", "failed"], ["aborted", "aborted"]]),
  load: chart("load", [["running", "running"], ["waiting", "waiting"], ["in_flight", "in flight"]]),
  kv: chart("kv", [["kv", "in use"]], { max: 100 }),
  ttft: chart("ttft", [["p50", "p50"], ["p90", "p90"], ["p99", "p99"]]),
  tpot: chart("tpot", [["p50", "p50"], ["p90", "p90"], ["p99", "p99"]]),
  gpuUtilization: null,
  gpuMemory: null,
};

function chart(name, series, options) {
  const figure = document.querySelector(`[data-chart="${name}"]`);
  return new LineChart(figure, series.map(([key, label]) => ({ key, label })), options);
}

function setText(id, text) {
  document.getElementById(id).textContent = text;
}

function increase(now, before) {
  return Math.max(0, now - before); // a restarted service starts its totals again
}

function endedTotal(stats) {
  const { finished, aborted, failed } = stats.requests;
  return finished + aborted + failed;
}

// Like Prometheus' histogram_quantile: linear within the bucket that holds the rank.
function quantile(q, bounds, counts) {
  const total = counts[counts.length - 1];
  if (!total) return null;
  const rank = q * total;
  const index = counts.findIndex((count) => count >= rank);
  if (index >= bounds.length) return bounds[bounds.length - 1];
  const lower = index ? bounds[index - 1] : 0;
  const below = index ? counts[index - 1] : 0;
  const inBucket = counts[index] - below;
  return inBucket ? lower + ((bounds[index] - lower) * (rank - below)) / inBucket : lower;
}

function percentilesMs(now, before) {
  const counts = now.counts.map((count, index) => increase(count, before.counts[index] || 0));
  return [0.5, 0.9, 0.99].map((q) => {
    const seconds = quantile(q, now.bounds, counts);
    return seconds === null ? null : seconds * 1000;
  });
}

// The oldest snapshot still inside the window (the newest one always is).
function windowStart(time) {
  return snapshots.find((stats) => stats.time >= time);
}

function rateSince(start, stats, pick) {
  const seconds = stats.time - start.time;
  return seconds > 0 ? increase(pick(stats), pick(start)) / seconds : 0;
}

function remember(stats) {
  snapshots.push(stats);
  while (snapshots.length > 2 && snapshots[0].time < stats.time - HISTORY_S) snapshots.shift();
}

function update(stats) {
  const previous = snapshots[snapshots.length - 1];
  if (previous && stats.time <= previous.time) return;
  remember(stats);
  showStatus(stats);
  if (!previous) return;
  const input = rateSince(previous, stats, (s) => s.tokens.prompt);
  const output = rateSince(previous, stats, (s) => s.tokens.generated);
  const requestsStart = windowStart(stats.time - REQUEST_RATE_WINDOW_S);
  const requestRate = (pick) => rateSince(requestsStart === stats ? previous : requestsStart, stats, pick);
  const ended = requestRate(endedTotal);
  const start = windowStart(stats.time - PERCENTILE_WINDOW_S);
  const ttft = percentilesMs(stats.latency.ttft, start.latency.ttft);
  const tpot = percentilesMs(stats.latency.tpot, start.latency.tpot);
  const { engine, requests } = stats;
  const kv = engine.up ? engine.kv_cache_usage * 100 : null;

  charts.throughput.push(stats.time, [input + output, input, output]);
  const failed = requestRate((s) => s.requests.failed);
  const aborted = requestRate((s) => s.requests.aborted);
  charts.requests.push(stats.time, [ended, failed, aborted]);
  charts.load.push(stats.time, [engine.running, engine.waiting, requests.in_flight]);
  charts.kv.push(stats.time, [kv]);
  charts.ttft.push(stats.time, ttft);
  charts.tpot.push(stats.time, tpot);
  showGpus(stats);

  setText("tile-tokens", formatNumber(input + output));
  setText("tile-requests", formatNumber(ended));
  setText("tile-running", `${engine.running} / ${engine.waiting}`);
  setText("tile-in-flight", `${requests.in_flight} / ${requests.queued}`);
  setText("tile-kv", kv === null ? "–" : `${formatNumber(kv)} %`);
  setText("tile-ttft", ttft[0] === null ? "–" : `${formatNumber(ttft[0])} ms`);
  setText("tile-tpot", tpot[0] === null ? "–" : `${formatNumber(tpot[0])} ms`);
  setText("tile-outcomes", `${requests.finished} / ${requests.aborted} / ${requests.failed}`);
}

function showStatus(stats) {
  const status = document.getElementById("engine-status");
  status.textContent = stats.engine.up ? "engine up" : "engine down";
  status.className = `pill ${stats.engine.up ? "up" : "down"}`;
  setText("model", stats.model || "");
  setText("updated", `updated ${new Date(stats.time * 1000).toLocaleTimeString()}`);
}

function showGpus(stats) {
  const none = stats.gpus.length === 0;
  for (const name of ["gpu-utilization", "gpu-memory"]) {
    const figure = document.querySelector(`[data-chart="${name}"]`);
    figure.classList.toggle("empty", none);
    figure.querySelector(".no-gpu").hidden = !none;
  }
  if (none) return;
  if (!charts.gpuUtilization) {
    const series = stats.gpus.map((gpu) => [`gpu${gpu.index}`, `GPU ${gpu.index}`]);
    const totalGib = Math.max(...stats.gpus.map((gpu) => gpu.memory_total_bytes)) / GIB;
    charts.gpuUtilization = chart("gpu-utilization", series, { max: 100 });
    charts.gpuMemory = chart("gpu-memory", series, { max: Math.ceil(totalGib) });
  }
  charts.gpuUtilization.push(stats.time, stats.gpus.map((gpu) => gpu.utilization_ratio * 100));
  charts.gpuMemory.push(stats.time, stats.gpus.map((gpu) => gpu.memory_used_bytes / GIB));
}

function showUnreachable() {
  const status = document.getElementById("engine-status");
  status.textContent = "service unreachable";
  status.className = "pill down";
}

async function poll() {
  try {
    const response = await fetch("/stats", { cache: "no-store" });
    if (!response.ok) throw new Error(`/stats answered ${response.status}`);
    update(await response.json());
  } catch (error) {
    showUnreachable();
  }
}

poll();
setInterval(poll, POLL_MS);
window.addEventListener("resize", () => Object.values(charts).forEach((entry) => entry && entry.draw()));
