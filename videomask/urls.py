"""Where shards live: a local path, ``pipe:CMD``, ``http(s)://``, or any fsspec URL (``s3://``, ``gs://``, ``az://``).

Every reader of shards opens them here (``open_read``), so a folder in a bucket works wherever a local folder does:

    videomask check s3://bucket/shards                     # its manifest.json, or every *.tar under it
    videomask check 'https://host/shards/train-{000000..000009}.tar'
    videomask check 'pipe:aws s3 cp s3://bucket/shards/train-000000.tar -'
    videomask check 'pipe:aws s3 cp s3://bucket/shards/{} -'   # a folder through a command: {} is each file's name

A shard is streamed front to back, never downloaded whole first: ``pipe:`` reads the command's stdout (an exit
status other than 0 is a shard that broke off, as with webdataset), ``http(s)://`` one GET (``urllib``: the proxy
variables apply), fsspec URLs through their file system with read-ahead. fsspec's own packages are an extra
(``pip install 'videomask[cloud]'``: ``fsspec`` and ``s3fs``; ``gcsfs`` or ``adlfs`` for ``gs://`` or ``az://``).
Credentials come the way each tool takes them (``AWS_*`` variables and profiles, ``AWS_ENDPOINT_URL`` for an
S3-compatible server, ``FSSPEC_S3_*`` settings, gcloud's default credentials); ``redact`` keeps them and signed
query strings out of messages.
"""
from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path

from .errors import DataError, MissingError

SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
BUFFER = 1 << 20  # bytes read ahead from a stream: a tar member header is 512, a frame tens of kilobytes


def is_url(where) -> bool:
    """Whether ``where`` names a stream rather than a local path (``file://`` is a local path)."""
    return isinstance(where, str) and (where.startswith("pipe:") or bool(SCHEME.match(where))) \
        and not where.startswith("file://")


def location(where):
    """A command-line argument naming shards: the URL as given, or a local ``Path`` (argparse's ``type``)."""
    return where if is_url(where) else Path(where)


def names_shards(url: str) -> bool:
    """Whether the URL names shards (one ``.tar``, ``.tar.gz`` or ``.tgz``, a signed URL's query string aside; a
    brace pattern; a ``pipe:`` command) rather than a folder (``s3://bucket/shards``, or ``pipe:CMD {}``: a folder
    reached through a command, ``{}`` standing for each file's name)."""
    if url.startswith("pipe:"):
        return "{}" not in url
    return "{" in url or url.split("?", 1)[0].endswith((".tar", ".tar.gz", ".tgz"))


def local(where) -> Path:
    """A local path from a path or a ``file://`` URL."""
    where = str(where)
    return Path(where[len("file://"):] if where.startswith("file://") else where)


def join(base: str, name: str) -> str:
    """``base/name`` for a URL folder (``name`` relative, checked by ``inside``)."""
    if base.startswith("pipe:"):
        if "{}" not in base:
            raise DataError(f"{base}: a pipe: command is one shard, not a folder (a folder through a command: "
                            "'pipe:aws s3 cp s3://bucket/shards/{} -', {} standing for each file's name)")
        return base.replace("{}", name)
    return base.rstrip("/") + "/" + name


def inside(base: str, name, listed_in) -> str:
    """``join(base, name)``, refused unless ``name`` stays under ``base``: relative, no ``..`` or empty part, no
    scheme (a manifest from elsewhere may list ``../x.tar``, ``/x.tar`` or ``s3://other/x.tar``)."""
    if not isinstance(name, str) or not name:
        raise DataError(f"{listed_in}: shard name {name!r} is not a file name")
    parts = name.split("/")
    if name.startswith("/") or is_url(name) or "\\" in name or any(p in ("", ".", "..") for p in parts):
        raise DataError(f"{listed_in}: shard {name!r} is not a plain name under {redact(base)}; refused")
    return join(base, name)


def redact(url) -> str:
    """``url`` for a message: no password (``user:secret@``) and no query string (a signed URL's signature)."""
    url = str(url)
    if url.startswith("pipe:") or not SCHEME.match(url):
        return url
    url = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1", url)
    return url.split("?", 1)[0] + ("?..." if "?" in url else "")


def _fsspec(url: str):
    try:
        import fsspec
    except ImportError:
        raise MissingError(f"{redact(url)}: reading {url.split('://')[0]}:// URLs needs fsspec "
                           "(pip install 'videomask[cloud]')") from None
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:  # the protocol's own package (s3fs, gcsfs, adlfs) is missing, or unknown
        raise MissingError(f"{redact(url)}: {e}") from None


