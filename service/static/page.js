// The page of onnx-serving: draws digits for `digits` and `digits-binary`, moves the `demand`
// model's inputs, lists every model of the repository and lets any other model be tried with a
// v2 request. Plain DOM, no library, nothing fetched but this service.
"use strict";

const PANEL_MODELS = ["demand", "digits", "digits-binary"]; // the models the panels above are made for
const SIZE = 8; // the digits are 8x8 images
const SVG = "http://www.w3.org/2000/svg";

// ---------------------------------------------------------------- talking to the service

class ServiceError extends Error {}

/** One request; resolves with the JSON answer, or throws a ServiceError carrying its "error". */
function call(method, path, body) {
  return send(method, path, body === undefined ? undefined : JSON.stringify(body));
}

// The API key, when the service asks for one (a 401): kept in this tab's sessionStorage only.
const KEY_STORE = "onnx-serving.api-key";

function apiKey() {
  try {
    return sessionStorage.getItem(KEY_STORE) || "";
  } catch {
    return ""; // storage refused: the key form still shows
  }
}

function showKeyForm() {
  document.getElementById("key-form").hidden = false;
}

function setUpKeyForm() {
  const form = document.getElementById("key-form");
  if (apiKey()) showKeyForm();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = document.getElementById("api-key").value.trim();
    try {
      if (key) sessionStorage.setItem(KEY_STORE, key);
      else sessionStorage.removeItem(KEY_STORE);
    } catch {
      // storage refused: nothing to remember it by
    }
    window.location.reload(); // every panel asks again, with the key
  });
}

/** One request whose body is JSON text as it stands (a person's, say): the service judges it. */
async function send(method, path, json) {
  const options = { method, headers: { Accept: "application/json" } };
  if (apiKey()) options.headers.Authorization = `Bearer ${apiKey()}`;
  if (json !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = json;
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (error) {
    throw new ServiceError(`${method} ${path}: could not reach the service (${error.message})`);
  }
  const text = await response.text();
  let answer = null;
  try {
    answer = JSON.parse(text);
  } catch {
    // not JSON: reported below
  }
  if (!response.ok) {
    const reason = answer && typeof answer.error === "string"
      ? answer.error : `${response.status} ${response.statusText}`.trim();
    let advice = "";
    if (response.status === 401) {
      showKeyForm();
      advice = apiKey() ? ". Enter a valid API key at the top of the page."
        : ". Enter the service's API key at the top of the page.";
    }
    throw new ServiceError(`The service answered ${response.status} to ${method} ${path}: ${reason}${advice}`);
  }
  if (answer === null) {
    throw new ServiceError(`${method} ${path}: the answer is not JSON`);
  }
  return answer;
}

const metadataCache = new Map();

function metadata(name) {
  if (!metadataCache.has(name)) {
    metadataCache.set(name, call("GET", `/v2/models/${encodeURIComponent(name)}`));
  }
  return metadataCache.get(name);
}

/** Runs an async task so that the last call always runs, one at a time, and stale answers never win. */
function latest(task) {
  let running = false;
  let again = false;
  return async function run() {
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      do {
        again = false;
        await task();
      } while (again);
    } finally {
      running = false;
    }
  };
}

/**
 * The output a panel reads: the first one with class labels, as {name, labels, binary}; binary
 * when it holds one probability per row, of labels[1] (docs/card.md).
 */
function classOutput(meta) {
  const labels = meta.parameters.labels || {};
  const output = meta.outputs.find((o) => Array.isArray(labels[o.name]));
  if (!output) throw new ServiceError(`model '${meta.name}' has no output with class labels`);
  const names = labels[output.name];
  return { name: output.name, labels: names, binary: names.length === 2 && output.shape.at(-1) === 1 };
}

function showError(box, error) {
  box.textContent = error instanceof ServiceError ? error.message : `Unexpected error: ${error}`;
  box.hidden = false;
}

function clearError(box) {
  box.hidden = true;
  box.textContent = "";
}

// ---------------------------------------------------------------- small helpers

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function svg(tag, attributes = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  return node;
}

const percent = (p) => `${(p * 100).toFixed(1)}%`;
const clamp01 = (v) => Math.min(1, Math.max(0, v));
const humanize = (name) => name.replaceAll("_", " ");
const capitalize = (text) => text.charAt(0).toUpperCase() + text.slice(1);

/** A white-to-ink colour for an activation between 0 and 1. */
function shade(value) {
  const a = clamp01(Number.isFinite(value) ? value : 0);
  const from = [255, 255, 255];
  const to = [23, 52, 110];
  const mix = from.map((f, i) => Math.round(f + (to[i] - f) * a));
  return `rgb(${mix.join(",")})`;
}

function setBar(fill, value) {
  fill.style.setProperty("width", `${(clamp01(value) * 100).toFixed(2)}%`);
}

// ---------------------------------------------------------------- the network diagram

