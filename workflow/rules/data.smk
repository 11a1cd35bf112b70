# Data, per partition (`part`): `main` (the 95/5 split) or `fold<i>` (split.folds), and
# `<fold>-n<N>` for runs with their own training subset. A fold's tokenizer is trained on
# its full training split and shared by its subset partitions.
rule corpus:
    output:
        corpus=f"{RESULTS}/data/corpus.jsonl",
        stats=f"{RESULTS}/data/corpus.stats.json",
    log:
        f"{LOGS}/corpus.log",
    container:
        image("cpu")
    params:
        spec=section_json("corpus"),
    shell:
        "sdce corpus --params {params.spec:q} --out {output.corpus} --stats {output.stats} > {log} 2>&1"


rule split:
    input:
        corpus=rules.corpus.output.corpus,
    output:
        train=f"{RESULTS}/{{part}}/data/train.jsonl",
        validation=f"{RESULTS}/{{part}}/data/validation.jsonl",
    log:
        f"{LOGS}/{{part}}/split.log",
    container:
        image("cpu")
    params:
        spec=part_split_json,
        fold=fold_arg,
    shell:
        "sdce split --params {params.spec:q} {params.fold} --corpus {input.corpus}"
        " --train {output.train} --validation {output.validation} > {log} 2>&1"


rule tokenizer:
    input:
        train=f"{RESULTS}/{{fold}}/data/train.jsonl",
    output:
        tokenizer=directory(f"{RESULTS}/{{fold}}/tokenizer"),
    log:
        f"{LOGS}/{{fold}}/tokenizer.log",
    container:
        image("cpu")
    params:
        spec=section_json("tokenizer"),
    shell:
        "sdce tokenizer --params {params.spec:q} --train {input.train} --out {output.tokenizer} > {log} 2>&1"


rule encode:
    input:
        documents=f"{RESULTS}/{{part}}/data/{{split}}.jsonl",
        tokenizer=part_tokenizer,
    output:
        shard=f"{RESULTS}/{{part}}/shards/{{split}}.bin",
        sidecar=f"{RESULTS}/{{part}}/shards/{{split}}.bin.json",
    log:
        f"{LOGS}/{{part}}/encode_{{split}}.log",
    container:
        image("cpu")
    shell:
        "sdce encode --tokenizer {input.tokenizer} --input {input.documents} --out {output.shard} > {log} 2>&1"
