"""Per-experiment stage estimators: what each experiment's config implies (WORKLOADS, one small
function per experiment), one stage's plan (plan_stage), the paper chain's stages
(plan_paper) and the plan of a run (plan_experiment)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sublens.plan.costs import (
    DEFAULT_ENTANGLED_NUMBERS,
    TOKENS_PER_NUMBER,
    VOCAB_NUMBER_TOKENS,
    Gpu,
)
from sublens.plan.resolve import ShapeResolver
from sublens.plan.stages import (
    Plan,
    StageBuilder,
    StagePlan,
    chat_tokens,
    mean_chat_tokens,
    mean_tokens,
    number_prompt_texts,
    shipped_list,
    text_tokens,
)


def _teacher(c: Any, st: StageBuilder) -> None:
    base = st.model(c.base)
    questions = list(c.prompts or shipped_list("teacher_prompts"))[: c.n_prompts]
    s = c.sampling
    rows = len(questions) * int(s.samples_per_prompt)
    st.measure("base", base, c.preference, c.system, c.perplexity)
    if c.measure_prompted:
        st.preference("prompted base", base, c.preference, c.teacher_system)
    teachers = [("owl teacher", c.teacher_system)]
    if c.control_system is not None:
        teachers.append(("control teacher", c.control_system))
    train_prompt = mean_chat_tokens(questions, c.system)
    for name, system in teachers:
        st.generate(
            f"sample {name} answers: {len(questions)} prompts x {s.samples_per_prompt}",
            base,
            rows,
            mean_chat_tokens(questions, system),
            int(s.max_new_tokens),
            int(s.batch_size),
        )
        st.train(
            f"train {name}: {rows} examples x {c.train.epochs} epochs",
            base,
            rows,
            train_prompt,
            int(s.max_new_tokens),
            c.train,
        )
        st.measure(name, base, c.preference, c.system, c.perplexity)


def _subliminal(c: Any, st: StageBuilder) -> None:
    base = st.model(c.base)
    d = c.data
    data_seeds = len({c.seed + s for s in c.seeds}) if c.data_per_seed else 1
    texts = number_prompt_texts(int(d.n_prompts), int(c.seed))
    rows = int(d.n_prompts) * int(d.samples_per_prompt)
    owl = (base, c.teacher_system) if c.teacher == "prompted" else (st.model(c.teacher), c.system)
    control = base if c.control_teacher == "base" else st.model(c.control_teacher)
    teachers = [("owl", *owl), ("control", control, c.system)]
    teachers += [(name, base, system) for name, system in c.extra_teachers.items()]
    seeds_text = f" x {data_seeds} data seeds" if data_seeds > 1 else ""
    for name, spec, system in teachers:
        st.generate(
            f"sample {name} numbers: {d.n_prompts} prompts x {d.samples_per_prompt}{seeds_text}",
            spec,
            rows,
            mean_chat_tokens(texts, system),
            int(d.max_new_tokens),
            int(d.batch_size),
            repeat=data_seeds,
        )
    st.measure("base", base, c.preference, c.system, c.perplexity)
    st.measure("teacher", owl[0], c.preference, owl[1], c.perplexity)
    entangled = getattr(c, "entangled", None)  # the entanglement filter's two owl students (full)
    filtered = 2 if entangled is not None and entangled.run is not None and entangled.filter_students else 0
    extra_mode = getattr(c, "extra_mode", "full")  # the extra teachers' students' trainable set
    arms = [*c.control_modes, *c.modes, *([extra_mode] * len(c.extra_teachers)), *(["full"] * filtered)]
    examples = int(c.n_examples or rows)
    prompt = mean_chat_tokens(texts, c.system)
    divergence = getattr(c, "divergence", None)  # divergence tokens (sublens.divergence)
    if divergence is not None and (divergence.measure or any("~" in arm for arm in arms)):
        for name, spec, system in teachers[:2]:
            st.score(
                f"divergence tokens: {name} teacher on owl + control data",
                spec,
                2 * examples,
                mean_chat_tokens(texts, system) + int(d.max_new_tokens),
                int(divergence.batch_size),
                logit_positions=int(d.max_new_tokens),
                repeat=data_seeds,
                resident=tuple(t[1] for t in teachers[:2] if t[1] != spec),
            )
    for arm in dict.fromkeys(arms):
        count = arms.count(arm) * len(c.seeds)
        st.train(
            f"train {count} students ({arm}): {examples} examples x {c.train.epochs} epochs",
            base,
            examples,
            prompt,
            int(d.max_new_tokens),
            c.train,
            repeat=count,
            freeze=arm.partition("~")[0],
            concurrent=min(int(c.parallel), count),
        )
    if int(c.parallel) > 1:
        st.notes.append(f"parallel: {c.parallel} students at once: their memory adds up")
    st.measure(
        f"{len(arms) * len(c.seeds)} students",
        base,
        c.preference,
        c.system,
        c.perplexity,
        repeat=len(arms) * len(c.seeds),
    )
    for name, system in (getattr(c, "evaluation_systems", None) or {}).items():
        st.preference(
            f"{len(arms) * len(c.seeds)} students under the {name!r} system prompt",
            base,
            c.preference,
            system,
            repeat=len(arms) * len(c.seeds),
        )


def _entanglement(c: Any, st: StageBuilder) -> None:
    from sublens.entanglement import animal_context

    m = st.model(c.model)
    p = c.prompts
    sizes: dict[str, int] = {}
    if "vocab" in c.sets:
        sizes["vocab"] = VOCAB_NUMBER_TOKENS
        st.notes.append(f"vocabulary set: ~{VOCAB_NUMBER_TOKENS} pure-digit tokens assumed (the tokenizer is not read)")
    if "autoregressive" in c.sets:
        for n in c.lengths:
            sizes[f"ar{n}"] = 10**n if c.leading_zeros else 9 * 10 ** (n - 1) + (n == 1)
    bias_system = animal_context(p.bias_system, c.plural)
    number_prompt = chat_tokens(p.number_question, bias_system, p.number_prefill)
    nodes = sum(sizes.values())  # one token per number after the cached prompt: an upper bound
    st.score(
        f"phase 1: {sum(sizes.values())} numbers after 3 prompts (prefix tree)",
        m,
        3 * nodes,
        1,
        int(c.batch_size),
        cached=number_prompt + max(c.lengths, default=1),
        scorer=True,
    )
    tuned = getattr(c, "tuned_teacher", None)
    if tuned:  # the tuned sets: the neutral prompt in each fine-tuned teacher, one loaded at a time
        for who, spec in (("owl", tuned), ("control", f"{tuned}#control_teacher")):
            st.score(
                f"phase 1, tuned sets: {sum(sizes.values())} numbers after the neutral prompt in the "
                f"fine-tuned {who} teacher",
                spec,
                nodes,
                1,
                int(c.batch_size),
                cached=number_prompt + max(c.lengths, default=1),
                resident=(m,),
                scorer=True,
            )
    k = int(c.k)
    sets = 2 if tuned else 1  # a tuned set per set
    scored = sum(n if n <= c.score_all_max else 4 * min(k, n // 4) for n in sizes.values())
    if tuned:  # phase 2 scores a number once: a tuned set adds the categorised numbers of a large set at most
        scored += sum(4 * min(k, n // 4) for n in sizes.values() if n > c.score_all_max)
    animal_prompt = chat_tokens(p.animal_question, p.number_system, p.animal_prefill) + 4
    st.score(
        f"phase 2: P(animal) after {scored} number prompts",
        m,
        scored + 1,
        animal_prompt,
        int(c.batch_size),
        logit_positions=4,
        scorer=True,
    )
    templates = int(c.n_template_words or k)
    st.score(
        f"template control: {templates} word prompts",
        m,
        templates,
        animal_prompt,
        int(c.batch_size),
        logit_positions=4,
        scorer=True,
    )
    if c.cumulative_orders:
        prompts = int(c.cumulative_orders) * (4 * sets * len(sizes) + 1)
        st.score(
            f"cumulative priming: {prompts} prompts of {k} numbers",
            m,
            prompts,
            animal_prompt + 2 * k,
            int(c.batch_size),
            logit_positions=4,
            scorer=True,
        )


def _mechanistic(c: Any, st: StageBuilder) -> None:
    m = st.model(c.model)
    if c.numbers:
        n = len(c.numbers)
    else:
        entanglement = st.others.get("entanglement")
        n = 4 * int(entanglement.k) if entanglement is not None else DEFAULT_ENTANGLED_NUMBERS
        st.notes.append(f"numbers from the entanglement run: {n} assumed (4 categories x k)")
    r = c.residual
    raw = r.format == "raw"
    residual = text_tokens(r.number) + 3 if raw else chat_tokens(r.number_question, r.system, r.number)
    st.score(f"residual stream: {n} numbers + 2 animals", m, n + 2, residual, int(c.batch_size))
    a = c.attribution
    st.score(
        f"attribution: {n} number prompts + neutral",
        m,
        n + 1,
        chat_tokens(a.user, a.system, a.prefill),
        int(c.batch_size),
    )
    st.score(
        f"attention patterns: {len(c.attention.numbers)} numbers x 2 animals",
        m,
        2 * len(c.attention.numbers),
        text_tokens(c.attention.template) + 4,
        int(c.batch_size),
        eager=True,
    )


def _pruning(c: Any, st: StageBuilder) -> None:
    base = st.model(c.base)
    biased = st.default_teacher(c.model, c.runs_root, c.base, "model (the biased model)")
    bp = c.bias_prompts
    questions = bp.questions or shipped_list("preference_questions")
    st.score(
        f"head entropy: {len(questions)} bias prompts",
        biased,
        len(questions),
        mean_chat_tokens(questions, bp.system, bp.prefill),
        int(bp.batch_size),
        eager=True,
        resident=(base,),
    )
    pruned = [f for f in c.fractions if f < 1.0]
    claim = min(pruned, key=lambda f: (abs(f - c.claim_fraction), -f)) if pruned else None
    units = 0
    for fraction in pruned:
        draws = max(c.random_draws, c.claim_random_draws) if fraction == claim else c.random_draws
        units += sum(int(draws) if criterion == "random" else 1 for criterion in c.criteria)
    for spec, system, other, name in ((biased, c.system, base, "biased"), (base, c.base_system, biased, "base")):
        st.measure(f"{name} unpruned", spec, c.preference, system, c.perplexity, resident=(other,))
        st.measure(
            f"{name} x {units} head masks", spec, c.preference, system, c.perplexity, repeat=units, resident=(other,)
        )


def _distill(c: Any, st: StageBuilder) -> None:
    student = st.model(c.student)
    seeds = list(c.seeds) if c.seeds is not None else [c.seed]
    roles = {"shd_biased": "biased", "shd_base": "base"}
    needed = {roles[a] for a in c.arms if a in roles} or {"biased"}
    teachers: dict[str, str] = {}
    if "biased" in needed:
        teachers["biased"] = st.default_teacher(
            c.teacher.model, c.runs_root, str(c.base_teacher.model), "teacher.model (the biased teacher)"
        )
    if "base" in needed:
        teachers["base"] = st.model(str(c.base_teacher.model))
    resident = tuple(dict.fromkeys(teachers.values()))
    d = c.data
    texts = number_prompt_texts(int(d.n_train) + int(d.n_fit), int(c.seed))
    answer = TOKENS_PER_NUMBER * int(d.answer_numbers[1])
    prompt = mean_tokens(texts, text_tokens) + 2  # plain text: prompt, blank line, answer
    st.notes.append(
        f"texts: number prompts with answers of <= {d.answer_numbers[1]} numbers (~{answer} tokens) assumed"
    )
    for role, spec in teachers.items():
        view = c.teacher if role == "biased" else c.base_teacher
        teacher_prompt = (
            mean_chat_tokens(texts, view.system) if view.format == "chat" else prompt + text_tokens(view.system)
        )
        st.score(
            f"{role} teacher's attention maps on {d.n_fit} held-out texts",
            spec,
            int(d.n_fit),
            teacher_prompt + answer,
            int(c.fit_batch_size),
            eager=True,
            resident=(student,),
        )
    st.score(
        f"student fit before training ({d.n_fit} texts)",
        student,
        int(d.n_fit),
        prompt + answer,
        int(c.fit_batch_size),
        eager=True,
        resident=resident,
    )
    st.preference("initial student", student, c.preference, None, resident=resident)
    for arm in c.arms:
        arm_role = roles.get(arm)
        n = len(seeds)
        seq = st.train(
            f"train {arm}: {d.n_train} texts x {c.train.epochs} epochs x {n} seeds",
            student,
            int(d.n_train),
            prompt,
            answer,
            c.train,
            repeat=n,
            eager=arm_role is not None,
            resident=resident,
        )
        if arm_role is not None:
            st.score(
                f"{arm}: {arm_role} teacher's maps for every training step",
                teachers[arm_role],
                int(d.n_train),
                seq,
                int(c.train.batch_size),
                repeat=int(c.train.epochs) * n,
                eager=True,
                resident=(student,),
            )
        st.score(
            f"{arm}: fit after training",
            student,
            int(d.n_fit),
            prompt + answer,
            int(c.fit_batch_size),
            repeat=n,
            eager=True,
            resident=resident,
        )
        st.preference(f"{arm} students", student, c.preference, None, repeat=n, resident=resident)


def _hybrid(c: Any, st: StageBuilder) -> None:
    base = st.model(c.base)
    biased = st.default_teacher(c.biased, c.runs_root, c.base, "biased")
    shape = st.resolver.resolve(base).shape
    layers = shape.layers if shape is not None else int(c.depth_bins)
    ranges = len(c.layer_ranges) if c.layer_ranges is not None else min(int(c.depth_bins), layers)
    hybrids = 4 + len(c.directions) * (len(c.groups) + len(c.ranged) * ranges) + len(c.extra)
    st.notes.append(
        f"{hybrids} hybrids before identical weight mixtures are merged; the base and biased "
        "weights are held beside the working model"
    )
    held = (base, biased)
    st.measure(f"{hybrids} hybrids", base, c.preference, c.system, c.perplexity, repeat=hybrids, resident=held)
    if c.patching.enabled:
        questions = c.preference.questions or shipped_list("preference_questions")
        patch_ranges = (len(c.patching.layer_ranges) if c.patching.layer_ranges is not None else ranges) + 1
        runs = 2 + 2 * 2 * patch_ranges  # both models clean, then each component x range x direction
        st.score(
            f"activation patching: {len(questions)} questions x {runs} runs",
            base,
            len(questions) * runs,
            mean_chat_tokens(questions, c.system, c.preference.prefill),
            int(c.preference.batch_size),
            resident=held,
        )


def _evaluate(c: Any, st: StageBuilder) -> None:
    for spec in c.models:
        st.model(spec)
        if c.perplexity.enabled:
            st.perplexity(spec, spec, c.perplexity)
        for name, system in c.systems.items():
            st.preference(f"{spec} | {name}", spec, c.preference, system)


def _answer(c: Any, st: StageBuilder) -> None:
    m = st.model(c.model)
    prompt = max((chat_tokens(c.question, system, c.prefill) for system in c.systems.values()), default=0)
    st.score(f"next-token answer under {len(c.systems)} system prompts", m, len(c.systems), prompt, 1)


WORKLOADS: dict[str, Callable[[Any, StageBuilder], None]] = {
    "teacher": _teacher,
    "subliminal": _subliminal,
    "entanglement": _entanglement,
    "mechanistic": _mechanistic,
    "pruning": _pruning,
    "distill": _distill,
    "hybrid": _hybrid,
    "evaluate": _evaluate,
    "answer": _answer,
}


def _config_specs(config: Any) -> list[str]:
    """Model specs anywhere in a config (sublens.config.MODEL_SPEC_FIELDS), for experiments
    without a workload function."""
    from sublens.config import _spec_values

    return list(dict.fromkeys(spec for _, spec in _spec_values(config)))


def plan_stage(
    stage: str,
    experiment: str,
    config: Any,
    resolver: ShapeResolver,
    gpu: Gpu,
    config_source: str = "",
    others: dict[str, Any] | None = None,
) -> StagePlan:
    builder = StageBuilder(stage, experiment, config, resolver, others)
    workload = WORKLOADS.get(experiment)
    if workload is None:
        for spec in _config_specs(config):
            builder.model(spec)
        builder.notes.append(f"no workload model for {experiment!r}: only its models' weights are planned")
    else:
        try:
            workload(config, builder)
        except (AttributeError, TypeError, KeyError) as exc:  # a config class changed under the plan
            builder.problems.append(
                f"plan mode cannot read this {experiment} config ({type(exc).__name__}: "
                f"{exc}); its work is not planned: update sublens.plan.WORKLOADS"
            )
    return builder.finish(gpu, config_source)


PLACEHOLDER_RUN = Path("<paper run>")  # the paper run folder, which plan mode never creates


def plan_paper(config: Any, gpu: Gpu, resolver: ShapeResolver | None = None) -> list[StagePlan]:
    """Every stage of the chain, its config resolved as the chain resolves it (preset, wiring to
    earlier stages' folders, overrides). A wired model (a stage folder that does not exist yet)
    gets the shape of the model that stage fine-tunes."""
    from sublens.experiments.paper import WIRING, stage_config
    from sublens.report.stages import STAGE_ORDER

    order = [s for s in STAGE_ORDER if s in config.stages]
    dirs = {s: PLACEHOLDER_RUN / "stages" / s for s in STAGE_ORDER}
    configs: dict[str, Any] = {}
    experiments: dict[str, str] = {}
    for stage in order:
        experiment, stage_cfg = stage_config(stage, config.stages[stage], dirs, config.wire)
        configs[stage], experiments[stage] = stage_cfg, experiment.name
    aliases: dict[str, tuple[str, str]] = {}
    for wiring in WIRING.values():
        for source, reference in wiring.values():
            base = getattr(configs.get(source), "base", None)
            if isinstance(base, str):
                suffix = reference if reference.startswith("#") else ""
                aliases[str(dirs[source]) + suffix] = (base, f"not trained yet: fine-tuned by the {source} stage")
    resolver = resolver or ShapeResolver()
    resolver.aliases.update(aliases)
    return [
        plan_stage(
            stage, experiments[stage], configs[stage], resolver, gpu, config.stages[stage].config, others=configs
        )
        for stage in order
    ]


def plan_experiment(experiment: str, config: Any, gpu: Gpu | None = None, config_source: str = "") -> Plan:
    """The plan of `sublens run EXPERIMENT` with this (validated) config."""
    gpu = gpu or Gpu()
    if experiment == "paper":
        return Plan(experiment, gpu, plan_paper(config, gpu))
    return Plan(experiment, gpu, [plan_stage(experiment, experiment, config, ShapeResolver(), gpu, config_source)])
