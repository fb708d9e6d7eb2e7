"""Rebuild qsnn/assets/models: slim copies of the three MNIST checkpoints `qsnn run` ships.

    python scripts/embed_models.py RUNS_DIR

expects RUNS_DIR/<name>/last.pt for each model below, trained by the command listed with
it (see README "Results"), and writes the slim checkpoints and manifest.json.
"""

import sys
from pathlib import Path

from qsnn.io import write_json
from qsnn.pipeline import MODELS, slim_checkpoint
from qsnn.train.checkpoint import load_checkpoint

DATA = "--data-dir ../shared/datasets"
MODELS_TO_SHIP = [
    ("nsd-lenet-k1", "nsd", "qsnn train --net nsd-lenet --dataset mnist --k 1 --B none --epochs 3"),
    ("sg-lenet-k1B2", "sg", "qsnn train --net sg-lenet --dataset mnist --k 1 --B 2 --ternary --epochs 3"),
    ("int-lenet", "int", "qsnn train --net int-lenet --dataset mnist --k 0 --B none --ternary --encoding-k 0 --encoding-B 4 --epochs 3"),
]


def main(runs: Path) -> None:
    entries = []
    for name, scheme, command in MODELS_TO_SHIP:
        target = MODELS / f"{name}.pt"
        slim_checkpoint(runs / name / "last.pt", target)
        model, payload = load_checkpoint(target)
        history = payload["metrics"]
        entries.append(
            {
                "name": name,
                "net": model.spec.notation,
                "precision": model.spec.precision.describe(),
                "scheme": scheme,
                "file": target.name,
                "epochs": payload["epoch"],
                "test_accuracy": history[-1]["test_acc"],
                "training_seconds": round(sum(row["seconds"] for row in history)),
                "command": f"{command} {DATA} --out runs/{name}",
                "seed": payload["config"]["seed"],
            }
        )
        print(f"{target}: {target.stat().st_size:,} bytes, {entries[-1]['test_accuracy']:.2f}%")
    write_json(MODELS / "manifest.json", {"dataset": "mnist", "models": entries})


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs"))
