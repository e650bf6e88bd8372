"""Load and validate the workflow config: schema first, then registry names and bit strings.

Validation happens before any job starts (the Snakefile calls `validate_config` at parse time)
and every failure is one `ConfigError` line naming the key and what is allowed.
"""

from __future__ import annotations

import re
import zlib
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from quantface.device import check_device
from quantface.errors import ConfigError, DeviceError, QuantFaceError, first_line
from quantface.quant.plan import MP_RE, parse_bits
from quantface.registry import DATASETS, METHODS, METRICS, MODELS
from quantface.validation_cache import build_key, record_build, seen_to_build

SCHEMA_FILE = "config.schema.yaml"


def schema() -> dict[str, Any]:
    text = resources.files("quantface.schemas").joinpath(SCHEMA_FILE).read_text()
    return yaml.safe_load(text)


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _message(error: jsonschema.ValidationError) -> str:
    """The schema's message plus what is allowed there, so the one line is enough to fix it."""
    allowed = error.schema.get("properties") if error.validator == "additionalProperties" else None
    if allowed:
        return f"{error.message}; allowed keys: {', '.join(allowed)}"
    return error.message


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Raise ConfigError naming the first offending key; return the config unchanged if valid.

    `device` is checked against this machine: a config that asks for CUDA where there is none
    stops here, before any job (the slurm-gpu profile asks per rule instead, see common.smk).
    """
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.path])
    if errors:
        e = errors[0]
        raise ConfigError(f"config key '{_key(e.absolute_path)}': {_message(e)}")
    try:
        check_device(config.get("device", "auto"))
    except DeviceError as e:
        raise ConfigError(f"config key 'device': {e}") from None

    def check(names, registry, key: str) -> None:
        for name in names:
            if name not in registry:
                raise ConfigError(
                    f"config key '{key}': unknown {registry.kind} '{name}'; "
                    f"known: {', '.join(registry.names())}"
                )

    check([config["model"]["name"]], MODELS, "model.name")
    known = MODELS.attr(config["model"]["name"], "default_arch")
    for k in config["model"].get("arch", {}) if known is not None else []:
        if k not in known:
            raise ConfigError(
                f"config key 'model.arch.{k}': unknown for model '{config['model']['name']}'; "
                f"known: {', '.join(known)}"
            )
    if config["model"].get("train"):
        from quantface.models.train_defaults import DEFAULT_TRAIN

        for k in config["model"]["train"]:
            if k not in DEFAULT_TRAIN:
                raise ConfigError(
                    f"config key 'model.train.{k}': unknown training option; "
                    f"known: {', '.join(DEFAULT_TRAIN)}"
                )
    _check_architecture(config)
    check(config["methods"], METHODS, "methods")
    check(config["data"]["datasets"], DATASETS, "data.datasets")
    metric_keys = ("full_reference", "no_reference", "fidelity")
    size = config["data"]["image_size"]
    for k in metric_keys:
        check(config["metrics"].get(k, []), METRICS, f"metrics.{k}")
        for name in config["metrics"].get(k, []):
            if (min_size := METRICS.attr(name, "min_size", 1)) > size:
                raise ConfigError(
                    f"config key 'metrics.{k}': '{name}' needs images of at least "
                    f"{min_size} px; data.image_size is {size}"
                )
    for b in config["bits"]:
        try:
            parse_bits(b)
        except ConfigError as e:
            raise ConfigError(f"config key 'bits': {e}") from None
    for m in config["methods"]:
        if m != "fp" and not any(
            c[0] == m for c in quantized_cells(config["methods"], config["bits"])
        ):
            kind = "an mpX" if _is_mixed(m) else "a uniform wXaY"
            raise ConfigError(f"config key 'methods': '{m}' needs {kind} entry in 'bits'")
    _check_mp_budgets(config)
    _check_ablation(config)
    _check_protocols(config)
    _check_seeds(config)
    _check_perceptual(config)
    for k in ("synthetic", "realworld"):
        for name in config["report"].get(k, []):
            if name not in config["data"]["datasets"]:
                raise ConfigError(
                    f"config key 'report.{k}': dataset '{name}' is not in "
                    f"data.datasets ({', '.join(config['data']['datasets'])})"
                )
    qb = config["report"].get("qualitative_bits")
    if qb is not None and qb not in config["bits"]:
        raise ConfigError(
            f"config key 'report.qualitative_bits': '{qb}' is not one of bits "
            f"({', '.join(config['bits'])})"
        )
    for name, opts in config["data"]["datasets"].items():
        if DATASETS.attr(name, "check_source") is None:
            continue
        try:  # user folders: counts, pairs, headers before any job
            DATASETS.get(name)().check_source(opts)
        except QuantFaceError as e:
            raise ConfigError(f"config key 'data.datasets.{name}': {e}") from None
    return config


def _check_architecture(config: dict[str, Any]) -> None:
    """Build the configured (embedded, small) architecture once: a value every key accepts alone
    but that does not build (levels vs attention flags, groups that do not divide channels, a
    shipped VAE of another shape) fails here, not in the training job. A success is remembered
    (quantface/validation_cache.py), so the Snakefile's parse builds each architecture once."""
    name = config["model"]["name"]
    default = MODELS.attr(name, "default_arch")
    overrides = config["model"].get("arch", {})
    if default is None or (
        not overrides and config["data"]["image_size"] == default.get("image_size")
    ):
        return  # no architecture, or the default one (the shipped restorer's, built by the tests)
    entry = MODELS.index().get(name)
    if entry is not None and "from_assets" in entry.dynamic:
        return  # converted from local weights (read from its source: no import)
    arch = {**overrides, "image_size": config["data"]["image_size"]}
    key = build_key(name, entry.module if entry else None, arch)
    if seen_to_build(key):
        return  # built before with this code and these libraries (quantface/validation_cache.py)
    cls = MODELS.get(name)
    if hasattr(cls, "from_assets"):
        return  # converted from local weights: checked by check_model_assets
    try:
        model = cls(arch)
        if model.config.get("pretrained_vae"):
            model.check_pretrained_vae()
        record_build(key)
    except QuantFaceError as e:
        raise ConfigError(f"config key 'model.arch': {e}") from None
    except (ValueError, AssertionError, RuntimeError, TypeError) as e:  # diffusers' own checks
        raise ConfigError(
            f"config key 'model.arch': the architecture cannot be built: {first_line(e)}"
        ) from None


