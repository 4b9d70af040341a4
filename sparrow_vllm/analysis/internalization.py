"""`sparrow-vllm analyze`: from which layer does a target no longer need its visual rows?

For every cut x in 0..L (L decoder layers) the target runs with its visual rows removed
from layer x on (`VisualCutoff`), teacher-forced on its own greedy answer, and is compared
with the full model at every position that predicts an answer token:

- agreement: the cut model's greedy next token equals the full model's;
- KL: KL(full || cut) of the next-token distributions, in nats;
- accuracy (rows with a reference answer): the cut model's greedy answer is exactly the
  reference. Under teacher forcing on the reference (its tokens, then end of sequence)
  greedy decoding yields the reference iff every position's argmax is the next reference
  token, so one forward decides it.

Cut L is the full model (agreement 1, KL 0); cut 0 leaves the video's information in no
text row. The internalization layer is the smallest x from which agreement stays within
`tolerance` of 1 for every deeper cut: from there on the text rows already carry what the
answer needs from the video, which is the premise of Sparrow's text-only draft.

The budget probe asks what a draft that keeps N visual rows per image or video
(`visual_budget` N, `kept_token_mask`) would leave the text rows: for each N of a ladder
the target runs with its text rows seeing, from layer 0 on, only the visual rows the
budget keeps (the kept rows themselves keep their full view), compared with the full
model as above. A sample counts at N only when one of its images or videos is longer than
N (otherwise the budget keeps every row: the full model); the ladder stops at the first N
no sample exceeds. `recommend_visual_budget` turns the two curves into the draft's
`--visual-budget`: none for a target that internalizes the video early, else the smallest
N that leaves the predictions unchanged.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sparrow_vllm.analysis.budget_advice import BudgetTotals, budget_curve, recommend_visual_budget
from sparrow_vllm.analysis.visual_cutoff import VisualCutoff
from sparrow_vllm.draft.config import FrameText
from sparrow_vllm.draft.visual_budget import kept_token_mask, segments
from sparrow_vllm.errors import UsageError
from sparrow_vllm.training.data import ConversationDataset, ConversationSample
from sparrow_vllm.training.features import FeatureExtractor, FeatureSpec
from sparrow_vllm.training.skips import SampleError, SkipReport
from sparrow_vllm.training.target import TargetFeatures

logger = logging.getLogger(__name__)


class AnalyzeSettings(BaseModel):
    """How `sparrow-vllm analyze` probes a target."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    samples: int | None = Field(
        None, ge=1, description="Analyze the first this many usable rows of --data (default: all)."
    )
    max_new_tokens: int = Field(
        64, ge=1, description="Longest greedy answer of the target that the comparison runs on."
    )
    tolerance: float = Field(
        0.01, ge=0, lt=1, description="A cut leaves predictions unchanged when its next-token "
        "agreement with the full model is at least 1 - tolerance.",
    )
    frame_text: FrameText = Field(
        "visual", description="Whether text a family writes between video frames (e.g. "
        "Qwen3-VL timestamps) is removed with the visual rows ('visual') or kept ('text').",
    )
    video_fps: float = Field(
        2.0, gt=0, description="Frame rate of the sampled frames where a row gives no "
        "video_seconds (M-RoPE time positions).",
    )
    max_seq_len: int = Field(32768, ge=1, description="Skip (and count) longer sequences.")
    budget_ladder: tuple[int, ...] = Field(
        (4, 8, 16, 32, 64, 128, 256, 512), min_length=1, description="Visual budgets N the budget "
        "probe tries (text rows see only the N visual rows per image or video a draft with "
        "--visual-budget N keeps); the ladder stops at the first N no sample's image or video exceeds.",
    )
    budget_samples: int | None = Field(
        None, ge=1, description="Run the budget probe on the first this many analyzed samples only "
        "(default: all; it costs one forward per sample and budget, the cut sweep two per layer).",
    )
    budget_tolerance: float = Field(
        0.02, ge=0, lt=1, description="The recommended --visual-budget is the smallest N whose "
        "next-token agreement with the full model is at least 1 - budget_tolerance. Looser than "
        "--tolerance (0.01): agreement is how often the target still predicts its own next token when "
        "its text rows see only the kept rows, about the best a draft reading those rows can match; "
        "0.02 gives up about 2 positions in 100, while each halving of N halves the visual rows a "
        "draft step reads.",
    )
    premise_depth: float = Field(
        0.75, gt=0, le=1, description="Recommend --visual-budget none when predictions are unchanged "
        "with the visual rows removed from layer premise_depth * L on (the paper's premise: the "
        "target has internalized the video by then, so its text rows carry it to the draft).",
    )
    max_budget: int = Field(
        512, ge=1, description="Largest --visual-budget recommended (and tried): a draft step reads "
        "at most this many visual rows per image or video, so its cost stays bounded on long videos.",
    )

    @field_validator("budget_ladder")
    @classmethod
    def _ladder_positive(cls, ladder: tuple[int, ...]) -> tuple[int, ...]:
        if any(n < 1 for n in ladder):
            raise ValueError(f"budgets must be >= 1, got {ladder}")
        return tuple(sorted(set(ladder)))


