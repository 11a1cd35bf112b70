# Helpers shared by the rules: paths, the resolved runs, and config slices as
# JSON params (each job sees only the slice it uses, so a change reruns exactly
# the jobs it affects).
import json
from urllib.parse import urlparse

from sdce import io as sdce_io
from sdce import objectives as sdce_objectives
from sdce import plan as sdce_plan
from sdce import ppo as sdce_ppo
from sdce.data import corpus as sdce_corpus

RESULTS = f"{config['results_dir']}/{config['experiment']}"
LOGS = f"{RESULTS}/logs"
# Snakemake's own per-job wall time and memory (`benchmark:`), read by the report's job-time table
BENCHMARKS = f"{RESULTS}/benchmarks"
# the study's plan (sdce.plan, made by the Snakefile): resolved runs, partitions, teachers
GRID = PLAN.grid
RUNS = PLAN.runs
SEEDS = config["seeds"]
# replicates are folds x seeds; each run trains in each fold on its data partition
FOLDS = PLAN.folds
PARTS = PLAN.parts


wildcard_constraints:
    run="|".join(RUNS),
    seed=r"\d+",
    split="train|validation",
    fold="|".join(FOLDS),
    part="|".join(PARTS),


def image(target):
    """The container image of a build target (used with --sdm apptainer only)."""
    return config["containers"][target]


def source_inputs(spec):
    """The local files a corpus spec reads, as its rule's inputs, so an edited file reruns
    what depends on it; none under a default storage provider (profiles gpu and tpu: there a
    job reads the corpus where it is, and Snakemake would look for local paths in the bucket).
    """
    if spec is None or workflow.storage_settings.default_storage_provider is not None:
        return []
    return [str(path) for path in sdce_corpus.source_files(spec)]


def path_inputs(path):
    """The files of a local model or tokenizer folder (none for a hub name), as with
    `source_inputs`."""
    if not path or workflow.storage_settings.default_storage_provider is not None:
        return []
    return [str(p) for p in sdce_io.files_under(path)]


def tokenizer_inputs(wildcards):
    spec = config["tokenizer"]
    return path_inputs(spec["path"] if spec["kind"] == "pretrained" else None)


def teacher_source_inputs(wildcards):
    """The local folder of a pretrained teacher used as it is, whose descriptor it checks."""
    spec = TEACHERS[wildcards.teacher]
    return [] if sdce_plan.needs_training(spec) else path_inputs(spec["name_or_path"])


def split_inputs(wildcards):
    """The corpora a split reads: the corpus, then split.validation_corpus's documents when one
    is set (one input, so the rule's command and inputs are those of a study without one).
    """
    corpora = [f"{RESULTS}/data/corpus.jsonl"]
    if config["split"]["validation_corpus"] is not None:
        corpora.append(f"{RESULTS}/data/validation_corpus.jsonl")
    return {"corpus": corpora}


def missing_split_arg():
    return (
        "--missing-split-ok" if config["split"]["validation_missing"] == "split" else ""
    )


def section_json(name):
    return json.dumps(config[name], sort_keys=True)


def run_json(wildcards):
    return json.dumps(RUNS[wildcards.run], sort_keys=True)


def run_block_size(wildcards):
    return RUNS[wildcards.run]["training"]["block_size"]


def run_measure(wildcards):
    """The validation measure of a run's objective, as `sdce evaluate --measure` takes it."""
    return json.dumps(
        sdce_objectives.validation_spec(RUNS[wildcards.run]["guidance"]), sort_keys=True
    )


def run_chunk_tokens(wildcards):
    """The run's loss chunk size, for its validation in the evaluation jobs (0: none)."""
    return RUNS[wildcards.run]["training"]["loss_chunk_tokens"] or 0


def run_part(wildcards):
    """The data partition of a run's job in its fold."""
    return sdce_plan.data_part(config, wildcards.run, wildcards.fold)


def part_of(wildcards):
    return wildcards.part if "part" in wildcards.keys() else run_part(wildcards)