/**
 * Draws layers as columns of circles (the input of the digit models as an 8x8 block of cells),
 * every unit linked to the next layer, and returns update(values), values[i] being column i's
 * activations between 0 and 1.
 */
function drawNetwork(container, columns, description, { width = 480, height = 400 } = {}) {
  const top = 50;
  const bottom = height - 12;
  // room for the column titles and for the unit labels at either side (about 7 px a character)
  const labelRoom = (column, side) => (column.labels && (column.labelSide || "right") === side
    ? 22 + 7 * Math.max(...column.labels.map((l) => l.length)) : 0);
  const left = Math.max(columns[0].grid ? 66 : 44, labelRoom(columns[0], "left"));
  const right = width - Math.max(44, labelRoom(columns.at(-1), "right"));
  const image = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": description });
  const edgeLayer = svg("g", { class: "edges" });
  const nodeLayer = svg("g");
  image.append(edgeLayer, nodeLayer);

  const placed = columns.map((column, index) => {
    const x = left + ((right - left) * index) / (columns.length - 1);
    image.append(svg("text", { x, y: 18, class: "col-title", "text-anchor": "middle" }));
    image.lastChild.textContent = column.title;
    image.append(svg("text", { x, y: 34, class: "col-sub", "text-anchor": "middle" }));
    image.lastChild.textContent = column.subtitle;
    const nodes = [];
    if (column.grid) { // the 8x8 input image
      const cell = 15;
      const x0 = x - (cell * SIZE) / 2;
      const y0 = (top + bottom) / 2 - (cell * SIZE) / 2;
      for (let k = 0; k < SIZE * SIZE; k++) {
        const rect = svg("rect", {
          x: x0 + (k % SIZE) * cell, y: y0 + Math.floor(k / SIZE) * cell,
          width: cell, height: cell, class: "cell",
        });
        rect.append(svg("title"));
        nodeLayer.append(rect);
        nodes.push({ node: rect, x: x0 + cell * SIZE, y: y0 + Math.floor(k / SIZE) * cell + cell / 2 });
      }
      return { column, nodes, x };
    }
    const n = column.units;
    const gap = (bottom - top) / n;
    const radius = Math.max(3.5, Math.min(15, gap / 2 - 1.5));
    for (let k = 0; k < n; k++) {
      const y = top + gap * (k + 0.5);
      const circle = svg("circle", { cx: x, cy: y, r: radius, class: "unit" });
      circle.append(svg("title"));
      nodeLayer.append(circle);
      if (column.labels) {
        const side = column.labelSide || "right";
        const label = svg("text", {
          x: { right: x + radius + 6, left: x - radius - 6, below: x }[side],
          y: side === "below" ? y + radius + 15 : y + 4,
          class: "unit-label", "text-anchor": { right: "start", left: "end", below: "middle" }[side],
        });
        label.textContent = column.labels[k];
        nodeLayer.append(label);
      }
      nodes.push({ node: circle, x, y, radius });
    }
    return { column, nodes, x };
  });

  // Links: every unit to every unit of the next layer; the 8x8 block links from its right edge.
  const links = [];
  for (let i = 0; i + 1 < placed.length; i++) {
    const sources = placed[i].column.grid
      ? placed[i].nodes.filter((_, k) => k % SIZE === SIZE - 1) : placed[i].nodes;
    const group = [];
    for (const [s, source] of sources.entries()) {
      for (const target of placed[i + 1].nodes) {
        const line = svg("line", {
          x1: source.x + (source.radius || 0), y1: source.y,
          x2: target.x - target.radius, y2: target.y, class: "link",
        });
        edgeLayer.append(line);
        group.push({ line, source: s });
      }
    }
    links.push(group);
  }
  container.replaceChildren(image);

  return function update(values) {
    placed.forEach(({ column, nodes }, i) => {
      const layer = values[i] || [];
      nodes.forEach(({ node }, k) => {
        const value = layer[k];
        node.style.setProperty("fill", shade(value));
        node.firstChild.textContent = value === undefined
          ? `${column.title}, ${column.name(k)}`
          : `${column.title}, ${column.name(k)}: ${column.format(value)}`;
      });
    });
    links.forEach((group, i) => {
      const layer = values[i] || [];
      const grid = placed[i].column.grid;
      for (const { line, source } of group) {
        // the block's rows link as one: the brightest pixel of the row
        const a = grid ? Math.max(0, ...layer.slice(source * SIZE, source * SIZE + SIZE)) : layer[source];
        line.style.setProperty("stroke-opacity", (0.05 + 0.45 * clamp01(a || 0)).toFixed(3));
      }
    });
  };
}

// ---------------------------------------------------------------- drawing a digit

const draw = {
  pixels: new Array(SIZE * SIZE).fill(0),
  cells: [],
  focused: 0,
  error: null,
  diagram: null,
  diagramFor: null,
};

