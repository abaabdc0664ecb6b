"""The deploy config (TOML): server settings and deployments, validated with clear errors.

    [server]
    host = "127.0.0.1"          # loopback unless told otherwise
    port = 8321
    admin_token = ""            # or env LEANML_SERVE_ADMIN_TOKEN (which wins); empty = admin API off
    max_body_bytes = 1048576
    workers = 0                 # model calls at once over all variants; 0 = one per CPU core
    torch_threads = 0           # torch intra-op threads per model call; 0 = torch's default
    profile_file = "adult.profile.json"   # relative to this file

    [deployments.adult]
    prototype = "adult"         # variant family (leanml.serve.variants.prototypes)
    variants = ["hgb10", "hgb200", "logreg"]   # default: all of the family
    policy = "infaas"           # static | infaas | proteus | adaptive | clipper | any registered policy
    policy_params = { cost = "latency" }
    params = { rf_trees = 60 }  # prototype parameters
    slo = { latency_ms = 200, min_accuracy = 0.8 }   # defaults for requests that omit them
    batching = { max_batch = 32, max_wait_ms = 1.0, max_queue = 1024, concurrency = 1 }
    profile = { batch_sizes = [1, 8, 32], reps = 20, val_n = 0 }
"""

from __future__ import annotations

import copy
import os
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from leanml.serve.queue_order import QUEUE_ORDERS
from leanml.serve.types import SLO

TOKEN_ENV = "LEANML_SERVE_ADMIN_TOKEN"


class ConfigError(ValueError):
    """A deploy config is invalid; the message names the file, the key and what to do."""


@dataclass(frozen=True)
class Batching:
    max_batch: int = 32  # examples per model call
    max_wait_ms: float = 0.0  # how long the oldest queued request may wait for others (0: batches form while busy)
    max_queue: int = 1024  # requests waiting per variant before new ones get 429
    concurrency: int = 1  # model calls in flight per variant
    drop_expired: bool = True  # a request whose deadline passed in the queue gets 503, not a late answer
    # generate variants only: iteration-level (continuous) batching, dataplane/generation_worker.py
    continuous: bool = False  # requests join and leave the running batch between decode steps
    kv_cache_mb: float = 0.0  # KV-cache memory per variant that admission reserves against; 0 = unbounded
    prefill_chunk: int = 64  # prompt tokens per prefill pass (chunked prefill, Sarathi-Serve)
    queue: str = "edf"  # admission and prefill order: "edf" (earliest TTFT deadline first) or "fifo"


@dataclass(frozen=True)
class ProfileSettings:
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    reps: int = 20
    val_n: int = 0  # validation examples for accuracy; 0 = the whole split
    warmup: int = 2  # untimed runs per batch size before the timed ones


@dataclass(frozen=True)
class DeploymentConfig:
    name: str
    prototype: str
    variants: tuple[str, ...] = ()  # empty = every variant of the prototype
    params: dict[str, Any] = field(default_factory=dict)
    policy: str = "infaas"
    policy_params: dict[str, Any] = field(default_factory=dict)
    slo: SLO = SLO()
    batching: Batching = Batching()
    profile: ProfileSettings = ProfileSettings()


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8321
    admin_token: str | None = None
    max_body_bytes: int = 1 << 20
    workers: int = 0
    profile_file: Path | None = None
    log_level: str = "warning"
    torch_threads: int = 0  # intra-op threads per model call; 0 = torch's default (all cores)

    def thread_count(self) -> int:
        return self.workers if self.workers > 0 else max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class DeployConfig:
    server: ServerConfig
    deployments: dict[str, DeploymentConfig]
    source: Path | None = None


# ---- validation helpers ---------------------------------------------------------------------------
def _check_keys(d: dict, allowed: set[str], where: str) -> None:
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a table, got {type(d).__name__}")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _num(d: dict, key: str, default, where: str, *, lo: float | None = None, integer: bool = False,
         optional: bool = False):
    if key not in d or (optional and d[key] is None):
        return default
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise ConfigError(f"{where}.{key}: must be {'an integer' if integer else 'a number'}, got {v!r}")
    if lo is not None and v < lo:
        raise ConfigError(f"{where}.{key}: must be >= {lo}, got {v!r}")
    return int(v) if integer else float(v)


def parse_slo(d: dict | None, where: str) -> SLO:
    d = d or {}
    _check_keys(d, {"latency_ms", "min_accuracy", "max_energy_j"}, where)
    acc = _num(d, "min_accuracy", None, where, lo=0.0, optional=True)
    if acc is not None and acc > 1.0:
        raise ConfigError(f"{where}.min_accuracy: must be in [0, 1], got {acc}")
    lat = _num(d, "latency_ms", None, where, lo=0.0, optional=True)
    if lat is not None and lat <= 0:
        raise ConfigError(f"{where}.latency_ms: must be > 0, got {lat}")
    return SLO(lat, acc, _num(d, "max_energy_j", None, where, lo=0.0, optional=True))


