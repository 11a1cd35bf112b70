rule bigram:
    input:
        shard=f"{RESULTS}/shards/train.bin",
        sidecar=f"{RESULTS}/shards/train.bin.json",
    output:
        table=f"{RESULTS}/teachers/bigram.npz",
        meta=f"{RESULTS}/teachers/bigram.json",
    log:
        f"{LOGS}/bigram.log",
    container:
        image("cpu")
    params:
        spec=section_json("bigram"),
    shell:
        "sdce bigram --params {params.spec:q} --shard {input.shard}"
        " --out {output.table} --meta {output.meta} > {log} 2>&1"
