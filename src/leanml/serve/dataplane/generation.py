"""Continuous batching for generation: iteration-level scheduling (Orca, OSDI 2022; vLLM, SOSP 2023).

One `ContinuousBatcher` drives one causal LM. Its unit of work is one *iteration*, not one request:

1. **admission**: waiting sequences start, earliest deadline first (as prefill), as soon as a batch row
   and their KV memory are free. Each
   reserves ``prompt + max_new_tokens`` tokens of KV cache up front (the most it can ever hold: its
   ``kv_cache_cap`` has already cut the prompt), so a running sequence never runs out of KV memory and
   nothing is ever evicted or recomputed;
2. **prefill** within a per-iteration budget of ``prefill_chunk`` prompt tokens (Sarathi-Serve's token
   budget, OSDI 2024), earliest deadline first (``deadline_s``, the caller's TTFT deadline; sequences
   without one, or with ``order="fifo"``, oldest first): whole prompts that fit what is left of the budget run
   together in one left-padded pass (each pass has a fixed cost: on this CPU a 16-token pass costs as
   much as 2.7 decode steps); a prompt longer than the whole budget runs alone, one chunk per iteration,
   so that it delays the running decodes by one chunk per iteration, not by its whole prefill. A
   sequence whose prompt is complete gets its first token from that pass and joins the running batch;
3. **one decode step** for every running sequence at once (one token each); a sequence that reaches
   end-of-sequence or its ``max_new_tokens`` leaves the batch right away and frees its row and KV.

The running batch's KV cache lives in preallocated row slots (`leanml.serve.dataplane.kv_slots.SlotKV`):
rows left-padded inside a common column window, a 2-D attention mask and explicit per-row position ids,
so that every row computes what it would compute alone (greedy decoding returns the same tokens as
generating the request by itself; tested). A decode step writes one token per row in place; a joining
sequence's K/V are copied into a free slot; a leaving one is replaced by the last row (one row copied).
Prefill runs as its own forward pass, not fused into the decode pass: fusing would pad every decode row to
the chunk's length in an eager HF model.

The batcher is synchronous and single-threaded (`step`); `leanml.serve.dataplane.generation_worker`
runs it on a thread behind the runtime's queue, admission, deadlines and metrics.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from leanml.serve.dataplane.kv_slots import SlotKV
from leanml.serve.queue_order import QUEUE_ORDERS, insert_by_deadline
from leanml.serve.variants.llm import CausalLM, cut_prompt


@dataclass(eq=False)
class Sequence:
    """One prompt being generated: its (cut) prompt ids, limits, the tokens so far and their times."""

    prompt: list[int]
    max_new_tokens: int
    min_new_tokens: int = 0
    tag: Any = None  # the caller's handle (the worker's request group)
    deadline_s: float = float("inf")  # when its first token is due (perf_counter s): the EDF order's key
    tokens: list[int] = field(default_factory=list)
    prefilled: int = 0
    admitted_s: float | None = None
    first_token_s: float | None = None
    done_s: float | None = None
    cache: Any = None  # its own DynamicCache while in prefill

    @property
    def reserve(self) -> int:
        """KV tokens reserved at admission: the most this sequence can ever hold."""
        return len(self.prompt) + self.max_new_tokens

    @property
    def finished(self) -> bool:
        return self.done_s is not None


def kv_bytes_per_token(model) -> int:
    """Bytes of K and V one token occupies over all layers (config shapes x the cache dtype)."""
    c = model.config
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    dtype = model.get_input_embeddings().weight.dtype
    import torch

    return int(c.num_hidden_layers * 2 * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size())


class ContinuousBatcher:
    """Iteration-level scheduler over one `CausalLM`; call `step` until `idle`."""

    def __init__(self, lm: CausalLM, *, max_batch: int = 8, kv_budget_tokens: int | None = None,
                 prefill_chunk: int = 64, order: str = "edf") -> None:
        if order not in QUEUE_ORDERS:
            raise ValueError(f"order must be one of {QUEUE_ORDERS}, got {order!r}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        if kv_budget_tokens is not None and kv_budget_tokens < 2:
            raise ValueError(f"kv_budget_tokens must be >= 2 or None (unbounded), got {kv_budget_tokens}")
        self.lm, self.model = lm, lm.model
        self.edf = order == "edf"
        self.max_batch, self.prefill_chunk, self.kv_budget_tokens = max_batch, prefill_chunk, kv_budget_tokens
        self.eos = list(lm.eos_ids)
        self.pad = lm.tok.pad_token_id if lm.tok.pad_token_id is not None else 0
        self.waiting: deque[Sequence] = deque()
        self.prefilling: deque[Sequence] = deque()
        self.rows: list[Sequence] = []  # the running batch, one row per sequence
        self.kv: SlotKV | None = None  # the running batch's K/V in row slots (left-padded), made on first join
        self.reserved = 0  # KV tokens reserved by admitted sequences
        self.steps = self.prefill_passes = 0
        self._join_list: list[Sequence] = []  # prefilled in this iteration, join after its decode step

    # ---- admission ----------------------------------------------------------------------------------
    def sequence(self, prompt_ids: list[int], max_new_tokens: int, kv_cache_cap: int | None = None,
                 min_new_tokens: int | None = None, tag: Any = None) -> Sequence:
        """A sequence for a tokenized prompt, its prompt cut to ``kv_cache_cap`` exactly as `CausalLM` cuts it."""
        m = int(max_new_tokens)
        return Sequence(cut_prompt(prompt_ids, m, kv_cache_cap), m, min(int(min_new_tokens or 0), m), tag)

    def fits_ever(self, need: int) -> bool:
        """Whether ``need`` KV tokens fit the budget at all (when nothing else runs)."""
        return self.kv_budget_tokens is None or need <= self.kv_budget_tokens

    def fits_now(self, need: int, n_rows: int = 1) -> bool:
        """Whether sequences needing ``need`` KV tokens and ``n_rows`` rows could start now."""
        active = len(self.rows) + len(self.prefilling)
        if active + n_rows > self.max_batch:
            return False
        return self.kv_budget_tokens is None or self.reserved + need <= self.kv_budget_tokens

    def admit_now(self, seqs: list[Sequence]) -> bool:
        """Start ``seqs`` (one request's prompts) now if their rows and KV reservation fit; else change nothing."""
        if not self.fits_now(sum(s.reserve for s in seqs), len(seqs)):
            return False
        now = time.perf_counter()
        for s in seqs:
            self.reserved += s.reserve
            s.admitted_s = now
            self._enqueue(self.prefilling, s)
        return True

    def _enqueue(self, q: deque[Sequence], s: Sequence) -> None:
        """Append ``s``; EDF: behind every sequence due no later than it (equal deadlines stay in arrival order)."""
        if self.edf:
            insert_by_deadline(q, s, lambda o: o.deadline_s)
        else:
            q.append(s)

    def add(self, seqs: list[Sequence]) -> None:
        """Queue sequences (earliest deadline first, or FIFO); they start when a row and their KV reservation are
        free."""
        for s in seqs:
            if not self.fits_ever(s.reserve):
                raise ValueError(f"sequence needs {s.reserve} KV tokens; the budget is {self.kv_budget_tokens}")
            self._enqueue(self.waiting, s)

    def _admit(self) -> None:
        while self.waiting and self.admit_now([self.waiting[0]]):
            self.waiting.popleft()

    @property
    def idle(self) -> bool:
        return not (self.waiting or self.prefilling or self.rows)

    @property
    def kv_tokens_held(self) -> int:
        """KV tokens held now (real tokens only; padding columns excluded)."""
        held = self.kv.tokens_held if self.kv is not None else 0
        return held + sum(s.prefilled for s in self.prefilling)

    # ---- one iteration ------------------------------------------------------------------------------
    def step(self) -> list[Sequence]:
        """Admit, run this iteration's prefill, one decode step; the sequences that finished in this iteration."""
        import torch

        self._admit()
        done: list[Sequence] = []
        with torch.inference_mode():
            for s in self._prefill():
                (done if s.finished else self._join_list).append(s)
            # decode first for the rows already running, then let the new sequences join (their first token
            # is already chosen): a joiner waits for no decode step beyond the one in this iteration
            if self.rows:
                done += self._decode()
            if self._join_list:
                self._join(self._join_list)
                self._join_list = []
        for s in done:
            self.reserved -= s.reserve
        return done

    def _prefill(self) -> list[Sequence]:
        """This iteration's prefill within the ``prefill_chunk`` token budget, in ``prefilling``'s order (earliest
        deadline first, or oldest first); the sequences whose prompt it completed.

        Whole prompts that fit the budget left run *together*, as one left-padded pass (one pass per
        prompt would pay the model's fixed per-pass cost once per prompt: on this CPU a 16-token pass
        costs 2.7x a decode step); a prompt longer than the whole budget runs alone, one chunk per
        iteration (Sarathi-Serve), and a prompt that fits the budget but not what is left of it waits for
        the next iteration rather than being split into a sliver."""
        budget, group, complete = self.prefill_chunk, [], []
        while self.prefilling and budget > 0:
            s = self.prefilling[0]
            rest = len(s.prompt) - s.prefilled
            if s.prefilled == 0 and rest <= budget:
                group.append(self.prefilling.popleft())
                budget -= rest
                continue
            if group or rest <= self.prefill_chunk and budget < rest:
                break
            budget -= self._prefill_chunk(s, budget)
            if s.prefilled < len(s.prompt):
                break
            complete.append(self.prefilling.popleft())
        if group:
            self._prefill_group(group)
        return complete + group

    def _choose(self, logits, seqs: list[Sequence]):
        """Greedy next token per row, end-of-sequence banned in rows short of their ``min_new_tokens``."""
        import torch

        ban = [i for i, s in enumerate(seqs) if len(s.tokens) < s.min_new_tokens]
        if ban and self.eos:
            logits = logits.clone()
            logits[torch.tensor(ban).unsqueeze(1), torch.tensor(self.eos).unsqueeze(0)] = -float("inf")
        return torch.argmax(logits, dim=-1).tolist()

    def _append(self, s: Sequence, tok: int, now: float) -> None:
        s.tokens.append(tok)
        if s.first_token_s is None:
            s.first_token_s = now
        if tok in self.eos or len(s.tokens) >= s.max_new_tokens:
            s.done_s = now

    def _prefill_chunk(self, s: Sequence, budget: int) -> int:
        """Run the next chunk (at most ``budget`` tokens) of ``s``'s prompt; the tokens it took. When the prompt
        is complete, its first token is chosen."""
        import torch
        from transformers import DynamicCache

        if s.cache is None:
            s.cache = DynamicCache()
        a, b = s.prefilled, min(len(s.prompt), s.prefilled + budget)
        out = self.model(input_ids=torch.tensor([s.prompt[a:b]]), attention_mask=torch.ones(1, b, dtype=torch.long),
                         position_ids=torch.arange(a, b).unsqueeze(0), cache=s.cache, use_cache=True,
                         logits_to_keep=1)
        s.cache = out.cache
        s.prefilled = b
        self.prefill_passes += 1
        if b == len(s.prompt):
            self._append(s, self._choose(out.logits[:, -1].float(), [s])[0], time.perf_counter())
        return b - a

    def _prefill_group(self, seqs: list[Sequence]) -> None:
        """Prefill whole prompts in one left-padded pass; each gets its first token and, as its cache, its
        row of the pass's cache with the row's padding columns (the join drops or re-pads them)."""
        import torch
        from transformers import DynamicCache

        width = max(len(s.prompt) for s in seqs)
        ids = torch.tensor([[self.pad] * (width - len(s.prompt)) + s.prompt for s in seqs])
        mask = torch.tensor([[0] * (width - len(s.prompt)) + [1] * len(s.prompt) for s in seqs])
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        cache = DynamicCache()
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True,
                         logits_to_keep=1)
        self.prefill_passes += 1
        now = time.perf_counter()
        layers = self._layers(out.cache)
        for i, (s, t) in enumerate(zip(seqs, self._choose(out.logits[:, -1].float(), seqs), strict=True)):
            a = width - len(s.prompt)  # this row's real columns are [a, width)
            s.cache = [(k[i : i + 1, :, a:], v[i : i + 1, :, a:]) for k, v in layers]
            s.prefilled = len(s.prompt)
            self._append(s, t, now)

    def _decode(self) -> list[Sequence]:
        import torch

        kv = self.kv
        ids = torch.tensor([[s.tokens[-1]] for s in self.rows])
        pos = torch.tensor([[len(s.prompt) + len(s.tokens) - 1] for s in self.rows])
        mask = kv.step_mask(1)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=kv.cache(), use_cache=True)
        kv.advance(1)
        self.steps += 1
        now = time.perf_counter()
        for s, t in zip(self.rows, self._choose(out.logits[:, -1].float(), self.rows), strict=True):
            self._append(s, t, now)
        done = [s for s in self.rows if s.finished]
        if done:
            order = kv.leave([i for i, s in enumerate(self.rows) if s.finished])
            self.rows = [self.rows[i] for i in order]
        return done

    @property
    def mask(self):
        """The running batch's (rows, columns) attention mask (1 = real token); None when no row runs."""
        return self.kv.mask if self.rows else None

    # ---- batch surgery ------------------------------------------------------------------------------
    def _layers(self, cache) -> list[tuple[Any, Any]]:
        if isinstance(cache, list):  # a row of a group prefill: its (keys, values) per layer already
            return cache
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _join(self, new: list[Sequence]) -> None:
        """Copy prefilled sequences into free row slots of the running batch (right-aligned, left-padded)."""
        for s in new:
            layers = self._layers(s.cache)
            if self.kv is None:  # rows and columns grow by doubling: memory follows what runs, not max_batch
                k = layers[0][0]
                self.kv = SlotKV(len(layers), min(self.max_batch, 4), k.shape[1], k.shape[-1], k.dtype,
                                 columns=max(64, 2 * s.prefilled))
            if len(self.rows) == self.kv.shape[0]:
                self.kv.ensure_rows(max(len(self.rows) + 1, min(self.max_batch, 2 * len(self.rows))))
            # the first token was chosen but its K/V is not cached yet: it is the next decode input
            self.kv.join(layers, s.prefilled)
            s.cache = None
            self.rows.append(s)

    # ---- offline use --------------------------------------------------------------------------------
    def run(self, seqs: list[Sequence]) -> list[Sequence]:
        """Generate ``seqs`` to completion (all queued now); returns them in order."""
        self.add(seqs)
        while not self.idle:
            self.step()
        return seqs