def _check_perceptual(config: dict[str, Any]) -> None:
    """quantface_mp's perceptual metric (a name the schema only knows as a string)."""
    from quantface.methods.quantface_options import QuantFaceMPOptions, check_perceptual

    keys = {m: f"method_options.{m}" for m in config["methods"] if m == "quantface_mp"}
    for v, spec in ablation_variants(config).items():
        if spec["method"] == "quantface_mp":
            keys[v] = f"ablation.variants.{v}.options"
    for name, key in keys.items():
        opts = {**QuantFaceMPOptions.defaults(), **resolve_method(config, name)[1]}
        try:
            check_perceptual(opts["perceptual"], Path(opts["weights_dir"]))
        except QuantFaceError as e:
            raise ConfigError(f"config key '{key}.perceptual': {e}") from None


def job_seed(seed: int, *parts: object) -> int:
    """Per-job seed from the global seed and the job's wildcards (crc32: the same on every
    Python, unlike `hash`), so each job's randomness is fixed by the config alone."""
    key = "/".join([str(seed), *map(str, parts)])
    return zlib.crc32(key.encode()) % 2**31


def model_options(config: dict[str, Any]) -> dict[str, Any]:
    """What `prepare-model` gets: the architecture at the data's image size, the training
    schedule, the local weight files and the training degradation."""
    return {
        "arch": {**config["model"].get("arch", {}), "image_size": config["data"]["image_size"]},
        "train": config["model"].get("train", {}),
        "assets": config["model"].get("assets", {}),
        "degradation": config["data"].get("degradation", {}),
    }


def model_footnote(config: dict[str, Any]) -> str:
    """The tables' model line, readable in a footnote (architecture overrides as key=value)."""
    arch = config["model"].get("arch", {})
    overrides = (
        "architecture overrides: " + ", ".join(f"{k}={v}" for k, v in sorted(arch.items()))
        if arch
        else "default architecture"
    )
    size = config["data"]["image_size"]
    return (
        f"Model: {config['model']['name']} ({overrides}), images {size}x{size}, "
        f"global seed {config['seed']}."
    )


def _is_mixed(method: str) -> bool:
    return bool(METHODS.attr(method, "mixed_precision", False))


def quantized_cells(methods: list[str], bits: list[str]) -> list[tuple[str, str]]:
    """(method, bits) jobs: mixed-precision methods run at mpX settings, the others at wXaY."""
    return [
        (m, b) for m in methods if m != "fp" for b in bits if parse_bits(b).mixed == _is_mixed(m)
    ]


