"""Run by tests/test_evaluation_distributed.py under torchrun with 2 CPU processes (gloo).

Evaluates the embedded model with GenerationMetrics (modes generate, rank) or TextGenerationMetrics (mode text: the
label texts scored as free text) through the stock Trainer and writes, per process, the metrics it got and the
texts it scored itself. Mode text skips the Trainer's loss pass (`skip_loss_pass`).
"""

import json
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"

from accelerate import PartialState
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

import softprompt_hf.evaluation.compute_metrics as evaluation
import softprompt_hf.inference.labels as decoding
from softprompt_hf import (
    GenerationMetrics,
    SoftPromptDataCollator,
    TextGenerationMetrics,
    build_soft_prompt_model,
    load_raft,
)
from softprompt_hf.core.upstream import exit_without_gloo_teardown
from softprompt_hf.embedded import EMBEDDED_DATA_FILES, EMBEDDED_MODEL_PATH


def main(out_dir: str, mode: str) -> None:
    scored: list[str] = []
    generate, rank = decoding.generate_labels, decoding.rank_labels

    def recording_generate(model, tokenizer, texts, labels=None, **kwargs):
        scored.extend(texts)
        return generate(model, tokenizer, texts, labels, **kwargs)

    def recording_rank(model, tokenizer, texts, labels, **kwargs):
        scored.extend(texts)
        return rank(model, tokenizer, texts, labels, **kwargs)

    decoding.generate_labels, decoding.rank_labels = recording_generate, recording_rank
    generate_ids = evaluation.generate_label_ids

    def recording_generate_ids(model, tokenizer, texts, **kwargs):
        scored.extend(texts)
        return generate_ids(model, tokenizer, texts, **kwargs)

    evaluation.generate_label_ids = recording_generate_ids

    data = load_raft(data_files=EMBEDDED_DATA_FILES, validation_size=45, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_MODEL_PATH)
    model = build_soft_prompt_model(
        AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL_PATH), method="prompt_tuning", tokenizer=tokenizer
    )
    if mode == "text":
        metrics = TextGenerationMetrics(tokenizer, data.validation, max_new_tokens=6)
    else:
        metrics = GenerationMetrics(tokenizer, data.classes, data.validation, mode=mode)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=out_dir,
            per_device_eval_batch_size=8,
            remove_unused_columns=False,
            report_to=[],
            ddp_find_unused_parameters=False,
            use_cpu=True,  # with torchrun's environment, accelerate then starts gloo on the CPU
        ),
        eval_dataset=data.validation,
        data_collator=SoftPromptDataCollator(tokenizer),
        **metrics.trainer_kwargs(),
    )
    if mode == "text":  # free text evaluates without the Trainer's loss pass (the label modes keep it)
        metrics.skip_loss_pass(trainer)
    result = trainer.evaluate()
    scored_rows = list(scored)
    # Another eval set (40 of the 45 rows): every process gets the gathered count and refuses the same way.
    try:
        trainer.evaluate(eval_dataset=data.validation.select(range(40)))
        refusal = None
    except ValueError as error:
        refusal = str(error)
    state = PartialState()
    with open(os.path.join(out_dir, f"process{state.process_index}.json"), "w") as f:
        report = {"num_processes": state.num_processes, "metrics": result, "scored": scored_rows, "refusal": refusal}
        json.dump(report, f)
    trainer.accelerator.wait_for_everyone()
    exit_without_gloo_teardown(0)  # not Trainer.end(): torch 2.13's gloo teardown can hang (core.upstream entry 32)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
