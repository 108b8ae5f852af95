// dualseg review page: sign in, worklist (most uncertain first), upload with progress, case view
// (image + mask + entropy heatmap in NiiVue), uncertain regions, paint corrections, save.
import * as API from "./api.js";
import { HEAT_COLORMAP, Viewer } from "./viewer.js";

const NIIVUE_URL = "./vendor/niivue/index.js";
const $ = (sel) => document.querySelector(sel);
const ACTIVE = new Set(["queued", "running"]);

const state = {
  cases: [],          // worklist rows (CasePublic), in display order
  caseId: null,
  case: null,
  regions: [],
  regionIndex: -1,
  classes: [],
  ready: false,       // the open case is fully shown (volumes, drawing, regions)
  lastSave: null,
  polling: null,
  loadToken: 0,
};
let viewer = null;
let nvModule = null;

// --- helpers ------------------------------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
}
const fmt = (x, d = 3) => (x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(d));
const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)} %`);
const shortId = (id) => id.slice(0, 8);

function banner(message, kind = "error") {
  const b = $("#banner");
  if (!message) { b.hidden = true; return; }
  b.className = `banner ${kind}`;
  b.textContent = message;
  b.hidden = false;
}

function setBusy(button, busy, label) {
  button.disabled = busy;
  if (label) button.textContent = label;
}

// --- sign in ------------------------------------------------------------------------------------------
function showLogin(message = "") {
  $("#login-view").hidden = false;
  $("#app-view").hidden = true;
  $("#logout-btn").hidden = true;
  $("#login-error").textContent = message;
  $("#token-input").focus();
}

async function signIn(token) {
  API.auth.set(token);
  try {
    await API.listCases({ limit: "1" });
  } catch (err) {
    API.auth.clear();
    showLogin(err.status === 401 ? "This token is not valid (or has expired)." : err.message);
    return;
  }
  $("#login-view").hidden = true;
  $("#app-view").hidden = false;
  $("#logout-btn").hidden = false;
  await ensureViewer();
  await refreshWorklist();
  const wanted = new URLSearchParams(location.hash.slice(1)).get("case");
  if (wanted) openCase(wanted);
}

// --- NiiVue -------------------------------------------------------------------------------------------
async function ensureViewer() {
  if (viewer) return viewer;
  try {
    nvModule = await import(NIIVUE_URL);
  } catch (err) {
    banner("The NiiVue bundle is missing, so images cannot be shown. Install it on the server with "
           + "`make ui` (needs npm; it runs `npm ci` in backend/ui) and reload this page.");
    console.error(err);
    return null;
  }
  viewer = new Viewer(nvModule, $("#gl"));
  try {
    await viewer.init();
  } catch (err) {
    banner(`WebGL2 is not available in this browser: ${err.message}`);
    viewer = null;
    return null;
  }
  viewer.onLocation = showLocation;
  viewer.onDirty = (dirty) => {
    $("#save-btn").disabled = !dirty || !state.ready;
    $("#case-title").classList.toggle("dirty", dirty);
  };
  window.dualseg.viewer = viewer;
  window.dualseg.nv = viewer.nv;
  renderColorbar();
  markView();
  markTool();
  return viewer;
}

function showLocation(loc) {
  if (!loc || !state.ready) return;
  const nv = viewer.nv;
  const native = loc.values && loc.values[0] && loc.values[0].vox ? loc.values[0].vox : loc.vox || [];
  const vox = Array.from(native).slice(0, 3).map((v) => Math.round(v));
  const mm = loc.mm ? Array.from(loc.mm).slice(0, 3).map((v) => v.toFixed(1)) : [];
  const parts = [`voxel ${vox.join(", ")}`, `${mm.join(", ")} mm`];
  if (loc.values && loc.values.length) {
    parts.push(`intensity ${fmt(loc.values[0].value, 1)}`);
    if (loc.values[1]) parts.push(`entropy ${fmt(loc.values[1].value, 3)}`);
  }
  if (nv.drawBitmap && nv.back) {
    const d = nv.back.dimsRAS;
    const v = nv.frac2vox(nv.scene.crosshairPos);
    const idx = v[0] + v[1] * d[1] + v[2] * d[1] * d[2];
    const label = nv.drawBitmap[idx];
    const cls = state.classes.find((c) => c.index === label);
    parts.push(`label ${cls ? cls.name : label}`);
  }
  $("#location").textContent = parts.join(" · ");
}

function renderColorbar() {
  // the heatmap's colours span [from, 1]; below "from" it is transparent (a checkerboard here)
  const min = viewer ? viewer.heat.min : Number($("#heat-min").value);
  let lut = null;
  try { lut = nvModule.cmapper.colormap(HEAT_COLORMAP); } catch { /* no bundle */ }
  const n = 8;
  const stops = [`transparent 0%`, `transparent ${min * 100}%`];
  for (let i = 0; i <= n; i++) {
    const k = Math.min(255, Math.round((i / n) * 255)) * 4;
    const rgb = lut ? `rgb(${lut[k]}, ${lut[k + 1]}, ${lut[k + 2]})` : `hsl(${50 * i / n}, 100%, 50%)`;
    stops.push(`${rgb} ${(min + (1 - min) * i / n) * 100}%`);
  }
  $("#colorbar-ramp").style.background = `linear-gradient(to right, ${stops.join(", ")})`;
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((v) => el("span", { style: `left:${v * 100}%` }, v.toFixed(2)));
  $("#colorbar-ticks").replaceChildren(...ticks);
  $("#heat-min-out").textContent = min.toFixed(2);
}

// --- worklist -----------------------------------------------------------------------------------------
async function refreshWorklist() {
  let list;
  try {
    list = await API.listCases();
  } catch (err) {
    if (err.status !== 401) banner(`Could not load the worklist: ${err.message}`);
    return;
  }
  state.cases = list.items;
  renderWorklist();
  const anyActive = state.cases.some((c) => c.latest_job && ACTIVE.has(c.latest_job.state));
  clearTimeout(state.worklistTimer);
  if (anyActive) state.worklistTimer = setTimeout(refreshWorklist, 2000);
}

function caseState(c) {
  const j = c.latest_job;
  if (!j) return { text: "not segmented", cls: "none" };
  if (j.state === "running") return { text: `running ${Math.round(j.progress)} %`, cls: "running" };
  if (j.state === "queued") return { text: j.queue_position ? `queued #${j.queue_position}` : "queued", cls: "queued" };
  return { text: j.state, cls: j.state };
}

