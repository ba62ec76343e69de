"""Loads a pushed free-text adapter by repository id in a fresh process and generates every way a user can.

    HF_ENDPOINT=http://127.0.0.1:PORT python tests/scripts/load_pushed_text_adapter.py ROWS.json OUT.json REPO_ID

``ROWS.json`` holds a list of rows (mappings holding the template's columns). ``AutoPeftModelForCausalLM
.from_pretrained(repo_id)`` (the base model it names comes from the Hub too), the tokenizer, template and
generation budget that its ``softprompt_hf.json`` names, then the texts of the model card's snippet
(``generate_texts``: the package's engine), of ``softprompt_hf.predict`` (the fixed ``generate()``, a batch
padded on the left) and of the model's own ``generate()`` one row at a time after ``enable_soft_prompt_generate``.
Writes ``{"settings": ..., "base_model_name_or_path": ..., "engine": [...], "predict": [...], "generate": [...]}`` to
``OUT.json``. Used by tests/test_real_e2e_text.py.
"""

from __future__ import annotations

import json
import sys

import torch
from huggingface_hub import hf_hub_download
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

from softprompt_hf import PromptTemplate, enable_soft_prompt_generate, generate_texts
from softprompt_hf.serving.predict import predict


def main(rows_path: str, out_path: str, repo_id: str) -> None:
    with open(rows_path, encoding="utf-8") as handle:
        rows = json.load(handle)
    model = AutoPeftModelForCausalLM.from_pretrained(repo_id)
    with open(hf_hub_download(repo_id, "softprompt_hf.json"), encoding="utf-8") as handle:
        settings = json.load(handle)
    tokenizer = AutoTokenizer.from_pretrained(settings["base_model"])
    template = PromptTemplate(settings["template"], settings["text_column"], settings["label_tokenization"])
    budget = settings["max_new_tokens"]
    # The model card's snippet.
    engine = generate_texts(model, tokenizer, rows, template=template, max_new_tokens=budget)
    predicted = predict(
        model,
        rows,
        tokenizer=tokenizer,
        task="text",
        max_new_tokens=budget,
        template=template.template,
        text_column=template.text_column,
        label_tokenization=template.label_tokenization,
    )
    # The model's own generate(), made right for the soft prompt, one row at a time (no padding at all).
    enable_soft_prompt_generate(model)
    generated = []
    for row in rows:
        inputs = tokenizer([template.prompt_text(row)], return_tensors="pt")
        with torch.no_grad():
            output = model.generate(
                **inputs,
                max_new_tokens=budget,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        # Stripped, as the package's own outputs are (the first token often starts with a space).
        generated.append(tokenizer.decode(output[0, inputs.input_ids.shape[1] :], skip_special_tokens=True).strip())
    results = {
        "settings": settings,
        "base_model_name_or_path": model.peft_config["default"].base_model_name_or_path,
        "engine": engine,
        "predict": [p.output for p in predicted],
        "generate": generated,
    }
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump(results, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
