"""The data path at scale: answer spans in linear time (counted in template renders), split truncation that trains
every answer once, streaming reads, parallel encoding that changes nothing."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pyarrow as pa
import pytest

from ember.data.conversation import Conversation, Message
from ember.data.preview import spans
from ember.data.render import IGNORE_INDEX, Renderer
from ember.data.truncation import LOST_CUT, _Rounds, fit_samples
from ember.errors import DataError

SYSTEM = Message("system", "Be brief.")


def chat(rounds: int, system: bool = True, long_every: int = 0) -> Conversation:
    messages = [SYSTEM] if system else []
    for r in range(rounds):
        answer = f"Answer {r}: " + ("and so on " * 12 if long_every and r % long_every == 0 else "ok.")
        messages += [Message("user", f"Question {r}?"), Message("assistant", answer)]
    return Conversation(messages, f"chat.jsonl:{rounds}")


def trained_runs(enc, tokenizer) -> list[str]:
    return [tokenizer.decode(ids) for trained, ids in spans(enc) if trained]


@pytest.fixture
def fresh(smol_tokenizer):
    """A renderer of its own (its span layout starts empty)."""
    return Renderer(smol_tokenizer)


def test_spans_cost_two_renders_per_conversation_whatever_its_length(fresh):
    fresh.encode(chat(3))  # the first conversations are checked against exact prefix renders (audit)
    fresh.encode(chat(3, system=False))
    fresh.encode(chat(5))
    for rounds in (4, 40, 160):
        before = fresh.render_calls
        fresh.encode(chat(rounds))
        assert fresh.render_calls - before == 2, rounds  # the conversation and its skeleton, nothing per turn


def test_auditing_a_long_first_conversation_renders_the_prefixes_of_its_audited_answers_only(fresh):
    from ember.data.layout import AUDITED_ANSWERS

    conv = chat(160)
    fresh.encode(conv)  # the renderer's first conversation: audited (placed spans checked against prefix renders)
    assert fresh.render_calls <= 2 + 2 * (AUDITED_ANSWERS + 1)  # not 2 per answer: 160 answers would be 320
    text = fresh.render_text(conv.messages)
    assert fresh.assistant_spans(conv, text) == fresh.exact_spans(conv, text)


@pytest.mark.parametrize("rounds", [1, 2, 7, 160])
@pytest.mark.parametrize("system", [True, False])
def test_linear_spans_equal_exact_prefix_rendering(fresh, rounds, system):
    for conv in (chat(3), chat(2, system=False), chat(rounds, system)):
        text = fresh.render_text(conv.messages)
        assert fresh.assistant_spans(conv, text) == fresh.exact_spans(conv, text)
    assert not fresh.layout.exact_only


def test_a_template_whose_answers_depend_on_their_position_falls_back_to_exact_spans(tmp_path, tokenizer_copy):
    from ember.data.setup import build_renderer

    numbered = ("{%- for m in messages %}<|im_start|>{{ m.role }}{% if m.role == 'assistant' %} {{ loop.index }}"
                "{% endif %}\n{{ m.content }}<|im_end|>\n{%- endfor %}"
                "{%- if add_generation_prompt %}<|im_start|>assistant {{ messages|length + 1 }}\n{%- endif %}")
    path = tmp_path / "numbered.jinja"
    path.write_text(numbered, encoding="utf-8")
    renderer = build_renderer(str(path), tokenizer_copy)
    renderer.layout.audits_left = 0  # no audit: only the glue comparison guards against reuse
    for conv in (chat(2), chat(6)):
        text = renderer.render_text(conv.messages)
        assert renderer.assistant_spans(conv, text) == renderer.exact_spans(conv, text)


def test_turns_truncation_costs_a_few_encodings_not_one_per_dropped_round(fresh):
    fresh.encode(chat(3))
    fresh.encode(chat(5))
    costs = {}
    for rounds in (40, 160):
        conv = chat(rounds)
        enc = fresh.encode(conv)
        before = fresh.render_calls
        out = fit_samples(fresh, conv, enc, "turns", 200, "all_assistant").samples[0]
        costs[rounds] = fresh.render_calls - before
        assert len(out.input_ids) <= 200 < len(fresh.encode(Conversation([SYSTEM, *conv.messages[-2 * (rounds - out.turns_dropped) - 2:]])).input_ids)
    assert costs[160] <= costs[40] <= 8, costs  # the later conversation reuses the measured system block


def _without_cuts(monkeypatch):
    monkeypatch.setattr(_Rounds, "cut", lambda self, *args, **kwargs: None)


def _samples(renderer, conv, mode, max_length):
    fitted = fit_samples(renderer, conv, renderer.encode(conv), mode, max_length, "all_assistant")
    return [(s.input_ids, s.labels, s.answers) for s in fitted.samples], fitted.lost


@pytest.mark.parametrize("mode", ["split", "turns"])
@pytest.mark.parametrize("system", [True, False])
def test_windows_cut_from_the_full_encoding_equal_their_own_encoding(smol_tokenizer, monkeypatch, mode, system):
    convs = [chat(12, system, long_every=4), chat(40, system, long_every=3), chat(7, system)]
    cuts = Renderer(smol_tokenizer)
    used = []
    original = _Rounds.cut
    monkeypatch.setattr(_Rounds, "cut", lambda self, *a, **k: used.append(original(self, *a, **k)) or used[-1])
    got = [_samples(cuts, conv, mode, 96) for conv in convs]
    assert sum(u is not None for u in used) >= (10 if mode == "split" else len(convs))  # cut, not encoded
    _without_cuts(monkeypatch)
    assert got == [_samples(Renderer(smol_tokenizer), conv, mode, 96) for conv in convs]


def chat_with_long_questions(rounds: int, system: bool) -> Conversation:
    messages = [SYSTEM] if system else []
    for r in range(rounds):
        question = f"Question {r}: " + ("why is that so " * 30 if r % 3 == 1 else "?")
        answer = f"Answer {r}: " + ("and so on " * 12 if r % 4 == 0 else "ok.")
        messages += [Message("user", question), Message("assistant", answer)]
    return Conversation(messages, f"questions.jsonl:{rounds}")


@pytest.mark.parametrize("mode", ["split", "turns"])
@pytest.mark.parametrize("system", [True, False])
def test_a_window_whose_question_is_cut_is_cut_from_the_full_encoding_too(smol_tokenizer, monkeypatch, mode, system):
    # Only the text between the tokens around the question is encoded again; the answer's tokens are reused.
    convs = [chat_with_long_questions(8, system), chat_with_long_questions(14, system)]
    used = []
    original = _Rounds.cut
    monkeypatch.setattr(_Rounds, "cut", lambda self, *a, **k: used.append((a, original(self, *a, **k))) or used[-1][1])
    got = [_samples(Renderer(smol_tokenizer), conv, mode, 96) for conv in convs]
    question_cuts = [out for args, out in used if len(args) > 3 and args[3] is not None]
    assert question_cuts and all(out is not None for out in question_cuts)
    _without_cuts(monkeypatch)
    assert got == [_samples(Renderer(smol_tokenizer), conv, mode, 96) for conv in convs]


def test_hard_split_tokens_are_the_added_tokens_nothing_can_merge_into(smol_tokenizer):
    hard = {smol_tokenizer.convert_ids_to_tokens(i) for i in Renderer(smol_tokenizer).hard_split_ids}
    assert {"<|im_start|>", "<|im_end|>", "<|endoftext|>"} <= hard


def test_without_hard_split_tokens_every_window_is_encoded(tmp_path, tokenizer_copy, monkeypatch):
    from ember.data.setup import build_renderer

    plain = ("{%- for m in messages %}{{ m.role }}: {{ m.content }}\n{%- endfor %}"
             "{%- if add_generation_prompt %}assistant: {%- endif %}")
    path = tmp_path / "plain.jinja"
    path.write_text(plain, encoding="utf-8")
    renderer = build_renderer(str(path), tokenizer_copy)
    conv = chat(12, long_every=4)
    cut = []
    original = _Rounds.cut
    monkeypatch.setattr(_Rounds, "cut", lambda self, *a, **k: cut.append(original(self, *a, **k)) or cut[-1])
    got = _samples(renderer, conv, "split", 96)
    assert cut and all(c is None for c in cut)  # no cut point lies before a token the tokenizer always splits at
    _without_cuts(monkeypatch)
    assert got == _samples(build_renderer(str(path), tokenizer_copy), conv, "split", 96)


def test_split_trains_every_answer_exactly_once_with_the_context_that_fits(renderer, smol_tokenizer):
    conv = chat(12, long_every=4)
    full = renderer.encode(conv)
    fitted = fit_samples(renderer, conv, full, "split", 96, "all_assistant")
    samples = fitted.samples
    assert len(samples) > 2 and all(len(s.input_ids) <= 96 for s in samples)
    answers = [m.content + "<|im_end|>" for m in conv.messages if m.role == "assistant"]
    assert [run for s in samples for run in trained_runs(s, smol_tokenizer)] == answers  # once each, in order
    assert sum(s.trained_tokens for s in samples) == full.trained_tokens and fitted.lost == {}
    for s in samples:
        text = smol_tokenizer.decode(s.input_ids)
        assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")  # the system prompt stays
        first_question = int(text.split("<|im_start|>user\nQuestion ")[1].split("?")[0])
        # as much earlier context as fits: one more round in front would not
        if first_question > 0:
            trained_from = int(trained_runs(s, smol_tokenizer)[0].split(":")[0].removeprefix("Answer "))
            earlier = [SYSTEM, *conv.messages[1 + 2 * (first_question - 1): 1 + 2 * (trained_from + len(trained_runs(s, smol_tokenizer)))]]
            assert len(renderer.encode(Conversation(earlier)).input_ids) > 96


def test_split_keeps_a_conversation_that_fits_as_it_is(renderer):
    conv = chat(3)
    enc = renderer.encode(conv)
    fitted = fit_samples(renderer, conv, enc, "split", 1024, "all_assistant")
    assert fitted.samples == [enc] and fitted.answer_tokens == enc.trained_tokens


def test_split_cuts_an_answer_that_alone_is_too_long_from_the_right_and_counts_it(renderer, smol_tokenizer):
    long_answer = " ".join(f"word{i}" for i in range(80))
    conv = Conversation([SYSTEM, Message("user", "Short?"), Message("assistant", "Yes."),
                         Message("user", "Tell me everything."), Message("assistant", long_answer)], "long.jsonl:1")
    full = renderer.encode(conv)
    fitted = fit_samples(renderer, conv, full, "split", 48, "all_assistant")
    first, cut = fitted.samples
    assert trained_runs(first, smol_tokenizer) == ["Yes.<|im_end|>"]
    assert len(cut.input_ids) == 48 and cut.input_ids == renderer.encode(
        Conversation([SYSTEM, conv.messages[3], conv.messages[4]])).input_ids[:48]
    kept = cut.trained_tokens
    assert long_answer.startswith(trained_runs(cut, smol_tokenizer)[0])  # the answer's start, no end-of-turn
    assert fitted.lost == {LOST_CUT: full.trained_tokens - first.trained_tokens - kept}


def test_report_states_answer_tokens_kept_and_lost_per_reason(write, make_config, prepare):
    long_answer = " ".join(f"word{i}" for i in range(80))
    rows = [{"messages": [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": f"A{i}."},
                          {"role": "user", "content": "More?"},
                          {"role": "assistant", "content": long_answer if i == 0 else "No."}]} for i in range(3)]
    path = write("chats.jsonl", rows)
    split = prepare(make_config([{"path": str(path)}], max_length=64)).data.report
    turns = prepare(make_config([{"path": str(path)}], max_length=64, truncation="turns")).data.report
    assert split.answer_tokens == turns.answer_tokens > 0
    assert set(split.answer_tokens_lost) == {LOST_CUT}
    assert sum(split.answer_tokens_lost.values()) < sum(turns.answer_tokens_lost.values())
    assert split.to_dict()["answer_tokens_kept"] == split.answer_tokens - split.answer_tokens_lost[LOST_CUT]
    assert ("answer tokens kept", f"{split.to_dict()['answer_tokens_kept']} of {split.answer_tokens} "
            f"({split.answer_share_kept:.1%}) — lost: {LOST_CUT}: {split.answer_tokens_lost[LOST_CUT]}") in split.summary_rows()


def test_worker_processes_split_the_same_way(write, make_config, prepare):
    rows = [{"messages": [m for r in range(1 + i % 9) for m in (
        {"role": "user", "content": f"Question {i}.{r}?"},
        {"role": "assistant", "content": f"Answer {i}.{r}" + " more" * (40 * (i % 7 == 0))})]} for i in range(300)]
    path = write("many.jsonl", rows)
    one, two = (prepare(make_config([{"path": str(path)}], max_length=80, num_proc=n)) for n in (1, 2))
    assert [(s.source, s.input_ids, s.labels) for s in one.data.train] == \
           [(s.source, s.input_ids, s.labels) for s in two.data.train]
    assert one.data.report.to_dict() == two.data.report.to_dict()
    assert one.data.report.split_into > 0


def test_a_record_over_max_record_bytes_is_a_skippable_error_naming_its_line(write, make_config, prepare):
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    huge = {"messages": [{"role": "user", "content": "x" * 5000}, {"role": "assistant", "content": "y"}]}
    path = write("big.jsonl", [good, huge, good])
    size = len(json.dumps(huge).encode()) + 1
    report = prepare(make_config([{"path": str(path)}], on_error="skip", max_record_bytes=2048)).data.report
    assert report.skipped_records == [{"source": f"{path}:2", "reason": f"record of {size:,} bytes is over "
                                       "data.max_record_bytes=2,048: raise the limit or split the record"}]
    assert (report.read, report.kept) == (3, 2)


def test_a_json_array_streams_records_across_read_chunks(write, monkeypatch):
    from ember.data import files

    monkeypatch.setattr(files, "_CHUNK", 7)  # records straddle many reads
    records = [{"instruction": f"q{i}", "input": "", "output": "答" * i} for i in range(30)]
    path = write("many.json", records)
    got = list(files.iter_records(str(path)))
    assert [r for _, r in got] == records
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [int(s.rsplit(":", 1)[1]) for s, _ in got] == [i + 1 for i, line in enumerate(lines) if line.strip() == "{"]


def test_a_one_line_json_array_streams_in_a_bounded_window(write, monkeypatch):
    """`json.dump(records, f)` writes one line: the reader still holds one record plus a read chunk, never the file
    (it used to keep every line it had not finished, and count lines from its start for every record)."""
    from ember.data import files

    monkeypatch.setattr(files, "_CHUNK", 64)
    held = []
    more = files._Window.more

    def watch(self, keep):
        shift = more(self, keep)
        held.append(len(self.text))
        return shift

    monkeypatch.setattr(files._Window, "more", watch)
    records = [{"instruction": f"q{i}", "input": "", "output": "答" * (i % 7)} for i in range(400)]
    path = write("minified.json", json.dumps(records, ensure_ascii=False))
    got = list(files.iter_records(str(path)))
    assert [r for _, r in got] == records and {s for s, _ in got} == {f"{path}:1"}
    longest = max(len(json.dumps(r, ensure_ascii=False)) for r in records)
    assert max(held) <= longest + 2 * 64 and path.stat().st_size > 100 * max(held)
    # an error far along the one line names its column
    text = path.read_text(encoding="utf-8")
    cut = write("cut.json", text[: len(text) // 2])
    with pytest.raises(json.JSONDecodeError) as whole:  # where json itself, given the whole text, finds the error
        json.loads(cut.read_text(encoding="utf-8"))
    with pytest.raises(DataError) as info:
        list(files.iter_records(str(cut)))
    assert str(info.value) == f"{cut}:1: invalid JSON: {whole.value.msg} (column {whole.value.colno})"
    assert whole.value.colno > 5000


@pytest.mark.parametrize("name", ["a.jsonl", "a.json", "lines.json", "a.csv", "a.txt", "a.parquet"])
def test_reading_progress_counts_every_byte_of_the_file(write, name):
    """The reading bar is in bytes against the files' total size: each reader reports every byte it reads, once."""
    from ember.data.files import iter_file

    chat = {"messages": [{"role": "user", "content": "Hi " * 50}, {"role": "assistant", "content": "Hello."}]}
    content = {"a.jsonl": [chat] * 40, "a.json": [chat] * 40, "a.csv": [{"query": "q " * 90, "response": "a"}] * 40,
               "a.txt": "a document\n" * 400, "a.parquet": [chat] * 3000,
               "lines.json": "".join(json.dumps(chat) + "\n" for _ in range(40))}[name]
    path = write(name, content)
    told = []
    records = sum(1 for _ in iter_file(path, progress=told.append))
    assert records in (40, 400, 3000) and sum(told) == path.stat().st_size and min(told) >= 0


