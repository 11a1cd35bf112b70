rule bigram:
    input:
        shard=f"{RESULTS}/{{part}}/shards/train.bin",
        sidecar=f"{RESULTS}/{{part}}/shards/train.bin.json",
    output:
        table=f"{RESULTS}/{{part}}/teachers/bigram.npz",
        meta=f"{RESULTS}/{{part}}/teachers/bigram.json",
    log:
        f"{LOGS}/{{part}}/bigram.log",
    container:
        image("cpu")
    params:
        spec=section_json("bigram"),
    shell:
        "sdce bigram --params {params.spec:q} --shard {input.shard}"
        " --out {output.table} --meta {output.meta} > {log} 2>&1"


# LM teachers: a surrogate trained from scratch with its own tokenizer, or a pretrained
# model fine-tuned here, both through `sdce train` (objective ce); then its descriptor
# (checked against the student tokenizer) and its cache: one pass over the training shard
# storing every signal the runs read, each in a subfolder. Like the student's data, all
# of it is per data partition (the teacher learns from the partition's training split
# only), with the teacher tokenizer per fold.
wildcard_constraints:
    teacher="|".join(TEACHERS) or "(?!)",


rule teacher_tokenizer:
    input:
        train=f"{RESULTS}/{{fold}}/data/train.jsonl",
    output:
        tokenizer=directory(f"{RESULTS}/{{fold}}/teachers/{{teacher}}/tokenizer"),
    log:
        f"{LOGS}/{{fold}}/teachers/{{teacher}}_tokenizer.log",
    container:
        image("cpu")
    params:
        spec=teacher_tokenizer_json,
    shell:
        "sdce tokenizer --params {params.spec:q} --train {input.train} --out {output.tokenizer} > {log} 2>&1"


rule teacher_encode:
    input:
        documents=f"{RESULTS}/{{part}}/data/{{split}}.jsonl",
        tokenizer=part_teacher_tokenizer,
    output:
        shard=f"{RESULTS}/{{part}}/teachers/{{teacher}}/shards/{{split}}.bin",
        sidecar=f"{RESULTS}/{{part}}/teachers/{{teacher}}/shards/{{split}}.bin.json",
    log:
        f"{LOGS}/{{part}}/teachers/{{teacher}}_encode_{{split}}.log",
    container:
        image("cpu")
    shell:
        "sdce encode --tokenizer {input.tokenizer} --input {input.documents} --out {output.shard} > {log} 2>&1"


rule teacher_train:
    input:
        train=f"{RESULTS}/{{part}}/teachers/{{teacher}}/shards/train.bin",
        train_sidecar=f"{RESULTS}/{{part}}/teachers/{{teacher}}/shards/train.bin.json",
        validation=f"{RESULTS}/{{part}}/teachers/{{teacher}}/shards/validation.bin",
        validation_sidecar=f"{RESULTS}/{{part}}/teachers/{{teacher}}/shards/validation.bin.json",
        tokenizer=part_teacher_tokenizer,
    output:
        model=directory(f"{RESULTS}/{{part}}/teachers/{{teacher}}/train/model"),
        metrics=f"{RESULTS}/{{part}}/teachers/{{teacher}}/train/metrics.jsonl",
        summary=f"{RESULTS}/{{part}}/teachers/{{teacher}}/train/summary.json",
    log:
        f"{LOGS}/{{part}}/teachers/{{teacher}}_train.log",
    container:
        image("cuda")
    threads: 1
    resources:
        mem_mb=4000,
    params:
        run=teacher_run_json,
        seed=teacher_seed,
    shell:
        "sdce train --params {params.run:q} --name {wildcards.teacher} --seed {params.seed}"
        " --train-shard {input.train} --val-shard {input.validation} --tokenizer {input.tokenizer}"
        " --threads {threads} --no-progress --out $(dirname {output.summary}) > {log} 2>&1"


rule teacher:
    input:
        unpack(teacher_model_inputs),
        tokenizer=part_tokenizer,
    output:
        descriptor=f"{RESULTS}/{{part}}/teachers/{{teacher}}/teacher.json",
    log:
        f"{LOGS}/{{part}}/teachers/{{teacher}}_describe.log",
    container:
        image("cpu")
    params:
        spec=teacher_load_json,
        model=teacher_model_arg,
    shell:
        "sdce teacher --params {params.spec:q} --name {wildcards.teacher} --model {params.model}"
        " --student-tokenizer {input.tokenizer} --out {output.descriptor} > {log} 2>&1"


rule cache_teacher:
    input:
        teacher=f"{RESULTS}/{{part}}/teachers/{{teacher}}/teacher.json",
        shard=f"{RESULTS}/{{part}}/shards/train.bin",
        sidecar=f"{RESULTS}/{{part}}/shards/train.bin.json",
        tokenizer=part_tokenizer,
    output:
        cache=directory(f"{RESULTS}/{{part}}/teachers/{{teacher}}/cache"),
    log:
        f"{LOGS}/{{part}}/teachers/{{teacher}}_cache.log",
    container:
        image("cuda")
    threads: 1
    resources:
        mem_mb=4000,
    params:
        spec=cache_json,
    shell:
        "sdce cache-teacher --params {params.spec:q} --teacher {input.teacher} --shard {input.shard}"
        " --tokenizer {input.tokenizer} --threads {threads} --out {output.cache} > {log} 2>&1"
