"use strict";
// The page talks only to this server: GET /model once, then POST /predict with one image per request,
// so each card shows its own answer (or its own error) as soon as it is ready.

const TOP_K = 5; // bars shown per image; the API returns every class

function percent(p) {
  return `${(100 * p).toFixed(1)}%`;
}

function fact(list, term, value) {
  const dt = document.createElement("dt");
  const dd = document.createElement("dd");
  dt.textContent = term;
  dd.textContent = value;
  list.append(dt, dd);
}

async function showModel() {
  const line = document.getElementById("model-line");
  try {
    const response = await fetch("/model");
    const info = await response.json();
    line.textContent = `Model ${info.name}` + (info.architecture ? ` (${info.architecture})` : "");
    const facts = document.getElementById("model-facts");
    fact(facts, "Classes", info.class_names.join(", "));
    fact(facts, "Image size", `${info.image_size} × ${info.image_size} px`);
    if (info.class_names.length === 2) fact(facts, "Threshold", String(info.threshold));
    if (info.created) fact(facts, "Trained", info.created);
    if (info.export) fact(facts, "Fits no class", "not marked: an export gives probabilities only");
    const rows = Object.entries(info.metrics).filter(([, value]) => typeof value === "number");
    const table = document.getElementById("metrics");
    if (info.metrics_kind === "cross_validation") {
      table.caption.textContent = "Cross-validated metrics (every photo scored by a model that never saw it)";
    }
    for (const [name, value] of rows) {
      const row = table.tBodies[0].insertRow();
      row.insertCell().textContent = name;
      row.insertCell().textContent = Number.isInteger(value) ? String(value) : value.toFixed(3);
    }
    table.hidden = rows.length === 0;
  } catch (error) {
    line.textContent = `Cannot reach the model: ${error.message}`;
  }
}

function newCard(file) {
  const card = document.getElementById("card").content.firstElementChild.cloneNode(true);
  const image = card.querySelector("img");
  image.src = URL.createObjectURL(file);
  image.alt = file.name;
  image.onerror = () => image.remove();
  card.querySelector(".name").textContent = file.name;
  document.getElementById("results").prepend(card);
  return card;
}

function showPrediction(card, prediction) {
  const label = card.querySelector(".label");
  label.textContent = `${prediction.label} (${percent(prediction.probability)})`;
  label.dataset.label = prediction.label;
  const ranked = Object.entries(prediction.probabilities).sort((a, b) => b[1] - a[1]).slice(0, TOP_K);
  const bars = card.querySelector(".bars");
  for (const [name, p] of ranked) {
    const row = document.createElement("div");
    row.className = name === prediction.label ? "bar chosen" : "bar";
    const text = document.createElement("span");
    text.textContent = `${name} ${percent(p)}`;
    const fill = document.createElement("i");
    fill.style.width = percent(p);
    row.append(fill, text);
    bars.append(row);
  }
  // The marks (unsure, fits no class) come with their reasons; the label above is still the model's.
  const notes = card.querySelector(".notes");
  for (const note of prediction.notes || []) {
    const item = document.createElement("li");
    item.textContent = note;
    notes.append(item);
  }
  if (prediction.heatmap) {
    const image = card.querySelector("img");
    image.src = prediction.heatmap;
    image.classList.add("heatmap");
    image.alt = `${image.alt}: heatmap of the evidence for ${prediction.label}`;
  }
  if (prediction.unsure) card.classList.add("unsure");
  if (prediction.fits_no_class) card.classList.add("no-class");
}

function showError(card, message) {
  card.classList.add("failed");
  const label = card.querySelector(".label");
  label.textContent = message;
  label.dataset.error = "true";
}

async function classify(file) {
  const card = newCard(file);
  const form = new FormData();
  form.append("files", file, file.name);
  try {
    const explain = document.getElementById("explain").checked;
    const response = await fetch(explain ? "/predict?explain=true" : "/predict", { method: "POST", body: form });
    const body = await response.json();
    if (!response.ok) {
      throw new Error(typeof body.detail === "string" ? body.detail : `HTTP ${response.status}`);
    }
    showPrediction(card, body.predictions[0]);
  } catch (error) {
    showError(card, error.message);
  }
}

function classifyAll(files) {
  for (const file of files) classify(file);
}

const input = document.getElementById("files");
input.addEventListener("change", () => {
  classifyAll(input.files);
  input.value = "";
});

const drop = document.getElementById("drop");
for (const type of ["dragenter", "dragover"]) {
  drop.addEventListener(type, (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
}
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  classifyAll(event.dataTransfer.files);
});

showModel();
