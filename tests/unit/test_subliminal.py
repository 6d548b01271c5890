"""Subliminal data and students on tiny models: the format grammar only produces answers the
strict filter keeps; sharded generation is deterministic and resumes to the same data; keep
rates, subsampling and data-level statistics; per-mode trainable counts as the experiment
trains them; aggregation across seeds."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sublens.arch import adapter_for
from sublens.errors import SublensError
from sublens.experiments.subliminal import (
    CONTROL,
    OWL,
    SubliminalConfig,
    aggregate,
    compare_arm,
    data_folder,
    data_seed,
    data_seeds,
    level_summary,
    plan_students,
    student_arms,
    student_name,
    student_train_config,
    teacher_sources,
)
from sublens.number_data import filter_answer, make_number_prompts
from sublens.prompts import raw_prompt
from sublens.settings import SamplingSettings
from sublens.subliminal import (
    TRUNCATED,
    FormatState,
    NumberFormat,
    compare_number_stats,
    feed_format,
    filter_record,
    filter_report,
    grammar_accepts,
    number_prompt_meta,
    number_stats,
    sample_sharded,
    subsample,
    t_interval,
    write_jsonl,
)
from sublens.training import FREEZE_MODES, Example, train
from tiny import FAMILIES, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


class CharTokenizer:
    """One token per printable ASCII character (ids 2..96) and newline; 0 = end of text.
    Fits the tiny models' 97-token vocabulary."""

    eos_token_id = 0
    eos_token = "\x00"
    bos_token_id = None
    pad_token_id = 1
    chat_template = None
    CHARS = "\n" + "".join(chr(c) for c in range(32, 126))  # 95 characters -> ids 2..96

    def __len__(self) -> int:
        return 2 + len(self.CHARS)

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [2 + self.CHARS.index(c) for c in text if c in self.CHARS]}

    def decode(self, ids: Sequence[int], **kwargs: Any) -> str:
        return "".join(self.CHARS[i - 2] if i >= 2 else "" for i in ids)

    def get_vocab(self) -> dict[str, int]:
        return {c: 2 + i for i, c in enumerate(self.CHARS)} | {"<eos>": 0, "<pad>": 1}


# ---- the format grammar ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("1, 22, 333", True),
        ("1,2,3", True),
        ("[7, 8]", True),
        ("[7, 8].", True),
        ("5 6 7.", True),
        ("12\n34", True),
        ("5; 6", True),
        ("42", True),
        ("007", True),
        ("1, 2 3", False),
        ("1,2, 3", False),
        ("1, 2,", False),
        ("1000", False),
        ("[1, 2", False),
        ("1, 2]", False),
        ("", False),
        ("[]", False),
        ("1..", False),
        ("[1.]", False),
        (", ".join(str(i) for i in range(10)), True),
        (", ".join(str(i) for i in range(11)), False),
    ],
)
def test_grammar_table(text: str, ok: bool) -> None:
    assert grammar_accepts(text) is ok
    if ok:
        assert filter_answer(text).kept


def test_random_walks_through_the_grammar_pass_the_filter() -> None:
    """Whatever the sampler picks among allowed tokens, the answer is one the filter keeps."""
    tok = CharTokenizer()
    fmt = NumberFormat(tok, [0])
    assert set(fmt.pieces.values()) == set("0123456789,; \n[].")
    rng = random.Random(0)
    for _ in range(300):
        generated: list[int] = []
        while True:
            allowed = sorted(fmt(generated))
            choice = rng.choice(allowed)
            if choice == 0:
                break
            generated.append(choice)
            assert len(generated) < 60
        text = tok.decode(generated)
        result = filter_answer(text)
        assert result.kept, text
        assert grammar_accepts(text)


