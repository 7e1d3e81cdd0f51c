// Drawing: the mask layer (filled masks only, one colour per object id), the marks layer (boxes,
// labels, prompt points, the drag box, the gaze cursor) and the HUD text.

import { paintRle } from "./rle.js";

const PALETTE = [
  [255, 64, 64], [64, 160, 255], [64, 220, 96], [255, 200, 0], [200, 80, 255],
  [0, 220, 220], [255, 128, 0], [255, 96, 200], [160, 255, 64], [128, 128, 255],
];
const FILL_ALPHA = 120;
const EDGE_ALPHA = 235;

/** The [r, g, b] an object id is drawn in. */
export function colorOf(id) {
  return PALETTE[(id - 1) % PALETTE.length];
}

function css(rgb, a = 1) {
  return `rgba(${rgb[0]},${rgb[1]},${rgb[2]},${a})`;
}

/** Masks only: alpha > 0 exactly where some object's mask is set (tests read it back). */
export class MaskLayer {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d", { willReadFrequently: true });
    this.labels = new Uint8Array(0);
    this.image = null;
  }

  resize(w, h) {
    if (this.canvas.width !== w || this.canvas.height !== h) {
      this.canvas.width = w;
      this.canvas.height = h;
    }
    if (!this.image || this.image.width !== w || this.image.height !== h) {
      this.image = this.ctx.createImageData(w, h);
      this.labels = new Uint8Array(w * h);
    }
  }

  clear() {
    this.ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
  }

  /** Draw the masks of `objects` (result objects with COCO RLE `mask`); a later object wins an overlap. */
  draw(objects) {
    const withMask = objects.filter((o) => o.mask && o.mask.size[0] > 0 && o.mask.size[1] > 0);
    if (!withMask.length) return this.clear();
    const [h, w] = withMask[0].mask.size;
    this.resize(w, h);
    const labels = this.labels;
    labels.fill(0);
    withMask.forEach((o, i) => paintRle(o.mask, labels, i + 1));
    const data = this.image.data;
    data.fill(0);
    for (let y = 0, o = 0; y < h; y++) {
      for (let x = 0; x < w; x++, o++) {
        const l = labels[o];
        if (!l) continue;
        const edge = x === 0 || y === 0 || x === w - 1 || y === h - 1 || labels[o - 1] !== l ||
          labels[o + 1] !== l || labels[o - w] !== l || labels[o + w] !== l;
        const rgb = colorOf(withMask[l - 1].id);
        const p = o * 4;
        data[p] = rgb[0];
        data[p + 1] = rgb[1];
        data[p + 2] = rgb[2];
        data[p + 3] = edge ? EDGE_ALPHA : FILL_ALPHA;
      }
    }
    this.ctx.putImageData(this.image, 0, 0);
  }
}

function fmt(v, digits = 2) {
  return Number(v).toFixed(digits);
}

/** One line of 3D figures for an object, or "" when the result has none. */
export function figures3d(o) {
  const c = o.box3d ? o.box3d.center_m : o.centroid_m;
  if (!c) return "";
  const dist = Math.hypot(c[0], c[1], c[2]);
  let s = `(${fmt(c[0])}, ${fmt(c[1])}, ${fmt(c[2])}) m, ${fmt(dist)} m away`;
  if (o.box3d) s += `, box ${o.box3d.extent_m.map((e) => fmt(e)).join(" x ")} m`;
  return s;
}

/** Boxes, ids, prompt points, the box being dragged and the gaze cursor, in frame pixels. */
export class MarksLayer {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
  }

  resize(w, h) {
    if (this.canvas.width !== w || this.canvas.height !== h) {
      this.canvas.width = w;
      this.canvas.height = h;
    }
  }

  /** Canvas pixels per CSS pixel, so lines and text keep their on-screen size. */
  scale() {
    const r = this.canvas.getBoundingClientRect();
    return r.width > 0 ? this.canvas.width / r.width : 1;
  }

  draw({ objects, selectedId, points, dragBox, gaze }) {
    const ctx = this.ctx;
    const s = this.scale();
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    ctx.font = `${Math.round(13 * s)}px system-ui, sans-serif`;
    ctx.textBaseline = "bottom";
    for (const o of objects) {
      if (!o.bbox_xyxy) continue;
      const [x0, y0, x1, y1] = o.bbox_xyxy;
      const rgb = colorOf(o.id);
      ctx.lineWidth = (o.id === selectedId ? 3 : 1.5) * s;
      ctx.strokeStyle = css(rgb, o.status === "lost" ? 0.4 : 1);
      ctx.setLineDash(o.status === "lost" ? [6 * s, 4 * s] : []);
      ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
      const label = `#${o.id} ${o.status} ${fmt(o.score)}`;
      const extra = figures3d(o);
      const pad = 3 * s;
      const tw = ctx.measureText(label).width;
      ctx.fillStyle = css(rgb, 0.85);
      ctx.fillRect(x0, Math.max(y0 - 17 * s, 0), tw + 2 * pad, 17 * s);
      ctx.fillStyle = "#000";
      ctx.fillText(label, x0 + pad, Math.max(y0, 17 * s) - pad);
      if (extra) {
        ctx.fillStyle = "#fff";
        ctx.fillText(extra, x0 + pad, Math.min(y1 + 17 * s, this.canvas.height - pad));
      }
    }
    ctx.setLineDash([]);
    for (const [x, y, label] of points) {
      ctx.beginPath();
      ctx.arc(x, y, 5 * s, 0, 2 * Math.PI);
      ctx.fillStyle = label ? "#3f3" : "#f33";
      ctx.fill();
      ctx.lineWidth = 1.5 * s;
      ctx.strokeStyle = "#000";
      ctx.stroke();
    }
    if (dragBox) {
      const [x0, y0, x1, y1] = dragBox;
      ctx.lineWidth = 2 * s;
      ctx.strokeStyle = "#fff";
      ctx.setLineDash([6 * s, 4 * s]);
      ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
      ctx.setLineDash([]);
    }
    if (gaze) {
      ctx.beginPath();
      ctx.arc(gaze[0], gaze[1], 12 * s, 0, 2 * Math.PI);
      ctx.lineWidth = 2 * s;
      ctx.strokeStyle = "rgba(255,255,0,0.9)";
      ctx.stroke();
    }
  }
}
