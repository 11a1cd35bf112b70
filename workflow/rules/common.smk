# Helpers shared by the rules: paths, the resolved runs, and config slices as
# JSON params (each job sees only the slice it uses, so a change reruns exactly
# the jobs it affects).
import json

from sdce import config as sdce_config
from sdce.teachers import distill as sdce_distill

RESULTS = f"{config['results_dir']}/{config['experiment']}"
LOGS = f"{RESULTS}/logs"
GRID = sdce_config.expand_runs(config)
RUNS = {name: sdce_config.resolve_run(config, name) for name in GRID}
SEEDS = config["seeds"]

if config["baseline"] not in config["runs"]:
    raise ValueError(
        f"baseline: '{config['baseline']}' is not one of the runs ({', '.join(config['runs'])})"
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


# LM teachers (teachers.<name>): trained, described and cached by workflow/rules/teachers.smk.
TEACHERS = {
    name: sdce_config.validate(spec, "teacher", where=f"teachers.{name}")
    for name, spec in config["teachers"].items()
}
sdce_distill.check_study(config, RUNS)
# teacher -> the cache-teacher slice: every signal its cached runs read, one pass
CACHES = {
    name: spec
    for name in TEACHERS
    if (spec := sdce_distill.cache_spec(name, TEACHERS[name], RUNS)) is not None
}


def teacher_inputs(wildcards):
    """The teacher artifact a run's objective needs (none for cross-entropy and label
    smoothing): the bigram table, an LM teacher's cache, or its descriptor (online)."""
    guidance = RUNS[wildcards.run]["guidance"]
    objective = guidance["objective"]
    if objective == "bigram":
        return {"teacher": f"{RESULTS}/teachers/bigram.npz"}
    if objective in sdce_distill.LM_OBJECTIVES:
        folder = f"{RESULTS}/teachers/{guidance['teacher']}"
        if guidance["teacher_source"] == "online":
            # the descriptor, and the model it names when the DAG trains it
            model = teacher_model_inputs(wildcards, guidance["teacher"])
            return {
                "teacher": f"{folder}/teacher.json",
                **{f"teacher_{k}": v for k, v in model.items()},
            }
        return {"teacher": f"{folder}/cache"}  # the run's signal is a subfolder
    return {}


def teacher_arg(wildcards, input):
    return f"--teacher {input.teacher}" if "teacher" in input.keys() else ""


def teacher_tokenizer_json(wildcards):
    return json.dumps(
        sdce_distill.tokenizer_spec(TEACHERS[wildcards.teacher]), sort_keys=True
    )


def teacher_run_json(wildcards):
    return json.dumps(
        sdce_distill.training_run(TEACHERS[wildcards.teacher]), sort_keys=True
    )


def teacher_seed(wildcards):
    return TEACHERS[wildcards.teacher]["seed"]


def teacher_load_json(wildcards):
    keys = ("dtype", "trust_remote_code", "min_overlap")
    return json.dumps({k: TEACHERS[wildcards.teacher][k] for k in keys}, sort_keys=True)


def teacher_model_inputs(wildcards, teacher=None):
    """The teacher model the DAG trains (none for a pretrained teacher used as is)."""
    teacher = teacher or wildcards.teacher
    if sdce_distill.needs_training(TEACHERS[teacher]):
        return {"model": f"{RESULTS}/teachers/{teacher}/train/model"}
    return {}


def teacher_model_arg(wildcards, input):
    if "model" in input.keys():
        return input.model
    return TEACHERS[wildcards.teacher]["name_or_path"]


def cache_json(wildcards):
    return json.dumps(CACHES[wildcards.teacher], sort_keys=True)


def grid_json():
    """Each concrete run's base run and grid axes, for the report's grouping."""
    info = {n: {"base": g["base"], "axes": g["axes"]} for n, g in GRID.items()}
    return json.dumps(info, sort_keys=True)


def all_runs(pattern):
    return expand(pattern, run=list(RUNS), seed=SEEDS)


SYNTHETIC_PAIRS = (
    config["corpus"]["source"] == "synthetic"
    and config["evaluation"]["synthetic_pairs"] > 0
)


def pairs_json():
    keys = ("synthetic_pairs", "synthetic_pairs_seed")
    return json.dumps({k: config["evaluation"][k] for k in keys}, sort_keys=True)


def pair_inputs(wildcards):
    """The generated minimal pairs, when the corpus comes from the embedded grammar."""
    return {"pairs": f"{RESULTS}/eval/minimal_pairs"} if SYNTHETIC_PAIRS else {}


def pair_arg(wildcards, input):
    return f"--pairs synthetic={input.pairs}" if "pairs" in input.keys() else ""


def has_milestones(run):
    return RUNS[run]["training"]["milestones"] is not None


def milestone_evals():
    return [
        f"{RESULTS}/eval/{run}/seed{seed}.milestones.json"
        for run in RUNS
        if has_milestones(run)
        for seed in SEEDS
    ]
