// The leaf-diagnosis page: upload a photo, show the top classes, send feedback, list the history.
"use strict";

const UNSURE_BELOW = 0.5; // a top probability below this shows the "not sure" message
const NOT_A_LEAF = "not a leaf"; // the feedback label of a photo that is none of the classes
const PAGE_SIZE = 10;
// The access token, when the server asks for one (a 401), is kept in localStorage and sent as a
// Bearer header: never in a cookie, so another site's form cannot act with it.
const TOKEN_KEY = "purenn-token";

const $ = (id) => document.getElementById(id);
let current = null; // the diagnosis on screen
let nextBefore = null; // the id that the next history page starts below
let photo = null; // { file, url, overlayUrl } of the photo on screen
let tokenPrompt = null; // the promise of the token form while it is shown
let thumbnailUrls = []; // blob: URLs of the history's thumbnails, released on each reset

// "Pepper,_bell___Bacterial_spot" -> "Pepper, bell · Bacterial spot" (PlantVillage's plant___disease)
const pretty = (name) => name.split("___").map((part) => part.replace(/_+/g, " ").trim()).join(" · ");
const percent = (p) => (100 * p).toFixed(1) + "%";
// The crops of the classes: the part before "___", each once, in the order of the classes.
const crops = (names) => [...new Set(names.map((name) => pretty(name.split("___")[0])))];

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function withToken(options = {}) {
  const headers = new Headers(options.headers || {});
  const token = localStorage.getItem(TOKEN_KEY);
  if (token) headers.set("Authorization", `Bearer ${token}`);
  return { ...options, headers };
}

// Shows the token form once (however many requests were refused) until a token is entered.
function askForToken(message) {
  if (!tokenPrompt) {
    tokenPrompt = new Promise((resolve) => {
      $("token-message").textContent = message;
      $("token-form").hidden = false;
      $("token").focus();
      $("token-form").addEventListener("submit", (event) => {
        event.preventDefault();
        localStorage.setItem(TOKEN_KEY, $("token").value.trim());
        $("token").value = "";
        $("token-form").hidden = true;
        tokenPrompt = null;
        resolve();
      }, { once: true });
    });
  }
  return tokenPrompt;
}

// fetch with the token; on a 401 asks for a (new) token and sends the request again. Several
// requests can be out at once: a 401 forgets only the token it was sent with, and a request
// refused after a newer token was entered sends again with that one instead of asking.
async function authorizedFetch(path, options) {
  for (;;) {
    const sent = localStorage.getItem(TOKEN_KEY);
    const response = await fetch(path, withToken(options));
    if (response.status !== 401) return response;
    const stored = localStorage.getItem(TOKEN_KEY);
    if (stored !== null && stored !== sent) continue;
    localStorage.removeItem(TOKEN_KEY);
    await askForToken(sent ? "That token was refused: enter another." :
      "This server needs an access token (ask whoever runs it).");
  }
}

