"""Metrics for free-text targets (summaries, answers, data-to-text): ROUGE, BLEU, chrF and exact match.

Each metric is an ``evaluate.Metric`` defined here, so it works offline: no Hub lookup, no metric script
(``evaluate.load("rouge")`` needs the Hub). They take string predictions and references, one reference per
prediction or a list of references per prediction, and support ``compute``, ``add_batch`` and
``evaluate.combine``. Their scales are their libraries' own:

- ROUGE (``rouge1``, ``rouge2``, ``rougeL``, ``rougeLsum``) and exact match (``exact_match``): 0 to 1;
- BLEU (``bleu``) and chrF (``chrf``): 0 to 100, as sacrebleu reports them.

By default results are kept in memory (``keep_in_memory=True``): nothing is written under ``HF_HOME``. Pass
``keep_in_memory=False`` (with ``num_process`` / ``process_id``) for evaluate's own multi-process gathering through
cache files.

Any other object with ``.compute(predictions=..., references=...)`` returning a dict (a user's own metric,
``evaluate.load("bertscore")`` where the Hub is reachable, ``evaluate.combine([...])``) can be used in their place.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

import datasets
import evaluate
from transformers.utils import logging

__all__ = [
    "TEXT_METRICS",
    "Bleu",
    "Chrf",
    "ExactMatch",
    "Rouge",
    "default_text_metrics",
    "load_text_metric",
]

logger = logging.get_logger(__name__)

_ROUGE_TYPE = re.compile(r"rouge[1-9]|rougeL|rougeLsum")
_DEFAULT_ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")

_FEATURES = [
    datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
    datasets.Features(
        {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
    ),
]

_INPUTS = """
Args:
    predictions (`list[str]`): the generated texts, one per row. An empty string is a legal prediction (it scores 0).
    references (`list[str]` or `list[list[str]]`): the target text of each row, or a list of acceptable target
        texts for each row (at least one each); as many rows as ``predictions``.
"""


def _missing_backend(package: str, metric: str) -> ImportError:
    return ImportError(
        f"the {metric} metric needs the `{package}` package, which is not installed: pip install {package}"
    )


# The metrics' libraries are imported when a metric is built or computed, so that this module imports without them.
def _rouge_scorer() -> Any:
    try:
        from rouge_score import rouge_scorer
    except ImportError as error:
        raise _missing_backend("rouge-score", "rouge") from error
    return rouge_scorer


def _sacrebleu(metric: str) -> Any:
    try:
        import sacrebleu
    except ImportError as error:
        raise _missing_backend("sacrebleu", metric) from error
    return sacrebleu


def _reference_lists(references: Sequence[str | Sequence[str]], metric: str) -> list[list[str]]:
    """Each row's references as a list of strings (a plain string is a one-reference list)."""
    rows = []
    for index, reference in enumerate(references):
        row = [reference] if isinstance(reference, str) else list(reference)
        if not row:
            raise ValueError(f"{metric}: row {index} has an empty list of references: give each row at least one")
        rows.append(row)
    return rows