def _http(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def open_read(where):
    """A buffered binary stream of the shard at ``where`` (it has ``peek``), to be closed (a ``with`` block)."""
    if not is_url(where):
        return open(local(where), "rb")
    if where.startswith("pipe:"):
        return Pipe(where[len("pipe:"):])
    if _http(where):
        import urllib.request

        return io.BufferedReader(urllib.request.urlopen(where, timeout=60), BUFFER)
    fs, path = _fsspec(where)
    return io.BufferedReader(fs.open(path, "rb", block_size=8 * BUFFER, cache_type="readahead"), BUFFER)


def read_text(where, missing_ok: bool = False) -> str | None:
    """The whole (small) file at ``where`` as UTF-8: a manifest. ``missing_ok``: None when there is none."""
    if not is_url(where):
        p = local(where)
        if missing_ok and not p.is_file():
            return None
        return p.read_text()
    try:
        with open_read(where) as f:
            return f.read().decode("utf-8")
    except FileNotFoundError:
        if missing_ok:
            return None
        raise MissingError(f"{redact(where)}: not found") from None
    except OSError as e:
        code = getattr(e, "code", None)  # urllib's HTTPError
        if missing_ok and code in (403, 404):  # object stores answer 403 for a missing key without list rights
            return None
        raise MissingError(f"{redact(where)}: cannot be read ({type(e).__name__}: {e})") from None


def list_tars(base: str, pattern: str) -> list[str]:
    """The shards matching ``pattern`` (``train-*.tar``) directly under the URL folder ``base``, sorted."""
    if _http(base) or base.startswith("pipe:"):
        raise MissingError(f"{redact(base)}: no manifest.json there, and a server or command cannot list a folder: give "
                           "the shards as a brace pattern (https://host/shards/train-{000000..000009}.tar) or put "
                           "the build's manifest.json beside them")
    fs, path = _fsspec(base)
    protocol = base.split("://", 1)[0]
    return sorted(f"{protocol}://{p}" for p in fs.glob(path.rstrip("/") + "/" + pattern))


class CommandFailed(OSError):
    """A ``pipe:`` command that exited with a status other than 0 after its output was read to the end."""


class Pipe(io.BufferedReader):
    """The stdout of ``cmd`` (a shell command, as webdataset's ``pipe:``). Closed after the whole stream was read,
    an exit status other than 0 raises ``OSError`` (the shard broke off); closed early, the command is stopped."""

    def __init__(self, cmd: str):
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, shell=True, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, bufsize=0)
        super().__init__(self.proc.stdout, BUFFER)

    def __exit__(self, kind, value, tb):
        if kind is None:  # read to the end of the tar: drain what follows it (padding) so the command can exit
            while self.read(BUFFER):
                pass
        else:
            self.proc.kill()
        super().close()
        status = self.proc.wait()
        if kind is None and status != 0:
            raise CommandFailed(f"pipe:{self.cmd} exited with status {status}")
        return False


# -- writing an output folder to a bucket ------------------------------------------------------------------------
def staging(url: str) -> Path:
    """The local folder where a job whose OUT is ``url`` works (``VIDEOMASK_STAGING``, default
    ``~/.cache/videomask/staging``, then one folder per URL): the same on every rerun, so a rerun after a crash
    resumes there, with the local folder's lock, journals and atomic renames, which an object store has not."""
    import hashlib
    import os

    root = Path(os.environ.get("VIDEOMASK_STAGING") or Path.home() / ".cache" / "videomask" / "staging")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", redact(url).split("://", 1)[-1])[-60:]
    return root / f"{hashlib.sha1(url.encode()).hexdigest()[:12]}-{slug}"


def publish(folder: Path, url: str, manifest: dict) -> int:
    """Upload a finished output ``folder`` to the fsspec URL ``url``: each shard of ``manifest`` as one object
    (an object store makes an object visible only when its upload is complete: a killed upload leaves none), then
    ``errors.jsonl``, then ``manifest.json`` last, so that a reader that finds a manifest finds every shard it
    lists. Objects already there with the same size are not sent again (a rerun after a crash). Returns the bytes
    sent."""
    if url.startswith("pipe:") or _http(url):
        raise DataError(f"{redact(url)}: an output folder must be local or an fsspec URL (s3://, gs://, az://)")
    fs, root = _fsspec(url)
    root = root.rstrip("/")
    sent = 0
    names = [s["name"] for s in manifest["shards"]] + [n for n in ("errors.jsonl",) if (folder / n).exists()]
    for name in names + ["manifest.json"]:
        local_file, remote = folder / name, f"{root}/{name}"
        size = local_file.stat().st_size
        if name != "manifest.json" and name != "errors.jsonl" and fs.exists(remote) and \
                fs.info(remote).get("size") == size:
            continue
        fs.put_file(str(local_file), remote)
        sent += size
    return sent


def remote_out(out) -> tuple[Path, str | None]:
    """``(the local folder to write, the URL to publish it to or None)`` for a command's OUT argument."""
    if not is_url(str(out)):
        return Path(out), None
    url = str(out)
    if url.startswith("pipe:") or _http(url):
        raise DataError(f"{redact(url)}: an output folder must be local or an fsspec URL (s3://, gs://, az://)")
    _fsspec(url)  # the file system's package is there before any work starts
    return staging(url), url
