"""Read what a user hands to `ppma-pack`: a PPMA split file, a CSV, or one folder per class.

- split file: one `relative/path;label_id` per line (PPMA benchmark format), paths relative to
  `root` (default: the split file's folder); a path may be a video file or a folder of JPEG frames;
- CSV with a header: `path,label` (integer ids), `path,label_name` (names) or both (then they
  must agree: id -> name is one mapping);
- a folder holding one sub-folder per class (class names = folder names, sorted); files beside the
  class folders have no class and are listed as rejected. The pack's own output folder is never
  listed (`exclude`), nor a folder that holds nothing but the way to it: `--output` may lie inside
  the class-folder tree (e.g. `videos/shards`), and its shards, created by the first run, must not
  turn into a class (or a clip) on the next one: that would change the job, so a rerun could not
  resume, and an `--overwrite` would add a class and shift every later label id.

A path listed twice in a split file or CSV (same file after normalising `./`, `..` and `//`) is
packed once, from its first listing; each later listing becomes an input rejected with a reason
naming the line of the first one (and both labels when they disagree).

Text files are read as UTF-8, with or without the byte-order mark Excel and Notepad write.

Class names come from a names file (one per line; line number = label id), else from
`classes.txt` beside a split file, else from the CSV's names or the folders. Missing files are not
an error here: pack rejects them one by one with a reason, as with any other bad input.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from ppma_scale.data.manifest import name_some

FORMATS = ("auto", "split", "csv", "folders")
ENCODING = "utf-8-sig"  # UTF-8; a leading byte-order mark (Excel's "CSV UTF-8") is dropped, not read as text
STRAY_REASON = ("not in a class folder: a file beside the class folders has no label "
                "(move it into the folder of its class)")
NON_UTF8_REASON = "the file name is not valid UTF-8 (shown with \\xNN escapes): rename it to pack it"


@dataclass(frozen=True)
class SourceItem:
    """One input clip: `index` is its position in the input listing (a stable identity)."""

    index: int
    path: Path
    source: str  # as written in the input (relative path), recorded in the sample's json
    label: int
    reason: str | None = None  # set when the listing itself rules the input out (pack rejects it with this)


def read_class_names(path: str | Path) -> list[str]:
    """One class name per line; blank lines are not allowed (they would shift the label ids)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class-names file {path} does not exist")
    lines = path.read_text(encoding=ENCODING).splitlines()
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


def _label_text(label: int, names: list[str] | None) -> str:
    return f"{label} ({names[label]!r})" if names is not None and 0 <= label < len(names) else str(label)


class _Duplicates:
    """Spots a path listed again: the first listing is kept, later ones get a rejection reason."""

    def __init__(self, listing: Path):
        self.listing = listing
        self.first: dict[str, tuple[int, int]] = {}  # normalised path -> (line number, label)

    def reason(self, file: Path, number: int, label: int, names: list[str] | None) -> str | None:
        first_number, first_label = self.first.setdefault(os.path.normpath(file), (number, label))
        if first_number == number:
            return None
        reason = (f"listed more than once: {self.listing}:{first_number} already lists this file (only the first "
                  "listing is used)")
        if first_label != label:
            reason += (f"; the two listings disagree on its label: {_label_text(first_label, names)} on line "
                       f"{first_number}, {_label_text(label, names)} on line {number}")
        return reason


