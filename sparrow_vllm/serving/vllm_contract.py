"""What sparrow-vllm relies on in vLLM, checked statically against vLLM's source.

`TOUCH_POINTS` lists every name sparrow-vllm patches, subclasses, overrides, calls or reads
in vLLM, one entry per touch point. `check_source(root)` parses (with `ast`, never importing
vLLM) the vLLM package under `root` and returns one human-readable problem per broken
touch point: a missing module, a missing name, a name of the wrong kind, or a parameter
list that no longer matches. So a vLLM release the plugin has never run on (vLLM 0.33 has
no CPU build) is checked from its wheel's Python source, and the installed vLLM from its
site-packages: tests/unit/test_vllm_contract.py does both.

Adding a touch point: append one `TouchPoint` to `TOUCH_POINTS` (keep the group of its
module). Fields:

    module    dotted module path, e.g. "vllm.v1.worker.gpu_model_runner"
    name      qualified name in that module, e.g. "GPUModelRunner._update_states"; a
              member is looked up in the class body, then in its base classes (followed
              through imports, within vLLM), so an inherited method is found where vLLM
              defines it today
    kind      "class", "function" (module level), "method", "attribute" (class-level
              assignment or annotation, dataclass field, property, or `self.x = ...` in a
              method) or "module-name" (any binding at module level: an import, a def, an
              assignment, a lazy `__getattr__` export)
    params    for "function"/"method": the parameter names relied on, `self` included;
              "*args"/"**kwargs" spelled so, and "*" before keyword-only parameters
    match     how `params` is compared with vLLM's parameters:
              "exact"  the same names in the same order (the plugin overrides or wraps the
                       callable, so its signature must mirror vLLM's)
              "prefix" vLLM's parameters start with these (the plugin passes them
                       positionally); any other parameter must have a default
              "names"  each name is a parameter, in any order (passed by keyword); any
                       other parameter must have a default
    why       one line: what sparrow-vllm does with it

`python -m sparrow_vllm.serving.vllm_contract ROOT` prints where each touch point lives in
the vLLM source under ROOT (site-packages, or a directory holding an extracted `vllm/`)
and the problems; `--vllm 0.33.0` checks that release's wheel (downloaded once, see
`wheel_source`).
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

Kind = Literal["class", "function", "method", "attribute", "module-name"]
Match = Literal["exact", "prefix", "names"]


@dataclass(frozen=True)
class TouchPoint:
    module: str
    name: str
    kind: Kind
    why: str
    params: tuple[str, ...] | None = None
    match: Match = "exact"


TP = TouchPoint
_SELF = ("self",)

TOUCH_POINTS: list[TouchPoint] = [
    # ---- plugin.py: registration ------------------------------------------------------
    TP("vllm", "ModelRegistry", "module-name",
       "plugin.register() registers the Sparrow draft architectures"),
    TP("vllm.model_executor.models.registry", "_ModelRegistry.get_supported_archs", "method",
       "register() skips architectures already registered", _SELF),
    TP("vllm.model_executor.models.registry", "_ModelRegistry.register_model", "method",
       "register() registers the draft class lazily by module path",
       ("self", "model_arch", "model_cls"), "prefix"),
    # ---- vllm_patches.py 1: configuration boundary --------------------------------------
    TP("vllm.engine.arg_utils", "EngineArgs.create_speculative_config", "method",
       'patched: method "sparrow" is validated, then built as "eagle"',
       ("self", "target_model_config", "target_parallel_config")),
    TP("vllm.engine.arg_utils", "EngineArgs.speculative_config", "attribute",
       "the patch reads and rewrites the user's speculative config dict"),
    TP("vllm.model_executor.models.interfaces", "supports_eagle3", "function",
       "start-up check: can the target hand out auxiliary hidden states", ("model",), "prefix"),
    TP("vllm.model_executor.models.interfaces", "supports_multimodal", "function",
       "target_adapter: a VLM's language model holds the embedding and LM head",
       ("model",), "prefix"),
    # ---- vllm_patches.py 2-4: V1 model runner -------------------------------------------
    TP("vllm.v1.worker.gpu_model_runner", "GPUModelRunner.__init__", "method",
       "patched: swaps `drafter` for SparrowProposer", ("self", "vllm_config", "device")),
    TP("vllm.v1.worker.gpu_model_runner", "GPUModelRunner._on_request_state_removed", "method",
       "patched: frees the request's draft-cache slot", ("self", "req_id", "req_state")),
    TP("vllm.v1.worker.gpu_model_runner", "GPUModelRunner._update_states", "method",
       "patched: tells the drafter which requests resumed", ("self", "scheduler_output")),
    TP("vllm.v1.worker.gpu_model_runner", "GPUModelRunner.drafter", "attribute",
       "the patched __init__ replaces it with SparrowProposer"),
    TP("vllm.v1.worker.gpu_model_runner", "GPUModelRunner.speculative_config", "attribute",
       "the patched __init__ tells a Sparrow draft by its architecture"),
    TP("vllm.v1.worker.gpu_model_runner", "GPUModelRunner.use_aux_hidden_state_outputs",
       "attribute", "set when the draft reads an intermediate target layer"),
    TP("vllm.v1.worker.gpu_model_runner", "GPUModelRunner.input_batch", "attribute",
       "SparrowProposer.propose reads the batch's request ids"),
    TP("vllm.v1.worker.gpu_input_batch", "InputBatch.req_ids", "attribute",
       "SparrowProposer.propose maps batch rows to requests"),
    TP("vllm.v1.core.sched.output", "SchedulerOutput.scheduled_cached_reqs", "attribute",
       "the _update_states patch reads the resumed requests from it"),
    TP("vllm.v1.core.sched.output", "CachedRequestData.resumed_req_ids", "attribute",
       "the _update_states patch rewinds resumed requests in the draft cache"),
    # ---- v1_proposer.py: SparrowProposer(EagleProposer) ---------------------------------
    TP("vllm.v1.spec_decode.eagle", "EagleProposer", "class",
       "SparrowProposer subclasses it"),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer.__init__", "method",
       "SparrowProposer.__init__ calls super() positionally",
       ("self", "vllm_config", "device", "runner"), "prefix"),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer.propose", "method",
       "overridden: one Sparrow draft step",
       ("self", "num_speculative_tokens", "target_token_ids", "target_positions",
        "target_hidden_states", "next_token_ids", "token_indices_to_sample",
        "common_attn_metadata", "sampling_metadata", "mm_embed_inputs",
        "num_rejected_tokens_gpu", "slot_mappings")),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer._sample_draft_tokens", "method",
       "called with (hidden_states, sampling_metadata) to sample each draft token",
       ("self", "hidden_states", "sampling_metadata"), "prefix"),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer.load_model", "method",
       "overridden: builds the TextAnchoredDrafter", ("self", "target_model")),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer.dummy_run", "method",
       "overridden as (self, num_tokens, *args, **kwargs): warm-up pass",
       ("self", "num_tokens"), "prefix"),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer.validate_same_kv_cache_group", "method",
       "overridden: the draft has no paged KV layers", ("self", "kv_cache_config")),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer.initialize_attn_backend", "method",
       "overridden: no paged attention layers",
       ("self", "kv_cache_config", "kernel_block_sizes")),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer.initialize_cudagraph_keys", "method",
       "overridden: the draft runs eagerly", ("self", "cudagraph_mode")),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer.take_last_draft_probs", "method",
       "the runner reads the draft probabilities SparrowProposer stores", _SELF),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer._last_draft_probs", "attribute",
       "SparrowProposer.propose stores the draft probabilities here"),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer.dtype", "attribute",
       "the drafter is built in the proposer's dtype"),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer.max_num_tokens", "attribute",
       "dummy_run caps its warm-up rows"),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer.num_speculative_tokens", "attribute",
       "propose sets the step's draft length"),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer.supports_mm_inputs", "attribute",
       "set False: the runner must not gather multimodal embeddings for the draft"),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer.kv_cache_gid", "attribute",
       "set 0: the runner hands the draft KV-cache group 0's metadata"),
    TP("vllm.v1.spec_decode.eagle", "EagleProposer.model", "attribute",
       "load_model sets the draft model"),
    TP("vllm.v1.attention.backend", "CommonAttentionMetadata.num_reqs", "attribute",
       "propose: batch size"),
    TP("vllm.v1.attention.backend", "CommonAttentionMetadata.query_start_loc", "attribute",
       "propose: query rows of each request"),
    TP("vllm.v1.attention.backend", "CommonAttentionMetadata.seq_lens", "attribute",
       "propose: sequence length of each request"),
    TP("vllm.v1.attention.backend", "CommonAttentionMetadata.max_query_len", "attribute",
       "propose: longest query in the batch"),
    # ---- configuration read by draft_loading.py / vllm_draft.py -------------------------
    TP("vllm.config.vllm", "VllmConfig.speculative_config", "attribute",
       "the draft's model config and draft length"),
    TP("vllm.config.vllm", "VllmConfig.model_config", "attribute",
       "the target's HF config and max_model_len"),
    TP("vllm.config.vllm", "VllmConfig.scheduler_config", "attribute",
       "max_num_seqs sizes the draft cache"),
    TP("vllm.config.speculative", "SpeculativeConfig.draft_model_config", "attribute",
       "the draft checkpoint path, architectures and HF config"),
    TP("vllm.config.speculative", "SpeculativeConfig.num_speculative_tokens", "attribute",
       "sizes the draft cache"),
    TP("vllm.config.model", "ModelConfig.hf_config", "attribute",
       "the draft is checked against the target's HF config"),
    TP("vllm.config.model", "ModelConfig.max_model_len", "attribute",
       "sizes the draft cache"),
    TP("vllm.config.model", "ModelConfig.registry", "attribute",
       "resolves the target class for the EAGLE-3 check"),
    TP("vllm.config.scheduler", "SchedulerConfig.max_num_seqs", "attribute",
       "sizes the draft cache"),
    # ---- Model Runner V2: vllm_patches.py 5-6 and v2_speculator.py ----------------------
    TP("vllm.config.vllm", "VllmConfig.use_v2_model_runner", "attribute",
       "runners.py: which model runner vLLM chose, so the matching adapter is used"),
    TP("vllm.v1.worker.gpu.model_runner", "init_speculator", "module-name",
       "patched in this module: a Sparrow draft gets SparrowSpeculator"),
    TP("vllm.v1.worker.gpu.spec_decode", "init_speculator", "function",
       "wrapped: the patch calls the original with the same arguments",
       ("vllm_config", "device", "req_states")),
    TP("vllm.v1.worker.gpu.model_runner", "GPUModelRunner.__init__", "method",
       "patched: sets use_aux_hidden_state_outputs for the draft's feature layer",
       ("self", "vllm_config", "device")),
    TP("vllm.v1.worker.gpu.model_runner", "GPUModelRunner._remove_request", "method",
       "patched: frees the request's draft-cache slot", ("self", "req_id")),
    TP("vllm.v1.worker.gpu.model_runner", "GPUModelRunner.speculator", "attribute",
       "the patches reach SparrowSpeculator through it"),
    TP("vllm.v1.worker.gpu.model_runner", "GPUModelRunner.use_aux_hidden_state_outputs",
       "attribute", "set by the __init__ patch so the target returns the feature layer"),
    TP("vllm.v1.worker.gpu.spec_decode.eagle.eagle3_utils",
       "set_eagle3_aux_hidden_state_layers", "function",
       "V2's runner calls it when use_aux_hidden_state_outputs is set (patch 6)",
       ("model", "spec_config"), "prefix"),
    TP("vllm.v1.worker.gpu.spec_decode.speculator", "BaseSpeculator.propose", "method",
       "overridden: one Sparrow draft step",
       ("self", "input_batch", "attn_metadata", "slot_mappings", "last_hidden_states",
        "aux_hidden_states", "num_sampled", "num_rejected", "last_sampled",
        "next_prefill_tokens", "temperature", "seeds", "dp_sync_state", "dummy_run",
        "skip_attn_for_dummy_run", "mm_inputs", "is_profile", "num_speculative_tokens")),
    TP("vllm.v1.worker.gpu.spec_decode.speculator", "BaseSpeculator.init_cudagraph_manager",
       "method", "overridden: the draft runs eagerly", ("self", "cudagraph_mode")),
    TP("vllm.v1.worker.gpu.spec_decode.speculator", "BaseSpeculator.capture", "method",
       "overridden: nothing to capture", _SELF),
    TP("vllm.v1.worker.gpu.spec_decode.speculator", "DraftModelSpeculator", "class",
       "SparrowSpeculator subclasses it"),
    TP("vllm.v1.worker.gpu.spec_decode.speculator", "DraftModelSpeculator.__init__", "method",
       "SparrowSpeculator.__init__ calls super() positionally",
       ("self", "vllm_config", "device")),
    TP("vllm.v1.worker.gpu.spec_decode.speculator", "DraftModelSpeculator.load_model",
       "method", "overridden: builds the TextAnchoredDrafter", ("self", "target_model")),
    TP("vllm.v1.worker.gpu.spec_decode.speculator", "DraftModelSpeculator.load_draft_model",
       "method", "overridden: returns the Sparrow draft model",
       ("self", "target_model", "target_attn_layer_names")),
    TP("vllm.v1.worker.gpu.spec_decode.speculator", "DraftModelSpeculator.set_attn", "method",
       "overridden: no paged attention layers, keeps the model state",
       ("self", "model_state", "kv_cache_config", "block_tables", "target_input_buffers",
        "target_attn_groups")),
    TP("vllm.v1.worker.gpu.spec_decode.speculator", "DraftModelSpeculator.sample_draft",
       "method", "called (7 positional, spec_step_idx by keyword) to sample each draft token",
       ("self", "hidden_states", "sample_src_positions", "idx_mapping", "temperature",
        "seeds", "draft_step", "draft_logits", "spec_step_idx"), "prefix"),
    TP("vllm.v1.worker.gpu.spec_decode.speculator", "DraftModelSpeculator._copy_request_inputs",
       "method", "called to stage temperature, seeds and idx mapping for sampling",
       ("self", "num_reqs", "idx_mapping", "temperature", "seeds"), "prefix"),
    *(
        TP("vllm.v1.worker.gpu.spec_decode.speculator", f"DraftModelSpeculator.{attr}",
           "attribute", f"SparrowSpeculator uses the speculator's {attr}")
        for attr in ("num_speculative_steps", "draft_tokens", "idx_mapping", "temperature",
                     "seeds", "draft_logits", "dtype", "use_acceptance_estimator", "model",
                     "supports_mm_inputs", "draft_attn_layer_names", "attn_groups",
                     "model_state")
    ),
    TP("vllm.config.compilation", "CUDAGraphMode.NONE", "attribute",
       "init_cudagraph_manager warns unless graphs are off"),
    *(
        TP("vllm.v1.worker.gpu.input_batch", f"InputBatch.{field}", "attribute",
           "SparrowSpeculator.propose reads the batch from InputBatch")
        for field in ("req_ids", "num_reqs", "idx_mapping", "num_scheduled_tokens",
                      "num_tokens", "query_start_loc", "seq_lens", "input_ids", "positions")
    ),
    TP("vllm.v1.worker.gpu.mm.rope", "RopeState", "class",
       "M-RoPE targets: the adapter reads text positions from it"),
    TP("vllm.v1.worker.gpu.mm.rope", "RopeState.positions", "attribute",
       "M-RoPE positions of the step's tokens"),
    TP("vllm.v1.worker.gpu.mm.rope", "RopeState.get_positions", "method",
       "called with the step's token count; row 0 is the draft's positions",
       ("self", "num_tokens"), "prefix"),
    TP("vllm.v1.worker.gpu.model_states.default", "DefaultModelState.rope_state", "attribute",
       "the adapter finds the target's RopeState on the model state set_attn receives"),
]

WHEEL_CACHE_ENV = "SPARROW_WHEEL_CACHE"
_KINDS = ("class", "function", "method", "attribute", "module-name")
_MATCHES = ("exact", "prefix", "names")


# ---- reading vLLM's source ---------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """Where a touch point lives in the source: file, line, and its kind there."""

    kind: str  # "class", "function", "attribute", "module-name"
    path: Path
    line: int
    node: ast.AST | None = None

    def params(self) -> tuple[str, ...] | None:
        if self.kind != "function" or not isinstance(
            self.node, ast.FunctionDef | ast.AsyncFunctionDef
        ):
            return None
        return parameter_names(self.node.args)

    def required(self) -> set[str]:
        """Parameters without a default (a caller must pass them)."""
        if not isinstance(self.node, ast.FunctionDef | ast.AsyncFunctionDef):
            return set()
        args = self.node.args
        positional = [a.arg for a in (*args.posonlyargs, *args.args)]
        required = set(positional[: len(positional) - len(args.defaults)])
        required |= {a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is None}
        return required


def parameter_names(args: ast.arguments) -> tuple[str, ...]:
    """A def's parameters as written: names, "*args", "*" before keyword-only, "**kw"."""
    names = [a.arg for a in (*args.posonlyargs, *args.args)]
    if args.vararg is not None:
        names.append("*" + args.vararg.arg)
    elif args.kwonlyargs:
        names.append("*")
    names += [a.arg for a in args.kwonlyargs]
    if args.kwarg is not None:
        names.append("**" + args.kwarg.arg)
    return tuple(names)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_statements(body: list[ast.stmt]):
    """Statements of a module or class body that run, descending into if/try blocks;
    `if TYPE_CHECKING:` bodies are skipped (their else branch is kept)."""
    for stmt in body:
        if isinstance(stmt, ast.If):
            if not _is_type_checking(stmt.test):
                yield from _runtime_statements(stmt.body)
            yield from _runtime_statements(stmt.orelse)
        elif isinstance(stmt, ast.Try):
            for block in (stmt.body, *(h.body for h in stmt.handlers), stmt.orelse,
                          stmt.finalbody):
                yield from _runtime_statements(block)
        else:
            yield stmt


