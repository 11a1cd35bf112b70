"""Corpus sources, split, tokenizer, shards and bigram counting on real files."""

import json

import numpy as np
import pytest
import scipy.sparse as sp

from sdce.data import corpus as corpus_mod
from sdce.data import shards
from sdce.data.corpus import CorpusError, load_corpus
from sdce.data.shards import dtype_for, encode_documents, load_shard, source_ranges
from sdce.data.split import SplitError, split_documents
from sdce.data.tokenizer import TokenizerError, build_tokenizer, load
from sdce.teachers.bigram import count_bigrams

SPEC = {
    "source": "files",
    "path": None,
    "text_column": "text",
    "synthetic_documents": 10,
    "synthetic_seed": 0,
    "hf_name": None,
    "hf_config": None,
    "hf_split": "train",
}
SPLIT = {
    "validation_fraction": 0.2,
    "shuffle": False,
    "seed": 42,
    "train_subset": None,
    "validation_subset": None,
}


def test_files_source_reads_txt_json_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("one doc\n\nsecond doc\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"body": "from jsonl"}) + "\n")
    (tmp_path / "c.json").write_text(json.dumps({"data": [{"body": "from json"}]}))
    docs = load_corpus({**SPEC, "path": str(tmp_path / "a.txt")})
    assert [d["text"] for d in docs] == ["one doc", "second doc"]
    with pytest.raises(CorpusError, match=r"b.jsonl:1: record has no 'text' field"):
        load_corpus({**SPEC, "path": str(tmp_path)})
    (tmp_path / "a.txt").unlink()
    docs = load_corpus({**SPEC, "path": str(tmp_path), "text_column": "body"})
    assert sorted(d["text"] for d in docs) == ["from json", "from jsonl"]


def test_babylm_folder_keeps_sources_and_order(tmp_path):
    root = tmp_path / "train_10M"
    root.mkdir()
    (root / "childes.train").write_text("".join(f"child {i}\n" for i in range(10)))
    (root / "simple_wiki.train").write_text("".join(f"wiki {i}\n" for i in range(20)))
    docs = load_corpus({**SPEC, "source": "babylm", "path": str(root)})
    stats = corpus_mod.corpus_stats(docs)
    assert stats["sources"] == {
        "childes": {"documents": 10, "words": 20},
        "simple_wiki": {"documents": 20, "words": 40},
    }
    train, val = split_documents(docs, {**SPLIT, "validation_fraction": 0.1})
    # coherent split: the last 10% of each source, order kept
    assert [d["text"] for d in val] == ["child 9", "wiki 18", "wiki 19"]
    assert [d["text"] for d in train][:3] == ["child 0", "child 1", "child 2"]


def test_hf_source_loads_saved_and_file_datasets(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": ["alpha beta", "gamma"]}).save_to_disk(str(tmp_path / "saved"))
    docs = load_corpus({**SPEC, "source": "hf", "hf_name": str(tmp_path / "saved")})
    assert [d["text"] for d in docs] == ["alpha beta", "gamma"]
    folder = tmp_path / "jsonl_ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"text": "delta"}\n{"text": "epsilon"}\n')
    docs = load_corpus({**SPEC, "source": "hf", "hf_name": str(folder)})
    assert [d["text"] for d in docs] == ["delta", "epsilon"]
    with pytest.raises(CorpusError, match="no column 'body'"):
        load_corpus({**SPEC, "source": "hf", "hf_name": str(folder), "text_column": "body"})


def test_missing_and_empty_corpus_name_the_path(tmp_path):
    with pytest.raises(CorpusError, match=f"does not exist: {tmp_path / 'nope'}"):
        load_corpus({**SPEC, "path": str(tmp_path / "nope")})
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(CorpusError, match="corpus is empty: .*empty.txt"):
        load_corpus({**SPEC, "path": str(tmp_path / "empty.txt")})


def test_split_is_seeded_and_reproducible():
    docs = [{"text": f"d{i}", "source": "s"} for i in range(100)]
    spec = {**SPLIT, "shuffle": True}
    a, b = split_documents(docs, spec), split_documents(docs, spec)
    assert a == b and len(a[1]) == 20
    c = split_documents(docs, {**spec, "seed": 7})
    assert c[1] != a[1]
    assert {d["text"] for d in a[0]} | {d["text"] for d in a[1]} == {d["text"] for d in docs}
    sub = split_documents(docs, {**spec, "train_subset": 5, "validation_subset": 3})
    assert len(sub[0]) == 5 and len(sub[1]) == 3
    with pytest.raises(SplitError, match="validation set empty"):
        split_documents(docs[:3], {**SPLIT, "validation_fraction": 0.1})


@pytest.mark.parametrize("shuffle", [True, False])
def test_k_folds_partition_the_corpus(shuffle):
    docs = [{"text": f"{s}{i}", "source": s} for s in ("a", "b") for i in range(23)]
    spec = {**SPLIT, "shuffle": shuffle, "folds": 5}
    folds = [split_documents(docs, spec, fold=i) for i in range(5)]
    vals = [[d["text"] for d in val] for _, val in folds]
    # the validation sets are disjoint and cover every document once; each fold trains on the rest
    assert sorted(t for v in vals for t in v) == sorted(d["text"] for d in docs)
    for (train, _), v in zip(folds, vals, strict=True):
        assert {d["text"] for d in train} == {d["text"] for d in docs} - set(v)
        assert len(v) in (8, 9, 10)  # 46 documents in 5 parts (per source when coherent)
    if not shuffle:  # coherent: the i-th contiguous fifth of every source, order kept
        assert vals[0] == ["a0", "a1", "a2", "a3", "b0", "b1", "b2", "b3"]
        assert [d["text"] for d in folds[0][0]][:2] == ["a4", "a5"]
    assert split_documents(docs, spec, fold=2) == folds[2]  # reproducible
    with pytest.raises(SplitError, match=r"fold index in 0..4 is needed, got 5"):
        split_documents(docs, spec, fold=5)
    with pytest.raises(SplitError, match="split.folds is not set"):
        split_documents(docs, SPLIT, fold=0)


def test_tokenizer_roundtrip_and_too_large_vocab(tmp_path, tiny_data):
    tok = load(tiny_data / "tokenizer")
    assert len(tok) == 400 and tok.eos_token == "<|endoftext|>"
    text = "The teachers near the old house see themselves."
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    # the BOS post-processor (docs/evaluation.md, "The BOS decision"): BOS before the text
    assert tok(text)["input_ids"] == [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
    with pytest.raises(TokenizerError, match="vocab_size=50000 is larger than the training split supports"):
        build_tokenizer(
            {"kind": "bpe", "vocab_size": 50000, "min_frequency": 2}, ["a b c", "a b"], tmp_path / "t"
        )


def test_shards_match_direct_encoding_and_sidecar(tiny_data):
    from sdce.data.corpus import read_documents

    tok = load(tiny_data / "tokenizer")
    data, meta = load_shard(tiny_data / "train.bin")
    docs = read_documents(tiny_data / "train.jsonl")
    expected = []
    for d in docs:
        expected += tok(d["text"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    np.testing.assert_array_equal(np.asarray(data), np.asarray(expected))
    assert meta["documents"] == len(docs) and meta["tokens"] == len(expected)
    assert meta["words"] == sum(len(d["text"].split()) for d in docs)
    assert meta["dtype"] == "uint16" and dtype_for(70000) == np.uint32


def test_encode_is_atomic_on_failure(tmp_path, tiny_data):
    tok = load(tiny_data / "tokenizer")
    with pytest.raises(TypeError):
        encode_documents(tok, [{"text": None, "source": "s"}], tmp_path / "x.bin", tiny_data / "tokenizer")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dense_cells", [1 << 27, 0])  # bincount, and the sorted 32-bit keys
def test_bigram_counts_match_dense_count(monkeypatch, dense_cells):
    from sdce.teachers import bigram

    monkeypatch.setattr(bigram, "_DENSE_CELLS", dense_cells)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50, size=5000).astype(np.uint16)
    counts = count_bigrams(tokens, 50)
    assert isinstance(counts, sp.csr_matrix) and counts.has_sorted_indices
    dense = np.zeros((50, 50), dtype=np.int64)
    np.add.at(dense, (tokens[:-1].astype(int), tokens[1:].astype(int)), 1)
    np.testing.assert_array_equal(counts.toarray(), dense)
    assert counts.nnz == np.count_nonzero(dense)
    assert count_bigrams(tokens[:1], 50).nnz == 0


def test_shard_is_each_document_encoded_then_eos(tmp_path, tiny_data):
    """The vectorised shard writer equals encoding each document on its own, eos after each."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_data / "tokenizer"))
    docs = [{"text": t, "source": s} for t, s in [("the cat sat .", "a"), ("", "b"), ("a dog ran !", "a")]]
    meta = encode_documents(tok, docs * 3, tmp_path / "x.bin", tiny_data / "tokenizer", batch_docs=4)
    expected = [
        i
        for d in docs * 3
        for i in [*tok(d["text"], add_special_tokens=False)["input_ids"], tok.eos_token_id]
    ]
    data, _ = load_shard(tmp_path / "x.bin")
    assert data.tolist() == expected and meta["tokens"] == len(expected)
    # a b a a b a a b a: b's three documents are ranges of their own, each one eos long
    starts = np.cumsum(
        [0, *(len(tok(d["text"], add_special_tokens=False)["input_ids"]) + 1 for d in docs * 3)]
    )
    b_ranges = [[int(starts[i]), int(starts[i] + 1)] for i in (1, 4, 7)]
    assert meta["sources"]["b"] == {"documents": 3, "words": 0, "tokens": 3, "ranges": b_ranges}


def test_shard_sidecar_lists_each_sources_token_ranges(tmp_path, tiny_data, monkeypatch):
    """A coherent split of a multi-source corpus: each source's range holds exactly its own
    documents' tokens, and the ranges tile the shard; a source interleaved with another gets
    one range per stretch; past MAX_SOURCE_RANGES stretches the sidecar lists none."""
    tok = load(tiny_data / "tokenizer")

    def ids(d):  # as the shard writer encodes a document
        return tok(d["text"], add_special_tokens=False)["input_ids"]

    words = {"childes": "the cat sees the dog", "wiki": "a house is near the old tree", "qed": "they run"}
    docs = [{"text": f"{w} {i}", "source": s} for s, w in words.items() for i in range(7)]
    _, val = split_documents(docs, {**SPLIT, "validation_fraction": 0.3})
    meta = encode_documents(tok, val, tmp_path / "v.bin", tiny_data / "tokenizer", batch_docs=3)
    data, _ = load_shard(tmp_path / "v.bin")
    ranges = source_ranges(meta)
    assert list(ranges) == ["childes", "qed", "wiki"]  # the split's order, one range each
    tiles = sorted(r for v in ranges.values() for r in v)
    assert tiles[0][0] == 0 and tiles[-1][1] == meta["tokens"]
    assert all(a[1] == b[0] for a, b in zip(tiles, tiles[1:], strict=False))
    for name, [(start, end)] in ranges.items():
        own = [i for d in val if d["source"] == name for i in [*ids(d), tok.eos_token_id]]
        assert data[start:end].tolist() == own and meta["sources"][name]["tokens"] == end - start

    mixed = [val[0], val[-1], val[1]]  # childes, wiki, childes
    meta = encode_documents(tok, mixed, tmp_path / "m.bin", tiny_data / "tokenizer")
    n = [len(ids(d)) + 1 for d in mixed]
    assert source_ranges(meta) == {
        "childes": [(0, n[0]), (n[0] + n[1], sum(n))],
        "wiki": [(n[0], n[0] + n[1])],
    }
    monkeypatch.setattr(shards, "MAX_SOURCE_RANGES", 2)
    meta = encode_documents(tok, mixed, tmp_path / "m.bin", tiny_data / "tokenizer")
    assert "ranges" not in meta["sources"]["wiki"] and source_ranges(meta) is None
    assert source_ranges({"sources": {}}) is None  # a sidecar written before sources had ranges


def test_cli_errors_are_one_line(tmp_path, run_sdce):
    sdce = run_sdce
    proc = sdce(
        "corpus",
        "--params",
        json.dumps({"source": "files", "path": str(tmp_path / "missing")}),
        "--out",
        tmp_path / "c.jsonl",
        "--stats",
        tmp_path / "s.json",
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"sdce corpus: error: corpus path does not exist: {tmp_path / 'missing'}"
    ]
    proc = sdce(
        "corpus",
        "--params",
        json.dumps({"source": "synthetic", "synthetic_docs": 3}),
        "--out",
        tmp_path / "c.jsonl",
        "--stats",
        tmp_path / "s.json",
        check=False,
    )
    assert proc.returncode == 2 and "corpus.synthetic_docs is not a known key" in proc.stderr
    assert not (tmp_path / "c.jsonl").exists()


def test_a_subset_larger_than_its_side_is_refused():
    docs = [{"text": f"d{i}", "source": "s"} for i in range(20)]
    spec = {"validation_fraction": 0.25, "shuffle": False, "seed": 0, "folds": None}
    with pytest.raises(SplitError, match="split.train_subset: 16 is more than the 15 training documents"):
        split_documents(docs, {**spec, "train_subset": 16})
    with pytest.raises(SplitError, match="split.validation_subset: 6 is more than the 5 validation"):
        split_documents(docs, {**spec, "validation_subset": 6})
    train, val = split_documents(docs, {**spec, "train_subset": 15, "validation_subset": 5})
    assert (len(train), len(val)) == (15, 5)


def test_a_validation_corpus_is_the_validation_split():
    """split.validation_corpus: train on the whole corpus, validate on the other; a subset is a
    seeded sample of each side (the same documents for the same seed), not the files' head."""
    docs = [{"text": f"d{i}", "source": "train"} for i in range(30)]
    evals = [{"text": f"e{i}", "source": "eval"} for i in range(10)]
    spec = {"validation_fraction": 0.5, "shuffle": False, "seed": 3, "folds": None}
    assert split_documents(docs, spec, validation=evals) == (docs, evals)
    sub = {**spec, "train_subset": 12, "validation_subset": 4}
    train, val = split_documents(docs, sub, validation=evals)
    assert (len(train), len(val)) == (12, 4) and train != docs[:12]
    assert {d["text"] for d in train} < {d["text"] for d in docs} and val[0]["source"] == "eval"
    assert split_documents(docs, sub, validation=evals) == (train, val)
    assert split_documents(docs, {**sub, "seed": 4}, validation=evals)[0] != train
    with pytest.raises(SplitError, match="split.validation_subset: 11 is more than the 10 validation"):
        split_documents(docs, {**spec, "validation_subset": 11}, validation=evals)


def test_a_missing_validation_split_falls_back_to_the_fraction_when_asked(tmp_path, run_sdce):
    """split.validation_missing: split: a dataset without the validation split gives an empty
    validation corpus (its stats say why) and the split job holds out the fraction instead;
    without it the corpus job fails naming the split."""
    import datasets

    texts = [f"document number {i}" for i in range(20)]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts})}).save_to_disk(
        str(tmp_path / "saved")
    )
    spec = {"source": "hf", "hf_name": str(tmp_path / "saved"), "hf_split": "validation"}
    files = {"--out": tmp_path / "v.jsonl", "--stats": tmp_path / "v.json"}
    args = ["corpus", "--params", json.dumps(spec), *(str(x) for kv in files.items() for x in kv)]
    proc = run_sdce(*args, check=False)
    assert proc.returncode == 2 and "validation" in proc.stderr and not (tmp_path / "v.jsonl").exists()
    proc = run_sdce(*args, "--missing-split-ok")
    assert "no split 'validation'" in proc.stdout
    assert json.loads((tmp_path / "v.json").read_text())["documents"] == 0
    corpus = {"source": "hf", "hf_name": str(tmp_path / "saved")}
    run_sdce(
        "corpus",
        "--params",
        json.dumps(corpus),
        "--out",
        tmp_path / "c.jsonl",
        "--stats",
        tmp_path / "c.json",
    )
    split = {"validation_fraction": 0.25, "shuffle": True, "seed": 5, "validation_missing": "split"}
    out = ["--train", tmp_path / "t.jsonl", "--validation", tmp_path / "val.jsonl"]
    common = ["split", "--corpus", tmp_path / "c.jsonl", tmp_path / "v.jsonl", *out]
    proc = run_sdce(*common, "--params", json.dumps(split))
    assert "holding out split.validation_fraction=0.25" in proc.stdout
    val = corpus_mod.read_documents(tmp_path / "val.jsonl")
    expected = split_documents(corpus_mod.read_documents(tmp_path / "c.jsonl"), {**split, "folds": None})[1]
    assert len(val) == 5 and val == expected
    proc = run_sdce(*common, "--params", json.dumps({**split, "validation_missing": "error"}), check=False)
    assert proc.returncode == 2 and "split.validation_corpus holds no documents" in proc.stderr


