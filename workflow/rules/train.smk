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
            return "gs://" + prefix[len("gs://") :].split("/")[0] + "/checkpoints"
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
    return (
        f"{CHECKPOINT_ROOT}/{config['experiment']}/{wildcards.run}/seed{wildcards.seed}"
    )


rule train:
    input:
        unpack(teacher_inputs),
        train=f"{RESULTS}/shards/train.bin",
        validation=f"{RESULTS}/shards/validation.bin",
        # read beside the shards; named so that they travel with them to remote jobs
        train_sidecar=f"{RESULTS}/shards/train.bin.json",
        validation_sidecar=f"{RESULTS}/shards/validation.bin.json",
        tokenizer=f"{RESULTS}/tokenizer",
    output:
        model=directory(f"{RESULTS}/runs/{{run}}/seed{{seed}}/model"),
        milestones=directory(f"{RESULTS}/runs/{{run}}/seed{{seed}}/milestones"),
        metrics=f"{RESULTS}/runs/{{run}}/seed{{seed}}/metrics.jsonl",
        summary=f"{RESULTS}/runs/{{run}}/seed{{seed}}/summary.json",
    log:
        f"{LOGS}/train/{{run}}_seed{{seed}}.log",
    container:
        image("cuda")
    threads: 1
    resources:
        mem_mb=4000,
        processes=1,
        launcher="local",
        checkpoint_uri=train_checkpoint_uri,
    params:
        run=run_json,
        teacher=teacher_arg,
    shell:
        "sdce train --params {params.run:q} --name {wildcards.run} --seed {wildcards.seed}"
        " --train-shard {input.train} --val-shard {input.validation} --tokenizer {input.tokenizer}"
        " {params.teacher} --threads {threads} --processes {resources.processes}"
        " --launcher {resources.launcher} --checkpoint-uri {resources.checkpoint_uri}"
        " --out $(dirname {output.summary}) > {log} 2>&1"
