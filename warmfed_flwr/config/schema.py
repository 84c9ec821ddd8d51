"""Every config key's one home: a pydantic section per YAML section, each field with its default, range and meaning.

Flat keys are ``section.field`` with dashes (``train.round-timeout``), the shape of Flower's run config. A field's
or section's ``json_schema_extra['used_when']`` says which flat key values make the run actually read it.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from warmfed_flwr.errors import ConfigError

Algorithm = Literal["fedavg", "fedprox", "local", "centralized", "fgl", "warmfed"]
Personalization = Literal["none", "dsd", "pfedsd", "ditto", "fedbn", "finetune"]
Fault = Literal["none", "raise", "hang", "exit", "nan", "wrong-shape", "extra-key", "oversize", "absurd-examples",
                "scale", "sign-flip", "lie-examples", "swap-rows", "huge-adapter"]

GENERATIVE_ALGORITHMS = ("warmfed", "fgl")
UPLOADING_ALGORITHMS = ("fedavg", "fedprox", "fgl", "warmfed")
"""The algorithms whose clients upload to a server that uses what they send (local-only's server ignores it)."""
PERSONALIZING_METHODS = tuple(m for m in typing.get_args(Personalization) if m != "none")


def used_when(key: str, values: Iterable[str]) -> dict[str, Any]:
    """``json_schema_extra`` of a field or section that the run reads only while flat ``key`` is one of ``values``."""
    return {"used_when": {key: list(values)}}


ALWAYS_USED: dict[str, Any] = {"used_when": {}}
"""``json_schema_extra`` of a field read whatever its section's ``used_when`` says."""


class Section(BaseModel):
    """A frozen, strictly typed group of config keys; unknown keys are refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class DataConfig(Section):
    """Where client data comes from and how it is split."""

    source: Literal["digits", "imagefolder", "hub", "camelyon17", "domainnet"] = Field(
        "digits", description="digits: the offline benchmark; imagefolder: root/domain/class/image; hub: a Hugging "
        "Face dataset (data.hub-id); camelyon17: WILDS camelyon17_v1.0; domainnet: DomainNet with its split files")
    path: str = Field("", description="dataset root: imagefolder tree, WILDS camelyon17_v1.0 or DomainNet "
                      "(docs/data.md)")
    hub_id: str = Field("", description="the Hugging Face dataset id, for data.source = hub")
    hub_config: str = Field("", description="the hub dataset's config (subset) name; \"\" = its default")
    hub_image_column: str = Field("image", description="the hub dataset's image column")
    hub_label_column: str = Field("label", description="the hub dataset's label column")
    hub_domain_column: str = Field("", description="the hub dataset's domain column; \"\" = no domains")
    domains: str = Field("mnist,digits,fonts,mnistm", description="comma-separated domain names, in client order")
    partition: Literal["domain", "dirichlet"] = Field(
        "domain", description="domain: one client per domain; dirichlet: label skew over the pooled domains")
    num_clients: int = Field(4, gt=0, description="number of client partitions")
    clients_per_domain: int = Field(1, gt=0, description="data.partition = domain: clients per domain "
                                    "(data.num-clients = domains x this), named <domain>-<i> when above 1")
    domain_split: Literal["iid", "dirichlet"] = Field(
        "iid", description="how a domain is split among its clients: iid (equal random shares) or dirichlet "
        "(label skew, data.dirichlet-alpha)")
    dirichlet_alpha: float = Field(0.5, gt=0, description="Dirichlet concentration of data.partition = dirichlet "
                                   "and of data.domain-split = dirichlet")
    test_fraction: float = Field(0.2, gt=0, le=1, description="share of each client's data held out for testing")
    image_size: int = Field(32, gt=0, description="side of the square images the classifier sees, in pixels")
    max_per_domain: int = Field(0, ge=0, description="0 = all images; >0 caps each domain (fast tests)")
    on_corrupt: Literal["error", "skip"] = Field(
        "error", description="error: stop at an unreadable image; skip: count and skip unreadable images")
    classes: str = Field("", description="domainnet only: \"\" = every class, or comma-separated class folder names "
                         "(e.g. a 10-class subset)")

    def domain_list(self) -> list[str]:
        """The configured domain names, in order."""
        return [d.strip() for d in self.domains.split(",") if d.strip()]

    def class_list(self) -> list[str]:
        """The configured class folder names (empty: every class)."""
        return [c.strip() for c in self.classes.split(",") if c.strip()]


class ModelConfig(Section):
    """The classifier trained by every algorithm."""

    name: Literal["cnn", "resnet18"] = Field("cnn", description="the classifier architecture")
    small_stem: bool = Field(True, description="ResNet-18 with a 3x3 stem and no max-pool for 32x32 inputs")
    pretrained_path: str = Field("", description="a torch state_dict to start from (e.g. ImageNet ResNet-18: its "
                                 "1000-class head is replaced); \"\" = random init")
    normalize: Literal["none", "imagenet"] = Field(
        "none", description="imagenet: ImageNet mean/std as the model's first layer (for ImageNet weights)")


class TrainConfig(Section):
    """Classifier optimisation, federation sampling and client-side training."""

    rounds: int = Field(5, gt=0, description="rounds after round 0 (WarmFed/FGL) or in total (baselines)")
    local_epochs: int = Field(1, ge=0, description="epochs each client trains on its private data per round")
    batch_size: int = Field(32, gt=0, description="classifier training batch size")
    lr: float = Field(0.01, ge=0, description="classifier SGD learning rate")
    momentum: float = Field(0.9, ge=0, description="classifier SGD momentum")
    weight_decay: float = Field(5e-4, ge=0, description="classifier SGD weight decay")
    fraction_fit: float = Field(1.0, gt=0, le=1, description="share of the clients sampled for training each round")
    min_fit_clients: int = Field(2, gt=0, description="fewest clients a training round needs")
    proximal_mu: float = Field(0.01, ge=0, description="FedProx proximal term weight",
                               json_schema_extra=used_when("algorithm", ["fedprox"]))
    centralized_epochs: int = Field(5, ge=0, description="epochs per round the server trains on the pooled data",
                                    json_schema_extra=used_when("algorithm", ["centralized"]))
    round_timeout: float = Field(3600.0, ge=0, description="seconds a round waits for client replies (late clients "
                                 "count as failed) and, before it starts, for missing clients to connect: it then goes "
                                 "on with those connected when at least train.min-fit-clients are, and stops the run "
                                 "when fewer are (0 = forever)")
    max_client_examples: int = Field(1_000_000, ge=0, description="uploads claiming more training examples (or "
                                     "fewer than 1) are refused")
    augment: Literal["none", "flip-crop"] = Field(
        "none", description="flip-crop: seeded random horizontal flip + pad-crop on training batches only")
    aggregation: Literal["mean", "median", "trimmed-mean"] = Field(
        "mean", description="how rounds >= 1 combine the clients' weights: mean (FedAvg, weighted by "
        "train.example-weighting), median (coordinate-wise) or trimmed-mean (coordinate-wise, train.trim-fraction "
        "cut from each end); median and trimmed-mean ignore example counts")
    trim_fraction: float = Field(0.2, gt=0, lt=0.5, description="train.aggregation = trimmed-mean: share of the "
                                 "round's clients cut from each end of every coordinate (int(share x clients) each "
                                 "side; the config is refused when that is 0 for the clients sampled per round)")
    clip_norm: float = Field(0.0, ge=0, description="0 = off; >0: each client's update (its weights minus the global "
                             "model it got) is scaled down to at most this L2 norm before aggregation (over every "
                             "floating-point tensor; integer ones such as BatchNorm counters are left out), with an "
                             "update_clipped event naming the client and its norm")
    example_weighting: Literal["examples", "uniform", "capped"] = Field(
        "examples", description="train.aggregation = mean: examples weights each client by the example count it "
        "reports; uniform weights each 1; capped caps each count at train.example-cap-factor x the low median of "
        "the round's counts, so one liar among n clients carries at most factor / (factor + ceil((n-1)/2)) of the "
        "average. Counts are the clients' own claims, in simulation too: the server loads no partition to check them")
    example_cap_factor: float = Field(2.0, gt=1, description="train.example-weighting = capped: a count counts at "
                                      "most this many times the low median of the round's counts")
    identity_file: str = Field("", description="deployment with SuperNode authentication: absolute path of a YAML "
                               "or JSON mapping client name -> Flower node id (as `flwr supernode register` prints "
                               "it); a name claimed by any other node is refused. \"\" = off: the first claim of a "
                               "name wins")


class GeneratorConfig(Section):
    """The text-to-image generator: 'tiny' (the embedded foundation), a hub id or a local path."""

    model_config = ConfigDict(json_schema_extra=used_when("algorithm", GENERATIVE_ALGORITHMS))

    base: str = Field("tiny", description="tiny (embedded foundation, shipped prebuilt), a hub id or a local "
                      "diffusers directory")
    prompt_template: str = Field("a photo of a {label}", description="class prompt; must contain {label}")
    domain_prompts: bool = Field(True, description="append ', <client's domain>' to its prompts (node config "
                                 "domain-phrase wins; none for mixed shares)")
    domain_phrases: str = Field("", description="with generator.domain-prompts: \"\" = each client's domain name; "
                                "or 'domain=phrase;domain=phrase' describing domains in words (FGL, descriptive "
                                "prompts), a domain left out keeping its name")
    foundation_steps: int = Field(8000, gt=0, description="the shipped foundation's recipe (loaded prebuilt); any "
                                  "other value builds and caches one")
    foundation_style_steps: int = Field(4000, ge=0, description="the tiny foundation's style stage: steps on "
                                        "restyled copies of its public pool under captions naming each style (0 = "
                                        "none); any value but the shipped recipe's builds and caches one")
    foundation_source: str = Field("digits", description="digits (public MNIST part) or an ImageFolder root/class/"
                                   "image the tiny foundation is pretrained on")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="generator weights' dtype; auto = fp16 on CUDA, fp32 on CPU")


    def domain_phrase_map(self) -> dict[str, str]:
        """generator.domain-phrases as {domain: phrase}; raises ConfigError on an item without '='."""
        phrases = {}
        for item in (part.strip() for part in self.domain_phrases.split(";")):
            if not item:
                continue
            domain, sep, phrase = item.partition("=")
            if not sep or not domain.strip() or not phrase.strip():
                raise ConfigError(f"config key 'generator.domain-phrases' item {item!r} is not 'domain=phrase'; "
                                  "write e.g. 'mnist=white on black;fonts=on a gradient'")
            phrases[domain.strip()] = phrase.strip()
        return phrases


class LoraConfig(Section):
    """Client-side LoRA fine-tuning of the generator's UNet."""

    model_config = ConfigDict(json_schema_extra=used_when("algorithm", GENERATIVE_ALGORITHMS))

    enabled: bool = Field(True, description="false = prompts only (FGL's warm start)")
    rank: int = Field(8, gt=0, description="LoRA rank")
    alpha: float = Field(8.0, ge=0, description="LoRA scaling alpha")
    targets: str = Field("to_q,to_k,to_v,to_out.0,conv1,conv2", description="comma-separated UNet module names "
                         "that get adapters")
    steps: int = Field(100, gt=0, description="LoRA optimisation steps per client")
    lr: float = Field(1e-3, ge=0, description="LoRA learning rate")
    batch_size: int = Field(32, gt=0, description="LoRA training batch size")
    train_embeddings: bool = Field(False, description="train the uploaded class prompt embeddings with the adapter "
                                   "(textual-inversion style; same upload schema)")
    snr_gamma: float = Field(0.0, ge=0, description="0 = off; >0: min-SNR loss weighting with this gamma (5 is "
                             "common)")

    def target_list(self) -> list[str]:
        """The LoRA target module names."""
        return [t.strip() for t in self.targets.split(",") if t.strip()]


class SynthesisConfig(Section):
    """Server-side synthesis of the labelled synthetic set."""

    model_config = ConfigDict(json_schema_extra=used_when("algorithm", GENERATIVE_ALGORITHMS))

    images_per_class: int = Field(30, gt=0, description="synthetic images per class, per client (when "
                                  "synthesis.total-images = 0)")
    total_images: int = Field(0, ge=0, description="0: synthesis.images-per-class per client; >0: a fixed budget "
                              "spread evenly over the accepted clients and the classes (at least 1 per class and "
                              "client), so server synthesis stays flat as clients grow")
    steps: int = Field(10, gt=0, description="sampler (denoising) steps")
    guidance: float = Field(3.0, ge=0, description="classifier-free guidance scale")
    negative_prompt: str = Field("", description="classifier-free guidance's negative prompt; \"\" = the empty "
                                 "prompt (FGL: 'low quality, low resolution')")
    timestep_spacing: Literal["leading", "trailing", "linspace"] = Field(
        "leading", description="how the sampler spaces its steps over the 1,000 training timesteps: leading (SD's "
        "saved default) starts at t = 901 with 10 steps, trailing from pure noise (t = 999)")
    batch_size: int = Field(64, gt=0, description="synthesis batch size")
    subset_ratio: float = Field(0.2, gt=0, le=1, description="share of the synthetic set clients keep for "
                                "globalization")
    max_upload_mb: float = Field(256.0, ge=0, description="hard cap on a round-0 upload; below it the limit is the "
                                 "expected upload's size + 5 %")
    upload_dtype: Literal["float32", "float16"] = Field(
        "float32", description="float16 halves round-0 uploads (adapter, embeddings); the server decodes them to fp32")
    max_adapter_abs: float = Field(100.0, ge=0, description="0 = off; round-0 adapters holding a value beyond "
                                   "+-this are refused (real ones: about 0.6 at the default LoRA config, 4.2 at rank "
                                   "1, alpha 16, lr 0.01)")
    max_embedding_norm_factor: float = Field(10.0, ge=0, description="0 = off; round-0 prompt embeddings with a "
                                             "token vector whose L2 norm exceeds this x the largest one of the "
                                             "server's own embeddings of the class prompts are refused (real ones: "
                                             "about 1.0 x)")
    check_embedding_classes: bool = Field(True, description="round-0 prompt embeddings are refused unless each "
                                          "class row matches the server's own embedding of that class's prompt best "
                                          "(catches swapped rows, a label flip of the synthetic images)")
    quality_check: bool = Field(True, description="simulation diagnostic: score each client's synthetic images on "
                                "its real test split")
    devices: str = Field("", description="server synthesis devices: \"\" = the run's device; 'cuda:0,cuda:1' = one "
                         "pipeline per GPU, in parallel")

    def device_list(self) -> list[str]:
        """The server's synthesis devices ('cpu', 'cuda' or 'cuda:N'); empty: the run's device."""
        names = [part.strip() for part in self.devices.split(",") if part.strip()]
        for name in names:
            if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
                raise ConfigError(f"config key 'synthesis.devices' = {self.devices!r} lists {name!r}; use comma-"
                                  "separated cpu, cuda or cuda:N (e.g. 'cuda:0,cuda:1'), or '' for the run's device")
        return names


class WarmFedConfig(Section):
    """Warm-start and globalization knobs (docs/algorithm.md, steps 4-8)."""

    model_config = ConfigDict(json_schema_extra=used_when("algorithm", GENERATIVE_ALGORITHMS))

    round0_fraction: float = Field(1.0, gt=0, le=1, description="share of the clients asked for a round-0 upload "
                                   "(at least train.min-fit-clients); the others join at round 1, and the domains "
                                   "left out of the synthetic set are recorded")
    warm_epochs: int = Field(10, ge=0, description="epochs the one-shot model trains on the whole synthetic set")
    client_syn_epochs: int = Field(1, ge=0, description="client epochs on the synthetic subset per round")
    server_ft_epochs: int = Field(1, ge=0, description="server fine-tuning epochs on the synthetic subset per round")
    client_syn_finetune: bool = Field(True, description="clients fine-tune on the synthetic subset each round")
    server_finetune: bool = Field(True, description="the server fine-tunes the aggregate on the synthetic subset")
    syn_bn_stats: Literal["frozen", "update"] = Field(
        "update", description="update: synthetic fine-tuning re-estimates BatchNorm statistics (paper); frozen: "
        "keeps them")
    server_ft_target: Literal["labels", "ensemble"] = Field(
        "labels", description="labels: server fine-tunes on the subset's labels (paper); ensemble: distills the "
        "clients' mean logits")
    syn_lr_scale: float = Field(0.1, ge=0, description="synthetic fine-tuning (client and server) runs at train.lr x "
                                "this (1.0 = the paper read literally)")
    client_syn_mode: Literal["before", "mixed"] = Field(
        "before", description="before: synthetic epochs, then private (paper); mixed: one pass over both at train.lr")


class PrivacyConfig(Section):
    """Privacy measures and audits (docs/algorithm.md)."""

    audit_images: int = Field(100, ge=0, description="0 = off; synthetic images made from each client's own round-0 "
                              "upload sent to it once (first globalization round) to audit memorisation against its "
                              "private train and test splits; only scalars come back",
                              json_schema_extra=used_when("algorithm", GENERATIVE_ALGORITHMS))
    noise_multiplier: float = Field(0.0, ge=0, description="0 = off; >0: local differential privacy on every "
                                    "upload (warmfed_flwr/trust/dp.py): each clipped part gets Gaussian noise of std "
                                    "this x its clip norm, drawn from the client's own secret (node config dp-secret, "
                                    "else random); the run reports its (epsilon, privacy.delta) (docs/privacy.md). The "
                                    "server refuses noisy round-0 uploads from "
                                    "about 0.2 (default clip norms): then raise synthesis.max-embedding-norm-factor "
                                    "above ~2 x this x privacy.embedding-clip-norm and set "
                                    "synthesis.check-embedding-classes = false; from about 0.5 also raise "
                                    "synthesis.max-adapter-abs above ~5 x this x privacy.adapter-clip-norm (a bound "
                                    "of 0 is off)",
                                    json_schema_extra=used_when("algorithm", UPLOADING_ALGORITHMS))
    target_epsilon: float = Field(0.0, ge=0, description="0 = off; >0: sets privacy.noise-multiplier (which must "
                                  "stay 0) to the smallest whose uploads over the run stay within (this, "
                                  "privacy.delta) for each client (docs/privacy.md)",
                                  json_schema_extra=used_when("algorithm", UPLOADING_ALGORITHMS))
    delta: float = Field(1e-5, gt=0, lt=1, description="the delta of the (epsilon, delta) a DP run reports and "
                         "privacy.target-epsilon is met at",
                         json_schema_extra=used_when("algorithm", UPLOADING_ALGORITHMS))
    clip_norm: float = Field(5.0, gt=0, description="privacy.noise-multiplier > 0: rounds >= 1 clip the client's "
                             "update (its weights minus the global weights it got, floating-point arrays together; "
                             "BatchNorm running statistics go back to the global ones) to this L2 norm before "
                             "noising (measured on the default digits run, round 1: WarmFed 2.0-4.9, FedAvg from the "
                             "random init 8.8-9.3)",
                             json_schema_extra=used_when("algorithm", UPLOADING_ALGORITHMS))
    adapter_clip_norm: float = Field(40.0, gt=0, description="privacy.noise-multiplier > 0: round 0 clips the LoRA "
                                     "adapter (all its tensors together) to this L2 norm before noising (measured at "
                                     "the default LoRA config: 36.8-38.4)",
                                     json_schema_extra=used_when("algorithm", GENERATIVE_ALGORITHMS))
    embedding_clip_norm: float = Field(28.0, gt=0, description="privacy.noise-multiplier > 0: round 0 clips each "
                                       "class's prompt-embedding row [tokens x dim] to this L2 norm before noising "
                                       "(measured with the tiny generator: 26.2-28.0)",
                                       json_schema_extra=used_when("algorithm", GENERATIVE_ALGORITHMS))


class PersonalizationConfig(Section):
    """Client-side personalization (docs/algorithm.md, steps 9-12)."""

    model_config = ConfigDict(json_schema_extra=used_when("personalization.method", PERSONALIZING_METHODS))

    method: Personalization = Field("none", description="dsd: Dynamic Self-Distillation; pfedsd: teacher fixed to "
                                    "the previous round; ditto; fedbn: BatchNorm layers stay local; finetune: "
                                    "the round's global model fine-tuned on the client's train split",
                                    json_schema_extra=ALWAYS_USED)
    epochs: int = Field(1, ge=0, description="epochs each client trains its personalized model per round")
    dsd_lambda: float = Field(1.0, ge=0, description="weight of the distillation (KL) term")
    dsd_temperature: float = Field(3.0, gt=0, description="distillation temperature")
    tau_start: float = Field(1.0, gt=0, description="Gumbel-Softmax temperature of the selector in round 1")
    tau_end: float = Field(0.1, gt=0, description="Gumbel-Softmax temperature in the last round (geometric anneal)")
    selector_lr: float = Field(0.05, ge=0, description="learning rate of the DSD teacher selector")
    selector_steps: int = Field(100, gt=0, description="optimisation steps of the DSD teacher selector")
    selector_sees_label: bool = Field(True, description="the selector also sees each teacher's probability of the "
                                      "true class")
    ditto_lambda: float = Field(0.1, ge=0, description="Ditto's proximal weight towards the global model")
    student_start: Literal["global", "personal"] = Field(
        "global", description="dsd, pfedsd: the student starts from the round's global model (the papers) or from "
        "the client's personalized model of the previous round (kept across rounds, as Ditto's is)")


class FaultConfig(Section):
    """Test hook (tests, benchmarks/fault_matrix.py): inject one kind of fault into some clients in some rounds."""

    kind: Fault = Field("none", description="the fault the chosen clients inject")
    clients: str = Field("", description="misbehaving partition ids, comma-separated")
    rounds: str = Field("", description="algorithm rounds they misbehave in, comma-separated; \"\" = every round")
    hang_seconds: float = Field(120.0, ge=0, description="how long a 'hang' client sleeps before answering")

    def client_ids(self) -> list[int]:
        """The partition ids that misbehave."""
        return _int_list("faults.clients", self.clients)

    def round_ids(self) -> list[int]:
        """The algorithm rounds in which they misbehave (empty: every round)."""
        return _int_list("faults.rounds", self.rounds)

    def hits(self, partition_id: int, algo_round: int) -> bool:
        """Whether client ``partition_id`` misbehaves in ``algo_round``."""
        rounds = self.round_ids()
        return self.kind != "none" and partition_id in self.client_ids() and (not rounds or algo_round in rounds)


class TrackingConfig(Section):
    """Experiment tracking: metrics.json's rounds and stage times also in a local TensorBoard or MLflow store."""

    backend: Literal["none", "tensorboard", "mlflow"] = Field(
        "none", description="none; tensorboard: event files in <run dir>/tensorboard; mlflow: <run dir>/mlflow.db "
        "(both need the 'tracking' extra)")


def _int_list(key: str, text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"config key '{key}' = {text!r} must be comma-separated integers, e.g. '0,2'") from None


class ExperimentConfig(Section):
    """A whole experiment, resolved from YAML plus run-config overrides."""

    experiment: str = Field("warmfed", description="the experiment YAML: a name under conf/ or an absolute path")
    algorithm: Algorithm = Field(
        "warmfed", description="warmfed: generative warm start + globalization; fgl: warmfed with FGL_DIFFERENCES "
        "(config/loading.py); fedavg, fedprox: classic baselines; local: no federation; centralized: pooled-data "
        "reference")
    seed: int = Field(0, ge=0, description="seed of every random choice")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA when visible")
    output_dir: str = Field("~/warmfed-runs", description="absolute (or ~); each run writes "
                            "<output-dir>/<run-name>/")
    run_name: str = Field("", description="\"\" = <time>-<experiment>-<algorithm>-s<seed>")
    cache_dir: str = Field("", description="\"\" = $WARMFED_CACHE, else $XDG_CACHE_HOME/warmfed-flwr, else "
                           "~/.cache/warmfed-flwr")
    resume: bool = Field(False, description="true = continue <output-dir>/<run-name> from its newest checkpoint")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    synthesis: SynthesisConfig = Field(default_factory=SynthesisConfig)
    warmfed: WarmFedConfig = Field(default_factory=WarmFedConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    personalization: PersonalizationConfig = Field(default_factory=PersonalizationConfig)
    faults: FaultConfig = Field(default_factory=FaultConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    def to_flat(self) -> dict[str, Any]:
        """The config as flat kebab-case keys, the shape of Flower's run config."""
        return flatten(self.model_dump())


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as flat ``section.key`` entries with snake_case names written kebab-case."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = prefix + kebab(str(key))
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def kebab(name: str) -> str:
    """A snake_case field name as its kebab-case key."""
    return name.replace("_", "-")
