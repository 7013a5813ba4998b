"""Settings of the pipeline stages: defaults, types, allowed values and their checks."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

#: Estimator parameters the pipeline sets itself, so a study file may not set them.
MANAGED_ESTIMATOR_PARAMETERS = frozenset(
    {"n_objects", "checkpoint_dir", "resume", "verbose", "random_state", "device"}
)


@dataclass(frozen=True)
class Setting:
    """One stage setting.

    Attributes:
        default (Any): Value when the study file does not set it. None means
            "inherit": ``seed`` and ``device`` then come from ``[study]``, other
            settings use the library's own default.
        help (str): What the setting controls, with its unit.
        types (tuple[type, ...]): Accepted Python types after TOML parsing;
            empty means the type of ``default`` (an int is accepted for a float).
        choices (tuple[Any, ...]): Allowed values of a string setting; empty
            means any value.
        minimum (float | None): Smallest allowed value of a number setting;
            None means no lower bound.
        maximum (float | None): Largest allowed value, None for no upper bound.
        positive (bool): The number must be above 0.
        below (float | None): The number must be below this value.
    """

    default: Any
    help: str
    types: tuple[type, ...] = ()
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    positive: bool = False
    below: float | None = None

    def accepted_types(self) -> tuple[type, ...]:
        """Return the accepted types, derived from the default when none are listed."""
        if self.types:
            return self.types
        if isinstance(self.default, bool):
            return (bool,)
        if isinstance(self.default, float):
            return (float, int)
        if self.default is None:
            return (int, float, str, bool)
        return (type(self.default),)

    def check(self, stage: str, key: str, value: Any) -> Any:
        """Return ``value`` if it fits this setting.

        Raises:
            ValueError: Naming the stage, the key, the value and what is accepted.
        """
        types = self.accepted_types()
        if isinstance(value, bool) and bool not in types:
            raise ValueError(f"{stage}.{key} = {value!r} is invalid: expected {_type_names(types)}")
        if not isinstance(value, types):
            hint = ""
            if int in types and isinstance(value, float) and value.is_integer():
                # TOML reads 1e5 and 3.0 as floats.
                hint = f"; write {int(value)} without a decimal point or exponent"
            raise ValueError(
                f"{stage}.{key} = {value!r} is invalid: expected {_type_names(types)}, "
                f"got {type(value).__name__}{hint}"
            )
        if self.choices and isinstance(value, str) and value not in self.choices:
            allowed = ", ".join(repr(choice) for choice in self.choices)
            others = [_type_names((kind,)) for kind in types if kind is not str]
            raise ValueError(
                f"{stage}.{key} = {value!r} is invalid: use {'one of ' if len(self.choices) > 1 else ''}"
                f"{allowed}{''.join(f' or {name}' for name in others)}"
            )
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            self._check_range(stage, key, value)
        if isinstance(self.default, float) and isinstance(value, int):
            # 1 and 1.0 are the same setting, so they must hash alike.
            return float(value)
        return value


    def _check_range(self, stage: str, key: str, value: float) -> None:
        if not math.isfinite(value):
            raise ValueError(f"{stage}.{key} = {value!r} is invalid: use a finite number")
        problems = [
            (self.minimum is not None and value < self.minimum, f"at least {self.minimum}"),
            (self.maximum is not None and value > self.maximum, f"at most {self.maximum}"),
            (self.positive and value <= 0, "above 0"),
            (self.below is not None and value >= self.below, f"below {self.below}"),
        ]
        for failed, requirement in problems:
            if failed:
                raise ValueError(f"{stage}.{key} = {value!r} is invalid: use a value {requirement}")


def _type_names(types: tuple[type, ...]) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list"}
    return " or ".join(names.get(kind, kind.__name__) for kind in types)


def check_settings(
    stage: str, raw: Mapping[str, Any], spec: Mapping[str, Setting],
    origin: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """Check a stage's settings against its spec and fill in the defaults.

    Args:
        stage (str): The stage, for messages.
        raw (Mapping[str, Any]): The settings as written.
        spec (Mapping[str, Setting]): The settings the stage takes.
        origin (Callable[[str], str] | None): Says where a key's value comes
            from (the study file or ``--set``), added to messages.

    Returns:
        dict[str, Any]: Every setting of ``spec``, in spec order.

    Raises:
        ValueError: For an unknown key (listing the valid ones) or an invalid value.
    """
    origin = origin or (lambda key: "")
    unknown = sorted(set(raw) - set(spec))
    if unknown:
        raise ValueError(
            f"unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in [{stage}]"
            f"{f' ({origin(unknown[0])})' if origin(unknown[0]) else ''}; valid settings of {stage}: "
            f"{', '.join(spec)}"
        )
    settings = {}
    for key, setting in spec.items():
        if key in raw:
            try:
                settings[key] = setting.check(stage, key, raw[key])
            except ValueError as error:
                raise ValueError(f"{error} ({origin(key)})" if origin(key) else str(error)) from error
        else:
            settings[key] = setting.default
    return settings


# -- settings shared by the stages ---------------------------------------------

SEED = Setting(None, "random seed of this stage (default: study.seed)", types=(int,), minimum=0)
DEVICE = Setting(None, "torch device: cpu, cuda or auto (default: study.device)", types=(str,))

FIT_COMMON: dict[str, Setting] = {
    "method": Setting("vice", "estimator: vice or spose", choices=("vice", "spose")),
    "seed": SEED,
    "device": DEVICE,
}

TRIPLET_LOADING: dict[str, Setting] = {
    "val_fraction": Setting(
        0.1, "share of the triplets held out for validation (split by object set)", minimum=0, below=1
    ),
    "one_based": Setting(False, "the triplet file counts objects from 1"),
    "odd_column": Setting(2, "column (0, 1 or 2) of the odd one out in the triplet file", minimum=0, maximum=2),
}

#: Settings of human_fit when inputs.human_embedding replaces the fit: only how to read the human triplets.
EMBEDDING_TRIPLET_LOADING: dict[str, Setting] = {
    key: TRIPLET_LOADING[key] for key in ("one_based", "odd_column")
}


def estimator_settings(method: str) -> dict[str, Setting]:
    """Return the settings of VICE or SPoSE that a study file may set, with the estimator's defaults."""
    from dimalign.embedding import SPoSE, VICE

    estimator = {"vice": VICE, "spose": SPoSE}[method]
    settings = {}
    for name, parameter in inspect.signature(estimator.__init__).parameters.items():
        if name == "self" or name in MANAGED_ESTIMATOR_PARAMETERS:
            continue
        default = parameter.default
        types = (float, int) if default is None else ()
        settings[name] = Setting(default, f"{estimator.__name__} parameter {name}", types=types)
    return settings


