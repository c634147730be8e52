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
    """Agreement over labels ({item_id, annotator, choice, ranks}, as `Store.judged()` gives
    them): Fleiss' κ and mean pairwise Cohen's κ on pair choices, Krippendorff's α (ordinal) on
    ranks of lists, and the 100 items whose labels differ most (ids and votes; the caller adds
    their texts)."""
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
    disputed.sort(key=lambda d: (-d["disagreement"], d["item_id"]))
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
        "disputed_items": disputed[:100],
    }


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


def quality(labels: list[dict]) -> dict[str, dict]:
    """Per person, over labels as `Store.judged()` gives them: how often their labels agree with
    gold answers, and with the majority of the others on the same regular items — a careless
    labeller shows in both within an hour. Agreement is `order_agreement`'s share of completion
    pairs ordered alike (a pair of completions is one such comparison)."""
    gold: dict[str, list[float | None]] = collections.defaultdict(list)
    by_item: dict[int, list[dict]] = collections.defaultdict(list)
    for label in labels:
        if label["gold"] is not None:
            gold[label["annotator"]].append(order_agreement(label["ranks"], [label["gold"]]))
        else:
            by_item[label["item_id"]].append(label)
    majority: dict[str, list[float | None]] = collections.defaultdict(list)
    for group in by_item.values():
        for i, label in enumerate(group):
            others = [other["ranks"] for j, other in enumerate(group) if j != i]
            if others:
                majority[label["annotator"]].append(order_agreement(label["ranks"], others))

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
