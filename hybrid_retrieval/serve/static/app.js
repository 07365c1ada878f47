// The page of `hybrid-retrieval serve`: it calls the API of the same server and shows the results.
// Text from the server is only ever set as textContent, never parsed as HTML.
"use strict";

const state = { conditions: [] };
const $ = (id) => document.getElementById(id);

function status(text) { $("status").textContent = text; }

async function call(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function describeBreakdown(part) {
  if (!part) return "";
  if (part.audio === undefined) return `from ${part.source.replace("+", " and ")}`;
  if (part.metadata === null) return `audio ${part.audio.toFixed(3)} (no metadata)`;
  const w = part.weight;
  return `audio ${part.audio.toFixed(3)} × ${(1 - w).toFixed(2)} + metadata ${part.metadata.toFixed(3)} × ` +
    `${w.toFixed(2)}, ÷ ${part.norm.toFixed(2)}`;
}

function shareBars(element, part) {
  if (!part || part.audio === undefined || part.metadata === null) return;
  const audio = Math.max(0, (1 - part.weight) * part.audio), metadata = Math.max(0, part.weight * part.metadata);
  const total = audio + metadata || 1;
  for (const [kind, value] of [["audio", audio], ["metadata", metadata]]) {
    const bar = document.createElement("span");
    bar.className = `bar ${kind}`;
    bar.style.width = `${(6 * value / total).toFixed(2)}rem`;
    bar.title = `${kind}: ${Math.round(100 * value / total)}% of the score`;
    element.append(" ", bar);
  }
}

function render(title, results) {
  const list = $("results");
  list.replaceChildren();
  for (const hit of results) {
    const row = $("row").content.firstElementChild.cloneNode(true);
    row.dataset.item = hit.id;
    row.querySelector(".score").textContent = hit.score.toFixed(3);
    const link = row.querySelector(".file");
    link.textContent = hit.file;
    link.href = hit.audio_url;
    link.title = hit.id;
    const audio = row.querySelector("audio");
    audio.src = hit.audio_url;
    audio.setAttribute("aria-label", `play ${hit.file}`);
    const breakdown = row.querySelector(".breakdown");
    breakdown.textContent = describeBreakdown(hit.breakdown) || (hit.condition ? `similar in ${hit.condition}` : "");
    shareBars(breakdown, hit.breakdown);
    row.querySelector(".tags").textContent = hit.tags.length ? `tags: ${hit.tags.join(", ")}` : "";
    row.querySelector(".description").textContent = hit.description || hit.metadata || "";
    if (state.conditions.length) {
      const similar = row.querySelector(".similar");
      similar.hidden = false;
      for (const condition of state.conditions) {
        const button = document.createElement("button");
        button.type = "button";
        button.textContent = condition;
        button.setAttribute("aria-label", `items similar to ${hit.file} in ${condition}`);
        button.addEventListener("click", () => showSimilar(hit, condition));
        similar.append(button);
      }
    }
    list.append(row);
  }
  const heading = $("results-title");
  heading.textContent = title;
  heading.hidden = false;
  status(`${results.length} results`);
  heading.focus();
}

async function showSimilar(hit, condition) {
  status(`finding items like ${hit.file} in ${condition}…`);
  try {
    const top = $("top").value;
    const body = await call(`/similar/${hit.url.slice("/items/".length)}?condition=${encodeURIComponent(condition)}&top=${top}`);
    render(`Similar to ${hit.file} in ${condition}`, body.results);
  } catch (error) { status(`error: ${error.message}`); }
}

$("text-search").addEventListener("submit", async (event) => {
  event.preventDefault();
  const q = $("q").value.trim();
  if (!q) return;
  status("searching…");
  try {
    const body = await call(`/search?q=${encodeURIComponent(q)}&top=${$("top").value}`);
    render(`Results for “${q}”`, body.results);
  } catch (error) { status(`error: ${error.message}`); }
});

$("audio-search").addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = $("clip").files[0];
  if (!file) { status("choose an audio file first"); return; }
  status(`searching by ${file.name}…`);
  try {
    const body = await call(`/search/audio?top=${$("top").value}`,
      { method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" } });
    render(`Items like ${file.name}`, body.results);
  } catch (error) { status(`error: ${error.message}`); }
});

call("/health").then((health) => {
  state.conditions = health.similar ? health.similar.conditions : [];
  const model = health.checkpoint.split("/").filter(Boolean).pop();
  $("about").textContent = `${health.items} items, searched with ${model}` +
    ` (${health.source.replace("+", " and ")}). Type what you want to hear; each result plays in the page.`;
  document.body.dataset.ready = "true";
}).catch((error) => status(`error: ${error.message}`));