def parse_batching(d: dict | None, where: str, base: Batching = Batching()) -> Batching:
    d = d or {}
    _check_keys(d, set(Batching.__dataclass_fields__), where)
    drop = d.get("drop_expired", base.drop_expired)
    if not isinstance(drop, bool):
        raise ConfigError(f"{where}.drop_expired: must be true or false, got {drop!r}")
    cont = d.get("continuous", base.continuous)
    if not isinstance(cont, bool):
        raise ConfigError(f"{where}.continuous: must be true or false, got {cont!r}")
    queue = d.get("queue", base.queue)
    if queue not in QUEUE_ORDERS:
        raise ConfigError(f"{where}.queue: must be one of {', '.join(QUEUE_ORDERS)}, got {queue!r}")
    return Batching(
        max_batch=_num(d, "max_batch", base.max_batch, where, lo=1, integer=True),
        max_wait_ms=_num(d, "max_wait_ms", base.max_wait_ms, where, lo=0.0),
        max_queue=_num(d, "max_queue", base.max_queue, where, lo=1, integer=True),
        concurrency=_num(d, "concurrency", base.concurrency, where, lo=1, integer=True),
        drop_expired=drop, continuous=cont,
        kv_cache_mb=_num(d, "kv_cache_mb", base.kv_cache_mb, where, lo=0.0),
        prefill_chunk=_num(d, "prefill_chunk", base.prefill_chunk, where, lo=1, integer=True), queue=queue,
    )


def parse_profile_settings(d: dict | None, where: str) -> ProfileSettings:
    d = d or {}
    _check_keys(d, {"batch_sizes", "reps", "val_n", "warmup"}, where)
    bs = d.get("batch_sizes", [1, 8, 32])
    if not isinstance(bs, list) or not bs or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1
                                                    for b in bs):
        raise ConfigError(f"{where}.batch_sizes: must be a non-empty list of integers >= 1, got {bs!r}")
    return ProfileSettings(tuple(sorted(set(bs))), _num(d, "reps", 20, where, lo=1, integer=True),
                           _num(d, "val_n", 0, where, lo=0, integer=True),
                           _num(d, "warmup", 2, where, lo=0, integer=True))


def _str_list(v: Any, where: str) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
        raise ConfigError(f"{where}: must be a list of variant names, got {v!r}")
    if len(set(v)) != len(v):
        raise ConfigError(f"{where}: lists a variant twice: {v!r}")
    return tuple(v)


def parse_deployment(name: str, d: dict, where: str) -> DeploymentConfig:
    """One ``[deployments.<name>]`` table -> DeploymentConfig (prototype and variant names are checked)."""
    from leanml.serve.policy import canonical_name, known_policies
    from leanml.serve.variants.prototypes import get_prototype, resolve_params

    _check_keys(d, {"prototype", "variants", "params", "policy", "policy_params", "slo", "batching", "profile"},
                where)
    if not name.replace("-", "_").isidentifier():
        raise ConfigError(f"{where}: deployment names may use letters, digits, '_' and '-', got {name!r}")
    proto_name = d.get("prototype")
    if not isinstance(proto_name, str):
        raise ConfigError(f"{where}.prototype: required, the variant family to serve (e.g. \"adult\")")
    try:
        proto = get_prototype(proto_name)
        params = resolve_params(proto, d.get("params") or {})
    except (KeyError, ValueError) as e:
        raise ConfigError(f"{where}: {e.args[0]}") from None
    variants = _str_list(d["variants"], f"{where}.variants") if "variants" in d else tuple(proto.variant_names)
    bad = [v for v in variants if v not in proto.variant_names]
    if bad:
        raise ConfigError(f"{where}.variants: {bad} not in prototype '{proto_name}' (has {list(proto.variant_names)})")
    policy = d.get("policy", "infaas")
    if not isinstance(policy, str):
        raise ConfigError(f"{where}.policy: must be a policy name, one of {known_policies()}")
    policy = canonical_name(policy)  # "greedy" (deprecated) -> "infaas", with a DeprecationWarning
    if policy not in known_policies():
        raise ConfigError(f"{where}.policy: unknown policy {policy!r}; known: {sorted(known_policies())}")
    pp = d.get("policy_params") or {}
    if not isinstance(pp, dict):
        raise ConfigError(f"{where}.policy_params: must be a table")
    if policy == "static":
        target = pp.get("variant", variants[0])
        if target not in variants:
            raise ConfigError(f"{where}.policy_params.variant: {target!r} is not among the served variants "
                              f"{list(variants)}")
    return DeploymentConfig(
        name=name, prototype=proto_name, variants=variants, params=params, policy=policy, policy_params=dict(pp),
        slo=parse_slo(d.get("slo"), f"{where}.slo"), batching=parse_batching(d.get("batching"), f"{where}.batching"),
        profile=parse_profile_settings(d.get("profile"), f"{where}.profile"))


