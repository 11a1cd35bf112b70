"""Checkpoints in a bucket (a local Cloud Storage emulator): upload, resume on a machine
without local files, and refusals before work when credentials or the bucket are missing."""

import json
import shutil
from pathlib import Path

import pytest
from tiny_training import loss_curve, tiny_run, train_tiny

from sdce import checkpoint as ckpt
from sdce import storage


def run(data, out, uri=None, **kw):
    spec = tiny_run("ce", checkpoint_interval=2, save_total_limit=2, milestones=[300])
    return train_tiny(data, out, spec, seed=3, checkpoint_uri=uri, **kw)


def lines(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def test_preempted_run_resumes_from_the_bucket_on_a_new_machine(gcs, tiny_data, tmp_path):
    uri = f"gs://{gcs}/ckpt/tiny/r/seed3"
    reference = run(tiny_data, tmp_path / "ref")
    assert run(tiny_data, tmp_path / "a", uri, stop_after=4) == {"stopped_at": 4}
    remote = storage.Remote(uri)
    assert remote.children("checkpoints") == ["step_0000002", "step_0000004"]  # rotated like local ones
    assert max(r["step"] for r in lines(tmp_path / "a" / "work" / "metrics.jsonl")) == 4
    shutil.rmtree(tmp_path / "a")  # the machine is gone
    resumed = run(tiny_data, tmp_path / "b", uri)
    assert resumed["final_val_loss"] == pytest.approx(reference["final_val_loss"], abs=1e-6)
    got, want = loss_curve(tmp_path / "b"), loss_curve(tmp_path / "ref")
    assert [g[:2] for g in got] == [w[:2] for w in want]
    assert all(g[2] == pytest.approx(w[2], abs=1e-6) for g, w in zip(got, want, strict=True))
    # the milestone written before the preemption came back with the checkpoint
    assert (tmp_path / "b" / "milestones" / "words_300" / "state.json").exists()
    # final outputs in the bucket, summary last
    assert json.loads(remote.read_text("final/summary.json"))["config_hash"] == resumed["config_hash"]
    assert remote.exists("final/model/config.json") and remote.exists("final/metrics.jsonl")
    assert remote.children("checkpoints") == ["step_0000006", "step_0000008"]


def test_incomplete_checkpoint_in_the_bucket_is_ignored(gcs, tiny_data, tmp_path):
    uri = f"gs://{gcs}/ckpt/r"
    run(tiny_data, tmp_path / "a", uri, stop_after=2)
    remote = storage.Remote(uri)
    remote.upload_text("{}", "checkpoints/step_0000004/model/config.json")  # no state.json: cut off
    shutil.rmtree(tmp_path / "a")
    config_hash = json.loads(remote.read_text("checkpoints/step_0000002/state.json"))["config_hash"]
    assert ckpt.pull_latest(remote, tmp_path / "c", config_hash) == tmp_path / "c" / "step_0000002"
    assert ckpt.pull_latest(remote, tmp_path / "d", "another-config") is None


def test_missing_bucket_is_refused_before_work(gcs, tiny_data, tmp_path):
    with pytest.raises(storage.StorageError, match="bucket 'no-such-bucket-x' does not exist.*SDCE_BUCKET"):
        run(tiny_data, tmp_path / "x", "gs://no-such-bucket-x/a")
    assert not (tmp_path / "x").exists()


def test_missing_credentials_are_refused_before_work(tiny_data, tmp_path, monkeypatch, capsys):
    pytest.importorskip("google.cloud.storage", reason="needs the cloud extra")
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no gcloud application-default file
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # not on a Google VM: do not wait for its metadata server
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing-key.json"))
    with pytest.raises(
        storage.StorageError, match="no Google Cloud credentials.*GOOGLE_APPLICATION_CREDENTIALS"
    ):
        run(tiny_data, tmp_path / "x", "gs://some-bucket/a")
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    with pytest.raises(storage.StorageError, match="no Google Cloud credentials"):
        run(tiny_data, tmp_path / "x", "gs://some-bucket/a")
    assert not (tmp_path / "x").exists()


def test_gs_inputs_are_fetched(gcs, tiny_data, tmp_path):
    remote = storage.Remote(f"gs://{gcs}/in")
    remote.upload_file(tiny_data / "train.bin", "train.bin")
    remote.upload_dir(tiny_data / "tokenizer", "tok")
    got = storage.fetch(f"gs://{gcs}/in/train.bin", tmp_path)
    assert Path(got).read_bytes() == (tiny_data / "train.bin").read_bytes()
    tok = Path(storage.fetch(f"gs://{gcs}/in/tok", tmp_path))
    assert sorted(p.name for p in tok.iterdir()) == sorted(
        p.name for p in (tiny_data / "tokenizer").iterdir()
    )
    with pytest.raises(storage.StorageError, match="no such object"):
        storage.fetch(f"gs://{gcs}/in/nothing", tmp_path)
