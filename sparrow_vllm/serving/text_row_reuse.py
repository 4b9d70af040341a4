"""Reusing committed text rows by content, for requests whose prefix vLLM served from its
prefix cache.

With prefix caching vLLM computes only the uncached tail of a request, so the draft never
sees the target's hidden states of the cached prefix. But a draft row is a function of the
target's prefix only: row i (target index i, input token x[i+1]) depends on x[0..i+1] and
the multimodal items among them. So the rows of a finished request can serve any later
request with the same prefix (the next turn of a chat, a repeated system prompt and video).

A row's content key is a chained hash over the tokens x[0..i+1], with each multimodal
item's identifier (vLLM's content hash of the image or video) folded in at its offset and
the request's LoRA adapter (name, path) and cache_salt at its start, as vLLM's own block
hashes do (vllm/v1/core/kv_cache_utils.py): requests share rows only where vLLM's prefix
cache could share their KV blocks. The tokens are those the request is prefilled with: its
prompt, and, when Model Runner V2 re-sends a preempted request as new
(`prefill_token_ids`), the tokens it had generated, so that it adopts its own rows back
past its prompt. Finished and preempted requests leave their rows in the draft cache as
`ReusableRows` entries, indexed by key, evicted least recently used when blocks run out.
A new request whose first step starts at target index L > 0 takes the longest run of
rows whose keys match its tokens up to x[L - 1]; the one row it cannot get is row L - 1
(its input token x[L] lies past the cached prefix, and its hidden state was never
computed for this request).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RequestContent:
    """What keys a request's rows: the tokens it is prefilled with, the multimodal items
    among them, and what else keys vLLM's prefix cache."""

    # the prompt, then (Model Runner V2 re-sending a preempted request) the tokens it had
    # generated: all the tokens the target computes the request's rows from
    token_ids: tuple[int, ...]
    # (offset, length, identifier) of each multimodal item
    mm_items: tuple[tuple[int, int, str], ...] = ()
    # the LoRA adapter (name, path) and cache_salt, as vLLM's block hashes take them
    namespace: tuple[tuple[str, ...], ...] = ()
    # how many of token_ids are the prompt (None: all of them)
    prompt_len: int | None = None

    @property
    def prompt_token_ids(self) -> tuple[int, ...]:
        return self.token_ids[: self.prompt_len]

    @classmethod
    def from_vllm(cls, new_req: Any) -> RequestContent:
        """From vLLM's NewRequestData: prompt_token_ids, prefill_token_ids (V2 only),
        mm_features (MultiModalFeatureSpec: identifier, mm_position), lora_request, and
        cache_salt (carried over by serving/vllm/patches.py, ledger entry 12)."""
        prompt = tuple(new_req.prompt_token_ids)
        prefill = new_req.prefill_token_ids
        items = tuple(
            (f.mm_position.offset, f.mm_position.length, str(f.identifier))
            for f in (new_req.mm_features or ())
        )
        namespace: list[tuple[str, ...]] = []
        lora = new_req.lora_request
        if lora:  # vllm/v1/core/kv_cache_utils.py _gen_lora_extra_hash_keys
            namespace.append(("lora", lora.lora_name, lora.lora_path))
        if new_req.cache_salt:
            namespace.append(("cache_salt", new_req.cache_salt))
        return cls(
            prompt if prefill is None else tuple(prefill), items, tuple(namespace), len(prompt)
        )


def request_contents(new_reqs: Iterable[Any]) -> dict[str, RequestContent]:
    """req_id -> content, from vLLM's NewRequestData list (requests without token ids,
    e.g. prompt embeddings, are left out: their rows are not reused)."""
    return {r.req_id: RequestContent.from_vllm(r) for r in new_reqs if r.prompt_token_ids is not None}


def row_keys(
    tokens: Sequence[int],
    mm_items: Iterable[tuple[int, int, str]],
    visual: Sequence[bool],
    end: int,
    namespace: tuple[tuple[str, ...], ...],
) -> list[tuple[int, int]]:
    """(target index i, content key) of each text row i with i + 1 < end, in order. Row i is
    a text row when its input token tokens[i + 1] is not visual (`visual`, per token: the
    family's rule less the visual tokens the draft's visual budget keeps, VisualRows.token_mask;
    the rows the drafter commits). `namespace` (RequestContent.namespace)
    seeds the chain: requests of other LoRA adapters or cache salts share no key."""
    identifiers = {offset: ident for offset, _, ident in mm_items}
    keys: list[tuple[int, int]] = []
    h = hash(namespace)
    for pos in range(min(end, len(tokens))):
        if pos in identifiers:
            h = hash((h, identifiers[pos]))
        h = hash((h, tokens[pos]))
        if pos >= 1 and not visual[pos]:
            keys.append((pos - 1, h))  # row pos - 1 is complete once x[pos] is known
    return keys


def matching_rows(stored_seq: Sequence[int], keys: Sequence[tuple[int, int]]) -> int:
    """How many of a request's stored rows (their target indices, in order) are the text
    rows `keys` describes, from the first on (a row the request never got, like the one
    before a prefix-cache hit, ends the run)."""
    n = 0
    for seq, (index, _) in zip(stored_seq, keys, strict=False):
        if seq != index:
            break
        n += 1
    return n


@dataclass
class ReusableRows:
    """The rows [0, rows) a finished request left behind, block by block."""

    # physical block of each logical block 0, 1, ...
    blocks: list[int]
    rows: int
    # content key of each row
    keys: list[int] = field(default_factory=list)


class ReuseIndex:
    """Row key -> (entry, row count), over entries kept least recently used first."""

    def __init__(self) -> None:
        self.entries: OrderedDict[int, ReusableRows] = OrderedDict()
        self._by_key: dict[int, tuple[int, int]] = {}
        self._next_id = 0
        self.reused_rows = 0  # rows handed to new requests, ever

    def add(self, entry: ReusableRows) -> None:
        entry_id, self._next_id = self._next_id, self._next_id + 1
        self.entries[entry_id] = entry
        for r, key in enumerate(entry.keys[: entry.rows], start=1):
            self._by_key[key] = (entry_id, r)

    def longest_match(self, keys: list[tuple[int, int]]) -> tuple[ReusableRows, int] | None:
        """The entry holding the longest run of rows with these keys, and its length."""
        for r in range(len(keys), 0, -1):
            hit = self._by_key.get(keys[r - 1][1])
            if hit is not None and hit[1] == r:
                self.entries.move_to_end(hit[0])
                return self.entries[hit[0]], r
        return None

    def pop_oldest(self) -> ReusableRows | None:
        if not self.entries:
            return None
        entry_id, entry = self.entries.popitem(last=False)
        for key in entry.keys:
            if self._by_key.get(key, (None,))[0] == entry_id:
                del self._by_key[key]
        return entry