function digitModel() {
  return document.querySelector('input[name="digit-model"]:checked').value;
}

function buildGrid() {
  const grid = document.getElementById("grid");
  for (let k = 0; k < SIZE * SIZE; k++) {
    const cell = el("button", { type: "button", class: "px", tabindex: k === 0 ? "0" : "-1",
      "data-index": String(k), "aria-pressed": "false" });
    draw.cells.push(cell);
    grid.append(cell);
    renderCell(k);
  }

  // Pointer drawing (mouse, pen and touch): the first cell toggles, dragging paints that value.
  let painting = null;
  const cellAt = (event) => {
    const target = document.elementFromPoint(event.clientX, event.clientY);
    return target && target.classList.contains("px") ? Number(target.dataset.index) : null;
  };
  grid.addEventListener("pointerdown", (event) => {
    const k = cellAt(event);
    if (k === null || event.button !== 0) return;
    event.preventDefault(); // no text selection, no scrolling while drawing
    painting = draw.pixels[k] === pen() ? 0 : pen();
    focusCell(k, false);
    setPixel(k, painting);
  });
  grid.addEventListener("pointermove", (event) => {
    if (painting === null) return;
    const k = cellAt(event);
    if (k !== null && draw.pixels[k] !== painting) setPixel(k, painting);
  });
  const stop = () => { painting = null; };
  window.addEventListener("pointerup", stop);
  window.addEventListener("pointercancel", stop);

  // Keyboard and assistive technologies: Space and Enter click a focused button (detail 0).
  grid.addEventListener("click", (event) => {
    const cell = event.target.closest(".px");
    if (!cell || event.detail !== 0) return; // a pointer click was handled on pointerdown
    const k = Number(cell.dataset.index);
    setPixel(k, draw.pixels[k] === pen() ? 0 : pen());
  });
  grid.addEventListener("keydown", (event) => {
    const moves = { ArrowUp: -SIZE, ArrowDown: SIZE, ArrowLeft: -1, ArrowRight: 1 };
    if (!(event.key in moves)) return;
    event.preventDefault();
    const k = draw.focused;
    const row = Math.floor(k / SIZE);
    const col = k % SIZE;
    const next = {
      ArrowUp: row > 0 ? k - SIZE : k, ArrowDown: row < SIZE - 1 ? k + SIZE : k,
      ArrowLeft: col > 0 ? k - 1 : k, ArrowRight: col < SIZE - 1 ? k + 1 : k,
    }[event.key];
    focusCell(next);
  });
  grid.addEventListener("focusin", (event) => {
    const cell = event.target.closest(".px");
    if (cell) focusCell(Number(cell.dataset.index), false);
  });
}

function pen() {
  return Number(document.getElementById("pen").value);
}

function focusCell(k, move = true) {
  draw.cells[draw.focused].setAttribute("tabindex", "-1");
  draw.focused = k;
  draw.cells[k].setAttribute("tabindex", "0");
  if (move) draw.cells[k].focus();
}

function renderCell(k) {
  const value = draw.pixels[k];
  const cell = draw.cells[k];
  const row = Math.floor(k / SIZE) + 1;
  const col = (k % SIZE) + 1;
  cell.style.setProperty("--ink", String(value / 16));
  cell.setAttribute("aria-pressed", value > 0 ? "true" : "false");
  cell.setAttribute("aria-label", `Row ${row}, column ${col}${value > 0 ? `, intensity ${value}` : ""}`);
}

function setPixel(k, value) {
  draw.pixels[k] = value;
  renderCell(k);
  predictDigit();
}

function digitColumns(meta) {
  const { labels, binary } = classOutput(meta);
  // Without the NumPy forward propagation (no :explain) only the input and the output are known.
  const layers = meta.parameters.layers
    || [{ units: binary ? 1 : labels.length, activation: "(no :explain)" }];
  const size = meta.inputs[0].shape.at(-1);
  const columns = [{
    title: "input a[0]", subtitle: `${size} pixels`, grid: true, units: size,
    name: (k) => `row ${Math.floor(k / SIZE) + 1} column ${(k % SIZE) + 1}`,
    format: (v) => `intensity ${(v * 16).toFixed(0)}`,
  }];
  layers.forEach((layer, i) => {
    const last = i === layers.length - 1;
    columns.push({
      title: last ? `output a[${i + 1}]` : `layer ${i + 1} a[${i + 1}]`,
      subtitle: `${layer.units} ${layer.activation}`,
      units: layer.units,
      labels: last ? (binary ? [`P(${labels[1]})`] : labels) : null,
      name: (k) => (last ? (binary ? `P(${labels[1]})` : `class ${labels[k]}`) : `unit ${k + 1}`),
      format: (v) => v.toFixed(4),
    });
  });
  return columns;
}

