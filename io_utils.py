"""Shared file helpers: the user-facing error type, atomic writes, text-file discovery and
streaming UTF-8 reading that counts undecodable bytes instead of crashing on them."""
import bz2
import codecs
import contextlib
import errno
import glob
import gzip
import hashlib
import io
import json
import logging
import lzma
import os
import shutil
import signal
import socket
import sys
import tempfile

from tqdm import tqdm

logger = logging.getLogger("span_electra")

TEXT_SUFFIXES = (".txt", ".tokens", ".raw")
UTF8_BOM = b"\xef\xbb\xbf"
# the file that makes a folder a stage's out_dir, and what it then holds
OUTPUT_MARKERS = {"meta.json": "features", "tokenizer.json": "a tokenizer", "se_tokenizer.json": "a tokenizer",
                  "config.json": "a model", "run.json": "a training run"}
VOCABULARY_TEXT_FILES = ("vocab.txt", "merges.txt")  # a tokenizer's files that a corpus search would take for text
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")  # streamed as they are read, never unpacked to disk
_UMASK = os.umask(0)
os.umask(_UMASK)


class SpanElectraError(Exception):
    """A problem with the user's input or config: reported as one line, without a traceback. every_rank: every
    process of a torchrun run meets it alike (a setting, the out_dir's verdict), so rank 0 alone says it."""

    def __init__(self, message, every_rank=False):
        super().__init__(message)
        self.every_rank = every_rank


def setup_logging():
    """Plain 'time level message' logging to stderr, once per process. Where logging is set up already
    (a notebook whose root logger shows warnings only), our own INFO lines still show."""
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO,
                            datefmt="%H:%M:%S")
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)


# ---------------------------------------------------------------- progress
LOG_REFRESH_SECONDS = 30  # a bar written to a log file (nohup, a batch job) refreshes this often


class LogLines:
    """A progress bar's output for a log file: each refresh on a line of its own, where tqdm's carriage
    returns would pile a whole run's refreshes (10 a second) onto one line that only a terminal reads."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        text = text.replace("\r", "").rstrip()
        if text:
            self.stream.write(text + "\n")

    def flush(self):
        self.stream.flush()


def progress_bar(stream=None, **kwargs):
    """A tqdm bar on stderr (or `stream`); where that is no terminal, a line every LOG_REFRESH_SECONDS, so a
    multi-hour build's log holds a readable history of its rate and ETA."""
    stream = stream if stream is not None else sys.stderr
    if not shows_carriage_returns(stream):
        kwargs.setdefault("mininterval", LOG_REFRESH_SECONDS)
        kwargs.setdefault("maxinterval", LOG_REFRESH_SECONDS)  # tqdm's monitor would refresh every 10 s
        stream = LogLines(stream)
    return tqdm(file=stream, **kwargs)


def shows_carriage_returns(stream):
    """A terminal, or a notebook's output (ipykernel's streams are no tty, yet redraw a line on '\\r')."""
    return (hasattr(stream, "isatty") and stream.isatty()) or type(stream).__module__.startswith("ipykernel")


# ---------------------------------------------------------------- worker processes
def available_cores():
    """CPU cores this process may run on: its affinity (taskset, a container's cpuset), not the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@contextlib.contextmanager
def ctrl_c_held_back(start_method):
    """Ctrl-C (SIGINT) blocked while worker processes start by start_method, so that spawned ones start
    with it blocked for good: a spawned worker (DataLoader workers on macOS and Windows; the segmenting
    pool everywhere) spends seconds importing torch or pyvi, and a Ctrl-C then ended it in a traceback of
    its own beside the run's one line. The main process gets a Ctrl-C pressed meanwhile as soon as they
    have started (blocked, not ignored: it waits), and stops the run and its workers. Forked workers start
    at once, and forkserver's inherit the server's mask, which must stay its own."""
    if start_method != "spawn" or not hasattr(signal, "pthread_sigmask"):  # Windows has no masks
        yield
        return
    # multiprocessing starts its resource tracker with the first worker and then unblocks SIGINT, whatever the
    # mask was: started first, it leaves the mask alone
    from multiprocessing import resource_tracker
    resource_tracker.ensure_running()
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def ignore_ctrl_c():
    """A worker's initializer: Ctrl-C is left to the main process, which stops the workers (a worker that
    died of it would leave its pool waiting for its job, or print a traceback of its own while idle).
    Started under ctrl_c_held_back, a Ctrl-C pressed while it started is dropped here, pending."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ---------------------------------------------------------------- atomic writes
