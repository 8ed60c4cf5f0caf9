"""Campaign grids in YAML (`search_spaces/campaigns/NAME.yaml`): loading, checking, expanding.

    name: table2
    title: "Six defenses against six attacks"
    paper: "Table 2"
    attacks: [badnets, trojan, blend, sig, cla, refool]
    defenses: [ft, fp, mcr, nad, argd, nba]
    clean_fractions: [0.05]
    variants:                     # optional: named trial-config overrides, one more axis
      ldl: {nba.losses: ldl}
    sample: {space: nba, n: 8}    # optional: variants drawn from a defense's search space
    set: {}                       # optional: overrides for every cell
    report: {rows: attack, columns: defense}
    published: {nba: {asr: 0.0152, ba: 0.8114}}   # the paper's numbers, where it gives them
    claims: {subject: nba, weaker: [fp, mcr]}     # optional: the paper's claims the report checks

Cells = attacks x defenses x clean fractions x variants x seeds; each cell is one trial whose id
(`attack-defense-cf0.05[-variant]-s0`) names its Parquet row, which is how a campaign resumes.
No computation here: a malformed grid fails in one line before Ray starts.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import random
from pathlib import Path
from typing import Any, Optional


from ..config import ConfigError, read_yaml_mapping
from .search_space import bundled

KEYS = {"name", "title", "paper", "attacks", "defenses", "clean_fractions", "variants", "sample", "set",
        "report", "published", "description", "claims"}
AXES = ("attack", "defense", "clean_fraction", "variant")
CAMPAIGN_DIR = bundled() / "campaigns"  # package data, beside the search spaces


@dataclasses.dataclass(frozen=True)
class Cell:
    attack: str
    defense: str
    clean_fraction: float
    variant: str
    seed: int
    overrides: tuple  # ((dotted key, value), ...) of the variant: hashable, JSON-able

    @property
    def id(self) -> str:
        v = "" if self.variant == "default" else f"-{self.variant}"
        return f"{self.attack}-{self.defense}-cf{self.clean_fraction:g}{v}-s{self.seed}"

    def axis(self, name: str) -> Any:
        return getattr(self, name)


@dataclasses.dataclass
class Campaign:
    name: str
    path: str
    title: str
    paper: str
    attacks: list[str]
    defenses: list[str]
    clean_fractions: list[float]
    variants: dict[str, dict[str, Any]]
    fixed: dict[str, Any]
    report: dict[str, Any]
    published: dict[str, Any]
    description: str = ""
    claims: Optional[dict[str, Any]] = None  # the paper's claims the report checks (sweep/claims.py)

    def cells(self, seeds: list[int], only: Optional[dict[str, list[str]]] = None) -> list[Cell]:
        """The grid, restricted by `only` ({"attack": ["badnets"], ...}) where given."""
        only = only or {}
        for axis, wanted in only.items():
            have = {str(v) for v in self.axis_values(axis)}
            missing = [w for w in wanted if w not in have]
            if missing:
                raise ConfigError(f"campaign {self.name}: {axis} {missing[0]!r} is not in its grid; "
                                  f"it has {', '.join(sorted(have))}")
        out = []
        for a, d, cf, v, s in itertools.product(self.attacks, self.defenses, self.clean_fractions,
                                                self.variants, seeds):
            if any(str(val) not in only.get(ax, [str(val)]) for ax, val in zip(AXES, (a, d, cf, v))):
                continue
            over = self.variants[v]
            if d != self.variant_defense(over, d):
                continue  # a variant of one defense's knobs applies to that defense only
            out.append(Cell(a, d, float(cf), v, int(s), tuple(sorted(over.items()))))
        return out

    def axis_values(self, axis: str) -> list[Any]:
        values = {"attack": self.attacks, "defense": self.defenses, "clean_fraction": self.clean_fractions,
                  "variant": list(self.variants)}
        if axis not in values:
            raise ConfigError(f"unknown campaign axis {axis!r}; axes: {', '.join(AXES)}")
        return values[axis]

    @staticmethod
    def variant_defense(over: dict[str, Any], default: str) -> str:
        from ..defenses import DEFENSES

        owners = {k.split(".")[0] for k in over} & set(DEFENSES.names())
        return owners.pop() if len(owners) == 1 else default


def list_campaigns(directory: Path = CAMPAIGN_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.yaml"))


def find_campaign(name: str) -> Path:
    """A campaign by name (search_spaces/campaigns/NAME.yaml, here or beside the package) or a path."""
    given = Path(name)
    if given.suffix in (".yaml", ".yml") and given.is_file():
        return given
    for base in (Path.cwd() / "search_spaces" / "campaigns", CAMPAIGN_DIR):
        if (base / f"{name}.yaml").is_file():
            return base / f"{name}.yaml"
    raise ConfigError(f"unknown campaign {name!r}; known: {', '.join(list_campaigns())} (or pass a YAML path)")


def load_campaign(name_or_path: str) -> Campaign:
    from ..attacks import get_attack
    from ..defenses import get_defense
    from .claims import check_spec as check_claims

    path = find_campaign(name_or_path)
    where = str(path)
    doc = read_yaml_mapping(path, ", ".join(sorted(KEYS)))
    unknown = set(doc) - KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}; expected {', '.join(sorted(KEYS))}")

    def names(key: str, check) -> list[str]:
        value = doc.get(key)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: {key!r} must be a non-empty list of names")
        for v in value:
            try:
                check(v)
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
        return value

    attacks, defenses = names("attacks", get_attack), names("defenses", get_defense)
    cfs = doc.get("clean_fractions", [0.05])
    if not isinstance(cfs, list) or not cfs or not all(isinstance(c, (int, float)) and 0 < c <= 1 for c in cfs):
        raise ConfigError(f"{where}: 'clean_fractions' must be a list of numbers in (0, 1]")
    variants = doc.get("variants") or ({} if doc.get("sample") else {"default": {}})
    if not isinstance(variants, dict) or not all(isinstance(v, dict) or v is None for v in variants.values()):
        raise ConfigError(f"{where}: 'variants' must map a name to a mapping of config key -> value")
    variants = {str(k): dict(v or {}) for k, v in variants.items()}
    for k in variants:
        if not k.replace("_", "").replace(".", "").isalnum():
            raise ConfigError(f"{where}: variant name {k!r} must be letters, digits, '_' or '.'")
    if doc.get("sample"):
        variants = {**variants, **_sampled_variants(where, doc["sample"])}
    fixed = doc.get("set") or {}
    report = doc.get("report") or {"rows": "attack", "columns": "defense"}
    if not isinstance(fixed, dict) or not isinstance(report, dict):
        raise ConfigError(f"{where}: 'set' and 'report' must be mappings")
    for key in ("rows", "columns"):
        if report.get(key, "attack") not in AXES:
            raise ConfigError(f"{where}: report.{key} must be one of {', '.join(AXES)}")
    camp = Campaign(name=str(doc.get("name", path.stem)), path=where, title=str(doc.get("title", path.stem)),
                    paper=str(doc.get("paper", "")), attacks=attacks, defenses=defenses,
                    clean_fractions=[float(c) for c in cfs], variants=variants, fixed=dict(fixed),
                    report=dict(report), published=dict(doc.get("published") or {}),
                    description=str(doc.get("description", "")).strip(),
                    claims=check_claims(doc["claims"], defenses, where) if "claims" in doc else None)
    _check_configs(camp, where)
    return camp


def _sampled_variants(where: str, spec: Any) -> dict[str, dict[str, Any]]:
    """`sample: {space: nba, n: 8, seed: 0}`: the space's default point plus n-1 random points,
    the shared candidate pool a leave-one-attack-out analysis selects from."""
    from .search_space import find_space, load_search_space

    if not isinstance(spec, dict) or not isinstance(spec.get("space"), str) or int(spec.get("n", 0)) < 1:
        raise ConfigError(f"{where}: 'sample' must be {{space: DEFENSE, n: COUNT >= 1, seed: S}}")
    space = load_search_space(find_space(spec["space"]))
    rng = random.Random(int(spec.get("seed", 0)))
    out = {"cfg0": space.default_config()}
    for i in range(1, int(spec["n"])):
        point = {}
        for p in space.params:
            if p.type == "categorical":
                point[p.name] = rng.choice(p.choices)
            elif p.log:
                value = math.exp(rng.uniform(math.log(p.low), math.log(p.high)))
                point[p.name] = round(value) if p.type == "int" else float(f"{value:.4g}")
            else:
                point[p.name] = rng.randint(int(p.low), int(p.high)) if p.type == "int" else float(
                    f"{rng.uniform(p.low, p.high):.4g}")
        out[f"cfg{i}"] = point
    return {k: {**space.fixed, **v} for k, v in out.items()}


def _check_configs(camp: Campaign, where: str) -> None:
    """Every cell's trial config must parse: a typo in a variant fails here, not in a worker."""
    from ..trial import check_config

    for cell in camp.cells([0]):
        try:
            check_config(cell_config(camp, cell, {}))
        except ConfigError as e:
            raise ConfigError(f"{where}: cell {cell.id}: {e}") from None


def cell_config(camp: Campaign, cell: Cell, base: dict[str, Any], user_set: Optional[dict] = None,
                preset: Optional[str] = None) -> dict[str, Any]:
    """The trial config of one cell: base (dataset, device, cache) < campaign `set` < the cell's
    axes and variant < the user's --set; then the preset's budgets under all of them."""
    from ..spec import trial_config

    axes = {"attack": cell.attack, "defense": cell.defense, "clean_fraction": cell.clean_fraction,
            "seed": cell.seed, **dict(cell.overrides)}
    return trial_config(base, camp.fixed, axes, user_set or {}, preset=preset)


def cell_row(run: str, cell: Cell) -> dict[str, Any]:
    """What names a cell's Parquet row (beside the trial's own result)."""
    import json

    from .store import study_id

    return {"sweep": run, "campaign": run, "study": study_id(cell.attack, cell.clean_fraction), "trial_id": cell.id,
            "variant": cell.variant, "seed": cell.seed, "is_default": cell.variant in ("default", "cfg0"),
            "variant_overrides": json.dumps(dict(cell.overrides), sort_keys=True)}
