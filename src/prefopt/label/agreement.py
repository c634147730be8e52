"""Inter-annotator agreement: Cohen's κ (two raters), Fleiss' κ (many raters, nominal
categories), Krippendorff's α (any number of raters, missing data, nominal/ordinal/interval).
Pure Python on small tables; every function returns NaN where the statistic is undefined."""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Hashable, Sequence


def cohen_kappa(first: Sequence[Hashable], second: Sequence[Hashable]) -> float:
    """κ = (p_o − p_e) / (1 − p_e) for two raters' labels of the same units."""
    if len(first) != len(second):
        raise ValueError("both raters need a label for every unit")
    n = len(first)
    if n == 0:
        return math.nan
    observed = sum(a == b for a, b in zip(first, second, strict=True)) / n
    counts_a, counts_b = collections.Counter(first), collections.Counter(second)
    expected = sum(counts_a[c] * counts_b[c] for c in counts_a) / n**2
    return math.nan if expected == 1 else (observed - expected) / (1 - expected)


def fleiss_kappa(units: Sequence[Sequence[Hashable]]) -> float:
    """Fleiss' κ over units that each have ≥ 2 labels (the number may vary per unit: each
    unit's agreement is averaged over its own rater pairs)."""
    units = [list(u) for u in units if len(u) >= 2]
    if not units:
        return math.nan
    totals: collections.Counter = collections.Counter()
    agreement = 0.0
    for labels in units:
        counts = collections.Counter(labels)
        totals.update(counts)
        n = len(labels)
        agreement += sum(c * (c - 1) for c in counts.values()) / (n * (n - 1))
    observed = agreement / len(units)
    size = sum(totals.values())
    expected = sum((c / size) ** 2 for c in totals.values())
    return math.nan if expected == 1 else (observed - expected) / (1 - expected)


def krippendorff_alpha(units: Sequence[Sequence[float | None]], metric: str = "ordinal") -> float:
    """α = 1 − D_o / D_e from the coincidence matrix (Krippendorff 2011). `units[u]` holds the
    values the raters gave unit u (None = not rated); units with fewer than 2 values are left
    out. `metric`: nominal, ordinal or interval."""
    pairable = [[v for v in unit if v is not None] for unit in units]
    pairable = [values for values in pairable if len(values) >= 2]
    if not pairable:
        return math.nan
    coincidence: collections.Counter = collections.Counter()
    for values in pairable:
        m = len(values)
        for a, b in itertools.permutations(range(m), 2):
            coincidence[values[a], values[b]] += 1 / (m - 1)
    marginals: collections.Counter = collections.Counter()
    for (c, _), weight in coincidence.items():
        marginals[c] += weight
    n = sum(marginals.values())
    distance = _distance(metric, marginals)
    observed = sum(weight * distance(c, k) for (c, k), weight in coincidence.items())
    expected = sum(
        marginals[c] * marginals[k] * distance(c, k) for c in marginals for k in marginals
    ) / (n - 1)
    return math.nan if expected == 0 else 1 - observed / expected


def _distance(metric: str, marginals: collections.Counter):
    if metric == "nominal":
        return lambda c, k: float(c != k)
    if metric == "interval":
        return lambda c, k: (c - k) ** 2
    if metric == "ordinal":
        values = sorted(marginals)
        position = {v: i for i, v in enumerate(values)}
        cumulative = list(itertools.accumulate(marginals[v] for v in values))

        def ordinal(c, k):
            i, j = sorted((position[c], position[k]))
            between = cumulative[j] - (cumulative[i - 1] if i else 0)  # n_c + … + n_k
            return (between - (marginals[c] + marginals[k]) / 2) ** 2

        return ordinal
    raise ValueError(f"unknown metric {metric!r}: nominal, ordinal or interval")


