"""Images sorted into one folder per class (torchvision's ImageFolder): the built-in ``imagefolder`` source.

``data_dir/<class>/.../<image>``: the classes are the sorted names of data_dir's subfolders (hidden
ones aside), a class's index is its position, and ``data_filter`` selects the images (e.g.
``'*/*.png'``). A sample's id is its path below data_dir without the extension (``cat/001``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from assay.errors import SpecError
from assay.shards import Sample
from assay.sources.images import read_image


class ImageFolderSource:
    """Yields one Sample per selected image: the image under its format's extension, ``{"label": index}``."""

    def __init__(self, data_dir: Path, data_files: list[Path], label_files: list[Path]):
        self.data_dir = Path(data_dir)
        classes = sorted(p.name for p in self.data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise SpecError(f"{self.data_dir} has no class folders",
                            "process imagefolder reads data_dir/<class>/<image>; set data_dir to their parent")
        self.label_schema = {"task": "classification", "classes": classes}
        index = {name: i for i, name in enumerate(classes)}
        self.items: list[tuple[str, Path, int]] = []
        ids: dict[str, Path] = {}
        for file in (f for f in data_files if f.is_file()):  # a '**/*' filter also matches folders
            rel = file.relative_to(self.data_dir)
            if len(rel.parts) < 2 or rel.parts[0] not in index:
                raise SpecError(f"{file} is not inside a class folder of {self.data_dir}",
                                "put every image in data_dir/<class>/, or narrow data_filter (e.g. '*/*.png')")
            sample_id = rel.with_suffix("").as_posix()
            if sample_id in ids:
                raise SpecError(f"{file} and {ids[sample_id]} would both be sample {sample_id!r}",
                                "give the images of a class distinct names (not only distinct extensions)")
            ids[sample_id] = file
            self.items.append((sample_id, file, index[rel.parts[0]]))
        used = {i for _, _, i in self.items}
        empty = [name for name in classes if index[name] not in used]
        if empty:
            raise SpecError(f"class folder {self.data_dir / empty[0]} holds no image that data_filter selects"
                            + (f" (nor do {len(empty) - 1} more)" if len(empty) > 1 else ""),
                            "a class needs images: add some, or remove the folder")

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Sample]:
        for sample_id, file, label in self.items:
            data, ext, _, _ = read_image(file)
            yield Sample(id=sample_id, files={ext: data}, label={"label": label})
