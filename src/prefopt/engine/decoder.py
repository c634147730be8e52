"""The sampler's forward: a pre-norm decoder (Llama, Mistral, Qwen 2 and 3, SmolLM3) run layer by
layer from its weights, without transformers' module calls.

A decode step multiplies a few dozen rows by every weight of the model, so what surrounds the
GEMMs costs as much as they do: transformers' layers go through hooks, keyword plumbing, mask
construction and one linear module per projection (30 layers × 7 projections for SmolLM2). Here a
layer is its norms, its GEMMs and the attention, and nothing else (tested bit for bit in float32
against the model's forward). On a CPU, bf16 weights are handed to oneDNN once, reordered into
its blocked layout (`torch.ops.mkldnn._reorder_linear_weight`), where `F.linear` reorders them
again at every call, and q, k and v are one GEMM against their stacked weights, as are gate and
up (each output column is the dot product it is in its own GEMM): a decode step's GEMMs about a
quarter faster, the same bf16 numbers on the machines measured. float32 weights stay the model's
own tensors, uncopied (oneDNN's float32 kernel rounds differently from MKL's, and float32 decoding
must keep matching transformers token for token).

The norms, the rotary embedding and the activation are the model's own modules, so each keeps
its definition; the attention is prefopt.engine.decode's. LoRA layers decode through their merged
weight W + ΔW, as the bf16 sampling copy does (engine/decode_model.py). Architectures this does
not know (`Decoder.of` returns None) decode through the model's own forward."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import LoraLayer

from prefopt.engine import native
from prefopt.engine.decode import DecodeState, decode_attention
from prefopt.engine.decode_model import merged_weight

_LAYERS = frozenset(
    {"LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer",
     "SmolLM3DecoderLayer"}
)  # fmt: skip


@dataclasses.dataclass
class _Layer:
    module: torch.nn.Module  # its norms, activation and attention settings
    qkv: list  # [(weight, bias)] as `_project` takes them
    o: list
    gate_up: list
    down: list
    sizes: tuple[int, int, int]  # q, k, v widths
    intermediate: int


class Decoder:
    """`decoder(input_ids, positions, state)` -> logits in the weights' precision: at each packed
    prompt's last position for a prefill (one row [1, L]), at each row's for a decoding step
    ([rows, 1])."""

    def __init__(self, model, packed: bool):
        """`model`: a causal LM (under peft, its base model); `of` checks that it is one known."""
        self.body = model.model
        self.packed = packed
        # bf16 on a CPU, the elementwise work between the GEMMs in C (engine/kernels/decode.c)
        silu = getattr(model.config, "hidden_act", None) == "silu"
        bf16 = self.body.norm.weight.dtype == torch.bfloat16
        self.kernels = native.load("decode") if packed and silu and bf16 else None
        self.head = self._weights(model.get_output_embeddings())
        self.layers = [self._layer(layer) for layer in self.body.layers]

    @classmethod
    def of(cls, model) -> Decoder | None:
        """The decoder of `model` in its current weights, or None for an architecture it does not
        know (or one whose layers were replaced, e.g. by a compiled wrapper)."""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        body = getattr(base, "model", None)
        layers = getattr(body, "layers", None)
        if layers is None or any(type(layer).__name__ not in _LAYERS for layer in layers):
            return None
        config = base.config
        if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
            return None  # the decode attention has no windows
        weight = base.get_output_embeddings().weight
        packed = (
            weight.device.type == "cpu"
            and weight.dtype == torch.bfloat16
            and torch.backends.mkldnn.is_available()
            and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
        return cls(base, packed)

    def _weights(self, *linears) -> list[tuple]:
        """(weight, bias) of each linear, its weight merged where LoRA adapts it. Packed, they are
        stacked by output into one weight (one GEMM for all); plain, they are the model's own
        tensors (no copy)."""
        pairs = [(_merged(linear), _base(linear).bias) for linear in linears]
        if not self.packed:
            return pairs
        weight = torch.cat([w for w, _ in pairs]) if len(pairs) > 1 else pairs[0][0]
        bias = None
        if any(b is not None for _, b in pairs):
            bias = torch.cat([b if b is not None else w.new_zeros(w.shape[0]) for w, b in pairs])
        return [(torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), 64), bias)]

    def _layer(self, layer) -> _Layer:
        attention, mlp = layer.self_attn, layer.mlp
        projections = (attention.q_proj, attention.k_proj, attention.v_proj)
        return _Layer(
            module=layer,
            qkv=self._weights(*projections),
            o=self._weights(attention.o_proj),
            gate_up=self._weights(mlp.gate_proj, mlp.up_proj),
            down=self._weights(mlp.down_proj),
            sizes=tuple(_base(p).out_features for p in projections),
            intermediate=_base(mlp.gate_proj).out_features,
        )

    def _project(self, x: torch.Tensor, weights: list[tuple], sizes=None) -> list[torch.Tensor]:
        """x through each linear of `weights` (one GEMM when they are stacked, then split)."""
        if self.packed:
            weight, bias = weights[0]
            out = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
            return list(out.split(sizes, -1)) if sizes else [out]
        return [F.linear(x, weight, bias) for weight, bias in weights]

    def __call__(self, input_ids, positions, state: DecodeState) -> torch.Tensor:
        hidden = self.body.embed_tokens(input_ids)
        rotary = self.body.rotary_emb(hidden, position_ids=positions)
        if self.kernels is None:
            for layer in self.layers:
                hidden = self._layer_forward(layer, hidden, rotary, state)
        else:
            rotary = tuple(t.contiguous() for t in rotary)  # the C rotation reads them flat
            delta = None  # each layer's MLP output, added by the next layer's first norm
            for layer in self.layers:
                hidden, delta = self._layer_forward_in_c(layer, hidden, delta, rotary, state)
            hidden = hidden + delta
        if state.prefilling is None:
            last = hidden[:, -1]
        else:
            last = hidden[0, state.last_positions(hidden.shape[1])]
        return self._project(self.body.norm(last), self.head)[0]

    def _layer_forward(self, layer: _Layer, hidden, rotary, state) -> torch.Tensor:
        module = layer.module
        attention = module.self_attn
        rows, length, _ = hidden.shape
        q, k, v = self._project(module.input_layernorm(hidden), layer.qkv, layer.sizes)
        shape = (rows, length, -1, attention.head_dim)
        q, k, v = q.view(shape), k.view(shape), v.view(shape)
        if getattr(attention, "q_norm", None) is not None:  # Qwen 3
            q, k = attention.q_norm(q), attention.k_norm(k)
        if getattr(attention, "use_rope", True):  # SmolLM3 leaves it out of some layers
            q, k = _rotate(q, k, *rotary)
        out, _ = decode_attention(attention, q.transpose(1, 2), k.transpose(1, 2),
                                  v.transpose(1, 2), state, attention.scaling)  # fmt: skip
        hidden = hidden + self._project(out.reshape(rows, length, -1), layer.o)[0]
        gate, up = self._project(module.post_attention_layernorm(hidden), layer.gate_up,
                                 (layer.intermediate, layer.intermediate))  # fmt: skip
        return hidden + self._project(module.mlp.act_fn(gate) * up, layer.down)[0]

    def _layer_forward_in_c(self, layer: _Layer, hidden, delta, rotary, state) -> tuple:
        """`_layer_forward` with its norms and residual sums, rotary embedding and SwiGLU each one
        C pass (float32 inside, one rounding to bf16 where PyTorch rounds after every op). Takes
        the residual stream and the last layer's output not yet added to it (or None), returns
        the same pair."""
        module, kernels = layer.module, self.kernels
        attention = module.self_attn
        rows, length, width = hidden.shape
        tokens, dim = rows * length, attention.head_dim
        normed = self._norm(module.input_layernorm, hidden, residual=delta)
        qkv = self._project(normed, layer.qkv)[0]
        q, k, v = qkv.split(layer.sizes, -1)
        if getattr(attention, "q_norm", None) is not None:  # Qwen 3
            shape = (rows, length, -1, dim)
            q, k = attention.q_norm(q.view(shape)), attention.k_norm(k.view(shape))
        if getattr(attention, "use_rope", True):  # SmolLM3 leaves it out of some layers
            cos, sin = rotary
            for x in (q, k):
                heads = x.shape[-2] if x.dim() == 4 else x.shape[-1] // dim
                kernels.rotate_bf16(x.data_ptr(), cos.data_ptr(), sin.data_ptr(), tokens, heads,
                                    dim, x.stride(1))  # fmt: skip
        q, k, v = (x.reshape(rows, length, -1, dim).transpose(1, 2) for x in (q, k, v))
        out, _ = decode_attention(attention, q, k, v, state, attention.scaling)
        delta = self._project(out.reshape(rows, length, -1), layer.o)[0]
        normed = self._norm(module.post_attention_layernorm, hidden, residual=delta)
        gate_up = self._project(normed, layer.gate_up)[0]
        act = gate_up.new_empty(rows, length, layer.intermediate)
        kernels.swiglu_bf16(gate_up.data_ptr(), act.data_ptr(), tokens, layer.intermediate)
        return hidden, self._project(act, layer.down)[0]

    def _norm(self, norm, hidden: torch.Tensor, residual=None) -> torch.Tensor:
        """RMSNorm(hidden) in C; with `residual`, hidden += residual first (in place)."""
        out = torch.empty_like(hidden)
        tokens, width = hidden.shape[0] * hidden.shape[1], hidden.shape[2]
        residual = None if residual is None else residual.contiguous()  # held through the call
        self.kernels.rms_norm_bf16(
            hidden.data_ptr(), None if residual is None else residual.data_ptr(),
            norm.weight.data_ptr(), out.data_ptr(), tokens, width, norm.variance_epsilon,
        )  # fmt: skip
        return out


def _rotate(q, k, cos, sin):
    """transformers' rotary embedding (`apply_rotary_pos_emb`), on [rows, L, heads, D]."""
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), -1)


def _base(linear):
    return linear.get_base_layer() if isinstance(linear, LoraLayer) else linear


def _merged(linear) -> torch.Tensor:
    if not isinstance(linear, LoraLayer) or not linear.active_adapters or linear.merged:
        return _base(linear).weight
    return merged_weight(linear).to(_base(linear).weight.dtype)
