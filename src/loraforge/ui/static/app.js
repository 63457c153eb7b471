// loraforge web UI: plain JavaScript, no build step, no library. Talks to the JSON API of loraforge/ui/app.py.
"use strict";

const $ = (sel) => document.querySelector(sel);
let selectedJob = null;
const BASIC = new Set(["model.family", "model.pretrained_model_name_or_path", "dataset.instance_dir", "preset",
  "output.output_name", "training.max_train_steps"]);

async function api(method, url, body) {
  const res = await fetch(url, {method, headers: {"Content-Type": "application/json", "X-Loraforge": "1"},
    body: body === undefined ? undefined : JSON.stringify(body)});
  const data = await res.json();
  if (!res.ok) throw data;
  return data;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

// ------------------------------------------------------------------------------------------------ the form
function choiceSelect(select, choices, defaultValue, emptyLabel) {
  select.replaceChildren(el("option", {value: "", text: emptyLabel || `(default: ${defaultValue})`}));
  for (const c of choices) select.append(el("option", {value: String(c), text: String(c)}));
}

function fieldInput(field) {
  let input;
  const dflt = field.default === null || field.default === undefined ? "unset" : JSON.stringify(field.default);
  if (field.kind === "bool") {
    input = el("select");
    choiceSelect(input, ["true", "false"], dflt);
  } else if (field.kind === "choice") {
    input = el("select");
    choiceSelect(input, field.choices, dflt);
  } else {
    input = el("input", {placeholder: dflt});
  }
  input.dataset.key = field.key;
  return input;
}

async function buildForm() {
  const schema = await api("GET", "/api/schema");
  $("#roots").textContent = "folders: " + schema.roots.join(" · ");
  const family = schema.sections[0].fields.find((f) => f.key === "model.family");
  choiceSelect($("#f-family"), family.choices.filter((c) => c !== "auto"), "auto");
  choiceSelect($("#f-preset"), schema.presets, null, "(none)");
  $("#f-preset").title = schema.preset_description;
  const box = $("#advanced-fields");
  for (const section of schema.sections) {
    const fs = el("details", {class: "section", "data-section": section.name},
      el("summary", {}, el("code", {text: `[${section.name}]`}), " " + section.doc));
    for (const field of section.fields) {
      if (BASIC.has(field.key)) continue;
      const label = el("label", {}, el("code", {text: field.key}), fieldInput(field),
        el("div", {class: "field-doc", text: field.description}));
      fs.append(label);
    }
    box.append(fs);
  }
}

function formValues() {
  const values = {};
  for (const input of document.querySelectorAll("#run-form [data-key]")) {
    if (input.value.trim()) values[input.dataset.key] = input.value;
  }
  for (const line of $("#f-extra").value.split("\n")) {
    const at = line.indexOf("=");
    if (at > 0) values[line.slice(0, at).trim()] = line.slice(at + 1);
  }
  return {values};
}

function showErrors(err) {
  const box = $("#errors");
  if (!err) { box.hidden = true; box.textContent = ""; return; }
  const problems = err.problems || [String(err.detail || err)];
  box.textContent = (err.error === "config error" ? "config error:\n" : "error:\n") +
    problems.map((p) => "  " + p).join("\n");
  box.hidden = false;
}

async function showConfig() {
  try {
    const r = await api("POST", "/api/config", formValues());
    showErrors(null);
    $("#config-toml").textContent = r.toml;
    $("#config-cli").textContent = r.cli + "\n\n# or save the TOML above as config.toml and run:\nloraforge train config.toml";
    $("#config-view").hidden = false;
  } catch (err) { showErrors(err); $("#config-view").hidden = true; }
}

async function loadToml(file) {
  try {
    const r = await api("POST", "/api/config/parse", {text: await file.text(), name: file.name});
    for (const input of document.querySelectorAll("#run-form [data-key]")) input.value = "";
    const extra = [];
    for (const [key, value] of Object.entries(r.values)) {
      const input = document.querySelector(`#run-form [data-key="${CSS.escape(key)}"]`);
      if (!input) { extra.push(`${key}=${value}`); continue; }
      if (input.tagName === "SELECT" && ![...input.options].some((o) => o.value === value)) {
        input.append(el("option", {value, text: value}));
      }
      input.value = value;
    }
    for (const section of document.querySelectorAll("details.section")) {  // open the sections the file sets
      section.open = [...section.querySelectorAll("[data-key]")].some((i) => i.value);
    }
    $("#f-extra").value = extra.join("\n");
    if (extra.length) $("#advanced").open = true;
    $("#notes").textContent = `loaded ${file.name}` +
      (r.left_out.length ? `; not taken (set by the UI, or TOML only): ${r.left_out.join(", ")}` : "");
    showErrors(null);
  } catch (err) { showErrors(err); }
}

async function startRun() {
  try {
    const job = await api("POST", "/api/jobs", formValues());
    showErrors(null);
    selectedJob = job.id;
    await refresh();
  } catch (err) { showErrors(err); }
}

// ------------------------------------------------------------------------------------------------ captions
async function openCaptions() {
  const folder = $("#f-images").value.trim();
  try {
    if (!folder) throw {problems: ["type an images folder first (the demo images are not editable here)"]};
    const r = await api("GET", "/api/captions?folder=" + encodeURIComponent(folder));
    showErrors(null);
    $("#captions-folder").textContent = r.folder;
    const grid = $("#caption-grid");
    grid.replaceChildren();
    for (const item of r.images) {
      const text = el("textarea", {rows: "3"});
      text.value = item.caption;
      text.dataset.name = item.name;
      text.addEventListener("change", async () => {
        try {
          await api("POST", "/api/captions", {folder: r.folder, name: item.name, text: text.value});
          text.classList.add("saved");
        } catch (err) { showErrors(err); }
      });
      text.addEventListener("input", () => text.classList.remove("saved"));
      const src = "/api/image?path=" + encodeURIComponent(r.folder + "/" + item.name);
      grid.append(el("figure", {}, el("img", {src, alt: item.name}), el("figcaption", {text: item.name}), text));
    }
    $("#captions").hidden = false;
  } catch (err) { showErrors(err); }
}

async function uploadImages(files) {
  const body = new FormData();
  for (const f of files) body.append("files", f, f.name);
  const res = await fetch("/api/uploads", {method: "POST", body, headers: {"X-Loraforge": "1"}});
  const data = await res.json();
  if (!res.ok) { showErrors(data); return; }
  showErrors(null);
  $("#f-images").value = data.folder;
  $("#notes").textContent = `${data.saved.length} files copied to ${data.folder}`;
  await openCaptions();
}

// ------------------------------------------------------------------------------------------------ runs
function fmt(v, digits = 4) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number") return Math.abs(v) < 1e-3 && v !== 0 ? v.toExponential(2) : v.toPrecision(digits);
  return String(v);
}

