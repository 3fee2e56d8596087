"""Run configuration for ``fedlm``: one frozen, validated dataclass.

Modelled on peft's ``LoraConfig``: every field carries its help text in
``metadata["help"]`` (the CLI reuses it) and ``__post_init__`` checks every
relation between fields, with a message that says which relation failed and
how to fix it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

MODES: tuple[str, ...] = ("pretrain", "full", "lora", "prompt")
TASKS: tuple[str, ...] = ("lm", "sft")
BACKENDS: tuple[str, ...] = ("plain", "secagg", "secagg+", "ckks")
SECURE_BACKENDS: tuple[str, ...] = ("secagg", "secagg+", "ckks")
ENGINES: tuple[str, ...] = ("in-memory", "flower")
FLOWER_RUNTIMES: tuple[str, ...] = ("simulation", "local-deployment")
DTYPE_NAMES: tuple[str, ...] = ("float32", "bfloat16")
SERVER_OPTIMIZERS: tuple[str, ...] = ("fedavg", "fedavgm", "fedadam", "fedyogi")
#: eta when ``--server-lr`` is not given: plain averaging for the first two, a small step for the
#: adaptive ones, whose step is about eta per coordinate whatever the delta's scale.
DEFAULT_SERVER_LR: dict[str, float] = {"fedavg": 1.0, "fedavgm": 1.0, "fedadam": 1e-2, "fedyogi": 1e-2}

#: Per-mode local learning rates: full-parameter training needs a small step,
#: LoRA a medium one and a soft prompt (a handful of vectors) a large one.
DEFAULT_LR: dict[str, float] = {"pretrain": 2e-3, "full": 2e-3, "lora": 1e-2, "prompt": 1e-1}


def _f(default: Any, help_text: str) -> Any:
    """Declares a dataclass field with help text, as peft does."""
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class RunConfig:
    """Everything one ``fedlm run`` needs; immutable and validated on construction.

    Fields left as ``None`` are resolved from the others (see ``resolved_*``
    properties), so the object itself never changes after construction.
    """

    mode: str = _f("lora", "pretrain | full | lora | prompt: what the clients train and upload (pretrain: "
                   "every parameter on the LM task; full: every parameter on any task).")
    task: str = _f("lm", "lm | sft: causal-LM loss on text, or supervised instruction tuning (loss on the "
                   "response only; held-out accuracy per task).")
    backend: str = _f("secagg+", "plain | secagg | secagg+ | ckks: how updates are aggregated.")
    engine: str = _f("in-memory", "in-memory | flower: where the clients run: in this process, or as Flower "
                     "ClientApps (each client a SuperNode) driven by a Flower ServerApp.")
    flower_runtime: str = _f("simulation", "--engine flower: simulation (Flower's simulation runtime, Ray) or "
                             "local-deployment (a SuperLink and one SuperNode per client on 127.0.0.1).")
    flower_compare: bool = _f(True, "--engine flower: replay every round on the in-memory engine from the Flower "
                              "run's global state with the same survivors and report the difference (engine_check); "
                              "--no-flower-compare skips it.")
    rounds: int = _f(10, "Number of federated rounds.")
    clients: int = _f(10, "Number of clients holding data.")
    clients_per_round: int = _f(5, "Clients sampled each round.")
    local_steps: int = _f(10, "AdamW steps each sampled client takes per round.")
    batch_size: int = _f(8, "Sequences per local step.")
    seq_len: int = _f(64, "Tokens per training sequence.")
    lr: float | None = _f(None, "Local learning rate; default depends on the mode.")
    dropout: float = _f(0.2, "Probability that a sampled client drops out during the round.")
    corrupt: float = _f(0.1, "Fraction of sampled clients assumed to collude with the server; with the "
                             "dropout rate (at least 0.2) it sets the secagg/secagg+ thresholds.")
    dirichlet_alpha: float = _f(0.5, "Dirichlet concentration of the non-IID split (small=skewed).")
    seed: int = _f(0, "Seed for data split, client sampling, dropouts and model init.")
    data: tuple[str, ...] = _f((), "User .txt/.jsonl files to use instead of the stdlib corpus.")
    out: str = _f("runs/latest", "Output directory for report, plots, adapter and tokenizer.")
    report: str | None = _f(None, "Path of the JSON report (default OUT/report.json).")
    freeze_a: bool | None = _f(None, "FFA-LoRA: freeze LoRA A (default: on iff DP is on).")
    quiet: bool = _f(False, "No progress bars or summary.")
    warmup_steps: int = _f(300, "Central warm-up steps on public data before federation.")
    eval_batches: int = _f(4, "Held-out batches per domain for each evaluation.")
    eval_examples: int = _f(48, "SFT: held-out examples per task scored (loss and greedy exact match) each round.")
    sft_examples: int = _f(400, "SFT with the default data: examples per task made from the standard library.")
    vocab_size: int = _f(1024, "BPE vocabulary size.")
    hidden_size: int = _f(128, "Model width.")
    num_layers: int = _f(4, "Transformer layers.")
    num_heads: int = _f(4, "Attention heads.")
    lora_r: int = _f(8, "LoRA rank.")
    lora_alpha: int = _f(16, "LoRA scaling numerator.")
    num_virtual_tokens: int = _f(8, "Soft-prompt length in prompt mode (the shared, aggregated part).")
    personal_tokens: int = _f(0, "Prompt mode: private soft tokens each client keeps next to the shared ones; "
                              "never uploaded, kept across rounds.")
    clip_bound: float | None = _f(None, "Per-coordinate clip of each delta (default: steps*lr).")
    fractional_bits: int = _f(20, "Fixed-point fractional bits of the secure encoding.")
    dp_epsilon: float | None = _f(None, "Distributed DP: the epsilon the whole run may spend (each client adds "
                                        "discrete Gaussian noise before masking; secagg/secagg+ only).")
    dp_delta: float = _f(1e-5, "Distributed DP: the delta of --dp-epsilon.")
    dp_rounds: int | None = _f(None, "Distributed DP: rounds the noise is planned for (default: --rounds); "
                               "training stops before a round that would exceed --dp-epsilon.")
    dp_l2_clip: float = _f(1.0, "L2 norm each client clips its delta to when DP is on.")
    max_chars_per_domain: int = _f(150_000, "Cap on corpus characters per domain.")
    threads: int = _f(1, "torch threads (0 = torch's default); 1 stays fast on a shared CPU.")
    model: str | None = _f(None, "Local Hugging Face causal-LM directory (config, weights, tokenizer), "
                           "loaded offline; default: the tiny Llama built and warmed up here.")
    lora_targets: tuple[str, ...] = _f((), "LoRA target module names (default: found per architecture).")
    dtype: str = _f("float32", "float32 | bfloat16: the dtype a --model checkpoint is loaded in.")
    device: str = _f("auto", "auto | cpu | cuda: where the model trains (auto: cuda when available). Deltas "
                             "go to the CPU for secure aggregation.")
    save_every: int = _f(0, "Write OUT/checkpoints/round-R every this many rounds (0 = never).")
    resume: str | None = _f(None, "Continue from a checkpoint directory written with --save-every.")
    server_opt: str = _f("fedavg", "fedavg | fedavgm | fedadam | fedyogi: how the server applies the "
                         "aggregated mean delta (Reddi et al., ICLR'21).")
    server_lr: float | None = _f(None, "Server learning rate eta (default 1 for fedavg/fedavgm, 1e-2 for "
                                 "fedadam/fedyogi).")
    server_beta1: float = _f(0.9, "First-moment decay (fedavgm momentum, fedadam/fedyogi beta1).")
    server_beta2: float = _f(0.99, "Second-moment decay of fedadam/fedyogi.")
    server_tau: float = _f(1e-3, "Adaptivity floor tau of fedadam/fedyogi.")
    prox_mu: float = _f(0.0, "FedProx: weight mu of the local proximal term mu/2 * ||w - w_global||^2.")

    def __post_init__(self) -> None:
        """Validates field values and the relations between them.

        Raises:
            ValueError: naming the violated relation and how to fix it.
        """
        object.__setattr__(self, "data", tuple(str(p) for p in self.data))
        object.__setattr__(self, "lora_targets", tuple(str(t) for t in self.lora_targets))
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}: choose one of {MODES}")
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r}: choose one of {TASKS}")
        if self.task == "sft" and self.mode == "pretrain":
            raise ValueError("--mode pretrain is full training on the lm task; use --mode full for full "
                             "fine-tuning on sft")
        if self.task == "sft" and any(Path(p).suffix != ".jsonl" for p in self.data):
            raise ValueError("--task sft reads instruction .jsonl files only")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r}: choose one of {BACKENDS}")
        self._check_engine()
        self._check_counts()
        self._check_rates()
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}"
            )
        if self.freeze_a and self.mode != "lora":
            raise ValueError("freeze_a applies to --mode lora only; drop --freeze-a")
        for path in self.data:
            if Path(path).suffix not in (".txt", ".jsonl"):
                raise ValueError(f"data file {path!r}: expected a .txt or .jsonl file")
        self._check_model()

    def _check_engine(self) -> None:
        """Checks the engine flags and what the Flower engine does not run."""
        if self.engine not in ENGINES:
            raise ValueError(f"engine={self.engine!r}: choose one of {ENGINES}")
        if self.flower_runtime not in FLOWER_RUNTIMES:
            raise ValueError(f"flower_runtime={self.flower_runtime!r}: choose one of {FLOWER_RUNTIMES}")
        if self.engine == "flower" and self.resume is not None:
            raise ValueError("--resume runs on --engine in-memory only for now")

    def _check_model(self) -> None:
        """Checks the checkpoint flags."""
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype={self.dtype!r}: choose one of {DTYPE_NAMES}")
        if self.model is not None and not Path(self.model).is_dir():
            raise ValueError(f"model={self.model!r}: no such directory")
        if self.dtype != "float32" and self.model is None:
            raise ValueError("dtype applies to a --model checkpoint; the built-in tiny model trains in float32")
        if self.personal_tokens < 0 or (self.personal_tokens and self.mode != "prompt"):
            raise ValueError("personal_tokens must be >= 0 and applies to --mode prompt only")
        if self.lora_targets and self.mode != "lora":
            raise ValueError("lora_targets applies to --mode lora only; drop --lora-targets")

    def _check_counts(self) -> None:
        """Checks the positive integer fields and the sampling relation."""
        positive = ("rounds", "clients", "clients_per_round", "local_steps", "batch_size",
                    "seq_len", "eval_batches", "hidden_size", "num_layers", "num_heads",
                    "lora_r", "lora_alpha", "num_virtual_tokens", "fractional_bits")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.warmup_steps < 0 or self.threads < 0 or self.save_every < 0:
            raise ValueError("warmup_steps, threads and save_every must be >= 0")
        if self.clients_per_round > self.clients:
            raise ValueError(
                f"clients_per_round={self.clients_per_round} > clients={self.clients}: "
                "sample at most as many clients as exist"
            )
        if self.vocab_size < 300:
            raise ValueError(f"vocab_size={self.vocab_size}: byte-level BPE needs >= 300")
        if self.max_chars_per_domain < 1000:
            raise ValueError("max_chars_per_domain must be >= 1000 to leave held-out text")

    def _check_rates(self) -> None:
        """Checks probabilities, learning rate, clip and DP parameters."""
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        if not 0.0 <= self.corrupt < 0.5:
            raise ValueError(f"corrupt={self.corrupt} must be in [0, 0.5)")
        if not (self.dirichlet_alpha > 0 and math.isfinite(self.dirichlet_alpha)):
            raise ValueError(f"dirichlet_alpha={self.dirichlet_alpha} must be a positive number")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be > 0")
        if self.clip_bound is not None and not self.clip_bound > 0:
            raise ValueError(f"clip_bound={self.clip_bound} must be > 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device={self.device!r}: choose auto, cpu or cuda")
        if not self.dp_l2_clip > 0:
            raise ValueError("dp_l2_clip must be > 0")
        if self.dp_epsilon is not None:
            if not (self.dp_epsilon > 0 and math.isfinite(self.dp_epsilon)):
                raise ValueError(f"dp_epsilon={self.dp_epsilon} must be a positive number")
            if not 0 < self.dp_delta < 1:
                raise ValueError(f"dp_delta={self.dp_delta} must be in (0, 1)")
            if self.backend not in ("secagg", "secagg+"):
                raise ValueError(f"--dp-epsilon needs --backend secagg or secagg+ (distributed DP adds the noise "
                                 f"under the masks), not {self.backend}")
            if self.dp_rounds is not None and self.dp_rounds < 1:
                raise ValueError(f"dp_rounds={self.dp_rounds} must be >= 1")
            if self.personal_tokens:
                raise ValueError("--personal-tokens with --dp-epsilon: per-client prompts are trained on private "
                                 "data the DP accounting does not cover; drop one of them")
        if self.server_opt not in SERVER_OPTIMIZERS:
            raise ValueError(f"server_opt={self.server_opt!r}: choose one of {SERVER_OPTIMIZERS}")
        if self.server_lr is not None and not (self.server_lr > 0 and math.isfinite(self.server_lr)):
            raise ValueError(f"server_lr={self.server_lr} must be a positive number")
        if not (0 <= self.server_beta1 < 1 and 0 <= self.server_beta2 < 1):
            raise ValueError("server_beta1 and server_beta2 must be in [0, 1)")
        if not (self.server_tau > 0 and math.isfinite(self.server_tau)):
            raise ValueError(f"server_tau={self.server_tau} must be a positive number")
        if not (self.prox_mu >= 0 and math.isfinite(self.prox_mu)):
            raise ValueError(f"prox_mu={self.prox_mu} must be >= 0")

    @property
    def full_parameters(self) -> bool:
        """Whether every parameter trains and is uploaded (``pretrain`` and ``full``)."""
        return self.mode in ("pretrain", "full")

    @property
    def prompt_tokens(self) -> int:
        """Soft-prompt rows in the model: the shared ones, then the personal ones."""
        return self.num_virtual_tokens + self.personal_tokens if self.mode == "prompt" else 0

    @property
    def resolved_server_lr(self) -> float:
        """eta: ``server_lr`` or the optimiser's default."""
        return self.server_lr if self.server_lr is not None else DEFAULT_SERVER_LR[self.server_opt]

    @property
    def resolved_lr(self) -> float:
        """The local learning rate: ``lr`` or the mode's default."""
        return self.lr if self.lr is not None else DEFAULT_LR[self.mode]

    @property
    def resolved_freeze_a(self) -> bool:
        """Whether LoRA A is frozen (FFA-LoRA); defaults to on exactly when DP is on."""
        if self.mode != "lora":
            return False
        return self.freeze_a if self.freeze_a is not None else self.dp

    @property
    def resolved_clip_bound(self) -> float:
        """Public per-coordinate clip bound of each uploaded delta.

        AdamW moves each coordinate by about ``lr`` per step (its update is a
        ratio of moment estimates of order one), so ``local_steps * lr`` bounds
        a delta with room to spare and clipping almost never bites. A tight
        bound matters because the secure encoding spends bits on the range
        ``[-clip, clip]``; LoRA and prompt deltas are small, so this stays well
        below 1.0 for LoRA and around 0.25 for the soft prompt. Under DP the
        delta is L2-clipped to ``dp_l2_clip`` instead, which bounds every coordinate too.
        """
        if self.clip_bound is not None:
            return self.clip_bound
        if self.dp:
            return self.dp_l2_clip
        return self.local_steps * self.resolved_lr

    @property
    def resolved_device(self) -> str:
        """``cpu`` or ``cuda``; ``auto`` picks cuda when torch sees a GPU.

        Raises:
            ValueError: ``cuda`` was asked for and torch sees no GPU.
        """
        import torch

        available = torch.cuda.is_available()
        if self.device == "cuda" and not available:
            raise ValueError("--device cuda: torch sees no CUDA device on this machine (use --device cpu or auto)")
        if self.device == "auto":
            return "cuda" if available else "cpu"
        return self.device

    @property
    def dp(self) -> bool:
        """Whether distributed DP is on."""
        return self.dp_epsilon is not None

    @property
    def resolved_dp_rounds(self) -> int:
        """Rounds the DP noise is planned for."""
        return self.dp_rounds if self.dp_rounds is not None else self.rounds

    @property
    def report_path(self) -> Path:
        """Where the JSON report is written."""
        return Path(self.report) if self.report else Path(self.out) / "report.json"

    @property
    def is_secure(self) -> bool:
        """Whether the backend is a secure-aggregation protocol."""
        return self.backend in SECURE_BACKENDS

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-ready data, with resolved defaults filled in."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["data"] = list(self.data)
        data["lora_targets"] = list(self.lora_targets)
        data.update(dp_rounds=self.resolved_dp_rounds if self.dp else None)  # a resume must keep the DP plan
        data.update(lr=self.resolved_lr, freeze_a=self.resolved_freeze_a,
                    clip_bound=self.resolved_clip_bound, report=str(self.report_path),
                    server_lr=self.resolved_server_lr)
        return data


DP_DEFAULTS: dict[str, Any] = {"mode": "prompt", "clients": 30, "clients_per_round": 30}
"""Under ``--dp-epsilon``, what the command line defaults to unless set: distributed DP noise grows with
the square root of the trained values and shrinks with the honest clients per round, so a DP run
learns with few values (a soft prompt) and many clients per round (``dp.noise_to_signal``)."""


SFT_DEFAULTS: dict[str, Any] = {"mode": "full", "lr": 1e-3, "local_steps": 20}
"""Under ``--task sft``, what the command line defaults to unless set: the tiny default model learns
the short answers with full fine-tuning (measured: LoRA at its default rate stays below the majority
baseline)."""


def field_help(name: str) -> str:
    """The help text of a ``RunConfig`` field, for the CLI."""
    for f in fields(RunConfig):
        if f.name == name:
            return str(f.metadata["help"])
    raise KeyError(name)