def test_source_files_are_what_a_corpus_reads(tmp_path):
    """The rule inputs of a corpus: the files its loader reads, none for the generator or a hub name."""
    (tmp_path / "babylm").mkdir()
    for name in ("a.train", "b.train", "notes.md"):
        (tmp_path / "babylm" / name).write_text("x\n")
    babylm = corpus_mod.source_files({"source": "babylm", "path": str(tmp_path / "babylm")})
    assert [p.name for p in babylm] == ["a.train", "b.train"]
    (tmp_path / "texts").mkdir()
    for name in ("a.txt", "b.jsonl", "c.csv"):
        (tmp_path / "texts" / name).write_text("x\n")
    files = corpus_mod.source_files({"source": "files", "path": str(tmp_path / "texts")})
    assert [p.name for p in files] == ["a.txt", "b.jsonl"]
    assert corpus_mod.source_files({"source": "hf", "hf_name": "wikitext"}) == []
    assert corpus_mod.source_files({"source": "synthetic"}) == []


def test_a_pretrained_tokenizer_that_cannot_be_loaded_is_named(tmp_path):
    spec = {"kind": "pretrained", "path": "no-such-org/no-such-tokenizer", "special_tokens": []}
    with pytest.raises(
        TokenizerError, match="tokenizer.path: no-such-org/no-such-tokenizer is neither a folder"
    ):
        build_tokenizer(spec, (), tmp_path / "tok")
    assert not (tmp_path / "tok").exists()