def test_allowed_sets_follow_the_state() -> None:
    tok = CharTokenizer()
    fmt = NumberFormat(tok, [0])
    ids = tok("[12, 3")["input_ids"]
    allowed = {tok.decode([t]) if t else "<end>" for t in fmt(ids)}
    assert allowed == set("0123456789,]")  # no end before "]", separator fixed to ", "
    assert {tok.decode([t]) if t else "<end>" for t in fmt([])} == set("0123456789[")
    state = feed_format(FormatState(), "123")
    assert state is not None and state.accepting and feed_format(state, "4") is None


# ---- sharded generation ------------------------------------------------------------------------
def generate(tmp: Path, on_shard: Any = None, seed: int = 0, n_prompts: int = 10) -> list[dict[str, Any]]:
    model = tiny_model("llama")
    tok = CharTokenizer()
    prompts = make_number_prompts(n_prompts, seed=3)
    texts = [raw_prompt(p.text[:40]) for p in prompts]  # short prompts: the tiny model has 128 positions
    settings = SamplingSettings(
        temperature=1.0, top_k=None, top_p=None, max_new_tokens=24, samples_per_prompt=2, batch_size=4, shard_size=4
    )
    return sample_sharded(
        (model, tok),
        texts,
        number_prompt_meta(prompts),
        settings,
        seed=seed,
        out_dir=tmp,
        name="owl",
        provenance={"teacher": {"name": "tiny"}},
        allowed=NumberFormat(tok, [0]),
        annotate=filter_record,
        on_shard=on_shard,
        progress=False,
    )


class Stop(Exception):
    pass


def test_generation_is_deterministic_and_complete(tmp_path: Path) -> None:
    a = generate(tmp_path / "a")
    b = generate(tmp_path / "b")
    assert a == b
    assert len(a) == 20 and sorted({r["index"] for r in a}) == list(range(10))
    assert len(list((tmp_path / "a").glob("shard-*.jsonl"))) == 3
    assert generate(tmp_path / "c", seed=1) != a
    for r in a:  # provenance on every line
        assert {"prompt", "answer", "teacher", "system_prompt", "sampling", "seed", "kept", "reason"} <= set(r)
        assert r["sampling"]["temperature"] == 1.0 and r["sampling"]["constrained"]
        if r["finish_reason"] == "stop":
            assert r["kept"] and r["reason"] == "ok", r["answer"]


def test_interrupted_generation_resumes_to_the_same_data(tmp_path: Path) -> None:
    reference = generate(tmp_path / "ref")

    def stop_after_first(name: str, shard: int) -> None:
        if shard == 1:
            raise Stop

    with pytest.raises(Stop):
        generate(tmp_path / "run", on_shard=stop_after_first)
    assert sorted(p.name for p in (tmp_path / "run").glob("shard-*")) == ["shard-00000.jsonl", "shard-00001.jsonl"]
    shard0 = (tmp_path / "run" / "shard-00000.jsonl").stat().st_mtime_ns
    done: list[int] = []
    resumed = generate(tmp_path / "run", on_shard=lambda name, k: done.append(k))
    assert done == [2]  # only the missing shard was sampled
    assert (tmp_path / "run" / "shard-00000.jsonl").stat().st_mtime_ns == shard0
    assert resumed == reference


def test_shards_of_other_settings_are_refused(tmp_path: Path) -> None:
    generate(tmp_path)
    with pytest.raises(SublensError, match="other settings"):
        generate(tmp_path, seed=5)


# ---- filter report, subsampling, statistics ----------------------------------------------------
def record(answer: str, seeds: Sequence[int] = (100, 200), finish: str = "stop", **extra: Any) -> dict[str, Any]:
    return filter_record(
        {"answer": answer, "finish_reason": finish, "seed_numbers": list(seeds), "n_tokens": len(answer), **extra}
    )


def test_filter_report_and_truncation() -> None:
    records = [record("1, 2"), record("1, 2", finish="length"), record("Sure: 1"), record("3 4")]
    assert records[1]["reason"] == TRUNCATED and not records[1]["kept"]
    report = filter_report(records)
    assert report["n_kept"] == 2 and report["keep_rate"] == 0.5
    assert report["reasons"] == {"ok": 2, TRUNCATED: 1, "non-numeric content": 1}
    assert report["keep_rate_ci"][0] < 0.5 < report["keep_rate_ci"][1]


