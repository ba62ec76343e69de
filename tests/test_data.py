import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math  # noqa: E402
from collections import Counter  # noqa: E402

import datasets  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from softprompt_hf.data.loading import (  # noqa: E402
    RAFT_CLASS_NAMES,
    ClassificationData,
    label_text,
    load_classification_data,
    load_raft,
)
from softprompt_hf.data.splits import k_fold_splits, stratified_split  # noqa: E402

# RAFT-like data: 18 complaints and 12 non-complaints (uneven, so stratification is visible), two
# Unlabeled rows mixed into train, and an all-Unlabeled test split.
N_COMPLAINT, N_NO_COMPLAINT, N_UNLABELED_TRAIN, N_TEST = 18, 12, 2, 10
N_LABELLED = N_COMPLAINT + N_NO_COMPLAINT


def raft_frames() -> dict[str, pd.DataFrame]:
    labels = [1] * N_COMPLAINT + [2] * N_NO_COMPLAINT + [0] * N_UNLABELED_TRAIN
    order = sorted(range(len(labels)), key=lambda i: (i * 7) % len(labels))  # interleave the classes
    train = pd.DataFrame(
        {
            "Tweet text": [f"tweet number {i}" for i in range(len(labels))],
            "ID": list(range(len(labels))),
            "Label": [labels[i] for i in order],
        }
    )
    test = pd.DataFrame(
        {
            "Tweet text": [f"unlabelled tweet {i}" for i in range(N_TEST)],
            "ID": list(range(100, 100 + N_TEST)),
            "Label": [0] * N_TEST,
        }
    )
    return {"train": train, "test": test}


def raft_features() -> datasets.Features:
    return datasets.Features(
        {
            "Tweet text": datasets.Value("string"),
            "ID": datasets.Value("int64"),
            "Label": datasets.ClassLabel(names=RAFT_CLASS_NAMES),
        }
    )


def raft_dataset_dict() -> datasets.DatasetDict:
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_pandas(frame, features=raft_features(), preserve_index=False)
            for split, frame in raft_frames().items()
        }
    )


def load_raft_memory(**kwargs) -> ClassificationData:
    return load_classification_data(
        raft_dataset_dict(), text_column="Tweet text", label_column="Label", id_column="ID", **kwargs
    )


def write_raft_files(directory, fmt: str, label_kind: str) -> dict[str, str]:
    paths = {}
    for split, frame in raft_frames().items():
        if label_kind == "str":
            frame = frame.assign(Label=[RAFT_CLASS_NAMES[label] for label in frame["Label"]])
        path = directory / f"{split}.{fmt}"
        if fmt == "csv":
            frame.to_csv(path, index=False)
        elif fmt == "jsonl":
            frame.to_json(path, orient="records", lines=True)
        elif label_kind == "classlabel":
            datasets.Dataset.from_pandas(frame, features=raft_features(), preserve_index=False).to_parquet(path)
        else:
            frame.to_parquet(path, index=False)
        paths[split] = str(path)
    return paths


def ids(dataset: datasets.Dataset | None) -> list[int]:
    return [] if dataset is None else list(dataset["ID"])


def labels_of(dataset: datasets.Dataset, column: str = "Label") -> Counter:
    return Counter(dataset[column])


def test_label_text():
    assert label_text("no_complaint") == "no complaint"
    assert label_text("complaint") == "complaint"
    assert label_text("a_b_c") == "a b c"


