"""Tests of lenet.recognizer: the recognition transformer, the discriminative forward loss, decoding,
checkpoints, and ``lenet.recognize`` (lenet.reading) with the segmentation reader. The helpers the reader
uses have their own files: test_labels, test_crops, test_grammars, test_metrics."""
import itertools
import math

import numpy as np
import pytest
import torch

import gtn
import lenet
from lenet.model import LeNet5
from lenet.recognizer import (StringReader, crop_segments, digits_to_labels, interpretation_graph, labels_to_string,
                              length_grammar, recognize, save_reader)
from lenet.segment import SegmentParams
from lenet.strings import make_strings
from strategies import logsumexp


def paths_of(fsa):
    """Brute force (test oracle): (label sequence, total score) of every complete path of an acyclic Fsa."""
    arcs = fsa.arcs.tolist()
    sc = fsa.scores.detach().tolist()
    final = fsa.num_states - 1
    out = {}
    for i, (s, d, l) in enumerate(arcs):
        out.setdefault(s, []).append(i)
    res = []

    def walk(state, labs, total):
        if state == final:
            res.append((tuple(labs), total))
            return
        for i in out.get(state, []):
            s, d, l = arcs[i]
            walk(d, labs + ([l] if l > 0 else []), total + sc[i])

    walk(0, [], 0.0)
    return res


@pytest.fixture(scope="module")
def tiny():
    """Two short strings and a reader with a fixed random LeNet-5 (no training needed for structure tests)."""
    torch.manual_seed(0)
    strings = make_strings(2, "test", seed=2, lengths=(2, 2))
    reader = StringReader(LeNet5(), SegmentParams(), lengths=(1, 4), seg_bias=1.5)
    with torch.no_grad():
        reader.transformer.seg_weight.copy_(torch.tensor([0.3, -0.2, -1.0, -0.5]))
    return strings, reader


def test_every_old_name_is_still_importable_from_lenet_recognizer():
    """The split kept ``lenet.recognizer``'s names: each is the very object of the module it moved to."""
    import importlib
    import lenet.recognizer as r
    homes = {"labels": ["SYMBOLS", "digits_to_labels", "labels_to_string"],
             "crops": ["REFERENCE_INK_HEIGHT", "standardize", "crop_segments"],
             "grammars": ["length_grammar", "lexicon_fsa", "as_lexicon", "length_constraint", "lexicon_chunks",
                          "LEXICON_WORK"],
             "reading": ["recognize", "discriminative_forward", "_merge"],
             "metrics": ["edit_distance", "string_metrics", "error_budget", "error_reject"]}
    for module, names in homes.items():
        m = importlib.import_module(f"lenet.{module}")
        for name in names:
            assert getattr(r, name) is getattr(m, name), (module, name)
    moved = {n for names in homes.values() for n in names}
    assert moved - {"_merge"} <= set(r.__all__)
    for name in r.__all__:
        assert hasattr(r, name), name
    assert lenet.recognize is r.recognize and lenet.StringReader is r.StringReader


def test_interpretation_graph_has_ten_arcs_per_segment_with_the_crop_penalties(tiny):
    strings, reader = tiny
    images = [s.image for s in strings]
    xs, segs, seg_graphs = reader.segment(images)
    g = reader(images)
    assert isinstance(g, gtn.FsaVec) and len(g) == 2
    assert isinstance(reader.transformer, gtn.Transformer)
    crops = crop_segments(xs, segs)
    with torch.no_grad():
        pen = reader.model(crops)
        feats = torch.cat([s.features for s in segs])
        segscore = feats @ reader.transformer.seg_weight + reader.transformer.seg_bias
    body = seg_graphs.labels != -1
    assert g.num_arcs == 10 * int(body.sum()) + int((~body).sum())
    assert torch.equal(g.state_splits, seg_graphs.state_splits)
    gb = g.labels != -1
    # each segment arc became labels 1..10 between the same states, in order
    assert g.labels[gb].view(-1, 10).tolist() == [list(range(1, 11))] * int(body.sum())
    assert torch.equal(g.arcs[gb, :2].view(-1, 10, 2)[:, 0], seg_graphs.arcs[body, :2])
    seg = g.segment[gb].view(-1, 10)
    assert bool((seg == seg[:, :1]).all())
    assert torch.equal(seg[:, 0], seg_graphs.segment[body])
    want = -pen[seg[:, 0]] + segscore[seg[:, 0], None]
    assert torch.allclose(g.scores[gb].view(-1, 10).detach(), want, atol=1e-5)
    assert bool((g.scores[~gb] == 0).all())
    # one network call scores every crop: gradient of one arc's score reaches LeNet-5
    g.scores[gb][3].backward()
    assert reader.model.c1.weight.grad is not None and reader.model.c1.weight.grad.abs().sum() > 0