def fit_settings(stage: str, raw: Mapping[str, Any], *, load_triplets: bool) -> dict[str, Setting]:
    """Return the settings spec of a fit stage for the method named in ``raw``."""
    method = raw.get("method", "vice")
    if method not in ("vice", "spose"):
        raise ValueError(f"{stage}.method = {method!r} is invalid: use vice or spose")
    spec = dict(FIT_COMMON)
    if load_triplets:
        spec.update(TRIPLET_LOADING)
    spec.update(estimator_settings(method))
    return spec


SIMULATE_SETTINGS: dict[str, Setting] = {
    "n_triplets": Setting(100_000, "unique random triplets to simulate", minimum=1),
    "similarity": Setting("dot", "similarity of two feature rows", choices=("dot", "cosine", "euclidean")),
    "rule": Setting("argmax", "choice rule: argmax (the most similar pair stays) or softmax", choices=("argmax", "softmax")),
    "temperature": Setting(1.0, "softmax temperature in similarity units (rule = softmax)", positive=True),
    "relu": Setting("auto", "set negative features to 0 first: true, false or auto (true for dot)", types=(str, bool), choices=("auto",)),
    "layer": Setting("", "layer inside a multi-layer feature file or folder (empty: the only one)"),
    "val_fraction": Setting(0.1, "share of the simulated triplets held out for validation", minimum=0, below=1),
    "seed": SEED,
}

