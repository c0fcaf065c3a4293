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


#: what a file name inside a folder reached through a command may hold: it is put into a shell command line
SAFE_NAME = re.compile(r"^[A-Za-z0-9._+-]+(?:/[A-Za-z0-9._+-]+)*$")


def join(base: str, name: str) -> str:
    """``base/name`` for a URL folder (``name`` relative, checked by ``inside``)."""
    if base.startswith("pipe:"):
        if "{}" not in base:
            raise DataError(f"{redact(base)}: a pipe: command is one shard, not a folder (a folder through a command: "
                            "'pipe:aws s3 cp s3://bucket/shards/{} -', {} standing for each file's name)")
        if not SAFE_NAME.match(name):  # never a shell word of a manifest's choosing ($(...), ;, spaces)
            raise DataError(f"{redact(base)}: file name {name!r} is not plain letters, digits and ._+-; refused in a "
                            "command line")
        return base.replace("{}", name)
    return base.rstrip("/") + "/" + name


def inside(base: str, name, listed_in) -> str:
    """``join(base, name)``, refused unless ``name`` stays under ``base``: relative, no ``..`` or empty part, no
    scheme (a manifest from elsewhere may list ``../x.tar``, ``/x.tar`` or ``s3://other/x.tar``); under a
    ``pipe:`` folder, plain characters only (it becomes part of a shell command)."""
    if not isinstance(name, str) or not name:
        raise DataError(f"{listed_in}: shard name {name!r} is not a file name")
    parts = name.split("/")
    if name.startswith("/") or is_url(name) or "\\" in name or any(p in ("", ".", "..") for p in parts) or (
            base.startswith("pipe:") and not SAFE_NAME.match(name)):
        raise DataError(f"{listed_in}: shard {name!r} is not a plain name under {redact(base)}; refused")
    return join(base, name)


_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")


def redact(url) -> str:
    """``url`` for a message: no password (``user:secret@``: everything up to the host's last ``@``) and no query
    string (a signed URL's signature); in a ``pipe:`` command, every URL it holds."""
    url = str(url)
    if url.startswith("pipe:"):
        return _URL_IN_TEXT.sub(lambda m: redact(m.group(0)), url)
    if not SCHEME.match(url):
        return url
    scheme, rest = url.split("://", 1)
    netloc, slash, path = rest.partition("/")
    host = netloc.rpartition("@")[2]
    url = f"{scheme}://{host}{slash}{path}"
    return url.split("?", 1)[0] + ("?..." if "?" in url else "")


def scrub(message: str, url) -> str:
    """``message`` (an exception's text, say) without the secrets of ``url``: its user information and query
    string, wherever they appear."""
    url = str(url)
    secrets = []
    for u in _URL_IN_TEXT.findall(url) if url.startswith("pipe:") else [url]:
        if "://" in u:
            netloc = u.split("://", 1)[1].partition("/")[0]
            if "@" in netloc:
                secrets.append(netloc.rpartition("@")[0])
            if "?" in u:
                secrets.append(u.split("?", 1)[1])
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        message = message.replace(secret, "...")
    return message


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
        return io.BufferedReader(_HTTPStream(where), BUFFER)
    fs, path = _fsspec(where)
    return io.BufferedReader(fs.open(path, "rb", block_size=8 * BUFFER, cache_type="readahead"), BUFFER)