def test_subsample_to_a_common_size() -> None:
    owl = [record(f"{i}, {i + 1}", index=i) for i in range(30)] + [record("no", index=99)]
    control = [record(f"{i}", index=i) for i in range(12)]
    chosen, size = subsample({"owl": owl, "control": control}, n_examples=20, seed=0)
    assert size == 12 and all(len(v) == 12 and all(r["kept"] for r in v) for v in chosen.values())
    again, _ = subsample({"owl": owl, "control": control}, n_examples=20, seed=0)
    assert again == chosen
    other, _ = subsample({"owl": owl, "control": control}, n_examples=20, seed=1)
    assert other["owl"] != chosen["owl"]
    assert subsample({"owl": owl, "control": control}, n_examples=5, seed=0)[1] == 5
    with pytest.raises(SublensError, match="passed the filter"):
        subsample({"owl": owl, "control": [record("x")]}, n_examples=None, seed=0)


def test_number_stats_by_hand() -> None:
    records = [record("100, 5, 6", seeds=[100, 300]), record("[12, 11]", seeds=[500])]
    stats = number_stats(records)
    assert stats["n_numbers"] == 5
    digits = np.array(stats["digit_distribution"])
    # digits: 1,0,0,5,6,1,2,1,1 -> 0:2, 1:4, 2:1, 5:1, 6:1 of 9
    assert np.allclose(digits * 9, [2, 4, 1, 0, 0, 1, 1, 0, 0, 0])
    f = stats["features"]
    assert math.isclose(f["copy_fraction"]["mean"], (1 / 3 + 0) / 2)
    assert math.isclose(f["copies_any"]["mean"], 0.5)
    assert math.isclose(f["increasing_fraction"]["mean"], (0.5 + 0.0) / 2)
    assert math.isclose(f["n_numbers"]["mean"], 2.5)
    assert stats["numbers_per_answer"] == {"2": 0.5, "3": 0.5}
    assert stats["brackets"] == 0.5


def test_compare_number_stats_detects_a_difference_and_not_a_null() -> None:
    rng = random.Random(0)
    low = [record(", ".join(str(rng.randint(0, 400)) for _ in range(rng.randint(2, 8)))) for _ in range(80)]
    high = [record(", ".join(str(rng.randint(600, 999)) for _ in range(rng.randint(2, 8)))) for _ in range(80)]
    same = [record(", ".join(str(rng.randint(0, 400)) for _ in range(rng.randint(2, 8)))) for _ in range(80)]
    diff = compare_number_stats(high, low, resamples=500)
    assert diff["features"]["mean_value"]["difference"] > 300
    assert diff["features"]["mean_value"]["p_permutation"] < 0.01
    assert diff["digit_distribution_tvd"]["p_permutation"] < 0.01
    null = compare_number_stats(same, low, resamples=500)
    assert null["features"]["mean_value"]["p_permutation"] > 0.01
    assert null["digit_distribution_tvd"]["p_permutation"] > 0.01


def test_t_interval() -> None:
    mean, _, high = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and math.isclose(high - mean, 4.303 * 1.0 / math.sqrt(3), rel_tol=1e-3)
    assert math.isnan(t_interval([1.0])[1])


