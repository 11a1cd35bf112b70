rule report:
    input:
        summaries=all_runs(f"{RESULTS}/runs/{{run}}/{{fold}}/seed{{seed}}/summary.json"),
        metrics=all_runs(f"{RESULTS}/runs/{{run}}/{{fold}}/seed{{seed}}/metrics.jsonl"),
        evals=all_runs(f"{RESULTS}/eval/{{run}}/{{fold}}/seed{{seed}}.json"),
        milestones=milestone_evals(),
        samples=sample_runs(
            f"{RESULTS}/eval/{{run}}/{{fold}}/seed{{seed}}.samples.jsonl"
        ),
        # PPO post-training (ppo.enabled, workflow/rules/ppo.smk); samples read beside metrics
        ppo_metrics=ppo_outputs("ppo_metrics.jsonl"),
        ppo_samples=ppo_outputs("samples.jsonl"),
    output:
        # `snakemake --report report.html` shows the plots and tables with these captions
        report=report(
            directory(f"{RESULTS}/report"),
            patterns=["{name}.png", "{name}.csv"],
            caption="../report/study_report.rst",
            category="Study report",
        ),
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCHMARKS}/report/report.tsv"
    container:
        image("cpu")
    params:
        spec=section_json("report"),
        baseline=config["baseline"],
        grid=grid_json(),
        # read, not an input: the job times of the jobs that have run (a rerun adds its own)
        benchmarks=BENCHMARKS,
    shell:
        "sdce report --params {params.spec:q} --summaries {input.summaries} --evals {input.evals}"
        " --milestones {input.milestones} --baseline {params.baseline} --grid {params.grid:q}"
        " --benchmarks {params.benchmarks} --samples {input.samples} --ppo {input.ppo_metrics}"
        " --out {output.report} > {log} 2>&1"
