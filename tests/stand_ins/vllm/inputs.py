"""The stand-in's `vllm.inputs` (see the package)."""


def TokensPrompt(prompt_token_ids):
    return {"prompt_token_ids": list(prompt_token_ids)}