def _target_names(target: ast.expr):
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, ast.Tuple | ast.List):
        for elt in target.elts:
            yield from _target_names(elt)


def _flatten(targets: list[ast.expr]):
    for target in targets:
        if isinstance(target, ast.Tuple | ast.List):
            yield from _flatten(target.elts)
        elif isinstance(target, ast.Starred):
            yield from _flatten([target.value])
        else:
            yield target


class _Module:
    """One parsed module: its runtime bindings (last one wins, as at run time)."""

    def __init__(self, name: str, path: Path) -> None:
        self.name, self.path = name, path
        self.is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        self.bindings: dict[str, ast.stmt] = {}
        self.lazy_exports: dict[str, ast.stmt] = {}
        has_getattr = False
        for stmt in _runtime_statements(tree.body):
            for name in self._bound_names(stmt):
                self.bindings[name] = stmt
            has_getattr |= isinstance(stmt, ast.FunctionDef) and stmt.name == "__getattr__"
            if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Dict):
                for key in stmt.value.keys:
                    if isinstance(key, ast.Constant) and isinstance(key.value, str):
                        self.lazy_exports.setdefault(key.value, stmt)
        if not has_getattr:  # a dict of strings is a lazy export table only with __getattr__
            self.lazy_exports = {}

    @staticmethod
    def _bound_names(stmt: ast.stmt):
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield stmt.name
        elif isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                yield from _target_names(target)
        elif isinstance(stmt, ast.AnnAssign | ast.AugAssign):
            yield from _target_names(stmt.target)
        elif isinstance(stmt, ast.Import):
            for alias in stmt.names:
                yield alias.asname or alias.name.split(".")[0]
        elif isinstance(stmt, ast.ImportFrom):
            for alias in stmt.names:
                if alias.name != "*":
                    yield alias.asname or alias.name

    def import_source(self, stmt: ast.ImportFrom) -> str:
        """The absolute module an `from X import ...` statement reads from."""
        if not stmt.level:
            return stmt.module or ""
        parts = self.name.split(".")
        base = parts if self.is_package else parts[:-1]
        base = base[: len(base) - (stmt.level - 1)]
        return ".".join([*base, stmt.module] if stmt.module else base)


