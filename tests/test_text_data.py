import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import softprompt_hf  # noqa: E402
from softprompt_hf.data import loading as data_module  # noqa: E402
from softprompt_hf.data.loading import TextData, load_text_data  # noqa: E402

# Paper-like rows: two source columns, a summary to generate, an id and a column no argument names (kept).
N_TRAIN, N_VAL, N_TEST = 20, 4, 3
SOURCES = ["title", "abstract"]


def paper_frame(n: int, prefix: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [f"{prefix}{i}" for i in range(n)],
            "title": [f"Paper {prefix}{i}" for i in range(n)],
            "abstract": [f"We study problem {i} and find result {i * 3}." for i in range(n)],
            "summary": [f"Result {i * 3} for problem {i}." for i in range(n)],
            "year": [2000 + i for i in range(n)],
        }
    )


def paper_frames() -> dict[str, pd.DataFrame]:
    test = paper_frame(N_TEST, "t").assign(summary=None)  # rows to predict: no reference text
    return {"train": paper_frame(N_TRAIN, "p"), "val": paper_frame(N_VAL, "v"), "test": test}


def write_files(directory, fmt: str, frames: dict[str, pd.DataFrame] | None = None) -> dict[str, str]:
    paths = {}
    for split, frame in (frames or paper_frames()).items():
        path = directory / f"{split}.{fmt}"
        if fmt in ("csv", "csv.gz"):
            frame.to_csv(path, index=False)
        elif fmt == "jsonl":
            frame.to_json(path, orient="records", lines=True)
        else:
            frame.to_parquet(path, index=False)
        paths[split] = str(path)
    return paths


def in_memory(frames: dict[str, pd.DataFrame] | None = None) -> datasets.DatasetDict:
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_pandas(frame, preserve_index=False)
            for split, frame in (frames or paper_frames()).items()
        }
    )


def load(data, **kwargs) -> TextData:
    kwargs.setdefault("source_columns", SOURCES)
    kwargs.setdefault("target_column", "summary")
    kwargs.setdefault("id_column", "id")
    return load_text_data(data, **kwargs)


def ids(dataset: datasets.Dataset | None) -> list[str]:
    return [] if dataset is None else list(dataset["id"])


def train_only(n: int = N_TRAIN) -> datasets.Dataset:
    return datasets.Dataset.from_pandas(paper_frame(n, "p"), preserve_index=False)


def message_of(data, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        load(data, **kwargs)
    return str(info.value)


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "jsonl", "parquet"])
def test_load_from_files_keeps_the_given_splits_and_all_columns(tmp_path, fmt):
    data = load(write_files(tmp_path, fmt), cache_dir=str(tmp_path / "cache"))

    assert (data.source_columns, data.target_column, data.id_column) == (SOURCES, "summary", "id")
    # The data's "val" split is the validation split, as it is; train and test rows keep their order.
    assert ids(data.train) == [f"p{i}" for i in range(N_TRAIN)]
    assert ids(data.validation) == [f"v{i}" for i in range(N_VAL)]
    assert ids(data.test) == [f"t{i}" for i in range(N_TEST)]
    for split in (data.train, data.validation, data.test):
        assert split.column_names == ["id", "title", "abstract", "summary", "year"]
    assert data.train[3]["abstract"] == "We study problem 3 and find result 9."
    assert data.validation[1]["summary"] == "Result 3 for problem 1."
    assert data.train["year"][:2] == [2000, 2001]
    assert set(data.test["summary"]) == {None}


def test_in_memory_dataset_dict_matches_files(tmp_path):
    from_files = load(write_files(tmp_path, "jsonl"), cache_dir=str(tmp_path / "cache"))
    from_memory = load(in_memory())
    for split in ("train", "validation", "test"):
        assert getattr(from_memory, split).to_list() == getattr(from_files, split).to_list()


def test_single_dataset_is_the_train_split_and_one_source_column_may_be_a_string():
    data = load(train_only(), source_columns="abstract", validation_size=0.25)
    assert data.source_columns == ["abstract"]
    assert data.test is None
    assert len(data.train) == 15 and len(data.validation) == 5
    assert sorted(ids(data.train) + ids(data.validation)) == sorted(f"p{i}" for i in range(N_TRAIN))


def test_list_of_files_is_one_train_split(tmp_path):
    frames = {"part0": paper_frame(5, "a"), "part1": paper_frame(4, "b")}
    files = write_files(tmp_path, "jsonl", frames)
    data = load([files["part0"], files["part1"]], validation_size=0, cache_dir=str(tmp_path / "cache"))
    assert ids(data.train) == [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(4)]
    assert data.validation is None


