"""A stand-in for the `vllm` package (which needs a GPU), for tests only: the part of its API that
prefopt calls (`LLM`, `SamplingParams`, `inputs.TokensPrompt`, the colocated engine's
`load_weights` and `reset_prefix_cache`), backed by the transformers model of the folder it is
given, sampling on the CPU. It records what prefopt hands it (`LLM.made`), and refuses a weight
name the model does not have, as vLLM's `load_weights` does."""

from __future__ import annotations

import types

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


class SamplingParams:
    def __init__(self, **options):
        self.options = options
        self.__dict__.update(options)


class _Weights:
    """The engine's model, as `llm_engine.model_executor.driver_worker.model_runner.model`."""

    def __init__(self, llm: LLM):
        self.llm = llm

    def load_weights(self, weights) -> None:
        state = self.llm.model.state_dict()
        pushed = {}
        for name, tensor in weights:
            if name not in state:
                raise KeyError(f"vllm stand-in: no weight named {name}")
            state[name].copy_(tensor)
            pushed[name] = tensor.detach().clone()
        self.llm.pushes.append(pushed)


class LLM:
    made: list[LLM] = []

    def __init__(self, model: str, **options):
        self.options = {"model": model, **options}
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.pushes: list[dict] = []
        self.resets = 0
        self.calls: list[dict] = []
        runner = types.SimpleNamespace(model=_Weights(self))
        worker = types.SimpleNamespace(model_runner=runner)
        self.llm_engine = types.SimpleNamespace(
            model_executor=types.SimpleNamespace(driver_worker=worker)
        )
        LLM.made.append(self)

    def reset_prefix_cache(self) -> None:
        self.resets += 1

    @torch.no_grad()
    def generate(self, prompts: list[dict], params: SamplingParams) -> list:
        self.calls.append(dict(params.options))
        eos = self.model.generation_config.eos_token_id
        eos = {eos} if isinstance(eos, int) else set(eos or [])
        outputs = []
        for p, prompt in enumerate(prompts):
            answers = []
            for j in range(params.n):
                generator = torch.Generator().manual_seed(params.seed * 7919 + p * 101 + j)
                answers.append(
                    self._answer(list(prompt["prompt_token_ids"]), params, eos, generator)
                )
            outputs.append(types.SimpleNamespace(outputs=answers))
        return outputs

    def _answer(self, ids: list[int], params: SamplingParams, eos: set[int], generator):
        tokens, logprobs, finish = [], [], "length"
        for _ in range(params.max_tokens):
            logits = self.model(torch.tensor([ids + tokens])).logits[0, -1].float()
            raw = torch.log_softmax(logits, -1)
            if params.temperature == 0:
                token = int(logits.argmax())
            else:
                probs = torch.softmax(logits / params.temperature, -1)
                token = int(torch.multinomial(probs, 1, generator=generator))
            tokens.append(token)
            logprobs.append({token: types.SimpleNamespace(logprob=float(raw[token]))})
            if token in eos and len(tokens) >= params.min_tokens:
                finish = "stop"
                break
        return types.SimpleNamespace(
            text=self.tokenizer.decode(tokens, skip_special_tokens=True),
            token_ids=tokens,
            logprobs=logprobs,
            cumulative_logprob=sum(next(iter(lp.values())).logprob for lp in logprobs),
            finish_reason=finish,
            stop_reason=None,
        )