function renderWorklist() {
  const list = $("#case-list");
  list.replaceChildren(...state.cases.map((c) => {
    const st = caseState(c);
    const score = c.uncertainty ? c.uncertainty.score : null;
    const regionCount = c.uncertainty ? c.uncertainty.region_count : null;
    const model = c.model_version || (c.latest_job && c.latest_job.model_version);
    return el("li", { class: c.case_id === state.caseId ? "case selected" : "case", dataset: { caseId: c.case_id },
                      tabindex: "0", onclick: () => openCase(c.case_id),
                      onkeydown: (e) => { if (e.key === "Enter") openCase(c.case_id); } },
      el("div", { class: "case-line" },
        el("span", { class: "case-name", title: c.case_id }, c.original_name || shortId(c.case_id)),
        c.uncertainty && c.uncertainty.out_of_distribution
          ? el("span", { class: "badge ood", title: c.uncertainty.ood_reason || "out of distribution" }, "OOD")
          : null,
        el("span", { class: `badge ${st.cls}` }, st.text)),
      el("div", { class: "case-line muted small" },
        el("span", {}, `${c.modality || c.source_format} ${c.shape.join("×")}`),
        el("span", { class: "score", title: "uncertainty score (mean entropy in the region of interest)" },
          score === null || score === undefined ? "" : `H ${fmt(score, 3)}`)),
      el("div", { class: "case-line muted small" },
        el("span", { title: "model version" }, model || "no model"),
        regionCount === null || regionCount === undefined ? null
          : el("span", { title: "uncertain regions" }, `${regionCount} region${regionCount === 1 ? "" : "s"}`)));
  }));
  $("#case-list-empty").hidden = state.cases.length > 0;
}