def printable_name(name: str) -> str:
    """`name` as listed, with bytes that are not UTF-8 (surrogate-escaped by the OS layer) shown as
    \\xNN: such a name cannot be written to the manifest or the journal as it is."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")


def _read_split(path: Path, root: Path, names: list[str] | None) -> tuple[list[SourceItem], list[str]]:
    if names is None and (path.parent / "classes.txt").is_file():
        names = read_class_names(path.parent / "classes.txt")
    items = []
    duplicates = _Duplicates(path)
    for number, line in enumerate(path.read_text(encoding=ENCODING).splitlines(), 1):
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
        reason = duplicates.reason(root / rel, number, label, names)
        items.append(SourceItem(len(items), root / rel, rel, label, reason))
    if names is None:
        names = [str(i) for i in range(max((it.label for it in items), default=-1) + 1)]
    return items, names


def _csv_rows(path: Path) -> tuple[list[str], list[tuple[dict[str, str], int]]]:
    """The header fields and the (row, line number) pairs, keys and cells stripped."""
    with open(path, newline="", encoding=ENCODING) as handle:
        reader = csv.DictReader(handle)
        fields = [f.strip() for f in reader.fieldnames or []]
        if "path" not in fields or not ({"label", "label_name"} & set(fields)):
            raise ValueError(f"{path}: CSV header must hold `path` and `label` (id) or `label_name`, got {fields}")
        rows = [({k.strip(): (v or "").strip() for k, v in row.items() if k}, number)
                for number, row in enumerate(reader, 2)]
    return fields, rows


def _label_id(row: dict[str, str], where: str) -> int:
    try:
        return int(row["label"])
    except ValueError:
        raise ValueError(f"{where}: label {row['label']!r} is not an integer id") from None


def _names_from_ids(path: Path, rows: list[tuple[dict[str, str], int]]) -> list[str]:
    """Class names from a CSV holding both `label` and `label_name`: each id must have one name and each
    name one id, or the labels would silently contradict the names."""
    by_id: dict[int, tuple[str, int]] = {}
    by_name: dict[str, tuple[int, int]] = {}
    for row, number in rows:
        where, name = f"{path}:{number}", row["label_name"]
        label = _label_id(row, where)
        _check_label(label, None, where)
        if not name:
            raise ValueError(f"{where}: empty label_name (the CSV has both `label` and `label_name`)")
        if label in by_id and by_id[label][0] != name:
            raise ValueError(f"{where}: label {label} is named {name!r} here but {by_id[label][0]!r} on line "
                             f"{by_id[label][1]}; `label` and `label_name` must agree")
        if name in by_name and by_name[name][0] != label:
            raise ValueError(f"{where}: class {name!r} has label {label} here but {by_name[name][0]} on line "
                             f"{by_name[name][1]}; `label` and `label_name` must agree")
        by_id.setdefault(label, (name, number))
        by_name.setdefault(name, (label, number))
    unnamed = [i for i in range(max(by_id, default=-1) + 1) if i not in by_id]
    if unnamed:
        raise ValueError(f"{path}: label id(s) {unnamed[:10]} appear in no row, so their class names are unknown; "
                         "pass a class-names file (--classes)")
    return [by_id[i][0] for i in range(len(by_id))]


def _csv_label(row: dict[str, str], fields: list[str], names: list[str], where: str) -> int:
    """The row's label id, from `label`, `label_name` or both (which must then agree with `names`)."""
    if "label" not in fields:
        if row["label_name"] not in names:
            raise ValueError(f"{where}: class {row['label_name']!r} is not in the class names ({len(names)} known)")
        return names.index(row["label_name"])
    label = _label_id(row, where)
    _check_label(label, names, where)
    if "label_name" in fields and names[label] != row["label_name"]:
        raise ValueError(f"{where}: label {label} is class {names[label]!r} in the class names, but label_name "
                         f"says {row['label_name']!r}; `label` and `label_name` must agree")
    return label


def _read_csv(path: Path, root: Path, names: list[str] | None) -> tuple[list[SourceItem], list[str]]:
    fields, rows = _csv_rows(path)
    if names is None and "label_name" in fields:
        names = _names_from_ids(path, rows) if "label" in fields else \
            sorted({row["label_name"] for row, _ in rows if row["label_name"]})
    if names is None:
        names = [str(i) for i in range(max((_label_id(r, f"{path}:{n}") for r, n in rows), default=-1) + 1)]
    items = []
    duplicates = _Duplicates(path)
    for row, number in rows:
        where = f"{path}:{number}"
        if not row["path"]:
            raise ValueError(f"{where}: empty path")
        label = _csv_label(row, fields, names, where)
        reason = duplicates.reason(root / row["path"], number, label, names)
        items.append(SourceItem(len(items), root / row["path"], row["path"], label, reason))
    return items, names


