rule minimal_pairs:
    output:
        pairs=directory(f"{RESULTS}/eval/minimal_pairs"),
    log:
        f"{LOGS}/minimal_pairs.log",
    benchmark:
        f"{BENCHMARKS}/minimal_pairs/minimal_pairs.tsv"
    container:
        image("cpu")
    params:
        spec=pairs_json(),
    shell:
        "sdce minimal-pairs --params {params.spec:q} --out {output.pairs} > {log} 2>&1"


rule evaluate:
    input:
        unpack(pair_inputs),
        unpack(run_validation),
        model=f"{RESULTS}/runs/{{run}}/{{fold}}/seed{{seed}}/model",
    output:
        result=f"{RESULTS}/eval/{{run}}/{{fold}}/seed{{seed}}.json",
    log:
        f"{LOGS}/evaluate/{{run}}_{{fold}}_seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{{run}}_{{fold}}_seed{{seed}}.tsv"
    container:
        image("cpu")
    threads: 1
    params:
        spec=section_json("evaluation"),
        block_size=run_block_size,
        measure=run_measure,
        chunk=run_chunk_tokens,
        pairs=pair_arg,
    shell:
        "sdce evaluate --params {params.spec:q} --model {input.model} --val-shard {input.validation}"
        " --block-size {params.block_size} --measure {params.measure:q} --chunk-tokens {params.chunk} --name {wildcards.run}"
        " --fold {wildcards.fold} --seed {wildcards.seed}"
        " {params.pairs} --threads {threads} --out {output.result} > {log} 2>&1"


rule evaluate_milestones:
    input:
        unpack(pair_inputs),
        unpack(run_validation),
        summary=f"{RESULTS}/runs/{{run}}/{{fold}}/seed{{seed}}/summary.json",
        # read from the run folder (beside summary.json); named for remote jobs
        milestones=f"{RESULTS}/runs/{{run}}/{{fold}}/seed{{seed}}/milestones",
    output:
        result=f"{RESULTS}/eval/{{run}}/{{fold}}/seed{{seed}}.milestones.json",
    log:
        f"{LOGS}/evaluate/{{run}}_{{fold}}_seed{{seed}}_milestones.log",
    benchmark:
        f"{BENCHMARKS}/evaluate_milestones/{{run}}_{{fold}}_seed{{seed}}_milestones.tsv"
    container:
        image("cpu")
    threads: 1
    params:
        spec=section_json("evaluation"),
        block_size=run_block_size,
        measure=run_measure,
        chunk=run_chunk_tokens,
        pairs=pair_arg,
    shell:
        "sdce evaluate --milestones --params {params.spec:q} --model $(dirname {input.summary})"
        " --val-shard {input.validation} --block-size {params.block_size}"
        " --measure {params.measure:q} --chunk-tokens {params.chunk} --name {wildcards.run}"
        " --fold {wildcards.fold} --seed {wildcards.seed} {params.pairs} --threads {threads} --out {output.result} > {log} 2>&1"


rule generate:
    input:
        model=f"{RESULTS}/runs/{{run}}/{{fold}}/seed{{seed}}/model",
    output:
        samples=f"{RESULTS}/eval/{{run}}/{{fold}}/seed{{seed}}.samples.jsonl",
    log:
        f"{LOGS}/generate/{{run}}_{{fold}}_seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/generate/{{run}}_{{fold}}_seed{{seed}}.tsv"
    container:
        image("cpu")
    threads: 1
    params:
        spec=section_json("generation"),
    shell:
        "sdce generate --params {params.spec:q} --model {input.model} --threads {threads}"
        " --out {output.samples} > {log} 2>&1"