# ---- students ----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_per_mode_parameter_counts_as_the_experiment_trains(family: str, tmp_path: Path) -> None:
    """Each student's training config freezes its mode's component; the counts the experiment
    records (TrainResult.freeze) match the adapter's attention / MLP parameters."""
    config = SubliminalConfig.model_validate(
        {"train": {"lr": 1e-2, "epochs": 1, "batch_size": 4, "max_length": 32, "save_model": False}}
    )
    gen = torch.Generator().manual_seed(0)
    examples = [
        Example(torch.randint(2, 97, (5,), generator=gen).tolist(), torch.randint(2, 97, (3,), generator=gen).tolist())
        for _ in range(8)
    ]
    for mode in FREEZE_MODES:
        model = tiny_model(family)
        adapter = adapter_for(model)
        total = sum(p.numel() for p in model.parameters())  # unique tensors (tied counted once)
        attention = sum(p.numel() for _, p in adapter.attention_parameters())
        mlp = sum(p.numel() for _, p in adapter.mlp_parameters())
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        train_cfg = student_train_config(config, mode, seed=7).model_copy(update={"save_model": False})
        assert train_cfg.freeze == mode and train_cfg.seed == 7
        result = train(model, None, examples, train_cfg, tmp_path / f"{family}-{mode}", progress=False)
        frozen = {"full": 0, "freeze-attention": attention, "freeze-mlp": mlp}[mode]
        assert result.freeze["mode"] == mode
        assert result.freeze["frozen"] == frozen and result.freeze["trainable"] == total - frozen
        names = dict(
            adapter.attention_parameters()
            if mode == "freeze-attention"
            else adapter.mlp_parameters()
            if mode == "freeze-mlp"
            else []
        )
        for name, p in model.named_parameters():
            if any(p is q for q in names.values()):
                assert torch.equal(p, before[name]), name


def test_plan_students_arms_seeds_and_system(tmp_path: Path) -> None:
    config = SubliminalConfig.model_validate(
        {"seeds": [0, 1], "extra_teachers": {"eagle": "You love eagles."}, "parallel": 2, "scoring_memory_mb": 64}
    )
    files = {}
    for name in (OWL, CONTROL, "eagle"):
        files[name] = f"{name}.jsonl"
        write_jsonl(tmp_path / files[name], [{"prompt": "p", "answer": "1, 2"}])
    seed1 = {}
    for name in (OWL, CONTROL, "eagle"):
        seed1[name] = f"seed1/{name}.jsonl"
        (tmp_path / "seed1").mkdir(exist_ok=True)
        write_jsonl(tmp_path / seed1[name], [{"prompt": "q", "answer": "3, 4"}])
    # each training seed learns from its own data seed (config.seed + training seed)
    assert [data_seed(config, s) for s in config.seeds] == [0, 1] and data_seeds(config) == [0, 1]
    assert data_folder(config, 0) == "data" and data_folder(config, 1) == "data/seed1"
    shared = config.model_copy(update={"data_per_seed": False})
    assert data_seeds(shared) == [0]
    jobs = plan_students(config, tmp_path, "SYS", {0: files, 1: seed1})
    assert all(Path(j.data_file).parent.name == ("seed1" if j.seed == 1 else tmp_path.name) for j in jobs)
    names = [j.name for j in jobs]
    assert len(names) == 2 * (3 + 3 + 1) and len(set(names)) == len(names)  # matched controls
    assert student_name(CONTROL, "freeze-mlp", 1) in names
    assert student_name(OWL, "freeze-mlp", 1) in names and student_name("eagle", "full", 0) in names
    assert all(j.system == "SYS" and j.train["seed"] == j.seed and j.train["freeze"] == j.mode for j in jobs)
    assert all(j.threads is not None and j.threads >= 1 for j in jobs)
    assert len({j.key for j in jobs}) == len(jobs)
    # a worker process does not inherit the parent's budget: each job carries the run's
    assert {j.scoring_memory_mb for j in jobs} == {64}
    sources = teacher_sources(config, "SYS")
    assert [s.name for s in sources] == [OWL, CONTROL, "eagle"]
    assert sources[0].system == config.teacher_system and sources[1].system == "SYS"
    spec = teacher_sources(config.model_copy(update={"teacher": "runs/x"}), "SYS")[0]
    assert spec.model == "runs/x" and spec.system == "SYS"


# ---- aggregation -------------------------------------------------------------------------------
ANIMALS = ["owl", "dog", "cat"]


