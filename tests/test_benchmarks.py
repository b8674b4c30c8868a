"""benchmarks/reference.py: each reference workload runs, and the project agrees with its baseline (OpenFst or
torch) on the workload's published checksum, at the default sizes with one or two timed rounds."""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reference.py"


def _module():
    spec = importlib.util.spec_from_file_location("benchmarks_reference", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _checksums(out):
    line = next(x for x in out.splitlines() if x.startswith("checksum: "))
    return dict(re.fullmatch(r"(.+) (-?[0-9.]+)", part).groups() for part in line[len("checksum: "):].split(", "))


def _table(out):
    """implementation -> (median ms, min ms, ratio) from the printed table."""
    rows = {}
    for x in out.splitlines():
        m = re.fullmatch(r"(\S+(?: \S+)?)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)", x)
        if m:
            rows[m.group(1)] = tuple(float(v) for v in m.groups()[1:])
    return rows


def test_ctc_script_prints_the_reference_checksum():
    # as a user runs it (a subprocess from elsewhere than the repository root: the script finds its own gtn)
    out = subprocess.run([sys.executable, str(SCRIPT), "ctc", "--rounds", "1"], capture_output=True, text=True,
                         check=True, cwd=SCRIPT.parents[2]).stdout
    assert _checksums(out) == {"project": "8757.6367", "torch": "8757.6367"}
    assert "torch threads: 1; rounds: 1; load average before " in out
    rows = _table(out)
    assert set(rows) == {"project", "torch"} and rows["torch"][2] == 1.0 and rows["project"][0] > 0


def test_compose_prints_the_reference_checksum(capsys):
    _module().main(["compose", "--rounds", "2"])
    out = capsys.readouterr().out
    assert _checksums(out) == {"project": "56.2737", "openfst": "56.2737"}
    assert "result arcs: project 26,963, openfst 26,991 " in out
    assert set(_table(out)) == {"project", "openfst"}


def test_forward_reports_fresh_and_cached_graphs(capsys):
    _module().main(["forward", "--rounds", "1"])
    out = capsys.readouterr().out
    assert _checksums(out) == {"project fresh": "5760.213", "project cached": "5760.213", "openfst": "5760.213"}
    assert "316,160 arcs" in out
    assert set(_table(out)) == {"project fresh", "project cached", "openfst"}


def test_fresh_copy_has_nothing_cached():
    mod = _module()
    x = mod.gtn.FsaVec([mod.gtn_fsa(*mod.lattice_arcs(i, 3, 2, 2)) for i in range(2)])
    mod.gtn.forward_score(x)
    assert x._cache  # scoring caches the plan on the graph ...
    y = mod.fresh_copy(x)
    assert y is not x and y._cache == {}  # ... and the fresh copy starts without it
    assert mod.torch.equal(mod.gtn.forward_score(y), mod.gtn.forward_score(x))


def test_bad_arguments():
    mod = _module()
    for argv in (["forward", "--rounds", "0"], ["ctc", "--size", "2", "10", "5", "11"], ["nope"]):
        with pytest.raises(SystemExit) as e:
            mod.main(argv)
        assert e.value.code == 2, argv


def _rmeps_module():
    path = SCRIPT.parent / "remove_epsilon.py"
    spec = importlib.util.spec_from_file_location("benchmarks_remove_epsilon", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_remove_epsilon_sweep_checks_both_semirings(capsys):
    """benchmarks/remove_epsilon.py at small sizes: a row per size and semiring, each checked against OpenFst
    (the check column is the largest distance difference, within the script's tolerance), and the slope line."""
    mod = _rmeps_module()
    mod.main(["--arcs", "100", "400", "--rounds", "1"])
    out = capsys.readouterr().out
    assert "1 thread(s); rounds: 1; backend: auto; load average before " in out
    rows = [x.split() for x in out.splitlines() if re.match(r"\s+[0-9,]+\s+[0-9,]+\s+[0-9,]+\s+[0-9.]+", x)]
    assert [r[0] for r in rows] == ["100", "400", "100", "400"]
    for r in rows:
        assert int(r[1].replace(",", "")) >= int(r[2].replace(",", "")) > 0  # OpenFst merges parallel arcs
        assert float(r[11]) <= 1e-4
    assert out.count("slope of log time against log arcs, 100 to 400 arcs") == 2


def test_remove_epsilon_sweep_graph_and_check():
    """The sweep's graph: acyclic, ~30 % epsilon arcs, every state on a successful path; the check refuses a
    result whose distances differ from OpenFst's."""
    mod = _rmeps_module()
    arcs, scores, n = mod.random_graph(3000)
    g = mod.gtn.Fsa(arcs, scores, num_states=n)
    assert g.num_arcs == 3000 and n == 1000
    assert bool((arcs[:, 1] > arcs[:, 0]).all())
    assert abs(float((arcs[:, 2] == 0).double().mean()) - 0.3) < 0.03
    assert mod.gtn.connect(g).num_states == n
    o = mod.to_openfst(arcs, scores, n, "log64")
    o.rmepsilon()
    r = mod.gtn.remove_epsilon(g)
    assert mod.check(r, o, g, "log") < 1e-7
    bad = mod.gtn.Fsa(r.arcs, r.scores + 0.01 * (r.arcs[:, 0] == 5), num_states=r.num_states)
    with pytest.raises(SystemExit, match="check failed: distances differ"):
        mod.check(bad, o, g, "log")


def test_ctc_sweep_prints_a_row_per_shape_and_thread_count():
    """benchmarks/ctc_sweep.py on its smallest shape: both losses agree (the script checks), a row with both
    timings, the ratio, both peak-memory figures (fresh subprocesses) and the load."""
    script = SCRIPT.parent / "ctc_sweep.py"
    out = subprocess.run([sys.executable, str(script), "--B", "8", "--T", "200", "--C", "28", "--U", "40",
                          "--rounds", "1", "--threads", "1"], capture_output=True, text=True, check=True,
                         cwd=SCRIPT.parents[2]).stdout
    rows = [x for x in out.splitlines() if x.startswith("| 8 | 200 | 28 | 40 |")]
    assert len(rows) == 1, out
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    threads, load, p_ms, t_ms, ratio, p_mib, t_mib, loss = cells[4:]
    assert threads == "1" and float(load) >= 0 and float(p_ms) > 0 and float(t_ms) > 0 and float(ratio) > 0
    assert float(p_mib) >= 0 and float(t_mib) > 0 and loss == "4376.30"
    assert "worst project / torch: " in out
    with pytest.raises(subprocess.CalledProcessError):  # no shape with U < T
        subprocess.run([sys.executable, str(script), "--T", "40", "--U", "40", "--no-memory"], capture_output=True,
                       check=True)
