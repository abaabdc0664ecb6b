"""Truncated, corrupted or missing copies of the real files: a clear DatasetError, never a partial Split."""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from leanml.data import DatasetError, get_spec, load


def _copy(real_root: Path, root: Path, rel: str) -> Path:
    src, dst = real_root / rel, root / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copyfile(src, dst)
    return dst


def _truncate_bytes(frac: float) -> Callable[[Path], None]:
    def f(p: Path) -> None:
        data = p.read_bytes()
        p.write_bytes(data[: int(len(data) * frac)])
    return f


def _drop_last_lines(n: int) -> Callable[[Path], None]:
    def f(p: Path) -> None:
        lines = p.read_text(encoding="utf-8").rstrip("\n").split("\n")
        p.write_text("\n".join(lines[:-n]) + "\n", encoding="utf-8")
    return f


def _replace_line(index: int, new: str) -> Callable[[Path], None]:
    def f(p: Path) -> None:
        lines = p.read_text(encoding="utf-8").split("\n")
        lines[index] = new
        p.write_text("\n".join(lines), encoding="utf-8")
    return f


def _sub(old: str, new: str) -> Callable[[Path], None]:
    def f(p: Path) -> None:
        text = p.read_text(encoding="utf-8")
        assert old in text
        p.write_text(text.replace(old, new, 1), encoding="utf-8")
    return f


def _swap_lines(i: int, j: int) -> Callable[[Path], None]:
    def f(p: Path) -> None:
        lines = p.read_text(encoding="utf-8").split("\n")
        lines[i], lines[j] = lines[j], lines[i]
        p.write_text("\n".join(lines), encoding="utf-8")
    return f


