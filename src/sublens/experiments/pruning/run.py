"""pruning: does the owl bias survive with fewer attention heads?

1. The biased model (by default the fine-tuned teacher of the newest finished `teacher` run)
   and its matched control, the unbiased base model (config `base`), are loaded.
2. Head importance: the entropy of every head's attention rows on the bias prompts of the
   biased model (definition in `sublens.pruning`), saved as a layer x head matrix.
3. For each kept fraction f and criterion (``entropy``: keep the lowest-entropy heads;
   ``reverse``: prune the lowest-entropy heads; ``random``: seeded random heads, several
   draws, more at the claim fraction), exactly round(f * n_heads_total) heads are kept; the
   rest are masked, the SAME heads in the biased and in the base model.
4. Each masked model, and both unpruned ones, are measured: owl preference (`evaluate_preference`;
   the biased model under `system`, the base under `base_system`) and perplexity.
5. Retention of the bias, own and base-controlled, per (fraction, criterion) cell: see
   `sublens.experiments.pruning.analysis`.

The claims (survival, entropy vs random) are decided in `sublens.report.sections.pruning.decisions`
from these numbers (torch-free, also on recorded runs) and stored under ``claims``.

Every finished measurement is saved at once; rerunning into the same run directory
(`run_experiment("pruning", config, run_dir=PATH)`) with the same config reuses them.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table
from safetensors.torch import save as safetensors_bytes
from tqdm.auto import tqdm

from sublens.corpus import load_text
from sublens.errors import ConfigError
from sublens.experiments import default_teacher_run
from sublens.experiments.pruning.analysis import summarize_step, table_rows
from sublens.experiments.pruning.config import PruningConfig
from sublens.experiments.pruning.figures import make_figures
from sublens.experiments.pruning.results import (
    ControlledRetention,
    DecisionRecord,
    EntropyRecord,
    Heatmap,
    Measurement,
    PerplexityRecord,
    PreferenceRecord,
    PruningResults,
    RatioEstimate,
    StoredMeasurement,
    Summary,
)
from sublens.hooks import head_label, mask_heads
from sublens.models import LoadedModel, load_model
from sublens.perplexity import measure_perplexity
from sublens.preference import evaluate_preference, shipped_questions
from sublens.prompts import encode_prompt, make_prompt
from sublens.pruning import HeadEntropy, Unit, attention_entropy, plan, pruned_heads
from sublens.report.sections.pruning import decisions, headline_line
from sublens.results import load_results
from sublens.runs import Run, atomic_write_bytes, atomic_write_parquet, read_json

ENTROPY_FILE = "head_entropy.safetensors"
TABLE_FILE = "pruning_table.parquet"


def execute(config: PruningConfig, run: Run) -> PruningResults:
    spec = biased_spec(config)
    check_base(spec, config.base)
    with run.timed("load_model"):
        biased_lm = load_model(spec, config.device, config.dtype)
        base_lm = load_model(config.base, config.device, config.dtype)
    run.note(models={"model": biased_lm.describe(), "base": base_lm.describe()})
    check_same_heads(biased_lm, base_lm, config.base)
    key = fingerprint(config.model_copy(update={"model": spec}))
    earlier = previous_results(run, key)
    text = load_text(config.perplexity.corpus) if config.perplexity.enabled else ""

    with run.timed("entropy"):
        entropy, entropy_record = head_importance(biased_lm, config)
    atomic_write_bytes(
        run.artifact(ENTROPY_FILE), safetensors_bytes({k: v.contiguous() for k, v in entropy.tensors().items()})
    )
    with run.timed("measure:unpruned"):
        biased = Arm.start(biased_lm, False, config, text, earlier)
        base = Arm.start(base_lm, True, config, text, earlier)
    units, claim_fraction = sweep_plan(entropy, config)
    results = first_results(spec, config, entropy_record, key, earlier, biased, base, units, claim_fraction)
    run.save_results(results)

    with run.timed("sweep"):
        results = measure_sweep(run, config, text, units, biased, base, results)
    atomic_write_parquet(run.artifact(TABLE_FILE), pd.DataFrame(table_rows(results)))
    claims = decisions(results, config.model_dump(mode="json"))
    results = results.model_copy(
        update={
            "table": TABLE_FILE,
            "claims": [DecisionRecord.model_validate(d.model_dump()) for d in claims],
        }
    )
    with run.timed("figures"):
        figures = make_figures(results, run.path)
    results = results.model_copy(update={"figures": figures, "partial": False})
    print_summary(results, [headline_line(d) for d in claims])
    return results


# ---- models and measurements --------------------------------------------------------------------
def biased_spec(config: PruningConfig) -> str:
    """The biased model: `model`, or the newest finished teacher run under runs_root."""
    if config.model:
        return config.model
    return default_teacher_run(
        config.runs_root,
        "biased model to prune",
        "Make one with `sublens run teacher --preset quick`, or give one: "
        "--set model=SPEC (a teacher run directory; or the prompted teacher: --set "
        'model=smollm2-135m-instruct --set system="<owl prompt>" --set bias_prompts.system="<owl prompt>").',
    )


def check_base(spec: str, base: str) -> None:
    """A teacher run names its base model: the control must be that model (like against like)."""
    path = Path(spec) / "config.yaml"
    if not path.is_file():
        return
    import yaml

    trained_from = (yaml.safe_load(path.read_text()) or {}).get("base")
    if trained_from and str(trained_from) != base:
        raise ConfigError(
            f"The biased model {spec} was fine-tuned from {trained_from!r}, but the pruned-base control is "
            f"{base!r}. Prune its own base model: --set base={trained_from}."
        )


def check_same_heads(biased: LoadedModel, base: LoadedModel, base_spec: str) -> None:
    """The same heads are removed from both models: they need the same layers x heads."""
    a, b = biased.adapter, base.adapter
    if (b.n_layers, b.n_heads) != (a.n_layers, a.n_heads):
        raise ConfigError(
            f"The base model {base_spec!r} has {b.n_layers} x {b.n_heads} heads, "
            f"the biased model {a.n_layers} x {a.n_heads}: the same heads cannot be removed from both."
        )


def measure(lm: LoadedModel, config: PruningConfig, text: str, base: bool = False) -> Measurement:
    """Preference and perplexity of the model as it is now (masked or not); the biased model
    under `config.system`, the base model (base=True) under `config.base_system`."""
    start = time.perf_counter()
    system = config.base_system if base else config.system
    preference = evaluate_preference(lm, config.preference, system, config.seed)
    perplexity = measure_perplexity(lm, config.perplexity, text)
    seconds = round(time.perf_counter() - start, 3)
    return Measurement(
        preference=PreferenceRecord.model_validate(preference),
        perplexity=PerplexityRecord.model_validate(perplexity) if perplexity is not None else None,
        seconds=seconds,
    )


def fingerprint(config: PruningConfig) -> str:
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]


def previous_results(run: Run, key: str) -> PruningResults | None:
    """Results of an earlier run in the same directory with the same config (fingerprint), else None."""
    path = run.path / "results.json"
    if not path.is_file():
        return None
    old = read_json(path)
    if not isinstance(old, dict) or old.get("fingerprint") != key:
        return None
    return load_results(old, PruningResults)


# ---- head importance and the plan ---------------------------------------------------------------
def head_importance(lm: LoadedModel, config: PruningConfig) -> tuple[HeadEntropy, EntropyRecord]:
    """Mean attention entropy of every head on the bias prompts, and its record."""
    bp = config.bias_prompts
    questions = bp.questions or shipped_questions("preference_questions")
    prompts = [make_prompt(lm.tokenizer, q, bp.system, bp.prefill) for q in questions]
    ids = [encode_prompt(lm.tokenizer, p) for p in prompts]
    entropy = attention_entropy(lm.model, lm.adapter, ids, bp.batch_size)
    heatmap_pruned = pruned_heads(entropy.mean, config.heatmap_fraction, "entropy")
    record = EntropyRecord(
        matrix=entropy.mean.tolist(),
        unit="nats",
        definition="mean Shannon entropy of attention rows over all valid query positions of "
        "all bias prompts (pooled); padding and each prompt's first row excluded",
        n_prompts=len(ids),
        n_rows=int(entropy.rows.sum()),
        bias_system_prompt_used=prompts[0].system,
        bias_system_source=prompts[0].system_source,
        bias_prompts=[p.text for p in prompts],
        file=ENTROPY_FILE,
        heatmap=Heatmap(
            fraction=config.heatmap_fraction, criterion="entropy", pruned=[head_label(*h) for h in heatmap_pruned]
        ),
    )
    return entropy, record


def sweep_plan(entropy: HeadEntropy, config: PruningConfig) -> tuple[list[Unit], float | None]:
    """Every masked model to measure, and the pruned fraction the claims are decided at (closest
    to `claim_fraction`, ties to the larger), which gets its own, larger number of random draws."""
    pruned_fractions = [f for f in config.fractions if f < 1.0]
    claim_f = min(pruned_fractions, key=lambda f: (abs(f - config.claim_fraction), -f)) if pruned_fractions else None
    draws_at = {claim_f: max(config.random_draws, config.claim_random_draws)} if claim_f is not None else {}
    units = plan(entropy.mean, config.fractions, config.criteria, config.random_draws, config.seed, draws_at)
    return units, claim_f


# ---- the sweep ----------------------------------------------------------------------------------
@dataclass
class Arm:
    """One of the two models pruned alike: the biased model or its base-model control."""

    lm: LoadedModel
    is_base: bool
    unpruned: Measurement
    stored: dict[str, StoredMeasurement] = field(default_factory=dict)  # by unit key; earlier runs' too

    @classmethod
    def start(
        cls, lm: LoadedModel, is_base: bool, config: PruningConfig, text: str, earlier: PruningResults | None
    ) -> Arm:
        """The model unpruned (measured now, or an earlier run's measurement) and what it stored."""
        reused, stored = None, {}
        if earlier is not None:
            reused = earlier.base_unpruned if is_base else earlier.unpruned
            stored = earlier.base_measurements if is_base else earlier.measurements
        return cls(lm, is_base, reused or measure(lm, config, text, base=is_base), dict(stored))

    def reusable(self, units: list[Unit]) -> dict[str, Measurement]:
        """Stored measurements that masked the same heads as planned now (entropies can differ
        by device, and with them the heads)."""
        planned = {u.key: pruned_labels(u) for u in units}
        return {k: v.measurement for k, v in self.stored.items() if planned.get(k) == v.pruned_heads}

    def measure_unit(
        self, unit: Unit, config: PruningConfig, text: str, done: dict[str, Measurement], n_total: int
    ) -> Measurement:
        """The model with the unit's heads masked (the mask is gone afterwards), or its stored or
        unpruned measurement; recorded under the unit's key."""
        if unit.key in done:
            measured = done[unit.key]
        elif not unit.pruned:
            measured = self.unpruned
        else:
            with mask_heads(self.lm.model, self.lm.adapter, unit.pruned):
                measured = measure(self.lm, config, text, base=self.is_base)
        self.stored[unit.key] = StoredMeasurement(
            fraction=unit.fraction,
            criterion=unit.criterion,
            draw=unit.draw,
            n_kept=n_total - len(unit.pruned),
            pruned_heads=pruned_labels(unit),
            measurement=measured,
        )
        return measured


def pruned_labels(unit: Unit) -> list[str]:
    return [head_label(*h) for h in unit.pruned]


def first_results(
    spec: str,
    config: PruningConfig,
    entropy: EntropyRecord,
    key: str,
    earlier: PruningResults | None,
    biased: Arm,
    base: Arm,
    units: list[Unit],
    claim_fraction: float | None,
) -> PruningResults:
    """The results before the sweep: what was measured so far, no cell finished yet."""
    adapter = biased.lm.adapter
    return PruningResults(
        model=spec,
        base_model=config.base,
        trait=config.preference.trait,
        system_prompt_used=biased.unpruned.preference.probability.system_prompt_used,
        base_system_prompt_used=base.unpruned.preference.probability.system_prompt_used,
        n_layers=adapter.n_layers,
        n_heads=adapter.n_heads,
        n_heads_total=adapter.n_layers * adapter.n_heads,
        degradation_bound=config.max_perplexity_ratio,
        entropy=entropy,
        fingerprint=key,
        resumed=earlier is not None,
        partial=True,
        unpruned=biased.unpruned,
        base_unpruned=base.unpruned,
        measurements=dict(biased.stored),
        base_measurements=dict(base.stored),
        steps=[],
        claim_fraction_measured=claim_fraction,
        resumed_units=len(biased.reusable(units)) + len(base.reusable(units)),
    )


def measure_sweep(
    run: Run, config: PruningConfig, text: str, units: list[Unit], biased: Arm, base: Arm, results: PruningResults
) -> PruningResults:
    """Measure both models under every unit's mask; a (fraction, criterion) cell is summarised
    once all its draws are measured. The results are saved after every unit."""
    n_total = results.n_heads_total
    biased_done, base_done = biased.reusable(units), base.reusable(units)
    cell_size: dict[tuple[float, str], int] = defaultdict(int)
    for unit in units:
        cell_size[(unit.fraction, unit.criterion)] += 1
    cells: dict[tuple[float, str], list[tuple[Measurement, Measurement]]] = defaultdict(list)
    steps = []
    for unit in tqdm(units, desc="pruning sweep (biased + base)"):
        pair = (
            biased.measure_unit(unit, config, text, biased_done, n_total),
            base.measure_unit(unit, config, text, base_done, n_total),
        )
        cell = cells[(unit.fraction, unit.criterion)]
        cell.append(pair)
        if len(cell) == cell_size[(unit.fraction, unit.criterion)]:  # the cell is complete
            steps.append(
                summarize_step(
                    unit.fraction,
                    unit.criterion,
                    [b for b, _ in cell],
                    biased.unpruned,
                    n_total,
                    config,
                    [c for _, c in cell],
                    base.unpruned,
                )
            )
        results = results.model_copy(
            update={
                "measurements": dict(biased.stored),
                "base_measurements": dict(base.stored),
                "steps": list(steps),
            }
        )
        run.save_results(results)
    return results


# ---- console ------------------------------------------------------------------------------------
def _ci(r: RatioEstimate | ControlledRetention | None, digits: int = 3) -> str:
    if r is None or r.ratio is None:
        return "-"
    low, high = r.ci_low, r.ci_high
    fmt = f"{{:.{digits}g}}"
    if low is None or high is None or not low < high:
        return fmt.format(r.ratio) + " (no CI)"
    return fmt.format(r.ratio) + f" [{fmt.format(low)}, {fmt.format(high)}]"


def _level(p: Summary) -> str:
    has_ci = math.isfinite(p.ci_low) and math.isfinite(p.ci_high)
    return f"{p.mean:.4f}" + (f" [{p.ci_low:.4f}, {p.ci_high:.4f}]" if has_ci else "")


def print_summary(results: PruningResults, headlines: list[str]) -> None:
    """The sweep as a table on the terminal, then one line per claim."""
    trait = results.trait
    title = (
        f"Bias retention after head pruning (95% CIs); unpruned P({trait}) = "
        f"{_level(results.unpruned.preference.probability.p_trait)}"
    )
    if results.base_unpruned:
        title += f", base model {_level(results.base_unpruned.preference.probability.p_trait)}"
    table = Table(title=title)
    for column in (
        "kept",
        "criterion",
        "heads",
        "share, base-controlled",
        f"P({trait}), base-controlled",
        f"P({trait}) biased only",
        "ppl × (biased / base)",
    ):
        table.add_column(column)
    for s in results.steps:
        base_ppl = s.base.perplexity if s.base else None
        table.add_row(
            f"{s.fraction:.2f}",
            s.criterion + (f" ×{s.n_draws}" if s.n_draws > 1 else ""),
            f"{s.n_kept}/{results.n_heads_total}",
            _ci(s.controlled.panel_share if s.controlled else None),
            _ci(s.controlled.p_trait if s.controlled else None),
            _ci(s.retention.p_trait),
            (f"{s.perplexity.ratio:.2f}" if s.perplexity else "-") + (f" / {base_ppl.ratio:.2f}" if base_ppl else ""),
        )
    console = Console()
    console.print(table)
    for line in headlines:
        console.print(line, markup=False, highlight=False)
