"""The model package format: build from model.yaml, verify, unpack, and load the handler.

    <store>/models/<name>/<version>/package.tar     model.yaml, the handler code, the weight files
    <store>/models/<name>/<version>/manifest.json   name, version, handler, evaluator, every file's sha256
    <store>/models/<name>/LATEST

model.yaml keeps Starwhale's fields (name, model: [weight files], run.handler — ``run.ppl`` is accepted
as its old name — desc, tag) and adds ``run.evaluator`` (coco, classification, or handler) and ``code``
(globs of code files, default every ``*.py`` beside model.yaml). The version is the package's digest.
Weights are never unpickled: handlers load them with ``torch.load(weights_only=True)`` or safetensors.
A ``torchvision:`` section replaces run.handler with a built-in handler (``assay.builtin``): its resolved
config is a package member (``assay-builtin.json``), so the version covers it, and the manifest's
``builtin`` repeats it for checks at run start.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import sys
import tarfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from assay import archive, storage
from assay.config_files import read_mapping
from assay.errors import IntegrityError, SpecError
from assay.layout import LATEST, MANIFEST
from assay.versions import load_versions, resolve_version

FORMAT = "assay.model/v1"
PACKAGE = "package.tar"
EVALUATORS = ("coco", "classification", "handler")


@dataclass(frozen=True)
class ModelConfig:
    name: str
    weights: list[str]
    code: list[str]
    handler: str
    evaluator: str | None
    desc: str = ""
    tag: list[str] = field(default_factory=list)
    base_dir: Path = Path(".")
    builtin: dict[str, Any] | None = None  # the parsed torchvision: section (assay.builtin.spec.parse)


@dataclass(frozen=True)
class ModelManifest:
    name: str
    version: str
    handler: str
    evaluator: str | None
    files: list[dict[str, Any]]
    package_bytes: int
    package_sha256: str
    desc: str = ""
    tag: list[str] = field(default_factory=list)
    builtin: dict[str, Any] | None = None  # the resolved torchvision: config of a built-in handler
    uri: str = ""

    def to_json(self) -> str:
        doc = {"format": FORMAT, **asdict(self)}
        doc.pop("uri")
        if doc["builtin"] is None:  # manifests of hand-written handlers stay as they were
            doc.pop("builtin")
        return json.dumps(doc, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, uri: str) -> ModelManifest:
        try:
            doc = json.loads(text)
            if doc.pop("format", None) != FORMAT:
                raise ValueError(f"format is not {FORMAT!r}")
            return cls(**doc, uri=uri)
        except (ValueError, TypeError, AttributeError) as exc:
            raise IntegrityError(f"{uri}: not a valid model manifest ({exc})",
                                 "rebuild the package with `assay model build`") from exc


def load_config(path: str | Path) -> ModelConfig:
    path = Path(path)
    doc = read_mapping(path, "model.yaml", "name, model, run.handler",
                       {"name", "model", "code", "run", "desc", "tag", "config", "version", "torchvision"})
    name = str(doc.get("name") or "")
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum() or name != name.lower():
        raise SpecError(f"{path}: name {name!r} is missing or not valid",
                        "use lowercase letters, digits, '.', '_' and '-'")
    run = doc.get("run") or {}
    if not isinstance(run, dict):
        raise SpecError(f"{path}: run must be a mapping with a handler: module:Class")
    handler = run.get("handler") or run.get("ppl")
    evaluator = run.get("evaluator")
    if evaluator is not None and evaluator not in EVALUATORS:
        raise SpecError(f"{path}: run.evaluator {evaluator!r} is unknown", f"use one of {', '.join(EVALUATORS)}")
    builtin = None
    if "torchvision" in doc:
        from assay.builtin import spec as builtin_spec

        if handler:
            raise SpecError(f"{path}: both run.handler and torchvision are given",
                            "torchvision: uses a built-in handler; remove run.handler, or the torchvision section")
        builtin = builtin_spec.parse(doc["torchvision"], path, evaluator)
        handler = builtin_spec.HANDLERS[builtin["task"]]
        evaluator = evaluator or builtin_spec.EVALUATORS[builtin["task"]]
    if not handler or ":" not in str(handler):
        raise SpecError(f"{path}: run.handler is missing or not 'module:Class'",
                        "e.g. run: {handler: handler:MaskRCNNHandler, evaluator: coco}, or a torchvision: "
                        "section for a built-in handler (docs/formats.md)")
    weights = doc.get("model") or []
    if isinstance(weights, str):
        weights = [weights]
    code = doc.get("code") or ([] if builtin else ["*.py"])  # a built-in package needs no code
    return ModelConfig(name=name, weights=[str(w) for w in weights], code=[str(c) for c in code],
                       handler=str(handler), evaluator=evaluator, desc=str(doc.get("desc") or ""),
                       tag=[str(t) for t in doc.get("tag") or []], base_dir=path.parent.resolve(), builtin=builtin)


def _package_files(config: ModelConfig) -> list[str]:
    base = config.base_dir
    names = {"model.yaml"} if (base / "model.yaml").is_file() else set()
    for pattern in config.code:
        for p in glob.glob(pattern, root_dir=base, recursive=True):
            if "__pycache__" not in p and not any(part.startswith(".") for part in Path(p).parts):
                if (base / p).is_file():
                    names.add(Path(p).as_posix())
    for w in config.weights:
        if not (base / w).is_file():
            raise SpecError(f"weight file {w!r} listed in model.yaml does not exist under {base}",
                            "train or download the weights first, or fix the path")
        names.add(Path(w).as_posix())
    for n in names:
        archive.check_member_name(n, "model.yaml")
    return sorted(names)


def _builtin_files(config: ModelConfig, names: list[str],
                   log: Callable[[str], None]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """A built-in's resolved config and the members it adds (its config file, fetched weights)."""
    if config.builtin is None:
        return None, {}
    from assay.builtin import CONFIG_FILE
    from assay.builtin import spec as builtin_spec

    if CONFIG_FILE in names:
        raise SpecError(f"{config.base_dir}: {CONFIG_FILE} is reserved for the built-in handler's config",
                        "rename that file, or leave it out of model: and code:")
    resolved, extra = builtin_spec.resolve(config.builtin, config.base_dir, log)
    return resolved, {**extra, CONFIG_FILE: builtin_spec.config_bytes(resolved)}


