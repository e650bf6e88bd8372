rule prepare_model:
    output:
        "results/{model}/fp/model.pt",
    params:
        options=train_options,
        seed=lambda w: job_seed("model", w.model),
    log:
        "results/logs/prepare_model/{model}.log",
    benchmark:
        "results/benchmarks/prepare_model/{model}.tsv"
    threads: 1
    resources:
        mem_mb=6000,
        runtime=60,
        device=DEVICE,
    # One torch thread: the thread count the shipped trained restorer was made with
    # (quantface/models/shipped.py), so `model.train.from_scratch: true` retrains the same tensors.
    shell:
        "quantface prepare-model --model {wildcards.model} --out {output} --options {params.options}"
        " --seed {params.seed} --device {resources.device} --threads 1 2> {log}"


rule fp_cost:
    input:
        "results/{model}/fp/model.pt",
    output:
        "results/{model}/fp/cost.json",
    log:
        "results/logs/fp_cost/{model}.log",
    benchmark:
        "results/benchmarks/fp_cost/{model}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
        device=DEVICE,
    shell:
        "quantface cost --model {input} --out {output} --device {resources.device} 2> {log}"


rule calibrate:
    input:
        "results/{model}/fp/model.pt",
    output:
        "results/{model}/calib/activations.pt",
    params:
        n=config["calibration"].get("n_images", 32),
        batch=config["calibration"].get("batch_size", 8),
        rows=config["calibration"].get("sample_rows", 512),
        seed=calibration_seed,
        degradation=shell_json(config["data"].get("degradation", {})),
    log:
        "results/logs/calibrate/{model}.log",
    benchmark:
        "results/benchmarks/calibrate/{model}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
        device=DEVICE,
    shell:
        "quantface calibrate --model {input} --out {output} --n-images {params.n}"
        " --batch-size {params.batch} --sample-rows {params.rows} --seed {params.seed}"
        " --degradation {params.degradation} --device {resources.device}"
        " --threads " + str(TORCH_THREADS) + " 2> {log}"


# The activation-distribution figure's second row: the statistics QuantFace's activation
# quantizers see once the FP model is balanced (its balancing options only, so changing its
# training budget does not rerun this job), on the same calibration images.
rule calibrate_balanced:
    input:
        model="results/{model}/fp/model.pt",
        calib="results/{model}/calib/activations.pt",
    output:
        "results/{model}/calib/activations_balanced.pt",
    params:
        batch=config["calibration"].get("batch_size", 8),
        options=balancing_options,
    log:
        "results/logs/calibrate_balanced/{model}.log",
    benchmark:
        "results/benchmarks/calibrate_balanced/{model}.tsv"
    threads: QUANTIZE_THREADS
    resources:
        mem_mb=4000,
        runtime=30,
        device=DEVICE,
    shell:
        "quantface calibrate --balanced {input.calib} --model {input.model} --out {output}"
        " --batch-size {params.batch} --options {params.options} --device {resources.device}"
        " --threads " + str(QUANTIZE_THREADS) + " 2> {log}"


# `seeds`: each extra global seed draws its own calibration set (results/<model>/seed<s>/calib/)
use rule calibrate as calibrate_seed with:
    output:
        "results/{model}/seed{seed}/calib/activations.pt",
    log:
        "results/logs/calibrate/{model}.seed{seed}.log",
    benchmark:
        "results/benchmarks/calibrate/{model}.seed{seed}.tsv"
