"""Loads pushed adapters by repository id in a fresh process and labels texts every way a user can.

    HF_ENDPOINT=http://127.0.0.1:PORT python tests/scripts/load_pushed_adapters.py ROWS.json OUT.json REPO_ID...

``ROWS.json`` holds ``{"texts": [...], "gold": [...]}``. For each repository: ``AutoPeftModelForCausalLM
.from_pretrained(repo_id)`` (the base model it names comes from the Hub too), the tokenizer and settings that its
``softprompt_hf.json`` names, then the labels of ``softprompt_hf.predict`` in generate and rank mode, and those
of the model's own ``generate()`` after ``enable_soft_prompt_generate``, prompted and decoded as the model card's
snippet does. The first repository's base model is also scored zero-shot with ``GenerationMetrics`` (generate and rank):
prompt tuning, P-tuning and prefix tuning leave the base model's modules as they are, so ``model.get_base_model()`` is
the pretrained model itself. Writes ``{repo_id: {...}, "zero_shot": {...}}`` to ``OUT.json``. Used by
tests/test_real_e2e.py.
"""

from __future__ import annotations

import json
import sys

import torch
from huggingface_hub import hf_hub_download
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

from softprompt_hf import GenerationMetrics, enable_soft_prompt_generate
from softprompt_hf.data.prompt import PromptTemplate
from softprompt_hf.evaluation.metrics import match_label
from softprompt_hf.serving.predict import predict


def zero_shot(model, tokenizer, settings: dict, texts: list[str], gold: list[str]) -> dict:
    column = settings["text_column"]
    rows = [{column: text, "text_label": label} for text, label in zip(texts, gold, strict=True)]
    scores = {}
    for mode in ("generate", "rank"):
        metrics = GenerationMetrics(
            tokenizer,
            settings["labels"],
            rows,
            text_column=column,
            template=settings["template"],
            label_tokenization=settings["label_tokenization"],
            mode=mode,
        )
        scores[mode] = metrics.evaluate(model)
        scores[mode]["outputs"] = [p.output for p in metrics.last_predictions]
    return scores


def label_with_generate(model, tokenizer, settings: dict, texts: list[str]) -> tuple[list[str], list[str | None]]:
    """The model card's snippet: prompts without the whitespace that goes with the label, padded on the left."""
    enable_soft_prompt_generate(model)
    prompt = PromptTemplate(settings["template"], settings["text_column"], settings["label_tokenization"])
    max_new_tokens = max(len(prompt.encode_target(tokenizer, label)) for label in settings["labels"])
    tokenizer.padding_side = "left"
    inputs = tokenizer([prompt.prompt_text(text) for text in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        outputs = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    answers = tokenizer.batch_decode(outputs[:, inputs.input_ids.shape[1] :], skip_special_tokens=True)
    answers = [answer.strip() for answer in answers]
    return answers, [match_label(answer, settings["labels"]) for answer in answers]


def main(rows_path: str, out_path: str, repo_ids: list[str]) -> None:
    with open(rows_path, encoding="utf-8") as handle:
        rows = json.load(handle)
    texts, gold = rows["texts"], rows["gold"]
    results: dict = {}
    for repo_id in repo_ids:
        model = AutoPeftModelForCausalLM.from_pretrained(repo_id)
        with open(hf_hub_download(repo_id, "softprompt_hf.json"), encoding="utf-8") as handle:
            settings = json.load(handle)
        if settings["tokenizer"] != "base_model":
            raise SystemExit(f"{repo_id}: expected the base model's tokenizer, softprompt_hf.json says otherwise")
        tokenizer = AutoTokenizer.from_pretrained(settings["base_model"])
        if "zero_shot" not in results:
            results["zero_shot"] = zero_shot(model.get_base_model(), tokenizer, settings, texts, gold)
        options = {
            "tokenizer": tokenizer,
            "labels": settings["labels"],
            "template": settings["template"],
            "text_column": settings["text_column"],
            "label_tokenization": settings["label_tokenization"],
        }
        generated = predict(model, texts, mode="generate", **options)
        ranked = predict(model, texts, mode="rank", **options)
        answers, labels = label_with_generate(model, tokenizer, settings, texts)
        results[repo_id] = {
            "base_model_name_or_path": model.peft_config["default"].base_model_name_or_path,
            "settings": {key: settings[key] for key in ("method", "labels", "label_tokenization", "tokenizer")},
            "predict_generate": [[p.output, p.predicted] for p in generated],
            "predict_rank": [p.predicted for p in ranked],
            "model_generate": [list(pair) for pair in zip(answers, labels, strict=True)],
        }
        del model
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump(results, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
