"""Export the three shipped MNIST nets; check the NumPy runner and NIR on all 10,000 images.

    python scripts/check_deployment.py [OUT]      (default OUT: runs/deploy)

Prints each net's core mapping (256x256 cores), then on how many images the pure-NumPy
runner of the integer package reproduces the simulator's counts in every layer and its
predictions, and (SG) how many predictions of the NIR file, read back with nir.read and
run by the test suite's interpreter of the standard nodes, match.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from qsnn import data
from qsnn.deploy import runner as deploy
from qsnn.deploy.export import export_nir, export_package
from qsnn.deploy.mapping import format_mapping, map_cores
from qsnn.errors import QsnnError
from qsnn.pipeline import MODELS
from qsnn.sim.events import EventSimulator
from qsnn.snn.convert import convert

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.nir_interpreter import run_one_step

BATCH = 1000


def main(out: str) -> None:
    import nir

    test = data.embedded_mnist_test()
    pixels = data.prepare(test.images, "mnist", train=False)
    images = len(pixels)
    for name, scheme in [("sg-lenet-k1B2", "sg"), ("int-lenet", "int"), ("nsd-lenet-k1", "nsd")]:
        net = convert(MODELS / f"{name}.pt", scheme)
        print(f"== {name} ({scheme})")
        print(format_mapping(map_cores(net, 256, 256)))
        try:
            folder = export_package(net, f"{out}/{name}")
        except QsnnError as error:
            print(f"  qsnn-int export refused: {error}")
            continue
        start = time.perf_counter()
        result = deploy.run(folder, pixels.numpy())
        seconds = time.perf_counter() - start
        simulator = EventSimulator(net)
        same_predictions = same_counts = 0
        for at in range(0, images, BATCH):
            record = simulator(net, pixels[at : at + BATCH], None)
            same_predictions += int((result.predictions[-1, at : at + BATCH] == record.predictions[-1].numpy()).sum())
            for image in range(len(record.predictions[-1])):
                same_counts += all(
                    np.array_equal(result.counts[layer][at + image], record.counts[layer][image].numpy())
                    for layer in range(len(net.layers))
                )
        print(
            f"  runner: {seconds:.1f} s for {images:,} images; predictions equal on {same_predictions:,}/{images:,}; "
            f"counts equal in every layer on {same_counts:,}/{images:,}"
        )
        if scheme == "sg":
            graph = nir.read(export_nir(net, f"{out}/{name}.nir"))
            agree = 0
            for at in range(0, images, 500):
                output, _ = run_one_step(graph, pixels[at : at + 500].numpy())
                agree += int((output.argmax(1) == result.predictions[-1, at : at + 500]).sum())
            print(f"  NIR: {len(graph.nodes)} nodes read back with nir.read; predictions equal on {agree:,}/{images:,}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="runs/deploy", help="folder for the exported packages")
    main(parser.parse_args().out)
