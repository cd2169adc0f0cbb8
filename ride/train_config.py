"""The ``ride train --config`` file: its JSON schema and validation.

A config has exactly two sections, ``model`` (the keyword arguments of :class:`ride.model.RIDE`)
and ``train`` (the fields of :class:`ride.train_config.TrainConfig`). Like the workflow's config
(``workflow/schemas/config.schema.yaml``), every object forbids unknown keys and every value has
a type and a range, so a typo or an out-of-range value stops ``ride train`` before any work,
with a message naming the file, the key and the fix.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping

import jsonschema

from .errors import ConfigError

POSITIVE_INT = {"type": "integer", "minimum": 1}
OPTIONAL_POSITIVE_INT = {"type": ["integer", "null"], "minimum": 1}

MODEL_SCHEMA: dict[str, Any] = {
    "description": "keyword arguments of ride.model.RIDE (num_layers 0 = MCGSM baseline)",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "nb_size": {"type": "integer", "minimum": 3, "maximum": 31, "not": {"multipleOf": 2}},
        "num_hidden": {"type": "integer", "minimum": 0},
        "num_layers": {"type": "integer", "minimum": 0},
        "extended": {"type": "boolean"},
        "num_components": POSITIVE_INT,
        "num_scales": POSITIVE_INT,
        "num_features": POSITIVE_INT,
    },
    # An SLSTM layer needs hidden units (num_layers defaults to 1).
    "if": {"not": {"properties": {"num_layers": {"const": 0}}, "required": ["num_layers"]}},
    "then": {"properties": {"num_hidden": POSITIVE_INT}},
}

TRAIN_SCHEMA: dict[str, Any] = {
    "description": "fields of ride.train_config.TrainConfig; absent fields take their defaults",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "stages": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["patch", "lr"],
                "properties": {"patch": {"type": "integer", "minimum": 4}, "lr": {"type": "number", "exclusiveMinimum": 0},
                               "epochs": POSITIVE_INT, "max_patches": POSITIVE_INT},
            },
        },
        "batch_size": POSITIVE_INT,
        "momentum": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
        "max_patches": OPTIONAL_POSITIVE_INT,
        "max_images": OPTIONAL_POSITIVE_INT,
        "epochs": POSITIVE_INT,
        "early_stopping": OPTIONAL_POSITIVE_INT,
        "valid_fraction": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "flip": {"type": "boolean"},
        "grow_layers": {"type": "boolean"},
        "whitening_samples": POSITIVE_INT,
        "lbfgs_iterations": {"type": "integer", "minimum": 0},
        "lbfgs_samples": POSITIVE_INT,
        "lbfgs_patch": {"type": ["integer", "null"], "minimum": 4},
        "lbfgs_check_every": POSITIVE_INT,
        "lbfgs_patience": POSITIVE_INT,
        "checkpoint_every": POSITIVE_INT,
        "nan_retries": {"type": "integer", "minimum": 0},
        "divergence_margin": {"type": ["number", "null"], "exclusiveMinimum": 0},
        "clip_grad_norm": {"type": ["number", "null"], "exclusiveMinimum": 0},
        "seed": {"type": "integer", "minimum": 0},
    },
}

CONFIG_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "ride train --config",
    "type": "object",
    "additionalProperties": False,
    "required": ["model", "train"],
    "properties": {"model": MODEL_SCHEMA, "train": TRAIN_SCHEMA},
}


def _where(error: jsonschema.ValidationError, prefix: str) -> str:
    path = prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return path.lstrip(".") or "the top level"


def _check(schema: dict[str, Any], values: Any, source: str, prefix: str) -> None:
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(values))
    if error is None:
        return
    message = " ".join(error.message.split())
    top = prefix == "" and not error.absolute_path
    if error.validator == "additionalProperties" and top:
        fix = "a config has exactly the sections 'model' (RIDE's arguments) and 'train' ('train: {}' = defaults)"
    elif error.validator == "additionalProperties":
        fix = f"known keys: {', '.join(sorted(error.schema.get('properties', {})))}"
    elif error.validator == "required" and top:
        fix = "add it: 'model' holds RIDE's arguments, 'train' the training options ('train: {}' = defaults)"
    elif error.validator == "required":
        fix = "add it"
    elif error.validator == "not":
        message, fix = f"{error.instance!r} is even", "use an odd width (3, 5, 7, ...)"
    else:
        fix = "fix this value"
    raise ConfigError(f"{source}: {_where(error, prefix)}: {message}; {fix}")


def validate_config(config: Mapping[str, Any], source: str = "config") -> None:
    """Raise :class:`ConfigError` naming ``source`` and the key unless ``config`` fits the schema."""
    _check(CONFIG_SCHEMA, config, source, "")


def validate_train_section(values: Mapping[str, Any], source: str = "train config") -> None:
    """The same check for a ``train`` section alone (:meth:`ride.train_config.TrainConfig.from_dict`)."""
    _check(TRAIN_SCHEMA, values, source, "train")


PAPER_STAGES = [
    {"patch": p, "lr": lr}
    for p, lr in zip([8, 10, 12, 14, 16, 18, 20, 22], [1.0, 0.5, 0.1, 0.05, 0.01, 0.005, 0.001, 0.0005])
]


@dataclass
class TrainConfig:
    stages: list[dict[str, float]] = field(default_factory=lambda: copy.deepcopy(PAPER_STAGES))
    batch_size: int = 50
    momentum: float = 0.9
    max_patches: int | None = None
    max_images: int | None = None
    # Passes over the training patches per stage (a stage's own "epochs" overrides it), each with
    # a fresh grid offset, flips and order: small data sets (a texture's 15 regions) need several.
    epochs: int = 1
    # Patience in epochs: after each epoch the held-out images are scored, the best state is kept
    # and the stage stops after this many epochs without improvement (None: off).
    early_stopping: int | None = None
    valid_fraction: float = 0.1
    flip: bool = True
    grow_layers: bool = False
    whitening_samples: int = 500_000
    lbfgs_iterations: int = 500
    lbfgs_samples: int = 1_000_000
    lbfgs_patch: int | None = None
    lbfgs_check_every: int = 25
    lbfgs_patience: int = 2
    checkpoint_every: int = 100
    # Restarts from the last checkpoint with a halved rate after a non-finite or diverged loss.
    nan_retries: int = 3
    # A stage has diverged when its validation NLL (after the L-BFGS refinement) exceeds the
    # whitened Gaussian's on the same held-out pixels by more than this (nats/px; None: off).
    divergence_margin: float | None = 1.0
    # None = the paper's plain momentum SGD; a number rescales each batch's gradient to at most
    # this global L2 norm before the step (documented deviation, see config/config.yaml).
    clip_grad_norm: float | None = None
    seed: int = 0

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None, source: str = "train config") -> "TrainConfig":
        """Validated against ``ride.train_config.TRAIN_SCHEMA`` (:class:`ConfigError` naming the key)."""
        values = dict(values or {})
        validate_train_section(values, source)
        return cls(**copy.deepcopy(values))
