# Data, per partition (`part`): `main` (the 95/5 split) or `fold<i>` (split.folds), and
# `<fold>-n<N>` for runs with their own training subset. A fold's tokenizer is trained on
# its full training split and shared by its subset partitions. Every output path starts
# with its kind (data/, tokenizers/, shards/, ...) and ends with the wildcards: paths that
# cannot be confused even where wildcard constraints do not reach (default storage).
rule corpus:
    input:
        source_inputs(config["corpus"]),
    output:
        corpus=f"{RESULTS}/data/corpus.jsonl",
        stats=f"{RESULTS}/data/corpus.stats.json",
    log:
        f"{LOGS}/corpus.log",
    benchmark:
        f"{BENCHMARKS}/corpus/corpus.tsv"
    container:
        image("cpu")
    params:
        spec=section_json("corpus"),
    shell:
        "sdce corpus --params {params.spec:q} --out {output.corpus} --stats {output.stats} > {log} 2>&1"


# split.validation_corpus: the validation documents from a corpus of their own
rule validation_corpus:
    input:
        source_inputs(config["split"]["validation_corpus"]),
    output:
        corpus=f"{RESULTS}/data/validation_corpus.jsonl",
        stats=f"{RESULTS}/data/validation_corpus.stats.json",
    log:
        f"{LOGS}/validation_corpus.log",
    benchmark:
        f"{BENCHMARKS}/corpus/validation_corpus.tsv"
    container:
        image("cpu")
    params:
        spec=json.dumps(config["split"]["validation_corpus"], sort_keys=True),
        missing=missing_split_arg(),
    shell:
        "sdce corpus --params {params.spec:q} {params.missing} --out {output.corpus}"
        " --stats {output.stats} > {log} 2>&1"


rule split:
    input:
        unpack(split_inputs),
    output:
        train=f"{RESULTS}/data/{{part}}/train.jsonl",
        validation=f"{RESULTS}/data/{{part}}/validation.jsonl",
    log:
        f"{LOGS}/split/{{part}}.log",
    benchmark:
        f"{BENCHMARKS}/split/{{part}}.tsv"
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
        train=f"{RESULTS}/data/{{fold}}/train.jsonl",
        source=tokenizer_inputs,
    output:
        tokenizer=directory(f"{RESULTS}/tokenizers/{{fold}}"),
    log:
        f"{LOGS}/tokenizer/{{fold}}.log",
    benchmark:
        f"{BENCHMARKS}/tokenizer/{{fold}}.tsv"
    container:
        image("cpu")
    params:
        spec=section_json("tokenizer"),
    shell:
        "sdce tokenizer --params {params.spec:q} --train {input.train} --out {output.tokenizer} > {log} 2>&1"


rule encode:
    input:
        documents=f"{RESULTS}/data/{{part}}/{{split}}.jsonl",
        tokenizer=part_tokenizer,
    output:
        shard=f"{RESULTS}/shards/{{part}}/{{split}}.bin",
        sidecar=f"{RESULTS}/shards/{{part}}/{{split}}.bin.json",
    log:
        f"{LOGS}/encode/{{part}}_{{split}}.log",
    benchmark:
        f"{BENCHMARKS}/encode/{{part}}_{{split}}.tsv"
    container:
        image("cpu")
    shell:
        "sdce encode --tokenizer {input.tokenizer} --input {input.documents} --out {output.shard} > {log} 2>&1"
