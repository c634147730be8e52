let current = null;   // the assignment from /api/next
let choice = null;    // pair: "left" | "right" | "tie" | "both_bad"
let ranks = [];       // ranking: rank of each shown completion (0 = not yet ranked)
let verdict = null;   // thumbs: "good" | "bad"
let rating = null;    // rating: the point picked
const SINGLE = ["thumbs", "rating", "edit"];   // the tasks on one answer
const $ = (id) => document.getElementById(id);

function showProgress(me) {
  $("who").textContent = me.name;
  $("progress").textContent = `${me.labelled_by_you} labelled by you · ${me.labels} of ${me.labels_wanted} labels collected`;
}

function setStatus(text, kind = "") { $("status").textContent = text; $("status").className = "status " + kind; }

let lastLabel = null;  // {id, until}: the label that Undo takes back, until its window closes
const UNDO_MS = 120 * 1000;

async function load() {
  current = await api("/api/next", {method: "POST"});
  choice = null; verdict = null; rating = null;
  $("comment").value = "";
  $("skip-reason").value = ""; $("skip-reason").hidden = true;
  $("submit").disabled = true;
  if (!current) { $("task").hidden = true; $("done").hidden = false; return; }
  $("task").hidden = false; $("done").hidden = true;
  $("prompt").replaceChildren(); renderMessage($("prompt"), current.prompt);
  const kind = current.kind, isPair = kind === "pair", single = SINGLE.includes(kind);
  for (const id of ["pair", "choices"]) $(id).hidden = !isPair;
  for (const id of ["ranking", "ranking-help", "reset"]) $(id).hidden = kind !== "ranking";
  $("single").hidden = !single || kind === "edit";
  $("thumbs").hidden = kind !== "thumbs";
  $("rating").hidden = kind !== "rating";
  for (const id of ["edited", "edit-help"]) $(id).hidden = kind !== "edit";
  $("comment").placeholder = kind === "thumbs" ? "Reason (optional)" : "Comment (optional)";
  if (isPair) showPair();
  else if (kind === "ranking") { ranks = current.completions.map(() => 0); showRanking(); }
  else showSingle();
  window.scrollTo(0, 0);
}

function completionCard(index, order) {
  const card = element("div", "completion card");
  card.dataset.index = index;
  card.append(element("span", "tag", tagName(order)));
  const body = element("div");
  renderMessage(body, current.completions[index]);
  card.append(body);
  return card;
}

function showPair() {
  $("pair").replaceChildren(completionCard(0, 0), completionCard(1, 1));
  for (const button of $("choices").querySelectorAll("button")) button.classList.remove("selected");
}

function showSingle() {
  const answer = current.completions[0];
  $("single").replaceChildren(completionCard(0, 0));
  for (const button of $("thumbs").querySelectorAll("button")) button.classList.remove("selected");
  if (current.kind === "rating") {
    const buttons = Object.entries(current.scale).map(([point, anchor], i) => {
      const button = element("button", "", point);
      button.type = "button"; button.dataset.point = point;
      if (anchor) button.append(element("span", "anchor", anchor));
      if (i < 9) button.append(element("kbd", "", String(i + 1)));
      button.addEventListener("click", () => pickRating(Number(point)));
      return button;
    });
    $("rating").replaceChildren(...buttons);
  }
  if (current.kind === "edit") {
    $("edited").value = typeof answer === "string" ? answer : answer.map((m) => m.content).join("\n");
    $("submit").disabled = false;
  }
}

function pickVerdict(value) {
  verdict = value;
  for (const button of $("thumbs").querySelectorAll("button"))
    button.classList.toggle("selected", button.dataset.verdict === value);
  $("submit").disabled = false;
}

function pickRating(point) {
  rating = point;
  for (const button of $("rating").querySelectorAll("button"))
    button.classList.toggle("selected", Number(button.dataset.point) === point);
  $("submit").disabled = false;
}

function pick(value) {
  choice = value;
  for (const button of $("choices").querySelectorAll("button"))
    button.classList.toggle("selected", button.dataset.choice === value);
  $("submit").disabled = false;
}

// Ranks as the API wants them: 1 + the number of strictly better completions (ties share).
function normalised(values) { return values.map((r) => 1 + values.filter((o) => o < r).length); }

function showRanking() {
  const k = current.completions.length;
  const order = [...Array(k).keys()].sort((a, b) => (ranks[a] || 99) - (ranks[b] || 99) || a - b);
  const cards = order.map((index) => {
    const card = element("div", "completion card");
    card.dataset.index = index;
    card.draggable = true;
    const side = element("div", "ranks");
    side.append(element("span", "tag", tagName(index)));
    side.append(element("span", "hint", ranks[index] ? `rank ${ranks[index]}` : "not ranked"));
    const buttons = element("div", "buttons");
    for (let r = 1; r <= k; r++) {
      const button = element("button", ranks[index] === r ? "selected" : "", String(r));
      button.type = "button";
      button.title = `rank ${r}`;
      button.addEventListener("click", (event) => { event.stopPropagation(); ranks[index] = r; showRanking(); });
      buttons.append(button);
    }
    side.append(buttons);
    const body = element("div");
    renderMessage(body, current.completions[index]);
    card.append(side, body);
    card.addEventListener("click", () => {   // click in order: best first
      if (ranks[index]) return;
      ranks[index] = Math.max(0, ...ranks) + 1;
      showRanking();
    });
    card.addEventListener("dragstart", () => card.classList.add("dragging"));
    card.addEventListener("dragend", () => {
      card.classList.remove("dragging");
      [...$("ranking").children].forEach((c, position) => { ranks[Number(c.dataset.index)] = position + 1; });
      showRanking();
    });
    return card;
  });
  $("ranking").replaceChildren(...cards);
  $("submit").disabled = ranks.some((r) => !r);
}

