"""Per-completion log-probs of K completions per prompt: the one engine every loss reads from.

Two layouts of a batch, the same numbers (tested):
- packed (default): one row per list, [prompt, completion 1, ..., completion K], each completion
  seeing the prompt and itself (a block attention mask, or on models that use SDPA the segment
  attention of prefopt.attention, which skips the masked blocks) with position ids that restart
  after the prompt, so the prompt is encoded once and shared: cost P + K·C instead of K·(P + C).
- rows: one row per (prompt + completion), as most tools do.
Collation precomputes, for every completion token, which hidden state predicts it; the LM head
runs only there, in chunks (with a frozen head the forward keeps what the backward needs; a
trained head's backward recomputes them), so the [tokens × vocabulary] logits never exist at
once. Rows are padded to a multiple of `pad_multiple` tokens; batches of one such length give
bitwise the same numbers whatever else is in the batch, so cached reference log-probs equal the
policy's at step 0 exactly."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from prefopt.data.batching import padded_length, row_length
from prefopt.data.tokenize import TokenizedList
from prefopt.engine.attention import SEGMENT_ATTENTION, Segments, segments_as_tensor
from prefopt.engine.settings import EngineSettings


@dataclasses.dataclass
class Collated:
    input_ids: torch.Tensor  # [R, L]
    attention_mask: torch.Tensor  # [R, L] (rows) or [R, 1, L, L] bool (packed)
    position_ids: torch.Tensor | None  # [R, L] (packed)
    pred_rows: torch.Tensor  # [N] row of the hidden state that predicts each completion token
    pred_positions: torch.Tensor  # [N] its position in the row
    targets: torch.Tensor  # [N] the completion token it predicts
    pred_items: torch.Tensor  # [N] flat item index b·K + k
    pred_offsets: torch.Tensor  # [N] token index within its completion
    lengths: torch.Tensor  # [B, K] completion token counts (0 for padding items)
    scores: torch.Tensor  # [B, K]
    mask: torch.Tensor  # [B, K]
    indices: torch.Tensor  # [B] position of each list in its data set
    layout: Segments | None = None  # packed: each row's prompt length and completion ends
    # [B·K, 2] row and position of each item's last token (−1: padding)
    last_tokens: torch.Tensor | None = None
    # [M] the row of each list's prompt token 1, 2, … (its first row)
    prompt_rows: torch.Tensor | None = None
    # [B] prompt tokens each list predicts (its prompt's length − 1)
    prompt_lengths: torch.Tensor | None = None
    real_tokens: int = 0
    padded_tokens: int = 0

    def to(self, device) -> Collated:
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)


def collate(
    examples: list[TokenizedList],
    indices: list[int],
    pad_id: int,
    *,
    share_prompt: bool = True,
    pad_multiple: int = 1,
) -> Collated:
    k_max = max(len(e.completion_ids) for e in examples)
    length = padded_length(max(row_length(e, share_prompt) for e in examples), pad_multiple)
    rows = len(examples) if share_prompt else sum(len(e.completion_ids) for e in examples)
    input_ids = torch.full((rows, length), pad_id, dtype=torch.long)
    owner = torch.full((rows, length), -1, dtype=torch.long)  # −1 pad, 0 prompt, k+1 completion k
    positions = torch.zeros((rows, length), dtype=torch.long)
    lengths = torch.zeros((len(examples), k_max), dtype=torch.long)
    scores = torch.zeros((len(examples), k_max))
    pred_rows, pred_positions, pred_items, pred_offsets, targets = [], [], [], [], []
    last_tokens = [(-1, -1)] * (len(examples) * k_max)
    prompt_rows = []
    layout = []
    row = 0
    for b, example in enumerate(examples):
        prompt = example.prompt_ids
        # tokens 1 … P−1 of the prompt, as written in the list's first row
        prompt_rows += [row] * (len(prompt) - 1)
        start = 0
        ends = []
        for k, completion in enumerate(example.completion_ids):
            if not share_prompt or k == 0:
                input_ids[row, : len(prompt)] = torch.tensor(prompt)
                owner[row, : len(prompt)] = 0
                positions[row, : len(prompt)] = torch.arange(len(prompt))
                start = len(prompt)
            end = start + len(completion)
            ends.append(end)
            input_ids[row, start:end] = torch.tensor(completion)
            owner[row, start:end] = k + 1
            positions[row, start:end] = torch.arange(len(prompt), len(prompt) + len(completion))
            # token t of the completion is predicted by the hidden state of the token before it:
            # the prompt's last token for t = 0, else completion token t − 1
            pred_rows += [row] * len(completion)
            pred_positions += [len(prompt) - 1] + list(range(start, end - 1))
            pred_items += [b * k_max + k] * len(completion)
            pred_offsets += list(range(len(completion)))
            targets += completion
            lengths[b, k] = len(completion)
            last_tokens[b * k_max + k] = (row, end - 1)
            scores[b, k] = example.scores[k]
            start = end
            if not share_prompt:
                row += 1
        if share_prompt:
            layout.append((len(prompt), tuple(ends)))
            row += 1
    real = owner >= 0
    if share_prompt:
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        query, key = owner.unsqueeze(2), owner.unsqueeze(1)
        attention = causal & (key >= 0) & ((key == query) | (key == 0))
        # padding queries see themselves (no empty rows)
        attention |= torch.eye(length, dtype=torch.bool)
        attention_mask, position_ids = attention.unsqueeze(1), positions
    else:
        attention_mask, position_ids = real.long(), None
    return Collated(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        pred_rows=torch.tensor(pred_rows),
        pred_positions=torch.tensor(pred_positions),
        targets=torch.tensor(targets),
        pred_items=torch.tensor(pred_items),
        pred_offsets=torch.tensor(pred_offsets),
        lengths=lengths,
        scores=scores,
        mask=lengths > 0,
        indices=torch.tensor(indices),
        layout=tuple(layout) if share_prompt else None,
        last_tokens=torch.tensor(last_tokens),
        prompt_rows=torch.tensor(prompt_rows, dtype=torch.long),
        prompt_lengths=torch.tensor([len(e.prompt_ids) - 1 for e in examples]),
        real_tokens=int(real.sum()),
        padded_tokens=int((~real).sum()),
    )


@dataclasses.dataclass
class CompletionLogps:
    logps: torch.Tensor  # [B, K] summed completion log-probs (float32)
    lengths: torch.Tensor  # [B, K] completion token counts
    token_logps: torch.Tensor | None = None  # [B, K, T]
    token_mask: torch.Tensor | None = None  # [B, K, T]
    sampling_log_weights: torch.Tensor | None = None  # [B, K] WPO's log weights (no grad)
    # [B] summed log-probs of each prompt's tokens after its first
    prompt_logps: torch.Tensor | None = None


def completion_logps(
    model,
    batch: Collated,
    settings: EngineSettings | None = None,
    *,
    with_tokens: bool = False,
    with_sampling_weights: bool = False,
    with_prompt: bool = False,
) -> CompletionLogps:
    """Summed log-probs of every completion of the batch under `model` (grad follows the
    caller's mode). Only completion positions reach the LM head. `with_sampling_weights`: also
    each completion's mean over its tokens of log π(y_t) − log Σ_v π(v)², the log of WPO's weight
    (Zhou et al. 2024, arXiv 2406.11827, Eq. 2), from the same pass of the head. `with_prompt`:
    also each prompt's summed log-probs (its tokens after the first, for a prompt-inclusive NLL),
    the head run over those positions too."""
    settings = settings or EngineSettings()
    decoder = _decoder(model)
    kwargs = {"position_ids": batch.position_ids} if batch.position_ids is not None else {}
    if batch.layout is not None and decoder.config._attn_implementation == SEGMENT_ATTENTION:
        kwargs["prefopt_segments"] = segments_as_tensor(batch.layout)
        kwargs["prefopt_engine"] = settings
    hidden = decoder(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, **kwargs
    ).last_hidden_state
    token_logps, log_sum_squares = _head_logps(
        model,
        hidden[batch.pred_rows, batch.pred_positions],
        batch.targets,
        settings.chunk_tokens,
        with_sampling_weights,
    )
    b, k = batch.lengths.shape
    t_max = max(int(batch.lengths.max()), 1)
    place = lambda values: torch.zeros(
        b * k, t_max, dtype=values.dtype, device=hidden.device
    ).index_put((batch.pred_items, batch.pred_offsets), values)
    per_token = place(token_logps)
    lengths = batch.lengths.to(torch.float32)
    result = CompletionLogps(logps=_row_sums(per_token).view(b, k), lengths=lengths)
    if with_sampling_weights:
        aligned = _row_sums(place(token_logps.detach() - log_sum_squares)).view(b, k)
        result.sampling_log_weights = aligned / lengths.clamp(min=1)
    if with_prompt:
        result.prompt_logps = _prompt_logps(model, hidden, batch, settings.chunk_tokens)
    if with_tokens:
        result.token_logps = per_token.view(b, k, t_max)
        result.token_mask = torch.arange(t_max, device=hidden.device) < batch.lengths.unsqueeze(-1)
    return result


def _prompt_logps(model, hidden: torch.Tensor, batch: Collated, chunk_tokens: int) -> torch.Tensor:
    """[B]: Σ_{t=1}^{P−1} log p(prompt token t | tokens before it), read in each list's first row
    (where the prompt sits at positions 0 … P−1 in both layouts)."""
    lengths = batch.prompt_lengths.to(hidden.device)
    offsets = (
        torch.cat([torch.arange(n, device=hidden.device) for n in lengths.tolist()])
        if len(lengths)
        else lengths.new_zeros(0)
    )
    rows = batch.prompt_rows.to(hidden.device)
    logps, _ = _head_logps(
        model, hidden[rows, offsets], batch.input_ids[rows, offsets + 1], chunk_tokens
    )
    owners = torch.repeat_interleave(torch.arange(len(lengths), device=hidden.device), lengths)
    width = max(int(lengths.max()), 1) if len(lengths) else 1
    table = torch.zeros(len(lengths), width, dtype=logps.dtype, device=hidden.device)
    return _row_sums(table.index_put((owners, offsets), logps))


def _row_sums(values: torch.Tensor) -> torch.Tensor:
    """Row sums in an order fixed by the row alone: zero-pad to a power of two and add halves.
    A row's sum is then bitwise the same in any batch (more zero columns only add +0 first),
    unlike index_add (atomics on a GPU) or a library reduction (its tree depends on the shape)."""
    width = 1 << (values.shape[1] - 1).bit_length()
    values = torch.nn.functional.pad(values, (0, width - values.shape[1]))
    while values.shape[1] > 1:
        half = values.shape[1] // 2
        values = values[:, :half] + values[:, half:]
    return values[:, 0]


def _decoder(model):
    decoder = model.get_decoder()
    if decoder is None or decoder is model:
        raise ValueError(
            f"{type(model).__name__} exposes no decoder body (get_decoder); prefopt needs a "
            "causal LM with a separate LM head"
        )
    return decoder


# BLAS picks its kernel by row count; whole blocks of 64 rows give batch-independent results
_HEAD_ROWS = 64


def _head_logps(
    model, hidden: torch.Tensor, targets: torch.Tensor, chunk_tokens: int, sum_squares: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(target) for each row of `hidden`, and with `sum_squares` log Σ_v p(v)² (no grad).
    Chunks are multiples of 64 rows (the last padded with zeros), so a token's log-prob does not
    depend on what else is in the batch."""
    head = model.get_output_embeddings()
    chunk_tokens = padded_length(chunk_tokens, _HEAD_ROWS)
    count = hidden.shape[0]
    if count == 0:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, empty if sum_squares else None
    padding = padded_length(count, _HEAD_ROWS) - count
    if padding:
        hidden = torch.cat([hidden, hidden.new_zeros(padding, hidden.shape[1])])
        targets = torch.cat([targets, targets.new_zeros(padding)])
    softcap = getattr(model.config, "final_logit_softcapping", None) or None
    device = hidden.device.type
    dtype = (
        torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else head.weight.dtype
    )
    if type(head) is torch.nn.Linear:
        logps, squares = _FusedHeadLogps.apply(
            hidden, head.weight, head.bias, targets, chunk_tokens, softcap, dtype, sum_squares
        )
        return logps[:count], squares[:count] if sum_squares else None
    # an LM head that is not a plain Linear (LoRA on the head, quantized): its own forward, recomputed
    pieces = [
        checkpoint(_chunk_logps, head, h, t, softcap, use_reentrant=False)
        if torch.is_grad_enabled() and h.requires_grad
        else _chunk_logps(head, h, t, softcap)
        for h, t in zip(hidden.split(chunk_tokens), targets.split(chunk_tokens), strict=True)
    ]
    squares = None
    if sum_squares:
        with torch.no_grad():
            squares = torch.cat(
                [_chunk_log_sum_squares(head, h, softcap) for h in hidden.split(chunk_tokens)]
            )[:count]
    return torch.cat(pieces)[:count], squares


def _chunk_logits(head, hidden: torch.Tensor, softcap: float | None) -> torch.Tensor:
    logits = head(hidden).float()
    return torch.tanh(logits / softcap) * softcap if softcap else logits


def _chunk_logps(
    head, hidden: torch.Tensor, targets: torch.Tensor, softcap: float | None
) -> torch.Tensor:
    logits = _chunk_logits(head, hidden, softcap)
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def _chunk_log_sum_squares(head, hidden: torch.Tensor, softcap: float | None) -> torch.Tensor:
    log_probs = _chunk_logits(head, hidden, softcap).log_softmax(-1)
    return (2 * log_probs).logsumexp(-1)


class _FusedHeadLogps(torch.autograd.Function):
    """log p(target) = z_target − logsumexp(z), z = softcap(h·Wᵀ + b), one chunk of rows at a time
    in one reused float32 buffer: no other [tokens × vocabulary] tensor is ever made. Matmuls run
    in `dtype` (autocast's, fixed at the call so the backward matches), the rest in float32.

    The gradient is d logp/dh = g·(W[target] − softmax(z)·W) (softcap's tanh adds the factor
    1 − (z/cap)² inside). When only h needs it (LoRA, a frozen head) and there is no softcap, the
    forward, which has the softmax at hand, also keeps softmax(z)·W ([tokens × hidden]), and the
    backward is elementwise. Otherwise the backward recomputes a chunk's logits once and turns
    them in place into g·(onehot − softmax), for the weight's gradient too."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_tokens, softcap, dtype, sum_squares):
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        mix_now = need_hidden and not need_weight and not need_bias and not softcap
        mix = torch.empty_like(hidden, dtype=torch.float32) if mix_now else None  # softmax(z)·W
        logps = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(logps)
        # log Σ softmax(z)²
        squares = torch.empty_like(logps) if sum_squares else logps.new_empty(0)
        buffer = _logits_buffer(hidden, weight, chunk_tokens)
        with torch.autocast(hidden.device.type, enabled=False):
            weight_in_dtype = weight.to(dtype)
            for rows in _chunks(hidden.shape[0], chunk_tokens):
                logits = _logits_into(buffer, hidden[rows], weight_in_dtype, bias, softcap)
                target_logits = logits.gather(1, targets[rows].unsqueeze(1)).squeeze(1)
                peak = logits.amax(1, keepdim=True)
                exps = logits.sub_(peak).exp_()
                total = exps.sum(1)
                lse[rows] = total.log() + peak.squeeze(1)
                logps[rows] = target_logits - lse[rows]
                if (
                    sum_squares
                ):  # Σ (e^(z−peak))² / total², without a second [rows × vocabulary] tensor
                    squares[rows] = 2 * (torch.linalg.vector_norm(exps, dim=1).log() - total.log())
                if mix_now:
                    mix[rows] = (exps.to(dtype) @ weight_in_dtype).float().div_(total.unsqueeze(1))
        ctx.save_for_backward(hidden, weight, bias, targets, lse, mix)
        ctx.chunk_tokens, ctx.softcap, ctx.dtype = chunk_tokens, softcap, dtype
        ctx.mark_non_differentiable(squares)
        return logps, squares

    @staticmethod
    def backward(ctx, grad_logps, _grad_squares):
        hidden, weight, bias, targets, lse, mix = ctx.saved_tensors
        grad_logps = grad_logps.float()
        if mix is not None:
            with torch.autocast(hidden.device.type, enabled=False):
                target_rows = weight[targets].to(ctx.dtype).float()
                grad_hidden = target_rows.sub_(mix).mul_(grad_logps.unsqueeze(1)).to(hidden.dtype)
            return grad_hidden, None, None, None, None, None, None, None
        softcap, dtype = ctx.softcap, ctx.dtype
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if need_bias else None
        buffer = _logits_buffer(hidden, weight, ctx.chunk_tokens)
        with torch.autocast(hidden.device.type, enabled=False):
            weight_in_dtype = weight.to(dtype)
            for rows in _chunks(hidden.shape[0], ctx.chunk_tokens):
                logits = _logits_into(buffer, hidden[rows], weight_in_dtype, bias, softcap)
                squashing = 1 - (logits / softcap).square() if softcap else None
                grad = (
                    logits.sub_(lse[rows].unsqueeze(1)).exp_().mul_(-grad_logps[rows].unsqueeze(1))
                )
                grad.scatter_add_(1, targets[rows].unsqueeze(1), grad_logps[rows].unsqueeze(1))
                if softcap:
                    grad.mul_(squashing)
                if need_hidden:
                    grad_hidden[rows] = (grad.to(dtype) @ weight_in_dtype).to(hidden.dtype)
                if need_weight:
                    grad_weight += grad.to(dtype).T @ hidden[rows].to(dtype)
                if need_bias:
                    grad_bias += grad.sum(0)
        grad_weight = grad_weight.to(weight.dtype) if need_weight else None
        grad_bias = grad_bias.to(bias.dtype) if need_bias else None
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None


def _chunks(count: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, count)) for start in range(0, count, size)]


def _logits_buffer(hidden: torch.Tensor, weight: torch.Tensor, chunk_tokens: int) -> torch.Tensor:
    return torch.empty(
        min(chunk_tokens, hidden.shape[0]) * weight.shape[0],
        dtype=torch.float32,
        device=hidden.device,
    )


def _logits_into(
    buffer: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    softcap: float | None,
) -> torch.Tensor:
    """softcap(hidden·weightᵀ + bias) in float32 in `buffer`, the matmul in the weight's dtype.
    The logits lie vocabulary-major in memory ([vocabulary, rows], returned as its [rows,
    vocabulary] transpose): the matmul is then weight·hiddenᵀ, which CPU BLAS runs faster than
    hidden·weightᵀ at these shapes (a column's values do not depend on the other columns)."""
    logits = buffer[: hidden.shape[0] * weight.shape[0]].view(weight.shape[0], hidden.shape[0]).T
    if hidden.dtype == weight.dtype == torch.float32:
        torch.mm(hidden, weight.T, out=logits)
    else:
        logits.T.copy_(weight @ hidden.to(weight.dtype).T)
    if bias is not None:
        logits += bias.to(weight.dtype).float()
    if softcap:
        logits.div_(softcap).tanh_().mul_(softcap)
    return logits


def naive_completion_logps(model, examples: list[TokenizedList]) -> torch.Tensor:
    """Reference implementation for tests: each (prompt + completion) alone through the whole
    model, full-vocabulary log_softmax, summed over the completion tokens. [B, K]."""
    k_max = max(len(e.completion_ids) for e in examples)
    rows = []
    for example in examples:
        sums = []
        for completion in example.completion_ids:
            ids = torch.tensor([list(example.prompt_ids) + list(completion)])
            logits = model(input_ids=ids).logits.float()[0, :-1]
            token_logps = F.log_softmax(logits, -1).gather(-1, ids[0, 1:].unsqueeze(-1)).squeeze(-1)
            sums.append(token_logps[len(example.prompt_ids) - 1 :].sum())
        sums += [torch.zeros(())] * (k_max - len(sums))
        rows.append(torch.stack(sums))
    return torch.stack(rows)


class CompletionLogpsModel(torch.nn.Module):
    """The engine as a module around a causal LM, so that accelerate (DDP, FSDP, autocast) wraps
    the call that really runs: batch -> CompletionLogps."""

    def __init__(
        self,
        model,
        settings: EngineSettings | None = None,
        *,
        with_tokens: bool = False,
        with_sampling_weights: bool = False,
        with_prompt: bool = False,
    ):
        super().__init__()
        self.model = model
        self.settings = settings or EngineSettings()
        self.with_tokens = with_tokens
        self.with_sampling_weights = with_sampling_weights
        self.with_prompt = with_prompt

    @property
    def _no_split_modules(self) -> list[str] | None:
        """The model's layer classes: what FSDP shards as units (accelerate reads this name)."""
        return getattr(self.model, "_no_split_modules", None)

    def forward(self, batch: Collated) -> CompletionLogps:
        return completion_logps(
            self.model,
            batch,
            self.settings,
            with_tokens=self.with_tokens,
            with_sampling_weights=self.with_sampling_weights,
            with_prompt=self.with_prompt,
        )
