# One job per model restores every test set and scores it (quantface/cell.py): the model and the
# metrics stay loaded across sets, and each set keeps its own images/ folder and metrics.csv.
WEIGHTS_DIR = config["metrics"].get("weights_dir", "results/.weights")
RESTORE_BATCH = config.get("restore", {}).get("batch_size", 8)
METRIC_BATCH = config["metrics"].get("batch_size", 8)
CELL_COMMON = (
    " --sets {params.sets} --weights-dir " + WEIGHTS_DIR
    + f" --batch-size {RESTORE_BATCH} --metric-batch-size {METRIC_BATCH}"
    + " --model-name {wildcards.model} --seed " + str(config["seed"])
    + " --device {resources.device} --threads 1 2> {log}"
)


rule evaluate_input:
    input:
        data=manifests(DATASET_NAMES),
    output:
        metrics=cell_files("input", DATASET_NAMES, "metrics.csv"),
        per_image=cell_files("input", DATASET_NAMES, "metrics_per_image.csv"),
    params:
        sets=lambda w: test_sets(w.model, "input", DATASET_NAMES),
    log:
        "results/logs/evaluate_input/{model}.log",
    benchmark:
        "results/benchmarks/evaluate_input/{model}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        device=DEVICE,
    shell:
        "quantface restore-evaluate --method input --bits -" + CELL_COMMON


rule restore_evaluate_fp:
    input:
        model="results/{model}/fp/model.pt",
        data=manifests(DATASET_NAMES),
    output:
        images=[directory(p) for p in cell_files("fp", DATASET_NAMES, "images")],
        metrics=cell_files("fp", DATASET_NAMES, "metrics.csv"),
        per_image=cell_files("fp", DATASET_NAMES, "metrics_per_image.csv"),
    params:
        sets=lambda w: test_sets(w.model, "fp", DATASET_NAMES),
    log:
        "results/logs/restore_evaluate/{model}/fp.log",
    benchmark:
        "results/benchmarks/restore_evaluate/{model}/fp.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        device=DEVICE,
    shell:
        "quantface restore-evaluate --model {input.model} --method fp --bits fp32" + CELL_COMMON


rule restore_evaluate:
    input:
        model="results/{model}/{method}/{bits}/model.pt",
        data=manifests(DATASET_NAMES),
        fp=cell_files("fp", DATASET_NAMES, "images"),
    output:
        images=[directory(p) for p in cell_files("{method}/{bits}", DATASET_NAMES, "images")],
        metrics=cell_files("{method}/{bits}", DATASET_NAMES, "metrics.csv"),
        per_image=cell_files("{method}/{bits}", DATASET_NAMES, "metrics_per_image.csv"),
    wildcard_constraints:
        # protocol and seed cells: every test set too
        method=_alternatives(METHOD_NAMES + PROTOCOL_NAMES + SEED_NAMES),
    params:
        sets=lambda w: test_sets(w.model, f"{w.method}/{w.bits}", DATASET_NAMES),
    log:
        "results/logs/restore_evaluate/{model}/{method}/{bits}.log",
    benchmark:
        "results/benchmarks/restore_evaluate/{model}/{method}/{bits}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        device=DEVICE,
    shell:
        "quantface restore-evaluate --model {input.model} --method {wildcards.method}"
        " --bits {wildcards.bits}" + CELL_COMMON


if ABLATION_CELLS:  # ablation variants are restored on their own test sets only

    use rule restore_evaluate as restore_evaluate_ablation with:
        input:
            model="results/{model}/{method}/{bits}/model.pt",
            data=manifests(ABLATION_DATASETS),
            fp=cell_files("fp", ABLATION_DATASETS, "images"),
        output:
            images=[directory(p) for p in cell_files("{method}/{bits}", ABLATION_DATASETS, "images")],
            metrics=cell_files("{method}/{bits}", ABLATION_DATASETS, "metrics.csv"),
            per_image=cell_files("{method}/{bits}", ABLATION_DATASETS, "metrics_per_image.csv"),
        wildcard_constraints:
            method=_alternatives(ABLATION_NAMES),
        params:
            sets=lambda w: test_sets(w.model, f"{w.method}/{w.bits}", ABLATION_DATASETS),
