rule train:
    input:
        unpack(teacher_inputs),
        unpack(run_shards),
    output:
        model=directory(f"{RESULTS}/runs/{{run}}/{{fold}}/seed{{seed}}/model"),
        milestones=directory(f"{RESULTS}/runs/{{run}}/{{fold}}/seed{{seed}}/milestones"),
        metrics=f"{RESULTS}/runs/{{run}}/{{fold}}/seed{{seed}}/metrics.jsonl",
        summary=f"{RESULTS}/runs/{{run}}/{{fold}}/seed{{seed}}/summary.json",
    log:
        f"{LOGS}/train/{{run}}_{{fold}}_seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/train/{{run}}_{{fold}}_seed{{seed}}.tsv"
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
        "sdce train-job --params {params.run:q} --name {wildcards.run} --fold {wildcards.fold} --seed {wildcards.seed}"
        " --train-shard {input.train} --val-shard {input.validation} --tokenizer {input.tokenizer}"
        " {params.teacher} --threads {threads} --processes {resources.processes}"
        " --launcher {resources.launcher} --checkpoint-uri {resources.checkpoint_uri}"
        " --out $(dirname {output.summary}) > {log} 2>&1"
