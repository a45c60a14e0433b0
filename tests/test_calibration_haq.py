"""The acceptance fit: HAQ's published MobileNet-V2 latency table (53 layers x 64 bit pairs, batch 16)."""
from __future__ import annotations

import pytest

from autoq.calibration.fit import Structure, fit
from autoq.calibration.measurements import BUNDLED_TABLES, lookup_table_path, samples_from_lookup_table
from autoq.host.models.resolve import spec_for
from autoq.overlay.manifest import load_overlay

HAQ_TABLE = lookup_table_path("haq-mobilenet-v2")  # bundled in autoq.calibration (data/haq/)


def test_bundled_haq_table_is_installed_with_its_license():
    assert HAQ_TABLE.is_file() and HAQ_TABLE.stat().st_size < 5 * 2**20
    notice = (HAQ_TABLE.parent / "LICENSE").read_text()
    assert "MIT License" in notice and "Copyright (c) 2019 MIT HAN Lab" in notice
    assert "https://github.com/mit-han-lab/haq" in (HAQ_TABLE.parent / "README.md").read_text()
    table = BUNDLED_TABLES["haq-mobilenet-v2"]
    data = samples_from_lookup_table(HAQ_TABLE, spec_for(table.arch).layers, table.batch, 1e8, table.arch)
    assert len(data.samples) == 53 * 64


@pytest.mark.slow
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
