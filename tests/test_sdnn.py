"""Tests of lenet.sdnn: the space-displacement reader (LeNet-5 swept over the string, character model)."""
import itertools
import math

import pytest
import torch

import gtn
import lenet
from lenet.model import LeNet5
from lenet.recognizer import recognize
from lenet.sdnn import SDNNReader, character_model, save_sdnn, sweep_input, target_graphs
from lenet.strings import make_strings
from strategies import logsumexp


def accepts(graph, seqs, num_symbols):
    """Which of the equal-length frame sequences ``seqs`` does ``graph`` accept? (one batched dense
    intersection with one-hot frames)"""
    idx = torch.tensor(seqs)
    lp = torch.full(idx.shape + (num_symbols,), -1e4, dtype=torch.float64)
    lp.scatter_(2, idx[..., None], 0.0)
    score = gtn.dense_forward_score(graph.double(), gtn.DenseFsaVec(lp))
    return (score > -1.0).tolist()


def reads(seq):
    """The paper's reading rule: runs of a digit are one digit; different digits need a blank between."""
    ok = all(not (a > 0 and b > 0 and a != b) for a, b in zip(seq[:-1], seq[1:]))
    runs = [k for k, _ in itertools.groupby(seq) if k > 0]
    return ok, runs


def test_character_model_accepts_exactly_the_separated_sequences():
    g = character_model(num_digits=2)
    n = 0
    for T in range(1, 7):
        seqs = list(itertools.product(range(3), repeat=T))
        for seq, acc in zip(seqs, accepts(g, seqs, 3)):
            assert acc == reads(seq)[0], seq
            n += 1
    assert n == 1092


@pytest.mark.parametrize("target", [[1], [2, 2], [1, 2, 1]])
def test_target_graph_accepts_exactly_the_sequences_reading_the_target(target):
    g = target_graphs([target])[0]
    for T in range(1, 7):
        seqs = list(itertools.product(range(3), repeat=T))
        for seq, acc in zip(seqs, accepts(g, seqs, 3)):
            ok, runs = reads(seq)
            assert acc == (ok and runs == target), (target, seq)


def images_and_labels(n, seed, lengths=(2, 3)):
    """``n`` rendered test strings: their images and labels."""
    s = make_strings(n, "test", seed=seed, lengths=lengths)
    return [a.image for a in s], [a.label for a in s]


def test_loss_nonnegative_gradient_and_decode():
    torch.manual_seed(0)
    images, labels = images_and_labels(3, seed=1)
    reader = SDNNReader(LeNet5(), blank=15.0).double()
    loss = reader.loss(images, labels, reduction="none")
    assert bool((loss >= -1e-9).all()) and bool(torch.isfinite(loss).all())
    loss.sum().backward()
    assert float(reader.model.c1.weight.grad.abs().sum()) > 0 and reader.blank.grad is not None
    # decoding = the reading rule applied to the Viterbi frame labels
    texts, frames = reader.decode(images, return_frames=True)
    for t, f in zip(texts, frames):
        ok, runs = reads(f)
        assert ok and t == "".join(str(r - 1) for r in runs)
    x, positions = sweep_input(images)
    assert x.shape[:3] == (3, 1, 32) and (x.shape[-1] - 32) % 4 == 0
    assert (x.shape[-1] - 32) // 4 + 1 - 1 <= int(positions.max()) <= (x.shape[-1] - 32) // 4 + 1
    assert [len(f) for f in frames] == positions.tolist()


def test_checkpoint_and_recognize(tmp_path):
    reader = SDNNReader(LeNet5(), blank=12.0)
    path = save_sdnn(reader, tmp_path / "s.pt")
    back = lenet.load(path)
    assert isinstance(back, SDNNReader) and float(back.blank.detach()) == 12.0
    s = make_strings(2, "test", seed=3)
    assert recognize([x.image for x in s], path) == reader.decode([x.image for x in s])
    assert isinstance(recognize(s[0].image, back), str)


