"""The LLM-judge oracle, by pairwise ranking prompting (Qin et al. 2024, "Large Language Models are
Effective Text Rankers with Pairwise Ranking Prompting"): for two completions it asks which is
better in both orders, and a verdict that flips with the order is a tie, so position bias cancels
instead of being randomised. A list's pairs are aggregated into scores: win counts (a tie counts
half), or strengths of a Bradley–Terry model fitted to them.

Two backends: `local`, a transformers causal LM whose next-token probabilities of "A" and "B" give
the verdict (no text is parsed); and `http`, any OpenAI-compatible chat endpoint through the
`openai` client, with a timeout, retries with backoff and a concurrency limit, where an answer
that is not A or B is an abstention on that pair."""

from __future__ import annotations

import concurrent.futures
import itertools
import math
import os
from typing import ClassVar, Literal

import torch

from prefopt.engine.model import load_model, load_tokenizer
from prefopt.engine.refcache import weights_fingerprint
from prefopt.errors import OracleError
from prefopt.oracles.base import ORACLES, Judgement, ListToJudge, Oracle, OracleOptions

DEFAULT_TEMPLATE = (
    "You are comparing two answers to the same request.\n\n"
    "Request:\n{prompt}\n\n"
    "Answer A:\n{a}\n\n"
    "Answer B:\n{b}\n\n"
    "Which answer follows the request more exactly and is more helpful, correct and clear? "
    "Reply with a single letter: A or B."
)


class JudgeOptions(OracleOptions):
    model: (
        str  # local: HF id or folder, .gguf or `default`; http: the model name the endpoint serves
    )
    backend: Literal["local", "http"] = "local"
    base_url: str | None = None  # http: e.g. http://127.0.0.1:8000/v1
    # http: the environment variable holding the key (unset: none sent)
    api_key_env: str = "OPENAI_API_KEY"
    template: str = DEFAULT_TEMPLATE  # with {prompt}, {a} and {b}
    aggregate: Literal["wins", "bradley_terry"] = "wins"
    temperature: float = 0.0  # http: above 0 the judge samples, and its answers are not cached
    timeout: float = 60.0  # http: seconds per request
    retries: int = 3  # http: retries per request, with exponential backoff
    concurrency: int = 4  # http: requests in flight
    batch_size: int = 8  # local: prompts per forward


@ORACLES.register("judge")
class JudgeOracle(Oracle):
    name: ClassVar[str] = "judge"
    Options: ClassVar[type[OracleOptions]] = JudgeOptions
    absolute_scores: ClassVar[bool] = False  # ranks within a list, not a scale across lists

    def __init__(self, options: JudgeOptions):
        super().__init__(options)
        for field in ("{prompt}", "{a}", "{b}"):
            if field not in options.template:
                raise ValueError(f"judge template: it must contain {field}")
        self.deterministic = options.temperature == 0
        self.backend = _LocalJudge(options) if options.backend == "local" else _HttpJudge(options)

    def identity(self) -> dict:
        return {**super().identity(), **self.backend.identity()}

    def judge(self, lists: list[ListToJudge]) -> list[Judgement]:
        asks = []  # (list, i, j): is completion i better than completion j, with i shown as A
        for n, item in enumerate(lists):
            asks += [(n, i, j) for i, j in itertools.permutations(range(len(item.completions)), 2)]
        prompts = [
            self.options.template.format(
                prompt=_text(lists[n].prompt), a=lists[n].completions[i], b=lists[n].completions[j]
            )
            for n, i, j in asks
        ]
        # True, False or None
        first_is_better = dict(zip(asks, self.backend.verdicts(prompts), strict=True))
        return [
            _aggregate(len(item.completions), n, first_is_better, self.options.aggregate)
            for n, item in enumerate(lists)
        ]

    def close(self) -> None:
        self.backend.close()


def _text(prompt) -> str:
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)


def _aggregate(k: int, n: int, first_is_better: dict, how: str) -> Judgement:
    """Both orders of each pair: the same winner both times wins; a flip is a tie. A pair with an
    abstention in either order is left out; a list with every pair left out abstains."""
    wins = [[0.0] * k for _ in range(k)]
    verdicts, asked = [], 0
    for i, j in itertools.combinations(range(k), 2):
        i_first, j_first = first_is_better[(n, i, j)], first_is_better[(n, j, i)]
        if i_first is None or j_first is None:
            verdicts.append({"pair": [i, j], "verdict": "abstained"})
            continue
        asked += 1
        i_wins = i_first + (not j_first)  # 2: i both times, 0: j both times, 1: the verdict flipped
        share = {2: 1.0, 1: 0.5, 0: 0.0}[i_wins]
        wins[i][j], wins[j][i] = share, 1.0 - share
        verdicts.append({"pair": [i, j], "verdict": {2: i, 1: "tie", 0: j}[i_wins]})
    if not asked:
        return Judgement(abstained="the judge gave no usable verdict on any pair")
    scores = [sum(row) for row in wins] if how == "wins" else _bradley_terry(wins)
    return Judgement(scores=tuple(scores), details=tuple(verdicts))


