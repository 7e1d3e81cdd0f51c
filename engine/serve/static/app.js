// arsel browser client: camera -> arsel.v1 frames; results -> masks, boxes, 3D figures and a HUD.
// Page parameters: ?token=T (server token), &side=640 (longest side sent), &quality=0.8 (JPEG),
// &inflight=1 (frames in flight, at most the server's max_inflight), &camera=user|environment.

import { Session } from "./session.js";
import { nowNs } from "./wire.js";
import { MaskLayer, MarksLayer, colorOf, figures3d } from "./view.js";
import { PointerInput } from "./input.js";
import { decodeMask, rleCounts } from "./rle.js";

const STALE_RESULT_MS = 2500;  // no result for this long: show the live camera, drop the overlay
const GAZE_EVERY_MS = 33;
const PENDING_ADD_MS = 30000;  // an "add" whose object has not appeared by then selects nothing
const HUD_EVERY_MS = 250;

const params = new URLSearchParams(location.search);
function num(name, fallback, lo, hi) {
  const v = Number(params.get(name));
  return params.has(name) && Number.isFinite(v) ? Math.min(Math.max(v, lo), hi) : fallback;
}
const cfg = {
  token: params.get("token") || "",
  maxSide: Math.round(num("side", 640, 64, 4096)),
  quality: num("quality", 0.8, 0.3, 1),
  inflight: Math.round(num("inflight", 1, 1, 8)),
  facing: params.get("camera") === "user" ? "user" : "environment",
};

const $ = (id) => document.getElementById(id);
const el = {
  wrap: $("wrap"), stage: $("stage"), video: $("video"), view: $("view"), masks: $("masks"), marks: $("marks"),
  hud: $("hud"), status: $("status"), objects: $("objects"), conn: $("conn"), gaze: $("gaze"), bg: $("bg"),
  live: $("live"), newObj: $("new"), remove: $("remove"), clear: $("clear"), camera: $("camera"),
};
const viewCtx = el.view.getContext("2d");
const maskLayer = new MaskLayer(el.masks);
const marksLayer = new MarksLayer(el.marks);

const ui = {
  frameW: 0, frameH: 0, trackLabel: "", cameraError: "", stream: null,
  videoFrames: 0, sentVideoFrame: -1, countingFrames: false,  // camera frames seen / last sent
  displayed: null,  // {frame_id, bitmap}: the frame of the newest result drawn
  showingLive: true,  // the view shows the live camera (live toggle, or no recent result)
  drawn: null,  // {frame_id, objects}: what the mask layer shows now
  history: [],  // the last 30 results drawn: {frame_id, objects}
  lastIds: new Set(),  // object ids of the newest result
  lastResultAt: 0, selectedId: null, pendingAdd: null, prompts: new Map(), promptsSent: [], errors: [],
  dragBox: null, hover: null, lastGazeAt: 0, gazeActive: false, lastHudAt: 0, retryMs: 1000,
};

const session = new Session({
  token: cfg.token, quality: cfg.quality, inflight: cfg.inflight,
  onWelcome: (msg) => {
    ui.retryMs = 1000;
    setConn(true, `session ${msg.session_id} · ${msg.model}`);
  },
  onResult,
  onError: (msg) => {
    if (ui.pendingAdd && msg.frame_id === ui.pendingAdd.frame_id) ui.pendingAdd = null;  // the add was refused
    ui.errors.push(msg);
    if (ui.errors.length > 50) ui.errors.shift();
    setStatus(`server: ${msg.code}: ${msg.message}`);
  },
  onClose,
  onStatus: setStatus,
});

function setStatus(text) {
  el.status.textContent = text;
}

function setConn(ok, text) {
  el.conn.textContent = ok ? "● live" : "● offline";
  el.conn.className = ok ? "ok" : "bad";
  if (text) setStatus(ui.cameraError || text);  // a camera problem stays on screen
}

function onClose(ev) {
  ui.prompts.clear();
  ui.lastIds = new Set();
  ui.selectedId = null;
  ui.pendingAdd = null;
  if (ev.code === 4401) {
    setConn(false, "unauthorized: this server needs its token; open the page as ...?token=YOUR_TOKEN");
  } else if (ev.code === 1013) {
    setConn(false, "server busy: all sessions are taken; retrying in 5 s");
    setTimeout(() => session.connect(), 5000);
  } else {
    setConn(false, `disconnected (${ev.code}${ev.reason ? ": " + ev.reason : ""}); retrying`);
    setTimeout(() => session.connect(), ui.retryMs);
    ui.retryMs = Math.min(ui.retryMs * 2, 10000);
  }
}