# ---------------------------------------------------------------------------- the 11-output SDNN network
from lenet.sdnn import frame_labels, sdnn_network, swept_penalties, train_windows, _to_classes  # noqa: E402


def test_sdnn_network_copies_the_digit_outputs_and_adds_a_blank():
    torch.manual_seed(0)
    iso = LeNet5()
    net = sdnn_network(iso)
    x = torch.randn(4, 1, 32, 32)
    pen = net(x)
    assert pen.shape == (4, 11)
    torch.testing.assert_close(pen[:, :10], iso(x))
    # the blank prototype is the empty bitmap, far from every digit code
    protos = net.rbf.prototypes
    assert bool((protos[10] == -1).all()) and int((protos[:10] != protos[10]).sum(1).min()) >= 18


@pytest.mark.parametrize("stride", [4, 2])
def test_swept_penalties_equal_the_network_on_each_window(stride):
    torch.manual_seed(1)
    net = sdnn_network().double()
    s = make_strings(2, "test", seed=4, lengths=(2, 3))
    x, positions = sweep_input([a.image for a in s])
    pen, frames = swept_penalties(net, x.double(), positions, stride)
    assert frames.tolist() == (positions if stride == 4 else 2 * positions - 1).tolist()
    for b in range(2):
        for p in range(int(frames[b])):
            window = x[b:b + 1, :, :, stride * p:stride * p + 32].double()
            assert window.shape[-1] == 32
            torch.testing.assert_close(pen[b, p], net(window)[0])


@pytest.mark.parametrize("stride", [4, 2])
def test_frame_labels_follow_the_digit_positions(stride):
    s = make_strings(20, "train", seed=6, lengths=(3, 5))
    x, positions, scales = sweep_input([a.image for a in s], return_scales=True)
    frames = positions if stride == 4 else 2 * positions - 1
    lab = frame_labels([a.extents for a in s], [a.label for a in s], scales, frames, stride)
    assert lab.shape == (20, int(frames.max()))
    readable = 0
    for b, a in enumerate(s):
        lb = lab[b]
        assert bool((lb[int(frames[b]):] == -1).all())
        centres = torch.arange(int(frames[b]), dtype=torch.float64) * stride / float(scales[b])  # input columns
        ext = a.extents.double()
        for p in range(int(frames[b])):
            tol = 2.0 / float(scales[b])  # min_core: a very narrow digit still gets the window nearest its centre
            inside = (ext[:, 0] - tol <= centres[p]) & (centres[p] <= ext[:, 1] + tol)
            if lb[p] > 0:   # a digit label: the window centre is on that digit's ink box
                assert any(int(a.label[i]) + 1 == int(lb[p]) for i in torch.nonzero(inside).flatten().tolist())
            elif lb[p] == 0:  # blank: not deep inside any digit, or the window nearest a junction of two digits
                depth = torch.minimum(centres[p] - ext[:, 0], ext[:, 1] - centres[p]) * float(scales[b])
                junctions = (ext[:-1, 1] + ext[1:, 0]) / 2
                at_junction = bool(((centres[p] - junctions).abs() * float(scales[b]) <= stride / 2 + 1e-9).any())
                assert bool((depth <= 1.5 + 1e-9).all()) or at_junction
        assert lb[0] == 0  # the first window is centred on the left margin: blank
        seq = [v for v in lb[:int(frames[b])].tolist() if v >= 0]
        ok, runs = reads(seq)
        readable += ok and runs == [int(c) + 1 for c in a.label]
    # the labelled frames spell the string (at stride 4 two narrow touching digits may get no blank between)
    assert readable >= (16 if stride == 4 else 19)