async function digitDiagram(name) {
  if (draw.diagramFor === name) return;
  const meta = await metadata(name);
  const columns = digitColumns(meta);
  const shape = columns.map((c) => c.units).join(" → ");
  draw.diagram = drawNetwork(document.getElementById("digit-net"), columns,
    `The ${name} network, ${shape} units; shading shows each unit's activation. ` +
    "The numbers are in the Activations as numbers table.");
  draw.diagramFor = name;
  draw.diagram([]);
  renderBars(meta, null);
}

/** The class probabilities of one answer: a softmax row, or P(positive) of a binary model. */
function classProbabilities(meta, output) {
  if (classOutput(meta).binary) return [1 - output[0], output[0]];
  return output;
}

function renderBars(meta, probabilities, best = -1) {
  const list = document.getElementById("digit-bars");
  const { labels } = classOutput(meta);
  list.replaceChildren(...labels.map((label, k) => {
    const fill = el("span", { class: "fill" });
    if (probabilities) setBar(fill, probabilities[k]);
    return el("li", { class: k === best ? "best" : "" },
      el("span", { class: "label", text: label }),
      el("span", { class: "track", "aria-hidden": "true" }, fill),
      el("span", { class: "value", text: probabilities ? percent(probabilities[k]) : "–" }));
  }));
}

function renderNumbers(target, columns, values) {
  target.replaceChildren(...columns.map((column, i) => el("p", {},
    el("strong", { text: `${column.title} (${column.subtitle}): ` }),
    (values[i] || []).map((v) => column.format(v).replace("intensity ", "")).join(", "))));
}

async function digitTask() {
  const name = digitModel();
  const pixels = draw.pixels.slice();
  const box = document.getElementById("draw-error");
  const results = document.getElementById("digit-results");
  const summary = document.getElementById("digit-summary");
  results.setAttribute("aria-busy", "true");
  try {
    await digitDiagram(name);
    const meta = await metadata(name);
    if (pixels.every((v) => v === 0)) {
      clearError(box);
      summary.textContent = "Draw a digit to see what the network says.";
      renderBars(meta, null);
      draw.diagram([]);
      document.getElementById("digit-numbers").replaceChildren();
      return;
    }
    const input = meta.inputs[0];
    const read = classOutput(meta);
    const [inferred, explained] = await Promise.all([
      call("POST", `/v2/models/${encodeURIComponent(name)}/infer`, {
        inputs: [{ name: input.name, shape: [1, pixels.length], datatype: input.datatype, data: pixels }],
        outputs: [{ name: read.name }],
      }),
      meta.parameters.explain
        ? call("POST", `/v1/models/${encodeURIComponent(name)}:explain`, { instances: [pixels] }) : null,
    ]);
    if (name !== digitModel() || pixels.some((v, k) => v !== draw.pixels[k])) return; // stale: a newer run follows
    const output = inferred.outputs.find((o) => o.name === read.name).data;
    const probabilities = classProbabilities(meta, output);
    const best = read.binary ? Number(output[0] >= 0.5) : probabilities.indexOf(Math.max(...probabilities));
    clearError(box);
    renderBars(meta, probabilities, best);
    summary.replaceChildren(el("span", { class: "sr-only", text: "Prediction: " }),
      el("strong", { class: "big", id: "digit-label", text: read.labels[best] }),
      el("span", {}, " with probability ",
        el("strong", { id: "digit-probability", text: percent(probabilities[best]) })));
    const values = [pixels.map((v) => v / 16)];
    if (explained) {
      const activations = explained.explanations[0].activations;
      values.push(...explained.layers.map((layer) => activations[layer.a]));
    } else {
      values.push(output);
    }
    draw.diagram(values);
    renderNumbers(document.getElementById("digit-numbers"), digitColumns(meta), values);
  } catch (error) {
    showError(box, error);
    summary.textContent = "No prediction: the service answered with an error (shown above).";
    if (draw.diagramFor === name) {
      renderBars(await metadata(name), null);
      draw.diagram([pixels.map((v) => v / 16)]);
    } else { // the model's metadata is unavailable: nothing of another model stays on show
      draw.diagram = null;
      draw.diagramFor = null;
      document.getElementById("digit-bars").replaceChildren();
      document.getElementById("digit-net").replaceChildren();
    }
    document.getElementById("digit-numbers").replaceChildren();
  } finally {
    results.setAttribute("aria-busy", "false");
  }
}

const predictDigit = latest(digitTask);

function setUpDrawing() {
  buildGrid();
  document.getElementById("clear").addEventListener("click", () => {
    draw.pixels.fill(0);
    draw.cells.forEach((_, k) => renderCell(k));
    predictDigit();
  });
  document.querySelectorAll('input[name="digit-model"]').forEach((radio) =>
    radio.addEventListener("change", () => predictDigit()));
  predictDigit();
}

// ---------------------------------------------------------------- the demand model

