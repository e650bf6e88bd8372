rule restore_fp:
    input:
        model="results/{model}/fp/model.pt",
        data="results/data/{dataset}/manifest.json",
    output:
        directory("results/{model}/fp/{dataset}/images"),
    params:
        lq=lambda w: f"results/data/{w.dataset}/lq",
        batch=config.get("restore", {}).get("batch_size", 8),
    log:
        "results/logs/restore/{model}/fp/{dataset}.log",
    benchmark:
        "results/benchmarks/restore/{model}/fp/{dataset}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        device=DEVICE,
    shell:
        "quantface restore --model {input.model} --input {params.lq} --output {output}"
        " --batch-size {params.batch} --device {resources.device} --threads 1 2> {log}"


rule restore:
    input:
        model="results/{model}/{method}/{bits}/model.pt",
        data="results/data/{dataset}/manifest.json",
    output:
        directory("results/{model}/{method}/{bits}/{dataset}/images"),
    params:
        lq=lambda w: f"results/data/{w.dataset}/lq",
        batch=config.get("restore", {}).get("batch_size", 8),
    log:
        "results/logs/restore/{model}/{method}/{bits}/{dataset}.log",
    benchmark:
        "results/benchmarks/restore/{model}/{method}/{bits}/{dataset}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        device=DEVICE,
    shell:
        "quantface restore --model {input.model} --input {params.lq} --output {output}"
        " --batch-size {params.batch} --device {resources.device} --threads 1 2> {log}"
