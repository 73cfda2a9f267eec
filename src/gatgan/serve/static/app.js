// The page of `gatgan serve`: a form in front of POST /generate and POST /interpolate, and the model
// card from GET /model. Plain JS, no build step and nothing fetched from elsewhere (it must work offline).
// Deterministic: a request depends only on what the form shows, so the same settings give the same
// images; the only randomness is the "Random" seed button, which writes its seed into the form.

const byId = (testid) => document.querySelector(`[data-testid="${testid}"]`);

const state = { classes: [], busy: false };

// ------------------------------------------------------------------ small helpers

/** A DOM element with properties and children (strings become text, never HTML: names come from the model). */
function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

const pngUrl = (base64) => `data:image/png;base64,${base64}`;

/** Numbers as a person reads them: 4 significant digits, no trailing zeros. */
function formatNumber(value) {
  if (value === null || value === undefined) return "n/a";
  if (typeof value !== "number") return String(value);
  return Number.isInteger(value) ? value.toLocaleString("en-US") : String(Number(value.toPrecision(4)));
}

/** 12,345,678 -> "12.3 M": the header's short form (the card shows the exact count too). */
function shortCount(count) {
  if (count >= 1e9) return `${(count / 1e9).toFixed(1)} B`;
  if (count >= 1e6) return `${(count / 1e6).toFixed(1)} M`;
  if (count >= 1e3) return `${(count / 1e3).toFixed(1)} k`;
  return String(count);
}

/** A whole number from a text field; anything else is refused here (the API checks its range). */
function wholeNumber(testid, what) {
  const text = byId(testid).value.trim();
  if (!/^-?\d+$/.test(text)) throw new Error(`${what} must be a whole number, got "${text}"`);
  return Number(text);
}

/** The class field as the API takes it: a known name (matched case-insensitively, sent as the
 * model spells it), an index, or else the text as typed, so that the API names what is wrong. */
function classSpec() {
  const text = byId("class-input").value.trim();
  if (text === "") throw new Error("choose a class: type to search its name, or give its index");
  const lower = text.toLowerCase();
  const known = state.classes.find((c) => c.name === text) ?? state.classes.find((c) => c.name.toLowerCase() === lower);
  if (known) return known.name;
  return /^\d+$/.test(text) ? Number(text) : text;
}

const slider = (testid) => Number(byId(testid).value);

// ------------------------------------------------------------------ talking to the API

/** GET (no body) or POST JSON; a refusal throws the API's one-line "error". */
async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new Error(`the server did not answer (${error.message})`);
  }
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new Error(data?.error ?? `${response.status} ${response.statusText}`);
  if (data === null) throw new Error(`the answer to ${path} was not JSON`);
  return data;
}

function showError(message) {
  const box = byId("error");
  box.textContent = message;
  box.hidden = !message;
}

/** Runs one request at a time: the busy indicator shows and the buttons are disabled meanwhile. */
async function whileBusy(label, task) {
  if (state.busy) return;
  setBusy(true, label);
  showError("");
  try {
    await task();
  } catch (error) {
    showError(error.message);
  } finally {
    setBusy(false);
  }
}

function setBusy(busy, label = "") {
  state.busy = busy;
  byId("busy").hidden = !busy;
  byId("busy-text").textContent = label;
  document.querySelector("main").setAttribute("aria-busy", String(busy));
  for (const button of document.querySelectorAll("[data-action]")) button.disabled = busy;
}

// ------------------------------------------------------------------ the grid and the viewer

async function generate() {
  const count = Number(byId("grid-size").value);
  const first = wholeNumber("seed-input", "the seed");
  const seeds = Array.from({ length: count }, (_, i) => first + i);
  const result = await api("generate", {
    class: classSpec(), seeds, truncation: slider("truncation"), guidance: slider("guidance"), format: "json",
  });
  renderGrid(result);
}

