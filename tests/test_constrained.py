"""Constrained decoding (mode="constrained"): greedy over the tokens that continue some label, from a prefix tree
of the labels' token ids, with only those tokens' rows of the output layer computed."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import (
    ARCHS,
    METHODS,
    SLIDING_ARCHS,
    labelled_rows,
    model_config,
    next_token_logits,
    tiny_soft_prompt_model,
    window_crossing_texts,
)
from trained_adapters import EMBEDDED_TEMPLATE, embedded_adapter, embedded_texts
from transformers import AutoModelForCausalLM

from softprompt_hf import GenerationMetrics
from softprompt_hf.cli import build_parser
from softprompt_hf.cli import main as cli_main
from softprompt_hf.constants import LABEL_TOKENIZATIONS, MODES
from softprompt_hf.data.prompt import PromptTemplate
from softprompt_hf.inference.engine import CachedDecoder
from softprompt_hf.inference.labels import constrained_labels, generate_label_ids
from softprompt_hf.inference.loops import LabelTrie
from softprompt_hf.inference.output_head import ChunkedOutputHead
from softprompt_hf.serving.predict import predict
from softprompt_hf.training.arguments import parse_recipe_args

EOS = 2
# "no" is a prefix of "no complaint"; "complaint" and "no complaint" share their last tokens.
LABELS = ["complaint", "no complaint", "no"]
SEPARATE = PromptTemplate(EMBEDDED_TEMPLATE, "Tweet text", "separate")


def _fixed_logits(values: dict[int, float]):
    """token_logits for one row whose logit of token t is values[t] (0 for any other token)."""
    return lambda tokens: torch.tensor([[values.get(int(t), 0.0) for t in tokens]])


def test_the_trie_follows_shared_prefixes_and_stops_once_one_label_is_left():
    # "a" = [5, EOS] is a prefix of "a b" = [5, 6, EOS]; "c d e" is multi-token and alone after its first token.
    trie = LabelTrie(["a", "a b", "c d e"], [[5, EOS], [5, 6, EOS], [7, 8, 9, EOS]], (EOS,))
    root = trie.children[0]
    assert sorted(root) == [5, 7] and trie.settled[0] is None
    after_a = root[5]
    assert sorted(trie.children[after_a]) == [EOS, 6] and trie.settled[after_a] is None
    assert trie.settled[trie.children[after_a][EOS]] == "a"
    assert trie.settled[trie.children[after_a][6]] == "a b"
    assert trie.settled[root[7]] == "c d e"  # the rest is forced: decoding stops after the first token
    assert trie.depth == 4
    # Only the node's own children compete: a higher logit elsewhere does not count.
    assert trie.choose([0], _fixed_logits({5: 1.0, 7: 2.0, 6: 9.0, EOS: 9.0}), torch.device("cpu")) == [7]
    # EOS against the longer label's next token, whichever scores higher.
    assert trie.choose([after_a], _fixed_logits({EOS: 3.0, 6: 1.0}), torch.device("cpu")) == [EOS]
    assert trie.choose([after_a], _fixed_logits({EOS: 1.0, 6: 3.0}), torch.device("cpu")) == [6]
    # A tie goes to the lowest token id (row 1: 5 before 7), as an argmax over the vocabulary picks.
    # Rows at different nodes at once: candidates 2 (EOS), 5, 6, 7; row 2's 5 and 7 are not its candidates.
    both = lambda tokens: torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 5.0, 1.0, 5.0]])  # noqa: E731
    assert trie.choose([0, after_a], both, torch.device("cpu")) == [5, 6]
    assert LabelTrie(["only"], [[4, EOS]], (EOS,)).settled[0] == "only"


def test_the_trie_refuses_labels_it_cannot_tell_apart_or_that_hold_eos():
    with pytest.raises(ValueError, match="'Yes' and 'yes' have the same token ids"):
        LabelTrie(["Yes", "yes"], [[5, EOS], [5, EOS]], (EOS,))
    with pytest.raises(ValueError, match=r"stop token \(EOS, or .*\) before its end"):
        LabelTrie(["a</s>b"], [[5, EOS, 6, EOS]], (EOS,))
    with pytest.raises(ValueError, match="at least one label"):
        LabelTrie([], [], (EOS,))


@torch.no_grad()
def _reference_labels(model, tokenizer, texts, labels, template):
    """Constrained greedy decoding written out on the model's own training forward, one text at a time and with
    no trie: the candidates are the next tokens of the labels whose ids start with the tokens so far, and
    decoding runs to the end of a label's ids (EOS included), never stopping early."""
    label_ids = {label: template.encode_target(tokenizer, label) for label in labels}
    answers = []
    for text in texts:
        prompt, path = template.encode(tokenizer, text), []
        while path not in label_ids.values():
            ids = torch.tensor([prompt + path])
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1]
            candidates = sorted({ids[len(path)] for ids in label_ids.values() if ids[: len(path)] == path})
            path.append(max(candidates, key=lambda token: (float(logits[token]), -token)))
        answers.append(next(label for label, ids in label_ids.items() if ids == path))
    return answers