@pytest.mark.parametrize(
    ("fmt", "label_kind"),
    [("csv", "int"), ("csv", "str"), ("jsonl", "int"), ("jsonl", "str"), ("parquet", "classlabel")],
)
def test_load_raft_from_local_files(tmp_path, fmt, label_kind):
    files = write_raft_files(tmp_path, fmt, label_kind)
    data = load_raft(data_files=files, cache_dir=str(tmp_path / "cache"))

    assert data.classes == ["complaint", "no complaint"]
    assert data.class_names == ["complaint", "no_complaint"]
    assert (data.text_column, data.label_column, data.target_column, data.id_column) == (
        "Tweet text",
        "Label",
        "text_label",
        "ID",
    )
    assert data.unlabeled_class == "Unlabeled"
    # Original columns kept, in order; the label column is a ClassLabel over all RAFT names.
    assert data.train.column_names == ["Tweet text", "ID", "Label", "text_label"]
    assert data.train.features["Label"].names == RAFT_CLASS_NAMES
    assert data.validation is not None and data.unlabeled is not None
    assert len(data.train) + len(data.validation) == N_LABELLED
    assert len(data.validation) == 6  # 0.2 * 30

    # Unlabeled rows: out of train and validation, all kept (from both splits) in `unlabeled`.
    assert 0 not in data.train["Label"] and 0 not in data.validation["Label"]
    assert set(data.unlabeled["Label"]) == {0}
    assert len(data.unlabeled) == N_UNLABELED_TRAIN + N_TEST
    assert set(range(100, 100 + N_TEST)) <= set(ids(data.unlabeled))
    assert "text_label" not in data.unlabeled.column_names

    # The target is the class name with "_" replaced by a space, row by row.
    expected = {0: "Unlabeled", 1: "complaint", 2: "no complaint"}
    frame = raft_frames()["train"].set_index("ID")
    for split in (data.train, data.validation):
        for row in split:
            assert row["text_label"] == expected[row["Label"]]
            assert row["Label"] == frame.loc[row["ID"], "Label"]
            assert row["Tweet text"] == frame.loc[row["ID"], "Tweet text"]


def test_files_match_in_memory_split(tmp_path):
    files = write_raft_files(tmp_path, "csv", "int")
    from_files = load_raft(data_files=files, cache_dir=str(tmp_path / "cache"), seed=3)
    in_memory = load_raft_memory(seed=3)
    assert ids(from_files.train) == ids(in_memory.train)
    assert ids(from_files.validation) == ids(in_memory.validation)


def test_load_raft_single_file_and_list(tmp_path):
    files = write_raft_files(tmp_path, "csv", "str")
    cache = str(tmp_path / "cache")
    single = load_raft(data_files=files["train"], cache_dir=cache, validation_size=0)
    assert single.validation is None
    assert len(single.train) == N_LABELLED
    assert len(single.unlabeled) == N_UNLABELED_TRAIN
    pooled = load_raft(data_files=[files["train"], files["test"]], cache_dir=cache, validation_size=0)
    assert len(pooled.unlabeled) == N_UNLABELED_TRAIN + N_TEST


def test_load_raft_without_network_says_to_pass_local_files(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError, match="data_files"):
        load_raft()


@pytest.mark.parametrize(("size", "expected"), [(0.2, 6), (0.25, 8), (0.5, 15), (0.01, 1), (7, 7), (1, 1), (28, 28)])
def test_validation_size_fraction_or_count(size, expected):
    data = load_raft_memory(validation_size=size)
    assert len(data.validation) == expected
    assert len(data.train) == N_LABELLED - expected
    # Every class stays in train, however large the validation split.
    assert set(data.train["Label"]) == {1, 2}


def test_validation_size_zero_gives_no_validation():
    data = load_raft_memory(validation_size=0)
    assert data.validation is None
    assert len(data.train) == N_LABELLED


@pytest.mark.parametrize("size", [0.2, 0.5, 7, 11, 0.9])
def test_validation_is_stratified(size):
    data = load_raft_memory(validation_size=size)
    n_validation = len(data.validation)
    counts = labels_of(data.validation)
    for label, n_class in ((1, N_COMPLAINT), (2, N_NO_COMPLAINT)):
        assert abs(counts[label] - n_validation * n_class / N_LABELLED) < 1


def test_split_has_no_overlap_and_full_coverage():
    data = load_raft_memory(validation_size=0.3)
    train_ids, validation_ids = set(ids(data.train)), set(ids(data.validation))
    assert not train_ids & validation_ids
    assert len(train_ids) + len(validation_ids) == N_LABELLED
    labelled_ids = {
        i for i, label in zip(raft_frames()["train"]["ID"], raft_frames()["train"]["Label"], strict=True) if label
    }
    assert train_ids | validation_ids == labelled_ids


def test_split_is_deterministic_per_seed():
    first, again, other = load_raft_memory(seed=0), load_raft_memory(seed=0), load_raft_memory(seed=1)
    assert ids(first.validation) == ids(again.validation)
    assert ids(first.train) == ids(again.train)
    assert ids(first.validation) != ids(other.validation)


@pytest.mark.parametrize(
    ("size", "message"),
    [
        (29, "at most 28 rows"),
        (30, "at most 28 rows"),
        (0.99, "at most 28 rows"),
        (1.0, r"in \[0, 1\)"),
        (-1, "must not be negative"),
        (-0.1, r"in \[0, 1\)"),
        (True, "fraction"),
        ("0.2", "fraction"),
    ],
)
def test_infeasible_validation_size_is_rejected(size, message):
    with pytest.raises(ValueError, match=message):
        load_raft_memory(validation_size=size)