@dataclass
class CutTotals:
    """Sums over the analyzed positions and samples at one cut."""

    agree: int = 0
    positions: int = 0
    kl: float = 0.0
    correct: int = 0
    answered: int = 0
    by_question: dict[str, list[int]] = field(default_factory=dict)  # question -> [correct, answered]

    def add_reference(self, question: str, correct: bool) -> None:
        self.correct += int(correct)
        self.answered += 1
        counts = self.by_question.setdefault(question, [0, 0])
        counts[0] += int(correct)
        counts[1] += 1

    def as_dict(self, layer: int) -> dict[str, Any]:
        return {
            "layer": layer,
            "agreement": self.agree / max(self.positions, 1),
            "kl": self.kl / max(self.positions, 1),
            "accuracy": self.correct / self.answered if self.answered else None,
            "accuracy_by_question": {q: c / n for q, (c, n) in sorted(self.by_question.items())},
        }


def reference_answer(sample: ConversationSample) -> str | None:
    """The manifest's last answer, when the row ends with one."""
    last = sample.turns[-1] if sample.turns else None
    return last.text if last is not None and last.role == "assistant" and last.text else None


def question_of(sample: ConversationSample) -> str:
    users = [t.text for t in sample.turns if t.role == "user"]
    return users[-1] if users else ""


