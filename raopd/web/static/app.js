// raopd's page: state from the event stream (api/v1/events), control through the API.
// Every URL is relative, so the page works under any path prefix (an Ingress).
"use strict";

const $ = (id) => document.getElementById(id);
let current = null;        // the last state document
let receivedAt = 0;        // performance.now() when it arrived
let coverTag = null;       // the etag of the cover shown
let history = [];          // [{at, sync_error_ms, correction_ppm}]
let dragging = false;      // the volume slider is in the user's hand
let polling = null;        // fallback when the stream needs a token
const HISTORY_SPAN = 300;  // seconds shown in the graph

function token() { return localStorage.getItem("raopd-token") || ""; }

function authHeaders() {
  const t = token();
  return t ? { Authorization: "Bearer " + t } : {};
}

function clock(seconds) {
  if (!isFinite(seconds) || seconds < 0) seconds = 0;
  const s = Math.floor(seconds % 60);
  return Math.floor(seconds / 60) + ":" + String(s).padStart(2, "0");
}

function text(id, value) { $(id).textContent = value; }

function render(state) {
  current = state;
  receivedAt = performance.now();
  document.body.dataset.status = state.status;
  document.body.dataset.serverTime = String(state.server_time);  // when the server made it
  text("speaker", state.speaker);
  document.title = state.speaker + " – raopd";
  const sender = state.sender;
  const words = { idle: "Idle", playing: "Playing", paused: "Paused" };
  text("status", words[state.status] + (sender && state.status !== "idle" ? " from " + sender.name : ""));
  const track = state.track;
  const playing = state.status !== "idle";
  text("title", playing ? (track.title || "Unknown title") : "Nothing playing");
  text("artist", playing ? (track.artist || "") : "");
  text("album", playing ? (track.album || "") : "");
  text("sender", playing && sender ? sender.name : "–");
  renderCover(playing ? state.artwork : null, track);
  renderVolume(state.volume);
  renderRemote(state.remote);
  renderHealth(state);
  if (state.change === "sync" && state.sync) {
    history.push({ at: state.server_time, sync_error_ms: state.sync.sync_error_ms,
                   correction_ppm: state.sync.correction_ppm });
    drawGraph();
  }
  tick();
}

function renderCover(artwork, track) {
  const img = $("cover");
  if (!artwork) {
    coverTag = null;
    img.hidden = true;
    img.removeAttribute("src");
    $("no-cover").hidden = false;
    return;
  }
  if (artwork.etag !== coverTag) {
    coverTag = artwork.etag;
    img.src = artwork.url;
  }
  img.alt = "Cover" + (track.album ? " of " + track.album : "");
  img.hidden = false;
  $("no-cover").hidden = true;
}

function renderVolume(volume) {
  const slider = $("volume");
  if (!volume) { text("volume-text", "–"); return; }
  const label = volume.muted ? "muted" :
    Math.round(volume.percent) + "% (" + (volume.db === null ? "muted" : volume.db.toFixed(1) + " dB") + ")";
  text("volume-text", label);
  slider.setAttribute("aria-valuetext", label);
  if (!dragging) slider.value = String(Math.round(volume.percent));
}

function renderRemote(remote) {
  for (const button of document.querySelectorAll("button[data-command]")) {
    const ok = button.dataset.command === "stop" ? remote.stop : remote.available;
    button.disabled = !ok;
    button.title = ok ? "" : (remote.reason || "");
    button.setAttribute("aria-describedby", "remote-reason");
  }
  $("volume").disabled = !remote.available;
  text("remote-reason", remote.available ? "" : (remote.reason || ""));
}

function yesNo(id, value) {
  const el = $(id);
  el.textContent = value ? "yes" : "no";
  el.className = value ? "yes" : "no";
}

function renderHealth(state) {
  const sync = state.sync;
  if (sync) {
    text("h-sync", sync.sync_error_ms.toFixed(2) + " ms");
    text("h-correction", sync.correction_ppm.toFixed(1) + " ppm");
    text("h-drift", sync.drift_ppm === null ? "not measured yet" : sync.drift_ppm.toFixed(1) + " ppm");
    text("h-packets", sync.packets_lost + " / " + sync.packets_resent);
    text("h-underruns", String(sync.underruns));
    yesNo("h-bitexact", sync.bit_exact);
  } else {
    for (const id of ["h-sync", "h-correction", "h-drift", "h-packets", "h-underruns", "h-bitexact"]) {
      text(id, "–");
      $(id).className = "";
    }
  }
  const stream = state.stream;
  text("h-stream", stream ? stream.codec + ", " + (stream.encrypted ? "encrypted" : "not encrypted") +
       (stream.latency_ms === null ? "" : ", latency " + Math.round(stream.latency_ms) + " ms") : "–");
  text("h-output", state.output.device + (state.output.open ? "" : " (not open)"));
}

