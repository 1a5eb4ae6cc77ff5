"""Tasks: what each head on the shared backbone learns (TF-free).

A run has one task (an image folder, a path,label manifest: the head is ``head`` and the outputs are
``scores``/``classes``) or several named tasks, one per label column of a CSV manifest (heads
``head_<task>``, outputs ``<task>_scores``/``<task>_classes``). A task is single-label (softmax over
its classes) or multi-label (a sigmoid per label; its cells hold labels separated by ``|``).

An example's targets are one tuple of class indices per task: one index for a single-label task,
any number for a multi-label one, and ``None`` when the cell was empty (no label for that task: the
example adds nothing to its loss or metrics).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tf_transfer.errors import ConfigError, DataError

MULTI_SEPARATOR = "|"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

Target = tuple[int, ...] | None  # class indices of one task; None: unlabelled for that task


@dataclass(frozen=True)
class Task:
    """One head: its name ('' in the one-task case), class names in score order, and its kind."""

    name: str
    class_names: tuple[str, ...]
    multi_label: bool = False

    @property
    def head(self) -> str:
        """The head layer's name (and the task's output name in Keras)."""
        return f"head_{self.name}" if self.name else "head"

    @property
    def prefix(self) -> str:
        """What the export's output names start with: '' for the one-task case, else '<task>_'."""
        return f"{self.name}_" if self.name else ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict:
        return {"name": self.name, "class_names": list(self.class_names), "multi_label": self.multi_label}

    @classmethod
    def from_dict(cls, d: dict) -> Task:
        return cls(d["name"], tuple(d["class_names"]), bool(d.get("multi_label", False)))


def check_name(name: str, where: str) -> str:
    """A task name becomes a layer and output name: letters, digits and '_', starting with a letter."""
    if not _NAME.match(name):
        raise DataError(f"{where}: task name {name!r} cannot name a head and its outputs; expected letters, digits "
                        "and '_', starting with a letter (rename the column)")
    return name


def parse_cell(cell: str, multi_label: bool, where: str) -> tuple[str, ...] | None:
    """A label cell's labels: None when empty, one label, or several separated by '|' (multi-label)."""
    cell = cell.strip()
    if not cell:
        return None
    if not multi_label:
        return (cell,)
    items = [item.strip() for item in cell.split(MULTI_SEPARATOR)]
    if not all(items):
        raise DataError(f"{where}: label cell {cell!r} has an empty item; expected labels separated by "
                        f"'{MULTI_SEPARATOR}' such as 'red{MULTI_SEPARATOR}round'")
    return tuple(dict.fromkeys(items))


def format_target(task: Task, target: Target) -> str:
    """A target as a manifest cell (the inverse of parse_cell)."""
    return "" if target is None else MULTI_SEPARATOR.join(task.class_names[i] for i in target)


def parse_target(task: Task, cell: str, where: str) -> Target:
    """A manifest cell back into class indices (names this task does not know are refused)."""
    labels = parse_cell(cell, task.multi_label, where)
    if labels is None:
        return None
    index = {name: i for i, name in enumerate(task.class_names)}
    unknown = [label for label in labels if label not in index]
    if unknown:
        raise DataError(f"{where}: labels {', '.join(unknown)} are not classes of task {task.name!r}")
    return tuple(index[label] for label in labels)


def per_task(spec: str, tasks: list[Task], flag: str, kind=float, default=None) -> dict[str, object]:
    """A 'task=value,task=value' flag as {task: value} for every task (`default` where not given)."""
    names = [t.name for t in tasks]
    out = dict.fromkeys(names, default)
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in out:
            expected = f"task=value pairs for the tasks {', '.join(names)}" if any(names) else \
                "task=value pairs, and a data source with named tasks (a CSV manifest with label columns)"
            raise ConfigError(f"{flag}: expected {expected}; got {item!r}")
        try:
            out[name] = _value(value.strip(), kind)
        except ValueError:
            raise ConfigError(f"{flag}: the value for {name!r} must be {kind.__name__}; got {value!r}") from None
    return out


def _value(text: str, kind):
    if kind is bool:
        lowered = text.lower()
        if lowered not in ("on", "off", "true", "false", "1", "0", "yes", "no"):
            raise ValueError(text)
        return lowered in ("on", "true", "1", "yes")
    return kind(text)
