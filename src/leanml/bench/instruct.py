"""The `instruct` suite: LESS's setting scaled down. SmolLM2-135M-Instruct + LoRA trained on a pool
of T0 + GSM8K + Code Alpaca; targets = a few validation examples per subtask of BBH, MMLU and
TyDiQA; evaluation on other examples of the same subtasks (MMLU: log-likelihood of the four answer
letters; BBH: exact match of the greedy answer; TyDiQA: token F1 of the greedy answer)."""

from __future__ import annotations

import copy
import functools
import re
import string
from collections import Counter
from typing import Any

import numpy as np
import torch

from leanml.bench.suitedata import SuiteData
from leanml.meter import Meter
from leanml.models.train import FitResult
from leanml.select import Pool, Target
from leanml.select.learner import Learner

_BASE: dict[str, Any] = {}


def _base(rank: int, seed: int):
    """SmolLM2 + LoRA; the dequantized base is loaded once per process and deep-copied per model."""
    from leanml.models.text import load_smollm2_lora

    if "model" not in _BASE:
        _BASE["model"], _BASE["tok"] = load_smollm2_lora(rank=rank, seed=0)
    model = copy.deepcopy(_BASE["model"])
    torch.manual_seed(seed)
    for n, p in model.named_parameters():  # fresh LoRA init per seed (peft: A random, B zero)
        if "lora_A" in n:
            torch.nn.init.kaiming_uniform_(p, a=5 ** 0.5)
        elif "lora_B" in n:
            torch.nn.init.zeros_(p)
    return model, _BASE["tok"]


class CausalLMLearner(Learner):
    """Prompt/completion records; loss = mean next-token cross-entropy on the completion (LESS's)."""

    metric = "instruct_mean"
    n_classes = None
    # per-example gradients go 16 sequences at a time (the Featurizer's default of 256 x 128 tokens
    # through SmolLM2 needed over 23 GB and was killed for memory on a 24 GB machine)
    grad_chunk = 16

    def __init__(self, *, rank: int = 8, epochs: int = 1, batch_size: int = 4, lr: float = 2e-4, max_len: int = 128,
                 gen_tokens: int = 16) -> None:
        self.rank, self.epochs, self.batch_size, self.lr, self.max_len = rank, epochs, batch_size, lr, max_len
        self.gen_tokens = gen_tokens
        self.tok = None

    def new_model(self, seed: int = 0):
        model, self.tok = _base(self.rank, seed)
        return model

    def grad_batch(self, X, y=None) -> dict[str, torch.Tensor]:
        from leanml.models.text import encode_completions

        return encode_completions(self.tok, [r["prompt"] for r in X], [r["completion"] for r in X], self.max_len)

    def loss_adapter(self, output: str = "loss"):
        from leanml.grads import CausalLMLoss

        if output != "loss":
            raise ValueError("the instruct learner differentiates the completion loss only")
        return CausalLMLoss()

    def fit(self, model, X, y=None, *, weights=None, epochs=None, batch_size=None, seed=0, batch_hook=None,
            keep_checkpoints=False, loss_norm="weights", max_steps=None, drop_last=False) -> FitResult:
        if batch_hook is not None or loss_norm != "weights" or max_steps is not None or drop_last:
            raise ValueError("online selection hooks are not supported by the causal-LM learner")
        from leanml.grads import CausalLMLoss

        loss_fn = CausalLMLoss()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=self.lr)
        bs, ep = batch_size or self.batch_size, epochs or self.epochs
        w = np.ones(len(X)) if weights is None else np.asarray(weights, dtype=np.float64)
        rng = np.random.default_rng(seed)
        out = FitResult(model=model, cost=None)
        with Meter() as m:
            model.train()
            for _ in range(ep):
                perm = rng.permutation(len(X))
                for s in range(0, len(X), bs):
                    idx = perm[s:s + bs]
                    batch = self.grad_batch([X[int(i)] for i in idx])
                    wb = torch.as_tensor(w[idx], dtype=torch.float32)
                    loss = (loss_fn.loss(model, batch) * wb).sum() / wb.sum().clamp_min(1e-12)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    out.losses.append(loss.item())
                if keep_checkpoints:  # LoRA weights only: the base is frozen
                    out.checkpoints.append({"model": {n: p.detach().clone() for n, p in model.named_parameters()
                                                      if p.requires_grad},
                                            "optimizer": copy.deepcopy(opt.state_dict()), "lr": self.lr})
            model.eval()
        out.cost = m.cost
        return out

    @torch.no_grad()
    def per_example_loss(self, model, X, y=None) -> np.ndarray:
        from leanml.grads import CausalLMLoss

        model.eval()
        out = [CausalLMLoss().loss(model, self.grad_batch(X[s:s + 8])).double().numpy() for s in range(0, len(X), 8)]
        return np.concatenate(out)

    @torch.no_grad()
    def evaluate(self, model, X, y=None) -> float:
        """Mean of the three benchmark scores over the evaluation items in ``X`` (records with 'kind')."""
        scores: dict[str, list[float]] = {"mmlu": [], "bbh": [], "tydiqa": []}
        for r, v in zip(X, self.item_scores(model, X), strict=True):
            scores[r["kind"]].append(v)
        self.last_scores = {k: float(np.mean(v)) for k, v in scores.items() if v}
        return float(np.mean(list(self.last_scores.values())))

    @torch.no_grad()
    def item_scores(self, model, X) -> list[float]:
        """Each evaluation item's score: MMLU letter correct (0/1), BBH exact match of the greedy answer's first
        line (0/1), TyDiQA best token F1 of that line against the gold answers."""
        model.eval()
        out = []
        for r in X:
            if r["kind"] == "mmlu":
                out.append(float(self._mmlu(model, r) == r["answer"]))
                continue
            pred = self._generate(model, r["prompt"]).split("\n")[0]
            if r["kind"] == "bbh":
                out.append(float(_norm(pred) == _norm(r["target"])))
            else:
                out.append(max(_f1(pred, a) for a in r["answers"]))
        return out

    def _mmlu(self, model, r) -> int:
        ids = self.tok(r["prompt"], return_tensors="pt")["input_ids"]
        logp = torch.log_softmax(model(input_ids=ids).logits[0, -1], -1)
        letters = [self.tok(f" {c}", add_special_tokens=False)["input_ids"][-1] for c in "ABCD"]
        return int(torch.argmax(logp[letters]))

    def _generate(self, model, prompt: str) -> str:
        enc = self.tok(prompt, return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=self.gen_tokens, do_sample=False,
                             pad_token_id=self.tok.pad_token_id)
        return self.tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def _norm(s: str) -> str:
    s = s.lower().strip()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    return re.sub(r"\s+", " ", s).strip()