def test_stratified_split_on_any_dataset():
    dataset = datasets.Dataset.from_dict({"x": list(range(20)), "y": ["a"] * 10 + ["b"] * 6 + ["c"] * 4})
    train, validation = stratified_split(dataset, "y", 10, seed=5)
    assert labels_of(validation, "y") == {"a": 5, "b": 3, "c": 2}
    assert sorted([*train["x"], *validation["x"]]) == list(range(20))
    assert list(validation["x"]) == sorted(validation["x"])  # original order kept
    with pytest.raises(ValueError, match=r"Label column 'label' not found; available columns: \['x', 'y'\]"):
        stratified_split(dataset, "label", 0.2)


def test_stratified_split_keeps_one_row_per_class_in_train():
    # Proportional shares would take both rows of "b"; one must stay in train.
    dataset = datasets.Dataset.from_dict({"x": list(range(6)), "y": ["a"] * 4 + ["b"] * 2})
    train, validation = stratified_split(dataset, "y", 4, seed=0)
    assert labels_of(train, "y") == {"a": 1, "b": 1}
    assert labels_of(validation, "y") == {"a": 3, "b": 1}


@pytest.mark.parametrize("k", [2, 5, 7])
def test_k_folds_partition_labelled_rows(k):
    data = load_raft_memory(validation_size=0)
    folds = k_fold_splits(data.train, "Label", k=k, seed=0)
    assert len(folds) == k
    validation_ids = [ids(validation) for _, validation in folds]
    flat = [i for fold in validation_ids for i in fold]
    assert sorted(flat) == sorted(ids(data.train))  # each row validated exactly once
    sizes = [len(fold) for fold in validation_ids]
    assert max(sizes) - min(sizes) <= 1
    for train, validation in folds:
        assert not set(ids(train)) & set(ids(validation))
        assert len(train) + len(validation) == N_LABELLED
        assert set(train["Label"]) == {1, 2}
        counts = labels_of(validation)
        assert counts[1] in (math.floor(N_COMPLAINT / k), math.ceil(N_COMPLAINT / k))
        assert counts[2] in (math.floor(N_NO_COMPLAINT / k), math.ceil(N_NO_COMPLAINT / k))


def test_k_folds_are_deterministic_per_seed():
    dataset = load_raft_memory(validation_size=0).train
    first = [ids(v) for _, v in k_fold_splits(dataset, "Label", k=3, seed=0)]
    again = [ids(v) for _, v in k_fold_splits(dataset, "Label", k=3, seed=0)]
    other = [ids(v) for _, v in k_fold_splits(dataset, "Label", k=3, seed=1)]
    assert first == again
    assert first != other


def test_folds_method_pools_train_and_validation():
    data = load_raft_memory(validation_size=0.2)
    folds = data.folds(k=3, seed=0)
    assert len(folds) == 3
    assert sorted(i for fold in folds for i in ids(fold.validation)) == sorted(ids(data.train) + ids(data.validation))
    for fold in folds:
        assert fold.unlabeled is data.unlabeled
        assert fold.classes == data.classes
        assert set(fold.train["text_label"]) == {"complaint", "no complaint"}


@pytest.mark.parametrize(
    ("k", "message"),
    [(1, "k must be an integer >= 2"), (2.5, "k must be an integer >= 2"), (7, "need at least 7 rows")],
)
def test_k_folds_reject_bad_k(k, message):
    dataset = datasets.Dataset.from_dict({"y": ["a", "a", "a", "b", "b", "b"]})
    with pytest.raises(ValueError, match=message):
        k_fold_splits(dataset, "y", k=k)


def test_k_folds_reject_single_row_class():
    dataset = datasets.Dataset.from_dict({"y": ["a", "a", "a", "b"]})
    with pytest.raises(ValueError, match=r"Classes \['b'\] .* single row"):
        k_fold_splits(dataset, "y", k=2)


def user_dataset(labels) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"sentence": [f"sentence {i}" for i in range(len(labels))], "category": labels})


USER_LABELS = ["sports", "politics", "science"] * 4