// What the lesson calls the hidden units. A trained network may hold them in any order and with
// either sign, so the page finds out which unit is which (see identifyHiddenUnits).
const CONCEPTS = [
  { name: "affordability", feature: "shipping_cost", sign: -1 },
  { name: "awareness", feature: "marketing", sign: +1 },
  { name: "perceived quality", feature: "material", sign: +1 },
];

const demand = { meta: null, sliders: [], units: null, diagram: null };

function niceStep(span) {
  const steps = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000];
  return [...steps].reverse().find((s) => span / s >= 80) || steps[0];
}

function decimals(step) {
  return (String(step).split(".")[1] || "").length;
}

function formatFeature(feature, value) {
  return `${value.toFixed(decimals(feature.step))} ${feature.unit}`;
}

function buildSliders(meta) {
  const form = document.getElementById("demand-form");
  demand.sliders = meta.parameters.features.map((feature) => {
    const step = niceStep(feature.max - feature.min);
    const id = `feature-${feature.name}`;
    const middle = feature.min + Math.round((feature.max - feature.min) / 2 / step) * step;
    const input = el("input", { type: "range", id, name: feature.name, min: String(feature.min),
      max: String(feature.max), step: String(step), value: middle.toFixed(decimals(step)) });
    const shown = el("output", { for: id, id: `${id}-value` });
    const scale = el("span", { class: "range", "aria-hidden": "true", text: `${feature.min}–${feature.max}` });
    const spec = { ...feature, step, input, shown };
    const show = () => { shown.textContent = formatFeature(spec, Number(input.value)); };
    show();
    input.addEventListener("input", () => { show(); predictDemand(); });
    form.append(el("div", { class: "slider" },
      el("label", { for: id, text: `${capitalize(humanize(feature.name))} (${feature.unit})` }), input,
      el("div", { class: "reading" }, shown, scale)));
    return spec;
  });
  form.addEventListener("submit", (event) => event.preventDefault());
}

/**
 * Which hidden unit is affordability, awareness and perceived quality: moves each feature from
 * its minimum to its maximum (the others at their middle) through :explain, and gives each concept
 * the unit that its feature moves most (the best of every assignment). A unit that moves against
 * the concept's direction is shown as inverted. Null when the card is not the lesson's.
 */
async function identifyHiddenUnits(meta) {
  const features = meta.parameters.features;
  const names = features.map((f) => f.name);
  const hidden = meta.parameters.layers[0];
  if (hidden.units !== CONCEPTS.length || !CONCEPTS.every((c) => names.includes(c.feature))) return null;
  const middle = features.map((f) => (f.min + f.max) / 2);
  const rows = [];
  for (const concept of CONCEPTS) {
    const i = names.indexOf(concept.feature);
    for (const end of ["min", "max"]) {
      const row = middle.slice();
      row[i] = features[i][end];
      rows.push(row);
    }
  }
  const answer = await call("POST", "/v1/models/demand:explain", { instances: rows });
  const a1 = answer.explanations.map((e) => e.activations.a1);
  const effect = CONCEPTS.map((_, c) => a1[2 * c + 1].map((v, u) => v - a1[2 * c][u]));
  const permutations = (items) => (items.length <= 1 ? [items] : items.flatMap((item, i) =>
    permutations([...items.slice(0, i), ...items.slice(i + 1)]).map((rest) => [item, ...rest])));
  let best = null;
  for (const order of permutations([...Array(hidden.units).keys()])) {
    const score = order.reduce((sum, unit, c) => sum + Math.abs(effect[c][unit]), 0);
    if (!best || score > best.score) best = { order, score };
  }
  return CONCEPTS.map((concept, c) => {
    const rises = effect[c][best.order[c]] > 0;
    return { ...concept, unit: best.order[c], inverted: (rises ? 1 : -1) !== concept.sign,
      how: `${rises ? "rises" : "falls"} as ${humanize(concept.feature)} rises` };
  });
}

function hiddenLabel(unit) {
  const found = demand.units && demand.units.find((u) => u.unit === unit);
  if (!found) return `unit ${unit + 1}`;
  return found.inverted ? `${found.name} (inverted)` : found.name;
}