class _TextMetric(evaluate.Metric):
    """What the text metrics share: offline info, results in memory by default, and row checks."""

    _description = ""
    _citation = ""
    _reference = ""

    def __init__(self, *, keep_in_memory: bool = True, **kwargs: Any) -> None:
        super().__init__(keep_in_memory=keep_in_memory, **kwargs)

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=self._description,
            citation=self._citation,
            inputs_description=_INPUTS,
            features=_FEATURES,
            reference_urls=[self._reference] if self._reference else [],
        )

    def _build_data_dir(self) -> str:
        # evaluate 0.4.6 creates HF_HOME/metrics/<name>/<config> for every metric, even one that keeps its rows in
        # memory and never writes there (softprompt_hf/core/upstream.py, entry 33).
        if self.keep_in_memory:
            return os.path.join(self._data_dir_root, self.name, self.config_name)
        return super()._build_data_dir()

    def _count_rows(self, predictions: Any, references: Any) -> int:
        """The rows of one batch, after checking that it has both inputs and as many of each."""
        if (predictions is None) != (references is None):
            raise ValueError(f"{self.name}: pass both predictions= and references=")
        if predictions is None:
            return 0
        if len(predictions) != len(references):
            raise ValueError(
                f"{self.name}: {len(predictions)} predictions but {len(references)} references: give one reference (or "
                "one list of references) per prediction"
            )
        return len(predictions)

    def add_batch(self, *, predictions: Any = None, references: Any = None, **kwargs: Any) -> None:
        """Adds a batch of rows (as many predictions as references) to score at the next ``compute()``."""
        # evaluate 0.4.6 fails on an empty first batch (IndexError; core/upstream.py, entry 33); it would add nothing.
        if self._count_rows(predictions, references) > 0:
            super().add_batch(predictions=predictions, references=references, **kwargs)

    def compute(self, *, predictions: Any = None, references: Any = None, **kwargs: Any) -> dict[str, Any] | None:
        """Scores ``predictions`` against ``references``, after any rows added with ``add_batch``."""
        if self._count_rows(predictions, references) == 0 and len(self) == 0:
            raise ValueError(
                f"{self.name}: no rows to score: pass non-empty predictions= and references=, or add_batch() first"
            )
        return super().compute(predictions=predictions, references=references, **kwargs)