def _f1(pred: str, gold: str) -> float:
    p, g = _norm(pred).split(), _norm(gold).split()
    common = sum((Counter(p) & Counter(g)).values())
    if not p or not g or common == 0:
        return float(p == g)
    prec, rec = common / len(p), common / len(g)
    return 2 * prec * rec / (prec + rec)


# ---- data ----------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _records(name: str, split: str) -> list[dict]:
    """A dataset split's records, loaded once per process (T0 is a 55k-row gzip)."""
    from leanml.data import load

    return load(name, split).records


def _mmlu_prompt(r) -> str:
    ch = "\n".join(f"{c}. {t}" for c, t in zip("ABCD", r["choices"], strict=True))
    return f"Question: {r['question']}\n{ch}\nAnswer:"


def pool_records(sizes: dict[str, Any], seed: int) -> list[dict[str, str]]:
    """A seeded sample of T0, GSM8K train and Code Alpaca as prompt/completion records."""
    rng = np.random.default_rng(30_000 + seed)
    out = []
    t0 = _records("t0", "train")
    for i in rng.choice(len(t0), sizes["n_t0"], replace=False):
        out.append({"prompt": t0[i]["prompt"], "completion": " " + t0[i]["completion"], "source": "t0"})
    gsm = _records("gsm8k", "train")
    for i in rng.choice(len(gsm), sizes["n_gsm8k"], replace=False):
        out.append({"prompt": f"Question: {gsm[i]['question']}\nAnswer:", "completion": " " + gsm[i]["answer"],
                    "source": "gsm8k"})
    ca = _records("codealpaca", "train")
    for i in rng.choice(len(ca), sizes["n_codealpaca"], replace=False):
        inp = f"\n{ca[i]['input']}" if ca[i]["input"] else ""
        out.append({"prompt": f"{ca[i]['instruction']}{inp}\n", "completion": ca[i]["output"], "source": "codealpaca"})
    return out


