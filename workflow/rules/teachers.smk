rule bigram:
    input:
        shard=f"{RESULTS}/shards/{{part}}/train.bin",
        sidecar=f"{RESULTS}/shards/{{part}}/train.bin.json",
    output:
        table=f"{RESULTS}/bigram/{{part}}.npz",
        meta=f"{RESULTS}/bigram/{{part}}.json",
    log:
        f"{LOGS}/bigram/{{part}}.log",
    benchmark:
        f"{BENCHMARKS}/bigram/{{part}}.tsv"
    container:
        image("cpu")
    params:
        spec=section_json("bigram"),
    shell:
        "sdce bigram --params {params.spec:q} --shard {input.shard}"
        " --out {output.table} --meta {output.meta} > {log} 2>&1"


# LM teachers: a surrogate trained from scratch with its own tokenizer, or a pretrained
# model fine-tuned here, both through `sdce train-job` (objective ce); then its descriptor
# (checked against the student tokenizer) and its cache: one pass over the training shard
# storing every signal the runs read, each in a subfolder. Like the student's data, all
# of it is per data partition (the teacher learns from the partition's training split
# only), with the teacher tokenizer per fold.
wildcard_constraints:
    teacher="|".join(TEACHERS) or "(?!)",


rule teacher_tokenizer:
    input:
        train=f"{RESULTS}/data/{{fold}}/train.jsonl",
    output:
        tokenizer=directory(f"{RESULTS}/teachers/{{teacher}}/tokenizers/{{fold}}"),
    log:
        f"{LOGS}/teachers/{{teacher}}_tokenizer_{{fold}}.log",
    benchmark:
        f"{BENCHMARKS}/teacher_tokenizer/{{teacher}}_tokenizer_{{fold}}.tsv"
    container:
        image("cpu")
    params:
        spec=teacher_tokenizer_json,
    shell:
        "sdce tokenizer --params {params.spec:q} --train {input.train} --out {output.tokenizer} > {log} 2>&1"


rule teacher_encode:
    input:
        documents=f"{RESULTS}/data/{{part}}/{{split}}.jsonl",
        tokenizer=part_teacher_tokenizer,
    output:
        shard=f"{RESULTS}/teachers/{{teacher}}/shards/{{part}}/{{split}}.bin",
        sidecar=f"{RESULTS}/teachers/{{teacher}}/shards/{{part}}/{{split}}.bin.json",
    log:
        f"{LOGS}/teachers/{{teacher}}_encode_{{part}}_{{split}}.log",
    benchmark:
        f"{BENCHMARKS}/teacher_encode/{{teacher}}_encode_{{part}}_{{split}}.tsv"
    container:
        image("cpu")
    shell:
        "sdce encode --tokenizer {input.tokenizer} --input {input.documents} --out {output.shard} > {log} 2>&1"


rule teacher_train:
    input:
        train=f"{RESULTS}/teachers/{{teacher}}/shards/{{part}}/train.bin",
        train_sidecar=f"{RESULTS}/teachers/{{teacher}}/shards/{{part}}/train.bin.json",
        validation=f"{RESULTS}/teachers/{{teacher}}/shards/{{part}}/validation.bin",
        validation_sidecar=f"{RESULTS}/teachers/{{teacher}}/shards/{{part}}/validation.bin.json",
        tokenizer=part_teacher_tokenizer,
    output:
        model=directory(f"{RESULTS}/teachers/{{teacher}}/train/{{part}}/model"),
        metrics=f"{RESULTS}/teachers/{{teacher}}/train/{{part}}/metrics.jsonl",
        summary=f"{RESULTS}/teachers/{{teacher}}/train/{{part}}/summary.json",
    log:
        f"{LOGS}/teachers/{{teacher}}_train_{{part}}.log",
    benchmark:
        f"{BENCHMARKS}/teacher_train/{{teacher}}_train_{{part}}.tsv"
    container:
        image("cuda")
    threads: 1
    resources:
        mem_mb=4000,
    params:
        run=teacher_run_json,
        seed=teacher_seed,
    shell:
        "sdce train-job --params {params.run:q} --name {wildcards.teacher} --seed {params.seed}"
        " --train-shard {input.train} --val-shard {input.validation} --tokenizer {input.tokenizer}"
        " --threads {threads} --no-progress --out $(dirname {output.summary}) > {log} 2>&1"


rule teacher:
    input:
        unpack(teacher_model_inputs),
        source=teacher_source_inputs,
        tokenizer=part_tokenizer,
    output:
        descriptor=f"{RESULTS}/teachers/{{teacher}}/descriptors/{{part}}.json",
    log:
        f"{LOGS}/teachers/{{teacher}}_describe_{{part}}.log",
    benchmark:
        f"{BENCHMARKS}/teacher/{{teacher}}_describe_{{part}}.tsv"
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
        teacher=f"{RESULTS}/teachers/{{teacher}}/descriptors/{{part}}.json",
        shard=f"{RESULTS}/shards/{{part}}/train.bin",
        sidecar=f"{RESULTS}/shards/{{part}}/train.bin.json",
        tokenizer=part_tokenizer,
    output:
        cache=directory(f"{RESULTS}/teachers/{{teacher}}/cache/{{part}}"),
    log:
        f"{LOGS}/teachers/{{teacher}}_cache_{{part}}.log",
    benchmark:
        f"{BENCHMARKS}/cache_teacher/{{teacher}}_cache_{{part}}.tsv"
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