FEATURES_SETTINGS: dict[str, Setting] = {
    "model": Setting("efficientnet_lite0", "model name for dimalign.features.load_model"),
    "weights": Setting("", "weights file or name (empty: the model's default)"),
    "layer": Setting("", "layer to read (empty: the model's penultimate layer)"),
    "pool": Setting("gap", "pooling of the layer output: raw, flatten or gap", choices=("raw", "flatten", "gap")),
    "batch_size": Setting(32, "images per forward pass", minimum=1),
    "background": Setting("white", "colour under transparent pixels, as dimalign extract --background: "
                          "a name, #rrggbb or r,g,b"),
    "exif_transpose": Setting(True, "apply the EXIF orientation tag of photos (false: dimalign extract "
                              "--no-exif-transpose)"),
    "device": DEVICE,
}

EVALUATE_SETTINGS: dict[str, Setting] = {
    "device": DEVICE,
}

COMPARE_SETTINGS: dict[str, Setting] = {
    "n_bootstrap": Setting(1000, "bootstrap samples of the human-DNN RSA", minimum=0),
    "top_k": Setting(10, "objects per list of each matched pair", minimum=1),
    "similarity_objects": Setting(
        "all", "objects (a random subset) for the RSA and the cumulative RSA, or all", types=(str, int), choices=("all",)
    ),
    "matrix_objects": Setting(
        "all", "objects (a random subset) of the saved similarity matrices for the figure, all, or 0 for none",
        types=(str, int), choices=("all",),
    ),
    "relevance_triplets": Setting(
        "all", "held-out human triplets explained by the jackknife relevance: all, a number, or 0 for none",
        types=(str, int), choices=("all",),
    ),
    "seed": SEED,
    "device": DEVICE,
}

MAP_SETTINGS: dict[str, Setting] = {
    "target": Setting("dnn", "embedding the features are mapped to: dnn or human", choices=("dnn", "human")),
    "alpha_min": Setting(1e-2, "smallest ridge penalty of the grid", positive=True),
    "alpha_max": Setting(1e6, "largest ridge penalty of the grid", positive=True),
    "n_alphas": Setting(50, "penalties in the grid, evenly spaced in log10", minimum=1),
    "folds": Setting(3, "cross-validation folds (at least 2)", minimum=2),
    "shuffle": Setting(False, "shuffle the objects before splitting them into folds"),
    "layer": Setting("", "layer inside a multi-layer feature file or folder"),
    "model_name": Setting("", "DNN name recorded with the map"),
    "seed": SEED,
}

REPORT_SETTINGS: dict[str, Setting] = {
    "title": Setting("", "report title (default: study.name, else 'dimalign study')"),
    "top_k": Setting(8, "top objects shown per dimension", minimum=1),
    "n_disagreements": Setting(6, "triplets shown in the disagreement figure", minimum=1),
    # The maximum is dimalign.report.html.MAX_DPI, which explains it.
    "dpi": Setting(110, "resolution of the PNG figures in dots per inch", minimum=1, maximum=600),
    "labels_human": Setting("human_fit", "name of the human embedding in the labels summary"),
    "labels_dnn": Setting("dnn_fit", "name of the DNN embedding in the labels summary"),
}


def check_count(stage: str, key: str, value: Any, *, allow_zero: bool) -> int | None:
    """Turn ``"all"`` into None and check that a count is positive (or zero when allowed)."""
    if value == "all":
        return None
    low = 0 if allow_zero else 1
    if value < low:
        raise ValueError(f"{stage}.{key} = {value} is invalid: use 'all' or an integer >= {low}")
    return int(value)


__all__ = [
    "COMPARE_SETTINGS",
    "EVALUATE_SETTINGS",
    "FEATURES_SETTINGS",
    "MAP_SETTINGS",
    "REPORT_SETTINGS",
    "SIMULATE_SETTINGS",
    "Setting",
    "check_count",
    "check_settings",
    "estimator_settings",
    "fit_settings",
]
