"""A tiny random Llama with a 512-token byte-level BPE tokenizer and a ChatML chat template,
built in code (no download), and a learnable toy preference task."""

from __future__ import annotations

import json
import random
import socket
import sys
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = (
    "apple river stone cloud green quick seven happy ocean light table music garden window paper "
    "yes no good bad answer question please thanks short long word list first second"
).split()


def build_tiny_model(path: Path, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rng = random.Random(seed)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(300)]
    corpus += [
        " ".join(WORDS).upper(),
        "user assistant system 0123456789 .,;:!?-'\"()[]{}<>/\\@#$%^&*_=+~`|",
    ]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def toy_rows(n: int, seed: int = 0, k: int = 2, chat: bool = False) -> list[dict]:
    """A learnable preference: completions made of lowercase words beat the same words in capitals,
    and (for lists) shorter answers beat longer ones."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = f"question {i}: " + " ".join(rng.choice(WORDS) for _ in range(3))
        words = [rng.choice(WORDS) for _ in range(4)]
        if k == 2:
            chosen, rejected = " ".join(words), " ".join(words).upper()
            if chat:
                rows.append(
                    {
                        "prompt": [{"role": "user", "content": prompt}],
                        "chosen": [{"role": "assistant", "content": chosen}],
                        "rejected": [{"role": "assistant", "content": rejected}],
                    }
                )
            else:
                rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        else:
            completions = [
                " ".join(words[: 2 + j % 3]) if j % 2 == 0 else " ".join(words[: 2 + j % 3]).upper()
                for j in range(k)
            ]
            scores = [
                (1.0 if j % 2 == 0 else 0.0) * 10 - len(c.split())
                for j, c in enumerate(completions)
            ]
            completions = [c + f" {j}" for j, c in enumerate(completions)]
            rows.append({"prompt": prompt, "completions": completions, "scores": scores})
    return rows


def tiny_train_config(tiny_model, data, out, **overrides):
    """A TrainConfig for fast runs on the tiny model: fp32, constant learning rate, a quarter of
    the prompts held out; anything can be overridden."""
    from prefopt.train.config import TrainConfig

    settings = dict(
        model=str(tiny_model),
        data=str(data),
        output_dir=str(out),
        precision="fp32",
        learning_rate=1e-3,
        batch_size=4,
        eval_fraction=0.25,
        warmup_ratio=0.0,
        scheduler="constant",
    )
    return TrainConfig(**{**settings, **overrides})


class Crash(Exception):
    """What `crash_at` raises: a run killed mid-way."""


def crash_at(step: int, error: type[BaseException] = Crash):
    """An on_step callback that raises `error` once the run has taken `step` steps."""

    def on_step(state, record):
        if state.step == step:
            raise error

    return on_step


def free_port() -> int:
    """A TCP port free on this machine now, for a two-process launch: test files run side by side
    (pytest-xdist), and two launches on the default port (29500) at once would meet in one group."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def on_two_processes(*arguments: str) -> list[str]:
    """The command line of `prefopt ARGUMENTS` on two CPU processes, started by torchrun as
    docs/scaling.md says, on a free port."""
    torchrun = str(Path(sys.executable).parent / "torchrun")
    return [torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), "-m",
            "prefopt.cli", *arguments]  # fmt: skip


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def ragged_examples(tokenizer):
    """Two lists of 3 and 2 completions of different lengths, tokenized."""
    from prefopt.data import PreferenceRecord, TokenizeSettings, tokenize_records

    records = [
        PreferenceRecord(
            prompt="apple river stone",
            completions=("yes good", "no", "maybe later today"),
            scores=(2, 0, 1),
        ),
        PreferenceRecord(prompt="hi", completions=("a longer answer here", "short"), scores=(1, 0)),
    ]
    return tokenize_records(records, tokenizer, TokenizeSettings())[0]


def build_tiny_reward_model(path: Path, tokenizer_from: Path, seed: int = 0) -> Path:
    """A tiny random Llama with a scalar head (a sequence-classification folder, num_labels = 1)
    sharing the tiny model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    tokenizer.save_pretrained(path)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        num_labels=1,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForSequenceClassification(config).save_pretrained(path)
    return path


def build_tiny_judge(path: Path, model_from: Path) -> Path:
    """The tiny model turned into a judge that always answers "A" or "B", depending on the prompt:
    the LM head gives "A" the logit 50·(h_i − h_j) and "B" its negative (every other token 0),
    for the two hidden dimensions i, j whose difference changes sign most often across judge
    prompts about different answers."""
    import itertools

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefopt.oracles.judge import DEFAULT_TEMPLATE

    tokenizer = AutoTokenizer.from_pretrained(model_from)
    model = AutoModelForCausalLM.from_pretrained(model_from)
    answers = [
        "yes good",
        "no",
        "maybe later today",
        "a",
        "b b",
        "green quick",
        "seven happy ocean",
    ]
    probes = [
        DEFAULT_TEMPLATE.format(prompt=p, a=a, b=b)
        for p in ("apple river", "hi")
        for a, b in itertools.permutations(answers, 2)
    ]
    with torch.no_grad():
        hidden = torch.stack(
            [
                model.model(
                    input_ids=torch.tensor(
                        [
                            tokenizer.apply_chat_template(
                                [{"role": "user", "content": text}],
                                add_generation_prompt=True,
                                tokenize=True,
                                return_dict=False,
                            )
                        ]
                    )
                ).last_hidden_state[0, -1]
                for text in probes
            ]
        )
        centred = (hidden.unsqueeze(2) - hidden.unsqueeze(1)).sign()  # [probe, i, j]
        balance = centred.mean(0).abs()  # 0: the sign splits the probes evenly
        i, j = divmod(
            int(balance.masked_fill(torch.eye(hidden.shape[1], dtype=torch.bool), 2).argmin()),
            hidden.shape[1],
        )
        model.lm_head.weight.zero_()
        for letter, sign in (("A", 1.0), ("B", -1.0)):
            row = tokenizer.convert_tokens_to_ids(letter)
            model.lm_head.weight[row, i], model.lm_head.weight[row, j] = 50.0 * sign, -50.0 * sign
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
