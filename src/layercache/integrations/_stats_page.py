"""The stats dashboard: one self-contained HTML page (inline CSS and JS, no external asset).

``render(title, nonce, config)`` fills the template: the inline ``<style>`` and ``<script>``
carry the response's CSP nonce, and ``config`` (JSON URL, refresh, token, the first snapshot)
travels in a ``<script type="application/json">`` data block, escaped so no text in it can close
the block. The script draws everything with ``textContent`` (never ``innerHTML``), so layer
names, keys or error texts are never parsed as markup. Every number sits in an element with a
stable ``data-stat`` attribute; its exact JSON value is in ``data-value`` when the text is
formatted (percentages, durations, times).
"""

from __future__ import annotations

import html
import json
from typing import Any

__all__ = ["render"]

_STYLE = """
:root{--bg:#f6f7f9;--card:#fff;--ink:#1d2330;--mute:#667085;--line:#e3e6eb;--bad:#c62828;
--ok:#2e7d32;--warn:#b26a00}
*{box-sizing:border-box}
body{margin:0;padding:16px 20px;font:13px/1.35 system-ui,-apple-system,"Segoe UI",Roboto,
sans-serif;background:var(--bg);color:var(--ink)}
header{display:flex;align-items:baseline;gap:16px;flex-wrap:wrap;margin-bottom:12px}
h1{font-size:20px;margin:0}h2{font-size:14px;margin:0 0 8px;color:var(--mute);
text-transform:uppercase;letter-spacing:.04em}
.mute{color:var(--mute)}.bad{color:var(--bad);font-weight:600}.ok{color:var(--ok)}
.warn{color:var(--warn);font-weight:600}
#cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(112px,1fr));gap:8px;
margin-bottom:12px}
.card{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:8px 10px}
.card .label{color:var(--mute);font-size:11px}.card .num{font-size:19px;font-weight:600}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:12px}
.grid3{display:grid;grid-template-columns:repeat(auto-fit,minmax(340px,1fr));gap:12px}
.tall{max-height:250px}
section{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:10px 12px;
margin-bottom:12px;overflow:auto}
table{border-collapse:collapse;width:100%}
th,td{text-align:right;padding:2px 6px;border-bottom:1px solid var(--line);white-space:nowrap}
th{color:var(--mute);font-weight:500;font-size:11px}
th:first-child,td:first-child,td.text,th.text{text-align:left}
td.key{font-family:ui-monospace,monospace;max-width:260px;overflow:hidden;text-overflow:ellipsis}
svg{width:100%;height:170px;display:block}
.axis{stroke:#d0d4db;stroke-width:1}.axislabel{fill:#667085;font-size:10px}
.series{fill:none;stroke-width:2}
.legend{display:flex;gap:14px;flex-wrap:wrap;margin-top:4px}
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px}
.s0{stroke:#1565c0}.b0{background:#1565c0}.s1{stroke:#e65100}.b1{background:#e65100}
.s2{stroke:#2e7d32}.b2{background:#2e7d32}.s3{stroke:#6a1b9a}.b3{background:#6a1b9a}
.s4{stroke:#00838f}.b4{background:#00838f}.s5{stroke:#ad1457}.b5{background:#ad1457}
"""