def test_window_training_lowers_the_window_loss():
    torch.manual_seed(0)
    imgs, labs = lenet.load_digits("train", raw=True)
    digits = (imgs[:500], labs[:500])
    reader = SDNNReader(sdnn_network(), stride=4)
    fixed = make_strings(16, lengths=(3, 4), seed=99, digits=digits)

    def window_loss():
        with torch.no_grad():
            x, positions, scales = sweep_input([a.image for a in fixed], return_scales=True)
            pen, positions = swept_penalties(reader.model, x, positions, 4)
            lab = frame_labels([a.extents for a in fixed], [a.label for a in fixed], scales, positions, 4)
            keep = lab >= 0
            return float(reader.model.loss(pen[:, :lab.shape[1]][keep], _to_classes(lab[keep])))

    before = window_loss()
    hist = train_windows(reader, digits, strings_per_pass=96, passes=2, lr=3e-3, lengths=(3, 4), log=None)
    assert len(hist) == 2 and all(h > 0 for h in hist)
    assert window_loss() < 0.8 * before


def test_eleven_output_loss_gradient_matches_finite_difference():
    torch.manual_seed(2)
    images, labels = images_and_labels(2, seed=7)
    reader = SDNNReader(sdnn_network(), stride=2).double()
    loss = reader.loss(images, labels, reduction="sum")
    assert float(loss.detach()) >= 0
    loss.backward()
    w = reader.model.c5.weight
    idx = (3, 2, 1, 1)
    g = float(w.grad[idx])
    eps = 1e-6
    with torch.no_grad():
        w[idx] += eps
        up = float(reader.loss(images, labels, reduction="sum"))
        w[idx] -= 2 * eps
        down = float(reader.loss(images, labels, reduction="sum"))
        w[idx] += eps
    assert abs(g) > 1e-8
    assert abs((up - down) / (2 * eps) - g) <= 1e-5 * max(1.0, abs(g))
    assert reader.blank.grad is not None and float(reader.blank.grad) != 0


def test_eleven_output_checkpoint_round_trip(tmp_path):
    torch.manual_seed(3)
    reader = SDNNReader(sdnn_network(), blank=0.5, stride=2)
    path = save_sdnn(reader, tmp_path / "s11.pt")
    back = lenet.load(path)
    assert back.stride == 2 and back.model.num_classes == 11 and float(back.blank.detach()) == 0.5
    torch.testing.assert_close(back.model.rbf.prototypes, reader.model.rbf.prototypes)
    s = make_strings(3, "test", seed=8)
    imgs = [x.image for x in s]
    torch.testing.assert_close(back.emissions(imgs).log_probs, reader.emissions(imgs).log_probs)
    assert recognize(imgs, path) == reader.decode(imgs)


def test_counting_character_model_accepts_exactly_the_separated_sequences_of_those_lengths():
    from lenet.sdnn import counting_character_model
    g = counting_character_model(2, 3, num_digits=2)
    n = 0
    for T in range(1, 8):
        seqs = list(itertools.product(range(3), repeat=T))
        for seq, acc in zip(seqs, accepts(g, seqs, 3)):
            ok, runs = reads(seq)
            assert acc == (ok and 2 <= len(runs) <= 3), seq
            n += 1
    assert n == 3279


def test_decoding_with_lengths_reads_only_those_lengths_where_it_can():
    torch.manual_seed(5)
    s = make_strings(6, "test", seed=9, lengths=(3, 4))
    images = [a.image for a in s]
    free = SDNNReader(sdnn_network(), lengths=None)
    limited = SDNNReader(free.model, lengths=(3, 4))
    free_texts, limited_texts = free.decode(images), limited.decode(images)
    for f, t in zip(free_texts, limited_texts):
        assert 3 <= len(t) <= 4
        if 3 <= len(f) <= 4:
            assert t == f  # the best path already has an allowed length: the same reading


def test_unreachable_target_has_infinite_loss_and_no_gradient():
    torch.manual_seed(0)
    s = make_strings(2, "test", seed=1, lengths=(3, 3))
    reader = SDNNReader(sdnn_network(), stride=4).double()
    loss = reader.loss([a.image for a in s], [s[0].label, "1" * 40], reduction="none")  # 40 digits: too many
    assert bool(torch.isfinite(loss[0])) and float(loss[0].detach()) >= 0 and loss[1].item() == float("inf")
    loss[1:].sum().backward()
    grads = [p.grad for p in reader.parameters() if p.grad is not None]
    assert grads and all(bool((g == 0).all()) for g in grads)


