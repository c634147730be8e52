"""The decode copy: a float32 policy samples in bf16 through a copy whose weights are bf16 (LoRA
merged), refreshed after updates; its numbers are those of the policy rounded to bf16."""

import copy

import pytest
import torch

from prefopt.engine.decode_model import DecodeModel
from prefopt.engine.model import LoraSettings, load_model
from prefopt.generate.sampling import SamplingSettings, sample


def tokens(results):
    return [[s.token_ids for s in samples] for samples in results]


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [tokenizer(text)["input_ids"] for text in ("apple river stone", "hi", "paper window")]


def test_in_its_own_precision_the_policy_samples_itself(model):
    assert DecodeModel(model, "fp32").model is model


def test_bf16_samples_are_those_of_the_model_rounded_to_bf16(model, tokenizer, prompts):
    """Greedy and seeded samples through the copy equal those of the model converted to bf16
    whole, and transformers' greedy on it; and a completion is the same alone or in a batch."""
    rounded = copy.deepcopy(model).to(torch.bfloat16)
    for settings in (SamplingSettings(k=2, temperature=0, max_new_tokens=10),
                     SamplingSettings(k=3, max_new_tokens=10, seed=4)):  # fmt: skip
        ours = tokens(sample(model, tokenizer, prompts, settings, precision="bf16"))
        assert ours == tokens(sample(rounded, tokenizer, prompts, settings, precision="bf16"))
        alone = [tokens(sample(model, tokenizer, [p], settings, precision="bf16"))[0]
                 for p in prompts]  # fmt: skip
        assert ours == alone
    greedy = SamplingSettings(k=2, temperature=0, max_new_tokens=10)
    assert tokens(sample(model, tokenizer, prompts, greedy, precision="bf16")) == tokens(
        sample(rounded, tokenizer, prompts, greedy, backend="transformers")
    )
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the source untouched


def test_a_lora_policy_is_merged_and_refreshed_after_updates(tiny_model):
    policy = load_model(str(tiny_model), lora=LoraSettings(r=4, alpha=8))
    decode = DecodeModel(policy, "bf16")
    assert not any("lora" in name for name, _ in decode.model.named_parameters())
    with torch.no_grad():  # an update: the adapters move
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    merged = lambda: copy.deepcopy(policy).merge_and_unload().to(torch.bfloat16).state_dict()
    stale = decode.model.state_dict()
    assert any(not torch.equal(stale[k], v) for k, v in merged().items())
    decode.refresh()
    fresh = decode.model.state_dict()
    for name, value in merged().items():
        torch.testing.assert_close(fresh[name], value, rtol=0.01, atol=1e-3)


def test_full_training_refreshes_every_weight(tiny_model):
    policy = load_model(str(tiny_model))
    decode = DecodeModel(policy, "bf16")
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.add_(0.01)
    decode.refresh()
    for mine, theirs in zip(decode.model.parameters(), policy.parameters(), strict=True):
        assert torch.equal(mine, theirs.to(torch.bfloat16))
