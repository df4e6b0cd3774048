"""Model bundles as W&B artifacts: logged by the driver for every trial, read back by
`nqexp predict wandb:ENTITY/PROJECT/NAME:VERSION` (docs/experiments.md §17).

**Logging.** When a trial finishes, tune.py's driver-side follower logs the trial's bundle folder
(bundle.py) to the trial's W&B run as an artifact of type "model" named `artifact_name(experiment,
trial)` (`quickstart-full-s0`). Its metadata is a few facts of the bundle (feature set, symbol,
horizons, levels, head, versions) plus the experiment, the trial and its gate flags, passed through
the one secret policy (nqexp/secrets.py). The files are added by reference to the bundle folder
(W&B's "immutable" policy): no copy is staged outside the run store, and an offline run's record
names the bundle's files where they lie, so `nqexp sync` uploads them with the run.

**Reading back.** `fetch_bundle` materialises the artifact as a folder holding `bundle/`, which
`bundle.load_bundle` then checks as any local bundle (manifest, facts):
- online (the W&B mode rule of track.wandb_mode): `wandb.Api().artifact(...).download()`;
- offline: the artifact records of the offline runs under the run store
  (`<store>/<experiment>/wandb/offline-run-*/run-*.wandb`, W&B's transaction log). Offline, W&B
  assigns no version numbers; they are counted here as the server would: the distinct contents
  (digests) of NAME, in the order they were logged, are v0, v1, ...; `latest` is the last, and an
  alias given at logging time names its own. Each file is copied from where the record says it
  lies and checked against the record's MD5 digest and size before the bundle's own checks run.

Downloads go to a cache keyed by the artifact's digest (`$XDG_CACHE_HOME/nqexp/artifacts`, default
`~/.cache/nqexp/artifacts`), so a second predict of one version reads no network.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import shutil
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nqexp.errors import DataError
from nqexp.experiment.bundle import BUNDLE_DIR, META
from nqexp.experiment.track import wandb_mode
from nqexp.secrets import redact

log = logging.getLogger(__name__)

PREFIX = "wandb:"
ARTIFACT_TYPE = "model"
MAX_NAME = 128                       # W&B's limit on an artifact name
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
# bundle.json facts copied into the artifact's metadata (all plain values; the spec stays in the file)
_META_KEYS = ("bundle_version", "nqexp_version", "created", "symbol", "feature_set", "sql_hash", "freq_minutes",
              "horizons", "horizon_minutes", "taus", "head", "fitted_sessions")
USAGE = "wandb:ENTITY/PROJECT/NAME:VERSION (or wandb:PROJECT/NAME:VERSION; VERSION: latest, v0, v1, ... or an alias)"


def artifact_name(experiment: str, trial: str) -> str:
    """The artifact name of a trial's bundle: `EXPERIMENT-TRIAL` with every character W&B does not
    allow in a name replaced by '-' (W&B allows letters, digits, '-', '_' and '.')."""
    name = _UNSAFE.sub("-", f"{experiment}-{trial}").strip("-.") or "bundle"
    return name[:MAX_NAME]


def artifact_metadata(bundle_meta: Mapping[str, Any], experiment: str, trial: str, flags=()) -> dict[str, Any]:
    """What the artifact says about itself: the bundle's facts, experiment, trial and gate flags; no secret."""
    facts = {k: bundle_meta[k] for k in _META_KEYS if k in bundle_meta}
    return redact({**facts, "experiment": experiment, "trial": trial,
                   "gate_flags": [[str(g), str(r)] for g, r in flags]})


def log_bundle(run, trial_dir: Path, experiment: str, trial: str, flags=()) -> str | None:
    """Log `<trial_dir>/bundle/` to `run` (a track.WandbRun) as a model artifact; the artifact's name,
    or None when the trial has no bundle (a warning says so)."""
    import wandb

    folder = Path(trial_dir).absolute() / BUNDLE_DIR
    if not (folder / META).is_file():
        log.warning("trial %s/%s has no bundle at %s: no W&B artifact logged", experiment, trial, folder)
        return None
    meta = json.loads((folder / META).read_text())
    name = artifact_name(experiment, trial)
    art = wandb.Artifact(name, type=ARTIFACT_TYPE, metadata=artifact_metadata(meta, experiment, trial, flags),
                         description=f"nqexp model bundle of trial {experiment}/{trial}")
    # By reference: the bundle is written once per trial and never changed, and an offline run's
    # record then names the files in the run store rather than copies in W&B's staging folder.
    try:
        art.add_dir(str(folder), policy="immutable")
        run.log_artifact(art)
    except (OSError, wandb.errors.Error) as exc:     # bookkeeping: the trial's results stand without it
        log.warning("could not log the bundle of %s/%s as a W&B artifact: %s", experiment, trial, exc)
        return None
    return name


