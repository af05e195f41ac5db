// The report's page script: draws the charts from the JSON in #report-data (retort.tracking.report).
(function () {
'use strict';
var D = JSON.parse(document.getElementById('report-data').textContent);
var NS = 'http://www.w3.org/2000/svg';
var RUN = {}; D.runs.forEach(function (r) { RUN[r.id] = r; });

function el(tag, attrs, parent, text) {
  var e = document.createElementNS(NS, tag);
  for (var k in attrs) if (attrs[k] !== undefined && attrs[k] !== null) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}
function tip(node, text) { el('title', {}, node, text); return node; }
function fmt(v) {
  if (v === null || v === undefined) return '';
  if (!isFinite(v)) return String(v);
  var a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
  return String(+v.toPrecision(4));
}
function finite(v) { return v !== null && v !== undefined && isFinite(v); }
function scale(domain, range, log) {
  var d0 = log ? Math.log10(domain[0]) : domain[0], d1 = log ? Math.log10(domain[1]) : domain[1];
  var f = function (v) {
    var x = log ? Math.log10(v) : v;
    return range[0] + (x - d0) / ((d1 - d0) || 1) * (range[1] - range[0]);
  };
  f.domain = domain; f.log = log;
  return f;
}
// o.x, o.y: axes as the page's data gives them (domain, log, ticks, labels: one algorithm, in Python)
function frame(parent, o) {
  var W = o.width || 430, H = o.height || 280, m = {l: 58, r: 14, t: 24, b: 38};
  var svg = el('svg', {width: W, height: H, viewBox: '0 0 ' + W + ' ' + H}, parent);
  var x = scale(o.x.domain, [m.l, W - m.r], o.x.log), y = scale(o.y.domain, [H - m.b, m.t], o.y.log);
  var grid = el('g', {'class': 'grid'}, svg), axis = el('g', {'class': 'axis'}, svg);
  o.x.ticks.forEach(function (v, i) {
    el('line', {x1: x(v), x2: x(v), y1: m.t, y2: H - m.b}, grid);
    el('text', {x: x(v), y: H - m.b + 14, 'text-anchor': 'middle'}, axis, o.x.labels[i]);
  });
  o.y.ticks.forEach(function (v, i) {
    el('line', {x1: m.l, x2: W - m.r, y1: y(v), y2: y(v)}, grid);
    el('text', {x: m.l - 5, y: y(v) + 4, 'text-anchor': 'end'}, axis, o.y.labels[i]);
  });
  el('path', {d: 'M' + m.l + ',' + m.t + 'V' + (H - m.b) + 'H' + (W - m.r), fill: 'none'}, axis);
  el('text', {x: m.l, y: 15, 'class': 'title'}, svg, o.title || '');
  el('text', {x: (m.l + W - m.r) / 2, y: H - 6, 'text-anchor': 'middle'}, svg, o.xlabel || '');
  return {svg: svg, x: x, y: y, m: m, W: W, H: H};
}
function path(points, x, y) {
  var d = '', pen = false;
  points.forEach(function (p) {
    if (!finite(p[0]) || !finite(p[1])) { pen = false; return; }
    d += (pen ? 'L' : 'M') + x(p[0]).toFixed(1) + ',' + y(p[1]).toFixed(1); pen = true;
  });
  return d;
}
function curves() {
  var box = document.getElementById('curves');
  D.curves.forEach(function (c) {
    var ylog = c.y.log;
    var card = document.createElement('div'); card.className = 'card'; box.appendChild(card);
    var f = frame(card, {x: c.x, y: c.y, title: c.metric + (ylog ? ' (log scale)' : ''), xlabel: c.xlabel});
    f.svg.setAttribute('data-metric', c.metric);
    c.series.forEach(function (s) {
      var g = D.groups[s.group], gEl = el('g', {'data-runs': s.runs.join(' '), 'class': 'series'}, f.svg);
      tip(gEl, g.label + '\n' + s.runs.map(function (id) { return RUN[id].name + ' ' + id; }).join('\n'));
      var band = [];
      s.steps.forEach(function (st, i) {
        if (finite(s.mean[i]) && finite(s.std[i])) band.push([st, s.mean[i], s.std[i]]);
      });
      if (band.length) {
        var lo = function (v) { return ylog ? Math.max(v, f.y.domain[0]) : v; };
        var up = band.map(function (b) { return [b[0], b[1] + b[2]]; });
        var down = band.map(function (b) { return [b[0], lo(b[1] - b[2])]; }).reverse();
        el('path', {d: path(up, f.x, f.y) + path(down, f.x, f.y).replace(/^M/, 'L') + 'Z', fill: g.color,
                    'fill-opacity': 0.18, stroke: 'none'}, gEl);
      }
      var pts = s.steps.map(function (st, i) { return [st, s.mean[i]]; });
      var width = s.runs.indexOf(D.best) >= 0 ? 2.6 : 1.5;
      el('path', {d: path(pts, f.x, f.y), fill: 'none', stroke: g.color, 'stroke-width': width}, gEl);
      if (pts.length < 40) pts.forEach(function (p) {
        if (finite(p[1])) el('circle', {cx: f.x(p[0]), cy: f.y(p[1]), r: 2, fill: g.color}, gEl);
      });
    });
  });
  if (D.groups.length <= 24) {
    var legend = document.getElementById('legend');
    D.groups.forEach(function (g, i) {
      var div = document.createElement('div');
      div.innerHTML = '<span class="swatch"></span>';
      div.firstChild.style.background = g.color;
      div.appendChild(document.createTextNode((i + 1) + '. ' + g.label));
      legend.appendChild(div);
    });
  }
}

function parallel() {
  var box = document.getElementById('parallel'), axes = D.axes;
  if (axes.length < 2) { box.textContent = 'needs a param that differs and a metric'; return; }
  var W = Math.max(900, 160 * axes.length), H = 380, m = {l: 60, r: 70, t: 30, b: 34};
  var svg = el('svg', {width: W, height: H}, box);
  var step = (W - m.l - m.r) / (axes.length - 1);
  var metricAxis = axes[axes.length - 1].metric ? axes[axes.length - 1] : null;
  var ys = axes.map(function (a) {
    if (a.kind === 'cat') {
      var n = a.categories.length;
      return function (v) { return n === 1 ? (m.t + H - m.b) / 2 : m.t + (H - m.t - m.b) * (1 - v / (n - 1)); };
    }
    return scale(a.axis.domain, [H - m.b, m.t], a.axis.log);
  });
  var rank = {};  // colour by rank, not value: one outlier would squeeze every other run into one colour
  if (metricAxis) {
    var ranked = D.runs.map(function (r, i) { return i; });
    ranked = ranked.filter(function (i) { return finite(metricAxis.values[i]); });
    ranked.sort(function (a, b) {
      var d = metricAxis.values[a] - metricAxis.values[b];
      return D.sort.direction === 'minimize' ? d : -d;
    });
    ranked.forEach(function (i, k) { rank[i] = k / Math.max(1, ranked.length - 1); });
  }
  var colorOf = function (i) { return i in rank ? viridis(rank[i]) : '#bbb'; };
  var order = D.runs.map(function (r, i) { return i; });
  if (metricAxis) order.sort(function (a, b) {  // the best lines drawn last, on top
    var va = metricAxis.values[a], vb = metricAxis.values[b];
    if (!finite(va)) return -1; if (!finite(vb)) return 1;
    return D.sort.direction === 'minimize' ? vb - va : va - vb;
  });
  var lines = el('g', {}, svg);
  order.forEach(function (i) {
    var r = D.runs[i], pts = [];
    axes.forEach(function (a, k) { var v = a.values[i]; if (finite(v)) pts.push([m.l + k * step, ys[k](v)]); });
    var d = pts.map(function (p, k) { return (k ? 'L' : 'M') + p[0].toFixed(1) + ',' + p[1].toFixed(1); }).join('');
    var line = el('path', {d: d, fill: 'none', stroke: colorOf(i), 'stroke-width': r.id === D.best ? 3 : 1.4,
                           'stroke-opacity': 0.85, 'data-run': r.id}, lines);
    tip(line, r.name + ' ' + r.id + (metricAxis ? '\n' + metricAxis.name + ' = ' + fmt(metricAxis.values[i]) : ''));
  });
  axes.forEach(function (a, k) {
    var x = m.l + k * step, g = el('g', {'class': 'axis'}, svg);
    el('line', {x1: x, x2: x, y1: m.t, y2: H - m.b, stroke: '#666'}, g);
    el('text', {x: x, y: m.t - 10, 'text-anchor': 'middle', 'class': 'title'}, g, a.name);
    var labels = a.kind === 'cat' ? a.categories.map(function (c, i) { return [i, c]; })
      : a.axis.ticks.map(function (v, i) { return [v, a.axis.labels[i]]; });
    if (labels.length > 12) labels = labels.filter(function (l, i) { return i % Math.ceil(labels.length / 12) === 0; });
    labels.forEach(function (l) {
      var y = ys[k](l[0]);
      el('line', {x1: x - 3, x2: x + 3, y1: y, y2: y, stroke: '#666'}, g);
      el('text', {x: x + 5, y: y + 4, 'paint-order': 'stroke', stroke: '#fff', 'stroke-width': 3}, g,
         String(l[1]).slice(0, 18));
    });
  });
}
function viridis(t) {
  var s = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  t = Math.min(1, Math.max(0, t)) * 0.92 * (s.length - 1);  // the palest yellow is hard to see on white
  var i = Math.min(Math.floor(t), s.length - 2), f = t - i;
  var c = [0, 1, 2].map(function (j) { return Math.round(s[i][j] + (s[i + 1][j] - s[i][j]) * f); });
  return 'rgb(' + c.join(',') + ')';
}

function importance() {
  var I = D.importance, box = document.getElementById('importance');
  document.getElementById('importance-note').textContent = I.method + (I.target ? ', explaining ' + I.target : '') +
    '. ρ: Spearman rank correlation of a numeric param with the metric.' + (I.note ? ' ' + I.note + '.' : '');
  if (!I.items.length) { box.textContent = I.note || 'nothing to show'; return; }
  var W = 560, rowH = 24, m = {l: 190, r: 120, t: 10}, H = m.t + rowH * I.items.length + 10;
  var svg = el('svg', {width: W, height: H}, box);
  I.items.forEach(function (it, i) {
    var y = m.t + i * rowH, w = (W - m.l - m.r) * (it.importance || 0);
    el('text', {x: m.l - 6, y: y + 15, 'text-anchor': 'end'}, svg, it.param);
    var bar = el('rect', {x: m.l, y: y + 3, width: Math.max(1, w), height: rowH - 8, fill: '#4e79a7',
                          'data-param': it.param}, svg);
    tip(bar, it.param + ': ' + fmt(it.importance));
    el('text', {x: m.l + w + 6, y: y + 15}, svg, fmt(it.importance) + (finite(it.rho) ? '   ρ ' + fmt(it.rho) : ''));
  });
}

function caption(svg, text) {
  var p = document.createElement('p');
  p.className = 'note'; p.textContent = text;
  svg.parentNode.appendChild(p);
}

function sweep() {
  var S = D.sweep;
  if (!S) return;
  var good = S.direction === 'minimize' ? Math.min : Math.max;
  var trials = S.trials.slice().sort(function (a, b) { return a.number - b.number; });
  var f = frame(document.getElementById('history'), {x: S.history.x, y: S.history.y, xlabel: 'trial',
    title: 'optimization history: ' + S.metric + ' ' + S.summary + ' (' + S.direction + ')'});
  var best = null, stepLine = [];
  trials.forEach(function (t) {
    if (finite(t.value) && t.state === 'FINISHED') {
      best = best === null ? t.value : good(best, t.value);
    }
    if (best !== null) stepLine.push([t.number, best]);
  });
  el('path', {d: path(stepLine, f.x, f.y), fill: 'none', stroke: '#e15759', 'stroke-width': 1.8}, f.svg);
  trials.forEach(function (t) {
    if (!finite(t.value)) return;
    var pruned = t.state !== 'FINISHED';
    tip(el('circle', {cx: f.x(t.number), cy: f.y(t.value), r: 4, 'data-run': t.id, fill: pruned ? '#fff' : '#4e79a7',
                      stroke: pruned ? '#b07a00' : '#4e79a7', 'stroke-width': 1.5}, f.svg),
        'trial ' + t.number + ' ' + t.state + '\n' + t.name + ' ' + t.id + '\n' + S.metric + ' = ' + fmt(t.value));
  });
  caption(f.svg, '● finished · ○ pruned or failed · red line: best so far (finished trials)');
  var g = frame(document.getElementById('intermediate'), {x: S.intermediate.x, y: S.intermediate.y, xlabel: 'epoch',
    title: 'intermediate values of ' + S.metric + ' per trial'});
  var order = trials.filter(function (t) { return t.state === 'FINISHED'; }).concat(
    trials.filter(function (t) { return t.state !== 'FINISHED'; }));
  order.forEach(function (t) {
    var pruned = t.state === 'PRUNED', color = pruned ? '#f28e2b' : t.state === 'FINISHED' ? '#4e79a7' : '#e15759';
    var gEl = el('g', {'data-run': t.id, 'class': 'trial ' + t.state}, g.svg);
    tip(gEl, 'trial ' + t.number + ' ' + t.state + '\n' + t.name + ' ' + t.id);
    el('path', {d: path(t.points, g.x, g.y), fill: 'none', stroke: color, 'stroke-width': t.id === D.best ? 2.6 : 1.3,
                'stroke-dasharray': pruned ? '4 3' : null}, gEl);
    var last = t.points[t.points.length - 1];
    if (pruned && last && finite(last[1])) {
      el('text', {x: g.x(last[0]) + 3, y: g.y(last[1]) + 4, style: 'fill:' + color}, gEl, '✕');
    }
  });
  caption(g.svg, 'blue: finished · orange dashed, ✕ where stopped: pruned · red: failed');
}

curves();
parallel();
importance();
sweep();
var st = document.getElementById('report-status');
if (st.getAttribute('data-state') !== 'error') {
  st.setAttribute('data-state', 'ok');
  st.textContent = 'rendered ' + D.runs.length + ' runs';
}
})();
