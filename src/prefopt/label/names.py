"""People's names in the label store: normalized, free of hidden characters, and told apart by
what they look like, so that no two people can pass for each other."""

from __future__ import annotations

import functools
import unicodedata

from confusable_homoglyphs.confusables import confusables_data

from prefopt.errors import LabelError

MAX_NAME = 200


def normalized_name(name: str) -> str:
    """A person's name as stored: NFKC, stripped; empty, too long, or holding a control or
    invisible character (zero-width spaces, direction overrides, …) is an error naming it."""
    name = unicodedata.normalize("NFKC", name).strip()
    if not name:
        raise LabelError("the name is empty", field="name")
    if len(name) > MAX_NAME:
        raise LabelError(f"the name is {len(name)} characters; at most {MAX_NAME}", field="name")
    hidden = [
        ch for ch in name if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")
    ]
    if hidden:
        raise LabelError(
            f"the name holds a control or invisible character (U+{ord(hidden[0]):04X})",
            field="name",
        )
    return name


def skeleton(name: str) -> str:
    """What a name looks like, for telling look-alike names apart (the skeleton of Unicode
    TS #39, section 4, over the confusables data of `confusable_homoglyphs`): each character of
    its case-folded decomposition replaced by one representative of the characters it can be
    mistaken for ("Аnn" with a Cyrillic А looks like "ann")."""
    folded = unicodedata.normalize("NFD", name.casefold())
    look = _looks_alike()
    return unicodedata.normalize("NFD", "".join(look.get(ch, ch) for ch in folded))


@functools.cache
def _looks_alike() -> dict[str, str]:
    """Every confusable character -> the smallest character of its class of look-alikes."""
    parent: dict[str, str] = {}

    def root(ch: str) -> str:
        while parent.get(ch, ch) != ch:
            ch = parent[ch]
        return ch

    for ch, homoglyphs in confusables_data.items():
        for glyph in homoglyphs:
            if len(glyph["c"]) == 1:
                a, b = sorted((root(ch), root(glyph["c"])))
                parent[b] = a
    return {ch: root(ch) for ch in list(parent)}