def parse_server(d: dict | None, where: str, base_dir: Path | None) -> ServerConfig:
    d = d or {}
    _check_keys(d, set(ServerConfig.__dataclass_fields__), where)
    host = d.get("host", "127.0.0.1")
    if not isinstance(host, str) or not host:
        raise ConfigError(f"{where}.host: must be a host name or address, got {host!r}")
    port = _num(d, "port", 8321, where, lo=0, integer=True)
    if port > 65535:
        raise ConfigError(f"{where}.port: must be <= 65535, got {port}")
    token = os.environ.get(TOKEN_ENV) or d.get("admin_token") or None
    if token is not None and (not isinstance(token, str) or len(token) < 8):
        raise ConfigError(f"{where}.admin_token: must be a string of at least 8 characters (or set {TOKEN_ENV})")
    pf = d.get("profile_file")
    if pf is not None:
        if not isinstance(pf, str):
            raise ConfigError(f"{where}.profile_file: must be a path string")
        pf = Path(pf).expanduser()
        if not pf.is_absolute() and base_dir is not None:
            pf = base_dir / pf
    level = d.get("log_level", "warning")
    if level not in ("critical", "error", "warning", "info", "debug"):
        raise ConfigError(f"{where}.log_level: one of critical/error/warning/info/debug, got {level!r}")
    return ServerConfig(host=host, port=port, admin_token=token,
                        max_body_bytes=_num(d, "max_body_bytes", 1 << 20, where, lo=64, integer=True),
                        workers=_num(d, "workers", 0, where, lo=0, integer=True), profile_file=pf, log_level=level,
                        torch_threads=_num(d, "torch_threads", 0, where, lo=0, integer=True))


def parse_config(doc: dict, source: Path | None = None) -> DeployConfig:
    where = str(source) if source else "config"
    _check_keys(doc, {"server", "deployments"}, where)
    deps = doc.get("deployments") or {}
    if not isinstance(deps, dict) or not deps:
        raise ConfigError(f"{where}: needs at least one [deployments.<name>] table")
    server = parse_server(doc.get("server"), f"{where}: [server]", source.parent if source else None)
    return DeployConfig(server, {n: parse_deployment(n, d, f"{where}: [deployments.{n}]") for n, d in deps.items()},
                        source)


def load_config(path: str | Path) -> DeployConfig:
    """Read and validate a deploy config TOML file."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"deploy config {path} does not exist (see examples/*.toml)") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"deploy config {path} is not valid TOML: {e}") from None
    return parse_config(doc, path.resolve())


def deployment_to_dict(dc: DeploymentConfig) -> dict[str, Any]:
    d = asdict(dc)
    d.pop("name")
    d["variants"] = list(dc.variants)
    d["profile"]["batch_sizes"] = list(dc.profile.batch_sizes)
    d["slo"] = {k: v for k, v in asdict(dc.slo).items() if v is not None}
    return d


def config_to_dict(cfg: DeployConfig) -> dict[str, Any]:
    """The config as JSON-able data; the admin token is never echoed."""
    s = asdict(cfg.server)
    s["admin_token"] = "(set)" if cfg.server.admin_token else None
    s["profile_file"] = str(cfg.server.profile_file) if cfg.server.profile_file else None
    return {"server": s, "deployments": {n: deployment_to_dict(d) for n, d in cfg.deployments.items()}}


def _merge(base: dict, patch: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("params", "policy_params"):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def apply_patch(cfg: DeployConfig, patch: dict) -> DeployConfig:
    """A new config with ``patch`` (``{"deployments": {name: {changed keys}}, "remove": [names]}``) applied.

    Keys not named keep their value; a new deployment name needs a full table. ``server`` cannot
    change at run time (host, port and limits are bound when the server starts).
    """
    if not isinstance(patch, dict):
        raise ConfigError("config update: body must be a JSON object")
    _check_keys(patch, {"deployments", "remove"}, "config update")
    deps = patch.get("deployments") or {}
    remove = patch.get("remove") or []
    if not isinstance(deps, dict) or not isinstance(remove, list):
        raise ConfigError("config update: 'deployments' must be an object and 'remove' a list of names")
    new = dict(cfg.deployments)
    for name in remove:
        if name not in new:
            raise ConfigError(f"config update: cannot remove unknown deployment {name!r}")
        del new[name]
    for name, d in deps.items():
        base = deployment_to_dict(cfg.deployments[name]) if name in cfg.deployments else {}
        if isinstance(d, dict) and "prototype" in d and base and d["prototype"] != base["prototype"]:
            base = {}  # a different family: the patch is a full new definition
        if isinstance(d, dict) and "variants" in d and "policy_params" not in d and base:
            # the served set changed: a static target that left the set falls back to the first variant
            tgt = base.get("policy_params", {}).get("variant")
            if tgt is not None and tgt not in (d.get("variants") or []):
                base["policy_params"] = {k: v for k, v in base["policy_params"].items() if k != "variant"}
        new[name] = parse_deployment(name, _merge(base, d) if isinstance(d, dict) else d,
                                     f"config update: deployments.{name}")
    if not new:
        raise ConfigError("config update: would leave no deployment")
    return replace(cfg, deployments=new)