class Source:
    """A vLLM source tree: `root` holds the `vllm` package (or is it)."""

    def __init__(self, root: Path) -> None:
        root = Path(root)
        if (root / "vllm" / "__init__.py").is_file():
            self.root = root
        elif root.name == "vllm" and (root / "__init__.py").is_file():
            self.root = root.parent
        else:
            raise FileNotFoundError(f"no vllm package (vllm/__init__.py) under {root}")
        self._modules: dict[str, _Module | None] = {}

    def module(self, name: str) -> _Module | None:
        if name not in self._modules:
            base = self.root.joinpath(*name.split("."))
            path = next((p for p in (base / "__init__.py", base.with_suffix(".py")) if p.is_file()),
                        None)
            self._modules[name] = None if path is None else _Module(name, path)
        return self._modules[name]

    def _found(self, mod: _Module, stmt: ast.stmt) -> Found:
        kind = {ast.ClassDef: "class", ast.FunctionDef: "function",
                ast.AsyncFunctionDef: "function"}.get(type(stmt), "module-name")
        return Found(kind, mod.path, stmt.lineno, stmt)

    def resolve(self, module: str, name: str, _depth: int = 0) -> Found | None:
        """A module-level name, followed through `from X import name` within vLLM."""
        mod = self.module(module)
        if mod is None:
            return None
        stmt = mod.bindings.get(name)
        if stmt is None:
            if name in mod.lazy_exports:
                return Found("module-name", mod.path, mod.lazy_exports[name].lineno)
            sub = self.module(f"{module}.{name}") if mod.is_package else None
            return None if sub is None else Found("module-name", sub.path, 1)
        if isinstance(stmt, ast.ImportFrom) and _depth < 20:
            alias = next(a for a in stmt.names if (a.asname or a.name) == name)
            origin = self.resolve(mod.import_source(stmt), alias.name, _depth + 1)
            if origin is not None:
                return origin
        return self._found(mod, stmt)

    def find_member(self, cls: Found, member: str, _seen: frozenset = frozenset()) -> Found | None:
        """`member` of a class, as defined in its body, by `self.member = ...` in one of its
        methods, or inherited from a base class vLLM defines."""
        node = cls.node
        assert isinstance(node, ast.ClassDef)
        key = (cls.path, node.lineno)
        if key in _seen:
            return None
        found: Found | None = None
        for stmt in _runtime_statements(node.body):
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                if stmt.name == member:
                    is_property = any(
                        (isinstance(d, ast.Name) and d.id in ("property", "cached_property"))
                        or (isinstance(d, ast.Attribute) and d.attr in ("cached_property",
                                                                        "setter"))
                        for d in getattr(stmt, "decorator_list", ())
                    )
                    kind = "attribute" if is_property else self._found_kind(stmt)
                    found = Found(kind, cls.path, stmt.lineno, stmt)
            elif member in set(_Module._bound_names(stmt)):
                found = Found("attribute", cls.path, stmt.lineno, stmt)
        if found is not None:
            return found
        for fn in ast.walk(node):  # instance attributes: self.member = ... in any method
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef) or not fn.args.args:
                continue
            this = fn.args.args[0].arg
            for sub in ast.walk(fn):
                targets = (sub.targets if isinstance(sub, ast.Assign)
                           else [sub.target] if isinstance(sub, ast.AnnAssign | ast.AugAssign)
                           else [])
                for t in _flatten(targets):
                    if (isinstance(t, ast.Attribute) and t.attr == member
                            and isinstance(t.value, ast.Name) and t.value.id == this):
                        return Found("attribute", cls.path, sub.lineno, sub)
        for base in node.bases:
            base_cls = self._resolve_base(cls, base)
            if base_cls is not None:
                hit = self.find_member(base_cls, member, _seen | {key})
                if hit is not None:
                    return hit
        return None

    @staticmethod
    def _found_kind(stmt: ast.stmt) -> str:
        return "class" if isinstance(stmt, ast.ClassDef) else "function"

    def _resolve_base(self, cls: Found, base: ast.expr) -> Found | None:
        module = self._module_of(cls.path)
        if isinstance(base, ast.Subscript):  # Generic[T], Base[T]
            base = base.value
        if isinstance(base, ast.Name):
            hit = self.resolve(module, base.id)
        elif isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name):
            mod = self.module(module)
            stmt = mod.bindings.get(base.value.id) if mod else None
            if not isinstance(stmt, ast.Import):
                return None
            alias = next(a for a in stmt.names if (a.asname or a.name.split(".")[0]) == base.value.id)
            hit = self.resolve(alias.name if alias.asname else base.value.id, base.attr)
        else:
            return None
        return hit if hit is not None and hit.kind == "class" else None

    def _module_of(self, path: Path) -> str:
        rel = path.relative_to(self.root).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        return ".".join(parts)

    def locate(self, tp: TouchPoint) -> Found | str:
        """Where `tp` lives, or why it cannot be found."""
        if self.module(tp.module) is None:
            return f"module {tp.module} is missing"
        head, *members = tp.name.split(".")
        found = self.resolve(tp.module, head)
        if found is None:
            return f"{tp.module} has no name {head!r}"
        for i, member in enumerate(members):
            if found.kind != "class":
                owner = ".".join([head, *members[:i]])
                return f"{owner} is a {found.kind}, not a class, so it has no {member!r}"
            hit = self.find_member(found, member)
            if hit is None:
                owner = ".".join([head, *members[:i]])
                return (f"class {owner} ({self._rel(found.path)}:{found.line}) has no "
                        f"{member!r}, nor do its bases defined in vLLM")
            found = hit
        return found

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def where(self, found: Found) -> str:
        return f"{self._rel(found.path)}:{found.line}"


