"""Model cards: every folder a run saves (a policy's model and merged model, a reward model, an rl
run's policy) has a README.md in the Hub's format, which huggingface_hub reads back; the folder
still loads with transformers alone."""

from huggingface_hub import ModelCard

from prefopt.reward import RewardConfig, reward_train
from prefopt.train import train
from prefopt.train.cards import CardFacts, write_card
from tiny import tiny_train_config, toy_rows, write_jsonl


def test_a_trained_policy_s_folders_carry_a_card(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", toy_rows(24, seed=1))
    train(tiny_train_config(tiny_model, data, tmp_path / "run", loss={"dpo": 1.0, "sft": 0.1},
                            loss_params={"dpo": {"beta": 0.2}}, lora=True, merge=True,
                            max_steps=2))  # fmt: skip
    adapters = ModelCard.load(tmp_path / "run" / "model" / "README.md")
    merged = ModelCard.load(tmp_path / "run" / "merged" / "README.md")
    assert adapters.data.library_name == "peft" and "lora" in adapters.data.tags
    assert (
        merged.data.library_name == "transformers" and merged.data.pipeline_tag == "text-generation"
    )
    assert {"prefopt", "dpo", "sft"} <= set(merged.data.tags)
    text = merged.text
    assert '`dpo` (weight 1) with {"beta": 0.2}' in text and "Rafailov et al. 2023" in text
    assert "18 train lists" in text and "| `learning_rate` | `0.001` |" in text
    assert "| loss |" in text  # the last evaluation
    assert 'AutoModelForCausalLM.from_pretrained("merged")' in text
    assert 'AutoPeftModelForCausalLM.from_pretrained("model")' in adapters.text


def test_a_reward_model_s_card_says_how_to_read_a_reward(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", toy_rows(16, seed=2))
    reward_train(RewardConfig(model=str(tiny_model), data=str(data), output_dir=str(tmp_path / "rm"),
                              precision="fp32", max_steps=1, objective="bradley_terry"))  # fmt: skip
    card = ModelCard.load(tmp_path / "rm" / "model" / "README.md")
    assert card.data.pipeline_tag == "text-classification" and "reward-model" in card.data.tags
    assert "AutoModelForSequenceClassification" in card.text and ".logits[0, 0]" in card.text
    assert "`bradley_terry`" in card.text


def test_the_default_model_s_source_and_license(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    facts = CardFacts(base_model="default", command="prefopt train",
                      objective=[("kto", 1.0, {}, "a formula", "a paper")], data="org/thumbs",
                      evaluation={"score": {"value": 0.7, "low": 0.6, "high": 0.8}})  # fmt: skip
    card = ModelCard.load(write_card(folder, facts))
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.license == "apache-2.0" and card.data.datasets == ["org/thumbs"]
    assert "| score | 0.7 [0.6, 0.8] |" in card.text
