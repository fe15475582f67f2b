"""Typed configuration: one dataclass per component, nested under RunConfig, registered in Hydra's ConfigStore.

Field docstrings (the string under each field) are the reference for every key a sweep can override.
Sizes are in tokens, as the paper gives them; the trainer converts them to steps.

The ground floor: it imports nothing of ablate, so every package can read it; ablate.config composes and
validates configs above data/, model/ and train/, whose maths it checks with.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Literal, get_args, get_origin, get_type_hints

from hydra.core.config_store import ConfigStore

# Closed choices: the one spelling of each. Fields are typed with them, so mypy and readers see the values;
# OmegaConf 2.3 cannot type a field as Literal, so at run time such a field is plain `str` to it, and
# CHOICES (at the end) holds each choice field's allowed values for ablate.config.validate.
Scale = Literal["demo", "paper"]
Init = Literal["pretrained", "random"]
NewRowInit = Literal["random", "mean"]
ImageInit = Literal["random", "mean", "contrastive"]
Task = Literal["t2i", "uncond"]
DataSource = Literal["synthetic", "webdataset", "folder"]
# open_lm's model_norm choices (open_lm/norms.py); the lp_ ones are built as their non-lp twin
# (ablate.model.transformer says why).
Norm = Literal[
    "default_layer_norm",
    "lp_layer_norm",
    "gain_only_layer_norm",
    "gain_only_lp_layer_norm",
    "no_wb_layer_norm",
    "rms_norm",
]
FfnType = Literal["swiglu", "gelu"]
Positional = Literal["rotary", "head_rotary", "none"]
ImageTokenizer = Literal["vqvae", "path", "diffusers"]
TextTokenizer = Literal["bpe", "path"]
# The paper's partial-freeze settings (Fig. 6), cumulative; ablate.model.freeze implements them.
Trainable = Literal["all", "emb_out", "emb_out_norm", "emb_out_norm_half", "emb_out_norm_ffn"]
ClusterKind = Literal["debug", "local", "slurm"]
Precision = Literal["auto", "bf16", "float32"]
GradReduceDtype = Literal["float32", "bf16"]
Corpus = Literal["stories", "docs"]

# The values of the choices that other modules implement (derived: a value is never spelled twice).
SCALES: tuple[str, ...] = get_args(Scale)
NEW_ROW_INITS: tuple[str, ...] = get_args(NewRowInit)
TASKS: tuple[str, ...] = get_args(Task)
NORMS: tuple[str, ...] = get_args(Norm)
FFN_TYPES: tuple[str, ...] = get_args(FfnType)
POSITIONAL: tuple[str, ...] = get_args(Positional)
TRAINABLE_PRESETS: tuple[str, ...] = get_args(Trainable)
CLUSTER_KINDS: tuple[str, ...] = get_args(ClusterKind)
PRECISIONS: tuple[str, ...] = get_args(Precision)


@dataclass
class ModelConfig:
    """The transformer (open_lm architecture) and how it is initialised."""

    name: str = "tiny"
    """Architecture name, for labels only."""
    hidden_dim: int = 128
    """Model width (open_lm `hidden_dim`)."""
    n_layers: int = 4
    """Number of transformer blocks."""
    n_heads: int = 4
    """Attention heads; must divide hidden_dim."""
    text_vocab_size: int = 8192
    """Rows of the language model's text vocabulary (>= the text tokenizer's size)."""
    post_embed_norm: bool = False
    """open_lm `post_embed_norm`."""
    weight_tying: bool = False
    """Share the embedding and output matrices (open_lm-1b: untied)."""
    model_norm: Norm = "default_layer_norm"
    """Normalisation layer, as open_lm's: default_layer_norm (LayerNorm with gain and bias),
    gain_only_layer_norm (no bias), no_wb_layer_norm (neither), rms_norm (gain), and lp_layer_norm,
    gain_only_lp_layer_norm (open_lm's low-precision variants; here the same as their twins)."""
    ffn_type: FfnType = "swiglu"
    """Feed-forward block: swiglu or gelu."""
    qk_norm: bool = False
    """Normalise queries and keys (open_lm `qk_norm`)."""
    positional_embedding_type: Positional = "rotary"
    """rotary, head_rotary (the released open_lm-1b checkpoint) or none."""
    config_json: str | None = None
    """An open_lm model-config JSON, e.g. open_lm/model_configs/open_lm_1b.json. When set, its architecture
    keys (hidden_dim, n_layers, n_heads, vocab_size, post_embed_norm, weight_tying, model_norm, ffn_type,
    qk_norm, positional_embedding_type, norm_eps) replace the model.* fields above, absent optional keys
    taking open_lm's defaults; seq_len still comes from data.seq_len, and the JSON's vocab_size is the text
    vocabulary (model.text_vocab_size must equal it). Keys for what ablate does not implement (MoE,
    custom attention) are refused. Stage keys hash the architecture the file describes, not only its path
    (ablate.stages.common.arch_config)."""
    init: Init = "pretrained"
    """pretrained: start from a language model (demo: the `pretrain` stage; paper: model.checkpoint); random."""
    checkpoint: str | None = None
    """Path to an open_lm checkpoint (epoch_N.pt). Required for init=pretrained at scale=paper."""
    trust_checkpoint: bool = False
    """Read model.checkpoint with full unpickling if it holds more than tensors (open_lm may pickle its
    args beside the weights). Unpickling runs code the file names: set it only for a file from a source
    you trust. false: such a file is refused (weights_only=True). Not in any key (UNKEYED_FIELDS)."""
    new_rows_init: NewRowInit = "random"
    """How widened vocabulary rows (specials) start: random (truncated normal) or mean (mean of text rows)."""
    image_init: ImageInit = "random"
    """How image-code rows start: random, mean (mean text embedding) or contrastive (the `align` stage's
    image-code embeddings, copied into the input embedding; needs init=pretrained)."""

    def needs_pretrain(self) -> bool:
        """init=pretrained without a checkpoint: the demo's `pretrain` stage trains the language model."""
        return self.init == "pretrained" and not self.checkpoint


@dataclass
class DataConfig:
    """Image-caption pairs and the token sequences built from them."""

    source: DataSource = "synthetic"
    """synthetic: coloured-shape scenes generated from a seed; webdataset: img2dataset's tar shards
    (data.path); folder: a directory of images with captions.jsonl or same-stem .txt files (data.path)."""
    path: str | None = None
    """webdataset: a directory of NNNNN.tar shards or a brace pattern (/data/cc12m/{00000..01242}.tar);
    folder: the image directory. Unused by synthetic."""
    eval_path: str | None = None
    """Optional reference set for samples and FID (same formats as data.path; MS-COCO at paper scale)."""
    val_fraction: float = 0.002
    """webdataset, folder: fraction of samples in the validation split, chosen by a stable hash of the
    sample key (adding shards never moves a sample between splits)."""
    heldout_fraction: float = 0.002
    """webdataset, folder: fraction in the held-out split, by the same hash."""
    min_image_side: int = 64
    """webdataset, folder: images whose shorter side is smaller are skipped (counted as too_small)."""
    max_bad_fraction: float = 0.05
    """webdataset, folder: the stage fails once more than this fraction of samples was skipped as bad."""
    task: Task = "t2i"
    """t2i: caption then image; uncond: image tokens only."""
    image_size: int = 32
    """Side of the square RGB images, in pixels."""
    max_shapes: int = 2
    """At most this many shapes per synthetic scene."""
    n_train: int = 6000
    """Training pairs."""
    n_val: int = 256
    """Validation pairs (seen attribute combinations)."""
    n_heldout: int = 256
    """Pairs with held-out attribute combinations."""
    seed: int = 0
    """Seed of the synthetic generator."""
    seq_len: int = 288
    """Tokens per training sequence (padded with <pad>)."""
    caption_tokens: int = 26
    """Text tokens reserved for a caption; longer captions are truncated."""
    caption_leading_space: bool = False
    """Encode each caption as it reads in running text, after a space (" a small red circle"), so its
    first word is the same token as anywhere else in the LM's corpus (a byte-level BPE gives "a" and " a"
    different ids). The demo sets it (scale/demo.yaml): its story corpus describes pictures in the
    captions' words mid-sentence, and the pretrained LM then predicts a caption from its first word on."""


@dataclass
class TokenizerConfig:
    """The image tokenizer (codes) and the text tokenizer (BPE) shared by the LM and the captions."""

    image: ImageTokenizer = "vqvae"
    """vqvae: trained by the `image_tokenizer` stage; path: a saved ablate tokenizer directory
    (image_path); diffusers: a diffusers VQModel directory, e.g. MoVQGAN (image_path)."""
    image_path: str | None = None
    """Directory of a saved image tokenizer, for image=path."""
    codebook_size: int = 256
    """Image codes."""
    downsample: int = 2
    """Pixels per code along each side; image_size/downsample squared codes per image."""
    vq_hidden: int = 32
    """VQ-VAE channel width."""
    vq_steps: int = 500
    """VQ-VAE training steps."""
    vq_batch_size: int = 32
    """VQ-VAE batch size (images)."""
    vq_lr: float = 3e-3
    """VQ-VAE learning rate."""
    vq_patch_local: bool = True
    """The VQ-VAE's encoder sees only its own patch (a 1x1 first conv and per-position norms; false: a 3x3
    first conv and GroupNorms over the image), so equal patches get equal codes: on the demo scenes the
    black background is then one code instead of 42."""
    text: TextTokenizer = "bpe"
    """bpe: trained on the pretraining corpus by the `text_tokenizer` stage; path: a tokenizer.json (text_path)."""
    text_path: str | None = None
    """A tokenizer.json (e.g. GPT-NeoX's), for text=path."""
    text_vocab_size: int = 8192
    """BPE vocabulary size, for text=bpe. The demo scale sets 1,024 (scale/demo.yaml): with the caption words
    held whole (bpe_caption_words) captions are ~8.3 tokens, image:text ~31:1, and the output layer is
    under a tenth of a demo step instead of half."""
    bpe_caption_words: bool = True
    """text=bpe with data.source=synthetic: train the BPE on the caption grammar's words as well, so each is
    one token (" magenta"), as in a tokenizer trained on web text. Demo captions are then 8.3 tokens
    (image:text 31:1, the paper's ~30:1); without it a 1,792-token BPE of the documentation (corpus=docs)
    splits them into 19 (13:1)."""


@dataclass
class PretrainConfig:
    """The demo's "pretrained" language model, trained on offline English text."""

    corpus: Corpus = "stories"
    """stories: synthetic children's stories (ablate/data/stories.py), a small English the tiny demo
    model learns to write fluently; docs: Python's own documentation (ablate/data/corpus.py), real prose
    that it only learns to a held-out perplexity of ~100, its completions looping."""
    corpus_max_chars: int = 2_500_000
    """Characters of the corpus used (tokenizer and LM)."""
    corpus_prose_only: bool = True
    """With corpus=docs: keep only the documentation's prose paragraphs (no code, tables, grammar rules or
    doctests; about half of its 2.2M characters), so the demo LM continues prompts in sentences."""
    heldout_fraction: float = 0.05
    """Documents kept out of pretraining, to measure forgetting."""
    heldout_text_path: str | None = None
    """With model.checkpoint (paper scale): held-out text the LM was not trained on, e.g. a slice of the
    Pile, as a .txt (documents separated by blank lines) or .jsonl (one {"text": ...} per line). The
    `heldout_text` stage tokenizes it for the text-ability probe (forgetting), which is off without it."""
    heldout_max_tokens: int = 2_000_000
    """Tokens of heldout_text_path kept (the probe reads evaluate.probe_sequences sequences of them)."""
    total_tokens: int = 600_000
    """Pretraining tokens (about 1.6 passes over the demo corpus's prose)."""
    batch_tokens: int = 4608
    """Tokens per optimizer step."""
    lr: float = 1e-3
    """Peak learning rate."""
    warmup_tokens: int = 50_000
    """Linear warm-up, in tokens."""
    seed: int = 0
    """Seed of initialisation and data order."""


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay."""

    lr: float = 1e-3
    """Peak learning rate (paper: 3e-4)."""
    min_lr_ratio: float = 0.1
    """The cosine decays to lr * min_lr_ratio."""
    warmup_tokens: int = 50_000
    """Linear warm-up, in tokens (paper: 2K steps x 1M tokens)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.1
    """Decoupled weight decay (not applied to norms, biases or embeddings)."""
    grad_clip: float = 1.0
    """Global gradient-norm clip; 0 disables."""


@dataclass
class TrainConfig:
    """The text-to-image (or unconditional) training run of an arm."""

    total_tokens: int = 500_000
    """Training tokens (paper: 100B)."""
    batch_tokens: int = 2304
    """Tokens per optimizer step (paper: 1M)."""
    micro_batch_size: int = 8
    """Sequences per forward pass; gradient accumulation reaches batch_tokens."""
    trainable: Trainable = "all"
    """all, or a partial-freeze preset: emb_out, emb_out_norm, emb_out_norm_half, emb_out_norm_ffn."""
    checkpoint_every_tokens: int = 100_000
    """Checkpoint interval, in tokens (and always at the end)."""
    seed: int = 0
    """Seed of initialisation, data order and dropout-free sampling."""
    caption_dropout: float = 0.0
    """Fraction of text-to-image training sequences whose caption is removed (``<doc> <text> </text> <image>
    codes...``), drawn per sequence from train.seed: the model also learns the image distribution without
    a caption, which classifier-free guidance (evaluate.guidance_scale) samples against, as Parti and Muse
    train. 0: every caption kept (the paper's setting; then not in the key, so older runs stay valid).
    Unconditional arms have no caption and ignore it."""
    precision: Precision = "auto"
    """auto: bf16 where it is faster than float32 (CUDA; a CPU with AMX), else float32; bf16:
    forward and loss under bf16 autocast, with float32 weights, gradients and optimizer state (on a CPU
    without AMX 1.5-9x slower than float32); float32: no autocast. Also the pretrain stage's, and sampling's in
    evaluate. Not in any key
    (UNKEYED_FIELDS): the checkpoint holds float32 state either way, so a run resumes under another one."""
    compile: bool = False
    """torch.compile the model for training (the first steps are slower while it compiles). Not in any key."""
    activation_checkpointing: bool = False
    """Recompute each block's activations during backward instead of keeping them: less memory for about a
    third more compute. Not in any key."""
    grad_reduce_dtype: GradReduceDtype = "float32"
    """Data parallel: the dtype gradients travel in when summed over ranks. bf16 halves the traffic at
    the cost of rounding each rank's contribution to 8 mantissa bits; the sum lands back in float32
    gradients either way. Not in any key."""


@dataclass
class AlignConfig:
    """Contrastive alignment of image-code embeddings to the frozen text embeddings (paper Sec. 3.2, Fig. 7)."""

    batch_size: int = 256
    """Image-caption pairs per step (paper: 1,024)."""
    steps: int = 300
    """Optimizer steps."""
    lr: float = 1e-2
    """Adam learning rate of the image-code table and the temperature."""
    seed: int = 0
    """Seed of initialisation and batch order."""


@dataclass
class EvaluateConfig:
    """Evaluation of a run: text ability during training (Table 1), samples and image metrics after it (Fig. 5)."""

    probe_every_tokens: int = 100_000
    """Text-to-image runs: held-out text perplexity and greedy completions every this many tokens (and at
    step 0); 0 disables the probe."""
    probe_sequences: int = 64
    """Held-out text sequences per perplexity measurement."""
    completion_tokens: int = 24
    """Tokens generated greedily per prompt."""
    prompts: list[str] = field(default_factory=list)
    """Prompts completed greedily by the text-ability probe (Table 1); set per scale (conf/scale/*.yaml:
    the demo's are in the demo corpus's register, the paper's are its two Table 1 prompts)."""
    n_samples: int = 64
    """Images sampled per split (seen and held-out attribute combinations; unconditional: one set; real
    data: the first n usable samples of data.eval_path, e.g. 30,000 MS-COCO captions at paper scale)."""
    slice_size: int = 1000
    """Prompts per task of the evaluate array: more prompts than this are sampled as ceil(n / slice_size)
    units (one GPU task each on SLURM), each resumable alone; at most this many: one job."""
    temperature: float = 1.0
    """Sampling temperature (> 0)."""
    top_k: int = 0
    """Keep the k most likely image codes (0: all)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of codes with this much probability (1.0: all)."""
    guidance_scale: float = 1.0
    """Classifier-free guidance of text-to-image sampling: the logits are uncond + scale * (cond - uncond),
    uncond being the model's logits after an empty caption. 1: no guidance (one forward per code; then not
    in the key). Above 1 needs a model trained with train.caption_dropout > 0, and costs a second forward.
    Unconditional arms ignore it."""
    batch_size: int = 32
    """Prompts sampled at once."""
    grid_images: int = 16
    """Images shown in the sample grid (Figure 5)."""
    fid_weights: str | None = None
    """FID on real data (data.eval_path): torch-fidelity's InceptionV3 weights file,
    weights-inception-2015-12-05-6726825d.pth (the TF-Inception port published FIDs use; needs the `fid`
    extra). Unset: no FID. Unused by synthetic data."""
    seed: int = 0
    """Seed of sampling."""


@dataclass
class ClusterConfig:
    """Where the jobs run, and (SLURM) what each job asks for. Execution settings: not part of the run key.

    The SLURM fields follow submitit's SlurmExecutor parameters; debug and local ignore them (one process).
    """

    kind: ClusterKind = "local"
    """debug (in-process, one at a time), local (subprocesses) or slurm (sbatch via submitit)."""
    max_concurrent: int = 2
    """Jobs running at once (debug, local); slurm caps job arrays with array_parallelism instead."""
    timeout_min: int = 120
    """Per-job time limit in minutes (slurm: sbatch --time; longer runs are requeued from a checkpoint)."""
    poll_s: float = 15.0
    """Seconds between progress lines while waiting."""
    threads: int = 1
    """torch CPU threads per job (per rank under slurm)."""
    nodes: int = 1
    """slurm: nodes per job (sbatch --nodes)."""
    gpus_per_node: int = 0
    """slurm: GPUs per node (--gpus-per-node); 0 for CPU-only jobs."""
    tasks_per_node: int = 1
    """slurm: processes per node (--ntasks-per-node); with GPUs, one task (torch.distributed rank) per GPU,
    so it must equal gpus_per_node. World size = nodes * tasks_per_node."""
    cpus_per_task: int = 1
    """slurm: CPU cores per task (--cpus-per-task): data loading and torch threads of one rank."""
    mem_gb: int | None = None
    """slurm: memory per *node* in GB (--mem, as submitit's mem_gb); null: the partition's default;
    0: all of each node's memory."""
    partition: str | None = None
    """slurm: partition (--partition); null: the cluster's default partition."""
    account: str | None = None
    """slurm: account to charge (--account); null: the user's default."""
    qos: str | None = None
    """slurm: quality of service (--qos); null: the default."""
    constraint: str | None = None
    """slurm: node features required (--constraint, e.g. a100|a100-80gb); null: none."""
    signal_delay_s: int = 120
    """slurm: seconds before the time limit at which SLURM signals the job (USR2 via submitit), so it can
    checkpoint and be requeued; also the lead time of a preemption notice."""
    array_parallelism: int = 256
    """slurm: at most this many tasks of one job array run at once (sbatch --array=...%N)."""
    max_array_size: int = 0
    """slurm: largest job array to submit; larger stages are split into several arrays. 0: the cluster's
    MaxArraySize (read with `scontrol show config`)."""
    max_timeouts: int = 5
    """slurm: how many times a job that hits its time limit is requeued from its checkpoint before it is
    left failed (preemptions do not count)."""
    # Not yet measured on a GPU by ablate (bench/gpu_throughput.py; no GPU was available when it was
    # written). open_lm reports 28-34% for its 1B model on A100s; 0.40 assumes fused attention and bf16.
    mfu: float = 0.40
    """The dry run's GPU-hour estimate: model FLOPs utilisation of the A100's bf16 dense peak (0 < mfu <= 1).
    Replace it with what bench/gpu_throughput.py measures on your GPUs."""
    additional_parameters: dict[str, str] = field(default_factory=dict)
    """slurm: further sbatch options, name (without --) -> value (strings), e.g.
    `+cluster.additional_parameters.mail-type=END` or `++cluster.additional_parameters={exclusive:user}`
    (new keys need `+`/`++`). Options that have a field above (partition, nodes, time, ...) must be set there."""

    def training_world_size(self) -> int:
        """Ranks of a training job: nodes x tasks_per_node under slurm, else 1 (one local process)."""
        return self.nodes * self.tasks_per_node if self.kind == "slurm" else 1

    def job_gpus(self) -> int:
        """GPUs of one job: nodes x gpus_per_node under slurm; 0 for debug and local (CPU)."""
        return self.nodes * self.gpus_per_node if self.kind == "slurm" else 0


@dataclass
class TrackingConfig:
    """MLflow tracking."""

    uri: str | None = None
    """Tracking URI; default: $MLFLOW_TRACKING_URI, else sqlite:///<results>/mlflow.db."""
    experiment_prefix: str = "ablate/"
    """Experiment name = prefix + sweep name."""
    flush_interval_s: float = 2.0
    """Seconds between metric batches sent by the background logger."""
    close_timeout_s: float = 300.0
    """Seconds a job waits at its end for an unreachable tracking store before it gives up (with a warning
    naming metrics.jsonl and `ablate resend`); docs/TRACKING_SERVER.md."""


@dataclass
class RunConfig:
    """Everything one arm needs; its hash (minus cluster and tracking) is the run's identity."""

    scale: Scale = "demo"
    """demo (CPU, minutes) or paper (the paper's setup, docs/PAPER.md)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# Sections that say where and how a run executes, not what it computes: excluded from run identity.
EXECUTION_SECTIONS = ("cluster", "tracking")
# Fields that say how a stage computes, not what: no stage key hashes them, so changing one resumes the
# same run (results agree to float tolerance; tests/test_precision.py measures how closely).
UNKEYED_FIELDS = (
    "train.precision",
    "train.compile",
    "train.activation_checkpointing",
    "train.grad_reduce_dtype",
    "model.trust_checkpoint",  # how the weights are read, not which
)


def _closed_choices(cls: Any, prefix: str = "") -> dict[str, tuple[str, ...]]:
    """Each Literal-typed field below cls -> its values, the field retyped `str` for OmegaConf on the way."""
    out: dict[str, tuple[str, ...]] = {}
    hints = get_type_hints(cls)
    for f in fields(cls):
        hint, key = hints[f.name], prefix + f.name
        if get_origin(hint) is Literal:
            out[key] = get_args(hint)
            cls.__annotations__[f.name] = "str"
        elif is_dataclass(hint):
            out.update(_closed_choices(hint, key + "."))
    return out


CHOICES: dict[str, tuple[str, ...]] = _closed_choices(RunConfig)
"""Every closed-choice key ('model.init') -> the values it allows, in the Literal's order."""


def register_configs() -> None:
    """Register the schema so the YAML tree under conf/ is validated against it."""
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