def ablation_variants(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Ablation variant name -> {method, options}: extra quantize jobs shown in ablation tables."""
    return dict(config.get("ablation", {}).get("variants", {}))


def ablation_cells(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(variant, bits): a variant's own `bits`, else `ablation.bits`."""
    default = config.get("ablation", {}).get("bits")
    return [(n, v.get("bits", default)) for n, v in ablation_variants(config).items()]


NATIVE = "native"


def protocol_schemes(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Protocol name -> the scheme keys every method runs with, for each non-native protocol the
    run includes (the methods' own exceptions off unless the entry says otherwise)."""
    chosen = config.get("protocol", [NATIVE])
    defined = config.get("protocols", {})
    return {p: {"exceptions": False, **defined[p]} for p in chosen if p != NATIVE}


def protocol_cells(config: dict[str, Any]) -> list[tuple[str, str]]:
    """("<protocol>/<method>", bits) jobs of the non-native protocols: for the
    `protocol_methods` that are also in `methods`, at the `protocol_bits` that are also in
    `bits` (each beside its native row); every method, or every bit setting, without the key."""
    bits = [b for b in config.get("protocol_bits", config["bits"]) if b in config["bits"]]
    chosen = config.get("protocol_methods", config["methods"])
    cells = quantized_cells([m for m in config["methods"] if m in chosen], bits)
    return [(f"{p}/{m}", b) for p in protocol_schemes(config) for m, b in cells]


def resolve_scheme(config: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The scheme keys of a "<protocol>/<method>" cell name; None for a native or seed one."""
    protocol, sep, _ = name.partition("/")
    return protocol_schemes(config)[protocol] if sep and cell_seed(name) is None else None


SEED_CELL = re.compile(r"^seed(\d+)/")


def extra_seeds(config: dict[str, Any]) -> list[int]:
    """The `seeds` other than the run's `seed`: each repeats calibration and every native cell."""
    return [s for s in config.get("seeds", []) if s != config["seed"]]


def seed_cells(config: dict[str, Any]) -> list[tuple[str, str]]:
    """("seed<s>/<method>", bits) jobs: every native cell again, calibrated and quantized with
    the global seed s (results/<model>/seed<s>/...), for the tables' mean ± std over seeds."""
    cells = quantized_cells(config["methods"], config["bits"])
    return [(f"seed{s}/{m}", b) for s in extra_seeds(config) for m, b in cells]


def cell_seed(name: str) -> int | None:
    """The global seed a "seed<s>/<method>" cell runs with; None for any other cell name."""
    match = SEED_CELL.match(name)
    return int(match.group(1)) if match else None


def resolve_method(config: dict[str, Any], name: str) -> tuple[str, dict[str, Any]]:
    """(registered method, options) of a method, ablation-variant or "<protocol>/<method>"
    name (a protocol changes the quantizers, never the method's options)."""
    name = name.partition("/")[2] or name
    variants = ablation_variants(config)
    if name in variants:
        v = variants[name]
        base = config.get("method_options", {}).get(v["method"], {})
        return v["method"], {**base, **v.get("options", {})}
    return name, dict(config.get("method_options", {}).get(name, {}))


def _check_mp_budgets(config: dict[str, Any]) -> None:
    """An average activation budget below the smallest candidate bit-width has no solution.

    Checked here so the run stops at parse time, not after minutes of sensitivity analysis.
    """
    from quantface.methods.quantface_options import QuantFaceMPOptions

    runs = [
        (m, config.get("method_options", {}).get(m, {}), b, f"method_options.{m}")
        for m, b in quantized_cells(config["methods"], config["bits"])
        if _is_mixed(m)
    ]
    for name, v in ablation_variants(config).items():
        bits = v.get("bits", config.get("ablation", {}).get("bits"))
        if v["method"] in METHODS and _is_mixed(v["method"]) and bits and MP_RE.match(bits):
            opts = resolve_method(config, name)[1]
            runs.append((name, opts, bits, f"ablation.variants.{name}.options"))
    for name, opts, bits, options_key in runs:
        lowest = min(opts.get("candidates", QuantFaceMPOptions.candidates))
        budget = opts.get("budget") or parse_bits(bits).a_bits
        if budget < lowest:
            key = f"{options_key}.budget" if opts.get("budget") else "bits"
            raise ConfigError(
                f"config key '{key}': {name} at {bits} has an average activation budget of "
                f"{budget} bits, below the smallest candidate bit-width {lowest}; allowed: a "
                f"budget >= {lowest} (or add smaller candidates)"
            )


def _check_protocols(config: dict[str, Any]) -> None:
    """Every protocol named is native or defined, every scheme valid, every bit setting well
    formed."""
    from quantface.quant.scheme import QuantScheme

    chosen = config.get("protocol", [NATIVE])
    if NATIVE not in chosen:
        raise ConfigError(
            "config key 'protocol': must include 'native' (the tables' and figures' rows; "
            "other protocols are added beside them)"
        )
    defined = config.get("protocols", {})
    for p in chosen:
        if p != NATIVE and p not in defined:
            known = ", ".join([NATIVE, *defined])
            raise ConfigError(f"config key 'protocol': unknown protocol '{p}'; known: {known}")
    for p, keys in defined.items():
        if SEED_CELL.match(f"{p}/"):
            raise ConfigError(
                f"config key 'protocols.{p}': names seed<N> are the seeds' cells; choose another"
            )
        QuantScheme.from_dict({"exceptions": False, **keys}, f"config key 'protocols.{p}'")
    for b in config.get("protocol_bits", []):
        try:
            parse_bits(b)
        except ConfigError as e:
            raise ConfigError(f"config key 'protocol_bits': {e}") from None
    for m in config.get("protocol_methods", []):  # those not in `methods` are not run
        if m not in METHODS:
            raise ConfigError(
                f"config key 'protocol_methods': unknown method '{m}'; "
                f"known: {', '.join(METHODS.names())}"
            )


def _check_seeds(config: dict[str, Any]) -> None:
    """The run's own seed is one of `seeds`: its cells are the tables' rows."""
    seeds = config.get("seeds")
    if seeds is not None and config["seed"] not in seeds:
        raise ConfigError(
            f"config key 'seeds': must include the run's seed {config['seed']} (its cells are "
            f"the tables' rows; the other seeds repeat them), got {seeds}"
        )


def _check_ablation(config: dict[str, Any]) -> None:
    variants = ablation_variants(config)
    if not variants:
        return
    default = config["ablation"].get("bits")
    subschemas = schema()["properties"]["method_options"]["properties"]
    for name, v in variants.items():
        key = f"ablation.variants.{name}"
        if name in METHODS or name in config["methods"]:
            raise ConfigError(f"config key '{key}': the name is a registered method; rename it")
        if v["method"] not in METHODS:
            raise ConfigError(
                f"config key '{key}.method': unknown method '{v['method']}'; "
                f"known: {', '.join(METHODS.names())}"
            )
        bits = v.get("bits", default)
        if not bits:
            raise ConfigError(f"config key '{key}.bits': no bits (and no 'ablation.bits')")
        try:
            setting = parse_bits(bits)
        except ConfigError as e:
            raise ConfigError(f"config key '{key}.bits': {e}") from None
        if setting.mixed != _is_mixed(v["method"]):
            raise ConfigError(f"config key '{key}.bits': '{bits}' does not suit '{v['method']}'")
        sub = subschemas.get(v["method"])
        if sub is not None:
            errors = jsonschema.Draft202012Validator(sub).iter_errors(v.get("options", {}))
            err = next(iter(errors), None)
            if err is not None:
                raise ConfigError(f"config key '{key}.options': {err.message}")
    for d in config["ablation"].get("datasets", []):
        if d not in config["data"]["datasets"]:
            raise ConfigError(f"config key 'ablation.datasets': '{d}' is not in data.datasets")


def check_model_assets(config: dict[str, Any]) -> None:
    """Raise WeightsMissingError naming the first absent weight file of a converted model.

    A model that states `converted = False` in its class is not imported for this (the
    Snakefile's parse runs it: importing the tiny model means torch and diffusers)."""
    if not MODELS.attr(config["model"]["name"], "converted", True):
        return
    check = getattr(MODELS.get(config["model"]["name"]), "check_assets", None)
    if check is not None:
        check(config["model"].get("assets", {}))


def merge_configs(configs: list[dict[str, Any]]) -> dict[str, Any]:
    """Later configs deep-merged onto earlier ones, as `snakemake --configfile a b` does."""

    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    merged: dict[str, Any] = {}
    for c in configs:
        merged = merge(merged, c)
    return merged


def load_config(path: str | Path, validate: bool = True) -> dict[str, Any]:
    """Read a YAML config; `validate=False` for an overlay that is only valid once merged."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"config file {path} is not valid YAML: {first}") from e
    if not isinstance(config, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys")
    return validate_config(config) if validate else config