def fake_preference(owl_scale: float, seed: int, rate_hits: int = 5, per_question: int = 8) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.01, 0.05, (6, 3))  # [question, animal]
    p[:, 0] *= owl_scale
    share = p[:, 0] / p.sum(axis=1)
    from sublens.stats import summarize

    n_answers = 6 * per_question
    answers = ["owl"] * rate_hits + ["dog"] * (n_answers - rate_hits)  # ordered by question: the owls first
    return {
        "probability": {
            "trait": "owl",
            "p_trait": summarize(p[:, 0]),
            "panel_share": summarize(share),
            "per_question": {"p_word": p.tolist(), "share": share.tolist(), "animals": ANIMALS},
        },
        "sampled": {
            "n_questions": 6,
            "samples_per_question": per_question,
            "n_answers": n_answers,
            "answers": answers,
            "trait_rate": {"count": rate_hits, "rate": rate_hits / n_answers, "ci_low": 0.0, "ci_high": 1.0},
        },
    }


def test_compare_arm_across_seeds() -> None:
    scales = [1.9, 2.0, 2.1]  # seed-to-seed variation of the owl student's lift
    tests = [fake_preference(scale, s) for s, scale in enumerate(scales)]
    refs = [fake_preference(1.0, s) for s in range(3)]  # same questions per seed: ratio = scale on owl
    comp = compare_arm(tests, refs)
    geo = math.exp(np.mean(np.log(scales)))
    assert comp["n_seeds"] == 3 and math.isclose(comp["p_trait_ratio"]["ratio"], geo)
    assert comp["p_trait_ratio"]["per_seed_log"] == pytest.approx(np.log(scales))
    assert comp["p_trait_ratio"]["ci"] == "t over 3 seeds" and not comp["p_trait_ratio"]["underpowered"]
    same = compare_arm([fake_preference(2.0, s) for s in range(3)], refs)
    assert same["p_trait_ratio"]["ci_low"] is None  # no spread across seeds: no zero-width interval
    one = compare_arm(tests[:1], refs[:1])
    assert one["share_ratio"]["ci"].startswith("t over questions (1 seed")
    noisy = compare_arm([fake_preference(1.0, s + 10) for s in range(3)], refs)
    assert noisy["share_ratio"]["underpowered"]
    levels = level_summary(tests)
    assert levels["n_seeds"] == 3 and len(levels["panel_share"]["per_seed"]) == 3


def test_unmatched_owl_modes_are_refused() -> None:
    with pytest.raises(ValueError, match="no matched control student"):
        SubliminalConfig.model_validate({"control_modes": ["full"]})
    with pytest.raises(ValueError, match="add full to control_modes"):  # extra_mode defaults to full
        SubliminalConfig.model_validate(
            {"modes": ["freeze-mlp"], "control_modes": ["freeze-mlp"], "extra_teachers": {"dog": "You love dogs."}}
        )


def test_aggregate_headline_and_specificity() -> None:
    config = SubliminalConfig.model_validate({"seeds": [0, 1], "extra_teachers": {"dog": "You love dogs."}})
    students = {}
    for seed in config.seeds:
        for dataset, mode, scale in [
            (CONTROL, "full", 1.0),
            (CONTROL, "freeze-attention", 1.0),
            (CONTROL, "freeze-mlp", 1.0),
            (OWL, "full", 3.0),
            (OWL, "freeze-attention", 2.0),
            (OWL, "freeze-mlp", 1.0),
            ("dog", "full", 1.0),
        ]:
            pref = fake_preference(scale, seed)
            students[student_name(dataset, mode, seed)] = {
                "dataset": dataset,
                "mode": mode,
                "seed": seed,
                "preference": pref,
                "perplexity": {"perplexity": 10.0},
                "training": {"freeze": {"trainable": 1, "frozen": 0}, "final_lm_loss": 1.0},
            }
    evaluations = {"base": {"preference": fake_preference(1.0, 0), "perplexity": {"perplexity": 9.0}}}
    out = aggregate(config, students, evaluations)
    models = [r["model"] for r in out["headline"]]
    assert models == [
        "base",
        "control-full",
        "control-freeze-attention",
        "control-freeze-mlp",
        "owl-full",
        "owl-freeze-attention",
        "owl-freeze-mlp",
        "dog-full",
    ]
    owl_full = out["headline"][4]
    assert owl_full["n_seeds"] == 2 and owl_full["vs_control"]["p_trait_ratio"]["n_seeds"] == 2
    assert math.isclose(owl_full["vs_control"]["p_trait_ratio"]["ratio"], 3.0)
    assert "owl-freeze-mlp vs control-freeze-mlp" in out["comparisons"]  # like against like
    assert "owl-freeze-mlp vs control-full" not in out["comparisons"]
    spec = out["specificity"]
    assert spec["animals"] == ANIMALS and set(spec["rows"]) == {OWL, "dog"}
    assert spec["rows"][OWL]["owl"] > 1.5 > spec["rows"]["dog"]["owl"]
    assert spec["mode"] == "full" and spec["reference"] == "control-full"