def atomic_write_text(path, text):
    """Write text to path via a temporary file and a rename, so a crash never leaves half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(path, obj):
    text = json.dumps(obj, indent=2, ensure_ascii=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a path with bytes that are not UTF-8: \u escapes read back as the same name
            text = json.dumps(obj, indent=2)
    atomic_write_text(path, text + "\n")


def read_json(path, fix="restore it, or build it again", field=None, keys=(), ours=True, kind=dict):
    """A JSON file's content, a `kind` (an object unless told). An unreadable or damaged one (a write cut short,
    a bad edit), one of another kind, or one that lacks any of `keys`, is a one-line error naming the file (and
    the field it came through) and the fix; ours=False: a file the user wrote (a --config) is called invalid,
    not damaged."""
    where = f"{field}: '{path}'" if field else f"'{path}'"
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except OSError as e:
        raise SpanElectraError(f"{where} cannot be read ({e.strerror}); {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        what = f"valid JSON ({e.msg}, line {e.lineno})" if isinstance(e, json.JSONDecodeError) else "UTF-8 text"
        raise SpanElectraError(f"{where} is {'damaged: ' if ours else ''}not {what}; {fix}") from None
    if not isinstance(value, kind):
        what = {dict: "a JSON object ({...})", list: "a JSON list ([...])"}.get(kind, kind.__name__)
        raise SpanElectraError(f"{where} is {'damaged: ' if ours else ''}not {what}; {fix}")
    missing = [k for k in keys if k not in value]
    if missing:
        raise SpanElectraError(f"{where} is damaged (no {', '.join(missing)}); {fix}")
    return value


def list_checkpoints(out_dir):
    """A training out_dir's checkpoints, oldest first (out_dir taken as a name, even with '[' or '*' in it)."""
    return sorted(glob.glob(os.path.join(glob.escape(out_dir), "checkpoint-*.pt")))


def lies_within(path, folders):
    """The first of `folders` that is `path` or holds it (links resolved), else None."""
    path = os.path.realpath(path)
    return next((f for f in folders if path == os.path.realpath(f) or path.startswith(os.path.realpath(f) + os.sep)),
                None)


def first_line(error):
    """An exception's first line of text (its type's name when it has none), for a one-line message."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def check_utf8_name(path, field):
    """A path whose name holds bytes that are not UTF-8 is refused in one line: the tokenizers library
    (Rust) reads and writes only UTF-8 paths, and transformers' loaders go through it."""
    try:
        os.fsdecode(path).encode("utf-8")
    except UnicodeEncodeError:
        raise SpanElectraError(f"{field}: '{path}' is not a UTF-8 name (the tokenizers library cannot read or write "
                               "there); rename the folder or choose another") from None
    return path


def make_out_dir(path, field="out_dir"):
    """Create an output folder (and parents), turning permission problems into one-line errors."""
    check_utf8_name(path, field)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise SpanElectraError(f"{field}: cannot create '{path}' ({e.strerror}); choose a writable folder")
    if not os.access(path, os.W_OK):
        raise SpanElectraError(f"{field}: '{path}' is not writable; choose a writable folder")
    return path


STORAGE_WORDS = ("no space left", "os error 28", "disk quota", "not enough free space", "read-only file system")
WRITE_ERRORS = {errno.ENOSPC: "free some space or choose another --out_dir",
                errno.EDQUOT: "free some space or choose another --out_dir",
                errno.EROFS: "choose a writable --out_dir",
                errno.EACCES: "check the permissions of that file and its folder",
                errno.EPERM: "check the permissions of that file and its folder"}


def is_storage_error(error):
    """A failed write, whatever raised it: OSError, torch's RuntimeError, safetensors' own error."""
    return isinstance(error, OSError) or any(k in str(error).lower() for k in STORAGE_WORDS)


def write_failure_message(error, out_dir=None):
    """One line for a write that failed (full disk, quota, read-only, permissions), whichever library
    raised it and however (numpy's OSError has no errno, tokenizers' and safetensors' are plain
    Exceptions); None for any other error. out_dir: the run's output folder, named where the error
    names no file."""
    if isinstance(error, OSError) and error.errno in WRITE_ERRORS:
        return f"'{error.filename}': {error.strerror}{free_space(error.filename)}; {WRITE_ERRORS[error.errno]}"
    if any(k in str(error).lower() for k in STORAGE_WORDS):
        where = f" to '{out_dir}'" if out_dir else ""
        return (f"out_dir: cannot write{where} ({storage_reason(error, out_dir)}); free some space or choose another "
                "--out_dir")
    return None


def storage_reason(error, path=None):
    """Why a write failed, in a few words, with the free space left where it was writing (a library's
    own wording, such as torch's 'unexpected pos' or numpy's 'requested and written', never says)."""
    return (getattr(error, "strerror", None) or first_line(error)[:120]) + free_space(path)


def free_space(path):
    """'; N MB free there' for the disk holding path (or its nearest existing parent); '' if unknown."""
    if not path:
        return ""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        return f"; {shutil.disk_usage(path).free / 1e6:,.0f} MB free there"
    except OSError:
        return ""


@contextlib.contextmanager
def building_folder(directory):
    """Build a folder under a temporary name beside it (yielded); once the block ends the folder
    replaces `directory` whole, an old one removed only after the new one is complete. If the block
    fails, the partial folder goes; leftovers of a killed build are removed by the next one."""
    directory = os.path.abspath(directory)
    parent, base = os.path.dirname(directory), os.path.basename(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = new_build_dir(directory)
    try:
        yield tmp
        for root, dirs, files in os.walk(tmp):  # mkdtemp and some writers make 0600/0700 entries
            for name in files:
                os.chmod(os.path.join(root, name), 0o666 & ~_UMASK)
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o777 & ~_UMASK)
        os.chmod(tmp, 0o777 & ~_UMASK)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_storage_error(e):
            raise SpanElectraError(f"out_dir: cannot write '{directory}' ({storage_reason(e, parent)}); free some "
                                   "space or choose another --out_dir") from None
        raise
    old = None
    if os.path.lexists(directory):
        old = f"{os.path.join(parent, '.' + base)}.old-{os.getpid()}"
        os.replace(directory, old)
    os.replace(tmp, directory)
    if old:
        remove_paths([old])


def pid_alive(pid):
    """True when a process with that id runs on this machine."""
    try:
        os.kill(int(pid), 0)
    except PermissionError:  # it exists, under another user
        return True
    except (OSError, TypeError, ValueError, OverflowError):
        return False
    return True


def process_tag():
    """'HOST-PID': what names a leftover after the process that made it (see left_by_ended_process)."""
    return f"{socket.gethostname()}-{os.getpid()}"


def left_by_ended_process(tag):
    """For a leftover named after the process that made it (process_tag, or a bare PID: build folders, and
    lock files from before hosts were named): True when that process ran on this machine and has ended.
    Another host's cannot be checked from here (an out_dir on a shared file system) and may be in use, so
    it is kept; a name without a process id (older versions) always counts as ended."""
    host, _, pid = tag.rpartition("-")
    return host in ("", socket.gethostname()) and not (pid.isdigit() and pid_alive(pid))


def remove_stale_builds(directory):
    """Remove the temporary folders (.NAME.tmp-PID-*, .NAME.old-PID) that builds of `directory` killed
    before they could clean up (SIGKILL, a lost machine) left beside it: a whole corpus's features can
    sit there. A build whose process still runs keeps its own (see left_by_ended_process)."""
    for kind in ("tmp", "old"):
        for stale, tag in leftover_builds(directory, kind):
            if left_by_ended_process(tag):
                shutil.rmtree(stale, ignore_errors=True)


def leftover_builds(directory, kind):
    """(folder, process tag) of each .NAME.{kind}-* folder beside `directory`, sorted; a tmp folder's tag is its
    PID, before mkdtemp's random suffix."""
    directory = os.path.abspath(directory)
    parent, base = os.path.dirname(directory), os.path.basename(directory)
    for folder in sorted(glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(base)}.{kind}-*"))):
        tag = folder.rsplit(f".{kind}-", 1)[1]
        yield folder, tag.split("-")[0] if kind == "tmp" else tag


def own_build_dir(directory):
    """A new empty folder beside `directory` named as this process's build of it (.NAME.tmp-PID-XXXX)."""
    directory = os.path.abspath(directory)
    return tempfile.mkdtemp(dir=os.path.dirname(directory), prefix=f".{os.path.basename(directory)}.tmp-{os.getpid()}-")


def new_build_dir(directory):
    """A new temporary folder beside `directory` (.NAME.tmp-PID-XXXX) to build it in, once the ones that
    killed builds left are removed."""
    remove_stale_builds(directory)
    return own_build_dir(directory)


def adopt_stopped_build(directory, marker, accept):
    """A temporary folder a stopped build of `directory` left (.NAME.tmp-PID-* of an ended process, or of this one:
    a notebook cell stopped and run again) holding a JSON file `marker` that accept(its content) takes: renamed
    as this process's own, the other leftovers removed (this process's own too, where not taken). Returns
    (folder, content), or (None, None)."""
    for stopped, pid in leftover_builds(directory, "tmp"):
        if pid != str(os.getpid()) and not left_by_ended_process(pid):
            continue  # a build that still runs
        try:
            with open(os.path.join(stopped, marker), encoding="utf-8") as f:
                content = json.load(f)
            if not accept(content):
                if pid == str(os.getpid()):  # this process's own stopped build of other inputs or settings
                    shutil.rmtree(stopped, ignore_errors=True)
                continue
            mine = own_build_dir(directory)
            os.rmdir(mine)  # its name, for the stopped folder
            os.rename(stopped, mine)
        except (OSError, ValueError):  # no marker, a damaged one, or another build took the folder first
            continue
        remove_stale_builds(directory)
        return mine, content
    return None, None


def remove_paths(paths):
    """Delete each path that exists, file or folder."""
    for path in paths:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)


