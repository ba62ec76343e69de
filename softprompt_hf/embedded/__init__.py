"""The embedded default: a tiny instruction-tuned Bloom model and a synthetic complaints dataset.

Both ship inside the package, so that everything runs offline. The dataset has RAFT
``twitter_complaints``' schema and loads like the real RAFT parquet files; the model is a
``BloomForCausalLM`` ("bloomz in miniature") pretrained on a multitask instruction corpus over such
tweets, so that a soft prompt has an instruction-following model to steer. Besides its label tasks, the
model learned to describe a tweet in a few words; the same labelled tweets ship with those descriptions
as a text-to-text dataset.

Example:

```python
>>> from datasets import load_dataset
>>> from transformers import AutoModelForCausalLM, AutoTokenizer
>>> from softprompt_hf.embedded import EMBEDDED_DATA_FILES, EMBEDDED_MODEL_PATH
>>> ds = load_dataset("parquet", data_files=EMBEDDED_DATA_FILES)
>>> ds["train"].features["Label"].names
['Unlabeled', 'complaint', 'no_complaint']
>>> model = AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL_PATH)
>>> tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_MODEL_PATH)

```

The same labelled tweets with a free-text target, for text-to-text training:

```python
>>> from softprompt_hf import load_text_data
>>> from softprompt_hf.embedded import DESCRIPTION_COLUMN, EMBEDDED_TEXT_DATA_FILES, TEXT_COLUMN
>>> text_data = load_text_data(EMBEDDED_TEXT_DATA_FILES, source_columns=TEXT_COLUMN, target_column=DESCRIPTION_COLUMN)
>>> text_data.train.num_rows, text_data.validation.num_rows
(720, 80)
>>> text_data.train[2][TEXT_COLUMN], text_data.train[2][DESCRIPTION_COLUMN]
("my phone gets so hot I can't hold it... can you help me sort this out? thanks! @korra_help #help",
 'polite complaint to korra about gadgets')

```

Rebuild both with ``python -m softprompt_hf.embedded.build_data`` then
``python -m softprompt_hf.embedded.build_model`` (see ``README.md`` in this folder).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "COMPLAINT_INSTRUCTION",
    "DESCRIBE_INSTRUCTION",
    "DESCRIPTION_COLUMN",
    "EMBEDDED_DATA_DIR",
    "EMBEDDED_DATA_FILES",
    "EMBEDDED_MODEL_PATH",
    "EMBEDDED_TEXT_DATA_FILES",
    "LABEL_NAMES",
    "TEXT_COLUMN",
    "EMBEDDED_LABEL_TOKENIZATION",
    "label_tokenization_for",
]

_HERE = Path(__file__).resolve().parent

#: Folder holding the shipped model and tokenizer (``from_pretrained`` accepts it as is).
EMBEDDED_MODEL_PATH = str(_HERE / "model")
#: Folder holding the shipped dataset.
EMBEDDED_DATA_DIR = str(_HERE / "data")
#: Split name -> parquet file: ``train`` is labelled, ``test`` is unlabelled (``Label`` 0), as in RAFT.
EMBEDDED_DATA_FILES = {split: str(_HERE / "data" / f"{split}.parquet") for split in ("train", "test")}
#: Split name -> parquet file of the free-text task: the labelled rows of ``EMBEDDED_DATA_FILES["train"]`` (same
#: ``Tweet text`` and ``ID``), each with its description (``DESCRIPTION_COLUMN``); load with ``load_text_data``.
EMBEDDED_TEXT_DATA_FILES = {"train": str(_HERE / "data" / "describe.parquet")}
#: Column holding the tweet, as in RAFT.
TEXT_COLUMN = "Tweet text"
#: Column of ``EMBEDDED_TEXT_DATA_FILES`` holding the target text, e.g. ``"angry complaint to skylink about flights"``.
DESCRIPTION_COLUMN = "Description"
#: ``Label`` class names, as in RAFT twitter_complaints; the label text is the name with "_" -> " ".
LABEL_NAMES = ("Unlabeled", "complaint", "no_complaint")
#: The instruction the embedded model was pretrained with for the complaint task (the seed's
#: prompt-tuning init text, word for word).
COMPLAINT_INSTRUCTION = "Classify if the tweet is a complaint or no complaint.\n"
#: The instruction the embedded model was pretrained with for its free-text task: a few words on the tweet's tone,
#: kind, company and topic (``EMBEDDED_TEXT_DATA_FILES``' ``DESCRIPTION_COLUMN``).
DESCRIBE_INSTRUCTION = "Describe the tweet in a few words.\n"
#: Where the prompt ends and the label begins in the embedded model's pretraining: ``build_model`` tokenizes each
#: prompt (its closing space included) and its answer apart, as the collator did before ``label_tokenization``
#: existed. Trained with the tokenizer's joint boundary instead, the quick start's prompt tuning reaches 0.125
#: validation accuracy instead of 0.994: the model never learned to answer with its word tokens after "Label :".
EMBEDDED_LABEL_TOKENIZATION = "separate"


def label_tokenization_for(model_name_or_path: str | os.PathLike[str]) -> str:
    """The default ``label_tokenization`` for a base model: ``"joint"`` (follow the tokenizer), except for the
    embedded model, which gets the boundary it was pretrained with (``EMBEDDED_LABEL_TOKENIZATION``)."""
    path = Path(model_name_or_path)
    if path.is_dir() and path.resolve() == Path(EMBEDDED_MODEL_PATH):
        return EMBEDDED_LABEL_TOKENIZATION
    return "joint"