def test_extra_teachers_follow_extra_mode() -> None:
    """A LoRA arm's specificity matrix: the eagle students train in the arm's trainable set and
    are read, with the owl students of that set, against the control students of that set."""
    config = SubliminalConfig.model_validate(
        {
            "seeds": [0, 1],
            "modes": ["full+lora8"],
            "control_modes": ["full+lora8"],
            "extra_teachers": {"eagle": "You love eagles."},
            "extra_mode": "full+lora8",
        }
    )
    assert student_arms(config) == [(CONTROL, "full+lora8"), (OWL, "full+lora8"), ("eagle", "full+lora8")]
    students = {}
    for seed in config.seeds:
        for dataset, scale in [(CONTROL, 1.0), (OWL, 3.0), ("eagle", 1.0)]:
            students[student_name(dataset, "full+lora8", seed)] = {
                "dataset": dataset,
                "mode": "full+lora8",
                "seed": seed,
                "preference": fake_preference(scale, seed),
                "perplexity": {"perplexity": 10.0},
                "training": {"freeze": {"trainable": 1, "frozen": 9}, "final_lm_loss": 1.0},
            }
    spec = aggregate(config, students, {})["specificity"]
    assert spec["mode"] == "full+lora8" and spec["reference"] == "control-full+lora8"
    assert set(spec["rows"]) == {OWL, "eagle"}
    assert math.isclose(spec["rows"]["eagle"]["owl"], 1.0) and spec["rows"][OWL]["owl"] > 1.5
    with pytest.raises(ValueError, match="extra_mode=full\\+lora8"):
        SubliminalConfig.model_validate(
            {"modes": ["full"], "control_modes": ["full"], "extra_teachers": {"eagle": "x"}, "extra_mode": "full+lora8"}
        )
    with pytest.raises(ValueError, match="every answer token"):
        SubliminalConfig.model_validate(
            {
                "modes": ["full~skip-divergence"],
                "control_modes": ["full~skip-divergence"],
                "extra_teachers": {"eagle": "x"},
                "extra_mode": "full~skip-divergence",
            }
        )