function buildDemandView(meta) {
  const hidden = meta.parameters.layers[0];
  const list = document.getElementById("demand-hidden");
  const order = demand.units ? demand.units.map((u) => u.unit) : [...Array(hidden.units).keys()];
  list.replaceChildren(...order.map((unit) => {
    const found = demand.units && demand.units.find((u) => u.unit === unit);
    return el("li", { "data-unit": String(unit) },
      el("span", { class: "label wide-label" },
        el("span", { class: "name", text: capitalize(hiddenLabel(unit)) }),
        el("span", { class: "sub", text: found ? `unit ${unit + 1} · ${found.how}` : `unit ${unit + 1}` })),
      el("span", { class: "track", "aria-hidden": "true" }, el("span", { class: "fill" })),
      el("span", { class: "value", text: "–" }));
  }));
  const inverted = (demand.units || []).filter((u) => u.inverted);
  document.getElementById("demand-hidden-note").textContent = demand.units
    ? "Which unit is which was found by moving one feature at a time through :explain." + inverted.map(
      (u) => ` Training left unit ${u.unit + 1} pointing the other way: it ${u.how}, so a high value ` +
        `there means little ${u.name}.`).join("")
    : "The hidden units could not be named; they are shown in the network's order.";

  const features = meta.parameters.features;
  const positive = classOutput(meta).labels[1];
  const columns = [
    { title: "input x", subtitle: `${features.length} features`, units: features.length,
      labels: features.map((f) => humanize(f.name)), labelSide: "left",
      name: (k) => humanize(features[k].name), format: (v) => `${(v * 100).toFixed(0)}% of its range` },
    ...meta.parameters.layers.map((layer, i) => {
      const last = i === meta.parameters.layers.length - 1;
      return {
        title: last ? `output a[${i + 1}]` : `hidden a[${i + 1}]`,
        subtitle: `${layer.units} ${layer.activation}`,
        units: layer.units,
        labels: last ? [`P(${positive})`] : i === 0
          ? [...Array(layer.units).keys()].map(hiddenLabel) : null,
        labelSide: last ? "right" : "below",
        name: (k) => (last ? `P(${positive})` : i === 0 ? hiddenLabel(k) : `unit ${k + 1}`),
        format: (v) => v.toFixed(4),
      };
    }),
  ];
  demand.diagram = drawNetwork(document.getElementById("demand-net"), columns,
    `The demand network, ${columns.map((c) => c.units).join(" → ")} units; shading shows each ` +
    "unit's activation, whose values are listed beside the sliders.", { height: 300 });
  demand.diagram([]);
}

async function demandTask() {
  const box = document.getElementById("demand-error");
  const results = document.getElementById("demand-results");
  const summary = document.getElementById("demand-summary");
  if (!demand.meta) return;
  const meta = demand.meta;
  const values = demand.sliders.map((s) => Number(s.input.value));
  results.setAttribute("aria-busy", "true");
  try {
    const answer = await call("POST", "/v1/models/demand:explain", { instances: [values] });
    if (values.some((v, i) => v !== Number(demand.sliders[i].input.value))) return; // stale
    const explanation = answer.explanations[0];
    const layers = answer.layers.map((layer) => explanation.activations[layer.a]);
    const p = explanation.prediction[0]; // P(labels[1]) from onnxruntime
    const positive = classOutput(meta).labels[1];
    clearError(box);
    summary.replaceChildren(el("span", { class: "sr-only", text: `Probability of ${positive}: ` }),
      el("strong", { class: "big", id: "demand-probability", text: percent(p) }),
      el("span", { "aria-hidden": "true", text: ` chance of ${positive}` }),
      el("span", { class: "verdict" }, "Label: ", el("strong", { id: "demand-label", text: explanation.label })));
    document.querySelectorAll("#demand-hidden li").forEach((item) => {
      const a = layers[0][Number(item.dataset.unit)];
      setBar(item.querySelector(".fill"), a);
      item.querySelector(".value").textContent = a.toFixed(3);
    });
    const scaled = demand.sliders.map((s, i) => (values[i] - s.min) / (s.max - s.min));
    demand.diagram([scaled, ...layers]);
  } catch (error) {
    showError(box, error);
    summary.textContent = "No prediction: the service answered with an error (shown above).";
    document.querySelectorAll("#demand-hidden li").forEach((item) => {
      setBar(item.querySelector(".fill"), 0);
      item.querySelector(".value").textContent = "–";
    });
    demand.diagram([demand.sliders.map((s, i) => (values[i] - s.min) / (s.max - s.min))]);
  } finally {
    results.setAttribute("aria-busy", "false");
  }
}

const predictDemand = latest(demandTask);

async function setUpDemand() {
  const box = document.getElementById("demand-error");
  try {
    const meta = await metadata("demand");
    const { binary } = classOutput(meta);
    if (!binary || !meta.parameters.features || !meta.parameters.explain) {
      throw new ServiceError("This panel needs demand to be a binary classifier of one table input " +
        "with a NumPy forward propagation (:explain); the model served as demand is not.");
    }
    buildSliders(meta);
    try {
      demand.units = await identifyHiddenUnits(meta);
    } catch (error) {
      showError(box, error);
    }
    buildDemandView(meta);
    demand.meta = meta;
    predictDemand();
  } catch (error) {
    showError(box, error);
    document.getElementById("demand-summary").textContent = "The demand model is unavailable.";
  }
}

// ---------------------------------------------------------------- the models

const SOURCES = { trained: "trained here", keras: "imported from a Keras file", onnx: "imported from an ONNX file" };

function tensorText(tensor) {
  return `${tensor.name} · ${tensor.datatype} · [${tensor.shape.join(",\u00a0")}]`;
}