def summary(labels: list[dict]) -> dict:
    """Agreement over labels ({item_id, annotator, task, choice, ranks, value}, as
    `Store.judged()` gives them): Fleiss' κ and mean pairwise Cohen's κ on pair choices and on
    thumbs, Krippendorff's α (ordinal) on ranks of lists and (interval and ordinal) on ratings,
    and the 100 items whose labels differ most (ids and votes; the caller adds their texts)."""
    single = [label for label in labels if label.get("task", "rank") != "rank"]
    labels = [label for label in labels if label.get("task", "rank") == "rank"]
    by_item: dict[int, list[dict]] = collections.defaultdict(list)
    for label in labels:
        by_item[label["item_id"]].append(label)
    pair_units = [
        [lab["choice"] for lab in group]
        for group in by_item.values()
        if group[0]["choice"] is not None
    ]
    rank_units = [
        unit
        for group in by_item.values()
        if group[0]["choice"] is None
        for unit in zip(*(lab["ranks"] for lab in group), strict=True)
    ]
    by_person: dict[str, dict[int, str]] = collections.defaultdict(dict)
    for label in labels:
        if label["choice"] is not None:
            by_person[label["annotator"]][label["item_id"]] = label["choice"]
    cohen = {}
    for a, b in itertools.combinations(sorted(by_person), 2):
        shared = sorted(set(by_person[a]) & set(by_person[b]))
        if len(shared) >= 2:
            cohen[f"{a} / {b}"] = {
                "items": len(shared),
                "kappa": _round(
                    cohen_kappa(
                        [by_person[a][i] for i in shared], [by_person[b][i] for i in shared]
                    )
                ),
            }
    kappas = [v["kappa"] for v in cohen.values() if v["kappa"] is not None]
    disputed = []
    for item_id, group in by_item.items():
        if len(group) < 2:
            continue
        spread = _disagreement([lab["ranks"] for lab in group])
        if spread > 0:
            disputed.append(
                {
                    "item_id": item_id,
                    "labels": len(group),
                    "disagreement": round(spread, 3),
                    "votes": {lab["annotator"]: lab["choice"] or lab["ranks"] for lab in group},
                }
            )
    thumbs, ratings, disputed_single = _single_summary(single)
    disputed = sorted(disputed + disputed_single, key=lambda d: (-d["disagreement"], d["item_id"]))
    return {
        "pairs": {
            "items_with_2_plus_labels": sum(len(u) >= 2 for u in pair_units),
            "fleiss_kappa": _round(fleiss_kappa(pair_units)),
            "mean_cohen_kappa": _round(sum(kappas) / len(kappas)) if kappas else None,
            "cohen_kappa_by_pair": cohen,
        },
        "rankings": {
            "items_with_2_plus_labels": sum(
                1 for g in by_item.values() if len(g) >= 2 and g[0]["choice"] is None
            ),
            "krippendorff_alpha_ordinal": _round(krippendorff_alpha(rank_units, "ordinal")),
        },
        "thumbs": thumbs,
        "ratings": ratings,
        "disputed_items": disputed[:100],
    }


def _single_summary(labels: list[dict]) -> tuple[dict, dict, list[dict]]:
    """Agreement on verdicts (Fleiss' κ; Cohen's κ for each two people with two or more items in
    common) and on ratings (Krippendorff's α, interval and ordinal), and the disputed items: the
    share of their rater pairs that differ."""
    units: dict[str, dict[int, list]] = {"thumbs": collections.defaultdict(list),
                                         "rating": collections.defaultdict(list)}  # fmt: skip
    by_person: dict[str, dict[int, bool]] = collections.defaultdict(dict)
    votes: dict[int, dict[str, object]] = collections.defaultdict(dict)
    for label in labels:
        value = judged_value(label)
        if label["task"] in units:
            units[label["task"]][label["item_id"]].append(value)
            votes[label["item_id"]][label["annotator"]] = value
        if label["task"] == "thumbs":
            by_person[label["annotator"]][label["item_id"]] = value
    cohen = [cohen_kappa([by_person[a][i] for i in shared], [by_person[b][i] for i in shared])
             for a, b in itertools.combinations(sorted(by_person), 2)
             if len(shared := sorted(set(by_person[a]) & set(by_person[b]))) >= 2]  # fmt: skip
    cohen = [kappa for kappa in cohen if not math.isnan(kappa)]
    rated = list(units["rating"].values())
    thumbs = {
        "items_with_2_plus_labels": sum(len(u) >= 2 for u in units["thumbs"].values()),
        "fleiss_kappa": _round(fleiss_kappa(list(units["thumbs"].values()))),
        "mean_cohen_kappa": _round(sum(cohen) / len(cohen)) if cohen else None,
    }
    ratings = {
        "items_with_2_plus_labels": sum(len(u) >= 2 for u in rated),
        "krippendorff_alpha_interval": _round(krippendorff_alpha(rated, "interval")),
        "krippendorff_alpha_ordinal": _round(krippendorff_alpha(rated, "ordinal")),
    }
    disputed = []
    for item_id, given in votes.items():
        pairs = list(itertools.combinations(given.values(), 2))
        differ = sum(a != b for a, b in pairs) / len(pairs) if pairs else 0.0
        if differ > 0:
            disputed.append({"item_id": item_id, "labels": len(given),
                             "disagreement": round(differ, 3), "votes": dict(given)})  # fmt: skip
    return thumbs, ratings, disputed


