"""Every file charlora writes goes through here: atomic, strict, and confined.

- write_text_atomic / write_json_atomic: a temp file beside the target, then a
  rename, so a crash leaves the old file or the new one, never half of one
  (write_texts_atomic: several files that belong together, all or none).
  The new file gets the permissions an ordinary `open(path, "w")` would give
  (the umask's, or the replaced file's own), not mkstemp's 0600.  Targets
  that are not regular files (a FIFO, a device) or are read-only are refused:
  renaming over them would silently replace something the user did not mean
  as an output.
- strict_json: JSON that strict parsers accept; NaN and infinities become null.
- safe_name: a speaker's or adapter's name as one file name inside a folder.
"""
from __future__ import annotations

import json
import math
import os
import stat
import tempfile
import unicodedata
from pathlib import Path
from typing import Any, Iterable, Sequence

from charlora.errors import CharloraError

# Most file systems allow 255 bytes a name; the rest is room for the suffixes
# and temp-file prefixes added around a safe_name (".<name>.yaml.XXXX.tmp").
MAX_NAME_BYTES = 120


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ordinary_modes(folder: str | Path) -> None:
    """Give every file under `folder` the mode `open(path, "w")` would (0666
    less the umask).  safetensors 0.8 writes its files 0600, so an adapter or
    merged model trained by one account could not be read by a webui running
    as another (a container's user), though every other file beside it could."""
    mode = 0o666 & ~_umask()
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)


def make_folder(folder: str | Path, hint: str = "") -> Path:
    """Create `folder` and its parents, or raise CharloraError in one line
    (`hint` appended): mkdir's own "File exists" does not say that the
    folder's path is a file.  The one mkdir for folders a user names."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CharloraError(f"cannot write to {folder}: it is a file, not a folder{hint}") from None
    except OSError as exc:
        raise CharloraError(f"cannot write to {folder}: {exc.strerror or exc}{hint}") from None
    return folder


def output_target(path: str | Path) -> Path:
    """The file a write to `path` really replaces (a symlink's target, so the
    link stays), after checking that it can be replaced.  Raises
    CharloraError naming the reason; call it for every output before writing
    any, so a refused one never leaves the others half-updated."""
    # before Path(), which turns "" into "." and drops the "/" of "out/" (that wrote a file named out)
    if str(path) == "" or str(path).endswith(("/", os.sep)) or Path(path).name in ("", ".", ".."):
        raise CharloraError(f"cannot write {str(path)!r}: it is not a file name")
    path = Path(path)
    real = Path(os.path.realpath(path))
    try:
        # the path itself, followed: /dev/stdout on a pipe resolves to a name
        # like /proc/1/fd/pipe:[5] that does not exist, so the pipe passed as a
        # new file and the write failed after the whole run
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise CharloraError(f"cannot write {path}: {exc.strerror}") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise CharloraError(f"cannot write {path}: it is a folder")
        if not stat.S_ISREG(st.st_mode):
            raise CharloraError(f"cannot write {path}: it is not a regular file (a pipe, device or socket); "
                                "choose an ordinary file name")
        if not st.st_mode & 0o222:
            raise CharloraError(f"cannot write {path}: the file is read-only; make it writable or choose another name")
    parent = real.parent
    if not parent.is_dir():
        raise CharloraError(f"cannot write {path}: folder {path.parent} does not exist")
    if not os.access(parent, os.W_OK):  # a read-only disk: found only at the write, after the whole run
        raise CharloraError(f"cannot write {path}: folder {path.parent} is read-only; choose another place")
    return real


def write_text_atomic(text: str, path: str | Path) -> None:
    """Write UTF-8 text to a temp file beside `path`, then rename it over `path`."""
    write_texts_atomic([(text, path)])


def write_texts_atomic(items: Sequence[tuple[str, str | Path]]) -> None:
    """Several files that belong together (a dataset and its .source.json):
    every temp file is written and synced before the first is renamed over
    its path, so a full disk leaves all of the old files or (barring a failed
    rename) all of the new ones, never a new dataset beside an old source."""
    staged: list[tuple[str, Path]] = []
    try:
        for text, path in items:
            staged.append(_stage(text, path))
        for tmp, real in staged:
            os.replace(tmp, real)
    except BaseException as exc:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise CharloraError(f"cannot write {real}: {exc.strerror or exc}") from None
        raise


def _stage(text: str, path: str | Path) -> tuple[str, Path]:
    """A synced temp file beside `path` holding `text`, with the mode `path` has or would get."""
    real = output_target(path)
    try:
        mode = stat.S_IMODE(real.stat().st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate that slipped through
        raise CharloraError(f"cannot write {path}: text holds an unpaired surrogate at character {exc.start}") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{real.name[:100]}.", suffix=".tmp", dir=real.parent)
    except OSError as exc:
        raise CharloraError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise CharloraError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise
    return tmp, real


def finite(obj: Any) -> Any:
    """`obj` with every NaN / infinity replaced by None (JSON null)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def strict_json(obj: Any, indent: int | None = 2) -> str:
    """JSON text every parser accepts: no NaN/Infinity tokens (they become null)."""
    return json.dumps(finite(obj), ensure_ascii=False, indent=indent, allow_nan=False)


def write_json_atomic(obj: Any, path: str | Path) -> None:
    """Strict JSON (UTF-8, indented), written atomically."""
    write_text_atomic(json_text(obj), path)


def json_text(obj: Any) -> str:
    """What write_json_atomic writes (for write_texts_atomic)."""
    return strict_json(obj) + "\n"


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when two spellings (relative, absolute, through symlinks) name one file."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_outputs(outputs: Iterable[str | Path], inputs: Iterable[str | Path] = ()) -> None:
    """Refuse, before anything is written, an output that is an input or that
    can't be replaced, and two outputs that are one file."""
    outputs, inputs = list(outputs), list(inputs)
    for i, out in enumerate(outputs):
        output_target(out)
        for source in inputs:
            if same_file(out, source):
                raise CharloraError(f"the output {out} is the input file {source}; writing it would destroy the "
                                    "input: choose another output name")
        for other in outputs[:i]:
            if same_file(out, other):
                raise CharloraError(f"two outputs are the same file: {other} and {out}")


def safe_name(name: str, fallback: str = "unnamed") -> str:
    """`name` as one file name that stays inside its folder.

    Path separators, NUL and other control characters become `_`, leading dots
    go (no `.`/`..`, no hidden files), and the result is cut to MAX_NAME_BYTES
    of UTF-8.  An empty result is `fallback`.  "../../x/pwn" -> "x_pwn"-like,
    "/abs/path" -> "abs_path"; "Sir Toby" stays "Sir Toby".
    """
    name = unicodedata.normalize("NFC", name)
    out = "".join("_" if ch in '/\\:*?"<>|' or unicodedata.category(ch)[0] == "C" else ch for ch in name)
    out = out.strip().lstrip("._ ").rstrip(". ")
    while out.encode("utf-8")[:MAX_NAME_BYTES] != out.encode("utf-8"):
        out = out.encode("utf-8")[:MAX_NAME_BYTES].decode("utf-8", "ignore").rstrip(". ")
    return out or fallback
