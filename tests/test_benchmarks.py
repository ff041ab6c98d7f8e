"""The benchmarks' recorded results (benchmarks/harness.py: RecordedOutput): the files docs quote survive a run that
fails or only prints its usage, and are replaced by one that finishes."""

import argparse
import sys
import types

import pytest

from benchmarks import harness


def test_a_benchmark_result_is_replaced_only_by_a_run_that_finishes(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(harness, "ROOT", tmp_path)
    result = tmp_path / "benchmarks" / "results" / "bench.txt"
    result.parent.mkdir(parents=True)
    result.write_text("the figures the docs quote\n")

    def run(argv):
        def main():
            p = argparse.ArgumentParser()
            p.add_argument("--rows", type=int, required=True)
            rows = p.parse_args(argv).rows
            print("while running, the result is still", result.read_text().strip())
            if rows < 0:
                raise RuntimeError("failed half way")
            print(f"{rows} rows")

        module = types.ModuleType("bench")
        module.__file__ = "benchmarks/bench.py"  # recorded names the result after its script
        main.__module__ = "bench"
        monkeypatch.setitem(sys.modules, "bench", module)
        harness.recorded(main)()

    for argv, error in (([], SystemExit), (["--help"], SystemExit), (["--rows", "-1"], RuntimeError)):
        with pytest.raises(error):
            run(argv)
        assert result.read_text() == "the figures the docs quote\n", argv
    run(["--rows", "3"])
    assert result.read_text() == "while running, the result is still the figures the docs quote\n3 rows\n"
    assert "3 rows" in capsys.readouterr().out, "the output is printed as well as recorded"
    assert list(result.parent.iterdir()) == [result], "no partial file is left behind"
