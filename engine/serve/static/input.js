// Pointer input on the stage (mouse, touch and pen alike, through Pointer Events):
// tap/click = point (shift or the "background" toggle: background point), drag = box,
// and the pointer position for "mouse as gaze".

const DRAG_MIN_CSS_PX = 8;

/**
 * Watches `el` (the top canvas, whose pixels are frame pixels) and calls
 *   onPoint(x, y, label), onBox([x0, y0, x1, y1]), onDrag(box | null), onHover([x, y] | null)
 * with frame-pixel coordinates. `isBackground()` says whether a plain tap is a background point.
 */
export class PointerInput {
  constructor(el, handlers, isBackground) {
    this.el = el;
    this.h = handlers;
    this.isBackground = isBackground;
    this.down = null;
    this.hover = null;
    el.addEventListener("pointerdown", (e) => this.onDown(e));
    el.addEventListener("pointermove", (e) => this.onMove(e));
    el.addEventListener("pointerup", (e) => this.onUp(e));
    el.addEventListener("pointercancel", () => this.cancel());
    el.addEventListener("pointerleave", (e) => this.onLeave(e));
    el.addEventListener("contextmenu", (e) => e.preventDefault());
  }

  /** Client (CSS) coordinates -> frame pixels, clamped to the frame. */
  toFrame(clientX, clientY) {
    const r = this.el.getBoundingClientRect();
    const x = (clientX - r.left) * this.el.width / r.width;
    const y = (clientY - r.top) * this.el.height / r.height;
    return [Math.min(Math.max(x, 0), this.el.width - 1), Math.min(Math.max(y, 0), this.el.height - 1)];
  }

  onDown(e) {
    if (e.button !== undefined && e.button > 0) return;
    e.preventDefault();
    this.el.setPointerCapture?.(e.pointerId);
    this.down = { id: e.pointerId, cx: e.clientX, cy: e.clientY, xy: this.toFrame(e.clientX, e.clientY),
      shift: e.shiftKey, dragging: false };
    this.setHover(e);
  }

  onMove(e) {
    this.setHover(e);
    const d = this.down;
    if (!d || d.id !== e.pointerId) return;
    if (!d.dragging && Math.hypot(e.clientX - d.cx, e.clientY - d.cy) >= DRAG_MIN_CSS_PX) d.dragging = true;
    if (d.dragging) this.h.onDrag(this.box(d.xy, this.toFrame(e.clientX, e.clientY)));
  }

  onUp(e) {
    const d = this.down;
    if (!d || d.id !== e.pointerId) return;
    this.down = null;
    this.h.onDrag(null);
    if (d.dragging) {
      this.h.onBox(this.box(d.xy, this.toFrame(e.clientX, e.clientY)));
    } else {
      const bg = d.shift || e.shiftKey || this.isBackground();
      this.h.onPoint(d.xy[0], d.xy[1], bg ? 0 : 1);
    }
    if (e.pointerType === "touch") this.clearHover();
  }

  onLeave(e) {
    if (this.down && this.down.id === e.pointerId) return;  // captured drags keep going outside
    this.clearHover();
  }

  cancel() {
    this.down = null;
    this.h.onDrag(null);
    this.clearHover();
  }

  setHover(e) {
    this.hover = this.toFrame(e.clientX, e.clientY);
    this.h.onHover(this.hover);
  }

  clearHover() {
    if (this.hover) {
      this.hover = null;
      this.h.onHover(null);
    }
  }

  box(a, b) {
    return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])];
  }
}