@pytest.mark.parametrize("label_tokenization", LABEL_TOKENIZATIONS)
@pytest.mark.parametrize("method", METHODS)
def test_constrained_labels_are_the_greedy_path_through_the_labels(tokenizer, method, label_tokenization):
    """Against a plain one-by-one reference with the labels tokenized as training and rank scoring tokenize them
    (the template's label_tokenization), labels sharing prefixes and one label a prefix of another."""
    template = PromptTemplate(label_tokenization=label_tokenization)
    ids = [template.encode_target(tokenizer, label) for label in LABELS]
    assert ids[2][:-1] == ids[1][:1] and len(ids[0]) > 2, "the test needs a label that is a prefix of another"
    model = tiny_soft_prompt_model(tokenizer, "llama", method).eval()
    texts = [row["Tweet text"] for row in labelled_rows(12)]
    got = constrained_labels(model, tokenizer, texts, LABELS, template=template, batch_size=4, show_progress=False)
    assert got == _reference_labels(model, tokenizer, texts, LABELS, template)
    assert len(set(got)) > 1, "every row got the same label: the test would be blind"


def _gemma_softcapped(tokenizer, cap: float = 2.0):
    config = model_config("gemma3_text", len(tokenizer))
    config.final_logit_softcapping = cap
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def _models_with_their_own_logits(tokenizer):
    """GPT-2, Llama and Bloom with a soft prompt; a Gemma 3 that soft-caps its logits; a Llama with an output bias."""
    models = {arch: tiny_soft_prompt_model(tokenizer, arch, "prompt_tuning") for arch in ARCHS}
    models["gemma3_softcap"] = _gemma_softcapped(tokenizer)
    torch.manual_seed(1)
    biased = AutoModelForCausalLM.from_config(model_config("llama", len(tokenizer)))
    biased.lm_head.bias = torch.nn.Parameter(torch.randn(len(tokenizer)))  # nn.Linear adds a registered bias
    models["llama_bias"] = biased
    return models


@torch.no_grad()
def test_restricted_logits_equal_the_full_logits_entries(tokenizer):
    texts = [row["Tweet text"] for row in labelled_rows(6)]
    prompts = [PromptTemplate().encode(tokenizer, text) for text in texts]
    tokens = torch.tensor([0, 2, 7, 50, 51, len(tokenizer) - 1])
    for name, model in _models_with_their_own_logits(tokenizer).items():
        model.eval()
        full = next_token_logits(model, tokenizer, texts)
        decoder = CachedDecoder(model, prompts, softcapped_head=True)
        assert decoder.head is not None, name  # soft-capping and a bias are applied by the head itself
        restricted = torch.cat([decoder.start([ids]).last for ids in prompts])
        got = decoder.token_logits(restricted, tokens)
        assert got.shape == (len(texts), len(tokens))
        torch.testing.assert_close(got, full[:, tokens], rtol=0, atol=1e-4, msg=name)
        if name == "gemma3_softcap":
            assert decoder.head.softcap == 2.0 and float(full.abs().max()) < 2.0
            raw = decoder.head.layer(restricted)[:, tokens]
            assert float((raw - got).abs().max()) > 1e-2, "the cap changes these logits: the test would be blind"
    # Generate and rank mode keep the model's own logits for a soft-capping model, as before.
    assert ChunkedOutputHead.of(_gemma_softcapped(tokenizer)) is None


@pytest.mark.parametrize("softcap", [False, True])
def test_the_output_layer_projects_no_position_after_the_first_forward(tokenizer, softcap):
    """After the first forward (where the decoder checks that the model's logits are its output layer's output),
    the output layer itself runs on no position at all: every step projects only the candidate tokens' rows."""
    model = _gemma_softcapped(tokenizer) if softcap else tiny_soft_prompt_model(tokenizer, "gpt2", "p_tuning")
    layer = model.get_output_embeddings()
    projected: list[int] = []
    handle = layer.register_forward_hook(lambda module, args, output: projected.append(output.shape[-2]))
    texts = [row["Tweet text"] for row in labelled_rows(8)]
    labels = constrained_labels(model, tokenizer, texts, LABELS, batch_size=4, show_progress=False)
    handle.remove()
    assert set(labels) <= set(LABELS)
    assert len(projected) > 2 and projected[0] > 0 and set(projected[1:]) == {0}


