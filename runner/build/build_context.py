"""The build context: which files of a directory go to Cloud Build, and the tarball that carries them.

Selection follows `.gcloudignore` the way `gcloud builds submit` applies it (gcloud's
command_lib/util/gcloudignore.py and glob.py), so a project's ignore file means the same thing
here as it does to gcloud:

* ``#`` starts a comment; ``#!include:FILE`` inserts FILE's rules at that point (FILE is a name in
  the ignore file's own directory; ``#!include`` lines inside an included file are not followed).
  Blank lines are skipped; unescaped trailing spaces are stripped; ``\\`` escapes the next
  character (``\\#``, ``\\!``, ``\\ ``).
* ``!pattern`` re-includes; the last pattern that matches an entry decides.
* A trailing ``/`` matches directories only. A leading ``/`` anchors the pattern at the root.
* Without a leading ``/`` or a ``**``, a pattern is matched against the *end* of the path, so
  ``foo`` and ``foo/bar`` both match at any depth (gcloud; git would anchor ``foo/bar``). A
  pattern whose first component is a lone ``*`` matches one component there (``*`` alone: top-level
  entries only; ``*/x``: ``x`` or ``d/x``, also gcloud's rule).
* ``*``, ``?`` and ``[...]`` (``!`` or ``^`` negates) match within one path component; ``**`` as a
  whole component matches any number of them and anchors the pattern: ``**/x`` is ``x`` at any
  depth, ``a/**/b`` is ``a/b``, ``a/x/b``, ...; ``a/**`` matches ``a`` itself and everything under it,
  so ``!a/keep`` cannot bring a file back after ``a/**`` (use ``a/*``).
* Nothing inside an excluded directory can be re-included: the walk never enters it.

Where gcloud's implementation has an evident slip this module does what gcloud intends instead:
``\\*``, ``\\?`` and ``\\[`` are literal characters (gcloud unescapes them into wildcards);
``foo/ `` with a trailing space is ``foo/`` (gcloud matches nothing); a leading lone ``*`` never
matches below the top level (gcloud lets it when the parent's name is one character long).
Symlinks are kept as symlinks and never followed, so a link to a directory is matched as a file
(current gcloud follows links and uploads their targets).

With no ignore file, gcloud's default applies: if the directory has ``.git`` or ``.gitignore``,
ignore ``.gcloudignore``, ``.git`` and ``.gitignore`` and include the rules of ``.gitignore``;
otherwise upload everything.

The tarball is reproducible: entries sorted, mtime 0, uid/gid 0, no owner names, modes normalised
the way git sees them (0o755 if any execute bit else 0o644; directories 0o755; links 0o777) and
a gzip header without a name or time, so the same tree always gives the same sha256.
"""

from __future__ import annotations

import os
import re
import stat
from collections import namedtuple
from collections.abc import Iterable, Sequence

IGNORE_FILE_NAME = ".gcloudignore"
GIT_FILES = (".git", ".gitignore")
DEFAULT_IGNORE_TEXT = ".gcloudignore\n.git\n.gitignore\n"
INCLUDE_DIRECTIVE = "!include:"

_FLAGS = re.DOTALL  # file names may hold newlines


class IgnoreFileError(ValueError):
    """An ignore file that cannot be used: missing, unreadable, or a bad ``#!include``."""


# ---- patterns ------------------------------------------------------------------------------


class _Part(namedtuple("_Part", "rx globstar lone_star empty_ok", defaults=(False, False, False))):
    """One '/'-separated component of a pattern, compiled: `rx` matches one (non-empty) path
    component ('' for the empty component); `globstar`: it is exactly '**'; `lone_star`: exactly
    '*'; `empty_ok`: gcloud lets it stand for "nothing" above the root ('', '*', '***')."""

    __slots__ = ()


_ANCHOR = _Part("", empty_ok=True)


def _tokens(text: str) -> list[tuple[str, bool]] | None:
    """(character, escaped) pairs; None when the line ends in an unpaired backslash."""
    out: list[tuple[str, bool]] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i + 1 == len(text):
                return None
            out.append((text[i + 1], True))
            i += 2
        else:
            out.append((c, False))
            i += 1
    return out


