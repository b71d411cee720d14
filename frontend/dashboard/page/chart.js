"use strict";
// A small time-series line chart on a canvas: the last 15 minutes of points (all of it, or its last
// 5 or 1 minute, as the range buttons say), a legend that shows each series' latest value (also in
// data-value, and the number of points in the figure's data-points, for tests and scripts), gaps
// where a value is null.

const PALETTE = ["#5b9cf5", "#f2a65a", "#63d39a", "#ea6a74", "#b895f2", "#e6d45f", "#5fd1dd", "#f08bd0"];
const HISTORY_S = 900;
// The stretch of time the charts show (the range buttons set it), and where its time marks go.
const TIME_MARKS_S = { 900: [900, 600, 300, 0], 300: [300, 240, 180, 120, 60, 0], 60: [60, 45, 30, 15, 0] };
let chartWindowS = HISTORY_S;
const MAX_POINT_GAP_S = 5;
const PAD = { left: 52, right: 12, top: 10, bottom: 22 };

function formatNumber(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  const size = Math.abs(value);
  if (size === 0) return "0";
  if (size >= 1000) return Math.round(value).toLocaleString("en-US");
  if (size >= 100) return value.toFixed(0);
  if (size >= 10) return value.toFixed(1);
  return value.toFixed(2);
}

// The smallest "round" number (1, 2 or 5 times a power of ten) at or above value.
function niceCeiling(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) {
    if (value <= step * power) return step * power;
  }
  return 10 * power;
}

class LineChart {
  // series: [{key, label}]; options: {max: a fixed top of the y axis, minMax: the least top}
  constructor(figure, series, options = {}) {
    this.figure = figure;
    this.canvas = figure.querySelector("canvas");
    this.series = series.map((entry, index) => ({ color: PALETTE[index % PALETTE.length], ...entry }));
    this.options = options;
    this.points = [];
    this.legendValues = this.buildLegend();
  }

  buildLegend() {
    const legend = document.createElement("div");
    legend.className = "legend";
    const values = this.series.map((entry) => {
      const item = document.createElement("span");
      item.className = "legend-item";
      item.dataset.series = entry.key;
      const swatch = document.createElement("i");
      swatch.style.background = entry.color;
      const value = document.createElement("b");
      value.textContent = "–";
      item.append(swatch, `${entry.label} `, value);
      legend.append(item);
      return { item, value };
    });
    this.figure.insertBefore(legend, this.canvas);
    return values;
  }

  clear() {
    this.points = [];
  }

  // Adds a point without drawing: a whole history is added, then drawn once.
  add(time, values) {
    this.points.push({ time, values });
    while (this.points.length && this.points[0].time < time - HISTORY_S) this.points.shift();
    this.figure.dataset.points = String(this.points.length);
    values.forEach((value, index) => {
      const { item, value: text } = this.legendValues[index];
      item.dataset.value = value === null || value === undefined ? "" : String(value);
      text.textContent = formatNumber(value);
    });
  }

  push(time, values) {
    this.add(time, values);
    this.draw();
  }

  draw() {
    const { canvas } = this;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const context = canvas.getContext("2d");
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.clearRect(0, 0, width, height);
    if (!this.points.length) return;
    const plot = { x: PAD.left, y: PAD.top, width: width - PAD.left - PAD.right, height: height - PAD.top - PAD.bottom };
    const end = this.points[this.points.length - 1].time;
    const shown = this.points.filter((point) => point.time >= end - chartWindowS);
    const top = this.yTop(shown);
    const x = (time) => plot.x + plot.width * (1 - (end - time) / chartWindowS);
    const y = (value) => plot.y + plot.height * (1 - Math.min(value, top) / top);
    this.drawGrid(context, plot, top, y);
    this.series.forEach((entry, index) => this.drawLine(context, shown, entry.color, index, x, y));
  }

  yTop(points) {
    if (this.options.max !== undefined) return this.options.max;
    let highest = this.options.minMax || 1;
    for (const point of points) {
      for (const value of point.values) if (value !== null && value > highest) highest = value;
    }
    return niceCeiling(highest);
  }

  drawGrid(context, plot, top, y) {
    context.strokeStyle = "#2c3444";
    context.fillStyle = "#8d97a8";
    context.font = "11px system-ui, sans-serif";
    context.lineWidth = 1;
    context.textAlign = "right";
    context.textBaseline = "middle";
    for (let step = 0; step <= 4; step += 1) {
      const value = (top * step) / 4;
      const height = Math.round(y(value)) + 0.5;
      context.beginPath();
      context.moveTo(plot.x, height);
      context.lineTo(plot.x + plot.width, height);
      context.stroke();
      context.fillText(formatNumber(value), plot.x - 6, height);
    }
    context.textAlign = "center";
    context.textBaseline = "top";
    TIME_MARKS_S[chartWindowS].forEach((ago) => {
      const left = plot.x + plot.width * (1 - ago / chartWindowS);
      const label = ago >= 120 ? `-${ago / 60} min` : ago ? `-${ago} s` : "now";
      const center = Math.max(plot.x + 20, Math.min(left, plot.x + plot.width - 12));
      context.fillText(label, center, plot.y + plot.height + 6);
    });
  }

  drawLine(context, points, color, index, x, y) {
    context.strokeStyle = color;
    context.lineWidth = 2;
    context.lineJoin = "round";
    context.beginPath();
    let drawing = false;
    let previousTime = -Infinity;
    for (const point of points) {
      const value = point.values[index];
      if (value === null || value === undefined) {
        drawing = false;
        continue;
      }
      // No line across a stretch with no samples (every frontend down, say).
      if (drawing && point.time - previousTime <= MAX_POINT_GAP_S) context.lineTo(x(point.time), y(value));
      else context.moveTo(x(point.time), y(value));
      drawing = true;
      previousTime = point.time;
    }
    context.stroke();
  }
}
