"""inputs: split files, CSVs, class folders and class-name files, with errors that name the line."""
from __future__ import annotations

import pytest

from shards_tools.inputs import STRAY_REASON, ids_without_clips, read_class_names, read_inputs


def test_split_file_with_classes_txt_beside_it(tmp_path):
    (tmp_path / "classes.txt").write_text("run\nsit\n")
    (tmp_path / "train.txt").write_text("# comment\nvids/a.mp4;1\n\nvids/b c.avi;0\n")
    items, names = read_inputs(tmp_path / "train.txt")
    assert names == ["run", "sit"]
    assert [(i.index, i.source, i.label) for i in items] == [(0, "vids/a.mp4", 1), (1, "vids/b c.avi", 0)]
    assert items[0].path == tmp_path / "vids/a.mp4"


def test_split_file_root_and_numeric_names_without_a_names_file(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "list.txt").write_text("x/frames_dir;2\n")
    items, names = read_inputs(tmp_path / "list.txt", root=tmp_path / "data")
    assert names == ["0", "1", "2"] and items[0].path == tmp_path / "data/x/frames_dir"
    assert ids_without_clips(items, names) == [0, 1]


def test_ids_without_clips_are_found_only_when_the_names_are_the_ids(tmp_path):
    (tmp_path / "list.txt").write_text("a.mp4;1\nb.mp4;2\nc.mp4;5\n")
    items, names = read_inputs(tmp_path / "list.txt")
    assert ids_without_clips(items, names) == [0, 3, 4]
    (tmp_path / "names.txt").write_text("a\nb\nc\nd\ne\nf\n")  # named classes: a subset is deliberate
    items, names = read_inputs(tmp_path / "list.txt", classes=tmp_path / "names.txt")
    assert ids_without_clips(items, names) == []


@pytest.mark.parametrize("line, message", [
    ("no_label_here.mp4", r"list.txt:1: expected `relative/path;label_id`"),
    ("a.mp4;three", r"list.txt:1: label 'three' is not an integer"),
    ("a.mp4;5", r"list.txt:1: label 5 is out of range for 2 class names"),
    ("a.mp4;-1", r"list.txt:1: label -1 is negative"),
])
def test_split_file_errors_name_file_and_line(tmp_path, line, message):
    (tmp_path / "names.txt").write_text("a\nb\n")
    (tmp_path / "list.txt").write_text(line + "\n")
    with pytest.raises(ValueError, match=message):
        read_inputs(tmp_path / "list.txt", classes=tmp_path / "names.txt")


def test_csv_with_label_ids_and_with_label_names(tmp_path):
    (tmp_path / "ids.csv").write_text("path,label,extra\na.mp4,1,x\nb.mp4,0,y\n")
    items, names = read_inputs(tmp_path / "ids.csv")
    assert [(i.source, i.label) for i in items] == [("a.mp4", 1), ("b.mp4", 0)] and names == ["0", "1"]
    (tmp_path / "names.csv").write_text("path,label_name\na.mp4,zebra\nb.mp4,apple\nc.mp4,zebra\n")
    items, names = read_inputs(tmp_path / "names.csv")
    assert names == ["apple", "zebra"] and [i.label for i in items] == [1, 0, 1]
    (tmp_path / "order.txt").write_text("zebra\napple\n")
    items, names = read_inputs(tmp_path / "names.csv", classes=tmp_path / "order.txt")
    assert names == ["zebra", "apple"] and [i.label for i in items] == [0, 1, 0]


def test_csv_errors(tmp_path):
    (tmp_path / "bad.csv").write_text("file,class\na.mp4,1\n")
    with pytest.raises(ValueError, match="CSV header must hold `path`"):
        read_inputs(tmp_path / "bad.csv")
    (tmp_path / "unknown.csv").write_text("path,label_name\na.mp4,cat\n")
    (tmp_path / "names.txt").write_text("dog\n")
    with pytest.raises(ValueError, match=r"unknown.csv:2: class 'cat' is not in the class names"):
        read_inputs(tmp_path / "unknown.csv", classes=tmp_path / "names.txt")