def build(config: ModelConfig, store: str, log: Callable[[str], None] = print) -> ModelManifest:
    """Pack code and weights into a deterministic tar and upload it with its manifest."""
    files = _package_files(config)
    builtin, extra = _builtin_files(config, files, log)
    sources: dict[str, Any] = {**{name: config.base_dir / name for name in files}, **extra}
    check_handler_packaged(config, files)
    storage.clean_leftovers(store, "models", config.name)
    with storage.scratch_dir("model", store) as tmp:
        tar_path = Path(tmp) / PACKAGE
        entries = []
        with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(sources):
                source = sources[name]
                data = source if isinstance(source, bytes) else source.read_bytes()
                archive.add_bytes(tar, name, data)
                entries.append({"path": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        digest = archive.sha256_file(tar_path)
        version = digest[:16]
        uri = storage.join(store, "models", config.name, version)
        manifest = ModelManifest(name=config.name, version=version, handler=config.handler,
                                 evaluator=config.evaluator, files=entries, package_bytes=tar_path.stat().st_size,
                                 package_sha256=digest, desc=config.desc, tag=config.tag, builtin=builtin, uri=uri)
        if not storage.exists(storage.join(uri, MANIFEST)):
            storage.upload(tar_path, storage.join(uri, PACKAGE))
            storage.write_text(storage.join(uri, MANIFEST), manifest.to_json())  # commit point
        storage.write_text(storage.join(store, "models", config.name, LATEST), version)
    log(f"  {len(sources)} files, {manifest.package_bytes / 1e6:.1f} MB")
    return manifest


def load_manifest(uri: str) -> ModelManifest:
    folder = resolve_version(uri, "model package", "build one with `assay model build model.yaml --store STORE`")
    return ModelManifest.from_json(storage.read_bytes(storage.join(folder, MANIFEST)), folder)


def cache_root() -> Path:
    return Path(os.environ.get("ASSAY_CACHE_DIR") or Path.home() / ".cache" / "assay")


def unpack(manifest: ModelManifest, cache_dir: Path | None = None) -> Path:
    """Download, verify and extract the package once per machine; return its folder."""
    final = Path(cache_dir or cache_root()) / "models" / manifest.name / manifest.version
    if (final / ".verified").is_file():
        if _intact(final, manifest):
            return final
        # edited or damaged since it was unpacked: the package in the store is the truth
        logging.getLogger("assay.packages").warning("%s no longer matches model %s@%s; unpacking it again",
                                                    final, manifest.name, manifest.version)
        shutil.rmtree(final, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    storage.clean_stale(str(final.parent))
    with storage.scratch_dir("unpack", str(final.parent)) as tmp:
        tar_path = Path(tmp) / PACKAGE
        pkg_uri = storage.join(manifest.uri, PACKAGE)
        storage.download(pkg_uri, tar_path)
        if archive.sha256_file(tar_path) != manifest.package_sha256:
            raise IntegrityError(f"{pkg_uri}: digest does not match its manifest",
                                 "the package is corrupt or was replaced; rebuild it with `assay model build`")
        out = Path(tmp) / "pkg"
        names = set(archive.extract_all(tar_path, out, pkg_uri))
        for entry in manifest.files:
            if entry["path"] not in names:
                raise IntegrityError(f"{pkg_uri}: file {entry['path']} listed in the manifest is missing")
            if archive.sha256_file(out / entry["path"]) != entry["sha256"]:
                raise IntegrityError(f"{pkg_uri}: file {entry['path']} does not match its digest")
        (out / ".verified").write_text(manifest.package_sha256)
        try:
            os.replace(out, final)
        except OSError:  # another worker on this machine finished first: theirs is identical
            if not (final / ".verified").is_file():
                shutil.rmtree(final, ignore_errors=True)
                os.replace(out, final)
    return final


def _intact(folder: Path, manifest: ModelManifest) -> bool:
    """Whether an unpacked package still holds exactly the manifest's files with their digests.

    Bytecode caches are removed rather than trusted: Python would run a planted .pyc in place of its source.
    """
    expected = {e["path"]: e["sha256"] for e in manifest.files}
    seen = set()
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.name == "__pycache__" and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            continue
        if "__pycache__" in path.parts or path.is_dir() or rel == ".verified":
            continue
        if rel not in expected or path.is_symlink() or archive.sha256_file(path) != expected[rel]:
            return False
        seen.add(rel)
    return seen == set(expected)


def check_handler_packaged(manifest: ModelManifest | ModelConfig, files: list[str] | None = None) -> None:
    """The handler's module must be in the package (or installed), or every worker fails at its start.

    A built-in needs no module file but its config and weights (checked once built: a ModelConfig's
    built-in members are made by ``build`` itself).
    """
    module_name = manifest.handler.partition(":")[0]
    names = set(files if files is not None else [e["path"] for e in getattr(manifest, "files", [])])
    if manifest.builtin is not None:
        from assay.builtin import CONFIG_FILE
        from assay.builtin.spec import HANDLERS

        if manifest.handler not in HANDLERS.values():
            raise SpecError(f"model {manifest.name}: a built-in package names handler {manifest.handler!r}",
                            "rebuild the package with `assay model build`")
        wanted = {CONFIG_FILE, manifest.builtin["weights"]} if isinstance(manifest, ModelManifest) else set()
        if wanted - names:
            raise SpecError(f"model {manifest.name}: the built-in handler's {', '.join(sorted(wanted - names))} "
                            "is not in the package", "rebuild the package with `assay model build`")
        return
    if module_name == "assay.builtin.handlers":
        raise SpecError(f"model {manifest.name}: run.handler {manifest.handler!r} is a built-in handler, "
                        "which takes its config from a torchvision: section", "see docs/formats.md, built-in handlers")
    stem = module_name.replace(".", "/")
    if f"{stem}.py" in names or f"{stem}/__init__.py" in names:
        return
    import importlib.util

    try:
        installed = importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):
        installed = False
    if not installed:
        raise SpecError(f"model {manifest.name}: the handler module {module_name!r} ({stem}.py) is not in the "
                        f"package, nor installed",
                        "put it beside model.yaml, or add its path to `code:` in model.yaml, and build again")


def load_handler_class(manifest: ModelManifest, package_dir: Path):
    """Import the handler class named by the manifest from the unpacked package."""
    from assay.errors import HandlerError
    from assay.handler import Handler

    module_name, _, attr = manifest.handler.partition(":")
    if manifest.builtin is not None:  # assay's own code: nothing of the package goes on sys.path
        from assay.builtin import handlers

        check_handler_packaged(manifest)
        return getattr(handlers, attr)
    # first on sys.path, even when it was put there before another package of this process was loaded
    if str(package_dir) in sys.path:
        sys.path.remove(str(package_dir))
    sys.path.insert(0, str(package_dir))
    loaded = sys.modules.get(module_name)
    if loaded is not None and Path(package_dir) not in Path(getattr(loaded, "__file__", "") or "/").parents:
        del sys.modules[module_name]  # another package's module of the same name: import ours instead
    try:
        import importlib

        sys.dont_write_bytecode = True  # the verified cache holds exactly the package's files
        module = importlib.import_module(module_name)
        cls = getattr(module, attr)
    except Exception as exc:
        raise HandlerError(f"cannot import handler {manifest.handler!r} from {manifest.uri}: {exc!r}",
                           "check run.handler in model.yaml and that the code imports") from exc
    except (SystemExit, KeyboardInterrupt) as exc:  # sys.exit()/exit()/raise KeyboardInterrupt in module code
        raise HandlerError(f"cannot import handler {manifest.handler!r} from {manifest.uri}: importing "
                           f"{module_name!r} raised {exc!r}",
                           "remove the sys.exit()/exit() call (or the raise) at the top level of the handler's "
                           "modules: importing them must only define things; then build the model again") from exc
    if not (isinstance(cls, type) and issubclass(cls, Handler)):
        raise HandlerError(f"{manifest.handler} is not a subclass of assay.handler.Handler")
    return cls


def list_models(store: str, damaged: list | None = None) -> list[ModelManifest]:
    """Every model version in the store; with ``damaged``, see ``versions.load_versions``."""
    return load_versions(store, "models", load_manifest, damaged)
