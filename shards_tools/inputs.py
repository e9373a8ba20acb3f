"""Read what a user hands to `ppma-pack`: a PPMA split file, a CSV, or one folder per class.

- split file: one `relative/path;label_id` per line (PPMA benchmark format), paths relative to
  `root` (default: the split file's folder); a path may be a video file or a folder of JPEG frames;
- CSV with a header: `path,label` (integer ids) or `path,label_name` (names);
- a folder holding one sub-folder per class (class names = folder names, sorted).

Class names come from a names file (one per line; line number = label id), else from
`classes.txt` beside a split file, else from the CSV's names or the folders. Missing files are not
an error here: pack rejects them one by one with a reason, as with any other bad input.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

FORMATS = ("auto", "split", "csv", "folders")


@dataclass(frozen=True)
class SourceItem:
    """One input clip: `index` is its position in the input listing (a stable identity)."""

    index: int
    path: Path
    source: str  # as written in the input (relative path), recorded in the sample's json
    label: int


def read_class_names(path: str | Path) -> list[str]:
    """One class name per line; blank lines are not allowed (they would shift the label ids)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class-names file {path} does not exist")
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    for number, name in enumerate(names, 1):
        if not name:
            raise ValueError(f"{path}:{number}: empty class name (one name per line; line number - 1 = label id)")
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"{path}: class name {duplicate!r} appears twice")
    if not names:
        raise ValueError(f"class-names file {path} is empty")
    return names


def _check_label(label: int, names: list[str] | None, where: str) -> None:
    if label < 0:
        raise ValueError(f"{where}: label {label} is negative")
    if names is not None and label >= len(names):
        raise ValueError(f"{where}: label {label} is out of range for {len(names)} class names")


def _read_split(path: Path, root: Path, names: list[str] | None) -> tuple[list[SourceItem], list[str]]:
    if names is None and (path.parent / "classes.txt").is_file():
        names = read_class_names(path.parent / "classes.txt")
    items = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        rel, sep, label_text = line.strip().rpartition(";")
        if not sep or not rel:
            raise ValueError(f"{path}:{number}: expected `relative/path;label_id`, got {line.strip()!r}")
        try:
            label = int(label_text)
        except ValueError:
            raise ValueError(f"{path}:{number}: label {label_text!r} is not an integer id") from None
        _check_label(label, names, f"{path}:{number}")
        items.append(SourceItem(len(items), root / rel, rel, label))
    if names is None:
        names = [str(i) for i in range(max((it.label for it in items), default=-1) + 1)]
    return items, names


def _read_csv(path: Path, root: Path, names: list[str] | None) -> tuple[list[SourceItem], list[str]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        fields = [f.strip() for f in reader.fieldnames or []]
        if "path" not in fields or not ({"label", "label_name"} & set(fields)):
            raise ValueError(f"{path}: CSV header must hold `path` and `label` (id) or `label_name`, got {fields}")
        rows = [({k.strip(): (v or "").strip() for k, v in row.items() if k}, number)
                for number, row in enumerate(reader, 2)]
    by_name = "label" not in fields
    if by_name and names is None:
        names = sorted({row["label_name"] for row, _ in rows if row["label_name"]})
    items = []
    for row, number in rows:
        where = f"{path}:{number}"
        if not row["path"]:
            raise ValueError(f"{where}: empty path")
        if by_name:
            if row["label_name"] not in names:
                raise ValueError(f"{where}: class {row['label_name']!r} is not in the class names ({len(names)} known)")
            label = names.index(row["label_name"])
        else:
            try:
                label = int(row["label"])
            except ValueError:
                raise ValueError(f"{where}: label {row['label']!r} is not an integer id") from None
            _check_label(label, names, where)
        items.append(SourceItem(len(items), root / row["path"], row["path"], label))
    if names is None:
        names = [str(i) for i in range(max((it.label for it in items), default=-1) + 1)]
    return items, names


def _read_folders(root: Path, names: list[str] | None) -> tuple[list[SourceItem], list[str]]:
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{root}: expected one sub-folder per class, found none")
    if names is None:
        names = folders
    unknown = [f for f in folders if f not in names]
    if unknown:
        raise ValueError(f"{root}: class folders {unknown} are not in the class names file")
    items = []
    for name in folders:
        for clip in sorted((root / name).iterdir()):
            if clip.name.startswith("."):
                continue  # every other entry is a clip: a stray file is rejected with its reason, not hidden
            rel = f"{name}/{clip.name}"
            items.append(SourceItem(len(items), clip, rel, names.index(name)))
    return items, names


def read_inputs(source: str | Path, root: str | Path | None = None, classes: str | Path | None = None,
                input_format: str = "auto") -> tuple[list[SourceItem], list[str]]:
    """Parse the input listing into items (in listing order) and the class names (label id -> name)."""
    source = Path(source)
    if input_format not in FORMATS:
        raise ValueError(f"input format {input_format!r} is unknown; expected one of {FORMATS}")
    if not source.exists():
        raise FileNotFoundError(f"input {source} does not exist (expected a split file, a CSV or a folder of class folders)")
    if input_format == "auto":
        input_format = "folders" if source.is_dir() else "csv" if source.suffix.lower() == ".csv" else "split"
    names = read_class_names(classes) if classes is not None else None
    if input_format == "folders":
        if not source.is_dir():
            raise ValueError(f"input {source}: format 'folders' needs a directory of class folders")
        items, names = _read_folders(source, names)
    else:
        if not source.is_file():
            raise ValueError(f"input {source}: format {input_format!r} needs a file")
        base = Path(root) if root is not None else source.parent
        if not base.is_dir():
            raise FileNotFoundError(f"--root {base} is not a directory")
        reader = _read_csv if input_format == "csv" else _read_split
        items, names = reader(source, base, names)
    if not items:
        raise ValueError(f"input {source} lists no clips")
    return items, names
