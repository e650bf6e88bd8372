rule prepare_data:
    output:
        manifest="results/data/{dataset}/manifest.json",
    params:
        options=dataset_options,
        seed=lambda w: job_seed("data", w.dataset),
        folder=lambda w: f"results/data/{w.dataset}",
    log:
        "results/logs/prepare_data/{dataset}.log",
    benchmark:
        "results/benchmarks/prepare_data/{dataset}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
        device=DEVICE,
    shell:
        "quantface prepare-data --dataset {wildcards.dataset} --out {params.folder}"
        " --options {params.options} --seed {params.seed} --device {resources.device} 2> {log}"
