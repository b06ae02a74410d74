"""The benchmark's rows, read from ``variants.yaml`` beside this file (see its header)."""

import functools
import os

import yaml

REGISTRY_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "variants.yaml")
GROUPS = ("pop", "id", "text", "cela", "ablation", "other", "flip")
FIELDS = ("model", "args", "text_tokens", "backbone_from", "dataset_suffix", "default", "group", "description")


class RegistryError(ValueError):
    """A malformed ``variants.yaml``."""


def raw_suffix(spec):
    """The ``dataset_suffix`` of a variant's spec as written (None when absent or not a mapping)."""
    return spec.get("dataset_suffix") if isinstance(spec, dict) else None


def _check(name, spec, names):
    """One variant's spec with its defaults filled in, or :class:`RegistryError`."""
    if not isinstance(spec, dict):
        raise RegistryError(f"variant {name}: expected a mapping, got {spec!r}")
    unknown = sorted(set(spec) - set(FIELDS))
    if unknown:
        raise RegistryError(f"variant {name}: unknown field(s) {unknown}; known: {', '.join(FIELDS)}")
    out = {"model": spec.get("model"), "args": list(spec.get("args") or [])}
    source = spec.get("backbone_from")
    bad = [a for a in out["args"] if not isinstance(a, str) or not a.startswith("--") or "=" not in a]
    if bad:
        raise RegistryError(f"variant {name}: args must be --key=value strings, not {bad}")
    for key in ("text_tokens", "backbone_from", "dataset_suffix"):
        if spec.get(key):
            out[key] = spec[key]
    suffix = spec.get("dataset_suffix")
    if suffix is not None and (not isinstance(suffix, str) or not suffix.startswith("-") or "/" in suffix):
        raise RegistryError(f"variant {name}: dataset_suffix must be like '-keywords', not {suffix!r}")
    if spec.get("default", True) is False:
        out["default"] = False
    if source is not None and (source not in names or source == name):
        raise RegistryError(f"variant {name}: backbone_from '{source}' is not another variant")
    if source is not None and spec.get("model") != "CELA":
        raise RegistryError(f"variant {name}: backbone_from needs model CELA (it sets --backbone_checkpoint)")
    if source is not None and raw_suffix(names.get(source)) != suffix:
        raise RegistryError(f"variant {name}: its backbone_from row '{source}' must run on the same dataset "
                            "(the same dataset_suffix)")
    group = spec.get("group", "other")
    if group not in GROUPS:
        raise RegistryError(f"variant {name}: group '{group}' is not one of {', '.join(GROUPS)}")
    out["group"] = group
    out["description"] = str(spec.get("description") or "")
    return out


@functools.lru_cache(maxsize=None)
def load(path=REGISTRY_FILE):
    """(variants: {name: spec}, targets: {name: value}) of a registry file, checked."""
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    raw = data.get("variants") or {}
    variants = {str(name): _check(str(name), spec, raw) for name, spec in raw.items()}
    return variants, dict(data.get("targets") or {})


def variants():
    """{name: spec} in registry order (the order of the default ``--models`` list). Specs are
    shared: callers only read them."""
    return load()[0]


def targets():
    return load()[1]


def spec(name, table=None):
    """The spec of variant ``name`` (``table``: another {name: spec}, e.g. in tests)."""
    return (table or variants())[name]


def default_variants():
    return [name for name, s in variants().items() if s.get("default", True)]


def model_of(name, table=None):
    """The runner model of a variant ('' for an unknown name; None for Pop)."""
    return (table or variants()).get(name, {}).get("model", "")


def is_cela(name, table=None):
    return model_of(name, table) == "CELA"


def backbone_source(name, table=None):
    """The variant whose trained run this one takes as its backbone, or None."""
    return (table or variants()).get(name, {}).get("backbone_from")


def as_recorded(name, table=None):
    """A variant's spec as the report JSON records it (only the fields that define the run)."""
    s = spec(name, table)
    return {k: s[k] for k in ("model", "args", "text_tokens", "backbone_from", "dataset_suffix", "default") if k in s}


def dataset_of(name, dataset, table=None):
    """The dataset a variant runs on in the benchmark of ``dataset``: ``dataset`` + its
    ``dataset_suffix`` (e.g. amazon-beauty-keywords, the same interactions with other item text)."""
    return dataset + ((table or variants()).get(name, {}).get("dataset_suffix") or "")