def test_the_reading_bar_totals_the_local_files(write, make_config):
    from ember.data.pipeline import _local_bytes

    a = write("d/a.jsonl", [{"text": "x"}])
    b = write("d/sub/b.csv", [{"text": "y"}])
    c = write("c.txt", "z\n")
    assert _local_bytes(make_config([{"path": str(a.parent)}, {"path": str(c)}]).data) == sum(
        f.stat().st_size for f in (a, b, c))
    assert _local_bytes(make_config([{"path": "someone/dataset"}]).data) is None  # a hub id: counted in records


def test_formats_are_detected_per_file_inside_a_folder(write, make_config, prepare):
    write("mixed/a.json", [{"instruction": "Say hi", "input": "", "output": "hi"}])
    write("mixed/b.jsonl", [{"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}]}])
    write("mixed/c.jsonl", [{"messages": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "q"}]}])
    path = write("mixed/d.csv", [{"prompt": "u", "response": "v"}]).parent
    report = prepare(make_config([{"path": str(path)}])).data.report
    assert (report.read, report.kept, report.skipped) == (4, 4, {})


def test_hub_datasets_stream_through_the_datasets_api(write):
    """The hub reader with streaming on, pointed at a local file through the same `datasets` call (offline)."""
    from ember.data.files import _iter_hub

    rows = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(5)]
    path = write("local.jsonl", rows)
    got = list(_iter_hub("json", "train", None, True, data_files=str(path)))
    assert [r for _, r in got] == rows
    assert [s for s, _ in got] == [f"json[train]:row {i}" for i in range(1, 6)]