def test_a_folder_hashes_the_same_with_or_without_snakemakes_marker(tmp_path):
    """A tokenizer made by the tokenizer rule (a directory output, with Snakemake's empty
    .snakemake_timestamp) and the same files made elsewhere get one hash; any real file counts."""
    from sdce.io import dir_hash

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "tokenizer.json").write_text("{}")
    (tmp_path / "b" / ".snakemake_timestamp").write_text("")
    assert dir_hash(tmp_path / "a") == dir_hash(tmp_path / "b")
    (tmp_path / "b" / "extra.json").write_text("{}")
    assert dir_hash(tmp_path / "a") != dir_hash(tmp_path / "b")


def test_encoding_in_processes_writes_the_shard_of_one_process(tmp_path, tiny_data):
    """Contiguous slices in forked processes, joined in order: the same bytes and sidecar as one
    process, with a source's stretch of documents running on across a slice boundary."""
    from sdce.data.corpus import read_documents

    tok = load(tiny_data / "tokenizer")
    docs = read_documents(tiny_data / "train.jsonl")[:90]
    docs = [{**d, "source": "a" if i < 40 else "b" if i < 70 else "a"} for i, d in enumerate(docs)]
    one = encode_documents(
        tok, docs, tmp_path / "one.bin", tiny_data / "tokenizer", batch_docs=8, processes=1
    )
    three = encode_documents(
        tok, docs, tmp_path / "three.bin", tiny_data / "tokenizer", batch_docs=8, processes=3
    )
    assert (tmp_path / "one.bin").read_bytes() == (tmp_path / "three.bin").read_bytes()
    assert (
        one == three and one["sources"]["a"]["ranges"][0][0] == 0 and len(one["sources"]["a"]["ranges"]) == 2
    )
    assert not list(tmp_path.glob("*.part*"))  # the slices' part files are gone
    assert shards.encode_processes(len(docs), None) == 1  # by default: one process per MIN_DOCS_PER_PROCESS