def part_split_json(wildcards):
    return json.dumps(sdce_plan.part_split(config, wildcards.part), sort_keys=True)


def fold_arg(wildcards):
    index = sdce_plan.fold_index(wildcards.part)
    return "" if index is None else f"--fold {index}"


def part_tokenizer(wildcards):
    """The student tokenizer of a partition: its fold's."""
    return f"{RESULTS}/tokenizers/{sdce_plan.part_fold(part_of(wildcards))}"


def part_teacher_tokenizer(wildcards):
    return f"{RESULTS}/teachers/{wildcards.teacher}/tokenizers/{sdce_plan.part_fold(wildcards.part)}"


def run_shards(wildcards):
    """The run's training and validation shards (sidecars named so that they travel with
    them to remote jobs) and its fold's tokenizer."""
    shards = f"{RESULTS}/shards/{run_part(wildcards)}"
    return {
        "train": f"{shards}/train.bin",
        "validation": f"{shards}/validation.bin",
        "train_sidecar": f"{shards}/train.bin.json",
        "validation_sidecar": f"{shards}/validation.bin.json",
        "tokenizer": part_tokenizer(wildcards),
    }


def run_validation(wildcards):
    shards = run_shards(wildcards)
    return {k: shards[k] for k in ("validation", "validation_sidecar")}


# LM teachers (teachers.<name>): trained, described and cached by workflow/rules/teachers.smk;
# CACHES: teacher -> the cache-teacher slice, every signal its cached runs read, one pass.
TEACHERS = PLAN.teachers
CACHES = PLAN.caches


def teacher_inputs(wildcards):
    """The teacher artifact a run's objective needs (the registry says which: none, the
    bigram table, an LM teacher's cache or its descriptor) and, for a teacher run during
    training, the model the DAG trains for it."""
    guidance = RUNS[wildcards.run]["guidance"]
    found = sdce_objectives.artifact(guidance, run_part(wildcards))
    if found is None:
        return {}
    inputs = {"teacher": f"{RESULTS}/{found}"}
    if sdce_objectives.reads_online(guidance):
        model = teacher_model_inputs(wildcards, sdce_objectives.lm_teacher(guidance))
        inputs.update({f"teacher_{k}": v for k, v in model.items()})
    return inputs


def teacher_arg(wildcards, input):
    return f"--teacher {input.teacher}" if "teacher" in input.keys() else ""


def teacher_tokenizer_json(wildcards):
    return json.dumps(
        sdce_plan.tokenizer_spec(TEACHERS[wildcards.teacher]), sort_keys=True
    )


def teacher_run_json(wildcards):
    return json.dumps(
        sdce_plan.training_run(TEACHERS[wildcards.teacher]), sort_keys=True
    )


def teacher_seed(wildcards):
    return TEACHERS[wildcards.teacher]["seed"]


def teacher_load_json(wildcards):
    keys = ("dtype", "trust_remote_code", "min_overlap")
    return json.dumps({k: TEACHERS[wildcards.teacher][k] for k in keys}, sort_keys=True)


def teacher_model_inputs(wildcards, teacher=None):
    """The teacher model the DAG trains (none for a pretrained teacher used as is)."""
    teacher = teacher or wildcards.teacher
    if sdce_plan.needs_training(TEACHERS[teacher]):
        return {
            "model": f"{RESULTS}/teachers/{teacher}/train/{part_of(wildcards)}/model"
        }
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
    return expand(pattern, run=list(RUNS), fold=FOLDS, seed=SEEDS)


def sample_runs(pattern):
    """The report's sample generations: every run's final model, first fold and seed; none
    when `generation.prompts` is empty."""
    if not config["generation"]["prompts"]:
        return []
    return expand(pattern, run=list(RUNS), fold=FOLDS[:1], seed=SEEDS[:1])


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
        f"{RESULTS}/eval/{run}/{fold}/seed{seed}.milestones.json"
        for run in RUNS
        if has_milestones(run)
        for fold in FOLDS
        for seed in SEEDS
    ]