class InternalizationProbe:
    """Per-sample comparison of every cut with the full model."""

    def __init__(self, target: TargetFeatures, settings: AnalyzeSettings) -> None:
        self.target, self.settings = target, settings
        spec = FeatureSpec(feature_layer=None, bridge_layer=None, max_seq_len=settings.max_seq_len,
                           video_fps=settings.video_fps, frame_text=settings.frame_text)
        self.extractor = FeatureExtractor(target, target.processor, spec)
        self.cutoff = VisualCutoff(target.model)
        self.tokenizer = getattr(target.processor, "tokenizer", target.processor)
        self.eos_id = self._eos_id()

    @property
    def num_layers(self) -> int:
        return self.cutoff.num_layers

    def _eos_id(self) -> int:
        eos = getattr(self.target.model.generation_config, "eos_token_id", None)
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        if eos is None:
            eos = self.tokenizer.eos_token_id
        if eos is None:
            raise UsageError("the target names no eos_token_id (generation_config.json or the tokenizer); "
                             "`sparrow-vllm analyze` needs it to end reference answers")
        return int(eos)

    def reference_tokens(self, sample: ConversationSample) -> list[int]:
        """The manifest's answer as greedy decoding after the prompt would spell it: the
        tokens of the chat-templated conversation that reach past the prompt's text (a
        token merging the prompt's trailing space into the answer's first word counts as
        the answer's), up to and including the first end-of-sequence token."""
        prompt = self.extractor.prompt_text(sample)
        full = self.target.processor.apply_chat_template(sample.messages(), tokenize=False)
        if not full.startswith(prompt):
            raise SampleError("bad_record", "the chat template does not render the prompt as a prefix "
                              "of the conversation, so the reference answer has no clear start")
        if not getattr(self.tokenizer, "is_fast", False):
            raise UsageError("`sparrow-vllm analyze` locates reference answers with a fast tokenizer's "
                             "offsets; the target ships a slow one (add its tokenizer.json)")
        encoded = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        tail = [t for t, (_, end) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True)
                if end > len(prompt)]
        return tail[: tail.index(self.eos_id) + 1] if self.eos_id in tail else tail

    def _visual(self, inputs: dict[str, Any]) -> torch.Tensor:
        ids = inputs["input_ids"][0].tolist()
        mask = self.target.family.visual_token_mask(ids, self.settings.frame_text)
        return torch.tensor(mask, dtype=torch.bool, device=inputs["input_ids"].device)

    def _logits(self, inputs: dict[str, Any], cut: int, visual: torch.Tensor, start: int,
                removed: torch.Tensor | None = None) -> torch.Tensor:
        """[a, V] float32 logits of the rows that predict the answer tokens [start, n)."""
        with self.cutoff.at(cut, visual, removed):
            logits = self.target.model(**inputs).logits[0]
        return logits[start - 1 : -1].float()

    def budgets(self) -> list[int]:
        """The ladder the budget probe tries (none above max_budget)."""
        return [n for n in self.settings.budget_ladder if n <= self.settings.max_budget]

    @torch.no_grad()
    def probe(self, sample: ConversationSample, totals: list[CutTotals],
              budget_totals: dict[int, BudgetTotals] | None = None) -> None:
        """Add this sample's comparison at every cut to `totals` ([L + 1]), and at every
        budget of the ladder below its longest image or video to `budget_totals`."""
        own = self.extractor.hf_greedy_answer(sample, self.settings.max_new_tokens)
        inputs, start = self.extractor.conversation_inputs(sample, own)
        visual = self._visual(inputs)
        if not bool(visual.any()):
            raise SampleError("bad_record", "the row has no video or image, so there is nothing to remove")
        full = self._logits(inputs, self.num_layers, visual, start)
        full_log_p = torch.log_softmax(full, -1)
        full_top = full.argmax(-1)
        reference = reference_answer(sample)
        ref_inputs = ref_visual = ref_ids = None
        if reference is not None:
            ref_tokens = self.reference_tokens(sample)
            ref_inputs, ref_start = self.extractor.conversation_inputs(sample, ref_tokens)
            ref_visual = self._visual(ref_inputs)
            ref_ids = torch.tensor(ref_tokens, device=full.device)
        for cut in range(self.num_layers + 1):
            logits = full if cut == self.num_layers else self._logits(inputs, cut, visual, start)
            total = totals[cut]
            self._compare(total, logits, full_top, full_log_p)
            if ref_inputs is not None:
                ref_top = self._logits(ref_inputs, cut, ref_visual, ref_start).argmax(-1)
                total.add_reference(question_of(sample), bool((ref_top == ref_ids).all()))
        if budget_totals is None:
            return
        flags = visual.tolist()
        longest = max(end - begin for begin, end, _ in segments(flags, "all"))
        for n in self.budgets():
            if longest <= n:  # the budget keeps every visual row: the full model
                break
            kept = torch.tensor(kept_token_mask(flags, n), dtype=torch.bool, device=visual.device)
            logits = self._logits(inputs, 0, visual, start, removed=visual & ~kept)
            budget = budget_totals.setdefault(n, BudgetTotals())
            self._compare(budget, logits, full_top, full_log_p)
            budget.samples += 1

    @staticmethod
    def _compare(total: CutTotals | BudgetTotals, logits: torch.Tensor, full_top: torch.Tensor,
                 full_log_p: torch.Tensor) -> None:
        """Add agreement and KL(full || this) of these logits' rows to `total`."""
        log_p = torch.log_softmax(logits, -1)
        total.agree += int((logits.argmax(-1) == full_top).sum())
        total.positions += int(full_top.shape[0])
        total.kl += float((full_log_p.exp() * (full_log_p - log_p)).sum())


def internalization_layer(agreement: list[float], tolerance: float) -> int:
    """Smallest cut x with agreement >= 1 - tolerance at x and at every deeper cut."""
    layer = len(agreement) - 1
    while layer > 0 and agreement[layer - 1] >= 1 - tolerance:
        layer -= 1
    return layer


def analyze(target: TargetFeatures, dataset: ConversationDataset, settings: AnalyzeSettings) -> dict[str, Any]:
    """The per-cut curves of `target` over `dataset` and the layers they suggest."""
    from tqdm import tqdm

    probe = InternalizationProbe(target, settings)
    totals = [CutTotals() for _ in range(probe.num_layers + 1)]
    budget_totals: dict[int, BudgetTotals] = {}
    skips = SkipReport()
    wanted = settings.samples or len(dataset)
    done = 0
    bar = tqdm(total=min(wanted, len(dataset)), desc="analyze", unit="sample", file=sys.stderr,
               mininterval=0.1 if sys.stderr.isatty() else 30.0)
    with probe.cutoff:
        for index in range(len(dataset)):
            if done >= wanted:
                break
            try:
                probing = settings.budget_samples is None or done < settings.budget_samples
                probe.probe(dataset.load(index), totals, budget_totals if probing else None)
            except SampleError as error:
                skips.add(f"row{index}", error)
                logger.warning("skipping row %d (%s): %s", index, error.reason, error)
                continue
            done += 1
            bar.update(1)
    bar.close()
    if done == 0:
        raise UsageError(f"no usable rows with video or images in {dataset.manifest} "
                         f"({skips.summary()}); `sparrow-vllm analyze` needs visual input")
    curves = [t.as_dict(layer) for layer, t in enumerate(totals)]
    layer = internalization_layer([c["agreement"] for c in curves], settings.tolerance)
    budgets, stopped_at = budget_curve(budget_totals, probe.budgets())
    budget, reason = recommend_visual_budget(
        layer, probe.num_layers, budgets, stopped_at, premise_depth=settings.premise_depth,
        tolerance=settings.budget_tolerance, max_budget=settings.max_budget)
    return {
        "num_layers": probe.num_layers,
        "samples": done,
        "positions": totals[0].positions,
        "skipped": skips.total(),
        "skips": skips.summary() if skips.total() else None,
        "tolerance": settings.tolerance,
        "settings": settings.model_dump(),
        "internalization_layer": layer,
        "suggested_bridge_layer": suggested_bridge_layer(layer),
        "curves": curves,
        "budget_curve": budgets,
        "budget_ladder_stopped_at": stopped_at,
        "recommended_visual_budget": budget,
        "recommendation_reason": reason,
    }


