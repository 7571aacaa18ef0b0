"""From command-line flags to a run's resolved settings: one place that merges, defaults and derives, and says so.

Order (later wins): the config entry (``-conf``, default ``configs/<algo>.yml``; which entry: :mod:`~sparse_rl.harness.
zoo_entries`), ``-params`` (merged by the override rule of :mod:`~sparse_rl.harness.hyperparams`), then the flags
``-n``, ``--n-envs``, ``--sparsity``, ``--method``, ``--distribution``, ``--backend``.

Sparse or dense: ``--sparsity`` if given, else ``policy_kwargs['sparsity']``, else 0.9 when the entry names a sparse
policy (``SparseMlpPolicy``: the sparse policies' default, Graesser et al. 2022), else 0 (dense). Sparsity 0 or
``--method dense`` trains SB3's own dense policy with every other hyperparameter unchanged (the dense baseline);
contradictory flags (``--method dense --sparsity 0.9``) are an error. Every merge and default is printed at start
(:meth:`Resolved.describe`) and saved as ``<run>/<Env>/resolved.yml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sparse_rl.harness import hyperparams as hp
from sparse_rl.harness.checks import check_hyperparams, check_policy_kwargs, run_device, whole_numbers_as_ints
from sparse_rl.harness.envs import check_env_id, is_atari
from sparse_rl.harness.schedule import budget_notes, topology_schedule
from sparse_rl.harness.zoo_entries import config_entry
from sparse_rl.topology import METHODS as TOPOLOGY_METHODS

#: sb3-contrib's algorithms (the optional ``contrib`` extra), by RL Zoo's names
CONTRIB_ALGOS = {"tqc": "TQC", "qrdqn": "QRDQN", "crossq": "CrossQ", "ppo_lstm": "RecurrentPPO", "ppo_mask": "MaskablePPO"}
ALGOS = ("sac", "td3", "dqn", "ppo", "a2c", *CONTRIB_ALGOS)
METHODS = TOPOLOGY_METHODS  # "dense" and every DST method, from the updater registry
SPARSE_POLICY_KWARGS = ("sparsity", "actor_sparsity", "critic_sparsity", "distribution", "dense_layers", "backend",
                        "constant_fan_in", "start_dense", "init_scale")
SPARSE_ALIASES = {"MlpPolicy": "SparseMlpPolicy", "CnnPolicy": "SparseCnnPolicy", "MultiInputPolicy": "SparseMultiInputPolicy",
                  "MinAtarPolicy": "SparseMinAtarPolicy", "MlpLstmPolicy": "SparseMlpLstmPolicy",
                  "CnnLstmPolicy": "SparseCnnLstmPolicy", "MultiInputLstmPolicy": "SparseMultiInputLstmPolicy"}
DENSE_ALIASES = {sparse: dense for dense, sparse in SPARSE_ALIASES.items()}


@dataclass
class RunSpec:
    """Everything that defines a run (the CLI flags); saved as ``args.yml``."""

    algo: str
    env: str
    sparsity: float | None = None
    method: str | None = None
    seed: int = 0
    n_timesteps: int | None = None
    conf_file: str | None = None
    hyperparams: dict[str, Any] = field(default_factory=dict)
    log_folder: str = "logs"
    tensorboard_log: str | None = None
    eval_freq: int = 10_000
    eval_episodes: int = 5
    save_freq: int = -1
    n_envs: int | None = None
    device: str = "auto"
    backend: str | None = None
    distribution: str | None = None
    progress: bool = False
    verbose: int = 1
    env_kwargs: dict[str, Any] | None = None
    resume: str | None = None
    save_replay_buffer: bool = False
    threads: int = 1


@dataclass
class Resolved:
    """A run's resolved settings.

    :param hyperparams: SB3 constructor arguments plus RL Zoo's keys, ``policy_kwargs`` as a dict, ``callback`` the
        config's other callbacks, ``normalize`` the VecNormalize arguments (``False`` without normalisation)
    :param topology: the TopologyCallback's arguments (``None`` for the dense baseline)
    :param notes: one line per merge, default or derivation (printed at start, saved)
    :param sources: where each hyperparameter came from
    """

    spec: RunSpec
    hyperparams: dict[str, Any]
    topology: dict[str, Any] | None
    method: str
    sparsity: float
    distribution: str
    notes: list[str]
    sources: dict[str, str]
    #: the topology schedule in env steps, defaults filled in (``None`` for the dense baseline)
    schedule: dict[str, Any] | None = None
    #: the config entry the settings start from (``configs/sac.yml [HalfCheetah-v4]``)
    entry: str = ""

    @property
    def sparse(self) -> bool:
        return self.topology is not None

    @property
    def normalize(self) -> dict[str, Any] | None:
        normalize = self.hyperparams["normalize"]
        return dict(normalize) if hp.normalizes(normalize) else None

    def label(self) -> str:
        """``dense`` or e.g. ``rigl90``."""
        return "dense" if not self.sparse else f"{self.method}{round(100 * self.sparsity)}"

    def describe(self) -> list[str]:
        """What the run is, in a few lines (printed at start)."""
        spec, hyper = self.spec, self.hyperparams
        what = "dense baseline" if not self.sparse else f"{self.method} at sparsity {self.sparsity:g} ({self.distribution})"
        lines = [f"{spec.algo} on {spec.env}, seed {spec.seed}: {what}, policy {hyper['policy']}, "
                 f"{int(hyper['n_timesteps'])} env steps"]
        if self.topology is not None:
            lines.append(f"  topology: {self.topology}")
        if self.schedule is not None:
            sched = self.schedule
            between = sched.get("gradient_steps_between")
            every = f"{sched['update_every']} env steps" + (f" (= {between:g} gradient steps)" if between else "")
            when = (f"{sched['updates']} updates, every {every} from step {sched['first_update']}"
                    f" to {sched['last_update']}" if sched["updates"] else
                    "none (static masks)" if self.method == "static" else "no update fits")
            if sched.get("last_update_drops_nothing"):
                when += (f" (the last, at end, replaces nothing: the {sched['drop_schedule']} drop fraction is 0 there, "
                         f"so {sched['updates'] - 1} change the masks)")
            if sched.get("merged"):
                when += (f" ({sched['merged']} scheduled steps fall between two checks of the clock, every "
                         f"{sched['check_every']} env steps, and merge into the next update)")
            defaults = sched["defaults"]
            drop = ("pruning on the cubic sparsity ramp" if self.method == "gmp" else
                    f"drop fraction {sched['drop_fraction']} {sched['drop_schedule']}")
            lines.append(f"  topology schedule: {when} (start {sched['start']}, end {sched['end']}; {drop}); defaults "
                         f"used: {', '.join(defaults) or 'none'}")
        shown = ("policy", "policy_kwargs", "n_timesteps", "normalize", "callback")
        others = ", ".join(f"{k}={yaml_plain(v)!r}" if not isinstance(v, (int, float, str)) else f"{k}={v}"
                           for k, v in hyper.items() if k not in shown or (k == "callback" and v))
        lines.append(f"  hyperparameters{f' ({self.entry})' if self.entry else ''}: {others or 'SB3 defaults'}")
        lines.append(f"  policy_kwargs: {hyper['policy_kwargs']}")
        if self.normalize is not None:
            lines.append(f"  normalize: VecNormalize({self.normalize})")
        lines += [f"  {note}" for note in self.notes]
        return lines

    def saved(self) -> dict[str, Any]:
        """The record written to ``resolved.yml`` (plain YAML: classes and schedules as expressions)."""
        hyper = dict(self.hyperparams)
        if self.topology is not None:
            hyper["callback"] = [*hyper.get("callback", []), {hp.TOPOLOGY_CALLBACK: self.topology}]
        return {"method": self.method, "sparsity": self.sparsity, "distribution": self.distribution,
                "topology": self.topology, "topology_schedule": self.schedule, "hyperparams": yaml_plain(hyper),
                "notes": self.notes, "sources": self.sources, "entry": self.entry}


def yaml_plain(value: Any) -> Any:
    """``value`` with only YAML-safe types (tuples as lists, anything else as a Python expression string)."""
    if isinstance(value, dict):
        return {str(k): yaml_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [yaml_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return hp.to_expression(value)


def algo_class(algo: str) -> Any:
    """The SB3 (or sb3-contrib) algorithm class of an RL Zoo algorithm name (``sac``, ``tqc``, ``ppo_lstm``...)."""
    if algo not in ALGOS:
        raise ValueError(f"unknown algo {algo!r}; choose one of {list(ALGOS)}")
    if algo in CONTRIB_ALGOS:
        try:
            import sb3_contrib
        except ImportError:
            raise ValueError(f"--algo {algo} needs sb3-contrib, the contrib extra: pip install 'sparse_rl[contrib]'") from None
        return getattr(sb3_contrib, CONTRIB_ALGOS[algo])
    import stable_baselines3 as sb3

    return getattr(sb3, algo.upper())


def policy_class(algo: str, policy: Any) -> Any:
    """The policy class a name stands for (an SB3 alias, ``SparseMlpPolicy``..., or ``package.module.Class``)."""
    import sparse_rl.sb3  # noqa: F401  (registers the Sparse* and MinAtar aliases)

    if not isinstance(policy, str):
        return policy
    if "." in policy:
        return hp.import_object(policy, "policy")
    aliases = algo_class(algo).policy_aliases
    if policy not in aliases:
        raise ValueError(f"policy {policy!r} is not available for {algo.upper()}; choose one of {sorted(aliases)} "
                         f"or give 'package.module.Class'")
    return aliases[policy]


def _sparsity(spec: RunSpec, policy_kwargs: dict[str, Any], policy: Any, sources: dict[str, str],
              notes: list[str]) -> float:
    from sparse_rl.nn.masks import check_sparsity
    from sparse_rl.sb3.builders import DEFAULT_SPARSITY

    if spec.sparsity is not None:
        value, origin = spec.sparsity, "--sparsity"
    elif "sparsity" in policy_kwargs:
        value, origin = policy_kwargs["sparsity"], f"policy_kwargs of {sources.get('policy_kwargs', 'the config')}"
    elif isinstance(policy, str) and policy.startswith("Sparse"):
        value, origin = DEFAULT_SPARSITY, "default"
        notes.append(f"sparsity: {policy} without a sparsity: the sparse policies' default {DEFAULT_SPARSITY}")
    else:
        value, origin = 0.0, "default"
    try:
        return check_sparsity(value)
    except ValueError as error:
        raise ValueError(f"{error} ({origin})") from None


def _method(spec: RunSpec, sparsity: float, topology: dict[str, Any] | None) -> str:
    if spec.method is not None and spec.method not in METHODS:
        raise ValueError(f"unknown method {spec.method!r}; choose one of {list(METHODS)}")
    if spec.method == "dense" and spec.sparsity:
        raise ValueError(f"--method dense trains the dense baseline, but --sparsity {spec.sparsity:g} asks for a sparse "
                         "network: drop one of the two")
    if spec.method not in (None, "dense") and sparsity == 0:
        raise ValueError(f"--method {spec.method} needs a sparsity above 0 (the sparsity resolved to 0): pass --sparsity, "
                         "e.g. --sparsity 0.9")
    if spec.method is not None:
        return spec.method
    return str((topology or {}).get("method", "rigl")) if sparsity > 0 else "dense"


def _flags_against_settings(spec: RunSpec, policy_kwargs: dict[str, Any], topology: dict[str, Any] | None,
                            origin: str, notes: list[str]) -> None:
    """A flag that replaces a value of the config is said in a note; one that contradicts a value given in ``-params``
    in the same command is an error (two requests, one run)."""
    from_params = hp.policy_kwargs_dict(spec.hyperparams.get("policy_kwargs"))
    params_topology, _ = hp.topology_callback_kwargs(spec.hyperparams.get("callback"))
    checks = [(f"--{key}", getattr(spec, key), policy_kwargs.get(key), key in from_params, f"policy_kwargs {key}")
              for key in ("sparsity", "distribution", "backend")]
    checks.append(("--method", spec.method, (topology or {}).get("method"), params_topology is not None
                   and "method" in params_topology, "TopologyCallback method"))
    for flag, value, current, in_params, what in checks:
        if value is None or current is None or value == current or (flag == "--method" and value == "dense"):
            continue
        if in_params:
            raise ValueError(f"{flag} {value} contradicts -params {what} {current!r}: give one of the two")
        notes.append(f"{what}: {flag} replaces {current!r} of {origin}")


def resolve(spec: RunSpec) -> Resolved:
    """Resolve and check a run's settings (no file is read but the config, none is written)."""
    algo = algo_class(spec.algo)
    check_env_id(spec.env)
    conf = spec.conf_file or hp.default_config_file(spec.algo)
    entry, origin, entry_notes = config_entry(conf, spec.env, is_atari(spec.env), None if spec.conf_file else spec.algo,
                                              SPARSE_ALIASES, SPARSE_POLICY_KWARGS)  # -conf files: used as they are
    sources = dict.fromkeys(entry, origin)
    merged, override_notes = hp.merge_overrides(entry, spec.hyperparams, "-params")
    notes = [*entry_notes, *override_notes]
    if spec.env.startswith("ALE/"):
        notes.append("env: ALE/*-v5 frameskip set to 1, so AtariWrapper's skip gives the standard 4 frames per step "
                     "(rl_zoo3.train keeps v5's own 4 under the wrapper: 16); v5's sticky actions stay")
    sources.update(dict.fromkeys(spec.hyperparams, "-params"))
    for key, flag, value in (("n_timesteps", "-n", spec.n_timesteps), ("n_envs", "--n-envs", spec.n_envs)):
        if value is not None:
            if key in spec.hyperparams and spec.hyperparams[key] != value:
                raise ValueError(f"{flag} {value} contradicts -params {key}:{spec.hyperparams[key]!r}: give one of the two")
            if key in merged and merged[key] != value:
                notes.append(f"{key}: {flag} replaces {merged[key]!r} of {origin} with {value!r}")
            merged[key], sources[key] = value, flag
    whole_numbers_as_ints(merged, notes)
    if "n_timesteps" not in merged:
        raise ValueError(f"no n_timesteps in {origin}: pass -n STEPS")
    policy_kwargs = hp.policy_kwargs_dict(merged.get("policy_kwargs"))
    topology, other_callbacks = hp.topology_callback_kwargs(merged.get("callback"))
    for key in ("update_every", "start", "end"):  # YAML's !!float 1e4: whole steps (start/end <= 1 are fractions)
        value = (topology or {}).get(key)
        if isinstance(value, float) and value.is_integer() and (key == "update_every" or value > 1):
            topology[key] = int(value)  # type: ignore[index]
            notes.append(f"TopologyCallback {key}: {value!r} taken as the step {int(value)}")
    policy = merged.get("policy", "MlpPolicy")
    sparsity = _sparsity(spec, policy_kwargs, policy, sources, notes)
    method = _method(spec, sparsity, topology)
    _flags_against_settings(spec, policy_kwargs, topology, origin, notes)
    if (sparsity > 0 and method != "dense" and sources.get("policy") == "-params" and policy in SPARSE_ALIASES
            and spec.sparsity is None and "sparsity" not in hp.policy_kwargs_dict(spec.hyperparams.get("policy_kwargs"))):
        raise ValueError(f"-params policy:{policy} asks for SB3's dense policy, but {origin} trains at sparsity "
                         f"{sparsity:g}: for the dense baseline pass --sparsity 0; for a sparse run drop "
                         f"policy:{policy} (or use {SPARSE_ALIASES[policy]})")
    if sparsity > 0 and method != "dense":
        policy_kwargs["sparsity"] = sparsity
        for key, value in (("backend", spec.backend), ("distribution", spec.distribution)):
            if value is not None:
                policy_kwargs[key], sources[f"policy_kwargs.{key}"] = value, f"--{key}"
        for key, network in (("actor_sparsity", "actor / policy network"), ("critic_sparsity", "critics / value side")):
            if policy_kwargs.get(key) is not None and policy_kwargs[key] != sparsity:
                notes.append(f"{key}: the {network} trains at {policy_kwargs[key]:g}, not {sparsity:g} (the run's name "
                             f"and labels give sparsity {sparsity:g})")
        for needs, key in (("srigl", "constant_fan_in"), ("gmp", "start_dense")):
            if method == needs and policy_kwargs.get(key) is not True:
                if key in policy_kwargs:
                    raise ValueError(f"method {method} needs policy_kwargs {key}=True, but {key}={policy_kwargs[key]!r} "
                                     f"was given ({sources.get('policy_kwargs', origin)}): drop it")
                notes.append(f"policy_kwargs {key}: True (method {method} needs it)")
                policy_kwargs[key] = True
        if topology is None:
            notes.append("callback: the config has no TopologyCallback: its defaults apply")
        topology = {**(topology or {}), "method": method}
        topology.setdefault("seed", spec.seed)
        if isinstance(policy, str) and policy in SPARSE_ALIASES:
            notes.append(f"policy: {policy} -> {SPARSE_ALIASES[policy]} (a sparse run)")
            policy = SPARSE_ALIASES[policy]
    else:
        asked_dense = spec.sparsity == 0 or spec.method == "dense" or "sparsity" in policy_kwargs
        if topology is not None and not asked_dense:
            raise ValueError(f"{origin} has a TopologyCallback (method {topology.get('method', 'rigl')}) but trains the "
                             f"dense policy {policy} (no sparsity given): for a sparse run use policy: "
                             f"{SPARSE_ALIASES.get(str(policy), 'SparseMlpPolicy')} or --sparsity S; for the dense "
                             "baseline pass --sparsity 0 (the callback is then dropped)")
        for flag, value in (("--distribution", spec.distribution), ("--backend", spec.backend)):
            if value is not None:
                raise ValueError(f"{flag} {value} sets up sparse layers, but this run is the dense baseline (sparsity "
                                 "0): drop the flag, or pass --sparsity S for a sparse run")
        dropped = sorted(k for k in policy_kwargs if k in SPARSE_POLICY_KWARGS)
        if dropped or topology is not None:
            what = [f"sparse policy_kwargs {dropped}"] * bool(dropped) + ["the TopologyCallback"] * (topology is not None)
            notes.append(f"dense baseline: {' and '.join(what)} dropped")
        policy_kwargs = {k: v for k, v in policy_kwargs.items() if k not in SPARSE_POLICY_KWARGS}
        topology = None
        if isinstance(policy, str) and policy in DENSE_ALIASES:
            policy = DENSE_ALIASES[policy]
    distribution = str(policy_kwargs.get("distribution", "erk")) if topology is not None else "none"
    merged.update(policy=policy, policy_kwargs=policy_kwargs, callback=other_callbacks,
                  normalize=hp.resolved_normalize(merged))
    merged.pop("normalize_kwargs", None)
    for key in hp.EXPRESSION_KEYS:
        if key in merged and key != "policy_kwargs":
            merged[key] = hp.kwargs_dict(merged[key], key)
    resolved = Resolved(spec, merged, topology, method if topology is not None else "dense",
                        sparsity if topology is not None else 0.0, distribution, notes, sources, entry=origin)
    _check(resolved, algo)
    notes += budget_notes(merged, algo)
    if topology is not None:
        resolved.schedule = topology_schedule(topology, merged, algo)
        if resolved.schedule["updates"] == 0 and method == "gmp":
            raise ValueError(f"no gmp pruning step fits this run ({resolved.schedule['start']} to "
                             f"{resolved.schedule['end']} every {resolved.schedule['update_every']} env steps): the "
                             f"network would stay dense while labelled {sparsity:g} sparse; lower update_every, move "
                             "start/end or train longer")
    return resolved


