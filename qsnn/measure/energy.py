"""Energy per image: SNN additions (SOPs x E_add) against ANN MACs (x E_mac).

The defaults are the usual 45 nm CMOS figures, 0.9 pJ per addition and 4.6 pJ per
multiply-accumulate; both can be given per run.
"""

from __future__ import annotations

import math

ENERGY_PER_ADD_PJ = 0.9
ENERGY_PER_MAC_PJ = 4.6


def energy(sops: float, macs: float, e_add: float = ENERGY_PER_ADD_PJ, e_mac: float = ENERGY_PER_MAC_PJ) -> dict:
    """Energy estimate per image in picojoules: SNN additions against ANN MACs."""
    snn = sops * e_add
    ann = macs * e_mac
    return {
        "energy_per_add_pj": e_add,
        "energy_per_mac_pj": e_mac,
        "snn_pj": snn,
        "ann_pj": ann,
        "ratio": snn / ann if ann else math.nan,
    }
