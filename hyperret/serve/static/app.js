// hyperret's search page: no build step, no external scripts.
"use strict";
const $ = (id) => document.getElementById(id);

function headers(json) {
  const h = json ? { "Content-Type": "application/json" } : {};
  const key = $("key").value.trim();
  if (key) h["X-API-Key"] = key;
  return h;
}

async function loadIndexes() {
  const r = await fetch("/indexes", { headers: headers(false) });
  const body = await r.json();
  if (!r.ok) { status(body.error, true); return; }
  $("index").innerHTML = "";
  for (const ix of body.indexes) {
    const o = document.createElement("option");
    o.value = ix.name;
    o.textContent = `${ix.name} (${ix.rows} rows, default ${ix.default_policy})`;
    $("index").appendChild(o);
  }
}

function status(text, error) {
  $("status").textContent = text || "";
  $("status").className = error ? "error" : "";
}

function describePlan(plan) {
  if (!plan) return "";
  let s = `policy ${plan.policy}: ${plan.reason}`;
  if (plan.moved && plan.searched_radius != null)
    s = `moved from radius ${plan.radius.toFixed(2)} to ${plan.searched_radius.toFixed(2)}. ` + s;
  else if (plan.radius != null) s = `query radius ${plan.radius.toFixed(2)}. ` + s;
  return s;
}

function picture(hit) {
  for (const c of ["url", "image_url", "uri", "image_path"]) {
    const v = hit[c];
    if (typeof v === "string" && /^(https?:|data:image\/)/.test(v)) return v;
  }
  return null;
}

function render(result) {
  const grid = $("grid");
  grid.innerHTML = "";
  $("plan").textContent = describePlan(result.plan);
  for (const hit of result.hits) {
    const card = document.createElement("div");
    card.className = "hit" + (hit.unsafe ? " unsafe" : "");
    card.dataset.id = hit.id;
    const src = picture(hit);
    if (src) { const img = document.createElement("img"); img.src = src; img.alt = ""; card.appendChild(img); }
    const cap = document.createElement("div");
    cap.className = "caption";
    cap.textContent = hit.caption || hit.text || `#${hit.id}`;
    card.appendChild(cap);
    const d = document.createElement("div");
    d.className = "dist";
    d.textContent = `id ${hit.id} · distance ${hit.distance.toFixed(4)}`;
    card.appendChild(d);
    if (hit.unsafe) {
      const b = document.createElement("span"); b.className = "badge"; b.textContent = "unsafe: click to show";
      card.appendChild(b);
      card.addEventListener("click", () => card.classList.add("revealed"));
    }
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = Object.entries(hit)
      .filter(([k]) => !["id", "distance", "unsafe", "caption", "unsafe_label"].includes(k))
      .map(([k, v]) => `${k}: ${typeof v === "number" && !Number.isInteger(v) ? v.toFixed(3) : v}`).join(" · ");
    card.appendChild(meta);
    grid.appendChild(card);
  }
  status(`${result.hits.length} results`);
}

async function search(ev) {
  if (ev) ev.preventDefault();
  const policy = document.querySelector("input[name=policy]:checked").value;
  const k = parseInt($("k").value, 10) || 20;
  const file = $("image").files[0];
  let r;
  status("searching...");
  if (file) {
    const form = new FormData();
    form.append("file", file);
    form.append("index", $("index").value);
    form.append("k", String(k));
    if (policy !== "default") form.append("policy", policy);
    r = await fetch("/search/upload", { method: "POST", body: form, headers: headers(false) });
  } else {
    const text = $("text").value.trim();
    if (!text) { status("type a query or choose an image", true); return; }
    const body = { index: $("index").value, text: [text], k };
    if (policy !== "default") body.policy = policy;
    r = await fetch("/search", { method: "POST", body: JSON.stringify(body), headers: headers(true) });
  }
  const body = await r.json();
  if (!r.ok) { status(body.error, true); $("grid").innerHTML = ""; $("plan").textContent = ""; return; }
  render(body.results[0]);
}

$("search").addEventListener("submit", search);
for (const radio of document.querySelectorAll("input[name=policy]"))
  radio.addEventListener("change", () => { if ($("text").value.trim() || $("image").files[0]) search(); });
$("key").addEventListener("change", loadIndexes);
loadIndexes();