def test_cache_hit_maps_the_stored_samples(write, make_config, prepare, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"A{i}"}]}
            for i in range(50)]
    path = write("c.jsonl", rows)
    cfg = make_config([{"path": str(path)}], cache=True, cache_dir=str(tmp_path / "cache"))
    first, second = prepare(cfg), prepare(copy.deepcopy(cfg))
    assert (first.from_cache, second.from_cache) == (False, True)
    assert [s.input_ids for s in second.data.train] == [s.input_ids for s in first.data.train]
    assert all(str(p).startswith(str(tmp_path / "cache")) for p in second.data.train.paths)
    assert second.data.train.lengths() == [len(s.input_ids) for s in first.data.train]
    assert all(label == IGNORE_INDEX for label in second.data.train[0].labels[:3])


def test_rows_are_taken_batch_by_batch_in_the_order_asked(tmp_path):
    import pyarrow as pa

    from ember.data.store import ArrowWriter, read_table, take_rows

    schema = pa.schema([("n", pa.int64()), ("tags", pa.list_(pa.string()))])
    with ArrowWriter(tmp_path / "r.arrow", schema, batch_rows=7) as writer:  # 50 rows in 8 record batches
        for n in range(50):
            writer.write({"n": n, "tags": [str(n)] * (n % 3)})
    table = read_table([tmp_path / "r.arrow"], schema)
    rows = [49, 0, 13, 7, 6, 13, 48, 21]
    assert take_rows(table, rows) == table.take(rows).to_pylist()
    assert [r["n"] for r in take_rows(table, rows)] == rows


