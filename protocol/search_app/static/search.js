// The page's only script: send the query (text as ?q=, a photo as the POST body), draw both columns.
// Everything from the server is put into the page as text (textContent), never as HTML.
"use strict";

const $ = (selector) => document.querySelector(selector);
const form = $("#search-form"), textBox = $("#q"), fileInput = $("#image"), kBox = $("#k");
const status = $("#status"), errorBox = $("#error"), drop = $("#drop");
let photo = null;  // the File of an image query, or null for a text query

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function parameters() {
  const params = new URLSearchParams({k: kBox.value});
  for (const select of document.querySelectorAll(".filter")) {
    if (select.value) params.set(select.dataset.name, select.value);
  }
  return params;
}

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = false;
  status.textContent = "";
  status.dataset.state = "error";
}

async function runSearch() {
  const params = parameters();
  let request;
  if (photo) {
    request = fetch(`/api/search?${params}`, {method: "POST", body: photo,
                                              headers: {"Content-Type": "application/octet-stream"}});
  } else {
    const text = textBox.value.trim();
    if (!text) { showError("Type a query or drop a photo."); return; }
    params.set("q", text);
    request = fetch(`/api/search?${params}`);
  }
  status.dataset.state = "searching";
  status.textContent = "searching…";
  errorBox.hidden = true;
  let response, body;
  try {
    response = await request;
    body = await response.json();
  } catch (e) {
    showError(`The search page did not answer (${e}).`);
    return;
  }
  if (!response.ok) { showError(body.detail || `HTTP ${response.status}`); return; }
  render(body);
}

function render(body) {
  const grounded = $("#grounded");
  grounded.textContent = "";
  const known = Object.entries(body.query.grounded);
  if (body.query.kind === "text") {
    grounded.append(element("span", "label", known.length ? "the query says:" : "the query names no attribute"));
    for (const [name, value] of known) grounded.append(element("span", "chip shared", `${name}: ${value}`));
  }
  for (const column of body.columns) {
    const section = document.querySelector(`.column[data-side="${column.side}"]`);
    const filtered = Object.keys(body.filters).length > 0;
    section.querySelector(".depth").textContent = filtered
      ? `${column.matches.length} of the top ${column.searched} (of ${column.catalog_size}) pass the filters`
      : `top ${column.matches.length} of ${column.catalog_size}`;
    const results = section.querySelector(".results");
    results.textContent = "";
    for (const match of column.matches) results.append(card(column.side, match, known.length));
  }
  status.dataset.searches = String(Number(status.dataset.searches) + 1);
  status.dataset.state = "done";
  status.textContent = body.query.kind === "image" ? `photo search, k=${body.k}` : `text search, k=${body.k}`;
}

function card(side, match, nKnown) {
  const id = encodeURIComponent(match.item_id);
  const node = element("article", "card" + (match.shared.length ? " shares" : ""));
  node.dataset.item = match.item_id;
  node.dataset.category = match.category;
  node.dataset.shared = match.shared.join(",");
  const link = element("a");
  link.href = `/items/${side}/${id}`;
  const img = element("img");
  img.src = `/images/${side}/${id}`;
  img.alt = match.item_id;
  img.loading = "eager";
  link.append(img);
  node.append(link, element("div", "id", match.item_id), element("div", "score", `score ${match.score.toFixed(3)}`));
  if (match.shared.length) node.append(element("div", "mark", `✓ ${match.shared.length}/${nKnown}: ${match.shared.join(", ")}`));
  const chips = element("div", "chips");
  for (const [name, value] of Object.entries(match.attributes)) {
    if (value === "unknown") continue;
    const chip = element("span", "chip" + (match.shared.includes(name) ? " shared" : ""), value);
    chip.title = name;
    chips.append(chip);
  }
  node.append(chips);
  return node;
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  photo = null;
  fileInput.value = "";
  $("#query-image").hidden = true;
  runSearch();
});

function usePhoto(file) {
  photo = file;
  const preview = $("#query-image");
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  runSearch();
}

fileInput.addEventListener("change", () => { if (fileInput.files.length) usePhoto(fileInput.files[0]); });
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files.length) usePhoto(event.dataTransfer.files[0]);
});
for (const control of [kBox, ...document.querySelectorAll(".filter")]) {
  control.addEventListener("change", () => { if (photo || textBox.value.trim()) runSearch(); });
}