def move_files_into(src_dir, dst_dir, last=()):
    """Move every file of src_dir into dst_dir (replacing), the names in `last` at the end.

    Writers build their output in a temporary folder beside dst_dir and publish it with this, so
    the marker file readers check (e.g. tokenizer.json, meta.json) appears only once all is in place.
    """
    names = sorted(os.listdir(src_dir), key=lambda n: (n in last, last.index(n) if n in last else 0))
    for name in names:
        src, dst = os.path.join(src_dir, name), os.path.join(dst_dir, name)
        if os.path.isdir(dst) and not os.path.islink(dst):
            shutil.rmtree(dst)
        os.replace(src, dst)
    shutil.rmtree(src_dir, ignore_errors=True)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- finding text files
def _is_binary(path, field, probe_bytes=8192):
    """A file is treated as binary when its first block holds NUL bytes or is mostly not UTF-8."""
    with open(path, "rb") as raw, open_binary(path, raw) as f:
        head = _read_compressed(f.read, probe_bytes, path, field)
    if b"\x00" in head:
        return True
    text = head.decode("utf-8", errors="replace")
    return text.count("\ufffd") > max(8, len(text) // 10)


def is_text_name(name):
    """A corpus file name: .txt/.tokens/.raw, plain or compressed (corpus.txt.xz)."""
    stem = name[:-len(name.rsplit(".", 1)[-1]) - 1] if name.endswith(COMPRESSED_SUFFIXES) else name
    return stem.endswith(TEXT_SUFFIXES)


def open_binary(path, raw=None):
    """A binary stream of a file's content: decompressed for .gz, .bz2, .xz and .zst (raw: the open
    file to read from, so its position tells how far the compressed file has been read)."""
    raw = raw if raw is not None else open(path, "rb")
    if path.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw)
    if path.endswith(".bz2"):
        return bz2.BZ2File(raw)
    if path.endswith(".xz"):
        return lzma.LZMAFile(raw)
    if path.endswith(".zst"):
        try:
            import zstandard  # optional: only .zst corpora need it
        except ImportError:
            raise SpanElectraError(f"'{path}' is zstd-compressed and the zstandard package is missing; run "
                                   "`pip install zstandard`, or decompress it with `zstd -d`") from None
        return io.BufferedReader(ZstdStream(raw, zstandard))
    return raw