def test_interpretation_graph_paths_are_segmentation_paths_times_digits(tiny):
    _, reader = tiny
    one = make_strings(1, "test", seed=4, lengths=(1, 1))[0].image   # few pieces: brute force stays small
    xs, segs, seg_graphs = reader.segment([one])
    g = reader([one])
    n_seg_paths = {}
    for labs, _ in paths_of(seg_graphs[0]):   # segmentation arcs carry label 1: one per segment
        n_seg_paths[len(labs)] = n_seg_paths.get(len(labs), 0) + 1
    by_len = {}
    for labs, _ in paths_of(g[0]):
        by_len[len(labs)] = by_len.get(len(labs), 0) + 1
    assert by_len == {k: v * 10 ** k for k, v in n_seg_paths.items()}
    assert sum(by_len.values()) < 200000


def test_constrained_graph_accepts_only_the_target(tiny):
    strings, reader = tiny
    g = reader([s.image for s in strings])
    targets = [digits_to_labels(s.label) for s in strings]
    lin = gtn.FsaVec([gtn.Fsa([(i, i + 1, l) for i, l in enumerate(t)] + [(len(t), len(t) + 1, -1)])
                      for t in targets])
    c = gtn.compose(g, lin)
    _, _, seg_graphs = reader.segment([s.image for s in strings])
    for i, t in enumerate(targets):
        # brute force: every segmentation path with len(t) segments, read as t, scored with g's arcs
        score = {(a, b, l): sc for (a, b, l), sc in zip(g[i].arcs.tolist(), g[i].scores.detach().tolist())}
        seg_arcs = seg_graphs[i].arcs.tolist()
        want = []

        def walk(state, k, total):
            if k == len(t):
                if any(a == state and l == -1 for a, b, l in seg_arcs):
                    want.append(round(total, 3))
                return
            for a, b, l in seg_arcs:
                if a == state and l != -1:
                    walk(b, k + 1, total + score[(a, b, t[k])])

        walk(0, 0, 0.0)
        got = paths_of(c[i])
        assert want, "the target must be readable along some path"
        assert all(list(labs) == t for labs, _ in got)
        assert sorted(round(sc, 3) for _, sc in got) == sorted(want)


def test_loss_is_nonnegative_and_its_gradient_reaches_lenet_finite_difference():
    torch.manual_seed(1)
    strings = make_strings(2, "test", seed=9, lengths=(2, 3))
    reader = StringReader(LeNet5(), lengths=None, seg_bias=20.0).double()
    images, labels = [s.image for s in strings], [s.label for s in strings]
    loss = reader.loss(images, labels, reduction="none")
    assert loss.dtype == torch.float64 and bool((loss >= -1e-9).all())
    total = loss.sum()
    total.backward()
    w = reader.model.c5.weight
    assert w.grad is not None and float(w.grad.abs().sum()) > 0
    assert reader.transformer.seg_bias.grad is not None
    # central finite difference on the weight with the largest gradient
    k = int(w.grad.abs().flatten().argmax())
    eps = 1e-6
    with torch.no_grad():
        flat = w.view(-1)
        old = float(flat[k])
        flat[k] = old + eps
        up = float(reader.loss(images, labels, reduction="sum"))
        flat[k] = old - eps
        down = float(reader.loss(images, labels, reduction="sum"))
        flat[k] = old
    fd = (up - down) / (2 * eps)
    assert abs(fd - float(w.grad.view(-1)[k])) <= 1e-5 * max(1.0, abs(fd)), (fd, float(w.grad.view(-1)[k]))