_SCRIPT = r"""
(function () {
  "use strict";
  var cfg = JSON.parse(document.getElementById("lc-config").textContent);
  var MAX_HISTORY = 120;
  var history = [];
  var prevLayers = null;
  var last = null, lastAt = 0, polls = 0, failures = 0;
  var COUNTERS = [["hits", "hits"], ["misses", "misses"], ["fetches", "origin fetches"],
    ["stale_hits", "stale serves"], ["refreshes", "refreshes"],
    ["stampede_dedupes", "stampede dedupes"], ["backfills", "backfills"],
    ["evictions", "evictions"], ["errors", "errors"], ["write_failures", "write failures"]];
  var TOP = [["in_flight_fetches", "in-flight fetches"],
    ["background_refreshes", "background refreshes"], ["open_circuits", "open circuits"],
    ["tag_index_keys", "tag-index keys"]];

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = text; }
    return e;
  }
  function isNum(v) { return typeof v === "number" && isFinite(v); }
  function num(tag, stat, value, fmt) {
    var text = value === null || value === undefined ? "n/a" : (fmt ? fmt(value) : String(value));
    var e = el(tag, "num", text);
    e.setAttribute("data-stat", stat);
    if (isNum(value)) { e.setAttribute("data-value", String(value)); }
    return e;
  }
  function pct(x) { return (x * 100).toFixed(1) + "%"; }
  function dur(s) {
    if (s < 0.001) { return (s * 1e6).toFixed(0) + " \u00b5s"; }
    if (s < 1) { return (s * 1e3).toFixed(2) + " ms"; }
    return s.toFixed(2) + " s";
  }
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function clock(t) {
    var d = new Date(t * 1000);
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }
  function yesno(b) { return b ? "yes" : "no"; }
  function serverNow() {
    return last ? last.time + (Date.now() - lastAt) / 1000 : Date.now() / 1000;
  }
  function row(cells) {
    var tr = el("tr");
    cells.forEach(function (c) {
      tr.appendChild(typeof c === "string" ? el("td", "text", c) : c);
    });
    return tr;
  }
  function table(id, head, rows, empty) {
    var box = $(id);
    var t = el("table"), hr = el("tr");
    head.forEach(function (h, i) { hr.appendChild(el("th", i === 0 ? "text" : "", h)); });
    t.appendChild(hr);
    rows.forEach(function (r) { t.appendChild(r); });
    if (!rows.length) {
      var td = el("td", "text mute", empty); td.colSpan = head.length;
      var tr = el("tr"); tr.appendChild(td); t.appendChild(tr);
    }
    box.replaceChildren(t);
  }

  function cards(d) {
    var box = $("cards"), m = d.metrics || {};
    var items = [];
    function card(label, node) {
      var c = el("div", "card"); c.appendChild(el("div", "label", label)); c.appendChild(node);
      items.push(c);
    }
    card("hit rate", num("div", "hit_rate", d.hit_rate, pct));
    COUNTERS.forEach(function (p) { card(p[1], num("div", "metrics." + p[0], m[p[0]])); });
    Object.keys(m).forEach(function (k) {
      if (isNum(m[k]) && !COUNTERS.some(function (p) { return p[0] === k; })) {
        card(k.replace(/_/g, " "), num("div", "metrics." + k, m[k]));
      }
    });
    TOP.forEach(function (p) { if (p[0] in d) { card(p[1], num("div", p[0], d[p[0]])); } });
    box.replaceChildren.apply(box, items);
  }

  function remember(d) {
    var layers = (d.metrics || {}).layers || {}, point = { t: d.time, rates: {} };
    Object.keys(layers).forEach(function (name) {
      var l = layers[name], p = prevLayers && prevLayers[name];
      var dh = p ? l.hits - p.hits : l.hits, dm = p ? l.misses - p.misses : l.misses;
      if (dh < 0 || dm < 0) { dh = l.hits; dm = l.misses; }
      point.rates[name] = dh + dm > 0 ? dh / (dh + dm) : null;
    });
    prevLayers = {};
    Object.keys(layers).forEach(function (n) {
      prevLayers[n] = { hits: layers[n].hits, misses: layers[n].misses };
    });
    history.push(point);
    if (history.length > MAX_HISTORY) { history.splice(0, history.length - MAX_HISTORY); }
  }

  function chart(d) {
    var svg = $("chart-svg"), NS = svg.namespaceURI;
    var W = 600, H = 160, L = 34, R = 6, T = 6, B = 16;
    svg.replaceChildren();
    function line(x1, y1, x2, y2, cls) {
      var l = document.createElementNS(NS, "line");
      l.setAttribute("x1", x1); l.setAttribute("y1", y1); l.setAttribute("x2", x2);
      l.setAttribute("y2", y2); l.setAttribute("class", cls); svg.appendChild(l);
    }
    function label(x, y, text) {
      var t = document.createElementNS(NS, "text");
      t.setAttribute("x", x); t.setAttribute("y", y); t.setAttribute("class", "axislabel");
      t.textContent = text; svg.appendChild(t);
    }
    [0, 0.5, 1].forEach(function (v) {
      var y = T + (1 - v) * (H - T - B);
      line(L, y, W - R, y, "axis"); label(2, y + 3, (v * 100) + "%");
    });
    var names = Object.keys((d.metrics || {}).layers || {});
    var step = (W - L - R) / Math.max(history.length - 1, 1), x0 = L;
    names.forEach(function (name, i) {
      var segs = [], cur = [];
      history.forEach(function (p, j) {
        var r = p.rates[name];
        if (r === null || r === undefined) { if (cur.length) { segs.push(cur); cur = []; } return; }
        cur.push((x0 + j * step).toFixed(1) + "," + (T + (1 - r) * (H - T - B)).toFixed(1));
      });
      if (cur.length) { segs.push(cur); }
      segs.forEach(function (s) {
        if (s.length === 1) { var xy = s[0].split(","); s.push((+xy[0] + 2) + "," + xy[1]); }
        var pl = document.createElementNS(NS, "polyline");
        pl.setAttribute("points", s.join(" "));
        pl.setAttribute("class", "series s" + (i % 6)); svg.appendChild(pl);
      });
    });
    if (history.length > 1) {
      var span = Math.round(history[history.length - 1].t - history[0].t);
      label(L + 2, H - 3, "last " + span + " s");
    }
    var legend = el("div", "legend");
    names.forEach(function (name, i) {
      var s = el("span");
      s.appendChild(el("span", "sw b" + (i % 6)));
      s.appendChild(el("span", "", name));
      legend.appendChild(s);
    });
    legend.appendChild(num("span", "history", history.length,
      function (n) { return n + " samples"; }));
    $("legend").replaceChildren(legend);
  }

  function backIn(until) {
    var left = until - serverNow();
    return left > 0 ? left.toFixed(1) + " s" : "retrying";
  }

  function layers(d) {
    var metrics = (d.metrics || {}).layers || {}, rows = [];
    (d.layers || []).forEach(function (s) {
      var n = s.name, m = metrics[n] || { latency: {} }, lat = m.latency || {};
      var p = "layers." + n + ".";
      var degraded = isNum(s.degraded_until);
      var state = el("td", "text " + (degraded ? "bad" : "ok"), degraded ? "degraded" : "healthy");
      state.setAttribute("data-stat", p + "state");
      var back = num("td", p + "back_in", degraded ? s.degraded_until - d.time : null,
        function () { return backIn(s.degraded_until); });
      if (degraded) {
        back.classList.add("countdown");
        back.setAttribute("data-until", String(s.degraded_until));
      }
      rows.push(row([n, s.is_local ? "local" : "remote", state,
        num("td", p + "degraded_since", isNum(s.degraded_since) ? s.degraded_since : null, clock),
        num("td", p + "degraded_until", degraded ? s.degraded_until : null, clock), back,
        num("td", p + "pending_replay", "pending_replay" in s ? s.pending_replay : null),
        num("td", p + "hits", m.hits), num("td", p + "misses", m.misses),
        num("td", p + "hit_rate", m.hit_rate, pct), num("td", p + "latency.count", lat.count),
        num("td", p + "latency.mean", lat.mean, dur), num("td", p + "latency.p50", lat.p50, dur),
        num("td", p + "latency.p99", lat.p99, dur)]));
    });
    table("layers", ["layer", "kind", "state", "degraded since", "until", "back in",
      "pending replay", "hits", "misses", "hit rate", "timed ops", "mean", "p50", "p99"],
      rows, "no layers");
  }

  function p99(op, bounds) {
    if (!bounds || !op.count || !op.buckets) { return null; }
    for (var i = 0; i < bounds.length && i < op.buckets.length; i++) {
      if (op.buckets[i] >= 0.99 * op.count) { return bounds[i]; }
    }
    return null;
  }

  function operations(d) {
    var m = d.metrics || {}, ls = m.layers || {}, rows = [], bounds = d.latency_buckets;
    function add(name, opname, op, stat) {
      rows.push(row([name, opname, num("td", stat + ".count", op.count),
        num("td", stat + ".mean", op.count ? op.sum / op.count : 0, dur),
        num("td", stat + ".p99_le", p99(op, bounds),
          function (v) { return "\u2264 " + dur(v); })]));
    }
    Object.keys(ls).forEach(function (n) {
      var ops = ls[n].operations || {};
      Object.keys(ops).sort().forEach(function (o) { add(n, o, ops[o], "ops." + n + "." + o); });
    });
    if (m.fetch_latency) { add("origin", "fetch", m.fetch_latency, "ops.origin.fetch"); }
    table("ops", ["layer", "operation", "count", "mean", "p99"], rows,
      "no per-operation histograms in this version");
  }

  function kv(id, pairs, empty) {
    table(id, ["", ""], pairs.map(function (p) { return row([p[0], p[1]]); }), empty);
  }

  function flight(d) {
    var b = d.bus, s = d.single_flight, pairs = [];
    if (b) {
      var sub = el("td", b.subscribed ? "ok" : "warn", yesno(b.subscribed));
      sub.setAttribute("data-stat", "bus.subscribed");
      pairs.push(["bus subscribed", sub]);
      ["pending_announcements", "sent", "received", "rejected"].forEach(function (k) {
        pairs.push(["bus " + k.replace(/_/g, " "), num("td", "bus." + k, b[k])]);
      });
    } else {
      var none = el("td", "mute", "no invalidation bus"); none.setAttribute("data-stat", "bus");
      pairs.push(["bus", none]);
    }
    if (s) {
      var dist = el("td", "", yesno(s.distributed));
      dist.setAttribute("data-stat", "single_flight.distributed");
      pairs.push(["single-flight distributed", dist]);
      var SF = ["in_flight", "acquired", "waits", "takeovers", "timeouts", "shared_hits",
        "degraded"];
      SF.forEach(function (k) {
        pairs.push(["single-flight " + k.replace(/_/g, " "),
          num("td", "single_flight." + k, s[k])]);
      });
    }
    kv("flight", pairs, "");
  }

  function errors(d) {
    var by = (d.metrics || {}).errors_by_operation, rows = [];
    if (by) {
      Object.keys(by).sort().forEach(function (o) {
        rows.push(row([o, num("td", "errors." + o, by[o])]));
      });
    }
    table("errors", ["operation", "errors"], rows,
      by ? "no errors" : "not reported by this version");
  }

  function degradations(d) {
    var ev = (d.degradations || []).slice(-20).reverse();
    table("history", ["time", "layer", "event", "operation", "error"], ev.map(function (e) {
      var kind = el("td", "text " + (e.event === "degraded" ? "bad" : "ok"), e.event);
      return row([num("td", "degradation.at", e.at, clock), e.layer, kind, e.operation || "",
        e.error || ""]);
    }), "no degradation so far");
    $("history-count").replaceChildren(num("span", "degradations", (d.degradations || []).length));
  }

  function topKeys(d) {
    if (!cfg.show_keys) { return; }
    table("top", ["key", "hits", "\u00b1"], (d.top_keys || []).map(function (k, i) {
      var key = el("td", "text key", k.key); key.setAttribute("data-stat", "top." + i + ".key");
      key.title = k.key;
      return row([key, num("td", "top." + i + ".hits", k.hits),
        num("td", "top." + i + ".error", k.error)]);
    }), "no hits counted yet");
  }

  function render(d) {
    last = d; lastAt = Date.now();
    remember(d);
    cards(d); chart(d); layers(d); operations(d); flight(d); errors(d); degradations(d); topKeys(d);
    $("updated").replaceChildren(num("span", "time", d.time, clock));
    $("polls").replaceChildren(num("span", "polls", polls));
  }

  function tick() {
    Array.prototype.forEach.call(document.querySelectorAll(".countdown"), function (e) {
      e.textContent = backIn(parseFloat(e.getAttribute("data-until")));
    });
  }

  function poll() {
    var headers = { "Accept": "application/json" };
    if (cfg.token) { headers.Authorization = "Bearer " + cfg.token; }
    fetch(cfg.json_url, { headers: headers, cache: "no-store", credentials: "same-origin" })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (d) {
        polls += 1; render(d);
        $("state").className = "ok"; $("state").textContent = "live";
      })
      .catch(function (e) {
        failures += 1;
        $("state").className = "bad"; $("state").textContent = "poll failed: " + e.message;
        $("failures").replaceChildren(num("span", "failures", failures));
      })
      .then(function () { setTimeout(poll, cfg.refresh * 1000); });
  }

  render(cfg.initial);
  setInterval(tick, 1000);
  setTimeout(poll, cfg.refresh * 1000);
})();
"""

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{title} - cache stats</title>
<style nonce="{nonce}">{style}</style>
</head><body>
<header><h1>{title}</h1>
<span class="mute">updated <span id="updated"></span></span>
<span id="state" class="mute">loading</span>
<span class="mute">polls <span id="polls"></span> every {refresh} s,
failed <span id="failures"><span data-stat="failures" data-value="0">0</span></span></span>
</header>
<div id="cards"></div>
<div class="grid">
<section><h2>Hit rate per layer (per refresh)</h2>
<svg id="chart-svg" viewBox="0 0 600 160" preserveAspectRatio="none"></svg>
<div id="legend"></div></section>
<section class="tall"><h2>Degradations (<span id="history-count"></span>, newest first)</h2>
<div id="history"></div></section>
</div>
<section><h2>Layers</h2><div id="layers"></div></section>
<div class="grid3">
<section><h2>Latency per operation</h2><div id="ops"></div></section>
<section><h2>Bus and single-flight</h2><div id="flight"></div></section>
<section><h2>Errors by operation</h2><div id="errors"></div></section>
</div>
{top}
<script type="application/json" id="lc-config">{config}</script>
<script nonce="{nonce}">{script}</script>
</body></html>
"""

_TOP = '<section><h2>Top keys by hits</h2><div id="top"></div></section>'


def _json_block(data: Any) -> str:
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def render(title: str, nonce: str, config: dict[str, Any]) -> str:
    """The dashboard page for one response."""
    refresh = float(config["refresh"])
    return _TEMPLATE.format(
        title=html.escape(title),
        nonce=nonce,
        style=_STYLE,
        refresh=f"{refresh:g}",
        top=_TOP if config.get("show_keys") else "",
        config=_json_block(config),
        script=_SCRIPT,
    )