def _class(toks: list[tuple[str, bool]], i: int) -> tuple[str, int] | None:
    """A `[...]` class starting at toks[i] == '['; (regex, index after ']') or None if unclosed."""
    j = i + 1
    negate = False
    if j < len(toks) and toks[j] in (("!", False), ("^", False)):
        negate = True
        j += 1
    members: list[tuple[str, bool]] = []
    while j < len(toks):
        c, esc = toks[j]
        if c == "]" and not esc and members:
            break
        members.append((c, esc))
        j += 1
    else:
        return None
    body = []
    for k, (c, esc) in enumerate(members):
        if c == "-" and not esc and 0 < k < len(members) - 1:
            body.append("-")
        else:
            body.append(re.escape(c))
    return "[" + ("^" if negate else "") + "".join(body) + "]", j + 1


def _part(toks: list[tuple[str, bool]]) -> _Part:
    if not toks:
        return _ANCHOR
    if all(t == ("*", False) for t in toks):
        return _Part("[^/]+", globstar=len(toks) == 2, lone_star=len(toks) == 1, empty_ok=True)
    rx: list[str] = []
    i = 0
    while i < len(toks):
        c, esc = toks[i]
        if not esc and c == "*":
            rx.append("[^/]*")
        elif not esc and c == "?":
            rx.append("[^/]")
        elif not esc and c == "[" and (cls := _class(toks, i)) is not None:
            rx.append(cls[0])
            i = cls[1]
            continue
        else:
            rx.append(re.escape(c))
        i += 1
    return _Part("".join(rx))


def _join(parts: Sequence[_Part]) -> str:
    return "/".join(p.rx for p in parts)


def _anchored(parts: Sequence[_Part]) -> tuple[str, bool]:
    """Regex for the root-anchored pattern `parts` (parts[0] is the anchor), and whether it matches
    the empty path. A '**' lets everything before it match any leading run of components."""
    k = max((i for i, p in enumerate(parts) if p.globstar), default=None)
    if k is None:
        return _join(parts[1:]), len(parts) == 1
    head, head_empty = _anchored(parts[:k])
    tail = _join(parts[k + 1:])
    if head_empty:  # every path has the empty prefix: anything may precede the tail
        return ("(?:.*/)?" + tail if tail else ".*"), not tail
    lead = f"(?:{head})(?:/.*)?"
    return (f"{lead}/{tail}" if tail else lead), False


def _compile(parts: list[_Part]) -> str:
    if any(p.globstar for p in parts):
        return _anchored(parts if parts[0] is _ANCHOR else [_ANCHOR, *parts])[0]
    if parts[0] is _ANCHOR:
        return _join(parts[1:])
    first, rest = parts[0], parts[1:]
    alts = [_join(parts) if first.lone_star else "(?:.*/)?" + _join(parts)]
    if first.empty_ok and rest:  # gcloud: '*/x' also matches a top-level 'x'
        alts.append(_join(rest))
    return "|".join(f"(?:{a})" for a in alts)


class Rule(namedtuple("Rule", "text negated dir_only regex origin", defaults=("",))):
    """One pattern line: the `text` as written, whether it is a `negated` (!) and a `dir_only`
    (trailing /) pattern, the compiled `regex` for a whole relative path, and its `origin`
    ("file:line") for messages."""

    __slots__ = ()

    def matches(self, path: str, is_dir: bool = False) -> bool:
        if self.dir_only and not is_dir:
            return False
        return self.regex.fullmatch(path) is not None

    @classmethod
    def parse(cls, line: str, origin: str = "") -> Rule | None:
        """The rule for one line, or None for a comment, a blank or an invalid line."""
        if line.startswith("#"):
            return None
        negated = line.startswith("!")
        toks = _tokens(line[1:] if negated else line)
        if toks is None:  # ends in an odd number of backslashes: gcloud skips the line
            return None
        while toks and toks[-1] == (" ", False):
            toks.pop()
        dir_only = bool(toks) and toks[-1] == ("/", False)
        if dir_only:
            toks.pop()
        if not toks:
            return None
        parts: list[list[tuple[str, bool]]] = [[]]
        for c, esc in toks:
            if c == "/":
                parts.append([])
            else:
                parts[-1].append((c, esc))
        rx = _compile([_part(p) for p in parts])
        return cls(line, negated, dir_only, re.compile(rx, _FLAGS), origin)


# ---- rule sets -----------------------------------------------------------------------------


