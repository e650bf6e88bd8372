rule quantize:
    input:
        model="results/{model}/fp/model.pt",
        calib=calibration_file,
    output:
        model="results/{model}/{method}/{bits}/model.pt",
        plan="results/{model}/{method}/{bits}/plan.json",
        cost="results/{model}/{method}/{bits}/cost.json",
    params:
        options=method_options,
        method=method_base,
        scheme=method_scheme,
        seed=quantize_seed,
        folder=lambda w: f"results/{w.model}/{w.method}/{w.bits}",
    log:
        "results/logs/quantize/{model}/{method}/{bits}.log",
    benchmark:
        "results/benchmarks/quantize/{model}/{method}/{bits}.tsv"
    threads: QUANTIZE_THREADS
    resources:
        mem_mb=6000,
        runtime=120,
        device=DEVICE,
    shell:
        "quantface quantize --model {input.model} --method {params.method}"
        " --bits {wildcards.bits} --calib {input.calib} --out {params.folder}"
        " --options {params.options} {params.scheme} --label {wildcards.method}"
        " --seed {params.seed} --device {resources.device}"
        " --threads " + str(QUANTIZE_THREADS) + " 2> {log}"