// ---------------------------------------------------------------- camera and layout
async function startCamera() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    ui.cameraError = "no camera API here: browsers allow cameras only on https:// or http://localhost; " +
      "start arsel serve with --tls-cert/--tls-key (and --token) and open its https:// URL";
    setStatus(ui.cameraError);
    return;
  }
  if (ui.stream) ui.stream.getTracks().forEach((t) => t.stop());
  try {
    ui.stream = await navigator.mediaDevices.getUserMedia({ audio: false,
      video: { facingMode: cfg.facing, width: { ideal: 640 }, height: { ideal: 480 } } });
  } catch (err) {
    ui.cameraError = `camera: ${err.name}: ${err.message}` +
      (err.name === "NotAllowedError" ? " (allow the camera for this site)" : "");
    setStatus(ui.cameraError);
    return;
  }
  ui.cameraError = "";
  ui.trackLabel = ui.stream.getVideoTracks()[0].label;
  el.video.srcObject = ui.stream;
  await el.video.play().catch(() => {});
  if (el.video.requestVideoFrameCallback && !ui.countingFrames) {
    ui.countingFrames = true;
    const onFrame = () => {
      ui.videoFrames++;
      el.video.requestVideoFrameCallback(onFrame);
    };
    el.video.requestVideoFrameCallback(onFrame);
  }
}

function updateFrameSize() {
  const vw = el.video.videoWidth;
  const vh = el.video.videoHeight;
  if (!vw || !vh) return false;
  const s = Math.min(1, cfg.maxSide / Math.max(vw, vh));
  const w = Math.round(vw * s);
  const h = Math.round(vh * s);
  if (w !== ui.frameW || h !== ui.frameH) {
    ui.frameW = w;
    ui.frameH = h;
    for (const c of [el.view, el.marks]) {
      c.width = w;
      c.height = h;
    }
    maskLayer.resize(w, h);
    fit();
  }
  return true;
}

function fit() {
  if (!ui.frameW) return;
  const s = Math.min(el.wrap.clientWidth / ui.frameW, el.wrap.clientHeight / ui.frameH);
  el.stage.style.width = `${Math.max(1, Math.floor(ui.frameW * s))}px`;
  el.stage.style.height = `${Math.max(1, Math.floor(ui.frameH * s))}px`;
}

// ---------------------------------------------------------------- results
function onResult(msg, frame) {
  ui.lastResultAt = performance.now();
  const before = ui.lastIds;
  ui.lastIds = new Set(msg.objects.map((o) => o.id));
  if (ui.pendingAdd && performance.now() - ui.pendingAdd.at > PENDING_ADD_MS) ui.pendingAdd = null;
  if (ui.pendingAdd) {
    const born = msg.objects.find((o) => !before.has(o.id));  // first seen in this result
    if (born) {
      ui.selectedId = born.id;
      const { at, ...prompt } = ui.pendingAdd;
      ui.prompts.set(born.id, prompt);
      ui.pendingAdd = null;
    }
  }
  if (ui.selectedId !== null && !msg.objects.some((o) => o.id === ui.selectedId)) ui.selectedId = null;
  if (!el.live.checked) {
    if (!frame) return renderObjects(msg.objects);  // its frame was given up: never draw masks on another
    viewCtx.drawImage(frame.bitmap, 0, 0, el.view.width, el.view.height);
    if (ui.displayed) ui.displayed.bitmap.close();
    ui.displayed = { frame_id: msg.frame_id, bitmap: frame.bitmap };
    ui.showingLive = false;
  } else if (frame) {
    frame.bitmap.close();
  }
  maskLayer.draw(msg.objects);
  ui.drawn = { frame_id: msg.frame_id, objects: msg.objects };
  ui.history.push(ui.drawn);
  if (ui.history.length > 30) ui.history.shift();
  drawMarks();
  renderObjects(msg.objects);
  pump();
}

function dropOverlay() {
  maskLayer.clear();
  ui.drawn = null;
  drawMarks();
  renderObjects([]);
}

function drawMarks() {
  const prompt = ui.selectedId !== null ? ui.prompts.get(ui.selectedId) : ui.pendingAdd;
  const onScreen = prompt && ui.displayed && !ui.showingLive && prompt.frame_id === ui.displayed.frame_id;
  marksLayer.draw({
    objects: ui.drawn ? ui.drawn.objects : [], selectedId: ui.selectedId,
    points: onScreen ? prompt.points : [], dragBox: ui.dragBox, gaze: el.gaze.checked ? ui.hover : null,
  });
}

