"""Every record accounted for: `ember data export` and `ember train` print what was skipped and always leave the
data report, also when nothing is left to train; an output that cannot be written fails before any work."""

from __future__ import annotations

import json

import pytest
import yaml

from ember.cli import main

GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}


def _config(tmp_path, records, **data):
    path = tmp_path / "chat.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    cfg = {"stage": "sft", "data": {"datasets": [{"path": str(path)}], "on_error": "skip", "cache": False, **data}}
    out = tmp_path / "run.yaml"
    out.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return out, path


def test_export_prints_the_skips_and_writes_the_report(tmp_path, capsys, smollm2_dir):
    cfg, data = _config(tmp_path, [GOOD, "not json", {"messages": 3}, GOOD])
    out = tmp_path / "samples.jsonl"
    assert main(["data", "export", str(cfg), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[:3] == ["skipped 2 of 4 records: invalid JSON (1), expected list, got int (1)",
                           f"  {data}:2: invalid JSON: Expecting value (column 1)",
                           f"  {data}:3: expected list, got int"]
    assert printed[-1] == f"wrote 2 samples to {out} (data report: {out}.report.json)"
    report = json.loads((tmp_path / "samples.jsonl.report.json").read_text(encoding="utf-8"))
    assert (report["read"], report["kept"], len(report["skipped_records"])) == (4, 2, 2)


def test_when_everything_is_skipped_the_report_is_still_written(tmp_path, capsys, smollm2_dir):
    cfg, data = _config(tmp_path, ["not json", "[1]"])
    out = tmp_path / "samples.jsonl"
    report = tmp_path / "reports" / "skips.json"
    assert main(["data", "export", str(cfg), "--out", str(out), "--report", str(report)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {data}: the dataset has zero trainable tokens after processing (2 records read; "
                          "2 skipped as invalid")
    assert err.rstrip().endswith(f"; the data report is {report}")
    saved = json.loads(report.read_text(encoding="utf-8"))
    assert [r["source"] for r in saved["skipped_records"]] == [f"{data}:1", f"{data}:2"]


def test_an_output_that_cannot_be_written_fails_before_processing(tmp_path, capsys, smollm2_dir, monkeypatch):
    cfg, _ = _config(tmp_path, [GOOD])
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")

    def never(*args, **kwargs):
        raise AssertionError("the data was processed before the output was checked")

    monkeypatch.setattr("ember.training.prepare.prepare_data", never)
    assert main(["data", "export", str(cfg), "--out", str(blocker / "samples.jsonl")]) == 2
    assert capsys.readouterr().err == (f"error: cannot write {blocker / 'samples.jsonl'}: {blocker} is a file, "
                                       "not a folder\n")
    assert main(["data", "export", str(cfg), "--out", str(tmp_path)]) == 2  # a folder where the file would go
    assert capsys.readouterr().err == f"error: cannot write {tmp_path}: it is a folder, not a file\n"


def test_train_writes_the_report_when_nothing_is_left(tiny_run_config, tmp_path, write):
    from ember.errors import DataError
    from ember.training.run import train

    path = write("bad.jsonl", "not json\n")
    cfg = tiny_run_config(f"data.datasets.0.path={path}", "data.on_error=skip")
    with pytest.raises(DataError, match=r"the data report is .*data_report\.json$"):
        train(cfg)
    report = json.loads((tmp_path / "run" / "data_report.json").read_text(encoding="utf-8"))
    assert report["skipped_records"] == [{"source": f"{path}:1", "reason": "invalid JSON: Expecting value (column 1)"}]


def test_train_fails_before_any_work_when_output_dir_cannot_be_written(tiny_run_config, tmp_path, monkeypatch):
    import errno
    import tempfile

    from ember.errors import ConfigError
    from ember.training.run import train

    def never(*args, **kwargs):
        raise AssertionError("work started before output.dir was checked")

    monkeypatch.setattr("ember.models.loading.check_reachable", never)
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        train(tiny_run_config(f"output.dir={blocker / 'run'}"))
    assert str(info.value) == f"cannot write {blocker / 'run' / 'ember_run.yaml'}: {blocker} is a file, not a folder"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", full)
    with pytest.raises(ConfigError) as info:
        train(tiny_run_config())
    assert str(info.value) == f"cannot write {tmp_path / 'run' / 'ember_run.yaml'}: the disk is full"


def test_a_final_save_that_fails_stops_with_a_message(tiny_run_config, tmp_path, monkeypatch):
    import errno

    from ember.errors import TrainingStopped
    from ember.training.run import train
    from ember.training.trainer import EmberTrainer

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(EmberTrainer, "save_model", full)
    with pytest.raises(TrainingStopped) as info:
        train(tiny_run_config())
    assert str(info.value) == (
        f"training finished but the model could not be written into {tmp_path / 'run'}: [Errno 28] No space left on "
        "device; no complete checkpoint exists. Free space (or fix the permissions) and run again"
    )
    assert info.value.exit_code == 3


def test_samples_and_ratio_are_accounted_for(write, make_config, prepare):
    a = write("a.jsonl", [GOOD] * 3)
    b = write("b.jsonl", [GOOD, GOOD, {"messages": 3}])
    report = prepare(make_config([{"path": str(a), "samples": 2}, {"path": str(b), "ratio": 2.5}],
                                 on_error="skip")).data.report
    # a: 1 of 3 left out; b: 2 valid records drawn 5 times (3 more), 1 skipped
    assert (report.read, report.not_sampled, report.repeated) == (6, 1, 3)
    assert (report.kept_records, sum(report.skipped.values()), report.dropped) == (7, 1, 1)
    assert report.read + report.repeated == report.kept_records + sum(report.skipped.values()) + report.dropped
    assert report.kept == 7