def suggested_bridge_layer(internalization: int) -> int | None:
    """The deepest visual states the text rows still read: layer x reads its input states
    (HF hidden_states[x]), so with no change from cut x* on the last states that matter
    are hidden_states[x* - 1]. None when the video never matters (x* = 0)."""
    return internalization - 1 if internalization > 0 else None


def summary(result: dict[str, Any], target_dir: str | Path) -> str:
    """What a user reads after `analyze`: the layer, the suggestion, and what they mean."""
    n, layer = result["num_layers"], result["internalization_layer"]
    at = result["curves"][layer]
    zero = result["curves"][0]
    lines = [
        f"{target_dir}: {result['samples']} samples, {result['positions']} answer positions, {n} layers",
        f"removing the visual rows from layer 0 on: agreement {zero['agreement']:.3f}, KL {zero['kl']:.3f}"
        + (f", accuracy {zero['accuracy']:.3f} (full model {result['curves'][n]['accuracy']:.3f})"
           if zero["accuracy"] is not None else ""),
        f"predictions unchanged (agreement >= {1 - result['tolerance']:.3f}) from layer {layer} of {n} on "
        f"(agreement {at['agreement']:.3f}, KL {at['kl']:.4f})",
    ]
    bridge = result["suggested_bridge_layer"]
    if layer == n:
        lines.append("the text rows need the visual rows up to the last layer: the target does not "
                     "internalize the video, so a text-only draft (Sparrow) will see less than it needs")
    if bridge is None:
        lines.append("the answers do not depend on the visual rows at all; IVSB has nothing to bridge "
                     "(train with --no-ivsb)")
    else:
        lines.append(f"suggested --bridge-layer {bridge} (the deepest visual states text rows still read; "
                     f"L // 2 = {n // 2})")
    budgets = result.get("budget_curve") or []
    if budgets:
        lines.append("text rows seeing N visual rows per image/video from layer 0 on: " + ", ".join(
            f"N={p['budget']} agreement {p['agreement']:.3f} ({p['samples']} samples)" for p in budgets))
    lines.append(f"recommended: sparrow-vllm train ... --visual-budget {result['recommended_visual_budget']} "
                 f"({result['recommendation_reason']})")
    return "\n".join(lines)


def run_analysis(
    target_dir: str | Path, manifest: str | Path, out_dir: str | Path, settings: AnalyzeSettings,
    media_root: str | Path | None = None, num_frames: int | None = None, command: list[str] | None = None,
) -> dict[str, Any]:
    """`sparrow-vllm analyze`: load the target (sdpa attention, fp32 on CPU, bf16 on CUDA),
    probe the manifest's rows, write analysis.json and analysis.png, log the summary."""
    from sparrow_vllm.analysis.report import write_report
    from sparrow_vllm.provenance import provenance
    from sparrow_vllm.training.target import load_hf_target

    dataset = ConversationDataset(manifest, media_root=media_root, num_frames=num_frames)
    cuda = torch.cuda.is_available()
    target = load_hf_target(target_dir, device="cuda" if cuda else "cpu",
                            dtype=torch.bfloat16 if cuda else torch.float32, attn_implementation="sdpa")
    if not target.family.is_multimodal:
        raise UsageError(f"{target_dir} is a text-only target ({target.family.architecture}); "
                         "`sparrow-vllm analyze` removes visual rows, so it needs a vision-language target")
    result = analyze(target, dataset, settings)
    result.update(target=str(target_dir), data=str(manifest), family=target.family.name,
                  provenance=provenance(command or []))
    write_report(result, out_dir, f"{target_dir} ({target.family.architecture}):\n"
                 f"visual rows removed from layer x on, {result['samples']} samples")
    logger.info("%s", summary(result, target_dir))
    return result
