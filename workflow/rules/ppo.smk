# PPO post-training (ppo.enabled; sdce.ppo, docs/ppo.md): a run's final model of the first
# fold and seed, post-trained with TRL's PPO by `sdce ppo`; the report adds its curves and
# its samples before and after. Helpers: common.smk (PPO_RUNS, ppo_*).
rule ppo:
    input:
        unpack(ppo_inputs),
    output:
        final=directory(f"{RESULTS}/ppo/{{run}}/final"),
        metrics=f"{RESULTS}/ppo/{{run}}/ppo_metrics.jsonl",
        samples=f"{RESULTS}/ppo/{{run}}/samples.jsonl",
    log:
        f"{LOGS}/ppo/{{run}}.log",
    benchmark:
        f"{BENCHMARKS}/ppo/{{run}}.tsv"
    container:
        image("cuda")
    threads: 1
    params:
        spec=ppo_json(),
        generation=section_json("generation"),
        documents=ppo_documents_arg,
    shell:
        "sdce ppo --params {params.spec:q} --generation {params.generation:q} --model {input.model}"
        " {params.documents} --threads {threads} --out $(dirname {output.metrics}) > {log} 2>&1"
