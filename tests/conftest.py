import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SDCE_SHARED", REPO.parent / "shared"))

# No test reaches the Hugging Face Hub (none is reachable here or in CI), so the suite runs
# with the hub client offline, in its own process and in every job it starts: a name that is
# not a folder fails at once. Set before anything imports huggingface_hub, which reads it
# once: a test's monkeypatch.setenv came too late after another test had imported it, and the
# hub client's retries took 46 s of one test (test_data.py, a tokenizer by hub name).
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or os.environ.get("SDCE_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow or SDCE_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: intra-op threads only add synchronisation on a busy machine (a module
    uses it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_dir():
    if not SHARED.exists():
        pytest.skip(f"shared data folder not found at {SHARED}")
    return SHARED


def sdce(*args, cwd=None, check=True):
    """Run the real `sdce` command line in a subprocess."""
    exe = shutil.which("sdce") or str(Path(sys.executable).with_name("sdce"))
    proc = subprocess.run([exe, *map(str, args)], cwd=cwd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"sdce {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def run_sdce():
    return sdce


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Corpus, split, tokenizer and shards of a small synthetic corpus, built once."""
    from sdce.data.corpus import build_corpus, read_documents, write_documents
    from sdce.data.shards import encode_documents
    from sdce.data.split import split_documents
    from sdce.data.tokenizer import build_tokenizer
    from sdce.teachers import bigram

    root = tmp_path_factory.mktemp("tiny")
    build_corpus(
        {"source": "synthetic", "synthetic_documents": 600, "synthetic_seed": 3},
        root / "corpus.jsonl",
        root / "stats.json",
    )
    docs = read_documents(root / "corpus.jsonl")
    train, val = split_documents(
        docs,
        {
            "validation_fraction": 0.1,
            "shuffle": True,
            "seed": 42,
            "train_subset": None,
            "validation_subset": None,
        },
    )
    write_documents(root / "train.jsonl", train)
    tok = build_tokenizer(
        {"kind": "bpe", "vocab_size": 400, "min_frequency": 2}, (d["text"] for d in train), root / "tokenizer"
    )
    encode_documents(tok, train, root / "train.bin", root / "tokenizer")
    encode_documents(tok, val, root / "validation.bin", root / "tokenizer")
    import numpy as np

    data = np.memmap(root / "train.bin", dtype=np.uint16, mode="r")
    bigram.build(data, len(tok), {"top_k": 64, "smoothing": 0.0}, root / "bigram.npz", root / "bigram.json")
    return root


@pytest.fixture(scope="session")
def gcs_emulator():
    """A Cloud Storage emulator (PyPI gcp-storage-emulator, the cloud extra) on 127.0.0.1,
    in memory; yields its URL. Tests point clients at it with STORAGE_EMULATOR_HOST."""
    pytest.importorskip("gcp_storage_emulator", reason="needs the cloud extra (pip install 'sdce[cloud]')")
    pytest.importorskip("google.cloud.storage", reason="needs the cloud extra (pip install 'sdce[cloud]')")
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1"]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port), "--in-memory"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url, timeout=1).read()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("the storage emulator did not start")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def gcs(gcs_emulator, monkeypatch):
    """STORAGE_EMULATOR_HOST set for this test; a fresh bucket name."""
    import uuid

    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    name = f"sdce-test-{uuid.uuid4().hex[:8]}"
    storage.Client().create_bucket(name)
    return name
