"""Memory speed: embedding 1,000 short texts, and answering a query over 100,000 records.

    python benchmarks/memory_speed.py [--records N]

Goals from the memory issue, on a 2-core machine: embedding 1,000 short texts in under 5 s,
and a query over 100,000 records in under 50 ms.

Embedding is measured side by side for the same int8 ONNX model in one run: heurist's way
(each batch padded to its longest text) against padding every text to 256 tokens, which is
what Chroma's own ``ONNXMiniLM_L6_V2`` does (it cannot run here: it downloads its model).

The query store is filled with synthetic failure records whose vectors are random unit
vectors (embedding 100,000 texts would take minutes and does not change how Chroma
searches); the query text itself is embedded for real, and ``recall`` does everything the
graph's recall step does: the vector search, the fix look-up and the link resolution.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from memory import FailureRecord, MemoryConfig, MemoryStore
from memory.embedders import MINILM_MAX_TOKENS, MiniLMOnnx

KINDS = ["life_lost", "pole_fell", "crash", "stall", "fall"]
WORDS = ("ball paddle left right missed bounced wall brick cart pole fell tipped lander crashed leg "
         "torso flipped stalled slow fast edge track angle velocity early late").split()


def short_texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"episode {i}: " + " ".join(rng.choice(WORDS, size=rng.integers(6, 16))) for i in range(n)]


def embed_fixed_256(embedder: MiniLMOnnx, texts: list[str]) -> None:
    """The same model with every text padded to 256 tokens, as Chroma's ONNXMiniLM_L6_V2 does."""
    from tokenizers import Tokenizer

    from memory.embedders import MINILM_TOKENIZER

    tokenizer = Tokenizer.from_file(str(MINILM_TOKENIZER))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=MINILM_MAX_TOKENS)
    tokenizer.enable_truncation(MINILM_MAX_TOKENS)
    session = embedder._session
    for start in range(0, len(texts), 32):
        encoded = tokenizer.encode_batch(texts[start:start + 32])
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})


def timed(fn, *args) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()

    embedder = MiniLMOnnx()
    texts = short_texts(1000)
    embedder.embed(texts[:8])  # load the model before timing
    dynamic = timed(embedder.embed, texts)
    fixed = timed(embed_fixed_256, embedder, texts)
    print(f"embed 1,000 short texts: heurist {dynamic:.2f} s, padded to 256 {fixed:.2f} s, "
          f"ratio {fixed / dynamic:.1f}x  (goal: heurist < 5 s)")

    with tempfile.TemporaryDirectory() as tmp, MemoryStore(MemoryConfig(path=Path(tmp)), embedder=embedder) as store:
        rng = np.random.default_rng(1)
        started = time.perf_counter()
        for start in range(0, args.records, 5000):
            n = min(5000, args.records - start)
            records = [FailureRecord(run_id=f"bench-{(start + i) % 50}", description=f"synthetic failure {start + i}",
                                     task="CartPole-v1", family="classic_control", protocol="standard",
                                     iteration=(start + i) % 100, seed=start + i, step=i % 500,
                                     kind=KINDS[(i // 7) % len(KINDS)], policy_sha256="0" * 64) for i in range(n)]
            vectors = rng.normal(size=(n, 384)).astype(np.float32)
            store.write_vectors(records, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
        print(f"filled {store.count():,} records in {time.perf_counter() - started:.0f} s")
        queries = short_texts(60, seed=2)
        store.recall(queries[0])  # warm the index
        search = [timed(store.recall, q) for q in queries[1:21]]
        broad = [timed(lambda q: store.recall(q, task="CartPole-v1", kind="crash"), q) for q in queries[21:41]]
        narrow = [timed(lambda q: store.recall(q, run_id="bench-7"), q) for q in queries[41:51]]
        rare = [timed(lambda q: store.recall(q, run_id="bench-7", kind="crash"), q) for q in queries[51:]]
        for name, samples in (("recall", search), ("recall, filter met by 20%", broad),
                              ("recall, filter met by 2%", narrow), ("recall, filter met by 0.4%", rare)):
            ms = sorted(s * 1000 for s in samples)
            print(f"{name} over {args.records:,} records: median {statistics.median(ms):.1f} ms, "
                  f"p90 {ms[int(0.9 * len(ms))]:.1f} ms  (goal: < 50 ms)")


if __name__ == "__main__":
    main()
