"""Index of img2dataset shards: which shard member holds each LPR4M frame and shop image.

LPR4M publishes its frames and images as URL lists fetched with img2dataset, which writes
numbered shards rather than LPR4M's layout (docs/data_formats.md, "Shard index"):

    files:      SSSSS/KKKKKKKKK.jpg + KKKKKKKKK.json (+ .txt)    SSSSS.parquet  SSSSS_stats.json
    webdataset: SSSSS.tar holding KKKKKKKKK.jpg, .json (+ .txt)  SSSSS.parquet  SSSSS_stats.json

Each sidecar json keeps the source url (and the list's extra columns); the frame or image id is
recovered from it by `IdRule` (a regex with one named group `id`, or a sidecar field). Failed
urls get no file, only a parquet row with `status` != success; they are counted.

`build_index` reads every sidecar once and writes INDEX_DIR, memory-mapped by the loaders:

    keys.npy     (N,) uint64, ascending: group rank << 23 | suffix width << 20 | suffix number
    groups.npy   (G,) bytes, sorted: an id without its `-NNNN` suffix (a frame's clip id, an
                 image id), so that a clip's frames are one contiguous run of rows
    shard.npy    (N,) shard number into meta.json's `shards` (dictionary-encoded names)
    member.npy   (N,) the img2dataset key (KKKKKKKKK) of the row's files
    ext.npy      (N,) image suffix, into meta.json's `exts`
    offset.npy, size.npy   (N,) where a tar member's bytes lie (tar shards only), so that a
                 read is one pread, without scanning the tar
    meta.json    format, version, id rule, shards (path, kind, key width), fingerprint, counts
    report.json  counts, the annotation ids without a downloaded file, failed downloads
    missing_ids.tsv   kind, id, img2dataset status ("absent": never in a shard) per missing id

About 15 bytes a row for files shards (27 with tars; 14.5 measured on 1M rows, so ~7 GB for
LPR4M's ~480M frames), read by page as the loaders look ids up. Building holds ~70 bytes a row
at its peak (150 MB measured for 1M rows, interpreter included): ~35 GB for LPR4M.
`IndexMedia` is the loaders' resolver over an index (the interface of lpr4m.FolderMedia).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tarfile
from collections import Counter, OrderedDict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sgmn.data.records import AnnotationError

log = logging.getLogger(__name__)

FORMAT, VERSION = "sgmn-shard-index", 1
# the last path segment of the url without its suffix: LPR4M's .../{frame_id}.jpg
DEFAULT_ID_PATTERN = r"^(?:[^?#]*/)?(?P<id>[^/?#]+?)(?:\.[A-Za-z0-9]{1,5})?(?:[?#].*)?$"
EXTS = ("jpg", "png", "webp", "jpeg")       # img2dataset's encode formats (jpg by default)
EXT_CODE = {e: i for i, e in enumerate(EXTS)}
SUFFIX = re.compile(r"^(.+)-(\d{1,6})$")    # a frame id: {clip_id}-{NNNN}
WIDTH_SHIFT, GROUP_SHIFT = 20, 23           # 10**6 < 2**20 numbers, widths 0-6 in 3 bits
SHARD_DIR, SHARD_TAR = re.compile(r"^\d+$"), re.compile(r"^(\d+)\.tar$")
EXAMPLES = 20                               # examples kept per kind of problem in the report
OPEN_TARS = 16                              # tar handles kept open per process


class ShardError(AnnotationError):
    """A shard or sidecar that cannot be read; the message starts with `file[:line]:`."""

    def __init__(self, path, line: int | None, message: str):
        super().__init__(path, line, message)
        self.message = message

    def __reduce__(self):  # raised in a worker process, re-raised in the parent
        return type(self), (self.path, self.line, self.message)


class MediaMissing(LookupError):
    """An indexed frame or image with no readable bytes (not downloaded, or its shard changed)."""


class IdRule:
    """How a sidecar json gives its frame / image id: `field`'s value as it is, or (field None)
    the named group `id` of `pattern` searched in the url."""

    def __init__(self, pattern: str | None = None, field: str | None = None):
        self.pattern, self.field = pattern or DEFAULT_ID_PATTERN, field or None
        try:
            self.regex = re.compile(self.pattern)
        except re.error as err:
            raise ValueError(f"id pattern {self.pattern!r}: {err}") from None
        if "id" not in self.regex.groupindex:
            raise ValueError(f"id pattern {self.pattern!r} needs one named group (?P<id>...)")

    @property
    def column(self) -> str:
        """The sidecar field (and img2dataset parquet column) the id comes from."""
        return self.field or "url"

    def id_of(self, value) -> str | None:
        """The id in a sidecar's `column` value, or None when there is none."""
        if not isinstance(value, (str, int)):
            return None
        if self.field:
            return str(value).strip() or None
        if not isinstance(value, str):
            return None
        if self.pattern == DEFAULT_ID_PATTERN:  # the same, 20x faster than the regex (~500M urls)
            return url_stem(value)
        m = self.regex.search(value)
        return (m.group("id") or None) if m else None

    def as_dict(self) -> dict:
        return {"id_pattern": self.pattern, "id_field": self.field}


