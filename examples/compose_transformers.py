"""Graph transformers built from composition: a lexicon that reads digit strings as words.

The pattern to copy: a `gtn.Transformer` owns a graph (here a lexicon transducer whose arc scores are a
learned word prior), and its ``forward`` composes whatever graph it receives with it. Everything downstream —
the best reading (`gtn.viterbi_path`), the posterior of a target (`gtn.constrained_forward_score` minus
`gtn.forward_score`), ``loss.backward()`` — is ordinary graph code and ordinary autograd: compose keeps one arc
map per input, so the gradient reaches both the recognizer's lattice scores and the lexicon's Parameter.

Run: ``python examples/compose_transformers.py`` (about a second).
"""
import math

import torch

import gtn

# Labels: digit d is label d + 1 (label 0 is epsilon in compose); words are numbered 1.. in WORDS.
WORDS = ["one", "two", "five", "seven", "twelve", "twenty-five", "seventy-two"]
LEXICON = {"1": "one", "2": "two", "5": "five", "7": "seven", "12": "twelve", "25": "twenty-five",
           "72": "seventy-two"}


def digit(d: str) -> int:
    return int(d) + 1


def word_id(w: str) -> int:
    return WORDS.index(w) + 1


class DigitsToWords(gtn.Transformer):
    """Lexicon transducer: input digit strings, output words (one word label on the first arc of its
    spelling, epsilon on the others), looped so that it reads any sequence of words. Its arc scores are a
    trainable word prior (``nn.Parameter``)."""

    def __init__(self, lexicon: dict):
        super().__init__()
        # state 0 is the word boundary; each spelling of length > 1 gets its own chain back to 0
        arcs, aux = [], []
        nxt = 1
        for spelling, word in lexicon.items():
            src = 0
            for i, d in enumerate(spelling):
                last = i == len(spelling) - 1
                dst = 0 if last else nxt
                if not last:
                    nxt += 1
                arcs.append((src, dst, digit(d)))
                aux.append(word_id(word) if i == 0 else 0)
                src = dst
        final = nxt
        arcs.append((0, final, -1))
        aux.append(-1)
        lex = gtn.Fsa(torch.tensor(arcs), torch.zeros(len(arcs)), torch.tensor(aux), num_states=final + 1)
        self.register_graph("lexicon", lex, trainable=True)

    def forward(self, lattice):
        """Digit lattice (acceptor) -> transducer from digits to words, scores = lattice + lexicon."""
        return gtn.compose(lattice, self.lexicon)


def recognition_lattice() -> gtn.Fsa:
    """A hand-made recognizer output for an image of "725": cut points 0..3, one arc per digit hypothesis
    of each segment (log-probabilities), including a merged segment (cut 1 removed) read as a single digit."""
    hyp = [  # (from cut, to cut, digit, probability)
        (0, 1, "7", 0.6), (0, 1, "1", 0.4),
        (1, 2, "2", 0.7), (1, 2, "7", 0.3),
        (2, 3, "5", 0.8), (2, 3, "2", 0.2),
        (1, 3, "2", 0.1),  # segments 2 and 3 merged
    ]
    arcs = [(a, b, digit(d)) for a, b, d, _ in hyp] + [(3, 4, -1)]
    scores = [math.log(p) for *_, p in hyp] + [0.0]
    return gtn.Fsa(torch.tensor(arcs), torch.tensor(scores, dtype=torch.float64), num_states=5)


def main():
    torch.manual_seed(0)
    lattice = recognition_lattice().requires_grad_()
    reader = DigitsToWords(LEXICON).double()
    words = reader(lattice)  # digits -> words, every reading the lexicon allows
    print(f"lattice: {lattice.num_arcs} arcs; lexicon: {reader.lexicon.num_arcs} arcs; "
          f"composed: {words.num_states} states, {words.num_arcs} arcs")

    best = gtn.viterbi_path(words)
    read = [WORDS[w - 1] for w in best.aux_labels.tolist() if w > 0]
    spelled = "".join(str(l - 1) for l in best.labels.tolist() if l > 0)
    print(f"best reading: {' '.join(read)}  (digits {spelled}, score {float(best.scores.detach().sum()):.4f})")

    # the posterior of a target word sequence: paths whose *output* is the target, over all paths
    target = gtn.linear_fsa([word_id("seventy-two"), word_id("five")], dtype=torch.float64)
    out_side = gtn.project(words, "output")  # an acceptor of the word side (epsilons where no word starts)
    log_num = gtn.constrained_forward_score(out_side, target)
    log_den = gtn.forward_score(words)
    print(f"P(seventy-two five | image) = {math.exp((log_num - log_den).item()):.4f}")
    # the same digits 7-2-5 spelled by other word sequences: only the lexicon's word prior separates them
    for alt in (["seven", "twenty-five"], ["seven", "two", "five"], ["one", "two", "five"]):
        t = gtn.linear_fsa([word_id(w) for w in alt], dtype=torch.float64)
        p = math.exp((gtn.constrained_forward_score(out_side, t) - log_den).item())
        print(f"P({' '.join(alt)} | image) = {p:.4f}")

    # train: maximise the posterior of the target (the paper's discriminative forward criterion)
    loss = log_den - log_num
    loss.backward()
    print(f"loss {loss.item():.4f}; gradient on the lattice arcs (src dst digit: d loss / d score):")
    for (s, d, l), g in zip(lattice.arcs.tolist(), lattice.scores.grad.tolist()):
        name = "final" if l == -1 else str(l - 1)
        print(f"  {s} -> {d}  {name:>5}: {g:+.4f}")
    grad_words = reader.get_parameter("lexicon__scores").grad
    print("gradient on the lexicon's first arcs (word prior):")
    for (s, d, l), a, g in zip(reader.lexicon.arcs.tolist(), reader.lexicon.aux_labels.tolist(),
                               grad_words.tolist()):
        if a > 0:
            print(f"  {WORDS[a - 1]:>12}: {g:+.4f}")

    # a few steps of SGD on the lexicon's word prior alone (the lattice is the recognizer's, held fixed)
    opt = torch.optim.SGD(reader.parameters(), lr=1.0)
    for _ in range(30):
        opt.zero_grad()
        w = reader(lattice.detach())
        loss = gtn.forward_score(w) - gtn.constrained_forward_score(gtn.project(w, "output"), target)
        loss.backward()
        opt.step()
    print(f"after 30 SGD steps on the word prior: P(seventy-two five | image) = {math.exp(-loss.item()):.4f}")


if __name__ == "__main__":
    main()
