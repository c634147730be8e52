"""K samples per prompt from a model already in memory: each prompt prefilled once, its keys and
values shared by its K sequences (prefopt.engine.decode), finished sequences dropped from the
batch, and every sequence drawn from a generator of its own, seeded from (seed, prompt, k), so a
completion does not depend on which other prompts share its batch. `backend="transformers"` is
transformers' own `generate(num_return_sequences=K)`, for models prefopt's attention does not
serve and as the benchmark's baseline."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections.abc import Callable

import torch

from prefopt.engine import native
from prefopt.engine.decode import DecodeState
from prefopt.engine.decode_model import DecodeModel
from prefopt.engine.decoder import Decoder

# tokens prefilled in one call: GEMMs over thousands of rows run at several times the rate of
# one prompt's few dozen, and gain nothing more past a few thousand (docs/performance.md)
PREFILL_TOKENS = 2048


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    k: int = 4  # completions per prompt
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: no limit
    max_new_tokens: int = 128
    min_new_tokens: int = 0  # no end-of-sequence before this many tokens
    stop: tuple[str, ...] = ()  # a completion ends before the first of these strings
    seed: int = 0
    batch_size: int = 64  # prompts decoded together (K sequences each)

    def __post_init__(self) -> None:
        checks = [
            (self.k >= 1, "k", "must be >= 1"),
            (self.temperature >= 0, "temperature", "must be >= 0"),
            (0 < self.top_p <= 1, "top_p", "must be in (0, 1]"),
            (self.top_k >= 0, "top_k", "must be >= 0"),
            (self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1"),
            (self.batch_size >= 1, "batch_size", "must be >= 1"),
        ]
        for ok, name, requirement in checks:
            if not ok:
                raise ValueError(f"{name} {requirement}, got {getattr(self, name)!r}")

    def describe(self) -> dict:
        return {
            key: value for key, value in dataclasses.asdict(self).items() if key != "batch_size"
        }


@dataclasses.dataclass(frozen=True)
class Sample:
    text: str
    token_ids: tuple[int, ...]
    # summed log-prob of the sampled tokens under the model (temperature 1, no top-k/p)
    logp: float | None
    finished: str  # "eos", "stop" or "length"
    # each sampled token's log-prob, where the sampler gives it (vLLM)
    token_logps: tuple[float, ...] | None = None


def sequence_seed(seed: int, prompt_ids: list[int], k: int) -> int:
    digest = hashlib.sha256(f"{seed}:{k}:{','.join(map(str, prompt_ids))}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def sample(
    model,
    tokenizer,
    prompts: list[list[int]],
    settings: SamplingSettings,
    *,
    backend: str = "prefopt",
    precision: str = "fp32",
    on_batch: Callable[[list[int], list[list[Sample]]], None] | None = None,
) -> list[list[Sample]]:
    """K samples for each prompt (token ids), in the prompts' order. Prompts are batched by length;
    `on_batch(indices, samples)` is called as each batch finishes (for writing as it goes). In
    bf16, a model held in float32 samples through a bf16 copy of itself (engine/decode_model.py);
    a caller that samples again after updates keeps a `DecodeModel` and passes its `model`."""
    model = DecodeModel(model, precision).model
    if backend == "prefopt":
        decode = functools.partial(_decode_shared, forward=_forward(model))
    else:
        decode = {"transformers": _decode_transformers}[backend]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[list[Sample] | None] = [None] * len(prompts)
    model.eval()
    for start in range(0, len(order), settings.batch_size):
        indices = order[start : start + settings.batch_size]
        with torch.inference_mode():
            batch = decode(model, tokenizer, [prompts[i] for i in indices], settings)
        for i, samples in zip(indices, batch, strict=True):
            results[i] = samples
        if on_batch is not None:
            on_batch(indices, batch)
    return results


def _eos_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= (
        set(configured)
        if isinstance(configured, list)
        else ({configured} if configured is not None else set())
    )
    return ids


def _forward(model) -> Callable:
    """forward(input_ids, positions, state) -> logits at each row's last position, in the model's
    precision: the model's layers run by prefopt.engine.decoder where it knows the architecture,
    else the model's own forward on prefopt's decode attention."""
    decoder = Decoder.of(model)
    if decoder is not None:
        return decoder

    def forward(input_ids, positions, state):
        # the last positions as an index, not `logits_to_keep=1`: its slice of the hidden states
        # sends the LM head through a batched matmul that copies the whole head weight each call
        # (most of a short prompt's prefill); an index gives contiguous rows and a plain GEMM
        last = state.last_positions(input_ids.shape[1])
        out = model(input_ids=input_ids, position_ids=positions, prefopt_decode=state,
                    use_cache=False, logits_to_keep=last)  # fmt: skip
        return out.logits[0] if state.prefilling is not None else out.logits[:, -1]

    return forward


def _decode_shared(
    model, tokenizer, prompts: list[list[int]], settings: SamplingSettings, *, forward: Callable
) -> list[list[Sample]]:
    state = DecodeState.empty(model.config.num_hidden_layers)
    first_logits = []
    for pack in _packs(prompts, PREFILL_TOKENS):
        first_logits.extend(forward(*state.prefill(pack), state))
    k = settings.k
    state.start_decoding(k, settings.max_new_tokens)
    rows = [(p, j) for p in range(len(prompts)) for j in range(k)]
    generators = [
        torch.Generator().manual_seed(sequence_seed(settings.seed, prompts[p], j)) for p, j in rows
    ]
    tracker = _Tracker(tokenizer, _eos_ids(model, tokenizer), settings, len(rows))
    alive = list(range(len(rows)))
    logits = torch.stack([first_logits[p] for p, _ in rows])
    while True:
        if (
            len(tracker.tokens[alive[0]]) < settings.min_new_tokens
        ):  # every alive row has as many tokens
            logits[:, list(tracker.eos)] = -torch.inf
        tokens, logps = _draw(logits, settings, [generators[i] for i in alive])
        still = tracker.add(alive, tokens, logps)
        if not still:
            break
        if len(still) < len(alive):  # finished sequences leave the batch
            state.keep(torch.tensor(still))
            alive = [alive[j] for j in still]
        input_ids = torch.tensor([[tracker.tokens[i][-1]] for i in alive])
        positions = torch.tensor(
            [[len(prompts[rows[i][0]]) + len(tracker.tokens[i]) - 1] for i in alive]
        )
        logits = forward(input_ids, positions, state)
        state.length += 1
    samples = tracker.samples()
    return [samples[p * k : (p + 1) * k] for p in range(len(prompts))]


def _packs(prompts: list[list[int]], tokens: int) -> list[list[list[int]]]:
    """The prompts in order, in packs of at most `tokens` tokens (a longer prompt alone)."""
    packs, size = [], tokens
    for ids in prompts:
        if size + len(ids) > tokens:
            packs.append([])
            size = 0
        packs[-1].append(ids)
        size += len(ids)
    return packs


def _draw(
    logits: torch.Tensor, settings: SamplingSettings, generators: list[torch.Generator]
) -> tuple[list[int], list[float]]:
    """One token a row, and its log-prob under the model (temperature 1, nothing cut): greedy at
    temperature 0, else by inverse CDF over the warped distribution's support, each row's uniform
    number from its own generator. Only the support is ranked, and the vocabulary is summed in
    blocks rather than cumulated token by token. bf16 logits on a CPU at temperature 1 with nothing
    cut, or greedy, are drawn in one C pass a row (engine/kernels/decode.c), the same algorithm
    without the float32 copies of the logits and their exponentials."""
    plain = settings.temperature == 0 or (
        settings.temperature == 1 and not settings.top_k and settings.top_p >= 1
    )
    if plain and logits.dtype == torch.bfloat16 and logits.device.type == "cpu":
        kernels = native.load("decode")
        if kernels is not None:
            return _draw_in_c(kernels.draw_bf16, logits, settings, generators)
    logits = logits.float()
    if settings.temperature == 0:
        tokens = logits.argmax(-1)
        log_total = logits.logsumexp(-1)
    else:
        values, order = support(logits, settings)
        uniform = _uniforms(generators).unsqueeze(1)
        index, log_mass = inverse_cdf(values, uniform)
        tokens = (index if order is None else order.gather(1, index)).squeeze(1)
        # unwarped and unrestricted, the mass summed to draw is the model's own normalizer
        same = order is None and settings.temperature == 1
        log_total = log_mass.squeeze(1) if same else logits.logsumexp(-1)
    logps = logits.gather(1, tokens.unsqueeze(1)).squeeze(1) - log_total
    return tokens.tolist(), logps.tolist()


def _draw_in_c(draw, logits, settings: SamplingSettings, generators) -> tuple[list, list]:
    logits = logits.contiguous()
    rows, vocab = logits.shape
    uniform = None if settings.temperature == 0 else _uniforms(generators)
    tokens, logps = torch.empty(rows, dtype=torch.int64), torch.empty(rows)
    draw(logits.data_ptr(), None if uniform is None else uniform.data_ptr(), rows, vocab,
         tokens.data_ptr(), logps.data_ptr())  # fmt: skip
    return tokens.tolist(), logps.tolist()


def _uniforms(generators: list[torch.Generator]) -> torch.Tensor:
    """Each row's uniform number in [0, 1), from its own generator."""
    return torch.cat([torch.rand(1, generator=g) for g in generators])