def test_the_encoder_is_the_tokenizers_own_without_transformers(tmp_path):
    """`load_encoder`: a tokenizer saved as a generic fast tokenizer (sdce's BPE with chat
    markers; GPT-2's vocab.json + merges.txt from ../shared, which AutoTokenizer cannot read
    without a config) is read from its tokenizer.json in a process that never imports
    transformers or torch, and encodes exactly what the transformers tokenizer does (ids,
    eos, size; the same shard bytes). Llama 2's folder from ../shared, which AutoTokenizer
    cannot read either (its "a b" merges), is saved so too. A model's own class and a config
    that lists a token tokenizer.json lacks go through transformers."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from sdce import config as cfg
    from sdce.data.synthetic import generate_documents
    from sdce.data.tokenizer import load_encoder

    texts = generate_documents(200, seed=0)
    spec = cfg.validate({"kind": "bpe", "vocab_size": 300, "special_tokens": ["<a>", "<b>"]}, "tokenizer")
    build_tokenizer(spec, texts, tmp_path / "bpe")
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "tokenizers"
    for name in ("gpt2", "llama2"):
        build_tokenizer(
            {"kind": "pretrained", "path": str(shared / name), "special_tokens": []}, (), tmp_path / name
        )

    def light(folder) -> bool:
        """Whether load_encoder read `folder` without importing transformers or torch."""
        probe = (
            "import sys; from sdce.data.tokenizer import load_encoder; "
            f"load_encoder({str(folder)!r}); print('transformers' in sys.modules or 'torch' in sys.modules)"
        )
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
        return out.stdout.strip() == "False"

    docs = [{"text": t + " <a> x<b>", "source": "s"} for t in texts[:50]]
    for name, fast in (("bpe", True), ("gpt2", True), ("llama2", True)):
        folder = tmp_path / name
        enc, tok = load_encoder(folder), load(folder)
        assert (enc.eos_token_id, len(enc)) == (tok.eos_token_id, len(tok)) and light(folder) == fast, name
        a = encode_documents(enc, docs, tmp_path / f"{name}-a.bin", folder)
        b = encode_documents(tok, docs, tmp_path / f"{name}-b.bin", folder)
        assert (
            a == b and (tmp_path / f"{name}-a.bin").read_bytes() == (tmp_path / f"{name}-b.bin").read_bytes()
        )
    assert (
        len(load_encoder(tmp_path / "bpe").backend_tokenizer.encode("<a>", add_special_tokens=False).ids) == 1
    )

    config = json.loads((tmp_path / "bpe" / "tokenizer_config.json").read_text())
    edits = {
        "own_class": {"tokenizer_class": "GPT2Tokenizer"},
        "added": {
            "added_tokens_decoder": {"302": {"content": "<new>", "special": True}}
        },  # not in tokenizer.json
    }
    for name, edit in edits.items():
        shutil.copytree(tmp_path / "bpe", tmp_path / name)
        (tmp_path / name / "tokenizer_config.json").write_text(json.dumps({**config, **edit}))
        assert not light(tmp_path / name), name
        enc, tok = load_encoder(tmp_path / name), load(tmp_path / name)
        assert (enc.eos_token_id, len(enc)) == (tok.eos_token_id, len(tok)), name
