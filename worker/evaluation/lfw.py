"""LFW verification: the standard 10-fold protocol on pairs.txt (View 2).

For each fold, the distance threshold that maximises accuracy on the other nine folds is applied
to it; accuracy is reported as the mean and standard deviation over the ten folds. AUC and the
ROC curve are computed over all pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worker.errors import FacewatchError


@dataclass(frozen=True)
class Pair:
    """Two images of the protocol and whether they show the same person."""

    a: Path
    b: Path
    same: bool
    fold: int


def _image(root: Path, name: str, number: str, line: int, pairs_file: Path) -> Path:
    try:
        index = int(number)
    except ValueError:
        raise FacewatchError(f"{pairs_file}:{line}: image number {number!r} is not an integer") from None
    return root / name / f"{name}_{index:04d}.jpg"


def read_pairs(pairs_file: str | Path, images: str | Path) -> list[Pair]:
    """Parse pairs.txt (first line: folds and pairs per class) into pairs with their fold."""
    pairs_file, root = Path(pairs_file), Path(images)
    try:
        lines = pairs_file.read_text().splitlines()
    except OSError as exc:
        raise FacewatchError(f"cannot read pairs file {pairs_file}: {exc.strerror or exc}") from None
    header = lines[0].split() if lines else []
    try:
        folds, per_class = (int(value) for value in header) if len(header) == 2 else (1, int(header[0]))
    except (ValueError, IndexError):
        raise FacewatchError(f"{pairs_file}:1: expected a header 'FOLDS PAIRS_PER_CLASS', got {lines[:1]}") from None
    body = [line.split("\t") if "\t" in line else line.split() for line in lines[1:] if line.strip()]
    if len(body) != folds * 2 * per_class:
        raise FacewatchError(f"{pairs_file}: {len(body)} pairs, the header promises {folds * 2 * per_class}")
    pairs = []
    for offset, fields in enumerate(body):
        line = offset + 2
        fold = offset // (2 * per_class)
        if len(fields) == 3:
            pair = Pair(
                _image(root, fields[0], fields[1], line, pairs_file),
                _image(root, fields[0], fields[2], line, pairs_file),
                True,
                fold,
            )
        elif len(fields) == 4:
            pair = Pair(
                _image(root, fields[0], fields[1], line, pairs_file),
                _image(root, fields[2], fields[3], line, pairs_file),
                False,
                fold,
            )
        else:
            raise FacewatchError(f"{pairs_file}:{line}: expected 3 or 4 fields, got {len(fields)}")
        pairs.append(pair)
    missing = sorted({str(p) for pair in pairs for p in (pair.a, pair.b) if not p.is_file()})
    if missing:
        raise FacewatchError(f"{len(missing)} images of {pairs_file} are missing under {root}, e.g. {missing[0]}")
    return pairs


def best_threshold(distances: np.ndarray, same: np.ndarray) -> float:
    """The threshold (same when distance < t) with the highest accuracy on these pairs."""
    order = np.argsort(distances)
    d, s = distances[order], same[order]
    # Accuracy when the first k pairs (smallest distances) are called "same", for every k.
    same_below = np.concatenate([[0], np.cumsum(s)])
    diff_above = np.concatenate([[0], np.cumsum((~s)[::-1])])[::-1]
    correct = same_below + diff_above
    k = int(np.argmax(correct))
    if k == 0:
        return float(d[0]) - 1e-6
    if k == len(d):
        return float(d[-1]) + 1e-6
    return float((d[k - 1] + d[k]) / 2.0)


SPLIT_FOLDS = 10


def ten_fold(distances: np.ndarray, same: np.ndarray, folds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-fold accuracy with each fold's threshold chosen on the other folds; returns (accuracies, thresholds).

    A file of one fold (View 1's pairsDevTrain.txt, pairsDevTest.txt) has no other fold to choose a threshold
    on: its pairs are dealt round-robin into SPLIT_FOLDS folds (the same-person block and the different-person
    block alike, so every fold keeps the balance), as pairs.txt's ten folds are used.
    """
    if len(np.unique(folds)) == 1:
        folds = np.arange(len(folds)) % SPLIT_FOLDS
    accuracies, thresholds = [], []
    for fold in np.unique(folds):
        train, test = folds != fold, folds == fold
        threshold = best_threshold(distances[train], same[train])
        accuracies.append(float(np.mean((distances[test] < threshold) == same[test])))
        thresholds.append(threshold)
    return np.array(accuracies), np.array(thresholds)


def roc(distances: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(false positive rates, true positive rates, AUC), smaller distance meaning 'same'."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(same, -distances)
    return fpr, tpr, float(roc_auc_score(same, -distances))


def plot_roc(fpr: np.ndarray, tpr: np.ndarray, auc: float, accuracy: str, path: str | Path) -> None:
    """Save the ROC curve as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 5), dpi=100)
    axes.plot(fpr, tpr, label=f"facewatch (AUC {auc:.4f}, accuracy {accuracy})")
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey")
    axes.set_xscale("symlog", linthresh=1e-3)
    axes.set_xlim(0, 1)
    axes.set_ylim(0.8, 1.0)
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.set_title("LFW pairs (10 folds)")
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