def url_stem(url: str) -> str | None:
    """DEFAULT_ID_PATTERN's id without the regex: the url path's last segment, less a suffix of
    1-5 ASCII letters or digits."""
    name = url.split("?", 1)[0].split("#", 1)[0].rsplit("/", 1)[-1]
    stem, dot, ext = name.rpartition(".")
    if dot and stem and 1 <= len(ext) <= 5 and ext.isascii() and ext.isalnum():
        return stem
    return name or None


# ---- ids as (group, suffix): a clip's frames sort together --------------------------------

def split_id(item: str) -> tuple[str, int]:
    """(group, suffix code): `clip-0012` -> ("clip", 4 << 20 | 12); an id without a numeric
    suffix is its own group with code 0."""
    m = SUFFIX.match(item)
    if m is None:
        return item, 0
    digits = m.group(2)
    return m.group(1), len(digits) << WIDTH_SHIFT | int(digits)


def join_id(group: str, code: int) -> str:
    width = code >> WIDTH_SHIFT
    return f"{group}-{code & ((1 << WIDTH_SHIFT) - 1):0{width}d}" if width else group


def _encode(ids: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(distinct groups, each id's group position, each id's suffix code)."""
    local: dict[str, int] = {}
    inverse = np.empty(len(ids), dtype=np.int32)
    codes = np.empty(len(ids), dtype=np.uint64)
    for i, item in enumerate(ids):
        group, code = split_id(item)
        inverse[i] = local.setdefault(group, len(local))
        codes[i] = code
    return list(local), inverse, codes


def _smallest_uint(values: np.ndarray) -> np.dtype:
    top = int(values.max()) if len(values) else 0
    return next(np.dtype(t) for t in (np.uint8, np.uint16, np.uint32, np.uint64) if top <= np.iinfo(t).max)


# ---- shards on disk ----------------------------------------------------------------------

@dataclass
class Shard:
    """One img2dataset shard: a folder (output_format files) or a tar (webdataset)."""
    path: Path
    kind: str  # "files" or "tar"

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(".tar")

    @property
    def parquet(self) -> Path:
        return self.path.parent / f"{self.name}.parquet"

    @property
    def stats(self) -> Path:
        return self.path.parent / f"{self.name}_stats.json"


def find_shards(folders: list[str | Path]) -> list[Shard]:
    """Every shard of the img2dataset output folders, folder by folder, in shard order."""
    shards = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: not a directory (an img2dataset output folder)")
        found = []
        for entry in os.scandir(folder):
            if entry.is_dir() and SHARD_DIR.match(entry.name):
                found.append(Shard(Path(entry.path).resolve(), "files"))
            elif entry.is_file() and SHARD_TAR.match(entry.name):
                found.append(Shard(Path(entry.path).resolve(), "tar"))
        if not found:
            raise FileNotFoundError(f"{folder}: no img2dataset shard (NNNNN/ folders or NNNNN.tar files)")
        shards += sorted(found, key=lambda s: (int(s.name), s.kind))
    return shards


def fingerprint(shards: list[dict]) -> str:
    """sha1 of each shard's path, size and modification time: a shard rewritten or re-downloaded
    after the index was built changes it."""
    h = hashlib.sha1()
    for shard in shards:
        try:
            st = os.stat(shard["path"])
        except FileNotFoundError:
            raise MediaMissing(f"shard {shard['path']} is gone") from None
        h.update(f"{shard['path']}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


@dataclass
class ShardRows:
    """What one shard holds: one entry per image with a sidecar whose id could be read."""
    ids: list[str] = field(default_factory=list)
    members: list[int] = field(default_factory=list)
    exts: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    key_width: int = 0
    sidecars: int = 0
    no_id: int = 0                                        # sidecars no id could be read from
    unpaired: int = 0                                     # a sidecar without image, or the reverse
    examples: dict = field(default_factory=lambda: {"no_id": [], "unpaired": []})
    not_success: int = 0                                  # a sidecar whose status is not success
    failed: Counter = field(default_factory=Counter)      # img2dataset status of its failed rows
    failed_known: bool = True                             # False: neither parquet nor stats file
    encoded: tuple | None = None                          # _encode(ids), made in the worker
    shard_no: np.ndarray | None = None                    # the shard's number, per row (_assemble)


def _sidecar(raw: bytes, where: str) -> dict:
    """A sidecar json's object; an unreadable one is a ShardError naming the file and line."""
    try:
        meta = json.loads(raw.decode("utf-8"))  # decoded first: json's encoding sniffing costs
    except json.JSONDecodeError as err:
        raise ShardError(where, err.lineno, f"invalid JSON in an img2dataset sidecar: {err.msg}") from None
    except UnicodeDecodeError as err:
        raise ShardError(where, None, f"sidecar is not valid UTF-8 ({err.reason})") from None
    if not isinstance(meta, dict):
        raise ShardError(where, 1, f"expected a JSON object (img2dataset's sidecar), got {type(meta).__name__}")
    return meta


def _member_key(stem: str, where: str, rows: ShardRows) -> int:
    """The img2dataset key of a member name; every key of a shard has the same digit count."""
    if not stem.isdigit():
        raise ShardError(where, None, "not an img2dataset member name (expected digits, e.g. 000000000.jpg)")
    if rows.key_width and len(stem) != rows.key_width:
        raise ShardError(where, None, f"key of {len(stem)} digits among keys of {rows.key_width}")
    rows.key_width = len(stem)
    return int(stem)


def _add_row(rows: ShardRows, meta: dict, rule: IdRule, where: str, stem: str, ext: str,
             offset: int = 0, size: int = 0) -> None:
    rows.sidecars += 1
    if meta.get("status", "success") != "success":
        rows.not_success += 1
        return
    item = rule.id_of(meta.get(rule.column))
    if item is None:
        rows.no_id += 1
        if len(rows.examples["no_id"]) < EXAMPLES:
            rows.examples["no_id"].append(f"{where}: {rule.column} = {str(meta.get(rule.column))[:200]!r}")
        return
    rows.ids.append(item)
    rows.members.append(_member_key(stem, where, rows))
    rows.exts.append(EXT_CODE[ext])
    rows.offsets.append(offset)
    rows.sizes.append(size)


def _split_names(names) -> tuple[dict[str, str], set[str]]:
    """(stem -> image suffix, stems with a sidecar) of a shard's member names."""
    images, sidecars = {}, set()
    for name in names:
        stem, _, ext = name.rpartition(".")
        if ext == "json":
            sidecars.add(stem)
        elif ext in EXT_CODE:
            images[stem] = ext
    return images, sidecars


def _unpaired(rows: ShardRows, where: str, images, sidecars) -> None:
    """Count the members without their pair (a sidecar without image, or the reverse)."""
    lone = sorted(set(images) ^ set(sidecars))
    rows.unpaired += len(lone)
    rows.examples["unpaired"] += [f"{where}/{stem}" for stem in lone[:EXAMPLES]]


def scan_files_shard(shard: Shard, rule: IdRule) -> ShardRows:
    """The rows of a files-format shard folder: each KEY.json read, paired with KEY.{jpg,...}."""
    rows = ShardRows()
    images, sidecars = _split_names(os.listdir(shard.path))
    base = str(shard.path)
    for stem in sorted(sidecars & set(images)):
        where = f"{base}/{stem}.json"
        with open(where, "rb") as fh:
            meta = _sidecar(fh.read(), where)
        _add_row(rows, meta, rule, where, stem, images[stem])
    _unpaired(rows, base, images, sidecars)
    return rows


def scan_tar_shard(shard: Shard, rule: IdRule) -> ShardRows:
    """The rows of a webdataset tar: its json members read, each image member's data offset and
    size recorded (a read is then one pread)."""
    rows, metas, images = ShardRows(), {}, {}
    try:
        with tarfile.open(shard.path, "r:") as tar:
            for member in tar:
                stem, _, ext = member.name.rpartition(".")
                if not member.isfile():
                    continue
                if ext == "json":
                    metas[stem] = tar.extractfile(member).read()
                elif ext in EXT_CODE:
                    images[stem] = (ext, member.offset_data, member.size)
    except tarfile.TarError as err:
        raise ShardError(shard.path, None, f"not a readable tar ({err})") from None
    for stem in sorted(set(metas) & set(images)):
        where = f"{shard.path}:{stem}.json"
        ext, offset, size = images[stem]
        _add_row(rows, _sidecar(metas[stem], where), rule, where, stem, ext, offset, size)
    _unpaired(rows, str(shard.path), images, metas)
    return rows


def _count_failed(shard: Shard, rows: ShardRows) -> None:
    """img2dataset's failed rows of the shard: statuses from its parquet (one row per url), else
    count - successes from its stats file; neither: unknown."""
    if shard.parquet.is_file():
        import pyarrow.parquet as pq
        try:
            status = pq.read_table(shard.parquet, columns=["status"]).column("status").to_pylist()
        except (OSError, ValueError) as err:  # pyarrow's ArrowIOError / ArrowInvalid
            raise ShardError(shard.parquet, None, f"cannot read img2dataset's status column ({err})") from None
        rows.failed.update(s or "unknown" for s in status if s != "success")
    elif shard.stats.is_file():
        stats = _sidecar(shard.stats.read_bytes(), str(shard.stats))
        rows.failed.update({k: int(stats.get(k) or 0) for k in ("failed_to_download", "failed_to_resize")})
    else:
        rows.failed_known = False


def scan_shard(shard: Shard, rule: IdRule) -> ShardRows:
    """One shard's rows and failure counts (run in a worker process)."""
    rows = (scan_files_shard if shard.kind == "files" else scan_tar_shard)(shard, rule)
    _count_failed(shard, rows)
    # sent back compact: the parent holds every shard's rows at once (~500M for LPR4M)
    rows.encoded, rows.ids = _encode(rows.ids), []
    rows.members = np.asarray(rows.members, dtype=np.int64)
    rows.exts = np.asarray(rows.exts, dtype=np.uint8)
    rows.offsets, rows.sizes = (np.asarray(v, dtype=np.int64) if shard.kind == "tar" else np.zeros(0, np.int64)
                                for v in (rows.offsets, rows.sizes))
    return rows


def _scan_all(shards: list[Shard], rule: IdRule, processes: int) -> list[ShardRows]:
    if processes <= 1 or len(shards) == 1:
        return [scan_shard(s, rule) for s in shards]
    with ProcessPoolExecutor(processes) as pool:
        chunk = max(1, len(shards) // (processes * 8))
        return list(pool.map(scan_shard, shards, [rule] * len(shards), chunksize=chunk))


# ---- building the index ------------------------------------------------------------------

def _keys(scans: list[ShardRows]) -> tuple[np.ndarray, np.ndarray]:
    """(each row's key, in shard order; the sorted group names)."""
    groups: dict[str, int] = {}
    gids, codes = [], []
    for rows in scans:
        local, inverse, code = rows.encoded
        remap = np.array([groups.setdefault(g, len(groups)) for g in local], dtype=np.int64)
        gids.append(remap[inverse] if len(local) else inverse.astype(np.int64))
        codes.append(code)
    names = np.array([g.encode() for g in groups], dtype=bytes) if groups else np.array([], dtype="S1")
    order = np.argsort(names, kind="stable")
    rank = np.empty(len(names), dtype=np.uint64)
    rank[order] = np.arange(len(names), dtype=np.uint64)
    return rank[np.concatenate(gids)] << np.uint64(GROUP_SHIFT) | np.concatenate(codes), names[order]


def _column(scans: list[ShardRows], name: str, sort: np.ndarray) -> np.ndarray:
    """A per-row field of every shard in index order, as the smallest unsigned dtype (0 where a
    shard has none: a files shard's tar offsets)."""
    parts = [np.asarray(getattr(r, name), dtype=np.int64) if len(getattr(r, name))
             else np.zeros(len(r.members), dtype=np.int64) for r in scans]
    values = np.concatenate(parts)[sort]
    return values.astype(_smallest_uint(values))


def _assemble(scans: list[ShardRows]) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays of the index (rows sorted by key, a duplicate id kept in its first shard) and the
    count of duplicates dropped."""
    keys, names = _keys(scans)
    sort = np.argsort(keys, kind="stable")  # stable: a duplicate keeps its first shard
    keys = keys[sort]
    keep = np.ones(len(keys), dtype=bool)
    keep[1:] = keys[1:] != keys[:-1]
    sort = sort[keep]
    for number, rows in enumerate(scans):
        rows.shard_no = np.full(len(rows.members), number, dtype=np.int64)
    arrays = {"keys": keys[keep], "groups": names, "shard": _column(scans, "shard_no", sort),
              "member": _column(scans, "members", sort), "ext": _column(scans, "exts", sort)}
    if any(len(r.offsets) for r in scans):  # tar shards: where each member's bytes lie
        arrays["offset"], arrays["size"] = _column(scans, "offsets", sort), _column(scans, "sizes", sort)
    mask = np.uint64((1 << GROUP_SHIFT) - 1)
    duplicates = [join_id(names[int(k >> np.uint64(GROUP_SHIFT))].decode(), int(k & mask))
                  for k in keys[~keep][:EXAMPLES]]
    return arrays, {"duplicates": int((~keep).sum()), "duplicate_examples": duplicates}


def _examples(scans: list[ShardRows], kind: str) -> list[str]:
    return [x for r in scans for x in r.examples[kind]][:EXAMPLES]


def _scan_report(shards: list[Shard], scans: list[ShardRows], dropped: dict, rows: int) -> dict:
    """What the shards held: rows indexed, failed urls, sidecars without id or image."""
    failed = sum((r.failed for r in scans), Counter())
    return {
        "shards": len(shards), "tar_shards": sum(s.kind == "tar" for s in shards),
        "sidecars": sum(r.sidecars for r in scans), "rows": rows,
        "failed_downloads": {"count": sum(failed.values()), "by_status": dict(failed),
                             "shards_without_parquet_or_stats": [str(s.path) for s, r in zip(shards, scans)
                                                                 if not r.failed_known][:EXAMPLES]},
        "not_success_sidecars": sum(r.not_success for r in scans),
        "no_id": {"count": sum(r.no_id for r in scans), "examples": _examples(scans, "no_id")},
        "unpaired": {"count": sum(r.unpaired for r in scans), "examples": _examples(scans, "unpaired")},
        **dropped,
    }


def _prepare_out(out: Path) -> Path:
    """A fresh sibling `out.tmp`; an existing `out` must be an index (it is replaced later)."""
    if out.exists() and not (out / "meta.json").is_file():
        raise FileExistsError(f"{out} exists and is not a shard index (no meta.json): refusing to replace it")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def build_index(shard_folders: list[str | Path], out: str | Path, id_pattern: str | None = None,
                id_field: str | None = None, data_root: str | Path | None = None,
                processes: int = 0, link_root: str | Path | None = None) -> dict:
    """Index every shard of the img2dataset output folders into `out` (written to a sibling,
    then renamed) and return its report. With `data_root` (an LPR4M root: its annotation
    files), the report lists the annotation ids that have no downloaded file; with `link_root`
    (files-format shards only), LPR4M's layout is written there as hard links (link_layout)."""
    out, rule = Path(out), IdRule(id_pattern, id_field)
    shards = find_shards(shard_folders)
    processes = processes or min(os.cpu_count() or 1, 8)
    scans = _scan_all(shards, rule, processes)
    arrays, dropped = _assemble(scans)
    if not len(arrays["keys"]):
        example = next((x for r in scans for x in r.examples["no_id"]), "no sidecar json at all")
        raise ShardError(shards[0].path, None, f"no sidecar gave an id with the {rule.column} rule "
                         f"{rule.as_dict()} (e.g. {example})")
    tmp = _prepare_out(out)
    for name, array in arrays.items():
        np.save(tmp / f"{name}.npy", array)
    shard_meta = [{"path": str(s.path), "kind": s.kind, "key_width": r.key_width} for s, r in zip(shards, scans)]
    meta = {"format": FORMAT, "version": VERSION, **rule.as_dict(), "exts": list(EXTS), "shards": shard_meta,
            "folders": [str(Path(f).resolve()) for f in shard_folders], "rows": len(arrays["keys"]),
            "groups": len(arrays["groups"]), "fingerprint": fingerprint(shard_meta)}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    report = _scan_report(shards, scans, dropped, meta["rows"])
    if data_root is not None:
        report["annotations"] = missing_report(ShardIndex(tmp), data_root, tmp / "missing_ids.tsv")
    if link_root is not None:
        images = image_ids_of(data_root) if data_root is not None else set()
        report["links"] = link_layout(ShardIndex(tmp), link_root, images)
    (tmp / "report.json").write_text(json.dumps(report, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return report


# ---- reading an index --------------------------------------------------------------------

class ShardIndex:
    """A built index, memory-mapped: ids -> rows -> (shard, member) and the member's bytes."""

    ARRAYS = ("keys", "groups", "shard", "member", "ext", "offset", "size")

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.path}: not a shard index (no meta.json); build it with `sgmn index`")
        self.meta = json.loads(meta_path.read_text())
        if (self.meta.get("format"), self.meta.get("version")) != (FORMAT, VERSION):
            raise ShardError(meta_path, None, f"{self.meta.get('format')} version {self.meta.get('version')}, "
                             f"this suite reads {FORMAT} version {VERSION}: rebuild it with `sgmn index`")
        self.shards = self.meta["shards"]
        self._arrays: dict | None = None

    def __getstate__(self):  # memory maps are reopened in the process that unpickles
        return {**self.__dict__, "_arrays": None}

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = {name: np.load(self.path / f"{name}.npy", mmap_mode="r")
                            for name in self.ARRAYS if (self.path / f"{name}.npy").is_file()}
        return self._arrays

    def __len__(self) -> int:
        return int(self.meta["rows"])

    def check_fresh(self) -> None:
        """Raise MediaMissing when a shard changed since the index was built."""
        if fingerprint(self.shards) != self.meta["fingerprint"]:
            raise MediaMissing(f"{self.path}: the shards changed since this index was built "
                               f"(rebuild it with `sgmn index`)")

    def _group_ranks(self, groups: list[str]) -> np.ndarray:
        """Rank of each group in groups.npy, -1 when it is not there."""
        names = self.arrays["groups"]
        width = names.dtype.itemsize
        raw = [g.encode() for g in groups]
        wanted = np.array(raw, dtype=names.dtype) if raw else np.array([], dtype=names.dtype)
        pos = np.minimum(np.searchsorted(names, wanted), max(len(names) - 1, 0))
        ok = (names[pos] == wanted) & np.array([len(r) <= width for r in raw], dtype=bool)
        return np.where(ok, pos, -1)

    def rows(self, ids: list[str]) -> np.ndarray:
        """Row of each id (int64), -1 for an id that is not in the index."""
        if not ids:
            return np.empty(0, dtype=np.int64)
        groups, codes = zip(*map(split_id, ids))
        ranks = self._group_ranks(list(groups))
        keys = self.arrays["keys"]
        wanted = np.maximum(ranks, 0).astype(np.uint64) << np.uint64(GROUP_SHIFT) | np.array(codes, dtype=np.uint64)
        pos = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        return np.where((ranks >= 0) & (keys[pos] == wanted), pos, -1).astype(np.int64)

    def group_rows(self, group: str) -> np.ndarray:
        """Rows of the ids `{group}-{digits}` (a clip's frames), in key order."""
        rank = int(self._group_ranks([group])[0])
        if rank < 0:
            return np.empty(0, dtype=np.int64)
        keys = self.arrays["keys"]
        lo, hi = (np.uint64(r) << np.uint64(GROUP_SHIFT) for r in (rank, rank + 1))
        start, stop = np.searchsorted(keys, [lo + np.uint64(1 << WIDTH_SHIFT), hi])
        return np.arange(start, stop, dtype=np.int64)

    def id_at(self, row: int) -> str:
        key = int(self.arrays["keys"][row])
        return join_id(self.arrays["groups"][key >> GROUP_SHIFT].decode(), key & ((1 << GROUP_SHIFT) - 1))

    def member_path(self, row: int) -> Path:
        """The image file of a files-format row."""
        shard = self.shards[int(self.arrays["shard"][row])]
        ext = self.meta["exts"][int(self.arrays["ext"][row])]
        return Path(shard["path"]) / f"{int(self.arrays['member'][row]):0{shard['key_width']}d}.{ext}"

    def where(self, row: int) -> str:
        """`shard member` of a row, for messages."""
        shard = self.shards[int(self.arrays["shard"][row])]
        return f"{shard['path']} member {int(self.arrays['member'][row]):0{shard['key_width']}d}"


def _frame_id(frame_id: str) -> str:
    """A frame id as the index has it: a path-like one (lpr4m.frame_path) is its file stem."""
    return Path(frame_id).stem if frame_id.lower().endswith((".jpg", ".jpeg", ".png")) else frame_id


class _TarHandles:
    """Open tar files of this process (least recently used closed beyond OPEN_TARS); after a
    fork a worker opens its own, so no two processes share a file position."""

    def __init__(self):
        self.pid, self.open = os.getpid(), OrderedDict()

    def fd(self, path: str) -> int:
        if self.pid != os.getpid():
            self.pid, self.open = os.getpid(), OrderedDict()
        if path in self.open:
            self.open.move_to_end(path)
            return self.open[path]
        fd = self.open[path] = os.open(path, os.O_RDONLY)
        if len(self.open) > OPEN_TARS:
            os.close(self.open.popitem(last=False)[1])
        return fd

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()


class IndexMedia:
    """The loaders' resolver (lpr4m.FolderMedia's interface) over a shard index: frames and
    images are ShardRefs, read from their shard member without copying the shards."""

    def __init__(self, index: str | Path | ShardIndex):
        self.index = index if isinstance(index, ShardIndex) else ShardIndex(index)
        self.index.check_fresh()
        self.handles = _TarHandles()

    def frame(self, frame_id: str) -> ShardRef:
        frame_id = _frame_id(frame_id)
        return ShardRef(self, frame_id, f"frames/{frame_id.rsplit('-', 1)[0]}/{frame_id}.jpg")

    def image(self, image_id: str) -> ShardRef:
        return ShardRef(self, image_id, f"images/{image_id}.jpg")

    def clip_frames(self, clip_id: str) -> list[ShardRef] | None:
        """Every indexed frame `{clip_id}-NNNN`, by name as a folder listing sorts them; None
        when the index has none."""
        refs = [self.frame(self.index.id_at(int(r))) for r in self.index.group_rows(clip_id)]
        return sorted(refs, key=lambda ref: ref.rel) or None

    def read(self, item: str) -> bytes:
        """The stored bytes of an id; MediaMissing names why there are none."""
        row = int(self.index.rows([item])[0])
        if row < 0:
            raise MediaMissing(f"{item} is not in the shard index {self.index.path} (no downloaded file; "
                               f"see its report.json)")
        shard = self.index.shards[int(self.index.arrays["shard"][row])]
        try:
            if shard["kind"] == "files":
                return self.index.member_path(row).read_bytes()
            offset, size = (int(self.index.arrays[k][row]) for k in ("offset", "size"))
            data = os.pread(self.handles.fd(shard["path"]), size, offset)
        except OSError as err:
            raise MediaMissing(f"{self.index.where(row)}: cannot read ({err}); rebuild the index "
                               f"with `sgmn index` if the shards changed") from None
        if len(data) != size:
            raise MediaMissing(f"{self.index.where(row)}: {len(data)} of {size} bytes (truncated tar)")
        return data


class ShardRef:
    """One frame or shop image of an indexed dataset, in place of its file path: `rel` is the
    path it has in LPR4M's layout (frame-store keys, messages), `read_bytes()` its bytes."""

    __slots__ = ("media", "id", "rel")

    def __init__(self, media: IndexMedia, item: str, rel: str):
        self.media, self.id, self.rel = media, item, rel

    def read_bytes(self) -> bytes:
        return self.media.read(self.id)

    def __str__(self) -> str:
        return f"{self.rel} (shard index {self.media.index.path})"

    def __repr__(self) -> str:
        return f"ShardRef({self.rel!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, ShardRef) and (self.rel, self.media) == (other.rel, other.media)

    def __hash__(self) -> int:
        return hash(self.rel)

    def __getstate__(self):
        return (self.media, self.id, self.rel)

    def __setstate__(self, state):
        self.media, self.id, self.rel = state


# ---- what the annotations name that did not arrive ----------------------------------------

class IdMedia:
    """A media (lpr4m.FolderMedia's interface) that keeps frame and image ids as they are: the
    annotation files read for their ids only."""

    def frame(self, frame_id: str) -> str:
        return _frame_id(frame_id)

    def image(self, image_id: str) -> str:
        return image_id

    def clip_frames(self, clip_id: str) -> None:
        return None


class _Tally:
    """Ids of one kind that the annotations name, looked up in the index a million at a time
    (LPR4M's training split names ~480M frames)."""

    CHUNK = 1_000_000

    def __init__(self, index: ShardIndex):
        self.index, self.named, self.lost, self.pending = index, 0, [], []

    def add(self, ids: list[str]) -> None:
        self.pending += ids
        if len(self.pending) >= self.CHUNK:
            self.flush()

    def flush(self) -> None:
        rows = self.index.rows(self.pending)
        self.named += len(self.pending)
        self.lost += [self.pending[i] for i in np.flatnonzero(rows < 0)]
        self.pending = []


def _pct(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 4) if whole else 0.0


def _tally(index: ShardIndex, root: Path) -> tuple[dict[str, _Tally], list[str]]:
    """Per kind, the ids the annotation files of `root` name and those the index lacks; and the
    test clips with no frame in the index (their frames are listed by the index at evaluation)."""
    from sgmn.data import lpr4m
    kinds = {k: _Tally(index) for k in ("train_frame", "train_image", "test_frame", "test_image")}
    images: set[str] = set()
    for clip in lpr4m.iter_training(root, on_bad_line="skip", media=IdMedia()):
        kinds["train_frame"].add(clip.frame_paths)
        images.add(clip.image_id)
    kinds["train_image"].add(sorted(images))
    test = lpr4m.read_test(root, media=IdMedia())
    kinds["test_frame"].add(sorted({f for q in test.queries for f in q.frame_paths}))
    kinds["test_image"].add(sorted(test.image_paths))
    for tally in kinds.values():
        tally.flush()
    return kinds, [q.video_id for q in test.queries if not len(index.group_rows(q.video_id))]


def _failed_status(index: ShardIndex, missing: set[str]) -> dict[str, str]:
    """img2dataset's status of the missing ids that were in a shard's parquet (a failed url)."""
    import pyarrow.parquet as pq
    rule, found = IdRule(index.meta["id_pattern"], index.meta["id_field"]), {}
    for shard in index.shards:
        parquet = Shard(Path(shard["path"]), shard["kind"]).parquet
        if not missing or not parquet.is_file():
            continue
        table = pq.read_table(parquet, columns=[rule.column, "status"]).to_pydict()
        for value, status in zip(table[rule.column], table["status"]):
            item = rule.id_of(value)
            if item in missing and status != "success":
                found[item] = status or "unknown"
    return found


def missing_report(index: ShardIndex, root: str | Path, out: str | Path) -> dict:
    """Count, per kind, the ids the LPR4M annotation files of `root` name (as often as they are
    listed) that the index lacks; list them in `out` (kind, id, img2dataset status or "absent":
    in no shard) and return the counts. A test clip with no frame at all in the index is
    counted too (it is a recorded miss at evaluation)."""
    kinds, empty = _tally(index, Path(root))
    missing = [(kind, item) for kind, tally in kinds.items() for item in tally.lost]
    status = _failed_status(index, {item for _, item in missing})
    with open(out, "w", encoding="utf-8") as fh:
        fh.write("kind\tid\tstatus\n")
        fh.writelines(f"{kind}\t{item}\t{status.get(item, 'absent')}\n" for kind, item in missing)
    named = sum(t.named for t in kinds.values())
    return {"root": str(Path(root).resolve()), "named": named, "missing": len(missing),
            "missing_pct": _pct(len(missing), named), "missing_failed_download": len(status),
            "by_kind": {k: {"named": t.named, "missing": len(t.lost), "missing_pct": _pct(len(t.lost), t.named)}
                        for k, t in kinds.items()},
            "test_clips_without_frames": {"count": len(empty), "examples": empty[:EXAMPLES]},
            "list": Path(out).name}


def image_ids_of(root: str | Path) -> set[str]:
    """The shop image ids the annotation files of an LPR4M root name (link_layout's images)."""
    from sgmn.data import lpr4m
    ids = {clip.image_id for clip in lpr4m.iter_training(root, on_bad_line="skip", media=IdMedia())}
    return ids | set(lpr4m.read_test(root, media=IdMedia()).image_paths)


# ---- LPR4M's layout as hard links ----------------------------------------------------------

def link_layout(index: ShardIndex, root: str | Path, image_ids: set[str]) -> dict:
    """Hard-link every indexed files-format member to LPR4M's layout under `root`:
    `images/{id}.jpg` for the ids in `image_ids` and ids without a `-NNNN` suffix, else
    `frames/{clip_id}/{frame_id}.jpg`. An existing file is left as it is (and counted)."""
    root = Path(root)
    tars = [s["path"] for s in index.shards if s["kind"] != "files"]
    if tars:
        raise ShardError(tars[0], None, "hard links need files-format shards (img2dataset --output_format files); "
                         "this is a webdataset tar: read it through the index instead")
    made = kept = 0
    for row in range(len(index)):
        item = index.id_at(row)
        frame = item not in image_ids and SUFFIX.match(item) is not None
        dest = root / "frames" / item.rsplit("-", 1)[0] / f"{item}.jpg" if frame else root / "images" / f"{item}.jpg"
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(index.member_path(row), dest)
            made += 1
        except FileExistsError:
            kept += 1
        except OSError as err:
            raise ShardError(index.member_path(row), None, f"cannot hard-link it to {dest} ({err.strerror}; "
                             "hard links need the shards and the root on one filesystem)") from None
    return {"root": str(root), "linked": made, "existing_kept": kept}