function renderGrid(result) {
  const grid = byId("grid");
  const seeds = result.images.map((image) => image.seed);
  const range = seeds.length > 1 ? `seeds ${seeds[0]}–${seeds.at(-1)}` : `seed ${seeds[0]}`;
  byId("grid-caption").textContent = `${result.class} · ${range} · truncation ${result.truncation.toFixed(2)} · `
    + `guidance ${result.guidance.toFixed(2)}`;
  grid.style.setProperty("--columns", Math.ceil(Math.sqrt(result.images.length)));
  grid.replaceChildren(...result.images.map((image) => {
    const alt = `${result.class}, seed ${image.seed}`;
    const img = el("img", { className: "pixelated", src: pngUrl(image.png), alt });
    const title = `seed ${image.seed}: click to enlarge`;
    const cell = el("button", { type: "button", className: "cell", title }, img);
    cell.addEventListener("click", () => openViewer(result, image));
    return cell;
  }));
}

/** A download name that says how to make the image again, e.g. "Ankle-boot-7-t0.70-g1.00.png". */
function downloadName(result, seed) {
  const name = result.class.replace(/[^A-Za-z0-9_-]+/g, "-").replace(/^-+|-+$/g, "") || `class${result.class_index}`;
  return `${name}-${seed}-t${result.truncation.toFixed(2)}-g${result.guidance.toFixed(2)}.png`;
}

function openViewer(result, image) {
  const src = pngUrl(image.png);
  Object.assign(byId("viewer-image"), { src, alt: `${result.class}, seed ${image.seed}` });
  const rows = [
    ["Class", `${result.class} (#${result.class_index})`], ["Seed", String(image.seed)],
    ["Truncation", result.truncation.toFixed(2)], ["Guidance", result.guidance.toFixed(2)],
    ["Size", `${result.width} × ${result.height}`],
  ];
  byId("viewer-details").replaceChildren(...rows.flatMap(([key, value]) => [el("dt", {}, key), el("dd", {}, value)]));
  Object.assign(byId("viewer-download"), { href: src, download: downloadName(result, image.seed) });
  byId("viewer").showModal();
}

// ------------------------------------------------------------------ interpolation

async function interpolate() {
  const seeds = [wholeNumber("interp-seed-a", "seed A"), wholeNumber("interp-seed-b", "seed B")];
  const result = await api("interpolate", {
    class: classSpec(), seeds, steps: wholeNumber("interp-steps", "the number of frames"),
    truncation: slider("truncation"), space: byId("interp-space").value, format: "json",
  });
  renderInterpolation(result);
}

function renderInterpolation(result) {
  const frames = result.frames.map(pngUrl);
  byId("interp-caption").textContent = `${result.class} · seed ${result.seeds.join(" → ")} · ${result.space} space`
    + ` · truncation ${result.truncation.toFixed(2)}`;
  byId("interp-strip").replaceChildren(...frames.map((src, index) => {
    const img = el("img", { className: "pixelated", src, alt: `frame ${index + 1}`, title: `frame ${index + 1}` });
    img.addEventListener("click", () => showFrame(frames, index));
    return img;
  }));
  Object.assign(byId("interp-slider"), { max: frames.length - 1, value: 0 });
  byId("interp-slider").oninput = (event) => showFrame(frames, Number(event.target.value));
  byId("interp-view").hidden = false;
  showFrame(frames, 0);
}

function showFrame(frames, index) {
  byId("interp-frame").src = frames[index];
  byId("interp-slider").value = index;
  byId("interp-position").textContent = `${index + 1} / ${frames.length}`;
  byId("interp-strip").querySelectorAll("img").forEach((img, i) => img.classList.toggle("current", i === index));
}

// ------------------------------------------------------------------ the model card

function renderModel(model) {
  document.title = `${model.name ?? "model"} · gatgan`;
  byId("model-name").textContent = model.name ?? "unnamed model";
  const parameters = model.parameters && `${shortCount(model.parameters)} parameters`;
  byId("model-summary").textContent = [model.generator, parameters,
    `${model.num_classes} classes`, `${model.image.width} × ${model.image.height}`].filter(Boolean).join(" · ");
  const details = cardRows(model).flatMap(([key, value, title = ""]) =>
    [el("dt", {}, key), el("dd", { title }, value)]);
  byId("model-card").replaceChildren(el("h2", {}, "Model"), el("div", { className: "card-columns" },
    el("div", {}, el("h3", {}, "Training"), el("dl", {}, ...details)),
    el("div", {}, el("h3", {}, "Scores"), ...scoreParts(model.scores)),
  ));
  applyLimits(model.limits);
}