# ------------------------------------------------------------------------------------------
# References


@dataclass(frozen=True)
class ArtifactRef:
    entity: str | None
    project: str
    name: str
    version: str

    @property
    def path(self) -> str:
        return "/".join(p for p in (self.entity, self.project, f"{self.name}:{self.version}") if p)

    def __str__(self) -> str:
        return PREFIX + self.path


def is_ref(text) -> bool:
    return isinstance(text, str) and text.startswith(PREFIX)


def parse_ref(text: str) -> ArtifactRef:
    """`wandb:ENTITY/PROJECT/NAME:VERSION` (ENTITY optional, VERSION default latest); DataError otherwise."""
    body = text[len(PREFIX):] if is_ref(text) else text
    name_part, sep, version = body.partition(":")
    parts = name_part.split("/")
    if len(parts) not in (2, 3) or not all(parts) or ":" in version or (sep and not version):
        raise DataError(f"{text!r} is not a W&B artifact reference; give {USAGE}")
    entity, project, name = parts if len(parts) == 3 else (None, *parts)
    return ArtifactRef(entity, project, name, version or "latest")


# ------------------------------------------------------------------------------------------
# Reading back


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nqexp" / "artifacts"


def fetch_bundle(text: str, store_root, mode: str | None = None) -> tuple[Path, dict[str, Any]]:
    """The artifact `text` as a local folder holding `bundle/` (not yet checked: load_bundle does),
    and the artifact's metadata. Online W&B when the mode (track.wandb_mode) is online, else the
    offline runs under the run store `store_root`."""
    ref = parse_ref(text)
    mode = mode or wandb_mode()
    if mode == "online":
        return _fetch_online(ref)
    return _fetch_offline(ref, Path(store_root))


def _fetch_online(ref: ArtifactRef) -> tuple[Path, dict[str, Any]]:
    import wandb

    try:
        art = wandb.Api().artifact(ref.path, type=ARTIFACT_TYPE)
    except (wandb.errors.CommError, ValueError) as exc:
        raise DataError(f"W&B has no model artifact {ref} ({str(exc).splitlines()[0][:200]}); "
                        f"check the name with the W&B web page of the project, or give {USAGE}") from None
    dest = cache_root() / (ref.entity or "_") / ref.project / ref.name / art.digest
    if not (dest / BUNDLE_DIR / META).is_file():
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        art.download(root=str(tmp / BUNDLE_DIR))
        _swap_in(tmp, dest)
    return dest, dict(art.metadata or {})


@dataclass
class _Logged:
    """One artifact record of an offline run."""

    entity: str
    project: str
    name: str
    type: str
    digest: str
    aliases: tuple[str, ...]
    metadata: dict[str, Any]
    files: list[tuple[str, str, str, int]]      # (path in the artifact, local path, base64 md5, bytes)
    run_file: Path


def offline_runs(store_root: Path) -> list[Path]:
    """The transaction logs of the store's offline W&B runs (the runs `nqexp sync` uploads), oldest first."""
    runs = Path(store_root).glob("*/wandb/offline-run-*/run-*.wandb")
    return sorted(runs, key=lambda p: (p.parent.name.split("-")[2:3], str(p)))


def offline_artifacts(store_root: Path) -> list[_Logged]:
    """Every artifact record of the store's offline runs, in the order they were logged."""
    out = []
    for run_file in offline_runs(store_root):
        for rec in read_records(run_file):
            if rec.WhichOneof("record_type") != "artifact":
                continue
            a = rec.artifact
            try:
                metadata = json.loads(a.metadata) if a.metadata else {}
            except json.JSONDecodeError:
                metadata = {}
            files = [(e.path, e.local_path, e.digest, int(e.size)) for e in a.manifest.contents]
            out.append(_Logged(a.entity, a.project, a.name, a.type, a.digest, tuple(a.aliases), metadata, files,
                               run_file))
    return out