def _kind_ok(expected: str, found: str) -> bool:
    if expected == "module-name":
        return True
    if expected in ("function", "method"):
        return found == "function"
    return expected == found


def _params_problem(tp: TouchPoint, found: Found) -> str | None:
    want, actual = tp.params or (), found.params() or ()
    new_required = sorted(found.required() - set(want))
    if tp.match == "exact":
        ok = actual == want
    elif tp.match == "prefix":
        ok = actual[: len(want)] == want and not new_required
    else:
        ok = set(want) <= set(actual) and not new_required
    if ok:
        return None
    missing = [p for p in want if p not in actual]
    extra = [p for p in actual if p not in want] if tp.match == "exact" else []
    detail = "; ".join(
        part for part in (
            f"missing {', '.join(missing)}" if missing else "",
            f"new {', '.join(extra)}" if extra else "",
            f"new required (no default) {', '.join(new_required)}"
            if new_required and tp.match != "exact" else "",
        ) if part
    ) or "order differs"
    return (f"parameters ({', '.join(actual)}) do not match ({', '.join(want)}) "
            f"[{tp.match}]: {detail}")


def check_touch_point(source: Source, tp: TouchPoint) -> str | None:
    """The problem with one touch point in `source`, or None."""
    label = f"{tp.module}:{tp.name} ({tp.kind}; {tp.why})"
    found = source.locate(tp)
    if isinstance(found, str):
        return f"{label}: {found}"
    if not _kind_ok(tp.kind, found.kind):
        return f"{label}: is a {found.kind} at {source.where(found)}, expected a {tp.kind}"
    if tp.params is not None:
        problem = _params_problem(tp, found)
        if problem:
            return f"{label}: {problem} at {source.where(found)}"
    return None


