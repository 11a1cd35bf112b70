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
        train=f"{RESULTS}/data/train.jsonl",
        validation=f"{RESULTS}/data/validation.jsonl",
    log:
        f"{LOGS}/split.log",
    container:
        image("cpu")
    params:
        spec=section_json("split"),
    shell:
        "sdce split --params {params.spec:q} --corpus {input.corpus}"
        " --train {output.train} --validation {output.validation} > {log} 2>&1"


rule tokenizer:
    input:
        train=rules.split.output.train,
    output:
        tokenizer=directory(f"{RESULTS}/tokenizer"),
    log:
        f"{LOGS}/tokenizer.log",
    container:
        image("cpu")
    params:
        spec=section_json("tokenizer"),
    shell:
        "sdce tokenizer --params {params.spec:q} --train {input.train} --out {output.tokenizer} > {log} 2>&1"


rule encode:
    input:
        documents=f"{RESULTS}/data/{{split}}.jsonl",
        tokenizer=rules.tokenizer.output.tokenizer,
    output:
        shard=f"{RESULTS}/shards/{{split}}.bin",
        sidecar=f"{RESULTS}/shards/{{split}}.bin.json",
    log:
        f"{LOGS}/encode_{{split}}.log",
    container:
        image("cpu")
    shell:
        "sdce encode --tokenizer {input.tokenizer} --input {input.documents} --out {output.shard} > {log} 2>&1"