class IgnoreRules:
    """An ordered list of rules: the last one matching an entry decides whether it is ignored."""

    def __init__(self, rules: Iterable[Rule] = (), source: str = "none") -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.source = source
        self._reversed = self.rules[::-1]

    def __repr__(self) -> str:
        return f"IgnoreRules({len(self.rules)} rules from {self.source})"

    @classmethod
    def from_text(cls, text: str, base_dir: str | os.PathLike[str] | None = None,
                  source: str = "<text>", _follow_includes: bool = True) -> IgnoreRules:
        rules: list[Rule] = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.startswith("#"):
                directive = line[1:].lstrip()
                if directive.startswith(INCLUDE_DIRECTIVE):
                    rules.extend(cls._included(directive[len(INCLUDE_DIRECTIVE):].strip(),
                                               base_dir, f"{source}:{n}", _follow_includes))
                continue
            rule = Rule.parse(line, f"{source}:{n}")
            if rule is not None:
                rules.append(rule)
        return cls(rules, source)

    @classmethod
    def _included(cls, name: str, base_dir: str | os.PathLike[str] | None, where: str,
                  follow: bool) -> tuple[Rule, ...]:
        if "/" in name or not name:
            raise IgnoreFileError(f"{where}: #!include may only name a file in the same "
                                  f"directory, not {name!r}")
        if not follow:  # gcloud does not follow includes inside an included file
            return ()
        if base_dir is None:
            raise IgnoreFileError(f"{where}: #!include:{name} needs a base directory")
        path = os.path.join(base_dir, name)
        if not os.path.isfile(path):
            raise IgnoreFileError(f"{where}: included file {path} does not exist")
        return cls.from_file(path, _follow_includes=False).rules

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], _follow_includes: bool = True) -> IgnoreRules:
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
                text = f.read()
        except OSError as e:
            raise IgnoreFileError(f"cannot read ignore file {path}: {e}") from e
        return cls.from_text(text, os.path.dirname(path), path, _follow_includes)

    @classmethod
    def from_dir(cls, context_dir: str | os.PathLike[str],
                 ignore_file: str = IGNORE_FILE_NAME) -> IgnoreRules:
        """The rules gcloud would use to upload `context_dir`.

        `ignore_file` (relative to `context_dir`) is used if it exists. A custom name that does
        not exist is an error; a missing `.gcloudignore` falls back to gcloud's default.
        """
        context_dir = os.fspath(context_dir)
        path = os.path.join(context_dir, ignore_file)
        if os.path.isfile(path):
            return cls.from_file(path)
        if ignore_file != IGNORE_FILE_NAME:
            raise IgnoreFileError(f"ignore file {path} does not exist")
        if not any(os.path.exists(os.path.join(context_dir, n)) for n in GIT_FILES):
            return cls((), "none (no .gcloudignore and no git files: everything is uploaded)")
        text = DEFAULT_IGNORE_TEXT
        if os.path.exists(os.path.join(context_dir, ".gitignore")):
            text += "#!include:.gitignore\n"
        return cls.from_text(text, context_dir, "default .gcloudignore")

    def excludes(self, path: str, is_dir: bool = False) -> bool:
        """Whether the entry at `path` (relative, '/'-separated) is ignored by a rule of its own,
        parents aside: the last rule that matches it decides."""
        for rule in self._reversed:
            if rule.matches(path, is_dir):
                return not rule.negated
        return False

    def is_included(self, path: str, is_dir: bool = False) -> bool:
        """Whether `path` is uploaded: neither it nor any directory above it is ignored."""
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            last = i == len(parts)
            if self.excludes("/".join(parts[:i]), is_dir=is_dir or not last):
                return False
        return True


# ---- collecting and packing ----------------------------------------------------------------

FILE, DIR, SYMLINK = "file", "dir", "symlink"


class ContextFile(namedtuple("ContextFile", "path size mode kind link_target",
                             defaults=(FILE, None))):
    """One tarball entry: `path` relative and '/'-separated; `size` in bytes for files, else 0;
    `mode` the normalised permission bits written to the tarball; `kind` FILE, DIR or SYMLINK;
    `link_target` the text of a symlink, unresolved (None otherwise)."""

    __slots__ = ()