def check_source(root: Path, touch_points: list[TouchPoint] | None = None) -> list[str]:
    """Problems with `touch_points` (default TOUCH_POINTS) in the vLLM source under `root`
    (the directory holding the `vllm` package, or the package itself); [] when all hold.
    Nothing is imported: the .py files are parsed with `ast`."""
    source = Source(root)
    problems = [check_touch_point(source, tp) for tp in (touch_points or TOUCH_POINTS)]
    return [p for p in problems if p is not None]


def describe(root: Path, touch_points: list[TouchPoint] | None = None) -> list[str]:
    """One line per touch point: where it lives under `root` and its parameters."""
    source = Source(root)
    lines = []
    for tp in touch_points or TOUCH_POINTS:
        found = source.locate(tp)
        if isinstance(found, str):
            lines.append(f"{tp.module}:{tp.name}  MISSING: {found}")
            continue
        params = found.params()
        sig = f"({', '.join(params)})" if params is not None else ""
        lines.append(f"{tp.module}:{tp.name}{sig}  {found.kind} at {source.where(found)}")
    return lines


def validate_touch_points(touch_points: list[TouchPoint] | None = None) -> list[str]:
    """Mistakes in the list itself: unknown kinds or match modes, params on a
    non-callable, duplicates."""
    errors, seen = [], set()
    for tp in touch_points or TOUCH_POINTS:
        key = (tp.module, tp.name)
        if tp.kind not in _KINDS:
            errors.append(f"{key}: unknown kind {tp.kind!r}")
        if tp.match not in _MATCHES:
            errors.append(f"{key}: unknown match {tp.match!r}")
        if tp.params is not None and tp.kind not in ("function", "method"):
            errors.append(f"{key}: params given for a {tp.kind}")
        if tp.kind == "method" and "." not in tp.name:
            errors.append(f"{key}: a method is named Class.method")
        if not tp.why.strip():
            errors.append(f"{key}: no why")
        if key in seen:
            errors.append(f"{key}: listed twice")
        seen.add(key)
    return errors