function renderObjects(objects) {
  el.objects.replaceChildren(...objects.map((o) => {
    const chip = document.createElement("button");
    chip.className = "chip" + (o.id === ui.selectedId ? " selected" : "");
    chip.style.setProperty("--c", `rgb(${colorOf(o.id).join(",")})`);
    const f3 = figures3d(o);
    chip.textContent = `#${o.id} ${o.status} ${o.score.toFixed(2)}${f3 ? " · " + f3 : ""}`;
    chip.dataset.objectId = o.id;
    chip.addEventListener("click", () => {
      ui.selectedId = ui.selectedId === o.id ? null : o.id;
      renderObjects(ui.drawn ? ui.drawn.objects : []);
      drawMarks();
    });
    return chip;
  }));
  el.remove.disabled = ui.selectedId === null;
}

// ---------------------------------------------------------------- prompts
/** The frame a prompt is made on: the one on screen (its result's frame), or the newest sent in live view. */
function promptFrameId() {
  if (ui.showingLive) return session.lastSentId;
  return ui.displayed ? ui.displayed.frame_id : null;
}

const r1 = (v) => Math.round(v * 10) / 10;

function sendPrompt(fields) {
  const msg = { type: "prompt", object_id: null, ...fields };
  if (!session.sendText(msg)) return false;
  ui.promptsSent.push(msg);
  if (ui.promptsSent.length > 50) ui.promptsSent.shift();
  return true;
}

function onPoint(x, y, label) {
  const fid = promptFrameId();
  if (fid === null) return setStatus("wait for the first result before prompting");
  const pt = [r1(x), r1(y), label];
  const id = ui.selectedId;
  if (id === null) {
    if (label === 0) return setStatus("a background point refines the selected object: select one first");
    const prompt = { frame_id: fid, points: [pt], box: null };
    if (sendPrompt({ ...prompt, action: "add" })) ui.pendingAdd = { ...prompt, at: performance.now() };
  } else {
    // refine replaces the object's prompt: keep this frame's points; on a newer frame, start from
    // the object's current box there (or its old points when it has no mask) plus the new point.
    const prev = ui.prompts.get(id) || { frame_id: -1, points: [], box: null };
    let prompt;
    if (prev.frame_id === fid) {
      prompt = { frame_id: fid, points: [...prev.points, pt].slice(-64), box: prev.box };
    } else {
      const now = ui.drawn && ui.drawn.objects.find((o) => o.id === id);
      const box = now && now.bbox_xyxy ? now.bbox_xyxy.map(r1) : null;
      prompt = { frame_id: fid, points: box ? [pt] : [...prev.points, pt].slice(-64), box };
    }
    if (sendPrompt({ ...prompt, object_id: id, action: "refine" })) ui.prompts.set(id, prompt);
  }
  drawMarks();
}

function onBox(box) {
  const fid = promptFrameId();
  if (fid === null) return setStatus("wait for the first result before prompting");
  if (box[2] - box[0] < 4 || box[3] - box[1] < 4) return;
  const prompt = { frame_id: fid, points: [], box: box.map(r1) };
  if (sendPrompt({ ...prompt, action: "add" })) ui.pendingAdd = { ...prompt, at: performance.now() };
  drawMarks();
}

function removeSelected() {
  const fid = promptFrameId();
  if (ui.selectedId === null || fid === null) return;
  sendPrompt({ frame_id: fid, object_id: ui.selectedId, action: "remove" });
  ui.prompts.delete(ui.selectedId);
  ui.selectedId = null;
}

function clearAll() {
  const fid = promptFrameId();
  if (fid === null) return;
  sendPrompt({ frame_id: fid, action: "clear" });
  ui.prompts.clear();
  ui.selectedId = null;
  ui.pendingAdd = null;
}

// ---------------------------------------------------------------- mouse as gaze
function sendGaze(confidence) {
  if (!ui.hover) return;
  session.sendText({ type: "cursor", t_ns: nowNs(),
    x: r1(ui.hover[0]), y: r1(ui.hover[1]), confidence });
  ui.lastGazeAt = performance.now();
  ui.gazeActive = confidence > 0;
}

function onHover(xy) {
  if (!xy && ui.gazeActive) sendGaze(0);  // the pointer left: looking away
  ui.hover = xy;
  if (el.gaze.checked) drawMarks();
}