// --- upload -------------------------------------------------------------------------------------------
async function upload(e) {
  e.preventDefault();
  const files = [...$("#upload-input").files];
  if (!files.length) return;
  const btn = $("#upload-btn");
  setBusy(btn, true);
  $("#upload-status").hidden = false;
  const bar = $("#upload-progress");
  const text = $("#upload-text");
  try {
    const created = await API.uploadCase(files, (f) => {
      bar.value = Math.round(f * 100);
      text.textContent = f < 1 ? `uploading ${Math.round(f * 100)} %` : "checking the volume…";
    });
    text.textContent = created.job_id ? "uploaded; segmentation queued" : "uploaded";
    $("#upload-input").value = "";
    await refreshWorklist();
    await openCase(created.case_id);
  } catch (err) {
    text.textContent = "";
    bar.value = 0;
    banner(`Upload refused: ${err.message}`);
  } finally {
    setBusy(btn, false);
  }
}

// --- case view ----------------------------------------------------------------------------------------
function confirmLeave() {
  return !(viewer && viewer.dirty && state.ready)
    || window.confirm("This case has unsaved corrections. Leave it without saving?");
}

async function openCase(caseId) {
  if (caseId !== state.caseId && !confirmLeave()) return;
  const token = ++state.loadToken;
  clearTimeout(state.polling);
  state.caseId = caseId;
  state.ready = false;
  state.regions = [];
  state.regionIndex = -1;
  state.lastSave = null;
  history.replaceState(null, "", `#case=${encodeURIComponent(caseId)}`);
  renderWorklist();
  banner("");
  $("#save-result").hidden = true;
  $("#save-btn").disabled = true;
  $("#placeholder").hidden = true;
  renderRegions();
  let c;
  try {
    c = await API.getCase(caseId);
  } catch (err) {
    banner(`Could not open the case: ${err.message}`);
    return;
  }
  if (token !== state.loadToken) return;
  state.case = c;
  renderCaseInfo();
  const job = c.latest_job;
  if (job && ACTIVE.has(job.state)) {
    await watchJob(job, token);
    return;
  }
  $("#job-overlay").hidden = true;
  await showCase(c, token);
}

function showJob(j) {
  $("#job-title").textContent = j.state === "queued"
    ? `Queued${j.queue_position ? ` (position ${j.queue_position})` : ""}` : "Segmenting…";
  $("#job-progress").value = j.progress;
  $("#job-text").textContent = `${j.stage || j.state} · ${Math.round(j.progress)} %`
    + (j.model_version ? ` · model ${j.model_version}` : "");
}

async function watchJob(job, token) {
  const overlay = $("#job-overlay");
  showJob(job);
  overlay.hidden = false;
  const tick = async () => {
    if (token !== state.loadToken) return;
    let j;
    try {
      j = await API.getJob(job.job_id);
    } catch (err) {
      $("#job-text").textContent = `could not read the job: ${err.message}`;
      state.polling = setTimeout(tick, 3000);
      return;
    }
    if (token !== state.loadToken) return;
    showJob(j);
    if (ACTIVE.has(j.state)) {
      state.polling = setTimeout(tick, 1000);
      return;
    }
    overlay.hidden = true;
    refreshWorklist();
    if (j.state !== "succeeded") banner(`Segmentation ${j.state}${j.error ? `: ${j.error}` : ""}`);
    const c = await API.getCase(state.caseId);
    if (token !== state.loadToken) return;
    state.case = c;
    renderCaseInfo();
    await showCase(c, token);
  };
  await tick();
}

