rule evaluate:
    input:
        model=f"{RESULTS}/runs/{{run}}/seed{{seed}}/model",
        validation=f"{RESULTS}/shards/validation.bin",
    output:
        result=f"{RESULTS}/eval/{{run}}/seed{{seed}}.json",
    log:
        f"{LOGS}/evaluate/{{run}}_seed{{seed}}.log",
    container:
        image("cpu")
    threads: 1
    params:
        spec=section_json("evaluation"),
        block_size=run_block_size,
    shell:
        "sdce evaluate --params {params.spec:q} --model {input.model} --val-shard {input.validation}"
        " --block-size {params.block_size} --name {wildcards.run} --seed {wildcards.seed}"
        " --threads {threads} --out {output.result} > {log} 2>&1"
