"""Benchmark loaders for every CSV layout, subject → category maps, and the exact k-shot prompt text."""

from __future__ import annotations

import json

import pytest

from ember.errors import EmberError
from ember.evaluation.benchmarks import CATEGORIES, Question, Subject, load_benchmark, spec_for, subject_table
from ember.evaluation.prompts import build_prompt

from .conftest import write_csv


def test_cmmlu_layout(cmmlu_dir):
    subjects = load_benchmark("cmmlu", str(cmmlu_dir), limit=2)
    assert [s.name for s in subjects] == ["agronomy", "chinese_history"]
    agro, hist = subjects
    assert agro.categories == ("Other",) and agro.display == "农学"
    assert hist.categories == ("Humanities", "China specific")
    assert len(agro.questions) == 2 and len(agro.dev) == 2  # --limit cuts the evaluated split only
    assert agro.questions[0] == Question("agronomy问题0", ("甲", "乙", "丙", "丁"), 1, "0", "")


def test_ceval_layout_uses_official_mapping(tmp_path):
    root = tmp_path / "ceval"
    header = ["id", "question", "A", "B", "C", "D", "answer"]
    write_csv(root / "dev" / "logic_dev.csv", [*header, "explanation"], [[0, "示例", "a", "b", "c", "d", "A", "因为"]])
    write_csv(root / "val" / "logic_val.csv", header, [[0, "问题", "a", "b", "c", "d", "D"]])
    (root / "subject_mapping.json").write_text(json.dumps({"logic": ["Logic", "逻辑学X", "Humanities"]}), encoding="utf-8")
    (subject,) = load_benchmark("ceval", str(root))
    assert subject.display == "逻辑学X"  # the data's own mapping wins over the built-in table
    assert subject.categories == ("Humanities",)
    assert subject.dev[0].explanation == "因为" and subject.questions[0].gold == "D"


def test_mmlu_both_layouts(tmp_path):
    hf = tmp_path / "hf"
    header = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
    write_csv(hf / "dev" / "anatomy_dev.csv", header, [["Q dev", "w", "x", "y", "z", 2]])
    write_csv(hf / "test" / "anatomy_test.csv", header, [["Q1", "w", "x", "y", "z", 1]])
    orig = tmp_path / "orig"  # hendrycks tarball: data/{dev,test}, no header, letter answers
    write_csv(orig / "data" / "dev" / "anatomy_dev.csv", None, [["Q dev", "w", "x", "y", "z", "C"]])
    write_csv(orig / "data" / "test" / "anatomy_test.csv", None, [["Q1", "w", "x", "y", "z", "B"]])
    a = load_benchmark("mmlu", str(hf))[0]
    b = load_benchmark("mmlu", str(orig))[0]
    assert a.questions == b.questions == [Question("Q1", ("w", "x", "y", "z"), 1)]
    assert a.dev[0].gold == b.dev[0].gold == "C"
    assert a.categories == ("Other",) and a.display == "anatomy"


def test_errors_name_the_fix(cmmlu_dir, tmp_path):
    with pytest.raises(EmberError, match="did you mean 'agronomy'"):
        load_benchmark("cmmlu", str(cmmlu_dir), subjects=["agronomyy"])
    with pytest.raises(EmberError, match="no test/ folder"):
        load_benchmark("cmmlu", str(tmp_path))
    with pytest.raises(EmberError, match="unknown benchmark"):
        spec_for("hellaswag")
    write_csv(tmp_path / "bad" / "test" / "x.csv", ["", "Question", "A", "B", "C", "D", "Answer"], [[0, "q", 1, 2, 3, 4, "E"]])
    with pytest.raises(EmberError, match=r"x.csv:2: answer 'E'"):
        load_benchmark("cmmlu", str(tmp_path / "bad"))


def test_category_tables():
    sizes = {name: len(subject_table(name)) for name in ("cmmlu", "ceval", "mmlu")}
    assert sizes == {"cmmlu": 67, "ceval": 52, "mmlu": 57}
    for name in sizes:
        for subject, info in subject_table(name).items():
            assert set(info["categories"]) <= set(CATEGORIES), (name, subject)
    mmlu = [info["categories"][0] for info in subject_table("mmlu").values()]
    assert {c: mmlu.count(c) for c in set(mmlu)} == {"STEM": 18, "Humanities": 13, "Social Science": 12, "Other": 14}
    china = [s for s, info in subject_table("cmmlu").items() if "China specific" in info["categories"]]
    assert len(china) == 15 and all(len(subject_table("cmmlu")[s]["categories"]) == 2 for s in china)


