"""Corpus reading speed, ours against the plain baseline, in one process.

    python benchmarks/bench_read.py [--corpus ../shared/data/wikitext-2/wiki.train.tokens]

For the corpus as plain text and compressed (.gz, .xz, .zst, made in a temporary folder), the lines
io_utils.iter_lines yields (bounded line length, undecodable bytes counted, a damaged or cut-short
file an error, the .zst through our frame-checking ZstdStream) against a plain loop over the same
file opened as text by the standard library (gzip.open, lzma.open) or zstandard's stream_reader,
lines decoded with errors="replace". Best of --repeats. The last line is one JSON object.
"""
import argparse
import gzip
import io
import json
import lzma
import os
import sys
import tempfile
import timeit

import zstandard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from io_utils import BadByteCounter, iter_lines  # noqa: E402

DEFAULT_CORPUS = os.path.join(ROOT, "..", "shared", "data", "wikitext-2", "wiki.train.tokens")
if not os.path.isfile(DEFAULT_CORPUS):
    DEFAULT_CORPUS = os.path.join(ROOT, "data", "sample", "train.tokens")


def compressed_copies(corpus, folder):
    """{suffix: path} of the corpus plain and compressed each way."""
    data = open(corpus, "rb").read()
    paths = {"": corpus}
    writers = {".gz": lambda d: gzip.compress(d, 6), ".xz": lzma.compress,
               ".zst": lambda d: zstandard.ZstdCompressor(level=3).compress(d)}
    for suffix, compress in writers.items():
        paths[suffix] = os.path.join(folder, "corpus.txt" + suffix)
        with open(paths[suffix], "wb") as f:
            f.write(compress(data))
    return paths


def baseline_lines(path):
    """The standard library's (or zstandard's) own text reader, line by line."""
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    if path.endswith(".xz"):
        return lzma.open(path, "rt", encoding="utf-8", errors="replace")
    if path.endswith(".zst"):
        raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"))
        return io.TextIOWrapper(raw, encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def best_seconds(fn, repeats):
    return min(timeit.repeat(fn, number=1, repeat=repeats))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default=DEFAULT_CORPUS)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    size_mb = os.path.getsize(args.corpus) / 1e6
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for suffix, path in compressed_copies(args.corpus, folder).items():
            ours_lines = sum(1 for _ in iter_lines(path, BadByteCounter()))
            with baseline_lines(path) as f:
                assert sum(1 for _ in f) == ours_lines, "the readers disagree on the lines"
            ours = best_seconds(lambda: sum(1 for _ in iter_lines(path, BadByteCounter())), args.repeats)

            def baseline():
                with baseline_lines(path) as f:
                    sum(1 for _ in f)
            plain = best_seconds(baseline, args.repeats)
            name = suffix.lstrip(".") or "plain"
            results[name] = {"ours_MB_s": round(size_mb / ours, 1), "baseline_MB_s": round(size_mb / plain, 1),
                             "ours_over_baseline": round(plain / ours, 2)}
            print(f"{name:6s} ours {size_mb / ours:7.1f} MB/s   baseline {size_mb / plain:7.1f} MB/s   "
                  f"ratio {plain / ours:.2f}", flush=True)
    print(json.dumps({"corpus": args.corpus, "corpus_MB": round(size_mb, 1), **results}))


if __name__ == "__main__":
    main()