def _gzip_bad_line(p: Path) -> None:
    with gzip.open(p, "rt", encoding="utf-8") as f:
        head = [next(f) for _ in range(50)]
    head[10] = head[10][: len(head[10]) // 2] + "\n"
    with gzip.open(p, "wt", encoding="utf-8") as f:
        f.writelines(head)


# (dataset, split, files to copy, file to corrupt, corruption, expected message)
CASES = [
    ("sst2", "dev", ["text/sst2/dev.tsv"], "text/sst2/dev.tsv", _drop_last_lines(5), r"6,730 rows, expected 6,735"),
    ("sst2", "dev", ["text/sst2/dev.tsv"], "text/sst2/dev.tsv", _replace_line(0, "text\tlabel"), "bad header"),
    ("sst2", "dev", ["text/sst2/dev.tsv"], "text/sst2/dev.tsv", _replace_line(3, "great movie\tpositive"),
     r"line 4: label 'positive' is not 0 or 1"),
    ("sst2", "dev", ["text/sst2/dev.tsv"], "text/sst2/dev.tsv", _replace_line(3, "a\tb\t1"), "3 tab-separated"),
    ("sst2", "dev", ["text/sst2/dev.tsv"], "text/sst2/dev.tsv", lambda p: p.write_bytes(b"\xff\xfe\x00bad"),
     "UnicodeDecodeError"),
    ("t0", "train", ["instruct/t0/t0_train_50k.jsonl.gz"], "instruct/t0/t0_train_50k.jsonl.gz",
     _truncate_bytes(0.3), "malformed content"),
    ("t0", "train", ["instruct/t0/t0_train_50k.jsonl.gz"], "instruct/t0/t0_train_50k.jsonl.gz",
     _gzip_bad_line, "line 11 is not valid JSON"),
    ("gsm8k", "test", ["instruct/gsm8k/test.jsonl"], "instruct/gsm8k/test.jsonl", _truncate_bytes(0.5),
     "is not valid JSON"),
    ("gsm8k", "test", ["instruct/gsm8k/test.jsonl"], "instruct/gsm8k/test.jsonl", _sub("#### 18", "18"),
     r"record 0: the answer has no '####"),
    ("gsm8k", "test", ["instruct/gsm8k/test.jsonl"], "instruct/gsm8k/test.jsonl", _sub('"question"', '"q"'),
     "field 'question' is missing"),
    ("codealpaca", "train", ["instruct/codealpaca/code_alpaca_2k.json"], "instruct/codealpaca/code_alpaca_2k.json",
     _truncate_bytes(0.9), "JSONDecodeError"),
    ("bbh", "test", ["instruct/bbh"], "instruct/bbh/navigate.json", _truncate_bytes(0.5), "JSONDecodeError"),
    ("bbh", "test", ["instruct/bbh"], "instruct/bbh/navigate.json", lambda p: p.unlink(),
     "found 26 task files, expected 27"),
    ("bbh", "test", ["instruct/bbh"], "instruct/bbh/navigate.json", _sub('"target"', '"answer"'),
     "field 'target' is missing"),
    ("mmlu", "dev", ["instruct/mmlu/dev"], "instruct/mmlu/dev/anatomy_dev.csv", _replace_line(2, "q,a,b,c,d,E"),
     r"answer 'E' is not an integer 0-3"),
    ("mmlu", "dev", ["instruct/mmlu/dev"], "instruct/mmlu/dev/anatomy_dev.csv", _replace_line(2, "q,a,b,c,1"),
     "has 5 columns, not 6"),
    ("mmlu", "dev", ["instruct/mmlu/dev"], "instruct/mmlu/dev/anatomy_dev.csv",
     _replace_line(0, "question,A,B,C,D,answer"), "bad header"),
    ("mmlu", "dev", ["instruct/mmlu/dev"], "instruct/mmlu/dev/anatomy_dev.csv", _drop_last_lines(1),
     r"284 rows, expected 285"),
    ("tydiqa", "dev", ["instruct/tydiqa"], "instruct/tydiqa/english_tydiqa_dev.json", _truncate_bytes(0.7),
     "JSONDecodeError"),
    ("tydiqa", "dev", ["instruct/tydiqa"], "instruct/tydiqa/english_tydiqa_dev.json", _sub('"qas"', '"questions"'),
     "KeyError"),
    ("adult", "test", ["tabular/adult"], "tabular/adult/adult-test.csv", _truncate_bytes(0.5),
     "comma-separated fields|rows, expected"),
    ("adult", "test", ["tabular/adult"], "tabular/adult/adult-test.csv", _sub("25, Private", "twenty-five, Private"),
     r"line 1: age value 'twenty-five' is not an integer"),
    ("adult", "test", ["tabular/adult"], "tabular/adult/adult-test.csv", _sub("<=50K.", "maybe"),
     r"label 'maybe' is not"),
    ("adult", "test", ["tabular/adult"], "tabular/adult/adult-test.csv", _sub("Private", "Pirate"),
     r"workclass value 'Pirate' is not in adult.names"),
    ("adult", "test", ["tabular/adult"], "tabular/adult/adult.names", lambda p: p.unlink(), "file not found"),
    ("adult", "test", ["tabular/adult"], "tabular/adult/adult-train.csv", _drop_last_lines(1),
     r"32,560 rows, expected 32,561"),
    ("azure_llm_code", "trace", ["traces/azure_llm_2023_code.csv"], "traces/azure_llm_2023_code.csv",
     _swap_lines(5, 6), "goes back in time"),
    ("azure_llm_code", "trace", ["traces/azure_llm_2023_code.csv"], "traces/azure_llm_2023_code.csv",
     _replace_line(0, "time,ctx,gen"), "bad header"),
    ("azure_llm_code", "trace", ["traces/azure_llm_2023_code.csv"], "traces/azure_llm_2023_code.csv",
     _replace_line(3, "2023-11-16 18:17:04,12,x"), "line 4 is malformed"),
    ("azure_llm_code", "trace", ["traces/azure_llm_2023_code.csv"], "traces/azure_llm_2023_code.csv",
     _replace_line(3, "2023-13-16 18:17:04.1,12,3"), "line 4: invalid date/time"),
    ("azure_llm_code", "trace", ["traces/azure_llm_2023_code.csv"], "traces/azure_llm_2023_code.csv",
     _drop_last_lines(2), r"8,817 rows, expected 8,819"),
]


@pytest.mark.parametrize(("name", "split", "copies", "target", "corrupt", "message"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_corrupted_copy_raises_clear_error(real_root: Path, tmp_path: Path, name: str, split: str,
                                           copies: list[str], target: str, corrupt, message: str) -> None:
    for rel in copies:
        _copy(real_root, tmp_path, rel)
    path = tmp_path / target
    path.chmod(0o644)
    corrupt(path)
    with pytest.raises(DatasetError, match=message) as info:
        load(name, split, root=tmp_path)
    text = str(info.value)
    assert info.value.dataset == name
    assert str(tmp_path) in text  # names the file (or folder) at fault
    assert "expected:" in text and get_spec(name).source in text


@pytest.mark.parametrize(("name", "split"), [("sst2", "train"), ("t0", "train"), ("gsm8k", "train"),
                                             ("codealpaca", "train"), ("bbh", "test"), ("mmlu", "test"),
                                             ("tydiqa", "dev"), ("adult", "train"), ("azure_llm_code", "trace"),
                                             ("cifar10", "test")])
def test_missing_file_names_it_and_its_source(tmp_path: Path, name: str, split: str) -> None:
    with pytest.raises(DatasetError) as info:
        load(name, split, root=tmp_path)  # the root exists but holds nothing
    text = str(info.value)
    assert "not found" in text and str(tmp_path) in text and get_spec(name).source in text


def test_missing_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEANML_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match=r"data root does not exist \(from \$LEANML_DATA\)") as info:
        load("sst2", "train")
    assert "text/sst2/train.tsv" in str(info.value) and str(tmp_path / "nowhere") in str(info.value)