def test_loss_is_zero_when_only_the_target_is_possible():
    """A one-digit string whose graph has a single segment: with all classes but the target at -inf-like
    penalties, the posterior of the target is 1."""
    img = torch.zeros(28, 20, dtype=torch.uint8)
    img[4:24, 8:12] = 255          # one narrow stroke: a single piece
    reader = StringReader(LeNet5(), lengths=None)
    g = reader([img])
    assert int((g.labels != -1).sum()) == 10
    lin = gtn.linear_fsa([[2]])
    forced = g.scores.detach().clone()
    forced[(g.labels != -1) & (g.labels != 2)] = -1e4
    g2 = gtn.FsaVec([gtn.Fsa(g.arcs, forced)])
    assert abs(float(gtn.discriminative_forward_loss(g2, lin, reduction="sum"))) < 1e-4


def test_decode_reads_the_best_path_and_respects_the_grammar(tiny):
    strings, reader = tiny
    images = [s.image for s in strings]
    texts, segs, paths = reader.decode(images, grammar=False, return_paths=True)
    g = reader(images)
    best = gtn.viterbi_score(g).detach()
    for i, t in enumerate(texts):
        assert len(paths[i]) == len(t)
        assert all(0 <= s < segs[i].num_segments for s in paths[i])
        # the decoded segments, read as the decoded digits, score exactly the best path score
        box = segs[i].segments[paths[i]].tolist()
        assert box[0][0] == 0 and box[-1][1] == segs[i].num_pieces
        assert all(a[1] == b[0] for a, b in zip(box[:-1], box[1:]))
        score = {(a, b, l): sc for (a, b, l), sc in zip(g[i].arcs.tolist(), g[i].scores.detach().tolist())}
        total = sum(score[(a, b, int(c) + 1)] for (a, b), c in zip(box, t))
        assert abs(total - float(best[i])) < 1e-3
    with_grammar = reader.decode(images)      # lengths (1, 4)
    assert all(1 <= len(t) <= 4 for t in with_grammar)


def test_checkpoint_round_trip(tmp_path, tiny):
    strings, reader = tiny
    path = save_reader(reader, tmp_path / "r.pt")
    back = lenet.load(path)
    assert isinstance(back, StringReader)
    images = [s.image for s in strings]
    a, b = reader(images), back(images)
    assert torch.equal(a.scores.detach(), b.scores.detach())
    assert recognize(images, path) == reader.decode(images)


def test_older_checkpoints_load_as_column_readers_with_fewer_features(tmp_path, tiny):
    # a checkpoint from before "components", bent cuts and the fourth feature: column pieces, straight cuts,
    # three feature weights
    strings, reader = tiny
    path = save_reader(reader, tmp_path / "r.pt")
    ck = torch.load(path, weights_only=False)
    for k in ("pieces", "min_area", "drift"):
        del ck["config"]["reader"]["params"][k]
    ck["state_dict"]["transformer.seg_weight"] = ck["state_dict"]["transformer.seg_weight"][:3].clone()
    torch.save(ck, tmp_path / "old.pt")
    old = lenet.load(tmp_path / "old.pt")
    assert old.params.pieces == "columns" and old.params.drift == 0.0
    assert old.transformer.seg_weight.tolist()[3] == 0.0
    assert torch.equal(old.transformer.seg_weight[:3], reader.transformer.seg_weight[:3])


@pytest.mark.parametrize("bad, err", [
    ([], ValueError),                                        # empty list
    (np.zeros((32, 50), np.uint8), ValueError),              # all black
    (np.zeros((0, 50), np.uint8), ValueError),               # empty image
    (np.ones((3, 32, 50), np.uint8), ValueError),            # colour / batch: wrong shape
    (np.ones(50, np.uint8), ValueError),                     # 1-D
    ("image.png", TypeError),                                # not an image
    (42, TypeError),
    ([np.pad(np.full((20, 4), 255, np.uint8), ((6, 6), (23, 23))), None], TypeError),  # a bad member of a list
    (np.full((32, 50), 3.5, np.float32), ValueError),        # float outside 0..1
])
def test_recognize_errors(bad, err, tiny):
    _, reader = tiny
    with pytest.raises(err):
        recognize(bad, reader)


