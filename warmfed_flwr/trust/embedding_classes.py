"""Round-0 check that each uploaded prompt-embedding row embeds its own class: a client that swaps two rows would
relabel the synthetic images made from them (a label flip that passes every magnitude bound).

Each row is compared with the server's own embeddings of the class prompts by the cosine similarity of their
class-specific parts (a row minus the mean row of its set), so a domain phrase that every prompt of a client shares
cancels out; a row passes when its own class is strictly its best match.
"""

from __future__ import annotations

import numpy as np

from warmfed_flwr.errors import PayloadError

CHECK_KEY = "synthesis.check-embedding-classes"
RELATIVE_NOISE = 1e-6
"""A class-specific part shorter than this x the longest row is rounding noise, not a class."""


def class_similarity(uploaded: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Cosine similarity [rows, classes] of each uploaded row's class-specific part with each reference row's; a
    part that is rounding noise (rows all alike) has similarity 0 with every class."""
    parts = []
    for rows in (uploaded, reference):
        flat = rows.reshape(len(rows), -1).astype(np.float64)
        centred = flat - flat.mean(axis=0)
        norms = np.linalg.norm(centred, axis=1, keepdims=True)
        noise = RELATIVE_NOISE * float(np.linalg.norm(flat, axis=1).max(initial=0.0))
        parts.append(np.divide(centred, norms, out=np.zeros_like(centred), where=norms > noise))
    return parts[0] @ parts[1].T


def mismatched_rows(uploaded: np.ndarray, reference: np.ndarray) -> list[tuple[int, int]]:
    """(row, best-matching class) of every uploaded row whose own class is not strictly its best match."""
    if len(reference) < 2:
        return []
    similarity = class_similarity(uploaded, reference)
    mismatched = []
    for row, scores in enumerate(similarity):
        others = scores.copy()
        others[row] = -np.inf
        if scores[row] <= others.max():
            mismatched.append((row, int(others.argmax())))
    return mismatched


def validate_embedding_classes(uploaded: np.ndarray, reference: np.ndarray, class_names: list[str],
                               name: str, sender: str) -> None:
    """Raise PayloadError (one line: which rows, what they match, what to fix) when an uploaded row of ``name`` does
    not match its own class's row of ``reference`` best."""
    mismatched = mismatched_rows(uploaded, reference)
    if not mismatched:
        return
    rows = ", ".join(str(row) for row, _ in mismatched)
    best = ", ".join(f"'{class_names[match]}'" for _, match in mismatched)
    own = ", ".join(f"'{class_names[row]}'" for row, _ in mismatched)
    raise PayloadError(
        f"upload from {sender}: {name!r} rows {rows} match the server's prompts of classes {best} best, not their own "
        f"({own}); row i must embed the prompt of class i in the run's class order, from the run's generator and "
        f"prompt template ({CHECK_KEY} = false turns this check off)"
    )