def inverse_cdf(
    values: torch.Tensor, uniform: torch.Tensor, block: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of logits [R, C] (−inf allowed) and its uniform number u in [0, 1): the first
    index whose cumulative probability exceeds u, and the log of the row's total exp mass. The
    exponentials are summed per block of `block`, the block holding u's share found among the
    block sums, then the index inside it: two passes over the row instead of a softmax and a
    cumulative sum over all of it."""
    rows, count = values.shape
    top = values.max(-1, keepdim=True).values
    weights = (values - top).exp_()
    if count % block:
        weights = torch.nn.functional.pad(weights, (0, block - count % block))
    weights = weights.view(rows, -1, block)
    cumulative = weights.sum(-1).cumsum(-1)  # [R, blocks]
    target = uniform * cumulative[:, -1:]
    chosen = torch.searchsorted(cumulative, target, right=True).clamp_(max=cumulative.shape[1] - 1)
    before = torch.where(chosen > 0, cumulative.gather(1, (chosen - 1).clamp_(min=0)), 0.0)
    inside = weights.gather(1, chosen.unsqueeze(-1).expand(rows, 1, block)).squeeze(1).cumsum(-1)
    # the block's own sum and its running sum round differently: stay inside the block's mass,
    # so that a token of weight 0 (outside the support) is never the first to exceed it
    remaining = torch.minimum(target - before, inside[:, -1:] * (1 - 2**-20))
    index = torch.searchsorted(inside, remaining, right=True).clamp_(max=block - 1)
    return chosen * block + index, top + cumulative[:, -1:].log()


def support(
    logits: torch.Tensor, settings: SamplingSettings
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The tokens the warped distribution can draw: logits / T restricted to the top k tokens and
    to the nucleus, the most likely tokens whose mass, counted before each, has not reached p
    (Holtzman et al. 2020). Returns the candidates' warped logits [R, C] in descending order, −inf
    past each row's support, with their token ids [R, C]; or (logits / T, None) when neither
    setting restricts."""
    if settings.temperature != 1:
        logits = logits.float() / settings.temperature
    if not settings.top_k and settings.top_p >= 1:
        return logits, None
    values = order = None
    if settings.top_k:
        values, order = logits.topk(min(settings.top_k, logits.shape[-1]), -1)
    if settings.top_p < 1:
        pool = logits if values is None else values
        log_total = pool.logsumexp(-1, keepdim=True)
        # tokens less likely than ε = (1 − p) / (2V) hold less than 1 − p of the mass together, so
        # the nucleus lies among the others: ranking only those (topk) is exact, and far cheaper
        # than sorting the whole vocabulary when the distribution is peaked
        floor = math.log((1 - settings.top_p) / (2 * pool.shape[-1]))
        candidates = int((pool - log_total >= floor).sum(-1).max())
        if values is None:
            values, order = logits.topk(candidates, -1)
        else:
            values, order = values[:, :candidates], order[:, :candidates]
        probs = (values - log_total).exp()
        inside = probs.cumsum(-1) - probs < settings.top_p  # the mass before it is under p
        values = values.masked_fill(~inside, -torch.inf)
    return values, order


class _Tracker:
    """Each sequence's tokens, log-prob and end."""

    def __init__(self, tokenizer, eos: set[int], settings: SamplingSettings, rows: int):
        self.tokenizer, self.eos, self.settings = tokenizer, eos, settings
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.logps = [0.0] * rows
        self.ends: list[str | None] = [None] * rows
        self.texts: list[str | None] = [None] * rows

    def add(self, alive: list[int], tokens: list[int], chosen: list[float]) -> list[int]:
        """Record a token and its log-prob for each alive row; returns the positions (in `alive`)
        still going."""
        still = []
        for j, (i, token) in enumerate(zip(alive, tokens, strict=True)):
            self.tokens[i].append(token)
            self.logps[i] += chosen[j]
            if token in self.eos:
                self.ends[i] = "eos"
            elif self.settings.stop and self._stopped(i):
                self.ends[i] = "stop"
            elif len(self.tokens[i]) >= self.settings.max_new_tokens:
                self.ends[i] = "length"
            else:
                still.append(j)
        return still

    def _stopped(self, i: int) -> bool:
        text = self.tokenizer.decode(self.tokens[i], skip_special_tokens=True)
        cut = min((text.find(s) for s in self.settings.stop if s in text), default=-1)
        if cut >= 0:
            self.texts[i] = text[:cut]
        return cut >= 0

    def samples(self) -> list[Sample]:
        out = []
        for i, tokens in enumerate(self.tokens):
            text = self.texts[i]
            if text is None:
                body = tokens[:-1] if self.ends[i] == "eos" else tokens
                text = self.tokenizer.decode(body, skip_special_tokens=True)
            out.append(
                Sample(
                    text=text, token_ids=tuple(tokens), logp=self.logps[i], finished=self.ends[i]
                )
            )
        return out


def _decode_transformers(
    model, tokenizer, prompts: list[list[int]], settings: SamplingSettings
) -> list[list[Sample]]:
    """transformers' generate with num_return_sequences=K on left-padded prompts (no per-sequence
    seeds, no log-probs: its logits would take tokens × vocabulary memory)."""
    length = max(map(len, prompts))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (length - len(ids)) + list(ids) for ids in prompts])
    attention_mask = torch.tensor([[0] * (length - len(ids)) + [1] * len(ids) for ids in prompts])
    torch.manual_seed(settings.seed)
    if settings.temperature > 0:
        sampling = {
            "do_sample": True,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "top_k": settings.top_k or None,
            "num_return_sequences": settings.k,
        }
    else:  # greedy refuses num_return_sequences: the same copies, made by hand
        sampling = {"do_sample": False}
        input_ids, attention_mask = (
            t.repeat_interleave(settings.k, 0) for t in (input_ids, attention_mask)
        )
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=settings.max_new_tokens,
        min_new_tokens=settings.min_new_tokens or None,
        pad_token_id=pad,
        use_cache=True,
        stop_strings=list(settings.stop) or None,
        tokenizer=tokenizer if settings.stop else None,
        **sampling,
    )
    eos = _eos_ids(model, tokenizer)
    samples = []
    for row in output[:, length:].tolist():
        end = next((n for n, token in enumerate(row) if token in eos), None)
        tokens = row[: end + 1] if end is not None else [t for t in row if t != pad]
        text = tokenizer.decode(
            tokens[:-1] if end is not None else tokens, skip_special_tokens=True
        )
        cut = min((text.find(s) for s in settings.stop if s in text), default=-1)
        finished = "eos" if end is not None else ("stop" if cut >= 0 else "length")
        samples.append(
            Sample(
                text=text[:cut] if cut >= 0 else text,
                token_ids=tuple(tokens),
                logp=None,
                finished=finished,
            )
        )
    return [samples[p * settings.k : (p + 1) * settings.k] for p in range(len(prompts))]
