# Optional target (`snakemake deploy`, needs the [deploy] extra): every model as an ONNX graph run
# by ONNX Runtime on the CPU, checked against its fake-quant simulation and timed beside FP32 in
# torch and in ORT. Not part of `rule all`: latency needs a quiet machine, not the study's DAG.
# Each benchmark is its own single-threaded job, so `--cores 1` keeps two from sharing a core.

# Timing settings are fixed here, not config keys: the table's numbers must mean the same thing
# in every run (the footer states them).
DEPLOY_WARMUP, DEPLOY_RUNS, DEPLOY_THREADS = 3, 10, 1
DEPLOY_FACES = f"results/data/{DATASET_NAMES[0]}"


rule deploy_export:
    input:
        "results/{model}/{cell}/model.pt",
    output:
        onnx="results/deploy/{model}/{cell}/model.onnx",
        report="results/deploy/{model}/{cell}/export.json",
    wildcard_constraints:
        cell="fp|[^/]+/[^/]+",
    log:
        "results/logs/deploy/{model}/{cell}/export.log",
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "quantface export --format onnx --model {input} --out {output.onnx}"
        " --report {output.report} --verify --threads 1 --device cpu 2> {log}"


rule deploy_bench:
    input:
        model="results/{model}/{cell}/model.pt",
        onnx="results/deploy/{model}/{cell}/model.onnx",
        fp="results/{model}/fp/model.pt",
        faces=f"{DEPLOY_FACES}/manifest.json",
    output:
        "results/deploy/{model}/{cell}/bench.json",
    wildcard_constraints:
        cell="fp|[^/]+/[^/]+",
    params:
        faces=f"{DEPLOY_FACES}/lq",
        warmup=DEPLOY_WARMUP,
        runs=DEPLOY_RUNS,
        threads=DEPLOY_THREADS,
    log:
        "results/logs/deploy/{model}/{cell}/bench.log",
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "quantface deploy-bench --model {input.model} --onnx {input.onnx} --fp {input.fp}"
        " --images {params.faces} --warmup {params.warmup} --runs {params.runs}"
        " --threads {params.threads} --out {output} 2> {log}"


rule deploy:
    input:
        [f"results/deploy/{MODEL}/fp/bench.json"]
        + [f"results/deploy/{MODEL}/{m}/{b}/bench.json" for m, b in quantized_cells()],
    output:
        md="results/tables/deploy.md",
        csv="results/tables/deploy.csv",
        figure="results/figures/deploy_quality_vs_latency.png",
    log:
        "results/logs/deploy.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=5,
    shell:
        "quantface deploy-report --bench {input} --out results/tables"
        " --figure {output.figure} 2> {log}"
