"""Checkpoints from elsewhere: a URL, a file inside a ``.tar`` archive at a URL, or a named teacher.

A checkpoint source is one of

- a local path (returned as it is);
- ``http(s)://HOST/PATH/FILE.pth`` — a file to download;
- ``http(s)://HOST/PATH/ARCHIVE.tar!/MEMBER`` — a file inside a tar archive (``.tar``, ``.tar.gz``, ``.tgz``);
- either of those followed by ``#sha256=HEX``: the SHA-256 of the downloaded file (the archive, for a member);
- a named teacher, ``FAMILY:NAME`` (e.g. ``cifar100:resnet32x4``): an entry of the table in
  ``rld/configs/teachers.yaml`` (:func:`named_teachers`; ``rld presets --teachers``).

:func:`resolve_checkpoint` turns a source into a local file. A download goes to
``CACHE/teachers/KEY/FILE`` (:func:`teacher_cache_dir`; ``KEY``: the start of the URL's SHA-256) and is
made once: written to a temporary file beside it (as ``torch.hub.download_url_to_file`` does, with its
progress bar, and a check of the length), checked against the given SHA-256, then renamed; an archive
member is extracted to ``KEY/members/MEMBER`` the same way. A failure (a connection that closes early
included) leaves no partial file; without a network, the error names the URL and the exact path where a
copy placed by hand is picked up.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path, PurePosixPath

import yaml

from rld.errors import UserError

MEMBER_SEPARATOR = "!/"
HASH_FRAGMENT = "#sha256="
DOWNLOAD_TIMEOUT_S = 60.0
"""Seconds a download may wait for the server (connecting, or one read)."""

_NAME = re.compile(r"^([A-Za-z0-9_]+):([A-Za-z0-9_.-]+)$")
_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
_SHOWN_MEMBERS = 5


@dataclass(frozen=True)
class NamedTeacher:
    """An entry of the table of published teachers (``rld/configs/teachers.yaml``)."""

    name: str  # FAMILY:NAME, e.g. cifar100:resnet32x4
    architecture: str  # the model name of rld's zoo
    url: str
    member: str | None  # path inside the archive at ``url``, or None for a plain file
    top1: float | None  # the top-1 (%) its publishers report
    sha256: str | None = None  # of the file at ``url``, when known

    @property
    def checkpoint(self) -> str:
        """The entry as a checkpoint source (URL, member and hash)."""
        text = self.url + (MEMBER_SEPARATOR + self.member if self.member else "")
        return text + (HASH_FRAGMENT + self.sha256 if self.sha256 else "")


@dataclass(frozen=True)
class RemoteSource:
    """A parsed URL source: ``url`` (without member or hash), ``member`` and ``sha256`` or None."""

    url: str
    member: str | None
    sha256: str | None


@cache
def named_teachers() -> dict[str, NamedTeacher]:
    """The table of published teachers: name (``FAMILY:NAME``) → :class:`NamedTeacher`."""
    data = yaml.safe_load(resources.files("rld.configs").joinpath("teachers.yaml").read_text()) or {}
    archives = data.get("archives") or {}
    out = {}
    for name, entry in (data.get("teachers") or {}).items():
        url = archives.get(entry.get("archive"), entry.get("url"))
        out[name] = NamedTeacher(
            name=name,
            architecture=entry["architecture"],
            url=url,
            member=entry.get("member"),
            top1=entry.get("top1"),
            sha256=entry.get("sha256"),
        )
    return out


def is_url(text: str) -> bool:
    return str(text).lower().startswith(("http://", "https://"))


def named_teacher(text: str) -> NamedTeacher | None:
    """The table entry ``text`` names, or None when ``text`` is not a name (a path, a URL).

    Raises:
        UserError: ``text`` looks like a name of a family of the table, but the table has no such entry.
    """
    text = str(text)
    match = _NAME.match(text)
    if not match or is_url(text) or Path(text).expanduser().exists():
        return None
    table = named_teachers()
    if text in table:
        return table[text]
    family = f"{match.group(1)}:"
    known = [name for name in table if name.startswith(family)]
    if not known:
        return None
    raise UserError(f"unknown named teacher {text!r}; known: {', '.join(known)} (rld presets --teachers)")


def is_remote(text: str | os.PathLike[str] | None) -> bool:
    """Whether ``text`` is a URL or a named teacher rather than a local path."""
    if not text:
        return False
    text = str(text)
    return is_url(text) or named_teacher(text) is not None


def parse_source(text: str) -> RemoteSource:
    """Split ``URL[!/MEMBER][#sha256=HEX]`` into its parts.

    Raises:
        UserError: the hash is not 64 hexadecimal digits, or the member is empty or leaves its archive.
    """
    url, sha = text, None
    if HASH_FRAGMENT in url:
        url, sha = url.rsplit(HASH_FRAGMENT, 1)
        if not _HEX.match(sha):
            raise UserError(f"{HASH_FRAGMENT}… of {text!r} must be 64 hexadecimal digits, got {sha!r}")
        sha = sha.lower()
    member = None
    if MEMBER_SEPARATOR in url:
        url, member = url.split(MEMBER_SEPARATOR, 1)
        parts = PurePosixPath(member).parts
        if not member or member.startswith("/") or ".." in parts:
            raise UserError(f"archive member {member!r} of {text!r} must be a relative path inside the archive")
    return RemoteSource(url, member, sha)


def teacher_cache_dir() -> Path:
    """``$RLD_CACHE/teachers``, else ``$XDG_CACHE_HOME/rld/teachers``, else ``~/.cache/rld/teachers``."""
    if os.environ.get("RLD_CACHE"):
        return Path(os.environ["RLD_CACHE"]).expanduser() / "teachers"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rld" / "teachers"


def download_path(url: str, cache_dir: Path | None = None) -> Path:
    """Where the file at ``url`` is kept (and where to place it by hand when offline)."""
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name or "download"
    return (cache_dir or teacher_cache_dir()) / key / name


def resolve_checkpoint(text: str | os.PathLike[str], *, cache_dir: Path | None = None, progress: bool = True) -> Path:
    """The local file of a checkpoint source (see the module docstring): a local path as given; a URL,
    archive member or named teacher downloaded (once) into ``cache_dir`` (default :func:`teacher_cache_dir`).

    Raises:
        UserError: the download failed (the message names the URL and the path to place the file at by
            hand), the SHA-256 differs (the file is removed), the archive has no such member (a few of
            its members are named), or the file is not an archive.
    """
    entry = named_teacher(str(text))
    if entry is not None:
        text = entry.checkpoint
    elif not is_url(str(text)):
        return Path(text).expanduser()
    source = parse_source(str(text))
    archive = download_path(source.url, cache_dir)
    target = archive if source.member is None else archive.parent / "members" / source.member
    if source.member is not None and target.is_file():
        return target
    with _locked(archive.parent):  # processes of one run (torchrun) download it once, one at a time
        if source.member is not None and target.is_file():
            return target  # extracted while this process waited
        if not archive.is_file():
            _download(source.url, archive, source.sha256, progress)
        elif source.sha256:
            _check_sha256(archive, source.sha256, source.url)
        if source.member is not None:
            _extract(archive, source.member, target)
    return target


@contextlib.contextmanager
def _locked(folder: Path):
    """Hold an exclusive lock on ``folder`` (created if missing; the lock is on the folder itself, so
    no lock file is left behind)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # (releases the lock)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_sha256(path: Path, expected: str, url: str) -> None:
    actual = _sha256(path)
    if actual != expected:
        path.unlink(missing_ok=True)
        raise UserError(
            f"the SHA-256 of {url} is {actual}, not the expected {expected}; the file was removed "
            "(check the #sha256= value, or the URL)"
        )


def _reason(err: BaseException) -> str:
    reason = getattr(err, "reason", None) or getattr(err, "strerror", None) or str(err) or type(err).__name__
    if isinstance(err, urllib.error.HTTPError):
        reason = f"HTTP {err.code} {err.reason}"
    return " ".join(str(reason).split())[:200]


def _fetch(url: str, out, progress: bool) -> None:
    """Write the body at ``url`` to the open file ``out``, with torch.hub's progress bar.

    As ``torch.hub.download_url_to_file`` reads, but a body shorter than its Content-Length (a
    connection that closed early, which that function takes for the end of the file) is an error."""
    from torch.hub import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": "rld"})
    with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        done = 0
        with tqdm(total=total, disable=not progress, unit="B", unit_scale=True, unit_divisor=1024) as bar:
            while block := response.read(1 << 20):
                out.write(block)
                done += len(block)
                bar.update(len(block))
    if total is not None and done != total:
        raise OSError(f"the connection closed after {done:,} of {total:,} bytes")


def _download(url: str, dst: Path, sha256: str | None, progress: bool) -> None:
    """Download ``url`` to ``dst`` through a temporary file beside it; check ``sha256``; rename."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as out:
                _fetch(url, out, progress)
        except (OSError, ValueError, http.client.HTTPException) as err:  # URLError / HTTPError / timeouts: OSErrors
            reason = _reason(err)
            raise UserError(f"cannot download {url} ({reason}); download it by hand to {dst} and run again") from err
        if sha256:
            _check_sha256(tmp, sha256, url)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _members(tar: tarfile.TarFile) -> list[str]:
    names = [m.name for m in tar.getmembers() if m.isfile()]
    return sorted(names, key=lambda n: (not n.endswith((".pth", ".pt")), n))


def _extract(archive: Path, member: str, target: Path) -> None:
    """Copy ``member`` of the tar ``archive`` to ``target`` through a temporary file beside it."""
    try:
        tar = tarfile.open(archive)
    except (tarfile.TarError, OSError) as err:
        raise UserError(
            f"{archive} is not a tar archive ({_reason(err)}), so it has no member {member!r}; "
            f"drop the {MEMBER_SEPARATOR}{member} part, or delete the file if it is damaged"
        ) from err
    with tar:
        found = None
        for name in (member, f"./{member}"):
            try:
                found = tar.getmember(name)
                break
            except KeyError:
                continue
        if found is None or not found.isfile():
            names = _members(tar)
            shown = ", ".join(names[:_SHOWN_MEMBERS]) + (", ..." if len(names) > _SHOWN_MEMBERS else "")
            raise UserError(f"{archive.name} has no file {member!r}; it holds {len(names)} files: {shown or 'none'}")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, tar.extractfile(found) as src:
                shutil.copyfileobj(src, out, 1 << 20)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