def _bradley_terry(wins: list[list[float]], iterations: int = 200) -> list[float]:
    """Log-strengths of a Bradley–Terry model fitted to pairwise win shares by Hunter's (2004) MM
    updates, with half a win and half a loss against a virtual average item per item so that a
    list that wins everything keeps finite strengths; centred at 0."""
    k = len(wins)
    strength = [1.0] * k
    for _ in range(iterations):
        new = []
        for i in range(k):
            won = sum(wins[i]) + 0.5
            games = sum(
                (wins[i][j] + wins[j][i]) / (strength[i] + strength[j]) for j in range(k) if j != i
            )
            new.append(won / (games + 1.0 / (strength[i] + 1.0)))
        scale = math.exp(sum(math.log(s) for s in new) / k)
        strength = [s / scale for s in new]
    return [math.log(s) for s in strength]


class _LocalJudge:
    """A causal LM's probability of "A" against "B" as the first token of its answer."""

    def __init__(self, options: JudgeOptions):
        self.options = options
        self.tokenizer = load_tokenizer(options.model)
        self.model = load_model(options.model).eval()
        self.fingerprint = weights_fingerprint(self.model)
        self.letters = [self._letter_ids(letter) for letter in ("A", "B")]

    def _letter_ids(self, letter: str) -> list[int]:
        """The tokens an answer could start with: the letter alone and after a space."""
        ids = {
            self.tokenizer.encode(text, add_special_tokens=False)[0]
            for text in (letter, " " + letter)
        }
        return sorted(ids)

    def identity(self) -> dict:
        return {
            "weights": self.fingerprint,
            "chat_template": getattr(self.tokenizer, "chat_template", None),
        }

    def _ids(self, prompt: str) -> list[int]:
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer(prompt + "\nAnswer:")["input_ids"]

    def verdicts(self, prompts: list[str]) -> list[bool]:
        head, decoder = self.model.get_output_embeddings(), self.model.get_decoder()
        verdicts = []
        for start in range(0, len(prompts), self.options.batch_size):
            rows = [self._ids(p) for p in prompts[start : start + self.options.batch_size]]
            # right padding: causal attention keeps real positions exact
            length = max(map(len, rows))
            input_ids = torch.tensor(
                [r + [self.tokenizer.pad_token_id] * (length - len(r)) for r in rows]
            )
            with torch.inference_mode():
                hidden = decoder(
                    input_ids=input_ids,
                    attention_mask=(
                        torch.arange(length) < torch.tensor([len(r) for r in rows]).unsqueeze(1)
                    ).long(),
                ).last_hidden_state
                last = hidden[torch.arange(len(rows)), torch.tensor([len(r) - 1 for r in rows])]
                probs = head(last).float().softmax(-1)
            a = probs[:, self.letters[0]].sum(-1)
            b = probs[:, self.letters[1]].sum(-1)
            verdicts += (a > b).tolist()
        return verdicts

    def close(self) -> None:
        self.model = None


def parse_verdict(content: str | None) -> bool | None:
    """True for an answer "A", False for "B" (a letter alone or followed by punctuation or
    words: "B) because …"), None for anything else."""
    text = (content or "").strip()
    letter = text[:1].upper()
    if letter not in ("A", "B") or (len(text) > 1 and text[1].isalpha()):
        return None
    return letter == "A"


class _HttpJudge:
    """An OpenAI-compatible chat endpoint. Connection failures and server errors are retried by
    the client with exponential backoff; after the retries the run stops with an OracleError (the
    answers of earlier batches are already in the cache)."""

    def __init__(self, options: JudgeOptions):
        try:
            import openai
        except ImportError:
            raise ValueError(
                "the http judge needs the openai package: pip install openai"
            ) from None
        if not options.base_url:
            raise ValueError("judge backend http: give base_url, e.g. http://127.0.0.1:8000/v1")
        self.options, self.openai = options, openai
        self.client = openai.OpenAI(
            base_url=options.base_url,
            api_key=os.environ.get(options.api_key_env) or "none",
            timeout=options.timeout,
            max_retries=options.retries,
        )

    def identity(self) -> dict:
        return {"endpoint": self.options.base_url}

    def _ask(self, prompt: str) -> bool | None:
        try:
            # the first token is the verdict
            reply = self.client.chat.completions.create(
                model=self.options.model,
                messages=[{"role": "user", "content": prompt}],
                temperature=self.options.temperature,
                max_tokens=1,
            )
        except self.openai.APIError as error:
            raise OracleError(
                f"judge endpoint {self.options.base_url}: {type(error).__name__}: {error}; stopped "
                "after the retries (answers already given are kept in the cache)"
            ) from None
        return parse_verdict(reply.choices[0].message.content if reply.choices else None)

    def verdicts(self, prompts: list[str]) -> list[bool | None]:
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.options.concurrency) as pool:
            return list(pool.map(self._ask, prompts))

    def close(self) -> None:
        self.client.close()
