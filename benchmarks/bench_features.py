"""Feature-building and masking speed, ours against the baselines, in one process.

    python benchmarks/bench_features.py [--corpus ../shared/data/wikitext-2/wiki.train.tokens]

(a) process.py's whole feature build (read, tokenize, pack, write memmaps) against the bare fast
    tokenizer's encode_batch over the same lines in the same batches (ids collected, nothing else);
(b) batch span masking (masking.Masker) against a straightforward per-sequence Python loop doing
    the same SpanBERT masking (span lengths drawn one at a time, a per-token replacement loop);
(c) process.py's peak memory on 1x and 4x the corpus, each in a fresh process.
The last line is one JSON object with the ratios.
"""
import argparse
import itertools
import json
import logging
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from transformers import ElectraConfig, ElectraForPreTraining

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import create_vocab_SE  # noqa: E402
import features as features_lib  # noqa: E402
import tokenization  # noqa: E402
import process  # noqa: E402
from argument import MaskingArgs, feature_args, tok_args  # noqa: E402
from io_utils import COMPRESSED_SUFFIXES, setup_logging  # noqa: E402
from masking import IGNORE_INDEX, span_length_distribution  # noqa: E402

DEFAULT_CORPUS = os.path.join(ROOT, "..", "shared", "data", "wikitext-2", "wiki.train.tokens")


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


# ---------------------------------------------------------------- (a) feature build
def bare_tokenizer(tokenizer, corpus, batch_lines, fast=False):
    """The baseline: read the lines and encode them in batches, keeping the ids."""
    encode = tokenizer.encode_batch_fast if fast else tokenizer.encode_batch
    with open(corpus, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    n = 0
    for i in range(0, len(lines), batch_lines):
        encodings = encode(lines[i:i + batch_lines], add_special_tokens=False)
        n += len(np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=np.uint16))
    return n


def bench_feature_build(tok_dir, corpus, work, repeats):
    tokenizer, _ = tokenization.load_tokenizer(tok_dir)
    tokenizer.encode_special_tokens = True  # as process.py reads corpus text
    config = feature_args(tokenizer_dir=tok_dir, train_input=corpus, valid_input=None, out_dir=os.path.join(work, "feat"),
                          max_seq_len=128)
    ours = best_of(lambda: process.main(config), repeats)
    base = best_of(lambda: bare_tokenizer(tokenizer, corpus, config.batch_lines), repeats)
    fast = best_of(lambda: bare_tokenizer(tokenizer, corpus, config.batch_lines, fast=True), repeats)
    size = os.path.getsize(corpus) / 1e6
    print(f"(a) feature build on {size:.1f} MB: process.py {ours:.2f}s ({size / ours:.2f} MB/s), "
          f"bare encode_batch {base:.2f}s ({size / base:.2f} MB/s), ratio {ours / base:.2f}; "
          f"bare encode_batch_fast {fast:.2f}s, ratio {ours / fast:.2f}")
    return ours / base, ours / fast, os.path.join(work, "feat")


# ---------------------------------------------------------------- (b) masking
def loop_span_mask(ids, word_starts, special_ids, mask_id, vocab_size, cfg, rng):
    """Per-sequence SpanBERT masking, written the straightforward way (the baseline)."""
    lengths = np.arange(1, cfg.max_span_len + 1)
    probs = span_length_distribution(cfg.span_p, cfg.max_span_len)
    out = {k: np.zeros_like(ids) for k in ("input_ids", "labels", "span_position", "boundary_left", "boundary_right")}
    for b in range(ids.shape[0]):
        row = ids[b]
        words = []  # (first token, end token) of each maskable word
        for i, t in enumerate(row):
            if t in special_ids:
                continue
            if word_starts[t] or not words or words[-1][1] != i:
                words.append([i, i + 1])
            else:
                words[-1][1] = i + 1
        budget = max(1, round(cfg.mask_ratio * sum(e - s for s, e in words)))
        masked_words, spans, n_masked = set(), [], 0
        for _ in range(1000):
            if n_masked >= budget:
                break
            length = rng.choice(lengths, p=probs)
            first = rng.integers(len(words))
            chosen = list(range(first, min(first + length, len(words))))
            if any(w in masked_words or w - 1 in masked_words or w + 1 in masked_words for w in chosen):
                continue
            masked_words.update(chosen)
            spans.append((words[chosen[0]][0], words[chosen[-1]][1]))
            n_masked += spans[-1][1] - spans[-1][0]
        labels = np.full(len(row), IGNORE_INDEX)
        new = row.copy()
        for start, end in spans:
            choice = rng.random()
            for i in range(start, end):  # per-token replacement loop
                labels[i] = row[i]
                if choice < cfg.mask_replace_prob:
                    new[i] = mask_id
                elif choice < cfg.mask_replace_prob + cfg.random_replace_prob:
                    new[i] = rng.integers(len(special_ids), vocab_size)
                out["span_position"][b, i] = i - start
                out["boundary_left"][b, i] = start - 1
                out["boundary_right"][b, i] = end
        out["input_ids"][b], out["labels"][b] = new, labels
    return out