/** [label, text, tooltip?] for each line of the card's "Training" column. */
function cardRows({ name, generator, parameters, kimg, step, num_classes: classes, image, data }) {
  const seen = kimg === null ? "unknown" : `${formatNumber(kimg)} kimg (step ${formatNumber(step)})`;
  const pixels = image.channels === 1 ? "greyscale" : `${image.channels} channels`;
  return [
    ["Name", name ?? "n/a"], ["Generator", generator ?? "n/a"], ["Parameters", formatNumber(parameters)],
    ["Images seen", seen], ["Data", dataName(data.source), data.source ?? ""],
    ["Training images", formatNumber(data.count)], ["Classes", formatNumber(classes)],
    ["Image", `${image.width} × ${image.height}, ${pixels}`],
  ];
}

/** "folder:pets (class folders)" -> "folder": the kind of data set (the card's tooltip keeps the
 * whole source, which the server sends without its directories). */
function dataName(source) {
  return source ? source.split(":")[0] : "unknown";
}

/** The best in-training score and the last evaluation, or a line saying there is none. */
function scoreParts({ best, last_eval: last }) {
  const parts = [];
  if (best) {
    const settings = [best.samples && `${formatNumber(best.samples)} samples`,
      best.truncation !== undefined && `truncation ${formatNumber(best.truncation)}`].filter(Boolean).join(", ");
    parts.push(el("p", { className: "score" }, "best ", el("b", {}, `${best.metric} ${formatNumber(best.value)}`),
      ` at step ${formatNumber(best.step)}${settings ? ` (${settings})` : ""}`));
  }
  if (last) {
    const metrics = Object.entries(last).filter(([key]) => key.startsWith("eval/"));
    parts.push(el("p", { className: "score" }, `last evaluation, step ${formatNumber(last.step)}`
      + (last.kimg === undefined ? "" : ` (${formatNumber(last.kimg)} kimg)`)));
    parts.push(el("table", { className: "metrics" }, ...metrics.map(([key, value]) =>
      el("tr", {}, el("th", {}, key.slice("eval/".length)), el("td", {}, formatNumber(value))))));
  }
  return parts.length ? parts : [el("p", { className: "hint" }, "not evaluated during training (see gatgan eval)")];
}

/** Sliders and grid sizes follow what this server accepts. */
function applyLimits(limits) {
  const [tMin, tMax] = limits.truncation;
  const [gMin, gMax] = limits.guidance;
  Object.assign(byId("truncation"), { min: tMin, max: tMax });
  Object.assign(byId("guidance"), { min: gMin, max: gMax });
  for (const option of byId("grid-size").options) option.disabled = Number(option.value) > limits.max_images;
}

function renderClasses(classes) {
  state.classes = classes;
  byId("class-list").replaceChildren(...classes.map((c) => el("option", { value: c.name, label: `#${c.index}` })));
  if (!byId("class-input").value && classes.length) byId("class-input").value = classes[0].name;
}

// ------------------------------------------------------------------ wiring

function showSliderValue(testid) {
  byId(`${testid}-value`).textContent = slider(testid).toFixed(2);
}

function randomSeed() {
  // A uniform 32-bit seed, the API's full range [0, 2^32 - 1].
  byId("seed-input").value = String(crypto.getRandomValues(new Uint32Array(1))[0]);
}

function wire() {
  for (const testid of ["truncation", "guidance"]) {
    byId(testid).addEventListener("input", () => showSliderValue(testid));
    showSliderValue(testid);  // a reload may restore a slider's earlier position
  }
  byId("generate-form").addEventListener("submit", (event) => {
    event.preventDefault();
    whileBusy("generating…", generate);
  });
  byId("random-seed").addEventListener("click", () => {
    randomSeed();
    whileBusy("generating…", generate);
  });
  byId("interp-form").addEventListener("submit", (event) => {
    event.preventDefault();
    whileBusy("interpolating…", interpolate);
  });
  const viewer = byId("viewer");
  viewer.addEventListener("click", (event) => { if (event.target === viewer) viewer.close(); });  // the backdrop
}

async function start() {
  wire();
  await whileBusy("loading the model…", async () => {
    const [model, classes] = await Promise.all([api("model"), api("classes")]);
    renderClasses(classes.classes);
    renderModel(model);
  });
}

start();