def test_class_folders(tmp_path):
    for rel in ("jump/b.mp4", "jump/a.avi", "wave/c.webm", "wave/.hidden.mp4"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "wave/frames_01").mkdir()
    items, names = read_inputs(tmp_path)
    assert names == ["jump", "wave"]
    assert [(i.source, i.label) for i in items] == [("jump/a.avi", 0), ("jump/b.mp4", 0), ("wave/c.webm", 1),
                                                     ("wave/frames_01", 1)]
    (tmp_path / "names.txt").write_text("wave\n")
    with pytest.raises(ValueError, match=r"class folders \['jump'\] are not in the class names"):
        read_inputs(tmp_path, classes=tmp_path / "names.txt")


def test_csv_with_both_label_and_label_name_uses_the_names_and_needs_them_to_agree(tmp_path):
    (tmp_path / "both.csv").write_text("path,label,label_name\nv1.mp4,1,run\nv2.mp4,0,jump\nv3.mp4,1,run\n")
    items, names = read_inputs(tmp_path / "both.csv")
    assert names == ["jump", "run"] and [i.label for i in items] == [1, 0, 1]
    (tmp_path / "names.txt").write_text("jump\nrun\n")
    assert read_inputs(tmp_path / "both.csv", classes=tmp_path / "names.txt")[1] == ["jump", "run"]
    (tmp_path / "clash.csv").write_text("path,label,label_name\nv1.mp4,0,run\nv2.mp4,1,jump\nv3.mp4,0,jump\n")
    with pytest.raises(ValueError, match=r"clash.csv:4: label 0 is named 'jump' here but 'run' on line 2"):
        read_inputs(tmp_path / "clash.csv")
    (tmp_path / "twice.csv").write_text("path,label,label_name\nv1.mp4,0,run\nv2.mp4,1,run\n")
    with pytest.raises(ValueError, match=r"twice.csv:3: class 'run' has label 1 here but 0 on line 2"):
        read_inputs(tmp_path / "twice.csv")
    (tmp_path / "swapped.txt").write_text("run\njump\n")
    with pytest.raises(ValueError, match=r"both.csv:2: label 1 is class 'jump' in the class names, but label_name "
                                         r"says 'run'"):
        read_inputs(tmp_path / "both.csv", classes=tmp_path / "swapped.txt")
    (tmp_path / "gap.csv").write_text("path,label,label_name\nv1.mp4,0,run\nv2.mp4,2,jump\n")
    with pytest.raises(ValueError, match=r"gap.csv: label id\(s\) \[1\] appear in no row.*--classes"):
        read_inputs(tmp_path / "gap.csv")


def test_csv_and_names_saved_with_a_byte_order_mark(tmp_path):
    (tmp_path / "bom.csv").write_bytes("\ufeffpath,label_name\nv1.mp4,run\nv2.mp4,jump\n".encode())
    items, names = read_inputs(tmp_path / "bom.csv")
    assert names == ["jump", "run"] and [i.source for i in items] == ["v1.mp4", "v2.mp4"]
    (tmp_path / "names.txt").write_bytes("\ufeffrun\njump\n".encode())
    assert read_class_names(tmp_path / "names.txt") == ["run", "jump"]


def test_files_beside_the_class_folders_are_listed_with_a_reason(tmp_path):
    for rel in ("jump/a.mp4", "wave/b.mp4", "loose.mp4", ".DS_Store"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    items, names = read_inputs(tmp_path)
    assert names == ["jump", "wave"]
    assert [(i.source, i.label, i.reason) for i in items] == [("jump/a.mp4", 0, None), ("wave/b.mp4", 1, None),
                                                               ("loose.mp4", -1, STRAY_REASON)]


@pytest.mark.parametrize("text, message", [("a\n\nb\n", "names.txt:2: empty class name"),
                                           ("a\nb\na\n", "'a' appears twice"), ("", "is empty")])
def test_class_names_file_errors(tmp_path, text, message):
    (tmp_path / "names.txt").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_class_names(tmp_path / "names.txt")


def test_missing_inputs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.txt does not exist"):
        read_inputs(tmp_path / "nowhere.txt")
    with pytest.raises(FileNotFoundError, match="class-names file"):
        read_class_names(tmp_path / "none.txt")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="lists no clips"):
        read_inputs(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="input format 'json' is unknown"):
        read_inputs(tmp_path / "empty.txt", input_format="json")