/** JSON for people: two-space indents, arrays of numbers and short objects on one line. */
function jsonText(value, indent = "") {
  const flat = (v) => v === null || typeof v !== "object"
    || (Array.isArray(v) && v.every((x) => x === null || typeof x !== "object"));
  const inner = `${indent}  `;
  if (Array.isArray(value)) {
    if (value.every(flat) && value.every((v) => !Array.isArray(v))) {
      return `[${value.map((v) => JSON.stringify(v)).join(", ")}]`;
    }
    return `[\n${value.map((v) => inner + jsonText(v, inner)).join(",\n")}\n${indent}]`;
  }
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value);
    const oneLine = `{${entries.map(([k, v]) => `${JSON.stringify(k)}: ${jsonText(v)}`).join(", ")}}`;
    if (entries.every(([, v]) => flat(v)) && indent.length + oneLine.length <= 90) return oneLine;
    return `{\n${entries.map(([k, v]) => `${inner}${JSON.stringify(k)}: ${jsonText(v, inner)}`)
      .join(",\n")}\n${indent}}`;
  }
  return JSON.stringify(value);
}

/**
 * A v2 infer request for a model, from its metadata: every input with its name, datatype and
 * shape (-1 taken as 1), filled with zeros, false for BOOL, or the low end of the input's range.
 */
function exampleRequest(meta) {
  const ranges = meta.parameters.ranges || {};
  return {
    inputs: meta.inputs.map((input) => {
      const shape = input.shape.map((d) => (d === -1 ? 1 : d));
      const count = shape.reduce((a, b) => a * b, 1);
      const value = input.datatype === "BOOL" ? false : (ranges[input.name] ? ranges[input.name][0] : 0);
      return { name: input.name, datatype: input.datatype, shape, data: new Array(count).fill(value) };
    }),
  };
}

function parityText(parity) {
  if (!parity) return null;
  if (parity.reference === null || parity.reference === undefined) {
    return "none: a plain ONNX import has no reference to compare with";
  }
  return `max |${parity.reference} − onnxruntime| ${Number(parity.max_abs_difference).toExponential(1)}` +
    ` on the ${parity.data} (tolerance ${Number(parity.tolerance).toExponential(0)})`;
}

/** The rows of a served model's card: its signature and what the metadata tells of it. */
function cardRows(meta, versions) {
  const p = meta.parameters;
  const ranges = p.ranges || {};
  const labels = p.labels || {};
  const lines = (items) => items.map((text) => el("span", { class: "line", text }));
  const rows = [
    ["Versions", lines(versions.map((v) => `${v.version} · ${v.state === "READY"
      ? (v.version === p.version ? "ready, serving" : "ready") : "unavailable"}`))],
    ["Source", (SOURCES[p.source.kind] || p.source.kind) + (p.source.file ? ` (${p.source.file})` : "")],
    ["Inputs", lines(meta.inputs.map((t) => tensorText(t) +
      (ranges[t.name] ? ` · range [${ranges[t.name].join(", ")}]` : "")))],
    ["Outputs", lines(meta.outputs.map(tensorText))],
  ];
  const labelled = meta.outputs.filter((o) => Array.isArray(labels[o.name]));
  if (labelled.length) {
    rows.push(["Labels", lines(labelled.map((o) => {
      const names = labels[o.name];
      const binary = names.length === 2 && o.shape.at(-1) === 1;
      return `${o.name}: ${names.join(", ")}${binary ? ` (the value is P(${names[1]}))` : ""}`;
    }))]);
  }
  if (p.layers) {
    rows.push(["Network", [`${meta.inputs[0].shape.at(-1)} inputs`,
      ...p.layers.map((l) => `${l.units} ${l.activation}`)].join(" → ")]);
  }
  const metrics = Object.entries(p.metrics || {});
  if (metrics.length) {
    rows.push(["Test metrics", lines(metrics.map(([key, value]) =>
      `${humanize(key)} ${typeof value === "number" ? value.toFixed(4) : value}`))]);
  }
  const parity = parityText(p.parity);
  if (parity) rows.push(["Parity", parity]);
  return rows;
}