def test_frame_labels_between_only_adds_blanks_between_neighbours():
    s = make_strings(20, "train", seed=6, lengths=(3, 5))
    x, positions, scales = sweep_input([a.image for a in s], return_scales=True)
    frames = 2 * positions - 1
    args = ([a.extents for a in s], [a.label for a in s], scales, frames, 2)
    plain, between = frame_labels(*args), frame_labels(*args, between=True)
    changed = plain != between
    assert bool((plain[~changed] == between[~changed]).all())
    assert bool((plain[changed] == -1).all()) and bool((between[changed] == 0).all())
    assert int(changed.sum()) > 0
    for b, p in torch.nonzero(changed).tolist():
        centre = p * 2 / float(scales[b])                       # in input columns
        mids = s[b].extents.double().mean(1)
        assert float(mids[0]) < centre < float(mids[-1])       # between the first and the last digit


# ---- lexicon decoding: the frame-level graph of a digit acceptor
from lenet.recognizer import digits_to_labels, lexicon_fsa  # noqa: E402
from lenet.sdnn import frame_graph  # noqa: E402


def _random_words(g, n, max_len=4, digits="0123"):
    words = set()
    while len(words) < n:
        L = int(torch.randint(1, max_len + 1, (), generator=g))
        words.add("".join(digits[int(i)] for i in torch.randint(0, len(digits), (L,), generator=g)))
    return sorted(words)


@pytest.mark.parametrize("words", [["0"], ["1"], ["10"], ["1", "10", "0"], ["01", "010", "1"]])
def test_frame_graph_accepts_exactly_the_sequences_reading_a_word(words):
    # symbols: 0 blank, 1 = digit "0", 2 = digit "1"; every frame sequence up to 6 frames
    g = frame_graph(lexicon_fsa(words))
    targets = [digits_to_labels(w) for w in words]
    for T in range(1, 7):
        seqs = list(itertools.product(range(3), repeat=T))
        for seq, acc in zip(seqs, accepts(g, seqs, 3)):
            ok, runs = reads(seq)
            assert acc == (ok and runs in targets), (words, seq)


def test_frame_graph_forward_is_the_log_sum_over_the_words_of_their_target_graphs():
    """With random emissions and random (weighted) lexicon arcs: forward(frame_graph(lexicon) ∩ frames) =
    logsumexp over the words of (the word's lexicon score + forward(target_graph(word) ∩ frames)), and the
    gradient reaches the lexicon's scores."""
    g = torch.Generator().manual_seed(0)
    finite = 0
    for trial in range(40):
        words = _random_words(g, int(torch.randint(1, 7, (), generator=g)), digits="0123456789")
        lex = lexicon_fsa(words, torch.float64)
        lex.scores = torch.randn(lex.num_arcs, generator=g, dtype=torch.float64).requires_grad_()
        T = int(torch.randint(1, 12, (), generator=g))
        dense = gtn.DenseFsaVec(torch.randn(1, T, 11, generator=g, dtype=torch.float64).log_softmax(-1))
        got = gtn.forward_score(gtn.intersect_dense(frame_graph(lex), dense))[0]
        word_scores = torch.stack([gtn.forward_score(gtn.compose(lex, gtn.linear_fsa(digits_to_labels(w))))
                                   for w in words])
        same = gtn.DenseFsaVec(dense.log_probs.expand(len(words), -1, -1))  # the frames once per word
        per_word = gtn.forward_score(gtn.intersect_dense(target_graphs([digits_to_labels(w) for w in words],
                                                                       torch.float64), same))
        want = torch.logsumexp(word_scores + per_word, 0)
        if torch.isinf(want):
            assert torch.isinf(got) and got < 0
            continue
        finite += 1
        assert abs(float(got.detach()) - float(want.detach())) < 1e-9, (words, T)
        # and the same gradient with respect to the lexicon's arc scores
        grad_got, = torch.autograd.grad(got, lex.scores)
        grad_want, = torch.autograd.grad(want, lex.scores)
        assert torch.allclose(grad_got, grad_want, atol=1e-9), (words, T)
    assert finite >= 15


