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
    stat("rankings with 2+ labels", a.rankings.items_with_2_plus_labels));
  table($("cohen"), ["annotators", "shared items", "Cohen's κ"],
        Object.entries(a.pairs.cohen_kappa_by_pair).map(([pair, v]) => [pair, v.items, v.kappa]));
  table($("disputed"), ["item", "prompt", "labels", "disagreement", "votes"],
        a.disputed_items.map((d) => [d.item_id, d.prompt, d.labels, d.disagreement, JSON.stringify(d.votes)]));
}

$("refresh").addEventListener("click", refresh);
refresh();
