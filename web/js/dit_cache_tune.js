// dit-cache "DiT Cache Tune" node: the curve the tuner measured, drawn on the node.
//
// nodes/tune_node.py returns a UI output "dit_cache_tune" (one entry: curve = {method: [[value, speedup,
// quality], ...]}, target, margin, metric, winner, file); ComfyUI hands it to the node's onExecuted. Each method's
// points are drawn as a line of quality against block speedup, the bar (target + margin) dashed, the winner
// ringed, and "saved <file>" under it, the way dit_cache_panel.js draws a MagCache calibration on its node.
// The panel ("DiT Cache" tab) lists the same curve from the run record (details.tune_curve).
import { app } from "../../../scripts/app.js";

const NODE = "DitCache.Tune";
const UI_KEY = "dit_cache_tune";
const COLORS = ["#4dd0e1", "#e57373", "#ba68c8", "#8fc98f", "#e0a030", "#f0f0f0", "#5c8dd6"];
const CURVE_H = 150; // plot 110, legend and file lines

function drawTune(node, ctx, t) {
  const [w, h] = node.size;
  const x0 = 34, x1 = w - 8, top = h - CURVE_H, bottom = top + 110;
  const pts = Object.values(t.curve).flat();
  const bar = t.target + t.margin;
  const sx = pts.map((p) => p[1]), qy = pts.map((p) => Math.min(p[2], 60));
  const xmax = Math.max(1.5, ...sx), xmin = 1;
  const ymin = Math.min(bar - 2, ...qy), ymax = Math.max(bar + 2, ...qy);
  const x = (v) => x0 + ((v - xmin) / (xmax - xmin || 1)) * (x1 - x0);
  const y = (v) => bottom - ((Math.min(v, 60) - ymin) / (ymax - ymin || 1)) * (bottom - top - 6);
  ctx.save();
  ctx.fillStyle = "rgba(0,0,0,0.25)";
  ctx.fillRect(x0, top, x1 - x0, bottom - top);
  ctx.font = "10px sans-serif";
  ctx.fillStyle = "#aaa";
  ctx.textAlign = "right";
  ctx.fillText(ymax.toFixed(0), x0 - 3, top + 9);
  ctx.fillText(ymin.toFixed(0), x0 - 3, bottom);
  ctx.fillText(`block speedup → ${xmax.toFixed(1)}x`, x1, bottom + 11);
  ctx.textAlign = "left";
  ctx.strokeStyle = "#e0a030";
  ctx.setLineDash([4, 3]);
  ctx.beginPath();
  ctx.moveTo(x0, y(bar));
  ctx.lineTo(x1, y(bar));
  ctx.stroke();
  ctx.setLineDash([]);
  let k = 0, legend = x0, drawn = 0;
  for (const [method, list] of Object.entries(t.curve)) {
    const color = COLORS[k++ % COLORS.length];
    ctx.strokeStyle = color;
    ctx.fillStyle = color;
    ctx.lineWidth = 1.3;
    ctx.beginPath();
    list.forEach(([, s, q], i) => (i ? ctx.lineTo(x(s), y(q)) : ctx.moveTo(x(s), y(q))));
    ctx.stroke();
    for (const [, s, q] of list) {
      ctx.beginPath();
      ctx.arc(x(s), y(q), 2.2, 0, 2 * Math.PI);
      q >= bar ? ctx.fill() : ctx.stroke();
      drawn++;
    }
    ctx.fillText(method, legend, bottom + 11);
    legend += ctx.measureText(method).width + 8;
  }
  if (t.winner) {
    const win = t.curve[t.winner.method]?.find((p) => p[0] === t.winner.value);
    if (win) {
      ctx.strokeStyle = "#fff";
      ctx.beginPath();
      ctx.arc(x(win[1]), y(win[2]), 5, 0, 2 * Math.PI);
      ctx.stroke();
    }
  }
  ctx.fillStyle = "#8fc98f";
  let text = t.winner
    ? `${t.winner.method} ${t.winner.input}=${t.winner.value}: ${t.winner.speedup.toFixed(2)}x, ${t.metric} ${t.winner.quality.toFixed(1)} · saved ${t.file}`
    : `no setting met ${t.metric} ${bar}`;
  while (text.length > 8 && ctx.measureText(text).width > x1 - 8) text = text.slice(0, -2);
  ctx.fillText(text, 8, bottom + 25);
  ctx.restore();
  node.ditCacheTuneDrawn = { points: drawn, methods: k }; // what the last frame drew (for a browser test)
}

app.registerExtension({
  name: "dit-cache.tune",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const r = onExecuted?.apply(this, arguments);
      const t = message?.[UI_KEY]?.[0];
      if (t && t.curve && typeof t.curve === "object") {
        this.ditCacheTune = t;
        const min = this.computeSize?.() ?? this.size;
        this.setSize?.([Math.max(this.size[0], 300), Math.max(this.size[1], min[1] + CURVE_H)]);
        this.setDirtyCanvas?.(true, true);
      }
      return r;
    };
    const onDraw = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      const r = onDraw?.apply(this, arguments);
      if (this.ditCacheTune && !this.flags?.collapsed) drawTune(this, ctx, this.ditCacheTune);
      return r;
    };
  },
});