# ---- a vLLM release's source, from its wheel ---------------------------------------------


def wheel_cache_dir() -> Path:
    """$SPARROW_WHEEL_CACHE, else ~/.cache/sparrow-vllm/wheels (kept between runs)."""
    env = os.environ.get(WHEEL_CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sparrow-vllm" / "wheels"


def wheel_source(version: str, cache_dir: Path | None = None) -> Path:
    """The Python source of vLLM `version`, from its wheel: downloaded once with
    `pip download --no-deps`, its `vllm/**/*.py` extracted once, both kept in `cache_dir`
    (default `wheel_cache_dir()`). Returns the directory holding `vllm/`.

    Raises RuntimeError with pip's output when the download fails."""
    cache_dir = Path(cache_dir) if cache_dir is not None else wheel_cache_dir()
    target = cache_dir / f"vllm-{version}-src"
    if (target / ".complete").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache_dir.glob(f"vllm-{version}-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", f"vllm=={version}", "-d", str(cache_dir)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(cache_dir.glob(f"vllm-{version}-*.whl"))
        if out.returncode != 0 or not wheels:
            raise RuntimeError(
                f"`{' '.join(cmd)}` failed (exit {out.returncode}):\n"
                f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
            )
    staging = cache_dir / f".vllm-{version}-src.{os.getpid()}"
    with zipfile.ZipFile(wheels[0]) as wheel:
        for member in wheel.namelist():
            if member.startswith("vllm/") and member.endswith(".py") and ".." not in member:
                wheel.extract(member, staging)
    (staging / ".complete").write_text(wheels[0].name + "\n")
    try:
        staging.rename(target)
    except OSError:  # another run extracted it first
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / ".complete").is_file():
            raise
    return target


@cache
def installed_source() -> Path:
    """The directory holding the installed `vllm` package, found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("vLLM is not installed")
    return Path(next(iter(spec.submodule_search_locations))).parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("root", nargs="?", type=Path, help="vLLM source root (default: installed)")
    where.add_argument("--vllm", metavar="VERSION", help="check this release's wheel")
    args = parser.parse_args(argv)
    root = (wheel_source(args.vllm) if args.vllm else args.root) or installed_source()
    print(f"vLLM source: {root}")
    print("\n".join(describe(root)))
    problems = validate_touch_points() + check_source(root)
    print("\n".join(["", f"{len(problems)} problem(s)", *problems]))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