def test_recognize_accepts_any_size_and_type(tiny):
    strings, reader = tiny
    img = strings[0].image
    ref = recognize(img, reader)
    assert isinstance(ref, str)
    assert recognize(img.numpy(), reader) == ref
    assert recognize(img.float() / 255, reader) == ref
    assert recognize([img, img.numpy()], reader) == [ref, ref]
    # a padded, taller image reads the same (rows without ink are cropped away)
    tall = torch.zeros(60, img.shape[1] + 10, dtype=torch.uint8)
    tall[10:10 + img.shape[0], 5:5 + img.shape[1]] = img
    assert recognize(tall, reader) == ref
    big = torch.nn.functional.interpolate(img[None, None].float(), scale_factor=2.5, mode="bilinear")[0, 0]
    assert isinstance(recognize(big.clamp(0, 255).to(torch.uint8), reader), str)
    with pytest.raises(TypeError):
        recognize(img, 3.0)


def test_recognize_dark_ink_on_light_paper(tiny):
    strings, reader = tiny
    imgs = [s.image for s in strings]
    ref = recognize(imgs, reader)
    scans = [255 - im for im in imgs]                      # dark ink on white, as a scanner gives it
    assert recognize(scans, reader, ink="dark") == ref
    assert recognize([1 - im.numpy() / 255 for im in imgs], reader, ink="dark") == ref
    with pytest.raises(ValueError, match=r"image 1: the image looks like dark ink on a light background.*ink='dark'"):
        recognize([imgs[0], scans[1]], reader)             # refused by default, naming the image
    assert isinstance(recognize(scans[0], reader, ink="light"), str)   # read as it is when asked
    with pytest.raises(ValueError, match="no ink"):
        recognize(torch.full((32, 40), 255, dtype=torch.uint8), reader, ink="dark")  # blank white paper
    with pytest.raises(ValueError, match="ink must be"):
        recognize(imgs[0], reader, ink="white")


def test_recognize_cleans_scans_first(tiny):
    """``clean=True`` (the default) reads a string on a grey, uneven background with faint ink as the string
    itself; ``clean=False`` reads the pixels as they are; a grey page with nothing on it is refused by index."""
    from lenet.crops import clean_image
    strings, reader = tiny
    imgs = [s.image.float() / 255 for s in strings]
    ref = recognize(imgs, reader, clean=False)
    assert recognize([clean_image(x) for x in imgs], reader, clean=False) == recognize(imgs, reader)
    scans = [0.85 * x + 0.1 + 0.05 * torch.linspace(0, 1, x.shape[1])[None, :] for x in imgs]
    assert recognize(scans, reader) == ref
    assert [clean_image(x).shape for x in scans] == [x.shape for x in imgs]
    with pytest.raises(ValueError, match=r"image 1: the image has no ink once its background is removed"):
        recognize([imgs[0], torch.full((32, 60), 0.4)], reader)
    assert isinstance(recognize(torch.full((32, 60), 0.4), reader, clean=False), str)   # read as it is


def test_interpretation_graph_any_number_of_classes():
    """interpretation_graph works for any class count (e.g. a rubbish class) and keeps gradients."""
    seg = gtn.Fsa([(0, 1, 1), (0, 2, 1), (1, 2, 1), (2, 3, -1)], segment=torch.tensor([0, 1, 2, -1]))
    scores = torch.arange(9, dtype=torch.float64).view(3, 3).requires_grad_()
    g = interpretation_graph(seg, scores)
    assert g.num_arcs == 3 * 3 + 1
    assert g.labels.tolist() == [1, 2, 3, 1, 2, 3, 1, 2, 3, -1]
    assert g.scores.detach().tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 0]
    gtn.forward_score(g).backward()
    # posteriors: the two-segment path and the one-segment path
    p = torch.softmax(torch.tensor([torch.logsumexp(scores[0].detach(), 0) + torch.logsumexp(scores[2].detach(), 0),
                                    torch.logsumexp(scores[1].detach(), 0)]), 0)
    assert torch.allclose(scores.grad.sum(1), torch.stack([p[0], p[1], p[0]]).double())