class Rouge(_TextMetric):
    """ROUGE-N and ROUGE-L F-measures with Google's ``rouge_score`` package, averaged over rows.

    Each key (``rouge1``, ``rouge2``, ``rougeL``, ``rougeLsum`` by default) is the plain mean over rows of that row's
    F-measure, on a 0-1 scale: deterministic, and not the bootstrap "mid" aggregate that ``rouge_score``'s
    ``BootstrapAggregator`` (and ``evaluate.load("rouge")`` with ``use_aggregator=True``) reports. With several
    references for a row, the row scores its best reference (``RougeScorer.score_multi``).

    ``rougeLsum`` is summary-level ROUGE-L: it splits both texts into sentences at newlines, ``rouge_score``'s
    convention, so put ``"\\n"`` between the sentences of a multi-sentence summary; without newlines it equals
    ``rougeL``.

    Args:
        rouge_types (`Sequence[str]`, *optional*): which scores to report, among ``"rouge1"`` to ``"rouge9"``,
            ``"rougeL"`` and ``"rougeLsum"``.
        use_stemmer (`bool`, *optional*, defaults to `True`): Porter-stem words before matching, as summarisation
            papers report ROUGE (the original ROUGE-1.5.5 with ``-m``) and as transformers' summarisation example
            does. ``rouge_score`` and ``evaluate.load("rouge")`` default to ``False``: pass ``False`` to compare with
            their numbers.
        tokenizer (*optional*): an object with ``.tokenize(text) -> list[str]``, used instead of ``rouge_score``'s
            default tokenizer (then ``use_stemmer`` is ignored). The default tokenizer lowercases and keeps ASCII
            letters and digits only, so text in other scripts loses its words: pass a tokenizer for it.
        keep_in_memory (`bool`, *optional*, defaults to `True`), **kwargs: as for any ``evaluate.Metric``.

    Example:

    ```python
    >>> from softprompt_hf.evaluation.text_metrics import Rouge
    >>> rouge = Rouge(rouge_types=["rouge1", "rougeL"])
    >>> rouge.compute(predictions=["the cat sat on the mat"], references=["the cat lay on the mat"])
    {'rouge1': 0.8333333333333334, 'rougeL': 0.8333333333333334}

    ```
    """

    _description = "ROUGE-N / ROUGE-L F-measure (rouge_score), the mean over rows; 0 to 1."
    _citation = (
        "@inproceedings{lin-2004-rouge, title={{ROUGE}: A Package for Automatic Evaluation of Summaries}, "
        "author={Lin, Chin-Yew}, booktitle={Text Summarization Branches Out}, year={2004}, pages={74--81}}"
    )
    _reference = "https://github.com/google-research/google-research/tree/master/rouge"

    def __init__(
        self,
        rouge_types: Sequence[str] = _DEFAULT_ROUGE_TYPES,
        use_stemmer: bool = True,
        tokenizer: Any | None = None,
        **kwargs: Any,
    ) -> None:
        rouge_types = [rouge_types] if isinstance(rouge_types, str) else list(rouge_types)
        invalid = [name for name in rouge_types if not _ROUGE_TYPE.fullmatch(name)]
        if not rouge_types or invalid or len(set(rouge_types)) != len(rouge_types):
            raise ValueError(
                f"rouge_types={rouge_types!r}: give distinct names among 'rouge1' to 'rouge9', 'rougeL', 'rougeLsum'"
            )
        _rouge_scorer()
        self.rouge_types = rouge_types
        self.use_stemmer = use_stemmer
        self.tokenizer = tokenizer
        super().__init__(**kwargs)

    def _compute(self, predictions: list[str], references: list[Any]) -> dict[str, float]:
        rouge_scorer = _rouge_scorer()
        scorer = rouge_scorer.RougeScorer(self.rouge_types, use_stemmer=self.use_stemmer, tokenizer=self.tokenizer)
        rows = _reference_lists(references, self.name)
        if self.tokenizer is None:
            self._warn_about_lost_words(rows)
        totals = dict.fromkeys(self.rouge_types, 0.0)
        for prediction, row in zip(predictions, rows, strict=True):
            scores = scorer.score(row[0], prediction) if len(row) == 1 else scorer.score_multi(row, prediction)
            for name in self.rouge_types:
                totals[name] += scores[name].fmeasure
        return {name: total / len(predictions) for name, total in totals.items()}

    @staticmethod
    def _warn_about_lost_words(rows: list[list[str]]) -> None:
        """The default tokenizer drops every non-ASCII letter: a reference with text but no tokens is a sign of it."""
        from rouge_score.tokenizers import DefaultTokenizer

        tokenize = DefaultTokenizer(use_stemmer=False).tokenize
        empty = sum(1 for row in rows for text in row if text.strip() and not tokenize(text))
        if empty:
            logger.warning(
                "Rouge: %d reference(s) have text but no tokens for rouge_score's default tokenizer, which keeps ASCII "
                "letters and digits only; pass Rouge(tokenizer=...) for text in other scripts.",
                empty,
            )


class Bleu(_TextMetric):
    """Corpus BLEU with ``sacrebleu.corpus_bleu``, on sacrebleu's 0-100 scale.

    BLEU is a corpus statistic (n-gram counts summed over all rows, then one brevity penalty), not a mean of row
    scores. Rows may have different numbers of references.

    Args:
        tokenize (`str`, *optional*, defaults to `"13a"`): sacrebleu's tokenizer (``"13a"``, ``"intl"``, ``"zh"``,
            ``"ja-mecab"``, ``"char"``, ``"none"``, ...).
        lowercase (`bool`, *optional*, defaults to `False`): compare lowercased texts.
        keep_in_memory (`bool`, *optional*, defaults to `True`), **kwargs: as for any ``evaluate.Metric``.

    Example:

    ```python
    >>> from softprompt_hf.evaluation.text_metrics import Bleu
    >>> predictions = ["the cat sat on the mat", "a dog barked"]
    >>> references = ["the cat sat on the mat", "a dog barked at the mailman"]
    >>> round(Bleu().compute(predictions=predictions, references=references)["bleu"], 2)
    71.65
    >>> Bleu().compute(predictions=["the cat sat"], references=["the cat sat"])  # no 4-grams at all: BLEU is 0
    {'bleu': 0.0}

    ```
    """

    _description = "Corpus BLEU (sacrebleu); 0 to 100."
    _citation = (
        "@inproceedings{post-2018-call, title={A Call for Clarity in Reporting {BLEU} Scores}, author={Post, Matt}, "
        "booktitle={Proceedings of the Third Conference on Machine Translation}, year={2018}, pages={186--191}}"
    )
    _reference = "https://github.com/mjpost/sacrebleu"

    def __init__(self, tokenize: str = "13a", lowercase: bool = False, **kwargs: Any) -> None:
        _sacrebleu("bleu")
        self.tokenize = tokenize
        self.lowercase = lowercase
        super().__init__(**kwargs)

    def _compute(self, predictions: list[str], references: list[Any]) -> dict[str, float]:
        sacrebleu = _sacrebleu("bleu")
        streams = _reference_streams(_reference_lists(references, self.name))
        score = sacrebleu.corpus_bleu(predictions, streams, tokenize=self.tokenize, lowercase=self.lowercase)
        return {"bleu": float(score.score)}