function tick() {
  if (!current) return;
  const progress = current.progress;
  const bar = $("progress");
  if (!progress || current.status === "idle") {
    bar.value = 0;
    bar.max = 1;
    bar.setAttribute("aria-valuetext", "no position");
    text("time", "0:00 / 0:00");
    return;
  }
  let position = progress.position_now_s;
  if (progress.moving) position += (performance.now() - receivedAt) / 1000;
  position = Math.min(position, progress.duration_s);
  bar.max = Math.max(progress.duration_s, 0.001);
  bar.value = position;
  const shown = clock(position) + " / " + clock(progress.duration_s);
  bar.setAttribute("aria-valuetext", shown);
  text("time", shown);
}

function drawGraph() {
  if (!current) return;
  const end = current.server_time;
  history = history.filter((p) => p.at > end - HISTORY_SPAN);
  const scaleError = Math.max(1, ...history.map((p) => Math.abs(p.sync_error_ms)));
  const scalePpm = Math.max(10, ...history.map((p) => Math.abs(p.correction_ppm)));
  const line = (value, scale) => history.map((p) => {
    const x = 300 - ((end - p.at) / HISTORY_SPAN) * 300;
    const y = 50 - (value(p) / scale) * 48;
    return x.toFixed(1) + "," + y.toFixed(1);
  }).join(" ");
  $("graph-error").setAttribute("points", line((p) => p.sync_error_ms, scaleError));
  $("graph-correction").setAttribute("points", line((p) => p.correction_ppm, scalePpm));
  text("graph-error-scale", "(±" + scaleError.toFixed(1) + " ms)");
  text("graph-correction-scale", "(±" + Math.round(scalePpm) + " ppm)");
}

async function control(url, options) {
  text("control-error", "");
  try {
    const reply = await fetch(url, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
    if (!reply.ok) {
      const body = await reply.json().catch(() => ({ message: reply.statusText }));
      if (reply.status === 401) $("token-box").open = true;
      text("control-error", body.message || ("error " + reply.status));
    }
  } catch (err) {
    text("control-error", "The speaker did not answer: " + err);
  }
}

function connect() {
  const source = new EventSource("api/v1/events");
  source.addEventListener("state", (event) => render(JSON.parse(event.data)));
  source.addEventListener("error", async () => {
    text("status", "Reconnecting…");
    const probe = await fetch("api/v1/state", { headers: authHeaders() }).catch(() => null);
    if (probe && probe.status === 401 && !polling) {
      // The stream wants a token an EventSource cannot send: ask for the state instead.
      source.close();
      $("token-box").open = true;
      polling = setInterval(poll, 1000);
    }
  });
}

async function poll() {
  const reply = await fetch("api/v1/state", { headers: authHeaders() }).catch(() => null);
  if (reply && reply.ok) render(await reply.json());
}

async function loadHistory() {
  const reply = await fetch("api/v1/history", { headers: authHeaders() }).catch(() => null);
  if (reply && reply.ok) {
    history = (await reply.json()).points.concat(history);
    drawGraph();
  }
}

function setup() {
  for (const button of document.querySelectorAll("button[data-command]")) {
    button.addEventListener("click", () =>
      control("api/v1/control/" + button.dataset.command, { method: "POST" }));
  }
  const slider = $("volume");
  slider.addEventListener("input", () => { dragging = true; });
  slider.addEventListener("change", () => {
    dragging = false;
    control("api/v1/volume", {
      method: "PUT",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ percent: Number(slider.value) }),
    });
  });
  $("token").value = token();
  $("token-save").addEventListener("click", () => {
    localStorage.setItem("raopd-token", $("token").value);
    text("control-error", "");
  });
  setInterval(tick, 250);
  loadHistory();
  connect();
}

document.addEventListener("DOMContentLoaded", setup);