def test_sdnn_decoding_with_a_lexicon_reads_the_best_word():
    torch.manual_seed(3)
    images, labels = images_and_labels(5, seed=4, lengths=(2, 3))
    reader = SDNNReader(sdnn_network(), lengths=None).double()
    words = sorted(set(labels[:3]) | {"7", "404", "12", "999"})
    texts = reader.decode(images, lexicon=words)
    dense = reader.emissions(images)
    for i, t in enumerate(texts):
        one = gtn.DenseFsaVec(dense.log_probs[i:i + 1].detach(), dense.lengths[i:i + 1])
        scores = [float(gtn.viterbi_score(gtn.intersect_dense(target_graphs([digits_to_labels(w)], torch.float64),
                                                              one))[0]) for w in words]
        assert t == words[max(range(len(words)), key=lambda k: scores[k])], (t, words, scores)
    # the frame labels (from the Viterbi score's gradient) are a path: they read the word by the reading rule
    texts2, frames = reader.decode(images, lexicon=words, return_frames=True)
    assert texts2 == texts and [len(f) for f in frames] == dense.lengths.tolist()
    for t, f in zip(texts, frames):
        ok, runs = reads(f)
        assert ok and "".join(str(r - 1) for r in runs) == t and t in words
    # an image that no word fits (too few frames for 40 digits) is read as without the lexicon
    assert reader.decode(images, lexicon=["7" * 40]) == reader.decode(images)
    with pytest.raises(ValueError, match="lexicon entries"):
        reader.decode(images[:1], lexicon=["1x"])


def test_sdnn_recognize_with_known_lengths_reads_the_best_string_of_that_length():
    """Law (as for the segmentation reader): ``length=n`` reads the same word as a lexicon of every n-digit
    string; images with too few frames for n digits are read as without it."""
    torch.manual_seed(5)
    images, labels = images_and_labels(4, seed=6, lengths=(2, 3))
    reader = SDNNReader(sdnn_network(), lengths=None).double()
    free = reader.decode(images)
    for n in (1, 2, 3):
        every = ["".join(d) for d in itertools.product("0123456789", repeat=n)]
        texts = recognize(images, reader, length=n)
        assert texts == reader.decode(images, lexicon=every)
        assert all(len(t) == n for t in texts)
    assert recognize(images, reader, length=400) == free  # more digits than frames: read as without it


def _word_score(lex: gtn.Fsa, word: str) -> float:
    """A deterministic lexicon's score of ``word``: its arcs' scores along the word, then the final arc."""
    arcs, sc = lex.arcs.tolist(), lex.scores.double().tolist()
    state, total = 0, 0.0
    for lab in digits_to_labels(word) + [-1]:
        (k,) = [k for k, (a, _, lb) in enumerate(arcs) if a == state and lb == lab]
        state, total = arcs[k][1], total + sc[k]
    return total