class Chrf(_TextMetric):
    """Corpus chrF (character n-gram F-score) with ``sacrebleu.corpus_chrf``, on sacrebleu's 0-100 scale.

    Args:
        word_order (`int`, *optional*, defaults to `0`): word n-gram order; ``2`` gives chrF++.
        keep_in_memory (`bool`, *optional*, defaults to `True`), **kwargs: as for any ``evaluate.Metric``.

    Example:

    ```python
    >>> from softprompt_hf.evaluation.text_metrics import Chrf
    >>> Chrf().compute(predictions=["a summary"], references=["a summary"])
    {'chrf': 100.0}

    ```
    """

    _description = "Corpus chrF (sacrebleu); 0 to 100."
    _citation = (
        "@inproceedings{popovic-2015-chrf, title={chr{F}: character n-gram {F}-score for automatic {MT} evaluation}, "
        "author={Popovi{\\'c}, Maja}, booktitle={Proceedings of the Tenth Workshop on Statistical Machine "
        "Translation}, year={2015}, pages={392--395}}"
    )
    _reference = "https://github.com/mjpost/sacrebleu"

    def __init__(self, word_order: int = 0, **kwargs: Any) -> None:
        _sacrebleu("chrf")
        self.word_order = word_order
        super().__init__(**kwargs)

    def _compute(self, predictions: list[str], references: list[Any]) -> dict[str, float]:
        sacrebleu = _sacrebleu("chrf")
        streams = _reference_streams(_reference_lists(references, self.name))
        return {"chrf": float(sacrebleu.corpus_chrf(predictions, streams, word_order=self.word_order).score)}


def _reference_streams(rows: list[list[str]]) -> list[list[str | None]]:
    """Rows of references -> sacrebleu's reference streams (one list per reference position; ``None`` where a row
    has fewer references)."""
    depth = max(len(row) for row in rows)
    return [[row[i] if i < len(row) else None for row in rows] for i in range(depth)]


