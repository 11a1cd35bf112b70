rule report:
    input:
        summaries=all_runs(f"{RESULTS}/runs/{{run}}/{{fold}}/seed{{seed}}/summary.json"),
        metrics=all_runs(f"{RESULTS}/runs/{{run}}/{{fold}}/seed{{seed}}/metrics.jsonl"),
        evals=all_runs(f"{RESULTS}/eval/{{run}}/{{fold}}/seed{{seed}}.json"),
        milestones=milestone_evals(),
    output:
        report=directory(f"{RESULTS}/report"),
    log:
        f"{LOGS}/report.log",
    container:
        image("cpu")
    params:
        spec=section_json("report"),
        baseline=config["baseline"],
        grid=grid_json(),
    shell:
        "sdce report --params {params.spec:q} --summaries {input.summaries} --evals {input.evals}"
        " --milestones {input.milestones} --baseline {params.baseline} --grid {params.grid:q}"
        " --out {output.report} > {log} 2>&1"
