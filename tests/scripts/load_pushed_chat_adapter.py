"""Loads pushed chat adapters (trained through an instruct model's chat template) by repository id in a fresh
process and labels texts every way a user can.

    HF_ENDPOINT=http://127.0.0.1:PORT python tests/scripts/load_pushed_chat_adapter.py ROWS.json OUT.json REPO_ID...

``ROWS.json`` holds ``{"texts": [...]}``. For each repository: its ``softprompt_hf.json`` as downloaded, the
labels of ``softprompt_hf.predict(repo_id, texts)`` in generate, rank and constrained mode (each loading the
adapter by id, the chat template rebuilt from the file's ``chat`` entry), then the model's own ``generate()``:
``AutoPeftModelForCausalLM.from_pretrained(repo_id)`` (the base model it names comes from the Hub too),
``enable_soft_prompt_generate``, the prompt ``ChatTemplate(...).encode(tokenizer, text)`` and
``eos_token_id=list(chat.stop_ids(tokenizer))``, greedy up to ``MAX_NEW_TOKENS``, one row at a time (no padding:
where the output ends is where generation stopped) and as one batch padded on the left. The first repository's base
model is also labelled zero-shot through the same chat template (``generate_labels`` and ``rank_labels``): prompt
tuning and prefix tuning leave the base model's modules as they are. Writes ``{repo_id: {...}, "zero_shot": {...}}``
to ``OUT.json``. Used by tests/test_real_e2e_chat.py.
"""

from __future__ import annotations

import json
import sys

import torch
from huggingface_hub import hf_hub_download
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

from softprompt_hf import ChatTemplate, enable_soft_prompt_generate, generate_labels, predict, rank_labels

#: Far more than a label and its end-of-turn token take (at most 3 tokens for "no complaint<|im_end|>"), and room for
#: a sentence: a row that uses them all did not stop at the end of the assistant turn.
MAX_NEW_TOKENS = 32


def generate_one_by_one(model, tokenizer, chat: ChatTemplate, texts: list[str]) -> list[list[int]]:
    """The new token ids of ``model.generate()`` for each text on its own: nothing but the row, no padding."""
    new_ids = []
    for text in texts:
        input_ids = torch.tensor([chat.encode(tokenizer, text)])
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=MAX_NEW_TOKENS,
                do_sample=False,
                eos_token_id=list(chat.stop_ids(tokenizer)),
                pad_token_id=tokenizer.pad_token_id,
            )
        new_ids.append(output[0, input_ids.shape[1] :].tolist())
    return new_ids


def generate_batch(model, tokenizer, chat: ChatTemplate, texts: list[str]) -> list[str]:
    """The texts of ``model.generate()`` for all texts in one batch, padded on the left."""
    tokenizer.padding_side = "left"
    inputs = tokenizer.pad({"input_ids": [chat.encode(tokenizer, text) for text in texts]}, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(
            **inputs,
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            eos_token_id=list(chat.stop_ids(tokenizer)),
            pad_token_id=tokenizer.pad_token_id,
        )
    new = output[:, inputs["input_ids"].shape[1] :]
    return [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]


def main(rows_path: str, out_path: str, repo_ids: list[str]) -> None:
    with open(rows_path, encoding="utf-8") as handle:
        texts = json.load(handle)["texts"]
    results: dict = {}
    for repo_id in repo_ids:
        with open(hf_hub_download(repo_id, "softprompt_hf.json"), encoding="utf-8") as handle:
            settings = json.load(handle)
        # predict by id, as a user calls it: the chat template comes from softprompt_hf.json.
        generated = predict(repo_id, texts, device="cpu")
        ranked = predict(repo_id, texts, mode="rank", device="cpu")
        constrained = predict(repo_id, texts, mode="constrained", device="cpu")

        model = AutoPeftModelForCausalLM.from_pretrained(repo_id)
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(settings["base_model"])
        chat = ChatTemplate(
            user=settings["chat"]["user"], system=settings["chat"]["system"], text_column=settings["text_column"]
        )
        labels = settings["labels"]
        if "zero_shot" not in results:
            base = model.get_base_model()
            results["zero_shot"] = {
                "generate": generate_labels(base, tokenizer, texts, labels, template=chat, show_progress=False),
                "rank": [
                    max(scores, key=scores.__getitem__)
                    for scores in rank_labels(base, tokenizer, texts, labels, template=chat, show_progress=False)
                ],
            }
        enable_soft_prompt_generate(model)
        one_by_one = generate_one_by_one(model, tokenizer, chat, texts)
        # How many tokens predict's generate mode decodes at most: the longest label's target, end of turn included.
        budget = max(len(chat.encode_target(tokenizer, label)) for label in labels)
        results[repo_id] = {
            "settings": settings,
            "base_model_name_or_path": model.peft_config["default"].base_model_name_or_path,
            "predict_generate": [[p.output, p.predicted] for p in generated],
            "predict_rank": [p.predicted for p in ranked],
            "predict_constrained": [p.predicted for p in constrained],
            "generate_ids": one_by_one,
            "generate_texts": [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in one_by_one],
            "generate_texts_in_budget": [
                tokenizer.decode(ids[:budget], skip_special_tokens=True).strip() for ids in one_by_one
            ],
            "generate_batch": generate_batch(model, tokenizer, chat, texts),
            "budget": budget,
            "max_new_tokens": MAX_NEW_TOKENS,
            "im_end": tokenizer.convert_tokens_to_ids("<|im_end|>"),
            "stop_ids": list(chat.stop_ids(tokenizer)),
        }
        del model
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump(results, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
