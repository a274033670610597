"""Feature sets in a profile's one lock: which locked wheels an image of a recipe gets.

One lock per profile, not a base lock plus per-feature locks: pip-compile resolves every feature
together, so any subset of its pins that is closed under dependencies is consistent with that one
resolution, and reviewers read one file. A feature's wheels are the closure of its root
requirements (`[features]` in images/<profile>/profile.toml) through the lock's dependency graph
(pip-compile's `# via` lines); the base set is the closure of every other root of requirements.in.
A wheel's group (and so its layer) depends only on which features need it, never on the recipe,
so two recipes that differ in a learning rate share every wheel layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gapforge_runtime.features import BASE, FEATURES, recipe_features
from gapforge_runtime.recipe_schema import Recipe

from gapforge.errors import LockError
from gapforge.lock.python import LOCK_COMMAND, PythonLock, canonical_name

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==")


@dataclass(frozen=True)
class DependencyGraph:
    """The lock's `# via` lines turned around: each package's direct dependencies, and the roots."""

    requires: dict[str, frozenset[str]]
    roots: frozenset[str]
    """The packages requirements.in names (`# via -r requirements.in`)."""

    def closure(self, names: set[str] | frozenset[str]) -> set[str]:
        """`names` and everything they depend on, directly or not."""
        seen: set[str] = set()
        stack = list(names)
        while stack:
            name = stack.pop()
            if name not in seen:
                seen.add(name)
                stack.extend(self.requires.get(name, ()))
        return seen


def dependency_graph(lock: PythonLock) -> DependencyGraph:
    """Read the `# via` annotations of a pip-compile lock; a pin with none fails (no graph, no
    closure: better refused than an image missing a dependency)."""
    requires: dict[str, set[str]] = {}
    roots: set[str] = set()
    annotated: set[str] = set()
    current = ""
    in_via = False
    for line in lock.path.read_text(encoding="utf-8").splitlines():
        pin = _PIN.match(line)
        if pin:
            current, in_via = canonical_name(pin.group(1)), False
            continue
        text = line.strip()
        if text.startswith("# via"):
            in_via, parents = True, [text.removeprefix("# via").strip()]
        elif in_via and text.startswith("#   "):
            parents = [text.removeprefix("#").strip()]
        else:
            in_via = False
            continue
        for parent in filter(None, parents):
            annotated.add(current)
            if parent.startswith(("-r ", "-c ")):
                roots.add(current)
            else:
                requires.setdefault(canonical_name(parent.split()[0]), set()).add(current)
    bare = sorted({r.key for r in lock.requirements} - annotated)
    if bare:
        raise LockError(
            f"{lock.path}: no '# via' line for {', '.join(bare)}, so the feature sets' wheels cannot "
            f"be worked out: the lock must keep pip-compile's annotations; run '{LOCK_COMMAND}'"
        )
    return DependencyGraph({k: frozenset(v) for k, v in requires.items()}, frozenset(roots))


@dataclass(frozen=True)
class FeatureSelection:
    """The named features an image holds, the field that asked for each, and its wheels by group."""

    features: tuple[str, ...]
    """The named features, sorted (`base` is always there too)."""
    fields: dict[str, str]
    """Each named feature → the recipe field that asks for it."""
    groups: dict[str, tuple[str, ...]]
    """`base`, or the `+`-joined features whose closure holds a wheel → its wheels (lock keys)."""

    @property
    def packages(self) -> set[str]:
        return {name for names in self.groups.values() for name in names}

    @property
    def label(self) -> str:
        """`base,preference`: the image label and what `inspect` shows."""
        return ",".join([BASE, *self.features])

    def record(self, lock: PythonLock) -> dict[str, Any]:
        """The image's /opt/gapforge/features.json and build.json's `features`."""
        pins = lock.by_name()
        return {
            "features": [BASE, *self.features],
            "fields": dict(sorted(self.fields.items())),
            "wheels": {
                group: [pins[name].pin for name in names]
                for group, names in sorted(self.groups.items())
            },
        }


def feature_closures(
    declared: dict[str, tuple[str, ...]], lock: PythonLock, where: str
) -> tuple[set[str], dict[str, set[str]]]:
    """The base set's closure and each declared feature's closure, both over the lock's graph."""
    graph = dependency_graph(lock)
    unknown = sorted(set(declared) - set(FEATURES))
    missing = sorted({r for roots in declared.values() for r in roots} - graph.roots)
    problems = []
    if unknown:
        problems.append(
            f"names {', '.join(unknown)}, not a feature of gapforge_runtime/features.py "
            f"({', '.join(sorted(FEATURES))})"
        )
    if missing:
        problems.append(
            f"lists {', '.join(missing)}, not a root requirement of the lock {lock.path.name}"
        )
    if problems:
        raise LockError(
            f"{where}: [features] {'; '.join(problems)}: fix the table (or requirements.in, "
            f"then '{LOCK_COMMAND}')"
        )
    feature_roots = {canonical_name(r) for roots in declared.values() for r in roots}
    base = graph.closure(graph.roots - feature_roots)
    return base, {
        f: graph.closure({canonical_name(r) for r in roots}) for f, roots in declared.items()
    }


def select_features(
    declared: dict[str, tuple[str, ...]], lock: PythonLock, wanted: dict[str, str], where: str
) -> FeatureSelection:
    """The wheels of the base set plus the `wanted` features (feature → the field asking for it),
    each in its group; a wanted feature the profile does not declare is refused."""
    lacking = sorted(set(wanted) - set(declared))
    if lacking:
        raise LockError(
            f"{where}: the recipe needs feature(s) {', '.join(lacking)} "
            f"({'; '.join(f'{f} from {wanted[f]}' for f in lacking)}), which the profile's "
            "[features] table does not declare: add them there, or remove those recipe fields"
        )
    base, closures = feature_closures(declared, lock, where)
    groups: dict[str, list[str]] = {BASE: sorted(base)}
    for name in sorted(set().union(*(closures[f] for f in wanted)) - base):
        group = "+".join(sorted(f for f, names in closures.items() if name in names))
        groups.setdefault(group, []).append(name)
    return FeatureSelection(
        features=tuple(sorted(wanted)),
        fields=dict(wanted),
        groups={group: tuple(names) for group, names in groups.items()},
    )


def lacking_features(recipe: Recipe, declared: dict[str, tuple[str, ...]]) -> list[tuple[str, str]]:
    """The recipe's features its profile does not declare: (feature, the field asking for it)."""
    wanted = recipe_features(recipe)
    return [(f, wanted[f]) for f in sorted(set(wanted) - set(declared))]
