EVAL_COMMON = (
    " --metrics={params.metrics} --out {output} --weights-dir {params.weights}"
    " --manifest {input.data}"
    " --model-name {wildcards.model} --dataset {wildcards.dataset} --seed {params.seed}"
    " --batch-size {params.batch} --device {resources.device} --threads 1 2> {log}"
)
WEIGHTS_DIR = config["metrics"].get("weights_dir", "results/.weights")


rule evaluate_input:
    input:
        data="results/data/{dataset}/manifest.json",
    output:
        "results/{model}/input/{dataset}/metrics.csv",
    params:
        metrics=lambda w: metric_names(w.dataset, quantized=False),
        ref=lambda w: f"--ref results/data/{w.dataset}/hq" if is_paired(w.dataset) else "",
        lq=lambda w: f"results/data/{w.dataset}/lq",
        weights=WEIGHTS_DIR,
        seed=config["seed"],
        batch=config["metrics"].get("batch_size", 8),
    log:
        "results/logs/evaluate/{model}/input/{dataset}.log",
    benchmark:
        "results/benchmarks/evaluate/{model}/input/{dataset}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        device=DEVICE,
    shell:
        "quantface evaluate --pred {params.lq} {params.ref} --method input --bits -"
        + EVAL_COMMON


rule evaluate_fp:
    input:
        images="results/{model}/fp/{dataset}/images",
        data="results/data/{dataset}/manifest.json",
    output:
        "results/{model}/fp/{dataset}/metrics.csv",
    params:
        metrics=lambda w: metric_names(w.dataset, quantized=False),
        ref=lambda w: f"--ref results/data/{w.dataset}/hq" if is_paired(w.dataset) else "",
        weights=WEIGHTS_DIR,
        seed=config["seed"],
        batch=config["metrics"].get("batch_size", 8),
    log:
        "results/logs/evaluate/{model}/fp/{dataset}.log",
    benchmark:
        "results/benchmarks/evaluate/{model}/fp/{dataset}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        device=DEVICE,
    shell:
        "quantface evaluate --pred {input.images} {params.ref} --method fp --bits fp32"
        + EVAL_COMMON


rule evaluate:
    input:
        images="results/{model}/{method}/{bits}/{dataset}/images",
        fp="results/{model}/fp/{dataset}/images",
        data="results/data/{dataset}/manifest.json",
    output:
        "results/{model}/{method}/{bits}/{dataset}/metrics.csv",
    params:
        metrics=lambda w: metric_names(w.dataset, quantized=True),
        ref=lambda w: f"--ref results/data/{w.dataset}/hq" if is_paired(w.dataset) else "",
        weights=WEIGHTS_DIR,
        seed=config["seed"],
        batch=config["metrics"].get("batch_size", 8),
    log:
        "results/logs/evaluate/{model}/{method}/{bits}/{dataset}.log",
    benchmark:
        "results/benchmarks/evaluate/{model}/{method}/{bits}/{dataset}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        device=DEVICE,
    shell:
        "quantface evaluate --pred {input.images} {params.ref} --fp {input.fp}"
        " --method {wildcards.method} --bits {wildcards.bits}" + EVAL_COMMON