function duration(s) {
  if (s === null || s === undefined) return "–";
  s = Math.round(s);
  return s >= 3600 ? `${Math.floor(s / 3600)} h ${Math.floor(s / 60) % 60} min` :
    s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}

const COLORS = ["#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b83280"];

function plot(svg, lines) {
  // lines: [{points: [[x, y]], color, width}]; a linear plot with the y range and the last step written on it
  const W = 320, H = 160, pad = 30;
  const pts = lines.flatMap((l) => l.points).filter((p) => Number.isFinite(p[1]));
  svg.replaceChildren();
  if (!pts.length) return;
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y1 += Math.abs(y0) * 0.1 || 1; y0 -= Math.abs(y0) * 0.1 || 1; }
  const sx = (x) => pad + (x - x0) / (x1 - x0) * (W - pad - 8);
  const sy = (y) => H - 18 - (y - y0) / (y1 - y0) * (H - 28);
  const ns = "http://www.w3.org/2000/svg";
  const add = (tag, attrs) => {
    const n = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    svg.append(n);
    return n;
  };
  add("line", {x1: pad, y1: H - 18, x2: W - 8, y2: H - 18, stroke: "#99a"});
  add("line", {x1: pad, y1: 10, x2: pad, y2: H - 18, stroke: "#99a"});
  add("text", {x: 2, y: 16, "font-size": 9}).textContent = fmt(y1, 3);
  add("text", {x: 2, y: H - 20, "font-size": 9}).textContent = fmt(y0, 3);
  add("text", {x: pad, y: H - 5, "font-size": 9}).textContent = String(x0);
  add("text", {x: W - 40, y: H - 5, "font-size": 9}).textContent = `step ${x1}`;
  for (const line of lines) {
    const d = line.points.filter((p) => Number.isFinite(p[1])).map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`);
    if (d.length) add("polyline", {points: d.join(" "), fill: "none", stroke: line.color, "stroke-width": line.width || 1.5});
  }
}

function renderList(jobs) {
  const body = $("#job-list tbody");
  body.replaceChildren();
  for (const job of jobs.slice().reverse()) {
    const row = el("tr", {"data-job": job.id}, el("td", {text: job.id}), el("td", {text: job.name}),
      el("td", {text: job.status, class: "status"}), el("td", {text: `${job.step} / ${job.max_steps ?? "?"}`}));
    if (job.id === selectedJob) row.classList.add("selected");
    row.addEventListener("click", () => { selectedJob = job.id; refresh(); });
    body.append(row);
  }
}

function renderJob(job) {
  const p = job.progress;
  $("#job-detail").hidden = false;
  $("#job-title").textContent = `${job.name} (${job.id})`;
  $("#job-status").textContent = job.status;
  $("#job-message").textContent = [job.history.join(" → "), job.message].filter(Boolean).join(" · ");
  $("#stat-step").textContent = `${p.step} / ${p.max_steps ?? "?"}`;
  $("#stat-loss").textContent = fmt(p.loss_smooth);
  $("#stat-lr").textContent = Object.entries(p.lr || {}).map(([g, v]) => `${g} ${fmt(v, 3)}`).join(", ") || "–";
  $("#stat-its").textContent = fmt(p.it_s, 3);
  $("#stat-eta").textContent = job.status === "running" ? duration(p.eta_s) : "–";
  $("#stat-mem").textContent = p.memory_mb ? `${Math.round(p.memory_mb)} MiB` : "–";
  $("#stop").disabled = !["running", "queued"].includes(job.status);
  $("#resume").disabled = !job.resumable;
  plot($("#loss-plot"), [
    {points: p.series.map((s) => [s.step, s.loss]), color: "#bbc", width: 1},
    {points: p.series.map((s) => [s.step, s.loss_smooth]), color: COLORS[0], width: 2},
  ]);
  const groups = [...new Set(p.series.flatMap((s) => Object.keys(s.lr || {})))];
  plot($("#lr-plot"), groups.map((g, i) => ({points: p.series.map((s) => [s.step, s.lr[g]]), color: COLORS[i % 5]})));
  const samples = $("#samples");
  if (samples.dataset.job !== job.id) { samples.replaceChildren(); samples.dataset.job = job.id; }
  const shown = new Set([...samples.querySelectorAll("img")].map((i) => i.dataset.file));
  for (const s of p.samples) {
    for (const file of s.files) {
      if (shown.has(file)) continue;
      const img = el("img", {src: `/api/jobs/${job.id}/files/${file}`, alt: file});
      img.dataset.file = file;
      samples.append(el("figure", {}, img, el("figcaption", {text: `step ${s.step}${s.tag && s.tag !== String(s.step).padStart(6, "0") ? " · " + s.tag : ""}`})));
    }
  }
  $("#files").replaceChildren(...p.files.map((f) => el("li", {},
    el("a", {href: `/api/jobs/${job.id}/files/${f.name}`, download: f.name, text: f.name}),
    ` (${(f.bytes / 1024).toFixed(1)} KiB)`)));
  if (p.report) {
    $("#files").append(el("li", {}, el("a", {href: `/api/jobs/${job.id}/files/report.html`, target: "_blank",
      text: "report.html"}), " (the run's report)"));
  }
  $("#check").textContent = p.check.length ? p.check.join("\n") : "–";
  $("#job-cli").textContent = `${job.cli}\n# runs as: loraforge train ${job.config_file}`;
  $("#console").textContent = job.console;
}