class ZstdStream(io.RawIOBase):
    """The decompressed content of a .zst file, frame after frame, that fails as gzip/xz/bz2 do on a damaged
    (ValueError) or cut-short (EOFError) file, where zstandard's stream_reader ends a cut-short one silently."""

    def __init__(self, raw, zstandard):
        self.raw, self.zstandard = raw, zstandard
        self.decompressor = zstandard.ZstdDecompressor().decompressobj()
        self.pending = memoryview(b"")  # decompressed bytes not handed out yet (a view: slicing copies nothing)
        self.in_frame = False  # bytes of a frame were read and its end is not reached yet

    def readable(self):
        return True

    def readinto(self, buffer):
        while not self.pending:
            block = self.raw.read(1 << 17)  # zstd's own input size: the file's position (progress) moves finely
            if not block:
                if self.in_frame:
                    raise EOFError("compressed file ended before the end-of-stream marker was reached")
                return 0
            self.pending = memoryview(self._decompress(block))
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n

    def _decompress(self, block):
        """Decompress a block read from disk, starting a new decompressor at each frame's end."""
        out = []
        while block:
            self.in_frame = True
            try:
                out.append(self.decompressor.decompress(block))
            except self.zstandard.ZstdError as e:
                raise ValueError(str(e)) from None
            block = b""
            if self.decompressor.eof:
                block, self.in_frame = self.decompressor.unused_data, False
                self.decompressor = self.zstandard.ZstdDecompressor().decompressobj()
        return b"".join(out)


