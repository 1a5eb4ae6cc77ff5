"""Checks on the examples themselves before splitting: byte-identical duplicates (within a split, across
splits, with conflicting labels), and what ``--dedupe`` keeps of them."""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tf_transfer.data.sources import Example
from tf_transfer.folders import file_digest

log = logging.getLogger(__name__)

KEEP_ORDER = ("test", "val", "all", "train")  # a duplicate group keeps its copy in the first of these


@dataclass(frozen=True)
class Duplicate:
    """Files with the same bytes: where they are and which labels they carry."""

    digest: str
    members: tuple[tuple[str, Example], ...]  # (partition, example)

    @property
    def conflicting(self) -> bool:
        return len({(e.label, e.targets) for _, e in self.members}) > 1

    @property
    def across_splits(self) -> bool:
        return len({p for p, _ in self.members}) > 1


def with_digests(partitions: dict[str, list[Example]]) -> dict[str, list[Example]]:
    """The examples with the SHA-256 of their file's bytes (read in parallel)."""
    members = [e for examples in partitions.values() for e in examples]
    with ThreadPoolExecutor(8) as pool:
        digests = dict(zip([e.key for e in members], pool.map(lambda e: file_digest(e.key), members), strict=True))
    return {p: [dataclasses.replace(e, digest=digests[e.key]) for e in examples] for p, examples in partitions.items()}


def find_duplicates(partitions: dict[str, list[Example]]) -> list[Duplicate]:
    """Groups of byte-identical files (by the examples' digests), in a stable order."""
    groups: dict[str, list] = defaultdict(list)
    for p, examples in sorted(partitions.items()):
        for e in examples:
            groups[e.digest].append((p, e))
    return [Duplicate(d, tuple(sorted(m, key=lambda pe: pe[1].key))) for d, m in sorted(groups.items()) if len(m) > 1]


def report(groups: list[Duplicate], class_names: list[str]) -> dict:
    """A summary for the log and the run's data summary."""
    def show(g: Duplicate) -> str:
        return " = ".join(f"{e.key} ({p}, {class_names[e.label] if e.label >= 0 else '-'})" for p, e in g.members)

    conflicting = [g for g in groups if g.conflicting]
    across = [g for g in groups if g.across_splits and not g.conflicting]
    out = {"groups": len(groups), "extra_copies": sum(len(g.members) - 1 for g in groups),
           "conflicting_labels": len(conflicting), "across_splits": len(across),
           "examples": [show(g) for g in list(dict.fromkeys(conflicting + across + groups))[:20]]}
    if groups:
        log.warning("Found %d group(s) of byte-identical images (%d extra copies): %d with conflicting labels, %d "
                    "across given splits (test images also in training). --dedupe removes them before splitting. "
                    "For example:\n%s", out["groups"], out["extra_copies"], out["conflicting_labels"],
                    out["across_splits"], "\n".join(f"  {x}" for x in out["examples"][:5]))
    return out


def dedupe(partitions: dict[str, list[Example]], groups: list[Duplicate]) -> dict[str, list[Example]]:
    """Keep one copy of each group (in the first split of KEEP_ORDER); drop every copy of a group whose
    labels conflict."""
    drop = set()
    for g in groups:
        ordered = sorted(g.members, key=lambda pe: (KEEP_ORDER.index(pe[0]) if pe[0] in KEEP_ORDER else 9, pe[1].key))
        drop.update((p, e.key) for p, e in (ordered if g.conflicting else ordered[1:]))
    kept = {p: [e for e in examples if (p, e.key) not in drop] for p, examples in partitions.items()}
    log.info("--dedupe: removed %d duplicate image(s) before splitting", len(drop))
    return kept
