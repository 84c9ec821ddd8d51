"""What the server and clients agree on: message stages, config keys and bundle entry names.

Strategies and clients never import each other; they meet here.
"""

STAGE = "stage"
"""FitIns config key naming what the client should do."""
STAGE_TRAIN = "train"
"""Plain federated training of the received weights (FedAvg, FedProx, FGL rounds, local-only)."""
STAGE_ROUND0_UPLOAD = "round0-upload"
"""WarmFed/FGL round 0: upload the LoRA adapter (optional) and the class prompt embeddings; nothing persisted
holds this value (it lives only in FitIns configs of one run)."""
STAGE_GLOBALIZE = "globalize"
"""WarmFed round t>=1: fine-tune on the synthetic subset, then train on private data."""

ROUND = "round"
"""FitIns/EvaluateIns config key: the algorithm's round (0 = WarmFed/FGL warm start)."""
TOTAL_ROUNDS = "total-rounds"
RESUME_FROM = "resume-from"
"""FitIns/EvaluateIns config key of a resumed run only: the algorithm round of the server checkpoint it continues;
a client restores its own state as of that round (clients/state.py)."""
PROXIMAL_MU = "proximal-mu"

ADAPTER_PREFIX = "adapter."
EMBEDDINGS = "embeddings"
MODEL_PREFIX = "model."
SYNTHETIC_IMAGES = "synthetic.images"
SYNTHETIC_LABELS = "synthetic.labels"
AUDIT_IMAGES = "audit.images"
"""Bundle entry: a seeded sample of the synthetic images made from the receiving client's own round-0 upload
(uint8 [N, 3, H, W]), sent with its first globalization round for its privacy audit (privacy.audit-images)."""

CLIENT_NAME = "client"
"""Metric key: the client's name (its domain under the domain partition)."""
CLASS_NAMES = "class-names"
"""Round-0 metric key: the client's class names, comma-joined, checked against the server's."""
COMPUTE_SECONDS = "compute_seconds"
"""Fit metric key: wall seconds the client spent in its ML work for this fit (not in Flower's (de)serialization)."""