def _read_compressed(read, limit, path, field=None):
    """read(limit) (a stream's read or readline), with a damaged compressed file reported in one line."""
    try:
        return read(limit)
    except (OSError, EOFError, lzma.LZMAError, ValueError) as e:
        if not path.endswith(COMPRESSED_SUFFIXES):
            raise
        raise SpanElectraError(f"{field + ': ' if field else ''}'{path}' cannot be decompressed ({type(e).__name__}: "
                               f"{str(e)[:80]}): the file is damaged or truncated; download or compress it again") from None


def find_text_files(spec, field):
    """Resolve a file, a folder (searched recursively for .txt/.tokens/.raw) or a glob to a sorted
    list of readable text files. Binary files are skipped with a warning; no text file is an error."""
    if not spec:
        raise SpanElectraError(f"{field}: no path given; pass a text file, a folder or a glob")
    if any(c in spec for c in "*?[") and not os.path.exists(spec):  # 'data[1].txt' that exists is a name
        candidates = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        if not candidates:
            raise SpanElectraError(f"{field}: the pattern '{spec}' matches no file")
    elif os.path.isdir(spec):
        candidates = corpus_files_under(spec)
        if not candidates:
            raise SpanElectraError(
                f"{field}: the folder '{spec}' holds no text file ({', '.join(TEXT_SUFFIXES)}, also compressed: "
                f"{', '.join(COMPRESSED_SUFFIXES)}); "
                "point it at your corpus")
    elif os.path.isfile(spec):
        candidates = [spec]
    elif os.path.exists(spec):
        raise SpanElectraError(f"{field}: '{spec}' is not a regular file (a pipe or a device); save the text to a "
                               "file and pass that")
    else:
        raise SpanElectraError(f"{field}: '{spec}' does not exist; pass a text file, a folder or a glob")

    files = []
    for path in candidates:
        if _is_binary(path, field):
            warn_skip("skipping '%s': it is not UTF-8 text (a binary file, or text in another encoding: convert "
                      "that with iconv -f ENCODING -t UTF-8)", path)
        else:
            files.append(path)
    if not files:
        raise SpanElectraError(f"{field}: '{spec}' holds no UTF-8 text file (binary, or another encoding: convert "
                               "text with iconv -f ENCODING -t UTF-8)")
    if sum(os.path.getsize(p) for p in files) == 0:
        raise SpanElectraError(f"{field}: '{spec}' is empty; it must hold some text")
    return files


SKIPS_SAID = set()


def warn_skip(message, path):
    """Say once per process that a corpus path is skipped (run_pipeline's stages each look at the corpus)."""
    if (message, path) not in SKIPS_SAID:
        SKIPS_SAID.add((message, path))
        logger.warning(message, path)


