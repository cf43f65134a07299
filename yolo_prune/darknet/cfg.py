"""Darknet ``.cfg`` text <-> typed sections. No torch here.

A cfg is a list of sections (``[convolutional]``, ``[route]``, ...), each a list of
``key=value`` options. :func:`parse_cfg` reads the text as Darknet's ``read_cfg`` does (all
whitespace inside a line is removed, ``#`` and ``;`` start comments) and checks every option
that the YOLO family uses against a schema holding its type and Darknet's default, so that a
typo'd value is reported with its file and line instead of silently becoming a default.
:func:`format_cfg` turns sections back into text that Darknet and OpenCV accept.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yolo_prune.errors import CfgError

logger = logging.getLogger(__name__)

# Option types. "ints"/"floats" are comma-separated lists.
INT, FLOAT, STR, INTS, FLOATS = "int", "float", "str", "ints", "floats"

ACTIVATIONS = (
    "linear", "leaky", "relu", "relu6", "mish", "hard_mish", "swish", "logistic", "tanh",
    "elu", "selu", "gelu", "hardtan",
)  # fmt: skip

# Darknet's section names, with the aliases its parser accepts, mapped to our canonical kind.
SECTION_ALIASES = {
    "net": "net", "network": "net",
    "convolutional": "convolutional", "conv": "convolutional",
    "maxpool": "maxpool", "max": "maxpool",
    "avgpool": "avgpool", "avg": "avgpool",
    "route": "route", "shortcut": "shortcut", "upsample": "upsample", "yolo": "yolo",
    "sam": "sam", "scale_channels": "scale_channels",
    "connected": "connected", "conn": "connected",
    "softmax": "softmax", "soft": "softmax",
    "dropout": "dropout",
}  # fmt: skip

# kind -> option -> (type, Darknet's default). None as default means "required or derived".
SCHEMA: dict[str, dict[str, tuple[str, Any]]] = {
    "net": {
        "width": (INT, 0), "height": (INT, 0), "channels": (INT, 0),
        "batch": (INT, 1), "subdivisions": (INT, 1), "max_batches": (INT, 0),
        "learning_rate": (FLOAT, 0.001), "momentum": (FLOAT, 0.9), "decay": (FLOAT, 0.0001),
        "burn_in": (INT, 0), "power": (FLOAT, 4.0), "policy": (STR, "constant"),
        "steps": (INTS, None), "scales": (FLOATS, None), "step": (INT, 1), "gamma": (FLOAT, 1.0),
        "angle": (FLOAT, 0.0), "saturation": (FLOAT, 1.0), "exposure": (FLOAT, 1.0),
        "hue": (FLOAT, 0.0), "aspect": (FLOAT, 1.0), "flip": (INT, 1), "blur": (INT, 0),
        "mosaic": (INT, 0), "mixup": (INT, 0), "cutmix": (INT, 0), "letter_box": (INT, 0),
        "gaussian_noise": (INT, 0), "mosaic_bound": (INT, 0), "contrastive": (INT, 0),
        "adam": (INT, 0), "B1": (FLOAT, 0.9), "B2": (FLOAT, 0.999), "eps": (FLOAT, 1e-7),
        "ema_alpha": (FLOAT, 0.0), "label_smooth_eps": (FLOAT, 0.0), "resize_step": (INT, 32),
        "min_crop": (INT, 0), "max_crop": (INT, 0), "track": (INT, 0), "time_steps": (INT, 1),
        "inputs": (INT, 0), "max_chart_loss": (FLOAT, 20.0), "track_history_size": (INT, 5),
        "sequential_subdivisions": (INT, 0), "try_fix_nan": (INT, 0),
        "weights_reject_freq": (INT, 0),
        "equidistant_point": (INT, 0), "num_sigmas_reject_badlabels": (FLOAT, 0.0),
        "badlabels_rejection_percentage": (FLOAT, 0.0), "random": (FLOAT, 0.0),
        "loss_scale": (FLOAT, 1.0), "dynamic_minibatch": (INT, 0), "optimized_memory": (INT, 0),
        "workspace_size_limit_MB": (FLOAT, 1024.0), "cudnn_half": (INT, 0), "rgb": (INT, 0),
    },
    "convolutional": {
        "filters": (INT, 1), "size": (INT, 1), "stride": (INT, 1), "stride_x": (INT, -1),
        "stride_y": (INT, -1), "pad": (INT, 0), "padding": (INT, 0), "groups": (INT, 1),
        "dilation": (INT, 1), "batch_normalize": (INT, 0), "activation": (STR, "logistic"),
        "antialiasing": (INT, 0), "binary": (INT, 0), "xnor": (INT, 0), "flipped": (INT, 0),
        "dot": (FLOAT, 0.0), "share_index": (INT, -1000000000), "stopbackward": (INT, 0),
        "train_only_bn": (INT, 0), "deform": (INT, 0), "sway": (INT, 0), "rotate": (INT, 0),
        "stretch": (INT, 0), "stretch_sway": (INT, 0), "assisted_excitation": (FLOAT, 0.0),
        "coordconv": (INT, 0), "dontload": (INT, 0), "dontloadscales": (INT, 0),
        "learning_rate": (FLOAT, 1.0), "cbn": (INT, 0),
    },
    "maxpool": {
        "size": (INT, None), "stride": (INT, 1), "stride_x": (INT, -1), "stride_y": (INT, -1),
        "padding": (INT, None), "maxpool_depth": (INT, 0), "out_channels": (INT, 1),
        "antialiasing": (INT, 0), "stopbackward": (INT, 0),
    },
    "avgpool": {},
    "route": {
        "layers": (INTS, None), "groups": (INT, 1), "group_id": (INT, 0),
        "stopbackward": (INT, 0),
    },
    "shortcut": {
        "from": (INTS, None), "activation": (STR, "linear"), "weights_type": (STR, "none"),
        "weights_normalization": (STR, "none"), "stopbackward": (INT, 0),
    },
    "upsample": {"stride": (INT, 2), "scale": (FLOAT, 1.0)},
    "yolo": {
        "mask": (INTS, None), "anchors": (FLOATS, None), "classes": (INT, 20), "num": (INT, 1),
        "max": (INT, 200), "jitter": (FLOAT, 0.2), "resize": (FLOAT, 1.0),
        "ignore_thresh": (FLOAT, 0.5), "truth_thresh": (FLOAT, 1.0), "iou_thresh": (FLOAT, 1.0),
        "random": (FLOAT, 0.0), "scale_x_y": (FLOAT, 1.0), "iou_normalizer": (FLOAT, 0.75),
        "obj_normalizer": (FLOAT, 1.0), "cls_normalizer": (FLOAT, 1.0),
        "delta_normalizer": (FLOAT, 1.0), "iou_loss": (STR, "mse"),
        "iou_thresh_kind": (STR, "iou"), "nms_kind": (STR, "default"), "beta_nms": (FLOAT, 0.6),
        "max_delta": (FLOAT, 3.4e38), "new_coords": (INT, 0), "focal_loss": (INT, 0),
        "label_smooth_eps": (FLOAT, 0.0), "objectness_smooth": (INT, 0),
        "counters_per_class": (INTS, None),
        "map": (STR, None), "track_history_size": (INT, 5), "sim_thresh": (FLOAT, 0.8),
        "dets_for_track": (INT, 1), "dets_for_show": (INT, 1), "track_ciou_norm": (FLOAT, 0.01),
        "embedding_layer": (INT, 999999),
    },
    "sam": {"from": (INTS, None), "activation": (STR, "linear")},
    "scale_channels": {
        "from": (INTS, None), "scale_wh": (INT, 0), "activation": (STR, "linear"),
    },
    "connected": {
        "output": (INT, 1), "activation": (STR, "logistic"), "batch_normalize": (INT, 0),
        "learning_rate": (FLOAT, 1.0), "stopbackward": (INT, 0), "dontload": (INT, 0),
        "dontloadscales": (INT, 0),
    },
    "softmax": {"groups": (INT, 1), "temperature": (FLOAT, 1.0), "tree": (STR, None)},
    "dropout": {
        "probability": (FLOAT, 0.5), "dropblock": (INT, 0), "dropblock_size_rel": (FLOAT, 0.0),
        "dropblock_size_abs": (INT, 0),
    },
}  # fmt: skip

# Options whose value must be one of a fixed set.
CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("convolutional", "activation"): ACTIVATIONS,
    ("connected", "activation"): ACTIVATIONS,
    ("shortcut", "activation"): ACTIVATIONS,
    ("sam", "activation"): ACTIVATIONS,
    ("scale_channels", "activation"): ACTIVATIONS,
    ("shortcut", "weights_type"): ("none", "per_feature", "per_channel"),
    ("shortcut", "weights_normalization"): ("none", "relu", "softmax"),
    ("yolo", "iou_loss"): ("mse", "iou", "giou", "diou", "ciou"),
    ("yolo", "nms_kind"): ("default", "greedynms", "diounms", "cornersnms"),
    ("net", "policy"): ("constant", "step", "steps", "exp", "poly", "sig", "random", "sgdr"),
}


@dataclass
class Option:
    """One ``key=value`` line: the raw text and where it came from."""

    raw: str  # value text as written, whitespace removed
    line: int  # 1-based line number in the source, 0 for options set in code


@dataclass
class Section:
    """One ``[kind]`` block of a cfg, with its options typed on access.

    ``section["filters"]`` returns the typed value, or Darknet's default when the option is
    absent. ``section.set("filters", 64)`` changes it (used when a pruned cfg is written).
    """

    kind: str  # canonical kind, e.g. "convolutional" (aliases like "conv" are normalised)
    line: int  # 1-based line of the "[kind]" header
    options: dict[str, Option] = field(default_factory=dict)
    path: str | None = None  # source file, for error messages
    name: str | None = None  # header as written (e.g. "conv"); written back unchanged

    def __contains__(self, key: str) -> bool:
        return key in self.options

    def __getitem__(self, key: str) -> Any:
        schema = SCHEMA[self.kind]
        if key not in schema:
            raise KeyError(f"[{self.kind}] has no option {key!r}")
        typ, default = schema[key]
        opt = self.options.get(key)
        if opt is None:
            return list(default) if isinstance(default, list) else default
        return _convert(opt.raw, typ, section=self, key=key, line=opt.line)

    def get(self, key: str, default: Any = None) -> Any:
        """The typed value if the option is written in the cfg, else ``default``."""
        return self[key] if key in self.options else default

    def set(self, key: str, value: Any) -> None:
        if isinstance(value, (list, tuple)):
            raw = ",".join(_format_scalar(v) for v in value)
        else:
            raw = _format_scalar(value)
        old = self.options.get(key)
        self.options[key] = Option(raw, old.line if old else 0)

    def error(self, message: str, key: str | None = None) -> CfgError:
        """A :class:`CfgError` pointing at this section (or at one of its options)."""
        line = self.options[key].line if key and key in self.options else self.line
        return CfgError(message, path=self.path, line=line or None)


def _format_scalar(value: Any) -> str:
    if isinstance(value, float):
        return repr(value) if value != int(value) else str(int(value))
    return str(value)


def _convert(raw: str, typ: str, *, section: Section, key: str, line: int) -> Any:
    def fail(expected: str) -> CfgError:
        return CfgError(
            f"[{section.kind}] {key}={_clip(raw)}: expected {expected}",
            path=section.path,
            line=line or None,
        )

    if typ == STR:
        choices = CHOICES.get((section.kind, key))
        if choices and raw not in choices:
            raise fail("one of " + ", ".join(choices))
        return raw
    if typ in (INT, FLOAT):
        return _number(raw, typ, fail)
    items = [s for s in raw.split(",")]
    if any(s == "" for s in items):
        raise fail("a comma-separated list of " + ("integers" if typ == INTS else "numbers"))
    return [_number(s, INT if typ == INTS else FLOAT, fail) for s in items]


def _number(text: str, typ: str, fail) -> int | float:
    try:
        if typ == INT:
            return int(text)
        value = float(text)
    except ValueError:
        raise fail("an integer" if typ == INT else "a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise fail("a finite number")
    return value


def _clip(text: str, limit: int = 60) -> str:
    """``text`` shortened for an error message (a junk line may be a megabyte long)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_cfg(text: str, *, path: str | Path | None = None) -> list[Section]:
    """Parse cfg text into sections, checking every value against the schema.

    Args:
        text: the cfg file's content.
        path: where it came from, used in error messages.

    Returns:
        The sections in file order; the first one is ``[net]``.

    Raises:
        CfgError: with file and line, for unknown sections, malformed lines and bad values.
    """
    src = str(path) if path is not None else None
    sections: list[Section] = []
    text = text.removeprefix("\ufeff")  # a byte-order mark that some Windows editors write
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = "".join(raw.split())  # Darknet removes every space and tab inside a line
        if not line or line[0] in "#;":
            continue
        if "#" in line:  # an inline comment; Darknet would keep it in the value, we drop it
            line = line[: line.index("#")]
        content = raw.split("#", 1)[0]  # non-ASCII is fine in comments, nowhere else
        if not content.isascii():
            char = next(ch for ch in content if not ch.isascii())
            raise CfgError(
                f"non-ASCII character {char!r} (U+{ord(char):04X}) in {_clip(content.strip())!r}; "
                "Darknet reads cfgs as ASCII (retype the line; it may have been pasted from a "
                "web page or a word processor)",
                path=src,
                line=lineno,
            )
        if line[0] == "[":
            if not line.endswith("]"):
                raise CfgError(
                    f"section header {_clip(line)!r} has no closing ']'", path=src, line=lineno
                )
            name = line[1:-1]
            kind = SECTION_ALIASES.get(name.lower())
            if kind is None:
                raise CfgError(
                    f"unknown section [{_clip(name)}]; supported: "
                    + ", ".join(f"[{k}]" for k in SCHEMA),
                    path=src,
                    line=lineno,
                )
            sections.append(Section(kind=kind, line=lineno, path=src, name=name))
            continue
        if "=" not in line:
            raise CfgError(f"expected key=value, found {_clip(line)!r}", path=src, line=lineno)
        if not sections:
            raise CfgError(
                f"option {_clip(line)!r} before the first section; a cfg starts with [net]",
                path=src,
                line=lineno,
            )
        key, value = line.split("=", 1)
        sec = sections[-1]
        if not key:
            raise CfgError(f"expected key=value, found {_clip(line)!r}", path=src, line=lineno)
        if key in sec.options:
            logger.warning("%s:%d: [%s] %s given twice; Darknet uses the first", src, lineno,
                           sec.kind, key)  # fmt: skip
            continue
        if key not in SCHEMA[sec.kind]:
            logger.warning("%s:%d: [%s] ignores unknown option %r", src, lineno, sec.kind, key)
        sec.options[key] = Option(value, lineno)
    if not sections:
        raise CfgError("no sections found; a Darknet cfg starts with [net]", path=src, line=None)
    if sections[0].kind != "net":
        raise CfgError(
            f"the first section is [{sections[0].name}], expected [net] (input size and channels)",
            path=src,
            line=sections[0].line,
        )
    for extra in sections[1:]:
        if extra.kind == "net":
            raise CfgError("a second [net] section; only the first may be [net]",
                           path=src, line=extra.line)  # fmt: skip
    for sec in sections:  # type-check every known option now, so errors come at load time
        for key, opt in sec.options.items():
            if key in SCHEMA[sec.kind]:
                _convert(opt.raw, SCHEMA[sec.kind][key][0], section=sec, key=key, line=opt.line)
    return sections


def load_cfg(path: str | Path) -> list[Section]:
    """Read and parse a cfg file. Raises :class:`CfgError` naming the file."""
    p = Path(path)
    if not p.is_file():
        raise CfgError("no such cfg file; check the path" if not p.exists() else
                       "is a directory, expected a .cfg file", path=p)  # fmt: skip
    data = p.read_bytes()
    if b"\x00" in data:
        raise CfgError("is a binary file, not Darknet cfg text (was a .weights file given?)",
                       path=p)  # fmt: skip
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CfgError(
            "is not UTF-8 text; save the cfg as plain ASCII", path=p, line=line
        ) from None
    return parse_cfg(text, path=p)


def format_cfg(sections: Iterable[Section]) -> str:
    """Cfg text for ``sections``: one ``key=value`` per line, a blank line between sections."""
    out: list[str] = []
    for sec in sections:
        out.append(f"[{sec.name or sec.kind}]")
        out.extend(f"{k}={o.raw}" for k, o in sec.options.items())
        out.append("")
    return "\n".join(out)
