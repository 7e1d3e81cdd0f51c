// One arsel.v1 session: the WebSocket, the capture-and-send loop with a bounded number of frames
// in flight, results matched to the frames they belong to, ping/pong and the statistics for the HUD.

import { PROTOCOL, nowNs, packMessage, unpackMessage, streamUrl, Rolling, Rate } from "./wire.js";

const STALE_FRAME_MS = 15000;  // a frame with no result or error by then is given up (a lost message)
const PING_EVERY_MS = 2000;

export class Session {
  /**
   * @param {object} opts  token, quality (JPEG 0..1), inflight (frames in flight wanted),
   *   onResult(msg, frame), onWelcome(msg), onError(msg), onClose(event), onStatus(text)
   *   frame = {frame_id, bitmap, width, height} of the frame sent, or null when it is unknown.
   */
  constructor(opts) {
    this.opts = opts;
    this.ws = null;
    this.welcome = null;
    this.quality = opts.quality;
    this.nextFrameId = 0;
    this.lastSentId = null;
    this.inflight = new Map();
    this.capturing = false;
    this.capture = document.createElement("canvas");
    this.captureCtx = this.capture.getContext("2d");
    this.stats = {
      rtt: new Rolling(30), netRtt: new Rolling(10), clockOffsetMs: NaN, fps: new Rate(), sent: new Rate(),
      results: 0, unanswered: 0, errors: 0, latency: null, dropped: 0, keyframeId: -1, ageFrames: 0,
      frameBytes: new Rolling(10),
    };
    this.lastPingAt = 0;
  }

  get open() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  get maxInflight() {
    const server = this.welcome ? this.welcome.max_inflight : 1;
    return Math.max(1, Math.min(this.opts.inflight, server));
  }

  connect() {
    const ws = new WebSocket(streamUrl(location.href, this.opts.token));
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => {
      this.sendText({ type: "hello", client: `arsel-browser (${navigator.userAgent})`.slice(0, 200),
        mask_encoding: "coco_rle" });
      this.opts.onStatus("connected, waiting for welcome");
    };
    ws.onmessage = (ev) => {
      if (ws !== this.ws) return;
      if (typeof ev.data === "string") this.onText(JSON.parse(ev.data));
      else this.onBinary(ev.data);
    };
    ws.onclose = (ev) => {
      if (ws !== this.ws) return;
      this.reset();
      this.opts.onClose(ev);
    };
  }

  reset() {
    for (const r of this.inflight.values()) r.bitmap.close();
    this.inflight.clear();
    this.welcome = null;
    this.ws = null;
  }

  sendText(msg) {
    if (!this.open) return false;
    this.ws.send(JSON.stringify(msg));
    return true;
  }

  onText(msg) {
    if (msg.type === "welcome") {
      if (msg.protocol !== PROTOCOL) this.opts.onStatus(`server speaks ${msg.protocol}, this page ${PROTOCOL}`);
      this.welcome = msg;
      this.opts.onWelcome(msg);
    } else if (msg.type === "result") {
      this.onResult(msg);
    } else if (msg.type === "pong") {
      const t3 = nowNs();
      this.stats.netRtt.push((t3 - msg.t0 - (msg.t2 - msg.t1)) / 1e6);
      this.stats.clockOffsetMs = ((msg.t1 - msg.t0) + (msg.t2 - t3)) / 2e6;
    } else if (msg.type === "error") {
      this.stats.errors++;
      if (msg.frame_id !== undefined && this.inflight.has(msg.frame_id)) {
        this.inflight.get(msg.frame_id).bitmap.close();
        this.inflight.delete(msg.frame_id);
      }
      this.opts.onError(msg);
    }
  }

  onBinary(buffer) {
    // This page asks for coco_rle masks; a binary result (png masks) is read for its header only.
    const [header] = unpackMessage(buffer);
    if (header.type === "result") this.onResult(header);
  }

  onResult(msg) {
    const now = performance.now();
    let frame = null;
    for (const [id, r] of this.inflight) {
      if (id > msg.frame_id) continue;
      this.inflight.delete(id);
      if (id === msg.frame_id) {
        frame = r;
      } else {  // dropped by the server (newest frame wins): it gets no result
        r.bitmap.close();
        this.stats.unanswered++;
      }
    }
    const s = this.stats;
    s.results++;
    s.fps.tick(now);
    if (frame) s.rtt.push(now - frame.sentAt);
    s.latency = msg.latency_ms;
    s.dropped = msg.dropped;
    s.keyframeId = msg.keyframe_id;
    s.ageFrames = msg.embedding_age_frames;
    this.opts.onResult(msg, frame);
  }

  /** Housekeeping on every animation frame: give up stale frames, ping now and then. */
  tick(now = performance.now()) {
    for (const [id, r] of this.inflight) {
      if (now - r.sentAt > STALE_FRAME_MS) {
        r.bitmap.close();
        this.inflight.delete(id);
        this.stats.unanswered++;
      }
    }
    if (this.open && now - this.lastPingAt > PING_EVERY_MS) {
      this.lastPingAt = now;
      this.sendText({ type: "ping", t0: nowNs() });
    }
  }

  canSend() {
    return this.open && this.welcome !== null && !this.capturing && this.inflight.size < this.maxInflight;
  }

  /**
   * Capture `source` (a video element) at width x height, send it as a JPEG frame, and keep an
   * ImageBitmap of exactly the pixels sent, to show beside its result. Only the video is drawn on
   * the capture canvas, so no overlay ever goes into a frame.
   */
  async sendFrame(source, width, height) {
    if (!this.canSend()) return false;
    this.capturing = true;
    const ws = this.ws;
    try {
      const c = this.capture;
      if (c.width !== width || c.height !== height) {
        c.width = width;
        c.height = height;
      }
      const tCaptureNs = nowNs();
      this.captureCtx.drawImage(source, 0, 0, width, height);
      const bitmapP = createImageBitmap(c);
      const blob = await new Promise((resolve) => c.toBlob(resolve, "image/jpeg", this.quality));
      const bitmap = await bitmapP;
      if (!blob || ws !== this.ws || !this.open) {
        bitmap.close();
        return false;
      }
      const bytes = await blob.arrayBuffer();
      const limit = this.welcome.max_frame_bytes;
      if (bytes.byteLength + 4096 > limit) {  // leave room for the header; try smaller next time
        this.quality = Math.max(0.3, this.quality - 0.1);
        bitmap.close();
        this.opts.onStatus(`JPEG of ${bytes.byteLength} bytes is over the server's ${limit}; lowering quality`);
        return false;
      }
      const frameId = this.nextFrameId++;
      const header = { type: "frame", frame_id: frameId, t_capture_ns: tCaptureNs,
        image: { encoding: "jpeg", width, height, bytes: bytes.byteLength } };
      this.inflight.set(frameId, { frame_id: frameId, bitmap, width, height, sentAt: performance.now() });
      this.ws.send(packMessage(header, bytes));
      this.lastSentId = frameId;
      this.stats.sent.tick();
      this.stats.frameBytes.push(bytes.byteLength);
      return true;
    } finally {
      this.capturing = false;
    }
  }
}
