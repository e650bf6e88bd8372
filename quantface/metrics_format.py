"""The columns of the scores files every evaluation writes and every report reads.

Why a module of its own: `metrics.csv` (one row per (model, method, bits, dataset, metric): the
mean over images) and `metrics_per_image.csv` (the scores behind each mean) are the contract
between `evaluate` and the report, and the report jobs must not import what evaluation needs
(torch, diffusers, pyiqa: ~5 s of start-up per report job) to learn a list of names.
"""

PER_IMAGE_COLUMNS = ["model", "method", "bits", "dataset", "metric", "image", "value"]
COLUMNS = [
    "model",
    "method",
    "bits",
    "w_bits",
    "a_bits",
    "dataset",
    "metric",
    "value",
    "higher_is_better",
    "n_images",
    "seed",
    "note",
]