def test_sample_rows_read_back_exactly_as_written(tmp_path):
    """Token-id, label and weight lists are written through one flat array per batch: the rows read back equal."""
    from ember.data.store import SAMPLE_SCHEMA, ArrowWriter, read_table

    rows = [{"source": f"f.jsonl:{n}", "input_ids": list(range(n, 3 * n)), "labels": [IGNORE_INDEX] * n + list(range(n)),
             "weights": None if n % 2 else [0.1 * k for k in range(2 * n)], "length": 2 * n, "trained": n,
             "turns_dropped": 0, "truncated": n == 3} for n in range(6)]
    rows[4]["input_ids"] = []
    with ArrowWriter(tmp_path / "s.arrow", SAMPLE_SCHEMA, batch_rows=4) as writer:  # a batch with nulls, one without
        for row in rows:
            writer.write(row)
    back = read_table([tmp_path / "s.arrow"], SAMPLE_SCHEMA).to_pylist()
    as_float32 = lambda ws: None if ws is None else [float(pa.array([w], pa.float32())[0].as_py()) for w in ws]  # noqa: E731
    assert [{**r, "weights": as_float32(r["weights"])} for r in rows] == back
    with pytest.raises(OverflowError):
        with ArrowWriter(tmp_path / "big.arrow", SAMPLE_SCHEMA) as writer:
            writer.write({**rows[1], "input_ids": [2 ** 31]})


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssFile from /proc (Linux)")
def test_a_mapped_table_hands_back_the_pages_of_each_batch_it_took_rows_from(tmp_path):
    import random

    import pyarrow as pa

    from ember.data.store import ArrowWriter, MappedTable, read_table, take_rows

    def rss_file_kb() -> int:
        status = Path("/proc/self/status").read_text()
        return int(status.split("RssFile:")[1].split()[0])

    schema = pa.schema([("n", pa.int64()), ("text", pa.string())])
    with ArrowWriter(tmp_path / "r.arrow", schema, batch_rows=64) as writer:  # 24 MiB in 96 record batches
        for n in range(6144):
            writer.write({"n": n, "text": f"{n:08d}" * 512})
    rows = list(range(6144))
    random.Random(0).shuffle(rows)
    take_rows(read_table([tmp_path / "r.arrow"], schema), rows[:10])  # library pages faulted in before measuring

    start = rss_file_kb()
    mapped = MappedTable([tmp_path / "r.arrow"], schema)
    before, peak = rss_file_kb(), 0
    assert before - start < 512, before - start  # the 96 batch headers it read: handed back (6 MiB if kept)

    def release(batch):
        nonlocal peak
        peak = max(peak, rss_file_kb() - before)  # this batch's pages are still mapped here
        mapped.release(batch)

    kept = take_rows(mapped.table, rows, release)
    left = rss_file_kb() - before
    plain = read_table([tmp_path / "r.arrow"], schema)
    before = rss_file_kb()
    assert take_rows(plain, rows) == kept
    held = rss_file_kb() - before
    assert [r["n"] for r in kept] == rows and kept[0]["text"] == f"{rows[0]:08d}" * 512
    assert held > 12 * 1024  # without release: most of the file resident
    assert peak < 2 * 1024, peak  # with it: about one record batch (256 KiB) at a time
    assert left < 512, left  # and nothing between batches (a fault maps 64 KiB around the page) stays behind
