# Optional target (`snakemake export`): every quantized model as a packed low-bit file, with its
# measured size on disk beside the cost model's. Not part of `rule all`, so the default run's
# wall time does not grow.


rule export_model:
    input:
        "results/{model}/{method}/{bits}/model.pt",
    output:
        packed="results/export/{model}/{method}/{bits}/model.safetensors",
        report="results/export/{model}/{method}/{bits}/size.json",
    params:
        seed=lambda w: job_seed("export", w.model, w.method, w.bits),
    log:
        "results/logs/export/{model}/{method}/{bits}.log",
    benchmark:
        "results/benchmarks/export/{model}/{method}/{bits}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
        device=DEVICE,
    shell:
        "quantface export --model {input} --out {output.packed} --report {output.report}"
        " --verify --seed {params.seed} --device {resources.device} --threads 1 2> {log}"


rule export:
    input:
        [f"results/export/{MODEL}/{m}/{b}/size.json" for m, b in quantized_cells()],
    output:
        "results/export/sizes.csv",
    log:
        "results/logs/export.log",
    benchmark:
        "results/benchmarks/export.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "quantface aggregate --exports {input} --export-out {output} 2> {log}"