def test_sdnn_confidence_is_the_posterior_of_the_reading():
    """Law: the SDNN's confidence is the posterior of the string read, over every frame-label sequence: the
    sequences the decoding graph accepts (the reading rule; the counting model's lengths, or the lexicon's
    words with their scores; where nothing fits, the free character model) whose reading is the string,
    against all the sequences it accepts. Enumerates all 11^4 sequences of 4 frames."""
    g = torch.Generator().manual_seed(7)
    T, B = 4, 4
    lp = torch.randn(B, T, 11, generator=g, dtype=torch.float64) * 2
    dense = gtn.DenseFsaVec(lp, torch.tensor([4, 4, 3, 2]))
    seqs = torch.tensor(list(itertools.product(range(11), repeat=T)))
    rule = [reads(s) for s in seqs.tolist()]
    words = ["3", "12", "77", "5"]
    lex = lexicon_fsa(words, torch.float64)
    lex = gtn.Fsa(lex.arcs, torch.randn(lex.num_arcs, generator=g, dtype=torch.float64), num_states=lex.num_states)
    wscore = {w: _word_score(lex, w) for w in words}
    for lengths, lexicon in (((1, 2), None), ((2, 2), None), (None, None), ((1, 2), lex), ((2, 2), ["12", "77"])):
        reader = SDNNReader(sdnn_network(), lengths=lengths).double()
        texts = reader._read(dense, False, lexicon)
        conf = reader.confidence(dense, texts, lexicon)
        for i in range(B):
            n = int(dense.lengths[i])
            keep = [j for j, s in enumerate(seqs.tolist()) if all(v == 0 for v in s[n:])]  # one per sequence of n frames
            score = {j: float(lp[i, torch.arange(n), seqs[j, :n]].sum()) for j in keep}
            reading = {j: "".join(str(r - 1) for r in rule[j][1]) for j in keep if rule[j][0]}

            def allowed(mode):
                if mode == "lexicon":
                    ws = lexicon if isinstance(lexicon, list) else words
                    extra = wscore if not isinstance(lexicon, list) else {w: 0.0 for w in ws}
                    return {j: score[j] + extra[w] for j, w in reading.items() if w in ws}
                if mode == "counting":
                    return {j: score[j] for j, w in reading.items() if lengths[0] <= len(w) <= lengths[1]}
                return {j: score[j] for j in reading}
            modes = (["lexicon"] if lexicon is not None else []) + (["counting"] if lengths else []) + ["free"]
            acc = next(a for a in (allowed(m) for m in modes) if a)
            expect = math.exp(logsumexp(v for j, v in acc.items() if reading[j] == texts[i]) - logsumexp(acc.values()))
            assert abs(float(conf[i]) - expect) < 1e-9, (lengths, lexicon, i, texts[i], float(conf[i]), expect)
    # decode(..., return_confidence=True) on images: the same as confidence() on their frames
    images, _ = images_and_labels(2, seed=8, lengths=(2, 3))
    reader = SDNNReader(sdnn_network()).double()
    texts, conf = reader.decode(images, return_confidence=True)
    assert texts == reader.decode(images)
    assert torch.equal(conf, reader.confidence(reader.emissions(images), texts))
    texts, frames, conf2 = reader.decode(images, return_frames=True, lexicon=["123", "45"], return_confidence=True)
    assert bool(((conf2 > 0) & (conf2 <= 1)).all())


def test_fused_reading_equals_the_lattice_reading():
    """Decoding reads each image's frame labels from the fused Viterbi score's gradient, under the first of
    (lexicon,) counting model, free model that has a path; it must give the Viterbi path of the lattice
    (`_free_lattice` + `_best_paths`, the reference), frame for frame, on random float64 emissions (no ties),
    including images too short for the counting model (read by the free model)."""
    g = torch.Generator().manual_seed(11)
    for trial in range(12):
        B = 6
        lengths = torch.randint(1, 14, (B,), generator=g)
        lp = torch.randn(B, int(lengths.max()), 11, generator=g, dtype=torch.float64) * 3
        dense = gtn.DenseFsaVec(lp, lengths)
        for reader_lengths in ((2, 3), None, (1, 1), (4, 6)):
            reader = SDNNReader(sdnn_network(), lengths=reader_lengths).double()
            texts, frames = reader._read(dense, return_frames=True)
            ref_texts, ref_frames = reader._best_paths(reader._free_lattice(dense), True)
            assert texts == ref_texts and frames == ref_frames, (trial, reader_lengths)
            if reader_lengths == (4, 6):  # short images cannot hold 4 digits: the free model reads them
                assert any(len(t) < 4 for t in texts) or bool((lengths >= 7).all())