class _HTTPStream(io.RawIOBase):
    """One streamed GET (``urllib``: the proxy variables apply; ``user:password@`` in the URL becomes basic
    authentication). A body that ends before its ``Content-Length``, or a broken chunked one, raises ``OSError``
    where it breaks, naming the URL without its secrets."""

    def __init__(self, url: str):
        import base64
        import http.client
        import urllib.error
        import urllib.request

        scheme, rest = url.split("://", 1)
        netloc, slash, path = rest.partition("/")
        user, _, host = netloc.rpartition("@")
        request = urllib.request.Request(f"{scheme}://{host}{slash}{path}")
        if user:
            from urllib.parse import unquote

            request.add_header("Authorization", "Basic " + base64.b64encode(unquote(user).encode()).decode())
        self.url, self.errors = url, (http.client.HTTPException, ValueError)
        try:
            self.response = urllib.request.urlopen(request, timeout=60)
        except urllib.error.HTTPError as e:
            kind = FileNotFoundError if e.code == 404 else PermissionError if e.code in (401, 403) else OSError
            raise kind(f"{redact(url)}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, *self.errors) as e:
            raise OSError(f"{redact(url)}: {scrub(str(getattr(e, 'reason', e)), url)}") from None
        self.left = self.response.length  # None when the server does not say (chunked)
        self.broken = ""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.broken:
            raise OSError(f"{redact(self.url)}: the response broke off ({self.broken})")
        try:
            n = self.response.readinto(b)
        except self.errors as e:  # IncompleteRead of a broken chunked body: its bytes first, the error next time
            partial = getattr(e, "partial", b"")[: len(b)]
            self.broken = type(e).__name__
            if not partial:
                raise OSError(f"{redact(self.url)}: the response broke off ({self.broken})") from None
            b[: len(partial)] = partial
            return len(partial)
        if self.left is not None:
            self.left -= n
            if n == 0 and len(b) and self.left > 0:
                raise OSError(f"{redact(self.url)}: the response ended {self.left:,} bytes before its Content-Length")
        return n

    def close(self):
        if not self.closed and hasattr(self, "response"):
            self.response.close()
        super().close()


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
    except PermissionError as e:  # an object store answers 403 for a missing key without list rights: not for HTTP
        if missing_ok and not _http(where):
            return None
        raise MissingError(f"{redact(where)}: access refused ({scrub(str(e), where)})") from None
    except OSError as e:
        raise MissingError(f"{redact(where)}: cannot be read ({type(e).__name__}: {scrub(str(e), where)})") from None


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
        self.cmd = cmd  # its own process group: stopping it stops every process of a pipeline (a | b)
        self.proc = subprocess.Popen(cmd, shell=True, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, bufsize=0,
                                     start_new_session=True)
        super().__init__(self.proc.stdout, BUFFER)

    def __exit__(self, kind, value, tb):
        import os
        import signal

        if kind is None:  # read to the end of the tar: drain what follows it (padding) so the command can exit
            while self.read(BUFFER):
                pass
        else:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        super().close()
        status = self.proc.wait()
        if kind is None and status != 0:
            raise CommandFailed(f"{redact('pipe:' + self.cmd)} exited with status {status}")
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
    """Upload a finished output ``folder`` to the fsspec URL ``url``. First the ``manifest.json`` already there (an
    earlier output) is removed, so that no reader trusts it while shards change; then each shard of ``manifest``
    as one object (an object store makes an object visible only when its upload is complete: a killed upload
    leaves none), then ``errors.jsonl``, then the new ``manifest.json`` last: a reader that finds a manifest finds
    every shard it lists. A shard is not sent again when ``folder/.published.json`` records it as uploaded with the
    same sha256 and the object has its size (a rerun after a crash). Returns the bytes sent."""
    import json

    if url.startswith("pipe:") or _http(url):
        raise DataError(f"{redact(url)}: an output folder must be local or an fsspec URL (s3://, gs://, az://)")
    fs, root = _fsspec(url)
    root = root.rstrip("/")
    record = folder / ".published.json"
    try:
        done = json.loads(record.read_text()) if record.exists() else {}
        done = done if done.get("url") == redact(url) else {}
    except ValueError:
        done = {}
    done = {"url": redact(url), "shards": done.get("shards", {})}
    if fs.exists(f"{root}/manifest.json"):
        fs.rm(f"{root}/manifest.json")
    sent = 0
    for s in manifest["shards"]:
        local_file, remote = folder / s["name"], f"{root}/{s['name']}"
        if done["shards"].get(s["name"]) == s["sha256"] and fs.exists(remote) and \
                fs.info(remote).get("size") == local_file.stat().st_size:
            continue
        fs.put_file(str(local_file), remote)
        sent += local_file.stat().st_size
        done["shards"][s["name"]] = s["sha256"]
        record.write_text(json.dumps(done))
    for name in [n for n in ("errors.jsonl",) if (folder / n).exists()] + ["manifest.json"]:
        fs.put_file(str(folder / name), f"{root}/{name}")
        sent += (folder / name).stat().st_size
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