async function refresh() {
  try {
    const jobs = await api("GET", "/api/jobs");
    if (!selectedJob && jobs.length) selectedJob = jobs[jobs.length - 1].id;
    renderList(jobs);
    if (selectedJob) renderJob(await api("GET", `/api/jobs/${selectedJob}`));
  } catch (err) { /* the server restarting: try again at the next poll */ }
}

async function jobAction(action) {
  try { await api("POST", `/api/jobs/${selectedJob}/${action}`); showErrors(null); } catch (err) { showErrors(err); }
  await refresh();
}

window.addEventListener("DOMContentLoaded", async () => {
  await buildForm();
  $("#show-config").addEventListener("click", showConfig);
  $("#start").addEventListener("click", startRun);
  $("#load-toml").addEventListener("change", (e) => { if (e.target.files[0]) loadToml(e.target.files[0]); e.target.value = ""; });
  $("#open-captions").addEventListener("click", openCaptions);
  $("#upload").addEventListener("change", (e) => { if (e.target.files.length) uploadImages(e.target.files); });
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) uploadImages(e.dataTransfer.files);
  });
  $("#stop").addEventListener("click", () => jobAction("stop"));
  $("#resume").addEventListener("click", () => jobAction("resume"));
  await refresh();
  setInterval(refresh, 700);
  document.body.dataset.ready = "1";
});