$("ranking").addEventListener("dragover", (event) => {
  event.preventDefault();
  const dragging = document.querySelector(".dragging");
  if (!dragging) return;
  const after = [...$("ranking").children].find((c) => c !== dragging &&
    event.clientY < c.getBoundingClientRect().top + c.getBoundingClientRect().height / 2);
  $("ranking").insertBefore(dragging, after || null);
});

async function submit() {
  if ($("submit").disabled || !current) return;
  const body = {item_id: current.item_id, comment: $("comment").value};
  const order = current.display_order;   // shown position → completion index of the item
  if (current.kind === "thumbs") { if (!verdict) return; body.verdict = verdict; }
  else if (current.kind === "rating") { if (rating === null) return; body.rating = rating; }
  else if (current.kind === "edit") body.edited = $("edited").value;
  else if (current.kind === "pair") {
    if (!choice) return;
    body.choice = choice === "left" ? ["a", "b"][order[0]] : choice === "right" ? ["a", "b"][order[1]] : choice;
  } else {
    const itemRanks = Array(order.length);
    normalised(ranks).forEach((r, shown) => { itemRanks[order[shown]] = r; });
    body.ranking = itemRanks;
  }
  $("submit").disabled = true;
  try {
    const saved = await api("/api/labels", {method: "POST", body: JSON.stringify(body)});
    showProgress(saved);
    lastLabel = {id: saved.id, until: Date.now() + UNDO_MS};
    $("undo").hidden = false;
    setTimeout(() => { if (lastLabel && Date.now() >= lastLabel.until) $("undo").hidden = true; }, UNDO_MS);
    setStatus("Saved", "ok");
    await load();
  } catch (error) { setStatus(error.message, "error"); $("submit").disabled = false; }
}

async function skip() {
  if (!current) return;
  const reason = $("skip-reason").value.trim();
  if ($("skip-reason").hidden || !reason) {   // first ask why
    $("skip-reason").hidden = false; $("skip-reason").focus(); setStatus("Say why, then Skip again"); return;
  }
  try {
    showProgress(await api("/api/skip", {method: "POST", body: JSON.stringify({item_id: current.item_id, reason})}));
    setStatus("Skipped", "ok");
    await load();
  } catch (error) { setStatus(error.message, "error"); }
}

async function undo() {
  if (!lastLabel) return;
  try {
    showProgress(await api(`/api/labels/${lastLabel.id}`, {method: "DELETE"}));
    lastLabel = null; $("undo").hidden = true;
    setStatus("Label taken back: judge it again", "ok");
    await load();   // the item comes back first
  } catch (error) { setStatus(error.message, "error"); }
}

async function showGuidelines() {
  const body = await api("/api/guidelines");
  if (!body) return;
  renderMarkdown($("guidelines-text"), body.markdown);
  $("guidelines").hidden = false;
  $("guidelines-toggle").hidden = false;
}

for (const button of $("choices").querySelectorAll("button"))
  button.addEventListener("click", () => pick(button.dataset.choice));
for (const button of $("thumbs").querySelectorAll("button"))
  button.addEventListener("click", () => pickVerdict(button.dataset.verdict));
$("submit").addEventListener("click", submit);
$("skip").addEventListener("click", skip);
$("undo").addEventListener("click", undo);
$("guidelines-toggle").addEventListener("click", () => { $("guidelines").hidden = !$("guidelines").hidden; });
$("reset").addEventListener("click", () => { ranks = ranks.map(() => 0); showRanking(); });
$("logout").addEventListener("click", async () => { await api("/api/logout", {method: "POST"}); location.href = "/login"; });
document.addEventListener("keydown", (event) => {
  if (event.target.id === "skip-reason") { if (event.key === "Enter") { event.preventDefault(); skip(); } return; }
  if (event.target.tagName === "TEXTAREA" && !(event.key === "Enter" && (event.ctrlKey || event.metaKey))) return;
  if (current && current.kind === "pair" && "1234".includes(event.key) && event.key.length === 1)
    pick(["left", "right", "tie", "both_bad"][Number(event.key) - 1]);
  if (current && current.kind === "thumbs" && "12".includes(event.key) && event.key.length === 1)
    pickVerdict(event.key === "1" ? "good" : "bad");
  if (current && current.kind === "rating" && /^[1-9]$/.test(event.key)) {
    const points = Object.keys(current.scale);
    if (Number(event.key) <= points.length) pickRating(Number(points[Number(event.key) - 1]));
  }
  if (event.key === "Enter") { event.preventDefault(); submit(); }
});

api("/api/me").then(showProgress);
showGuidelines().catch((error) => setStatus(error.message, "error"));
load().catch((error) => setStatus(error.message, "error"));
