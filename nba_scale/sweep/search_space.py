"""Search spaces in YAML: one file per defense, loaded and checked here; no computation.

    defense: nba
    params:
      nba.beta: {type: float, low: 0.05, high: 5.0, log: true, default: 0.5}
      nba.terms: {type: categorical, choices: [[rnb, lnb, pnb], [rnb, pnb]], default: [rnb, lnb, pnb]}
      nba.pgd_steps: {type: int, low: 1, high: 10}
    fixed:
      nba.optim.epochs: 20

Keys are trial-config keys; every key and value is checked against the trial config, so a typo
fails here, in one line naming the file, the key and the problem, not in the middle of a sweep.
`default` values form the reference point (the paper's configuration) evaluated in every sweep.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Optional

import yaml

from ..config import ConfigError, read_yaml_mapping

TYPES = {"float", "int", "categorical"}
SPEC_KEYS = {"type", "low", "high", "log", "choices", "default"}


@dataclasses.dataclass
class Param:
    name: str
    type: str
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    choices: Optional[list] = None
    default: Any = None

    def refuses(self, value: Any) -> Optional[str]:
        """Why `value` (as a user writes it, e.g. in `--points`) is not a value of this parameter,
        or None: the searcher's own check would fail later, inside the driver, with a traceback."""
        if self.type == "categorical":
            return None if value in self.choices else f"not one of the choices {self.choices}"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"must be a finite number in [{self.low}, {self.high}]"
        if self.type == "int" and not float(value).is_integer():
            return f"must be a whole number in [{int(self.low)}, {int(self.high)}]"
        if not self.low <= value <= self.high:
            scale = " (log scale)" if self.log else ""
            return f"lies outside the search space's range [{self.low}, {self.high}]{scale}"
        return None

    def distribution(self):
        import optuna.distributions as d

        if self.type == "float":
            return d.FloatDistribution(self.low, self.high, log=self.log)
        if self.type == "int":
            return d.IntDistribution(int(self.low), int(self.high), log=self.log)
        # Optuna's categorical choices must be scalars: lists travel as their YAML text.
        return d.CategoricalDistribution([encode(c) for c in self.choices])


@dataclasses.dataclass
class SearchSpace:
    path: str
    defense: str
    params: list[Param]
    fixed: dict[str, Any]

    def default_point(self) -> dict[str, Any]:
        """The reference configuration in the searcher's encoding (for points_to_evaluate)."""
        return {p.name: encode(p.default) if p.type == "categorical" else p.default for p in self.params}

    def default_config(self) -> dict[str, Any]:
        """The reference configuration as trial-config values (dotted keys)."""
        return {p.name: p.default for p in self.params}

    def fixing(self, keys: set[str]) -> "SearchSpace":
        """This space without the parameters in `keys` (a --set gives them one value)."""
        return dataclasses.replace(self, params=[p for p in self.params if p.name not in keys])

    def optuna_space(self) -> dict[str, Any]:
        return {p.name: p.distribution() for p in self.params}


def encode(value: Any) -> Any:
    return yaml.safe_dump(value, default_flow_style=True).strip() if isinstance(value, (list, dict)) else value


def decode(value: Any) -> Any:
    """Undo `encode` for a sampled categorical value."""
    if isinstance(value, str) and value[:1] in "[{":
        return yaml.safe_load(value)
    return value


def load_search_space(path: str | Path) -> SearchSpace:
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise ConfigError(f"search space {where!r} not found; pass --space search_spaces/<defense>.yaml")
    doc = read_yaml_mapping(path, "defense, params, fixed")
    unknown = set(doc) - {"defense", "params", "fixed"}
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key {sorted(unknown)[0]!r}; expected defense, params, fixed")
    defense = doc.get("defense")
    if not isinstance(defense, str):
        raise ConfigError(f"{where}: 'defense' must name the defense, e.g. defense: nba")
    raw_params = doc.get("params") or {}
    fixed = doc.get("fixed") or {}
    if not isinstance(raw_params, dict) or not isinstance(fixed, dict):
        raise ConfigError(f"{where}: 'params' and 'fixed' must be mappings of config key -> spec/value")
    params = [_param(where, name, spec) for name, spec in raw_params.items()]
    space = SearchSpace(where, defense, params, dict(fixed))
    _check_against_trial_config(space)
    return space


