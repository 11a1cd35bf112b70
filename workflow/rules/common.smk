# Helpers shared by the rules: paths, the resolved runs, and config slices as
# JSON params (each job sees only the slice it uses, so a change reruns exactly
# the jobs it affects).
import json

from sdce import config as sdce_config

RESULTS = f"{config['results_dir']}/{config['experiment']}"
LOGS = f"{RESULTS}/logs"
RUNS = {name: sdce_config.resolve_run(config, name) for name in config["runs"]}
SEEDS = config["seeds"]

if config["baseline"] not in RUNS:
    raise ValueError(
        f"baseline: '{config['baseline']}' is not one of the runs ({', '.join(RUNS)})"
    )


wildcard_constraints:
    run="|".join(RUNS),
    seed=r"\d+",
    split="train|validation",


def image(target):
    """The container image of a build target (used with --sdm apptainer only)."""
    return config["containers"][target]


def section_json(name):
    return json.dumps(config[name], sort_keys=True)


def run_json(wildcards):
    return json.dumps(RUNS[wildcards.run], sort_keys=True)


def run_block_size(wildcards):
    return RUNS[wildcards.run]["training"]["block_size"]


def teacher_inputs(wildcards):
    """The teacher artifact a run's objective needs (none for cross-entropy)."""
    objective = RUNS[wildcards.run]["guidance"]["objective"]
    if objective == "bigram":
        return {"teacher": f"{RESULTS}/teachers/bigram.npz"}
    return {}


def teacher_arg(wildcards, input):
    return f"--teacher {input.teacher}" if "teacher" in input.keys() else ""


def all_runs(pattern):
    return expand(pattern, run=list(RUNS), seed=SEEDS)
