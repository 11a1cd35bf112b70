"""A study config is checked once, the same way by `sdce check-config` and Snakemake's parse,
and a user's config file is the whole study."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sdce import cli

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def edited(tmp_path, edit) -> Path:
    config = yaml.safe_load(TINY.read_text())
    edit(config)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def check_config(capsys, path) -> tuple[int, str]:
    rc = cli.main(["check-config", str(path)])
    captured = capsys.readouterr()
    return rc, captured.err + captured.out


def parse(workdir, *args) -> subprocess.CompletedProcess:
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--dry-run", *args]
    return subprocess.run(cmd, capture_output=True, text=True)


def _run(config, name):
    return config["runs"].setdefault(name, {})


BAD = {
    "baseline_names_no_run": (
        lambda c: c.update(baseline="nobody"),
        "baseline: 'nobody' is not one of the runs (baseline, bigram_linear)",
    ),
    "micro_batch_does_not_divide": (
        lambda c: c["training"].update(micro_batch_size=3),
        "runs.baseline.training.micro_batch_size: 3 does not divide training.batch_size=4",
    ),
    "heads_do_not_divide_width": (
        lambda c: _run(c, "bigram_linear").update(model={"n_head": 3}),
        "runs.bigram_linear.model.n_embd: 32 is not divisible by model.n_head=3",
    ),
    "corpus_path_missing": (
        lambda c: c.update(corpus={"source": "files", "path": "/nonexistent/corpus.txt"}),
        "corpus.path: /nonexistent/corpus.txt does not exist",
    ),
    "validation_corpus_with_folds": (
        lambda c: c["split"].update(folds=2, validation_corpus={"source": "synthetic"}),
        "split.validation_corpus: folds cut one corpus into k validation sets; "
        "give split.folds or a validation corpus, not both",
    ),
    "validation_corpus_path_missing": (
        lambda c: c["split"].update(validation_corpus={"source": "files", "path": "/nonexistent/eval.txt"}),
        "split.validation_corpus.path: /nonexistent/eval.txt does not exist",
    ),
    "run_override_unknown_key": (
        lambda c: _run(c, "baseline").update(training={"learning_rat": 0.1}),
        "runs.baseline.training.learning_rat is not a known key: "
        "Additional properties are not allowed ('learning_rat' was unexpected)",
    ),
    "run_override_wrong_type": (
        lambda c: _run(c, "baseline").update(model={"n_layer": "two"}),
        "runs.baseline.model.n_layer: 'two' is not of type 'integer'",
    ),
    "unknown_lm_teacher": (
        lambda c: c["runs"].update(kl={"guidance": {"objective": "kl", "teacher": "nobody"}}),
        "runs.kl.guidance.teacher: 'nobody' is not one of teachers (none)",
    ),
    "top_level_unknown_key": (
        lambda c: c["training"].update(learning_rat=0.1),
        "training.learning_rat is not a known key: "
        "Additional properties are not allowed ('learning_rat' was unexpected)",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_malformed_config_is_refused_in_one_line_by_both_paths(tmp_path, capsys, case):
    edit, message = BAD[case]
    path = edited(tmp_path, edit)
    rc, out = check_config(capsys, path)
    assert rc == 2 and out.strip() == f"sdce check-config: error: {message}"
    proc = parse(tmp_path, "--configfile", str(path))
    assert proc.returncode != 0
    lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    assert lines == [f"config error: {message}"]  # the parse stops before planning any job


def test_a_valid_config_is_valid_for_both(tmp_path, capsys):
    rc, out = check_config(capsys, TINY)
    assert rc == 0 and "valid (2 runs x 2 random seeds)" in out
    assert parse(tmp_path, "--configfile", str(TINY)).returncode == 0


def test_a_missing_config_file_is_named(tmp_path, capsys):
    missing = tmp_path / "nothere.yaml"
    for command in ("check-config", "run"):
        rc = cli.main([command, str(missing)])
        err = capsys.readouterr().err
        assert rc == 2 and err.strip() == f"sdce {command}: error: config file not found: {missing}"


def planned_trains(workdir, *args) -> list[str]:
    """The train jobs a dry run plans, as 'run seed' strings."""
    proc = subprocess.run(
        [SNAKEMAKE, "--dry-run", "--cores", "1", *args], cwd=workdir, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out, rule = [], None
    for line in proc.stdout.splitlines():
        if line.startswith("rule ") or line.startswith("localrule "):
            rule = line.split()[1].rstrip(":")
        elif rule == "train" and line.strip().startswith("wildcards:"):
            fields = dict(p.split("=") for p in line.split(":", 1)[1].replace(" ", "").split(","))
            out.append(f"{fields['run']} {fields['seed']}")
    return sorted(out)


def test_a_users_config_is_the_whole_study_from_the_repository_root(tmp_path):
    # a copy of the repository root: config/config.yaml is there, as in a clone
    root = tmp_path / "repo"
    root.mkdir()
    for item in ("Snakefile", "workflow", "config"):
        (shutil.copytree if (REPO / item).is_dir() else shutil.copy)(REPO / item, root / item)
    default = yaml.safe_load((root / "config" / "config.yaml").read_text())
    mine = yaml.safe_load(TINY.read_text())
    mine.update(seeds=[7], runs={"baseline": {}, "only_mine": {"guidance": {"objective": "label_smoothing"}}})
    (root / "my.yaml").write_text(yaml.safe_dump(mine))
    assert planned_trains(root, "--configfile", "my.yaml") == ["baseline 7", "only_mine 7"]
    # without a config, the default study
    expected = sorted(f"{run} {seed}" for run in default["runs"] for seed in default["seeds"])
    assert planned_trains(root) == expected