def _resolve_offline(ref: ArtifactRef, store_root: Path) -> tuple[_Logged, int]:
    logged = [a for a in offline_artifacts(store_root) if a.type == ARTIFACT_TYPE and a.project == ref.project
              and a.name == ref.name and (not a.entity or ref.entity is None or a.entity == ref.entity)]
    if not logged:
        runs = len(offline_runs(store_root))
        names = sorted({a.name for a in offline_artifacts(store_root) if a.project == ref.project})
        known = f"; model artifacts of project {ref.project} there: {', '.join(names[:8])}" if names else ""
        raise DataError(f"no model artifact {ref.name} of project {ref.project} in the {runs} offline W&B run(s) "
                        f"under {store_root}{known}; online, set WANDB_API_KEY (or `wandb login`) to fetch it "
                        f"from W&B, or point --store at the run store that logged it")
    versions: list[_Logged] = []                 # one per distinct content, in logging order
    for a in logged:
        if a.digest not in {v.digest for v in versions}:
            versions.append(a)
    v = ref.version
    if v == "latest":
        return versions[-1], len(versions) - 1
    if re.fullmatch(r"v\d+", v) and int(v[1:]) < len(versions):
        return versions[int(v[1:])], int(v[1:])
    by_alias = [a for a in logged if v in a.aliases]
    if by_alias:
        last = by_alias[-1]
        return last, [x.digest for x in versions].index(last.digest)
    raise DataError(f"artifact {ref.name} of project {ref.project} has no version {v!r} in the offline W&B runs "
                    f"under {store_root}: it has v0..v{len(versions) - 1} (latest = v{len(versions) - 1})")


def _fetch_offline(ref: ArtifactRef, store_root: Path) -> tuple[Path, dict[str, Any]]:
    found, index = _resolve_offline(ref, store_root)
    dest = cache_root() / "offline" / ref.project / ref.name / found.digest
    if (dest / BUNDLE_DIR / META).is_file():
        return dest, found.metadata
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / BUNDLE_DIR).mkdir(parents=True)
    for path, local, md5, size in found.files:
        src = _local_file(Path(local), found.run_file)
        if src is None:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(f"artifact {ref.name}:v{index} names {local} for its file {path}, which is gone "
                            f"(the trial's bundle was removed or the run store moved without it); "
                            f"retrain the trial, or sync it while the store is whole")
        target = tmp / BUNDLE_DIR / path
        if target.resolve().parent != (tmp / BUNDLE_DIR).resolve():
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(f"artifact {ref.name}:v{index} holds a file {path!r} outside its folder; refused")
        shutil.copyfile(src, target)
        got, got_size = _md5(target), target.stat().st_size
        if got != md5 or got_size != size:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(f"{src} does not match artifact {ref.name}:v{index} ({got_size:,} bytes, "
                            f"md5 {got}; the artifact says {size:,} bytes, md5 {md5}): it changed after it was "
                            f"logged; retrain the trial")
    _swap_in(tmp, dest)
    return dest, found.metadata


def _local_file(local: Path, run_file: Path) -> Path | None:
    """Where a file a record names is now: its recorded path, else (a run store that moved) the same
    place relative to the experiment folder that holds the run (`<exp>/trials/<trial>/bundle/<file>`)."""
    if local.is_file():
        return local
    parts = local.parts
    if "trials" in parts:
        i = len(parts) - 1 - parts[::-1].index("trials")
        moved = run_file.parents[2].joinpath(*parts[i:])       # <exp>/wandb/offline-run-*/run-*.wandb
        if moved.is_file():
            return moved
    return None


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return base64.b64encode(h.digest()).decode()


def _swap_in(tmp: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():                             # another process got there first: same digest, same files
        shutil.rmtree(tmp, ignore_errors=True)
        return
    tmp.rename(dest)


# ------------------------------------------------------------------------------------------
# W&B's offline transaction log


def read_records(path: Path) -> Iterator[Any]:
    """The protobuf records of a `run-*.wandb` transaction log (LevelDB-log framing: 32 KiB blocks,
    7-byte record headers; docs/stack_notes.md §4), up to the first torn record: a killed writer
    may leave one at the end. W&B 0.31 has no reader of its own."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if len(data) < 7 or struct.unpack("<4sHB", data[:7])[0] != b":W&B":
        raise DataError(f"{path} is not a W&B transaction log")
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:                               # a block's tail too short for a header is padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload = data[pos + 7:pos + 7 + length]
        if len(payload) < length:
            return
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = payload if kind in (1, 2) else pending + payload     # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            try:
                rec.ParseFromString(pending)
            except DecodeError:
                return
            yield rec
            pending = b""
