localrules:
    aggregate,
    tables,
    figures,


rule aggregate:
    input:
        metrics=all_metric_files(),
        per_image=[f.replace("metrics.csv", "metrics_per_image.csv") for f in all_metric_files()],
        costs=all_cost_files(),
    output:
        metrics="results/metrics.csv",
        per_image="results/metrics_per_image.csv",
        cost="results/cost.csv",
    log:
        "results/logs/aggregate.log",
    benchmark:
        "results/benchmarks/aggregate.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "quantface aggregate --metrics {input.metrics} --out {output.metrics}"
        " --per-image {input.per_image} --per-image-out {output.per_image}"
        " --costs {input.costs} --cost-out {output.cost} 2> {log}"


rule tables:
    input:
        metrics="results/metrics.csv",
        per_image="results/metrics_per_image.csv",
        cost="results/cost.csv",
    output:
        [
            report(f, caption="../report/tables.rst", category="Tables", labels=report_labels(f))
            for f in table_outputs()
        ],
    params:
        synthetic=",".join(config["report"].get("synthetic", [])),
        realworld=",".join(config["report"].get("realworld", [])),
        footnotes=footnotes(),
        ablation=(
            f"--ablation {','.join(ABLATION_NAMES)} --ablation-reference "
            + ",".join(sorted({qf_config.resolve_method(config, v)[0] for v in ABLATION_NAMES}))
            if ABLATION_NAMES
            else ""
        ),
    log:
        "results/logs/tables.log",
    benchmark:
        "results/benchmarks/tables.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "quantface tables --metrics {input.metrics} --per-image {input.per_image}"
        " --cost {input.cost} --out results/tables --seed " + str(config["seed"]) +
        " --synthetic '{params.synthetic}' --realworld '{params.realworld}'"
        " {params.footnotes} {params.ablation} 2> {log}"


rule figures:
    input:
        metrics="results/metrics.csv",
        per_image="results/metrics_per_image.csv",
        cost="results/cost.csv",
        calib=f"results/{MODEL}/calib/activations.pt",
        calib_after=f"results/{MODEL}/calib/activations_balanced.pt",
        plans=[f"results/{MODEL}/{m}/{b}/plan.json" for m, b in mixed_cells()],
        images=qualitative_inputs,
    output:
        [
            report(f, caption=figure_caption(f), category="Figures", labels=report_labels(f))
            for f in figure_outputs()
        ],
    params:
        qualitative=qualitative_spec,
        plans=plan_options,
    log:
        "results/logs/figures.log",
    benchmark:
        "results/benchmarks/figures.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "quantface figures --metrics {input.metrics} --per-image {input.per_image}"
        " --seed " + str(config["seed"]) + " --cost {input.cost} --calib {input.calib}"
        " --calib-after {input.calib_after}"
        " {params.plans} --out results/figures --qualitative {params.qualitative} 2> {log}"
