#!/usr/bin/env python3
"""The reference vectors of tests/embedder_local.rs: all-MiniLM-L6-v2's embeddings of a fixed
set of sentences, as the model's own implementation (sentence-transformers) makes them.

Run once, by hand; the test reads what it wrote (tests/fixtures/minilm_reference.json) and
needs no Python. How it was made:

    scripts/fetch-model.sh        # the model, in target/models/all-MiniLM-L6-v2
    python3 -m venv /tmp/st-venv
    /tmp/st-venv/bin/pip install sentence-transformers==6.2.0 torch==2.15.0 transformers==5.24.0
    /tmp/st-venv/bin/python scripts/minilm-reference.py target/models/all-MiniLM-L6-v2 \\
        tests/fixtures/minilm_reference.json

(Python 3.11.7, tokenizers 0.23.3, numpy 2.4.6; on the CPU.) The versions go into the file too.
"""

import json
import platform
import sys

import sentence_transformers
import tokenizers
import torch
import transformers
from sentence_transformers import SentenceTransformer

# Far over the model's limit of 256 tokens (and over BERT's 512 positions): it must be cut.
LONG = " ".join(
    f"Paragraph {i}: contextd keeps versioned JSON documents that agents read and write, "
    "merge, and sync; every change makes a version, and the last hundred are kept."
    for i in range(1, 41)
)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on stage.",
    "How do I restore an older version of a context?",
    "",
    "   Leading and trailing whitespace, and a\ttab.\n",
    "Größere Äpfel schmecken süß. 東京は日本の首都です。 Ça va? 🚀",
    '{"greeting": "hi", "source": "mcp"}',
    "search",
    LONG,
]


def main() -> None:
    model_dir, out = sys.argv[1], sys.argv[2]
    model = SentenceTransformer(model_dir, device="cpu")
    vectors = model.encode(SENTENCES, convert_to_numpy=True)
    tokens = [len(model.tokenizer(s)["input_ids"]) for s in SENTENCES]
    document = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "made_by": "scripts/minilm-reference.py: SentenceTransformer(dir).encode(sentences)",
        "versions": {
            "python": platform.python_version(),
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "torch": torch.__version__,
        },
        "max_seq_length": model.max_seq_length,
        "sentences": [
            {
                "text": s,
                "tokens_untruncated": t,
                "vector": [float(f"{x:.7g}") for x in v.tolist()],
            }
            for s, t, v in zip(SENTENCES, tokens, vectors)
        ],
    }
    # One sentence a line: readable in a diff, without a line per float.
    head = {k: v for k, v in document.items() if k != "sentences"}
    text = json.dumps(head, ensure_ascii=False, indent=1)[:-2]
    lines = [json.dumps(e, ensure_ascii=False) for e in document["sentences"]]
    text += ',\n "sentences": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n"
    json.loads(text)
    with open(out, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"{len(SENTENCES)} vectors of {vectors.shape[1]} floats written to {out}")


if __name__ == "__main__":
    main()