def _param(where: str, name: str, spec: Any) -> Param:
    def bad(problem: str) -> ConfigError:
        return ConfigError(f"{where}: {name}: {problem}")

    if not isinstance(spec, dict):
        raise bad("expected a mapping like {type: float, low: 0.1, high: 10, log: true}")
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise bad(f"unknown field {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(SPEC_KEYS))}")
    kind = spec.get("type")
    if kind not in TYPES:
        raise bad(f"type {kind!r} is not one of float, int, categorical")
    p = Param(name, kind, spec.get("low"), spec.get("high"), bool(spec.get("log", False)), spec.get("choices"),
              spec.get("default"))
    if kind == "categorical":
        if not isinstance(p.choices, list) or not p.choices:
            raise bad("categorical needs a non-empty list 'choices'")
        if p.default is None:
            p.default = p.choices[0]
        if p.default not in p.choices:
            raise bad(f"default {p.default!r} is not among choices {p.choices}")
        return p
    for f in ("low", "high"):
        v = getattr(p, f)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise bad(f"{kind} needs a finite numeric '{f}', got {v!r}")
    if not p.low < p.high:
        raise bad(f"low={p.low} must be below high={p.high}")
    if p.log and p.low <= 0:
        raise bad(f"log scale needs low > 0, got {p.low}")
    if kind == "int" and not (float(p.low).is_integer() and float(p.high).is_integer()):
        raise bad("int bounds must be integers")
    if p.default is None:
        raise bad("needs a 'default' (the reference configuration every sweep evaluates)")
    if isinstance(p.default, bool) or not isinstance(p.default, (int, float)):
        raise bad(f"default {p.default!r} must be a number")
    if not p.low <= p.default <= p.high:
        raise bad(f"default {p.default} lies outside [{p.low}, {p.high}]")
    return p


def probes(p: Param) -> list[Any]:
    """Values the searcher may hand a trial: both bounds and an inside value that is no integer
    for a float (so a float range on an integer key fails here), every choice of a categorical."""
    if p.type == "categorical":
        return list(p.choices)
    if p.type == "int":
        return [int(p.low), int(p.high)]
    inside = math.exp(math.log(p.low) + 0.37 * (math.log(p.high) - math.log(p.low))) if p.log else (
        p.low + 0.37 * (p.high - p.low))
    return [float(p.low), float(inside), float(p.high)]


def _check_against_trial_config(space: SearchSpace) -> None:
    """The default point, and every parameter at each of its `probes` (the rest at their
    defaults), must be a valid trial config: a space that only fails once a trial samples it
    fails here, before Ray starts."""
    from ..trial import check_config

    base = {"defense": space.defense, **space.fixed, **space.default_config()}
    for name, value in [(None, None)] + [(p.name, v) for p in space.params for v in probes(p)]:
        try:
            check_config(base if name is None else {**base, name: value})
        except ConfigError as e:
            at = "" if name is None else f"{name}: value {value!r} of its range: "
            raise ConfigError(f"{space.path}: {at}{e}") from None


def bundled() -> Path:
    """The search spaces and campaign grids that ship inside the package (package data, read
    with importlib.resources: a wheel installed anywhere finds them; in a checkout the top-level
    `search_spaces/` is a link to this folder)."""
    from importlib.resources import files

    return Path(str(files("nba_scale") / "search_spaces"))


def find_space(defense: str, given: Optional[str] = None) -> Path:
    """`given`, or search_spaces/<defense>.yaml in the working directory (a user's own), or the
    package's."""
    if given:
        return Path(given)
    for base in (Path.cwd() / "search_spaces", bundled()):
        if (base / f"{defense}.yaml").is_file():
            return base / f"{defense}.yaml"
    raise ConfigError(f"no search space for defense {defense!r}: pass --space PATH.yaml")