// ---------------------------------------------------------------- HUD
function ms(v) {
  return Number.isFinite(v) ? v.toFixed(v < 10 ? 1 : 0) : "-";
}

function renderHud(now) {
  const s = session.stats;
  const lat = s.latency;
  const lines = [
    `rtt ${ms(s.rtt.last)} ms (p50 ${ms(s.rtt.median)}) · net ${ms(s.netRtt.median)} ms`,
    lat ? `server ${ms(lat.server_total)} ms: queue ${ms(lat.queue)} · motion ${ms(lat.motion)} · decode ` +
      `${ms(lat.decode)} · post ${ms(lat.postprocess)} · lift ${ms(lat.lift)}` : "server -",
    `fps ${s.fps.perSecond(now).toFixed(1)} (sent ${s.sent.perSecond(now).toFixed(1)}) · dropped ${s.dropped}` +
      ` · unanswered ${s.unanswered}`,
    `keyframe ${s.keyframeId} · age ${s.ageFrames} · ${ui.frameW}x${ui.frameH} · ` +
      `${Math.round(s.frameBytes.median / 1024) || 0} KiB`,
  ];
  el.hud.textContent = lines.join("\n");
  el.hud.dataset.rttMs = Number.isFinite(s.rtt.last) ? s.rtt.last.toFixed(1) : "";
}

// ---------------------------------------------------------------- main loop
function pump() {
  if (!updateFrameSize() || !session.canSend()) return;
  if (el.video.requestVideoFrameCallback && ui.videoFrames === ui.sentVideoFrame) return;  // same camera frame
  ui.sentVideoFrame = ui.videoFrames;
  session.sendFrame(el.video, ui.frameW, ui.frameH).catch((err) => setStatus(`capture failed: ${err}`));
}

function tick() {
  requestAnimationFrame(tick);
  const now = performance.now();
  session.tick(now);
  const stale = now - ui.lastResultAt > STALE_RESULT_MS;
  ui.showingLive = el.live.checked || stale;
  if (updateFrameSize() && ui.showingLive) {
    viewCtx.drawImage(el.video, 0, 0, el.view.width, el.view.height);
    if (stale && ui.drawn) dropOverlay();
  }
  pump();
  if (el.gaze.checked && ui.hover && now - ui.lastGazeAt >= GAZE_EVERY_MS) sendGaze(1);
  if (now - ui.lastHudAt >= HUD_EVERY_MS) {
    ui.lastHudAt = now;
    renderHud(now);
  }
}

// ---------------------------------------------------------------- wiring
new PointerInput(el.marks, {
  onPoint, onBox, onHover,
  onDrag: (box) => {
    ui.dragBox = box;
    drawMarks();
  },
}, () => el.bg.checked);
el.newObj.addEventListener("click", () => {
  ui.selectedId = null;
  renderObjects(ui.drawn ? ui.drawn.objects : []);
  drawMarks();
});
el.remove.addEventListener("click", removeSelected);
el.clear.addEventListener("click", clearAll);
el.gaze.addEventListener("change", () => {
  if (!el.gaze.checked && ui.gazeActive) sendGaze(0);
  drawMarks();
});
el.camera.addEventListener("click", () => {
  cfg.facing = cfg.facing === "user" ? "environment" : "user";
  startCamera();
});
window.addEventListener("keydown", (e) => {
  if (e.target instanceof HTMLInputElement) return;
  if (e.key === "Escape") el.newObj.click();
  else if (e.key === "Delete" || e.key === "Backspace") removeSelected();
});
new ResizeObserver(fit).observe(el.wrap);

// For tests and the console: state, the RLE decoder, and the mask layer as drawn together with the
// result and the frame it shows (read in one call, so they always belong together).
window.arsel = {
  cfg, ui, session, colorOf, decodeMask, rleCounts,
  shown: () => ui.displayed && !ui.showingLive &&
    { frame_id: ui.displayed.frame_id, view: el.view.toDataURL("image/png") },
  overlay: () => ui.drawn && { frame_id: ui.drawn.frame_id, objects: ui.drawn.objects,
    png: el.masks.toDataURL("image/png"), width: el.masks.width, height: el.masks.height,
    shown_frame_id: ui.displayed && !ui.showingLive ? ui.displayed.frame_id : null,
    view: el.view.toDataURL("image/png") },
};

setConn(false, "starting the camera");
startCamera().then(() => session.connect());
requestAnimationFrame(tick);
