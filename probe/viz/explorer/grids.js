// attnprobe sweep page: the edit grid (rows: kind · range · step fraction; columns: pairs).
// Data: the JSON in #attnprobe-data (probe/viz/explorer/grids.py: sweep_grid).
// window.attnprobeSweep exposes the chosen cell for tests once the page is ready.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("attnprobe-data").textContent);
  const $ = (id) => document.getElementById(id);
  const state = { cell: null };
  const fmt = (v, d = 2) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));
  const colour = (s) => (s === null ? "#ddd" : `hsl(${Math.round(120 * s)}, 65%, 72%)`);

  const table = document.createElement("table");
  table.className = "grid";
  const head = table.insertRow();
  head.insertCell().textContent = "";
  data.pairs.forEach((p) => { const th = document.createElement("th"); th.textContent = p; head.append(th); });
  data.ranges.forEach((r, ri) => {
    const tr = table.insertRow();
    const th = document.createElement("th");
    th.textContent = r;
    tr.append(th);
    data.pairs.forEach((_, pi) => {
      const td = tr.insertCell();
      const cell = data.cells[`${ri},${pi}`];
      td.className = "cell";
      td.dataset.key = `${ri},${pi}`;
      if (!cell) { td.textContent = ""; return; }
      td.style.background = colour(cell.success);
      td.textContent = fmt(cell.iou);
      td.title = `success ${fmt(cell.success)} · IoU ${fmt(cell.iou)} · ${cell.seeds} seed(s)`;
      td.addEventListener("click", () => show(`${ri},${pi}`));
    });
  });
  $("edit-grid").append(table);

  function show(key) {
    state.cell = key;
    const cell = data.cells[key], box = $("cell-detail");
    box.replaceChildren();
    for (const td of document.querySelectorAll(".cell")) td.classList.toggle("active", td.dataset.key === key);
    const h = document.createElement("div");
    h.textContent = `${cell.range} · ${cell.pair} · layers ${cell.layers || "–"}`;
    box.append(h);
    if (cell.images) {
      for (const [what, uri] of cell.images) {
        const fig = document.createElement("figure");
        const img = document.createElement("img");
        img.src = uri; img.alt = what;
        const cap = document.createElement("figcaption");
        cap.textContent = what;
        fig.append(img, cap);
        box.append(fig);
      }
    }
    const scores = document.createElement("div");
    scores.className = "scores";
    scores.textContent = `success ${fmt(cell.success)} · IoU ${fmt(cell.iou)} · shape distance ` +
      `${fmt(cell.shape_distance)} · background PSNR ${fmt(cell.background_psnr, 1)} dB · ${cell.seeds} seed(s)` +
      (cell.images ? "" : " (no images saved: sweep with --save-images)");
    box.append(scores);
  }

  for (const line of data.left_out) {
    const li = document.createElement("li");
    li.textContent = line;
    $("left-out").append(li);
  }
  window.attnprobeSweep = { state, show };
  document.documentElement.dataset.ready = "1";
})();