# ---- decoding with a lexicon


def test_recognize_with_known_lengths_reads_the_best_string_of_that_length():
    """Law: with ``length=n`` the reading is the best-scoring string of exactly n digits, the same word as a
    lexicon of every n-digit string (a prefix tree, built independently of `length_grammar`) gives; an image
    without any n-digit reading is read as without it. Per-image lengths, ranges and a lexicon combine."""
    torch.manual_seed(0)
    strings = make_strings(4, "test", seed=5, lengths=(2, 3))
    reader = StringReader(LeNet5(), SegmentParams(), lengths=(1, 4), seg_bias=1.5)
    images = [s.image for s in strings]
    with torch.no_grad():
        graph, _ = reader.interpret(images)
        free = reader.decode(images)
        for n in (1, 2, 3):
            every = ["".join(d) for d in itertools.product("0123456789", repeat=n)]
            texts = recognize(images, reader, length=n)
            assert texts == reader.decode(images, lexicon=every)
            for i, t in enumerate(texts):
                fits = torch.isfinite(gtn.viterbi_score(gtn.compose(graph[i], length_grammar(n, n))))
                assert len(t) == n if fits else t == free[i]
        # one entry per image (a range, an exact length, none) equals reading each image with its own
        per_image = [(2, 3), 1, None, 2]
        expect = [recognize(images[0], reader, length=(2, 3)), recognize(images[1], reader, length=1), free[2],
                  recognize(images[3], reader, length=2)]
        assert recognize(images, reader, length=per_image, batch_size=1) == expect
        # with a lexicon: its words of that length only
        words = ["7", "12", "45", "901", "3333"]
        got = recognize(images, reader, lexicon=words, length=2)
        assert got == reader.decode(images, lexicon=["12", "45"])
    with pytest.raises(ValueError, match="no word of 4 to 5 digits"):
        recognize(images, reader, lexicon=["12"], length=(4, 5))
    for bad in (0, (3, 2), (1, 2, 3), "3", 2.5, True, [2, 2]):
        with pytest.raises(ValueError, match="length"):
            recognize(images, reader, length=bad)
    with pytest.raises(ValueError, match="one entry per image"):
        recognize(images[0], reader, length=[2])


def _reading_posterior_oracle(g: gtn.Fsa, text: str, lengths=None, words=None) -> float:
    """P(text) among the strings of ``lengths`` (min, max), or among ``words``, or among all strings, by
    enumerating the segmentations of an interpretation graph (paths over its segments; each segment's 10
    digit arcs share source and destination) and, for each, summing over its digit strings in closed form
    (the sum of a product of per-segment factors) or over the words of its length one by one. Where no
    allowed string has a path, the reader reads without the constraint: so does the oracle."""
    arcs, sc, seg = g.arcs.tolist(), g.scores.double().tolist(), g.segment.tolist()
    digits, finals = {}, {}
    for (a, b, lab), x, k in zip(arcs, sc, seg):
        if lab == -1:
            finals[a] = x
        else:
            digits.setdefault(k, [a, b, {}])[2][lab - 1] = x
    segs = list(digits.values())
    assert all(len(d) == 10 for _, _, d in segs)
    paths, stack = [], [(0, [])]
    while stack:  # every segmentation: segments from state 0 to a state with a final arc
        state, path = stack.pop()
        if state in finals:
            paths.append((path, finals[state]))
        stack += [(b, path + [d]) for a, b, d in segs if a == state]
    assert len(paths) > 3
    num, den = [], []
    for path, fin in paths:
        m = len(path)
        if words is not None:
            den += [fin + math.fsum(d[int(c)] for d, c in zip(path, w)) for w in words if len(w) == m]
        elif lengths is None or lengths[0] <= m <= lengths[1]:
            den.append(fin + math.fsum(logsumexp(d.values()) for d in path))  # every string of m digits
        else:
            continue
        if len(text) == m and (words is None or text in words):
            num.append(fin + math.fsum(d[int(c)] for d, c in zip(path, text)))
    if not den:
        return _reading_posterior_oracle(g, text)
    return math.exp(logsumexp(num) - logsumexp(den))