async function showCase(c, token) {
  if (!(await ensureViewer())) return;
  const urls = API.volumeUrls(c.case_id);
  const hasResult = c.artifacts.some((a) => a.kind === "mask_nifti");
  try {
    const [image, mask, entropy, regions, model] = await Promise.all([
      API.fetchBytes(urls.image),
      hasResult ? API.fetchBytes(urls.mask) : null,
      hasResult ? API.fetchBytes(urls.entropy) : null,
      hasResult ? API.getRegions(c.case_id) : null,
      c.model_version ? API.getModel(c.model_version).catch(() => null) : null,
    ]);
    if (token !== state.loadToken) return;
    state.classes = classesOf(model);
    renderLabelButtons();
    await viewer.load({ image, mask, entropy, classes: state.classes });
    state.regions = regions ? regions.regions : [];
    renderRegions();
    if (!hasResult) banner("This case has no segmentation yet: you can paint labels from scratch.", "info");
    const u = c.uncertainty || {};
    if (hasResult && u.out_of_distribution) {
      banner(`Out of distribution (score ${fmt(u.ood_score, 2)}): ${u.ood_reason || "unlike the model's training data"}`
             + " The heatmap and the region list can miss errors here: review the whole volume.", "warning");
    }
    state.ready = true;
    viewer.onDirty(viewer.dirty);
    viewer.nv.createOnLocationChange();
  } catch (err) {
    banner(`Could not load the case's volumes: ${err.message}`);
  }
}

function classesOf(model) {
  const classes = model && model.card && Array.isArray(model.card.classes) ? model.card.classes : null;
  if (classes && classes.length) return classes;
  return [{ index: 0, name: "background", color: [0, 0, 0] }, { index: 1, name: "foreground", color: [220, 60, 60] }];
}

function renderLabelButtons() {
  const box = $("#label-buttons");
  box.replaceChildren(...state.classes.filter((c) => c.index > 0).map((c, i) =>
    el("button", { type: "button", class: "label-btn", dataset: { label: String(c.index) },
                   title: `paint ${c.name} (${i + 1})`, onclick: () => selectLabel(c.index) },
      el("span", { class: "swatch", style: `background: rgb(${(c.color || [255, 0, 0]).join(",")})` }),
      `${i + 1} ${c.name}`)));
  if (viewer && !state.classes.some((c) => c.index === viewer.label)) viewer.label = 1;
  markLabel();
}

function markLabel() {
  for (const b of document.querySelectorAll(".label-btn")) {
    b.classList.toggle("active", viewer && Number(b.dataset.label) === viewer.label);
  }
}

function selectLabel(index) {
  if (!viewer) return;
  viewer.setLabel(index);
  markLabel();
  markTool();
}

function selectTool(tool) {
  if (!viewer) return;
  viewer.setTool(tool);
  markTool();
  $("#mask-mode").value = viewer.labels.mode;
}

function markTool() {
  for (const b of document.querySelectorAll("[data-tool]")) b.classList.toggle("active", viewer && b.dataset.tool === viewer.tool);
}

function markView() {
  for (const b of document.querySelectorAll("[data-view]")) b.classList.toggle("active", viewer && b.dataset.view === viewer.view);
}

function renderRegions() {
  const list = $("#region-list");
  $("#region-count").textContent = state.regions.length ? `(${state.regions.length})` : "";
  list.replaceChildren(...state.regions.map((r, i) =>
    el("li", { class: i === state.regionIndex ? "region selected" : "region", dataset: { rank: String(r.rank) },
               tabindex: "0", title: "jump to the centre of this region",
               onclick: () => gotoRegion(i), onkeydown: (e) => { if (e.key === "Enter") gotoRegion(i); } },
      el("span", { class: "rank" }, `#${r.rank}`),
      el("span", {}, `mean H ${fmt(r.mean_entropy, 2)}`),
      el("span", { class: "muted" }, `${fmt(r.volume_mm3 / 1000, 2)} ml`),
      el("span", { class: "muted" }, `slices ${r.slice_range[0]}–${r.slice_range[1]}`))));
  if (!state.regions.length && state.ready) list.append(el("li", { class: "muted" }, "no uncertain regions"));
}

function gotoRegion(i) {
  if (!viewer || !state.ready || !state.regions.length) return;
  state.regionIndex = ((i % state.regions.length) + state.regions.length) % state.regions.length;
  const r = state.regions[state.regionIndex];
  viewer.jumpToMM(r.centroid_mm);
  renderRegions();
  const item = $(`#region-list li:nth-child(${state.regionIndex + 1})`);
  if (item) item.scrollIntoView({ block: "nearest" });
}