def bench_masking(feat_dir, batch_sizes, repeats):
    features = features_lib.PretrainingFeatures(feat_dir)
    data = features.split("train")
    cfg = MaskingArgs()
    masker = features.masker(cfg)
    special = set(int(i) for i in masker.special_ids)
    results = {}
    for bs in batch_sizes:
        ids = np.asarray(data[:bs], dtype=np.int64)
        rng = np.random.default_rng(0)
        ours = best_of(lambda: masker(ids, rng), repeats)
        base = best_of(lambda: loop_span_mask(ids, masker.word_starts, special, masker.mask_id,
                                              features.vocab_size, cfg, rng), max(1, repeats // 3))
        results[bs] = (ours, base)
        print(f"(b) span masking {bs} x {ids.shape[1]}: batch {ours * 1e3:.2f} ms, per-sequence loop "
              f"{base * 1e3:.1f} ms, speedup {base / ours:.1f}x")
    return results


def training_step_seconds():
    """One forward+backward of an ELECTRA-Small discriminator on 32 x 128 (what 1% is measured against)."""
    torch.manual_seed(0)
    model = ElectraForPreTraining(ElectraConfig(vocab_size=30522, embedding_size=128, hidden_size=256,
                                                num_hidden_layers=12, num_attention_heads=4, intermediate_size=1024))
    ids = torch.randint(5, 30000, (32, 128))
    labels = torch.randint(0, 2, (32, 128))

    def step():
        model(input_ids=ids, labels=labels).loss.backward()

    step()
    return best_of(step, 2)


# ---------------------------------------------------------------- (c) memory
# VmHWM, not ru_maxrss: ru_maxrss survives exec, so a child would report its parent's peak.
PEAK_RSS = """
import sys
sys.path.insert(0, {root!r})
import process
from argument import feature_args
process.main(feature_args(tokenizer_dir={tok!r}, train_input={corpus!r}, valid_input=None, out_dir={out!r}))
print([line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")][0])
"""


def peak_rss_mb(tok_dir, corpus, out):
    code = PEAK_RSS.format(root=ROOT, tok=tok_dir, corpus=corpus, out=out)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(result.stdout.strip().splitlines()[-1]) / 1024


def bench_memory(tok_dir, corpus, work):
    big = os.path.join(work, "corpus_x4.tokens")
    with open(big, "wb") as f:
        for _ in range(4):
            with open(corpus, "rb") as src:
                f.write(src.read())
    one = peak_rss_mb(tok_dir, corpus, os.path.join(work, "mem1"))
    four = peak_rss_mb(tok_dir, big, os.path.join(work, "mem4"))
    print(f"(c) process.py peak RSS: {one:.0f} MB on 1x ({os.path.getsize(corpus) / 1e6:.1f} MB), "
          f"{four:.0f} MB on 4x ({os.path.getsize(big) / 1e6:.1f} MB)")
    return one, four


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=DEFAULT_CORPUS)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not os.path.isfile(args.corpus):
        sys.exit(f"error: --corpus: '{args.corpus}' does not exist; pass WikiText-2's wiki.train.tokens")
    if args.corpus.endswith(COMPRESSED_SUFFIXES):  # the baselines read plain text (bench_read.py times compressed)
        sys.exit(f"error: --corpus: '{args.corpus}' is compressed; pass a plain-text corpus (decompress it first)")
    if args.repeats < 1:
        sys.exit(f"error: --repeats: {args.repeats}; give 1 or more (each figure is the best of that many runs)")
    setup_logging()
    logging.getLogger("span_electra").setLevel(logging.WARNING)
    os.environ["TQDM_DISABLE"] = "1"
    with tempfile.TemporaryDirectory() as work:
        tok_dir = os.path.join(work, "tok")
        create_vocab_SE.main(tok_args(data_dir=args.corpus, vocab_size=10000, out_dir=tok_dir))
        ratio, ratio_fast, feat_dir = bench_feature_build(tok_dir, args.corpus, work, args.repeats)
        masking = bench_masking(feat_dir, (32, 128), args.repeats * 3)
        step = training_step_seconds()
        mask_32 = masking[32][0]
        print(f"    ELECTRA-Small discriminator step (32 x 128, fp32, CPU): {step:.2f}s; masking its batch costs "
              f"{100 * mask_32 / step:.3f}% of it")
        one, four = bench_memory(tok_dir, args.corpus, work)
    print(json.dumps({
        "process_vs_tokenizer_ratio": round(ratio, 3),
        "process_vs_encode_batch_fast_ratio": round(ratio_fast, 3),
        "masking_speedup_vs_loop": round(masking[32][1] / masking[32][0], 1),
        "masking_speedup_vs_loop_batch128": round(masking[128][1] / masking[128][0], 1),
        "masking_ms_per_batch32": round(mask_32 * 1e3, 3),
        "masking_share_of_training_step": round(mask_32 / step, 5),
        "peak_rss_mb_1x": round(one), "peak_rss_mb_4x": round(four),
    }))


if __name__ == "__main__":
    main()