def test_confidence_is_the_posterior_of_the_reading(tiny):
    """Law (the paper's rejection confidence): decode's confidence is the posterior of the string read: the
    sum over the interpretation graph's paths spelling it of exp(score), over the same sum for every string
    the reader decodes from (the grammar's lengths; with a lexicon, its words)."""
    strings, tiny_reader = tiny
    images = [s.image for s in strings]
    with torch.no_grad():
        graph, _ = tiny_reader.interpret(images)
        words = sorted({strings[0].label, strings[1].label[::-1], "7", "123"})
        seen = {}
        for lo, hi in ((1, 4), (3, 4), (1, 1)):  # (1, 1): no 1-digit reading, read as without the grammar
            reader = StringReader(tiny_reader.transformer.model, SegmentParams(), lengths=(lo, hi))
            reader.transformer.load_state_dict(tiny_reader.transformer.state_dict())
            for lexicon in (None, words):
                texts, conf = reader.decode(images, lexicon=lexicon, return_confidence=True)
                assert conf.dtype == torch.float64 and conf.shape == (len(images),)
                for i, (t, c) in enumerate(zip(texts, conf.tolist())):
                    expect = _reading_posterior_oracle(graph[i], t, (lo, hi), lexicon)
                    assert abs(c - expect) < 1e-9, (t, c, expect)
                    assert 0 < c <= 1
                seen[(lo, hi, lexicon is None)] = conf
        # the lengths matter: the confidences read under different grammars differ
        assert not torch.allclose(seen[(1, 4, True)], seen[(3, 4, True)], atol=1e-3)
    reader = tiny_reader
    # recognize(confidence=True) gives the same pairs
    texts, conf = reader.decode(images, return_confidence=True)
    assert recognize(images, reader, confidence=True) == list(zip(texts, conf.tolist()))


def test_decode_with_a_lexicon_reads_the_best_word(tiny):
    """Law: the word read is the one whose constrained graph (interpretation ∘ linear(word)) has the best
    Viterbi score; images that no word fits are read as without the lexicon."""
    strings, reader = tiny
    images = [s.image for s in strings]
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        graph, _ = reader.interpret(images)
        free = reader.decode(images)
        for trial in range(6):
            words = sorted({"".join(str(int(d)) for d in torch.randint(0, 10, (int(torch.randint(1, 4, (), generator=g)),),
                                                                       generator=g)) for _ in range(8)}
                           | {strings[0].label})
            texts = reader.decode(images, lexicon=words)
            for i, t in enumerate(texts):
                scores = [float(gtn.viterbi_score(gtn.compose(graph[i], gtn.linear_fsa(digits_to_labels(w)))))
                          for w in words]
                best = max(range(len(words)), key=lambda k: scores[k])
                if scores[best] > float("-inf"):
                    assert t == words[best], (t, words, scores)
                else:
                    assert t == free[i]
        # a word far too long for the pieces of these short strings: read as without the lexicon
        assert reader.decode(images, lexicon=["0123456789" * 3]) == free
    assert recognize(images, reader, lexicon=words) == texts