@pytest.mark.parametrize("arch", ARCHS + SLIDING_ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_labels_do_not_depend_on_batch_size_or_the_cache(tokenizer, arch, method):
    """Batches of prompts of mixed lengths (masked right padding; with a sliding window, padding only within it)
    give the labels of one-by-one decoding and of the full forward without a cache. Labels, not scores."""
    model = tiny_soft_prompt_model(tokenizer, arch, method)
    texts = window_crossing_texts() if arch in SLIDING_ARCHS else [row["Tweet text"] for row in labelled_rows(12)]
    texts += ["@Acme hi", "@Acme a much longer tweet " * 3]
    options = {"show_progress": False}
    batched = constrained_labels(model, tokenizer, texts, LABELS, batch_size=16, **options)
    assert batched == constrained_labels(model, tokenizer, texts, LABELS, batch_size=1, **options)
    assert batched == constrained_labels(model, tokenizer, texts, LABELS, batch_size=3, use_cache=False, **options)
    assert set(batched) <= set(LABELS)
    if arch != "bloom":  # the random tiny Bloom answers "complaint" after every prompt, whatever the soft prompt
        assert len(set(batched)) > 1, "every row got the same label: the test would be blind"


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """For each method: an untrained soft prompt on the embedded model that answers varied labels, and, for some
    rows, no label at all (trained_adapters.EMBEDDED_ADAPTERS): (model, tokenizer, saved folder, labels)."""
    return {method: embedded_adapter(method, tmp_path_factory.mktemp(method) / "adapter") for method in METHODS}


def _saved_template(folder) -> PromptTemplate:
    settings = json.loads((folder / "softprompt_hf.json").read_text())
    return PromptTemplate(settings["template"], settings["text_column"], settings["label_tokenization"])


@pytest.mark.parametrize("method", METHODS)
def test_constrained_gives_greedy_generations_label_wherever_it_generates_a_labels_tokens(embedded, method):
    """The invariant: where greedy decoding over the whole vocabulary generates exactly a label's token ids (and
    EOS), its argmax was one of the label trie's candidates at every step, so the argmax over the candidates is
    the same token and constrained decoding answers that label. Elsewhere it still answers a label.

    With the seed's separate tokenization, the one the embedded model was pretrained with (the recipes keep it for
    that model): with the joint one, this untrained prompt generates a lone space token before the word
    (['Ġ', 'positive']), which matches the label's text but not its tokens (['Ġpositive']), so no row would test
    the invariant."""
    model, tokenizer, _, labels = embedded[method]
    template = SEPARATE
    texts = embedded_texts(16)
    ids = {tuple(template.encode_target(tokenizer, label)): label for label in labels}
    generated = generate_label_ids(
        model, tokenizer, texts, template=template, max_new_tokens=max(map(len, ids)), show_progress=False
    )
    constrained = constrained_labels(model, tokenizer, texts, labels, template=template, batch_size=5)
    exact = [(ids[tuple(row)], answer) for row, answer in zip(generated, constrained, strict=True) if tuple(row) in ids]
    assert exact, "greedy decoding generated no label's tokens: the invariant would not be tested"
    assert all(label == answer for label, answer in exact)
    assert set(constrained) <= set(labels)
    if method != "prompt_tuning":  # these generate outputs that are no label (test_predict.py checks it too)
        assert len(exact) < len(texts)


@pytest.mark.parametrize("method", ["p_tuning", "prefix_tuning"])
def test_generation_metrics_constrained_mode_is_never_invalid(embedded, method):
    model, tokenizer, _, labels = embedded[method]
    texts = embedded_texts(16)
    rows = [{"Tweet text": text, "text_label": labels[i % len(labels)]} for i, text in enumerate(texts)]
    options = {"template": EMBEDDED_TEMPLATE, "batch_size": 4, "label_tokenization": "separate"}
    generate = GenerationMetrics(tokenizer, labels, rows, **options).evaluate(model)
    assert generate["invalid_rate"] > 0  # the same rows and model answer no label by free generation
    metrics = GenerationMetrics(tokenizer, labels, rows, mode="constrained", **options)
    scored = metrics.evaluate(model)
    assert scored["invalid_rate"] == 0
    predicted = [p.predicted for p in metrics.last_predictions]
    assert predicted == [p.output for p in metrics.last_predictions] and set(predicted) <= set(labels)
    right = sum(label == row["text_label"] for label, row in zip(predicted, rows, strict=True))
    assert scored["accuracy"] == right / len(rows)
    assert [p.scores for p in metrics.last_predictions] == [None] * len(rows)


def test_predict_and_the_cli_run_the_constrained_mode(embedded, tmp_path, capsys):
    model, tokenizer, folder, labels = embedded["p_tuning"]
    texts = embedded_texts(8)
    expected = constrained_labels(model, tokenizer, texts, labels, template=_saved_template(folder))
    assert [p.predicted for p in predict(folder, texts, mode="constrained", batch_size=3)] == expected
    in_memory = predict(
        model, texts, tokenizer=tokenizer, template=EMBEDDED_TEMPLATE, labels=labels, mode="constrained"
    )
    assert [p.predicted for p in in_memory] == constrained_labels(
        model, tokenizer, texts, labels, template=PromptTemplate(EMBEDDED_TEMPLATE)
    )
    args = ["predict", str(folder), "--mode", "constrained", "--batch-size", "2", "--format", "jsonl"]
    assert cli_main([*args, *[flag for text in texts for flag in ("--text", text)]]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(row["output"], row["predicted"]) for row in lines] == list(zip(expected, expected, strict=True))


def test_every_entry_point_names_the_mode(tmp_path):
    assert "constrained" in MODES
    args = parse_recipe_args("prompt_tuning", ["--eval_mode", "constrained", "--output_dir", str(tmp_path)])
    assert args.training.eval_mode == "constrained"
    assert build_parser().parse_args(["predict", "me/adapter", "--mode", "constrained"]).mode == "constrained"
