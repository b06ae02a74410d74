"""Settings checked before any work, against one declaration per key: the one its comment starts with.

Every line of the plugin's config files (``props/*.yaml``, ``dataset_configs/*.yaml``) declares its
key's type in the parenthesis that opens its comment, as RecBole's own property files do
(``epochs: 50  # (int >= 1) Maximum training epochs.``). The same text is what a reader of the
file sees and the rule a run's settings are checked against, when its config is built: before any
data is read, any stage runs or any process starts. A declaration is one or more alternatives
joined by ``or``, each a type with an optional constraint:

==========================================  =============================================================
``(int)`` ``(float)`` ``(bool)``            an integer (not a bool); a number (an integer too); True / False
``(str)`` ``(list)`` ``(dict)``             a text, a list, a mapping
``(list of int)``                           a list whose items all have that type
``(int >= 1)`` ``(float > 0)``              a bound (``>=``, ``>``, ``<=``, ``<``)
``(float in [0, 1])`` ``(float in (0, 1])``  an interval; a square bracket includes its end
``(str: mean | cls)``                       one of these values
``(str or None)`` ``(str: auto or bool)``   any of the alternatives (``None``: YAML's ``~``)
==========================================  =============================================================

A key is checked against its declaration in the files the run reads (``props/overall.yaml``, the
backbone's and the model's props, the dataset config; a later file's declaration wins, as its value
does). A key RecBole defines that none of them declares is checked against the type of RecBole's
default value where that is a number or a bool, so ``--epochs=abc`` or ``--learning_rate=fast`` is
refused by name instead of failing later inside RecBole.
"""

import functools
import re
from dataclasses import dataclass

from recbole_cela.utils import PluginConfigError

_TYPES = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "list": lambda v: isinstance(v, (list, tuple)),
    "dict": lambda v: isinstance(v, dict),
    "None": lambda v: v is None,
}
_ALTERNATIVE = re.compile(r"(?:list of (?P<item>\w+)|(?P<type>\w+))\s*(?P<rest>.*)")
_BOUND = re.compile(r"(?P<op>>=|>|<=|<)\s*(?P<number>\S+)")
_INTERVAL = re.compile(r"in\s*(?P<open>[\[(])\s*(?P<low>[^,\s]+)\s*,\s*(?P<high>[^\]\s)]+)\s*(?P<close>[\])])")
_COMPARE = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, "<": lambda a, b: a < b}


@dataclass(frozen=True)
class Alternative:
    type: str  # a key of _TYPES, or "list" with ``item`` set
    item: str = None  # "list of <item>"
    choices: tuple = None  # allowed values
    bounds: tuple = ()  # ((op, number), ...)

    def accepts(self, value):
        if not _TYPES[self.type](value):
            return False
        if self.item and not all(_TYPES[self.item](v) for v in value):
            return False
        # a listed value of the same kind: 1 is not True, but a float choice may be written as an int
        if self.choices is not None and not any(value == c and (type(value) is type(c) or self.type == "float")
                                                for c in self.choices):
            return False
        return all(_COMPARE[op](value, number) for op, number in self.bounds)


@dataclass(frozen=True)
class Declaration:
    text: str  # as written between the parentheses
    alternatives: tuple
    source: str  # the file that declares it

    def accepts(self, value):
        return any(a.accepts(value) for a in self.alternatives)


def _choice(text, type_name):
    """A listed value, read as its alternative's type (a ``str`` choice stays text: 'no' is not False)."""
    if type_name == "bool":
        if text not in ("True", "False"):
            raise ValueError(text)
        return text == "True"
    return {"int": int, "float": float}.get(type_name, str)(text)


def parse_declaration(text, source=""):
    """The :class:`Declaration` written as ``text`` (what is inside the parentheses), or None when
    ``text`` is not one (a comment that merely starts with a parenthesis)."""
    alternatives = []
    for part in re.split(r"\s+or\s+", text.strip()):
        match = _ALTERNATIVE.fullmatch(part.strip())
        if not match:
            return None
        type_name, item, rest = match["type"] or "list", match["item"], match["rest"].strip()
        if type_name not in _TYPES or (item and item not in _TYPES):
            return None
        choices, bounds = None, ()
        try:
            if rest.startswith(":"):
                choices = tuple(_choice(c.strip(), type_name) for c in rest[1:].split("|"))
            elif _BOUND.fullmatch(rest):
                bound = _BOUND.fullmatch(rest)
                bounds = ((bound["op"], float(bound["number"])),)
            elif _INTERVAL.fullmatch(rest):
                interval = _INTERVAL.fullmatch(rest)
                bounds = ((">=" if interval["open"] == "[" else ">", float(interval["low"])),
                          ("<=" if interval["close"] == "]" else "<", float(interval["high"])))
            elif rest:
                return None
        except ValueError:
            return None
        if bounds and type_name not in ("int", "float"):
            return None
        alternatives.append(Alternative(type_name, item, choices, bounds))
    return Declaration(text.strip(), tuple(alternatives), source)


def _parenthesis(comment):
    """The text inside the parenthesis that opens ``comment``, brackets of intervals included."""
    if not comment.startswith("("):
        return None
    depth = 0
    for i, char in enumerate(comment):
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        if depth == 0:
            return comment[1:i]
    return None


@functools.lru_cache(maxsize=None)
def declarations(path):
    """{key: Declaration} of a config file's top-level keys whose comment opens with one."""
    out = {}
    source = "/".join(path.replace("\\", "/").split("/")[-2:])
    with open(path, encoding="utf-8") as f:
        for line in f:
            match = re.match(r"(?P<key>[A-Za-z_]\w*)\s*:.*?\s#\s*(?P<comment>\(.*)$", line.rstrip("\n"))
            if not match:
                continue
            text = _parenthesis(match["comment"])
            declaration = parse_declaration(text, source) if text is not None else None
            if declaration:
                out[match["key"]] = declaration
    return out


def _number_or_bool(default):
    """The check RecBole's default value implies, as (test, what it expects), or None."""
    if isinstance(default, bool):
        return _TYPES["bool"], "True or False (RecBole's default is a bool)"
    if isinstance(default, (int, float)):
        return _TYPES["float"], f"a number (RecBole's default is {default!r})"
    return None


def problems(values, files, recbole_defaults):
    """One line per setting of ``values`` (a run's config as given: files, dict, command line) that
    its declaration in ``files`` (or, undeclared, RecBole's default in ``recbole_defaults``) refuses."""
    declared = {}
    for path in files:
        declared.update(declarations(path))
    out = []
    for key, value in values.items():
        if key in declared:
            declaration = declared[key]
            if not declaration.accepts(value):
                out.append(f"{key} = {value!r}: expected ({declaration.text}), as {declaration.source} declares")
        elif key in recbole_defaults:
            check = _number_or_bool(recbole_defaults[key])
            if check and not check[0](value):
                out.append(f"{key} = {value!r}: expected {check[1]}")
    return out


def check_settings(values, files, recbole_defaults):
    """Raise :class:`PluginConfigError` naming every refused setting (see :func:`problems`)."""
    lines = problems(values, files, recbole_defaults)
    if len(lines) == 1:
        raise PluginConfigError(f"invalid setting {lines[0]}.")
    if lines:
        raise PluginConfigError("invalid settings:\n  " + "\n  ".join(lines))


def check_choice(key, value, choices, what):
    """Raise :class:`PluginConfigError` unless ``value`` is one of ``choices`` (``what`` they are)."""
    if not isinstance(value, str) or value not in choices:
        raise PluginConfigError(f"invalid setting {key} = {value!r}: expected {what}: {', '.join(choices)}.")