def test_lexicon_reading_and_confidence_equal_the_composed_graphs(tiny):
    """The lexicon reading (built without composing, `gtn.compose_score`) against the composition itself, for a
    weighted lexicon graph with two paths spelling one word and a cycle: the text is the Viterbi path's of
    interpretation ∘ lexicon (the free reading where no word fits), the confidence is
    `gtn.rejection_confidence` of that composition, and the segment paths are the Viterbi path's."""
    strings, reader = tiny
    more = make_strings(6, "test", seed=5, lengths=(1, 4))
    images = [s.image for s in strings + more]
    # words: "444" then "44" twice (weights 0.3 and -0.2), "72", "7" + any number of "1"s + "0", or "55", "555",
    # ... (cycles): five digits at least, more than the pieces of some of these images
    lex = gtn.Fsa.from_str("\n".join([
        "0 1 5 0", "1 2 5 0.1", "2 3 5 0",
        "3 4 5 0.3", "3 5 5 -0.2", "3 6 8 0.1", "3 7 8 -0.4", "3 9 6 0", "4 12 5 0", "5 12 5 0.1", "6 8 3 0.2",
        "7 7 2 0.7", "7 8 1 0", "8 13 -1 0", "9 10 6 0", "10 10 6 0", "10 13 -1 -5", "12 13 -1 0", "13"]),
        dtype=torch.float32)
    with torch.no_grad():
        graph, segs = reader.interpret(images)
        texts, _, paths, conf = reader.decode(images, lexicon=lex, return_paths=True, return_confidence=True)
        composed = gtn.compose(graph, lex)
        fits = torch.isfinite(gtn.viterbi_score(composed))
        assert bool(fits.any()) and not bool(fits.all())  # both routes are exercised
        free_texts, _, free_paths, free_conf = reader.decode(images, return_paths=True, return_confidence=True)
        best = gtn.viterbi_path(composed)
        # in float64 from the start, as the reader computes it (no float32 rounding of the composed scores)
        ref_conf = gtn.rejection_confidence(gtn.compose(graph.to(torch.float64), lex.to(torch.float64)))
        offs = np.cumsum([0] + [s.num_segments for s in segs])
        for i in range(len(images)):
            if bool(fits[i]):
                p = best[i]
                assert texts[i] == labels_to_string(p.labels)
                assert paths[i] == [int(x) - int(offs[i]) for x in p.segment if int(x) >= 0]
                assert abs(float(conf[i]) - float(ref_conf[i])) < 1e-9
            else:
                assert (texts[i], paths[i]) == (free_texts[i], free_paths[i])
                assert abs(float(conf[i]) - float(free_conf[i])) < 1e-12


class InkPenalties(torch.nn.Module):
    """Penalties that grow with a crop's ink (digit 0 always cheapest): segmentations then trade off against
    the segmentation bias smoothly enough that a few biases read differently."""
    num_classes = 10

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        m = (x > 0).to(self.w.dtype).mean((1, 2, 3)) * 40 * self.w
        return m[:, None] + torch.arange(10, dtype=m.dtype) * (1 + m[:, None] % 1)


def test_tune_bias_scores_each_candidate_as_decoding_with_that_bias():
    """The law of `StringReader.tune_bias`: each candidate's accuracy is the string accuracy `decode` gets with
    the bias set to that candidate; the best (the first on ties) is set and returned."""
    reader = StringReader(InkPenalties(), lengths=(3, 6)).eval()
    images = [s.image for s in make_strings(12, "test", (3, 5), seed=5)]
    b0 = 0.5
    reader.transformer.seg_bias.data.fill_(b0 - 10.0)
    labels = reader.decode(images)            # the readings at b0 - 10: accuracy 1 there
    offsets = (0.0, 5.0, -5.0, -10.0, -20.0, 10.0)
    expected = {}
    for o in offsets:
        reader.transformer.seg_bias.data.fill_(b0 + o)
        expected[b0 + o] = sum(t == l for t, l in zip(reader.decode(images), labels)) / len(images)
    assert expected[b0 - 10.0] == 1.0 and min(expected.values()) < 1.0     # the bias changes what is read
    reader.transformer.seg_bias.data.fill_(b0)
    best, table = reader.tune_bias(images, labels, offsets=offsets, details=True, batch_size=5)
    assert table == pytest.approx(expected)
    first = next(b0 + o for o in offsets if expected[b0 + o] == 1.0)
    assert best == first and float(reader.transformer.seg_bias.detach()) == pytest.approx(first)
    reader.transformer.seg_bias.data.fill_(-2.0)
    got = reader.tune_bias(images, labels, factors=(1.0, 2.0, 4.0))
    assert got in (-2.0, -4.0, -8.0) and float(reader.transformer.seg_bias.detach()) == got
    with pytest.raises(ValueError):
        reader.tune_bias(images, labels[:-1])
    with pytest.raises(ValueError):
        reader.tune_bias([], [])