/** A textarea for a v2 request prefilled from the metadata, Send, and the answer read-only. */
function tryPanel(meta) {
  const name = meta.name;
  const path = `/v2/models/${encodeURIComponent(name)}/infer`;
  const id = (what) => `${what}-${name}`;
  const text = jsonText(exampleRequest(meta));
  const rows = (value) => String(Math.min(14, Math.max(4, value.split("\n").length + 1)));
  const request = el("textarea", { id: id("request"), class: "json", spellcheck: "false",
    autocomplete: "off", rows: rows(text), "aria-describedby": id("request-help") });
  request.value = text;
  const answer = el("textarea", { id: id("answer"), class: "json", readonly: "", rows: "6",
    placeholder: "Send the request to see the answer." });
  const status = el("span", { class: "try-status", role: "status", id: id("status") });
  const button = el("button", { type: "button", class: "send" }, "Send",
    el("span", { class: "sr-only", text: ` to ${name}` }));

  const run = latest(async () => {
    status.textContent = "Sending…";
    answer.setAttribute("aria-busy", "true");
    const started = performance.now();
    try {
      const reply = await send("POST", path, request.value);
      answer.value = jsonText(reply);
      answer.classList.remove("failed");
      status.textContent = `Answered in ${Math.round(performance.now() - started)} ms.`;
    } catch (error) {
      answer.value = error instanceof ServiceError ? error.message : `Unexpected error: ${error}`;
      answer.classList.add("failed");
      status.textContent = "The service answered with an error.";
    } finally {
      answer.setAttribute("aria-busy", "false");
      answer.rows = Number(rows(answer.value));
    }
  });
  button.addEventListener("click", run);
  request.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      run();
    }
  });

  return el("div", { class: "try", role: "group", "aria-labelledby": id("try-title") },
    el("h4", { id: id("try-title"), text: `Try ${name}` }),
    el("label", { for: id("request") }, "Request to ", el("code", { text: `POST ${path}` })),
    request,
    el("p", { class: "hint", id: id("request-help"), text: "A v2 request made from the model's " +
      "signature: edit the data (or anything else) and send it. Ctrl+Enter sends too." }),
    el("div", { class: "row" }, button, status),
    el("label", { for: id("answer") }, "Answer"),
    answer);
}

function modelCard(name, versions, meta, error) {
  const card = el("article", { class: "card", "data-model": name, "aria-labelledby": `model-${name}` });
  const title = el("h3", { id: `model-${name}`, text: name });
  const failed = versions.filter((v) => v.state !== "READY").map((v) =>
    el("p", { class: "card-error", text: `Version ${v.version} is unavailable: ${v.reason}` }));
  if (!meta) {
    title.append(" ", el("span", { class: "badge off", text: "unavailable" }));
    card.append(title, ...failed);
    if (error) card.append(el("p", { class: "card-error", text: error.message }));
    return card;
  }
  const p = meta.parameters;
  title.append(" ", el("span", { class: "badge", text: `version ${p.version}` }));
  const list = el("dl");
  for (const [term, content] of cardRows(meta, versions)) {
    list.append(el("dt", { text: term }), typeof content === "string"
      ? el("dd", { text: content }) : el("dd", {}, ...content));
  }
  const about = el("div", { class: "about" }, title);
  if (p.description) about.append(el("p", { class: "description", text: p.description }));
  about.append(list, ...failed);
  card.append(about);
  if (!PANEL_MODELS.includes(name)) {
    card.classList.add("tryable");
    card.append(tryPanel(meta));
  }
  return card;
}

async function setUpModels() {
  const cards = document.getElementById("model-cards");
  const box = document.getElementById("models-error");
  try {
    const index = await call("POST", "/v2/repository/index", {});
    const names = [...new Set(index.map((entry) => entry.name))];
    cards.replaceChildren(...await Promise.all(names.map(async (name) => {
      const versions = index.filter((entry) => entry.name === name);
      if (!versions.some((v) => v.state === "READY")) return modelCard(name, versions, null, null);
      try {
        return modelCard(name, versions, await metadata(name), null);
      } catch (error) {
        return modelCard(name, versions, null, error);
      }
    })));
    if (!names.length) {
      cards.replaceChildren(el("p", { class: "hint", text: "The repository holds no model." }));
      await call("GET", "/v2/health/ready"); // its 503 says why, when it knows
    }
  } catch (error) {
    showError(box, error);
  } finally {
    cards.setAttribute("aria-busy", "false");
  }
  try {
    const server = await call("GET", "/v2");
    document.getElementById("server-name").textContent = `${server.name} ${server.version}`;
  } catch {
    // the footer keeps its default name
  }
}

/** The models the repository index says are served, or null when it cannot say (a key is
 * needed, say): then every panel shows and says what is wrong. */
async function servedModels() {
  try {
    const index = await call("POST", "/v2/repository/index", { ready: true });
    return new Set(index.map((entry) => entry.name));
  } catch {
    return null;
  }
}

/** The page leads with what is served: a built-in model's panel shows only when it is served. */
async function setUpPanels() {
  const served = await servedModels();
  const shown = (name) => served === null || served.has(name);
  const digitModels = ["digits", "digits-binary"].filter(shown);
  document.getElementById("draw").hidden = !digitModels.length;
  document.querySelectorAll('input[name="digit-model"]').forEach((radio) => {
    radio.closest("label").hidden = !digitModels.includes(radio.value);
    radio.checked = radio.value === digitModels[0];
  });
  if (digitModels.length) setUpDrawing();
  document.getElementById("demand").hidden = !shown("demand");
  if (shown("demand")) setUpDemand();
}

document.addEventListener("DOMContentLoaded", () => {
  setUpKeyForm();
  setUpPanels();
  setUpModels();
});