@pytest.mark.parametrize("name", ["validation", "valid", "val", "dev"])
def test_a_given_validation_split_is_used_as_is_and_validation_size_is_ignored(name):
    frames = paper_frames()
    frames[name] = frames.pop("val")
    data = load(in_memory(frames), validation_size=5)
    assert ids(data.validation) == [f"v{i}" for i in range(N_VAL)]
    assert ids(data.train) == [f"p{i}" for i in range(N_TRAIN)]


def test_the_hold_out_is_seeded_ordered_and_a_partition():
    first = load(train_only(), seed=1)
    again = load(train_only(), seed=1)
    other = load(train_only(), seed=2)

    assert ids(first.validation) == ids(again.validation) and ids(first.train) == ids(again.train)
    assert ids(first.validation) != ids(other.validation)
    for data in (first, other):
        assert len(data.validation) == 2  # 0.1 of 20 rows
        validation, train = ids(data.validation), ids(data.train)
        assert not set(validation) & set(train)
        assert sorted(validation + train) == sorted(f"p{i}" for i in range(N_TRAIN))
        # Both splits keep the original row order.
        assert validation == sorted(validation, key=lambda row_id: int(row_id[1:]))
        assert train == sorted(train, key=lambda row_id: int(row_id[1:]))


@pytest.mark.parametrize(("size", "expected"), [(0.1, 2), (0.26, 5), (0.01, 1), (7, 7), (19, 19)])
def test_validation_size_is_a_fraction_or_a_count(size, expected):
    data = load(train_only(), validation_size=size)
    assert len(data.validation) == expected
    assert len(data.train) == N_TRAIN - expected


def test_validation_size_zero_gives_no_validation_split():
    data = load(train_only(), validation_size=0)
    assert data.validation is None
    assert ids(data.train) == [f"p{i}" for i in range(N_TRAIN)]


@pytest.mark.parametrize(
    ("size", "message"),
    [
        (20, r"asks for 20 validation rows, which takes all 20 train rows and leaves none to train on"),
        (25, r"asks for 25 validation rows, which is larger than the data: the train split has 20 rows"),
        (1.0, r"fractional validation_size must be in \[0, 1\)"),
        (-1, r"must not be negative"),
        ("0.1", r"must be a fraction \(0 <= x < 1\) or a number of rows"),
    ],
)
def test_infeasible_validation_size_is_rejected(size, message):
    with pytest.raises(ValueError, match=message):
        load(train_only(), validation_size=size)


def test_a_single_train_row_cannot_also_give_a_validation_row():
    assert "leaves none to train on" in message_of(train_only(1))
    assert len(load(train_only(1), validation_size=0).train) == 1


@pytest.mark.parametrize(
    ("kwargs", "missing"),
    [
        ({"source_columns": ["title", "body"]}, "['body']"),
        ({"target_column": "tldr"}, "['tldr']"),
        ({"id_column": "paper_id"}, "['paper_id']"),
    ],
)
def test_missing_column_names_it_and_the_columns_found(kwargs, missing):
    message = message_of(in_memory(), **kwargs)
    assert f"Split 'train' has no column(s) {missing}" in message
    assert "available columns: ['id', 'title', 'abstract', 'summary', 'year']" in message
    assert "source_columns=, target_column= or id_column=" in message


def test_the_test_split_may_lack_the_target_column_but_not_a_source():
    frames = paper_frames()
    frames["test"] = frames["test"].drop(columns="summary")
    assert load(in_memory(frames)).test.column_names == ["id", "title", "abstract", "year"]

    frames["test"] = frames["test"].drop(columns="abstract")
    assert "Split 'test' has no column(s) ['abstract']" in message_of(in_memory(frames))


@pytest.mark.parametrize(
    ("split", "row", "value", "problem"),
    [
        ("train", 2, "", "row 2 (id 'p2') is empty or whitespace-only"),
        ("train", 4, " \n\t", "row 4 (id 'p4') is empty or whitespace-only"),
        ("val", 1, None, "row 1 (id 'v1') is not a string (got NoneType None)"),
        ("test", 0, None, "row 0 (id 't0') is not a string (got NoneType None)"),
    ],
)
def test_bad_source_names_split_row_id_and_fix(split, row, value, problem):
    frames = paper_frames()
    frames[split].loc[row, "abstract"] = value
    message = message_of(in_memory(frames))
    assert f"Split {split!r}: source column 'abstract' must hold non-empty strings, but {problem}" in message
    assert "drop these rows" in message
    assert "check that 'abstract' in source_columns is the right column" in message


