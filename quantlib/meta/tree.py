"""A meta profile's tree: its sleeves and nested metas, validated before any run exists.

Everything the completeness gate would refuse about the tree's shape (sleeve count, duplicate ids)
is refused here too, so a bad meta profile never costs a sleeve run; the gate keeps its checks.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from quantlib.core.errors import DataError, ProfileError
from quantlib.core.profiles import Profile, load_profile, profile_kind
from quantlib.core.runs import locate_data_run

MAX_DEPTH = 3


def check_meta_tree(name: str, chain: tuple[str, ...] = (), profiles_dir: Path | None = None,
                    env: dict | None = None) -> int:
    """Validate a meta profile and its nested metas: every sleeve profile loads, no cycle, depth <= 3,
    unique sleeve ids, >= 2 sleeves (exactly 1 with `meta.single_sleeve`). Returns the depth of the
    tree (1 = sleeves only)."""
    chain = chain + (name,)
    if len(chain) > MAX_DEPTH:
        raise ProfileError(f"meta profile nesting deeper than {MAX_DEPTH}: {' -> '.join(chain)}; flatten the tree")
    profile = load_profile(name, profiles_dir, env=env if len(chain) == 1 else None).profile
    if not profile.meta.sleeves:
        raise ProfileError(f"profile {name!r} is not a meta profile: its meta.sleeves is empty "
                           f"(run it with `run_book.py sleeve {name}` or list sleeves under meta.sleeves)")
    check_sleeve_list(name, [entry.id for entry in profile.meta.sleeves], profile.meta.single_sleeve)
    depth = 1
    for entry in profile.meta.sleeves:
        if entry.meta_profile:
            if entry.meta_profile in chain:
                raise ProfileError(f"cyclic meta_profile in {name!r}: {' -> '.join(chain + (entry.meta_profile,))}; "
                                   f"remove one of the links")
            depth = max(depth, 1 + check_meta_tree(entry.meta_profile, chain, profiles_dir))
        else:
            sleeve = load_profile(entry.profile, profiles_dir)
            kind = profile_kind(sleeve, profiles_dir)
            if kind == "meta":
                raise ProfileError(f"{name}: sleeve {entry.id!r} names meta profile {entry.profile!r} as `profile`; "
                                   f"use `meta_profile: {entry.profile}`")
            if kind != "sleeve":
                raise ProfileError(f"{name}: sleeve {entry.id!r} names {kind} profile {entry.profile!r}; a sleeve "
                                   f"needs a sleeve profile (one with a `sleeve:` section, e.g. demo_crypto_long)")
    return depth


def check_sleeve_list(name: str, ids: list[str], single_sleeve: bool) -> None:
    """The completeness gate's SLEEVE_COUNT and UNIQUE_IDS rules, as a ProfileError naming the profile."""
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise ProfileError(f"meta profile {name!r}: duplicated sleeve id(s) {duplicated} in meta.sleeves; "
                           f"give every sleeve its own id (it names the sleeve's run directory)")
    if single_sleeve and len(ids) != 1:
        raise ProfileError(f"meta profile {name!r}: meta.single_sleeve is true but meta.sleeves lists {len(ids)} "
                           f"sleeves; list exactly one or set single_sleeve: false")
    if not single_sleeve and len(ids) < 2:
        raise ProfileError(f"meta profile {name!r}: meta.sleeves lists {len(ids)} sleeve; a multi-sleeve meta "
                           f"needs >= 2 (add one, or declare meta.single_sleeve: true)")


def leaf_sleeves(name: str, overrides: Mapping[str, Any], profiles_dir: Path | None = None,
                 prefix: str = "") -> list[tuple[str, Profile]]:
    """(path id, profile) of every unpinned sleeve of meta `name` and of its nested metas, resolved as the
    meta's sleeves stage resolves them (with the meta's `overrides`, `engine.fanout.sleeve_specs`)."""
    out = []
    for entry in load_profile(name, profiles_dir, overrides=overrides).profile.meta.sleeves:
        if entry.meta_profile:
            out += leaf_sleeves(entry.meta_profile, overrides, profiles_dir, f"{prefix}{entry.id}/")
        elif not entry.run_id:
            out.append((f"{prefix}{entry.id}", load_profile(entry.profile, profiles_dir, overrides=overrides).profile))
    return out


def pin_data_runs(name: str, runs_root: Path, env: Mapping[str, str] | None = None,
                  profiles_dir: Path | None = None) -> tuple[str, ...]:
    """The data runs the sleeves of meta `name` read, pinned when the meta starts: for each sleeve, the one it
    would read now (`locate_data_run`: its `sleeve.data_run_id`, else the newest PASS data run exporting its
    scanners), deduplicated, in sleeve order. The newest of these exporting a sleeve's scanners is that sleeve's
    pick, so handing the set to every sleeve (`RunOptions.data_runs`) keeps each on it, whatever passes later.
    A sleeve with no data run is a DataError now, before any run exists."""
    overrides = load_profile(name, profiles_dir, env=env).overrides
    pinned: list[str] = []
    for path_id, sleeve in leaf_sleeves(name, overrides, profiles_dir):
        try:
            run = locate_data_run(runs_root, sleeve.sleeve.scanners, sleeve.sleeve.data_run_id)
        except DataError as exc:
            raise DataError(f"meta {name}: sleeve {path_id!r} ({sleeve.name}) has no data run to read: "
                            f"{str(exc).removeprefix('aggregate: ')}") from None
        if run.id not in pinned:
            pinned.append(run.id)
    return tuple(pinned)
