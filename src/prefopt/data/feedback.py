"""What each objective trains on, from the feedback people give. Compared answers (pairs, ranked
and scored lists, edits as edited ≻ original) train every objective; single answers with a label
or a rating are grouped by prompt into lists when loaded (data/load.py). The objectives for single
answers (KTO and its kin) read every answer alone instead: `single_answers` turns lists and
ratings into verdicts, and `with_mismatched` gives each prompt another prompt's answer, the
sample KTO estimates the policy's KL from."""

from __future__ import annotations

import dataclasses

from prefopt.data.records import DataError, PreferenceRecord
from prefopt.data.tokenize import TokenizedList


def single_answers(
    records: list[PreferenceRecord], desirable_rating: float | None
) -> list[PreferenceRecord]:
    """Every answer as a record of its own with a verdict (score 1 desirable, 0 not): a label as
    given; a rating desirable at or above `desirable_rating`; a list's top-scored answers
    desirable and the rest not (a pair: chosen and rejected; an edit: the edited answer and the
    original)."""
    singles = []
    for record in records:
        if record.kind == "label":
            singles.append(record)
            continue
        if record.kind == "rating":
            if desirable_rating is None:
                raise DataError(
                    'a single answer with a "rating" needs the setting desirable_rating (ratings '
                    "at or above it count as desirable, e.g. 4 on a 1-5 scale)",
                    source=record.source,
                )
            verdicts = (float(record.scores[0] >= desirable_rating),)
        else:
            top = max(record.scores)
            verdicts = tuple(float(score == top) for score in record.scores)
        for completion, verdict in zip(record.completions, verdicts, strict=True):
            singles.append(dataclasses.replace(record, completions=(completion,),
                                               scores=(verdict,), kind="label"))  # fmt: skip
    return singles


def scored_answers(records: list[PreferenceRecord]) -> list[PreferenceRecord]:
    """Every answer as a record of its own with its score: a label's 1 or 0, a rating, a list's
    score (for objectives that regress a score)."""
    return [
        dataclasses.replace(record, completions=(completion,), scores=(score,), kind="rating")
        for record in records
        for completion, score in zip(record.completions, record.scores, strict=True)
    ]


def verdict_counts(singles: list[PreferenceRecord]) -> tuple[int, int]:
    """(desirable, undesirable) answers."""
    desirable = sum(record.scores[0] == 1.0 for record in singles)
    return desirable, len(singles) - desirable


def balance_warning(desirable: int, undesirable: int, weights: tuple[float, float]) -> str | None:
    """KTO's authors keep λ_D·n_D / (λ_U·n_U) in [1, 4/3] (Ethayarajh et al. 2024):
    the words to say when the data and weights leave it, with the weights that would not."""
    if not desirable or not undesirable:
        kind = "desirable" if not desirable else "undesirable"
        return f"no {kind} answer in the data: KTO learns from both kinds"
    d_weight, u_weight = weights
    ratio = d_weight * desirable / (u_weight * undesirable)
    if 1.0 <= ratio <= 4 / 3:
        return None
    low, high = u_weight * undesirable / desirable, 4 / 3 * u_weight * undesirable / desirable
    return (
        f"{desirable} desirable and {undesirable} undesirable answers: λ_D·n_D / (λ_U·n_U) is "
        f"{ratio:.2f}, outside KTO's recommended [1, 4/3]; set kto's desirable_weight in "
        f"[{low:.2f}, {high:.2f}] (Ethayarajh et al. 2024)"
    )


def with_mismatched(
    lists: list[TokenizedList], others: list[TokenizedList] = ()
) -> list[TokenizedList]:
    """Each single answer followed by a mismatched one: the answer of the next list (in data
    order, cycling on into `others`, e.g. the training lists for a small evaluation set) whose
    prompt differs, its tokens after this prompt's, as TRL's KTOTrainer builds its KL
    completions. The pairing is fixed with the data, so the reference's log-probs of the
    mismatched answers are computed once with the rest."""
    pool = list(lists) + list(others)
    if len({example.prompt_ids for example in pool}) < 2:
        raise DataError(
            "KTO estimates its reference point from answers paired with other prompts: the data "
            "needs at least two different prompts"
        )
    paired = []
    for i, example in enumerate(lists):
        j = (i + 1) % len(pool)
        while pool[j].prompt_ids == example.prompt_ids:
            j = (j + 1) % len(pool)
        other = pool[j].completion_ids[0]
        paired.append(dataclasses.replace(example, completion_ids=(example.completion_ids[0], other),
                                          scores=(example.scores[0],) * 2))  # fmt: skip
    return paired
