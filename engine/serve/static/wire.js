// arsel.v1 on the wire: binary frame messages, the stream URL, clocks, rolling statistics.

export const PROTOCOL = "arsel.v1";

/** Wall-clock nanoseconds since the epoch (the clock of t_capture_ns and gaze t_ns). */
export function nowNs() {
  return Math.round((performance.timeOrigin + performance.now()) * 1e6);
}

/**
 * One binary message: little-endian uint32 header length, UTF-8 JSON header, then the blobs
 * (ArrayBuffers) back to back in the order the header lists them.
 */
export function packMessage(header, ...blobs) {
  const head = new TextEncoder().encode(JSON.stringify(header));
  const size = 4 + head.length + blobs.reduce((n, b) => n + b.byteLength, 0);
  const out = new Uint8Array(size);
  new DataView(out.buffer).setUint32(0, head.length, true);
  out.set(head, 4);
  let at = 4 + head.length;
  for (const b of blobs) {
    out.set(new Uint8Array(b), at);
    at += b.byteLength;
  }
  return out.buffer;
}

/** Split a binary message into [header object, Uint8Array of the bytes after the header]. */
export function unpackMessage(buffer) {
  const view = new DataView(buffer);
  if (buffer.byteLength < 4) throw new Error("binary message shorter than its header length");
  const n = view.getUint32(0, true);
  if (4 + n > buffer.byteLength) throw new Error("binary header length beyond the message");
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, n)));
  return [header, new Uint8Array(buffer, 4 + n)];
}

/** The session URL beside the page: ws:// for http pages, wss:// for https, with ?token= if given. */
export function streamUrl(pageHref, token) {
  const url = new URL("v1/stream", pageHref);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.search = "";
  url.hash = "";
  if (token) url.searchParams.set("token", token);
  return url.href;
}

/** Median and count of the last `size` values. */
export class Rolling {
  constructor(size = 30) {
    this.size = size;
    this.values = [];
  }

  push(v) {
    this.values.push(v);
    if (this.values.length > this.size) this.values.shift();
  }

  get median() {
    if (!this.values.length) return NaN;
    const s = [...this.values].sort((a, b) => a - b);
    const m = s.length >> 1;
    return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
  }

  get last() {
    return this.values.length ? this.values[this.values.length - 1] : NaN;
  }
}

/** Events per second over the last `windowMs` milliseconds. */
export class Rate {
  constructor(windowMs = 2000) {
    this.windowMs = windowMs;
    this.times = [];
  }

  tick(t = performance.now()) {
    this.times.push(t);
    this.trim(t);
  }

  trim(t) {
    while (this.times.length && t - this.times[0] > this.windowMs) this.times.shift();
  }

  perSecond(t = performance.now()) {
    this.trim(t);
    if (this.times.length < 2) return 0;
    const span = Math.max(t - this.times[0], 1);
    return (this.times.length - 1) * 1000 / span;
  }
}