# ---- parallel students die with their parent -----------------------------------------------
POOL_PARENT = r"""
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

if __name__ == "__main__":
    kwargs = {}
    if sys.argv[1] == "guarded":  # the initializer run_students gives its workers
        from sublens.experiments.subliminal import die_with_parent

        kwargs = {"initializer": die_with_parent, "initargs": (os.getpid(),)}
    pool = ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"), **kwargs)
    worker = pool.submit(os.getpid).result()
    pool.submit(time.sleep, 600)  # the worker stays busy, as a training student would
    print(worker, flush=True)
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    """Running (a zombie left for a reaper that never comes counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _orphaned_worker_lives(tmp_path: Path, mode: str, wait: float) -> bool:
    """Start a parent with a one-worker spawn pool, SIGKILL the parent, and say whether the
    worker is still running `wait` seconds later."""
    import os
    import select
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / f"parent_{mode}.py"
    script.write_text(POOL_PARENT, encoding="utf-8")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "OMP_NUM_THREADS": "1"}
    with open(tmp_path / f"parent_{mode}.err", "wb") as log:  # its resource tracker's complaints
        parent = subprocess.Popen([sys.executable, str(script), mode], env=env, stdout=subprocess.PIPE, stderr=log)
    worker = None
    try:
        assert parent.stdout is not None
        assert select.select([parent.stdout], [], [], 180)[0], "the pool never started"
        worker = int(parent.stdout.readline())
        assert _alive(worker)
        parent.kill()  # SIGKILL: no cleanup of any kind in the parent
        parent.wait()
        deadline = time.monotonic() + wait
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        return _alive(worker)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if worker is not None and _alive(worker):
            os.kill(worker, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads process states from /proc")
def test_pool_workers_die_with_a_killed_parent(tmp_path: Path) -> None:
    assert _orphaned_worker_lives(tmp_path, "plain", wait=2)  # without the initializer: trains on
    assert not _orphaned_worker_lives(tmp_path, "guarded", wait=10)


def test_parallel_students_report_one_aggregate_progress(tmp_path: Path) -> None:
    # Each worker writes its progress file as it trains and measures; the parent's one bar sums
    # the training steps of all students and counts the students in each phase.
    from dataclasses import replace

    from sublens.experiments.subliminal import StudentProgress, read_progress, show_progress

    config = SubliminalConfig.model_validate({"parallel": 2, "modes": ["full"], "control_modes": ["full"]})
    for name in (OWL, CONTROL):
        write_jsonl(tmp_path / f"{name}.jsonl", [{"prompt": "p", "answer": "1, 2"}])
    jobs = plan_students(config, tmp_path, "SYS", {0: {OWL: "owl.jsonl", CONTROL: "control.jsonl"}})
    assert all(j.progress_file and Path(j.progress_file).parent == tmp_path / "students" for j in jobs)
    (tmp_path / "students").mkdir()
    first = StudentProgress(jobs[0].progress_file)
    for step in (1, 2, 3):
        first.step({"step": step, "total_steps": 10})
    second = StudentProgress(jobs[1].progress_file)
    second.step({"step": 10, "total_steps": 10})
    second.phase("measuring")
    done, total, phases = read_progress(jobs)
    assert (done, total) == (13, 20) and phases == {"training": 1, "measuring": 1}
    done, total, phases = read_progress([*jobs, replace(jobs[0], progress_file=str(tmp_path / "none.json"))])
    assert phases["waiting"] == 1 and (done, total) == (13, 20)

    class Bar:
        total, n, postfix = 0, 0, ""

        def set_postfix_str(self, text: str, refresh: bool) -> None:
            self.postfix = text

        def refresh(self) -> None:
            pass

    bar = Bar()
    show_progress(bar, jobs)
    assert (bar.n, bar.total, bar.postfix) == (13, 20, "1 measuring, 1 training")
    # Single-process students report nothing to a file (their own bars show progress).
    sequential = plan_students(
        config.model_copy(update={"parallel": 1}), tmp_path, "SYS", {0: {OWL: "owl.jsonl", CONTROL: "control.jsonl"}}
    )
    assert all(j.progress_file is None for j in sequential)


def test_evaluation_prompt_comparisons_are_seed_paired_like_the_headline() -> None:
    # Under the main prompt the owl students' owl probability is 1.5-1.7x the control's; under
    # the further prompt "empty" it is 3-3.4x. Each prompt's comparison is the geometric mean of
    # its per-seed ratios, and the main one equals the headline's.
    from sublens.experiments.subliminal import aggregate, by_evaluation_prompt

    def student(dataset: str, seed: int, main: float, empty: float) -> dict[str, Any]:
        return {
            "name": f"{dataset}-full-seed{seed}",
            "dataset": dataset,
            "mode": "full",
            "seed": seed,
            "preference": fake_preference(main, seed),
            "preference_by_system": {"empty": fake_preference(empty, seed)},
            "training": {"freeze": {"trainable": 1, "frozen": 0}, "final_lm_loss": 1.0},
            "perplexity": None,
        }

    config = SubliminalConfig(modes=["full"], control_modes=["full"], seeds=[0, 1, 2], evaluation_systems={"empty": ""})
    owl = {"main": [1.5, 1.6, 1.7], "empty": [3.0, 3.2, 3.4]}
    students = {}
    for seed in (0, 1, 2):
        for s in (student("owl", seed, owl["main"][seed], owl["empty"][seed]), student("control", seed, 1.0, 1.0)):
            students[s["name"]] = s
    comparisons = aggregate(config, students, {})["comparisons"]
    prompts = by_evaluation_prompt(config, students, comparisons)
    assert prompts["empty"]["system"] == ""
    assert (
        prompts["default"]["arms"]["full"]["p_trait_ratio"] == comparisons["owl-full vs control-full"]["p_trait_ratio"]
    )
    for name, key in (("default", "main"), ("empty", "empty")):
        ratio = prompts[name]["arms"]["full"]["p_trait_ratio"]
        assert ratio["n_seeds"] == 3 and math.isclose(ratio["ratio"], math.exp(np.mean(np.log(owl[key]))))


def test_entanglement_filter_data_and_contrast(tmp_path: Path) -> None:
    # Enrichment and the two filtered owl data sets from an entanglement run's numbers, and the
    # direct test: the no-entangled student over the no-random student, paired by seed.
    from sublens.experiments.subliminal import (
        NO_ENTANGLED,
        NO_RANDOM,
        aggregate,
        entangled_data,
        filtered_datasets,
    )

    run_dir = tmp_path / "entanglement"
    run_dir.mkdir()
    (run_dir / "record.json").write_text(json.dumps({"status": "ok"}))
    (run_dir / "results.json").write_text(
        json.dumps({"categories": {"ar2": {"increased": ["11"], "decreased": ["25"], "random": ["30"]}}})
    )
    config = SubliminalConfig(
        modes=["full"], control_modes=["full"], seeds=[0, 1], entangled={"run": str(run_dir), "set": "ar2"}
    )
    assert filtered_datasets(config) == [NO_ENTANGLED, NO_RANDOM]
    owl = [
        {"answer": f"{i}, 11" if i % 2 else f"{i}, 30" if i % 3 == 0 else str(i), "kept": True} for i in range(100, 130)
    ]
    control = [{"answer": str(i), "kept": True} for i in range(200, 230)]
    report, extra = entangled_data(
        config, {"owl": owl, "control": control}, {"owl": owl[:20], "control": control[:20]}, size=20, seed=0
    )
    assert report["enrichment"]["increased"]["owl"]["answers_with"] == 10  # odd i among the first 20
    assert report["enrichment"]["increased"]["control"]["answers_with"] == 0
    assert len(extra[NO_ENTANGLED]) == len(extra[NO_RANDOM]) == report["filter"]["size"] <= 20
    assert all("11" not in r["answer"].split(", ") for r in extra[NO_ENTANGLED])

    def student(dataset: str, seed: int, scale: float) -> dict[str, Any]:
        return {
            "name": f"{dataset}-full-seed{seed}",
            "dataset": dataset,
            "mode": "full",
            "seed": seed,
            "preference": fake_preference(scale, seed),
            "training": {"freeze": {"trainable": 1, "frozen": 0}, "final_lm_loss": 1.0},
            "perplexity": None,
        }

    scales = {"owl": 2.0, "control": 1.0, NO_ENTANGLED: 1.2, NO_RANDOM: 1.8}
    students = {f"{d}-full-seed{s}": student(d, s, x) for d, x in scales.items() for s in (0, 1)}
    comparisons = aggregate(config, students, {})["comparisons"]
    contrast = comparisons[f"{NO_ENTANGLED}-full vs {NO_RANDOM}-full"]
    assert math.isclose(contrast["p_trait_ratio"]["ratio"], 1.2 / 1.8)
    assert f"{NO_ENTANGLED}-full vs control-full" in comparisons  # each also against the control