def corpus_files_under(folder):
    """The text files under a folder, recursively, sorted. Left out: hidden names and folders (a notebook's
    .ipynb_checkpoints copies), what is not a regular file (a broken link, a pipe: said), and what a stage
    wrote (a tokenizer or model holds a vocab.txt or merges.txt that is no corpus text): its folders inside
    the corpus folder, and its files in the corpus folder itself (an out_dir that is the data_dir)."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        stage_output = OUTPUT_MARKERS.keys() & set(names)
        if root != folder and stage_output:
            warn_skip("skipping folder '%s': it holds a tokenizer, model or features, not corpus text", root)
            dirs.clear()
            continue
        for name in names:
            path = os.path.join(root, name)
            if not is_text_name(name) or name.startswith("."):
                continue
            if stage_output and name in VOCABULARY_TEXT_FILES:
                warn_skip("skipping '%s': a tokenizer's vocabulary written beside the corpus, not corpus text", path)
                continue
            if os.path.isfile(path):
                found.append(path)
            else:
                warn_skip("skipping '%s': not a regular file (a broken link or a pipe)", path)
    return sorted(found)


# ---------------------------------------------------------------- streaming text
class BadByteCounter:
    """A codecs error handler that replaces undecodable bytes with U+FFFD and counts them."""

    def __init__(self):
        self.count = 0
        self.name = f"span_electra_count_{id(self)}"
        codecs.register_error(self.name, self)

    def __call__(self, err):
        self.count += err.end - err.start
        return "\ufffd", err.end


def _utf8_safe_cut(chunk):
    """Index at which to cut an over-long chunk: before the last space (so the next piece starts with
    it, as the word did), else at a UTF-8 character start."""
    cut = chunk.rfind(b" ")
    if cut > 0:
        return cut
    cut = len(chunk)
    while cut > 0 and (chunk[cut - 1] & 0xC0) == 0x80:  # back off continuation bytes
        cut -= 1
    if cut > 0 and chunk[cut - 1] >= 0xC0:  # and the lead byte of the cut character
        cut -= 1
    return cut or len(chunk)


def iter_lines(path, bad_bytes, max_line_bytes=1 << 20, on_long_line=None, progress=None, start=None, where=None):
    """Yield the decoded lines of a file (plain, or .gz/.bz2/.xz/.zst, decompressed as it streams)
    with bounded memory.

    A line longer than max_line_bytes is yielded in pieces cut at spaces (on_long_line(line_no) is
    called once per such line), so one giant line cannot exhaust memory. Undecodable bytes become
    U+FFFD and are counted in bad_bytes. progress (a tqdm) is advanced by the bytes read from disk.
    where (a dict), if given, says before each yield where reading can start again after it:
    where["next"] = (offset in the decompressed content, lines read), or None after a piece of a long
    line; where["raw"] = the bytes read from disk. start: such a (offset, lines read) to begin at.
    """
    carry = b""
    offset, line_no = start or (0, 0)
    reported = -1
    with open(path, "rb") as raw, open_binary(path, raw) as f:
        skip_to(f, raw, offset, path)
        read = raw.tell()
        while True:
            chunk = _read_compressed(f.readline, max_line_bytes, path)
            if not chunk:
                break
            if progress is not None:
                progress.update(raw.tell() - read)
            read = raw.tell()
            size = len(chunk)
            if offset == 0:
                chunk = chunk.removeprefix(UTF8_BOM)  # the byte-order mark some editors write first is no text
            offset += size
            chunk = carry + chunk
            carry = b""
            if not chunk.endswith(b"\n") and len(chunk) >= max_line_bytes:
                cut = _utf8_safe_cut(chunk)
                chunk, carry = chunk[:cut], chunk[cut:]
                if on_long_line is not None and reported != line_no:
                    on_long_line(line_no + 1)
                    reported = line_no
                if where is not None:
                    where.update(next=None, raw=read)
                yield chunk.decode("utf-8", errors=bad_bytes.name)
                continue
            line_no += 1
            if where is not None:
                where.update(next=(offset, line_no), raw=read)
            yield chunk.rstrip(b"\r\n").decode("utf-8", errors=bad_bytes.name)
    if carry:
        if where is not None:
            where.update(next=(offset, line_no + 1), raw=read)
        yield carry.decode("utf-8", errors=bad_bytes.name)


def skip_to(stream, raw, offset, path):
    """Move a stream (raw: its file on disk) to an offset of its content: a seek for a plain file, reading
    the content up to it for a compressed one."""
    if not offset:
        return
    if stream is raw:
        raw.seek(offset)
        return
    while offset:
        got = len(_read_compressed(stream.read, min(offset, 1 << 24), path))
        if not got:
            break
        offset -= got
