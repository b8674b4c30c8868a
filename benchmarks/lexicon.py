"""Reading digit strings with a lexicon: accuracy and decoding time of a trained reader, free vs lexicon.

    python benchmarks/lexicon.py runs/reader.pt [--distractors 9000] [--strings 1000] [--confidence]
        [--route auto|composed]

The strings are the ones `examples/multi_digit.py` tests on (test-split digits, lengths 3-6, seed 3). The
lexicon holds their distinct labels plus random 3-6-digit distractors, so every true label is a word: this
measures the lexicon machinery, not an open-vocabulary task. Reading is in batches of 50, one torch thread;
``--confidence`` also computes the rejection confidences. ``--route composed`` makes the segmentation reader
build the composition with the lexicon (`gtn.compose_score(..., backend="torch")`, the reference) instead of
the fused kernel, to compare the two.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this folder's lenet.py would shadow the package
import gtn  # noqa: E402
import lenet  # noqa: E402
from lenet.recognizer import lexicon_fsa, string_metrics  # noqa: E402
from lenet.strings import make_strings  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--distractors", type=int, default=9000)
    ap.add_argument("--strings", type=int, default=1000)
    ap.add_argument("--confidence", action="store_true")
    ap.add_argument("--route", choices=("auto", "composed"), default="auto")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.route == "composed":
        fused = gtn.compose_score
        gtn.compose_score = lambda *a, **k: fused(*a, **{**k, "backend": "torch"})
    reader = lenet.load(args.checkpoint)
    reader.eval()
    strings = make_strings(args.strings, "test", seed=3)
    truth = [s.label for s in strings]
    g = torch.Generator().manual_seed(123)
    words = set(truth)
    while len(words) < len(set(truth)) + args.distractors:
        n = int(torch.randint(3, 7, (), generator=g))
        words.add("".join(str(int(d)) for d in torch.randint(0, 10, (n,), generator=g)))
    lex = lexicon_fsa(words)
    print(f"{type(reader).__name__} from {args.checkpoint}; lexicon: {len(words)} words, {lex.num_states} states, "
          f"{lex.num_arcs} arcs; {len(strings)} test strings; route {args.route}")
    for name, kw in (("free", {}), ("lexicon", {"lexicon": lex})):
        t = time.perf_counter()
        texts = []
        with torch.no_grad():
            for k in range(0, len(strings), 50):
                out = reader.decode([s.image for s in strings[k:k + 50]], return_confidence=args.confidence, **kw)
                texts += out[0] if args.confidence else out
        m = string_metrics(texts, truth)
        print(f"{name:8s}: string accuracy {100 * m['string_accuracy']:.1f} %, digit error "
              f"{100 * m['digit_error']:.2f} %, {time.perf_counter() - t:.1f} s; readings outside the lexicon: "
              f"{sum(x not in words for x in texts)}")


if __name__ == "__main__":
    main()
