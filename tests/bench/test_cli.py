"""Arguments, the report's shape, its table and its plot (no MPI job)."""

import json

import pytest

from conformance.bench.cli import build_parser, main, parse_ops
from conformance.bench.formulas import DEFAULT_OPS
from conformance.bench.output import SCHEMA, make_report, read_json, render_table, write_json


def test_defaults():
    args = build_parser().parse_args([])
    assert args.ops == list(DEFAULT_OPS)
    assert args.sizes[0] == 8 and args.sizes[-1] == 64 << 20
    assert args.dtype == "float32" and args.baseline and args.np is None


def test_options_parse():
    argv = ["--backend", "mlx", "--np", "2", "--ops", "all_sum,sendrecv", "--sizes", "8,1K,64M"]
    args = build_parser().parse_args([*argv, "--no-baseline", "--reps", "3"])
    assert (args.backend, args.np, args.ops) == ("mlx", 2, ["all_sum", "sendrecv"])
    assert args.sizes == [8, 1024, 64 << 20]
    assert not args.baseline and args.reps == 3


@pytest.mark.parametrize(
    "argv",
    [["--np", "0"], ["--ops", "all_prod"], ["--sizes", "8,x"], ["--reps", "0"], ["--np", "two"]],
)
def test_bad_options_exit_with_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_parse_ops_keeps_order_and_dedups():
    assert parse_ops("sendrecv, all_sum,sendrecv") == ["sendrecv", "all_sum"]
    with pytest.raises(ValueError):
        parse_ops("")


def _side(median, busbw):
    time = {"median": median, "p25": median, "p75": median, "min": median, "max": median}
    time |= {"count": 3, "spread": 0.0}
    return {"time": time, "algbw_GBps": busbw, "busbw_GBps": busbw, "samples": [median] * 3}


def _report():
    row = {
        "op": "all_sum",
        "mode": "collective",
        "size": 1 << 20,
        "nbytes": 1 << 20,
        "in_count": 1 << 18,
        "out_count": 1 << 18,
        "iters": 10,
        "ops_per_iter": 1,
        "window": None,
        "backend": _side(2e-3, 0.5) | {"error": None},
        "baseline": _side(1e-3, 1.0) | {"error": None},
        "ratio": {"median": 0.5, "p25": 0.45, "p75": 0.55, "min": 0.4, "max": 0.6, "count": 3},
        "check": "all_sum: element 0 is 3.0, expected 2.0",
    }
    failed = row | {
        "op": "sum_scatter",
        "backend": {"time": None, "error": "rank 0: RuntimeError: nope"},
        "ratio": None,
        "check": None,
    }
    return make_report({"backend": "x", "np": 2, "dtype": "float32", "reps": 3}, [row, failed])


def test_table_shows_medians_ratio_and_problems():
    table = render_table(_report())
    row = next(line for line in table.splitlines() if line.strip().startswith("1M"))
    assert "2000.00" in row and "1000.00" in row and "0.50" in row
    assert "wrong result: all_sum: element 0" in table
    assert "backend failed: rank 0: RuntimeError: nope" in table


def test_json_round_trip(tmp_path):
    path = tmp_path / "r.json"
    report = _report()
    report["results"][0]["ratio"]["max"] = float("inf")
    write_json(report, path)
    loaded = read_json(path)
    assert loaded["schema"] == SCHEMA
    assert loaded["results"][0]["ratio"]["max"] is None
    (tmp_path / "bad.json").write_text(json.dumps({"results": []}))
    with pytest.raises(ValueError):
        read_json(tmp_path / "bad.json")


def test_plot_subcommand(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "r.json"
    write_json(_report(), path)
    png = tmp_path / "fig.png"
    assert main(["plot", str(path), str(path), "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", str(tmp_path / "missing.json"), "-o", str(png)]) == 2


def test_table_subcommand_prints_text_and_markdown(tmp_path, capsys):
    path = tmp_path / "r.json"
    write_json(_report(), path)
    assert main(["table", str(path)]) == 0
    assert "all_sum (time per op" in capsys.readouterr().out
    assert main(["table", "--markdown", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| 1M | 2000.00 | 0% | 0.50 | 1000.00 | 1.00 | 0.50 [0.45, 0.55] (wrong result: " in out
    assert "failed: rank 0: RuntimeError: nope" in out
    assert main(["table", str(tmp_path / "missing.json")]) == 2


def test_help_lists_every_subcommand(capsys):
    from conformance.bench.cli import SUBCOMMANDS

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert set(SUBCOMMANDS) >= {"plot", "table", "compare"}
    for name in SUBCOMMANDS:
        assert f"  {name} " in out, f"bench --help does not list {name!r}"
        # Each listed subcommand is really dispatched (its own parser answers --help).
        with pytest.raises(SystemExit) as sub:
            main([name, "--help"])
        assert sub.value.code == 0
        assert f"bench {name}" in capsys.readouterr().out


def test_plot_without_matplotlib_is_a_usage_error_before_measuring(monkeypatch, capsys):
    import sys

    from conformance.bench import launch

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails

    def no_job(*args, **kwargs):
        raise AssertionError("a job was launched although --plot cannot be honoured")

    monkeypatch.setattr(launch, "launch", no_job)
    assert main(["--np", "2", "--plot", "p.png"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "[bench]" in err[0] and "matplotlib" in err[0]


def test_two_runs_of_one_backend_get_distinct_legends():
    from conformance.bench.plot import legends

    one, two = _report(), _report()
    labels = legends([one, two], ["before.json", "after.json"])
    assert len(set(labels)) == 2
    assert "before.json" in labels[0] and "after.json" in labels[1]
    assert len(set(legends([one, two]))) == 2  # without names: by position
    assert len(set(legends([one, two], ["r.json", "r.json"]))) == 2  # same file twice
    other = make_report({**one["meta"], "backend": "mlx"}, one["results"])
    assert legends([one, other], ["a.json", "b.json"]) == [
        f"{one['meta']['backend']} ({one['meta']['np']} ranks)",
        f"mlx ({one['meta']['np']} ranks)",
    ]