def test_tables_match_shared_data(shared_data):
    """Every subject in the shared copies has an entry; the C-Eval table agrees with its official mapping."""
    root = shared_data / "eval"
    assert {p.stem for p in (root / "cmmlu" / "test").glob("*.csv")} == set(subject_table("cmmlu"))
    assert {p.stem[: -len("_test")] for p in (root / "mmlu" / "test").glob("*.csv")} == set(subject_table("mmlu"))
    official = json.loads((root / "ceval" / "subject_mapping.json").read_text(encoding="utf-8"))
    assert {k: ([v[2]], v[1]) for k, v in official.items()} == {
        k: (v["categories"], v["zh"]) for k, v in subject_table("ceval").items()}


SUBJECT = Subject("agronomy", ("Other",), "农学",
                  dev=[Question("示例一", ("甲", "乙"), 1), Question("示例二", ("丙", "丁"), 0)],
                  questions=[Question("问题", ("a", "b", "c", "d"), 3)])


def test_plain_prompt_exact_text():
    p = build_prompt(spec_for("cmmlu"), SUBJECT, SUBJECT.questions[0], shots=1, form="plain")
    assert p.text == ("以下是关于农学的单项选择题，请直接给出正确答案的选项。\n\n"
                      "示例一\nA. 甲\nB. 乙\n答案：B\n\n"
                      "问题\nA. a\nB. b\nC. c\nD. d\n答案：")
    assert p.continuations == ("A", "B", "C", "D") and p.shots == 1 and p.add_special_tokens
    en = Subject("anatomy", ("Other",), "anatomy", dev=[], questions=[Question("Q?", ("x", "y"), 0)])
    p = build_prompt(spec_for("mmlu"), en, en.questions[0], shots=5, form="plain")
    assert p.text == "The following are multiple choice questions (with answers) about anatomy.\n\nQ?\nA. x\nB. y\nAnswer:"
    assert p.continuations == (" A", " B") and p.shots == 0


def test_chat_prompt_uses_the_tokenizer_template(smol_tokenizer):
    from ember.data.render import Renderer

    p = build_prompt(spec_for("cmmlu"), SUBJECT, SUBJECT.questions[0], shots=2, form="chat",
                     renderer=Renderer(smol_tokenizer))
    expected = smol_tokenizer.apply_chat_template([
        {"role": "user", "content": "以下是关于农学的单项选择题，请直接给出正确答案的选项。\n\n示例一\nA. 甲\nB. 乙"},
        {"role": "assistant", "content": "B"},
        {"role": "user", "content": "示例二\nA. 丙\nB. 丁"},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "问题\nA. a\nB. b\nC. c\nD. d"},
    ], tokenize=False, add_generation_prompt=True)
    assert p.text == expected and p.text.endswith("<|im_start|>assistant\n")
    assert p.continuations == ("A", "B", "C", "D") and not p.add_special_tokens


def test_hub_rows(monkeypatch):
    """The hub code path (offline here): `datasets.load_dataset(hub_id, subject, split=...)` rows in cais/mmlu form."""
    import datasets

    calls = []

    def fake_load_dataset(hub_id, subject, split):
        calls.append((hub_id, subject, split))
        answer = 2 if split == "dev" else 0
        return [{"question": f"{subject} {split}?", "subject": subject, "choices": ["w", "x", "y", "z"], "answer": answer}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    (subject,) = load_benchmark("mmlu", None, subjects=["virology"])
    assert calls == [("cais/mmlu", "virology", "dev"), ("cais/mmlu", "virology", "test")]
    assert subject.questions == [Question("virology test?", ("w", "x", "y", "z"), 0)] and subject.dev[0].gold == "C"
    with pytest.raises(EmberError, match="no subject 'virologyy'"):
        load_benchmark("mmlu", "cais/mmlu", subjects=["virologyy"])


def test_lm_eval_chat_layout(smol_tokenizer):
    """lm-evaluation-harness 0.4 with --apply_chat_template --fewshot_as_multiturn: the description is the system
    message, each user turn keeps its "Answer:" cue, the shots answer with the bare letter, no target delimiter."""
    from ember.data.render import Renderer

    en = Subject("anatomy", ("STEM",), "anatomy",
                 dev=[Question("S1?", ("p", "q"), answer=1), Question("S2?", ("r", "s"), answer=0)],
                 questions=[Question(" Q? ", ("x", "y"), answer=0)])
    p = build_prompt(spec_for("mmlu"), en, en.questions[0], shots=2, form="lm-eval-chat", renderer=Renderer(smol_tokenizer),
                     system="Be exact.")
    assert p.text == (
        "<|im_start|>system\nBe exact.\n\nThe following are multiple choice questions (with answers) about anatomy.\n\n"
        "<|im_end|>\n<|im_start|>user\nS1?\nA. p\nB. q\nAnswer:<|im_end|>\n<|im_start|>assistant\nB<|im_end|>\n"
        "<|im_start|>user\nS2?\nA. r\nB. s\nAnswer:<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
        "<|im_start|>user\nQ?\nA. x\nB. y\nAnswer:<|im_end|>\n<|im_start|>assistant\n"
    )
    assert p.continuations == ("A", "B") and not p.add_special_tokens
