// attnprobe explorer: draws recorded attention maps over their image, one sample at a time.
// Data: the JSON in #attnprobe-data (see probe/viz/explorer/payload.py for the blob format);
// data.samples holds each sample's tokens and maps (a dataset's page: several, and a selector).
// window.attnprobeExplorer exposes the state and the maps for tests once the page is ready.
"use strict";
(async function () {
  const data = JSON.parse(document.getElementById("attnprobe-data").textContent);
  const $ = (id) => document.getElementById(id);

  function bytesOf(b64) {
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  async function inflate(b64, frame) {
    const stream = new Blob([bytesOf(b64)]).stream().pipeThrough(new DecompressionStream("deflate"));
    const bytes = new Uint8Array(await new Response(stream).arrayBuffer());
    for (let i = frame; i < bytes.length; i++) bytes[i] = (bytes[i] + bytes[i - frame]) & 255;
    return bytes;
  }

  const LUT = bytesOf(data.lut);
  const layers = data.layers;
  const steps = data.steps;
  const samples = data.samples;
  let S = samples[0], nTok = S.tokens.length;  // the sample drawn
  const svd = data.self_mode === "svd";
  const K = data.svd_k || 0;

  // frame sizes: cross [tokens, q]; self whole [q, q]; self SVD u [q, K] + v^T [K, q]
  function frameSize(kind, layer, tokens) {
    if (kind === "cross") return tokens * layer.hw[0] * layer.hw[1];
    const q = layer.self_hw[0] * layer.self_hw[1];
    return svd ? 2 * q * K : q * q;
  }

  const decoded = samples.map(() => ({ cross: {}, self: {} }));
  const jobs = [];
  samples.forEach((sample, k) => {
    for (const kind of ["cross", "self"]) {
      for (const layer of layers) {
        const entry = sample[kind][String(layer.index)];
        if (!entry) continue;
        const size = frameSize(kind, layer, sample.tokens.length);
        jobs.push(inflate(entry.blob, size).then((b) => { decoded[k][kind][layer.index] = b; }));
      }
    }
  });
  await Promise.all(jobs);
  let frames = decoded[0];

  const state = { sample: 0, layer: 0, step: 0, token: defaultToken(), pixel: null, mode: "cross", preview: null, probeCell: null };

  function defaultToken() {
    if (S.token !== null && S.token !== undefined) return S.token;
    for (let i = nTok - 1; i >= 0; i--) if (!/^<.*>$/.test(S.tokens[i])) return i;
    return 0;
  }

  // torch.nn.functional.interpolate(mode="bilinear", align_corners=False)
  function resize(src, sh, sw, dh, dw) {
    if (sh === dh && sw === dw) return src;
    const out = new Float32Array(dh * dw);
    const sy = sh / dh, sx = sw / dw;
    for (let y = 0; y < dh; y++) {
      const fy = Math.max((y + 0.5) * sy - 0.5, 0), y0 = Math.floor(fy);
      const y1 = y0 < sh - 1 ? y0 + 1 : y0, ly = fy - y0;
      for (let x = 0; x < dw; x++) {
        const fx = Math.max((x + 0.5) * sx - 0.5, 0), x0 = Math.floor(fx);
        const x1 = x0 < sw - 1 ? x0 + 1 : x0, lx = fx - x0;
        out[y * dw + x] = (1 - ly) * ((1 - lx) * src[y0 * sw + x0] + lx * src[y0 * sw + x1])
          + ly * ((1 - lx) * src[y1 * sw + x0] + lx * src[y1 * sw + x1]);
      }
    }
    return out;
  }

  function stepPositions() { return state.step === 0 ? steps.map((_, i) => i) : [state.step - 1]; }
  function chosenLayers(kind) {
    const have = layers.filter((l) => frames[kind][l.index] !== undefined);
    return state.layer === 0 ? have : have.filter((l) => l === layers[state.layer - 1]);
  }

  function crossMap(layer, si, token) {
    const n = layer.hw[0] * layer.hw[1];
    const bytes = frames.cross[layer.index], base = si * nTok * n + token * n;
    const scale = S.cross[String(layer.index)].scales[si][token] / 255;
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = bytes[base + i] * scale;
    return out;
  }

  function selfRow(layer, si, px, py) {
    const [h, w] = layer.self_hw, n = h * w, entry = S.self[String(layer.index)];
    const q = Math.min(Math.floor(py * h), h - 1) * w + Math.min(Math.floor(px * w), w - 1);
    const bytes = frames.self[layer.index], out = new Float32Array(n);
    if (!svd) {
      const base = si * n * n + q * n, scale = entry.scales[si] / 255;
      for (let i = 0; i < n; i++) out[i] = bytes[base + i] * scale;
      return out;
    }
    const base = si * 2 * n * K, [su, sv] = entry.scales[si], s = entry.s[si];
    for (let k = 0; k < K; k++) {
      const uq = ((bytes[base + q * K + k] - 128) / 127) * su * s[k];
      const vb = base + n * K + k * n;
      for (let i = 0; i < n; i++) out[i] += uq * ((bytes[vb + i] - 128) / 127) * sv;
    }
    return out;
  }

  // the mean over the chosen layers and steps, each resized to the largest grid among them
  function meanMap(kind, get) {
    const chosen = chosenLayers(kind);
    if (!chosen.length) return null;
    const grid = (l) => (kind === "cross" ? l.hw : l.self_hw);
    const big = chosen.reduce((a, l) => (grid(l)[0] * grid(l)[1] > a[0] * a[1] ? grid(l) : a), [0, 0]);
    const total = new Float32Array(big[0] * big[1]);
    const sps = stepPositions();
    for (const l of chosen) {
      const [h, w] = grid(l);
      for (const si of sps) {
        const m = resize(get(l, si), h, w, big[0], big[1]);
        for (let i = 0; i < total.length; i++) total[i] += m[i];
      }
    }
    for (let i = 0; i < total.length; i++) total[i] /= chosen.length * sps.length;
    return { map: total, h: big[0], w: big[1], layers: chosen };
  }

  function current() {
    const token = state.preview !== null ? state.preview : state.token;
    if (state.mode === "self" && state.preview === null && state.pixel) {
      const { x, y } = state.pixel;
      return meanMap("self", (l, si) => selfRow(l, si, x, y));
    }
    return meanMap("cross", (l, si) => crossMap(l, si, token));
  }

  // colours from the map's own min (LUT[0]) to its max (LUT[255])
  function paint(canvas, m) {
    canvas.width = m.w;
    canvas.height = m.h;
    const ctx = canvas.getContext("2d"), img = ctx.createImageData(m.w, m.h);
    let max = -Infinity, min = Infinity;
    for (const v of m.map) { max = Math.max(max, v); min = Math.min(min, v); }
    const span = max - min;
    for (let i = 0; i < m.map.length; i++) {
      const c = span > 0 ? Math.round(((m.map[i] - min) / span) * 255) : 0;
      img.data.set([LUT[3 * c], LUT[3 * c + 1], LUT[3 * c + 2], 255], 4 * i);
    }
    ctx.putImageData(img, 0, 0);
    return max;
  }

  function drawMarker() {
    const c = $("marks"), ctx = c.getContext("2d");
    c.width = c.clientWidth;
    c.height = c.clientHeight;
    ctx.clearRect(0, 0, c.width, c.height);
    if (state.mode !== "self" || !state.pixel || state.preview !== null) return;
    const x = state.pixel.x * c.width, y = state.pixel.y * c.height;
    ctx.strokeStyle = "#0ff";
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.arc(x, y, 6, 0, 2 * Math.PI);
    ctx.moveTo(x - 11, y); ctx.lineTo(x + 11, y); ctx.moveTo(x, y - 11); ctx.lineTo(x, y + 11);
    ctx.stroke();
  }

  function label() {
    const layer = state.layer === 0 ? "all layers" : describeLayer(layers[state.layer - 1]);
    const st = state.step === 0 ? `all ${steps.length} steps` : describeStep(steps[state.step - 1]);
    $("layer-label").textContent = layer;
    $("step-label").textContent = st;
    return `${layer} · ${st}`;
  }
  function describeLayer(l) { return `layer ${l.index} · ${l.name} · ${l.hw[0]}×${l.hw[1]}`; }
  function describeStep(s) { return `step ${s.index}` + (s.t === null ? "" : ` · t=${Math.round(s.t)}`); }

  function draw() {
    const where = (samples.length > 1 ? `${S.caption || `sample ${state.sample}`} · ` : "") + label();
    const m = current();
    const heat = $("heat");
    const selfView = state.mode === "self" && state.preview === null && state.pixel;
    const token = state.preview !== null ? state.preview : state.token;
    const what = selfView
      ? `self-attention of the clicked pixel${svd ? ` (rank-${K} SVD)` : ""}`
      : `cross-attention of “${S.tokens[token]}”`;
    if (!m) {
      heat.width = 1; heat.height = 1;
      heat.getContext("2d").clearRect(0, 0, 1, 1);
      $("readout").textContent = `${what}: not in this page for ${where} (see the notes below)`;
    } else {
      const max = paint(heat, m);
      $("readout").textContent = `${what} · ${where} · ${m.h}×${m.w} · max ${max.toPrecision(3)}`;
    }
    for (const el of document.querySelectorAll(".token")) {
      el.classList.toggle("active", Number(el.dataset.index) === token && !selfView);
    }
    drawMarker();
    drawComponents();
  }

  function drawComponents() {
    const box = $("components");
    box.replaceChildren();
    if (!svd || state.layer === 0 || state.step === 0) return;
    const l = layers[state.layer - 1], entry = S.self[String(l.index)];
    if (!entry) return;
    const [h, w] = l.self_hw, n = h * w, si = state.step - 1;
    const bytes = frames.self[l.index], vb = si * 2 * n * K + n * K;
    for (let k = 0; k < K; k++) {
      const c = document.createElement("canvas");
      const map = new Float32Array(n);
      for (let i = 0; i < n; i++) map[i] = bytes[vb + k * n + i] / 255;  // 128 = zero
      paint(c, { map, h, w });
      c.title = `component ${k + 1}: singular value ${entry.s[si][k].toPrecision(3)}`;
      box.append(c);
    }
  }

  // -- controls --
  function tokenButtons() {
    const tokens = $("tokens");
    tokens.replaceChildren();
    S.tokens.forEach((t, i) => {
      const b = document.createElement("button");
      b.className = "token";
      b.dataset.index = String(i);
      b.textContent = t;
      b.addEventListener("mouseenter", () => { state.preview = i; draw(); });
      b.addEventListener("mouseleave", () => { state.preview = null; draw(); });
      b.addEventListener("click", () => { state.token = i; state.mode = "cross"; state.preview = null; draw(); });
      tokens.append(b);
    });
  }
  tokenButtons();

  // another sample: its tokens, maps and image; the layer, step, pixel and grid cell stay, and
  // the token too where the new prompt has the same word there (else the sample's own first)
  const firstPicture = $("picture") ? $("picture").src : null;
  function chooseSample(k) {
    const word = S.tokens[state.token];
    state.sample = k;
    S = samples[k];
    nTok = S.tokens.length;
    frames = decoded[k];
    state.token = S.tokens[state.token] === word ? state.token : defaultToken();
    state.preview = null;
    if ($("picture")) $("picture").src = k === 0 ? firstPicture : (S.image || firstPicture);
    $("sample").value = String(k);
    tokenButtons();
    draw();
  }
  if (samples.length > 1) {
    const select = $("sample");
    samples.forEach((sample, k) => select.add(new Option(sample.caption || `sample ${k}`, String(k))));
    select.addEventListener("change", () => chooseSample(Number(select.value)));
    $("sample-row").hidden = false;
  }
  const layerSlider = $("layer"), stepSlider = $("step");
  layerSlider.max = String(layers.length);
  stepSlider.max = String(steps.length);
  layerSlider.addEventListener("input", () => { state.layer = Number(layerSlider.value); draw(); });
  stepSlider.addEventListener("input", () => { state.step = Number(stepSlider.value); draw(); });
  $("stage").addEventListener("click", (ev) => {
    const r = $("stage").getBoundingClientRect();
    state.pixel = { x: (ev.clientX - r.left) / r.width, y: (ev.clientY - r.top) / r.height };
    state.mode = data.self_mode ? "self" : "cross";
    draw();
  });
  $("opacity").addEventListener("input", () => { $("heat").style.opacity = String($("opacity").value / 100); });
  const notes = $("left-out");
  for (const line of data.left_out) {
    const li = document.createElement("li");
    li.textContent = line;
    notes.append(li);
  }
  $("self-hint").textContent = { full: "", pool: " (pooled maps: the cell's row)",
    svd: ` (a rank-${K} SVD: the row it rebuilds, and its components below)` }[data.self_mode]
    ?? " (this recording has no self-attention)";

  // -- the dataset's probe grid: a click on a (layer, step) cell sets the sliders to it --
  function probeGrid() {
    const box = $("probe-grid"), probe = data.probe;
    if (!probe) return;
    const h = document.createElement("div");
    h.className = "hint";
    h.textContent = `Probe accuracy (${probe.label}), layers × steps: click a cell for that layer and step's maps` +
      (samples.length > 1 ? " of the chosen sample (the selector above picks another)." : ".");
    box.append(h);
    for (const [kind, g] of Object.entries(probe.kinds)) {
      const low = 0;  // as the toolkit's heatmap: 0 → the colour map's first colour, 1 → its last
      const table = document.createElement("table");
      table.className = "grid";
      table.dataset.kind = kind;
      const head = table.insertRow();
      const corner = document.createElement("th");
      corner.textContent = `${kind}: layer \\ step`;
      head.append(corner);
      for (const s of g.steps) { const th = document.createElement("th"); th.textContent = String(s); head.append(th); }
      g.layers.forEach((layer, li) => {
        const tr = table.insertRow();
        const th = document.createElement("th");
        th.textContent = String(layer);
        tr.append(th);
        g.steps.forEach((step, si) => {
          const td = tr.insertCell(), acc = g.acc[li][si];
          td.className = "cell";
          td.dataset.kind = kind; td.dataset.layer = String(layer); td.dataset.step = String(step);
          if (acc === null) return;
          const c = Math.round(Math.min(Math.max((acc - low) / Math.max(1 - low, 1e-9), 0), 1) * 255);
          td.style.background = `rgb(${LUT[3 * c]}, ${LUT[3 * c + 1]}, ${LUT[3 * c + 2]})`;
          td.title = `layer ${layer} · step ${step} · accuracy ${acc.toFixed(3)}` +
            (g.shuffled[li][si] === null ? "" : ` (shuffled ${g.shuffled[li][si].toFixed(3)})`);
          td.addEventListener("click", () => chooseCell(kind, layer, step, td));
        });
      });
      box.append(table);
    }
  }

  function chooseCell(kind, layer, step, td) {
    const li = layers.findIndex((l) => l.index === layer);
    // the page may keep a thinned set of steps: the nearest one kept
    let si = 0;
    steps.forEach((s, i) => { if (Math.abs(s.index - step) < Math.abs(steps[si].index - step)) si = i; });
    state.probeCell = { kind, layer, step, shownStep: steps[si].index };
    for (const el of document.querySelectorAll("#probe-grid .cell")) el.classList.toggle("active", el === td);
    if (kind === "cross" || !state.pixel) { state.mode = "cross"; } else { state.mode = "self"; }
    state.layer = li + 1;
    state.step = si + 1;
    layerSlider.value = String(state.layer);
    stepSlider.value = String(state.step);
    draw();
  }
  probeGrid();

  draw();
  window.attnprobeExplorer = {
    state, draw, layers, steps, lut: LUT, readyAt: performance.now(), chooseSample,
    setLayer(i) { layerSlider.value = String(i); layerSlider.dispatchEvent(new Event("input")); },
    setStep(i) { stepSlider.value = String(i); stepSlider.dispatchEvent(new Event("input")); },
  };
  document.documentElement.dataset.ready = "1";
})().catch((err) => {
  document.getElementById("readout").textContent = `the explorer failed: ${err}`;
  throw err;
});