def _mode(st_mode: int) -> int:
    if stat.S_ISDIR(st_mode):
        return 0o755
    if stat.S_ISLNK(st_mode):
        return 0o777
    return 0o755 if st_mode & 0o111 else 0o644


def collect(context_dir: str | os.PathLike[str], rules: IgnoreRules | None = None) -> list[ContextFile]:
    """Every entry of `context_dir` the rules let through, sorted by path.

    Directories are listed (so empty ones survive); an excluded directory is never opened, so a
    large `.venv` costs one rule check and an unreadable excluded one is no error. Symlinks are
    kept, not followed; sockets, fifos and devices are skipped. An included directory that cannot
    be read raises: an upload silently missing files is worse than an error.
    """
    root = os.fspath(context_dir)
    if rules is None:
        rules = IgnoreRules.from_dir(root)
    out: list[ContextFile] = []
    pending = [""]
    while pending:
        rel = pending.pop()
        with os.scandir(os.path.join(root, rel) if rel else root) as it:
            entries = list(it)
        for entry in entries:
            path = f"{rel}/{entry.name}" if rel else entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # vanished while we looked
                continue
            m = st.st_mode
            if stat.S_ISDIR(m):
                kind = DIR
            elif stat.S_ISLNK(m):
                kind = SYMLINK
            elif stat.S_ISREG(m):
                kind = FILE
            else:
                continue
            if rules.excludes(path, is_dir=kind == DIR):
                continue
            if kind == DIR:
                pending.append(path)
                out.append(ContextFile(path, 0, _mode(m), DIR))
            elif kind == SYMLINK:
                out.append(ContextFile(path, 0, _mode(m), SYMLINK, os.readlink(entry.path)))
            else:
                out.append(ContextFile(path, st.st_size, _mode(m), FILE))
    out.sort(key=lambda f: f.path)
    return out


class PackResult(namedtuple("PackResult", "path count size_bytes sha256 content_bytes",
                            defaults=(0,))):
    """A packed context: the .tgz's `path`; `count` files and symlinks in it (directories not
    counted); its `size_bytes` and `sha256` (hex); `content_bytes`, the file contents before
    compression."""

    __slots__ = ()


class _HashingWriter:
    def __init__(self, raw, digest) -> None:  # noqa: ANN001 - a binary file and a hashlib object
        self.raw, self.digest, self.size = raw, digest, 0

    def write(self, data) -> int:  # noqa: ANN001 - bytes-like
        self.digest.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def pack(context_dir: str | os.PathLike[str], files: Iterable[ContextFile],
         out_path: str | os.PathLike[str]) -> PackResult:
    """Write `files` (from `collect`) as a reproducible gzipped tarball at `out_path`.

    The file is written beside `out_path` and renamed into place, so a reader never sees half
    of one. File contents are read now; a file that shrank since `collect` is an error.
    """
    import gzip
    import hashlib
    import tarfile

    root = os.fspath(context_dir)
    out_path = os.fspath(out_path)
    entries = sorted(files, key=lambda f: f.path)
    tmp = f"{out_path}.tmp{os.getpid()}"
    digest = hashlib.sha256()
    count = content = 0
    try:
        with open(tmp, "wb") as raw:
            sink = _HashingWriter(raw, digest)
            with gzip.GzipFile(filename="", mode="wb", fileobj=sink, mtime=0, compresslevel=6) as gz, \
                    tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for f in entries:
                    info = tarfile.TarInfo(f.path)
                    info.mtime = 0
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    info.mode = f.mode
                    if f.kind == DIR:
                        info.type = tarfile.DIRTYPE
                        tar.addfile(info)
                        continue
                    count += 1
                    if f.kind == SYMLINK:
                        info.type = tarfile.SYMTYPE
                        info.linkname = f.link_target or ""
                        tar.addfile(info)
                        continue
                    with open(os.path.join(root, f.path), "rb") as fh:
                        info.size = os.fstat(fh.fileno()).st_size
                        content += info.size
                        tar.addfile(info, fh)
        os.replace(tmp, out_path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return PackResult(out_path, count, sink.size, digest.hexdigest(), content)


def _human(n: float) -> str:
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def summary(result: PackResult) -> str:
    """'42 files, 1.3 MiB': what is uploaded, and the size of the tarball that carries it."""
    return f"{result.count} file{'' if result.count == 1 else 's'}, {_human(result.size_bytes)}"
