// adflow dashboard charts: small line and bar charts drawn as SVG by hand.
// Every label is set with textContent; nothing here parses HTML.
'use strict';

const Charts = (() => {
  const NS = 'http://www.w3.org/2000/svg';
  const PALETTE = ['#1f6feb', '#d29922', '#cf222e', '#2da44e', '#8250df', '#6e7781'];
  // Drawn at the container's width in pixels, so text keeps its size on any screen.
  const width = (container) => Math.max(280, Math.round(container.clientWidth || 640));
  const PAD = { left: 56, right: 12, top: 10, bottom: 24 };

  function node(tag, attrs, text) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  // The y axis top: four grid steps of 1, 2 or 5 times a power of ten (whole numbers
  // for counts of 4 and more).
  function niceMax(v) {
    if (!(v > 0)) return 4;
    const raw = v / 4;
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 5, 10]) if (raw <= m * p) return 4 * m * p;
    return 40 * p;
  }

  function frame(W, height, ymax, yFormat) {
    const svg = node('svg', { viewBox: `0 0 ${W} ${height}`, class: 'chart-svg', role: 'img' });
    const innerH = height - PAD.top - PAD.bottom;
    for (let i = 0; i <= 4; i++) {
      const y = PAD.top + innerH - (innerH * i) / 4;
      svg.append(node('line', { x1: PAD.left, x2: W - PAD.right, y1: y, y2: y, class: 'grid' }));
      svg.append(node('text', { x: PAD.left - 6, y: y + 4, 'text-anchor': 'end', class: 'tick' },
        yFormat((ymax * i) / 4)));
    }
    return { svg, innerH };
  }

  function legend(names) {
    const div = document.createElement('div');
    div.className = 'legend';
    names.forEach((name, i) => {
      const item = document.createElement('span');
      const sw = node('svg', { width: 10, height: 10, class: 'swatch' });
      sw.append(node('rect', { width: 10, height: 10, fill: PALETTE[i % PALETTE.length] }));
      item.append(sw, document.createTextNode(' ' + name));
      div.append(item);
    });
    return div;
  }

  // series: [{name, points: [[x, y], ...]}]; x is Unix ms.
  function line(container, series, opts) {
    const o = Object.assign({ height: 180, yFormat: (v) => String(Math.round(v * 100) / 100) }, opts);
    const xs = series.flatMap((s) => s.points.map((p) => p[0]));
    const ys = series.flatMap((s) => s.points.map((p) => p[1])).filter((y) => Number.isFinite(y));
    const ymax = niceMax(Math.max(0, ...ys));
    const W = width(container);
    const { svg, innerH } = frame(W, o.height, ymax, o.yFormat);
    const xmin = Math.min(...xs);
    const xmax = Math.max(...xs);
    const span = xmax > xmin ? xmax - xmin : 1;
    const innerW = W - PAD.left - PAD.right;
    const px = (x) => PAD.left + ((x - xmin) / span) * innerW;
    const py = (y) => PAD.top + innerH - (Math.max(0, y) / ymax) * innerH;
    if (xs.length === 0) {
      svg.append(node('text', { x: W / 2, y: o.height / 2, 'text-anchor': 'middle', class: 'empty' },
        'no data yet'));
    } else {
      const fmt = o.xFormat || ((x) => new Date(x).toLocaleTimeString());
      svg.append(node('text', { x: PAD.left, y: o.height - 6, class: 'tick' }, fmt(xmin)));
      svg.append(node('text', { x: W - PAD.right, y: o.height - 6, 'text-anchor': 'end', class: 'tick' },
        fmt(xmax)));
    }
    series.forEach((s, i) => {
      const pts = s.points.filter((p) => Number.isFinite(p[1]));
      if (pts.length === 0) return;
      const d = pts.map((p, j) => `${j ? 'L' : 'M'}${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`).join(' ');
      svg.append(node('path', { d, fill: 'none', stroke: PALETTE[i % PALETTE.length], 'stroke-width': 2 }));
      if (pts.length === 1) {
        svg.append(node('circle', { cx: px(pts[0][0]), cy: py(pts[0][1]), r: 3,
          fill: PALETTE[i % PALETTE.length] }));
      }
    });
    container.replaceChildren(svg, legend(series.map((s) => s.name)));
  }

  // bars: [{label, value}]
  function bars(container, data, opts) {
    const o = Object.assign({ height: 160, yFormat: (v) => String(Math.round(v * 100) / 100) }, opts);
    const ymax = niceMax(Math.max(0, ...data.map((b) => (Number.isFinite(b.value) ? b.value : 0))));
    const W = width(container);
    const { svg, innerH } = frame(W, o.height, ymax, o.yFormat);
    const innerW = W - PAD.left - PAD.right;
    const slot = innerW / Math.max(1, data.length);
    data.forEach((b, i) => {
      const v = Number.isFinite(b.value) ? Math.max(0, b.value) : 0;
      const h = (v / ymax) * innerH;
      const x = PAD.left + i * slot + slot * 0.15;
      const rect = node('rect', { x, y: PAD.top + innerH - h, width: slot * 0.7, height: h,
        fill: PALETTE[(o.color || 0) % PALETTE.length] });
      rect.append(node('title', {}, `${b.label}: ${o.yFormat(v)}`));
      svg.append(rect);
      svg.append(node('text', { x: x + slot * 0.35, y: o.height - 6, 'text-anchor': 'middle', class: 'tick' },
        b.label));
      svg.append(node('text', { x: x + slot * 0.35, y: PAD.top + innerH - h - 3, 'text-anchor': 'middle',
        class: 'barval' }, o.yFormat(v)));
    });
    container.replaceChildren(svg);
  }

  return { line, bars };
})();