def test_user_data_string_labels_without_unlabeled_class():
    data = load_classification_data(
        user_dataset(USER_LABELS), text_column="sentence", label_column="category", validation_size=3, seed=0
    )
    assert data.classes == ["politics", "science", "sports"]  # inferred: sorted
    assert data.unlabeled is None and data.unlabeled_class is None
    assert labels_of(data.validation, "text_label") == {"politics": 1, "science": 1, "sports": 1}
    names = data.train.features["category"].names
    assert names == ["politics", "science", "sports"]
    original = dict(zip(user_dataset(USER_LABELS)["sentence"], USER_LABELS, strict=True))
    for row in data.train:
        assert original[row["sentence"]] == row["text_label"] == names[row["category"]]


def test_user_data_class_names_fix_the_order_and_accept_label_texts():
    labels = ["big_cat", "dog", "big cat", "dog", "big_cat", "dog"]  # name and label text mixed
    data = load_classification_data(
        user_dataset(labels),
        text_column="sentence",
        label_column="category",
        class_names=["dog", "big_cat"],
        validation_size=0,
    )
    assert data.classes == ["dog", "big cat"]
    assert data.class_names == ["dog", "big_cat"]
    assert list(data.train["category"]) == [1, 0, 1, 0, 1, 0]
    assert list(data.train["text_label"]) == ["big cat", "dog"] * 3


def test_user_data_integer_labels_index_class_names():
    data = load_classification_data(
        user_dataset([0, 1, 2, 0, 1, 2, 3, 3]),
        text_column="sentence",
        label_column="category",
        class_names=["Unknown", "red", "green", "blue"],
        unlabeled_class="Unknown",
        validation_size=0,
    )
    assert data.classes == ["red", "green", "blue"]
    assert list(data.train["text_label"]) == ["red", "green", "red", "green", "blue", "blue"]
    assert list(data.unlabeled["sentence"]) == ["sentence 0", "sentence 3"]


def test_integer_labels_without_class_names_are_rejected():
    with pytest.raises(ValueError, match="integer ids .* Pass class_names="):
        load_classification_data(user_dataset([0, 1, 0, 1]), text_column="sentence", label_column="category")


@pytest.mark.parametrize(
    ("column", "kwargs"),
    [
        ("text", {"text_column": "text", "label_column": "Label"}),
        ("label", {"text_column": "Tweet text", "label_column": "label"}),
        ("id", {"text_column": "Tweet text", "label_column": "Label", "id_column": "id"}),
    ],
)
def test_missing_column_names_it_and_the_available_columns(column, kwargs):
    with pytest.raises(ValueError) as info:
        load_classification_data(raft_dataset_dict(), **kwargs)
    message = str(info.value)
    assert f"no column(s) ['{column}']" in message
    assert "available columns: ['Tweet text', 'ID', 'Label']" in message


def test_existing_target_column_is_not_overwritten():
    dataset = user_dataset(["a", "b", "a", "b"]).add_column("text_label", ["x"] * 4)
    with pytest.raises(ValueError, match="already has a column 'text_label'"):
        load_classification_data(dataset, text_column="sentence", label_column="category")


@pytest.mark.parametrize(
    ("labels", "bad"),
    [
        ([1, 2, 7, 1, 2, 1], "7 in 1 row(s), first row 2 (ID 2)"),
        ([1, 2, -1, 1, 2, 1], "-1 in 1 row(s), first row 2 (ID 2)"),
    ],
)
def test_integer_label_outside_class_list(labels, bad):
    dataset = datasets.Dataset.from_dict(
        {"Tweet text": [f"t{i}" for i in range(6)], "ID": list(range(6)), "Label": labels}
    )
    with pytest.raises(ValueError) as info:
        load_classification_data(
            dataset,
            text_column="Tweet text",
            label_column="Label",
            id_column="ID",
            class_names=RAFT_CLASS_NAMES,
        )
    message = str(info.value)
    assert bad in message
    assert "class list ['Unlabeled', 'complaint', 'no_complaint']" in message


def test_classlabel_missing_label_is_rejected():
    dataset = datasets.Dataset.from_dict(
        {"Tweet text": ["a", "b", "c", "d"], "Label": [1, 2, -1, 1]},
        features=datasets.Features({"Tweet text": datasets.Value("string"), "Label": raft_features()["Label"]}),
    )
    with pytest.raises(ValueError, match=r"-1 in 1 row\(s\), first row 2"):
        load_classification_data(dataset, text_column="Tweet text", label_column="Label")


