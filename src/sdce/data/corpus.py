"""Corpus sources. Each yields documents as `{"text": str, "source": str}` records.

- `synthetic`: the embedded generator (`sdce.data.synthetic`), no download needed;
- `babylm`: a folder of BabyLM `*.train` files (`train_10M/`, `train_100M/`, any
  depth), one document per non-empty line, files in sorted order;
- `files`: a `.txt` file (one document per line), a `.json`/`.jsonl` file with a
  text column, or a folder of such files;
- `hf`: `datasets.load_dataset(name, config, split=...)`, or `load_from_disk` for
  a folder written by `Dataset.save_to_disk`.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from sdce.io import atomic_path, files_under, write_json


class CorpusError(ValueError):
    """A corpus that cannot be read; the message names the path."""


def load_corpus(spec: dict) -> list[dict]:
    source = spec["source"]
    loaders = {"synthetic": _synthetic, "babylm": _babylm, "files": _files, "hf": _hf}
    docs = loaders[source](spec)
    docs = [d for d in docs if d["text"].strip()]
    if not docs:
        where = spec.get("path") or spec.get("hf_name") or source
        raise CorpusError(f"corpus is empty: {where} holds no non-empty documents")
    return docs


def _synthetic(spec: dict) -> list[dict]:
    from sdce.data.synthetic import generate_documents

    texts = generate_documents(spec["synthetic_documents"], spec["synthetic_seed"])
    return [{"text": t, "source": "synthetic"} for t in texts]


def _require_path(spec: dict) -> Path:
    if not spec.get("path"):
        raise CorpusError(f"corpus.path must be set for source '{spec['source']}'")
    path = Path(spec["path"]).expanduser()
    if not path.exists():
        raise CorpusError(f"corpus path does not exist: {path}")
    return path


_SAVED = ("dataset_info.json", "state.json", "dataset_dict.json")  # Dataset(Dict).save_to_disk
_SUFFIXES = {".txt", ".json", ".jsonl"}


def source_files(spec: dict) -> list[Path]:
    """The local files a corpus spec reads (none for the generator or a hub dataset): the
    inputs of the rule that builds it, so an edited file reruns what depends on it."""
    where = spec.get("path") if spec["source"] in ("babylm", "files") else spec.get("hf_name")
    if spec["source"] == "synthetic" or not where or not Path(where).expanduser().exists():
        return []
    root = Path(where).expanduser()
    if not root.is_dir():
        return [root]
    if spec["source"] == "babylm":
        return sorted(root.rglob("*.train"))
    if spec["source"] == "files":
        return sorted(p for p in root.rglob("*") if p.suffix in _SUFFIXES)
    if not any((root / f).exists() for f in _SAVED):
        return []  # a dataset script folder: load_dataset decides what it reads
    return files_under(root)


def _babylm(spec: dict) -> list[dict]:
    root = _require_path(spec)
    files = source_files(spec)
    if not files:
        raise CorpusError(f"no BabyLM *.train files under {root}")
    docs = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            docs.extend({"text": line.strip(), "source": f.stem} for line in fh if line.strip())
    return docs


def _files(spec: dict) -> list[dict]:
    root = _require_path(spec)
    files = source_files(spec)
    if not files:
        raise CorpusError(f"no .txt/.json/.jsonl files under {root}")
    docs = []
    for f in files:
        docs.extend({"text": t, "source": f.stem} for t in _read_text_file(f, spec))
    return docs


def _read_text_file(path: Path, spec: dict) -> list[str]:
    if path.suffix == ".txt":
        if _chat_columns(spec):
            raise CorpusError(
                f"{path}: a prompt/response corpus (corpus.prompt_column) needs json or jsonl files"
            )
        with open(path, encoding="utf-8") as fh:
            return [line.strip() for line in fh]
    if path.suffix == ".jsonl":
        out = []
        with open(path, encoding="utf-8") as fh:
            for i, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CorpusError(f"{path}:{i}: invalid JSON ({e.msg})") from None
                out.append(_record_text(record, spec, f"{path}:{i}"))
        return out
    with open(path, encoding="utf-8") as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise CorpusError(f"{path}: expected a list of records (or {{'data': [...]}})")
    return [_record_text(r, spec, f"{path}[{i}]") for i, r in enumerate(data)]


def _chat_columns(spec: dict) -> tuple[str, str] | None:
    """(prompt column, response column) of a prompt/response corpus, else None."""
    prompt, response = spec.get("prompt_column"), spec.get("response_column")
    if (prompt is None) != (response is None):
        raise CorpusError("corpus.prompt_column and corpus.response_column are set together")
    return (prompt, response) if prompt is not None else None


def _record_text(record, spec: dict, where: str) -> str:
    """A record's document: its text column, or its prompt and response in the chat format
    (`sdce.data.chat`)."""
    columns = _chat_columns(spec)
    if columns is None:
        return _column(record, spec["text_column"], where, "corpus.text_column")
    from sdce.data.chat import format_example

    prompt, response = (
        _column(record, c, where, f"corpus.{k}_column")
        for c, k in zip(columns, ("prompt", "response"), strict=True)
    )
    return format_example(prompt, response)


def _column(record, column: str, where: str, key: str = "corpus.text_column") -> str:
    if not isinstance(record, dict) or column not in record:
        raise CorpusError(f"{where}: record has no '{column}' field ({key})")
    value = record[column]
    if not isinstance(value, str):
        raise CorpusError(f"{where}: '{column}' is not a string")
    return value


def _hf(spec: dict) -> list[dict]:
    import datasets

    name = spec.get("hf_name")
    if not name:
        raise CorpusError("corpus.hf_name must be set for source 'hf'")
    columns = _chat_columns(spec) or (spec["text_column"],)
    local = Path(name).expanduser()
    if local.is_dir() and any((local / f).exists() for f in _SAVED):
        ds = datasets.load_from_disk(str(local))
        if isinstance(ds, datasets.DatasetDict):
            if spec["hf_split"] not in ds:
                raise CorpusError(f"dataset {name} has no split '{spec['hf_split']}' (has: {', '.join(ds)})")
            ds = ds[spec["hf_split"]]
    else:
        ds = datasets.load_dataset(name, spec.get("hf_config"), split=spec["hf_split"])
    for column in columns:
        if column not in ds.column_names:
            raise CorpusError(f"dataset {name} has no column '{column}' (has: {', '.join(ds.column_names)})")
    source = Path(name).name or name
    if len(columns) == 2:
        return [{"text": _record_text(r, spec, f"{name}[{i}]"), "source": source} for i, r in enumerate(ds)]
    return [{"text": t, "source": source} for t in ds[columns[0]] if isinstance(t, str)]


def word_count(text: str) -> int:
    """Whitespace words, as BabyLM counts them."""
    return len(text.split())


def write_documents(path: str | Path, docs: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d["text"], "source": d["source"]}, ensure_ascii=False))
            f.write("\n")


def read_documents(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def corpus_stats(docs: list[dict]) -> dict:
    per_source_docs = Counter(d["source"] for d in docs)
    per_source_words: Counter = Counter()
    for d in docs:
        per_source_words[d["source"]] += word_count(d["text"])
    return {
        "documents": len(docs),
        "words": sum(per_source_words.values()),
        "sources": {
            s: {"documents": per_source_docs[s], "words": per_source_words[s]}
            for s in sorted(per_source_docs)
        },
    }


def build_corpus(spec: dict, out: str | Path, stats_out: str | Path, missing_split_ok: bool = False) -> dict:
    """Write the spec's documents and their counts. `missing_split_ok`: a Hugging Face dataset
    without the split asked for gives an empty corpus whose stats say why (`missing_split`),
    for split.validation_missing: split; any other failure is raised."""
    try:
        docs = load_corpus(spec)
    except (KeyError, ValueError) as e:
        if not (missing_split_ok and spec["source"] == "hf" and spec["hf_split"] in str(e)):
            raise
        write_documents(out, [])
        stats = {**corpus_stats([]), "missing_split": f"{spec['hf_name']} has no split '{spec['hf_split']}'"}
        write_json(stats_out, stats)
        return stats
    write_documents(out, docs)
    stats = corpus_stats(docs)
    write_json(stats_out, stats)
    return stats