async function api(path, options) {
  const response = await authorizedFetch(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

async function loadModel() {
  const model = await api("/api/model");
  const accuracy = model.test_accuracy == null ? "" :
    `, ${percent(model.test_accuracy)} accurate on held-out photos`;
  $("model-info").textContent = `${model.class_names.length} classes${accuracy}.`;
  $("known-crops").replaceChildren(...crops(model.class_names).map((crop) => {
    const li = document.createElement("li");
    li.textContent = crop;
    return li;
  }));
  for (const [value, text] of [...model.class_names.map((n) => [n, pretty(n)]),
    [NOT_A_LEAF, "Not a leaf (none of these)"]]) {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = text;
    $("feedback-label").append(option);
  }
}

// A photo the model does not recognize: the message and the crops it knows instead of the
// disease bars, which the "show anyway" toggle brings back.
function showGuesses() {
  const unknown = current && current.recognized === false;
  $("unknown").hidden = !unknown;
  $("guesses").hidden = unknown && !$("show-anyway").checked;
}

function showResult(diagnosis) {
  current = diagnosis;
  const [top] = diagnosis.predictions;
  $("top-class").textContent = `${pretty(top.class)} · ${percent(top.probability)}`;
  $("unsure").hidden = top.probability >= UNSURE_BELOW;
  $("bars").replaceChildren(...diagnosis.predictions.map((p) => {
    const li = document.createElement("li");
    li.dataset.class = p.class;
    li.innerHTML = '<div class="bar-label"><span class="bar-name"></span><span class="bar-pct"></span>' +
      '</div><div class="bar-track"><div class="bar-fill"></div></div>';
    li.querySelector(".bar-name").textContent = pretty(p.class);
    li.querySelector(".bar-pct").textContent = percent(p.probability);
    li.querySelector(".bar-fill").style.width = percent(p.probability);
    return li;
  }));
  $("feedback-status").textContent = "";
  const guess = diagnosis.recognized === false ? NOT_A_LEAF : top.class;
  $("feedback-label").value = diagnosis.feedback || guess;
  $("show-anyway").checked = false;
  showGuesses();
  $("result").hidden = false;
}

function showPhoto(file) {
  if (photo) {
    URL.revokeObjectURL(photo.url);
    if (photo.overlayUrl) URL.revokeObjectURL(photo.overlayUrl);
  }
  photo = { file, url: URL.createObjectURL(file), overlayUrl: null, explained: "" };
  $("explain-toggle").checked = false;
  $("explain-status").textContent = "";
  $("preview").src = photo.url;
}

// The toggle swaps the photo for its Grad-CAM overlay (fetched once per photo) and back.
async function toggleExplanation() {
  const on = $("explain-toggle").checked;
  const shown = photo;
  if (!shown) return;
  if (!on) {
    $("preview").src = shown.url;
    $("explain-status").textContent = "";
    return;
  }
  if (!shown.overlayUrl) {
    $("explain-status").textContent = "Looking…";
    const form = new FormData();
    form.append("file", shown.file);
    try {
      const response = await authorizedFetch("/api/explain", { method: "POST", body: form });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        throw new Error(body.error || `HTTP ${response.status}`);
      }
      const blob = await response.blob();
      shown.overlayUrl = URL.createObjectURL(blob);
      shown.explained = decodeURIComponent(response.headers.get("X-Class") || "");
    } catch (err) {
      if (shown === photo) {
        $("explain-toggle").checked = false;
        $("explain-status").textContent = `Could not explain this photo: ${err.message}`;
      }
      return;
    }
  }
  if (shown !== photo || !$("explain-toggle").checked) return; // another photo or switched off
  $("preview").src = shown.overlayUrl;
  $("explain-status").textContent = "Tinted yellow to red: what weighed most for " +
    `${pretty(shown.explained)}; green and blue: less; untinted: nothing (Grad-CAM).`;
}

async function diagnose(file) {
  if (!file) return;
  showPhoto(file);
  $("preview").hidden = false;
  $("drop-text").hidden = true;
  setStatus("Diagnosing…");
  const form = new FormData();
  form.append("file", file);
  try {
    const diagnosis = await api("/api/predict", { method: "POST", body: form });
    setStatus(`Done in ${Math.round(diagnosis.latency_ms)} ms.`);
    showResult(diagnosis);
    await loadHistory(true);
  } catch (err) {
    $("result").hidden = true;
    setStatus(`Could not diagnose this photo: ${err.message}`, true);
  }
}

async function sendFeedback(event) {
  event.preventDefault();
  if (!current) return;
  const label = $("feedback-label").value;
  try {
    current = await api(`/api/diagnoses/${current.id}/feedback`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ label }),
    });
    $("feedback-status").textContent = `Thank you: saved as ${label === NOT_A_LEAF ? label : pretty(label)}.`;
    await loadHistory(true);
  } catch (err) {
    $("feedback-status").textContent = `Not saved: ${err.message}`;
  }
}

function historyItem(d) {
  const li = document.createElement("li");
  li.dataset.id = d.id;
  let thumb;
  if (d.thumbnail_url) {
    thumb = document.createElement("img");
    thumb.alt = "";
    loadThumbnail(thumb, d.thumbnail_url);
  } else {
    thumb = document.createElement("div");
    thumb.className = "no-thumb";
  }
  const [top] = d.predictions;
  const text = document.createElement("div");
  text.className = "h-text";
  text.innerHTML = '<div class="h-class"></div><div class="h-meta"></div><div class="h-feedback"></div>';
  text.querySelector(".h-class").textContent = d.recognized === false ?
    "Not a leaf this model knows" : `${pretty(top.class)} · ${percent(top.probability)}`;
  text.querySelector(".h-meta").textContent = new Date(d.created_at).toLocaleString();
  const said = d.feedback === NOT_A_LEAF ? d.feedback : d.feedback && pretty(d.feedback);
  text.querySelector(".h-feedback").textContent = d.feedback ? `You said: ${said}` : "";
  li.append(thumb, text);
  return li;
}

// Fetched with the token (an <img src> could not send it) and shown from a blob: URL.
async function loadThumbnail(img, url) {
  const response = await fetch(url, withToken()).catch(() => null);
  if (!response || !response.ok) return;
  const blobUrl = URL.createObjectURL(await response.blob());
  thumbnailUrls.push(blobUrl);
  img.src = blobUrl;
}

async function loadHistory(reset) {
  const query = new URLSearchParams({ limit: PAGE_SIZE });
  if (!reset && nextBefore != null) query.set("before", nextBefore);
  const page = await api(`/api/diagnoses?${query}`);
  const items = page.items.map(historyItem);
  if (reset) {
    thumbnailUrls.forEach((url) => URL.revokeObjectURL(url));
    thumbnailUrls = [];
    $("history").replaceChildren(...items);
  }
  else $("history").append(...items);
  nextBefore = page.next_before;
  $("more").hidden = nextBefore == null;
}

function wireDrop() {
  const drop = $("drop");
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    diagnose(e.dataTransfer.files[0]);
  });
}

$("file").addEventListener("change", (e) => diagnose(e.target.files[0]));
$("feedback").addEventListener("submit", sendFeedback);
$("explain-toggle").addEventListener("change", toggleExplanation);
$("show-anyway").addEventListener("change", showGuesses);
$("more").addEventListener("click", () => loadHistory(false));
wireDrop();
loadModel().catch((err) => setStatus(`The model is not available: ${err.message}`, true));
loadHistory(true).catch(() => {});
