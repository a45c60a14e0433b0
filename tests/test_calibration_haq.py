"""The acceptance fit: HAQ's published MobileNet-V2 latency table (53 layers x 64 bit pairs, batch 16)."""
from __future__ import annotations

from pathlib import Path

import pytest

from autoq.calibration.fit import Structure, fit
from autoq.calibration.measurements import samples_from_lookup_table
from autoq.host.models.resolve import spec_for
from autoq.overlay.manifest import load_overlay

HAQ_TABLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "haq" / "qmobilenetv2_imagenet100_batch16_latency_table.npy"


@pytest.mark.slow
@pytest.mark.skipif(not HAQ_TABLE.exists(), reason=f"HAQ table not found at {HAQ_TABLE}")
def test_haq_table_fits_within_ten_percent_with_global_parameters():
    template = load_overlay()
    data = samples_from_lookup_table(HAQ_TABLE, spec_for("mobilenet_v2").layers, 16, template.clock_hz, "mobilenet_v2")
    assert len(data.samples) == 53 * 64
    # the structure `autoq calibrate --lookup-table ...` finds by its search (the search itself takes minutes)
    structure = Structure(template.with_changes(dm=16, dn=16, dk=256, dram_ports=4, part="xcvu9p"), True)
    result = fit(data, structure.overlay, per_image_convs=structure.per_image_convs, folds=5)
    assert result.in_sample.mape <= 10 and result.kfold.mape <= 10 and result.leave_one_layer_out.mape <= 10
    assert result.baselines["c_layer*wbits*abits (1 c per layer)"]["mape_percent"] > 3 * result.leave_one_layer_out.mape
    assert result.baselines["c*MACs*wbits*abits (1 global c)"]["mape_percent"] > 10 * result.leave_one_layer_out.mape
