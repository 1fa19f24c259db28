"""The review page (HTML, CSS and script in one document, served by review.server)."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>QA review</title>
<style>
  body { margin: 0; background: #121214; color: #e8e8e8; font: 14px system-ui, sans-serif; }
  header { position: sticky; top: 0; z-index: 2; background: #1c1c20; padding: 10px 16px;
           display: flex; gap: 18px; align-items: center; border-bottom: 1px solid #333; }
  header h1 { font-size: 18px; margin: 0; }
  #counts { color: #aaa; }
  #grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 12px; padding: 14px; }
  .card { background: #1c1c20; border: 1px solid #333; border-radius: 6px; padding: 8px; }
  .card.ok { border-color: #3c7a3c; } .card.needs_correction { border-color: #b5651d; }
  .card img.thumb { width: 100%; height: 200px; object-fit: contain; background: #121214; cursor: zoom-in; }
  .sid { font-weight: bold; font-size: 15px; }
  .chip { display: inline-block; background: #5a3414; color: #ffb070; border-radius: 9px;
          padding: 1px 8px; margin: 2px 3px 2px 0; font-size: 12px; }
  .chip.none { background: #1f3a1f; color: #8fd08f; }
  .controls { display: flex; gap: 6px; margin-top: 6px; align-items: center; }
  .controls input.note { flex: 1; background: #121214; color: #eee; border: 1px solid #444; padding: 4px; }
  button.decide { background: #2a2a30; color: #eee; border: 1px solid #555; padding: 4px 8px; cursor: pointer; }
  button.decide[data-decision=ok].active { background: #2f6b2f; }
  button.decide[data-decision=needs_correction].active { background: #9a5218; }
  .status { color: #8a8; font-size: 12px; min-height: 14px; }
  #viewer { display: none; position: fixed; inset: 0; background: rgba(0,0,0,0.92); z-index: 5;
            overflow: auto; padding: 12px; }
  #viewer.open { display: block; }
  #viewer img { max-width: 100%; display: block; margin: 0 auto; }
  #viewer .bar { display: flex; gap: 12px; align-items: center; margin-bottom: 8px; }
  #viewer ul { color: #ffb070; margin: 4px 0 10px; }
</style>
</head>
<body>
<header>
  <h1>QA review</h1>
  <label>show <select id="filter"></select></label>
  <span id="counts"></span>
</header>
<main id="grid"></main>
<div id="viewer" role="dialog">
  <div class="bar"><span class="sid" id="viewer-id"></span><span id="viewer-controls" class="controls"></span>
    <button id="viewer-close" class="decide">close (Esc)</button><span>&larr; &rarr; previous / next</span></div>
  <ul id="viewer-findings"></ul>
  <img id="sheet" alt="full QA sheet">
</div>
<script>
let data = {flags: [], subjects: []};
let shown = [];
let current = null;
const label = d => d === "needs_correction" ? "needs correction" : d;

async function load() {
  data = await (await fetch("/api/subjects")).json();
  const filter = document.getElementById("filter");
  const options = [["all", "all subjects"], ["flagged", "with QA flags"], ["unflagged", "without QA flags"],
                   ["undecided", "not decided yet"], ["ok", "decided ok"], ["needs_correction", "needs correction"]]
                  .concat(data.flags.map(f => ["flag:" + f, "flag: " + f.replaceAll("_", " ")]));
  filter.innerHTML = options.map(([v, t]) => `<option value="${v}">${t}</option>`).join("");
  filter.onchange = render;
  render();
}

function keep(s, f) {
  if (f === "all") return true;
  if (f === "flagged") return s.n_flags > 0;
  if (f === "unflagged") return s.n_flags === 0;
  if (f === "undecided") return !s.decision;
  if (f === "ok" || f === "needs_correction") return s.decision === f;
  return s.flags.includes(f.slice(5));
}

function counts() {
  const n = data.subjects.length, flagged = data.subjects.filter(s => s.n_flags > 0).length;
  const ok = data.subjects.filter(s => s.decision === "ok").length;
  const bad = data.subjects.filter(s => s.decision === "needs_correction").length;
  document.getElementById("counts").textContent =
    `${shown.length} shown of ${n} · ${flagged} with QA flags · decided: ${ok} ok, ${bad} need correction`;
}

function controls(s) {
  const box = document.createElement("div");
  box.className = "controls";
  const note = document.createElement("input");
  note.className = "note"; note.placeholder = "note"; note.value = s.note;
  box.append(...data.decisions.map(d => {
    const b = document.createElement("button");
    b.className = "decide" + (s.decision === d ? " active" : "");
    b.dataset.decision = d; b.textContent = label(d);
    b.onclick = () => decide(s, d, note.value);
    return b;
  }), note);
  return box;
}

function card(s) {
  const el = document.createElement("div");
  el.className = "card " + s.decision; el.dataset.subject = s.subject_id;
  const img = document.createElement("img");
  img.className = "thumb"; img.src = s.thumb; img.alt = s.subject_id; img.loading = "eager";
  img.onclick = () => openViewer(s);
  const chips = s.flags.length ? s.flags.map(f => `<span class="chip">${f.replaceAll("_", " ")}</span>`).join("")
                               : `<span class="chip none">no QA flags</span>`;
  const head = document.createElement("div");
  head.innerHTML = `<span class="sid">${s.subject_id}</span> ${chips}`;
  head.title = s.flags_text;
  const status = document.createElement("div");
  status.className = "status";
  status.textContent = s.decision ? "decided: " + label(s.decision) : "";
  el.append(img, head, controls(s), status);
  return el;
}

function render() {
  const f = document.getElementById("filter").value;
  shown = data.subjects.filter(s => keep(s, f));
  document.getElementById("grid").replaceChildren(...shown.map(card));
  counts();
}

async function decide(s, decision, note) {
  const r = await fetch("/api/decision", {method: "POST", headers: {"Content-Type": "application/json"},
                                          body: JSON.stringify({subject_id: s.subject_id, decision, note})});
  const reply = await r.json();
  const el = document.querySelector(`.card[data-subject="${CSS.escape(s.subject_id)}"]`);
  if (!r.ok) { if (el) el.querySelector(".status").textContent = "not saved: " + reply.error; return; }
  s.decision = reply.decision; s.note = reply.note;
  if (el) {
    const fresh = card(s);
    fresh.querySelector(".status").textContent = "saved: " + label(s.decision) + " at " + reply.decided_at;
    el.replaceWith(fresh);
  }
  if (current === s) openViewer(s);
  counts();
}

function openViewer(s) {
  current = s;
  document.getElementById("viewer-id").textContent = s.subject_id;
  document.getElementById("viewer-controls").replaceChildren(controls(s));
  document.getElementById("viewer-findings").replaceChildren(...s.findings.map(f => {
    const li = document.createElement("li"); li.textContent = f; return li;
  }));
  document.getElementById("sheet").src = s.sheet;
  document.getElementById("viewer").className = "open";
}

function closeViewer() { document.getElementById("viewer").className = ""; current = null; }
document.getElementById("viewer-close").onclick = closeViewer;
document.addEventListener("keydown", e => {
  if (!current || e.target.tagName === "INPUT") return;
  if (e.key === "Escape") closeViewer();
  const i = shown.indexOf(current);
  if (e.key === "ArrowRight" && i + 1 < shown.length) openViewer(shown[i + 1]);
  if (e.key === "ArrowLeft" && i > 0) openViewer(shown[i - 1]);
});
load();
</script>
</body>
</html>
"""