def _leads_only_to(entry: Path, target: Path) -> bool:
    """`entry` is the folder `target` (both resolved), or a folder holding nothing (hidden names aside)
    but the way down to it, e.g. `videos/out` for `--output videos/out/shards`, which pack itself
    created on an earlier run."""
    if entry == target:
        return True
    try:
        parts = target.relative_to(entry).parts
    except ValueError:
        return False
    for part in parts:
        if not entry.is_dir() or {p.name for p in entry.iterdir() if not p.name.startswith(".")} != {part}:
            return False
        entry = entry / part
    return True


def _is_excluded(entry: Path, exclude: Path | None) -> bool:
    if exclude is None:
        return False
    resolved = entry.resolve()
    return (resolved == exclude or exclude in resolved.parents) or _leads_only_to(resolved, exclude)


def _read_folders(root: Path, names: list[str] | None,
                  exclude: Path | None = None) -> tuple[list[SourceItem], list[str]]:
    exclude = exclude.resolve() if exclude is not None else None
    inside = exclude is not None and root.resolve() in exclude.parents  # else no entry can be it
    entries = [p for p in root.iterdir() if not p.name.startswith(".") and not (inside and _is_excluded(p, exclude))]
    folders = sorted(p.name for p in entries if p.is_dir())
    misnamed = [printable_name(f) for f in folders if printable_name(f) != f]
    if misnamed:
        raise ValueError(f"{root}: class folder names must be valid UTF-8 (they become class names); "
                         f"rename {name_some(misnamed)}")
    if not folders:
        raise ValueError(f"{root}: expected one sub-folder per class, found none")
    if names is None:
        names = folders
    unknown = [f for f in folders if f not in names]
    if unknown:
        raise ValueError(f"{root}: class folders {unknown} are not in the class names file")
    items = []
    for name in folders:
        holds_output = inside and (root / name).resolve() in exclude.parents
        for clip in sorted((root / name).iterdir()):
            if clip.name.startswith("."):
                continue  # every other entry is a clip: a stray file is rejected with its reason, not hidden
            if holds_output and _is_excluded(clip, exclude):
                continue  # the pack's output (or the folders holding only it) inside a class folder
            shown = printable_name(clip.name)
            reason = None if shown == clip.name else NON_UTF8_REASON
            items.append(SourceItem(len(items), clip, f"{name}/{shown}", names.index(name), reason))
    for stray in sorted(p for p in entries if not p.is_dir()):
        # listed, never dropped silently
        items.append(SourceItem(len(items), stray, printable_name(stray.name), -1, STRAY_REASON))
    return items, names


def ids_without_clips(items: list[SourceItem], names: list[str]) -> list[int]:
    """Label ids that name no listed clip, when the class names are only the ids themselves (no
    names file): a 1-based listing or a subset of classes then silently widens the model's output."""
    if names != [str(i) for i in range(len(names))]:
        return []
    used = {item.label for item in items if item.reason is None}  # not a duplicate listing's label
    return [i for i in range(len(names)) if i not in used]


def listing_root(source: str | Path, root: str | Path | None = None) -> Path:
    """The folder the listed paths are relative to: a folder of class folders itself, else `root`
    (default: the listing file's folder). Part of a pack's identity: the same listing under another
    root is other inputs."""
    source = Path(source)
    if source.is_dir():
        return source
    return Path(root) if root is not None else source.parent


def read_inputs(source: str | Path, root: str | Path | None = None, classes: str | Path | None = None,
                input_format: str = "auto", exclude: str | Path | None = None) -> tuple[list[SourceItem], list[str]]:
    """Parse the input listing into items (in listing order) and the class names (label id -> name).

    `exclude` (the pack's output folder) is never listed from a folder of class folders (see the module
    docstring); a split file or CSV lists its paths explicitly and is not affected."""
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
        items, names = _read_folders(source, names, Path(exclude) if exclude is not None else None)
    else:
        if not source.is_file():
            raise ValueError(f"input {source}: format {input_format!r} needs a file")
        base = listing_root(source, root)
        if not base.is_dir():
            raise FileNotFoundError(f"--root {base} is not a directory")
        reader = _read_csv if input_format == "csv" else _read_split
        items, names = reader(source, base, names)
    if not items:
        raise ValueError(f"input {source} lists no clips")
    return items, names