class ExactMatch(_TextMetric):
    """The fraction of rows whose prediction equals its reference (or one of them), 0 to 1.

    Both texts lose their surrounding whitespace first; inner whitespace counts.

    Args:
        ignore_case (`bool`, *optional*, defaults to `False`): compare casefolded texts.
        ignore_punctuation (`bool`, *optional*, defaults to `False`): delete every punctuation character (Unicode
            category P*, so ``"`` and ``«`` as well as ``.``) before comparing.
        keep_in_memory (`bool`, *optional*, defaults to `True`), **kwargs: as for any ``evaluate.Metric``.

    Example:

    ```python
    >>> from softprompt_hf.evaluation.text_metrics import ExactMatch
    >>> ExactMatch().compute(predictions=[" Paris ", "paris"], references=["Paris", "Paris"])
    {'exact_match': 0.5}
    >>> ExactMatch(ignore_case=True).compute(predictions=[" Paris ", "paris"], references=["Paris", "Paris"])
    {'exact_match': 1.0}

    ```
    """

    _description = "Exact match after stripping surrounding whitespace (optionally case and punctuation); 0 to 1."

    def __init__(self, ignore_case: bool = False, ignore_punctuation: bool = False, **kwargs: Any) -> None:
        self.ignore_case = ignore_case
        self.ignore_punctuation = ignore_punctuation
        super().__init__(**kwargs)

    def _normalize(self, text: str) -> str:
        if self.ignore_punctuation:
            text = "".join(char for char in text if not unicodedata.category(char).startswith("P"))
        if self.ignore_case:
            text = text.casefold()
        return text.strip()

    def _compute(self, predictions: list[str], references: list[Any]) -> dict[str, float]:
        rows = _reference_lists(references, self.name)
        matches = sum(
            self._normalize(prediction) in {self._normalize(text) for text in row}
            for prediction, row in zip(predictions, rows, strict=True)
        )
        return {"exact_match": matches / len(predictions)}


TEXT_METRICS: dict[str, type[_TextMetric]] = {
    "rouge": Rouge,
    "bleu": Bleu,
    "chrf": Chrf,
    "exact_match": ExactMatch,
}
"""The shipped text metrics by name, for [`load_text_metric`]."""


def load_text_metric(name: str, **kwargs: Any) -> evaluate.Metric:
    """Builds a shipped text metric by name, offline (unlike ``evaluate.load``, which looks the name up on the Hub).

    Args:
        name (`str`): one of ``TEXT_METRICS``: ``"rouge"``, ``"bleu"``, ``"chrf"``, ``"exact_match"``.
        **kwargs: the metric's options (e.g. ``use_stemmer=False`` for ``"rouge"``, ``ignore_case=True`` for
            ``"exact_match"``).

    Raises:
        ValueError: for a name not shipped here.
        ImportError: when the metric's library (``rouge-score``, ``sacrebleu``) is not installed.

    Example:

    ```python
    >>> from softprompt_hf.evaluation.text_metrics import load_text_metric
    >>> load_text_metric("exact_match", ignore_case=True).compute(predictions=["YES"], references=["yes"])
    {'exact_match': 1.0}

    ```
    """
    metric = TEXT_METRICS.get(name)
    if metric is None:
        raise ValueError(
            f"unknown text metric {name!r}: softprompt_hf ships {', '.join(map(repr, TEXT_METRICS))}. Any object with "
            ".compute(predictions=..., references=...) that returns a dict can be used instead, e.g. "
            "evaluate.load('bertscore') (it needs the Hub) or evaluate.combine([...])."
        )
    return metric(**kwargs)


def default_text_metrics() -> evaluate.CombinedEvaluations:
    """ROUGE, BLEU, chrF and exact match in one object, with default options.

    Its ``compute`` returns seven keys, flat: ``rouge1``, ``rouge2``, ``rougeL``, ``rougeLsum`` (0 to 1), ``bleu``,
    ``chrf`` (0 to 100) and ``exact_match`` (0 to 1).

    Example:

    ```python
    >>> from softprompt_hf.evaluation.text_metrics import default_text_metrics
    >>> metrics = default_text_metrics()
    >>> scores = metrics.compute(
    ...     predictions=["the committee approved the budget on tuesday"],
    ...     references=["the committee approved the new budget on tuesday"],
    ... )
    >>> list(scores)
    ['rouge1', 'rouge2', 'rougeL', 'rougeLsum', 'bleu', 'chrf', 'exact_match']
    >>> round(scores["rouge1"], 3), round(scores["bleu"], 1), round(scores["chrf"], 1), scores["exact_match"]
    (0.933, 51.5, 86.8, 0.0)

    ```
    """
    return evaluate.combine([Rouge(), Bleu(), Chrf(), ExactMatch()])
