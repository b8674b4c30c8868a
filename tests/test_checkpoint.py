"""Tests of lenet.checkpoint: what ``lenet.load`` / ``read`` say about files that are not checkpoints, and which
function each checkpoint kind goes to (``lenet.classify`` and ``lenet.recognize`` given the other kind)."""
import os
import pickle
import warnings

import pytest
import torch

import lenet
from lenet import checkpoint
from lenet.recognizer import StringReader, save_reader
from lenet.sdnn import SDNNReader, save_sdnn, sdnn_network
from lenet.strings import make_strings


class NotData:
    """An arbitrary class: pickled into a torch file, it needs code to load (weights_only refuses it)."""


def one_line(e):
    """The error's text: one line, at most 300 characters besides the file's path."""
    text = str(e.value)
    assert "\n" not in text and len(text.split(": ", 1)[-1]) < 300, text
    return text


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    net = lenet.LeNet5()
    f = {"lenet5": checkpoint.save_model(net, d / "lenet5.pt"),
         "string_reader": save_reader(StringReader(net), d / "reader.pt"),
         "sdnn_reader": save_sdnn(SDNNReader(sdnn_network(net)), d / "sdnn.pt")}
    (d / "notes.txt").write_text("not a checkpoint\njust text\n")
    f["text"] = d / "notes.txt"
    torch.save(torch.zeros(3), d / "tensor.pt")
    f["tensor"] = d / "tensor.pt"
    torch.save(net.state_dict(), d / "state.pt")
    f["state_dict"] = d / "state.pt"
    torch.save({"x": NotData()}, d / "objects.pt")
    f["objects"] = d / "objects.pt"
    raw = (d / "lenet5.pt").read_bytes()
    (d / "truncated.pt").write_bytes(raw[:len(raw) // 2])
    f["truncated"] = d / "truncated.pt"
    f["dir"] = d
    return f


def test_random_bytes_are_not_a_checkpoint(tmp_path):
    """Random bytes (whatever their first byte: some start like a pickle) get one line, never torch's text."""
    gen = torch.Generator().manual_seed(0)
    for i in range(40):
        data = bytes(torch.randint(0, 256, (int(torch.randint(1, 3000, (1,), generator=gen)),), generator=gen,
                                   dtype=torch.uint8).tolist())
        if i < 8:  # a pickle protocol mark first: torch itself tries to read it
            data = b"\x80" + bytes([2 + i % 4]) + data
        path = tmp_path / f"r{i}.bin"
        path.write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning either
            with pytest.raises(ValueError) as e:
                lenet.load(path)
        text = one_line(e)
        assert text.startswith(str(path)) and "not a readable checkpoint" in text and "weights_only" not in text


@pytest.mark.parametrize("name, phrase", [
    ("text", "not a file written by torch.save"),
    ("tensor", "not a torch-gtn checkpoint (a Tensor"),
    ("state_dict", "a bare state_dict of"),
    ("objects", "Python objects other than tensors"),
    ("truncated", "damaged or truncated"),
    ("dir", "a directory"),
])
def test_files_that_are_not_checkpoints_get_one_line(files, name, phrase):
    for fn in (lenet.load, checkpoint.read, lambda p: lenet.recognize(make_strings(1, "test", seed=0)[0].image, p),
               lambda p: lenet.classify(torch.zeros(1, 28, 28, dtype=torch.uint8), p)):
        with pytest.raises(ValueError) as e:
            fn(files[name])
        text = one_line(e)
        assert text.startswith(str(files[name])) and phrase in text, text
        assert "weights_only" not in text and "Unpickl" not in text


def test_a_missing_file(tmp_path):
    for fn in (lenet.load, lambda p: lenet.recognize(make_strings(1, "test", seed=0)[0].image, p),
               lambda p: lenet.classify(torch.zeros(1, 28, 28, dtype=torch.uint8), p)):
        with pytest.raises(FileNotFoundError) as e:
            fn(tmp_path / "nowhere.pt")
        assert one_line(e) == f"{tmp_path / 'nowhere.pt'}: no such file (expected a checkpoint)"
    with pytest.raises(FileNotFoundError):
        lenet.load(os.fsencode(tmp_path / "nowhere.pt"))  # a bytes path too


def test_the_objects_file_really_needs_code(files):
    """The 'objects' file is what it claims: torch refuses it with weights_only, and reads it without."""
    with pytest.raises(pickle.UnpicklingError):
        torch.load(files["objects"], weights_only=True)
    assert isinstance(torch.load(files["objects"], weights_only=False)["x"], NotData)


@pytest.mark.parametrize("kind", ["string_reader", "sdnn_reader"])
def test_classify_given_a_reader_checkpoint_names_it_and_recognize(files, kind):
    with pytest.raises(ValueError) as e:
        lenet.classify(torch.zeros(2, 28, 28, dtype=torch.uint8), files[kind])
    text = one_line(e)
    assert f"a {kind!r} checkpoint" in text and "lenet.recognize reads" in text and "'lenet5'" in text
    # and the file is fine for the function it names
    assert isinstance(lenet.recognize(make_strings(1, "test", seed=0)[0].image, files[kind]), str)


def test_classify_given_a_loaded_reader(files):
    for kind in ("string_reader", "sdnn_reader"):
        reader = lenet.load(files[kind])
        with pytest.raises(TypeError, match=f"classify got a {type(reader).__name__}, a string reader .*"
                                            f"lenet.recognize"):
            lenet.classify(torch.zeros(2, 28, 28, dtype=torch.uint8), reader)


def test_recognize_given_a_lenet5_checkpoint_names_it_and_classify(files):
    image = make_strings(1, "test", seed=0)[0].image
    with pytest.raises(ValueError) as e:
        lenet.recognize(image, files["lenet5"])
    text = one_line(e)
    assert "a 'lenet5' checkpoint" in text and "lenet.classify reads" in text and "--lenet" in text
    assert lenet.classify(torch.zeros(2, 28, 28, dtype=torch.uint8), files["lenet5"]).shape == (2,)
    with pytest.raises(TypeError, match="recognize got a LeNet5, a digit classifier .*lenet.classify"):
        lenet.recognize(image, lenet.load(files["lenet5"]))
    with pytest.raises(TypeError, match="got int"):
        lenet.recognize(image, 3)


def test_describe_names_every_built_in_kind():
    assert "lenet.classify" in checkpoint.describe("lenet5")
    assert "lenet.recognize" in checkpoint.describe("string_reader")
    assert "lenet.recognize" in checkpoint.describe("sdnn_reader")
    assert checkpoint.describe("other") == "a 'other' checkpoint"
