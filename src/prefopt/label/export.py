"""Labels → training data that `prefopt train` reads as is.

lists: one row per label that prefers anything, {"prompt", "completions", "ranks"} with the
  full order and ties as given (1 = best; a pair labelled "a"/"b" becomes ranks [1, 2]/[2, 1]).
pairs: per item and per pair of completions, the majority of the labels: each label votes
  "i better", "j better" or "no preference" (tie, both bad, equal ranks). The pair is written
  as {"prompt", "chosen", "rejected"} when one side has more votes than each of the other two
  outcomes, and left out (counted) otherwise.
Labels and items that prefer nothing (all tied) are left out of both and counted, those calling
both answers bad apart from ties: a list whose completions are all equal teaches nothing and
`prefopt train` refuses it.
Labels of one answer are written in their own layouts in either format, one row each:
{"prompt", "completion", "label"} (thumbs, with the reason as `comment`), {…, "rating"} and
{…, "edited"} (an edit that changed nothing says the answer was right: {…, "label": true})."""

from __future__ import annotations

import collections
import itertools

FORMATS = ("pairs", "lists")


def export_rows(labels: list[dict], fmt: str) -> tuple[list[dict], collections.Counter]:
    """The rows to write and a count of what was left out, by reason."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    left_out: collections.Counter = collections.Counter()
    gold = [label for label in labels if label.get("gold") is not None]
    if gold:  # answers known beforehand measure the people; they are not new data
        left_out["labels of gold items"] += len(gold)
        labels = [label for label in labels if label.get("gold") is None]
    single = [label for label in labels if label.get("value") is not None]
    labels = [label for label in labels if label.get("value") is None]
    rows = [_single_row(label) for label in single]
    if fmt == "lists":
        for label in labels:
            if label.get("choice") == "both_bad":
                left_out["labels calling both answers bad"] += 1
                continue
            if len(set(label["ranks"])) == 1:
                left_out["labels with no preference (a tie)"] += 1
                continue
            rows.append(
                {
                    "prompt": label["prompt"],
                    "completions": label["completions"],
                    "ranks": label["ranks"],
                    "item_id": label["item_id"],
                    "annotator": label["annotator"],
                    **({"comment": label["comment"]} if label["comment"] else {}),
                }
            )
        return rows, left_out
    by_item: dict[int, list[dict]] = collections.defaultdict(list)
    for label in labels:
        by_item[label["item_id"]].append(label)
    for item_id, group in by_item.items():
        completions = group[0]["completions"]
        for i, j in itertools.combinations(range(len(completions)), 2):
            votes = collections.Counter(
                (r[i] < r[j]) - (r[i] > r[j]) for r in (lab["ranks"] for lab in group)
            )
            better_i, better_j, none = votes[1], votes[-1], votes[0]
            if better_i > max(better_j, none) or better_j > max(better_i, none):
                winner, loser = (i, j) if better_i > better_j else (j, i)
                rows.append(
                    {
                        "prompt": group[0]["prompt"],
                        "chosen": completions[winner],
                        "rejected": completions[loser],
                        "item_id": item_id,
                        "votes": {
                            "chosen": max(better_i, better_j),
                            "rejected": min(better_i, better_j),
                            "no_preference": none,
                        },
                    }
                )
            else:
                left_out["pairs without a majority preference"] += 1
    return rows, left_out


def _single_row(label: dict) -> dict:
    value = {key: val for key, val in label["value"].items() if key != "changed"}
    if label["value"].get("changed") is False:
        value = {"label": True}
    return {"prompt": label["prompt"], "completion": label["completions"][0], **value,
            "item_id": label["item_id"], "annotator": label["annotator"],
            **({"comment": label["comment"]} if label["comment"] else {})}  # fmt: skip
