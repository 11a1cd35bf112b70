"""One schema for Snakemake and Python: shipped configs, key-naming errors, docs in sync."""

from pathlib import Path

import pytest
import yaml

from sdce import config as cfg
from sdce import plan

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [REPO / "config" / "config.yaml", *sorted((REPO / "tests" / "configs").glob("*.yaml"))]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates_and_resolves(path):
    study = cfg.load(path)
    assert study["baseline"] in study["runs"]
    for name in plan.expand_runs(study):
        run = plan.resolve_run(study, name)
        assert set(run) == {"model", "training", "guidance"}


def test_run_overrides_merge_over_top_level():
    study = cfg.validate(
        {
            "experiment": "x",
            "corpus": {"source": "synthetic"},
            "training": {"steps": 50},
            "model": {"n_layer": 3},
            "runs": {"a": {"training": {"learning_rate": 0.01}, "model": {"n_layer": 6}}},
        }
    )
    run = plan.resolve_run(study, "a")
    assert run["training"]["steps"] == 50 and run["training"]["learning_rate"] == 0.01
    assert run["model"]["n_layer"] == 6 and run["guidance"]["objective"] == "ce"


def test_folds_and_subsets_name_each_runs_data_partition():
    study = cfg.validate(
        {
            "experiment": "x",
            "corpus": {"source": "synthetic"},
            "split": {"folds": 3, "train_subset": 500},
            "runs": {
                "base": {},
                "sub": {"grid": {"split.train_subset": [None, 100]}},
            },
        }
    )
    assert plan.folds(study) == ["fold0", "fold1", "fold2"]
    assert plan.folds({"split": {}}) == ["main"]
    assert plan.data_part(study, "base", "fold1") == "fold1"  # the study's own subset (500)
    assert plan.data_part(study, "sub-train_subset100", "fold2") == "fold2-n100"
    assert plan.data_part(study, "sub-train_subsetnone", "fold1") == "fold1-nall"  # every document
    assert plan.fold_index("fold2-n100") == 2 and plan.fold_index("main") is None
    assert plan.part_split(study, "fold2-n100")["train_subset"] == 100
    assert plan.part_split(study, "fold2")["train_subset"] == 500
    assert plan.part_split(study, "fold0-nall")["train_subset"] is None
    # the split job's params as before split.validation_corpus existed: a study made then reruns nothing
    assert set(plan.part_split(study, "fold2")) == {
        "validation_fraction", "shuffle", "seed", "folds", "train_subset", "validation_subset"
    }  # fmt: skip
    evals = {
        **study,
        "split": {**study["split"], "folds": None, "validation_corpus": {"source": "synthetic"}},
    }
    assert plan.part_split(evals, "main")["validation_missing"] == "error"


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda c: c["training"].update(lr=0.1), "training.lr is not a known key"),
        (lambda c: c["training"].update(steps="10"), "training.steps: '10' is not of type 'integer'"),
        (
            lambda c: c["runs"]["baseline"].update(guidance={"schedule": "cubic"}),
            "runs.baseline.guidance.schedule",
        ),
        (lambda c: c["corpus"].update(source="web"), "corpus.source: 'web' is not one of"),
        (lambda c: c.update(seeds=[]), "seeds"),
        (lambda c: c["containers"].update(cpu="ghcr.io/x/y:latest"), "containers.cpu"),
        (lambda c: c["split"].update(folds=1), "split.folds: 1 is less than the minimum of 2"),
        (  # a run may choose its training subset, never its validation set
            lambda c: c["runs"]["baseline"].update(split={"validation_fraction": 0.2}),
            "runs.baseline.split.validation_fraction is not a known key",
        ),
    ],
)
def test_errors_name_the_key(edit, message):
    study = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    study.setdefault("containers", {})
    edit(study)
    with pytest.raises(cfg.ConfigError) as err:
        cfg.validate(study)
    assert str(err.value).startswith(message)


def test_config_reference_is_generated_from_the_schema():
    assert (REPO / "config" / "README.md").read_text() == cfg.describe(), (
        "run: sdce config-docs > config/README.md"
    )


def test_the_package_ships_the_same_schema():
    """Installed wheels (the container images) read the schema from package data."""
    from importlib import resources

    shipped = resources.files("sdce").joinpath("schemas/config.schema.yaml").read_text(encoding="utf-8")
    assert shipped == (REPO / "workflow" / "schemas" / "config.schema.yaml").read_text(encoding="utf-8")


def test_python_has_no_defaults_of_its_own():
    """Defaults come from the schema only: an empty slice gets exactly the schema defaults."""
    training = cfg.validate({}, "training")
    schema_defaults = {k: v["default"] for k, v in cfg.schema()["$defs"]["training"]["properties"].items()}
    assert training == schema_defaults


def test_schema_keywords_are_well_formed():
    """Every property is a schema made of JSON Schema keywords and every description a string:
    an unquoted comma in a flow-style description turns its tail into a bogus key (seen once in
    containers.cpu, which jsonschema silently ignores)."""
    keywords = {
        "type", "enum", "default", "description", "properties", "additionalProperties", "required",
        "items", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems", "uniqueItems",
        "pattern", "propertyNames", "oneOf", "anyOf", "$ref", "minProperties", "const", "title",
    }  # fmt: skip
    schema = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml").read_text()
    )

    def walk(node, where):
        assert isinstance(node, dict), f"{where} is not a schema: {node!r}"
        assert set(node) <= keywords, f"{where}: not JSON Schema keywords: {sorted(set(node) - keywords)}"
        assert isinstance(node.get("description", ""), str), f"{where}: description is not a string"
        for name, sub in (node.get("properties") or {}).items():
            walk(sub, f"{where}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key], f"{where}.{key}")
        for i, sub in enumerate(node.get("oneOf", []) + node.get("anyOf", [])):
            walk(sub, f"{where}[{i}]")

    for name, sub in {**schema["$defs"], **schema["properties"]}.items():
        walk(sub, name)