function gotoCase(step) {
  if (!state.cases.length) return;
  const i = state.cases.findIndex((c) => c.case_id === state.caseId);
  const next = state.cases[(i + step + state.cases.length) % state.cases.length];
  if (next && next.case_id !== state.caseId) openCase(next.case_id);
}

function renderCaseInfo() {
  const c = state.case;
  $("#case-title").textContent = `${c.original_name || shortId(c.case_id)} · ${c.shape.join("×")}`
    + (c.model_version ? ` · ${c.model_version}` : "");
  const j = c.latest_job;
  const rows = [
    ["case", c.case_id], ["file", c.original_name || "–"], ["modality", c.modality || c.source_format],
    ["grid", `${c.shape.join(" × ")} @ ${c.spacing.map((s) => s.toFixed(2)).join(" × ")} mm`],
    ["series", c.series_description || "–"], ["model", c.model_version || "–"],
    ["job", j ? `${j.state}${j.timings && j.timings.total ? ` in ${j.timings.total.toFixed(1)} s` : ""}` : "–"],
    ["uncertainty", c.uncertainty && c.uncertainty.score !== null ? fmt(c.uncertainty.score, 3) : "–"],
  ];
  $("#case-info").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

// --- save ---------------------------------------------------------------------------------------------
async function save() {
  if (!viewer || !state.ready) return;
  const btn = $("#save-btn");
  setBusy(btn, true, "Saving…");
  const box = $("#save-result");
  try {
    const bytes = await viewer.exportLabels();
    const result = await API.putCorrection(state.caseId, bytes);
    viewer.markSaved();
    state.lastSave = result;
    const s = result.stats || {};
    box.className = "save-result ok";
    box.replaceChildren(
      el("strong", {}, "Saved."), " Changes against the model's mask:",
      el("dl", { class: "info" },
        el("dt", {}, "Dice"), el("dd", {}, fmt(s.dice, 4)),
        el("dt", {}, "added"), el("dd", {}, `${s.voxels_added ?? "–"} vox`),
        el("dt", {}, "removed"), el("dd", {}, `${s.voxels_removed ?? "–"} vox`),
        el("dt", {}, "relabelled"), el("dd", {}, `${s.voxels_relabelled ?? "–"} vox`),
        el("dt", {}, "changed"), el("dd", {}, `${s.voxels_changed ?? "–"} vox`),
        el("dt", { title: "share of changed voxels where the entropy was ≥ 0.5" }, "in flagged"),
        el("dd", {}, pct(s.changed_in_flagged_share)),
        el("dt", { title: "share of changed voxels inside an uncertain region's box" }, "in regions"),
        el("dd", {}, pct(s.changed_in_region_boxes_share))),
      el("span", { class: "muted small" }, `correction ${shortId(result.correction_id)} by ${result.author || "?"}`));
  } catch (err) {
    box.className = "save-result error";
    box.textContent = err.status === 403
      ? "Your token may only view: saving corrections needs the annotator role."
      : `Not saved: ${err.message}`;
  } finally {
    box.hidden = false;
    btn.textContent = "Save correction";
    btn.disabled = !(viewer && viewer.dirty);
  }
}

// --- keyboard -----------------------------------------------------------------------------------------
function onKey(e) {
  const t = e.target;
  if (t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA") && t.type !== "range"
      && t.type !== "checkbox") return;
  if ($("#app-view").hidden) return;
  const ctrl = e.ctrlKey || e.metaKey;
  const key = e.key;
  let handled = true;
  if (ctrl && (key === "z" || key === "Z")) viewer && viewer.undo();
  else if (ctrl && (key === "s" || key === "S")) save();
  else if (ctrl || e.altKey) handled = false;
  else if (key === "n") gotoRegion(state.regionIndex + 1);
  else if (key === "p") gotoRegion(state.regionIndex - 1);
  else if (key === "]" || key === "N") gotoCase(1);
  else if (key === "[" || key === "P") gotoCase(-1);
  else if (key === "d") selectTool("pen");
  else if (key === "f") selectTool("fill");
  else if (key === "e") selectTool("erase");
  else if (key === "Escape") selectTool("navigate");
  else if (key === "z") viewer && viewer.undo();
  else if (key === "s") save();
  else if (key === "h") { $("#heat-toggle").checked = !$("#heat-toggle").checked; onHeatInput(); }
  else if (key === "m") cycleMaskMode();
  else if (key === "v") { viewer && viewer.nextView(); markView(); }
  else if (key === "?") $("#help-dialog").showModal();
  else if (/^[1-9]$/.test(key)) {
    const cls = state.classes.filter((c) => c.index > 0)[Number(key) - 1];
    if (cls) selectLabel(cls.index); else handled = false;
  } else handled = false;
  if (handled) e.preventDefault();
}

function cycleMaskMode() {
  const modes = ["fill", "outline", "hidden"];
  const sel = $("#mask-mode");
  sel.value = modes[(modes.indexOf(sel.value) + 1) % modes.length];
  viewer && viewer.setLabels({ mode: sel.value });
}

function onHeatInput() {
  if (!viewer) return;
  viewer.setHeat({ visible: $("#heat-toggle").checked, opacity: Number($("#heat-opacity").value),
                   min: Number($("#heat-min").value) });
  renderColorbar();
}

// --- wiring -------------------------------------------------------------------------------------------
function wire() {
  $("#login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    signIn($("#token-input").value.trim());
  });
  $("#logout-btn").addEventListener("click", () => {
    if (!confirmLeave()) return;
    API.auth.clear();
    location.hash = "";
    location.reload();
  });
  $("#help-btn").addEventListener("click", () => $("#help-dialog").showModal());
  $("#upload-form").addEventListener("submit", upload);
  $("#upload-input").addEventListener("change", () => { $("#upload-btn").disabled = !$("#upload-input").files.length; });
  $("#refresh-btn").addEventListener("click", refreshWorklist);
  for (const b of document.querySelectorAll("[data-view]")) {
    b.addEventListener("click", () => { if (viewer) { viewer.setView(b.dataset.view); markView(); } });
  }
  for (const b of document.querySelectorAll("[data-tool]")) b.addEventListener("click", () => selectTool(b.dataset.tool));
  $("#undo-btn").addEventListener("click", () => viewer && viewer.undo());
  for (const id of ["#heat-toggle", "#heat-opacity", "#heat-min"]) $(id).addEventListener("input", onHeatInput);
  $("#mask-mode").addEventListener("change", () => viewer && viewer.setLabels({ mode: $("#mask-mode").value }));
  $("#mask-opacity").addEventListener("input", () => viewer && viewer.setLabels({ opacity: Number($("#mask-opacity").value) }));
  $("#pen-size").addEventListener("change", () => viewer && viewer.setPenSize(Number($("#pen-size").value)));
  $("#save-btn").addEventListener("click", save);
  $("#reset-btn").addEventListener("click", async () => {
    if (viewer && state.ready && (!viewer.dirty || window.confirm("Drop every edit of this case?"))) await viewer.resetDrawing();
  });
  $("#resegment-btn").addEventListener("click", async () => {
    if (!state.caseId) return;
    try {
      const job = await API.resegment(state.caseId);
      refreshWorklist();
      state.ready = false;
      await watchJob(job, ++state.loadToken);
    } catch (err) {
      banner(`Could not queue a segmentation: ${err.message}`);
    }
  });
  document.addEventListener("keydown", onKey);
  window.addEventListener("beforeunload", (e) => {
    if (viewer && viewer.dirty && state.ready) e.preventDefault();
  });
  window.addEventListener("dualseg:unauthorized", () => {
    API.auth.clear();
    showLogin("Your session ended (the token was refused): sign in again.");
  });
}

// test and console hook: the page state, the viewer and NiiVue
window.dualseg = { state, viewer: null, nv: null, gotoRegion, openCase, save };

wire();
markView();
if (API.auth.token) signIn(API.auth.token);
else showLogin();