def target_and_eval(sizes: dict[str, Any], seed: int) -> tuple[list[dict], np.ndarray, list[dict]]:
    """(target records, their subtask names, evaluation items): ``per_task`` targets and ``eval_per_task``
    evaluation items for each of ``n_tasks`` seeded subtasks of MMLU, BBH and TyDiQA."""
    rng = np.random.default_rng(40_000 + seed)
    tgt, tasks, ev = [], [], []
    k, m, nt = sizes["per_task"], sizes["eval_per_task"], sizes["n_tasks"]

    def groups(records, key):
        g: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            g.setdefault(r[key], []).append(i)
        names = sorted(n for n, ix in g.items() if len(ix) >= k + m)
        return {n: g[n] for n in rng.choice(names, size=min(nt, len(names)), replace=False)}

    mm = _records("mmlu", "test")
    for subj, ix in groups(mm, "subject").items():
        ix = rng.permutation(ix)
        for i in ix[:k]:
            tgt.append({"prompt": _mmlu_prompt(mm[i]), "completion": " " + "ABCD"[mm[i]["answer"]]})
            tasks.append(f"mmlu/{subj}")
        ev += [{"kind": "mmlu", "prompt": _mmlu_prompt(mm[i]), "answer": mm[i]["answer"]} for i in ix[k:k + m]]
    bb = _records("bbh", "test")
    for task, ix in groups(bb, "task").items():
        ix = rng.permutation(ix)
        for i in ix[:k]:
            tgt.append({"prompt": f"{bb[i]['input']}\nAnswer:", "completion": " " + bb[i]["target"]})
            tasks.append(f"bbh/{task}")
        ev += [{"kind": "bbh", "prompt": f"{bb[i]['input']}\nAnswer:", "target": bb[i]["target"]} for i in ix[k:k + m]]
    ty = _records("tydiqa", "dev")
    for lang, ix in groups(ty, "language").items():
        ix = rng.permutation(ix)
        for i in ix[:k]:
            tgt.append(tydiqa_record(ty[i]))
            tasks.append(f"tydiqa/{lang}")
        ev += [tydiqa_item(ty[i]) for i in ix[k:k + m]]
    return tgt, np.array(tasks), ev


def _tydiqa_prompt(r: dict) -> str:
    return f"{r['context'][:1200]}\nQuestion: {r['question']}\nAnswer:"


def tydiqa_record(r: dict) -> dict[str, str]:
    """A TyDiQA example as a training record (prompt, completion = the first gold answer)."""
    return {"prompt": _tydiqa_prompt(r), "completion": " " + r["answers"][0]}


def tydiqa_item(r: dict) -> dict[str, Any]:
    """A TyDiQA example as an evaluation item (scored by token F1 against every gold answer)."""
    return {"kind": "tydiqa", "prompt": _tydiqa_prompt(r), "answers": r["answers"]}


def tydiqa_split(language: str, n_train: int, n_eval: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Disjoint seeded training records and evaluation items of one TyDiQA language (the dev split, the only
    one in the data root); ValueError naming the languages when ``language`` is not one or is too small."""
    ty = _records("tydiqa", "dev")
    ix = [i for i, r in enumerate(ty) if r["language"] == language]
    if not ix:
        raise ValueError(f"tydiqa_split: no language {language!r}; choose from "
                         f"{sorted({r['language'] for r in ty})}")
    if n_train < 1 or n_eval < 1 or n_train + n_eval > len(ix):
        raise ValueError(f"tydiqa_split: n_train and n_eval must be >= 1 and fit the {len(ix)} {language} "
                         f"examples (got {n_train} + {n_eval})")
    ix = np.random.default_rng(50_000 + seed).permutation(ix)
    return [tydiqa_record(ty[i]) for i in ix[:n_train]], [tydiqa_item(ty[i]) for i in ix[n_train:n_train + n_eval]]


def build_instruct(sizes: dict[str, Any], seed: int):
    learner = CausalLMLearner(rank=sizes["lora_r"], epochs=sizes["epochs"], batch_size=4, lr=sizes["lr"],
                              max_len=sizes["max_len"], gen_tokens=sizes["gen_tokens"])
    recs = pool_records(sizes, seed)
    pool = Pool(recs, None, learner=learner, texts=[r["prompt"] + r["completion"] for r in recs], name="instruct-pool",
                meta={"source": np.array([r["source"] for r in recs])})
    tgt, tasks, ev = target_and_eval(sizes, seed)
    target = Target(tgt, None, texts=[r["prompt"] + r["completion"] for r in tgt], tasks=tasks, name="bbh+mmlu+tydiqa")
    return SuiteData(pool, target, ev, None, learner, metric=learner.metric)