def _check(resolved: Resolved, algo: Any) -> None:
    """Every value checked before anything is built or written."""
    hyper, sources = resolved.hyperparams, resolved.sources
    check_hyperparams(hyper, algo, hp.RL_ZOO_KEYS, sources)
    for key in ("callback", "env_wrapper", "vec_env_wrapper"):
        hp.class_specs(hyper.get(key), key)
    cls = policy_class(resolved.spec.algo, hyper["policy"])
    check_policy_kwargs(hyper["policy_kwargs"], cls, sources)
    if resolved.topology is not None:
        from sparse_rl.sb3.builders import SparseConfig
        from sparse_rl.sb3.callbacks import TopologyCallback
        from sparse_rl.sb3.policies import SparsePolicyMixin

        if not issubclass(cls, SparsePolicyMixin):
            raise ValueError(f"policy {hyper['policy']!r} is not a sparse_rl policy, but the run is sparse "
                             f"({resolved.method} at {resolved.sparsity:g}): use SparseMlpPolicy / SparseCnnPolicy")

        fields = set(SparseConfig.__dataclass_fields__)
        SparseConfig(**{k: v for k, v in hyper["policy_kwargs"].items() if k in fields})
        if hyper["policy_kwargs"].get("start_dense") and resolved.method != "gmp":  # it failed at step 0, folder written
            raise ValueError(f"policy_kwargs start_dense=True builds the sparse layers dense for gmp to prune, but the "
                             f"method is {resolved.method}, which keeps the nonzero count: drop start_dense, or use "
                             "--method gmp")
        _check_backend(str(hyper["policy_kwargs"].get("backend", "auto")), resolved.spec.device)
        try:
            TopologyCallback(**resolved.topology)
        except (TypeError, ValueError) as error:
            raise ValueError(f"callback {hp.TOPOLOGY_CALLBACK}: {error}") from None


def _check_backend(backend: str, device: str) -> None:
    """A backend that cannot run on the run's device would leave the layers on the reference path without a word."""
    from sparse_rl.nn import backends

    if backend == backends.AUTO:
        return
    backends.check_name(backend)
    where = run_device(device)
    if backend not in backends.available(where):
        raise ValueError(f"backend {backend!r} cannot run on {where} here (available: {backends.available(where)}, or "
                         "'auto'): the layers would silently use the reference path")