def judged_value(label: dict):
    """A one-answer judgement as the statistics compare it: the verdict, the rating, or for an
    edit whether it changed the answer."""
    value = label["value"]
    return value["label"] if "label" in value else value.get("rating", value.get("changed"))


def _disagreement(rankings: list[list[int]]) -> float:
    """Mean over rater pairs of the fraction of completion pairs they order differently
    (a tie against a strict order counts half)."""
    k = len(rankings[0])
    pairs = list(itertools.combinations(range(k), 2))
    total = 0.0
    raters = list(itertools.combinations(rankings, 2))
    for r, s in raters:
        for i, j in pairs:
            a, b = (r[i] > r[j]) - (r[i] < r[j]), (s[i] > s[j]) - (s[i] < s[j])
            total += 0 if a == b else 0.5 if 0 in (a, b) else 1
    return total / (len(raters) * len(pairs))


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)


def order_agreement(ranks: list[int], others: list[list[int]]) -> float | None:
    """The share of completion pairs on which `ranks` orders as the majority of `others` does
    (better, worse or tied); pairs the others split evenly are not counted (None if none is)."""
    sign = lambda r, i, j: (r[i] < r[j]) - (r[i] > r[j])
    agree = total = 0
    for i in range(len(ranks)):
        for j in range(i + 1, len(ranks)):
            votes = collections.Counter(sign(other, i, j) for other in others).most_common()
            if len(votes) > 1 and votes[0][1] == votes[1][1]:
                continue
            total += 1
            agree += sign(ranks, i, j) == votes[0][0]
    return agree / total if total else None


def _agreement(label: dict, others: list, gold: bool = False) -> float | None:
    """A label against gold or the others: the share of completion pairs ordered alike for a
    ranking; for one answer, 1 when its verdict or rating is the majority's (None on a split)."""
    if label.get("task", "rank") == "rank":
        return order_agreement(label["ranks"], others if gold else [o["ranks"] for o in others])
    mine = judged_value(label)
    theirs = [judged_value({"value": other}) if gold else judged_value(other) for other in others]
    votes = collections.Counter(theirs).most_common()
    if len(votes) > 1 and votes[0][1] == votes[1][1]:
        return None
    return float(mine == votes[0][0])


def quality(labels: list[dict]) -> dict[str, dict]:
    """Per person, over labels as `Store.judged()` gives them: how often their labels agree with
    gold answers, and with the majority of the others on the same regular items — a careless
    labeller shows in both within an hour. Agreement is `order_agreement`'s share of completion
    pairs ordered alike (a pair of completions is one such comparison)."""
    gold: dict[str, list[float | None]] = collections.defaultdict(list)
    by_item: dict[int, list[dict]] = collections.defaultdict(list)
    for label in labels:
        if label["gold"] is not None:
            gold[label["annotator"]].append(_agreement(label, [label["gold"]], gold=True))
        elif label.get("task", "rank") != "edit":
            by_item[label["item_id"]].append(label)
    majority: dict[str, list[float | None]] = collections.defaultdict(list)
    for group in by_item.values():
        for i, label in enumerate(group):
            others = [other for j, other in enumerate(group) if j != i]
            if others:
                majority[label["annotator"]].append(_agreement(label, others))

    def mean(values):
        values = [v for v in values if v is not None]
        return round(sum(values) / len(values), 3) if values else None

    return {
        name: {
            "gold_labels": len(gold[name]),
            "gold_agreement": mean(gold[name]),
            "majority_agreement": mean(majority[name]),
        }
        for name in {*gold, *majority}
    }