def test_non_string_source_is_rejected():
    dataset = datasets.Dataset.from_pandas(paper_frame(N_TRAIN, "p").assign(title=7), preserve_index=False)
    message = message_of(dataset, id_column=None)
    assert "source column 'title' must hold non-empty strings, but row 0 is not a string (got int 7)" in message
    assert "(and 15 more rows)" in message  # the first 5 of 20 rows, then a count


@pytest.mark.parametrize(
    ("split", "value", "problem"),
    [("train", None, "is missing"), ("train", "  ", "is empty or whitespace-only"), ("val", "", "is empty")],
)
def test_missing_or_empty_target_names_the_row_and_says_to_drop_it(split, value, problem):
    frames = paper_frames()
    frames[split].loc[3, "summary"] = value
    message = message_of(in_memory(frames))
    prefix = "p" if split == "train" else "v"
    assert f"Split {split!r}: every row trained or scored on needs a target" in message
    assert f"row 3 (id '{prefix}3') {problem}" in message
    assert "Drop these rows before loading" in message


def test_empty_target_cell_in_a_csv_file_is_reported(tmp_path):
    frames = paper_frames()
    frames["train"].loc[5, "summary"] = None  # written as an empty CSV cell
    message = message_of(write_files(tmp_path, "csv", frames), cache_dir=str(tmp_path / "cache"))
    assert "Split 'train'" in message and "row 5 (id 'p5') is missing" in message


def test_non_string_target_is_rejected_with_the_cast_to_use():
    frame = paper_frame(N_TRAIN, "p")
    dataset = datasets.Dataset.from_pandas(frame.assign(summary=frame["year"]), preserve_index=False)
    message = message_of(dataset)
    assert "target column 'summary' must hold the texts to generate, but row 0 (id 'p0') is not a string" in message
    assert "(got int 2000)" in message
    assert "cast_column('summary', datasets.Value('string'))" in message


def test_test_targets_may_be_missing_or_empty_but_must_be_strings():
    frames = paper_frames()
    frames["test"] = frames["test"].assign(summary=["", None, "a reference"])
    assert load(in_memory(frames)).test["summary"] == ["", None, "a reference"]

    frames["test"] = frames["test"].assign(summary=[1, 2, 3])
    assert "Split 'test': target column 'summary' must hold the texts to generate" in message_of(in_memory(frames))


def test_latin1_csv_gets_the_non_utf8_message(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes("id,abstract,summary\n0,Le caf\xe9 ferme.,ferm\xe9\n1,ok,ok\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"train\.csv' of split 'train' is not UTF-8 text: byte 0xe9 on line 2"):
        load(str(path), source_columns="abstract")


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_a_split_without_rows_is_rejected(split):
    frames = paper_frames()
    frames[split] = frames[split].iloc[:0]
    assert f"Split {split!r} has no rows" in message_of(in_memory(frames))


def test_a_header_only_csv_file_is_rejected(tmp_path):
    frames = paper_frames()
    frames["val"] = frames["val"].iloc[:0]
    files = write_files(tmp_path, "csv", frames)
    assert "val.csv' of split 'val' has a header and no rows" in message_of(files)


def test_split_names_are_checked():
    frames = paper_frames()
    frames["extra"] = frames["val"]
    message = message_of(in_memory(frames))
    assert "Unknown split(s) ['extra']" in message and "['validation', 'valid', 'val', 'dev']" in message

    frames = paper_frames()
    frames["validation"] = frames["val"]
    assert "several validation splits ['validation', 'val']" in message_of(in_memory(frames))

    frames = paper_frames()
    del frames["train"]
    assert "no 'train' split (it has ['val', 'test'])" in message_of(in_memory(frames))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source_columns": []}, "source_columns must be a column name or a non-empty list"),
        ({"source_columns": ["title", "title"]}, "name a column twice"),
        ({"source_columns": ["title", "summary"]}, "target_column 'summary' is also in source_columns"),
        ({"target_column": ""}, "target_column must be a column name"),
    ],
)
def test_column_arguments_are_checked(kwargs, message):
    assert message in message_of(train_only(), **kwargs)


def test_load_text_data_and_text_data_are_public():
    assert softprompt_hf.load_text_data is load_text_data is data_module.load_text_data
    assert softprompt_hf.TextData is TextData
    assert {"load_text_data", "TextData"} <= set(softprompt_hf.__all__) & set(data_module.__all__)
