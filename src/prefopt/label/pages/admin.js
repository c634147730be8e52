const $ = (id) => document.getElementById(id);
const show = (value) => value === null || value === undefined ? "–" : String(value);

function stat(name, value) {
  const box = element("div", "stat card");
  box.append(element("div", "value", show(value)), element("div", "name", name));
  return box;
}

function table(node, columns, rows) {
  const head = element("tr");
  for (const column of columns) head.append(element("th", "", column));
  const body = rows.map((row) => {
    const tr = element("tr");
    for (const cell of row) tr.append(element("td", "", show(cell)));
    return tr;
  });
  if (!body.length) {
    const cell = element("td", "hint", "none yet");
    cell.colSpan = columns.length;
    body.push(element("tr"));
    body[0].append(cell);
  }
  node.replaceChildren(head, ...body);
}

async function refresh() {
  const stats = await api("/api/admin/stats");
  $("counts").replaceChildren(stat("items", stats.items), stat("labels", stats.labels),
    stat(`items with ${stats.redundancy} label(s)`, stats.items_complete), stat("people", stats.annotators.length));
  table($("people"), ["name", "role", "labels", "skipped", "labels per hour", "mean seconds per label",
                      "gold labels", "agreement with gold", "agreement with the majority"],
        stats.annotators.map((p) => [p.name, p.role, p.labels, p.skipped, p.labels_per_hour, p.mean_seconds_per_label,
                                     p.gold_labels, p.gold_agreement, p.majority_agreement]));
  const a = stats.agreement;
  $("agreement").replaceChildren(stat("Fleiss' κ (pairs)", a.pairs.fleiss_kappa),
    stat("mean Cohen's κ (pairs)", a.pairs.mean_cohen_kappa),
    stat("Krippendorff's α (rankings, ordinal)", a.rankings.krippendorff_alpha_ordinal),
    stat("pairs with 2+ labels", a.pairs.items_with_2_plus_labels),
    stat("rankings with 2+ labels", a.rankings.items_with_2_plus_labels),
    stat("Fleiss' κ (thumbs)", a.thumbs.fleiss_kappa),
    stat("mean Cohen's κ (thumbs)", a.thumbs.mean_cohen_kappa),
    stat("Krippendorff's α (ratings, interval)", a.ratings.krippendorff_alpha_interval),
    stat("thumbs with 2+ labels", a.thumbs.items_with_2_plus_labels),
    stat("ratings with 2+ labels", a.ratings.items_with_2_plus_labels));
  table($("cohen"), ["annotators", "shared items", "Cohen's κ"],
        Object.entries(a.pairs.cohen_kappa_by_pair).map(([pair, v]) => [pair, v.items, v.kappa]));
  showDisputed(a.disputed_items);
  const chosen = $("annotator").value;
  $("annotator").replaceChildren(element("option", "", "everyone"),
    ...stats.annotators.map((p) => element("option", "", p.name)));
  $("annotator").options[0].value = "";
  $("annotator").value = chosen;
  await showLabels();
}

// Each disputed item with its prompt and answers, and who voted what (choices name answers A, B, …)
function showDisputed(items) {
  if (!items.length) { $("disputed").replaceChildren(element("p", "hint", "none yet")); return; }
  $("disputed").replaceChildren(...items.map((d) => {
    const card = element("div", "card disputed");
    card.append(element("div", "hint", `item ${d.item_id} · ${d.labels} labels · disagreement ${d.disagreement}`));
    const prompt = element("div", "prompt");
    renderMessage(prompt, d.prompt);
    card.append(prompt);
    d.completions.forEach((completion, i) => {
      const answer = element("div", "answer");
      answer.append(element("span", "tag", tagName(i)));
      renderMessage(answer, completion);
      card.append(answer);
    });
    const votes = Object.entries(d.votes).map(([who, vote]) =>
      `${who}: ${Array.isArray(vote) ? vote.map((r, i) => `${tagName(i)}=${r}`).join(" ") : vote}`);
    card.append(element("div", "votes", votes.join(" · ")));
    return card;
  }));
}

function query() {
  const parts = new URLSearchParams();
  if ($("annotator").value) parts.set("annotator", $("annotator").value);
  if ($("since").value) parts.set("since", $("since").value + "T00:00:00Z");
  if ($("until").value) parts.set("until", $("until").value + "T23:59:59Z");
  return parts;
}

async function showLabels() {
  const parts = query();
  const labels = await api("/api/admin/labels?" + parts);
  parts.set("format", $("format").value);
  $("export").href = "/api/admin/export?" + parts;
  const shown = labels.slice(-200).reverse();   // the latest first
  table($("labels"), ["when", "annotator", "item", "choice or ranks", "comment"],
        shown.map((l) => [l.created_at.slice(0, 16).replace("T", " "), l.annotator, l.item_id,
                          l.choice || l.ranks.join(" "), l.comment]));
}

$("filters").addEventListener("submit", (event) => { event.preventDefault(); showLabels(); });

$("refresh").addEventListener("click", refresh);
refresh();
