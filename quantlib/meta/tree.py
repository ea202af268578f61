"""A meta profile's tree: its sleeves and nested metas, validated before any run exists.

Everything the completeness gate would refuse about the tree's shape (sleeve count, duplicate ids)
is refused here too, so a bad meta profile never costs a sleeve run; the gate keeps its checks.
"""
from __future__ import annotations

from pathlib import Path

from quantlib.core.errors import ProfileError
from quantlib.core.profiles import load_profile

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
            sleeve = load_profile(entry.profile, profiles_dir).profile
            if sleeve.meta.sleeves:
                raise ProfileError(f"{name}: sleeve {entry.id!r} names meta profile {entry.profile!r} as `profile`; "
                                   f"use `meta_profile: {entry.profile}`")
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