def test_string_label_outside_class_list(tmp_path):
    frame = raft_frames()["train"]
    frame = frame.assign(Label=[RAFT_CLASS_NAMES[label] for label in frame["Label"]])
    frame.loc[4, "Label"] = "complain"
    frame.loc[9, "Label"] = "spam"
    path = tmp_path / "train.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError) as info:
        load_raft(data_files={"train": str(path)}, cache_dir=str(tmp_path / "cache"))
    message = str(info.value)
    assert "'complain' in 1 row(s), first row 4 (ID 4)" in message
    assert "'spam' in 1 row(s), first row 9 (ID 9)" in message
    assert "['Unlabeled', 'complaint', 'no_complaint']" in message


def test_unlabeled_string_needs_to_be_in_given_class_names():
    with pytest.raises(ValueError, match=r"'Unlabeled' in 1 row\(s\).*class_names="):
        load_classification_data(
            user_dataset(["a", "b", "Unlabeled", "a", "b"]),
            text_column="sentence",
            label_column="category",
            class_names=["a", "b"],
        )


@pytest.mark.parametrize(
    ("texts", "problem"),
    [
        (["ok", "", "ok", "ok"], "row 1 (ID 11) is empty or whitespace-only"),
        (["ok", "ok", " \t\n", "ok"], "row 2 (ID 12) is empty or whitespace-only"),
        (["ok", None, "ok", "ok"], "row 1 (ID 11) is not a string (got NoneType None)"),
        ([1.5, float("nan"), 2.0, 3.0], "row 1 (ID 11) is not a string (got float nan)"),
        ([1, 2, 3, 4], "row 0 (ID 10) is not a string (got int 1)"),
    ],
)
def test_bad_text_names_split_row_and_id(texts, problem):
    train = datasets.Dataset.from_dict({"ID": [10, 11, 12, 13], "Tweet text": texts, "Label": [1, 2, 1, 2]})
    with pytest.raises(ValueError) as info:
        load_classification_data(
            datasets.DatasetDict({"train": train}),
            text_column="Tweet text",
            label_column="Label",
            id_column="ID",
            class_names=RAFT_CLASS_NAMES,
        )
    message = str(info.value)
    assert "Split 'train'" in message
    assert problem in message
    assert "drop these rows" in message


def test_empty_text_in_unlabeled_csv_split_is_reported(tmp_path):
    files = write_raft_files(tmp_path, "csv", "int")
    test = raft_frames()["test"]
    test.loc[3, "Tweet text"] = None  # written as an empty CSV cell
    test.to_csv(files["test"], index=False)
    with pytest.raises(ValueError, match=r"Split 'test'.*row 3 \(ID 103\) is not a string"):
        load_raft(data_files=files, cache_dir=str(tmp_path / "cache"))


def test_many_bad_rows_are_summarised():
    dataset = user_dataset(["a", "b"] * 10).map(lambda row: {"sentence": ""})
    with pytest.raises(ValueError, match=r"row 4 is empty .* \(and 15 more rows\)"):
        load_classification_data(dataset, text_column="sentence", label_column="category")


def test_class_without_labelled_rows_is_rejected():
    with pytest.raises(ValueError, match=r"Classes \['c'\] have no labelled row"):
        load_classification_data(
            user_dataset(["a", "b", "a", "b"]),
            text_column="sentence",
            label_column="category",
            class_names=["a", "b", "c"],
        )


def test_all_rows_unlabeled_is_rejected():
    with pytest.raises(ValueError, match="No labelled rows"):
        load_classification_data(user_dataset(["Unlabeled"] * 4), text_column="sentence", label_column="category")


def test_class_names_must_match_classlabel_names():
    with pytest.raises(ValueError, match="do not match the ClassLabel names"):
        load_raft_memory(class_names=["Unlabeled", "yes", "no"])
    # Names that differ only by "_" vs " " are the same classes.
    data = load_raft_memory(class_names=["Unlabeled", "complaint", "no complaint"])
    assert data.classes == ["complaint", "no complaint"]


@pytest.mark.parametrize("name", ["train.txt", "train.tsv", "train"])
def test_unknown_file_extension_is_rejected(tmp_path, name):
    path = tmp_path / name
    path.write_text("ID,Tweet text,Label\n1,hi,1\n")
    with pytest.raises(ValueError, match=r"Cannot infer the format .* Supported extensions"):
        load_raft(data_files={"train": str(path)})


def test_missing_local_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_raft(data_files={"train": str(tmp_path / "nope.csv")})


def test_other_raft_subset_needs_text_column():
    with pytest.raises(ValueError, match="pass text_column="):
        load_raft("banking_77", data_files={"train": "train.csv"})