# Where a training job runs is a runtime setting: its resources come from the profile
# (profiles/*/config.yaml, set-resources), never from the config, so switching profiles
# reruns nothing.
#   processes  training processes on the job's machine (DDP/FSDP); 0 = one per visible
#              GPU, which on Kubernetes is exactly the job's gpu resource (profiles/gpu)
#   launcher   local, or tpu-pod: the job submits to a TPU VM pod and waits on the bucket
#   checkpoint_uri  where checkpoints are copied (a resource, not a param, for the same
#              reason: the location of a copy is not a setting of the run)


def checkpoint_root():
    """The config's checkpoint_uri, else the GCS default storage prefix, else none.
    Unset variables of profiles/gpu and profiles/tpu stop the run here, before any job.
    """
    settings = workflow.storage_settings
    if settings.default_storage_provider == "gcs":
        prefix = settings.default_storage_prefix or ""
        if not prefix.startswith("gs://") or "$" in prefix:
            raise ValueError(
                f"default storage prefix '{prefix}' is not a gs:// bucket: set SDCE_BUCKET "
                "(profiles gpu and tpu store in gs://$SDCE_BUCKET/sdce) or --default-storage-prefix"
            )
        gcs = (workflow.storage_provider_settings or {}).get("gcs")
        project = gcs.get_settings().project if gcs is not None else None
        if not project or "$" in project:
            raise ValueError(
                f"GCS storage project '{project}' is not set: set SDCE_PROJECT (profiles gpu "
                "and tpu pass --storage-gcs-project $SDCE_PROJECT) or --storage-gcs-project"
            )
        if not config["checkpoint_uri"]:
            # the bucket's checkpoints/ prefix: infra/terraform's lifecycle rules cover it
            return f"gs://{urlparse(prefix).netloc}/checkpoints"
    return (config["checkpoint_uri"] or "").rstrip("/")


CHECKPOINT_ROOT = checkpoint_root()


def check_job_image():
    """A remote executor runs every job in one image (--container-image; profiles/gpu
    sets it): it must be the config's containers.cuda, so that the config records what
    ran. Checked when the run starts (the setting is not known while the Snakefile is
    read), before any job."""
    from snakemake.common import get_container_image

    image = workflow.remote_execution_settings.container_image
    if image not in (get_container_image(), config["containers"]["cuda"]):
        raise ValueError(
            f"--container-image {image} (profiles/gpu: container-image) is not the config's "
            f"containers.cuda ({config['containers']['cuda']}): set both to the same image"
        )


onstart:
    check_job_image()


def train_checkpoint_uri(wildcards):
    if not CHECKPOINT_ROOT:
        return "none"
    return f"{CHECKPOINT_ROOT}/{config['experiment']}/{wildcards.run}/{wildcards.fold}/seed{wildcards.seed}"


# PPO post-training (workflow/rules/ppo.smk): the runs that get it, its slice and inputs
PPO_RUNS = sdce_ppo.select_runs(config["ppo"], RUNS) if config["ppo"]["enabled"] else []


def ppo_json():
    """The ppo slice a job uses: which runs get one is the DAG's, not the job's."""
    spec = {k: v for k, v in config["ppo"].items() if k not in ("enabled", "runs")}
    return json.dumps(spec, sort_keys=True)


def ppo_inputs(wildcards):
    """The run's final model (first fold and seed) and, for corpus prompts, its training
    documents."""
    inputs = {
        "model": f"{RESULTS}/runs/{wildcards.run}/{FOLDS[0]}/seed{SEEDS[0]}/model"
    }
    if config["ppo"]["prompts"]["source"] == "corpus":
        part = sdce_plan.data_part(config, wildcards.run, FOLDS[0])
        inputs["documents"] = f"{RESULTS}/data/{part}/train.jsonl"
    return inputs


def ppo_documents_arg(wildcards, input):
    return f"--documents {input.documents}" if "documents" in input.keys() else ""


def ppo_outputs(name):
    """The report's PPO inputs: `name` of every PPO run ([] with ppo.enabled false)."""
    return expand(f"{RESULTS}/ppo/{{run}}/{name}", run=PPO_RUNS)
