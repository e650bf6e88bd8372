# QuantFace Bench: the whole study as one DAG. Rules are thin wrappers around the `quantface` CLI;
# all logic lives in the Python package. See README.md and config/README.md.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/quantize.smk"
include: "workflow/rules/restore_evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/deploy.smk"


onstart:
    hang_up_like_terminate()
    start_forkserver(workflow)


onsuccess:
    stop_forkserver()


onerror:
    stop_forkserver()


rule all:
    default_target: True
    input:
        final_outputs(),
